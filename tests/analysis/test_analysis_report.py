"""The report end to end: files exist, every number in results.json equals the DataFrame's."""

import json
import os
import re
import subprocess
import sys

import pytest

from analysis import compare, report, stats

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def built(study_runs, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("report"))
    res = report.build_report(study_runs, out, n_boot=50)
    return out, res


def test_files_and_embedded_plots_exist(built):
    out, res = built
    md = open(os.path.join(out, "RESULTS.md")).read()
    with open(os.path.join(out, "results.json")) as f:
        assert json.load(f) == res
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(images) > 20
    for rel in images:
        assert not os.path.isabs(rel)
        assert os.path.getsize(os.path.join(out, rel)) > 1000
        assert os.path.exists(os.path.join(out, rel[:-4] + ".svg"))
    assert "**42 runs** (39 completed, 1 interrupted, 1 running, 1 unknown)" in md


def test_sections_only_where_supported(built):
    _, res = built
    exps = {e["name"]: e for e in res["experiments"]}
    assert "tn_heatmap" in exps["e2_2_tn"] and "tn_heatmap" not in exps["e2_1_ema"]
    assert "lr_batch" in exps["e3_3_lr_batch"] and "lr_batch" not in exps["e2_2_tn"]
    assert set(exps["e3_1_size"]["scaling"]) == {"params/error", "params/loss",
                                                  "compute/error", "compute/loss"}
    assert set(exps["e3_2_data"]["scaling"]) >= {"data/error", "compute/error"}
    assert "scaling" not in exps["e2_2_tn"]
    assert exps["misc"]["varying"] == []


def test_numbers_equal_the_dataframes(built, study_runs):
    _, res = built
    s = study_runs.summary.set_index("run")
    assert res["overview"]["n_runs"] == len(s)
    assert res["overview"]["total_steps"] == int(s["last_step"].sum())
    for r in res["runs"]:
        row = s.loc[r["run"]]
        assert r["final_eval_exact_accuracy"] == row["final_eval_exact_accuracy"]
        assert r["last_step"] == row["last_step"] and r["status"] == row["status"]
        assert r["num_params"] == row["num_params"]
    for e in res["experiments"]:
        sub = study_runs.select(experiment=e["name"])
        assert e["n_runs"] == len(sub)
        table = compare.comparison_table(sub, e["varying"])
        for got, (_, want) in zip(e["comparison"]["rows"], table.iterrows()):
            assert got["mean"] == pytest.approx(want["mean"], rel=1e-12)
            assert got["n_runs"] == want["n_runs"] and got["n_seeds"] == want["n_seeds"]
            assert got["runs"] == list(want["runs"])
            vals = sub.summary.set_index("run").loc[got["runs"], "final_eval_exact_accuracy"]
            assert got["mean"] == pytest.approx(vals.mean(), rel=1e-12)
            if got["n_seeds"] >= 2:  # one method: t over seeds, sd floored at one puzzle
                want_ci = stats.seed_interval(vals, floor_sd=1 / got["eval_count"],
                                              bounds=(0, 1))
                assert (got["ci_low"], got["ci_high"]) == pytest.approx(
                    (want_ci.low, want_ci.high))
                assert got["ci_method"] == want_ci.method and got["ci_high"] > got["ci_low"]
            else:  # a single run: Wilson over its puzzles; runs of one seed: no interval
                assert got["ci_method"] == ("wilson" if got["n_runs"] == 1 else "none")
    lb = {e["name"]: e for e in res["experiments"]}["e3_3_lr_batch"]["lr_batch"]
    s32 = s[(s["experiment"] == "e3_3_lr_batch") & (s["global_batch_size"] == 32)]
    best = s32.loc[s32["final_eval_exact_accuracy"].idxmax()]
    got = [b for b in lb["best_lr"] if b["global_batch_size"] == 32][0]
    assert got["lr"] == best["lr"] and got["mean"] == best["final_eval_exact_accuracy"]
    size = {e["name"]: e for e in res["experiments"]}["e3_1_size"]["scaling"]["params/error"]
    pts = {p["run"]: p for p in size["points"]}
    for rid, p in pts.items():
        assert p["x"] == s.loc[rid, "num_params"]
        assert p["y"] == pytest.approx(1 - s.loc[rid, "final_eval_exact_accuracy"])


def test_markdown_numbers_come_from_json(built):
    out, res = built
    md = open(os.path.join(out, "RESULTS.md")).read()
    tn = {e["name"]: e for e in res["experiments"]}["e2_2_tn"]["comparison"]["rows"][0]
    assert f"| 2 | 2 | 2 | 2 | 40 | 500 | {100 * tn['mean']:.1f} |" in md
    fit = {e["name"]: e for e in res["experiments"]}["e3_1_size"]["scaling"]["params/error"]["fit"]
    assert f"{fit['alpha']:.3f}" in md


def test_cli_on_minimal_runs(minimal_root, tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    out = str(tmp_path / "rep")
    p = subprocess.run([sys.executable, "-m", "analysis.report", f"--runs={minimal_root}",
                        f"--out={out}", "--n_boot=20"], capture_output=True, text=True,
                       env=env, cwd=REPO, timeout=180)
    assert p.returncode == 0, p.stderr
    res = json.load(open(os.path.join(out, "results.json")))
    assert res["overview"]["n_runs"] == 2 and len(res["experiments"]) == 1
    e = res["experiments"][0]
    assert e["varying"] == ["T", "n"] and "tn_heatmap" in e
    assert "scaling" not in e and "lr_batch" not in e
    assert os.path.exists(os.path.join(out, "RESULTS.md"))
