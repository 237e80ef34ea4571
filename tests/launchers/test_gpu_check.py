"""The prepared GPU check (launchers.gpu_check), rehearsed on the CPU as the issue asks: it runs
the benchmark suite and a quickstart and appends both to the benchmarks document."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_without_a_gpu_it_is_one_line_and_exit_2(tmp_path):
    doc = tmp_path / "b.md"
    r = subprocess.run([sys.executable, "-m", "launchers.gpu_check", f"--doc={doc}"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "no CUDA GPU" in r.stderr
    assert not doc.exists()


@pytest.mark.slow
def test_cpu_rehearsal_writes_the_suite_and_the_quickstart(tmp_path):
    doc = tmp_path / "b.md"
    doc.write_text("# Benchmarks\n")
    r = subprocess.run([sys.executable, "-m", "launchers.gpu_check", "--device=cpu", "--quick",
                        f"--doc={doc}"], cwd=REPO, capture_output=True, text=True, timeout=900,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n")  # appended, nothing replaced
    assert "### GPU check" in text and "python -m trm.bench --suite" in text
    assert text.count("| baseline (MLP) |") == 2 and text.count("| attention |") == 2
    assert "Quickstart on the device" in text and "held-out puzzles after 20 steps" in text
