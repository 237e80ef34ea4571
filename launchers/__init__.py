"""Launchers: named sweeps, a local runner and a Cloud TPU VM driver.

* :mod:`launchers.named_sweeps` -- the sweep definitions (plain dataclasses) and their registry.
* :mod:`launchers.sweep` -- ``python -m launchers.sweep --sweep=NAME --list``.
* :mod:`launchers.local` -- run a sweep's runs as subprocesses on this machine.
* :mod:`launchers.tpu` -- ``python -m launchers.tpu <verb>``: create, set up and drive TPU VMs;
  ``watch`` (:mod:`launchers.watch`) keeps a study going on preemptible capacity, ``cost``
  (:mod:`launchers.cost`) estimates a sweep's device-hours.

The launchers build ``python -m trm.train`` command lines and read ``run.json`` files
(docs/DESIGN.md, "Workdir"), so they work on a machine without torch. The one exception is
``cost``, which imports trm (lazily, only when that verb runs) to build each run's model and
count its FLOPs.
"""
