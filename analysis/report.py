"""The results report: ``python -m analysis.report --runs=ROOT --out=DIR``.

Writes ``DIR/RESULTS.md`` (tables, and the plots embedded by relative path), the plots as PNG and
SVG in ``DIR``, and ``DIR/results.json`` holding every number the markdown shows (the markdown is
rendered from that dictionary). Sections appear only where the runs support them:

* an overview (runs, seeds, steps, statuses per experiment);
* per experiment (a top-level folder of the root; a flat root is one experiment): the
  comparison table over the hyperparameters that vary (final metric, CI, runs / seeds / eval
  steps behind each number, the paper's number) and its chart; learning curves;
* a T/n heatmap where T and n each take 2+ values; an LR x batch grid where lr and batch each
  take 2+ values (best lr per batch, power-law fit of the optimum);
* scaling laws where parameters (or data size) take 3+ values: error = 1 - exact accuracy
  (and eval loss) vs parameters / training puzzles, and vs compute over the frontier of all
  eval points; exponents with bootstrap CIs;
* ``python -m trm.eval`` results (``Runs.eval_cli``), in a table of their own;
* an appendix with one row per run.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import re
import sys
from typing import Any, Dict, List, Optional, Sequence

from analysis import require_extra

# Without the analysis extra: one line saying how to install it, not a traceback.
require_extra("analysis.report", ("pandas", "scipy", "matplotlib"), cli=__name__ == "__main__")

import numpy as np
import pandas as pd

from analysis import stats as _stats
from analysis import compare as _cmp
from analysis import scaling as _sc
from analysis.cli import Parser, run, select_runs
from analysis.runs import Runs, tag_column

__all__ = ["build_report", "render_markdown", "main", "jsonable"]

METRIC = "eval/exact_accuracy"
LOSS = "eval/lm_loss"


def jsonable(obj: Any) -> Any:
    """numpy / pandas values -> JSON types; NaN and NA -> None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [jsonable(v) for v in obj.tolist()]
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return None if not math.isfinite(f) else f
    if obj is None or obj is pd.NA or obj is pd.NaT:
        return None
    if isinstance(obj, (int, str)):
        return obj
    try:
        if pd.isna(obj):
            return None
    except (TypeError, ValueError):
        pass
    return str(obj)


def _slug(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name).strip("_") or "all"


def _pct(v: Optional[float]) -> str:
    return "" if v is None else f"{100 * v:.1f}"


def _num(v: Optional[float], digits: int = 3) -> str:
    if v is None:
        return ""
    return f"{v:.{digits}g}"


def _figure_files(stem: str) -> List[str]:
    """The files :func:`analysis.plots.save_figure` writes for ``stem``."""
    return [f"{stem}.{fmt}" for fmt in ("png", "svg", "pdf")]


def _rel(paths: List[str], out_dir: str) -> Dict[str, str]:
    return {os.path.splitext(p)[1][1:]: os.path.relpath(p, out_dir).replace(os.sep, "/")
            for p in paths}


def _close(fig) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


def _comparison(sub: Runs, varying: List[str], metric: str, out_dir: str, slug: str,
                title: str) -> Dict[str, Any]:
    from analysis import plots

    table = _cmp.comparison_table(sub, varying, metric)
    rows = []
    for _, r in table.iterrows():
        d = {c: r[c] for c in varying}
        for c in ["label", "n_runs", "n_seeds", "seeds", "runs", "step_min", "step_max",
                  "eval_count", "mean", "std", "min", "max", "ci_low", "ci_high", "ci_method",
                  "published", "published_experiment", "published_label"]:
            d[c] = r[c]
        rows.append(d)
    res: Dict[str, Any] = {"group_by": varying, "metric": metric, "rows": rows}
    if len(table) >= 2 or table["published"].notna().any():
        fig = plots.plot_ablation(table, os.path.join(out_dir, f"{slug}_comparison"),
                                  title=title, metric_label=f"final {metric}",
                                  percent=_cmp.is_accuracy(metric))
        _close(fig)
        res["plot"] = _rel(_figure_files(os.path.join(out_dir, f"{slug}_comparison")), out_dir)
    return res


def _curves(sub: Runs, varying: List[str], out_dir: str, slug: str) -> Dict[str, Any]:
    from analysis import plots

    out: Dict[str, Any] = {}
    for tag, key, logy in ((METRIC, "eval_exact_accuracy", False),
                           ("train/lm_loss", "train_lm_loss", True)):
        if tag not in sub.tags:
            continue
        stem = os.path.join(out_dir, f"{slug}_curve_{key}")
        fig = plots.plot_learning_curves(sub, tag, varying, stem, logy=logy)
        _close(fig)
        c = sub.curve(tag)
        out[tag] = {"plot": _rel(_figure_files(stem), out_dir),
                    "n_runs": int(c["run"].nunique()), "n_points": int(len(c)),
                    "step_max": int(c["step"].max()) if len(c) else None}
    return out


def _grid(summary: pd.DataFrame, rows: str, cols: str, value: str) -> pd.DataFrame:
    s = summary[summary[value].notna() & summary[rows].notna() & summary[cols].notna()]
    cells = []
    for (a, b), g in s.groupby([rows, cols]):
        steps = g["final_eval_step"].dropna() if "final_eval_step" in g.columns else []
        cells.append({rows: a, cols: b, "mean": float(g[value].mean()),
                      "n_runs": int(len(g)), "n_seeds": _n_seeds(g),
                      "step_min": int(min(steps)) if len(steps) else None,
                      "step_max": int(max(steps)) if len(steps) else None})
    return pd.DataFrame(cells)


def _tn(sub: Runs, value: str, out_dir: str, slug: str, varying: List[str]) -> Optional[Dict]:
    from analysis import plots

    s = sub.summary
    if "T" not in s.columns or "n" not in s.columns:
        return None
    if s["T"].dropna().nunique() < 2 or s["n"].dropna().nunique() < 2:
        return None
    cells = _grid(s, "T", "n", value)
    if not len(cells):
        return None
    # intervals per cell (analysis.stats: over seeds, one run's Wilson interval): the heatmap
    # annotates them so seed noise is visible next to the differences between cells
    agg = _stats.aggregate(s, ["T", "n"], value)
    cells = cells.merge(agg[["T", "n", "ci_low", "ci_high", "ci_method"]], on=["T", "n"],
                        how="left")
    stem = os.path.join(out_dir, f"{slug}_tn_heatmap")
    fig = plots.plot_tn_heatmap(agg, stem, title=f"{slug}: final exact accuracy over (T, n)")
    _close(fig)
    best = cells.loc[cells["mean"].idxmax()]
    others = [v for v in varying if v not in ("T", "n")]
    return {"cells": cells.to_dict("records"), "best": {"T": best["T"], "n": best["n"],
                                                        "mean": best["mean"]},
            "mixed_axes": others, "plot": _rel(_figure_files(stem), out_dir)}


def _lr_batch(sub: Runs, value: str, out_dir: str, slug: str) -> Optional[Dict]:
    from analysis import plots

    s = sub.summary
    if "lr" not in s.columns or "global_batch_size" not in s.columns:
        return None
    if s["lr"].dropna().nunique() < 2 or s["global_batch_size"].dropna().nunique() < 2:
        return None
    cells = _grid(s, "global_batch_size", "lr", value)
    if not len(cells):
        return None
    grid = cells.pivot(index="global_batch_size", columns="lr", values="mean")
    grid = grid.sort_index().sort_index(axis=1)
    best = []
    for b, g in cells.groupby("global_batch_size"):
        r = g.loc[g["mean"].idxmax()]
        best.append({"global_batch_size": b, "lr": r["lr"], "mean": r["mean"],
                     "n_runs": int(r["n_runs"]), "edge_of_grid": bool(r["lr"] in
                                                                 (g["lr"].min(), g["lr"].max()))})
    fit = None
    if len({b["global_batch_size"] for b in best}) >= 2:
        try:
            fit = _sc.fit_loglinear([b["global_batch_size"] for b in best],
                                    [b["lr"] for b in best])
        except ValueError:
            fit = None
    stem = os.path.join(out_dir, f"{slug}_lr_batch")
    fig = plots.plot_lr_batch(grid, stem, fit=fit, title=f"{slug}: LR x batch size")
    _close(fig)
    return {"cells": cells.to_dict("records"), "best_lr": best,
            "fit": fit.as_dict() if fit else None,
            "plot": _rel(_figure_files(stem), out_dir)}


def _scaling(sub: Runs, out_dir: str, slug: str, n_boot: int) -> Dict[str, Any]:
    from analysis import plots

    s = sub.summary
    acc_col = f"final_{tag_column(METRIC)}"
    loss_col = f"final_{tag_column(LOSS)}"
    out: Dict[str, Any] = {}
    axes = []
    if "num_params" in s.columns and s["num_params"].dropna().nunique() >= 3:
        axes.append(("params", "num_params", "parameters"))
    if "num_train_puzzles" in s.columns and s["num_train_puzzles"].dropna().nunique() >= 3:
        axes.append(("data", "num_train_puzzles", "training puzzles"))
    targets = []
    if acc_col in s.columns and s[acc_col].notna().any():
        targets.append(("error", lambda d: 1.0 - d[acc_col], "error (1 - exact accuracy)",
                        lambda v: 1.0 - v))
    if loss_col in s.columns and s[loss_col].notna().any():
        targets.append(("loss", lambda d: d[loss_col], "eval lm_loss", lambda v: v))
    for key, col, xlabel in axes:
        for tname, yf, ylabel, _ in targets:
            d = s[s[col].notna()]
            x = d[col].astype(float).to_numpy()
            y = yf(d).astype(float).to_numpy()
            entry: Dict[str, Any] = {"x": col, "y": ylabel, "n_runs": int(len(d)),
                                     "points": [{"run": r, "x": xv, "y": yv} for r, xv, yv in
                                                zip(d["run"], x, y)]}
            try:
                fit = _sc.fit_power_law(x, y, n_boot=n_boot, x_label=col, y_label=tname)
                entry["fit"] = fit.as_dict()
                entry["status"] = "ok"
            except (ValueError, RuntimeError) as e:
                fit = None
                entry["status"] = f"not fitted: {e}"
            stem = os.path.join(out_dir, f"{slug}_scaling_{key}_{tname}")
            fig = plots.plot_scaling(x, y, fit, stem, xlabel=xlabel, ylabel=ylabel,
                                     title=f"{slug}: {ylabel} vs {xlabel}")
            _close(fig)
            entry["plot"] = _rel(_figure_files(stem), out_dir)
            out[f"{key}/{tname}"] = entry
    if axes and targets:
        # compute: the frontier over every eval point of every run
        for tname, _, ylabel, conv in targets:
            tag = METRIC if tname == "error" else LOSS
            c = sub.curve(tag)
            c = c.loc[c["step"] > 0, ["run", "step", "value"]].merge(s[["run", "flops_per_example", "num_params",
                                           "global_batch_size"]], on="run", how="left")
            if not len(c):
                continue
            ex = c["step"].astype(float) * c["global_batch_size"].astype(float)
            has_flops = c["flops_per_example"].notna().all()
            comp = (c["flops_per_example"].astype(float) * ex if has_flops
                    else 6.0 * c["num_params"].astype(float) * ex)
            y = conv(c["value"].astype(float)).to_numpy()
            x = comp.to_numpy()
            ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
            x, y, runs_c, steps_c = x[ok], y[ok], c["run"].to_numpy()[ok], c["step"].to_numpy()[ok]
            if not len(x):
                continue
            idx = _sc.pareto_frontier(x, y)
            xlabel = "training FLOPs" if has_flops else "6·params·examples (proxy FLOPs)"
            entry = {"x": "compute", "x_source": "flops" if has_flops else "6*params*examples",
                     "y": ylabel, "n_runs": int(len(set(runs_c))), "n_points": int(len(x)),
                     "points": [{"run": runs_c[i], "step": steps_c[i], "x": x[i], "y": y[i]}
                                for i in idx]}
            try:
                fit = _sc.fit_power_law(x[idx], y[idx], n_boot=n_boot, x_label="C",
                                        y_label=tname)
                entry["fit"] = fit.as_dict()
                entry["status"] = "ok"
            except (ValueError, RuntimeError) as e:
                fit = None
                entry["status"] = f"not fitted: {e}"
            stem = os.path.join(out_dir, f"{slug}_scaling_compute_{tname}")
            fig = plots.plot_scaling(x[idx], y[idx], fit, stem, xlabel=xlabel, ylabel=ylabel,
                                     title=f"{slug}: {ylabel} vs compute (frontier)",
                                     background=(x, y))
            _close(fig)
            entry["plot"] = _rel(_figure_files(stem), out_dir)
            out[f"compute/{tname}"] = entry
    return out


def _status_counts(s: pd.DataFrame) -> Dict[str, int]:
    return {k: int(v) for k, v in s["status"].value_counts().sort_index().items()}


def _n_seeds(s: pd.DataFrame) -> int:
    if "seed" in s.columns and s["seed"].notna().any():
        return int(s["seed"].nunique())
    return int(len(s))


def _eval_cli(runs: Runs) -> List[Dict[str, Any]]:
    """``python -m trm.eval`` results (``Runs.eval_cli``), one row per run, setting and step:
    exact accuracy, puzzles, and the single run's Wilson interval (:mod:`analysis.stats`)."""
    cli = runs.eval_cli
    if not len(cli):
        return []
    cli = cli.assign(metric=cli["tag"].str.rsplit("/", n=1).str[-1])
    rows = []
    for (run_id, setting, step), g in cli.groupby(["run", "setting", "step"], sort=True):
        vals = dict(zip(g["metric"], g["value"]))
        acc, count = vals.get("exact_accuracy"), vals.get("count")
        ci = (_stats.single_run_interval(acc, count) if acc is not None and count else None)
        rows.append({"run": run_id, "setting": setting, "step": int(step), "exact_accuracy": acc,
                     "count": count, "ci_low": ci.low if ci else None,
                     "ci_high": ci.high if ci else None,
                     "ci_method": ci.method if ci else "none"})
    return rows


def build_report(runs: Runs, out_dir: str, *, n_boot: int = 1000, metric: str = METRIC,
                 title: str = "TRM results", command: Optional[str] = None) -> Dict[str, Any]:
    """Writes RESULTS.md, results.json and the plots to ``out_dir``; returns the results dict."""
    os.makedirs(out_dir, exist_ok=True)
    s = runs.summary
    value = f"final_{tag_column(metric)}"
    res: Dict[str, Any] = {
        "title": title,
        "generated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "runs_root": runs.root,
        "metric": metric,
        "value_column": value,
        "overview": {
            "n_runs": len(runs),
            "n_seeds": _n_seeds(s) if len(s) else 0,
            "n_experiments": len(runs.experiments),
            "status_counts": _status_counts(s) if len(s) else {},
            "total_steps": int(s["last_step"].fillna(0).sum()) if len(s) else 0,
            "n_points": int(len(runs.scalars)),
        },
        "experiments": [],
        "runs": [],
    }
    for exp in runs.experiments:
        sub = runs.select(experiment=exp)
        ss = sub.summary
        name = exp or "(root)"
        slug = _slug(exp or "all")
        varying = sub.varying()
        e: Dict[str, Any] = {
            "name": name, "slug": slug, "n_runs": len(sub), "n_seeds": _n_seeds(ss),
            "status_counts": _status_counts(ss), "varying": varying,
            "last_step_min": int(ss["last_step"].min()) if ss["last_step"].notna().any() else None,
            "last_step_max": int(ss["last_step"].max()) if ss["last_step"].notna().any() else None,
            "total_steps": int(ss["last_step"].fillna(0).sum()),
        }
        if value in ss.columns and ss[value].notna().any():
            e["comparison"] = _comparison(sub, varying, metric, out_dir, slug, name)
        e["curves"] = _curves(sub, varying, out_dir, slug)
        if value in ss.columns and ss[value].notna().any():
            tn = _tn(sub, value, out_dir, slug, varying)
            if tn:
                e["tn_heatmap"] = tn
            lb = _lr_batch(sub, value, out_dir, slug)
            if lb:
                e["lr_batch"] = lb
        sc = _scaling(sub, out_dir, slug, n_boot)
        if sc:
            e["scaling"] = sc
        res["experiments"].append(e)
    keep = ["run", "experiment", "status", "last_step", "total_steps", "final_eval_step",
            "eval_count", value, f"best_{tag_column(metric)}", f"final_{tag_column(LOSS)}",
            "wall_time_s", "num_params", "flops", "compute", "compute_source", "T", "n",
            "hidden_size", "num_layers", "mixer", "ema", "global_batch_size", "lr",
            "num_train_puzzles", "seed"]
    for _, r in s.iterrows():
        res["runs"].append({k: r[k] for k in keep if k in s.columns})
    res["eval_cli"] = _eval_cli(runs)
    res = jsonable(res)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(res, f, indent=1, sort_keys=False)
    with open(os.path.join(out_dir, "RESULTS.md"), "w") as f:
        f.write(render_markdown(res))
    return res


# --------------------------------------------------------------------------------------------
# Markdown (rendered only from the results dictionary)


def _steps(a: Optional[int], b: Optional[int]) -> str:
    if a is None:
        return ""
    return str(a) if a == b else f"{a}-{b}"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        lines.append("| " + " | ".join("" if v is None else str(v).replace("|", "\\|")
                                       for v in r) + " |")
    return "\n".join(lines) + "\n"


def _val(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() else f"{v:.4g}"
    return str(v)


def render_markdown(res: Dict[str, Any]) -> str:
    metric = res["metric"]
    pct = _cmp.is_accuracy(metric)
    fmt = _pct if pct else (lambda v: _num(v, 4))
    unit = " (%)" if pct else ""
    ov = res["overview"]
    out: List[str] = [f"# {res['title']}\n"]
    cmd = res.get("command") or f"python -m analysis.report --runs={res['runs_root']} --out=DIR"
    status = ", ".join(f"{v} {k}" for k, v in ov["status_counts"].items())
    out.append(f"Generated from the logged runs by `{cmd}` at {res['generated_at']}; do not edit "
               f"by hand. Every number below is in `results.json`.\n")
    out.append(f"**{ov['n_runs']} runs** ({status}) in {ov['n_experiments']} experiment(s), "
               f"{ov['n_seeds']} distinct seed(s), {ov['total_steps']} training steps in "
               f"total, {ov['n_points']} logged scalar points.\n")
    out.append(f"How to read the tables: each row aggregates the **final** `{metric}` (the last "
               f"evaluation of each run) over the runs of that configuration. `runs` / `seeds` "
               f"count them, `steps` is the eval step (range) the values were taken at, `eval n` "
               f"the fewest evaluation puzzles of the runs. The CI (`analysis.stats`, the same "
               f"method in every table and figure) is over seeds: `t` = the t interval of the "
               f"mean of the per-seed values; `t, sd floor` = the same with the seeds' spread "
               f"floored at one puzzle (1 / eval n), because they agree to within one puzzle; "
               f"`wilson` = the Wilson interval of a single run's puzzles; `none` = no interval "
               f"(one seed with several runs, or seeds that all agree on a metric without a "
               f"puzzle count). Puzzles of different seeds are never pooled. Accuracy intervals "
               f"are clipped to [0, 100] %. `paper` is the published full-scale number for that "
               f"configuration (Sudoku-Extreme, TRM paper) where one exists; small-scale twins "
               f"are not expected to reach it, only to reproduce its orderings.\n")
    out.append("## Overview\n")
    rows = []
    for e in res["experiments"]:
        st = ", ".join(f"{v} {k}" for k, v in e["status_counts"].items())
        rows.append([e["name"], e["n_runs"], e["n_seeds"], st,
                     _steps(e["last_step_min"], e["last_step_max"]),
                     ", ".join(e["varying"]) or "-"])
    out.append(_md_table(["experiment", "runs", "seeds", "status", "last step", "varies"],
                         rows))
    for e in res["experiments"]:
        out.append(f"\n## Experiment `{e['name']}`\n")
        st = ", ".join(f"{v} {k}" for k, v in e["status_counts"].items())
        out.append(f"{e['n_runs']} runs ({st}), {e['n_seeds']} seed(s), last steps "
                   f"{_steps(e['last_step_min'], e['last_step_max'])}; varies: "
                   f"{', '.join(e['varying']) or 'nothing (one configuration)'}.\n")
        comp = e.get("comparison")
        if comp:
            gb = comp["group_by"]
            header = list(gb) + ["runs", "seeds", "steps", "eval n", f"mean{unit}",
                                 "95% CI", "CI", f"min-max{unit}", f"paper{unit}"]
            rows = []
            for r in comp["rows"]:
                ci = "" if r["ci_low"] is None else f"[{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]"
                mm = "" if r["n_runs"] < 2 else f"{fmt(r['min'])}-{fmt(r['max'])}"
                paper = fmt(r["published"]) if r["published"] is not None else ""
                if paper and r.get("published_experiment"):
                    paper += f" ({r['published_experiment']})"
                rows.append([_val(r[c]) for c in gb] + [
                    r["n_runs"], r["n_seeds"], _steps(r["step_min"], r["step_max"]),
                    _val(r["eval_count"]), fmt(r["mean"]), ci, r["ci_method"], mm, paper])
            out.append(f"Final `{comp['metric']}`:\n")
            out.append(_md_table(header, rows))
            if comp.get("plot"):
                out.append(f"\n![{e['name']} comparison]({comp['plot']['png']})\n")
        curves = e.get("curves") or {}
        if curves:
            out.append("\n### Learning curves\n")
            for tag, c in curves.items():
                out.append(f"`{tag}` ({c['n_runs']} runs, {c['n_points']} points, up to step "
                           f"{c['step_max']}; mean per group, band = min-max over runs):\n")
                out.append(f"\n![{e['name']} {tag}]({c['plot']['png']})\n")
        tn = e.get("tn_heatmap")
        if tn:
            out.append("\n### Recursion schedule (T, n)\n")
            rows = [[_val(c["T"]), _val(c["n"]), c["n_runs"], c["n_seeds"],
                     _steps(c["step_min"], c["step_max"]), fmt(c["mean"])] for c in tn["cells"]]
            out.append(_md_table(["T", "n", "runs", "seeds", "steps", f"mean{unit}"], rows))
            b = tn["best"]
            out.append(f"\nBest: T={_val(b['T'])}, n={_val(b['n'])} ({fmt(b['mean'])}"
                       f"{'%' if pct else ''}).")
            if tn["mixed_axes"]:
                out.append(f" Cells average over other varying axes: "
                           f"{', '.join(tn['mixed_axes'])}.")
            out.append(f"\n\n![{e['name']} T/n heatmap]({tn['plot']['png']})\n")
        lb = e.get("lr_batch")
        if lb:
            out.append("\n### Learning rate x batch size\n")
            rows = [[_val(c["global_batch_size"]), _val(c["lr"]), c["n_runs"], c["n_seeds"],
                     _steps(c["step_min"], c["step_max"]), fmt(c["mean"])] for c in lb["cells"]]
            out.append(_md_table(["batch", "lr", "runs", "seeds", "steps", f"mean{unit}"], rows))
            rows = [[_val(b["global_batch_size"]), _val(b["lr"]), fmt(b["mean"]), b["n_runs"],
                     "yes" if b["edge_of_grid"] else "no"] for b in lb["best_lr"]]
            out.append("\nBest lr per batch size (an optimum at the edge of the grid is only a "
                       "bound):\n\n")
            out.append(_md_table(["batch", "best lr", f"mean{unit}", "runs", "at grid edge"],
                                 rows))
            if lb.get("fit"):
                f = lb["fit"]
                out.append(f"\nFit of the optimum: lr* = {f['k']:.3g} · B^{f['beta']:.3f} "
                           f"({f['n_points']} batch sizes; no CI from so few points).\n")
            out.append(f"\n![{e['name']} lr x batch]({lb['plot']['png']})\n")
        sc = e.get("scaling")
        if sc:
            out.append("\n### Scaling laws\n")
            out.append("Fits of `E = a·x^(-α) + c` (saturating form with 4+ distinct x, else "
                       "the pure power law `c = 0`); α with a 95% bootstrap CI over resampled "
                       "points. Compute fits use the frontier of all eval points.\n\n")
            rows = []
            for key, en in sc.items():
                f = en.get("fit")
                npts = en.get("n_points", len(en["points"]))
                if f:
                    ci = ("" if f["alpha_ci"][0] is None else
                          f"[{f['alpha_ci'][0]:.3f}, {f['alpha_ci'][1]:.3f}]")
                    rows.append([key, en["y"], f"{f['alpha']:.3f}", ci, f"{f['a']:.3g}",
                                 f"{f['c']:.3g}" if f["saturating"] else "0 (pure)",
                                 f["n_points"], npts if key.startswith("compute") else
                                 en["n_runs"], f"{f['n_boot_ok']}/{f['n_boot']}"])
                else:
                    rows.append([key, en["y"], en["status"], "", "", "", len(en["points"]),
                                 en["n_runs"], ""])
            out.append(_md_table(["x / target", "E", "α", "95% CI", "a", "c", "fit points",
                                  "runs (points)", "bootstrap ok"], rows))
            for key, en in sc.items():
                out.append(f"\n![{e['name']} {key}]({en['plot']['png']})\n")
    if res.get("eval_cli"):
        out.append("\n## `python -m trm.eval` results\n")
        out.append("Evaluations of saved checkpoints with changed settings, kept beside the "
                   "training curves (never in them); one row per run, setting and checkpoint "
                   "step; the interval is the Wilson interval of that single run's puzzles.\n")
        rows = [[r["run"], r["setting"], r["step"],
                 "" if r["exact_accuracy"] is None else f"{100 * r['exact_accuracy']:.1f}",
                 _val(r["count"]), "" if r["ci_low"] is None else
                 f"[{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}]"]
                for r in res["eval_cli"]]
        out.append(_md_table(["run", "setting", "step", "exact accuracy (%)", "puzzles",
                              "95% CI"], rows))
    out.append("\n## Appendix: runs\n")
    cols = [c for c in ["run", "status", "last_step", "final_eval_step", "seed", res["value_column"],
                        "wall_time_s", "num_params"] if any(c in r for r in res["runs"])]
    rows = []
    for r in res["runs"]:
        row = []
        for c in cols:
            v = r.get(c)
            if c == res["value_column"]:
                row.append(fmt(v) if v is not None else "")
            elif c == "wall_time_s":
                row.append("" if v is None else f"{v:.0f}")
            else:
                row.append(_val(v))
        rows.append(row)
    hdr = [f"final {metric}{unit}" if c == res["value_column"] else c for c in cols]
    out.append(_md_table(hdr, rows))
    return "\n".join(out)


def _parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m analysis.report", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", required=True, help="runs root (local path or gs://...)")
    p.add_argument("--out", required=True, help="output directory (local)")
    p.add_argument("--metric", default=METRIC,
                   help="TensorBoard tag of the headline metric (default: %(default)s)")
    p.add_argument("--title", default="TRM results", help="title of RESULTS.md")
    p.add_argument("--n_boot", type=int, default=1000, help="bootstrap resamples per fit")
    p.add_argument("--include", default=None, help="fnmatch pattern on run ids")
    p.add_argument("--completed_only", action="store_true",
                   help="leave out runs whose status is not 'completed'")
    return p


def _main(argv: Optional[Sequence[str]]) -> int:
    args = _parser().parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")  # files only, never windows
    runs = select_runs(args.runs, include=args.include,
                       status=["completed"] if args.completed_only else None)
    _cmp.check_metric(runs, args.metric)
    cmd = "python -m analysis.report " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:]))
    res = build_report(runs, args.out, n_boot=args.n_boot, metric=args.metric,
                       title=args.title, command=cmd)
    print(f"wrote {os.path.join(args.out, 'RESULTS.md')} and results.json "
          f"({res['overview']['n_runs']} runs, {len(res['experiments'])} experiments)")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run("python -m analysis.report", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
