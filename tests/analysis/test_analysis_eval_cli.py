"""trm.eval beside a real (resumed) training run: its results never enter the training curves,
every setting keeps its own outputs, and --checkpoint=best follows run.json's best."""

import json
import os

import pytest

from analysis import load_runs

TINY = ["HIDDEN_SIZE=32", "NUM_HEADS=2", "H_CYCLES=1", "L_CYCLES=1", "HALT_MAX_STEPS=2",
        "PUZZLE_EMB_LEN=1", "GLOBAL_BATCH_SIZE=16", "EVAL_BATCH_SIZE=16", "LOG_EVERY=5",
        "EVAL_EVERY=10", "CHECKPOINT_EVERY=10", "LR_WARMUP_STEPS=5",
        "FORWARD_DTYPE='float32'", "DEVICE='cpu'", "trm.TrainConfig.dataset_builder=None"]


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory):
    """A real run trained to step 10, then resumed to step 20 (a second events file)."""
    from trm.data import ensure_dataset
    from trm.train import train

    root = tmp_path_factory.mktemp("evalcli")
    data = str(root / "sudoku4")
    ensure_dataset(data, "sudoku_gen", box="2x2", num_train=64, num_test=16, blanks=6,
                   num_aug=2, seed=0, num_shards=2)
    wd = str(root / "runs" / "tiny")
    for steps in (10, 20):
        train(["cpu_e1_1_baseline.gin"], TINY + [f"DATA_DIR='{data}'", f"TRAIN_STEPS={steps}"],
              wd, allow_config_change=True, progress=False)
    return wd


def test_eval_cli_stays_beside_the_training_curves(resumed_run):
    from trm.eval import evaluate_run

    before = load_runs(resumed_run)
    settings = []
    for depth in (1, 2):
        res = evaluate_run(resumed_run, checkpoint="10",
                           bindings=[f"EVAL_HALT_MAX_STEPS={depth}"])
        settings.append(res["setting"])
        assert res["json"] == os.path.join(resumed_run, "eval", "cli", res["setting"] + ".json")
    assert settings == ["step_000000010_ema_EVAL_HALT_MAX_STEPS=1",
                        "step_000000010_ema_EVAL_HALT_MAX_STEPS=2"]
    for name in settings:  # one JSON and one TensorBoard run per setting: nothing overwritten
        with open(os.path.join(resumed_run, "eval", "cli", name + ".json")) as f:
            assert json.load(f)["eval_halt_max_steps"] == int(name[-1])
        assert os.listdir(os.path.join(resumed_run, "tb", "eval_cli", name))
    after = load_runs(resumed_run)
    cols = ["tag", "step", "value"]
    assert after.scalars[cols].equals(before.scalars[cols])  # the curves are untouched
    loss = after.curve("train/lm_loss")
    assert loss["step"].tolist() == [5, 10, 15, 20]
    assert set(after.curve("perf/step_time_s")["step"]) >= {15, 20}
    cli = after.eval_cli
    assert sorted(set(cli["setting"])) == settings and set(cli["step"]) == {10}
    assert set(cli["tag"]) >= {"eval_cli/exact_accuracy", "eval_cli/count"}
    assert not after.scalars["tag"].str.startswith("eval_cli").any()


def test_checkpoint_best_follows_run_json_on_ties(resumed_run):
    from trm.eval import evaluate_run
    from trm.run.checkpoints import CheckpointManager
    from trm.run.workdir import Workdir

    with open(os.path.join(resumed_run, "run.json")) as f:
        best = json.load(f)["best"]
    mgr = CheckpointManager(Workdir(resumed_run), keep=0, best_metric=best["metric"])
    values = [mgr.commit_info(s)["metrics"][best["metric"]] for s in mgr.steps()]
    assert mgr.steps() == [10, 20] and values[0] == values[1]  # a tie (no puzzle solved yet)
    res = evaluate_run(resumed_run, checkpoint="best", skip_eval=True)
    assert res["step"] == best["step"] == 10  # run.json's rule: the earlier step


def test_setting_names_are_unique_per_setting():
    from trm.eval import setting_name

    assert setting_name(30, "ema", "", ["EVAL_HALT_MAX_STEPS=32"]) == (
        "step_000000030_ema_EVAL_HALT_MAX_STEPS=32")
    assert setting_name(30, "raw", "deep", []) == "step_000000030_raw_deep"
    # bindings whose plain slugs would collide keep apart through the hash of their text
    a = setting_name(30, "ema", "", ["X='a b'"])
    b = setting_name(30, "ema", "", ["X='a-b'"])
    assert a != b and a.startswith("step_000000030_ema_X=-a-b_") and "/" not in a + b
    long = setting_name(30, "ema", "", [f"A{i}={i}" for i in range(40)])
    assert len(long) <= 120 and long != setting_name(30, "ema", "", [f"A{i}={i}"
                                                                       for i in range(41)])


def test_report_lists_eval_cli_results_in_a_table_of_their_own(resumed_run, tmp_path):
    from analysis import report
    from trm.eval import evaluate_run

    res = evaluate_run(resumed_run, checkpoint="20", tag="rep")
    runs = load_runs(resumed_run)
    out = report.build_report(runs, str(tmp_path / "rep"), n_boot=10)
    rows = [r for r in out["eval_cli"] if r["setting"] == res["setting"]]
    assert len(rows) == 1 and rows[0]["step"] == 20
    assert rows[0]["exact_accuracy"] == res["metrics"]["eval/exact_accuracy"]
    assert rows[0]["count"] == 16 and rows[0]["ci_method"] == "wilson"
    md = open(tmp_path / "rep" / "RESULTS.md").read()
    assert "## `python -m trm.eval` results" in md and res["setting"] in md
