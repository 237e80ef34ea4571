"""The CPU study's report (studies.cpu_study.analysis) and sweep (studies.cpu_study.sweep):
seed-level arm intervals and paired contrasts (analysis.stats), raw and Holm-adjusted verdicts,
results.json fields, figures, commands that reproduce, and the notebooks; round two's
pre-registered report and notebook (studies.cpu_study.round2)."""

import json
import os
import shlex
import shutil

import numpy as np
import pytest
from scipy import stats as sps

from analysis import stats
from studies.cpu_study import analysis as cs
from launchers.named_sweeps import get_sweep


def test_every_ablation_uses_known_arms_and_every_arm_is_used():
    used = set()
    for ab in cs.ABLATIONS:
        assert set(ab.weights) <= set(ab.arms) <= set(cs.ARM_BY_LABEL), ab.name
        assert abs(sum(ab.weights.values())) < 1e-12, ab.name  # a contrast
        used |= set(ab.arms)
    assert used == set(cs.ARM_BY_LABEL)
    names = {ab.name for ab in cs.ABLATIONS}
    for want in ("e2_1_ema", "e2_2_tn", "e2_3_mixer", "e2_4_deep_supervision", "e3_2_data",
                 "e3_3_lr_batch", "e3_1_width"):
        assert any(want in n for n in names), want


def test_tn_ablation_covers_the_five_study_points():
    from launchers.named_sweeps import TN_SCHEDULES
    tn = next(ab for ab in cs.ABLATIONS if ab.name == "e2_2_tn")
    for t, n in TN_SCHEDULES:
        assert f"t{t}_n{n}" in tn.arms


def test_sweep_runs_every_arm_with_three_seeds_one_arm_after_another():
    sweep = get_sweep("cpu_study")
    runs = sweep.runs()
    assert len(runs) == 3 * len(cs.ARMS)
    assert [r.name for r in runs[:4]] == ["cpu_study/base_s0", "cpu_study/base_s1",
                                          "cpu_study/base_s2", "cpu_study/ema_off_s0"]
    for run in runs:
        arm = cs.ARM_BY_LABEL[run.name.split("/")[1].rsplit("_s", 1)[0]]
        assert run.gin_files == [arm.gin_file]
        assert run.bindings[:-1] == [f"{k}={v}" for k, v in arm.bindings.items()]
    # other sweeps keep seeds slowest
    assert get_sweep("cpu_e2_1_ema").runs()[1].name.endswith("_s0")


def test_arm_files_are_the_shipped_9x9_twins():
    import gin as _gin  # noqa: F401  (the gin tree test resolves them; here: the task)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for arm in cs.ARMS:
        assert os.path.exists(os.path.join(repo, "gin", "experiments", "cpu", arm.gin_file))
    text = open(os.path.join(repo, "gin", "experiments", "cpu", "cpu_e1_1_baseline.gin")).read()
    assert "SUDOKU_BOX = '3x3'" in text and "SUDOKU_BLANKS = 50" in text
    assert f"TRAIN_STEPS = {cs.STUDY_STEPS}" in text
    quick = open(os.path.join(repo, "gin", "experiments", "quickstart.gin")).read()
    assert "SUDOKU_BOX = '2x3'" in quick  # the quickstart stays on the easy task


def _table(per_seed, n=500, seeds=cs.SEEDS):
    return {s: (a, n) for s, a in zip(seeds, per_seed)}


def test_contrast_is_the_paired_t_over_matched_seeds():
    a, b = (0.54, 0.38, 0.53), (0.48, 0.31, 0.43)
    c = cs.contrast({"a": _table(a), "b": _table(b)}, {"a": 1, "b": -1})
    d = np.subtract(a, b)
    half = sps.t.ppf(0.975, 2) * np.std(d, ddof=1) / np.sqrt(3)
    assert c["effect"] == pytest.approx(d.mean())
    assert c["ci"] == pytest.approx([d.mean() - half, d.mean() + half])
    assert c["p"] == pytest.approx(sps.ttest_rel(a, b).pvalue) and c["ci_method"] == "t"
    assert c["seeds"] == [0, 1, 2] and c["per_seed"] == pytest.approx(list(d))
    # the seed spread is shared by the arms: paired, a consistent effect is seen through it
    assert c["ci"][0] > 0 and c["p"] < 0.05
    assert sps.ttest_ind(a, b).pvalue > 0.05  # unpaired, the same numbers would not show it
    # only the seeds both arms ran are paired
    part = cs.contrast({"a": _table(a), "b": _table(b[:2], seeds=(0, 1))}, {"a": 1, "b": -1})
    assert part["seeds"] == [0, 1]
    assert part["effect"] == pytest.approx((0.54 - 0.48 + 0.38 - 0.31) / 2)


def test_interaction_contrast_is_paired_per_seed():
    acc = {"hh": (0.60, 0.50, 0.70), "hl": (0.40, 0.35, 0.45), "lh": (0.30, 0.32, 0.20),
           "ll": (0.20, 0.25, 0.15)}
    w = {"hh": 1, "hl": -1, "lh": -1, "ll": 1}
    c = cs.contrast({k: _table(v) for k, v in acc.items()}, w)
    per_seed = [acc["hh"][i] - acc["hl"][i] - acc["lh"][i] + acc["ll"][i] for i in range(3)]
    assert c["per_seed"] == pytest.approx(per_seed)
    want = stats.seed_interval(per_seed)
    assert c["ci"] == pytest.approx([want.low, want.high])


def test_contrast_intervals_are_never_zero_wide_and_stay_in_range():
    # identical per-seed effects: the spread is floored at one puzzle (1/500)
    same = cs.contrast({"a": _table((0.5, 0.4, 0.6)), "b": _table((0.4, 0.3, 0.5))},
                       {"a": 1, "b": -1})
    assert same["ci_method"] == "t, sd floor" and same["ci"][1] - same["ci"][0] > 0
    assert same["ci"][0] < 0.1 < same["ci"][1]
    # an arm whose seeds all solve nothing (the attention twin) still gets an interval
    zero = cs.arm_interval([0.0, 0.0, 0.0], [500] * 3)
    assert zero.method == "t, sd floor" and zero.low == 0.0 < zero.high < 0.01
    wide = cs.contrast({"a": _table((1.0, 1.0, 0.4)), "b": _table((0.0, 0.0, 0.0))},
                       {"a": 1, "b": -1})
    assert -1 <= wide["ci"][0] < wide["effect"] < wide["ci"][1] == 1.0
    with pytest.raises(ValueError, match="must lie in"):
        cs.contrast({"a": {0: (1.2, 10)}, "b": {0: (0.1, 10)}}, {"a": 1, "b": -1})
    with pytest.raises(ValueError, match="share no seed"):
        cs.contrast({"a": {0: (0.2, 10)}, "b": {1: (0.1, 10)}}, {"a": 1, "b": -1})


def test_verdicts():
    assert cs.verdict(5.0, 0.01, +1, 0.05) == "agrees"
    assert cs.verdict(-5.0, 0.01, +1, 0.05) == "disagrees"
    assert cs.verdict(5.0, 0.06, +1, 0.05) == "inconclusive"
    assert cs.verdict(5.0, None, +1, 0.05) == "inconclusive"


def _write_run(root, arm, seed, acc, *, status="completed", steps=cs.STUDY_STEPS):
    label = arm.label
    d = os.path.join(root, "cpu_study", f"{label}_s{seed}")
    os.makedirs(os.path.join(d, "eval"), exist_ok=True)
    for step, a in ((500, acc / 3), (1000, acc / 2), (steps, acc)):
        os.makedirs(os.path.join(d, "eval", f"step_{step:09d}"), exist_ok=True)
        with open(os.path.join(d, "eval", f"step_{step:09d}", "metrics.json"), "w") as f:
            json.dump({"eval/exact_accuracy": a, "eval/accuracy": 0.9, "eval/count": 500.0,
                       "step": step}, f)
    meta = {"status": status, "last_step": steps, "total_steps": cs.STUDY_STEPS,
            "last_eval_step": steps, "torch_threads": 1, "forward_dtype": "bfloat16",
            "start_time": "2026-11-29T00:00:00Z", "end_time": "2026-11-29T00:05:00Z",
            "last_eval": {"eval/exact_accuracy": acc, "eval/accuracy": 0.9, "eval/count": 500.0},
            "num_params": 1000}
    with open(os.path.join(d, "run.json"), "w") as f:
        json.dump(meta, f)
    argv = ["/x/trm/train.py", f"--gin_file={arm.gin_file}"] + [
        f"--gin_param={k}={v}" for k, v in arm.bindings.items()] + [
        f"--gin_param=SEED={seed}", f"--workdir={d}", "--noprogress"]
    with open(os.path.join(d, "command.json"), "w") as f:
        json.dump({"argv": argv}, f)


def test_report_from_runs(tmp_path):
    root = str(tmp_path / "runs")
    target = {a.label: 0.5 for a in cs.ARMS}
    target.update(ema_off=0.30,            # EMA clearly helps: agrees
                  attention=0.70,          # attention better: disagrees with the paper
                  t3_n6=0.51, t2_n2=0.50)  # no difference: inconclusive
    rng = np.random.default_rng(0)
    for arm in cs.ARMS:
        for seed in cs.SEEDS:
            if arm.label == "p4000" and seed > 0:
                continue  # one seed only: pending
            _write_run(root, arm, seed, float(np.clip(target[arm.label]
                                                      + rng.normal(0, 0.01), 0, 1)))
    meta_path = os.path.join(root, "cpu_study", "base_s0", "run.json")
    meta = json.load(open(meta_path))
    meta["active_s"] = 250.5
    json.dump(meta, open(meta_path, "w"))
    # an unfinished run and a stray folder do not count
    _write_run(root, cs.ARM_BY_LABEL["h32"], 7, 0.9, status="running", steps=1000)
    os.makedirs(os.path.join(root, "cpu_study", "not_a_run"))
    out = str(tmp_path / "out")
    notes = tmp_path / "notes.json"
    notes.write_text(json.dumps({"e2_3_mixer": "Attention overfits less at this scale."}))
    assert cs.main([f"--runs={root}", f"--out={out}", f"--notes={notes}"]) == 0
    res = json.load(open(os.path.join(out, "results.json")))
    ab = {a["name"]: a for a in res["ablations"]}
    for a in ab.values():
        assert set(a) >= {"name", "paper_direction", "source", "effect", "ci", "seeds", "p",
                          "p_holm", "verdict_raw", "verdict_holm"}
    assert ab["e2_1_ema"]["verdict_holm"] == "agrees" and ab["e2_1_ema"]["ci"][0] > 0
    assert abs(ab["e2_1_ema"]["effect"] - 20) < 3 and ab["e2_1_ema"]["seeds"] == 3
    assert ab["e2_1_ema"]["paper_effect"] == pytest.approx(7.5)
    assert ab["e2_3_mixer"]["verdict_holm"] == "disagrees"
    assert ab["e2_2_tn"]["verdict_raw"] == ab["e2_2_tn"]["verdict_holm"] == "inconclusive"
    assert ab["e3_2_data"]["verdict_holm"] == "pending" and ab["e3_2_data"]["seeds"] == 1
    assert ab["e3_2_data"]["p"] is None and ab["e3_2_data"]["p_holm"] is None
    # Holm over the finished ablations, in their order; each verdict from its own p
    tested = [a for a in res["ablations"] if a["p"] is not None]
    assert len(tested) == 6
    assert [a["p_holm"] for a in tested] == pytest.approx(stats.holm([a["p"] for a in tested]))
    for a in tested:
        assert a["p_holm"] >= a["p"]
        assert a["verdict_raw"] == cs.verdict(a["effect"], a["p"], a["direction"], 0.05)
        assert a["verdict_holm"] == cs.verdict(a["effect"], a["p_holm"], a["direction"], 0.05)
    assert ab["e3_1_width"]["source"] == cs.HYPOTHESIS and ab["e2_1_ema"]["source"] == cs.PAPER
    # an arm's interval is the t interval over its seeds, by hand
    base = res["arms"]["base"]
    x = np.array(base["per_seed"])
    half = sps.t.ppf(0.975, 2) * max(np.std(x, ddof=1), 1 / 500) / np.sqrt(3)
    assert base["ci"] == pytest.approx([x.mean() - half, x.mean() + half])
    assert base["ci_method"] in ("t", "t, sd floor")
    for arm in res["arms"].values():
        if arm["n_seeds"] >= 2:  # never zero wide
            assert arm["ci"][0] <= arm["mean"] <= arm["ci"][1] and arm["ci"][1] > arm["ci"][0]
        elif arm["n_seeds"] == 1:
            assert arm["ci"] == [None, None] and arm["ci_method"] == "none"
    # the effect is paired: the mean of the per-seed contrasts of matched seeds
    ema = ab["e2_1_ema"]
    assert ema["paired_seeds"] == [0, 1, 2]
    assert ema["per_seed_effect"] == pytest.approx(
        [100 * (b - o) for b, o in zip(base["per_seed"], res["arms"]["ema_off"]["per_seed"])])
    for a in ab.values():
        if a["ci"]:
            assert -100 <= a["ci"][0] <= a["effect"] <= a["ci"][1] <= 100
    runs = {r["name"]: r for r in res["runs"]}
    assert "cpu_study/h32_s7" in runs and res["compute"]["completed"] == len(runs) - 1
    r = runs["cpu_study/b32_lr3e-3_s1"]
    assert r["seed"] == 1 and r["wall_s"] == 300  # end - start (no active_s)
    assert runs["cpu_study/base_s0"]["wall_s"] == 250.5  # active_s wins over end - start
    assert r["final"]["eval/exact_accuracy"] > 0
    argv = shlex.split(r["command"])
    assert argv[:3] == ["python", "-m", "trm.train"]
    assert "--gin_file=cpu_e3_3_lr.gin" in argv and "--gin_param=GLOBAL_BATCH_SIZE=32" in argv
    assert "--gin_param=SEED=1" in argv
    assert res["compute"]["cpu_hours"] > 0
    md = open(os.path.join(out, "RESULTS.md")).read()
    for name in ab:
        assert name in md
    assert "Attention overfits less at this scale." in md
    assert "**disagrees**" in md and "**agrees**" in md and "pending" in md
    assert "| p | verdict | Holm p | verdict after Holm |" in md
    assert "Hypothesis (study plan): more parameters" in md and "Paper: EMA helps" in md
    for name in ("e2_1_ema", "effects", "e2_2_tn_depth"):
        for ext in ("png", "svg", "pdf"):
            assert os.path.getsize(os.path.join(out, f"{name}.{ext}")) > 1000
    # the report again from its own results.json (no run folders): the same numbers
    again = str(tmp_path / "again")
    assert cs.main([f"--results={out}/results.json", f"--out={again}", f"--notes={notes}"]) == 0
    res2 = json.load(open(os.path.join(again, "results.json")))
    assert res2["ablations"] == res["ablations"] and res2["arms"] == res["arms"]
    assert open(os.path.join(again, "RESULTS.md")).read() == md


def test_missing_root_is_one_line(tmp_path, capsys):
    assert cs.main([f"--runs={tmp_path / 'nope'}", f"--out={tmp_path / 'o'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "launchers.local --sweep=cpu_study" in err
    (tmp_path / "bad.json").write_text("{}")
    assert cs.main([f"--results={tmp_path / 'bad.json'}", f"--out={tmp_path / 'o'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a CPU study results.json" in err


def test_arms_without_matched_seeds_are_one_line(tmp_path, capsys):
    root = str(tmp_path / "runs")
    for label, seeds in (("base", (0, 1, 2)), ("ema_off", (3, 4, 5))):
        for seed in seeds:
            _write_run(root, cs.ARM_BY_LABEL[label], seed, 0.5)
    assert cs.main([f"--runs={root}", f"--out={tmp_path / 'o'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "share no seed" in err


def test_notebook_renders_a_study_and_the_committed_one_has_its_plots(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("nbclient")
    root = str(tmp_path / "runs")
    for arm in cs.ARMS[:4]:
        for seed in cs.SEEDS:
            _write_run(root, arm, seed, 0.4 + 0.05 * seed)
    out = str(tmp_path / "out")
    assert cs.main([f"--runs={root}", f"--out={out}"]) == 0
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    src = os.path.join(repo, "studies", "cpu_study", "notebook.ipynb")
    nb_path = str(tmp_path / "cpu_study.ipynb")
    shutil.copy(src, nb_path)
    monkeypatch.setenv("TRM_CPU_STUDY_RESULTS", os.path.join(out, "results.json"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    # the kernel runs in the notebooks folder, as for the committed one
    cs.render_notebook(nb_path, timeout=300, cwd=os.path.dirname(src))
    nb = nbformat.read(nb_path, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) >= 4  # effects, arms, T/n, curves
    text = "".join(o.get("text", "") for o in outputs)
    assert "12 completed runs of 12" in text
    # the committed notebook carries its outputs, so the repository page shows the plots
    committed = nbformat.read(src, as_version=4)
    assert any("image/png" in o.get("data", {}) for c in committed.cells
               if c.cell_type == "code" for o in c.get("outputs", []))


def test_secondary_contrasts_are_reported_without_a_verdict(tmp_path):
    root = str(tmp_path / "runs")
    for label, acc in (("base", 0.5), ("t1_n1", 0.3), ("t2_n2", 0.45), ("t3_n6", 0.5)):
        for seed in cs.SEEDS:
            _write_run(root, cs.ARM_BY_LABEL[label], seed, acc + 0.01 * seed)
    res = cs.analyze(cs.load(root))
    tn = next(a for a in res["ablations"] if a["name"] == "e2_2_tn")
    shallow, deep = tn["also"]
    assert "T=1, n=1" in shallow["definition"] and shallow["effect"] == pytest.approx(20)
    assert shallow["ci"][0] <= 20 <= shallow["ci"][1]
    assert deep["effect"] is None  # T=4, n=6 has not run
    assert "verdict_raw" not in shallow and "p_holm" not in shallow
    # the per-seed effects are all 0.2: the spread is floored at one puzzle, never zero
    assert shallow["ci_method"] == "t, sd floor" and shallow["ci"][1] > shallow["ci"][0]
    assert shallow["p"] == pytest.approx(2 * sps.t.sf(0.2 / (0.002 / np.sqrt(3)), 2))


# ---------------------------------------------------------------------------------------------
# Round two (issue #24): studies.cpu_study.round2

from analysis import testing as synthetic  # noqa: E402
from studies.cpu_study import round2 as r2  # noqa: E402

# per-seed EMA accuracy at step 1500, seeds 0..9: C1 = (3,6) - (2,2) is +10 points give or take
# a point (significant); C2 = (2,6) - (3,6) flips sign from seed to seed (not significant)
_R2_T2N2 = np.array([0.40, 0.42, 0.38, 0.44, 0.40, 0.36, 0.41, 0.39, 0.43, 0.37])
_R2_ACC = {"t2_n2": _R2_T2N2,
           "t3_n6": _R2_T2N2 + np.array([0.10, 0.11, 0.09, 0.10, 0.12, 0.08, 0.10, 0.09, 0.11,
                                         0.10]),
           "t2_n6": _R2_T2N2 + 0.10 + np.array([0.02, -0.03, 0.01, -0.02, 0.03, -0.01, 0.02,
                                                -0.02, 0.00, 0.01])}
_R2_RAW_GAP = {"t2_n2": 0.05, "t3_n6": 0.0, "t2_n6": -0.02}  # EMA minus raw, plus seed jitter
_R2_LATE = {"t2_n2": 0.30, "t3_n6": 0.12, "t2_n6": 0.05}  # step 3000 minus 1500, seeds 0-2


def _r2_values(label, seed, steps):
    acc = float(_R2_ACC[label][seed])
    ema = {500: acc / 4, 1000: acc / 2, 1500: acc}
    for k, step in enumerate((2000, 2500, 3000), 1):
        ema[step] = acc + _R2_LATE[label] * k / 3
    ema = {s: v for s, v in ema.items() if s <= steps}
    raw = {s: v - _R2_RAW_GAP[label] - 0.002 * (seed % 3) for s, v in ema.items()}
    return ema, raw


def _write_round2(root, skip=(), **overrides):
    for sweep, seeds, steps in r2.EXPECTED_RUNS:
        for label in r2.LABELS:
            for seed in seeds:
                name = f"{sweep}/{label}_s{seed}"
                if name in skip:
                    continue
                ema, raw = _r2_values(label, seed, steps)
                synthetic.write_run(os.path.join(root, name), seed=seed, train_steps=steps,
                                    eval_every=500, log_every=500, eval_exact=ema,
                                    eval_raw_exact=raw, **overrides.get(name, {}))


def test_round2_sweeps_are_the_preregistered_runs():
    names = [r.name for s in ("cpu_tn_round2", "cpu_tn_round2_long") for r in get_sweep(s).runs()]
    want = [f"{sweep}/{label}_s{seed}" for sweep, seeds, _ in r2.EXPECTED_RUNS
            for label in r2.LABELS for seed in seeds]
    assert names == want and len(names) == 30 and r2.LABELS == ("t2_n2", "t2_n6", "t3_n6")
    assert not set(names) & {r.name for r in get_sweep("cpu_study").runs()}
    for sweep, _, steps in r2.EXPECTED_RUNS:
        for run in get_sweep(sweep).runs():
            assert run.gin_files == [cs.ARM_BY_LABEL[run.name.split("/")[1][:5]].gin_file]
            assert {f"TRAIN_STEPS={steps}", "EVAL_EVERY=500", "CHECKPOINT_EVERY=500",
                    "EVAL_RAW_WEIGHTS=True"} <= set(run.bindings)


def test_round2_refuses_missing_or_incomplete_runs_in_one_line(tmp_path, capsys):
    root = str(tmp_path / "runs")
    _write_round2(root, skip={"cpu_tn_round2/t2_n6_s4"},
                  **{"cpu_tn_round2_long/t3_n6_s1": dict(status="running", last_step=2000)})
    assert r2.main([f"--runs={root}", f"--out={tmp_path / 'o'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "2 are not" in err
    assert "cpu_tn_round2/t2_n6_s4 missing" in err
    assert "cpu_tn_round2_long/t3_n6_s1 incomplete (running, step 2000 of 3000" in err
    assert "no EMA+raw evaluation at step [2500, 3000]" in err
    assert "make cpu-study-round2" in err and not os.path.exists(tmp_path / "o")
    assert r2.main([f"--runs={tmp_path / 'none'}", f"--out={tmp_path / 'o'}"]) == 2
    assert "30 are not" in capsys.readouterr().err


def test_round2_report_by_hand(tmp_path):
    root, out = str(tmp_path / "runs"), str(tmp_path / "out")
    _write_round2(root)
    assert r2.main([f"--runs={root}", f"--out={out}"]) == 0
    res = json.load(open(os.path.join(out, "results_round2.json")))
    # arms: 10 seeds at step 1500 (seeds 0-2 from their 3000-step runs), t over seeds
    for label, acc in _R2_ACC.items():
        arm = res["arms"][label]
        half = sps.t.ppf(0.975, 9) * np.std(acc, ddof=1) / np.sqrt(10)
        assert arm["seeds"] == list(range(10)) and arm["per_seed"] == pytest.approx(list(acc))
        assert arm["ci"] == pytest.approx([acc.mean() - half, acc.mean() + half])
    # contrasts: paired t over the 10 seeds, Holm over {C1, C2}
    c1, c2 = res["contrasts"]
    d1, d2 = _R2_ACC["t3_n6"] - _R2_ACC["t2_n2"], _R2_ACC["t2_n6"] - _R2_ACC["t3_n6"]
    p1, p2 = (sps.ttest_rel(_R2_ACC["t3_n6"], _R2_ACC["t2_n2"]).pvalue,
              sps.ttest_rel(_R2_ACC["t2_n6"], _R2_ACC["t3_n6"]).pvalue)
    assert c1["effect"] == pytest.approx(100 * d1.mean()) == pytest.approx(10.0)
    half = 100 * sps.t.ppf(0.975, 9) * np.std(d1, ddof=1) / np.sqrt(10)
    assert c1["ci"] == pytest.approx([10.0 - half, 10.0 + half])
    assert c2["effect"] == pytest.approx(100 * d2.mean()) == pytest.approx(0.1)
    assert c1["p"] == pytest.approx(p1) and c2["p"] == pytest.approx(p2)
    assert p1 < 0.001 and p2 > 0.5
    assert c1["p_holm"] == pytest.approx(2 * p1) and c2["p_holm"] == pytest.approx(p2)
    assert (c1["verdict_raw"], c1["verdict_holm"]) == ("supported", "supported")
    assert (c2["verdict_raw"], c2["verdict_holm"]) == ("inconclusive", "inconclusive")
    assert c1["paired_seeds"] == list(range(10)) and c1["direction"] == 1
    assert c2["direction"] == -1
    # secondary: seeds 0-2 at 3000 vs 1500, the order of the arms at both
    lon = res["secondary"]["longer"]
    for label, gain in _R2_LATE.items():
        e = lon["arms"][label]
        assert e["effect"] == pytest.approx(100 * gain) and e["paired_seeds"] == [0, 1, 2]
        assert e["mean_early"] == pytest.approx(_R2_ACC[label][:3].mean())
    # at 1500 (seeds 0-2): t2_n6 .500 > t3_n6 .500 - a hair > t2_n2 .400; at 3000 t2_n2 .700 first
    assert lon["order_early"] == ["t2_n6", "t3_n6", "t2_n2"]
    assert lon["order_late"] == ["t2_n2", "t3_n6", "t2_n6"] and lon["order_holds"] is False
    # secondary: EMA minus raw at 1500 over the 10 seeds, Holm over the three arms
    emr = res["secondary"]["ema_minus_raw"]
    jitter = 0.002 * (np.arange(10) % 3)
    ps = []
    for label, gap in _R2_RAW_GAP.items():
        d = gap + jitter
        assert emr[label]["effect"] == pytest.approx(100 * d.mean())
        # paired t; the jitter's spread (0.0017) is below one puzzle: floored at 1/500
        sd = max(np.std(d, ddof=1), 1 / 500)
        ps.append(2 * sps.t.sf(abs(d.mean()) / (sd / np.sqrt(10)), 9))
        assert emr[label]["p"] == pytest.approx(ps[-1])
    assert {e["ci_method"] for e in emr.values()} == {"t, sd floor"}
    assert [emr[a]["p_holm"] for a in _R2_RAW_GAP] == pytest.approx(stats.holm(ps))
    # curves: 10 seeds to 1500, 3 after; every run with its per-step values and record
    curve = res["secondary"]["curves"]["t2_n2"]
    assert [(r["step"], r["n_seeds"]) for r in curve] == [
        (500, 10), (1000, 10), (1500, 10), (2000, 3), (2500, 3), (3000, 3)]
    assert curve[0]["mean"] == pytest.approx(_R2_T2N2.mean() / 4)
    assert curve[-1]["mean"] == pytest.approx(_R2_T2N2[:3].mean() + 0.30)
    runs = {r["name"]: r for r in res["runs"]}
    assert len(runs) == 30
    long_run = runs["cpu_tn_round2_long/t2_n6_s2"]
    assert [h["step"] for h in long_run["history"]] == [500, 1000, 1500, 2000, 2500, 3000]
    assert long_run["history"][2]["exact_accuracy_raw"] == pytest.approx(
        _R2_ACC["t2_n6"][2] + 0.02 - 0.004)
    for key in r2.ENV_FIELDS:
        assert key in long_run
    assert long_run["torch_version"] == "0.0.0+synthetic" and long_run["git_dirty"] is False
    assert "--gin_param=SEED=2" in long_run["command"]
    md = open(os.path.join(out, "RESULTS_ROUND2.md")).read()
    assert "| C1 | T=3, n=6 minus T=2, n=2 |" in md and "**supported**" in md
    assert "**inconclusive**" in md and "the order does not hold" in md
    for name, _ in r2.FIGURES:
        for ext in ("png", "svg", "pdf"):
            assert os.path.getsize(os.path.join(out, f"{name}.{ext}")) > 1000
    # the report again from its own results_round2.json: the same numbers
    again = str(tmp_path / "again")
    assert r2.main([f"--results={out}/results_round2.json", f"--out={again}"]) == 0
    assert open(os.path.join(again, "RESULTS_ROUND2.md")).read() == md


def test_round2_archive_keeps_complete_runs_for_a_fresh_root(tmp_path, capsys):
    """--archive copies the complete runs' records (no checkpoints, no TensorBoard files):
    the launchers' preflight sees them completed, the report reads them as it reads the runs,
    a second archive adds only what is new, and a differing record is never overwritten."""
    from trm.preflight import workdir_state
    root, arc = str(tmp_path / "runs"), str(tmp_path / "arc")
    part = {"cpu_tn_round2/t2_n6_s4", "cpu_tn_round2_long/t3_n6_s1"}
    _write_round2(root, skip={"cpu_tn_round2/t2_n6_s4"},
                  **{"cpu_tn_round2_long/t3_n6_s1": dict(status="running", last_step=2000)})
    one = os.path.join(root, "cpu_tn_round2", "t2_n2_s3")
    with open(os.path.join(one, "launcher.log"), "w") as f:
        f.write("started\n")
    os.makedirs(os.path.join(one, "checkpoints", "step_000001500"))
    assert r2.main([f"--runs={root}", f"--archive={arc}"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"archived 28 runs into {arc} (0 were already there); 2 not complete")
    assert "cpu_tn_round2/t2_n6_s4 missing" in out and "t3_n6_s1 incomplete (running" in out
    assert not os.path.exists(os.path.join(arc, "cpu_tn_round2_long", "t3_n6_s1"))
    kept = sorted(os.path.relpath(os.path.join(d, f), os.path.join(arc, "cpu_tn_round2",
                                                                    "t2_n2_s3"))
                  for d, _, fs in os.walk(os.path.join(arc, "cpu_tn_round2", "t2_n2_s3"))
                  for f in fs)
    assert kept == sorted(["run.json", "command.json", "config.gin", "operative_config.gin",
                           "hparams.json", "launcher.log"]
                          + [f"eval/step_{s:09d}/metrics.json" for s in (500, 1000, 1500)])
    for rel in kept:
        assert open(os.path.join(one, rel), "rb").read() == open(
            os.path.join(arc, "cpu_tn_round2", "t2_n2_s3", rel), "rb").read()
    assert {r["name"]: r for r in r2.load(arc)} == {
        r["name"]: r for r in r2.load(root) if r["name"] not in part}
    config = open(os.path.join(one, "config.gin")).read()
    assert workdir_state(os.path.join(arc, "cpu_tn_round2", "t2_n2_s3"), config)[0] == "completed"
    # the two runs finish; archiving again adds just them, and the report reads the archive
    _write_round2(str(tmp_path / "rest"))
    for name in part:
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
        shutil.copytree(os.path.join(tmp_path, "rest", name), os.path.join(root, name))
    assert r2.main([f"--runs={root}", f"--archive={arc}"]) == 0
    assert capsys.readouterr().out.startswith(
        f"archived 2 runs into {arc} (28 were already there); 0 not complete")
    assert r2.main([f"--runs={arc}", f"--out={tmp_path / 'o1'}"]) == 0
    assert r2.main([f"--runs={root}", f"--out={tmp_path / 'o2'}"]) == 0
    assert (open(tmp_path / "o1" / "RESULTS_ROUND2.md").read()
            == open(tmp_path / "o2" / "RESULTS_ROUND2.md").read())
    # another record of an archived run: an error naming it, the archived one untouched
    before = open(os.path.join(arc, "cpu_tn_round2", "t2_n2_s3", "run.json")).read()
    meta = json.load(open(os.path.join(one, "run.json")))
    json.dump({**meta, "active_s": 1.0}, open(os.path.join(one, "run.json"), "w"))
    assert r2.main([f"--runs={root}", f"--archive={arc}"]) == 2
    err = capsys.readouterr().err
    assert "already holds another record of cpu_tn_round2/t2_n2_s3" in err
    assert open(os.path.join(arc, "cpu_tn_round2", "t2_n2_s3", "run.json")).read() == before
    # bad arguments: one line each
    for argv in ([f"--results={arc}", f"--archive={arc}"],
                 [f"--runs={root}", f"--archive={arc}", "--out=x"]):
        with pytest.raises(SystemExit) as e:
            r2.main(argv)
        assert e.value.code == 2
    assert r2.main([f"--runs={tmp_path / 'nowhere'}", f"--archive={arc}"]) == 2
    assert "is not a folder" in capsys.readouterr().err


def _notebook_outputs(nb):
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def _markdown_outputs(outputs):
    return [o["data"]["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})]


def test_round2_notebook_renders_with_the_report(tmp_path, monkeypatch, capsys):
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("nbclient")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    root, out = str(tmp_path / "runs"), str(tmp_path / "out")
    _write_round2(root)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    # a copy of the notebook in a folder whose parent holds `studies`, as in the repository
    os.symlink(os.path.join(repo, "studies"), tmp_path / "studies")
    os.makedirs(tmp_path / "nb")
    nb_path = str(tmp_path / "nb" / "notebook_round2.ipynb")
    shutil.copy(os.path.join(repo, "studies", "cpu_study", "notebook_round2.ipynb"), nb_path)
    bad = [f"--runs={root}", f"--out={out}", f"--notebook={tmp_path / 'none.ipynb'}"]
    assert r2.main(bad) == 2 and not os.path.exists(out)  # before any report is written
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "none.ipynb' does not exist" in err
    assert r2.main([f"--runs={root}", f"--out={out}", f"--notebook={nb_path}"]) == 0
    outputs = _notebook_outputs(nbformat.read(nb_path, as_version=4))
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs)
    assert "30 runs, all complete" in text and "git_dirty: False" in text
    # the tables are round2's own, on the results_round2.json --notebook has just written
    res = json.load(open(os.path.join(out, "results_round2.json")))
    tables = _markdown_outputs(outputs)
    for table in (r2.verdicts_table, r2.arms_table, r2.longer_table, r2.ema_table,
                  r2.curves_table):
        assert "\n".join(table(res)) in tables
    assert "| C1 | T=3, n=6 minus T=2, n=2 |" in tables[0] and "**supported**" in tables[0]
    assert len([o for o in outputs if "image/png" in o.get("data", {})]) == len(r2.FIGURES)


def test_committed_round2_notebook_matches_the_committed_results():
    nbformat = pytest.importorskip("nbformat")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    nb = nbformat.read(os.path.join(repo, "studies", "cpu_study", "notebook_round2.ipynb"),
                       as_version=4)
    outputs = _notebook_outputs(nb)
    results = os.path.join(repo, "docs", "results", "cpu_study", r2.RESULTS_JSON)
    if not os.path.exists(results):  # the runs are not done: no outputs, no execution counts
        assert not outputs
        assert not [c for c in nb.cells if c.cell_type == "code" and c.execution_count]
        assert "rendered with its outputs once round two's 30 runs are done" in (
            nb.cells[0].source.lower())
        return
    res = r2.analyze(r2.load_results(results))
    assert _markdown_outputs(outputs)[0] == "\n".join(r2.verdicts_table(res))
    assert len([o for o in outputs if "image/png" in o.get("data", {})]) == len(r2.FIGURES)
