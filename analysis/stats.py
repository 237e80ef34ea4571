"""Confidence intervals: one method, used by every report, table and figure.

The question a study asks is how a configuration does *over training runs*, so its interval
is over seeds: each seed gives one value (the mean of that seed's runs), and
:func:`seed_interval` is the Student-t interval of the mean of those per-seed values. The
evaluation puzzles of different seeds are never pooled into one sample: puzzles within a run
are not independent trials of the configuration (they share the run's weights), and pooling
them gives intervals that shrink with the number of puzzles however much seeds disagree.

* :func:`seed_interval` -- t interval over per-seed values (``scipy.stats.t.interval``,
  ``n - 1`` degrees of freedom). When the seeds' spread is below the measurement's resolution
  (``floor_sd``; for an accuracy over ``N`` puzzles, one puzzle: ``1 / N``) the standard
  deviation is floored there, so seeds that all agree never give a zero-width interval; the
  method then reads ``"t, sd floor"``. Without a resolution (e.g. a loss) all-equal seeds give
  no interval (``"none"``), and the table says so.
* :func:`paired_seed_interval` -- the same for a contrast of two arms trained with the same
  seeds: the t interval of the per-seed differences. :func:`paired_seed_p` is the two-sided
  p-value of the same paired t (the same standard deviation, floored alike), so ``p < 0.05``
  exactly when the 95 % interval excludes zero.
* :func:`holm` -- Holm-Bonferroni step-down adjusted p-values for a family of contrasts.
* :func:`single_run_interval` -- the Wilson score interval of one run's whole-puzzle accuracy
  (``k`` of ``N`` puzzles solved): the only place a binomial interval is used.
* :func:`aggregate` -- groups a per-run summary and reports, per group, the runs, seeds and
  steps behind each number, mean, std, and the interval above (``ci_method`` says which).
* :func:`interval_label` -- the words for a legend or caption (``"95% t interval over
  seeds"``); every error bar says what it is.

:func:`t_interval`, :func:`wilson_interval` and :func:`bootstrap_interval` are the primitives
(scipy's, with the edge cases handled). Wilson: close to nominal coverage near 0 % / 100 % and
for small ``N``, never leaving [0, 1] (Newcombe 1998; Brown, Cai & DasGupta 2001).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
from scipy import stats as _sps

__all__ = ["Interval", "METHODS", "interval_label", "seed_interval", "paired_seed_interval",
           "paired_seed_p", "holm", "single_run_interval", "per_seed", "wilson_interval", "t_interval",
           "bootstrap_interval", "aggregate", "counts", "is_proportion", "AGG_COLUMNS"]

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
    degrees of freedom and the standard error ``s / sqrt(n)``): :func:`seed_interval`'s
    bounds. (nan, nan) with fewer than 2 finite values or when all values are equal (never a
    zero-width interval). ``bounds`` (e.g. ``(0, 1)`` for an accuracy) intersects the interval
    with the range the mean can take, which never lowers its coverage.
    """
    ci = seed_interval(values, confidence, bounds=bounds)
    return (ci.low, ci.high)


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


#: ``ci_method`` values and what they mean (legends and captions use :func:`interval_label`).
METHODS = {
    "t": "t interval over seeds",
    "t, sd floor": "t interval over seeds, spread floored at one puzzle",
    "wilson": "Wilson interval over one run's puzzles",
    "none": "no interval",
}


@dataclasses.dataclass(frozen=True)
class Interval:
    """A confidence interval, the method that gave it and the number of values behind it."""

    low: float
    high: float
    method: str  # a key of METHODS
    n: int


def interval_label(methods: Union[str, Sequence[str]], confidence: float = 0.95) -> str:
    """What an error bar is, for a legend or caption: ``"95% t interval over seeds"`` (several
    methods are joined with ``"; "``, in the order given, without repeats)."""
    methods = [methods] if isinstance(methods, str) else list(dict.fromkeys(methods))
    names = [METHODS[m] for m in methods if m in METHODS and m != "none"]
    return f"{confidence:.0%} " + "; ".join(names) if names else METHODS["none"]


def seed_interval(per_seed: Sequence[float], confidence: float = 0.95, *,
                  floor_sd: Optional[float] = None, bounds: Bounds = None) -> Interval:
    """The t interval of the mean of ``per_seed`` (one value per seed; see the module
    docstring). The sample standard deviation is raised to ``floor_sd`` when it is smaller
    (method ``"t, sd floor"``); with fewer than 2 values, or no spread and no floor, there is
    no interval (``"none"``, nan bounds)."""
    x = _finite(per_seed)
    sd, method = _seed_sd(x, floor_sd)
    if method == "none":
        return Interval(math.nan, math.nan, "none", len(x))
    lo, hi = _sps.t.interval(confidence, len(x) - 1, loc=float(x.mean()),
                             scale=sd / math.sqrt(len(x)))
    lo, hi = _clip(float(lo), float(hi), bounds)
    return Interval(lo, hi, method, len(x))


def _seed_sd(x: np.ndarray, floor_sd: Optional[float]) -> Tuple[float, str]:
    """The standard deviation :func:`seed_interval` uses (floored) and its method name."""
    if len(x) < 2:
        return (math.nan, "none")
    sd = float(np.std(x, ddof=1))
    method = "t"
    if floor_sd is not None and floor_sd > 0 and sd < floor_sd:
        sd, method = float(floor_sd), "t, sd floor"
    return (sd, method) if sd > 0 else (math.nan, "none")


def _paired(a: Mapping[Any, float], b: Mapping[Any, float]) -> List[float]:
    common = sorted(set(a) & set(b), key=str)
    return [b[s] - a[s] for s in common]


def paired_seed_interval(a: Mapping[Any, float], b: Mapping[Any, float],
                         confidence: float = 0.95, *, floor_sd: Optional[float] = None,
                         bounds: Bounds = None) -> Interval:
    """The t interval of ``b - a`` over the seeds both arms ran (``{seed: value}`` each):
    :func:`seed_interval` of the per-seed differences (``bounds``: the range the difference
    can take, e.g. ``(-1, 1)`` for two accuracies)."""
    return seed_interval(_paired(a, b), confidence, floor_sd=floor_sd, bounds=bounds)


def paired_seed_p(a: Mapping[Any, float], b: Mapping[Any, float], *,
                  floor_sd: Optional[float] = None) -> float:
    """Two-sided p-value that ``b - a`` is zero on average, from the paired t over seeds of
    :func:`paired_seed_interval` (``n - 1`` degrees of freedom, the same floored standard
    deviation). nan where that interval is ``"none"``."""
    x = _finite(_paired(a, b))
    sd, method = _seed_sd(x, floor_sd)
    if method == "none":
        return math.nan
    t = float(x.mean()) / (sd / math.sqrt(len(x)))
    return float(2.0 * _sps.t.sf(abs(t), len(x) - 1))


def holm(p_values: Sequence[float]) -> List[float]:
    """Holm-Bonferroni adjusted p-values, in the order given (Holm 1979, step-down).

    The ``i``-th smallest of ``m`` p-values is multiplied by ``m - i + 1`` (``i`` from 1), each
    adjusted value is raised to the largest before it in that order (so the adjusted values
    keep the raw ones' order) and capped at 1. Rejecting where the adjusted value is below
    ``alpha`` controls the family-wise error rate at ``alpha``. Raises ValueError for a value
    that is not a probability (nan included).
    """
    p = np.asarray(list(p_values), dtype=float)
    bad = [float(v) for v in p if not 0.0 <= v <= 1.0]
    if bad:
        raise ValueError(f"holm: p-values must lie in [0, 1], got {bad}; drop contrasts "
                         "without a p-value before adjusting")
    order = np.argsort(p, kind="stable")
    m = len(p)
    steps = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(steps, 1.0)
    return [float(v) for v in adjusted]


def single_run_interval(accuracy: float, count: float, confidence: float = 0.95) -> Interval:
    """The Wilson interval of one run's whole-puzzle accuracy over ``count`` puzzles."""
    k = round(min(max(float(accuracy), 0.0), 1.0) * float(count))
    lo, hi = wilson_interval(k, count, confidence)
    return Interval(lo, hi, "wilson" if np.isfinite(lo) else "none", 1)


def per_seed(group: pd.DataFrame, value: str, seed: str = "seed") -> pd.Series:
    """One value per seed: the mean of ``value`` over the group's runs of each seed (a run
    without a seed counts as a seed of its own)."""
    g = group[[value]].copy()
    g["_seed"] = (group[seed].astype(object).where(group[seed].notna(),
                                                  pd.Series(range(len(group)), index=group.index)
                                                  .map(lambda i: f"run{i}"))
                  if seed in group.columns else [f"run{i}" for i in range(len(group))])
    return g.groupby(g["_seed"].astype(str), sort=True)[value].mean()


AGG_COLUMNS = ["n_runs", "n_seeds", "seeds", "runs", "step_min", "step_max", "eval_count",
               "mean", "std", "min", "max", "ci_low", "ci_high", "ci_method"]


def _as_list(by: Union[str, Sequence[str], None]) -> List[str]:
    if by is None:
        return []
    if isinstance(by, str):
        return [b for b in by.split(",") if b]
    return list(by)


def aggregate(summary: pd.DataFrame, by: Union[str, Sequence[str], None],
              value: str = "final_eval_exact_accuracy", *, confidence: float = 0.95,
              count: str = "eval_count", step: str = "final_eval_step",
              seed: str = "seed", run: str = "run",
              bounds: Union[str, None, Tuple[float, float]] = "auto") -> pd.DataFrame:
    """Aggregates ``value`` per group of ``by`` columns of a per-run ``summary``.

    Args:
      summary: one row per run (``Runs.summary``).
      by: grouping columns (a list or a comma-separated string); empty = one group.
      value: the column to aggregate (e.g. ``final_eval_exact_accuracy``).
      count: column with the number of evaluation puzzles behind an accuracy (for the sd
        floor and a single run's Wilson interval).
      step: column with the step at which ``value`` was taken.
      bounds: range the mean can take; the interval is intersected with it. ``"auto"``:
        ``(0, 1)`` for accuracies (:func:`is_proportion` of ``value``), else none.

    Returns:
      one row per group: the ``by`` columns, then :data:`AGG_COLUMNS`. ``mean`` and ``std``
      are over the per-seed values (:func:`per_seed`); ``eval_count`` is the smallest number
      of puzzles of the group's runs; ``ci_method`` (a key of :data:`METHODS`) says which
      interval ``ci_low`` / ``ci_high`` are: :func:`seed_interval` with 2+ seeds (the sd
      floored at one puzzle, ``1 / eval_count``, for accuracies), :func:`single_run_interval`
      for a group of one seed's run(s) with a known puzzle count, else ``"none"``.
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
        rows.append(_aggregate_group(g, by, value, confidence, count, step, seed, run,
                                     bounds, proportion))
    return pd.DataFrame(rows, columns=by + AGG_COLUMNS)


def _aggregate_group(g: pd.DataFrame, by: List[str], value: str, confidence: float,
                     count: str, step: str, seed: str, run: str, bounds: Bounds,
                     proportion: bool) -> Dict[str, Any]:
    row: Dict[str, Any] = {}
    for col in by:
        v = g[col].iloc[0]
        row[col] = None if (isinstance(v, float) and math.isnan(v)) else v
    vals = per_seed(g, value, seed).to_numpy(dtype=float)
    row["n_runs"] = int(len(g))
    row["n_seeds"] = int(len(vals))
    row["seeds"] = (sorted({int(s) for s in g[seed].dropna()})
                    if seed in g.columns and g[seed].notna().any() else [])
    row["runs"] = list(g[run]) if run in g.columns else []
    if step in g.columns and g[step].notna().any():
        row["step_min"], row["step_max"] = int(g[step].min()), int(g[step].max())
    else:
        row["step_min"] = row["step_max"] = None
    row["mean"] = float(np.mean(vals))
    row["std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else math.nan
    row["min"] = float(g[value].astype(float).min())
    row["max"] = float(g[value].astype(float).max())
    known = count in g.columns and g[count].notna().all() and bool((g[count] > 0).all())
    row["eval_count"] = int(g[count].astype(float).min()) if known else None
    if len(vals) >= 2:
        floor = 1.0 / row["eval_count"] if proportion and known else None
        ci = seed_interval(vals, confidence, floor_sd=floor, bounds=bounds)
    elif proportion and known and len(g) == 1:
        ci = single_run_interval(row["mean"], row["eval_count"], confidence)
    else:
        ci = Interval(math.nan, math.nan, "none", len(vals))
    row["ci_low"], row["ci_high"], row["ci_method"] = ci.low, ci.high, ci.method
    return row


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
