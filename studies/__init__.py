"""Studies: project folders that use trm, outside the library.

Each ``studies/<name>/`` holds one study: ``sweep.py`` (its runs, as ``SWEEPS``; found by name by
the launchers, see :mod:`launchers.named_sweeps`) and whatever analysis, notes and notebooks it
needs. Nothing in ``trm``, ``launchers`` or ``analysis`` imports a study.
"""
