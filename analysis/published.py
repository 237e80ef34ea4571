"""The paper's published numbers, per experiment of the study (docs: /work/shared/STUDY_PLAN.md).

Each :class:`Published` entry is one configuration of the paper (Tiny Recursive Models, Tables 1
and 2) written as its *difference* from the task's baseline (:data:`BASELINES`), in the
canonical hyperparameter columns of :mod:`analysis.hparams`. Numbers are test exact accuracy
(whole-puzzle) in percent, or pass@2 for ARC. Only numbers the study plan quotes are here;
configurations without a published number (e.g. T=2, n=6) are simply absent.

:func:`match` finds the entry for a configuration, looking at the structural axes (T, n, mixer,
EMA, halting, gradient path, recursion core) and at the scale axes only where they vary
within the compared runs: a T/n sweep at CPU scale (hidden 64) still matches the paper's T/n
rows, while a model-size ladder (hidden size varies) matches nothing except hidden 512.

:data:`PUBLISHED` is the single source of the paper's numbers in this repository. The sweep
descriptions (:mod:`launchers.named_sweeps`) are built from it with :func:`percent`; the
``Published:`` lines of the gin experiment headers quote it and tests/test_gin_tree.py checks
every number they quote against it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = ["Published", "PUBLISHED", "BASELINES", "STRUCTURAL_AXES", "match", "for_experiment",
           "get", "percent", "TASK_NAMES"]

TASK_NAMES = {
    "sudoku": "Sudoku-Extreme",
    "maze": "Maze-Hard",
    "arc1": "ARC-AGI-1",
    "arc2": "ARC-AGI-2",
}

#: Baseline configuration per task family, in canonical columns.
BASELINES: Dict[str, Dict[str, Any]] = {
    "sudoku": dict(T=3, n=6, mixer="mlp", ema=True, hidden_size=512, num_layers=2,
                   halt_max_steps=16, halting="halt_only", gradient="last_cycle", core="trm",
                   global_batch_size=256, lr=1e-4,
                   num_train_puzzles=1000, num_aug=1000),
    "maze": dict(T=3, n=4, mixer="attention", ema=True, hidden_size=512, num_layers=2,
                 halt_max_steps=16, halting="halt_only", gradient="last_cycle", core="trm",
                 num_train_puzzles=1000),
    "arc1": dict(T=3, n=4, mixer="attention", ema=True, hidden_size=512, num_layers=2,
                 halt_max_steps=16, halting="halt_only", gradient="last_cycle", core="trm"),
    "arc2": dict(T=3, n=4, mixer="attention", ema=True, hidden_size=512, num_layers=2,
                 halt_max_steps=16, halting="halt_only", gradient="last_cycle", core="trm"),
}

#: Values the ``halting`` column may take for "halt + continue head" (trm registers
#: ``@halting.halt_continue``; the others are accepted aliases).
HALT_CONTINUE = ("halt_continue", "halt_and_continue", "q_continue", "continue", "act_continue")


@dataclasses.dataclass(frozen=True)
class Published:
    experiment: str  # study id, e.g. "E2.2"
    label: str  # short description
    task: str  # task family
    diff: Mapping[str, Any]  # canonical column -> value (a tuple means any of these values)
    value: float  # percent
    metric: str = "exact_accuracy"
    source: str = "TRM paper, Tables 1-2"

    @property
    def fraction(self) -> float:
        return self.value / 100.0

    def as_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["diff"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.diff.items()}
        d["fraction"] = self.fraction
        return d


PUBLISHED: Tuple[Published, ...] = (
    Published("E1.1", "baseline (MLP, T=3, n=6, EMA)", "sudoku", {}, 87.4),
    Published("E2.1", "EMA off", "sudoku", {"ema": False}, 79.9),
    Published("E2.2", "T=2, n=2", "sudoku", {"T": 2, "n": 2}, 73.7),
    Published("E2.3", "self-attention mixer", "sudoku", {"mixer": ("attention", "self_attention",
                                                                  "attn")}, 74.7),
    Published("E2.5", "halt + continue head (bootstrapped Q)", "sudoku",
              {"halting": HALT_CONTINUE}, 86.1),
    Published("E2.6", "1-step gradient (HRM)", "sudoku", {"gradient": "one_step"}, 56.5),
    Published("E2.7", "separate z / y networks", "sudoku", {"core": "trm_separate"}, 82.4),
    Published("E2.7", "single latent z", "sudoku", {"core": "trm_single_latent"}, 71.9),
    Published("E2.7", "4 layers, n=3", "sudoku", {"num_layers": 4, "n": 3}, 79.5),
    Published("Maze", "attention, T=3, n=4", "maze", {}, 85.3),
    Published("ARC-1", "attention, T=3, n=4, pass@2", "arc1", {}, 44.6, metric="pass@2"),
    Published("ARC-2", "attention, T=3, n=4, pass@2", "arc2", {}, 7.8, metric="pass@2"),
)


def _py(v: Any) -> Any:
    """numpy scalars -> Python scalars."""
    item = getattr(v, "item", None)
    if item is not None and getattr(v, "shape", None) == ():
        try:
            return item()
        except (ValueError, TypeError):
            return v
    return v


def _missing(v: Any) -> bool:
    v = _py(v)
    if v is None:
        return True
    try:
        return bool(v != v)  # NaN, pd.NA-like
    except (TypeError, ValueError):
        return False


def _equal(a: Any, b: Any) -> bool:
    a, b = _py(a), _py(b)
    if isinstance(b, tuple):
        return any(_equal(a, x) for x in b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9)
    if isinstance(a, str) and isinstance(b, str):
        return a.lower() == b.lower()
    try:
        return bool(a == b)
    except Exception:
        return False


#: Axes that define the model variant; always compared with the baseline in absolute terms.
#: The others (width, depth, halt_max_steps, batch, lr, data size) are scale knobs that the
#: CPU twins shrink, so they count only when they vary among the compared runs.
STRUCTURAL_AXES: Tuple[str, ...] = ("T", "n", "mixer", "ema", "halting", "gradient", "core")


def match(config: Mapping[str, Any], varying: Sequence[str] = (), task: Optional[str] = None,
          metric: str = "exact_accuracy", relative: bool = False) -> Optional[Published]:
    """The published entry for ``config`` (None if the paper has no number for it).

    ``config`` is judged on :data:`STRUCTURAL_AXES` plus the ``varying`` axes (those that vary
    among the compared runs): a T/n sweep at hidden 64 still matches the paper's T/n rows, a
    model-size ladder matches nothing except hidden 512. ``task`` defaults to
    ``config["task_family"]``, then to "sudoku" (the study's main task). Unknown values (None)
    on an axis are treated as the baseline's. With ``relative`` (CPU-scale twins), structural
    axes that do not vary are taken as the paper baseline's, so a twin's ablation is shown next
    to the paper's number for that ablation.
    """
    task = task or config.get("task_family") or "sudoku"
    base = BASELINES.get(task)
    if base is None:
        return None
    if relative and varying:
        # A scaled-down twin (e.g. T=2, n=3 at hidden 64) is its own baseline: only the axes
        # its experiment varies are compared with the paper's ablation.
        config = {**config, **{ax: base[ax] for ax in STRUCTURAL_AXES
                               if ax in base and ax not in varying}}
    varying = list(dict.fromkeys(list(STRUCTURAL_AXES) + list(varying)))
    diff = {}
    for ax in varying:
        if ax not in base:
            continue
        v = config.get(ax)
        if _missing(v) or _equal(v, base[ax]):
            continue
        diff[ax] = v
    for entry in PUBLISHED:
        if entry.task != task or entry.metric != metric:
            continue
        # every varying axis that differs from the baseline is explained by the entry ...
        if any(ax not in entry.diff or not _equal(v, entry.diff[ax]) for ax, v in diff.items()):
            continue
        # ... and the entry's own differences hold (those on non-varying axes are not checked
        # against the runs' absolute values, only against "not the baseline" when known)
        ok = True
        for ax, want in entry.diff.items():
            v = config.get(ax)
            if ax in varying:
                if _missing(v) or not _equal(v, want):
                    ok = False
            elif ax in diff:
                ok = ok and _equal(diff[ax], want)
            else:
                ok = False  # the entry changes an axis the runs do not vary
        if ok:
            return entry
    return None


def for_experiment(experiment_id: str) -> List[Published]:
    """All entries of one study experiment id (``"E2.7"`` -> three entries)."""
    return [p for p in PUBLISHED if p.experiment == experiment_id]


def get(experiment_id: str, label: Optional[str] = None) -> Published:
    """The one entry of ``experiment_id`` (and ``label``, needed where the id has several).

    ``KeyError`` when none or several entries fit.
    """
    found = [p for p in for_experiment(experiment_id) if label is None or p.label == label]
    if len(found) != 1:
        labels = [p.label for p in for_experiment(experiment_id)]
        raise KeyError(f"{len(found)} published entries for {experiment_id!r}"
                       f"{'' if label is None else f' / {label!r}'}; its labels: {labels}")
    return found[0]


def percent(experiment_id: str, label: Optional[str] = None) -> str:
    """The entry's number as text, e.g. ``"87.4%"`` (for descriptions that quote the paper)."""
    return f"{get(experiment_id, label).value:g}%"
