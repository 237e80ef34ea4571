"""Loading synthetic runs written to the DESIGN.md workdir contract (real event files)."""

import json
import os

import pandas as pd
import pytest

from analysis import load_runs, read_events
from analysis import reader
from analysis import testing as synth


def test_finds_nested_runs_and_parses_hparams(study_runs):
    r = study_runs
    assert len(r) == 42
    assert "e2_2_tn/t3_n6_s1" in r.ids
    s = r.summary.set_index("run")
    row = s.loc["e2_2_tn/t2_n2_s1"]
    assert (row["experiment"], row["T"], row["n"], row["seed"]) == ("e2_2_tn", 2, 2, 1)
    assert row["mixer"] == "mlp" and bool(row["ema"]) is True
    assert s.loc["e2_1_ema/ema_off_s0", "ema"] == False  # noqa: E712
    assert s.loc["e2_3_mixer/attention_s0", "mixer"] == "attention"
    assert s.loc["e3_2_data/d250_s0", "num_train_puzzles"] == 250
    assert s.loc["e3_3_lr_batch/b128_lr0.0003_s0", "lr"] == pytest.approx(3e-4)
    assert s.loc["e3_3_lr_batch/b128_lr0.0003_s0", "global_batch_size"] == 128
    # a value only operative_config.gin holds
    assert r["e2_2_tn/t3_n6_s0"].binding("trm.eval_halt_max_steps", "missing") is None
    assert r["e2_2_tn/t3_n6_s0"].binding("trm.eval_sets") == ["all", "easy", "medium", "hard"]
    assert (row["core"], row["gradient"], row["halting"]) == ("trm", "last_cycle", "halt_only")
    assert row["positions"] == "none" and row["warmup_steps"] == 10
    assert set(r.varying()) >= {"T", "n", "hidden_size", "mixer", "ema", "lr",
                                "global_batch_size", "num_train_puzzles"}


def test_summary_matches_what_was_written(study_runs, study_root):
    s = study_runs.summary.set_index("run")
    spec = synth.SyntheticRun(hidden_size=128, seed=0, train_steps=40)
    row = s.loc["e3_1_size/h128_s0"]
    assert row["status"] == "completed"
    assert (row["last_step"], row["total_steps"], row["final_eval_step"]) == (40, 40, 40)
    assert row["num_params"] == spec.num_params
    assert row["flops_per_example"] == pytest.approx(spec.flops_per_example)
    assert row["examples_seen"] == 40 * 32
    assert row["flops"] == pytest.approx(spec.flops_per_example * 40 * 32)
    assert row["wall_time_s"] == pytest.approx(40 * 0.5 + 1.0)  # run.json start -> end
    assert row["eval_count"] == 500
    # final/best from the events
    c = study_runs.curve("eval/exact_accuracy")
    c = c[c["run"] == "e3_1_size/h128_s0"]
    assert row["final_eval_exact_accuracy"] == c.sort_values("step")["value"].iloc[-1]
    assert row["best_eval_exact_accuracy"] == c["value"].max()
    loss = study_runs.curve("eval/lm_loss")
    assert row["best_eval_lm_loss"] == loss[loss["run"] == "e3_1_size/h128_s0"]["value"].min()


def test_scalars_are_tidy(study_runs):
    sc = study_runs.scalars
    for col in ["run", "experiment", "step", "tag", "kind", "set", "metric", "value",
                "wall_time", "T", "n", "seed"]:
        assert col in sc.columns
    assert not sc.duplicated(["run", "tag", "step"]).any()
    one = sc[sc["run"] == "e2_2_tn/t2_n2_s0"]
    assert set(one["kind"]) >= {"train", "eval", "perf", "params"}
    hard = one[one["tag"] == "eval/hard/exact_accuracy"]
    assert set(hard["set"]) == {"hard"} and set(hard["metric"]) == {"exact_accuracy"}
    assert set(one[one["tag"] == "eval/exact_accuracy"]["set"]) == {"all"}
    assert (one[one["tag"] == "train/lm_loss"]["step"].tolist() == list(range(5, 41, 5)))
    assert one[one["tag"] == "params/num_params"]["step"].tolist() == [0]


def test_running_interrupted_and_unknown_runs(study_runs):
    s = study_runs.summary.set_index("run")
    assert s.loc["misc/running", "status"] == "running"
    assert s.loc["misc/preempted", "status"] == "interrupted"
    assert s.loc["misc/preempted", "raw_status"] == "preempted"
    for rid in ("misc/running", "misc/preempted"):
        assert s.loc[rid, "last_step"] == 20
        assert pd.isna(s.loc[rid, "end_time"])
        assert s.loc[rid, "wall_time_s"] == pytest.approx(20 * 0.5)  # to the last event
        assert s.loc[rid, "progress"] == pytest.approx(0.5)
    nr = s.loc["misc/tf2_no_runjson"]  # TF2 tensor scalars, no run.json
    assert nr["status"] == "unknown"
    assert nr["num_params"] == synth.SyntheticRun().num_params  # from params/num_params
    assert nr["final_eval_step"] == 40 and 0 < nr["final_eval_exact_accuracy"] < 1
    assert nr["total_steps"] == 40  # from TRAIN_STEPS in config.gin


def test_resumed_run_keeps_the_later_timeline(study_root):
    tb = os.path.join(study_root, "misc", "resumed", "tb")
    assert len([f for f in os.listdir(tb) if "tfevents" in f]) == 2
    ev = read_events(tb)
    assert not ev.duplicated(["tag", "step"]).any()
    loss = ev[ev["tag"] == "train/lm_loss"].set_index("step")
    # steps 16..25 were logged by both processes; the second (later wall time) wins
    w = loss["wall_time"]
    assert w.loc[20] > w.loc[15] + 30 and w.loc[15] < w.loc[10] + 10
    assert sorted(loss.index) == list(range(5, 41, 5))


def test_more_than_ten_thousand_points(tmp_path):
    """Default EventAccumulator size guidance keeps 10,000 scalars; we keep all."""
    from torch.utils.tensorboard import SummaryWriter

    reader.prefer_tensorboard_stub()
    d = tmp_path / "big" / "tb"
    w = SummaryWriter(str(d))
    for s in range(12_500):
        w.add_scalar("train/lm_loss", 1.0 / (s + 1), s)
    w.close()
    r = load_runs(str(tmp_path))
    assert r.ids == ["big"]
    c = r.curve("train/lm_loss")
    assert len(c) == 12_500 and c["step"].max() == 12_499
    assert r.summary["status"].iloc[0] == "unknown"


def test_root_that_is_a_run_and_filters(tmp_path, minimal_root):
    one = os.path.join(minimal_root, "t2_n2_s0")
    r = load_runs(one)
    assert r.ids == ["t2_n2_s0"] and r.summary["experiment"].iloc[0] == ""
    r2 = load_runs(minimal_root, include="t3*")
    assert r2.ids == ["t3_n6_s0"]
    with pytest.raises(FileNotFoundError):
        load_runs(str(tmp_path / "missing"))
    empty = load_runs(str(tmp_path))
    assert len(empty) == 0 and len(empty.summary) == 0


def test_eval_metrics_json_fills_missing_events(tmp_path):
    p = str(tmp_path / "r")
    synth.write_run(p, train_steps=20)
    d = os.path.join(p, "eval", "step_000000020")
    with open(os.path.join(d, "metrics.json")) as f:
        m = json.load(f)
    assert m["step"] == 20 and "eval/exact_accuracy" in m  # trm.trainer's flat format
    m["eval/extra_metric"] = 0.25
    with open(os.path.join(d, "metrics.json"), "w") as f:
        json.dump(m, f)
    # nested {"all": {...}, "<set>": {...}} is understood too
    d10 = os.path.join(p, "eval", "step_000000010")
    with open(os.path.join(d10, "metrics.json"), "w") as f:
        json.dump({"all": {"extra_metric": 0.125, "count": 9}, "hard": {"extra_metric": 0.5}}, f)
    r = load_runs(str(tmp_path))
    c = r.curve("eval/extra_metric")
    assert c["value"].tolist() == [0.125, 0.25] and c["step"].tolist() == [10, 20]
    assert r.curve("eval/hard/extra_metric")["value"].tolist() == [0.5]
    assert r.summary["final_eval_extra_metric"].iloc[0] == 0.25
    # values the events already hold are not duplicated
    assert not r.scalars.duplicated(["run", "tag", "step"]).any()
    assert r.curve("eval/count")["value"].tolist() == [500.0, 500.0]


def test_select_column_and_eval_sets(study_runs):
    tn = study_runs.select(experiment="e2_2_tn")
    assert len(tn) == 10 and set(tn.scalars["experiment"]) == {"e2_2_tn"}
    assert tn.varying() == ["T", "n"]
    assert len(tn.select(T=[2, 4])) == 6
    assert len(study_runs.select(lambda s: s["status"] != "completed")) == 3
    assert set(tn.column("LOG_EVERY")) == {5}  # a raw gin macro
    assert set(tn.column("model.trm.halting")) == {"halt_only"}
    assert set(tn.column("TrainConfig.lr_warmup_steps")) == {10}  # macro resolved
    sets = tn.eval_sets("e2_2_tn/t3_n6_s0")
    assert set(sets["set"]) == {"all", "easy", "medium", "hard"}
    assert (sets["step"] == 40).all() and sets.set_index("set").loc["hard", "count"] == 166
