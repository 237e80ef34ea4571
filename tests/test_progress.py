"""trm.progress: plain lines in logs (time-driven), a tqdm bar on terminals, nested phases,
and progress from a real dataset build and a real training run's evaluation."""

import io
import os
import subprocess
import sys

from trm import progress

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_log_lines_every_interval_and_at_the_end():
    out = io.StringIO()
    with progress.phase("build", 10, unit="puzzles", stream=out, every_s=0.0) as bar:
        for i in range(1, 11):
            bar.update(i)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("build: 1/10 puzzles (10%)") and "ETA" in lines[0]
    assert lines[-1].startswith("build: 10/10 puzzles (100%)") and len(lines) == 11


def test_quiet_phase_prints_nothing_and_disabled_is_a_no_op(monkeypatch):
    out = io.StringIO()
    with progress.phase("fast", 3, stream=out, every_s=3600) as bar:
        bar.update(3)
    with progress.phase("off", 3, stream=out, every_s=0.0, enabled=False) as bar:
        bar.update(1)
    monkeypatch.setenv("TRM_PROGRESS", "0")
    with progress.phase("env off", 3, stream=out, every_s=0.0) as bar:
        bar.update(1)
    assert out.getvalue() == ""


def test_nested_phase_is_named_after_the_outer_one_and_inherits_off():
    out = io.StringIO()
    with progress.phase("building x", stream=out, every_s=0.0):
        with progress.sub("augmenting", 2, unit="puzzles", stream=out, every_s=0.0) as bar:
            bar.update(2)
    assert "building x: augmenting: 2/2 puzzles" in out.getvalue()
    assert progress.current().enabled is False  # nothing open any more
    with progress.phase("off", enabled=False):
        with progress.sub("inner", 2, stream=out, every_s=0.0) as bar:
            assert not bar.enabled


def test_terminal_gets_a_tqdm_bar():
    out = io.StringIO()
    with progress.phase("eval", 4, unit="batches", stream=out, bar=True) as bar:
        for i in range(1, 5):
            bar.update(i)
    assert "eval: 100%" in out.getvalue() and "4/4" in out.getvalue()


def test_dataset_build_reports_in_a_log(tmp_path):
    code = ("from trm.data import ensure_dataset; ensure_dataset(%r, 'sudoku_gen', box='2x2', "
            "num_train=30, num_test=8, blanks=6, num_aug=2, seed=0, num_shards=2)"
            % str(tmp_path / "d"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, TRM_PROGRESS_EVERY_S="0", OMP_NUM_THREADS="1"),
                         timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    err = out.stderr
    assert "building sudoku_gen dataset" in err
    assert "generating train puzzles: 30/30 puzzles (100%)" in err
    assert "augmenting: 30/30 puzzles" in err and "writing train/all: 2/2 shards" in err


def test_loading_many_runs_reports_progress(tmp_path, monkeypatch, capsys):
    from analysis.runs import load_runs
    from analysis.testing import write_run
    for seed in range(3):
        write_run(str(tmp_path / f"s{seed}"), seed=seed)
    monkeypatch.setenv("TRM_PROGRESS_EVERY_S", "0")
    assert len(load_runs(str(tmp_path)).summary) == 3
    assert f"loading runs from {tmp_path}: 3/3 runs (100%)" in capsys.readouterr().err
