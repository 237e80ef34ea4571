"""Signals on the TPU launch path (issue #20 item 2), rehearsed on XLA:CPU: ``trm.train`` with
PJRT_DEVICE set goes through ``torch_xla.launch`` (a spawned child process, training in its
worker thread, as on a TPU VM). A real SIGUSR1 to the launcher writes the metrics report and
the run goes on; a real SIGTERM ends it with a final checkpoint and run.json 'preempted'."""

import json
import os
import signal
import subprocess
import time

import pytest

from train_helpers import tiny_bindings

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
XLA_PYTHON = os.environ.get("TRM_XLA_PYTHON") or os.path.join(REPO, ".venv-xla", "bin", "python")


def _last_step(workdir):
    try:
        return json.load(open(os.path.join(workdir, "run.json"))).get("last_step", 0)
    except (OSError, ValueError):
        return 0


def _wait(proc, what, condition, timeout=600):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}: {proc.stderr.read()[-3000:]}")
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"timed out waiting for {what}")


def _children(pid):
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


@pytest.mark.slow
@pytest.mark.xla
def test_sigusr1_reports_and_sigterm_checkpoints_through_torch_xla_launch(sudoku4, tmp_path):
    if not os.path.exists(XLA_PYTHON):
        pytest.fail(f"No torch_xla environment at {XLA_PYTHON}: run `make install-xla`.")
    wd = str(tmp_path / "run")
    bindings = tiny_bindings(sudoku4, steps=100_000, extra=["LOG_EVERY=5", "DEVICE='xla'"])
    env = dict(os.environ, PJRT_DEVICE="CPU", OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.Popen([XLA_PYTHON, "-m", "trm.train", "--gin_file=cpu_e1_1_baseline.gin",
                             f"--workdir={wd}", "--noprogress",
                             *[f"--gin_param={b}" for b in bindings]],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        _wait(proc, "step 10", lambda: _last_step(wd) >= 10)
        assert _children(proc.pid), "training did not run in a launched child process"
        report = os.path.join(wd, "xla_metrics_report.txt")
        assert not os.path.exists(report)
        proc.send_signal(signal.SIGUSR1)
        _wait(proc, "the metrics report", lambda: os.path.exists(report), timeout=120)
        assert "CompileTime" in open(report).read()
        reported = _last_step(wd)
        _wait(proc, "more steps after the report", lambda: _last_step(wd) >= reported + 10)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    run = json.load(open(os.path.join(wd, "run.json")))
    assert run["status"] == "preempted", run
    from trm.run.checkpoints import CheckpointManager
    assert CheckpointManager(wd, async_save=False).latest_step() == run["last_step"] > reported
