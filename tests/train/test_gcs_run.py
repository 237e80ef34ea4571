"""A run whose workdir is on gs:// (a real local GCS emulator): configs, run.json, TensorBoard
sync, checkpoints with keep-K/best, resume, and the eval CLI reading it back."""

import json

import fsspec
import pytest

from train_helpers import tiny_bindings
from trm.train import train


@pytest.mark.slow
def test_training_run_on_gs_workdir_saves_syncs_and_resumes(sudoku4, gcs_bucket, tmp_path):
    url = f"{gcs_bucket}/runs/tiny"
    bindings = tiny_bindings(sudoku4, steps=8, extra=[
        "CHECKPOINT_EVERY=2", "EVAL_EVERY=4", "LOG_EVERY=2", "KEEP_CHECKPOINTS=1"])
    out = train(["cpu_e1_1_baseline.gin"], bindings, url, progress=False)
    assert out["status"] == "completed"
    fs = fsspec.filesystem("gs", token="anon")
    fs.invalidate_cache()
    root = url[len("gs://"):]
    names = {p.rsplit("/", 1)[-1] for p in fs.ls(root)}
    assert {"run.json", "config.gin", "operative_config.gin", "command.json", "tb",
            "checkpoints", "eval"} <= names, names
    run = json.loads(fs.cat(f"{root}/run.json"))
    assert run["status"] == "completed" and run["last_step"] == 8
    events = fs.find(f"{root}/tb")
    assert any("events.out.tfevents" in e for e in events), events
    ckpts = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{root}/checkpoints"))
    # keep the last one plus the best (by eval/exact_accuracy at step 4 or 8)
    assert "step_000000008" in ckpts and len(ckpts) <= 2, ckpts
    # a longer run on the same workdir resumes from step 8
    more = train(["cpu_e1_1_baseline.gin"], tiny_bindings(sudoku4, steps=10, extra=[
        "CHECKPOINT_EVERY=2", "EVAL_EVERY=4", "LOG_EVERY=2", "KEEP_CHECKPOINTS=1"]), url,
        allow_config_change=True, progress=False)
    assert more["step"] == 10
    fs.invalidate_cache()
    assert json.loads(fs.cat(f"{root}/run.json"))["resumed_at_step"] == 8
    from trm.eval import evaluate_run
    res = evaluate_run(url, checkpoint="best", output_json=str(tmp_path / "m.json"))
    assert res["metrics"]["eval/count"] == 48
