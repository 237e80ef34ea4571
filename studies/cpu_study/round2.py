"""The CPU study's round two (issue #24): does the order of the recursion schedules reproduce?

Pre-registered in docs/results/cpu_study/README.md ("Round two") before any of its runs; this
module computes exactly what that section states, from the runs of the sweeps
``cpu_tn_round2`` (seeds 3-9, 1500 steps) and ``cpu_tn_round2_long`` (seeds 0-2, 3000 steps)
in :mod:`studies.cpu_study.sweep`.

* Primary endpoint: the EMA weights' exact accuracy at step 1500 of every run (10 seeds per
  arm; seeds 0-2 read at step 1500 of their 3000-step runs).
* :data:`CONTRASTS` C1 = (3,6) - (2,2) and C2 = (2,6) - (3,6), paired by seed
  (:func:`studies.cpu_study.analysis.contrast`: paired t over the seeds), Holm over the two;
  verdicts *supported* / *contradicted* / *inconclusive*, raw and after Holm.
* Secondary, descriptive (outside the Holm family, no verdicts): seeds 0-2 at step 3000
  against step 1500 and whether the arms' order holds; the EMA minus the raw weights at step
  1500 (Holm over the three arms); the curves at every evaluation.

:func:`analyze` refuses (one line, naming them) while any of the 30 runs is missing or
incomplete. :func:`write_report` writes ``results_round2.json``, ``RESULTS_ROUND2.md`` and the
figures (PNG, SVG, PDF); ``--notebook=studies/cpu_study/notebook_round2.ipynb`` then renders
the notebook on them. Command line: ``python -m studies.cpu_study.round2 --runs=runs
--out=docs/results/cpu_study`` (or ``--results=.../results_round2.json``). ``--runs=runs
--archive=DIR`` instead copies the complete runs' records into DIR (:func:`archive`), for a
study run in parts on machines that do not keep their disks.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import matplotlib.lines as mlines
import matplotlib.pyplot as plt
import numpy as np

from analysis import stats
from analysis.plots import legend_outside, save_figure
from studies.cpu_study import analysis as cs
from studies.cpu_study.sweep import (ROUND2_ARMS, ROUND2_EVAL_EVERY, ROUND2_LONG_SEEDS,
                                     ROUND2_LONG_STEPS, ROUND2_SEEDS, ROUND2_STEPS)

__all__ = ["CONTRASTS", "EXPECTED_RUNS", "load", "load_results", "archive", "analyze", "arms_table",
           "verdicts_table", "longer_table", "ema_table", "curves_table", "render_markdown",
           "write_report", "report", "main"]

SWEEP, LONG_SWEEP = "cpu_tn_round2", "cpu_tn_round2_long"
#: (sweep, seeds, steps) of the runs round two needs, every arm of ROUND2_ARMS each
EXPECTED_RUNS = ((SWEEP, ROUND2_SEEDS, ROUND2_STEPS),
                 (LONG_SWEEP, ROUND2_LONG_SEEDS, ROUND2_LONG_STEPS))
LABELS = tuple(a.label for a in ROUND2_ARMS)
PRIMARY_STEP = ROUND2_STEPS
#: run.json fields recorded with every run (what can change its numbers)
ENV_FIELDS = ("torch_version", "forward_dtype", "forward_dtype_rule", "torch_threads",
              "cpu_threads_rule", "git_commit", "git_dirty")
VERDICT_WORDS = {"agrees": "supported", "disagrees": "contradicted",
                 "inconclusive": "inconclusive"}
RESULTS_JSON, RESULTS_MD = "results_round2.json", "RESULTS_ROUND2.md"
#: the environment variable that points studies/cpu_study/notebook_round2.ipynb at a results file
RESULTS_ENV = "TRM_CPU_STUDY_ROUND2_RESULTS"


@dataclasses.dataclass(frozen=True)
class Contrast:
    """A pre-registered contrast: ``effect = sum w * accuracy``, paired by seed; a verdict is
    *supported* when significant with the sign of ``direction``, *contradicted* against it."""

    name: str
    definition: str
    weights: Mapping[str, float]
    direction: int
    expectation: str


def _contrasts() -> Tuple[Contrast, ...]:
    deep, shallow = cs._pp("E1.1"), cs._pp("E2.2", "T=2, n=2")
    return (
        Contrast("C1", "T=3, n=6 minus T=2, n=2", {"t3_n6": 1, "t2_n2": -1}, +1,
                 f"> 0 (paper: T=3, n=6 {deep:.1f}% vs T=2, n=2 {shallow:.1f}% on "
                 "Sudoku-Extreme)"),
        Contrast("C2", "T=2, n=6 minus T=3, n=6", {"t2_n6": 1, "t3_n6": -1}, -1,
                 "<= 0 (study plan: more depth); round one saw > 0; two-sided, no sign "
                 "favoured"),
    )


CONTRASTS: Tuple[Contrast, ...] = _contrasts()


# ---------------------------------------------------------------------------------------------
# Loading


def _eval_steps(steps: int) -> List[int]:
    return list(range(ROUND2_EVAL_EVERY, steps + 1, ROUND2_EVAL_EVERY))


def _run_entry(name: str, sweep: str, label: str, seed: int, path: str) -> Dict[str, Any]:
    with open(os.path.join(path, "run.json")) as f:
        meta = json.load(f)
    command = {}
    if os.path.isfile(os.path.join(path, "command.json")):
        with open(os.path.join(path, "command.json")) as f:
            command = json.load(f)
    return {"name": name, "sweep": sweep, "arm": label, "seed": seed,
            "status": meta.get("status"), "last_step": meta.get("last_step"),
            "total_steps": meta.get("total_steps"), "wall_s": cs._wall(meta, path),
            "num_params": meta.get("num_params"),
            **{k: meta.get(k) for k in ENV_FIELDS},
            "command": cs._run_command(command, sweep) if command else None,
            "history": cs._eval_history(path)}


def load(root: str) -> List[Dict[str, Any]]:
    """Every round-two run found under ``root`` (``<root>/<sweep>/<arm>_s<seed>/run.json``),
    finished or not; :func:`analyze` says which are missing or incomplete."""
    runs = []
    for name, sweep, label, seed, _ in _expected():
        path = os.path.join(root, name)
        if os.path.isfile(os.path.join(path, "run.json")):
            runs.append(_run_entry(name, sweep, label, seed, path))
    return runs


def load_results(path: str) -> List[Dict[str, Any]]:
    """The runs recorded in a ``results_round2.json`` (the report again without run folders)."""
    res = cs.read_results_json(path, f"the {RESULTS_JSON} written by python -m "
                                     "studies.cpu_study.round2")
    if not isinstance(res, dict) or res.get("round") != 2 or not isinstance(res.get("runs"),
                                                                           list):
        raise FileNotFoundError(f"{path!r} is not a round-two {RESULTS_JSON}")
    return res["runs"]


def _run_problem(r: Optional[Mapping[str, Any]], name: str, steps: int) -> Optional[str]:
    """Why the run ``name`` (a :func:`load` entry, None when missing) does not count yet, or
    None when it is complete: finished at ``steps`` with EMA and raw evaluations at every
    evaluation step."""
    if r is None:
        return f"{name} missing"
    both = {h["step"] for h in r["history"] if "exact_accuracy_raw" in h}
    lacking = [s for s in _eval_steps(steps) if s not in both]
    if r["status"] != "completed" or r["total_steps"] != steps or lacking:
        return (f"{name} incomplete ({r['status']}, step {r['last_step']} of "
                f"{r['total_steps']}, expected {steps}"
                + (f"; no EMA+raw evaluation at step {lacking}" if lacking else "") + ")")
    return None


def _expected() -> List[Tuple[str, str, str, int, int]]:
    """(name, sweep, arm label, seed, steps) of every run round two needs."""
    return [(f"{sweep}/{label}_s{seed}", sweep, label, seed, steps)
            for sweep, seeds, steps in EXPECTED_RUNS for label in LABELS for seed in seeds]


def _problems(runs: Sequence[Mapping[str, Any]]) -> List[str]:
    """What keeps round two from being analysed: each expected run missing or incomplete."""
    by_name = {r["name"]: r for r in runs}
    found = (_run_problem(by_name.get(name), name, steps)
             for name, _, _, _, steps in _expected())
    return [p for p in found if p]


#: a run's files kept by :func:`archive`: what :func:`load` reads (with ``eval/*/metrics.json``),
#: what a launcher's preflight compares (``config.gin``) and the run's own log
ARCHIVE_FILES = ("config.gin", "operative_config.gin", "hparams.json", "command.json",
                 "launcher.log")


def _copy_atomic(src: str, dst: str) -> None:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    tmp = f"{dst}.tmp{os.getpid()}"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def archive(runs_root: str, dest: str) -> Tuple[List[str], List[str], List[str]]:
    """Copies the records of every complete round-two run under ``runs_root`` into ``dest``,
    in the same layout, so a study run in parts on machines that do not keep their disks keeps
    its finished runs: ``run.json``, :data:`ARCHIVE_FILES` and ``eval/step_*/metrics.json``
    (no checkpoints, no TensorBoard files; about 100 KB a run, mostly ``launcher.log``). Copy
    ``dest`` into a fresh ``--root`` and ``launchers.local`` skips those runs as completed;
    ``--runs=dest`` reports from it once all 30 are there. ``run.json`` is written last, so an interrupted archive
    never shows a run as complete. A run already archived with the same ``run.json`` is left
    as it is; one archived with another ``run.json`` is an error (ValueError), nothing of it
    overwritten. Returns (archived now, already archived, not archived with why)."""
    if not os.path.isdir(runs_root):
        raise FileNotFoundError(f"--runs {runs_root!r} is not a folder (the --root given to "
                                "launchers.local)")
    by_name = {r["name"]: r for r in load(runs_root)}
    done, kept, left = [], [], []
    for name, _, _, _, steps in _expected():
        problem = _run_problem(by_name.get(name), name, steps)
        if problem:
            left.append(problem)
            continue
        src, dst = os.path.join(runs_root, name), os.path.join(dest, name)
        with open(os.path.join(src, "run.json"), "rb") as f:
            record = f.read()
        if os.path.isfile(os.path.join(dst, "run.json")):
            with open(os.path.join(dst, "run.json"), "rb") as f:
                if f.read() == record:
                    kept.append(name)
                    continue
            raise ValueError(f"{dst} already holds another record of {name} (its run.json "
                             f"differs from {src}'s); nothing was overwritten: move one away")
        files = [f for f in ARCHIVE_FILES if os.path.isfile(os.path.join(src, f))]
        evals = os.path.join(src, "eval")
        files += sorted(os.path.join("eval", sub, "metrics.json") for sub in os.listdir(evals)
                        if os.path.isfile(os.path.join(evals, sub, "metrics.json")))
        for rel in files + ["run.json"]:
            _copy_atomic(os.path.join(src, rel), os.path.join(dst, rel))
        done.append(name)
    return done, kept, left


# ---------------------------------------------------------------------------------------------
# Analysis


def _table(runs: Sequence[Mapping[str, Any]], label: str, step: int,
           key: str = "exact_accuracy", seeds: Optional[Sequence[int]] = None
           ) -> Dict[int, Tuple[float, int]]:
    """{seed: (value at ``step``, test puzzles)} of one arm's runs."""
    return {r["seed"]: (float(h[key]), int(h.get("count") or 0))
            for r in runs if r["arm"] == label and (seeds is None or r["seed"] in seeds)
            for h in r["history"] if h["step"] == step}


def _summary(table: Mapping[int, Tuple[float, int]], confidence: float) -> Dict[str, Any]:
    """Seeds, per-seed values, mean and the seed-level interval of one arm's table."""
    seeds = sorted(table)
    values = [table[s][0] for s in seeds]
    ci = cs.arm_interval(values, [table[s][1] for s in seeds], confidence)
    return {"seeds": seeds, "per_seed": values, "mean": float(np.mean(values)),
            "ci": [v if np.isfinite(v) else None for v in (ci.low, ci.high)],
            "ci_method": ci.method}


def _paired(tables: Mapping[str, Mapping[int, Tuple[float, int]]],
            weights: Mapping[str, float], confidence: float) -> Dict[str, Any]:
    return cs._points(cs.contrast(tables, weights, confidence=confidence))


def _with_holm(entries: List[Dict[str, Any]]) -> None:
    for e, p in zip(entries, stats.holm([e["p"] for e in entries])):
        e["p_holm"] = p


def _primary(runs, confidence: float) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    alpha = 1.0 - confidence
    tables = {label: _table(runs, label, PRIMARY_STEP) for label in LABELS}
    arms = {a.label: {"label": a.label, "description": a.description, "gin_file": a.gin_file,
                      **_summary(tables[a.label], confidence)} for a in ROUND2_ARMS}
    contrasts = [{"name": c.name, "definition": c.definition, "weights": dict(c.weights),
                  "direction": c.direction, "expectation": c.expectation,
                  **_paired(tables, c.weights, confidence)} for c in CONTRASTS]
    _with_holm(contrasts)
    for c in contrasts:
        for key, p in (("verdict_raw", c["p"]), ("verdict_holm", c["p_holm"])):
            c[key] = VERDICT_WORDS[cs.verdict(c["effect"], p, c["direction"], alpha)]
    return arms, contrasts


def _order(means: Mapping[str, float]) -> List[str]:
    return sorted(means, key=lambda a: -means[a])


def _longer(runs, confidence: float) -> Dict[str, Any]:
    """Seeds 0-2: step 3000 against step 1500, per arm, and the arms' order at both."""
    arms = {}
    for label in LABELS:
        early = _table(runs, label, PRIMARY_STEP, seeds=ROUND2_LONG_SEEDS)
        late = _table(runs, label, ROUND2_LONG_STEPS, seeds=ROUND2_LONG_SEEDS)
        arms[label] = {"mean_early": float(np.mean([v for v, _ in early.values()])),
                       "mean_late": float(np.mean([v for v, _ in late.values()])),
                       **_paired({"late": late, "early": early}, {"late": 1, "early": -1},
                                 confidence)}
    early_order = _order({a: arms[a]["mean_early"] for a in LABELS})
    late_order = _order({a: arms[a]["mean_late"] for a in LABELS})
    return {"seeds": list(ROUND2_LONG_SEEDS), "early_step": PRIMARY_STEP,
            "late_step": ROUND2_LONG_STEPS, "arms": arms, "order_early": early_order,
            "order_late": late_order, "order_holds": early_order == late_order}


def _ema_minus_raw(runs, confidence: float) -> Dict[str, Dict[str, Any]]:
    """Per arm at step 1500: the EMA weights minus the raw ones, paired over the seeds, Holm
    over the arms."""
    out = {}
    for label in LABELS:
        ema = _table(runs, label, PRIMARY_STEP)
        raw = _table(runs, label, PRIMARY_STEP, key="exact_accuracy_raw")
        out[label] = {"mean_ema": float(np.mean([v for v, _ in ema.values()])),
                      "mean_raw": float(np.mean([v for v, _ in raw.values()])),
                      **_paired({"ema": ema, "raw": raw}, {"ema": 1, "raw": -1}, confidence)}
    _with_holm(list(out.values()))
    return out


def _curves(runs, confidence: float) -> Dict[str, List[Dict[str, Any]]]:
    """Per arm, at every evaluation step: the EMA's and the raw weights' mean over the seeds
    that reached it, the EMA's with its seed-level interval."""
    out = {}
    for label in LABELS:
        rows = []
        for step in _eval_steps(ROUND2_LONG_STEPS):
            ema = _table(runs, label, step)
            raw = _table(runs, label, step, key="exact_accuracy_raw")
            rows.append({"step": step, "n_seeds": len(ema), **_summary(ema, confidence),
                         "mean_raw": float(np.mean([v for v, _ in raw.values()]))})
        out[label] = rows
    return out


def analyze(runs: Sequence[Mapping[str, Any]], *, confidence: float = 0.95) -> Dict[str, Any]:
    """The pre-registered analysis of round two's runs (all 30 complete, else ValueError)."""
    problems = _problems(runs)
    if problems:
        total = sum(len(seeds) for _, seeds, _ in EXPECTED_RUNS) * len(LABELS)
        raise ValueError(f"round two needs all {total} runs complete; {len(problems)} are not: "
                         f"{'; '.join(problems)} (run `make cpu-study-round2`: it resumes them)")
    arms, contrasts = _primary(runs, confidence)
    walls = [r["wall_s"] or 0 for r in runs]
    cpu_s = sum((r["wall_s"] or 0) * (r.get("torch_threads") or 1) for r in runs)
    return {
        "round": 2, "metric": cs.METRIC, "primary_step": PRIMARY_STEP, "confidence": confidence,
        "interval_method": "arms: t interval over the seeds' accuracies (the spread floored at "
                           "one puzzle); contrasts: paired t over the per-seed differences, "
                           "p-values from the same t, Holm over C1 and C2",
        "arms": arms, "contrasts": contrasts,
        "secondary": {"longer": _longer(runs, confidence),
                      "ema_minus_raw": _ema_minus_raw(runs, confidence),
                      "curves": _curves(runs, confidence)},
        "compute": {"runs": len(runs), "wall_hours": sum(walls) / 3600.0,
                    "cpu_hours": cpu_s / 3600.0},
        "environment": {k: sorted({str(r.get(k)) for r in runs}) for k in ENV_FIELDS},
        "runs": [dict(r) for r in sorted(runs, key=lambda r: r["name"])],
    }


# ---------------------------------------------------------------------------------------------
# Figures


def _bars(rows: Sequence[Mapping[str, Any]]) -> Tuple[List[float], List[List[float]]]:
    """Means (%) and their asymmetric error bars (%) from summaries with ``mean`` and ``ci``."""
    means = [100 * r["mean"] for r in rows]
    lo = [m - (100 * r["ci"][0] if r["ci"][0] is not None else m) for m, r in zip(means, rows)]
    hi = [(100 * r["ci"][1] if r["ci"][1] is not None else m) - m for m, r in zip(means, rows)]
    return means, [lo, hi]


def arms_figure(res: Mapping[str, Any]):
    """The three arms at step 1500: mean with its seed-level interval, each seed a dot, the
    paper's numbers as green dashes."""
    arms = [res["arms"][a] for a in LABELS]
    means, yerr = _bars(arms)
    fig, ax = plt.subplots(figsize=(5.6, 3.4))
    x = np.arange(len(arms))
    ax.bar(x, means, width=0.6, color="#3182bd")
    n = sorted({len(a["seeds"]) for a in arms})
    what = stats.interval_label([a["ci_method"] for a in arms], res["confidence"])
    ax.errorbar(x, means, yerr=yerr, fmt="none", ecolor="black", capsize=4,
                label=f"mean, {what} (n = {'/'.join(map(str, n))} seeds)")
    ax.scatter([i for i, a in enumerate(arms) for _ in a["per_seed"]],
               [100 * v for a in arms for v in a["per_seed"]], color="#e6550d", s=12, zorder=3,
               label="one seed")
    paper = {"t3_n6": cs._pp("E1.1"), "t2_n2": cs._pp("E2.2", "T=2, n=2")}
    ax.scatter([LABELS.index(a) for a in paper], list(paper.values()), marker="_", s=400,
               color="#31a354", zorder=4, label="paper (Sudoku-Extreme)")
    ax.set_xticks(x)
    ax.set_xticklabels([a["description"] for a in arms])
    ax.set_ylim(0, 100)
    ax.set_ylabel(f"exact accuracy at step {res['primary_step']} (%)")
    ax.set_title("CPU study round two: recursion schedules", fontsize=10)
    fig.tight_layout()
    legend_outside(ax)
    return fig


def contrasts_figure(res: Mapping[str, Any]):
    """C1 and C2 with their paired intervals, raw and Holm p in the labels, and (grey, below)
    the descriptive EMA minus raw weights per arm."""
    rows = [(f"{c['name']}: {c['definition']}\np = {cs._fmt_p(c['p'])}, Holm p = "
             f"{cs._fmt_p(c['p_holm'])}, {c['verdict_holm']}", c, "#3182bd")
            for c in res["contrasts"]]
    rows += [(f"EMA minus raw, {a} (descriptive)\np = {cs._fmt_p(e['p'])}, Holm p (3 arms) = "
              f"{cs._fmt_p(e['p_holm'])}", e, "#969696")
             for a, e in res["secondary"]["ema_minus_raw"].items()]
    fig, ax = plt.subplots(figsize=(7.5, 0.7 * len(rows) + 1.4))
    for i, (_, e, color) in enumerate(rows):
        if e["ci"][0] is not None:
            ax.plot(e["ci"], [i, i], color=color, lw=2)
        ax.scatter([e["effect"]], [i], color=color, zorder=3)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([r[0] for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"difference at step {res['primary_step']} (accuracy points)")
    what = stats.interval_label([e["ci_method"] for _, e, _ in rows], res["confidence"])
    handles = [mlines.Line2D([], [], color="#3182bd", lw=2, marker="o",
                             label=f"pre-registered contrast,\n{what}, paired over seeds"),
               mlines.Line2D([], [], color="#969696", lw=2, marker="o",
                             label="secondary (outside the Holm family)")]
    fig.tight_layout()
    legend_outside(ax, handles=handles)
    return fig


def curves_figure(res: Mapping[str, Any]):
    """Exact accuracy at every evaluation per arm: the EMA's mean with its seed-level interval
    (10 seeds to step 1500, seeds 0-2 after it), the raw weights' mean dashed."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    methods = []
    for k, label in enumerate(LABELS):
        rows = res["secondary"]["curves"][label]
        steps = [r["step"] + 15 * (k - 1) for r in rows]  # side by side, not on top
        means, yerr = _bars(rows)
        line = ax.errorbar(steps, means, yerr=yerr, marker="o", capsize=3, ms=4,
                           label=f"{label}, EMA")
        ax.plot(steps, [100 * r["mean_raw"] for r in rows], ls="--", color=line[0].get_color(),
                label=f"{label}, raw weights")
        methods += [r["ci_method"] for r in rows]
    ax.axvline(res["primary_step"], color="grey", lw=0.8, ls=":")
    ax.set_xlabel("optimizer step (10 seeds to 1500, seeds 0-2 after)")
    ax.set_ylabel("exact accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"bars: {stats.interval_label(methods, res['confidence'])}", fontsize=8)
    fig.tight_layout()
    legend_outside(ax)
    return fig


FIGURES = (("round2_arms", arms_figure), ("round2_contrasts", contrasts_figure),
           ("round2_curves", curves_figure))


# ---------------------------------------------------------------------------------------------
# Report


def _pct_ci(e: Mapping[str, Any]) -> str:
    return f"{cs._fmt_pct(e['mean'])} [{cs._fmt_pct(e['ci'][0])}, {cs._fmt_pct(e['ci'][1])}]"


def _conf(res: Mapping[str, Any]) -> str:
    return f"{res['confidence']:.0%}"


def arms_table(res: Mapping[str, Any]) -> List[str]:
    """Markdown lines: each arm at step 1500, mean with its seed-level interval, every seed."""
    lines = [f"| arm | configuration | mean [{_conf(res)} t over seeds] | seeds | per seed (%) |",
             "|---|---|---|---|---|"]
    for label in LABELS:
        a = res["arms"][label]
        lines.append(f"| {label} | {a['description']} | {_pct_ci(a)} | {len(a['seeds'])} | "
                     + ", ".join(f"{100 * v:.1f}" for v in a["per_seed"]) + " |")
    return lines


def verdicts_table(res: Mapping[str, Any]) -> List[str]:
    """Markdown lines: the pre-registered contrasts, p raw and after Holm, both verdicts."""
    lines = [f"| contrast | effect measured | expected | ours, points [{_conf(res)} interval] "
             "| seeds | p | verdict | Holm p | verdict after Holm |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in res["contrasts"]:
        lines.append(f"| {c['name']} | {c['definition']} | {c['expectation']} | "
                     f"{c['effect']:+.1f} {cs._fmt_ci(c['ci'])} | {len(c['paired_seeds'])} | "
                     f"{cs._fmt_p(c['p'])} | {c['verdict_raw']} | {cs._fmt_p(c['p_holm'])} | "
                     f"**{c['verdict_holm']}** |")
    return lines


def longer_table(res: Mapping[str, Any]) -> List[str]:
    """Markdown lines: seeds 0-2 at step 3000 against step 1500 and the arms' order at both."""
    lon = res["secondary"]["longer"]
    lines = [f"| arm | mean at {lon['early_step']} | mean at {lon['late_step']} | change, points "
             f"[{_conf(res)} paired t] | p |", "|---|---|---|---|---|"]
    for label in LABELS:
        e = lon["arms"][label]
        lines.append(f"| {label} | {cs._fmt_pct(e['mean_early'])} | "
                     f"{cs._fmt_pct(e['mean_late'])} | {e['effect']:+.1f} "
                     f"{cs._fmt_ci(e['ci'])} | {cs._fmt_p(e['p'])} |")
    return lines + ["", f"Order of the arms' means at step {lon['early_step']}: "
                    f"{' > '.join(lon['order_early'])}; at step {lon['late_step']}: "
                    f"{' > '.join(lon['order_late'])}; the order "
                    f"{'holds' if lon['order_holds'] else 'does not hold'}."]


def ema_table(res: Mapping[str, Any]) -> List[str]:
    """Markdown lines: the EMA minus the raw weights per arm at step 1500, Holm over the arms."""
    lines = [f"| arm | EMA | raw | EMA minus raw, points [{_conf(res)} paired t] | p | Holm p "
             "(3 arms) |", "|---|---|---|---|---|---|"]
    for label, e in res["secondary"]["ema_minus_raw"].items():
        lines.append(f"| {label} | {cs._fmt_pct(e['mean_ema'])} | {cs._fmt_pct(e['mean_raw'])} "
                     f"| {e['effect']:+.1f} {cs._fmt_ci(e['ci'])} | {cs._fmt_p(e['p'])} | "
                     f"{cs._fmt_p(e['p_holm'])} |")
    return lines


def curves_table(res: Mapping[str, Any]) -> List[str]:
    """Markdown lines: the EMA's mean with its interval per arm at every evaluation step."""
    curves = res["secondary"]["curves"]
    lines = ["| step | seeds | " + " | ".join(LABELS) + " |", "|---|---|" + "---|" * len(LABELS)]
    for i, row in enumerate(curves[LABELS[0]]):
        cells = [_pct_ci(curves[label][i]) for label in LABELS]
        lines.append(f"| {row['step']} | {row['n_seeds']} | " + " | ".join(cells) + " |")
    return lines


def render_markdown(res: Mapping[str, Any]) -> str:
    conf = _conf(res)
    step = res["primary_step"]
    lon = res["secondary"]["longer"]
    lines = [
        "# CPU study, round two: results", "",
        "Generated by `python -m studies.cpu_study.round2` from the runs of the "
        "`cpu_tn_round2` and `cpu_tn_round2_long` sweeps (do not edit by hand). The analysis "
        "is the one pre-registered in README.md (\"Round two\").", "",
        f"Primary endpoint: exact accuracy of the EMA weights at step {step} on the 500 fixed "
        f"test puzzles, every run (seeds 0-2 read at step {step} of their 3000-step runs). "
        f"Arms: mean over seeds with the {conf} t interval over the seeds. Contrasts: paired by "
        "seed, two-sided paired t, Holm over C1 and C2; the verdict after Holm counts.", "",
        f"Runs: {res['compute']['runs']}, all complete; {res['compute']['cpu_hours']:.2f} "
        "CPU-hours (wall x torch threads).", "",
        "## Primary: arms", "", *arms_table(res),
        "", "## Primary: pre-registered contrasts", "", *verdicts_table(res),
        "", "![arms](round2_arms.png)", "", "![contrasts](round2_contrasts.png)",
        "", "## Secondary (descriptive: outside the Holm family, no verdicts)", "",
        f"### Longer training: seeds {', '.join(map(str, lon['seeds']))}, step "
        f"{lon['late_step']} against step {lon['early_step']}", "", *longer_table(res),
        "", f"### EMA minus raw weights at step {step} (same runs)", "", *ema_table(res),
        "", f"### Curves (EMA, mean [{conf} t over the seeds that reached the step])", "",
        *curves_table(res), "", "![curves](round2_curves.png)",
        "", "## Runs", "", "Every run with its per-step EMA and raw values, command and "
        "run record is in `results_round2.json` (`runs`). Environment over the runs:", ""]
    lines += [f"- {k}: {', '.join(v)}" for k, v in res["environment"].items()]
    return "\n".join(lines) + "\n"


def write_report(res: Mapping[str, Any], out_dir: str) -> Dict[str, str]:
    """Writes results_round2.json, RESULTS_ROUND2.md and the figures into ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    for name, make in FIGURES:
        fig = make(res)
        save_figure(fig, os.path.join(out_dir, name))
        plt.close(fig)
    paths = {"results": os.path.join(out_dir, RESULTS_JSON),
             "markdown": os.path.join(out_dir, RESULTS_MD)}
    for key, text in (("results", json.dumps(res, indent=1, default=float) + "\n"),
                      ("markdown", render_markdown(res))):
        tmp = paths[key] + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, paths[key])
    return paths


def report(runs_root: Optional[str], results: Optional[str], out: str) -> str:
    """Loads, analyses and writes round two; returns a one-line summary (FileNotFoundError /
    ValueError with one line when the runs cannot be analysed)."""
    runs = load(runs_root) if runs_root else load_results(results)
    res = analyze(runs)
    paths = write_report(res, out)
    verdicts = ", ".join(f"{c['name']} {c['verdict_holm']}" for c in res["contrasts"])
    return f"{len(runs)} runs; {verdicts} (after Holm); wrote {paths['markdown']}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m studies.cpu_study.round2",
                                description="Round two of the CPU study: the pre-registered "
                                            "report (results_round2.json, RESULTS_ROUND2.md, "
                                            "figures) from the cpu_tn_round2(_long) runs.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--runs", help="the --root given to launchers.local")
    src.add_argument("--results", help=f"a {RESULTS_JSON} written by this command")
    p.add_argument("--out", help="output folder (docs/results/cpu_study)")
    p.add_argument("--notebook", default=None,
                   help="after writing the report, execute this notebook in place on the "
                        f"{RESULTS_JSON} just written, so it is committed with its outputs "
                        "(studies/cpu_study/notebook_round2.ipynb)")
    p.add_argument("--archive", default=None, metavar="DIR",
                   help="instead of the report: copy the records of the complete runs under "
                        "--runs into DIR (no checkpoints), to keep them when the study runs "
                        "in parts on machines that do not keep their disks")
    args = p.parse_args(argv)
    if args.archive:
        if not args.runs or args.out or args.notebook:
            p.error("--archive takes --runs (the runs to archive) and no --out, --results or "
                    "--notebook")
        try:
            done, kept, left = archive(args.runs, args.archive)
        except (FileNotFoundError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"archived {len(done)} runs into {args.archive} ({len(kept)} were already "
              f"there); {len(left)} not complete" + (f": {'; '.join(left)}" if left else ""))
        return 0
    if not args.out:
        p.error("--out is required (the report's folder, docs/results/cpu_study)")
    if args.notebook and not os.path.isfile(args.notebook):
        print(f"error: --notebook {args.notebook!r} does not exist (the round-two notebook is "
              "studies/cpu_study/notebook_round2.ipynb)", file=sys.stderr)
        return 2
    try:
        print(report(args.runs, args.results, args.out))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.notebook:
        results = os.path.abspath(os.path.join(args.out, RESULTS_JSON))
        cs.render_notebook(args.notebook, env={RESULTS_ENV: results})
        print(f"rendered {args.notebook}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
