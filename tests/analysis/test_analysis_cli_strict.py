"""analysis.compare / analysis.report are strict: unknown metric or column, missing root:
one line and a non-zero exit, with suggestions; a corrupt run.json: a warning naming it."""

import os
import subprocess
import sys

import pytest

from analysis import load_runs
from analysis import testing as synth

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("study")
    synth.write_minimal_study(str(path))
    return str(path)


def _one_line(proc, *needles):
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def test_unknown_metric_is_rejected_with_suggestions(root):
    _one_line(_cli("analysis.compare", f"--runs={root}", "--metric=eval/exact_acc"),
              "eval/exact_acc", "Did you mean eval/exact_accuracy")
    _one_line(_cli("analysis.report", f"--runs={root}", "--out=/tmp/never-written",
                   "--metric=eval/exact_acc"), "Did you mean eval/exact_accuracy")
    assert not os.path.exists("/tmp/never-written/RESULTS.md")


def test_unknown_group_by_is_rejected_with_suggestions(root):
    _one_line(_cli("analysis.compare", f"--runs={root}", "--group_by=T,nn"),
              "'nn'", "Did you mean n")


def test_missing_root_is_one_line(tmp_path):
    missing = str(tmp_path / "nothing")
    _one_line(_cli("analysis.compare", f"--runs={missing}"), "runs root not found", missing)
    _one_line(_cli("analysis.report", f"--runs={missing}", f"--out={tmp_path / 'o'}"),
              "runs root not found")


def test_good_invocation_still_works(root):
    proc = _cli("analysis.compare", f"--runs={root}", "--group_by=T,n")
    assert proc.returncode == 0 and "| T | n |" in proc.stdout, proc.stderr[-2000:]


def test_corrupt_run_json_is_named_in_a_warning(tmp_path):
    synth.write_minimal_study(str(tmp_path))
    victim = sorted(p for p in os.listdir(tmp_path) if os.path.isdir(tmp_path / p))[0]
    bad = tmp_path / victim / "run.json"
    bad.write_text("{not json")
    with pytest.warns(UserWarning, match=str(bad).replace("\\", "\\\\")):
        runs = load_runs(str(tmp_path))
    assert len(runs) >= 2  # the other runs are all there, and this one too


@pytest.mark.parametrize("module", ["analysis.compare", "analysis.report",
                                    "analysis.dashboard"])
def test_a_closed_pipe_ends_quietly(root, tmp_path, module):
    """``... | head``: the reader is gone before the command writes; no traceback."""
    extra = {"analysis.compare": [], "analysis.report": [f"--out={tmp_path / 'o'}"],
             "analysis.dashboard": [f"--logdir={tmp_path / 'tb'}"]}[module]
    proc = subprocess.Popen([sys.executable, "-m", module, f"--runs={root}", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    proc.stdout.close()  # like `head` exiting
    err = proc.stderr.read().decode()
    proc.wait(timeout=300)
    assert "Traceback" not in err and "BrokenPipe" not in err, err
    assert proc.returncode == 1


def test_filters_that_match_nothing_say_so(root):
    _one_line(_cli("analysis.compare", f"--runs={root}", "--include=t9*"),
              "--include='t9*' matches none of the 2 runs", "t2_n2_s0")
    _one_line(_cli("analysis.compare", f"--runs={root}", "--status=complete"),
              "matches none", "Did you mean completed")
    _one_line(_cli("analysis.report", f"--runs={root}", "--out=/tmp/never-written",
                   "--include=zz*"), "matches none")


def test_experiment_filter_suggests(tmp_path):
    synth.write_tiny_study(str(tmp_path), seeds=(0,), train_steps=10,
                           experiments=["e2_1_ema"])
    _one_line(_cli("analysis.compare", f"--runs={tmp_path}", "--experiment=e2_1_em"),
              "--experiment='e2_1_em'", "Did you mean e2_1_ema")


def test_unknown_options_and_gin_names_get_suggestions(root):
    proc = _cli("analysis.compare", f"--runs={root}", "--group-by=T")
    _one_line(proc, "unrecognized arguments: --group-by=T", "Did you mean --group_by")
    # a raw gin name is a valid column; a misspelt one is answered with the gin names
    ok = _cli("analysis.compare", f"--runs={root}", "--group_by=H_CYCLES")
    assert ok.returncode == 0 and "| H_CYCLES |" in ok.stdout, ok.stderr[-2000:]
    _one_line(_cli("analysis.compare", f"--runs={root}", "--group_by=H_CYCLE"),
              "'H_CYCLE'", "Did you mean H_CYCLES")
