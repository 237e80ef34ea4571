"""A gs:// runs root against a real local GCS emulator."""

import pandas as pd
import pytest

from analysis import load_runs
from analysis import reader
from analysis import testing as synth
from gcs_upload import upload_tree


def test_gs_root_loads_like_local(gcs_emulator, gcs_fs_bucket, tmp_path):
    fs, bucket = gcs_fs_bucket
    local = tmp_path / "study"
    synth.write_tiny_study(str(local), seeds=(0,), train_steps=20,
                           experiments=["e2_1_ema", "misc"])
    # a checkpoint that must not be downloaded
    ck = local / "e2_1_ema" / "ema_on_s0" / "checkpoints" / "step_000000020"
    ck.mkdir(parents=True)
    (ck / "model.pt").write_bytes(b"x" * 1000)
    (ck / "COMMIT").write_text("")
    n = upload_tree(fs, gcs_emulator, bucket, "study", str(local))
    fs.invalidate_cache()
    assert len(fs.find(f"{bucket}/study")) == n

    root = f"gs://{bucket}/study"
    assert reader.find_run_dirs(root) == ["e2_1_ema/ema_off_s0", "e2_1_ema/ema_on_s0",
                                            "misc/preempted", "misc/resumed", "misc/running",
                                            "misc/tf2_no_runjson"]
    from trm.run.storage import Storage

    fetched = []
    real_read = Storage.read_bytes

    def spy(self, name):  # every file the reader copies, through trm's storage layer
        fetched.append(name)
        return real_read(self, name)

    mp = pytest.MonkeyPatch()
    mp.setattr(Storage, "read_bytes", spy)
    try:
        remote = load_runs(root)
    finally:
        mp.undo()
    assert fetched and not any("checkpoints" in p for p in fetched)
    assert any(p.endswith("operative_config.gin") for p in fetched)
    here = load_runs(str(local))
    assert remote.ids == here.ids
    assert remote["e2_1_ema/ema_on_s0"].path == f"{root}/e2_1_ema/ema_on_s0"
    cols = ["run", "status", "last_step", "final_eval_exact_accuracy", "num_params", "T",
            "ema", "wall_time_s"]
    pd.testing.assert_frame_equal(remote.summary[cols], here.summary[cols])
    a = remote.scalars[["run", "tag", "step", "value", "wall_time"]]
    b = here.scalars[["run", "tag", "step", "value", "wall_time"]]
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))
    # a single run as the root
    one = load_runs(f"{root}/e2_1_ema/ema_off_s0")
    assert one.ids == ["ema_off_s0"] and one.summary["ema"].iloc[0] == False  # noqa: E712
