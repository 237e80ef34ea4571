"""Runs that carry hparams.json (written by trm.train) are read from it, not from gin text."""

import json
import os

import pytest

from analysis import hparams as hp
from analysis import load_runs
from analysis import testing as synth


def _run_with_hparams(tmp_path, hparams):
    wd = str(tmp_path / "e2_2_tn" / "t3_n6_s0")
    synth.write_run(wd, synth.SyntheticRun(T=3, n=6, seed=0, train_steps=40))
    with open(os.path.join(wd, "hparams.json"), "w") as f:
        f.write(hparams if isinstance(hparams, str) else json.dumps(hparams))
    return wd


def test_hparams_json_wins_over_the_gin_text(tmp_path):
    # the resolved config says T=4 (e.g. a binding the text parser cannot see)
    _run_with_hparams(tmp_path, {
        "macros": {"H_CYCLES": 4, "L_CYCLES": 6, "HIDDEN_SIZE": 96},
        "bindings": {"model.trm.H_cycles": 4, "model.trm.L_cycles": 6,
                     "model.trm.hidden_size": 96, "model.trm.mixer": "@mixer.attention",
                     "model.trm.halting": "@halting.halt_only()",
                     "scoped/optimizer.adam_atan2.betas": [0.9, 0.95]}})
    r = load_runs(str(tmp_path))
    row = r.summary.set_index("run").loc["e2_2_tn/t3_n6_s0"]
    assert (row["T"], row["n"], row["hidden_size"], row["mixer"]) == (4, 6, 96, "attention")
    assert row["halting"] == "halt_only"


def test_corrupt_hparams_json_falls_back_to_the_gin_text(tmp_path):
    _run_with_hparams(tmp_path, "{not json")
    with pytest.warns(UserWarning, match="hparams.json"):
        r = load_runs(str(tmp_path))
    row = r.summary.set_index("run").loc["e2_2_tn/t3_n6_s0"]
    assert (row["T"], row["n"]) == (3, 6)


def test_from_hparams_json_references_and_scopes():
    cfg = hp.from_hparams_json({"macros": {"LR": 1e-3},
                                "bindings": {"a/b.c.d": "@x.y()", "m.p": "plain"}})
    assert cfg.bindings["a/b.c.d"].value == hp.Reference("x.y", evaluate=True)
    assert cfg.bindings["a/b.c.d"].scope == "a" and cfg.macros["LR"] == 1e-3
    assert cfg.bindings["m.p"].value == "plain"
    bad = hp.from_hparams_json({"bindings": {"nodot": 1}})
    assert bad.errors


def test_synthetic_runs_carry_the_trainers_files(tmp_path):
    """analysis.testing writes through trm.run (RunRecord, trm's event writer) and writes
    hparams.json from the resolved TrainConfig, like trm.train."""
    from trm.run.record import RunRecord
    from trm.run.storage import Storage

    wd = str(tmp_path / "r")
    synth.write_run(wd, synth.SyntheticRun(T=2, n=5, train_steps=20))
    record = RunRecord(Storage(wd))
    saved = record.hparams()
    assert saved["macros"]["H_CYCLES"] == 2 and saved["bindings"]["model.trm.L_cycles"] == 5
    assert record.read()["best"]["metric"] == "eval/exact_accuracy"
    assert json.load(open(os.path.join(wd, "command.json")))["gin_params"] == ["SEED=0"]
    row = load_runs(wd).summary.iloc[0]
    assert (row["T"], row["n"]) == (2, 5)
