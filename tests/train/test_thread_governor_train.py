"""The CPU thread governor inside a real training run (tiny model, real TFRecords, real
TensorBoard files); the host's load is faked so that the change is certain."""

import json
import os

import torch

from test_train import read_scalars
from train_helpers import tiny_bindings
from trm.runtime import threads
from trm.runtime.threads import ThreadGovernor
from trm.train import train


def test_a_training_run_records_the_changes(sudoku4, tmp_path, monkeypatch):
    """The trainer checks at every step: a change is in run.json (with its step) and in
    TensorBoard's perf/cpu_threads; torch's own thread count is left alone here (fake host)."""
    host = {"t": 0.0, "busy": 0.0, "threads": 2}

    def governor(processes_on_host=1, cpus=None, cores=None, group=None):
        host["given"] = (cpus, cores)  # what init_runtime measured once for both rules

        def clock():   # each check is a second later; other work keeps a CPU busy from 3 s on
            host["t"] += 1.0
            host["busy"] += 1.0 if host["t"] > 3 else 0.0
            return host["t"]
        return ThreadGovernor([0, 1], 2, processes_on_host, 1.0, clock=clock,
                              host_busy=lambda cpus: host["busy"], own=lambda: 0.0,
                              set_threads=lambda n: host.update(threads=n),
                              get_threads=lambda: host["threads"])

    monkeypatch.setattr(threads, "governor_for_this_process", governor)
    wd = str(tmp_path / "run")
    before = torch.get_num_threads()
    result = train(["cpu_e1_1_baseline.gin"], tiny_bindings(sudoku4, steps=10), wd,
                   progress=False)
    assert result["status"] == "completed" and torch.get_num_threads() == before
    run = json.load(open(os.path.join(wd, "run.json")))
    changes = run["cpu_thread_changes"]
    assert [(c["threads_from"], c["threads"]) for c in changes] == [(2, 1)]
    assert changes[0]["step"] == 5 and changes[0]["others_busy"] == 1.0   # logged at step 5
    assert run["torch_threads"] == 1
    assert read_scalars(wd)["perf/cpu_threads"] == [(5, 1.0), (10, 1.0)]
    from trm.runtime.device import allowed_cpus, usable_cores
    assert host["given"] == (allowed_cpus(), usable_cores(allowed_cpus())[0])
