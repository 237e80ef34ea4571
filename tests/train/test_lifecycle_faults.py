"""Faults and bad input across a run's lifecycle (issue #10): every case ends in a completed run
or one clear line, nothing already written is lost, nothing outside the run is touched.

Real trainer, real checkpoint files, real CLIs in subprocesses; read-only and full disks are
real (bind mounts and a small tmpfs, skipped where the machine cannot mount).
"""

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from train_helpers import tiny_bindings
from trm.train import train

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GIN = "cpu_e1_1_baseline.gin"


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="3")


def _cli(module, *args, timeout=600):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          cwd=REPO, env=_env(), timeout=timeout)


def _train_cli(workdir, bindings, *extra):
    return _cli("trm.train", f"--gin_file={GIN}", f"--workdir={workdir}", "--noprogress",
                *[f"--gin_param={b}" for b in bindings], *extra)


def _one_line_error(proc, *needles):
    """The process failed with one line on stderr's last line, no traceback."""
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    for needle in needles:
        assert needle in last, (needle, last)
    return last


class _Marker:
    """Unpickling this calls open(path, "w"): a marker file proves code ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _plant(workdir, step, marker):
    """Replaces a committed checkpoint's state with a malicious pickle and a matching COMMIT."""
    folder = os.path.join(workdir, "checkpoints", f"step_{step:09d}")
    state = {"step": step, "model": {}, "payload": _Marker(str(marker))}
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    with open(os.path.join(folder, "state.pt"), "wb") as f:
        f.write(data)
    commit_path = os.path.join(folder, "COMMIT")
    commit = json.load(open(commit_path))
    commit["files"]["state.pt"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    with open(commit_path, "w") as f:
        json.dump(commit, f)
    return os.path.join(folder, "state.pt")


# -- 1. loading never runs code -----------------------------------------------------------------
@pytest.mark.slow
def test_planted_pickle_is_refused_by_resume_and_eval(sudoku4, tmp_path):
    wd = str(tmp_path / "run")
    bindings = tiny_bindings(sudoku4, steps=4, extra=["CHECKPOINT_EVERY=2"])
    train([GIN], bindings, wd, progress=False)
    marker = tmp_path / "PWNED"
    state_file = _plant(wd, 4, marker)
    longer = tiny_bindings(sudoku4, steps=6, extra=["CHECKPOINT_EVERY=2"])
    resume = _train_cli(wd, longer, "--allow_config_change")
    _one_line_error(resume, state_file, "--trust_checkpoint")
    evaluation = _cli("trm.eval", f"--workdir={wd}", "--checkpoint=4")
    _one_line_error(evaluation, state_file, "--trust_checkpoint")
    latest = _cli("trm.eval", f"--workdir={wd}")  # latest: refused, not silently skipped
    _one_line_error(latest, state_file)
    assert not marker.exists()
    run = json.load(open(os.path.join(wd, "run.json")))
    assert run["status"] == "completed"  # the refused relaunch did not mark it failed


def test_exported_state_dict_with_code_is_refused(tmp_path):
    from trm.run.checkpoints import UnsafeCheckpointError, load_state_dict_file
    marker = tmp_path / "PWNED"
    path = tmp_path / "model.pt"
    torch.save({"w": torch.ones(2), "x": _Marker(str(marker))}, path)
    with pytest.raises(UnsafeCheckpointError, match="model.pt"):
        load_state_dict_file(str(path))
    assert not marker.exists()


# -- 2 is in test_train.py (test_a_diverged_run_never_poisons_its_checkpoints) -------------------
# -- 3. a failed or refused start never damages a workdir ---------------------------------------
def test_failed_starts_write_nothing_and_the_corrected_start_runs(sudoku4, tmp_path):
    from trm.trainer import TrainingError
    wd = tmp_path / "run"
    missing = tiny_bindings(str(tmp_path / "no_such_data"), steps=3)
    with pytest.raises(TrainingError, match="Cannot load the training data"):
        train([GIN], missing, str(wd), progress=False)
    bad_size = tiny_bindings(sudoku4, steps=3, extra=["HIDDEN_SIZE=0"])
    with pytest.raises(TrainingError, match=r"model.trm.hidden_size \(HIDDEN_SIZE\) must be >= 1"):
        train([GIN], bad_size, str(wd), progress=False)
    assert not wd.exists() or sorted(os.listdir(wd)) == []
    # the corrected start needs no --allow_config_change: nothing of the failed ones is there
    result = train([GIN], tiny_bindings(sudoku4, steps=3, extra=["HIDDEN_SIZE=16"]), str(wd),
                   progress=False)
    assert result["status"] == "completed"


def test_incompatible_config_change_is_refused_before_anything_is_replaced(sudoku4, tmp_path):
    from trm.eval import evaluate_run
    from trm.trainer import TrainingError
    wd = str(tmp_path / "run")
    train([GIN], tiny_bindings(sudoku4, steps=4, extra=["CHECKPOINT_EVERY=2"]), wd,
          progress=False)
    config_before = open(os.path.join(wd, "config.gin")).read()
    run_before = open(os.path.join(wd, "run.json")).read()
    wider = tiny_bindings(sudoku4, steps=8, extra=["CHECKPOINT_EVERY=2", "HIDDEN_SIZE=48"])
    with pytest.raises(TrainingError, match=r"different shapes: .*\(32,\) -> \(48,\)|"
                                            r"different shapes: .*32.*48"):
        train([GIN], wider, wd, progress=False, allow_config_change=True)
    assert open(os.path.join(wd, "config.gin")).read() == config_before
    assert not [n for n in os.listdir(wd) if n.startswith("config.gin.prev")]
    assert json.loads(open(os.path.join(wd, "run.json")).read())["status"] == "completed"
    assert json.loads(run_before)["last_step"] == 4
    res = evaluate_run(wd, output_json=str(tmp_path / "eval.json"))  # still evaluates
    assert res["step"] == 4 and res["metrics"]["eval/count"] == 48
    # a compatible change (more steps, another LR) is allowed and continues
    longer = tiny_bindings(sudoku4, steps=8, extra=["CHECKPOINT_EVERY=2", "LR=5e-4"])
    result = train([GIN], longer, wd, progress=False, allow_config_change=True)
    assert result["status"] == "completed" and result["step"] == 8
    assert [n for n in os.listdir(wd) if n.startswith("config.gin.prev")]


def test_rerun_of_a_completed_run_cli_says_so_and_exits_0(sudoku4, tmp_path):
    wd = str(tmp_path / "run")
    bindings = tiny_bindings(sudoku4, steps=2)
    train([GIN], bindings, wd, progress=False)
    again = _cli("trm.train", f"--gin_file={GIN}", f"--workdir={wd}",
                 *[f"--gin_param={b}" for b in bindings])
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.strip().splitlines() == [
        f"{wd}: this run is already completed (step 2 of 2); nothing to do."]


# -- 4. settings are validated before anything runs ---------------------------------------------
@pytest.mark.parametrize("binding,needle", [
    ("TRAIN_STEPS=0", "TRAIN_STEPS=0 (TrainConfig.train_steps) must be >= 1"),
    ("GLOBAL_BATCH_SIZE='16'", "GLOBAL_BATCH_SIZE='16' (TrainConfig.global_batch_size) must be "
                               "an integer"),
    ("LR=-1.0", "LR=-1.0 (TrainConfig.lr) must be >= 0"),
    ("EVAL_BATCH_SIZE=0", "EVAL_BATCH_SIZE=0"),
    ("NUM_HEADS='2'", "model.trm.num_heads (NUM_HEADS) must be an integer"),
    ("H_CYCLES=0", "model.trm.H_cycles (H_CYCLES) must be >= 1"),
    ("DEVICE='tpu'", "DEVICE='tpu' is not a device"),
])
def test_bad_settings_are_one_line_errors(sudoku4, tmp_path, binding, needle):
    wd = tmp_path / "run"
    proc = _train_cli(str(wd), tiny_bindings(sudoku4, steps=2, extra=[binding]))
    _one_line_error(proc, needle)
    assert not wd.exists() or os.listdir(wd) == []


def test_xla_without_torch_xla_is_an_error_naming_the_extra(sudoku4, tmp_path):
    try:
        import torch_xla  # noqa: F401
        pytest.skip("torch_xla is installed in this venv")
    except ImportError:
        pass
    proc = _train_cli(str(tmp_path / "run"), tiny_bindings(sudoku4, steps=2) + ["DEVICE='xla'"])
    _one_line_error(proc, "torch_xla", "trm[tpu]")


def test_gin_syntax_error_is_one_line(tmp_path):
    bad = tmp_path / "bad.gin"
    bad.write_text("include 'runs/cpu.gin'\nHIDDEN_SIZE = = 3\n")
    proc = _cli("trm.train", f"--gin_file={bad}", f"--workdir={tmp_path / 'run'}")
    _one_line_error(proc, str(bad))


# -- 7. one-line errors for the common mistakes --------------------------------------------------
def test_workdir_that_is_a_file(sudoku4, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    proc = _train_cli(str(f), tiny_bindings(sudoku4, steps=2))
    _one_line_error(proc, "is a file")
    assert f.read_text() == "x"


def test_missing_checkpoint_step_for_eval(sudoku4, tmp_path):
    wd = str(tmp_path / "run")
    train([GIN], tiny_bindings(sudoku4, steps=2), wd, progress=False)
    proc = _cli("trm.eval", f"--workdir={wd}", "--checkpoint=7")
    _one_line_error(proc, "step_000000007", "no such checkpoint")
    proc = _cli("trm.eval", f"--workdir={wd}", "--tag=../../x")
    _one_line_error(proc, "--tag")
    proc = _cli("trm.eval", f"--workdir={tmp_path / 'nothing'}")
    _one_line_error(proc, "nothing")


@contextlib.contextmanager
def _mount(*args):
    target = args[-1]
    os.makedirs(target, exist_ok=True)
    proc = subprocess.run(["mount", *args], capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"cannot mount here: {proc.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", target], capture_output=True)


def test_eval_of_a_read_only_workdir_with_output_elsewhere(sudoku4, tmp_path):
    wd = str(tmp_path / "run")
    train([GIN], tiny_bindings(sudoku4, steps=2), wd, progress=False)
    ro = str(tmp_path / "ro")
    with _mount("--bind", wd, ro):
        remount = subprocess.run(["mount", "-o", "remount,bind,ro", ro], capture_output=True)
        if remount.returncode:
            pytest.skip("cannot remount read-only here")
        out = tmp_path / "metrics.json"
        proc = _cli("trm.eval", f"--workdir={ro}", f"--output_json={out}", "--noprogress")
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert json.loads(out.read_text())["metrics"]["eval/count"] == 48
        # training into a read-only workdir: one line
        again = _train_cli(ro, tiny_bindings(sudoku4, steps=4), "--allow_config_change")
        _one_line_error(again, ro)


def test_disk_full_while_saving_keeps_what_was_committed(sudoku4, tmp_path):
    small = str(tmp_path / "small")
    with _mount("-t", "tmpfs", "-o", "size=320k", "tmpfs", small):
        wd = os.path.join(small, "run")
        proc = _train_cli(wd, tiny_bindings(sudoku4, steps=8, extra=["CHECKPOINT_EVERY=1",
                                                                      "KEEP_CHECKPOINTS=0"]))
        last = _one_line_error(proc, "no space left on the device")
        from trm.run.checkpoints import CheckpointManager
        steps = CheckpointManager(wd, async_save=False).steps()
        for step in steps:  # whatever was committed is whole
            assert CheckpointManager(wd, async_save=False).restore(step)[0] == step
        if steps:
            assert f"step {max(steps)}" in last


def test_test_split_of_another_task_is_one_line(sudoku4, tmp_path):
    from trm.data import ensure_dataset
    other = str(tmp_path / "sudoku6")
    ensure_dataset(other, "sudoku_gen", box="2x3", num_train=20, num_test=8, blanks=10,
                   num_aug=1, seed=0)
    proc = _train_cli(str(tmp_path / "run"), tiny_bindings(sudoku4, steps=2) + [
        f"trm.TrainConfig.test_data_dir='{other}'"])
    _one_line_error(proc, "seq_len", "different tasks")
    assert not (tmp_path / "run").exists() or os.listdir(tmp_path / "run") == []


# -- issue #21: a stop during a long evaluation saves the last good state ------------------------
def test_sigterm_during_a_long_evaluation_saves_and_records_preempted(sudoku4, tmp_path):
    import signal
    import time
    wd = str(tmp_path / "run")
    # 48 test puzzles one per batch, 400 ACT steps each: the evaluation alone takes many times
    # the 2 s exit grace window
    slow_eval = tiny_bindings(sudoku4, steps=4, extra=["EVAL_BATCH_SIZE=1",
                                                       "EVAL_HALT_MAX_STEPS=400"])
    args = [sys.executable, "-m", "trm.train", f"--gin_file={GIN}", f"--workdir={wd}",
            *[f"--gin_param={b}" for b in slow_eval]]
    child = subprocess.Popen(args, cwd=REPO, env=dict(_env(), TRM_EXIT_GRACE_S="2"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in child.stdout:                      # the last step's log line: eval next
            if line.startswith("step 4/4"):
                break
        time.sleep(3.0)                                # well inside the evaluation
        child.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        _, err = child.communicate(timeout=120)
        took = time.monotonic() - sent
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, err[-3000:]
    assert took < 10, took
    assert "The evaluation at step 4 was stopped" in err, err[-3000:]
    assert "Traceback" not in err
    run = json.load(open(os.path.join(wd, "run.json")))
    assert run["status"] == "preempted" and run["last_step"] == 4
    assert not os.path.exists(os.path.join(wd, "LOCK"))
    from trm.run.checkpoints import CheckpointManager
    assert CheckpointManager(wd, async_save=False).steps() == [4]
    # the same command (here with a quicker evaluation) evaluates the last step and completes
    quick = tiny_bindings(sudoku4, steps=4, extra=["EVAL_BATCH_SIZE=16"])
    result = train([GIN], quick, wd, progress=False, allow_config_change=True)
    assert result["status"] == "completed" and result["eval"]["eval/count"] == 48
    run = json.load(open(os.path.join(wd, "run.json")))
    assert run["status"] == "completed" and run["last_eval_step"] == 4


# -- issue #21: an EMA changed at resume is applied, not silently wrong ------------------------
def _ckpt(wd, step):
    from trm.run.checkpoints import CheckpointManager
    return CheckpointManager(wd, async_save=False).restore(step)[1]


@pytest.mark.parametrize("before,after", [
    (["EMA_RATE=0.9"], ["EMA_RATE=0.5"]),             # a new rate
    (["EMA=False"], ["EMA=True", "EMA_RATE=0.5"]),    # switched on
])
def test_an_ema_changed_at_resume_is_applied_and_recorded(sudoku4, tmp_path, before, after):
    wd = str(tmp_path / "run")
    train([GIN], tiny_bindings(sudoku4, steps=4, extra=["CHECKPOINT_EVERY=1", *before]), wd,
          progress=False)
    s4 = _ckpt(wd, 4)
    train([GIN], tiny_bindings(sudoku4, steps=5, extra=["CHECKPOINT_EVERY=1", *after]), wd,
          progress=False, allow_config_change=True)
    s5 = _ckpt(wd, 5)
    assert s5["ema"]["rate"] == 0.5
    # one EMA step at the new rate from the saved shadow, or from the restored weights when
    # the EMA was off (never from the random initial weights)
    base = s4["ema"]["shadow"] if s4["ema"] is not None else s4["model"]
    for name, value in s5["ema"]["shadow"].items():
        expected = 0.5 * base[name] + 0.5 * s5["model"][name]
        assert torch.allclose(value, expected, atol=1e-6), name
    changes = json.load(open(os.path.join(wd, "run.json")))["ema_changes"]
    assert len(changes) == 1 and changes[0]["step"] == 4
    assert ("rate 0.9 -> 0.5" if s4["ema"] is not None else "switched on") in changes[0]["change"]


# -- issue #21: hash-valid but broken checkpoints, corrupt run.json: one line, never "good" ------
def _rewrite(workdir, step, state):
    """Replaces a committed checkpoint's state, with a COMMIT that matches it (hash-valid)."""
    folder = os.path.join(workdir, "checkpoints", f"step_{step:09d}")
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    with open(os.path.join(folder, "state.pt"), "wb") as f:
        f.write(data)
    commit_path = os.path.join(folder, "COMMIT")
    commit = json.load(open(commit_path))
    commit["files"]["state.pt"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    with open(commit_path, "w") as f:
        json.dump(commit, f)


@pytest.mark.slow
def test_broken_checkpoints_and_run_json_are_one_line_errors(sudoku4, tmp_path):
    from trm.run.checkpoints import CheckpointManager
    wd = str(tmp_path / "run")
    bindings = tiny_bindings(sudoku4, steps=4, extra=["CHECKPOINT_EVERY=2"])
    train([GIN], bindings, wd, progress=False)
    state = CheckpointManager(wd, async_save=False).restore(4)[1]
    state["model"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                      for k, v in state["model"].items()}
    _rewrite(wd, 4, state)                                   # NaN weights, hash-valid
    proc = _cli("trm.eval", f"--workdir={wd}", "--checkpoint=4")
    _one_line_error(proc, "step_000000004", "non-finite weights")
    longer = tiny_bindings(sudoku4, steps=6, extra=["CHECKPOINT_EVERY=2"])
    resumed = _train_cli(wd, longer, "--allow_config_change")  # from step 2, the last good one
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "step_000000004" in resumed.stderr and "non-finite" in resumed.stderr
    run = json.load(open(os.path.join(wd, "run.json")))
    assert run["status"] == "completed" and run["resumed_at_step"] == 2
    _rewrite(wd, 6, {"step": 6, "model": [1, 2]})           # broken structure, hash-valid
    proc = _cli("trm.eval", f"--workdir={wd}", "--checkpoint=6")
    _one_line_error(proc, "step_000000006", "no model weights")
    with open(os.path.join(wd, "run.json"), "w") as f:
        f.write('{"status": "compl')                           # truncated
    again = _train_cli(wd, tiny_bindings(sudoku4, steps=8, extra=["CHECKPOINT_EVERY=2"]),
                       "--allow_config_change")
    _one_line_error(again, "run.json", "move it aside")
    assert not os.path.exists(os.path.join(wd, "LOCK"))


def test_resume_past_a_commit_naming_a_fifo_never_hangs(sudoku4, tmp_path):
    """Issue #21: a COMMIT whose file is a FIFO (or ../.., /dev/zero) used to hang the resume
    for good, with LOCK held. Now the checkpoint is skipped and the run resumes from the one
    before it."""
    wd = str(tmp_path / "run")
    train([GIN], tiny_bindings(sudoku4, steps=4, extra=["CHECKPOINT_EVERY=2"]), wd,
          progress=False)
    state = os.path.join(wd, "checkpoints", "step_000000004", "state.pt")
    os.unlink(state)
    os.mkfifo(state)
    proc = _train_cli(wd, tiny_bindings(sudoku4, steps=6, extra=["CHECKPOINT_EVERY=2"]),
                      "--allow_config_change")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step_000000004" in proc.stderr and "not a regular file" in proc.stderr
    run = json.load(open(os.path.join(wd, "run.json")))
    assert run["status"] == "completed" and run["resumed_at_step"] == 2
    assert not os.path.exists(os.path.join(wd, "LOCK"))


def test_eval_never_writes_through_a_link_out_of_the_workdir(sudoku4, tmp_path):
    wd = str(tmp_path / "run")
    train([GIN], tiny_bindings(sudoku4, steps=2), wd, progress=False)
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.rmtree(os.path.join(wd, "eval"))
    os.symlink(outside, os.path.join(wd, "eval"))             # planted
    proc = _cli("trm.eval", f"--workdir={wd}", "--noprogress")
    _one_line_error(proc, "leads out of", "symbolic link")
    assert os.listdir(outside) == []
    out = tmp_path / "metrics.json"                            # an explicit output still works
    proc = _cli("trm.eval", f"--workdir={wd}", f"--output_json={out}", "--noprogress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text())["metrics"]["eval/count"] == 48
    shutil.rmtree(os.path.join(wd, "tb"))                      # TensorBoard: the same
    os.symlink(outside, os.path.join(wd, "tb"))
    proc = _train_cli(wd, tiny_bindings(sudoku4, steps=4), "--allow_config_change")
    _one_line_error(proc, "leads out of", "Remove the link")
    assert os.listdir(outside) == []
