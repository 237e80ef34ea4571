"""Named sweeps: grids (or lists) of gin bindings over a base experiment file.

A sweep is a cartesian product of *axes* times a seeds axis. Each axis is a list of
:class:`Point` s; a point has a short label (it becomes part of the run name), the gin
bindings it sets and, optionally, gin files that replace the sweep's base files (for
ablations that are whole experiment files, e.g. the sequence mixer).

Run names are ``<sweep>/<label>_<label>..._s<seed>``, e.g. ``e2_2_tn/t3_n6_s0``: stable across
invocations, so a re-launched sweep finds (and resumes or skips) the same workdirs.

The bound names are the run-level gin macros of ``gin/runs/*.gin`` and the experiment files
(docs/DESIGN.md): ``H_CYCLES``, ``L_CYCLES``, ``HIDDEN_SIZE``, ``NUM_TRAIN_PUZZLES``, ``LR``,
``GLOBAL_BATCH_SIZE``, ``SEED``. Values are written as gin literals (strings need quotes).

The paper's numbers quoted in the descriptions come from :mod:`analysis.published` (the single
source), never typed here.

Sweeps defined outside the library (a study's runs) are found by name, on first lookup, in:

* ``--sweep_module=MODULE`` (repeatable, or comma-separated) of the launchers' command lines;
* ``$TRM_SWEEP_MODULES``: comma-separated module names;
* the ``trm.sweeps`` entry-point group of installed packages (a module, a list of sweeps or a
  function returning them);
* ``studies/<name>/sweep.py`` of the project folder (the current directory, else the source
  checkout these launchers live in), imported as ``studies.<name>.sweep``.

A sweep module lists its sweeps in ``SWEEPS`` (a sequence of :class:`Sweep`). Names are unique
across all sources: a second, different sweep of the same name raises.

Python API::

    from launchers.named_sweeps import get_sweep, list_sweeps
    for run in get_sweep("e2_2_tn").runs(seeds=[0, 1]):
        print(run.name, run.gin_files, run.bindings)
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import itertools
import os
import re
import sys
from importlib import metadata
from typing import Iterable, Mapping, Sequence

from analysis.published import percent as _paper

_LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
_SWEEP_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_]*$")
SEED_MACRO = "SEED"


@dataclasses.dataclass(frozen=True)
class Point:
    """One setting of one axis.

    Attributes:
      label: short, path-safe label used in run names (``t3_n6``, ``h512``, ``lr1e-4``).
      bindings: gin bindings, macro name -> gin literal (``{"H_CYCLES": "3"}``).
      gin_files: if non-empty, these files replace the sweep's base files for this point.
    """

    label: str
    bindings: Mapping[str, str] = dataclasses.field(default_factory=dict)
    gin_files: tuple[str, ...] = ()

    def __post_init__(self):
        if not _LABEL_RE.match(self.label):
            raise ValueError(f"point label {self.label!r} is not path-safe")
        object.__setattr__(self, "bindings", dict(self.bindings))
        object.__setattr__(self, "gin_files", tuple(self.gin_files))


@dataclasses.dataclass(frozen=True)
class Axis:
    """A named list of points; a sweep takes the cartesian product of its axes."""

    name: str
    points: tuple[Point, ...]

    def __post_init__(self):
        object.__setattr__(self, "points", tuple(self.points))
        labels = [p.label for p in self.points]
        if not labels:
            raise ValueError(f"axis {self.name!r} has no points")
        if len(set(labels)) != len(labels):
            raise ValueError(f"axis {self.name!r} has duplicate labels: {labels}")


def macro_axis(macro: str, values: Sequence[object], prefix: str) -> Axis:
    """An axis over one gin macro: ``macro_axis("HIDDEN_SIZE", [256, 512], "h")``.

    Values are written with ``str()`` (use strings for exact gin literals such as ``"1e-4"``);
    labels are ``prefix + value``.
    """
    points = [Point(f"{prefix}{v}", {macro: str(v)}) for v in values]
    return Axis(macro.lower(), tuple(points))


def files_axis(name: str, files: Mapping[str, str]) -> Axis:
    """An axis whose points swap the whole experiment file: ``{label: gin file}``."""
    return Axis(name, tuple(Point(label, {}, (f,)) for label, f in files.items()))


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of a sweep: what ``python -m trm.train`` gets, minus the workdir.

    Attributes:
      name: ``<sweep>/<labels>_s<seed>``; the run's workdir is ``<root>/<name>``.
      gin_files: gin files, in order (names resolved by trm's gin search path).
      bindings: ``"KEY=VALUE"`` strings, in order (later ones win).
    """

    name: str
    gin_files: list[str]
    bindings: list[str]

    def binding_keys(self) -> list[str]:
        return [b.split("=", 1)[0].strip() for b in self.bindings]


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A named grid of gin bindings over base gin files, times a seeds axis.

    Attributes:
      name: snake_case sweep name; the prefix of every run name.
      gin_files: base experiment file(s) (a point's own ``gin_files`` replace them).
      axes: the grid; runs are the cartesian product in axis order (the first axis varies
        slowest, seeds slower still). An empty tuple gives one run per seed.
      seeds: default seeds; each run binds ``SEED=<seed>`` and its name ends in ``_s<seed>``.
      fixed: bindings applied to every run, before the axis bindings.
      description: one line for ``--list``.
      seeds_first: if True, all seeds of a grid point run before the next point (a study run
        in parts then finishes whole ablations early); by default seeds vary slowest.
    """

    name: str
    gin_files: tuple[str, ...]
    axes: tuple[Axis, ...] = ()
    seeds: tuple[int, ...] = (0,)
    fixed: tuple[str, ...] = ()
    description: str = ""
    seeds_first: bool = False

    def __post_init__(self):
        if not _SWEEP_NAME_RE.match(self.name):
            raise ValueError(f"sweep name {self.name!r} must be snake_case")
        for field in ("gin_files", "axes", "seeds", "fixed"):
            object.__setattr__(self, field, tuple(getattr(self, field)))
        if not self.seeds:
            raise ValueError(f"sweep {self.name!r} has no seeds")
        self._check_each_macro_has_one_source()

    def _check_each_macro_has_one_source(self) -> None:
        """Every run binds ``SEED`` last and each axis's bindings after ``fixed`` (gin: the
        last binding wins). So a macro bound in two of these places would silently take one
        value while the run's name or the sweep's text says another (``--grid=SEED=1,2``
        trained two runs with seed 0): an error instead."""
        where: dict[str, str] = {}
        for binding in self.fixed:
            key = binding.split("=", 1)[0].strip()
            if key == SEED_MACRO:
                raise ValueError(
                    f"sweep {self.name!r} fixes {binding!r}, but each run binds its own "
                    f"{SEED_MACRO} from the sweep's seeds: remove it and give the seeds "
                    "instead (the sweep's seeds, or --seeds on the command line)")
            where[key] = "its fixed bindings"
        for axis in self.axes:
            keys = {k for point in axis.points for k in point.bindings}
            if SEED_MACRO in keys:
                raise ValueError(
                    f"sweep {self.name!r}: axis {axis.name!r} binds {SEED_MACRO}, but each "
                    f"run binds its own {SEED_MACRO} from the sweep's seeds (and that one "
                    "wins): remove the axis and give the seeds instead (the sweep's seeds, "
                    "or --seeds on the command line)")
            for key in sorted(keys):
                if key in where:
                    raise ValueError(
                        f"sweep {self.name!r}: axis {axis.name!r} and {where[key]} both bind "
                        f"{key}; a run would take only the later value: bind it in one place "
                        "(merge the axes, or drop it from the fixed bindings)")
                where[key] = f"axis {axis.name!r}"

    def swept_keys(self) -> set[str]:
        """Macro names that differ between runs (including ``SEED``)."""
        keys = {SEED_MACRO}
        for axis in self.axes:
            for point in axis.points:
                keys.update(point.bindings)
        return keys

    def runs(self, seeds: Iterable[int] | None = None) -> list[Run]:
        """All runs of the grid, for ``seeds`` (default: the sweep's own seeds)."""
        seeds = tuple(self.seeds if seeds is None else seeds)
        if not seeds:
            raise ValueError("at least one seed is needed")
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"duplicate seeds: {seeds}")
        runs = []
        # By default seeds vary slowest: a queue cut short still covers every grid point once.
        combos = list(itertools.product(*(axis.points for axis in self.axes)))
        order = ([(c, s) for c in combos for s in seeds] if self.seeds_first
                 else [(c, s) for s in seeds for c in combos])
        for combo, seed in order:
            gin_files = list(self.gin_files)
            bindings = list(self.fixed)
            for point in combo:
                if point.gin_files:
                    gin_files = list(point.gin_files)
                bindings += [f"{k}={v}" for k, v in point.bindings.items()]
            name = "_".join([p.label for p in combo] + [f"s{int(seed)}"])
            runs.append(
                Run(
                    name=f"{self.name}/{name}",
                    gin_files=gin_files,
                    bindings=bindings + [f"{SEED_MACRO}={int(seed)}"],
                )
            )
        return runs


# ---------------------------------------------------------------------------------------------
# Registry: one dict, duplicates raise, misses list the known names.

_SWEEPS: dict[str, Sweep] = {}


def register_sweep(sweep: Sweep) -> Sweep:
    """Adds ``sweep`` to the registry; a duplicate name raises ``ValueError``."""
    if sweep.name in _SWEEPS:
        raise ValueError(f"sweep {sweep.name!r} is already registered")
    _SWEEPS[sweep.name] = sweep
    return sweep


def get_sweep(name: str) -> Sweep:
    """The sweep called ``name``; ``KeyError`` listing the known names if there is none."""
    discover()
    try:
        return _SWEEPS[name]
    except KeyError:
        known = ", ".join(list_sweeps())
        raise KeyError(f"unknown sweep {name!r}; known sweeps: {known}") from None


def list_sweeps() -> list[str]:
    """Names of all registered sweeps, sorted."""
    discover()
    return sorted(_SWEEPS)


# ---------------------------------------------------------------------------------------------
# The study's sweeps (../shared/STUDY_PLAN.md). TPU sweeps default to one seed (each run is
# hours of a v4-32); pass --seeds=0,1,2 for error bars. CPU twins default to three seeds.

TN_SCHEDULES = ((2, 2), (2, 6), (3, 4), (3, 6), (4, 6))  # E2.2 (T=H_CYCLES, n=L_CYCLES)


def _tn_axis() -> Axis:
    return Axis(
        "tn",
        tuple(
            Point(f"t{t}_n{n}", {"H_CYCLES": str(t), "L_CYCLES": str(n)})
            for t, n in TN_SCHEDULES
        ),
    )


def _family(base: str, *, cpu: bool) -> list[Sweep]:
    """The sweep families, at TPU scale (``cpu=False``) or CPU scale (``cpu=True``)."""
    p = "cpu_" if cpu else ""
    seeds = (0, 1, 2) if cpu else (0,)

    def f(name: str) -> str:  # experiment file name, CPU twins carry the cpu_ prefix
        return f"{p}{name}.gin"

    if cpu:
        widths, puzzles = (32, 64, 128), (64, 256, 1024)
        lrs, lr_batches, batches = ("3e-4", "1e-3", "3e-3"), (32, 128), (16, 32, 64, 128)
    else:
        widths, puzzles = (256, 512, 1024), (250, 1000, 4000)
        lrs, lr_batches = ("5e-5", "1e-4", "2e-4", "4e-4", "8e-4"), (256, 512, 1024, 2048)
        batches = (256, 512, 1024, 2048)
    return [
        Sweep(
            f"{p}e2_1_ema",
            (base,),
            (files_axis("ema", {"ema_on": base, "ema_off": f("e2_1_ema_off")}),),
            seeds,
            description=f"E2.1: EMA of the weights on (baseline) vs off "
                        f"[{_paper('E1.1')} vs {_paper('E2.1')}]",
        ),
        Sweep(
            f"{p}e2_2_tn",
            (base,),
            (_tn_axis(),),
            seeds,
            description=f"E2.2: recursion schedule (T, n) "
                        f"[(2,2) {_paper('E2.2')}, (3,6) {_paper('E1.1')}]",
        ),
        Sweep(
            f"{p}e2_3_mixer",
            (f("e2_3_mlp"),),
            (files_axis("mixer", {"mlp": f("e2_3_mlp"), "attention": f("e2_3_attention")}),),
            seeds,
            description=f"E2.3: sequence mixer, MLP vs self-attention "
                        f"[{_paper('E1.1')} vs {_paper('E2.3')}]",
        ),
        Sweep(
            f"{p}e2_4_deep_supervision",
            (f("e2_4_ds4"),),
            (files_axis("ds", {"ds1": f("e2_4_ds1"), "ds4": f("e2_4_ds4"),
                               "ds16": f("e2_4_ds16")}),),
            seeds,
            description="E2.4: deep supervision, the number of supervised ACT steps "
                        "(1 = none; the paper reports no TRM number)",
        ),
        Sweep(
            f"{p}e2_5_halting",
            (f("e2_5_halt_only"),),
            (files_axis("halting", {"halt_only": f("e2_5_halt_only"),
                                    "halt_continue": f("e2_5_halt_continue"),
                                    "no_halting": f("e2_5_no_halting")}),),
            seeds,
            description=f"E2.5: halting head, halt only vs halt + continue (bootstrapped) vs "
                        f"none [{_paper('E1.1')} vs {_paper('E2.5')}]",
        ),
        Sweep(
            f"{p}e2_6_gradient",
            (base,),
            (files_axis("grad", {"last_cycle": base, "one_step": f("e2_6_one_step_grad")}),),
            seeds,
            description=f"E2.6: gradient through the last full cycle vs the 1-step (HRM) "
                        f"approximation [{_paper('E1.1')} vs {_paper('E2.6')}]",
        ),
        Sweep(
            f"{p}e2_7_architecture",
            (base,),
            (files_axis("arch", {"trm": base, "separate_nets": f("e2_7_separate_nets"),
                                 "single_latent": f("e2_7_single_latent"),
                                 "layers4_n3": f("e2_7_4layers_n3")}),),
            seeds,
            description=(
                "E2.7: architecture variants (separate nets, single latent, 4 layers with a "
                "smaller n; the paper's numbers: see e2_7_architecture)" if cpu else
                f"E2.7: architecture variants [{_paper('E1.1')}; separate nets "
                f"{_paper('E2.7', 'separate z / y networks')}, single latent "
                f"{_paper('E2.7', 'single latent z')}, 4 layers n=3 "
                f"{_paper('E2.7', '4 layers, n=3')}]"),
        ),
        Sweep(
            f"{p}e3_1_width",
            (base,),
            (macro_axis("HIDDEN_SIZE", widths, "h"),),
            seeds,
            description="E3.1: model size (hidden width)",
        ),
        Sweep(
            f"{p}e3_2_data",
            (base,),
            (macro_axis("NUM_TRAIN_PUZZLES", puzzles, "p"),),
            seeds,
            description="E3.2: data size (number of training puzzles)",
        ),
        Sweep(
            f"{p}e3_3_lr",
            (base,),
            (
                macro_axis("GLOBAL_BATCH_SIZE", lr_batches, "b"),
                macro_axis("LR", lrs, "lr"),
            ),
            seeds,
            description="E3.3: lr sweep at each global batch size (optimum lr vs batch)",
        ),
        Sweep(
            f"{p}e3_4_batch",
            (base,),
            (macro_axis("GLOBAL_BATCH_SIZE", batches, "b"),),
            seeds,
            description="E3.4: global batch size at the base lr (critical batch size)",
        ),
    ]


for _sweep in _family("e1_1_baseline.gin", cpu=False) + _family("cpu_e1_1_baseline.gin", cpu=True):
    register_sweep(_sweep)
del _sweep


# ---------------------------------------------------------------------------------------------
# Sweeps defined outside the library: modules with ``SWEEPS``, found by name (module docstring).

SWEEP_MODULES_ENV = "TRM_SWEEP_MODULES"
ENTRY_POINT_GROUP = "trm.sweeps"
STUDIES_DIR = "studies"
_LOADED: set[str] = set()  # what was registered already: module names, entry points
_DISCOVERED = False


def _register_all(sweeps: object, origin: str) -> None:
    if not isinstance(sweeps, Iterable):
        raise ValueError(f"{origin}: expected a sequence of Sweep objects, got "
                         f"{type(sweeps).__name__}")
    for sweep in sweeps:
        if not isinstance(sweep, Sweep):
            raise ValueError(f"{origin}: {sweep!r} is not a Sweep")
        if _SWEEPS.get(sweep.name) == sweep:
            continue  # the same definition, reached twice (a study named in two places)
        if sweep.name in _SWEEPS:
            raise ValueError(f"{origin}: sweep {sweep.name!r} is already defined elsewhere")
        _SWEEPS[sweep.name] = sweep


def load_sweep_module(name: str) -> None:
    """Imports module ``name`` and registers its ``SWEEPS`` (once per module).

    Raises:
      ValueError: one line, for a module that cannot be imported or has no ``SWEEPS``.
    """
    if name in _LOADED:
        return
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", name):
        raise ValueError(f"sweep module {name!r} is not a dotted Python module name")
    try:
        module = importlib.import_module(name)
    except ImportError as e:
        raise ValueError(f"sweep module {name!r} cannot be imported: {e}") from None
    if not hasattr(module, "SWEEPS"):
        raise ValueError(f"sweep module {name!r} has no SWEEPS (a sequence of Sweep objects)")
    _register_all(module.SWEEPS, f"sweep module {name!r}")
    _LOADED.add(name)


def _sweep_module_arg(text: str) -> str:
    """``--sweep_module`` as argparse ``type``: loads the module(s) while parsing."""
    for name in (n.strip() for n in text.split(",")):
        if name:
            try:
                load_sweep_module(name)
            except ValueError as e:
                raise argparse.ArgumentTypeError(str(e)) from None
    return text


def add_sweep_module_flag(parser: argparse.ArgumentParser) -> None:
    """Adds ``--sweep_module=MODULE`` (repeatable) to a launcher's command line."""
    parser.add_argument("--sweep_module", action="append", default=[], metavar="MODULE",
                        type=_sweep_module_arg,
                        help=f"a module whose SWEEPS to add (repeatable; also "
                             f"${SWEEP_MODULES_ENV}, the {ENTRY_POINT_GROUP} entry points and "
                             f"{STUDIES_DIR}/*/sweep.py)")


def _load_entry_points() -> None:
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        key = f"entry point {ep.name} = {ep.value}"
        if key in _LOADED:
            continue
        try:
            obj = ep.load()
        except ImportError as e:
            raise ValueError(f"{ENTRY_POINT_GROUP} {key}: cannot be imported: {e}") from None
        if hasattr(obj, "SWEEPS"):
            obj = obj.SWEEPS
        elif callable(obj):
            obj = obj()
        _register_all(obj, f"{ENTRY_POINT_GROUP} {key}")
        _LOADED.add(key)


def studies_root() -> str | None:
    """The folder holding ``studies/``: the current directory, else the source checkout."""
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for root in (os.getcwd(), checkout):
        if os.path.isfile(os.path.join(root, STUDIES_DIR, "__init__.py")):
            return root
    return None


def _load_studies() -> None:
    root = studies_root()
    if root is None:
        return
    importable = {os.path.realpath(p or os.getcwd()) for p in sys.path}
    if os.path.realpath(root) not in importable:
        sys.path.append(root)  # after the installed packages: `studies` is the project's
    folder = os.path.join(root, STUDIES_DIR)
    for name in sorted(os.listdir(folder)):
        if os.path.isfile(os.path.join(folder, name, "sweep.py")):
            load_sweep_module(f"{STUDIES_DIR}.{name}.sweep")


def discover() -> None:
    """Registers the sweeps of ``$TRM_SWEEP_MODULES``, the ``trm.sweeps`` entry points and
    ``studies/*/sweep.py`` (once; ``--sweep_module`` loads its modules while parsing)."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    for name in os.environ.get(SWEEP_MODULES_ENV, "").split(","):
        if name.strip():
            load_sweep_module(name.strip())
    _load_entry_points()
    _load_studies()
    _DISCOVERED = True
