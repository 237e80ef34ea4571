"""``python -m launchers.tpu_check`` rehearsed on XLA:CPU (issue #20 item 8): every check passes
through the real launch path, a failing check makes the exit code nonzero."""

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
    r = _check(tmp_path, "--steps=6")
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert _rows(r.stdout) == {name: "PASS" for name in tpu_check.CHECKS}, r.stdout
    assert "steps/s" in r.stdout and "examples/s" in r.stdout
