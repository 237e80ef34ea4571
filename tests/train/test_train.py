"""The training loop on real data, real TFRecords and real TensorBoard files (CPU)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from train_helpers import tiny_bindings
from trm.train import train

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def read_scalars(workdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = {}
    for root, _, files in os.walk(os.path.join(workdir, "tb")):
        if any(f.startswith("events") for f in files):
            acc = EventAccumulator(root, size_guidance={"scalars": 0})
            acc.Reload()
            for tag in acc.Tags()["scalars"]:
                out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return {k: sorted(v) for k, v in out.items()}


@pytest.mark.slow
def test_cpu_training_learns_and_evaluates(sudoku4, tmp_path):
    wd = str(tmp_path / "run")
    result = train(["cpu_e1_1_baseline.gin"], tiny_bindings(sudoku4, steps=120, extra=[
        "HIDDEN_SIZE=64", "H_CYCLES=2", "L_CYCLES=2", "HALT_MAX_STEPS=4", "LR=3e-3",
        "PUZZLE_EMB_LR=3e-3", "LOG_EVERY=20", "EVAL_EVERY=60", "CHECKPOINT_EVERY=60"]),
        wd, progress=False)
    assert result["status"] == "completed" and result["step"] == 120
    s = read_scalars(wd)
    loss = [v for _, v in s["train/lm_loss"]]
    acc = [v for _, v in s["train/accuracy"]]
    assert loss[-1] < 0.8 * loss[0], loss
    assert acc[-1] > acc[0] + 0.1, acc
    for tag in ("train/q_halt_loss", "train/exact_accuracy", "train/q_halt_accuracy",
                "train/steps", "train/lr", "train/grad_norm", "perf/examples_per_s",
                "perf/steps_per_s", "perf/step_time_s", "eval/exact_accuracy",
                "eval/accuracy", "eval/lm_loss", "params/num_params"):
        assert tag in s, tag
    # evaluation saw each of the 48 test puzzles exactly once (16-row batches, no padding
    # counted), at steps 60 and 120
    assert [step for step, _ in s["eval/count"]] == [60, 120]
    assert all(v == 48 for _, v in s["eval/count"])
    run = json.load(open(os.path.join(wd, "run.json")))
    assert run["status"] == "completed" and run["last_step"] == 120 and run["end_time"]
    assert run["num_params"] > 0 and run["best"]["metric"] == "eval/exact_accuracy"
    # what changes results is recorded: the compute dtype and why, torch, its threads and why
    assert run["forward_dtype"] == "float32" and run["forward_dtype_rule"] == "FORWARD_DTYPE"
    assert run["torch_version"] == torch.__version__ and run["torch_threads"] >= 1
    assert run["cpu_threads_rule"].startswith(f"{run['torch_threads']} (")
    for name in ("config.gin", "operative_config.gin", "command.json"):
        assert os.path.exists(os.path.join(wd, name)), name
    assert "model.trm.hidden_size" in open(os.path.join(wd, "operative_config.gin")).read()
    # hparams.json: the effective value of every binding (bindings win over the files)
    hp = json.load(open(os.path.join(wd, "hparams.json")))
    assert hp["macros"]["HIDDEN_SIZE"] == 64 and hp["macros"]["TRAIN_STEPS"] == 120
    assert hp["bindings"]["model.trm.hidden_size"] == 64
    assert hp["bindings"]["model.trm.mixer"] == "@mixer.mlp"
    assert hp["bindings"]["trm.TrainConfig.lr"] == pytest.approx(3e-3)
    # train/lr is the LR of the logged step (warm-up of 5 steps, then constant 3e-3)
    assert [v for _, v in s["train/lr"]] == pytest.approx([3e-3] * 6)
    # evaluation and checkpoint time are logged apart from the training rates
    assert [step for step, _ in s["perf/eval_time_s"]] == [60, 120]
    assert [step for step, _ in s["perf/checkpoint_time_s"]] == [60, 120]
    assert os.path.exists(os.path.join(wd, "eval", "step_000000120", "metrics.json"))
    assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == [
        "step_000000060", "step_000000120"]


def test_eval_counts_every_example_once_with_padding(sudoku4, tmp_path):
    """48 test puzzles in batches of 20: the last batch is padded, padding never counts."""
    wd = str(tmp_path / "run")
    result = train(["cpu_e1_1_baseline.gin"], tiny_bindings(sudoku4, steps=2, extra=[
        "EVAL_BATCH_SIZE=20", "GLOBAL_BATCH_SIZE=4"]), wd, progress=False)
    assert result["eval"]["eval/count"] == 48


def test_logged_lr_is_the_lr_of_the_logged_step(sudoku4, tmp_path):
    """During warm-up the LR changes every step: the logged value is the step's own LR, not
    the mean over the log window (which would depend on LOG_EVERY)."""
    wd = str(tmp_path / "run")
    train(["cpu_e1_1_baseline.gin"], tiny_bindings(sudoku4, steps=10, extra=[
        "LR=1e-3", "LR_WARMUP_STEPS=20", "LOG_EVERY=5"]), wd, progress=False)
    s = read_scalars(wd)
    assert [step for step, _ in s["train/lr"]] == [5, 10]
    assert [v for _, v in s["train/lr"]] == pytest.approx([1e-3 * 5 / 20, 1e-3 * 10 / 20])


def test_rerun_of_a_completed_run_says_so_and_changes_nothing(sudoku4, tmp_path, capsys):
    wd = str(tmp_path / "run")
    bindings = tiny_bindings(sudoku4, steps=4)
    train(["cpu_e1_1_baseline.gin"], bindings, wd, progress=False)
    before = open(os.path.join(wd, "run.json")).read()
    tb_files = sorted(os.listdir(os.path.join(wd, "tb")))
    capsys.readouterr()
    again = train(["cpu_e1_1_baseline.gin"], bindings, wd, progress=True)
    out = capsys.readouterr().out
    assert again["status"] == "completed" and again.get("already_completed")
    assert "already completed" in out and out.count("\n") == 1
    assert open(os.path.join(wd, "run.json")).read() == before
    assert sorted(os.listdir(os.path.join(wd, "tb"))) == tb_files


def test_refused_relaunch_keeps_a_completed_run_completed(sudoku4, tmp_path):
    from trm.trainer import TrainingError
    wd = str(tmp_path / "run")
    train(["cpu_e1_1_baseline.gin"], tiny_bindings(sudoku4, steps=4), wd, progress=False)
    with pytest.raises(TrainingError, match="allow_config_change"):
        train(["cpu_e1_1_baseline.gin"], tiny_bindings(sudoku4, steps=4, extra=["LR=5e-4"]),
              wd, progress=False)
    run = json.load(open(os.path.join(wd, "run.json")))
    assert run["status"] == "completed" and "Trainin" in run["last_start_error"]


def test_end_of_run_summary(sudoku4, tmp_path, capsys):
    wd = str(tmp_path / "run")
    train(["cpu_e1_1_baseline.gin"], tiny_bindings(sudoku4, steps=4, extra=["EVAL_EVERY=4"]),
          wd, progress=True)
    out = capsys.readouterr().out
    assert "run completed at step 4/4" in out
    assert "best eval/exact_accuracy" in out and "at step 4" in out
    assert f"tensorboard --logdir {os.path.join(wd, 'tb')}" in out
    assert os.path.join(wd, "checkpoints") in out


def run_cli(args, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          cwd=kw.get("cwd", REPO), env=env, timeout=600)


@pytest.mark.slow
def test_eval_cli_other_depth_json_tensorboard_and_export(sudoku4, tmp_path):
    wd = str(tmp_path / "run")
    train(["cpu_e1_1_baseline.gin"], tiny_bindings(sudoku4, steps=6), wd, progress=False)
    out = tmp_path / "metrics.json"
    export = tmp_path / "model.pt"
    r = run_cli(["trm.eval", f"--workdir={wd}", "--checkpoint=latest",
                 "--gin_param=EVAL_HALT_MAX_STEPS=5", f"--output_json={out}",
                 f"--export_state_dict={export}", "--tag=depth5"])
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["eval_halt_max_steps"] == 5 and res["weights"] == "ema" and res["step"] == 6
    assert res["metrics"]["eval/count"] == 48
    sd = torch.load(export, weights_only=True)
    assert "core.net.layers.0.mlp.gate_up_proj.weight" in sd
    s = read_scalars(wd)
    assert "eval_cli_depth5/exact_accuracy" in s
    raw = run_cli(["trm.eval", f"--workdir={wd}", "--weights=raw", "--checkpoint=6",
                   "--skip_eval", f"--export_state_dict={tmp_path / 'raw.pt'}"])
    assert raw.returncode == 0, raw.stderr[-3000:]
    raw_sd = torch.load(tmp_path / "raw.pt", weights_only=True)
    key = "core.net.layers.0.mlp.down_proj.weight"
    assert not torch.equal(raw_sd[key], sd[key])  # EMA and raw weights differ after 6 steps


@pytest.mark.slow
def test_cli_bad_inputs_give_clear_errors(sudoku4, tmp_path):
    wd = str(tmp_path / "run")
    cases = [
        (["--gin_file=no_such.gin"], "not found"),
        (["--gin_file=cpu_e1_1_baseline.gin", "--gin_param=TRAIN_STEP=3"], "TRAIN_STEPS"),
        (["--gin_file=cpu_e1_1_baseline.gin", "--gin_param=model.trm.mixer=@mixer.conv"],
         "No configurable matching"),
        (["--gin_file=cpu_e1_1_baseline.gin", "--gin_param=model.trm.mixer='conv'"],
         "Registered mixer names: attention, mlp"),
        (["--gin_file=cpu_e1_1_baseline.gin", "--gin_param=DATA_DIR='/nonexistent/data'",
          "--gin_param=trm.TrainConfig.dataset_builder=None"], "Cannot load the training data"),
    ]
    for args, message in cases:
        r = run_cli(["trm.train", *args, f"--workdir={wd}", "--gin_param=TRAIN_STEPS=1"])
        assert r.returncode != 0, args
        assert message in r.stderr, (args, r.stderr[-2000:])
        assert "Traceback" not in r.stderr, r.stderr[-2000:]


def test_batch_not_divisible_by_world_size_is_an_error():
    from trm.trainer import TrainConfig, TrainingError
    with pytest.raises(TrainingError, match="not divisible by the number of processes"):
        TrainConfig(data_dir="x", global_batch_size=6).validate(process_count=4)


def test_second_run_on_same_workdir_refuses(sudoku4, tmp_path):
    from trm.run.lock import WorkdirLockedError
    from trm.run.workdir import Workdir
    wd = str(tmp_path / "run")
    holder = Workdir(wd)
    holder.acquire_lock({"host": "elsewhere", "pid": 1})
    try:
        with pytest.raises(WorkdirLockedError):
            train(["cpu_e1_1_baseline.gin"], tiny_bindings(sudoku4, steps=2), wd, progress=False)
    finally:
        holder.release_lock()


@pytest.mark.parametrize("lr,warmup", [("1e9", 0), ("3e2", 30)])
def test_a_diverged_run_never_poisons_its_checkpoints(sudoku4, tmp_path, lr, warmup):
    """LR far too high, a checkpoint every step: no committed state is non-finite or evaluates
    to a non-finite loss, none becomes best, the error names the step, and what it tells the
    user to do (a lower LR with --allow_config_change) resumes from the last good state."""
    import re

    from trm.eval import evaluate_run
    from trm.run.checkpoints import CheckpointManager
    from trm.trainer import TrainingError
    wd = str(tmp_path / "run")
    bindings = tiny_bindings(sudoku4, steps=12, extra=[
        f"LR={lr}", f"LR_WARMUP_STEPS={warmup}", "LOG_EVERY=4", "CHECKPOINT_EVERY=1",
        "EVAL_EVERY=2"])
    with pytest.raises(TrainingError, match=r"step (\d+)") as err:
        train(["cpu_e1_1_baseline.gin"], bindings, wd, progress=False)
    message = str(err.value)
    assert "\n" not in message and "--allow_config_change" in message
    bad = int(re.search(r"step (\d+)", message).group(1))
    run = json.load(open(os.path.join(wd, "run.json")))
    assert run["status"] == "failed" and f"step {bad}" in run["error"]
    best = run.get("best")
    assert best is None or best["value"] == best["value"]  # never NaN
    steps = CheckpointManager(wd, async_save=False).steps()
    assert all(s < bad for s in steps), (steps, bad)
    for step in steps:  # every committed state is finite and evaluates to a finite loss
        _, state = CheckpointManager(wd, async_save=False).restore(step)
        assert all(torch.isfinite(v).all() for v in state["model"].values()
                   if v.is_floating_point())
        res = evaluate_run(wd, checkpoint=str(step), output_json=str(tmp_path / f"{step}.json"))
        assert all(v == v for v in res["metrics"].values()), res["metrics"]
    # The advice works: a lower LR, with --allow_config_change, continues from the last good.
    fixed = tiny_bindings(sudoku4, steps=12, extra=[
        "LR=1e-3", f"LR_WARMUP_STEPS={warmup}", "LOG_EVERY=4", "CHECKPOINT_EVERY=1",
        "EVAL_EVERY=2"])
    result = train(["cpu_e1_1_baseline.gin"], fixed, wd, progress=False,
                   allow_config_change=True)
    assert result["status"] == "completed" and result["step"] == 12
    if steps:
        assert json.load(open(os.path.join(wd, "run.json")))["resumed_at_step"] == max(steps)


def test_reference_checkpoint_as_initial_weights(sudoku4, tmp_path):
    """A reference-format checkpoint (compiled key spelling, another puzzle-table size)
    initialises a run; with LR 0 the trained weights stay exactly the imported ones."""
    from trm.run.checkpoints import CheckpointManager
    from trm.data import load_metadata
    from trm.interop.reference import trm_key_to_reference
    from trm.models import TRM
    meta = load_metadata(sudoku4, "train")
    torch.manual_seed(123)
    source = TRM(vocab_size=meta.vocab_size, seq_len=meta.seq_len, num_puzzle_identifiers=7,
                 hidden_size=32, num_heads=2, num_layers=2, mixer="mlp", positions="none",
                 H_cycles=1, L_cycles=1, halt_max_steps=2, puzzle_emb_len=1)
    with torch.no_grad():
        source.puzzle_emb.weights.normal_()
    ref_state = {"_orig_mod." + trm_key_to_reference(k): v for k, v in
                 source.state_dict().items()}
    path = tmp_path / "step_1000"
    torch.save(ref_state, path)
    wd = str(tmp_path / "run")
    train(["cpu_e1_1_baseline.gin"], tiny_bindings(sudoku4, steps=1, extra=[
        "LR=0.0", "PUZZLE_EMB_LR=0.0", "NUM_LAYERS=2", "CHECKPOINT_EVERY=1",
        f"trm.TrainConfig.init_from_reference='{path}'"]), wd, progress=False)
    _, state = CheckpointManager(wd, async_save=False).restore("latest")
    for k, v in source.state_dict().items():
        if k == "puzzle_emb.weights":
            expected = v.mean(0, keepdim=True).expand(meta.num_puzzle_identifiers, -1)
            assert torch.allclose(state["model"][k], expected), k
        else:
            assert torch.equal(state["model"][k], v), k


def test_raw_weights_evaluated_beside_the_ema_and_longer_runs_share_the_start(sudoku4, tmp_path):
    """EVAL_RAW_WEIGHTS=True: every evaluation also scores the raw weights (eval_raw/...), the
    EMA effect within one run (issue #24). And with the constant LR after warm-up, a run's
    first steps do not depend on its length: a 40-step run's step-20 evaluation is the 20-step
    run's final one (the CPU study extends seeds to 3000 steps this way)."""
    extra = ["LR=3e-3", "EVAL_EVERY=20", "CHECKPOINT_EVERY=20", "EVAL_RAW_WEIGHTS=True",
             "EMA_RATE=0.9"]
    runs = {}
    for steps in (20, 40):
        wd = str(tmp_path / f"s{steps}")
        train(["cpu_e1_1_baseline.gin"], tiny_bindings(sudoku4, steps=steps, extra=extra), wd,
              progress=False)
        runs[steps] = read_scalars(wd)
    s = runs[40]
    assert [step for step, _ in s["eval_raw/exact_accuracy"]] == [20, 40]
    assert s["eval_raw/lm_loss"] != s["eval/lm_loss"]  # two different sets of weights
    assert all(v == 48 for _, v in s["eval_raw/count"])
    metrics = json.load(open(tmp_path / "s40" / "eval" / "step_000000040" / "metrics.json"))
    assert "eval_raw/exact_accuracy" in metrics and "eval/exact_accuracy" in metrics
    assert json.load(open(tmp_path / "s40" / "run.json"))["best"]["metric"] == \
        "eval/exact_accuracy"  # the best checkpoint is still chosen by the EMA's accuracy
    for tag in ("eval/lm_loss", "eval_raw/lm_loss", "eval/exact_accuracy"):
        assert runs[20][tag][-1] == s[tag][0], tag
