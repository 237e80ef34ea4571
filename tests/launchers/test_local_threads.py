"""launchers.local's runs keep the CPU thread rule and its governor, under the launcher's cap;
runs side by side as one group (TRM_CPU_GROUP).

Real processes: ``python -m launchers.local`` with the real trainer on a tiny sweep. Before,
the launcher fixed each run's count with ``OMP_NUM_THREADS``, which turned the rule and the
governor off: a ``--parallel=1`` run on two cores kept its two threads when other work took a
core, the collapse docs/BENCHMARKS.md measures (killed at 900 s against 131 s)."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TINY = ["HIDDEN_SIZE=16", "NUM_HEADS=2", "H_CYCLES=1", "L_CYCLES=1", "HALT_MAX_STEPS=2",
        "TRAIN_STEPS=4", "LOG_EVERY=2", "EVAL_EVERY=4", "CHECKPOINT_EVERY=4",
        "NUM_TRAIN_PUZZLES=40", "NUM_TEST_PUZZLES=16", "NUM_AUG=1", "GLOBAL_BATCH_SIZE=8",
        "EVAL_BATCH_SIZE=16"]


def _env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "TRM_CPU_THREADS", "TRM_CPU_THREADS_MAX")}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", TRM_DATA_ROOT=str(tmp_path / "data"), **extra)
    return env


def _sweep(root, env, parallel):
    args = [sys.executable, "-m", "launchers.local", "--sweep=cpu_e2_1_ema", f"--root={root}",
            "--seeds=0", f"--parallel={parallel}", *[f"--gin_param={b}" for b in TINY]]
    r = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return {p.parent.name: json.loads(p.read_text()) for p in root.rglob("run.json")}


@pytest.mark.slow
def test_runs_one_at_a_time_keep_the_rule_and_the_governor_under_the_launchers_cap(tmp_path):
    from analysis.reader import read_events
    from trm.runtime.device import usable_cores
    cap = usable_cores()[0]
    runs = _sweep(tmp_path / "runs", _env(tmp_path, TRM_CPU_THREADS_INTERVAL_S="0.5"), 1)
    assert sorted(runs) == ["ema_off_s0", "ema_on_s0"]
    for name, run in runs.items():
        assert run["status"] == "completed"
        # the rule chose the count, capped at the launcher's share of the cores
        assert f"at most {cap} (TRM_CPU_THREADS_MAX)" in run["cpu_threads_rule"], run
        assert 1 <= run["torch_threads"] <= cap
        # and the governor ran: it reports the thread count at every log interval
        curves = read_events(str(tmp_path / "runs" / "cpu_e2_1_ema" / name / "tb"))
        threads = curves[curves["tag"] == "perf/cpu_threads"]["value"]
        assert len(threads) >= 1 and threads.between(1, cap).all(), curves["tag"].unique()


@pytest.mark.slow
def test_runs_side_by_side_share_the_cores_as_a_group(tmp_path):
    """Runs side by side keep the rule and the governor too, under their share of the cores,
    as one group (the launcher): each counts the others' CPU time as the group's, not as other
    work, and they share what other work leaves."""
    from analysis.reader import read_events
    from trm.runtime.device import usable_cores
    share = max(1, usable_cores()[0] // 2)
    root = tmp_path / "runs"
    runs = _sweep(root, _env(tmp_path, TRM_CPU_THREADS_INTERVAL_S="0.5"), 2)
    assert sorted(runs) == ["ema_off_s0", "ema_on_s0"]
    for name, run in runs.items():
        assert run["status"] == "completed"
        rule = run["cpu_threads_rule"]
        assert f"at most {share} (TRM_CPU_THREADS_MAX)" in rule, rule
        assert "runs side by side (TRM_CPU_GROUP)" in rule, rule
        assert 1 <= run["torch_threads"] <= share
        curves = read_events(str(root / "cpu_e2_1_ema" / name / "tb"))
        threads = curves[curves["tag"] == "perf/cpu_threads"]["value"]
        assert len(threads) >= 1 and threads.between(1, share).all(), curves["tag"].unique()


def test_a_stale_group_is_one_clear_line(tmp_path):
    """A TRM_CPU_GROUP that names no ancestor (copied from a launched run's environment) stops
    a run at start with one line saying what to do."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        env = _env(tmp_path, TRM_CPU_GROUP=str(sleeper.pid))
        r = subprocess.run([sys.executable, "-m", "trm.train", "--gin_file=quickstart.gin",
                            f"--workdir={tmp_path / 'run'}",
                            *[f"--gin_param={b}" for b in TINY]],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[-1] == (
        f"trm.train: TRM_CPU_GROUP='{sleeper.pid}' is not a process this one was started "
        "under; unset it (TRM_CPU_GROUP names the process whose children run side by side; "
        "launchers.local --parallel sets it to itself)."), r.stderr[-3000:]
