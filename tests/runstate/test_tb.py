"""SummaryWriterSync: simple_value scalars and text, local and remote (memory://) workdirs."""

from __future__ import annotations

import os

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from trm.run.tensorboard import SummaryWriterSync
from trm.run.workdir import Workdir


def read_events(folder: str) -> EventAccumulator:
    acc = EventAccumulator(folder, size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def download(wd: Workdir, subdir: str, dest: str) -> str:
    os.makedirs(dest, exist_ok=True)
    for name in wd.listdir(subdir):
        with open(os.path.join(dest, name), "wb") as f:
            f.write(wd.read_bytes(f"{subdir}/{name}"))
    return dest


def test_local_workdir_writes_in_place(tmp_path):
    wd = Workdir(tmp_path / "run")
    with SummaryWriterSync(wd) as tb:
        tb.scalar("train/lm_loss", 2.5, 1)
        tb.scalars({"lm_loss": 2.0, "lr": 1e-4}, 2, prefix="train/")
        tb.text("config", "    a = 1", 0)
        tb.flush()
        assert tb.local_dir == os.path.join(wd.path, "tb")
    acc = read_events(os.path.join(wd.path, "tb"))
    assert [(e.step, e.value) for e in acc.Scalars("train/lm_loss")] == [(1, 2.5), (2, 2.0)]
    assert acc.Scalars("train/lr")[0].value == pytest.approx(1e-4)
    assert "config/text_summary" in acc.Tags()["tensors"]


def test_remote_sync_survives_preemption_and_resume(tmp_path):
    wd = Workdir("memory://tbrun")
    tb = SummaryWriterSync(wd, sync_every_s=3600)
    for step in range(1, 11):
        tb.scalar("train/loss", float(step), step)
    tb.flush()                                       # not due yet: nothing uploaded
    assert wd.listdir("tb") == []
    tb.sync()                                        # e.g. at a log interval
    for step in range(11, 16):
        tb.scalar("train/loss", float(step), step)   # lost: "preempted" before the next sync
    tb.writer.flush()
    first = wd.listdir("tb")
    assert len(first) == 1

    # The resumed run (restored at step 10) writes a new file and hides orphaned steps.
    tb2 = SummaryWriterSync(Workdir("memory://tbrun"), purge_step=11)
    for step in range(11, 21):
        tb2.scalar("train/loss", 100.0 + step, step)
    tb2.close()
    assert not os.path.exists(tb2.local_dir)
    names = wd.listdir("tb")
    assert len(names) == 2 and first[0] in names
    acc = read_events(download(wd, "tb", str(tmp_path / "dl")))
    points = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert points == [(s, float(s)) for s in range(1, 11)] + \
        [(s, 100.0 + s) for s in range(11, 21)]
    tb.close()


def test_rotation_bounds_reuploads():
    wd = Workdir("memory://tbrot")
    tb = SummaryWriterSync(wd, rotate_bytes=2000)
    for step in range(200):
        tb.scalar("x", step, step)
    tb.sync()
    tb.scalar("x", 999, 200)
    tb.close()
    assert len(wd.listdir("tb")) == 2
