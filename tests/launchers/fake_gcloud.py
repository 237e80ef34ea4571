"""A fake ``gcloud`` for the launcher tests: Cloud TPU VMs, queued resources, ssh and gs://.

Installed as ``FAKE_CLOUD/bin/gcloud`` (first on ``PATH``) by ``fakecloud.FakeCloud``. The
world lives in ``FAKE_CLOUD/state.json`` (under a lock):

* VMs (``tpu-vm create|describe|delete|start|ssh|scp``) with N workers each (from the
  accelerator type: ``v4-32`` has 4 hosts), every worker its own home directory
  ``vms/<name>-<instance>/w<k>``; ``create`` refuses a runtime version that does not fit the
  accelerator family (INVALID_ARGUMENT, as the API does) and a name that exists
  (ALREADY_EXISTS); ``--async`` create / delete leave the VM ``CREATING`` / ``DELETING`` for
  ``create_polls`` / ``delete_polls`` describes;
* queued resources: WAITING_FOR_RESOURCES -> PROVISIONING -> ACTIVE over ``qr_polls``
  describes each, then the VM exists;
* ``ssh`` runs the script under bash in every selected worker's home, in parallel, with
  ``FAKE_VM``, ``FAKE_VM_INSTANCE`` and ``FAKE_VM_WORKER`` in the environment (the processes of
  an instance are found by them) and ``hostname`` answering ``<vm>-w<k>``; it checks the host
  key: a recreated VM has a new one, refused unless ``--strict-host-key-checking=no``;
* ``scp`` copies into every worker's home; ``storage cat gs://X`` reads ``gcs/X``;
* ``fake preempt VM MODE [RUN STEP]``: SIGTERM to every process of the instance, SIGKILL after
  ``grace_s``; MODE ``preempted`` leaves the VM PREEMPTED (its queued resource SUSPENDED),
  ``deleted`` removes both; ``fake kill VM WORKER``: SIGKILL to one worker's processes;
* faults (``faults``: ``{"cmd", "vm", "mode", "count", "skip"}``, the first ``skip`` matching
  calls let through): ``exit255`` (ssh cannot connect), ``hang`` (never answers),
  ``unavailable`` (a transient API error), ``notfound`` (a lagging NOT_FOUND), ``hang_after``
  (does the work, then never answers).

Every call is appended to ``calls.jsonl``.
"""

import datetime
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time

ROOT = os.environ["FAKE_CLOUD"]
STATE = os.path.join(ROOT, "state.json")
RUNTIMES = {"v2": "tpu-ubuntu2204-base", "v3": "tpu-ubuntu2204-base",
            "v4": "tpu-ubuntu2204-base", "v5litepod": "v2-alpha-tpuv5-lite",
            "v5p": "v2-alpha-tpuv5", "v6e": "v2-alpha-tpuv6e"}
CORES_IN_NAME = ("v2", "v3", "v4", "v5p")
args = sys.argv[1:]


class Locked:
    """The state, read and (unless an exception other than exit) written back under a lock."""

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


def now_iso():
    t = datetime.datetime.now(datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z"


def fail(msg, rc=1):
    print(f"ERROR: (gcloud.fake) {msg}", file=sys.stderr)
    sys.exit(rc)


def flag(name):
    return next((a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")), None)


def hang():
    time.sleep(3600)
    sys.exit(0)


def fault(cmd, vm):
    """The first matching fault still armed (its count decremented), or None."""
    with Locked() as s:
        for f in s.get("faults", []):
            if f["cmd"] == cmd and f.get("vm") in (None, vm) and f["count"] > 0:
                if f.get("skip", 0) > 0:  # let this many matching calls through first
                    f["skip"] -= 1
                    continue
                f["count"] -= 1
                return f["mode"]
    return None


def apply_fault(mode, what):
    if mode == "exit255":
        print("ssh: connect to host 10.0.0.2 port 22: Connection timed out", file=sys.stderr)
        sys.exit(255)
    if mode == "hang":
        hang()
    if mode == "unavailable":
        fail(f"UNAVAILABLE: the service is currently unavailable ({what})")
    if mode == "notfound":  # an answer that lags behind (eventual consistency)
        fail(f"NOT_FOUND: {what}: the resource was not found")


def workers_of(accelerator):
    family, _, count = accelerator.partition("-")
    chips = int(count) // 2 if family in CORES_IN_NAME else int(count)
    return 1 if chips <= (4 if family in CORES_IN_NAME else 8) else chips // 4


def check_runtime(accelerator, version):
    family = accelerator.partition("-")[0]
    if RUNTIMES.get(family) != version:
        fail(f"INVALID_ARGUMENT: runtime version {version} is not supported for accelerator "
             f"type {accelerator} (use {RUNTIMES.get(family)})")


def new_node(s, name, accelerator, version, spot, qr=None, state="READY"):
    s["instances"] += 1
    inst = s["instances"]
    workers = s.get("workers", {}).get(name) or workers_of(accelerator)
    home = os.path.join(ROOT, "vms", f"{name}-{inst}")
    for k in range(workers):
        os.makedirs(os.path.join(home, f"w{k}"))
    s["vms"][name] = {"state": state, "createTime": now_iso(), "instance": inst, "home": home,
                      "workers": workers, "spot": spot, "qr": qr, "polls": 0,
                      "accelerator": accelerator, "version": version}


def signal_instance(inst, sig, worker=None):
    """Signals every process of instance ``inst`` (of one worker if given); their count."""
    tokens = {f"FAKE_VM_INSTANCE={inst}".encode()}
    want = f"FAKE_VM_WORKER={worker}".encode() if worker is not None else None
    hit = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
            if tokens & set(env) and (want is None or want in env):
                os.kill(int(pid), sig)
                hit += 1
        except OSError:
            pass
    return hit


def stop_instance(inst, grace_s):
    """SIGTERM, then SIGKILL after ``grace_s`` to what is left (a preemption's notice)."""
    if signal_instance(inst, signal.SIGTERM):
        time.sleep(grace_s)
    signal_instance(inst, signal.SIGKILL)


def run_status(run):
    try:
        with open(os.path.join(ROOT, "gcs", "bkt", "trm", run, "run.json")) as f:
            return json.load(f).get("status")
    except (OSError, ValueError):
        return None


def storage():
    if args[1] != "cat":
        fail(f"unknown command {args}", 2)
    apply_fault(fault("storage", None), "storage")
    path = os.path.join(ROOT, "gcs", args[2][len("gs://"):])
    try:
        with open(path) as f:
            sys.stdout.write(f.read())
    except OSError:
        fail(f"One or more URLs matched no objects: {args[2]}")
    sys.exit(0)


def fake_command():
    """``fake preempt VM MODE [RUN STEP]`` and ``fake kill VM WORKER``."""
    name = args[2]
    with Locked() as s:
        vm = s["vms"][name]
        grace = s.get("grace_s", 0.5)
        if args[1] == "kill":
            s["events"].append({"vm": name, "instance": vm["instance"], "mode": "kill",
                                "worker": int(args[3]), "t": time.time()})
        else:
            mode = args[3]
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
    if args[1] == "kill":
        signal_instance(vm["instance"], signal.SIGKILL, worker=int(args[3]))
    else:
        stop_instance(vm["instance"], grace)
    sys.exit(0)


def describe_vm(s, name, vm):
    """Advances CREATING / DELETING, then prints the node (or NOT_FOUND once deleted)."""
    if vm["state"] in ("CREATING", "DELETING"):
        vm["polls"] += 1
        if vm["polls"] > s.get("create_polls" if vm["state"] == "CREATING" else
                               "delete_polls", 0):
            if vm["state"] == "DELETING":
                del s["vms"][name]
                fail(f"NOT_FOUND: projects/p/locations/z/nodes/{name} was not found")
            vm["state"], vm["polls"] = "READY", 0
    print(json.dumps({"name": f"projects/p/locations/z/nodes/{name}", "state": vm["state"],
                      "createTime": vm["createTime"], "acceleratorType": vm["accelerator"],
                      "runtimeVersion": vm["version"],
                      "networkEndpoints": [{"ipAddress": f"10.0.{vm['instance']}.{k}"}
                                           for k in range(vm["workers"])],
                      "schedulingConfig": {"spot": vm["spot"]}}))


def tpu_vm_api(verb, name):
    mode = fault(verb, name)
    if mode != "hang_after":
        apply_fault(mode, verb)
    with Locked() as s:
        vm = s["vms"].get(name)
        if verb == "create":
            if s["fail_create"] > 0:
                s["fail_create"] -= 1
                fail("RESOURCE_EXHAUSTED: There is no more capacity in the zone")
            if vm:
                fail(f"ALREADY_EXISTS: node {name}")
            accelerator = flag("accelerator-type")
            check_runtime(accelerator, flag("version"))
            new_node(s, name, accelerator, flag("version"), "--spot" in args,
                     state="CREATING" if "--async" in args else "READY")
        elif vm is None:
            fail(f"NOT_FOUND: projects/p/locations/z/nodes/{name} was not found")
        elif verb == "describe":
            describe_vm(s, name, vm)
        elif verb == "start":
            vm["state"] = "READY"
        elif "--async" in args:  # delete
            vm["state"], vm["polls"] = "DELETING", 0
        else:
            del s["vms"][name]
    if verb == "delete" and vm is not None:
        signal_instance(vm["instance"], signal.SIGKILL)
    if mode == "hang_after":
        hang()
    sys.exit(0)


def workers_selected(vm):
    spec = flag("worker") or "0"
    if spec == "all":
        return list(range(vm["workers"]))
    chosen = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        chosen += range(int(lo), int(hi or lo) + 1)
    return [k for k in chosen if k < vm["workers"]]


def ssh_or_scp(verb, name):
    apply_fault(fault(verb, name), verb)
    with Locked() as s:
        vm = s["vms"].get(name)
        if vm is None or vm["state"] != "READY":
            fail("ssh: connect to host: Connection refused", 255)
        known = s.setdefault("known_hosts", {}).get(name)
        if known not in (None, vm["instance"]) and \
                "--strict-host-key-checking=no" not in args:
            print("@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n"
                  "@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n"
                  "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@\n"
                  "Host key verification failed.", file=sys.stderr)
            sys.exit(255)
        s["known_hosts"][name] = vm["instance"]
    homes = [os.path.join(vm["home"], f"w{k}") for k in range(vm["workers"])]
    if verb == "scp":
        for home in homes:
            shutil.copy(args[4], os.path.join(home, args[5].split(":", 1)[1]))
        sys.exit(0)
    script = args[args.index("--command") + 1]
    procs = []
    for k in workers_selected(vm):
        env = dict(os.environ, HOME=homes[k], FAKE_VM=name, FAKE_VM_WORKER=str(k),
                   FAKE_VM_WORKERS=str(vm["workers"]),
                   FAKE_VM_INSTANCE=str(vm["instance"]),
                   PATH=os.path.join(ROOT, "vmbin") + ":" + os.environ["PATH"])
        procs.append(subprocess.Popen(["bash", "-c", script], cwd=homes[k], env=env))
    codes = [p.wait() for p in procs]
    sys.exit(next((c for c in codes if c), 0))


def queued_resources(verb, name):
    apply_fault(fault(f"qr-{verb}", name), verb)
    with Locked() as s:
        q = s["qrs"].get(name)
        if verb == "create":
            if s["fail_create"] > 0:
                s["fail_create"] -= 1
                fail("RESOURCE_EXHAUSTED: no capacity")
            if q:
                fail(f"ALREADY_EXISTS: queued resource {name}")
            check_runtime(flag("accelerator-type"), flag("runtime-version"))
            s["qrs"][name] = {"state": "WAITING_FOR_RESOURCES", "polls": 0,
                              "node": flag("node-id"), "spot": "--spot" in args,
                              "accelerator": flag("accelerator-type"),
                              "version": flag("runtime-version"), "createTime": now_iso()}
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
                        new_node(s, q["node"], q["accelerator"], q["version"], q["spot"], name)
            print(json.dumps({"name": f"projects/p/locations/z/queuedResources/{name}",
                              "createTime": q["createTime"], "state": {"state": q["state"]},
                              "tpu": {"nodeSpec": [{"nodeId": q["node"]}]}}))
        elif verb == "delete":
            vm = s["vms"].get(q["node"])
            if vm is not None:
                if "--force" not in args:
                    fail("FAILED_PRECONDITION: the queued resource has a node")
                del s["vms"][q["node"]]
                signal_instance(vm["instance"], signal.SIGKILL)
            del s["qrs"][name]
    sys.exit(0)


def main():
    with open(os.path.join(ROOT, "calls.jsonl"), "a") as f:
        f.write(json.dumps({"argv": args, "t": time.time()}) + "\n")
    if args[:1] == ["storage"]:
        storage()
    if args[:1] == ["fake"]:
        fake_command()
    group, verb = args[2], args[3]
    if group == "tpu-vm" and verb in ("create", "describe", "delete", "start"):
        tpu_vm_api(verb, args[4])
    if group == "tpu-vm" and verb in ("ssh", "scp"):
        ssh_or_scp(verb, (args[4] if verb == "ssh" else args[5]).split(":")[0])
    if group == "queued-resources":
        queued_resources(verb, args[4])
    fail(f"unknown command {args}", 2)


main()
