"""analysis.reader: remote staging stays inside its folder (memory:// and the GCS emulator),
and the reader follows TensorBoard's own purge of a resumed run's points."""

import os
import uuid

import pytest

from analysis import load_runs, reader
from analysis import testing as synth
from gcs_upload import upload_tree

EVIL = ["r/tb/../../escape.txt", "r/tb/../../../escape.txt", "r//run.json", "r/./LOCK"]


def _upload_local(fs, prefix, local):
    for dirpath, _, files in os.walk(local):
        for name in files:
            rel = os.path.relpath(os.path.join(dirpath, name), local).replace(os.sep, "/")
            with open(os.path.join(dirpath, name), "rb") as f:
                fs.pipe_file(f"{prefix}/{rel}", f.read())


def _outside(tmp_path, dest):
    """Files written under tmp_path but outside dest."""
    return [os.path.join(d, f) for d, _, fs in os.walk(tmp_path) for f in fs
            if not os.path.join(d, f).startswith(str(dest) + os.sep)
            and "src" not in os.path.relpath(d, tmp_path).split(os.sep)]


def test_memory_staging_skips_names_that_leave_the_folder(tmp_path):
    import fsspec

    fs = fsspec.filesystem("memory")
    name = f"/h4{uuid.uuid4().hex}"
    synth.write_run(str(tmp_path / "src" / "r"), train_steps=20)
    _upload_local(fs, f"{name}/root", str(tmp_path / "src"))
    for evil in EVIL:
        fs.pipe_file(f"{name}/root/{evil}", b"pwned")
    dest = tmp_path / "stage" / "inner"
    dest.mkdir(parents=True)
    with pytest.warns(UserWarning, match="leaves its folder") as rec:
        dirs = reader.stage(f"memory://{name}/root", str(dest))
    assert dirs == ["r"]
    assert len([w for w in rec if "leaves its folder" in str(w.message)]) == len(EVIL)
    assert _outside(tmp_path, dest) == []
    assert open(dest / "r" / "run.json").read() != "pwned"
    r = load_runs(f"memory://{name}/root")
    assert r.ids == ["r"] and r.summary["last_step"].iloc[0] == 20
    fs.rm(name, recursive=True)


def test_gcs_staging_skips_names_that_leave_the_folder(gcs_emulator, gcs_fs_bucket, tmp_path,
                                                        monkeypatch):
    """GCS accepts ``..`` in object names; gcp-storage-emulator does not store them (it closes
    the connection), so the bucket's real listing gets them added, as GCS would list them."""
    from trm.run.storage import Storage

    fs, bucket = gcs_fs_bucket
    synth.write_run(str(tmp_path / "src" / "r"), train_steps=20)
    upload_tree(fs, gcs_emulator, bucket, "root", str(tmp_path / "src"))
    real_find = Storage.find
    monkeypatch.setattr(Storage, "find", lambda self, name="": real_find(self, name) + EVIL)
    dest = tmp_path / "stage"
    dest.mkdir()
    with pytest.warns(UserWarning, match="leaves its folder") as rec:
        assert reader.stage(f"gs://{bucket}/root", str(dest)) == ["r"]
    assert len([w for w in rec if "leaves its folder" in str(w.message)]) == len(EVIL)
    assert _outside(tmp_path, dest) == []
    assert sorted(os.listdir(dest / "r")) == ["command.json", "config.gin", "eval", "hparams.json",
                                              "operative_config.gin", "run.json", "tb"]
    assert load_runs(f"gs://{bucket}/root").summary["last_step"].tolist() == [20]


def test_trm_writer_resume_purges_like_tensorboard(tmp_path):
    """trm's own writer: a resumed process (purge_step) re-logs steps; TensorBoard hides the
    first process's points from that step on, and so does the reader."""
    from trm.run.tensorboard import SummaryWriterSync

    wd = str(tmp_path / "run")
    first = SummaryWriterSync(wd)
    for step in (5, 10, 15, 20):
        first.scalars({"train/lm_loss": 1.0, "perf/step_time_s": 0.1}, step)
    first.close()
    second = SummaryWriterSync(wd, purge_step=11)  # resumed from the checkpoint at step 10
    for step in (15, 20, 25):
        second.scalars({"train/lm_loss": 2.0}, step)
    second.close()
    ev = reader.read_events(os.path.join(wd, "tb"))
    loss = ev[ev["tag"] == "train/lm_loss"]
    assert list(zip(loss["step"], loss["value"])) == [(5, 1.0), (10, 1.0), (15, 2.0),
                                                      (20, 2.0), (25, 2.0)]
    # the START event purges every tag, also the ones the second process did not log again
    assert ev[ev["tag"] == "perf/step_time_s"]["step"].tolist() == [5, 10]
