"""The fake Cloud TPU of the launcher tests: ``fake_gcloud.py`` installed as ``gcloud``.

:class:`FakeCloud` makes a fake's directory (``FAKE_CLOUD``), puts its ``gcloud`` first on
``PATH`` and gives the VMs a ``python3`` stand-in (``vmpython``: pip and the torch_xla check are
no-ops), a ``hostname`` (``<vm>-w<k>``) and two trainers: ``fake_vm_train`` (the real
``trm.train`` behind a gs:// mapping, able to preempt its own VM mid-run) and ``fast_train``
(a stand-in with a per-step collective across the workers). See fake_gcloud.py for the world
it simulates.
"""

import json
import os
import subprocess
import sys
import tarfile
import textwrap
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

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

# A stand-in trainer for the fast tests, one process per worker like a multi-host trainer.
# Every step is a collective: a worker waits until every peer of its VM instance has reached
# the step (files under FAKE_CLOUD/sync), so a dead peer, or one in another run, blocks the
# others for good, as XLA's collectives do. Worker 0 writes run.json (last_step 0..10,
# resuming from the last one written) and records its argv; FAKE_SLEEP seconds per run.
# FAKE_CLOUD/fail: exit 3 at once; FAKE_CLOUD/hang_once: worker 0 hangs (once).
FAST_TRAIN = textwrap.dedent(
    """\
    import json, os, sys, time
    root = os.environ["FAKE_CLOUD"]
    url = next(a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--workdir="))
    out = os.path.join(root, "gcs", url[len("gs://"):])
    worker, peers = int(os.environ["FAKE_VM_WORKER"]), int(os.environ["FAKE_VM_WORKERS"])
    steps = 10
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "run.json")


    def write(data):
        with open(path + ".tmp", "w") as f:
            json.dump(data, f)
        os.replace(path + ".tmp", path)


    try:
        step = json.load(open(path)).get("last_step", 0)
    except (OSError, ValueError):
        step = 0
    if os.path.exists(os.path.join(root, "fail")):
        sys.exit(3)
    if worker == 0:
        with open(os.path.join(out, "calls.jsonl"), "a") as f:
            f.write(json.dumps(sys.argv[1:]) + "\\n")
        write({"status": "running", "last_step": step})
        if os.path.exists(os.path.join(root, "hang_once")):
            os.remove(os.path.join(root, "hang_once"))
            time.sleep(3600)
    sync = os.path.join(root, "sync", os.environ["FAKE_VM_INSTANCE"], url.replace("/", "_"))
    os.makedirs(sync, exist_ok=True)
    while step < steps:
        with open(os.path.join(sync, f"w{worker}.tmp"), "w") as f:
            f.write(str(step))
        os.replace(os.path.join(sync, f"w{worker}.tmp"), os.path.join(sync, f"w{worker}"))
        while True:  # the collective
            seen = []
            for k in range(peers):
                try:
                    seen.append(int(open(os.path.join(sync, f"w{k}")).read()))
                except (OSError, ValueError):
                    seen.append(-1)
            if min(seen) >= step:
                break
            time.sleep(0.02)
        time.sleep(float(os.environ.get("FAKE_SLEEP", "0")) / steps)
        step += 1
        if worker == 0:
            write({"status": "running", "last_step": step, "active_s": step})
    if worker == 0:
        write({"status": "completed", "last_step": steps})
    """
)


class FakeCloud:
    """The fake's directory, its state and the environment that puts it first on PATH."""

    def __init__(self, root, monkeypatch, plan=(), qr_polls=1, fail_create=0, **settings):
        """``settings``: more of the fake's state (``create_polls``, ``delete_polls``,
        ``grace_s``, ``faults``, ``workers``, ``known_hosts``)."""
        self.root = root
        for d in ("bin", "vmbin", "mods", "gcs", "vms"):
            (root / d).mkdir(parents=True)
        gcloud = root / "bin" / "gcloud"
        with open(os.path.join(HERE, "fake_gcloud.py")) as f:
            gcloud.write_text(f"#!{sys.executable} -S\n{f.read()}")
        vmpython = root / "vmbin" / "vmpython"
        vmpython.write_text(VM_PYTHON.format(python=sys.executable))
        hostname = root / "vmbin" / "hostname"
        hostname.write_text('#!/bin/sh\necho "$FAKE_VM-w$FAKE_VM_WORKER"\n')
        for p in (gcloud, vmpython, hostname):
            p.chmod(0o755)
        (root / "mods" / "fake_vm_train.py").write_text(VM_TRAIN)
        (root / "mods" / "fast_train.py").write_text(FAST_TRAIN)
        self.write({"vms": {}, "qrs": {}, "instances": 0, "events": [], "plan": list(plan),
                    "qr_polls": qr_polls, "fail_create": fail_create, **settings})
        monkeypatch.setenv("PATH", f"{root / 'bin'}:{os.environ['PATH']}")
        monkeypatch.setenv("FAKE_CLOUD", str(root))
        monkeypatch.setenv("PYTHONPATH", f"{root / 'mods'}:{REPO}")
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
                    "watch_log": str(self.root / "watch.log"), "watch_timeout_s": 20,
                    "watch_grace_s": 0.5, **extra}
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


