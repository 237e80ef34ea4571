"""Exact resume with the real trainer: SIGKILL / SIGTERM at random points, restarts, and the
final weights equal (bitwise) those of an uninterrupted run."""

import glob
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from train_helpers import tiny_bindings

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 40


def _cmd(workdir, bindings):
    return [sys.executable, "-m", "trm.train", "--gin_file=cpu_e1_1_baseline.gin",
            f"--workdir={workdir}", "--noprogress", *[f"--gin_param={b}" for b in bindings]]


def _bindings(data):
    # exploration on (random halting draws must be restored too), EMA on, eval mid-run
    return tiny_bindings(data, steps=STEPS, extra=[
        "CHECKPOINT_EVERY=4", "EVAL_EVERY=12", "LOG_EVERY=4", "HALT_EXPLORATION_PROB=0.5",
        "HALT_MAX_STEPS=3", "LR=3e-3", "KEEP_CHECKPOINTS=2"])


def _env(tmp_path):
    return dict(os.environ, OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="3",
                TRM_DATA_ROOT=str(tmp_path))


def _final_state(workdir):
    from trm.run.checkpoints import CheckpointManager
    step, state = CheckpointManager(workdir, async_save=False).restore("latest")
    assert step == STEPS
    return state


def _assert_same_state(a, b):
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in a["ema"]["shadow"]:
        assert torch.equal(a["ema"]["shadow"][k], b["ema"]["shadow"][k]), k
    for sa, sb in zip(a["optimizers"], b["optimizers"]):
        for pid, st in sa["state"].items():
            for name, t in st.items():
                assert torch.equal(t, sb["state"][pid][name]), (pid, name)
    ca, cb = a["per_process"][0]["carry"], b["per_process"][0]["carry"]
    for k in ca:
        assert torch.equal(ca[k], cb[k]), k


@pytest.fixture(scope="module")
def reference_run(sudoku4, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("uninterrupted")
    wd = str(tmp / "run")
    r = subprocess.run(_cmd(wd, _bindings(sudoku4)), cwd=REPO, env=_env(tmp),
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return _final_state(wd)


def _committed(workdir):
    return sorted(glob.glob(os.path.join(workdir, "checkpoints", "step_*", "COMMIT")))


def _latest_committed_step(workdir):
    """The step of the newest committed checkpoint (-1 when none). Progress is measured by it,
    not by the number of checkpoints: retention keeps that number at 2-3, so a run that had
    committed 3 before its first interruption looked like one that never progressed again."""
    steps = [int(os.path.basename(os.path.dirname(c)).split("_")[-1]) for c in _committed(workdir)]
    return max(steps, default=-1)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_interrupted_run_ends_bitwise_equal(sig, sudoku4, reference_run, tmp_path):
    rng = random.Random(1234 + int(sig))
    wd = str(tmp_path / "run")
    interruptions, clean_preemptions = 0, 0
    for attempt in range(12):
        proc = subprocess.Popen(_cmd(wd, _bindings(sudoku4)), cwd=REPO, env=_env(tmp_path),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if interruptions < 3:
            # wait for progress beyond what is already committed, then a random extra delay
            before = _latest_committed_step(wd)
            deadline = time.time() + 300
            while (_latest_committed_step(wd) <= before and proc.poll() is None
                   and time.time() < deadline):
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 0.6))
            if proc.poll() is None:
                proc.send_signal(sig)
                interruptions += 1
        _, err = proc.communicate(timeout=600)
        status = json.load(open(os.path.join(wd, "run.json")))["status"]
        # SIGKILL always kills; SIGTERM makes the trainer finish the step, checkpoint and exit 0
        # with status "preempted" (the default action only applies when it arrives after the
        # run has already completed and the handler is gone).
        assert proc.returncode in (0, -sig), err[-3000:]
        if sig == signal.SIGTERM and proc.returncode == 0 and status == "preempted":
            clean_preemptions += 1
        if status == "completed":
            break
    else:
        pytest.fail("run did not complete")
    if sig == signal.SIGTERM:
        assert clean_preemptions >= 1
    assert interruptions >= 2
    _assert_same_state(_final_state(wd), reference_run)
    # retention kept the last 2 plus the best
    assert len(_committed(wd)) <= 3


def test_resume_refuses_a_changed_config(sudoku4, tmp_path):
    from trm.train import train
    from trm.trainer import TrainingError
    wd = str(tmp_path / "run")
    train(["cpu_e1_1_baseline.gin"], tiny_bindings(sudoku4, steps=2, extra=[
        "CHECKPOINT_EVERY=1"]), wd, progress=False)
    with pytest.raises(TrainingError, match="another configuration"):
        train(["cpu_e1_1_baseline.gin"], tiny_bindings(sudoku4, steps=4, extra=[
            "CHECKPOINT_EVERY=1", "LR=5e-3"]), wd, progress=False)
    out = train(["cpu_e1_1_baseline.gin"], tiny_bindings(sudoku4, steps=4, extra=[
        "CHECKPOINT_EVERY=1", "LR=5e-3"]), wd, allow_config_change=True, progress=False)
    assert out["step"] == 4


def test_corrupt_latest_checkpoint_falls_back_to_previous(sudoku4, tmp_path, caplog):
    from trm.train import train
    wd = str(tmp_path / "run")
    train(["cpu_e1_1_baseline.gin"], tiny_bindings(sudoku4, steps=4, extra=[
        "CHECKPOINT_EVERY=2", "TRAIN_STEPS=4"]), wd, progress=False)
    state = os.path.join(wd, "checkpoints", "step_000000004", "state.pt")
    with open(state, "r+b") as f:
        f.truncate(os.path.getsize(state) // 2)
    os.remove(os.path.join(wd, "checkpoints", "step_000000002", "COMMIT")) if False else None
    out = train(["cpu_e1_1_baseline.gin"], tiny_bindings(sudoku4, steps=6, extra=[
        "CHECKPOINT_EVERY=2"]), wd, allow_config_change=True, progress=False)
    assert out["step"] == 6
    assert any("step_000000004" in r.getMessage() for r in caplog.records
               if r.levelname == "WARNING"), [r.getMessage() for r in caplog.records]
