"""``python -m trm.bench_busy``: real training runs with a real busy process started during
them, governor on and off (timing is not asserted; the benchmark prints it)."""

import json
import os
import subprocess
import sys

from train_helpers import tiny_bindings

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_runs_each_mode_and_reports(sudoku4):
    params = [f"--gin_param={b}" for b in tiny_bindings(sudoku4, steps=40)]
    out = subprocess.run(
        [sys.executable, "-m", "trm.bench_busy", "--gin_file=cpu_e1_1_baseline.gin", *params,
         "--busy_after_s=1", "--interval_s=0.5", "--timeout_s=300"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("governor on: ") and lines[1].startswith("governor off: ")
    res = json.loads(lines[-1])["results"]
    assert [r["mode"] for r in res] == ["on", "off"]
    for r in res:
        assert r["rc"] == 0 and r["wall_s"] > 0 and 0.0 <= r["exact_accuracy"] <= 1.0
    assert res[1]["thread_changes"] == []   # off: the start's count is kept


def test_through_the_launcher_and_with_a_fixed_count(sudoku4):
    """--launcher: each run goes through launchers.local --parallel=1 (its own thread cap),
    and the run's output is read from the run's launcher.log; mode fixed: OMP_NUM_THREADS."""
    params = [f"--gin_param={b}" for b in tiny_bindings(sudoku4, steps=40)]
    out = subprocess.run(
        [sys.executable, "-m", "trm.bench_busy", "--gin_file=cpu_e1_1_baseline.gin", *params,
         "--gin_param=SEED=3", "--launcher", "--modes=on,fixed", "--busy_after_s=1",
         "--interval_s=0.5", "--timeout_s=300"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])["results"]
    assert [r["mode"] for r in res] == ["on", "fixed"]
    for r in res:
        assert r["launcher"] and r["rc"] == 0 and 0.0 <= r["exact_accuracy"] <= 1.0, r
    assert res[1]["thread_changes"] == []   # a fixed count: no governor


def test_bad_flags_are_one_clear_line():
    for flags, message in ((["--modes=fast"], "fast is not a mode"),
                           (["--busy_after_s=10", "--timeout_s=5"], "below --timeout_s"),
                           (["--interval_s=0"], "--interval_s must be positive")):
        out = subprocess.run([sys.executable, "-m", "trm.bench_busy", *flags], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and message in out.stderr, out.stderr
