"""The study pipeline end to end at CI scale: a 2-run sweep through launchers.local with the
real trainer, then analysis (load, compare, report) on what it wrote."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = ["HIDDEN_SIZE=16", "NUM_HEADS=2", "H_CYCLES=1", "L_CYCLES=1", "HALT_MAX_STEPS=2",
        "TRAIN_STEPS=6", "LOG_EVERY=2", "EVAL_EVERY=3", "CHECKPOINT_EVERY=3",
        "NUM_TRAIN_PUZZLES=40", "NUM_TEST_PUZZLES=16", "NUM_AUG=1", "GLOBAL_BATCH_SIZE=8",
        "EVAL_BATCH_SIZE=16"]


def _run(args, env):
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=1200)


@pytest.mark.slow
def test_local_sweep_then_report(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="3",
               TRM_DATA_ROOT=str(tmp_path / "data"), MPLBACKEND="Agg")
    root = tmp_path / "runs"
    args = ["launchers.local", "--sweep=cpu_e2_1_ema", f"--root={root}", "--seeds=0"]
    args += [f"--gin_param={b}" for b in TINY]
    r = _run(args, env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    runs = sorted(p.parent.relative_to(root).as_posix() for p in root.rglob("run.json"))
    assert runs == ["cpu_e2_1_ema/ema_off_s0", "cpu_e2_1_ema/ema_on_s0"], runs
    for run in runs:
        status = json.loads((root / run / "run.json").read_text())
        assert status["status"] == "completed" and status["last_step"] == 6
    again = _run(args, env)  # finished runs are skipped
    assert again.returncode == 0 and "skip" in (again.stdout + again.stderr).lower()

    from analysis import load_runs
    loaded = load_runs(str(root))
    summary = loaded.summary.set_index("run")
    assert len(summary) == 2
    assert set(summary["ema"]) == {True, False}
    assert (summary["status"] == "completed").all()
    final = summary["final_eval_exact_accuracy"]
    assert final.notna().all()

    table = _run(["analysis.compare", f"--runs={root}", "--group_by=ema"], env)
    assert table.returncode == 0, table.stderr[-3000:]
    assert "ema" in table.stdout

    out = tmp_path / "report"
    rep = _run(["analysis.report", f"--runs={root}", f"--out={out}"], env)
    assert rep.returncode == 0, rep.stderr[-3000:]
    assert (out / "RESULTS.md").exists()
    numbers = json.loads((out / "results.json").read_text())
    assert numbers["overview"]["n_runs"] == 2 and numbers["overview"]["n_seeds"] == 1
    by_run = {r["run"]: r for r in numbers["runs"]}
    column = numbers["value_column"]
    for run, value in final.items():
        assert by_run[run][column] == pytest.approx(value)
        assert by_run[run]["last_step"] == 6
