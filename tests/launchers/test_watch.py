"""``python -m launchers.tpu watch``: an unattended sweep on preemptible capacity, end to end.

A fake ``gcloud`` (first on ``PATH``) simulates Cloud TPU: VMs and queued resources live in a
JSON state file (under a lock), each VM instance has its own fresh home directory, ``ssh`` runs
the remote script under bash in that home, ``scp`` copies into it, and ``gs://X`` is the local
directory ``FAKE_CLOUD/gcs/X``. Every process started through ``ssh`` carries the instance's
token in its environment; a *preemption* (``gcloud fake preempt VM MODE``) SIGKILLs every such
process and marks the VM ``PREEMPTED`` (its queued resource ``SUSPENDED``) or removes VM and
request altogether. Queued resources go WAITING_FOR_RESOURCES -> PROVISIONING -> ACTIVE over
successive ``describe`` calls.

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
import sys
import tarfile
import textwrap
import time

import pytest
import torch

from launchers import gcloud, remote, tpu, tpu_config, watch
from launchers.named_sweeps import get_sweep

FAKE_GCLOUD = textwrap.dedent(
    """\
    import datetime, fcntl, json, os, shutil, signal, subprocess, sys, time
    ROOT = os.environ["FAKE_CLOUD"]
    STATE = os.path.join(ROOT, "state.json")
    args = sys.argv[1:]
    with open(os.path.join(ROOT, "calls.jsonl"), "a") as f:
        f.write(json.dumps({"argv": args, "t": time.time()}) + "\\n")


    def now_iso():
        t = datetime.datetime.now(datetime.timezone.utc)
        return t.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"


    class Locked:
        def __enter__(self):
            self.f = open(STATE + ".lock", "a")
            fcntl.flock(self.f, fcntl.LOCK_EX)
            with open(STATE) as f:
                self.s = json.load(f)
            return self.s

        def __exit__(self, kind, *rest):
            if kind is None or kind is SystemExit:
                with open(STATE + ".tmp", "w") as f:
                    json.dump(self.s, f, indent=1)
                os.replace(STATE + ".tmp", STATE)
            fcntl.flock(self.f, fcntl.LOCK_UN)
            self.f.close()


    def fail(msg, rc=1):
        print(f"ERROR: (gcloud.fake) {msg}", file=sys.stderr)
        sys.exit(rc)


    def flag(name):
        return next((a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")), None)


    def new_node(s, name, spot, qr=None):
        s["instances"] += 1
        inst = s["instances"]
        home = os.path.join(ROOT, "vms", f"{name}-{inst}")
        os.makedirs(home)
        s["vms"][name] = {"state": "READY", "createTime": now_iso(), "instance": inst,
                          "home": home, "spot": spot, "qr": qr}


    def kill_instance(inst):
        token = f"FAKE_VM_INSTANCE={inst}".encode()
        for pid in os.listdir("/proc"):
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if token in f.read().split(b"\\0"):
                        os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass


    def run_status(run):
        try:
            with open(os.path.join(ROOT, "gcs", "bkt", "trm", run, "run.json")) as f:
                return json.load(f).get("status")
        except (OSError, ValueError):
            return None


    if args[:2] == ["storage", "cat"]:
        path = os.path.join(ROOT, "gcs", args[2][len("gs://"):])
        try:
            with open(path) as f:
                sys.stdout.write(f.read())
        except OSError:
            fail(f"One or more URLs matched no objects: {args[2]}")
        sys.exit(0)

    if args[:2] == ["fake", "preempt"]:
        name, mode = args[2], args[3]
        with Locked() as s:
            vm = s["vms"][name]
            event = {"vm": name, "instance": vm["instance"], "mode": mode, "t": time.time(),
                     "run": args[4] if len(args) > 4 else None,
                     "step": int(args[5]) if len(args) > 5 else None}
            if event["run"]:
                event["run_status"] = run_status(event["run"])
            for p in s["plan"]:
                if p["run"] == event["run"] and not p.get("done"):
                    p["done"] = True
                    break
            s["events"].append(event)
            if mode == "preempted":
                vm["state"] = "PREEMPTED"
                if vm["qr"]:
                    s["qrs"][vm["qr"]]["state"] = "SUSPENDED"
            else:
                del s["vms"][name]
                s["qrs"].pop(vm["qr"], None)
        kill_instance(vm["instance"])
        sys.exit(0)

    group, verb = args[2], args[3]
    name = args[4]
    if group == "tpu-vm":
        if verb in ("create", "describe", "delete", "start"):
            with Locked() as s:
                vm = s["vms"].get(name)
                if verb == "create":
                    if s["fail_create"] > 0:
                        s["fail_create"] -= 1
                        fail("RESOURCE_EXHAUSTED: There is no more capacity in the zone")
                    if vm:
                        fail(f"ALREADY_EXISTS: node {name}")
                    new_node(s, name, "--spot" in args)
                    sys.exit(0)
                if vm is None:
                    fail(f"NOT_FOUND: projects/p/locations/z/nodes/{name} was not found")
                if verb == "describe":
                    print(json.dumps({"name": f"projects/p/locations/z/nodes/{name}",
                                      "state": vm["state"], "createTime": vm["createTime"],
                                      "schedulingConfig": {"spot": vm["spot"]}}))
                elif verb == "start":
                    vm["state"] = "READY"
                else:
                    del s["vms"][name]
                    kill_instance(vm["instance"])
            sys.exit(0)
        with open(STATE) as f:
            vm = json.load(f)["vms"].get(name.split(":")[0] if verb != "scp" else
                                          args[5].split(":")[0])
        if vm is None or vm["state"] != "READY":
            fail("ssh: connect to host: Connection refused", 255)
        if verb == "scp":
            shutil.copy(args[4], os.path.join(vm["home"], args[5].split(":", 1)[1]))
            sys.exit(0)
        script = args[args.index("--command") + 1]
        env = dict(os.environ, HOME=vm["home"], FAKE_VM=name,
                   FAKE_VM_INSTANCE=str(vm["instance"]),
                   PATH=os.path.join(ROOT, "vmbin") + ":" + os.environ["PATH"])
        sys.exit(subprocess.run(["bash", "-c", script], cwd=vm["home"], env=env).returncode)

    if group == "queued-resources":
        with Locked() as s:
            q = s["qrs"].get(name)
            if verb == "create":
                if s["fail_create"] > 0:
                    s["fail_create"] -= 1
                    fail("RESOURCE_EXHAUSTED: no capacity")
                if q:
                    fail(f"ALREADY_EXISTS: queued resource {name}")
                s["qrs"][name] = {"state": "WAITING_FOR_RESOURCES", "polls": 0,
                                  "node": flag("node-id"), "spot": "--spot" in args,
                                  "createTime": now_iso()}
                sys.exit(0)
            if q is None:
                fail(f"NOT_FOUND: queued resource {name} was not found")
            if verb == "describe":
                nxt = {"WAITING_FOR_RESOURCES": "PROVISIONING", "PROVISIONING": "ACTIVE"}
                if q["state"] in nxt:
                    q["polls"] += 1
                    if q["polls"] > s["qr_polls"]:
                        q["state"], q["polls"] = nxt[q["state"]], 0
                        if q["state"] == "ACTIVE":
                            new_node(s, q["node"], q["spot"], name)
                print(json.dumps({"name": f"projects/p/locations/z/queuedResources/{name}",
                                  "createTime": q["createTime"], "state": {"state": q["state"]},
                                  "tpu": {"nodeSpec": [{"nodeId": q["node"]}]}}))
            elif verb == "delete":
                vm = s["vms"].get(q["node"])
                if vm is not None:
                    if "--force" not in args:
                        fail("FAILED_PRECONDITION: the queued resource has a node")
                    del s["vms"][q["node"]]
                    kill_instance(vm["instance"])
                del s["qrs"][name]
        sys.exit(0)
    fail(f"unknown command {args}", 2)
    """
)

VM_PYTHON = textwrap.dedent(
    """\
    #!/bin/sh
    # The VM's python3: pip and the torch_xla import check are no-ops; the rest is real Python.
    if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then echo "fake pip: $*"; exit 0; fi
    case "$2" in *torch_xla*) echo "fake torch, torch_xla, trm"; exit 0;; esac
    exec {python} "$@"
    """
)

# The trainer on the fake VM: the real trm.train, with the gs:// workdir mapped to the fake
# bucket; the fake's plan may ask it to preempt its own VM after committing checkpoint K.
VM_TRAIN = textwrap.dedent(
    """\
    import json, os, subprocess, sys, time
    root = os.environ["FAKE_CLOUD"]
    args = sys.argv[1:]
    url = next(a.split("=", 1)[1] for a in args if a.startswith("--workdir="))
    run_name = url.split("/", 4)[4]  # gs://bkt/trm/<sweep>/<run>
    assert os.environ.pop("PJRT_DEVICE") == "TPU"  # what the launcher sets; this VM is a CPU
    with open(os.path.join(root, "state.json")) as f:
        plan = [p for p in json.load(f)["plan"] if p["run"] == run_name and not p.get("done")]
    if plan:
        from trm.run import checkpoints
        original = checkpoints.CheckpointManager.save

        def save(self, step, *a, **k):
            out = original(self, step, *a, **k)
            if step >= plan[0]["step"]:
                self.wait()  # committed: now the VM goes away, mid-run
                subprocess.run(["gcloud", "fake", "preempt", os.environ["FAKE_VM"],
                                plan[0]["mode"], run_name, str(step)])
                time.sleep(600)
            return out

        checkpoints.CheckpointManager.save = save
    local = "--workdir=" + os.path.join(root, "gcs", url[len("gs://"):])
    argv = [a if not a.startswith("--workdir=") else local for a in args]
    from trm.train import run
    run(["trm.train", *argv, "--noprogress"])
    """
)

# A stand-in trainer for the fast tests: writes run.json ("completed") after FAKE_SLEEP s.
FAST_TRAIN = textwrap.dedent(
    """\
    import json, os, sys, time
    root = os.environ["FAKE_CLOUD"]
    url = next(a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--workdir="))
    out = os.path.join(root, "gcs", url[len("gs://"):])
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "calls.jsonl"), "a") as f:
        f.write(json.dumps(sys.argv[1:]) + "\\n")
    json.dump({"status": "running", "last_step": 0}, open(os.path.join(out, "run.json"), "w"))
    time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
    if os.path.exists(os.path.join(root, "fail")):
        sys.exit(3)
    json.dump({"status": "completed", "last_step": 10},
              open(os.path.join(out, "run.json.tmp"), "w"))
    os.replace(os.path.join(out, "run.json.tmp"), os.path.join(out, "run.json"))
    """
)


class FakeCloud:
    """The fake's directory, its state and the environment that puts it first on PATH."""

    def __init__(self, root, monkeypatch, plan=(), qr_polls=1, fail_create=0):
        self.root = root
        for d in ("bin", "vmbin", "mods", "gcs", "vms"):
            (root / d).mkdir(parents=True)
        gcloud = root / "bin" / "gcloud"
        gcloud.write_text(f"#!{sys.executable} -S\n{FAKE_GCLOUD}")
        vmpython = root / "vmbin" / "vmpython"
        vmpython.write_text(VM_PYTHON.format(python=sys.executable))
        for p in (gcloud, vmpython):
            p.chmod(0o755)
        (root / "mods" / "fake_vm_train.py").write_text(VM_TRAIN)
        (root / "mods" / "fast_train.py").write_text(FAST_TRAIN)
        self.write({"vms": {}, "qrs": {}, "instances": 0, "events": [], "plan": list(plan),
                    "qr_polls": qr_polls, "fail_create": fail_create})
        repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        monkeypatch.setenv("PATH", f"{root / 'bin'}:{os.environ['PATH']}")
        monkeypatch.setenv("FAKE_CLOUD", str(root))
        monkeypatch.setenv("PYTHONPATH", f"{root / 'mods'}:{repo}")
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
        # The trainer's source on the VM: any sdist will do (the VM's python is the real one).
        src = root / "trm-src"
        src.mkdir()
        (src / "README").write_text("trm\n")
        self.sdist = root / "trm-0.0.tar.gz"
        with tarfile.open(self.sdist, "w:gz") as tar:
            tar.add(src, arcname="trm-0.0")

    def write(self, state):
        (self.root / "state.json").write_text(json.dumps(state))

    def state(self):
        return json.loads((self.root / "state.json").read_text())

    def calls(self):
        path = self.root / "calls.jsonl"
        return [json.loads(l)["argv"] for l in path.read_text().splitlines()] if path.exists() \
            else []

    def gcloud(self, *argv):
        return subprocess.run(["gcloud", *argv], capture_output=True, text=True, timeout=30)

    def run_json(self, run_name):
        path = self.root / "gcs" / "bkt" / "trm" / run_name / "run.json"
        return json.loads(path.read_text()) if path.exists() else None

    def config(self, path, **extra):
        settings = {"name": "trm-w", "bucket": "bkt", "root": "trm", "python": "vmpython",
                    "source": str(self.sdist), "find_links": "", "watch_poll_s": 0.2,
                    "watch_backoff_s": 0.1, "watch_backoff_max_s": 1, "watch_retries": 3,
                    "watch_log": str(self.root / "watch.log"), **extra}
        path.write_text(json.dumps(settings))
        return path

    def wait_idle(self, timeout=30):
        """Waits until no process started by the fake's ssh is alive (background queues)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            alive = []
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
                except OSError:
                    continue
                if f"FAKE_CLOUD={self.root}".encode() in env and any(
                        e.startswith(b"FAKE_VM_INSTANCE=") for e in env):
                    alive.append(pid)
            if not alive:
                return
            time.sleep(0.05)
        raise AssertionError(f"processes still alive: {alive}")


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
    assert "--spot" not in creates[0] and creates[0][-1] == "--version=tpu-ubuntu2204-base"
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


def test_a_queue_that_ends_without_progress_is_retried_then_given_up(tmp_path, monkeypatch,
                                                                        capsys):
    cloud = FakeCloud(tmp_path / "cloud", monkeypatch)
    (cloud.root / "fail").write_text("")  # every run exits 3 without completing
    cfg = _cfg(cloud, tmp_path, watch_retries=1)
    w = watch.Watcher(cfg, "cpu_e2_2_tn", _runs(1), ["trm-w"],
                      sleep=lambda s: time.sleep(0.3))
    assert w.run() == 1
    out, err = capsys.readouterr()
    assert "the queue on VM trm-w ended without progress" in err
    assert out.count("launched 1 unfinished run(s) on VM trm-w") == 2
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
        assert lines[0].startswith("# watch: every 0.2 s until every run's run.json says "
                                   "completed")
        creates = [l for l in lines if "queued-resources create" in l]
        assert creates == [f"gcloud compute tpus queued-resources create {vm}-qr "
                           f"--node-id={vm} --accelerator-type=v4-8 "
                           f"--runtime-version=tpu-ubuntu2204-base --spot" for vm in "ab"]
        assert sum("/trm-setup.ok" in l for l in lines) == 4  # probe and setup, per VM
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


def test_probe_script_answers(tmp_path):
    """The one question the watcher asks every worker, run by bash in a fake home."""
    home = tmp_path / "home"
    home.mkdir()
    cfg = tpu_config.TpuConfig(name="vm", bucket="b", remote_dir="code.d/trm+1",
                        log_dir="logs.d/x+y", train_module="fake_pkg.train_x")
    script = remote.queue_probe_script(cfg, "e2_2_tn", watch.setup_marker(cfg))

    def ask():
        r = subprocess.run(["bash", "-c", script], cwd=home, env={**os.environ,
                           "HOME": str(home)}, capture_output=True, text=True, timeout=10)
        assert r.returncode == 0, r.stderr
        return watch._PROBE_LINE.findall(r.stdout)

    assert ask() == ["setup missing"]
    (home / "code.d" / "trm+1").mkdir(parents=True)
    (home / "code.d" / "trm+1" / "trm-setup.ok").write_text("")
    assert ask() == ["queue stopped"]
    pid_dir = home / "logs.d" / "x+y" / "sweeps"
    pid_dir.mkdir(parents=True)
    proc = subprocess.Popen(["bash", "-c", "sleep 30; true # fake_pkg.train_x"])
    try:
        (pid_dir / "e2_2_tn.pid").write_text(str(proc.pid))
        assert ask() == ["queue running"]
    finally:
        proc.kill()
        proc.wait()
    assert ask() == ["queue stopped"]
    # The watcher's setup ends by creating the marker (and only then).
    git = dataclasses.replace(cfg, source="git+https://h/x.git")
    (ssh,) = remote.setup_commands(git, marker=watch.setup_marker(cfg))
    assert ssh[-1].endswith(' && touch "$HOME"/code.d/trm+1/trm-setup.ok')
