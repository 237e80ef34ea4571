"""Figures (matplotlib): every ``plot_*`` returns the Figure and, given ``out``
(a path without extension), writes ``out.png``, ``out.svg`` and ``out.pdf``. Every error bar,
band and annotated interval says what it is (legend or title: :func:`analysis.stats.
interval_label`); legends sit outside the axes.

* :func:`plot_learning_curves` — one tag vs step, a line per group of any hyperparameter(s)
  (mean over the group's runs, min-max band when several).
* :func:`plot_ablation` — final metric per configuration with its CI (across seeds, or Wilson)
  next to the paper's published number.
* :func:`plot_tn_heatmap` — mean final metric over the (T, n) grid, each cell annotated with
  its CI and run count.
* :func:`plot_lr_batch` — LR x batch-size grid with the best LR per batch size, and the optimum
  LR vs batch size on log axes with a fitted power law.
* :func:`plot_scaling` — data and a :class:`analysis.scaling.PowerLawFit` on log axes.

Conventions (what a figure in a paper needs):

* Legends sit outside the axes (right of them), so they never cover a point or a line.
* Accuracies (tags/columns named ``*accuracy*`` or ``pass@k``) are shown in %: axis labels say
  "(%)", ticks read "80%", no tick goes below 0 % or above 100 %, and intervals are clipped to
  [0, 100] %. Axis limits always contain every plotted interval.
* Titles name the experiment (learning curves: the runs' experiment names by default).
* Curves with few evaluation points (<= 30 per curve) get markers, so sparse evals are visible.
* A learning curve asked for a log y axis (``logy``) only gets one when its values span at least
  one decade; narrower ranges stay linear. Power-law plots (:func:`plot_scaling`,
  :func:`plot_lr_batch`) keep log-log axes, where a power law is a straight line, with tick
  labels written as plain numbers (``0.2``, ``300k``, ``3e-05``) and minor ticks labelled when the
  range is narrow.
"""

from __future__ import annotations

import math
import os
from typing import Any, List, Optional, Sequence, Tuple, Union

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib import ticker

from analysis.stats import METHODS, interval_label, is_proportion

__all__ = ["save_figure", "legend_outside", "plot_learning_curves", "plot_ablation",
           "plot_tn_heatmap", "plot_lr_batch", "plot_scaling", "MARKER_MAX_POINTS"]

#: curves with at most this many points get a marker on every point
MARKER_MAX_POINTS = 30



def save_figure(fig, out: Optional[str], formats: Sequence[str] = ("png", "svg", "pdf"),
                dpi: int = 120) -> List[str]:
    """Writes ``out.<fmt>`` for each format; returns the paths (none when ``out`` is None)."""
    if out is None:
        return []
    out = os.path.splitext(out)[0] if out.endswith((".png", ".svg", ".pdf")) else out
    d = os.path.dirname(out)
    if d:
        os.makedirs(d, exist_ok=True)
    paths = []
    for fmt in formats:
        p = f"{out}.{fmt}"
        fig.savefig(p, dpi=dpi, bbox_inches="tight")
        paths.append(p)
    return paths


# ----------------------------------------------------------------------------- helpers


def _fmt(v: Any) -> str:
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.3g}"
    return str(v)


def _label(values: Sequence[Any], cols: Sequence[str]) -> str:
    return ", ".join(f"{c}={_fmt(v)}" for c, v in zip(cols, values)) if cols else "all"


def _group_key(df: pd.DataFrame, cols: Sequence[str]) -> pd.Series:
    if not cols:
        return pd.Series(["all"] * len(df), index=df.index)
    return df[list(cols)].astype(object).apply(lambda r: _label(tuple(r), cols), axis=1)


def _pretty(tag: str) -> str:
    """``eval/exact_accuracy`` -> ``eval exact accuracy``."""
    return tag.replace("/", " ").replace("_", " ")


def _num(v: float) -> str:
    """A plain, short number for a tick label: 0.06, 0.2, 2000, 300k, 1.5M, 3e-05."""
    if v == 0 or not np.isfinite(v):
        return "0" if v == 0 else ""
    a = abs(v)
    if 1e-3 <= a < 1e4:
        return f"{v:.4g}"
    for suffix, f in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if a >= f:
            return f"{v / f:.3g}{suffix}"
    m, e = f"{v:.2e}".split("e")
    return f"{float(m):.3g}e{int(e)}"


def _readable_log(axis, lo: Optional[float] = None, hi: Optional[float] = None) -> None:
    """Readable ticks on a log axis (call once the limits are final; default: the view).

    Labels are plain numbers (:func:`_num`). Under one decade in view (where a log axis would
    show at most one labelled power of ten): 3-6 round numbers (200k, 300k, ...; 3e-5, 5e-5,
    1e-4), or evenly spaced ones (0.074, 0.076, ...) for very narrow ranges;
    1-2 decades: powers of ten plus labelled 2x and 5x minor ticks; wider: powers of ten.
    """
    if lo is None or hi is None:
        axes = axis.axes  # get_xlim/get_ylim apply pending autoscaling first
        lo, hi = sorted(axes.get_xlim() if axis.axis_name == "x" else axes.get_ylim())
    decades = math.log10(hi / lo) if lo > 0 and hi > lo else 0.0
    fmt = ticker.FuncFormatter(lambda v, _: _num(v))
    if decades < 1.0:
        # the densest of 1..9, 1-2-3-5, 1-2-5, 1-3 (x 10^k) with at most 6 ticks in view
        # (round numbers, log-natural spacing); a linear "nice" set if that gives < 3
        ticks: List[float] = []
        k0, k1 = math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1
        for subs in ((1, 2, 3, 4, 5, 6, 7, 8, 9), (1, 2, 3, 5), (1, 2, 5), (1, 3)):
            ticks = sorted(m * 10.0 ** k for k in range(k0, k1 + 1) for m in subs
                           if lo <= m * 10.0 ** k <= hi)
            if len(ticks) <= 6:
                break
        if len(ticks) < 3:
            nice = ticker.MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi)
            ticks = [float(t) for t in nice if lo <= t <= hi and t > 0]
        axis.set_major_locator(ticker.FixedLocator(ticks))
        axis.set_major_formatter(fmt)
        axis.set_minor_locator(ticker.NullLocator())
        axis.set_minor_formatter(ticker.NullFormatter())
    else:
        axis.set_major_locator(ticker.LogLocator(base=10, numticks=12))
        axis.set_major_formatter(fmt)
        axis.set_minor_locator(ticker.LogLocator(base=10, subs=tuple(range(2, 10)), numticks=12))
        shown = {2, 5} if decades < 2.0 else set()

        def minor(v, _):
            if v <= 0:
                return ""
            lead = int(round(v / 10 ** math.floor(math.log10(v) + 1e-9)))
            return _num(v) if lead in shown else ""

        axis.set_minor_formatter(ticker.FuncFormatter(minor))
    axis.set_tick_params(which="both", labelsize=9)


def _decades(values: np.ndarray) -> float:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    if len(v) < 2:
        return 0.0
    return float(math.log10(v.max() / v.min()))


def _padded(vals: Sequence[float], bounds: Optional[Tuple[float, float]] = None,
            frac: float = 0.06) -> Optional[Tuple[float, float]]:
    """Limits holding every finite value with a margin; with ``bounds`` the margin may only
    overshoot a bound by half a margin (so a marker or error-bar cap on the bound stays
    visible) and :func:`_ticks_within` removes the ticks beyond it."""
    v = np.asarray([x for x in vals if x is not None and np.isfinite(x)], dtype=float)
    if not len(v):
        return None
    lo, hi = float(v.min()), float(v.max())
    span = hi - lo
    pad = frac * span if span > 0 else max(1.0, 0.05 * abs(hi))
    a, b = lo - pad, hi + pad
    if bounds is not None:
        a = max(a, bounds[0] - pad / 2)
        b = min(b, bounds[1] + pad / 2)
    return a, b


def _ticks_within(axis, lo: float, hi: float) -> None:
    ticks = [t for t in axis.get_majorticklocs() if lo - 1e-9 <= t <= hi + 1e-9]
    axis.set_ticks(ticks)


def _percent_axis(axis) -> None:
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:.4g}%"))


def legend_outside(ax, **kw):
    """A legend to the right of the axes: it can never cover the data."""
    opts = dict(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8,
                frameon=False)
    opts.update(kw)
    return ax.legend(**opts)


def _experiments(runs) -> str:
    try:
        exps = [str(e) for e in runs.summary["experiment"].dropna().unique() if str(e)]
    except (AttributeError, KeyError):
        return ""
    if not exps:
        return ""
    return ", ".join(sorted(exps)) if len(exps) <= 2 else f"{len(exps)} experiments"


# ----------------------------------------------------------------------------- plots


def plot_learning_curves(runs, tag: str = "eval/exact_accuracy",
                         group_by: Union[None, str, Sequence[str]] = None,
                         out: Optional[str] = None, *, ax=None, title: Optional[str] = None,
                         x: str = "step", individual: bool = False, logy: bool = False,
                         percent: Optional[bool] = None):
    """Learning curve of ``tag`` per group (``group_by`` default: the varying axes).

    ``runs`` is an :class:`analysis.runs.Runs`; group columns may be any summary column or raw
    gin name. ``x`` is ``"step"`` or ``"wall_time"`` (seconds since each run's first point).
    ``percent`` (default: for accuracies) shows the values in %. ``logy`` asks for a log y axis,
    used only when the plotted values span at least one decade. The default title is
    ``"<experiment>: <tag> by <groups>"``.
    """
    if group_by is None:
        group_by = runs.varying()
    elif isinstance(group_by, str):
        group_by = [g for g in group_by.split(",") if g]
    group_by = list(group_by)
    if percent is None:
        percent = is_proportion(tag)
    scale = 100.0 if percent else 1.0
    summ = runs.with_columns(group_by)
    df = runs.curve(tag)
    lab = dict(zip(summ["run"], _group_key(summ, group_by)))
    df = df.assign(group=df["run"].map(lab), value=df["value"].astype(float) * scale)
    if x == "wall_time" and len(df):
        df = df.assign(wall_time=df["wall_time"] - df.groupby("run")["wall_time"].transform("min"))
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 4.2))
    else:
        fig = ax.figure
    groups = sorted(df["group"].dropna().unique(), key=str)
    many = len(groups) > 10
    cmap = plt.get_cmap("viridis" if many else "tab10")
    shown: List[float] = []
    banded = False
    for i, g in enumerate(groups):
        color = cmap(i / max(1, len(groups) - 1)) if many else cmap(i % 10)
        gd = df[df["group"] == g]
        if individual:
            for _, rd in gd.groupby("run"):
                ax.plot(rd[x], rd["value"], color=color, alpha=0.25, lw=0.8)
                shown.extend(rd["value"])
        stat = gd.groupby(x)["value"].agg(["mean", "min", "max", "count"]).reset_index()
        nruns = gd["run"].nunique()
        sparse = len(stat) <= MARKER_MAX_POINTS
        ax.plot(stat[x], stat["mean"], color=color, lw=1.8,
                marker="o" if sparse else None, ms=3.5,
                label=f"{g} ({nruns} run{'s' if nruns != 1 else ''})")
        shown.extend(stat["mean"])
        if nruns > 1:
            ax.fill_between(stat[x], stat["min"], stat["max"], color=color, alpha=0.15, lw=0,
                            label="_band")
            banded = True
            shown.extend(stat["min"])
            shown.extend(stat["max"])
    ax.set_xlabel("step" if x == "step" else "wall time (s)")
    ax.set_ylabel(_pretty(tag) + (" (%)" if percent else ""))
    vals = np.asarray(shown, dtype=float)
    if logy and not percent and _decades(vals) >= 1.0:
        ax.set_yscale("log")
        _readable_log(ax.yaxis)
    elif percent:
        lim = _padded(vals, (0.0, 100.0))
        if lim is not None:
            ax.set_ylim(*lim)
            _ticks_within(ax.yaxis, 0.0, 100.0)
        _percent_axis(ax.yaxis)
    ax.grid(alpha=0.3)
    if banded:  # say what the shading is
        ax.fill_between([], [], [], color="0.5", alpha=0.3, lw=0,
                        label="shaded: min-max over the group's runs")
    if groups:
        legend_outside(ax, title=", ".join(group_by) or None, title_fontsize=8)
    exp = _experiments(runs)
    default = f"{_pretty(tag)} by {', '.join(group_by) or 'run'}"
    ax.set_title(title or (f"{exp}: {default}" if exp else default))
    save_figure(fig, out)
    return fig


def plot_ablation(table: pd.DataFrame, out: Optional[str] = None, *, title: str = "",
                  metric_label: str = "final exact accuracy", percent: bool = True,
                  label_col: str = "label"):
    """Point chart: mean and CI per row of a :func:`analysis.compare.comparison_table`, with
    the published number (``published`` column, a fraction) as a red diamond.

    The x axis is zoomed to the data (points, not bars: no zero baseline needed) and always
    holds every interval; with ``percent`` intervals are clipped to [0, 100] %. Rows are
    labelled with their run count. Pass the experiment name as ``title``.
    """
    scale = 100.0 if percent else 1.0
    bounds = (0.0, 100.0) if percent else None
    n = len(table)
    fig, ax = plt.subplots(figsize=(7, 0.5 * n + 1.6))
    y = np.arange(n)[::-1]
    mean = table["mean"].to_numpy(dtype=float) * scale
    lo = table["ci_low"].to_numpy(dtype=float) * scale
    hi = table["ci_high"].to_numpy(dtype=float) * scale
    if bounds is not None:
        mean, lo, hi = (np.clip(a, *bounds) for a in (mean, lo, hi))
    has_ci = np.isfinite(lo) & np.isfinite(hi)
    err = np.vstack([np.where(has_ci, mean - lo, 0), np.where(has_ci, hi - mean, 0)])
    methods = [m for m in dict.fromkeys(table.get("ci_method", pd.Series([], dtype=object)))
               if m in METHODS and m != "none"]
    ci_txt = "".join(f"\n  {interval_label(m)}" for m in methods)
    ax.errorbar(mean, y, xerr=np.clip(err, 0, None), fmt="o", color="C0", capsize=4,
                label="this study: mean" + (f"; bars:{ci_txt}" if ci_txt else ""))
    pub = np.full(n, np.nan)
    if "published" in table.columns and table["published"].notna().any():
        pub = table["published"].to_numpy(dtype=float) * scale
        ax.scatter(pub, y, marker="D", color="C3", zorder=3, label="paper (full scale)")
    runs_col = table["n_runs"] if "n_runs" in table.columns else [None] * n
    row_methods = list(table["ci_method"]) if "ci_method" in table.columns else [None] * n
    mixed = len(methods) > 1  # then say which rows are not the usual across-seed interval

    def row_label(lab, r, m):
        bits = [f"{r} run{'s' if r != 1 else ''}"] if r is not None else []
        if mixed and m != "t":
            bits.append({"wilson": "Wilson CI", "t, sd floor": "sd floor"}.get(m, "no CI"))
        return f"{lab}  ({'; '.join(bits)})" if bits else str(lab)

    labels = [row_label(l, r, m) for l, r, m in zip(table[label_col], runs_col, row_methods)]
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_ylim(-0.6, n - 0.4)
    ax.set_xlabel(metric_label + (" (%)" if percent else ""))
    lim = _padded(np.concatenate([mean, lo[has_ci], hi[has_ci], pub]), bounds)
    if lim is not None:
        ax.set_xlim(*lim)
        if bounds is not None:
            _ticks_within(ax.xaxis, *bounds)
    if percent:
        _percent_axis(ax.xaxis)
    ax.grid(axis="x", alpha=0.3)
    legend_outside(ax)
    ax.set_title(title or metric_label)
    save_figure(fig, out)
    return fig


def _text_color(rgba) -> str:
    r, g, b = rgba[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def _annotated_heatmap(ax, grid: pd.DataFrame, texts, cmap: str = "viridis",
                       vmin=None, vmax=None, fontsize: float = 9):
    """``texts[i][j]``: the annotation of cell (i, j) (None = nothing)."""
    data = grid.to_numpy(dtype=float)
    masked = np.ma.masked_invalid(data)
    im = ax.imshow(masked, cmap=cmap, aspect="auto", origin="lower", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(grid.shape[1]))
    ax.set_xticklabels([_fmt(c) for c in grid.columns])
    ax.set_yticks(range(grid.shape[0]))
    ax.set_yticklabels([_fmt(r) for r in grid.index])
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            v = data[i, j]
            if np.isfinite(v) and texts[i][j]:
                ax.text(j, i, texts[i][j], ha="center", va="center", fontsize=fontsize,
                        linespacing=1.25, color=_text_color(im.cmap(im.norm(v))))
            elif not np.isfinite(v):
                ax.text(j, i, "not run", ha="center", va="center", fontsize=fontsize - 1,
                        color="grey")
    ax.set_facecolor("#f2f2f2")
    return im


def _tn_from_table(table: pd.DataFrame, rows: str = "T", cols: str = "n"):
    def piv(col):
        if col not in table.columns:
            return None
        return table.pivot_table(index=rows, columns=cols, values=col, aggfunc="first",
                                 dropna=False).sort_index().sort_index(axis=1)
    grid = piv("mean")
    low, high = piv("ci_low"), piv("ci_high")
    counts = piv("n_runs")
    return grid, low, high, counts


def plot_tn_heatmap(grid: pd.DataFrame, out: Optional[str] = None, *, title: str = "",
                    percent: bool = True, counts: Optional[pd.DataFrame] = None,
                    low: Optional[pd.DataFrame] = None, high: Optional[pd.DataFrame] = None,
                    ci_label: Optional[str] = None):
    """Mean final metric over the (T, n) grid, each cell annotated with its interval (named
    under the plot: ``ci_label``, by default from the table's ``ci_method`` column).

    ``grid``: either index T, columns n, values the mean final metric (fractions if
    ``percent``), with optional same-shaped ``low`` / ``high`` (the CI) and ``counts`` (runs
    per cell); or a long table with columns ``T, n, mean`` and optionally ``ci_low, ci_high,
    n_runs`` — e.g. ``analysis.stats.aggregate(summary, ["T", "n"])`` — from which all four
    grids are taken. A cell reads ``"92.1%\\n[90.3, 93.6]\\n2 runs"``, so seed noise is visible
    next to the differences between cells.
    """
    if ci_label is None:
        methods = list(grid["ci_method"].dropna()) if "ci_method" in grid.columns else ["t"]
        ci_label = interval_label(methods)
    if {"T", "n", "mean"} <= set(grid.columns):
        grid, tl, th, tc = _tn_from_table(grid)
        low = tl if low is None else low
        high = th if high is None else high
        counts = tc if counts is None else counts
    scale = 100.0 if percent else 1.0
    unit = "%" if percent else ""

    def aligned(g):
        return None if g is None else g.reindex(index=grid.index, columns=grid.columns)

    low, high, counts = aligned(low), aligned(high), aligned(counts)
    g = grid.astype(float) * scale
    texts = []
    for i in range(grid.shape[0]):
        row = []
        for j in range(grid.shape[1]):
            v = g.iloc[i, j]
            if not np.isfinite(v):
                row.append(None)
                continue
            s = f"{v:.1f}{unit}" if percent else f"{v:.3g}"
            if low is not None and high is not None:
                lo, hi = float(low.iloc[i, j]) * scale, float(high.iloc[i, j]) * scale
                if np.isfinite(lo) and np.isfinite(hi):
                    if percent:
                        lo, hi = max(lo, 0.0), min(hi, 100.0)
                        s += f"\n[{lo:.1f}, {hi:.1f}]"
                    else:
                        s += f"\n[{lo:.3g}, {hi:.3g}]"
            if counts is not None:
                c = counts.iloc[i, j]
                if c == c and c:
                    s += f"\n{int(c)} run{'s' if int(c) != 1 else ''}"
            row.append(s)
        texts.append(row)
    fig, ax = plt.subplots(figsize=(1.5 * grid.shape[1] + 2.6, 1.0 * grid.shape[0] + 1.6))
    im = _annotated_heatmap(ax, g, texts, fontsize=8.5)
    ax.set_xlabel("n (L_cycles)")
    ax.set_ylabel("T (H_cycles)")
    cb = fig.colorbar(im, ax=ax, label="mean final exact accuracy" + (" (%)" if percent else ""))
    if percent:
        _percent_axis(cb.ax.yaxis)
    interval = f" [{ci_label}]" if low is not None and high is not None else ""
    ax.set_title(title or "recursion schedule: mean")
    if interval:
        fig.text(0.5, 0.0, f"cells: mean{interval}", ha="center", va="top", fontsize=8)
    save_figure(fig, out)
    return fig


def plot_lr_batch(grid: pd.DataFrame, out: Optional[str] = None, *, title: str = "",
                  percent: bool = True, fit=None):
    """``grid``: index batch size, columns lr, values the mean final metric (higher is better).

    Left: the grid with a star on the best lr of each batch size. Right: best lr vs batch size
    (log-log, plain-number ticks) with ``fit`` (an :class:`analysis.scaling.LogLinearFit`) when
    given. Pass the experiment name in ``title``.
    """
    scale = 100.0 if percent else 1.0
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 0.8 * grid.shape[0] + 2.6),
                                  gridspec_kw={"width_ratios": [1.4, 1]}, layout="constrained")
    g = grid.astype(float) * scale
    texts = [[(f"{v:.1f}%" if percent else f"{v:.3g}") for v in row]
             for row in g.to_numpy(dtype=float)]
    im = _annotated_heatmap(ax, g, texts)
    data = grid.to_numpy(dtype=float)
    best_lr = []
    for i in range(grid.shape[0]):
        row = data[i]
        if np.isfinite(row).any():
            j = int(np.nanargmax(row))
            ax.scatter([j], [i + 0.3], marker="*", s=110, color="red", zorder=3)
            best_lr.append((grid.index[i], grid.columns[j]))
    ax.set_xticklabels([_num(float(c)) for c in grid.columns])
    ax.set_xlabel("learning rate  (\u2605 best per batch size)")
    ax.set_ylabel("global batch size")
    cb = fig.colorbar(im, ax=ax, label="mean final exact accuracy" + (" (%)" if percent else ""))
    if percent:
        _percent_axis(cb.ax.yaxis)
    ax.set_title(title or "LR x batch size")
    if best_lr:
        b, lr = (np.asarray(v, dtype=float) for v in zip(*best_lr))
        ax2.scatter(b, lr, color="red", marker="*", s=110, zorder=3, label="best lr")
        if fit is not None:
            xs = np.geomspace(b.min(), b.max(), 50)
            ax2.plot(xs, fit.predict(xs), color="C0",
                     label=f"fit: lr* = {fit.k:.3g}·B^{fit.beta:.2f}")
        ax2.set_xscale("log")
        ax2.set_yscale("log")
        ax2.margins(x=0.15, y=0.25)
        _readable_log(ax2.xaxis)
        _readable_log(ax2.yaxis)
        ax2.set_xlabel("global batch size")
        ax2.set_ylabel("best learning rate")
        ax2.grid(alpha=0.3, which="both")
        ax2.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False,
                   ncol=2, borderaxespad=0.3)
    else:
        ax2.set_axis_off()
    save_figure(fig, out)
    return fig


def plot_scaling(x: Sequence[float], y: Sequence[float], fit=None, out: Optional[str] = None, *,
                 xlabel: str = "x", ylabel: str = "error", title: str = "",
                 background: Optional[Tuple[Sequence[float], Sequence[float]]] = None,
                 percent: Optional[bool] = None):
    """Data points (and ``background`` points in grey, e.g. all curve points behind a compute
    frontier) with the fitted power law on log-log axes (plain-number tick labels).

    ``percent`` (default: when ``ylabel`` mentions accuracy, e.g. "error (1 - exact
    accuracy)", and every y is in [0, 1]) shows y in %; the fit is drawn in the same units.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if percent is None:
        yy = y[np.isfinite(y)]
        percent = "accuracy" in ylabel.lower() and len(yy) > 0 and bool(
            ((yy >= 0) & (yy <= 1)).all())
    scale = 100.0 if percent else 1.0
    fig, ax = plt.subplots(figsize=(6, 4.2))
    if background is not None:
        bx, by = np.asarray(background[0], float), np.asarray(background[1], float) * scale
        ax.scatter(bx, by, s=8, color="lightgrey", label="all eval points")
    ax.scatter(x, y * scale, color="C0", zorder=3,
               label="runs" if background is None else "compute frontier")
    if fit is not None and len(x):
        xs = np.geomspace(x.min(), x.max(), 100)
        if percent:
            lab = "fit: a·x^(-α)" + (f" + c, c = {fit.c * scale:.3g}%" if fit.saturating
                                        else "")
        else:
            lab = f"fit: {fit.formula}"
        if np.isfinite(fit.alpha_ci[0]):
            lab += f"\nα = {fit.alpha:.3f} [{fit.alpha_ci[0]:.3f}, {fit.alpha_ci[1]:.3f}]"
        ax.plot(xs, fit.predict(xs) * scale, color="C3", label=lab)
        if fit.saturating and fit.c > 0:
            ax.axhline(fit.c * scale, color="C3", ls=":", lw=0.8, label="fitted floor c")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.margins(x=0.08, y=0.12)
    _readable_log(ax.xaxis)
    _readable_log(ax.yaxis)
    if percent:
        base = ax.yaxis.get_major_formatter()
        minor = ax.yaxis.get_minor_formatter()
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(
            lambda v, p: (base(v, p) + "%") if base(v, p) else ""))
        ax.yaxis.set_minor_formatter(ticker.FuncFormatter(
            lambda v, p: (minor(v, p) + "%") if minor(v, p) else ""))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel + (" (%)" if percent else ""))
    ax.grid(alpha=0.3, which="both")
    legend_outside(ax)
    ax.set_title(title or f"{ylabel} vs {xlabel}")
    save_figure(fig, out)
    return fig
