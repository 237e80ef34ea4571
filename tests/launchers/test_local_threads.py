"""launchers.local's runs one at a time keep the CPU thread rule and its governor, under the
launcher's cap; runs side by side get a fixed share.

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
def test_runs_side_by_side_get_a_fixed_share(tmp_path):
    from trm.runtime.device import usable_cores
    share = max(1, usable_cores()[0] // 2)
    for run in _sweep(tmp_path / "runs", _env(tmp_path), 2).values():
        assert run["cpu_threads_rule"] == f"{share} (OMP_NUM_THREADS)"
        assert run["torch_threads"] == share
