"""XLA:CPU (torch_xla, PJRT_DEVICE=CPU) in its own virtual environment: >= 20 steps without new
graph compilations after the first few, and the same losses as the plain CPU run."""

import os
import subprocess

import pytest

from train_helpers import tiny_bindings
from test_train import read_scalars
from trm.train import train

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
XLA_PYTHON = os.environ.get("TRM_XLA_PYTHON") or os.path.join(REPO, ".venv-xla", "bin", "python")


@pytest.mark.slow
@pytest.mark.xla
def test_xla_cpu_compiles_once_and_matches_cpu(sudoku4, tmp_path):
    if not os.path.exists(XLA_PYTHON):
        pytest.fail(f"No torch_xla environment at {XLA_PYTHON}: run `make install-xla` "
                    "(make test does).")
    steps = 24
    bindings = tiny_bindings(sudoku4, steps=steps, extra=[
        "LOG_EVERY=4", "XLA_METRICS_EVERY=4", "HALT_EXPLORATION_PROB=0.0", "EVAL_EVERY=0",
        "LR=3e-3"])
    xla_wd = str(tmp_path / "xla")
    env = dict(os.environ, PJRT_DEVICE="CPU", OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="3")
    args = ["-m", "trm.train", "--gin_file=cpu_e1_1_baseline.gin", f"--workdir={xla_wd}",
            "--noprogress", *[f"--gin_param={b}" for b in bindings + ["DEVICE='xla'"]]]
    r = subprocess.run([XLA_PYTHON, *args], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=1200)
    assert r.returncode == 0, r.stderr[-4000:]
    xla = read_scalars(xla_wd)
    assert '"device": "xla' in open(os.path.join(xla_wd, "run.json")).read()
    compiles = dict(xla["xla/compile_count"])
    # every graph is compiled during the first steps; none after step 8
    assert compiles[8] == compiles[12] == compiles[16] == compiles[20] == compiles[24], compiles
    assert compiles[8] <= 12, compiles

    cpu_wd = str(tmp_path / "cpu")
    train(["cpu_e1_1_baseline.gin"], bindings, cpu_wd, progress=False)
    cpu = read_scalars(cpu_wd)
    for tag in ("train/lm_loss", "train/accuracy", "train/q_halt_loss"):
        a, b = cpu[tag], xla[tag]
        assert [s for s, _ in a] == [s for s, _ in b]
        for (s, x), (_, y) in zip(a, b):
            assert abs(x - y) <= 2e-3 + 2e-3 * abs(x), (tag, s, x, y)
