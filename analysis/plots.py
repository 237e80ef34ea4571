"""Figures (matplotlib): every ``plot_*`` returns the Figure and, given ``out``
(a path without extension), writes ``out.png`` and ``out.svg``.

* :func:`plot_learning_curves` — one tag vs step, a line per group of any hyperparameter(s)
  (mean over the group's runs, min-max band when several).
* :func:`plot_ablation` — final metric per configuration with its CI (across seeds, or Wilson)
  next to the paper's published number.
* :func:`plot_tn_heatmap` — mean final metric over the (T, n) grid.
* :func:`plot_lr_batch` — LR x batch-size grid with the best LR per batch size, and the optimum
  LR vs batch size on log axes with a fitted power law.
* :func:`plot_scaling` — data and a :class:`analysis.scaling.PowerLawFit` on log axes.
"""

from __future__ import annotations

import os
from typing import Any, List, Optional, Sequence, Tuple, Union

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

__all__ = ["save_figure", "plot_learning_curves", "plot_ablation", "plot_tn_heatmap",
           "plot_lr_batch", "plot_scaling"]


def save_figure(fig, out: Optional[str], formats: Sequence[str] = ("png", "svg"),
                dpi: int = 120) -> List[str]:
    """Writes ``out.<fmt>`` for each format; returns the paths (none when ``out`` is None)."""
    if out is None:
        return []
    out = os.path.splitext(out)[0] if out.endswith((".png", ".svg")) else out
    d = os.path.dirname(out)
    if d:
        os.makedirs(d, exist_ok=True)
    paths = []
    for fmt in formats:
        p = f"{out}.{fmt}"
        fig.savefig(p, dpi=dpi, bbox_inches="tight")
        paths.append(p)
    return paths


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


def plot_learning_curves(runs, tag: str = "eval/exact_accuracy",
                         group_by: Union[None, str, Sequence[str]] = None,
                         out: Optional[str] = None, *, ax=None, title: Optional[str] = None,
                         x: str = "step", individual: bool = False, logy: bool = False):
    """Learning curve of ``tag`` per group (``group_by`` default: the varying axes).

    ``runs`` is an :class:`analysis.runs.Runs`; group columns may be any summary column or raw
    gin name. ``x`` is ``"step"`` or ``"wall_time"`` (seconds since each run's first point).
    """
    if group_by is None:
        group_by = runs.varying()
    elif isinstance(group_by, str):
        group_by = [g for g in group_by.split(",") if g]
    group_by = list(group_by)
    summ = runs.with_columns(group_by)
    df = runs.curve(tag)
    lab = dict(zip(summ["run"], _group_key(summ, group_by)))
    df = df.assign(group=df["run"].map(lab))
    if x == "wall_time" and len(df):
        df = df.assign(wall_time=df["wall_time"] - df.groupby("run")["wall_time"].transform("min"))
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 4.2))
    else:
        fig = ax.figure
    groups = sorted(df["group"].dropna().unique(), key=str)
    cmap = plt.get_cmap("viridis" if len(groups) > 10 else "tab10")
    for i, g in enumerate(groups):
        color = cmap(i / max(1, len(groups) - 1)) if len(groups) > 10 else cmap(i % 10)
        gd = df[df["group"] == g]
        if individual:
            for _, rd in gd.groupby("run"):
                ax.plot(rd[x], rd["value"], color=color, alpha=0.25, lw=0.8)
        stat = gd.groupby(x)["value"].agg(["mean", "min", "max", "count"]).reset_index()
        nruns = gd["run"].nunique()
        ax.plot(stat[x], stat["mean"], color=color, lw=1.8, label=f"{g} ({nruns} run"
                f"{'s' if nruns != 1 else ''})")
        if nruns > 1:
            ax.fill_between(stat[x], stat["min"], stat["max"], color=color, alpha=0.15, lw=0)
    ax.set_xlabel("step" if x == "step" else "wall time (s)")
    ax.set_ylabel(tag)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if groups:
        ax.legend(fontsize=8, loc="best")
    ax.set_title(title or f"{tag} by {', '.join(group_by) or 'run'}")
    save_figure(fig, out)
    return fig


def plot_ablation(table: pd.DataFrame, out: Optional[str] = None, *, title: str = "",
                  metric_label: str = "final exact accuracy", percent: bool = True,
                  label_col: str = "label"):
    """Point chart: mean and CI per row of a :func:`analysis.compare.comparison_table`, with
    the published number (``published`` column, a fraction) as a red diamond."""
    scale = 100.0 if percent else 1.0
    n = len(table)
    fig, ax = plt.subplots(figsize=(7, 0.55 * n + 1.6))
    y = np.arange(n)[::-1]
    mean = table["mean"].to_numpy(dtype=float) * scale
    lo = table["ci_low"].to_numpy(dtype=float) * scale
    hi = table["ci_high"].to_numpy(dtype=float) * scale
    has_ci = np.isfinite(lo) & np.isfinite(hi)
    err = np.vstack([np.where(has_ci, mean - lo, 0), np.where(has_ci, hi - mean, 0)])
    ax.errorbar(mean, y, xerr=np.clip(err, 0, None), fmt="o", color="C0", capsize=4,
                label="this study (CI: " + "/".join(sorted(set(table["ci_method"]))) + ")")
    if "published" in table.columns and table["published"].notna().any():
        pub = table["published"].to_numpy(dtype=float) * scale
        ax.scatter(pub, y, marker="D", color="C3", zorder=3, label="paper (full scale)")
    labels = [f"{l}  (n={r})" for l, r in zip(table[label_col], table["n_runs"])]
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xlabel(metric_label + (" (%)" if percent else ""))
    if percent:
        ax.set_xlim(0, 100)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title or metric_label)
    save_figure(fig, out)
    return fig


def _annotated_heatmap(ax, grid: pd.DataFrame, fmt, cmap: str = "viridis",
                       vmin=None, vmax=None):
    data = grid.to_numpy(dtype=float)
    masked = np.ma.masked_invalid(data)
    im = ax.imshow(masked, cmap=cmap, aspect="auto", origin="lower", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(grid.shape[1]))
    ax.set_xticklabels([_fmt(c) for c in grid.columns])
    ax.set_yticks(range(grid.shape[0]))
    ax.set_yticklabels([_fmt(r) for r in grid.index])
    finite = data[np.isfinite(data)]
    mid = (finite.min() + finite.max()) / 2 if len(finite) else 0
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            v = data[i, j]
            if np.isfinite(v):
                ax.text(j, i, fmt(v), ha="center", va="center", fontsize=9,
                        color="white" if v < mid else "black")
    return im


def plot_tn_heatmap(grid: pd.DataFrame, out: Optional[str] = None, *, title: str = "",
                    percent: bool = True, counts: Optional[pd.DataFrame] = None):
    """``grid``: index T, columns n, values the mean final metric (fractions if ``percent``);
    ``counts`` (same shape) adds the number of runs to each cell."""
    scale = 100.0 if percent else 1.0
    fig, ax = plt.subplots(figsize=(1.2 * grid.shape[1] + 2.5, 0.9 * grid.shape[0] + 1.8))
    g = grid * scale

    def fmt(v):
        return f"{v:.1f}" if percent else f"{v:.3g}"

    im = _annotated_heatmap(ax, g, fmt)
    if counts is not None:
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                c = counts.iloc[i, j]
                if c == c and c:
                    ax.text(j, i - 0.3, f"{int(c)} run{'s' if int(c) != 1 else ''}",
                            ha="center", va="center", fontsize=6, color="grey")
    ax.set_xlabel("n (L_cycles)")
    ax.set_ylabel("T (H_cycles)")
    fig.colorbar(im, ax=ax, label="final exact accuracy" + (" (%)" if percent else ""))
    ax.set_title(title or "recursion schedule")
    save_figure(fig, out)
    return fig


def plot_lr_batch(grid: pd.DataFrame, out: Optional[str] = None, *, title: str = "",
                  percent: bool = True, fit=None):
    """``grid``: index batch size, columns lr, values the mean final metric (higher is better).

    Left: the grid with a star on the best lr of each batch size. Right: best lr vs batch size
    (log-log) with ``fit`` (an :class:`analysis.scaling.LogLinearFit`) when given.
    """
    scale = 100.0 if percent else 1.0
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 0.8 * grid.shape[0] + 2.6),
                                  gridspec_kw={"width_ratios": [1.4, 1]}, layout="constrained")
    g = grid * scale
    im = _annotated_heatmap(ax, g, lambda v: f"{v:.1f}" if percent else f"{v:.3g}")
    data = grid.to_numpy(dtype=float)
    best_lr = []
    for i in range(grid.shape[0]):
        row = data[i]
        if np.isfinite(row).any():
            j = int(np.nanargmax(row))
            ax.scatter([j], [i + 0.32], marker="*", s=120, color="red", zorder=3)
            best_lr.append((grid.index[i], grid.columns[j]))
    ax.set_xlabel("learning rate")
    ax.set_ylabel("global batch size")
    fig.colorbar(im, ax=ax, label="final exact accuracy" + (" (%)" if percent else ""))
    ax.set_title(title or "LR x batch size (star: best LR per batch)")
    if best_lr:
        b, lr = zip(*best_lr)
        ax2.scatter(b, lr, color="red", marker="*", s=120, zorder=3, label="best lr")
        if fit is not None:
            xs = np.geomspace(min(b), max(b), 50)
            ax2.plot(xs, fit.predict(xs), color="C0",
                     label=f"lr* = {fit.k:.3g}·B^{fit.beta:.2f}")
        ax2.set_xscale("log")
        ax2.set_yscale("log")
        ax2.set_xlabel("global batch size")
        ax2.set_ylabel("best learning rate")
        ax2.grid(alpha=0.3, which="both")
        ax2.legend(fontsize=8)
        ax2.set_title("optimum lr vs batch size")
    save_figure(fig, out)
    return fig


def plot_scaling(x: Sequence[float], y: Sequence[float], fit=None, out: Optional[str] = None, *,
                 xlabel: str = "x", ylabel: str = "error", title: str = "",
                 background: Optional[Tuple[Sequence[float], Sequence[float]]] = None):
    """Data points (and ``background`` points in grey, e.g. all curve points behind a compute
    frontier) with the fitted power law on log-log axes."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    if background is not None:
        ax.scatter(background[0], background[1], s=8, color="lightgrey", label="all points")
    ax.scatter(x, y, color="C0", zorder=3, label="runs" if background is None else "frontier")
    if fit is not None:
        xs = np.geomspace(min(x), max(x), 100)
        lab = f"{fit.formula}"
        if np.isfinite(fit.alpha_ci[0]):
            lab += f"\nα = {fit.alpha:.3f} [{fit.alpha_ci[0]:.3f}, {fit.alpha_ci[1]:.3f}]"
        ax.plot(xs, fit.predict(xs), color="C3", label=lab)
        if fit.saturating and fit.c > 0:
            ax.axhline(fit.c, color="C3", ls=":", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    if len(x) and max(x) / min(x) > 10:
        from matplotlib.ticker import NullFormatter

        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title(title or f"{ylabel} vs {xlabel}")
    save_figure(fig, out)
    return fig
