"""gs:// workdirs against a real local GCS emulator (gcp-storage-emulator), with injected faults."""

from __future__ import annotations

import copy
import logging
import threading
import time

import pytest
import torch

from runstate_util import (assert_same, full_state, load_full_state, make_setup, params_equal,
                           train_steps)
from test_tb import download, read_events
from trm.run.checkpoints import CheckpointManager, export_state_dict, load_state_dict_file, step_dir
from trm.run.tensorboard import SummaryWriterSync
from trm.run.lock import LockLostError, WorkdirLockedError
from trm.run.workdir import Workdir
from trm.run.record import RunRecord


def test_gcs_checkpoints_round_trip_retention_and_corruption(gcs_bucket, caplog):
    url = f"{gcs_bucket}/runs/e1"
    model, opt = make_setup()
    mgr = CheckpointManager(url, keep=2, best_metric="acc")
    states = {}
    for step, acc in [(1, 0.5), (2, 0.1), (3, 0.2), (4, 0.3)]:
        train_steps(model, opt, 1)
        states[step] = copy.deepcopy(full_state(model, opt, step))
        mgr.save(step, states[step], metrics={"acc": acc})
    mgr.close()
    train_steps(model, opt, 2)                       # the uninterrupted reference

    mgr2 = CheckpointManager(url, keep=2, best_metric="acc")
    assert mgr2.steps() == [1, 3, 4] and mgr2.best_step() == 1
    step, state = mgr2.restore()
    assert step == 4
    assert_same(states[4], state)
    model2, opt2 = make_setup(seed=9)
    load_full_state(model2, opt2, state)
    train_steps(model2, opt2, 2)
    assert params_equal(model, model2)
    assert mgr2.restore("best")[0] == 1

    wd = Workdir(url)
    data = wd.read_bytes(f"{step_dir(4)}/state.pt")
    wd.write_bytes(f"{step_dir(4)}/state.pt", data[:1000])          # truncated upload
    wd.remove(f"{step_dir(3)}/COMMIT")                              # interrupted save
    with caplog.at_level(logging.WARNING):
        step, _ = CheckpointManager(url).restore()
    assert step == 1
    assert "step_000000004" in caplog.text and "step_000000003" in caplog.text

    export_state_dict(state, f"{url}/export/model_ema.pt", ema=True)
    assert set(load_state_dict_file(f"{url}/export/model_ema.pt")) == set(state["model"])


def test_gcs_files_run_json_and_lock(gcs_bucket):
    url = f"{gcs_bucket}/runs/e2"
    wd = Workdir(url)
    text = "model.trm.hidden_size = 512  # units\r"     # a trailing \r survives the upload
    wd.write_text("config.gin", text)
    wd.write_text("operative_config.gin", "x = 1\n")
    wd.write_json("command.json", {"argv": ["trm.train"], "gin_files": ["/abs/e1.gin"]})
    RunRecord(wd).update(status="running", num_params=123)
    RunRecord(wd).update(last_step=7)
    fresh = Workdir(url)
    assert fresh.read_text("config.gin") == text
    assert RunRecord(fresh).read() == {"status": "running", "num_params": 123, "last_step": 7}
    assert fresh.listdir() == ["command.json", "config.gin", "operative_config.gin", "run.json"]

    wd.acquire_lock({"command": "first"})
    with pytest.raises(WorkdirLockedError, match="first"):
        Workdir(url).acquire_lock()
    wd.heartbeat(force=True)
    thief = Workdir(url)
    thief.acquire_lock(force=True)
    with pytest.raises(LockLostError):
        wd.heartbeat(force=True)
    thief.release_lock()
    assert not Workdir(url).exists("LOCK")


def test_gcs_tensorboard_sync(gcs_bucket, tmp_path):
    wd = Workdir(f"{gcs_bucket}/runs/e3")
    tb = SummaryWriterSync(wd, sync_every_s=0)
    tb.text("config", "    hidden_size = 512", 0)
    for step in range(1, 51):
        tb.scalars({"train/lm_loss": 1.0 / step, "perf/steps_per_s": 3.0}, step)
        if step % 10 == 0:
            tb.flush()                               # due every time: uploads
    uploaded = Workdir(f"{gcs_bucket}/runs/e3").listdir("tb")
    assert len(uploaded) == 1
    tb.close()
    acc = read_events(download(wd, "tb", str(tmp_path / "dl")))
    assert [e.step for e in acc.Scalars("train/lm_loss")] == list(range(1, 51))
    assert acc.Scalars("train/lm_loss")[-1].value == pytest.approx(1 / 50)


def _poll_restores(url, stop, seen, errors):
    """A concurrent reader: every restore must be a complete, verified checkpoint."""
    mgr = CheckpointManager(url)
    while not stop.is_set():
        try:
            out = mgr.restore()
            if out is not None:
                seen.add(out[0])
                assert float(out[1]["x"][0]) == float(out[0])
        except Exception as exc:
            errors.append(exc)
        time.sleep(0.05)


@pytest.mark.slow
def test_gcs_outage_during_save_is_retried(gcs_bucket, fault_proxy, caplog):
    url = f"{gcs_bucket}/runs/e4"
    writer = Workdir(url, storage_options={"endpoint_url": fault_proxy.url})
    mgr = CheckpointManager(writer, retry_base_delay_s=0.2)
    mgr.save(1, {"x": torch.full((300_000,), 1.0)})
    mgr.wait()

    stop, seen, errors = threading.Event(), set(), []
    reader = threading.Thread(target=_poll_restores, args=(url, stop, seen, errors))
    reader.start()
    try:
        fault_proxy.outage(2.5)                      # "the emulator stopped for a few seconds"
        start = time.monotonic()
        mgr.save(2, {"x": torch.full((300_000,), 2.0)})
        mgr.wait()
        assert time.monotonic() - start > 2.0
        time.sleep(0.3)
    finally:
        stop.set()
        reader.join()
    assert fault_proxy.injected, "no request hit the outage"
    assert not errors, errors
    assert seen <= {1, 2} and 2 in seen
    assert mgr.steps() == [1, 2]
    assert float(CheckpointManager(url).restore()[1]["x"][0]) == 2.0


@pytest.mark.slow
def test_gcs_lost_responses_and_503s(gcs_bucket, fault_proxy):
    url = f"{gcs_bucket}/runs/e5"
    writer = Workdir(url, storage_options={"endpoint_url": fault_proxy.url})
    mgr = CheckpointManager(writer, async_save=False, retry_base_delay_s=0.2)
    # The upload is applied by the server but the client sees a 503: retried, idempotent.
    fault_proxy.fail_next(1, after_forward=True, match=r"upload")
    mgr.save(1, {"x": torch.full((1000,), 1.0)})
    fault_proxy.fail_next(1, match=r"POST .*upload")
    mgr.save(2, {"x": torch.full((1000,), 2.0)})
    assert len(fault_proxy.injected) == 2
    assert CheckpointManager(url).steps() == [1, 2]
    assert float(CheckpointManager(url).restore()[1]["x"][0]) == 2.0
    tb = SummaryWriterSync(writer)
    tb.scalar("a", 1.0, 1)
    fault_proxy.fail_next(1, match=r"upload")
    tb.close()
    assert len(fault_proxy.injected) == 3
    assert len(Workdir(url).listdir("tb")) == 1
