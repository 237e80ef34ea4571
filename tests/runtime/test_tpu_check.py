"""``python -m launchers.tpu_check`` rehearsed on XLA:CPU (issue #20 item 8): every check passes
through the real launch path, a failing check makes the exit code nonzero."""

import json
import os
import subprocess

import pytest

from launchers import tpu_check

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
XLA_PYTHON = os.environ.get("TRM_XLA_PYTHON") or os.path.join(REPO, ".venv-xla", "bin", "python")


def _check(tmp_path, *args):
    if not os.path.exists(XLA_PYTHON):
        pytest.fail(f"No torch_xla environment at {XLA_PYTHON}: run `make install-xla`.")
    env = dict(os.environ, PJRT_DEVICE="CPU", OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=REPO)
    return subprocess.run([XLA_PYTHON, "-m", "launchers.tpu_check",
                           f"--scratch={tmp_path / 'scratch'}", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=3600)


def _rows(stdout):
    table = stdout.split("\n\n")[-2].splitlines()
    assert table[0].split()[:3] == ["check", "result", "time"], stdout
    return {line.split()[0]: line.split()[1] for line in table[1:]}


def test_without_pjrt_device_it_says_what_to_set(monkeypatch, capsys):
    monkeypatch.delenv("PJRT_DEVICE", raising=False)
    assert tpu_check.main([]) == 2
    assert "PJRT_DEVICE" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.xla
def test_a_failing_check_fails_the_preflight(tmp_path):
    r = _check(tmp_path, "--only=rng,smoke_1", "--gin_param=NO_SUCH_MACRO=1")
    assert r.returncode == 1, r.stdout + r.stderr[-2000:]
    assert _rows(r.stdout) == {"rng": "PASS", "smoke_1": "FAIL"}, r.stdout
    assert "FAILED" in r.stdout.splitlines()[-1]


@pytest.mark.slow
@pytest.mark.xla
def test_the_whole_preflight_passes_on_xla_cpu(tmp_path):
    """Every check through the real launch path. This is also the suite's test of the TPU signal
    path (issue #20 item 2: SIGUSR1 reports and training goes on, SIGTERM checkpoints, in a
    child of torch_xla.launch) and of the persistent compile cache (item 7): the checks assert
    them, and the kept scratch folder is checked here once more."""
    r = _check(tmp_path, "--steps=6", "--keep")
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert _rows(r.stdout) == {name: "PASS" for name in tpu_check.CHECKS}, r.stdout
    assert "steps/s" in r.stdout and "examples/s" in r.stdout
    scratch = tmp_path / "scratch"

    # The compile cache: smoke_1 started with an empty cache, so each graph it compiled was a
    # miss and was written; the second start (another seed, 0 included: a Python 0 in a graph
    # would be a constant) found every one of them. On XLA:CPU torch_xla 2.9 cannot load the
    # executables (DeserializeFailure, compiled again); on TPU they are hits and nothing compiles.
    first = tpu_check._report_counters(str(scratch / "smoke_1"))
    second = tpu_check._report_counters(str(scratch / "cache_second_start"))
    assert first.get("PersistentCacheMiss", 0) > 0, first
    assert os.listdir(scratch / "xla_cache" / "process_0")
    assert second.get("PersistentCacheMiss", 0) == 0, second
    found = second.get("PersistentCacheHit", 0) + second.get("PersistentCacheDeserializeFailure", 0)
    assert found == first["PersistentCacheMiss"], (first, second)

    # The signals: the report was written on SIGUSR1, the final checkpoint is the last step.
    from trm.run.checkpoints import CheckpointManager
    signals = scratch / "signals"
    run = json.load(open(signals / "run.json"))
    assert run["status"] == "preempted", run
    assert "CompileTime" in open(signals / "xla_metrics_report.txt").read()
    assert CheckpointManager(str(signals), async_save=False).latest_step() == run["last_step"] > 10
