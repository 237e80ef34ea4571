"""CheckpointManager on local disk and memory://: round trip, async, retention, corruption."""

from __future__ import annotations

import copy
import json
import logging
import os
import pickle

import numpy as np
import pytest
import torch

from runstate_util import (assert_same, full_state, load_full_state, make_setup, params_equal,
                           train_steps)
from trm.run.checkpoints import (CheckpointError, CheckpointManager, capture_rng_state,
                            export_state_dict, load_state_dict_file, restore_rng_state, step_dir)
from trm.run.workdir import Workdir


@pytest.fixture(params=["local", "memory"])
def workdir(request, tmp_path):
    return Workdir(str(tmp_path / "run") if request.param == "local" else "memory://run")


@pytest.mark.parametrize("async_save", [True, False])
def test_round_trip_is_bitwise_and_resume_is_exact(workdir, async_save):
    model, opt = make_setup()
    train_steps(model, opt, 3)
    state = full_state(model, opt, step=3)
    expected = copy.deepcopy(state)
    mgr = CheckpointManager(workdir, async_save=async_save)
    mgr.save(3, state, metrics={"loss": 1.5})
    mgr.close()

    # Reference: continue the original run without stopping.
    train_steps(model, opt, 4)

    mgr2 = CheckpointManager(workdir.path)
    step, restored = mgr2.restore()
    assert step == 3 and mgr2.restored_step == 3
    assert_same(expected, restored)
    model2, opt2 = make_setup(seed=123)
    load_full_state(model2, opt2, restored)
    train_steps(model2, opt2, 4)
    assert params_equal(model, model2)
    assert_same(opt.state_dict(), opt2.state_dict())
    info = mgr2.commit_info(3)
    assert info["metrics"] == {"loss": 1.5} and info["step"] == 3
    assert info["files"]["state.pt"]["size"] == workdir.size(f"{step_dir(3)}/state.pt")


def test_async_save_does_not_see_later_mutations(workdir):
    w = torch.zeros(512, 512)
    arr = np.zeros(1000)
    mgr = CheckpointManager(workdir, async_save=True)
    mgr.save(1, {"w": w, "arr": arr, "nested": [{"w_again": w}]})
    w.add_(1.0)            # training continues while the save runs
    arr += 1.0
    mgr.wait()
    _, state = mgr.restore()
    assert float(state["w"].abs().sum()) == 0.0 and float(np.abs(state["arr"]).sum()) == 0.0
    assert state["nested"][0]["w_again"] is state["w"]   # sharing is preserved
    assert mgr.last_save_stats["bytes"] > 512 * 512 * 4
    assert mgr.last_save_stats["sync_s"] <= mgr.last_save_stats["total_s"]


def test_keep_k_and_best(workdir):
    mgr = CheckpointManager(workdir, keep=2, best_metric="acc", best_mode="max")
    accs = {100: 0.1, 200: 0.9, 300: 0.2, 400: 0.3}
    for step, acc in accs.items():
        mgr.save(step, {"x": torch.tensor(step)}, metrics={"acc": acc})
    assert mgr.steps() == [200, 300, 400] and mgr.best_step() == 200
    mgr.save(500, {"x": torch.tensor(500)})                 # eval comes later
    assert mgr.steps() == [200, 400, 500]
    mgr.record_metrics(500, {"acc": 0.95})                  # new best: 200 can go
    assert mgr.best_step() == 500 and mgr.steps() == [400, 500]
    assert mgr.restore("best")[0] == 500
    assert not workdir.exists(step_dir(200))
    # A fresh manager reads the recorded metrics from the COMMIT markers.
    assert CheckpointManager(workdir.path, best_metric="acc").best_step() == 500


def test_never_deletes_restored_from_or_best(workdir):
    mgr = CheckpointManager(workdir, keep=1, best_metric="loss", best_mode="min")
    for step, loss in [(1, 5.0), (2, 1.0), (3, 4.0)]:
        mgr.save(step, {"x": torch.tensor(step)}, metrics={"loss": loss})
    assert mgr.steps() == [2, 3]
    mgr2 = CheckpointManager(workdir.path, keep=1, best_metric="loss", best_mode="min")
    assert mgr2.restore()[0] == 3
    for step in (4, 5, 6):
        mgr2.save(step, {"x": torch.tensor(step)}, metrics={"loss": 3.0})
    assert mgr2.steps() == [2, 3, 6]       # best (2), restored-from (3), last 1 (6)
    mgr2.close()


def test_saving_the_restored_step_again_is_a_no_op(workdir):
    mgr = CheckpointManager(workdir)
    mgr.save(5, {"x": torch.tensor(5)})
    mgr.close()
    mgr2 = CheckpointManager(workdir.path, best_metric="acc")
    assert mgr2.restore()[0] == 5
    mtime_marker = workdir.read_bytes(f"{step_dir(5)}/state.pt")
    mgr2.save(5, {"x": torch.tensor(-1)}, metrics={"acc": 0.5})
    assert workdir.read_bytes(f"{step_dir(5)}/state.pt") == mtime_marker
    assert mgr2.commit_info(5)["metrics"] == {"acc": 0.5} and mgr2.best_step() == 5


def test_resume_from_older_step_retires_abandoned_newer_checkpoints(workdir, caplog):
    mgr = CheckpointManager(workdir, keep=5)
    for step in (10, 20, 30):
        mgr.save(step, {"x": torch.tensor(step)})
    mgr.close()  # the save of step 30 runs in the background until here
    mgr2 = CheckpointManager(workdir.path, keep=5)
    assert mgr2.restore(10)[0] == 10
    with caplog.at_level(logging.WARNING):
        mgr2.save(15, {"x": torch.tensor(15)})
        mgr2.wait()
    assert mgr2.steps() == [10, 15]
    assert "newer than the step just saved" in caplog.text


def _save_three(workdir):
    mgr = CheckpointManager(workdir)
    for step in (1, 2, 3):
        mgr.save(step, {"x": torch.full((1000,), float(step))})
    mgr.close()


def test_truncated_checkpoint_is_skipped_with_warning(workdir, caplog):
    _save_three(workdir)
    name = f"{step_dir(3)}/state.pt"
    data = workdir.read_bytes(name)
    workdir.write_bytes(name, data[: len(data) // 2])
    mgr = CheckpointManager(workdir.path)
    with caplog.at_level(logging.WARNING):
        step, state = mgr.restore()
    assert step == 2 and float(state["x"][0]) == 2.0
    assert "step_000000003" in caplog.text and "truncated" in caplog.text
    with pytest.raises(CheckpointError, match="step_000000003"):
        mgr.restore(3)
    # The next save of step 3 replaces the corrupt one.
    mgr.save(3, {"x": torch.full((1000,), 33.0)})
    mgr.wait()
    assert float(CheckpointManager(workdir.path).restore()[1]["x"][0]) == 33.0


def test_checkpoint_without_commit_is_invisible_and_skipped(workdir, caplog):
    _save_three(workdir)
    workdir.remove(f"{step_dir(3)}/COMMIT")
    workdir.write_bytes(f"{step_dir(4)}/state.pt", b"partial upload")   # crashed mid-save
    mgr = CheckpointManager(workdir.path)
    assert mgr.steps() == [1, 2] and mgr.latest_step() == 2
    with caplog.at_level(logging.WARNING):
        assert mgr.restore()[0] == 2
    assert "step_000000003" in caplog.text and "no COMMIT" in caplog.text
    mgr.save(5, {"x": torch.zeros(1)})     # garbage of interrupted saves is cleaned up
    mgr.wait()
    assert workdir.listdir("checkpoints") == ["step_000000001", "step_000000002",
                                              "step_000000005"]


def test_bitflip_and_undeserializable_are_skipped(workdir, caplog):
    _save_three(workdir)
    name = f"{step_dir(3)}/state.pt"
    data = bytearray(workdir.read_bytes(name))
    data[len(data) // 2] ^= 0xFF
    workdir.write_bytes(name, bytes(data))
    # Step 2: valid checksums over bytes that are not a checkpoint.
    garbage = b"not a torch file"
    import hashlib
    workdir.write_bytes(f"{step_dir(2)}/state.pt", garbage)
    commit = workdir.read_json(f"{step_dir(2)}/COMMIT")
    commit["files"]["state.pt"] = {"size": len(garbage),
                                   "sha256": hashlib.sha256(garbage).hexdigest()}
    workdir.write_json(f"{step_dir(2)}/COMMIT", commit)
    with caplog.at_level(logging.WARNING):
        step, _ = CheckpointManager(workdir.path).restore()
    assert step == 1
    assert "sha256" in caplog.text and "step_000000002" in caplog.text


def test_empty_workdir_restores_none(workdir):
    mgr = CheckpointManager(workdir)
    assert mgr.restore() is None and mgr.latest_step() is None and mgr.steps() == []


def test_background_error_is_raised_on_next_call(workdir):
    mgr = CheckpointManager(workdir, async_save=True)

    class Unpicklable:
        def __reduce__(self):
            raise pickle.PicklingError("cannot pickle this")

        def __deepcopy__(self, memo):
            return self

    mgr.save(1, {"bad": Unpicklable()})      # returns: the failure is in the background
    with pytest.raises(CheckpointError, match="step 1"):
        mgr.save(2, {"x": torch.zeros(1)})
    assert mgr.steps() == []
    mgr.save(2, {"x": torch.zeros(1)})
    mgr.close()
    assert mgr.steps() == [2]


class _Flaky:
    """Wraps an fsspec filesystem; write opens fail ``n`` times with ``exc``."""

    def __init__(self, fs, n, exc):
        self._fs, self.left, self.exc, self.calls = fs, n, exc, 0

    def open(self, path, mode="rb", **kw):
        if "w" in mode or "x" in mode:
            self.calls += 1
            if self.left > 0:
                self.left -= 1
                raise self.exc
        return self._fs.open(path, mode, **kw)

    def __getattr__(self, name):
        return getattr(self._fs, name)


def test_transient_errors_are_retried(caplog):
    wd = Workdir("memory://flaky")
    wd.fs = _Flaky(wd.fs, 3, ConnectionResetError("connection reset by peer"))
    mgr = CheckpointManager(wd, max_retries=5, retry_base_delay_s=0.01)
    with caplog.at_level(logging.WARNING):
        mgr.save(7, {"x": torch.arange(10)})
        mgr.wait()
    assert "retry 3/5" in caplog.text
    assert mgr.restore()[0] == 7


def test_retries_exhausted_leave_nothing_visible():
    wd = Workdir("memory://flaky2")
    flaky = _Flaky(wd.fs, 100, TimeoutError("timed out"))
    wd.fs = flaky
    mgr = CheckpointManager(wd, max_retries=2, retry_base_delay_s=0.01)
    mgr.save(1, {"x": torch.zeros(3)})
    with pytest.raises(CheckpointError, match="TimeoutError"):
        mgr.wait()
    assert flaky.calls == 3 and mgr.steps() == []
    flaky.left = 0
    mgr.save(1, {"x": torch.zeros(3)})
    assert mgr.restore()[0] == 1


def test_permanent_errors_are_not_retried():
    wd = Workdir("memory://perm")
    flaky = _Flaky(wd.fs, 1, PermissionError("forbidden"))
    wd.fs = flaky
    mgr = CheckpointManager(wd, async_save=False, retry_base_delay_s=0.01)
    with pytest.raises(PermissionError):
        mgr.save(1, {"x": torch.zeros(3)})
    assert flaky.calls == 1


def test_rng_capture_restore_round_trip():
    import random

    state = capture_rng_state()
    a = (random.random(), float(np.random.rand()), float(torch.rand(())))
    restore_rng_state(json.loads(json.dumps({"python": state["python"]})) | {
        "numpy": state["numpy"], "torch": state["torch"]})
    b = (random.random(), float(np.random.rand()), float(torch.rand(())))
    assert a == b
    assert "xla" not in capture_rng_state("cpu")


def test_export_state_dict(workdir, tmp_path):
    model, opt = make_setup()
    train_steps(model, opt, 1)
    out = f"{workdir.path}/export/model.pt" if not workdir.is_local else \
        os.path.join(workdir.path, "export", "model.pt")
    export_state_dict(model, out)
    loaded = load_state_dict_file(out)
    assert_same(dict(model.state_dict()), loaded)
    # From a training state, EMA weights overlaid on the model's.
    state = full_state(model, opt, 1)
    export_state_dict(state, out, ema=True)
    loaded = load_state_dict_file(out)
    for k, v in model.state_dict().items():
        expected = state["ema"]["shadow"].get(k, v)
        assert torch.equal(loaded[k], expected)
    fresh, _ = make_setup(seed=5)
    fresh.load_state_dict(loaded)


def test_timeout_message_names_a_commit_that_was_in_flight(tmp_path):
    """When the storage goes down while a COMMIT is being written, the trainer cannot know
    whether it landed; the stop message says so instead of claiming the steps are lost."""
    from trm.run.checkpoints import CheckpointManager
    mgr = CheckpointManager(str(tmp_path / "wd"), async_save=False)
    mgr.save(10, {"w": torch.zeros(2)})
    mgr._commit_in_flight = 20
    text = str(mgr._timeout_error(30))
    assert "the last committed checkpoint is step 10" in text
    assert "unless the COMMIT of step 20" in text and "resumes from step 20" in text
    mgr._commit_in_flight = None
    assert "unless" not in str(mgr._timeout_error(30))
