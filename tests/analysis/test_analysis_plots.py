"""Every plot writes PNG and SVG."""

import os

import numpy as np

from analysis import compare, plots, scaling


def _written(stem):
    for ext in ("png", "svg"):
        p = f"{stem}.{ext}"
        assert os.path.getsize(p) > 1000, p


def test_plots_write_png_and_svg(study_runs, tmp_path):
    import matplotlib.pyplot as plt

    tn = study_runs.select(experiment="e2_2_tn")
    plots.plot_learning_curves(tn, "eval/exact_accuracy", ["T", "n"], str(tmp_path / "c"),
                               individual=True)
    plots.plot_learning_curves(tn, "train/lm_loss", "trm.L_cycles", str(tmp_path / "c2"),
                               x="wall_time", logy=True)
    table = compare.comparison_table(tn)
    plots.plot_ablation(table, str(tmp_path / "a"))
    grid = tn.summary.pivot_table(index="T", columns="n", values="final_eval_exact_accuracy")
    plots.plot_tn_heatmap(grid, str(tmp_path / "h"))
    lb = study_runs.select(experiment="e3_3_lr_batch").summary
    g2 = lb.pivot_table(index="global_batch_size", columns="lr",
                        values="final_eval_exact_accuracy")
    plots.plot_lr_batch(g2, str(tmp_path / "lb"),
                        fit=scaling.fit_loglinear([32, 128], [3e-5, 1e-4]))
    x = np.logspace(4, 7, 6)
    fit = scaling.fit_power_law(x, 2 * x ** -0.3 + 0.01, n_boot=20)
    plots.plot_scaling(x, 2 * x ** -0.3 + 0.01, fit, str(tmp_path / "s"))
    for stem in ("c", "c2", "a", "h", "lb", "s"):
        _written(str(tmp_path / stem))
    plt.close("all")


# ----------------------------------------------------------------- what a paper figure needs


import matplotlib  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from analysis import stats  # noqa: E402


class _Runs:
    """The slice of :class:`analysis.runs.Runs` the curve plot uses."""

    def __init__(self, curves, experiment="exp_x"):
        # curves: {(run, group value): [(step, value), ...]}
        rows = [{"run": r, "step": s, "value": v, "wall_time": float(s)}
                for (r, _), pts in curves.items() for s, v in pts]
        self._curve = pd.DataFrame(rows)
        self.summary = pd.DataFrame({"run": [r for r, _ in curves], "g": [g for _, g in curves],
                                     "experiment": experiment})

    def varying(self):
        return ["g"]

    def with_columns(self, cols):
        return self.summary

    def curve(self, tag):
        return self._curve


def _data_points(ax):
    """Display coordinates of every plotted point: lines, markers, scatter, bar segments."""
    pts = []
    for line in ax.get_lines():
        xy = np.asarray(line.get_xydata(), dtype=float)
        if len(xy):
            pts.append(ax.transData.transform(xy))
    for coll in ax.collections:
        offs = np.asarray(coll.get_offsets(), dtype=float)
        if len(offs) and isinstance(coll, matplotlib.collections.PathCollection):
            pts.append(ax.transData.transform(offs))
        if isinstance(coll, matplotlib.collections.LineCollection):
            for seg in coll.get_segments():
                if len(seg):
                    pts.append(ax.transData.transform(np.asarray(seg, dtype=float)))
        if isinstance(coll, matplotlib.collections.PolyCollection):  # fill_between bands
            for p in coll.get_paths():
                pts.append(ax.transData.transform(p.vertices))
    pts = np.vstack(pts) if pts else np.zeros((0, 2))
    return pts[np.isfinite(pts).all(axis=1)]


def _assert_legends_off_the_data(fig):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    n_legends = 0
    for ax in fig.axes:
        leg = ax.get_legend()
        if leg is None:
            continue
        n_legends += 1
        box = leg.get_window_extent(renderer)
        pts = _data_points(ax)
        inside = ((pts[:, 0] >= box.x0) & (pts[:, 0] <= box.x1) & (pts[:, 1] >= box.y0)
                  & (pts[:, 1] <= box.y1))
        assert not inside.any(), f"legend of {ax.get_title()!r} covers {inside.sum()} points"
        # and it does not overlap the plotting area at all
        assert not box.overlaps(ax.get_window_extent(renderer))
    assert n_legends


def _errorbar_ends(ax):
    ends = []
    for c in ax.containers:
        if isinstance(c, matplotlib.container.ErrorbarContainer):
            for lc in c.lines[2]:
                for seg in lc.get_segments():
                    ends.extend(np.asarray(seg, dtype=float)[:, 0])
    return np.asarray(ends)


def test_legends_never_cover_the_data(study_runs):
    import matplotlib.pyplot as plt

    tn = study_runs.select(experiment="e2_2_tn")
    table = compare.comparison_table(tn)
    x = np.logspace(4, 7, 6)
    figs = [
        plots.plot_learning_curves(tn, "eval/exact_accuracy", ["T", "n"], individual=True),
        plots.plot_learning_curves(tn, "train/lm_loss", ["T", "n"], logy=True),
        plots.plot_ablation(table, title="e2_2_tn"),
        plots.plot_scaling(x, 2 * x ** -0.3 + 0.01, scaling.fit_power_law(
            x, 2 * x ** -0.3 + 0.01, n_boot=10), background=(x * 1.1, 2.2 * x ** -0.3)),
        plots.plot_lr_batch(pd.DataFrame([[0.5, 0.6], [0.7, 0.4]], index=[32, 128],
                                         columns=[1e-4, 3e-4]),
                            fit=scaling.fit_loglinear([32, 128], [3e-4, 1e-4])),
    ]
    for fig in figs:
        _assert_legends_off_the_data(fig)
    plt.close("all")


def test_accuracy_curves_in_percent_with_markers_and_experiment_title(study_runs):
    import matplotlib.pyplot as plt

    tn = study_runs.select(experiment="e2_2_tn")
    fig = plots.plot_learning_curves(tn, "eval/exact_accuracy", ["T", "n"])
    ax = fig.axes[0]
    fig.canvas.draw()
    assert "(%)" in ax.get_ylabel()
    labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text()]
    assert labels and all(l.endswith("%") for l in labels)
    assert all(0 <= t <= 100 for t in ax.get_yticks())
    lo, hi = ax.get_ylim()
    for line in ax.get_lines():
        y = line.get_ydata()
        assert lo <= min(y) and max(y) <= hi and max(y) > 1.0  # in %, not fractions
        assert line.get_marker() == "o"  # 4 eval points: sparse, so markers
    assert ax.get_title().startswith("e2_2_tn:")
    # dense curves: no markers
    dense = _Runs({("a", 1): [(s, 0.5 + s / 1e4) for s in range(0, 1000, 10)]})
    fig = plots.plot_learning_curves(dense, "eval/exact_accuracy")
    assert fig.axes[0].get_lines()[0].get_marker() in (None, "None", "", " ")
    assert fig.axes[0].get_title().startswith("exp_x:")
    plt.close("all")


def test_log_axis_only_for_a_decade_or_more():
    import matplotlib.pyplot as plt

    narrow = _Runs({("a", 1): [(s, 0.30 - s / 1e4) for s in range(0, 1000, 100)],
                    ("b", 2): [(s, 0.32 - s / 1e4) for s in range(0, 1000, 100)]})
    fig = plots.plot_learning_curves(narrow, "train/lm_loss", logy=True)
    assert fig.axes[0].get_yscale() == "linear"
    wide = _Runs({("a", 1): [(s, 3.0 * 0.5 ** (s / 100)) for s in range(0, 1000, 100)]})
    fig = plots.plot_learning_curves(wide, "train/lm_loss", logy=True)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    fig.canvas.draw()
    labels = [t.get_text() for t in ax.get_yticklabels() + ax.get_yticklabels(minor=True)
              if t.get_text()]
    assert len(labels) >= 3
    assert not any("$" in l or "times" in l for l in labels), labels  # plain numbers
    for l in labels:
        float(l)
    plt.close("all")


@pytest.mark.parametrize("lo,hi", [(1.9e5, 6.5e5), (0.0725, 0.086), (2.4e-5, 1.3e-4)])
def test_scaling_log_ticks_readable_on_narrow_ranges(lo, hi):
    import matplotlib.pyplot as plt

    x = np.geomspace(lo, hi, 5)
    fig = plots.plot_scaling(x, x[::-1], None)
    ax = fig.axes[0]
    fig.canvas.draw()
    for axis in (ax.xaxis, ax.yaxis):
        vlo, vhi = sorted(ax.get_xlim() if axis is ax.xaxis else ax.get_ylim())
        ticks = [t for t in axis.get_majorticklocs() if vlo <= t <= vhi]
        labels = [t.get_text() for t in axis.get_ticklabels() if t.get_text()]
        assert len(ticks) >= 3 and len(labels) >= 3, labels
        assert not any("$" in l for l in labels), labels
    plt.close("all")


def _table(means, lows, highs, published=None, methods=None):
    n = len(means)
    return pd.DataFrame({"label": [f"cfg{i}" for i in range(n)], "mean": means,
                         "ci_low": lows, "ci_high": highs, "n_runs": [2] * n,
                         "ci_method": methods or ["t"] * n,
                         "published": published if published is not None else [np.nan] * n})


def test_ablation_intervals_inside_0_100_and_inside_the_axes():
    import matplotlib.pyplot as plt

    t = _table([0.98, 0.02, 0.5], [0.90, -0.05, 0.45], [1.07, 0.08, 0.55],
               published=[0.874, np.nan, 0.6], methods=["t", "wilson", "t"])
    fig = plots.plot_ablation(t, title="e_x")
    ax = fig.axes[0]
    fig.canvas.draw()
    ends = _errorbar_ends(ax)
    assert len(ends) and ends.min() >= 0.0 and ends.max() <= 100.0
    assert ends.max() == pytest.approx(100.0) and ends.min() == pytest.approx(0.0)
    lo, hi = ax.get_xlim()
    assert lo <= ends.min() and ends.max() <= hi
    assert all(0 <= v <= 100 for v in ax.get_xticks())
    labels = [l.get_text() for l in ax.get_xticklabels() if l.get_text()]
    assert labels and all(l.endswith("%") for l in labels)
    assert "(%)" in ax.get_xlabel()
    assert ax.get_title() == "e_x"
    leg = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("95% t interval over seeds" in l and "Wilson" in l for l in leg)
    # a zoomed axis still holds every interval and the paper number
    t = _table([0.90, 0.92], [0.85, 0.91], [0.95, 0.93], published=[0.70, np.nan])
    fig = plots.plot_ablation(t)
    lo, hi = fig.axes[0].get_xlim()
    ends = _errorbar_ends(fig.axes[0])
    assert lo <= 70.0 and lo <= ends.min() and ends.max() <= hi <= 100.5
    plt.close("all")


def test_tn_heatmap_annotated_with_intervals(study_runs):
    import matplotlib.pyplot as plt

    summ = pd.DataFrame({
        "run": list("abcdef"), "T": [2, 2, 3, 3, 3, 3], "n": [2, 2, 2, 2, 6, 6],
        "seed": [0, 1, 0, 1, 0, 1],
        "final_eval_exact_accuracy": [0.90, 0.94, 0.5, 0.5, 0.70, 0.72],
        "eval_count": 1000, "final_eval_step": 40})
    agg = stats.aggregate(summ, ["T", "n"])
    fig = plots.plot_tn_heatmap(agg, title="e2_2_tn: final exact accuracy over (T, n)")
    texts = [t.get_text() for t in fig.axes[0].texts]
    row = agg.set_index(["T", "n"]).loc[(2, 2)]
    want = f"{100 * row['mean']:.1f}%\n[{100 * row['ci_low']:.1f}, {100 * row['ci_high']:.1f}]"
    assert any(t.startswith(want) and t.endswith("2 runs") for t in texts), texts
    # identical seeds: the sd floored at one puzzle, not a zero-width interval; the caption
    # under the plot says what the intervals are
    assert any("t interval over seeds, spread floored" in t.get_text() for t in fig.texts)
    same = [t for t in texts if t.startswith("50.0%")]
    assert same and "[50.0, 50.0]" not in same[0] and "[" in same[0]
    assert any(t == "not run" for t in texts)  # (T=2, n=6)
    for t in texts:
        if "[" in t:
            lo, hi = (float(v) for v in t.split("[")[1].split("]")[0].split(","))
            assert 0.0 <= lo < hi <= 100.0
    cb = fig.axes[1]
    assert "(%)" in cb.get_ylabel()
    # the grid form (index T, columns n) with low/high grids gives the same cells
    grid = agg.pivot(index="T", columns="n", values="mean")
    fig2 = plots.plot_tn_heatmap(grid, low=agg.pivot(index="T", columns="n", values="ci_low"),
                                 high=agg.pivot(index="T", columns="n", values="ci_high"))
    assert any(t.get_text().startswith(want) for t in fig2.axes[0].texts)
    # the real study through the report's route
    tn = study_runs.select(experiment="e2_2_tn")
    fig3 = plots.plot_tn_heatmap(stats.aggregate(tn.summary, ["T", "n"]))
    assert sum("[" in t.get_text() for t in fig3.axes[0].texts) == 5
    plt.close("all")
