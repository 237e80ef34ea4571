"""The CPU study (docs/results/cpu_study/): :mod:`.sweep` (its arms and sweep) and
:mod:`.analysis` (the report: ``python -m studies.cpu_study.analysis``)."""
