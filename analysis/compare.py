"""Comparison tables of runs, and the ``python -m analysis.compare`` CLI.

    python -m analysis.compare --runs=ROOT [--group_by=T,n] [--metric=eval/exact_accuracy]
        [--format=markdown|csv] [--experiment=e2_2_tn] [--status=completed] [--raw]

One row per group of runs (``--group_by`` columns: canonical hyperparameters, summary columns
such as ``experiment`` or ``status``, or any raw gin name such as ``TRM.puzzle_emb_len``; by
default the hyperparameter axes that vary among the selected runs). Columns: the number of
runs, seeds and the eval step range each number comes from, the number of evaluation examples,
mean and CI of the final value of ``--metric`` (:mod:`analysis.stats`: a t interval over the
per-seed values, the Wilson interval of a single run's puzzles; the ``CI`` column names it),
min/max, and the paper's published number for that configuration
when there is one (:mod:`analysis.published`).
"""

from __future__ import annotations

import argparse
import io
import math
import sys
from typing import Any, Dict, Optional, Sequence, Union

from analysis import require_extra

# Without the analysis extra: one line saying how to install it, not a traceback.
require_extra("analysis.compare", ("pandas", "scipy"), cli=__name__ == "__main__")

import numpy as np
import pandas as pd

from analysis import published as _pub
from analysis import stats as _stats
from analysis.cli import CliError, Parser, run, select_runs, suggest
from analysis.runs import Runs, tag_column

__all__ = ["comparison_table", "display_table", "to_markdown", "to_csv", "main",
           "group_label", "is_accuracy"]


def is_accuracy(metric: str) -> bool:
    m = metric.split("/")[-1]
    return "accuracy" in m or m.startswith("pass@")


def _fmt_value(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        if float(v).is_integer() and abs(v) < 1e15:
            return str(int(v))
        return f"{float(v):.4g}"
    return str(v)


def group_label(row: Union[pd.Series, Dict[str, Any]], group_by: Sequence[str]) -> str:
    """``T=2, n=2`` (or ``all`` without grouping columns)."""
    if not group_by:
        return "all"
    return ", ".join(f"{c}={_fmt_value(row[c])}" for c in group_by)


def comparison_table(runs: Runs, group_by: Union[None, str, Sequence[str]] = None,
                     metric: str = "eval/exact_accuracy", *, confidence: float = 0.95,
                     with_published: bool = True) -> pd.DataFrame:
    """Aggregates the final ``metric`` of each run per group (see the module docstring).

    Returns the :func:`analysis.stats.aggregate` columns plus ``label``, ``metric`` and, for
    accuracies, ``published`` (fraction), ``published_experiment``, ``published_label``.
    The group columns come first; rows are sorted by them.
    """
    if group_by is None:
        group_by = runs.varying()
    elif isinstance(group_by, str):
        group_by = [g for g in group_by.split(",") if g]
    group_by = list(group_by)
    summary = runs.with_columns(group_by)
    value = f"final_{tag_column(metric)}"
    agg = _stats.aggregate(summary, group_by, value, confidence=confidence)
    if len(agg) and group_by:
        try:
            agg = agg.sort_values(group_by, kind="stable", na_position="last")
        except TypeError:
            agg = agg.sort_values(group_by, key=lambda s: s.astype(str), kind="stable")
        agg = agg.reset_index(drop=True)
    agg.insert(0, "label", [group_label(r, group_by) for _, r in agg.iterrows()])
    agg["metric"] = metric
    agg["published"] = np.nan
    agg["published_experiment"] = None
    agg["published_label"] = None
    if with_published and metric.split("/")[-1] in ("exact_accuracy", "pass@2") and len(agg):
        pub_metric = "pass@2" if metric.endswith("pass@2") else "exact_accuracy"
        # Judge every group on the axes that vary among all the compared runs; a group that
        # mixes configurations on any of them has no published counterpart.
        varying = runs.varying()
        check = [a for a in dict.fromkeys(list(_pub.STRUCTURAL_AXES) + varying)
                 if a in summary.columns]
        for i, row in agg.iterrows():
            members = summary[summary["run"].isin(row["runs"])]
            if any(members[ax].dropna().astype(str).nunique() > 1 for ax in check):
                continue
            first = members.iloc[0]
            cfg = {k: first.get(k) for k in summary.columns}
            twin = members["experiment"].astype(str).str.startswith("cpu_").all() \
                if "experiment" in members.columns else False
            entry = _pub.match(cfg, varying, metric=pub_metric, relative=bool(twin))
            if entry is not None:
                agg.at[i, "published"] = entry.fraction
                agg.at[i, "published_experiment"] = entry.experiment
                agg.at[i, "published_label"] = entry.label
    return agg


def display_table(table: pd.DataFrame, group_by: Sequence[str],
                  metric: str = "eval/exact_accuracy", percent: Optional[bool] = None,
                  published: bool = True) -> pd.DataFrame:
    """Human-readable strings for a :func:`comparison_table` (percentages for accuracies)."""
    if percent is None:
        percent = is_accuracy(metric)
    scale, unit = (100.0, "%") if percent else (1.0, "")

    def num(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        return f"{v * scale:.1f}" if percent else f"{v:.4g}"

    rows = []
    for _, r in table.iterrows():
        d: Dict[str, str] = {c: _fmt_value(r[c]) for c in group_by}
        d["runs"] = str(r["n_runs"])
        d["seeds"] = str(r["n_seeds"])
        if r["step_min"] is None or (isinstance(r["step_min"], float) and math.isnan(r["step_min"])):
            d["steps"] = ""
        elif r["step_min"] == r["step_max"]:
            d["steps"] = str(int(r["step_min"]))
        else:
            d["steps"] = f"{int(r['step_min'])}-{int(r['step_max'])}"
        d["eval n"] = _fmt_value(r["eval_count"])
        d[f"mean{unit and ' (%)'}"] = num(r["mean"])
        ci = ("" if isinstance(r["ci_low"], float) and math.isnan(r["ci_low"])
              else f"[{num(r['ci_low'])}, {num(r['ci_high'])}]")
        d["95% CI"] = ci
        d["CI"] = r["ci_method"]
        d["min-max"] = "" if r["n_runs"] < 2 else f"{num(r['min'])}-{num(r['max'])}"
        if published:
            d["paper"] = num(r["published"]) if not pd.isna(r["published"]) else ""
        rows.append(d)
    return pd.DataFrame(rows)


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub-markdown pipe table (no extra dependency)."""
    cols = [str(c) for c in df.columns]

    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join(cell(r[c]) for c in df.columns) + " |")
    return "\n".join(lines) + "\n"


def to_csv(df: pd.DataFrame) -> str:
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    return buf.getvalue()


def _parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m analysis.compare", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", required=True, help="runs root (local path or gs://...)")
    p.add_argument("--group_by", default=None,
                   help="comma-separated columns (default: the varying hyperparameters)")
    p.add_argument("--metric", default="eval/exact_accuracy", help="TensorBoard tag")
    p.add_argument("--format", default="markdown", choices=["markdown", "csv"])
    p.add_argument("--experiment", default=None, help="only runs of this experiment")
    p.add_argument("--include", default=None, help="fnmatch pattern on run ids")
    p.add_argument("--status", default=None,
                   help="comma-separated statuses to keep (default: all)")
    p.add_argument("--raw", action="store_true",
                   help="machine-readable columns (fractions, all aggregate columns)")
    return p


def load_or_fail(root: str, include: Optional[str] = None):
    """The runs under ``root`` (:func:`analysis.cli.select_runs`: a missing root, or an
    ``include`` pattern that matches nothing, is a :class:`CliError`)."""
    return select_runs(root, include=include)


def check_metric(runs, metric: str) -> None:
    """``metric`` must be a logged tag of the runs (suggestions otherwise)."""
    tags = runs.tags
    if metric not in tags:
        raise CliError(f"--metric={metric!r} is not logged by these runs."
                       + suggest(metric, tags)
                       + f" Logged tags: {', '.join(tags[:30])}"
                       + (" ..." if len(tags) > 30 else ""))


def check_columns(runs, columns: Sequence[str], flag: str = "--group_by") -> None:
    """Every grouping column must be a summary column or a gin name the runs set
    (suggestions from both otherwise)."""
    known = set(runs.summary.columns)
    for col in columns:
        if col in known or runs.column(col).notna().any():
            continue
        gin_names = {n for r in runs for n in (*r.config.macros, *r.config.bindings)}
        raise CliError(f"{flag}: no column or gin setting {col!r} in these runs."
                       + suggest(col, known | gin_names)
                       + " Hyperparameter columns: "
                       + ", ".join(sorted(c for c in known if not c.startswith(
                           ("final_", "best_"))))[:400])


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run("python -m analysis.compare", lambda a: _main(_parser().parse_args(a)), argv)


def _main(args) -> int:
    runs = select_runs(args.runs, include=args.include, experiment=args.experiment,
                       status=args.status.split(",") if args.status else None)
    group_by = ([g for g in args.group_by.split(",") if g] if args.group_by is not None
                else runs.varying())
    check_metric(runs, args.metric)
    check_columns(runs, group_by)
    table = comparison_table(runs, group_by, args.metric)
    if args.raw:
        out = table.drop(columns=["runs"]).copy()
        out["seeds"] = out["seeds"].map(lambda s: " ".join(map(str, s)))
    else:
        out = display_table(table, group_by, args.metric)
    text = to_csv(out) if args.format == "csv" else to_markdown(out)
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
