"""Scaling-law fits: ``E = a * x**(-alpha) + c`` with bootstrap confidence intervals.

``x`` is parameters, training data (puzzles) or compute (FLOPs); ``E`` an error (1 - exact
accuracy) or a loss. The fit runs in log space (``log E`` residuals; ``x`` normalised by its
geometric mean), with ``scipy.optimize.curve_fit`` under bounds ``alpha in [0, 10]``,
``0 <= c <= min(E)``, from several starting points (log-log regression of ``E - c0`` for a few
``c0``). With fewer than 4 distinct ``x`` the saturating form has no spare degree of freedom,
so ``saturating="auto"`` fits the pure power law ``E = a * x**(-alpha)`` (``c = 0``) instead.

Uncertainty: a seeded nonparametric bootstrap (resample the points with replacement, refit),
percentile intervals on ``alpha``, ``a`` and ``c``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["PowerLawFit", "fit_power_law", "power_law", "pareto_frontier", "fit_loglinear",
           "LogLinearFit"]


def power_law(x: Union[float, np.ndarray], a: float, alpha: float, c: float = 0.0):
    """``a * x**(-alpha) + c``."""
    return a * np.power(np.asarray(x, dtype=float), -alpha) + c


@dataclasses.dataclass
class PowerLawFit:
    """A fitted ``E = a * x**(-alpha) + c`` (``x`` in its original units)."""

    a: float
    alpha: float
    c: float
    saturating: bool
    n_points: int
    n_unique_x: int
    x_min: float
    x_max: float
    rmse_log: float  # RMS of log residuals on the fitted points
    confidence: float = 0.95
    alpha_ci: Tuple[float, float] = (math.nan, math.nan)
    a_ci: Tuple[float, float] = (math.nan, math.nan)
    c_ci: Tuple[float, float] = (math.nan, math.nan)
    n_boot: int = 0
    n_boot_ok: int = 0
    x_label: str = "x"
    y_label: str = "E"

    def predict(self, x):
        return power_law(x, self.a, self.alpha, self.c)

    @property
    def formula(self) -> str:
        s = f"{self.y_label} = {self.a:.3g}·{self.x_label}^(-{self.alpha:.3f})"
        return s + (f" + {self.c:.3g}" if self.saturating else "")

    def as_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("alpha_ci", "a_ci", "c_ci"):
            d[k] = list(d[k])
        d["formula"] = self.formula
        return d


def _fit_pure(lx: np.ndarray, ly: np.ndarray) -> Tuple[float, float]:
    """log y = log a - alpha log x by least squares; returns (log_a, alpha) in normalised x."""
    slope, intercept = np.polyfit(lx, ly, 1)
    return float(intercept), float(-slope)


def _fit_once(x: np.ndarray, y: np.ndarray, saturating: bool, x0: float,
              p0: Optional[Tuple[float, float, float]] = None) -> Tuple[float, float, float]:
    """Returns (a, alpha, c) in normalised units (x / x0); ``p0`` = (a, alpha, c) to start from
    (one start instead of several, for the bootstrap)."""
    from scipy.optimize import curve_fit

    lx = np.log(x / x0)
    ly = np.log(y)
    log_a, alpha = _fit_pure(lx, ly)
    if not saturating:
        return math.exp(log_a), alpha, 0.0
    ymin = float(y.min())
    c_hi = ymin * (1 - 1e-9)

    def f(lxv, la, al, c):
        return np.log(np.exp(la - al * lxv) + c)

    starts = []
    if p0 is not None:
        starts.append((float(np.clip(math.log(max(p0[0], 1e-300)), -49, 49)),
                       float(np.clip(p0[1], 1e-3, 9.9)), min(p0[2], 0.99 * c_hi)))
    else:
        for frac in (0.0, 0.3, 0.6, 0.9):
            c0 = frac * c_hi
            la0, al0 = _fit_pure(lx, np.log(np.maximum(y - c0, ymin * 1e-6)))
            starts.append((float(np.clip(la0, -49, 49)), float(np.clip(al0, 1e-3, 9.9)), c0))
    best: Optional[Tuple[float, Tuple[float, float, float]]] = None
    for la0, al0, c0 in starts:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                p, _ = curve_fit(f, lx, ly, p0=(la0, al0, c0),
                                 bounds=([-50.0, 0.0, 0.0], [50.0, 10.0, max(c_hi, 1e-300)]),
                                 maxfev=20000)
        except (RuntimeError, ValueError):
            continue
        sse = float(np.sum((f(lx, *p) - ly) ** 2))
        if best is None or sse < best[0]:
            best = (sse, (float(p[0]), float(p[1]), float(p[2])))
    if best is None:
        raise RuntimeError("power-law fit did not converge")
    la, al, c = best[1]
    return math.exp(la), al, c


def fit_power_law(x: Sequence[float], y: Sequence[float], *, saturating: Union[str, bool] = "auto",
                  n_boot: int = 1000, seed: int = 0, confidence: float = 0.95,
                  x_label: str = "x", y_label: str = "E") -> PowerLawFit:
    """Fits ``y = a * x**(-alpha) + c`` and bootstraps CIs (see the module docstring).

    Args:
      x, y: positive data (points with x <= 0, y <= 0 or non-finite values are dropped).
      saturating: True (fit c), False (c = 0) or "auto" (c only with 4+ distinct x).
      n_boot: bootstrap resamples (0 disables the CIs).
      seed: bootstrap RNG seed.

    Raises:
      ValueError: fewer than 2 distinct usable x (3 for the saturating form).
    """
    xa = np.asarray(x, dtype=float)
    ya = np.asarray(y, dtype=float)
    ok = np.isfinite(xa) & np.isfinite(ya) & (xa > 0) & (ya > 0)
    xa, ya = xa[ok], ya[ok]
    n_unique = len(np.unique(xa))
    if saturating == "auto":
        saturating = n_unique >= 4
    saturating = bool(saturating)
    need = 3 if saturating else 2
    if n_unique < need:
        raise ValueError(f"need at least {need} distinct positive x with positive y, "
                         f"got {n_unique}")
    x0 = float(np.exp(np.mean(np.log(xa))))
    a_n, alpha, c = _fit_once(xa, ya, saturating, x0)
    a = a_n * x0 ** alpha
    resid = np.log(power_law(xa, a, alpha, c)) - np.log(ya)
    fit = PowerLawFit(a=a, alpha=alpha, c=c, saturating=saturating, n_points=int(len(xa)),
                      n_unique_x=int(n_unique), x_min=float(xa.min()), x_max=float(xa.max()),
                      rmse_log=float(np.sqrt(np.mean(resid ** 2))), confidence=confidence,
                      n_boot=int(n_boot), x_label=x_label, y_label=y_label)
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        samples: List[Tuple[float, float, float]] = []
        for _ in range(n_boot):
            idx = rng.integers(0, len(xa), size=len(xa))
            xb, yb = xa[idx], ya[idx]
            if len(np.unique(xb)) < need:
                continue
            try:
                an, al, cc = _fit_once(xb, yb, saturating, x0, p0=(a_n, alpha, c))
            except (RuntimeError, ValueError, np.linalg.LinAlgError):
                continue
            samples.append((an * x0 ** al, al, cc))
        fit.n_boot_ok = len(samples)
        if len(samples) >= 10:
            s = np.asarray(samples)
            q = [(1 - confidence) / 2, 1 - (1 - confidence) / 2]
            fit.a_ci = tuple(float(v) for v in np.quantile(s[:, 0], q))
            fit.alpha_ci = tuple(float(v) for v in np.quantile(s[:, 1], q))
            fit.c_ci = tuple(float(v) for v in np.quantile(s[:, 2], q))
    return fit


def pareto_frontier(x: Sequence[float], y: Sequence[float]) -> np.ndarray:
    """Indices of the lower-left frontier: points whose y is below every point with smaller x.

    Used for compute scaling: over all (compute, error) points of all runs' learning curves,
    the frontier is the best error reached at each compute budget.
    """
    xa = np.asarray(x, dtype=float)
    ya = np.asarray(y, dtype=float)
    order = np.lexsort((ya, xa))
    keep: List[int] = []
    best = math.inf
    for i in order:
        if np.isfinite(ya[i]) and ya[i] < best:
            keep.append(int(i))
            best = ya[i]
    return np.asarray(keep, dtype=int)


@dataclasses.dataclass
class LogLinearFit:
    """``y = k * x**beta`` by least squares in log-log (e.g. optimal lr vs batch size)."""

    k: float
    beta: float
    n_points: int

    def predict(self, x):
        return self.k * np.power(np.asarray(x, dtype=float), self.beta)

    def as_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def fit_loglinear(x: Sequence[float], y: Sequence[float]) -> LogLinearFit:
    xa = np.asarray(x, dtype=float)
    ya = np.asarray(y, dtype=float)
    ok = np.isfinite(xa) & np.isfinite(ya) & (xa > 0) & (ya > 0)
    xa, ya = xa[ok], ya[ok]
    if len(np.unique(xa)) < 2:
        raise ValueError("need at least 2 distinct x")
    beta, logk = np.polyfit(np.log(xa), np.log(ya), 1)
    return LogLinearFit(k=float(math.exp(logk)), beta=float(beta), n_points=int(len(xa)))
