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
