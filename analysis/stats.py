"""Confidence intervals and aggregation over seeds.

Every interval comes from scipy; this module only picks the method and handles the edge cases.

* :func:`wilson_interval` — Wilson score interval of a binomial proportion (an accuracy over
  ``n`` evaluation puzzles): ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``.
* :func:`t_interval` — Student-t CI of a mean over seeds: ``scipy.stats.t.interval``.
* :func:`bootstrap_interval` — percentile bootstrap CI over seeds: ``scipy.stats.bootstrap``.
* :func:`aggregate` — groups a per-run summary by hyperparameters and reports, per group, the
  number of runs, seeds and steps behind each number, mean, std, an across-seed CI (t-based or
  bootstrap) and the pooled Wilson interval over all runs' evaluation puzzles. The across-seed
  CI falls back to the pooled Wilson interval when it cannot be computed or would have zero
  width (a single run, or seeds that all give the same value), and, for accuracies, is kept
  inside [0, 1].

Why these methods: an accuracy over ``n`` puzzles is a binomial proportion, and the Wilson
interval has close to nominal coverage even near 0 % / 100 % and for small ``n`` while, unlike
the Wald interval, never leaving [0, 1] or collapsing to zero width at ``k = 0`` or ``k = n``
(Newcombe 1998; Brown, Cai & DasGupta 2001). Across seeds the quantity of interest is the mean
over training runs; with the usual 2-5 seeds the t interval is the honest (wide) choice, the
percentile bootstrap is available for larger seed counts (with 2-3 seeds it is far too narrow).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
from scipy import stats as _sps

__all__ = ["wilson_interval", "t_interval", "bootstrap_interval", "aggregate", "counts",
           "is_proportion", "AGG_COLUMNS"]

Bounds = Optional[Tuple[float, float]]


def _finite(values: Sequence[float]) -> np.ndarray:
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    return x


def _clip(lo: float, hi: float, bounds: Bounds) -> Tuple[float, float]:
    if bounds is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return (lo, hi)
    return (float(min(max(lo, bounds[0]), bounds[1])), float(min(max(hi, bounds[0]), bounds[1])))


def is_proportion(value: str) -> bool:
    """True for accuracy-like columns/tags (``..._accuracy``, ``pass@k``), which live in [0, 1]."""
    v = str(value).split("/")[-1]
    return "accuracy" in v or "pass@" in v


def wilson_interval(successes: Union[int, float], n: Union[int, float],
                    confidence: float = 0.95) -> Tuple[float, float]:
    """Wilson score interval for ``successes`` out of ``n`` (two-sided, ``confidence`` level).

    Computed by ``scipy.stats.binomtest(k, n).proportion_ci(confidence, method="wilson")``
    (without continuity correction). ``successes`` and ``n`` are rounded to integers (pass
    ``round(accuracy * n)``). Checked against Newcombe (1998), method 3: 81/263 ->
    (0.2553, 0.3662); 0/20 -> (0, 0.1611); and 8/10 -> (0.4902, 0.9433).
    Returns (nan, nan) when ``n`` is 0 or unknown; raises ValueError when successes > n.
    """
    if n is None or not np.isfinite(n) or n <= 0:
        return (math.nan, math.nan)
    if successes is None or not np.isfinite(successes):
        return (math.nan, math.nan)
    k, nn = int(round(float(successes))), int(round(float(n)))
    if k < 0 or k > nn:
        raise ValueError(f"successes={successes} outside [0, n={n}]")
    ci = _sps.binomtest(k, nn).proportion_ci(confidence_level=confidence, method="wilson")
    lo, hi = float(ci.low), float(ci.high)
    return (max(0.0, lo), min(1.0, hi))


def t_interval(values: Sequence[float], confidence: float = 0.95,
               bounds: Bounds = None) -> Tuple[float, float]:
    """Student-t CI of the mean of ``values`` (``scipy.stats.t.interval`` with ``n - 1``
    degrees of freedom and the standard error ``s / sqrt(n)``).

    (nan, nan) with fewer than 2 finite values; ``(m, m)`` when all values are equal (zero
    spread: :func:`aggregate` then uses the pooled Wilson interval instead). ``bounds``
    (e.g. ``(0, 1)`` for an accuracy) intersects the interval with the range the mean can take,
    which never lowers its coverage.
    """
    x = _finite(values)
    if len(x) < 2:
        return (math.nan, math.nan)
    m = float(x.mean())
    se = float(_sps.sem(x))
    if not se > 0:
        return _clip(m, m, bounds)
    lo, hi = _sps.t.interval(confidence, len(x) - 1, loc=m, scale=se)
    return _clip(float(lo), float(hi), bounds)


def bootstrap_interval(values: Sequence[float], confidence: float = 0.95, n_boot: int = 2000,
                       seed: int = 0, statistic=np.mean,
                       bounds: Bounds = None) -> Tuple[float, float]:
    """Percentile-bootstrap CI of ``statistic`` over ``values``: ``scipy.stats.bootstrap`` with
    ``method="percentile"``, ``n_resamples=n_boot`` and ``rng=np.random.default_rng(seed)``
    (reproducible). The percentile method (not BCa) because BCa is undefined for the 2-5
    values of a seed sweep. (nan, nan) with fewer than 2 finite values.
    """
    x = _finite(values)
    if len(x) < 2:
        return (math.nan, math.nan)
    res = _sps.bootstrap((x,), statistic, n_resamples=int(n_boot), confidence_level=confidence,
                         method="percentile", rng=np.random.default_rng(seed))
    return _clip(float(res.confidence_interval.low), float(res.confidence_interval.high), bounds)


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
              boot_seed: int = 0,
              bounds: Union[str, None, Tuple[float, float]] = "auto") -> pd.DataFrame:
    """Aggregates ``value`` per group of ``by`` columns of a per-run ``summary``.

    Args:
      summary: one row per run (``Runs.summary``).
      by: grouping columns (a list or a comma-separated string); empty = one group.
      value: the column to aggregate (e.g. ``final_eval_exact_accuracy``).
      ci: ``"t"`` (Student t over runs) or ``"bootstrap"`` (percentile bootstrap over runs).
      count: column with the number of evaluation examples behind an accuracy (for Wilson).
      step: column with the step at which ``value`` was taken.
      bounds: range the mean can take; the across-seed CI is intersected with it. ``"auto"``:
        ``(0, 1)`` for accuracies (:func:`is_proportion` of ``value``), else none.

    Returns:
      one row per group: the ``by`` columns, then :data:`AGG_COLUMNS`. ``ci_method`` says which
      interval ``ci_low``/``ci_high`` are:

      * ``"t"`` / ``"bootstrap"``: over seeds (runs), with 2+ runs whose values differ;
      * ``"wilson"``: the count-based Wilson interval pooled over the group's evaluated
        examples (correct answers summed over runs / ``eval_count`` summed over runs), used for
        a single run, and for 2+ runs that all give the same value, where the seed spread is 0
        and a t/bootstrap interval would have zero width — the pooled examples are then the
        only measure of the noise left;
      * ``"none"``: neither is available (one run, or identical runs, without an eval count).

      The pooled Wilson interval is always in ``wilson_low``/``wilson_high`` when counts are
      known.
    """
    by = _as_list(by)
    if isinstance(bounds, str):
        if bounds != "auto":
            raise ValueError(f"bounds must be 'auto', None or (low, high), not {bounds!r}")
        bounds = (0.0, 1.0) if is_proportion(value) else None
    proportion = is_proportion(value) or (bounds is not None and tuple(bounds) == (0.0, 1.0))
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
        n_known = count in g.columns and g[count].notna().all() and (g[count] > 0).all()
        row["eval_count"] = int(g[count].astype(float).sum()) if n_known else None
        # Wilson only makes sense for a proportion (not, e.g., a loss with an eval count)
        counts_known = bool(n_known and proportion)
        if counts_known:
            n = g[count].astype(float).to_numpy()
            succ = np.clip(np.round(np.clip(vals, 0, 1) * n), 0, n)
            row["wilson_low"], row["wilson_high"] = wilson_interval(succ.sum(), n.sum(), confidence)
        else:
            row["wilson_low"] = row["wilson_high"] = math.nan
        spread = len(vals) >= 2 and float(np.ptp(vals)) > 0
        if spread:
            if ci == "bootstrap":
                lo, hi = bootstrap_interval(vals, confidence, n_boot=n_boot, seed=boot_seed,
                                            bounds=bounds)
            else:
                lo, hi = t_interval(vals, confidence, bounds=bounds)
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
