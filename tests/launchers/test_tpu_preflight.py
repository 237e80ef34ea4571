"""launchers.tpu checks every run here (trm.preflight) before any VM or run starts, for
registered sweeps, sweep files and single launches; --dry_run included."""

import json

from launchers import tpu

BASE = ["--name=vm", "--zone=us-central2-b", "--bucket=b", "--project=my-project", "--dry_run"]


def test_a_bad_binding_stops_a_sweep_before_any_command(monkeypatch, capsys):
    monkeypatch.delenv("TRM_LAUNCH_PREFLIGHT")
    rc = tpu.main(["sweep", *BASE, "--sweep=cpu_e2_2_tn", "--seeds=0", "--gin.LR=-1"])
    captured = capsys.readouterr()
    assert rc == 2 and captured.out == ""  # nothing printed: no VM command would run
    lines = captured.err.splitlines()
    assert lines[0] == "error: 5 of 5 runs would not start; nothing was started:"
    assert all("LR=-1 (TrainConfig.lr) must be >= 0." in line for line in lines[1:])


def test_sweep_file_and_launch_are_checked(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("TRM_LAUNCH_PREFLIGHT")
    sweep = tmp_path / "s.json"
    sweep.write_text(json.dumps({"gin_files": ["cpu_e1_1_baseline.gin"],
                                 "grid": {"HIDDEN_SIZE": [64, 63]}}))
    assert tpu.main(["sweep", *BASE, f"--sweep={sweep}"]) == 2
    err = capsys.readouterr().err
    assert "s/hidden_size63_s0: Cannot build the model" in err and "hidden_size64" not in err
    assert tpu.main(["launch", *BASE, "--gin_file=cpu_e1_1_baseline.gin", "--run_name=r",
                     "--gin_param=TRAIN_STEPS=0"]) == 2
    assert "r: TRAIN_STEPS=0" in capsys.readouterr().err
    assert tpu.main(["launch", *BASE, "--gin_file=cpu_e1_1_baseline.gin", "--run_name=r",
                     "--gin_param=TRAIN_STEPS=0", "--no_preflight"]) == 0
    out = capsys.readouterr().out
    assert "--gin_param=TRAIN_STEPS=0" in out
