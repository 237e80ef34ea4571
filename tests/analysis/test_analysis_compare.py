"""Comparison tables and the compare CLI."""

import io
import os
import subprocess
import sys

import pandas as pd
import pytest

from analysis import compare, stats

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_comparison_table_numbers(study_runs):
    tn = study_runs.select(experiment="e2_2_tn")
    t = compare.comparison_table(tn).set_index("label")
    assert list(t.index) == ["T=2, n=2", "T=2, n=6", "T=3, n=4", "T=3, n=6", "T=4, n=6"]
    s = tn.summary
    vals = s[(s["T"] == 2) & (s["n"] == 2)]["final_eval_exact_accuracy"]
    row = t.loc["T=2, n=2"]
    assert row["mean"] == pytest.approx(vals.mean())
    want = stats.seed_interval(list(vals), floor_sd=1 / 500, bounds=(0, 1))
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((want.low, want.high))
    assert row["ci_method"] == want.method and row["ci_high"] > row["ci_low"]
    assert (row["n_runs"], row["n_seeds"], row["step_min"]) == (2, 2, 40)
    assert row["published"] == pytest.approx(0.737)
    assert t.loc["T=3, n=6", "published"] == pytest.approx(0.874)
    assert pd.isna(t.loc["T=4, n=6", "published"])


def test_mixed_groups_get_no_paper_number(study_runs):
    t = compare.comparison_table(study_runs, ["experiment"])
    assert t["published"].isna().all()


def test_cli_markdown_and_csv(study_root, capsys):
    assert compare.main([f"--runs={study_root}", "--experiment=e2_1_ema"]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[0].startswith("| ema | runs | seeds | steps | eval n | mean (%)")
    assert len(lines) == 4 and "79.9" in lines[2] and "87.4" in lines[3]
    assert compare.main([f"--runs={study_root}", "--group_by=experiment,status",
                         "--format=csv"]) == 0
    df = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert list(df.columns[:4]) == ["experiment", "status", "runs", "seeds"]
    assert df["runs"].sum() == 42
    assert compare.main([f"--runs={study_root}", "--experiment=e3_1_size", "--raw",
                         "--format=csv"]) == 0
    raw = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert {"hidden_size", "mean", "ci_low", "ci_high", "n_seeds"} <= set(raw.columns)


def test_cli_subprocess(minimal_root):
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "analysis.compare", f"--runs={minimal_root}",
                        "--group_by=T,n"], capture_output=True, text=True, env=env, cwd=REPO,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("| T | n | runs |")
    assert "| 2 | 2 | 1 | 1 | 40 | 500 |" in p.stdout
