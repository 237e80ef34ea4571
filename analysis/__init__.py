"""trm analysis: logged runs -> tables, plots, comparisons, scaling-law fits, the results report.

    from analysis import load_runs, comparison_table, fit_power_law, wilson_interval
    runs = load_runs("gs://bucket/study")          # or a local path
    runs.scalars   # tidy: one row per (run, tag, step) + hyperparameters
    runs.summary   # one row per run: status, steps, final/best metrics, params, FLOPs, hparams
    comparison_table(runs.select(experiment="e2_2_tn"), ["T", "n"])

Modules: :mod:`analysis.runs` (loading), :mod:`analysis.hparams` (gin parsing and the binding
-> column table), :mod:`analysis.stats`, :mod:`analysis.scaling`, :mod:`analysis.plots`
(matplotlib; imported on demand), :mod:`analysis.compare` and :mod:`analysis.report` (CLIs),
:mod:`analysis.published` (the paper's numbers), :mod:`analysis.testing` (synthetic runs).
See docs/ANALYSIS.md.
"""

import importlib
from typing import Any

# Lazy exports (PEP 562): ``python -m analysis.compare`` / ``analysis.report`` must not find
# their module already imported by the package, and ``import analysis`` stays cheap.
_EXPORTS = {
    "load_runs": "runs", "Runs": "runs", "Run": "runs", "find_run_dirs": "runs",
    "read_events": "runs",
    "parse_gin": "hparams", "extract_hparams": "hparams", "HPARAMS": "hparams",
    "wilson_interval": "stats", "t_interval": "stats", "bootstrap_interval": "stats",
    "aggregate": "stats", "counts": "stats",
    "fit_power_law": "scaling", "PowerLawFit": "scaling", "fit_loglinear": "scaling",
    "pareto_frontier": "scaling",
    "comparison_table": "compare",
    "PUBLISHED": "published", "match_published": "published",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'analysis' has no attribute {name!r}")
    module = importlib.import_module(f"analysis.{_EXPORTS[name]}")
    value = getattr(module, "match" if name == "match_published" else name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))
