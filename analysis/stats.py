"""Confidence intervals and aggregation over seeds.

* :func:`wilson_interval` — Wilson score interval of a binomial proportion (an accuracy over
  ``n`` evaluation puzzles).
* :func:`t_interval` / :func:`bootstrap_interval` — CI of a mean over seeds.
* :func:`aggregate` — groups a per-run summary by hyperparameters and reports, per group, the
  number of runs, seeds and steps behind each number, mean, std, an across-seed CI (t-based or
  bootstrap; with a single run: the Wilson interval of that run when the eval count is known)
  and the pooled Wilson interval over all runs' evaluation puzzles.
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Sequence, Tuple, Union

import numpy as np
import pandas as pd
from scipy import stats as _sps

__all__ = ["wilson_interval", "t_interval", "bootstrap_interval", "aggregate", "counts",
           "AGG_COLUMNS"]


def wilson_interval(successes: Union[int, float], n: Union[int, float],
                    confidence: float = 0.95) -> Tuple[float, float]:
    """Wilson score interval for ``successes`` out of ``n`` (two-sided, ``confidence`` level).

    Newcombe (1998), method 3: 81/263 -> (0.2553, 0.3662); 0/20 -> (0, 0.1611).
    Returns (nan, nan) when ``n`` is 0 or unknown.
    """
    if n is None or not np.isfinite(n) or n <= 0:
        return (math.nan, math.nan)
    if successes < 0 or successes > n:
        raise ValueError(f"successes={successes} outside [0, n={n}]")
    z = float(_sps.norm.ppf(0.5 + confidence / 2.0))
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo, hi = centre - half, centre + half
    # exact bounds at the edges (avoid -1e-17 from rounding)
    if successes == 0:
        lo = 0.0
    if successes == n:
        hi = 1.0
    return (max(0.0, lo), min(1.0, hi))


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Tuple[float, float]:
    """Student-t CI of the mean of ``values`` (nan, nan with fewer than 2 finite values)."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if len(x) < 2:
        return (math.nan, math.nan)
    m = float(x.mean())
    se = float(x.std(ddof=1)) / math.sqrt(len(x))
    t = float(_sps.t.ppf(0.5 + confidence / 2.0, len(x) - 1))
    return (m - t * se, m + t * se)


def bootstrap_interval(values: Sequence[float], confidence: float = 0.95, n_boot: int = 2000,
                       seed: int = 0, statistic=np.mean) -> Tuple[float, float]:
    """Percentile-bootstrap CI of ``statistic`` over ``values`` (seeded, reproducible)."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if len(x) < 2:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    stats = np.apply_along_axis(statistic, 1, x[idx])
    a = (1.0 - confidence) / 2.0
    return (float(np.quantile(stats, a)), float(np.quantile(stats, 1 - a)))


AGG_COLUMNS = ["n_runs", "n_seeds", "seeds", "runs", "step_min", "step_max", "eval_count",
               "mean", "std", "min", "max", "ci_low", "ci_high", "ci_method",
               "wilson_low", "wilson_high"]


def _as_list(by: Union[str, Sequence[str], None]) -> List[str]:
    if by is None:
        return []
    if isinstance(by, str):
        return [b for b in by.split(",") if b]
    return list(by)


def aggregate(summary: pd.DataFrame, by: Union[str, Sequence[str], None],
              value: str = "final_eval_exact_accuracy", *, confidence: float = 0.95,
              ci: str = "t", count: str = "eval_count", step: str = "final_eval_step",
              seed: str = "seed", run: str = "run", n_boot: int = 2000,
              boot_seed: int = 0) -> pd.DataFrame:
    """Aggregates ``value`` per group of ``by`` columns of a per-run ``summary``.

    Args:
      summary: one row per run (``Runs.summary``).
      by: grouping columns (a list or a comma-separated string); empty = one group.
      value: the column to aggregate (e.g. ``final_eval_exact_accuracy``).
      ci: ``"t"`` (Student t over runs) or ``"bootstrap"`` (percentile bootstrap over runs).
      count: column with the number of evaluation examples behind an accuracy (for Wilson).
      step: column with the step at which ``value`` was taken.

    Returns:
      one row per group: the ``by`` columns, then :data:`AGG_COLUMNS`. ``ci_method`` says which
      interval ``ci_low``/``ci_high`` are: ``"t"``/``"bootstrap"`` over seeds with 2+ runs,
      ``"wilson"`` for a single run with a known eval count, ``"none"`` otherwise. The pooled
      Wilson interval (sum of correct / sum of examples over the group's runs) is always in
      ``wilson_low``/``wilson_high`` when counts are known.
    """
    by = _as_list(by)
    df = summary.copy()
    if value not in df.columns:
        df[value] = np.nan
    df = df[df[value].notna()] if len(df) else df
    rows: List[Dict[str, Any]] = []
    if not by:
        groups: Iterable[Tuple[Any, pd.DataFrame]] = [((), df)] if len(df) else []
    else:
        for b in by:
            if b not in df.columns:
                df[b] = None
        # keep None/NaN as their own group
        key = df[by].astype(object).where(df[by].notna(), "None")
        groups = []
        for k, part in key.groupby(by, sort=False, dropna=False):
            groups.append((k if isinstance(k, tuple) else (k,), df.loc[part.index]))
    for k, g in groups:
        vals = g[value].astype(float).to_numpy()
        row: Dict[str, Any] = {}
        for col in by:
            v = g[col].iloc[0]
            row[col] = None if (isinstance(v, float) and math.isnan(v)) else v
        row["n_runs"] = int(len(g))
        if seed in g.columns and g[seed].notna().any():
            seeds = sorted({int(s) for s in g[seed].dropna()})
            row["n_seeds"] = len(seeds) + int(g[seed].isna().sum())
        else:
            seeds = []
            row["n_seeds"] = int(len(g))
        row["seeds"] = seeds
        row["runs"] = list(g[run]) if run in g.columns else []
        if step in g.columns and g[step].notna().any():
            row["step_min"] = int(g[step].min())
            row["step_max"] = int(g[step].max())
        else:
            row["step_min"] = row["step_max"] = None
        row["mean"] = float(np.mean(vals))
        row["std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else math.nan
        row["min"] = float(np.min(vals))
        row["max"] = float(np.max(vals))
        counts_known = count in g.columns and g[count].notna().all() and (g[count] > 0).all()
        if counts_known:
            n = g[count].astype(float).to_numpy()
            succ = np.clip(np.round(vals * n), 0, n)
            row["eval_count"] = int(n.sum())
            row["wilson_low"], row["wilson_high"] = wilson_interval(succ.sum(), n.sum(), confidence)
        else:
            row["eval_count"] = None
            row["wilson_low"] = row["wilson_high"] = math.nan
        if len(vals) >= 2:
            if ci == "bootstrap":
                lo, hi = bootstrap_interval(vals, confidence, n_boot=n_boot, seed=boot_seed)
            else:
                lo, hi = t_interval(vals, confidence)
            row["ci_low"], row["ci_high"], row["ci_method"] = lo, hi, ci
        elif counts_known:
            row["ci_low"], row["ci_high"] = row["wilson_low"], row["wilson_high"]
            row["ci_method"] = "wilson"
        else:
            row["ci_low"] = row["ci_high"] = math.nan
            row["ci_method"] = "none"
        rows.append(row)
    out = pd.DataFrame(rows, columns=by + AGG_COLUMNS)
    return out


def counts(summary: pd.DataFrame, by: Union[str, Sequence[str], None] = None) -> pd.DataFrame:
    """Runs, distinct seeds, and total / max steps per group (or overall)."""
    by = _as_list(by)
    df = summary.copy()
    if "seed" not in df.columns:
        df["seed"] = np.nan
    if "last_step" not in df.columns:
        df["last_step"] = np.nan

    def one(g: pd.DataFrame) -> Dict[str, Any]:
        return {"n_runs": int(len(g)),
                "n_seeds": int(g["seed"].nunique()) if g["seed"].notna().any() else int(len(g)),
                "total_steps": int(g["last_step"].fillna(0).sum()),
                "max_steps": int(g["last_step"].fillna(0).max()) if len(g) else 0}

    if not by:
        return pd.DataFrame([one(df)])
    rows = []
    for k, g in df.groupby(by, dropna=False, sort=True):
        k = k if isinstance(k, tuple) else (k,)
        rows.append({**dict(zip(by, k)), **one(g)})
    return pd.DataFrame(rows)
