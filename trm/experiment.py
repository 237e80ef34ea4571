"""An experiment in plain Python: :class:`TrainConfig`, and how its parts are built.

``trm.train`` fills a :class:`TrainConfig` from gin files (the gin edge, :mod:`trm.gin_edge`);
research code builds one directly. The functions here are the one way to turn a config and a
dataset into a model (:func:`build_model`), a model into its optimizers and EMA
(:func:`build_optimizers`, :func:`build_ema`), a config into the model's dataset shape
(:func:`dataset_shape`) and a data path into a folder (:func:`resolve_data_path`): the
trainer, ``trm.eval``, ``trm.bench``, the dry run and the cost estimate use them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from trm.errors import TrainingError
from trm.losses import ACTLoss
from trm.models import TRM
from trm.optim import EMA, AdamATan2, SignSGD, cosine_with_warmup

log = logging.getLogger("trm.train")

PathLike = Union[str, Sequence[str]]
DEFAULT_DATA_ROOT = "~/.cache/trm/datasets"


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run needs. Defaults follow the study's Sudoku baseline.

    Attributes:
        data_dir: dataset folder(s) (local or gs://), split ``train`` is trained on. ``~`` and
            environment variables are expanded, and ``{name}`` fields are filled from
            ``dataset_builder_args`` (so a data-size sweep gets one folder per size).
        test_data_dir: folder(s) whose ``test`` split is evaluated (default: ``data_dir``).
        dataset_builder: if set, build ``data_dir`` with this builder when it does not exist yet
            (``trm.data.ensure_dataset``), with ``dataset_builder_args``.
        model: factory ``(vocab_size=, seq_len=, num_puzzle_identifiers=, forward_dtype=)``.
        loss: the ACT loss head factory.
        optimizer: main optimizer factory ``(params, lr=)`` (weight decay, betas bound inside).
        sparse_optimizer: puzzle-table optimizer factory ``(embedding, lr=, gather_fn=)``.
        schedule: LR schedule ``(step, base_lr=, warmup_steps=, total_steps=, min_ratio=)``.
        ema: EMA factory ``(model) -> EMA`` or None (off).
        eval_raw_weights: with an EMA, every evaluation also evaluates the raw weights, logged
            as ``eval_raw/<metric>`` beside the EMA's ``eval/<metric>`` (EVAL_RAW_WEIGHTS): the
            EMA effect measured within one run. Evaluators (e.g. ARC's) see the EMA only.
        epochs / train_steps: total steps = train_steps, or int(epochs * examples per epoch /
            global_batch_size) (section 8).
        preemption_check_every: in multi-process runs, the processes agree on a received
            SIGTERM every this many steps (one host read); 0 = at log intervals.
        halting_rng: where the halting exploration draws come from: ``"torch"`` (the device's
            generator, as in the reference), ``"counter"`` (a hash of seed, step, micro-batch,
            process and row computed on the device, see trm.halting), or ``"auto"`` = counter
            on XLA (no per-step RNG-seed upload), torch elsewhere
            (``--gin_param="trm.TrainConfig.halting_rng='counter'"``).
        grad_accum_steps: split each process's batch into this many micro-batches (each with
            its own carry slot) whose gradients add up before one update: the same step as the
            whole batch, in less memory (GRAD_ACCUM_STEPS).
    """

    data_dir: PathLike = ""
    test_data_dir: Optional[PathLike] = None
    dataset_builder: Optional[str] = None
    dataset_builder_args: Dict[str, Any] = dataclasses.field(default_factory=dict)
    model: Callable[..., TRM] = TRM
    loss: Callable[[], ACTLoss] = ACTLoss
    optimizer: Callable[..., torch.optim.Optimizer] = AdamATan2
    sparse_optimizer: Callable[..., torch.optim.Optimizer] = SignSGD
    schedule: Callable[..., float] = cosine_with_warmup
    ema: Optional[Callable[[torch.nn.Module], EMA]] = EMA
    use_ema: bool = True
    eval_raw_weights: bool = False
    evaluators: Sequence[Callable[..., Any]] = ()
    global_batch_size: int = 256
    grad_accum_steps: int = 1
    eval_batch_size: Optional[int] = None
    epochs: int = 50_000
    train_steps: Optional[int] = None
    lr: float = 1e-4
    puzzle_emb_lr: float = 1e-4
    lr_warmup_steps: int = 2000
    lr_min_ratio: float = 1.0
    grad_clip_norm: Optional[float] = None
    freeze_weights: bool = False
    seed: int = 0
    eval_every: int = 5000
    checkpoint_every: int = 2500
    log_every: int = 100
    xla_metrics_every: int = 1000
    keep_checkpoints: int = 5
    best_metric: str = "eval/exact_accuracy"
    forward_dtype: str = "auto"
    device: str = "auto"
    compile: bool = False
    init_from_reference: Optional[str] = None
    preemption_check_every: int = 0
    async_checkpoint: bool = True
    halting_rng: str = "auto"

    def validate(self, process_count: int) -> None:
        """Checks every setting before anything runs; one line per problem, naming the gin
        macro (and field) and a fix. Raises :class:`TrainingError`."""
        if not self.data_dir:
            raise TrainingError("No dataset: set the data directory (gin macro DATA_DIR, "
                                "i.e. TrainConfig.data_dir).")
        for field, (macro, kind, low, allow_none) in _CHECKS.items():
            _check_value(field, macro, getattr(self, field), kind, low, allow_none)
        if self.train_steps is None and self.epochs < 1:
            raise TrainingError(f"EPOCHS={self.epochs}: the run would have no step; set "
                                "EPOCHS >= 1 or TRAIN_STEPS.")
        if self.global_batch_size % process_count:
            raise TrainingError(
                f"GLOBAL_BATCH_SIZE={self.global_batch_size} is not divisible by the number "
                f"of processes ({process_count}); choose a multiple of {process_count}.")
        if self.global_batch_size % (process_count * self.grad_accum_steps):
            raise TrainingError(
                f"GLOBAL_BATCH_SIZE={self.global_batch_size} is not divisible by "
                f"{process_count} process(es) x GRAD_ACCUM_STEPS={self.grad_accum_steps}; "
                f"choose a multiple of {process_count * self.grad_accum_steps}.")
        eval_bs = self.eval_batch_size or self.global_batch_size
        if eval_bs % process_count:
            raise TrainingError(
                f"EVAL_BATCH_SIZE={eval_bs} is not divisible by the number of processes "
                f"({process_count}); choose a multiple of {process_count}.")
        if self.forward_dtype not in ("auto", "float32", "bfloat16", "float16") and \
                not isinstance(self.forward_dtype, torch.dtype):
            raise TrainingError(f"FORWARD_DTYPE={self.forward_dtype!r} is not a dtype: use "
                                "'auto', 'float32' or 'bfloat16'.")
        if self.halting_rng not in ("auto", "torch", "counter"):
            raise TrainingError(f"trm.TrainConfig.halting_rng={self.halting_rng!r} is not a "
                                "generator: use 'auto', 'torch' or 'counter'.")
        if self.device not in ("auto", "cpu", "cuda", "xla"):
            raise TrainingError(f"DEVICE={self.device!r} is not a device: use 'auto', 'cpu', "
                                "'cuda' or 'xla'.")


# field -> (gin macro, type, lowest allowed value, None allowed)
_CHECKS: Dict[str, Any] = {
    "train_steps": ("TRAIN_STEPS", int, 1, True),
    "epochs": ("EPOCHS", (int, float), 0, False),
    "global_batch_size": ("GLOBAL_BATCH_SIZE", int, 1, False),
    "grad_accum_steps": ("GRAD_ACCUM_STEPS", int, 1, False),
    "eval_batch_size": ("EVAL_BATCH_SIZE", int, 1, True),
    "eval_every": ("EVAL_EVERY", int, 0, False),
    "checkpoint_every": ("CHECKPOINT_EVERY", int, 0, False),
    "log_every": ("LOG_EVERY", int, 0, False),
    "xla_metrics_every": ("XLA_METRICS_EVERY", int, 0, False),
    "keep_checkpoints": ("KEEP_CHECKPOINTS", int, 0, False),
    "lr": ("LR", (int, float), 0, False),
    "puzzle_emb_lr": ("PUZZLE_EMB_LR", (int, float), 0, False),
    "lr_warmup_steps": ("LR_WARMUP_STEPS", int, 0, False),
    "lr_min_ratio": ("LR_MIN_RATIO", (int, float), 0, False),
    "grad_clip_norm": ("GRAD_CLIP", (int, float), 0, True),
    "seed": ("SEED", int, 0, False),
    "preemption_check_every": ("TrainConfig.preemption_check_every", int, 0, False),
}

_HINTS = {"train_steps": " (use None to train for EPOCHS instead)",
          "eval_every": " (0 = only at the end)", "checkpoint_every": " (0 = only at the end)",
          "log_every": " (0 = only at the end)", "keep_checkpoints": " (0 = keep all)"}


def _check_value(field: str, macro: str, value: Any, kind: Any, low: float,
                 allow_none: bool) -> None:
    name = f"{macro}={value!r}" + ("" if macro.startswith("TrainConfig") else
                                   f" (TrainConfig.{field})")
    if value is None:
        if allow_none:
            return
        raise TrainingError(f"{name} must be set.")
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) or not isinstance(value, kinds):
        what = "an integer" if kinds == (int,) else "a number"
        raise TrainingError(f"{name} must be {what}, not {type(value).__name__}; write it "
                            f"without quotes, e.g. --gin_param='{macro.split('.')[-1]}=...'.")
    if value != value or value < low:  # NaN or too small
        raise TrainingError(f"{name} must be >= {low}{_HINTS.get(field, '')}.")


def resolve_forward_dtype(config: TrainConfig, device: torch.device) -> Any:
    """The forward dtype of a run: ``config.forward_dtype``, or the device's default for
    ``"auto"`` (bfloat16 on TPU/GPU and on CPUs with native bf16, float32 on other CPUs; see
    :func:`trm.runtime.default_forward_dtype`)."""
    from trm.runtime import default_forward_dtype
    return (default_forward_dtype(device) if config.forward_dtype == "auto"
            else config.forward_dtype)


def build_model(config: TrainConfig, shape: Any, *, forward_dtype: Any = "float32",
                init_from_reference: bool = True) -> TRM:
    """The model of ``config`` for a dataset of ``shape``.

    Args:
        config: the run's config (its ``model`` factory; ``init_from_reference``).
        shape: anything with ``vocab_size``, ``seq_len`` and ``num_puzzle_identifiers``: the
            dataset's metadata (``trm.data.load_metadata``) or :class:`DataShape`.
        forward_dtype: the compute dtype (see :func:`resolve_forward_dtype`).
        init_from_reference: load ``config.init_from_reference`` weights when set.
    """
    model = config.model(vocab_size=shape.vocab_size, seq_len=shape.seq_len,
                         num_puzzle_identifiers=shape.num_puzzle_identifiers,
                         forward_dtype=forward_dtype)
    if init_from_reference and config.init_from_reference:
        from trm.interop.reference import load_reference_checkpoint
        info = load_reference_checkpoint(model, config.init_from_reference)
        log.info("Initialised from reference checkpoint %s (%s)", config.init_from_reference,
                 info)
    return model


def build_optimizers(config: TrainConfig, model: TRM, gather_fn: Optional[Callable] = None
                     ) -> Tuple[List[torch.optim.Optimizer], List[float]]:
    """``(optimizers, base_lrs)`` of a run: ``config.sparse_optimizer`` on the puzzle table
    (when the model has one; ``gather_fn`` gathers its rows over processes), then
    ``config.optimizer`` on the network, or, with ``freeze_weights``, the network frozen."""
    optimizers: List[torch.optim.Optimizer] = []
    base_lrs: List[float] = []
    if model.puzzle_emb is not None:
        optimizers.append(config.sparse_optimizer(model.puzzle_emb, lr=0.0, gather_fn=gather_fn))
        base_lrs.append(config.puzzle_emb_lr)
    if not config.freeze_weights:
        optimizers.append(config.optimizer(model.parameters(), lr=0.0))
        base_lrs.append(config.lr)
    else:
        for p in model.parameters():
            p.requires_grad_(False)
    return optimizers, base_lrs


def build_ema(config: TrainConfig, model: TRM) -> Optional[EMA]:
    """The run's EMA of ``model``'s weights, or None (``use_ema`` off, no ``ema`` factory, or
    frozen weights)."""
    use = config.use_ema and config.ema is not None and not config.freeze_weights
    return config.ema(model) if use else None


@dataclasses.dataclass(frozen=True)
class DataShape:
    """The dataset properties a model is built for (a stand-in for dataset metadata)."""

    vocab_size: int
    seq_len: int
    num_puzzle_identifiers: int = 1


def dataset_shape(config: TrainConfig, macro: Callable[..., Any]) -> tuple:
    """``(shape, source)``: the dataset's metadata when ``config.data_dir`` is built, else a
    :class:`DataShape` from the task file's macros (``macro(name, default)`` reads one, e.g.
    :func:`trm.gin_edge.query_macro`): the one way a dry run, a preflight or a cost estimate
    sizes a model before the data exists.

    Raises:
        TrainingError: the data is not built and the task file declares no VOCAB_SIZE/SEQ_LEN.
    """
    from trm import data
    try:
        return data.load_metadata(resolve_data_path(config.data_dir, config.dataset_builder_args),
                                  "train"), "dataset metadata"
    except (OSError, ValueError, data.DataError):
        pass
    vocab, seq = macro("VOCAB_SIZE", None), macro("SEQ_LEN", None)
    if vocab is None or seq is None:
        raise TrainingError(
            f"The dataset {config.data_dir!r} is not built yet and the task file does not "
            "declare VOCAB_SIZE / SEQ_LEN; build the data first (docs/DATA.md).")
    return (DataShape(int(vocab), int(seq), int(macro("NUM_PUZZLE_IDENTIFIERS", 1) or 1)),
            "task macros (dataset not built yet)")


def total_steps(config: TrainConfig, examples_per_epoch: int) -> int:
    """``train_steps`` when set (not None), else
    ``int(epochs * examples_per_epoch / global_batch_size)``."""
    if config.train_steps is not None:
        return int(config.train_steps)
    return int(config.epochs * examples_per_epoch / config.global_batch_size)


def resolve_data_path(path: PathLike, fields: Optional[Dict[str, Any]] = None) -> PathLike:
    """Expands ``~``, environment variables and ``{field}`` placeholders of a data path.

    ``{data_root}`` is ``$TRM_DATA_ROOT`` (default ``~/.cache/trm/datasets``); other fields
    come from the dataset builder's arguments.
    """
    if isinstance(path, (list, tuple)):
        return [resolve_data_path(p, fields) for p in path]
    fields = {"data_root": os.environ.get("TRM_DATA_ROOT", DEFAULT_DATA_ROOT), **(fields or {})}
    if "{" in path:
        try:
            path = path.format(**fields)
        except KeyError as e:
            raise TrainingError(f"Data path {path!r} names {e} which is not a dataset builder "
                                f"argument ({sorted(fields)}).") from e
    return os.path.expanduser(os.path.expandvars(path)) if "://" not in path else path


