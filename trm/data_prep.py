"""A run's data, found (and built when the config says so) and checked before a model is built.

Shared by the trainer and ``trm.eval``: :func:`data_dirs` resolves the training and test
folders of a :class:`~trm.experiment.TrainConfig`, :func:`train_metadata` reads the training
split's metadata with a one-line error that says how to build it, :func:`prepare_data` does
all of it for a training run (building the dataset on process 0 first when
``dataset_builder`` is set) and :func:`check_data_agrees` checks the test split against the
training split and the task file's hints.
"""

from __future__ import annotations

import logging
from typing import Any, Dict, NamedTuple, Optional, Tuple

from trm.errors import TrainingError
from trm.experiment import PathLike, TrainConfig, resolve_data_path

log = logging.getLogger("trm.train")


class RunData(NamedTuple):
    """The folders of a run's data and their metadata (``test_meta``: None without a test
    split: evaluation is skipped)."""

    data_dir: PathLike
    test_data_dir: PathLike
    train_meta: Any
    test_meta: Any


def data_dirs(config: TrainConfig) -> Tuple[PathLike, PathLike]:
    """``(data_dir, test_data_dir)`` resolved (:func:`~trm.experiment.resolve_data_path`);
    the test folder defaults to the training folder."""
    data_dir = resolve_data_path(config.data_dir, config.dataset_builder_args)
    test_dir = (resolve_data_path(config.test_data_dir, config.dataset_builder_args)
                if config.test_data_dir else data_dir)
    return data_dir, test_dir


def train_metadata(data_dir: PathLike) -> Any:
    """The training split's metadata; a missing or unreadable one is a one-line error."""
    from trm import data
    try:
        return data.load_metadata(data_dir, "train")
    except data.DataError as e:
        raise TrainingError(f"Cannot load the training data from {data_dir}: {e}. "
                            "Build it with `python -m trm.data.build ...` (docs/DATA.md) "
                            "or set DATA_DIR.") from e


def prepare_data(config: TrainConfig, runtime: Any, hparams: Optional[Dict[str, Any]] = None,
                 progress: bool = True) -> RunData:
    """The data of a training run, built first when ``config.dataset_builder`` is set and
    checked (:func:`check_data_agrees`; ``hparams``' macros are the task file's hints)."""
    from trm import data
    if config.dataset_builder:
        build_dataset(config, runtime, progress)
    data_dir, test_dir = data_dirs(config)
    train_meta = train_metadata(data_dir)
    try:
        test_meta = data.load_metadata(test_dir, "test")
    except data.DataError as e:
        log.warning("No test split in %s (%s): evaluation is skipped.", test_dir, e)
        test_meta = None
    found = RunData(data_dir, test_dir, train_meta, test_meta)
    check_data_agrees(found, (hparams or {}).get("macros", {}))
    return found


def build_dataset(config: TrainConfig, runtime: Any, progress: bool = True) -> None:
    """Builds ``config.data_dir`` with ``config.dataset_builder`` if it is missing.

    Process 0 builds (to the shared data root, e.g. gs://) while the others wait; its outcome
    reaches every process, so a failed build ends all of them with the same error instead of
    leaving them at a barrier. Then every process checks the dataset (a host-local root is
    built once per host; concurrent builds are safe).
    """
    from trm import data
    if isinstance(config.data_dir, (list, tuple)):
        raise TrainingError("dataset_builder needs a single data_dir.")
    path = resolve_data_path(config.data_dir, config.dataset_builder_args)
    failure = None
    if runtime.is_main:
        log.info("Dataset %s (building it if missing: %s)", path, config.dataset_builder)
        try:
            data.ensure_dataset(path, config.dataset_builder, show_progress=progress,
                                **dict(config.dataset_builder_args))
        except Exception as e:
            failure = f"{type(e).__name__}: {e}"
    failure = runtime.gather_objects(failure)[0]  # also the barrier
    if failure is not None:
        raise TrainingError(f"Building the dataset {path} ({config.dataset_builder}) "
                            f"failed on process 0: {failure}")
    if not runtime.is_main:
        data.ensure_dataset(path, config.dataset_builder, show_progress=False,
                            **dict(config.dataset_builder_args))


def check_data_agrees(found: RunData, macros: Dict[str, Any]) -> None:
    """The test split must fit the model built for the training split (same seq_len and
    vocab: an error otherwise); a dataset that differs from the task file's SEQ_LEN /
    VOCAB_SIZE hints (``macros``) is reported (the model follows the dataset)."""
    meta = found.train_meta
    for macro, field in (("SEQ_LEN", "seq_len"), ("VOCAB_SIZE", "vocab_size")):
        declared = macros.get(macro)
        if isinstance(declared, int) and declared != getattr(meta, field):
            log.warning("The dataset %s has %s %d but the task file declares %s=%d (a "
                        "hint for dry runs): the model is built for the dataset. If that is "
                        "not this task's data, fix DATA_DIR.", found.data_dir, field,
                        getattr(meta, field), macro, declared)
    test = found.test_meta
    if test is not None:
        for field in ("seq_len", "vocab_size"):
            if getattr(test, field) != getattr(meta, field):
                raise TrainingError(
                    f"The test data {found.test_data_dir} has {field} "
                    f"{getattr(test, field)}, the training data {getattr(meta, field)}: "
                    "they belong to different tasks. Fix TEST_DATA_DIR / DATA_DIR.")
        if test.num_puzzle_identifiers > meta.num_puzzle_identifiers:
            log.warning("The test data has more puzzle identifiers (%d) than the training "
                        "data (%d): identifiers beyond the table use row 0.",
                        test.num_puzzle_identifiers, meta.num_puzzle_identifiers)
