"""trm analysis: logged runs -> tables, plots, comparisons, scaling-law fits, the results report.

    from analysis import load_runs, comparison_table, fit_power_law, wilson_interval
    runs = load_runs("gs://bucket/study")          # or a local path
    runs.scalars   # tidy: one row per (run, tag, step) + hyperparameters
    runs.summary   # one row per run: status, steps, final/best metrics, params, FLOPs, hparams
    comparison_table(runs.select(experiment="e2_2_tn"), ["T", "n"])

Modules: :mod:`analysis.reader` (the one reader of the workdir format), :mod:`analysis.runs`
(tables), :mod:`analysis.hparams` (gin parsing and the binding
-> column table), :mod:`analysis.stats`, :mod:`analysis.scaling`, :mod:`analysis.plots`
(matplotlib; imported on demand), :mod:`analysis.compare` and :mod:`analysis.report` (CLIs),
:mod:`analysis.published` (the paper's numbers), :mod:`analysis.testing` (synthetic runs),
:mod:`analysis.dashboard` (a TensorBoard logdir with HParams), :mod:`analysis.cli` (what the
CLIs share).
See docs/ANALYSIS.md.
"""

import importlib
import os
import sys
from typing import Any, Sequence

#: How to install what the analysis modules import beyond trm's own dependencies.
EXTRA_HINT = "pip install 'trm[analysis]'"
#: The analysis extra's top-level modules (pyproject.toml, ``analysis`` extra).
EXTRA_MODULES = ("pandas", "scipy", "matplotlib")


class MissingExtraError(ModuleNotFoundError):
    """A module of the ``analysis`` extra is not installed (the message says how to install
    it). A ``ModuleNotFoundError``, so ``except ImportError`` keeps working."""


def _missing_extra(what: str, err: ModuleNotFoundError, expected: Sequence[str]):
    """The hint for ``err`` if it is an extra's module that is missing, else None."""
    name = (err.name or "").split(".")[0]
    if name not in expected:
        return None
    return MissingExtraError(f"{what} needs the analysis extra ({name} is not installed): "
                             f"{EXTRA_HINT}", name=name)


def require_extra(what: str, modules: Sequence[str] = EXTRA_MODULES, cli: bool = False) -> None:
    """Imports ``modules`` (the analysis extra's); when one is missing, raises a
    :class:`MissingExtraError` whose one-line message names the missing module and
    ``pip install 'trm[analysis]'``. With ``cli`` (a ``python -m`` run) or from a console
    script (``trm-report``), prints that line and exits with status 2 instead of a traceback."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            hint = _missing_extra(what, e, (module,))
            if hint is None:
                raise
            if cli or os.path.basename(sys.argv[0] if sys.argv else "").startswith("trm-"):
                print(str(hint), file=sys.stderr)
                raise SystemExit(2) from None
            raise hint from None

# Lazy exports (PEP 562): ``python -m analysis.compare`` / ``analysis.report`` must not find
# their module already imported by the package, and ``import analysis`` stays cheap.
_EXPORTS = {
    "load_runs": "runs", "Runs": "runs", "Run": "runs", "find_run_dirs": "reader",
    "read_events": "reader", "read_eval_cli": "reader",
    "parse_gin": "hparams", "extract_hparams": "hparams", "HPARAMS": "hparams",
    "wilson_interval": "stats", "t_interval": "stats", "bootstrap_interval": "stats",
    "seed_interval": "stats", "paired_seed_interval": "stats", "single_run_interval": "stats",
    "interval_label": "stats", "aggregate": "stats", "counts": "stats",
    "fit_power_law": "scaling", "PowerLawFit": "scaling", "fit_loglinear": "scaling",
    "pareto_frontier": "scaling",
    "comparison_table": "compare",
    "PUBLISHED": "published", "match_published": "published",
}

__all__ = sorted(_EXPORTS) + ["EXTRA_HINT", "MissingExtraError", "require_extra"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'analysis' has no attribute {name!r}")
    try:
        module = importlib.import_module(f"analysis.{_EXPORTS[name]}")
    except ModuleNotFoundError as e:
        hint = _missing_extra(f"analysis.{name}", e, EXTRA_MODULES)
        if hint is None:
            raise
        raise hint from None
    value = getattr(module, "match" if name == "match_published" else name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))
