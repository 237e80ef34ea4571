"""Failures that only process 0 sees (its lock, its config check, its writes) end every process
of a multi-process run quickly with the same one-line error (issue #20 item 3): two real
``trm.train`` processes in a gloo group, started without torchrun (whose agent would end the
other rank and hide a rank left waiting in a collective, as nothing does on a TPU pod)."""

import contextlib
import os
import subprocess
import time

import pytest

from ranks import finish, start_ranks, train_args
from train_helpers import tiny_bindings
from trm.train import train

GIN = "cpu_e1_1_baseline.gin"
BOUND_S = 240  # far below the process group's 30-minute timeout: nobody waits for it


def _both_end_alike(procs, *needles):
    t0 = time.time()
    results = finish(procs, timeout=BOUND_S)
    lasts = []
    for rc, out, err in results:
        assert rc != 0, out[-2000:]
        assert "Traceback" not in err, err[-3000:]
        assert "trm.train: " in err, err[-3000:]
        # the error (a config mismatch adds the differing lines below its first line)
        lasts.append(err[err.rindex("trm.train: "):].strip())
    # on a difference, every process's whole stderr (a crash at exit dumps its threads there)
    assert lasts[0] == lasts[1], "\n\n".join(f"process {i} (exit code {rc}):\n{err}"
                                               for i, (rc, _, err) in enumerate(results))
    for needle in needles:
        assert needle in lasts[0], (needle, lasts[0])
    assert time.time() - t0 < BOUND_S
    return lasts[0]


def _bindings(sudoku4, steps=4, extra=()):
    return tiny_bindings(sudoku4, steps=steps, extra=["GLOBAL_BATCH_SIZE=16",
                                                      "EVAL_BATCH_SIZE=16", *extra])


@pytest.mark.slow
def test_lock_held_by_another_run(sudoku4, tmp_path):
    from trm.run.workdir import Workdir
    wd = str(tmp_path / "run")
    holder = Workdir(wd)
    holder.acquire_lock({"who": "the test"}, background=False)  # a live owner on this host
    try:
        _both_end_alike(start_ranks(train_args(wd, _bindings(sudoku4))), "is in use")
    finally:
        holder.release_lock()


@pytest.mark.slow
def test_config_mismatch_at_resume(sudoku4, tmp_path):
    wd = str(tmp_path / "run")
    train([GIN], _bindings(sudoku4, steps=2), wd, progress=False)
    procs = start_ranks(train_args(wd, _bindings(sudoku4, extra=["LR=5e-3"])))
    _both_end_alike(procs, "another configuration")


# Counts the trainers still alive when the interpreter starts to exit (atexit runs before its
# last collection), then runs trm.train as `python -m trm.train` would.
_ALIVE_AT_EXIT = """
import atexit, gc, runpy, sys
def count():
    from trm.trainer import Trainer
    alive = sum(isinstance(o, Trainer) for o in gc.get_objects())
    print(f"trainers alive at exit: {alive}", file=sys.stderr, flush=True)
atexit.register(count)
sys.argv = ["trm.train"] + sys.argv[1:]
runpy.run_module("trm.train", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
def test_a_failed_run_frees_its_trainer_before_the_interpreter_exits(sudoku4, tmp_path):
    """The trainer (model, data pipeline, process group buffers) sits in reference cycles: a
    run that fails with a one-line error frees it before exiting. Left to the interpreter's
    last collection, it was torn down while the interpreter was half gone, which aborted a
    process of a multi-process run now and then after its error line ("terminate called
    without an active exception", the config-mismatch test's flake)."""
    import sys
    from ranks import REPO
    wd = str(tmp_path / "run")
    train([GIN], _bindings(sudoku4, steps=2), wd, progress=False)
    r = subprocess.run([sys.executable, "-c", _ALIVE_AT_EXIT,
                        *train_args(wd, _bindings(sudoku4, extra=["LR=5e-3"]))],
                       cwd=REPO, capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="3"))
    assert r.returncode == 1 and "another configuration" in r.stderr, r.stderr[-3000:]
    assert "trainers alive at exit: 0" in r.stderr, r.stderr[-3000:]


@pytest.mark.slow
def test_storage_error_at_start(sudoku4, tmp_path):
    (tmp_path / "plain_file").write_text("not a folder")
    wd = str(tmp_path / "plain_file" / "run")  # process 0 cannot create its lock there
    _both_end_alike(start_ranks(train_args(wd, _bindings(sudoku4))), "Cannot write")


@pytest.mark.slow
def test_failed_dataset_build(tmp_path):
    """Process 0 builds the dataset; its failure reaches the other process, so both exit with
    the builder's error instead of one waiting at the barrier."""
    bindings = ["GLOBAL_BATCH_SIZE=16", "EVAL_BATCH_SIZE=16", "TRAIN_STEPS=2", "DEVICE='cpu'",
                f"DATA_DIR='{tmp_path}/data/bad'", "SUDOKU_BLANKS=99"]
    procs = start_ranks(train_args(str(tmp_path / "run"), bindings),
                        env={"TRM_DATA_ROOT": str(tmp_path)})
    _both_end_alike(procs, "failed on process 0", "blanks must be in [0, 81), got 99")
    assert not os.path.exists(tmp_path / "data" / "bad" / "train")  # nothing half-built left


@contextlib.contextmanager
def _small_tmpfs(target, size):
    os.makedirs(target, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", target],
                          capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"cannot mount here: {proc.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", target], capture_output=True)


@pytest.mark.slow
def test_storage_error_while_saving(sudoku4, tmp_path):
    with _small_tmpfs(str(tmp_path / "small"), "320k") as small:
        wd = os.path.join(small, "run")
        procs = start_ranks(train_args(wd, _bindings(sudoku4, steps=8, extra=[
            "CHECKPOINT_EVERY=1", "KEEP_CHECKPOINTS=0"])))
        _both_end_alike(procs, "no space left on the device")



def test_a_trainer_that_fails_to_start_shuts_down_the_runtime_it_started(sudoku4, tmp_path,
                                                                          monkeypatch):
    """An error raised while the Trainer is built (a refused workdir, a config invalid for the
    process count) comes after its runtime (the process group) started, and the caller gets no
    trainer to shut down: the Trainer shuts down a runtime it started itself, never one passed
    in (its process group would otherwise outlive the error into the interpreter's exit)."""
    import trm.trainer
    from trm import gin_edge
    from trm.errors import TrmError
    from trm.runtime.distributed import Runtime, local_runtime
    shut = []
    monkeypatch.setattr(Runtime, "shutdown", lambda self: shut.append(self))
    monkeypatch.setattr(trm.trainer, "init_runtime", lambda device="auto": local_runtime("cpu"))

    def refused(*args, **kwargs):
        raise TrmError("refused")
    monkeypatch.setattr(trm.trainer, "RunSession", refused)
    gin_edge.clear()
    gin_edge.parse([GIN], _bindings(sudoku4))
    cfg = gin_edge.build_train_config()
    with pytest.raises(TrmError, match="refused"):
        trm.trainer.Trainer(cfg, str(tmp_path / "run"))
    assert len(shut) == 1          # the one it started
    mine = local_runtime("cpu")
    with pytest.raises(TrmError, match="refused"):
        trm.trainer.Trainer(cfg, str(tmp_path / "run"), runtime=mine)
    assert len(shut) == 1          # not the caller's
