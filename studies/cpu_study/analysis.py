"""The CPU study's report: its ablations, and the analysis that answers them.

The study (issue #12, docs/results/cpu_study/) runs the CPU twins (``gin/experiments/cpu/``) on
generated 9x9 Sudoku with 50 blanks, a task on which the twin lands far below saturation within
a CPU budget, with three seeds per arm and the same number of optimizer steps for every run.

* :data:`ARMS` (from :mod:`studies.cpu_study.sweep`, which builds the ``cpu_study`` sweep from
  them) — every configuration of the study, once: a label, the twin's gin file and any extra
  bindings.
* :data:`ABLATIONS` — each ablation as a *contrast* of arms (``effect = sum w_a * mean_a``):
  a difference of two arms, or for LR x batch the interaction of a 2 x 2 grid. The expected
  direction is the paper's (with its number from :mod:`analysis.published` where it publishes
  one) or, where the paper says nothing, the study plan's hypothesis (``Ablation.source``).
* :func:`analyze` — per arm: the mean exact accuracy over seeds and its interval; per
  ablation: the effect, its interval and p-value, the Holm-adjusted p-value over the family of
  ablations, and a verdict from each (below). An ablation with an arm that has fewer than
  :data:`MIN_SEEDS` finished seeds is ``"pending"``.
* :func:`write_report` — ``results.json``, ``RESULTS.md`` and the figures (PNG, SVG, PDF).

Intervals: the library's one method (:mod:`analysis.stats`). An arm's interval is
:func:`~analysis.stats.seed_interval` of its per-seed accuracies (Student t over the seeds, the
spread floored at one test puzzle, clipped to [0, 1]); the 500 puzzles of a run are never
pooled across seeds. Seeds are matched across arms (seed ``s`` gives every arm the same data
order and halting-exploration draws and, where the parameter shapes agree, the same
initialisation), so a contrast is measured per seed, ``sum w_a * acc_a(s)`` over the seeds
every arm of it ran, and its interval and p-value are the paired t over those per-seed effects
(:func:`~analysis.stats.paired_seed_interval`, :func:`~analysis.stats.paired_seed_p`). The
ablations' p-values are adjusted together with :func:`~analysis.stats.holm`. A verdict is
``"agrees"`` when the p-value is below ``1 - confidence`` and the effect has the expected
sign, ``"disagrees"`` when it is below with the other sign, else ``"inconclusive"``; with three
seeds the Holm verdict (``verdict_holm``) is the one that counts.

Command line::

    python -m studies.cpu_study.analysis --runs=runs/cpu_study --out=docs/results/cpu_study
    python -m studies.cpu_study.analysis --results=docs/results/cpu_study/results.json \\
        --out=docs/results/cpu_study   # again from the runs recorded in a results.json

Round two (pre-registered in the study's README) has its own report: studies.cpu_study.round2.
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

import matplotlib.lines as mlines
import matplotlib.pyplot as plt
import numpy as np

from analysis import stats
from analysis.plots import legend_outside, save_figure
from analysis.published import get as _published
from studies.cpu_study.sweep import ARM_BY_LABEL, ARMS, SEEDS, STUDY_STEPS

__all__ = ["Ablation", "ARMS", "ABLATIONS", "STUDY_STEPS", "MIN_SEEDS", "SEEDS", "contrast",
           "analyze", "load", "load_results", "write_report", "main"]

METRIC = "eval/exact_accuracy"
MIN_SEEDS = 3
PAPER = "paper"
HYPOTHESIS = "hypothesis (study plan)"


@dataclasses.dataclass(frozen=True)
class Ablation:
    """An ablation as a contrast of arms.

    Attributes:
      name: results.json name, e.g. ``e2_1_ema``.
      title: one line for the report.
      arms: the arms shown for this ablation, in plotting order.
      weights: the contrast, arm label -> weight; ``effect = sum w * mean accuracy``.
      direction: +1 when a positive effect is expected.
      paper_direction: the expectation in words.
      paper_effect: the paper's own effect in accuracy points, where it publishes both arms.
      paper_arms: arm label -> the paper's number for that configuration (percent), if any.
      effect_text: what the effect measures, in words.
      source: where the expectation comes from: :data:`PAPER` or, where the paper says nothing
        about it, :data:`HYPOTHESIS`.
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
    source: str = PAPER


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
                 "more distinct puzzles, lower error (the paper reports no data-size result)",
                 "4000 puzzles minus 250", source=HYPOTHESIS),
        Ablation("e3_3_lr_batch",
                 "E3.3 LR x batch: does the larger batch gain more from the larger lr?",
                 ("b32_lr1e-3", "b32_lr3e-3", "base", "b64_lr3e-3"),
                 {"b64_lr3e-3": 1, "base": -1, "b32_lr3e-3": -1, "b32_lr1e-3": 1}, +1,
                 "the optimal lr grows with the batch size (the paper reports no LR x batch "
                 "result)",
                 "(lr 3e-3 minus 1e-3 at batch 64) minus (the same at batch 32)",
                 source=HYPOTHESIS,
                 also=(("lr 3e-3 minus 1e-3 at batch 64", {"b64_lr3e-3": 1, "base": -1}),
                       ("lr 3e-3 minus 1e-3 at batch 32",
                        {"b32_lr3e-3": 1, "b32_lr1e-3": -1}))),
        Ablation("e3_1_width", "E3.1 model size: hidden 128 vs hidden 32",
                 ("h32", "base", "h128"), {"h128": 1, "h32": -1}, +1,
                 "more parameters, lower error at fixed data (the paper's only size result "
                 "is depth: 4 layers do worse than 2)",
                 "hidden 128 minus hidden 32", source=HYPOTHESIS),
    )


ABLATIONS: Tuple[Ablation, ...] = _ablations()


# ---------------------------------------------------------------------------------------------
# Statistics (analysis.stats: t over seeds, paired over matched seeds, Holm)


def arm_interval(per_seed: Sequence[float], puzzles: Sequence[int],
                 confidence: float = 0.95) -> stats.Interval:
    """An arm's interval: :func:`analysis.stats.seed_interval` of its per-seed accuracies,
    the spread floored at one puzzle of the smallest test set, clipped to [0, 1]."""
    return stats.seed_interval(per_seed, confidence, floor_sd=_one_puzzle(puzzles),
                               bounds=(0.0, 1.0))


def _one_puzzle(puzzles: Sequence[int]) -> Optional[float]:
    n = [int(x) for x in puzzles if x]
    return 1.0 / min(n) if n else None


def contrast(arms: Mapping[str, Mapping[int, Tuple[float, int]]], weights: Mapping[str, float],
             *, confidence: float = 0.95) -> Dict[str, Any]:
    """The effect ``sum w_a * acc_a`` paired over the seeds every arm of it ran.

    Args:
      arms: arm label -> {seed: (accuracy in [0, 1], number of test puzzles)}.
      weights: the contrast, arm label -> weight.
    Returns: ``effect`` (the mean over the common seeds of the per-seed contrast), ``ci``,
      ``ci_method`` (:func:`analysis.stats.paired_seed_interval`: t over the per-seed
      contrasts, the spread floored at one puzzle, clipped to the contrast's range), ``p``
      (:func:`analysis.stats.paired_seed_p`, the same t), ``seeds`` and ``per_seed`` (the
      per-seed contrasts); fractions; nan where there are fewer than two common seeds.
    """
    for label in weights:
        bad = [a for a, _ in arms[label].values() if not 0.0 <= a <= 1.0]
        if bad:
            raise ValueError(f"arm {label!r}: accuracies must lie in [0, 1], got {bad}")
    seeds = sorted(set.intersection(*(set(arms[label]) for label in weights)))
    if not seeds:
        raise ValueError(f"arms {sorted(weights)} share no seed: a contrast needs matched seeds")
    # b - a with b the positively and a the negatively weighted arms: the per-seed contrast
    side = {sign: {s: sum(sign * w * arms[label][s][0] for label, w in weights.items()
                          if sign * w > 0) for s in seeds} for sign in (1, -1)}
    bound = max(sum(w for w in weights.values() if w > 0),
                -sum(w for w in weights.values() if w < 0))
    floor = _one_puzzle([arms[label][s][1] for label in weights for s in seeds])
    ci = stats.paired_seed_interval(side[-1], side[1], confidence, floor_sd=floor,
                                    bounds=(-bound, bound))
    per_seed = [side[1][s] - side[-1][s] for s in seeds]
    return {"effect": float(np.mean(per_seed)), "ci": [ci.low, ci.high],
            "ci_method": ci.method, "p": stats.paired_seed_p(side[-1], side[1], floor_sd=floor),
            "seeds": seeds, "per_seed": per_seed}


def verdict(effect: float, p: Optional[float], direction: int, alpha: float) -> str:
    """``"agrees"`` / ``"disagrees"`` when ``p < alpha`` and the effect has / has not the
    expected sign (``direction``), else ``"inconclusive"``."""
    if p is None or not p < alpha:
        return "inconclusive"
    return "agrees" if effect * direction > 0 else "disagrees"


# ---------------------------------------------------------------------------------------------
# Loading


def _run_command(command: Mapping[str, Any], sweep: str = "cpu_study") -> str:
    """The exact ``python -m trm.train ...`` line of a run of ``sweep``, from its
    command.json."""
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
        line.append(f"--workdir=runs/{sweep}/{_tail(workdir)}")
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


_OPTIONAL_EVAL = {"exact_accuracy_raw": "eval_raw/exact_accuracy",
                  "accuracy_raw": "eval_raw/accuracy", "count": "eval/count"}


def _eval_history(path: str) -> List[Dict[str, Any]]:
    """[{step, exact_accuracy, accuracy}] from the run's ``eval/step_*/metrics.json`` files,
    with ``exact_accuracy_raw``, ``accuracy_raw`` (the raw weights beside the EMA's,
    ``EVAL_RAW_WEIGHTS``) and ``count`` (test puzzles) where the evaluation logged them."""
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
            row = {"step": step, "exact_accuracy": float(acc), "accuracy": m.get("eval/accuracy")}
            row.update({key: m[tag] for key, tag in _OPTIONAL_EVAL.items() if tag in m})
            rows.append(row)
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


def read_results_json(path: str, what: str) -> Any:
    """A report's results file, or one line saying it cannot be read and what to give."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"cannot read {path!r} ({e}); give {what}") from e


def load_results(path: str) -> List[Dict[str, Any]]:
    """The runs recorded in a report's ``results.json`` (its ``runs``), as :func:`load` gives
    them: the report can be written again from a committed results.json without the run
    folders. A run recorded without ``final_step`` / ``total_steps`` takes the step of its last
    evaluation and the report's ``steps_per_run``."""
    res = read_results_json(path, "the results.json written by python -m studies.cpu_study."
                                  "analysis")
    if not isinstance(res, dict) or not isinstance(res.get("runs"), list):
        raise FileNotFoundError(f"{path!r} has no 'runs' list: not a CPU study results.json")
    runs = []
    for r in res["runs"]:
        last = r["history"][-1]["step"] if r.get("history") else None
        runs.append({**r, "final_step": r.get("final_step", last),
                     "total_steps": r.get("total_steps", res.get("steps_per_run"))})
    return runs


# ---------------------------------------------------------------------------------------------
# Analysis


def analyze(runs: Sequence[Mapping[str, Any]], *, confidence: float = 0.95) -> Dict[str, Any]:
    """Arms and ablations from loaded runs (only completed runs at the full budget count)."""
    done = [r for r in runs if r["status"] == "completed" and r["final"].get(METRIC) is not None
            and r.get("final_step") == r.get("total_steps")]
    by_arm: Dict[str, List[Mapping[str, Any]]] = {}
    for r in done:
        by_arm.setdefault(r["arm"], []).append(r)
    arms = {arm.label: _arm_entry(arm, sorted(by_arm.get(arm.label, []),
                                              key=lambda r: r["seed"]), confidence)
            for arm in ARMS}
    alpha = 1.0 - confidence
    ablations = [_ablation_entry(ab, arms, confidence, alpha) for ab in ABLATIONS]
    tested = [a for a in ablations if a["p"] is not None]
    for a, p in zip(tested, stats.holm([a["p"] for a in tested])):
        a["p_holm"] = p
        a["verdict_holm"] = verdict(a["effect"], p, a["direction"], alpha)
    spreads = [a["std"] for a in arms.values() if a.get("std") is not None and a["n_seeds"] >= 2]
    walls = [r["wall_s"] for r in runs if r.get("wall_s")]
    cpu_s = sum((r["wall_s"] or 0) * (r.get("torch_threads") or 1) for r in runs)
    return {
        "metric": METRIC, "confidence": confidence, "steps_per_run": STUDY_STEPS,
        "interval_method": "arms: t interval over the seeds' accuracies (n = seeds, the spread "
                           "floored at one puzzle); contrasts: paired t over the per-seed "
                           "contrasts of matched seeds, p-values from the same t, "
                           "Holm-adjusted over the ablations",
        "arms": arms, "ablations": ablations,
        "seed_spread": {"mean_std_points": 100 * float(np.mean(spreads)) if spreads else None,
                        "max_std_points": 100 * float(np.max(spreads)) if spreads else None,
                        "arms": len(spreads)},
        "compute": {"runs": len(runs), "completed": len(done),
                    "wall_hours": sum(walls) / 3600.0, "cpu_hours": cpu_s / 3600.0},
        "runs": [_public_run(r) for r in runs],
    }


def _arm_entry(arm, rs: Sequence[Mapping[str, Any]], confidence: float) -> Dict[str, Any]:
    entry = {"label": arm.label, "description": arm.description, "gin_file": arm.gin_file,
             "seeds": [int(r["seed"]) for r in rs], "n_seeds": len(rs)}
    if not rs:
        return entry
    acc = [float(r["final"][METRIC]) for r in rs]
    n = [int(r["final"].get("eval/count") or 0) for r in rs]
    ci = arm_interval(acc, n, confidence)
    entry.update({
        "per_seed": acc, "puzzles": n, "mean": float(np.mean(acc)),
        "std": float(np.std(acc, ddof=1)) if len(acc) > 1 else None,
        "ci": [v if np.isfinite(v) else None for v in (ci.low, ci.high)],
        "ci_method": ci.method,
        "cell_accuracy": float(np.mean([float(r["final"].get("eval/accuracy", math.nan))
                                        for r in rs])),
        "num_params": rs[0].get("num_params"),
    })
    return entry


def _seed_table(arms: Mapping[str, Mapping[str, Any]], labels) -> Dict[str, Dict[int, Any]]:
    return {a: dict(zip(arms[a]["seeds"], zip(arms[a]["per_seed"], arms[a]["puzzles"])))
            for a in labels}


def _points(c: Mapping[str, Any]) -> Dict[str, Any]:
    """A contrast in accuracy points (nan bounds as None, for JSON)."""
    return {"effect": 100 * c["effect"],
            "ci": [100 * v if np.isfinite(v) else None for v in c["ci"]],
            "ci_method": c["ci_method"], "p": c["p"] if np.isfinite(c["p"]) else None,
            "paired_seeds": c["seeds"], "per_seed_effect": [100 * v for v in c["per_seed"]]}


def _ablation_entry(ab: Ablation, arms: Mapping[str, Mapping[str, Any]], confidence: float,
                    alpha: float) -> Dict[str, Any]:
    seeds = {a: arms[a]["n_seeds"] for a in ab.arms}
    entry: Dict[str, Any] = {
        "name": ab.name, "title": ab.title, "source": ab.source,
        "paper_direction": ab.paper_direction, "direction": ab.direction,
        "effect_definition": ab.effect_text, "weights": dict(ab.weights),
        "paper_effect": ab.paper_effect, "paper_arms": dict(ab.paper_arms),
        "arms": list(ab.arms), "seeds": min(seeds[a] for a in ab.weights),
        "seeds_per_arm": seeds, "effect": None, "ci": None, "p": None, "p_holm": None,
        "verdict_raw": "pending", "verdict_holm": "pending",
    }
    if entry["seeds"] >= MIN_SEEDS:
        entry.update(_points(contrast(_seed_table(arms, ab.weights), ab.weights,
                                      confidence=confidence)))
        entry["verdict_raw"] = verdict(entry["effect"], entry["p"], ab.direction, alpha)
        entry["verdict_holm"] = "inconclusive"  # analyze() adjusts the p-values it has
    entry["also"] = []
    for text, weights in ab.also:
        extra = {"definition": text, "effect": None, "ci": None, "p": None}
        if all(arms[a]["n_seeds"] >= MIN_SEEDS for a in weights):
            extra.update(_points(contrast(_seed_table(arms, weights), weights,
                                          confidence=confidence)))
        entry["also"].append(extra)
    return entry


def _public_run(r: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: r.get(k) for k in ("name", "arm", "seed", "status", "command", "wall_s",
                                  "torch_threads", "forward_dtype", "num_params", "final",
                                  "final_step", "total_steps", "history", "git_commit")}


# ---------------------------------------------------------------------------------------------
# Report


def _fmt_pct(v: Optional[float], digits: int = 1) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{100 * v:.{digits}f}%"


def _fmt_p(p: Optional[float]) -> str:
    return "n/a" if p is None else ("<0.001" if p < 0.001 else f"{p:.3f}")


def _fmt_ci(ci: Optional[Sequence[Optional[float]]]) -> str:
    return "n/a" if not ci or ci[0] is None else f"[{ci[0]:+.1f}, {ci[1]:+.1f}]"


def _expected(ab: Mapping[str, Any]) -> str:
    return f"{'+' if ab['direction'] > 0 else '-'}, {ab['source']}"


def _observed(ab: Mapping[str, Any]) -> str:
    return "" if ab["effect"] is None else ("+" if ab["effect"] > 0 else
                                            "-" if ab["effect"] < 0 else "0")


def _legend_below(fig, ax, ncol: int = 2):
    """Lays the figure out, then puts the legend under the axes and their labels (off the
    data; saved with ``bbox_inches="tight"``, so the file grows to hold it)."""
    fig.tight_layout()
    box = ax.get_tightbbox(fig.canvas.get_renderer()).transformed(ax.transAxes.inverted())
    return ax.legend(loc="upper center", bbox_to_anchor=(0.5, box.y0), ncol=ncol, fontsize=7,
                     frameon=False)


def _arm_bars(res: Mapping[str, Any], labels: Sequence[str]) -> Tuple[List[float], List, str]:
    """Means (%), their error bars (%) and what the bars are, for arms with results."""
    arms = res["arms"]
    means = [100 * arms[a]["mean"] for a in labels]
    lows, highs = [], []
    for a, m in zip(labels, means):
        lo, hi = (100 * v if v is not None and np.isfinite(v) else m for v in arms[a]["ci"])
        lows.append(m - lo)
        highs.append(hi - m)
    n = sorted({arms[a]["n_seeds"] for a in labels})
    what = (stats.interval_label([arms[a]["ci_method"] for a in labels], res["confidence"])
            .replace("; ", ";\n") + f" (n = {'/'.join(map(str, n))} seeds)")
    return means, [lows, highs], what


def arms_figure(res: Mapping[str, Any], name: str):
    """Bar chart of one ablation's arms: mean over seeds with its seed-level interval, each
    seed as a dot, the paper's number as a green dash. None when no arm has finished runs."""
    arms = res["arms"]
    ab = next(a for a in res["ablations"] if a["name"] == name)
    labels = [a for a in ab["arms"] if arms[a]["n_seeds"]]
    if not labels:
        return None
    means, yerr, what = _arm_bars(res, labels)
    fig, ax = plt.subplots(figsize=(3.6 + 0.8 * len(labels), 3.4))
    x = np.arange(len(labels))
    used = np.array([bool(ab["weights"].get(a)) for a in labels])
    ax.bar(x[used], np.array(means)[used], width=0.6, color="#3182bd",
           label="arm of the contrast")
    if (~used).any():
        ax.bar(x[~used], np.array(means)[~used], width=0.6, color="#9ecae1", label="other arm")
    ax.errorbar(x, means, yerr=yerr, fmt="none", ecolor="black", capsize=4, label=what)
    sx = [i for i, a in enumerate(labels) for _ in arms[a]["per_seed"]]
    sy = [100 * v for a in labels for v in arms[a]["per_seed"]]
    ax.scatter(sx, sy, color="#e6550d", zorder=3, s=14, label="one seed")
    paper = [(i, ab["paper_arms"][a]) for i, a in enumerate(labels) if a in ab["paper_arms"]]
    if paper:
        ax.scatter(*zip(*paper), marker="_", s=400, color="#31a354", zorder=4,
                   label="paper (Sudoku-Extreme)")
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=20, ha="right")
    ax.set_ylim(0, 100)
    ax.set_ylabel("exact accuracy (%)")
    ax.set_title(ab["title"].split(":")[0], fontsize=10)
    _legend_below(fig, ax)
    return fig


_VERDICT_COLOR = {"agrees": "#31a354", "disagrees": "#de2d26", "inconclusive": "#636363"}


def effects_figure(res: Mapping[str, Any]):
    """Forest plot of every finished ablation's effect with its paired interval, coloured by
    the Holm verdict, raw and Holm p-values in the labels (None if none has finished)."""
    done = [ab for ab in res["ablations"] if ab["effect"] is not None]
    if not done:
        return None
    fig, ax = plt.subplots(figsize=(8.5, 0.6 * len(done) + 1.6))
    for i, ab in enumerate(done):
        color = _VERDICT_COLOR[ab["verdict_holm"]]
        if ab["ci"][0] is not None:
            ax.plot(ab["ci"], [i, i], color=color, lw=2)
        raw = ab["verdict_raw"] != "inconclusive"  # filled: p < alpha before Holm
        ax.scatter([ab["effect"]], [i], color=color if raw else "white", edgecolors=color,
                   linewidths=1.5, zorder=3)
        if ab["paper_effect"] is not None:
            ax.scatter([ab["paper_effect"]], [i], marker="x", color="black", zorder=4)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(done)))
    ax.set_yticklabels([f"{ab['name']} ({ab['seeds']} seeds)\np = {_fmt_p(ab['p'])}, "
                        f"Holm p = {_fmt_p(ab['p_holm'])}" for ab in done], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("effect (accuracy points)")
    ax.set_title("CPU study: each ablation's effect", fontsize=10)
    what = stats.interval_label([ab["ci_method"] for ab in done], res["confidence"])
    handles = [mlines.Line2D([], [], color="black", lw=2,
                             label=f"{what}\n(paired, per-seed effects)")]
    handles += [mlines.Line2D([], [], color=c, marker="o", lw=2, label=f"{v} (after Holm)")
                for v, c in _VERDICT_COLOR.items()]
    handles += [mlines.Line2D([], [], color="black", marker="o", lw=0, label="p < "
                              f"{1 - res['confidence']:.2g} before Holm"),
                mlines.Line2D([], [], color="black", marker="o", markerfacecolor="white", lw=0,
                              label=f"p >= {1 - res['confidence']:.2g} before Holm")]
    if any(ab["paper_effect"] is not None for ab in done):
        handles.append(mlines.Line2D([], [], color="black", marker="x", lw=0,
                                     label="paper's effect"))
    fig.tight_layout()
    legend_outside(ax, handles=handles)
    return fig


_TN_DEPTH = {"t1_n1": (1, 1), "t2_n2": (2, 2), "base": (2, 3), "t2_n6": (2, 6),
             "t3_n4": (3, 4), "t3_n6": (3, 6), "t4_n6": (4, 6)}


def tn_figure(res: Mapping[str, Any]):
    """Accuracy against the effective depth per supervision step, T (n + 1) x 2 layers."""
    arms = res["arms"]
    tn = [a for a in _TN_DEPTH if arms[a]["n_seeds"]]
    if len(tn) < 2:
        return None
    xs = [_TN_DEPTH[a][0] * (_TN_DEPTH[a][1] + 1) * 2 for a in tn]
    means, yerr, what = _arm_bars(res, tn)
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    ax.errorbar(xs, means, yerr=yerr, fmt="o", capsize=4, color="#3182bd",
                label=f"mean over seeds, {what}")
    for x, m, a in zip(xs, means, tn):
        t, n = _TN_DEPTH[a]
        ax.annotate(f"T={t}, n={n}", (x, m), textcoords="offset points", xytext=(5, 4),
                    fontsize=7)
    ax.set_xlabel("effective depth per supervision step: T (n+1) x 2 layers")
    ax.set_ylabel("exact accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("E2.2 recursion schedule", fontsize=10)
    _legend_below(fig, ax)
    return fig


def curves_figure(res: Mapping[str, Any], labels: Sequence[str]):
    """Exact accuracy at each evaluation, mean over seeds, one line per arm."""
    fig, ax = plt.subplots(figsize=(6.2, 3.4))
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
    ax.set_ylabel("exact accuracy (%), mean over seeds")
    ax.set_ylim(0, 100)
    _legend_below(fig, ax)
    return fig


def plot(res: Mapping[str, Any], out_dir: str) -> List[str]:
    """Per-ablation arm plots, the T/n depth plot and the forest plot of the effects, each as
    PNG, SVG and PDF in ``out_dir`` (:func:`analysis.plots.save_figure`); returns the PNGs'
    names."""
    files = []
    figures = [(ab["name"], arms_figure(res, ab["name"])) for ab in res["ablations"]]
    figures += [("e2_2_tn_depth", tn_figure(res)), ("effects", effects_figure(res))]
    for name, fig in figures:
        if fig is None:
            continue
        save_figure(fig, os.path.join(out_dir, name))
        plt.close(fig)
        files.append(f"{name}.png")
    return files


def render_notebook(path: str, timeout: int = 600, cwd: Optional[str] = None,
                    env: Optional[Mapping[str, str]] = None) -> None:
    """Executes a notebook in place (outputs included), e.g. studies/cpu_study/notebook.ipynb;
    the kernel runs in ``cwd`` (default: the notebook's folder) with this process's environment
    plus ``env``."""
    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    cwd = cwd or os.path.dirname(os.path.abspath(path))
    nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": cwd}}
                            ).execute(env={**os.environ, **(env or {})})
    tmp = path + ".tmp"
    nbformat.write(nb, tmp)
    os.replace(tmp, path)


def render_markdown(res: Mapping[str, Any], notes: Mapping[str, str], plots: Sequence[str]
                    ) -> str:
    arms = res["arms"]
    c = res["compute"]
    conf = f"{res['confidence']:.0%}"
    family = sum(ab["p"] is not None for ab in res["ablations"])
    lines = [
        "# CPU study: results",
        "",
        "Generated by `python -m studies.cpu_study.analysis` from the runs of the `cpu_study` "
        "sweep (do not edit by hand; the reading and the commands are in README.md).",
        "",
        f"Metric: final exact (whole-board) accuracy on the 500 held-out puzzles after "
        f"{res['steps_per_run']} optimizer steps, per arm the mean over seeds. Arm intervals: "
        f"{conf} t interval over the arm's per-seed accuracies (n = seeds, the spread floored "
        "at one puzzle; puzzles are never pooled across seeds). Effects: per seed over matched "
        f"seeds; their {conf} interval and p-value are the paired t over the per-seed effects, "
        f"and the p-values of the {family} ablations are Holm-adjusted together. A verdict "
        "compares the expected direction with the observed one where p < "
        f"{1 - res['confidence']:.2g}; with 3 seeds the verdict after Holm is the one that "
        "counts. Secondary contrasts (\"Also\") are descriptive: raw p, no verdict.",
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
              f"| ablation | effect measured | expected (source) | observed | paper | ours, "
              f"points [{conf} interval] | seeds | p | verdict | Holm p | verdict after Holm |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for ab in res["ablations"]:
        paper = (f"{ab['paper_effect']:+.1f} pts" if ab["paper_effect"] is not None
                 else "direction only" if ab["source"] == PAPER else "none")
        ours = ("pending" if ab["effect"] is None else
                f"{ab['effect']:+.1f} {_fmt_ci(ab['ci'])}")
        lines.append(f"| {ab['name']} | {ab['effect_definition']} | {_expected(ab)} | "
                     f"{_observed(ab)} | {paper} | {ours} | {ab['seeds']} | {_fmt_p(ab['p'])} | "
                     f"{ab['verdict_raw']} | {_fmt_p(ab['p_holm'])} | "
                     f"**{ab['verdict_holm']}** |")
    for ab in res["ablations"]:
        lines += ["", f"### {ab['title']}", ""]
        lines += _ablation_section(ab, arms, conf, notes, plots)
    if "effects.png" in plots:
        lines += ["", "## All effects", "", "![effects](effects.png)"]
    lines += ["", "## Runs", "",
              "Every run's exact command, seed, wall time and final metrics are in "
              "`results.json` (`runs`).", ""]
    return "\n".join(lines) + "\n"


def _ablation_section(ab: Mapping[str, Any], arms: Mapping[str, Any], conf: str,
                      notes: Mapping[str, str], plots: Sequence[str]) -> List[str]:
    source = "Paper" if ab["source"] == PAPER else HYPOTHESIS[0].upper() + HYPOTHESIS[1:]
    lines = [f"{source}: {ab['paper_direction']}.", "",
             f"| arm | configuration | mean [{conf} t over seeds] | per seed (%) | paper |",
             "|---|---|---|---|---|"]
    for a in ab["arms"]:
        d = arms[a]
        if not d["n_seeds"]:
            lines.append(f"| {a} | {d['description']} | pending | | |")
            continue
        per = ", ".join(f"{100 * v:.1f}" for v in d["per_seed"])
        paper = ab["paper_arms"].get(a)
        lines.append(f"| {a} | {d['description']} | {_fmt_pct(d['mean'])} "
                     f"[{_fmt_pct(d['ci'][0])}, {_fmt_pct(d['ci'][1])}] | {per} | "
                     f"{'' if paper is None else f'{paper:.1f}%'} |")
    if ab["effect"] is None:
        lines += ["", "Effect: pending (arms without 3 finished seeds)."]
    else:
        per = ", ".join(f"{v:+.1f}" for v in ab["per_seed_effect"])
        lines += ["", f"Effect ({ab['effect_definition']}): **{ab['effect']:+.1f} points**, "
                      f"{conf} interval {_fmt_ci(ab['ci'])} (paired t over seeds "
                      f"{', '.join(map(str, ab['paired_seeds']))}; per seed {per}); "
                      f"p = {_fmt_p(ab['p'])}, Holm p = {_fmt_p(ab['p_holm'])}. Verdict: "
                      f"{ab['verdict_raw']} before Holm, **{ab['verdict_holm']}** after."]
    for extra in ab.get("also", []):
        lines += ["", f"Also: {extra['definition']}: " + (
            "pending" if extra["effect"] is None else
            f"{extra['effect']:+.1f} points {_fmt_ci(extra['ci'])}, p = {_fmt_p(extra['p'])}")
            + "."]
    note = notes.get(ab["name"])
    if note:
        lines += ["", note]
    elif ab["verdict_holm"] == "disagrees":
        lines += ["", "(No explanation recorded for this disagreement yet.)"]
    if f"{ab['name']}.png" in plots:
        lines += ["", f"![{ab['name']}]({ab['name']}.png)"]
    if ab["name"] == "e2_2_tn" and "e2_2_tn_depth.png" in plots:
        lines += ["", "![e2_2_tn depth](e2_2_tn_depth.png)"]
    return lines


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
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--runs", help="the --root given to launchers.local")
    src.add_argument("--results", help="a results.json written by this command: the report "
                                       "again from the runs it records (no run folders needed)")
    p.add_argument("--out", required=True, help="output folder (e.g. docs/results/cpu_study)")
    p.add_argument("--notes", default=None,
                   help="JSON file: ablation name -> a sentence for RESULTS.md (default: "
                        "<out>/notes.json when it exists)")
    p.add_argument("--notebook", default=None,
                   help="after writing the report, execute this notebook in place so it is "
                        "committed with its outputs (studies/cpu_study/notebook.ipynb)")
    args = p.parse_args(argv)
    try:
        runs = load(args.runs) if args.runs else load_results(args.results)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not runs:
        print("error: no cpu_study runs " + (
            f"(<arm>_s<seed> folders with a run.json) under {args.runs!r}" if args.runs
            else f"in {args.results!r}"), file=sys.stderr)
        return 2
    notes_path = args.notes or os.path.join(args.out, "notes.json")
    notes: Dict[str, str] = {}
    if os.path.isfile(notes_path):
        with open(notes_path) as f:
            notes = json.load(f)
    elif args.notes:
        print(f"error: --notes file {args.notes!r} does not exist", file=sys.stderr)
        return 2
    try:
        res = analyze(runs)
    except ValueError as e:  # runs that cannot be compared (no matched seeds, bad accuracies)
        print(f"error: {e}", file=sys.stderr)
        return 2
    paths = write_report(res, args.out, notes)
    pend = [a["name"] for a in res["ablations"] if a["verdict_holm"] == "pending"]
    print(f"{res['compute']['completed']} completed runs; wrote {paths['markdown']} and "
          f"{paths['results']}" + (f"; pending: {', '.join(pend)}" if pend else ""))
    if args.notebook:
        render_notebook(args.notebook)
        print(f"rendered {args.notebook}")
    return 0



if __name__ == "__main__":
    sys.exit(main())
