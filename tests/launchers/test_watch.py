"""``python -m launchers.tpu watch``: an unattended sweep on preemptible capacity, end to end.

The fake ``gcloud`` of fake_gcloud.py (installed by fakecloud.FakeCloud, first on ``PATH``)
simulates Cloud TPU with real processes: VMs of N workers, each with its own home directory,
queued resources, async creation and deletion, preemptions (SIGTERM, then SIGKILL), per-worker
kills, host keys, and faults (ssh exit 255, hangs, transient API errors).

The end-to-end test runs the real trainer (``trm.train``, a tiny model on a generated 4x4
Sudoku set) behind a thin wrapper module that maps the ``gs://`` workdir to the fake bucket and,
for the runs named in the fake's preemption plan, preempts its own VM right after the
checkpoint of step K is committed (mid-run).
"""

import dataclasses
import json
import re
import os
import subprocess
import time

import pytest
import torch

from fakecloud import FakeCloud
from launchers import gcloud, remote, tpu, tpu_config, watch
from launchers.named_sweeps import get_sweep

# ---------------------------------------------------------------------------------------------
# End to end: the real trainer, a 3-run sweep, two preemptions, bitwise equal results.

SWEEP = "cpu_e3_1_width"  # HIDDEN_SIZE 32 / 64 / 128: three different tiny models
STEPS = 30
TINY = ["NUM_HEADS=2", "H_CYCLES=1", "L_CYCLES=1", "HALT_MAX_STEPS=2", "PUZZLE_EMB_LEN=1",
        "GLOBAL_BATCH_SIZE=16", "EVAL_BATCH_SIZE=16", "LOG_EVERY=5", "EVAL_EVERY=0",
        "CHECKPOINT_EVERY=5", "LR_WARMUP_STEPS=5", "FORWARD_DTYPE='float32'", "DEVICE='cpu'",
        "trm.TrainConfig.dataset_builder=None", f"TRAIN_STEPS={STEPS}"]


@pytest.fixture(scope="module")
def sudoku4(tmp_path_factory):
    """4x4 Sudoku (the builder of tests/train/conftest.py's fixture of the same name)."""
    from trm.data import ensure_dataset
    path = str(tmp_path_factory.mktemp("data") / "sudoku4")
    ensure_dataset(path, "sudoku_gen", box="2x2", num_train=200, num_test=48, blanks=6,
                   num_aug=4, seed=0, num_shards=4)
    return path


def _assert_same_state(a, b, name):
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), (name, k)
    for k in a["ema"]["shadow"]:
        assert torch.equal(a["ema"]["shadow"][k], b["ema"]["shadow"][k]), (name, k)
    for sa, sb in zip(a["optimizers"], b["optimizers"]):
        for pid, st in sa["state"].items():
            for key, t in st.items():
                assert torch.equal(t, sb["state"][pid][key]) if torch.is_tensor(t) \
                    else t == sb["state"][pid][key], (name, pid, key)


@pytest.mark.slow
def test_watch_survives_two_preemptions_bitwise(sudoku4, tmp_path, monkeypatch, capsys):
    runs = get_sweep(SWEEP).runs([0])
    assert len(runs) == 3
    plan = [{"run": runs[0].name, "step": 10, "mode": "preempted"},
            {"run": runs[2].name, "step": 15, "mode": "deleted"}]
    cloud = FakeCloud(tmp_path / "cloud", monkeypatch, plan=plan)
    cfg = cloud.config(tmp_path / "launch.json", accelerator_type="v4-8", spot=True,
                       train_module="fake_vm_train", price_per_chip_hour=2.0)
    extra = TINY + [f"DATA_DIR='{sudoku4}'"]
    start = time.monotonic()
    rc = tpu.main(["watch", f"--config={cfg}", f"--sweep={SWEEP}", "--seeds=0",
                   *[f"--gin_param={b}" for b in extra]], environ={})
    elapsed = time.monotonic() - start
    out, err = capsys.readouterr()
    assert rc == 0, out + err + (cloud.root / "watch.log").read_text()[-5000:]
    print(f"watch took {elapsed:.1f} s")

    # Every run completed, through two preemptions that hit runs in the middle.
    for run in runs:
        assert cloud.run_json(run.name)["status"] == "completed"
    state = cloud.state()
    events = [(e["run"], e["step"], e["mode"], e["run_status"]) for e in state["events"]]
    assert events == [(runs[0].name, 10, "preempted", "running"),
                      (runs[2].name, 15, "deleted", "running")]
    assert state["vms"] == {} and state["qrs"] == {}  # deleted at the end
    assert state["instances"] == 3

    # Spot capacity came through queued resources, created three times.
    creates = [c for c in cloud.calls() if c[2:4] == ["queued-resources", "create"]]
    assert len(creates) == 3
    assert creates[0] == ["compute", "tpus", "queued-resources", "create", "trm-w-qr",
                          "--node-id=trm-w", "--accelerator-type=v4-8",
                          "--runtime-version=tpu-ubuntu2204-base", "--spot"]
    setups = [c for c in cloud.calls() if c[2:4] == ["tpu-vm", "scp"]]
    assert len(setups) == 3  # a fresh VM is set up every time

    # What the watcher said: timestamped lines, stdout and log file, and the summary.
    lines = out.splitlines()
    assert all(l[:4].isdigit() and l[19:28] == "Z watch: " for l in lines), lines
    text = "\n".join(lines)
    assert "WAITING_FOR_RESOURCES: waiting" in text and "PROVISIONING: waiting" in text
    # The first preemption is seen as a PREEMPTED VM, its queued resource SUSPENDED (or, if
    # the poll falls between the fake's two updates, still ACTIVE): either way it is lost.
    first_loss = re.search(r"is (PREEMPTED|gone) \(queued resource (SUSPENDED|ACTIVE)\)", text)
    assert first_loss, text
    # The second (the VM deleted with its queued resource) is seen as both gone, or, when the
    # poll falls between the fake's deletion of the VM and of its queued resource, as a VM gone
    # with its queued resource still listed: either way it is lost and recreated.
    assert text.count("recreated queued resource trm-w-qr") == 2
    summary = lines[-1]
    assert "summary: 3/3 runs completed; 2 preemption(s) survived; 2 VM recreation(s);" in summary
    assert "chip-hours of v4-8" in summary and "per chip-hour" in summary
    log = (cloud.root / "watch.log").read_text()
    assert summary in log and "+ gcloud compute tpus queued-resources describe" in log
    ledger = json.loads((cloud.root / "watch.log.json").read_text())
    reasons = [i["end_reason"] for i in ledger["instances"]]
    assert len(reasons) == 3 and reasons[0] == first_loss.group(0) and reasons[2] == "deleted"
    assert re.fullmatch(r"is (gone with its queued resource|gone) \(preempted or deleted\)"
                        r"|is (PREEMPTED|TERMINATED|gone) \(queued resource [A-Z_]+\)",
                        reasons[1]), reasons
    assert reasons[1] in text

    # Bitwise equal to uninterrupted runs of the same configs.
    from trm.run.checkpoints import CheckpointManager
    from trm.train import train
    cloud.wait_idle()
    for run in runs:
        ref = str(tmp_path / "ref" / run.name)
        train(run.gin_files, run.bindings + extra, ref, progress=False)
        got_step, got = CheckpointManager(
            str(cloud.root / "gcs" / "bkt" / "trm" / run.name), async_save=False).restore("latest")
        ref_step, want = CheckpointManager(ref, async_save=False).restore("latest")
        assert got_step == ref_step == STEPS
        _assert_same_state(got, want, run.name)


# ---------------------------------------------------------------------------------------------
# Fast tests: a stand-in trainer, the Watcher driven directly (its sleep is the test's hook).


def _cfg(cloud, tmp_path, **extra):
    path = cloud.config(tmp_path / "launch.json", train_module="fast_train", **extra)
    return tpu_config.load_config({}, str(path), {})


def _runs(n=4):
    return get_sweep("cpu_e2_2_tn").runs([0])[:n]


def test_create_mode_restart_and_two_vms(tmp_path, monkeypatch, capsys):
    """Plain ``tpu-vm create`` (no Spot): a PREEMPTED VM and a vanished one are recreated; the
    watcher stopped with Ctrl-C and started again picks up from gcloud and run.json."""
    cloud = FakeCloud(tmp_path / "cloud", monkeypatch)
    monkeypatch.setenv("FAKE_SLEEP", "1.5")
    cfg = _cfg(cloud, tmp_path, provisioning="auto")  # no spot: plain create
    assert watch.provisioning_mode(cfg) == "create"
    runs = _runs(4)  # vm-a gets runs 0 and 2, vm-b runs 1 and 3
    seen = {"preempted": None, "polls": 0}

    def sleep(seconds):
        seen["polls"] += 1
        first = cloud.run_json(runs[0].name)
        if seen["preempted"] is None and first and first["status"] == "completed":
            # vm-a is in the middle of run 2 now
            assert cloud.gcloud("fake", "preempt", "vm-a", "preempted").returncode == 0
            seen["preempted"] = seen["polls"]
        if seen["preempted"] is not None and seen["polls"] >= seen["preempted"] + 4:
            raise KeyboardInterrupt
        time.sleep(seconds)

    w = watch.Watcher(cfg, "cpu_e2_2_tn", runs, ["vm-a", "vm-b"], sleep=sleep)
    assert w.run() == 130
    out = capsys.readouterr().out
    assert "interrupted: the VMs and runs are left as they are" in out
    assert "VM vm-a is PREEMPTED: its runs stopped; recreating it" in out

    # While no watcher runs, vm-b vanishes; a new watcher finds out and finishes the study.
    if "vm-b" in cloud.state()["vms"]:
        assert cloud.gcloud("fake", "preempt", "vm-b", "deleted").returncode == 0
    w2 = watch.Watcher(cfg, "cpu_e2_2_tn", runs, ["vm-a", "vm-b"])
    assert w2.run() == 0
    out = capsys.readouterr().out
    for run in runs:
        assert cloud.run_json(run.name)["status"] == "completed"
    state = cloud.state()
    assert state["vms"] == {}
    creates = [c for c in cloud.calls() if c[2:4] == ["tpu-vm", "create"]]
    assert [c[4] for c in creates].count("vm-a") == 2
    assert "--spot" not in creates[0] and creates[0][-2:] == ["--version=tpu-ubuntu2204-base",
                                                              "--async"]
    summary = out.splitlines()[-1]
    assert "4/4 runs completed" in summary
    ledger = json.loads((cloud.root / "watch.log.json").read_text())
    assert ledger["preemptions"] in (1, 2) and ledger["recreations"] >= 1
    assert f"{ledger['preemptions']} preemption(s) survived" in summary
    # Each run's trainer started once per VM instance it ran on, never twice at once.
    for run in runs:
        calls = (cloud.root / "gcs" / "bkt" / "trm" / run.name / "calls.jsonl").read_text()
        assert 1 <= len(calls.splitlines()) <= 2
    cloud.wait_idle()


def test_gives_up_after_retries_with_one_line(tmp_path, monkeypatch, capsys):
    cloud = FakeCloud(tmp_path / "cloud", monkeypatch, fail_create=100)
    cfg = _cfg(cloud, tmp_path, spot=True, accelerator_type="v4-8", watch_retries=2)
    slept = []
    w = watch.Watcher(cfg, "cpu_e2_2_tn", _runs(1), ["trm-w"], sleep=slept.append)
    assert w.run() == 1
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith(
        "error: watch gave up on VM trm-w after 3 failed attempts in a row (watch_retries=2);"
        " last: creating queued resource trm-w-qr for VM trm-w failed with exit code 1: "
        "ERROR: (gcloud.fake) RESOURCE_EXHAUSTED: no capacity"), err
    assert "next try in 0.1 s" in out and "next try in 0.2 s" in out
    assert "summary: 0/1 runs completed" in out
    assert len([c for c in cloud.calls() if c[2:4] == ["queued-resources", "create"]]) == 3


def test_a_run_that_stops_without_progress_is_retried_then_given_up(tmp_path, monkeypatch,
                                                                        capsys):
    cloud = FakeCloud(tmp_path / "cloud", monkeypatch)
    (cloud.root / "fail").write_text("")  # every run exits 3 without completing
    cfg = _cfg(cloud, tmp_path, watch_retries=1)
    w = watch.Watcher(cfg, "cpu_e2_2_tn", _runs(1), ["trm-w"],
                      sleep=lambda s: time.sleep(0.3))
    assert w.run() == 1
    out, err = capsys.readouterr()
    run = _runs(1)[0].name
    assert f"run {run} on VM trm-w stopped without progress" in err
    assert out.count(f"launched run {run} on VM trm-w (4 worker(s)") == 2  # a v4-32
    cloud.wait_idle()


def test_dry_run_prints_the_plan(tmp_path, monkeypatch, capsys):
    cloud = FakeCloud(tmp_path / "cloud", monkeypatch)
    cfg = cloud.config(tmp_path / "launch.json", spot=True, accelerator_type="v4-8")
    for verb in (["watch"], ["sweep", "--watch"]):
        rc = tpu.main([*verb, f"--config={cfg}", "--sweep=e2_2_tn", "--vms=a,b", "--dry_run"],
                      environ={})
        out = capsys.readouterr().out
        assert rc == 0
        lines = out.splitlines()
        assert lines[0].startswith("# watch e2_2_tn: every 0.2 s until every run's run.json "
                                   "says completed")
        creates = [l for l in lines if "queued-resources create" in l]
        assert creates == [f"gcloud compute tpus queued-resources create {vm}-qr "
                           f"--node-id={vm} --accelerator-type=v4-8 "
                           f"--runtime-version=tpu-ubuntu2204-base --spot" for vm in "ab"]
        assert sum("/trm-setup.ok" in l for l in lines) == 4  # probe and setup, per VM
        launches = [l for l in lines if "setsid nohup" in l]
        assert len(launches) == 2 and "--workdir=gs://bkt/trm/e2_2_tn/t2_n2_s0" in launches[0]
        assert all("--strict-host-key-checking=no" in l for l in lines if " ssh " in l)
    assert cloud.calls() == []


@pytest.mark.parametrize("settings,mode", [
    ({"spot": True, "accelerator_type": "v4-32"}, "queued"),
    ({"spot": True, "accelerator_type": "v5litepod-8"}, "queued"),
    ({"spot": True, "accelerator_type": "v6e-8"}, "queued"),
    ({"spot": True, "accelerator_type": "v3-8"}, "create"),
    ({"spot": False, "accelerator_type": "v4-32"}, "create"),
    ({"preemptible": True, "accelerator_type": "v4-32"}, "create"),
    ({"spot": True, "provisioning": "create"}, "create"),
    ({"provisioning": "queued"}, "queued"),
])
def test_provisioning_mode(settings, mode):
    assert watch.provisioning_mode(tpu_config.TpuConfig(**settings)) == mode


def test_watch_settings_are_checked(tmp_path, capsys):
    for argv, environ, label in [
        (["--poll_s=soon"], {}, "--watch_poll_s 'soon' is not allowed: must be a number"),
        (["--retries=1.5"], {}, "--watch_retries '1.5' is not allowed: must be an integer"),
        (["--poll_s=0"], {}, "must be > 0"),
        (["--provisioning=fast"], {}, "--provisioning 'fast' is not allowed"),
        ([], {"TRM_TPU_WATCH_BACKOFF_S": "-1"}, "TRM_TPU_WATCH_BACKOFF_S -1.0"),
        ([], {"TRM_TPU_MFU": "2"}, "must be > 0 and <= 1"),
    ]:
        rc = tpu.main(["watch", "--name=vm", "--bucket=b", "--sweep=e2_2_tn", *argv,
                       "--dry_run"], environ=environ)
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and label in err, err
    cfg = tpu_config.load_config({"watch_poll_s": "5"}, None, {"TRM_TPU_WATCH_RETRIES": "7"})
    assert cfg.watch_poll_s == 5.0 and cfg.watch_retries == 7
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"price_per_chip_hour": None, "mfu": 0.5}))
    assert tpu_config.load_config({}, str(path), {}).mfu == 0.5
    with pytest.raises(ValueError, match="queued resources take Spot VMs"):
        gcloud.queued_create_commands(tpu_config.TpuConfig(name="vm", preemptible=True))


def test_ledger_counts_each_loss_once(tmp_path):
    t = {"now": 1000.0}
    ledger = watch.Ledger(str(tmp_path / "l.json"), lambda: t["now"])
    ledger.seen("a", "1970-01-01T00:16:40.000000001Z")  # = 1000 s
    t["now"] = 1360.0
    assert ledger.lost("a", "PREEMPTED", "x") is True
    assert ledger.lost("a", "PREEMPTED", "x") is False  # the same loss seen again
    assert ledger.created("a") is True
    ledger.seen("a", None)
    t["now"] = 1720.0
    ledger.deleted("a")
    again = watch.Ledger(str(tmp_path / "l.json"), lambda: t["now"])
    assert again.vm_seconds() == 720.0
    assert again.data["preemptions"] == 1 and again.data["recreations"] == 1


def test_probe_and_stop_scripts(tmp_path):
    """What the watcher asks every worker, and how it stops a run, run by bash in a fake home."""
    home = tmp_path / "home"
    home.mkdir()
    cfg = tpu_config.TpuConfig(name="vm", bucket="b", remote_dir="code.d/trm+1",
                               log_dir="logs.d/x+y", train_module="fake_pkg.train_x")
    probe = remote.worker_probe_script(cfg, watch.setup_marker(cfg))

    def bash(script):
        r = subprocess.run(["bash", "-c", script], cwd=home, env={**os.environ,
                           "HOME": str(home)}, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        return r.stdout

    def ask():
        return [(state, run) for _, state, run in watch._PROBE_LINE.findall(bash(probe))]

    assert ask() == [("setup missing", "")]
    (home / "code.d" / "trm+1").mkdir(parents=True)
    (home / "code.d" / "trm+1" / "trm-setup.ok").write_text("")
    assert ask() == [("idle", "")]
    run_dir = home / "logs.d" / "x+y" / "sw"
    run_dir.mkdir(parents=True)
    # A job that ignores SIGTERM in its own process group (as `setsid` starts the trainer).
    job = subprocess.Popen(
        ["bash", "-c", "trap '' TERM; sleep 60 & wait; true # fake_pkg.train_x"],
        start_new_session=True)
    try:
        (run_dir / "r_s0.pid").write_text(str(job.pid))
        assert ask() == [("running sw/r_s0", "sw/r_s0")]
        start = time.monotonic()
        assert bash(remote.stop_script(cfg, 1.0)).strip().endswith(": stopped")
        assert job.wait(timeout=10) == -9  # SIGKILL, after the grace
        assert 1.0 <= time.monotonic() - start < 8
    finally:
        job.kill()
        job.wait()
    assert ask() == [("idle", "")]
    # The watcher's setup ends by creating the marker (and only then).
    git = dataclasses.replace(cfg, source="git+https://h/x.git")
    (ssh,) = remote.setup_commands(git, marker=watch.setup_marker(cfg), strict_host_keys=False)
    assert ssh[-1].endswith(' && touch "$HOME"/code.d/trm+1/trm-setup.ok')
    assert "--strict-host-key-checking=no" in ssh


# ---------------------------------------------------------------------------------------------
# Multi-host slices and an unreliable cloud.


def _ssh_scripts(cloud, marker):
    return [c for c in cloud.calls() if c[2:4] == ["tpu-vm", "ssh"] and marker in c[-1]]


def test_a_dead_worker_stops_the_run_on_every_worker_and_it_restarts_together(
        tmp_path, monkeypatch, capsys):
    """On a 4-host v4-32 one worker dies mid-run; the others block in their collective. The
    watcher sees the workers out of step, stops the run everywhere and relaunches it on all
    four together; it resumes and completes."""
    cloud = FakeCloud(tmp_path / "cloud", monkeypatch)
    monkeypatch.setenv("FAKE_SLEEP", "4")
    cfg = _cfg(cloud, tmp_path, accelerator_type="v4-32")
    (run,) = _runs(1)
    killed = []

    def sleep(seconds):
        state = cloud.run_json(run.name)
        if not killed and state and state.get("last_step", 0) >= 2:
            assert cloud.gcloud("fake", "kill", "trm-w", "2").returncode == 0
            killed.append(state["last_step"])
        time.sleep(seconds)

    w = watch.Watcher(cfg, "cpu_e2_2_tn", [run], ["trm-w"], sleep=sleep)
    assert w.run() == 0
    out = capsys.readouterr().out
    assert killed and cloud.run_json(run.name)["status"] == "completed"
    assert (f"workers out of step (trm-w-w0: {run.name}; trm-w-w1: {run.name}; trm-w-w2: idle;"
            f" trm-w-w3: {run.name})") in out, out
    assert out.count(f"launched run {run.name} on VM trm-w (4 worker(s)") == 2
    assert len(_ssh_scripts(cloud, "setsid nohup")) == 2  # each launch: one ssh to all workers
    assert len(_ssh_scripts(cloud, "kill -TERM")) == 1
    starts = (cloud.root / "gcs" / "bkt" / "trm" / run.name / "calls.jsonl").read_text()
    assert len(starts.splitlines()) == 2
    homes = sorted((cloud.root / "vms").glob("trm-w-1/w*"))
    assert [h.name for h in homes] == ["w0", "w1", "w2", "w3"]
    for home in homes:  # every worker started the run twice (its own log)
        log = (home / "trm-logs" / f"{run.name}.log").read_text()
        assert log.count(f"starting {run.name}") == 2, (home, log)
    cloud.wait_idle()


def test_a_hung_run_is_stopped_and_restarted(tmp_path, monkeypatch, capsys):
    cloud = FakeCloud(tmp_path / "cloud", monkeypatch)
    monkeypatch.setenv("FAKE_SLEEP", "0.5")
    (cloud.root / "hang_once").write_text("")  # the first start hangs: alive, no progress
    cfg = _cfg(cloud, tmp_path, accelerator_type="v4-8", watch_hang_s=1.5, watch_retries=1)
    (run,) = _runs(1)
    w = watch.Watcher(cfg, "cpu_e2_2_tn", [run], ["trm-w"], sleep=lambda s: time.sleep(0.2))
    assert w.run() == 0
    out = capsys.readouterr().out
    assert f"run {run.name} is hung (no progress in its run.json for 1.5 s)" in out
    assert f"attempt failed on VM trm-w (1/1): run {run.name} on VM trm-w hung" in out
    assert cloud.run_json(run.name)["status"] == "completed"
    starts = (cloud.root / "gcs" / "bkt" / "trm" / run.name / "calls.jsonl").read_text()
    assert len(starts.splitlines()) == 2
    cloud.wait_idle()


def test_timeouts_transient_errors_async_states_and_host_keys(tmp_path, monkeypatch, capsys):
    """Transient API errors (UNAVAILABLE, a create that hangs after doing its work) are not
    counted; ssh failures (a hang, exit 255) are; a lagging NOT_FOUND leads to a create that
    answers ALREADY_EXISTS, which is no failure; the VM is CREATING and DELETING for a while;
    the client knows another host key for the name (a recreated VM), which the watcher accepts.
    With watch_retries=2 any counted transient error would make it give up."""
    faults = [{"cmd": "describe", "vm": "trm-w", "mode": "notfound", "count": 1, "skip": 3},
              {"cmd": "describe", "vm": "trm-w", "mode": "unavailable", "count": 2},
              {"cmd": "create", "vm": "trm-w", "mode": "hang_after", "count": 1},
              {"cmd": "ssh", "vm": "trm-w", "mode": "hang", "count": 1},
              {"cmd": "ssh", "vm": "trm-w", "mode": "exit255", "count": 1}]
    cloud = FakeCloud(tmp_path / "cloud", monkeypatch, create_polls=2, delete_polls=1,
                      known_hosts={"trm-w": 999}, faults=faults)
    monkeypatch.setenv("FAKE_SLEEP", "0.5")
    cfg = _cfg(cloud, tmp_path, accelerator_type="v4-8", watch_retries=2, watch_timeout_s=2)
    (run,) = _runs(1)
    start = time.monotonic()
    w = watch.Watcher(cfg, "cpu_e2_2_tn", [run], ["trm-w"], sleep=lambda s: time.sleep(0.2))
    assert w.run() == 0
    out = capsys.readouterr().out
    assert time.monotonic() - start < 60
    assert cloud.run_json(run.name)["status"] == "completed"
    assert all(f["count"] == 0 for f in cloud.state()["faults"])  # every fault happened
    assert out.count("(not counted)") == 3, out
    assert "UNAVAILABLE" in out and "timed out after 2 s (launchers)" in out
    assert "VM trm-w exists already (an earlier create went through)" in out
    assert "VM trm-w is CREATING: waiting" in out
    assert "attempt failed on VM trm-w (1/2): asking VM trm-w (ssh) failed with exit code 124" \
        in out
    assert "attempt failed on VM trm-w (2/2): asking VM trm-w (ssh) failed with exit code 255" \
        in out
    calls = cloud.calls()
    assert [c[3] for c in calls if c[2] == "tpu-vm" and c[3] in ("create", "delete")] == [
        "create", "create", "delete"]
    assert all("--async" in c for c in calls if c[3:4] in (["create"], ["delete"]))
    remote_calls = [c for c in calls if c[2:4] in (["tpu-vm", "ssh"], ["tpu-vm", "scp"])]
    assert remote_calls and all("--strict-host-key-checking=no" in c for c in remote_calls)
    assert cloud.state()["vms"] == {}  # deleted once DELETING was over
    cloud.wait_idle()
