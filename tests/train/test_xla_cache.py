"""The persistent XLA compile cache (issue #20 item 7): a second start with another seed and
workdir finds every graph of the first in $TRM_XLA_CACHE_DIR, so it compiles nothing new.

On XLA:CPU, torch_xla 2.9's PJRT CPU client cannot deserialize executables (the lookup counts
as PersistentCacheDeserializeFailure and the graph is compiled again); on TPU the same lookup
is a PersistentCacheHit and nothing is compiled (``python -m launchers.tpu_check`` checks it)."""

import os
import subprocess

import pytest

from train_helpers import tiny_bindings
from test_train import read_scalars

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
XLA_PYTHON = os.environ.get("TRM_XLA_PYTHON") or os.path.join(REPO, ".venv-xla", "bin", "python")


def _start(workdir, cache, bindings):
    env = dict(os.environ, PJRT_DEVICE="CPU", OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="3",
               TRM_XLA_CACHE_DIR=cache)
    r = subprocess.run([XLA_PYTHON, "-m", "trm.train", "--gin_file=cpu_e1_1_baseline.gin",
                        f"--workdir={workdir}", "--noprogress",
                        *[f"--gin_param={b}" for b in bindings]],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    return {tag: points[-1][1] for tag, points in read_scalars(workdir).items()
            if tag.startswith("xla/")}


@pytest.mark.slow
@pytest.mark.xla
def test_second_start_finds_every_graph_in_the_compile_cache(sudoku4, tmp_path):
    if not os.path.exists(XLA_PYTHON):
        pytest.fail(f"No torch_xla environment at {XLA_PYTHON}: run `make install-xla`.")
    cache = str(tmp_path / "cache")
    runs = []
    for seed in (0, 1):  # 0 included: a Python 0 in a graph would be a constant
        bindings = tiny_bindings(sudoku4, steps=4, extra=[
            "LOG_EVERY=4", "XLA_METRICS_EVERY=4", f"SEED={seed}", "DEVICE='xla'"])
        runs.append(_start(str(tmp_path / f"seed{seed}"), cache, bindings))
    first, second = runs
    assert first["xla/PersistentCacheMiss"] == first["xla/compile_count"] > 0, first
    assert os.listdir(os.path.join(cache, "process_0"))  # the graphs were written
    assert second["xla/PersistentCacheMiss"] == 0, second  # nothing new for the next seed
    found = second["xla/PersistentCacheHit"] + second.get("xla/PersistentCacheDeserializeFailure",
                                                          0.0)
    assert found == first["xla/compile_count"], (first, second)
    if second["xla/PersistentCacheHit"]:  # a backend that loads executables compiles nothing
        assert second["xla/compile_count"] == 0, second
