"""Kill tests: SIGKILL / SIGTERM at random points, restart, bitwise-equal final weights."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys

import pytest
import torch

import mini_train
from trm.run.checkpoints import load_state_dict_file
from trm.run.workdir import Workdir
from trm.run.record import RunRecord

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mini_train.py")
TOTAL, EVERY = 40, 4


def _start(path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, SCRIPT, path, str(TOTAL), str(EVERY), "0.03"],
                            stdout=subprocess.PIPE, text=True, env=env)


def _run_until(path, steps, sig):
    """Starts a run, lets it take ``steps`` more steps, then sends ``sig``."""
    child = _start(path)
    try:
        for _ in range(steps):
            line = child.stdout.readline()
            if not line:
                break
        child.send_signal(sig)
        child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return child.returncode


@pytest.mark.slow
def test_killed_and_restarted_runs_match_an_uninterrupted_run(tmp_path):
    ref = str(tmp_path / "ref")
    assert mini_train.run(ref, TOTAL, EVERY) == TOTAL
    expected = load_state_dict_file(os.path.join(ref, "final.pt"))

    path = str(tmp_path / "killed")
    rng = random.Random(1234)
    for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGKILL):
        rc = _run_until(path, rng.randint(3, 9), sig)
        assert rc == (0 if sig == signal.SIGTERM else -signal.SIGKILL)
        if sig == signal.SIGTERM:
            assert RunRecord(Workdir(path)).read()["status"] == "preempted"
    child = _start(path)
    child.communicate(timeout=120)
    assert child.returncode == 0
    got = load_state_dict_file(os.path.join(path, "final.pt"))
    assert list(got) == list(expected)
    assert all(torch.equal(got[k], expected[k]) for k in got)
    assert RunRecord(Workdir(path)).read()["status"] == "completed"
    assert not Workdir(path).exists("LOCK")
