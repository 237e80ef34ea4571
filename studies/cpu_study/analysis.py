"""The CPU study's report: its ablations, and the analysis that answers them.

The study (issue #12, docs/results/cpu_study/) runs the CPU twins (``gin/experiments/cpu/``) on
generated 9x9 Sudoku with 50 blanks, a task on which the twin lands far below saturation within
a CPU budget, with three seeds per arm and the same number of optimizer steps for every run.

* :data:`ARMS` (from :mod:`studies.cpu_study.sweep`, which builds the ``cpu_study`` sweep from
  them) — every configuration of the study, once: a label, the twin's gin file and any extra
  bindings.
* :data:`ABLATIONS` — each ablation as a *contrast* of arms (``effect = sum w_a * mean_a``):
  a difference of two arms, or for LR x batch the interaction of a 2 x 2 grid. The paper's
  direction and, where the paper publishes one, its number come from :mod:`analysis.published`.
* :func:`analyze` — per arm: mean exact accuracy over seeds, the pooled Wilson interval over all
  its seeds' test puzzles and the seed-to-seed spread; per ablation: the effect and its own 95 %
  interval (below); ``agrees`` is ``True`` when the interval excludes zero in the paper's
  direction, ``False`` when it excludes zero in the other direction, else ``"inconclusive"``.
  An ablation with an arm that has fewer than :data:`MIN_SEEDS` finished seeds is ``"pending"``.
* :func:`write_report` — ``results.json``, ``RESULTS.md`` and the plots.

The effect interval. Seeds are matched across arms: seed ``s`` gives every arm the same data
order and halting-exploration draws and, where the parameter shapes agree, the same
initialisation. Much of the seed-to-seed spread is therefore shared by the arms, and an effect
is measured per seed (``sum w_a * acc_a(s)``) and then averaged. Its 95 % interval is the
*wider* (union) of two paired intervals, each kept inside the effect's range: (1) a hierarchical
percentile bootstrap over seeds and puzzles: each replicate draws seeds with replacement, the
same for every arm, and for each drawn seed each arm's ``n`` test puzzles (a binomial draw at
that seed's accuracy); (2) a Student t interval over the per-seed effects. With three seeds the
bootstrap alone is too narrow (it cannot see more spread than three values show) and the t
interval alone ignores nothing but is coarse; the union is the conservative choice. Arms
without common seeds fall back to the unpaired forms (per-arm bootstrap, Welch t).

Command line::

    python -m studies.cpu_study.analysis --runs=runs/cpu_study --out=docs/results/cpu_study
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from analysis.published import get as _published
from studies.cpu_study.sweep import ARM_BY_LABEL, ARMS, SEEDS, STUDY_STEPS

__all__ = ["Ablation", "ARMS", "ABLATIONS", "STUDY_STEPS", "MIN_SEEDS", "SEEDS",
           "contrast_interval", "analyze", "write_report", "main"]

METRIC = "eval/exact_accuracy"
MIN_SEEDS = 3


@dataclasses.dataclass(frozen=True)
class Ablation:
    """An ablation as a contrast of arms.

    Attributes:
      name: results.json name, e.g. ``e2_1_ema``.
      title: one line for the report.
      arms: the arms shown for this ablation, in plotting order.
      weights: the contrast, arm label -> weight; ``effect = sum w * mean accuracy``.
      direction: +1 when the paper (or the study plan's hypothesis) expects a positive effect.
      paper_direction: the expectation in words.
      paper_effect: the paper's own effect in accuracy points, where it publishes both arms.
      paper_arms: arm label -> the paper's number for that configuration (percent), if any.
      effect_text: what the effect measures, in words.
    """

    name: str
    title: str
    arms: Tuple[str, ...]
    weights: Mapping[str, float]
    direction: int
    paper_direction: str
    effect_text: str
    paper_effect: Optional[float] = None
    paper_arms: Mapping[str, float] = dataclasses.field(default_factory=dict)
    #: secondary contrasts reported with the ablation (no verdict): (definition, weights)
    also: Tuple[Tuple[str, Mapping[str, float]], ...] = ()

    @property
    def bound(self) -> float:
        """The contrast's largest possible magnitude, in accuracy fraction (1 for a difference)."""
        pos = sum(w for w in self.weights.values() if w > 0)
        neg = -sum(w for w in self.weights.values() if w < 0)
        return float(max(pos, neg))




def _pp(experiment: str, label: Optional[str] = None) -> float:
    return float(_published(experiment, label).value)


def _ablations() -> Tuple[Ablation, ...]:
    base, ema_off = _pp("E1.1"), _pp("E2.1")
    t2n2, attn = _pp("E2.2", "T=2, n=2"), _pp("E2.3")
    return (
        Ablation("e2_1_ema", "E2.1 EMA of the weights: on (baseline) vs off",
                 ("base", "ema_off"), {"base": 1, "ema_off": -1}, +1,
                 f"EMA helps: {base:.1f}% with vs {ema_off:.1f}% without (Sudoku-Extreme)",
                 "EMA on minus EMA off", base - ema_off, {"base": base, "ema_off": ema_off}),
        Ablation("e2_2_tn", "E2.2 recursion schedule (T, n): deepest study point vs shallowest",
                 ("t1_n1", "t2_n2", "base", "t2_n6", "t3_n4", "t3_n6", "t4_n6"),
                 {"t3_n6": 1, "t2_n2": -1}, +1,
                 f"deeper recursion helps: T=3, n=6 {base:.1f}% vs T=2, n=2 {t2n2:.1f}%",
                 "T=3, n=6 minus T=2, n=2", base - t2n2, {"t3_n6": base, "t2_n2": t2n2},
                 also=(("T=2, n=3 (baseline) minus T=1, n=1 (the pilots' comparison, below "
                        "the study's points)", {"base": 1, "t1_n1": -1}),
                       ("T=4, n=6 minus T=2, n=2", {"t4_n6": 1, "t2_n2": -1}))),
        Ablation("e2_3_mixer", "E2.3 sequence mixer: MLP (baseline) vs self-attention",
                 ("base", "attention"), {"base": 1, "attention": -1}, +1,
                 f"the MLP mixer is better on Sudoku: {base:.1f}% vs attention {attn:.1f}%",
                 "MLP minus attention", base - attn, {"base": base, "attention": attn}),
        Ablation("e2_4_deep_supervision",
                 "E2.4 deep supervision: up to 8 supervision steps (baseline) vs 1",
                 ("ds1", "ds2", "base"), {"base": 1, "ds1": -1}, +1,
                 "deep supervision is the main source of accuracy; one step is far worse "
                 "(no TRM number in the paper's tables)",
                 "8 supervision steps minus 1",
                 also=(("2 supervision steps minus 1", {"ds2": 1, "ds1": -1}),
                       ("8 supervision steps minus 2", {"base": 1, "ds2": -1}))),
        Ablation("e3_2_data", "E3.2 data size: 4000 vs 250 training puzzles (x8 augmentations)",
                 ("p250", "base", "p4000"), {"p4000": 1, "p250": -1}, +1,
                 "more distinct puzzles, lower error (power law; no published number)",
                 "4000 puzzles minus 250"),
        Ablation("e3_3_lr_batch",
                 "E3.3 LR x batch: does the larger batch gain more from the larger lr?",
                 ("b32_lr1e-3", "b32_lr3e-3", "base", "b64_lr3e-3"),
                 {"b64_lr3e-3": 1, "base": -1, "b32_lr3e-3": -1, "b32_lr1e-3": 1}, +1,
                 "the optimal lr grows with the batch size (no published number)",
                 "(lr 3e-3 minus 1e-3 at batch 64) minus (the same at batch 32)",
                 also=(("lr 3e-3 minus 1e-3 at batch 64", {"b64_lr3e-3": 1, "base": -1}),
                       ("lr 3e-3 minus 1e-3 at batch 32",
                        {"b32_lr3e-3": 1, "b32_lr1e-3": -1}))),
        Ablation("e3_1_width", "E3.1 model size: hidden 128 vs hidden 32",
                 ("h32", "base", "h128"), {"h128": 1, "h32": -1}, +1,
                 "more parameters, lower error at fixed data (power law; no published number)",
                 "hidden 128 minus hidden 32"),
    )


ABLATIONS: Tuple[Ablation, ...] = _ablations()


# ---------------------------------------------------------------------------------------------
# Statistics


def _welch(groups: Sequence[Tuple[float, np.ndarray]], confidence: float
           ) -> Tuple[float, float]:
    """Welch t interval of ``sum w * mean(x)`` for (weight, seed values) groups."""
    from scipy import stats as sps

    var_terms = []
    for w, x in groups:
        if len(x) < 2:
            return (math.nan, math.nan)
        var_terms.append((w * w * float(np.var(x, ddof=1)) / len(x), len(x)))
    est = sum(w * float(np.mean(x)) for w, x in groups)
    se2 = sum(v for v, _ in var_terms)
    if not se2 > 0:
        return (est, est)
    df = se2 ** 2 / sum(v * v / (n - 1) for v, n in var_terms if v > 0)
    half = float(sps.t.ppf(0.5 + confidence / 2, df)) * math.sqrt(se2)
    return (est - half, est + half)


def _bootstrap(groups: Sequence[Tuple[float, np.ndarray, np.ndarray]], confidence: float,
               n_boot: int, seed: int, paired: bool = False) -> Tuple[float, float]:
    """Hierarchical percentile bootstrap of ``sum w * mean(acc)``: seeds, then puzzles.

    ``groups`` holds (weight, per-seed accuracies, per-seed puzzle counts). ``paired``: the
    arms are seed-matched (same seeds, same order), so the seeds are resampled jointly for every
    arm (the same drawn seeds, then each arm's puzzles of those seeds); otherwise each arm's
    seeds are resampled independently.
    """
    rng = np.random.default_rng(seed)
    shared = (rng.integers(0, len(groups[0][1]), size=(n_boot, len(groups[0][1])))
              if paired else None)
    total = np.zeros(n_boot)
    for w, acc, n in groups:
        idx = shared if paired else rng.integers(0, len(acc), size=(n_boot, len(acc)))
        counts = n[idx].astype(np.int64)
        draws = rng.binomial(counts, acc[idx]) / np.maximum(counts, 1)
        total += w * draws.mean(axis=1)
    lo, hi = np.quantile(total, [(1 - confidence) / 2, (1 + confidence) / 2])
    return (float(lo), float(hi))


def contrast_interval(arms: Mapping[str, Tuple[Sequence[float], ...]],
                      weights: Mapping[str, float], *, confidence: float = 0.95,
                      n_boot: int = 20000, seed: int = 0) -> Dict[str, Any]:
    """The effect ``sum w_a * mean_a`` and its interval (module docstring).

    Args:
      arms: arm label -> (per-seed accuracies in [0, 1], per-seed numbers of test puzzles[,
        the seeds]). With the seeds given and at least two seeds common to every arm of the
        contrast, the arms are *seed-matched*: the effect is the mean over those seeds of the
        per-seed contrast, and both intervals are paired (bootstrap resampling the seeds
        jointly, t interval over the per-seed contrasts). Otherwise the arms are treated as
        independent (bootstrap per arm, Welch t).
      weights: the contrast.
    Returns: ``effect``, ``ci`` (the union, clipped to the contrast's range), ``ci_bootstrap``,
      ``ci_t`` (fractions; nan where it cannot be computed), ``paired`` and ``seeds`` (the
      seeds used when paired).
    """
    data = {}
    for label in weights:
        entry = arms[label]
        acc = np.asarray(entry[0], dtype=float)
        n = np.asarray(entry[1], dtype=float)
        if len(acc) == 0 or np.any(~np.isfinite(acc)):
            raise ValueError(f"arm {label!r} has no finite results")
        if np.any((acc < 0) | (acc > 1)):
            raise ValueError(f"arm {label!r}: accuracies must lie in [0, 1], got {acc}")
        seeds = list(entry[2]) if len(entry) > 2 else None
        data[label] = (acc, n, seeds)
    bound = max(sum(w for w in weights.values() if w > 0),
                -sum(w for w in weights.values() if w < 0))
    common = None
    if all(d[2] is not None for d in data.values()):
        common = sorted(set.intersection(*(set(d[2]) for d in data.values())))
    if common is not None and len(common) >= 2:
        groups = []
        for label, w in weights.items():
            acc, n, seeds = data[label]
            pos = [seeds.index(s) for s in common]
            groups.append((float(w), acc[pos], n[pos]))
        d = sum(w * acc for w, acc, _ in groups)
        effect = float(np.mean(d))
        b = _bootstrap(groups, confidence, n_boot, seed, paired=True)
        t = _stats().t_interval(d, confidence)
        paired = True
    else:
        groups = [(float(w), data[label][0], data[label][1]) for label, w in weights.items()]
        effect = sum(w * float(np.mean(acc)) for w, acc, _ in groups)
        b = _bootstrap(groups, confidence, n_boot, seed)
        t = _welch([(w, acc) for w, acc, _ in groups], confidence)
        paired, common = False, None
    lows = [v for v in (b[0], t[0]) if np.isfinite(v)]
    highs = [v for v in (b[1], t[1]) if np.isfinite(v)]
    lo = max(-bound, min(lows)) if lows else math.nan
    hi = min(bound, max(highs)) if highs else math.nan
    return {"effect": effect, "ci": [lo, hi], "ci_bootstrap": list(b), "ci_t": list(t),
            "paired": paired, "seeds": common}


# ---------------------------------------------------------------------------------------------
# Loading


def _run_command(command: Mapping[str, Any]) -> str:
    """The exact ``python -m trm.train ...`` line of a run, from its command.json."""
    argv = list(command.get("argv") or [])
    args = [a for a in argv[1:]]
    workdir = next((a.split("=", 1)[1] for a in args if a.startswith("--workdir=")), None)
    keep = []
    for a in args:
        if a.startswith("--workdir="):
            continue
        if a in ("--noprogress", "--progress"):
            continue
        keep.append(a)
    line = ["python", "-m", "trm.train"] + keep
    if workdir:
        line.append(f"--workdir=runs/cpu_study/{_tail(workdir)}")
    return " ".join(shlex.quote(a) for a in line)


def _tail(workdir: str) -> str:
    parts = workdir.rstrip("/").split("/")
    return "/".join(parts[-1:])


def load(root: str) -> List[Dict[str, Any]]:
    """One dict per study run under ``root`` (``<root>/<arm>_s<seed>/`` or
    ``<root>/cpu_study/<arm>_s<seed>/``): label, seed, status, final metrics, command, wall."""
    base = os.path.join(root, "cpu_study") if os.path.isdir(os.path.join(root, "cpu_study")) \
        else root
    out = []
    if not os.path.isdir(base):
        raise FileNotFoundError(f"no study runs under {root!r}: run "
                                f"`python -m launchers.local --sweep=cpu_study --root={root}`")
    for name in sorted(os.listdir(base)):
        path = os.path.join(base, name)
        label, sep, seed = name.rpartition("_s")
        if not sep or not seed.isdigit() or label not in ARM_BY_LABEL:
            continue
        meta_path = os.path.join(path, "run.json")
        if not os.path.isfile(meta_path):
            continue
        with open(meta_path) as f:
            meta = json.load(f)
        command = {}
        if os.path.isfile(os.path.join(path, "command.json")):
            with open(os.path.join(path, "command.json")) as f:
                command = json.load(f)
        last = meta.get("last_eval") or {}
        evals = _eval_history(path)
        out.append({
            "name": f"cpu_study/{name}", "arm": label, "seed": int(seed),
            "status": meta.get("status"),
            "last_step": meta.get("last_step"), "total_steps": meta.get("total_steps"),
            "final_step": meta.get("last_eval_step"),
            "final": {k: v for k, v in last.items()},
            "history": evals,
            "wall_s": _wall(meta, path),
            "torch_threads": meta.get("torch_threads"),
            "forward_dtype": meta.get("forward_dtype"),
            "num_params": meta.get("num_params"),
            "git_commit": meta.get("git_commit"),
            "command": _run_command(command) if command else None,
        })
    return out


def _eval_history(path: str) -> List[Dict[str, Any]]:
    """[{step, exact_accuracy, accuracy}] from the run's ``eval/step_*/metrics.json`` files."""
    d = os.path.join(path, "eval")
    rows = []
    if not os.path.isdir(d):
        return rows
    for sub in sorted(os.listdir(d)):
        fn = os.path.join(d, sub, "metrics.json")
        if not os.path.isfile(fn):
            continue
        try:
            with open(fn) as f:
                m = json.load(f)
        except (OSError, ValueError):
            continue
        step, acc = m.get("step"), m.get(METRIC)
        if isinstance(step, int) and isinstance(acc, (int, float)):
            rows.append({"step": step, "exact_accuracy": float(acc),
                         "accuracy": m.get("eval/accuracy")})
    return sorted(rows, key=lambda r: r["step"])


def _wall(meta: Mapping[str, Any], path: str) -> Optional[float]:
    from datetime import datetime

    # active_s: the seconds the run's processes ran, over all restarts (runs written before
    # it existed: end_time - start_time, which also counts a preempted run's wait)
    active = meta.get("active_s")
    if isinstance(active, (int, float)) and not isinstance(active, bool) and active > 0:
        return float(active)
    try:
        a = datetime.fromisoformat(str(meta["start_time"]).replace("Z", "+00:00"))
        b = datetime.fromisoformat(str(meta["end_time"]).replace("Z", "+00:00"))
        return (b - a).total_seconds()
    except (KeyError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# Analysis


def analyze(runs: Sequence[Mapping[str, Any]], *, confidence: float = 0.95,
            n_boot: int = 20000) -> Dict[str, Any]:
    """Arms and ablations from loaded runs (only completed runs at the full budget count)."""
    done = [r for r in runs if r["status"] == "completed" and r["final"].get(METRIC) is not None
            and r.get("final_step") == r.get("total_steps")]
    by_arm: Dict[str, List[Mapping[str, Any]]] = {}
    for r in done:
        by_arm.setdefault(r["arm"], []).append(r)
    arms: Dict[str, Dict[str, Any]] = {}
    for arm in ARMS:
        rs = sorted(by_arm.get(arm.label, []), key=lambda r: r["seed"])
        if not rs:
            arms[arm.label] = {"label": arm.label, "description": arm.description,
                               "gin_file": arm.gin_file, "seeds": [], "n_seeds": 0}
            continue
        acc = np.array([float(r["final"][METRIC]) for r in rs])
        n = np.array([int(r["final"].get("eval/count") or 0) for r in rs])
        k = float(np.sum(np.round(acc * n)))
        lo, hi = _stats().wilson_interval(k, float(np.sum(n)), confidence)
        arms[arm.label] = {
            "label": arm.label, "description": arm.description, "gin_file": arm.gin_file,
            "seeds": [int(r["seed"]) for r in rs], "n_seeds": len(rs),
            "per_seed": [float(a) for a in acc], "puzzles": [int(x) for x in n],
            "mean": float(acc.mean()), "std": float(acc.std(ddof=1)) if len(acc) > 1 else None,
            "wilson": [lo, hi],
            "cell_accuracy": float(np.mean([float(r["final"].get("eval/accuracy", math.nan))
                                            for r in rs])),
            "num_params": rs[0].get("num_params"),
        }
    ablations = []
    for ab in ABLATIONS:
        need = list(ab.weights)
        seeds = {a: arms[a]["n_seeds"] for a in ab.arms}
        entry: Dict[str, Any] = {
            "name": ab.name, "title": ab.title, "paper_direction": ab.paper_direction,
            "effect_definition": ab.effect_text, "weights": dict(ab.weights),
            "paper_effect": ab.paper_effect, "paper_arms": dict(ab.paper_arms),
            "arms": list(ab.arms), "seeds": min(seeds[a] for a in need),
            "seeds_per_arm": seeds,
        }
        if any(arms[a]["n_seeds"] == 0 for a in need):
            entry.update(effect=None, ci=None, agrees="pending")
        else:
            c = contrast_interval(
                {a: (arms[a]["per_seed"], arms[a]["puzzles"], arms[a]["seeds"]) for a in need},
                ab.weights,
                confidence=confidence, n_boot=n_boot, seed=_stable_seed(ab.name))
            lo, hi = c["ci"]
            if entry["seeds"] < MIN_SEEDS:
                verdict: Any = "pending"
            elif lo > 0:
                verdict = ab.direction > 0
            elif hi < 0:
                verdict = ab.direction < 0
            else:
                verdict = "inconclusive"
            entry.update(effect=100 * c["effect"], ci=[100 * lo, 100 * hi],
                         ci_bootstrap=[100 * v for v in c["ci_bootstrap"]],
                         ci_t=[100 * v if np.isfinite(v) else None for v in c["ci_t"]],
                         paired=c["paired"], paired_seeds=c["seeds"],
                         per_seed_effect=(None if not c["paired"] else [
                             100 * sum(w * arms[a]["per_seed"][arms[a]["seeds"].index(sd)]
                                       for a, w in ab.weights.items())
                             for sd in c["seeds"]]),
                         agrees=verdict)
        entry["also"] = []
        for text, weights in ab.also:
            if any(arms[a]["n_seeds"] < MIN_SEEDS for a in weights):
                entry["also"].append({"definition": text, "effect": None, "ci": None})
                continue
            c = contrast_interval(
                {a: (arms[a]["per_seed"], arms[a]["puzzles"], arms[a]["seeds"]) for a in weights},
                weights, confidence=confidence, n_boot=n_boot, seed=_stable_seed(text))
            entry["also"].append({"definition": text, "effect": 100 * c["effect"],
                                  "ci": [100 * c["ci"][0], 100 * c["ci"][1]]})
        ablations.append(entry)
    spreads = [a["std"] for a in arms.values() if a.get("std") is not None and a["n_seeds"] >= 2]
    walls = [r["wall_s"] for r in runs if r.get("wall_s")]
    cpu_s = sum((r["wall_s"] or 0) * (r.get("torch_threads") or 1) for r in runs)
    return {
        "metric": METRIC, "confidence": confidence, "steps_per_run": STUDY_STEPS,
        "interval_method": "seed-matched arms: the union of a paired hierarchical bootstrap "
                           "(seeds drawn jointly for all arms, then each arm's puzzles) and a "
                           "t interval over the per-seed effects, clipped to the effect's range",
        "arms": arms, "ablations": ablations,
        "seed_spread": {"mean_std_points": 100 * float(np.mean(spreads)) if spreads else None,
                        "max_std_points": 100 * float(np.max(spreads)) if spreads else None,
                        "arms": len(spreads)},
        "compute": {"runs": len(runs), "completed": len(done),
                    "wall_hours": sum(walls) / 3600.0, "cpu_hours": cpu_s / 3600.0},
        "runs": [_public_run(r) for r in runs],
    }


def _stats():
    """analysis.stats, imported when needed (it imports pandas; the sweep does not)."""
    from analysis import stats

    return stats


def _stable_seed(name: str) -> int:
    return sum((i + 1) * ord(c) for i, c in enumerate(name)) % (2 ** 31)


def _public_run(r: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: r[k] for k in ("name", "arm", "seed", "status", "command", "wall_s",
                              "torch_threads", "forward_dtype", "num_params", "final",
                              "history", "git_commit")}


# ---------------------------------------------------------------------------------------------
# Report


def _fmt_pct(v: Optional[float], digits: int = 1) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{100 * v:.{digits}f}%"


def _fmt_pts(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:+.1f}"


def _verdict(v: Any) -> str:
    return {True: "agrees", False: "disagrees"}.get(v, str(v)) if isinstance(v, bool) else str(v)


def _plt():
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def arms_figure(res: Mapping[str, Any], name: str):
    """Bar chart of one ablation's arms: mean over seeds, pooled Wilson 95% bars, each seed as
    a dot, the paper's number as a green dash. None when no arm has finished runs."""
    plt = _plt()
    arms = res["arms"]
    ab = next(a for a in res["ablations"] if a["name"] == name)
    labels = [a for a in ab["arms"] if arms[a]["n_seeds"]]
    if not labels:
        return None
    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(labels), 3.4))
    paper_labelled = False
    for i, a in enumerate(labels):
        d = arms[a]
        lo, hi = d["wilson"]
        ax.bar(i, 100 * d["mean"], width=0.6,
               color="#3182bd" if ab["weights"].get(a, 0) else "#9ecae1")
        ax.errorbar(i, 100 * d["mean"], yerr=[[100 * (d["mean"] - lo)], [100 * (hi - d["mean"])]],
                    color="black", capsize=4)
        ax.scatter([i] * len(d["per_seed"]), [100 * v for v in d["per_seed"]], color="#e6550d",
                   zorder=3, s=14, label="seeds" if i == 0 else None)
        paper = ab["paper_arms"].get(a)
        if paper is not None:
            ax.scatter([i], [paper], marker="_", s=400, color="#31a354", zorder=4,
                       label=None if paper_labelled else "paper (Sudoku-Extreme)")
            paper_labelled = True
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=20)
    ax.set_ylim(0, 100)
    ax.set_ylabel("exact accuracy (%)")
    ax.set_title(ab["title"].split(":")[0], fontsize=10)
    ax.legend(fontsize=7, loc="upper left", framealpha=0.9)
    fig.tight_layout()
    return fig


def effects_figure(res: Mapping[str, Any]):
    """Forest plot of every finished ablation's effect with its 95% interval (None if none)."""
    plt = _plt()
    done = [ab for ab in res["ablations"] if ab["effect"] is not None]
    if not done:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 0.55 * len(done) + 1.5))
    paper_labelled = False
    for i, ab in enumerate(done):
        lo, hi = ab["ci"]
        color = ({True: "#31a354", False: "#de2d26"}[ab["agrees"]]
                 if isinstance(ab["agrees"], bool) else "#636363")
        ax.plot([lo, hi], [i, i], color=color, lw=2)
        ax.scatter([ab["effect"]], [i], color=color, zorder=3)
        if ab["paper_effect"] is not None:
            ax.scatter([ab["paper_effect"]], [i], marker="x", color="black", zorder=4,
                       label=None if paper_labelled else "paper's effect")
            paper_labelled = True
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(done)))
    ax.set_yticklabels([f"{ab['name']} ({ab['seeds']} seeds)" for ab in done])
    ax.set_xlabel("effect (accuracy points, 95% interval)")
    fig.suptitle("CPU study effects (95% intervals). Green: agrees with the paper's "
                 "direction;\nred: disagrees; grey: inconclusive", fontsize=9)
    if paper_labelled:
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


_TN_DEPTH = {"t1_n1": (1, 1), "t2_n2": (2, 2), "base": (2, 3), "t2_n6": (2, 6),
             "t3_n4": (3, 4),
             "t3_n6": (3, 6), "t4_n6": (4, 6)}


def tn_figure(res: Mapping[str, Any]):
    """Accuracy against the effective depth per supervision step, T (n + 1) x 2 layers."""
    plt = _plt()
    arms = res["arms"]
    tn = [a for a in _TN_DEPTH if arms[a]["n_seeds"]]
    if len(tn) < 2:
        return None
    xs = [_TN_DEPTH[a][0] * (_TN_DEPTH[a][1] + 1) * 2 for a in tn]
    means = [100 * arms[a]["mean"] for a in tn]
    err = [[100 * (arms[a]["mean"] - arms[a]["wilson"][0]) for a in tn],
           [100 * (arms[a]["wilson"][1] - arms[a]["mean"]) for a in tn]]
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    ax.errorbar(xs, means, yerr=err, fmt="o", capsize=4, color="#3182bd")
    for x, m, a in zip(xs, means, tn):
        t, n = _TN_DEPTH[a]
        ax.annotate(f"T={t}, n={n}", (x, m), textcoords="offset points", xytext=(5, 4),
                    fontsize=7)
    ax.set_xlabel("effective depth per supervision step: T (n+1) x 2 layers")
    ax.set_ylabel("exact accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("E2.2 recursion schedule (mean over seeds, Wilson 95%)", fontsize=10)
    fig.tight_layout()
    return fig


def curves_figure(res: Mapping[str, Any], labels: Sequence[str]):
    """Exact accuracy at each evaluation, mean over seeds, one line per arm."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    drawn = 0
    for label in labels:
        hist: Dict[int, List[float]] = {}
        for r in res["runs"]:
            if r["arm"] == label and r["status"] == "completed":
                for h in r["history"]:
                    hist.setdefault(h["step"], []).append(h["exact_accuracy"])
        if hist:
            steps = sorted(hist)
            ax.plot(steps, [100 * float(np.mean(hist[s])) for s in steps], marker="o",
                    label=f"{label} ({len(hist[steps[-1]])} seeds)")
            drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("exact accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def plot(res: Mapping[str, Any], out_dir: str) -> List[str]:
    """Per-ablation arm plots, the T/n depth plot and the forest plot of the effects, as PNG
    files in ``out_dir``; returns their names."""
    plt = _plt()
    files = []
    figures = [(f"{ab['name']}.png", arms_figure(res, ab["name"])) for ab in res["ablations"]]
    figures += [("e2_2_tn_depth.png", tn_figure(res)), ("effects.png", effects_figure(res))]
    for fn, fig in figures:
        if fig is None:
            continue
        fig.savefig(os.path.join(out_dir, fn), dpi=110)
        plt.close(fig)
        files.append(fn)
    return files


def render_notebook(path: str, timeout: int = 600, cwd: Optional[str] = None) -> None:
    """Executes a notebook in place (outputs included), e.g. studies/cpu_study/notebook.ipynb;
    the kernel runs in ``cwd`` (default: the notebook's folder)."""
    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    cwd = cwd or os.path.dirname(os.path.abspath(path))
    nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": cwd}}).execute()
    tmp = path + ".tmp"
    nbformat.write(nb, tmp)
    os.replace(tmp, path)


def render_markdown(res: Mapping[str, Any], notes: Mapping[str, str], plots: Sequence[str]
                    ) -> str:
    arms = res["arms"]
    c = res["compute"]
    lines = [
        "# CPU study: results",
        "",
        "Generated by `python -m studies.cpu_study.analysis` from the runs of the `cpu_study` "
        "sweep (do not edit by hand; the reading and the commands are in README.md).",
        "",
        f"Metric: final exact (whole-board) accuracy on the 500 held-out puzzles after "
        f"{res['steps_per_run']} optimizer steps, per arm the mean over seeds. Arm intervals: "
        f"pooled Wilson 95% over all seeds' puzzles. Effect intervals: {res['interval_method']}.",
        "",
        f"Runs: {c['completed']} completed of {c['runs']} started; "
        f"{c['wall_hours']:.2f} wall-hours, {c['cpu_hours']:.2f} CPU-hours (wall x torch "
        "threads).",
    ]
    s = res["seed_spread"]
    if s["mean_std_points"] is not None:
        lines.append(f"Seed-to-seed spread (standard deviation of one arm's final accuracy "
                     f"over its seeds): {s['mean_std_points']:.1f} points on average, "
                     f"{s['max_std_points']:.1f} at most, over {s['arms']} arms.")
    lines += ["", "## Ablations", "",
              "| ablation | effect measured | paper | ours (95% interval) | seeds | verdict |",
              "|---|---|---|---|---|---|"]
    for ab in res["ablations"]:
        paper = (f"{ab['paper_effect']:+.1f} pts" if ab["paper_effect"] is not None
                 else "direction only")
        ours = ("pending" if ab["effect"] is None else
                f"{ab['effect']:+.1f} pts [{ab['ci'][0]:+.1f}, {ab['ci'][1]:+.1f}]")
        lines.append(f"| {ab['name']} | {ab['effect_definition']} | {paper} | {ours} | "
                     f"{ab['seeds']} | **{_verdict(ab['agrees'])}** |")
    for ab in res["ablations"]:
        lines += ["", f"### {ab['title']}", "", f"Paper: {ab['paper_direction']}."]
        rows = []
        for a in ab["arms"]:
            d = arms[a]
            if not d["n_seeds"]:
                rows.append(f"| {a} | {d['description']} | pending | | |")
                continue
            per = ", ".join(f"{100 * v:.1f}" for v in d["per_seed"])
            paper = ab["paper_arms"].get(a)
            rows.append(f"| {a} | {d['description']} | {_fmt_pct(d['mean'])} "
                        f"[{_fmt_pct(d['wilson'][0])}, {_fmt_pct(d['wilson'][1])}] | {per} | "
                        f"{'' if paper is None else f'{paper:.1f}%'} |")
        lines += ["", "| arm | configuration | mean [Wilson 95%] | per seed (%) | paper |",
                  "|---|---|---|---|---|"] + rows
        if ab["effect"] is None:
            lines += ["", "Effect: pending (arms without finished runs)."]
        else:
            lines += ["", f"Effect ({ab['effect_definition']}): **{ab['effect']:+.1f} points**, "
                          f"95% interval [{ab['ci'][0]:+.1f}, {ab['ci'][1]:+.1f}] "
                          f"(bootstrap [{ab['ci_bootstrap'][0]:+.1f}, "
                          f"{ab['ci_bootstrap'][1]:+.1f}], "
                          + ("paired t " if ab["paired"] else "Welch t ")
                          + ("n/a" if ab["ci_t"][0] is None else
                             f"[{ab['ci_t'][0]:+.1f}, {ab['ci_t'][1]:+.1f}]")
                          + ")" + ("; per seed " + ", ".join(f"{v:+.1f}"
                                                          for v in ab["per_seed_effect"])
                                   if ab["per_seed_effect"] else "")
                          + f"; {ab['seeds']} seeds per arm. Verdict: "
                          f"**{_verdict(ab['agrees'])}**."]
        for extra in ab.get("also", []):
            lines += ["", f"Also: {extra['definition']}: " + (
                "pending" if extra["effect"] is None else
                f"{extra['effect']:+.1f} points [{extra['ci'][0]:+.1f}, {extra['ci'][1]:+.1f}]")
                + "."]
        note = notes.get(ab["name"])
        if note:
            lines += ["", note]
        elif ab["agrees"] is False:
            lines += ["", "(No explanation recorded for this disagreement yet.)"]
        if f"{ab['name']}.png" in plots:
            lines += ["", f"![{ab['name']}]({ab['name']}.png)"]
        if ab["name"] == "e2_2_tn" and "e2_2_tn_depth.png" in plots:
            lines += ["", "![e2_2_tn depth](e2_2_tn_depth.png)"]
    if "effects.png" in plots:
        lines += ["", "## All effects", "", "![effects](effects.png)"]
    lines += ["", "## Runs", "",
              "Every run's exact command, seed, wall time and final metrics are in "
              "`results.json` (`runs`).", ""]
    return "\n".join(lines) + "\n"


def write_report(res: Mapping[str, Any], out_dir: str, notes: Optional[Mapping[str, str]] = None
                 ) -> Dict[str, str]:
    """Writes results.json, RESULTS.md and the plots into ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    plots = plot(res, out_dir)
    md = render_markdown(res, notes or {}, plots)
    paths = {"results": os.path.join(out_dir, "results.json"),
             "markdown": os.path.join(out_dir, "RESULTS.md")}
    for key, text in (("results", json.dumps(res, indent=1, sort_keys=False, default=float)
                       + "\n"), ("markdown", md)):
        tmp = paths[key] + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, paths[key])
    return paths


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m studies.cpu_study.analysis",
                                description="Report of the CPU study (results.json, RESULTS.md, "
                                            "plots) from the runs of the cpu_study sweep.")
    p.add_argument("--runs", required=True, help="the --root given to launchers.local")
    p.add_argument("--out", required=True, help="output folder (e.g. docs/results/cpu_study)")
    p.add_argument("--notes", default=None,
                   help="JSON file: ablation name -> a sentence for RESULTS.md (default: "
                        "<out>/notes.json when it exists)")
    p.add_argument("--n_boot", type=int, default=20000)
    p.add_argument("--notebook", default=None,
                   help="after writing the report, execute this notebook in place so it is "
                        "committed with its outputs (studies/cpu_study/notebook.ipynb)")
    args = p.parse_args(argv)
    try:
        runs = load(args.runs)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not runs:
        print(f"error: no cpu_study runs (<arm>_s<seed> folders with a run.json) under "
              f"{args.runs!r}", file=sys.stderr)
        return 2
    notes_path = args.notes or os.path.join(args.out, "notes.json")
    notes: Dict[str, str] = {}
    if os.path.isfile(notes_path):
        with open(notes_path) as f:
            notes = json.load(f)
    elif args.notes:
        print(f"error: --notes file {args.notes!r} does not exist", file=sys.stderr)
        return 2
    res = analyze(runs, n_boot=args.n_boot)
    paths = write_report(res, args.out, notes)
    pend = [a["name"] for a in res["ablations"] if a["agrees"] == "pending"]
    print(f"{res['compute']['completed']} completed runs; wrote {paths['markdown']} and "
          f"{paths['results']}" + (f"; pending: {', '.join(pend)}" if pend else ""))
    if args.notebook:
        render_notebook(args.notebook)
        print(f"rendered {args.notebook}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
