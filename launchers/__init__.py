"""Launchers: named sweeps, a local runner and a Cloud TPU VM driver.

* :mod:`launchers.named_sweeps` -- the sweep definitions (plain dataclasses), their registry and
  the discovery of sweeps defined outside the library (``studies/*/sweep.py``, ...).
* :mod:`launchers.sweep` -- ``python -m launchers.sweep --sweep=NAME --list``.
* :mod:`launchers.local` -- run a sweep's runs as subprocesses on this machine.
* :mod:`launchers.tpu` -- ``python -m launchers.tpu <verb>``: create, set up and drive TPU VMs,
  over :mod:`launchers.tpu_config` (settings, accelerator families), :mod:`launchers.gcloud`
  (gcloud command lines) and :mod:`launchers.remote` (the scripts run on the workers);
  ``watch`` (:mod:`launchers.watch`) keeps a study going on preemptible capacity, ``cost``
  (:mod:`launchers.cost`) estimates a sweep's device-hours.

The launchers build ``python -m trm.train`` command lines and read ``run.json`` files
(docs/DESIGN.md, "Workdir"), so they work on a machine with the standard library only (no
numpy, torch, TensorFlow or gin; tests/core/test_import_graph.py). The one exception is
``cost``, which imports trm (lazily, only when that verb runs) to build each run's model and
count its FLOPs.
"""
