"""The preflight (trm.preflight, ``trm.train --dry_run``): every bad value fails with the one
line a real start prints, before anything runs; a workdir's state is read from a real run."""

import io
import json
import os
import subprocess
import sys

import pytest

from train_helpers import tiny_bindings
from trm import preflight

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BAD = [  # binding -> what the one line must say
    ("TRAIN_STEPS=0", "TRAIN_STEPS=0"),
    ("LR=-1", "LR=-1"),
    ("FORWARD_DTYPE='fp16'", "FORWARD_DTYPE='fp16' is not a dtype"),
    ("HIDDEN_SIZE=63", "hidden_size 63 is not divisible"),
    ("TRAIN_STEP=3", "Did you mean TRAIN_STEPS"),
    ("LR=abc", "'abc' is not a gin value"),
    ("GLOBAL_BATCH_SIZE=0", "GLOBAL_BATCH_SIZE=0"),
    ("EVAL_EVERY=-5", "EVAL_EVERY=-5"),
    ("trm.TrainConfig.halting_rng='dice'", "halting_rng='dice'"),
    ("optimizer.adam_atan2.betas=(0.9, 1.5)", "Cannot build the loss, optimizers"),
    ("EMA_RATE=2.0", "Cannot build the loss, optimizers"),
    ("H_CYCLES=[", "Syntax error"),
]


def _env(tmp_path):
    return dict(os.environ, OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="3",
                TRM_DATA_ROOT=str(tmp_path))


@pytest.mark.parametrize("binding,expected", BAD)
def test_bad_value_is_one_line_before_anything_runs(binding, expected):
    result = preflight.check_run(["quickstart.gin"], [binding])
    assert not result["ok"]
    assert expected in result["error"] and "\n" not in result["error"], result["error"]


def test_dry_run_cli_exits_1_with_the_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "trm.train", "--gin_file=quickstart.gin",
                          "--gin_param=LR=-1", "--dry_run"], capture_output=True, text=True,
                         cwd=REPO, env=_env(tmp_path), timeout=300)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1].startswith("trm.train: LR=-1")
    assert "Traceback" not in out.stderr


def test_good_config_summary_sizes_the_model_without_data():
    found = preflight.check_config(["quickstart.gin"], ["HIDDEN_SIZE=48"])
    assert found.summary["hidden_size"] == 48 and found.num_params > 0
    assert found.shape_source.startswith("task macros")
    assert "HIDDEN_SIZE = 48" in found.config_text


def test_workdir_states_from_a_real_run(sudoku4, tmp_path):
    from trm.train import train
    bindings = tiny_bindings(sudoku4, steps=3)
    workdir = str(tmp_path / "run")
    assert preflight.check_run(["cpu_e1_1_baseline.gin"], bindings, workdir)["state"] == "new"
    train(["cpu_e1_1_baseline.gin"], bindings, workdir, progress=False)
    done = preflight.check_run(["cpu_e1_1_baseline.gin"], bindings, workdir)
    assert done["ok"] and done["state"] == "completed", done
    longer = preflight.check_run(["cpu_e1_1_baseline.gin"],
                                 tiny_bindings(sudoku4, steps=30), workdir)
    assert longer["state"] == "conflict" and "another config" in longer["detail"]
    with open(os.path.join(workdir, "run.json")) as f:
        run = json.load(f)
    run["status"] = "preempted"
    with open(os.path.join(workdir, "run.json"), "w") as f:
        json.dump(run, f)
    assert preflight.check_run(["cpu_e1_1_baseline.gin"], bindings, workdir)["state"] == "resume"
    with open(os.path.join(workdir, "run.json"), "w") as f:
        f.write('{"status": "comp')
    broken = preflight.check_run(["cpu_e1_1_baseline.gin"], bindings, workdir)
    assert broken["state"] == "invalid" and not broken["ok"]


def test_dry_run_names_the_workdir_state(sudoku4, tmp_path):
    from trm.train import train
    bindings = tiny_bindings(sudoku4, steps=3)
    workdir = str(tmp_path / "run")
    train(["cpu_e1_1_baseline.gin"], bindings, workdir, progress=False)
    args = [sys.executable, "-m", "trm.train", "--gin_file=cpu_e1_1_baseline.gin", "--dry_run",
            f"--workdir={workdir}", *[f"--gin_param={b}" for b in bindings]]
    same = subprocess.run(args, capture_output=True, text=True, cwd=REPO, env=_env(tmp_path),
                          timeout=300)
    assert same.returncode == 0, same.stderr[-2000:]
    assert f"workdir {workdir}: completed" in same.stdout
    other = subprocess.run(args + ["--gin_param=LR=5e-4"], capture_output=True, text=True,
                           cwd=REPO, env=_env(tmp_path), timeout=300)
    assert other.returncode == 1 and "another config" in other.stderr.splitlines()[-1]


def test_module_reads_runs_on_stdin():
    runs = [{"name": "good", "gin_files": ["quickstart.gin"], "bindings": []},
            {"name": "bad", "gin_files": ["quickstart.gin"], "bindings": ["LR=-1"]}]
    out = io.StringIO()
    assert preflight.main(io.StringIO(json.dumps(runs)), out) == 1
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r["name"], r["ok"]) for r in lines] == [("good", True), ("bad", False)]
    assert preflight.main(io.StringIO("{}"), io.StringIO()) == 2


def test_local_launcher_skips_only_the_same_finished_run(sudoku4, tmp_path, monkeypatch,
                                                          capsys):
    """launchers.local with the real trainer: a finished run is skipped; the same run name
    asked for with a longer schedule (a smoke run in the study's folder) is refused with one
    line before anything starts, not reported as done."""
    from launchers import local
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("TRM_DATA_ROOT", str(tmp_path))
    tiny = [b for b in tiny_bindings(sudoku4) if not b.startswith(("TRAIN_STEPS", "HALT_MAX"))]
    sweep = tmp_path / "smoke.json"
    sweep.write_text(json.dumps({"gin_files": ["cpu_e1_1_baseline.gin"], "fixed": tiny,
                                 "grid": {"HALT_MAX_STEPS": [2]}}))
    args = [f"--sweep={sweep}", f"--root={tmp_path / 'runs'}"]
    assert local.main(args + ["--gin_param=TRAIN_STEPS=2"]) == 0
    run_json = json.loads((tmp_path / "runs" / "smoke" / "halt_max_steps2_s0" /
                           "run.json").read_text())
    assert run_json["status"] == "completed" and run_json["last_step"] == 2
    capsys.readouterr()
    assert local.main(args + ["--gin_param=TRAIN_STEPS=2"]) == 0
    assert "skip smoke/halt_max_steps2_s0: completed" in capsys.readouterr().out
    assert local.main(args + ["--gin_param=TRAIN_STEPS=4"]) == 2
    err = capsys.readouterr().err
    assert "smoke/halt_max_steps2_s0" in err and "another config" in err
