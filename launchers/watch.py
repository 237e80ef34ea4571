"""Keep a sweep going on preemptible TPU capacity: ``python -m launchers.tpu watch``.

    python -m launchers.tpu watch --config=launch.json --sweep=e2_2_tn --seeds=0,1,2
    python -m launchers.tpu sweep --config=launch.json --sweep=e2_2_tn --watch   # the same

Runs are dealt round-robin to the VMs (as ``sweep --vms``); each VM runs its runs one at a
time, the same run on every worker of the slice together (a multi-host slice is one program:
workers in different runs would wait on each other forever). Every ``watch_poll_s`` seconds
the watcher looks at the world and does the next thing:

1. reads each unfinished run's ``run.json`` (``gcloud storage cat``); when every run says
   ``"status": "completed"`` it deletes the VMs (unless ``--keep_vms``), prints a summary and
   exits 0;
2. for each VM with unfinished runs, asks gcloud for the VM (``tpu-vm describe``: its state
   and its workers) and, with queued resources, its request (``queued-resources describe``):

   * no VM (never created, or deleted / preempted and gone): create it (``--async``), with a
     queued resource (``--spot``) or ``tpu-vm create`` (the ``provisioning`` setting); an
     ``ALREADY_EXISTS`` answer (an earlier create that timed out went through) is no failure;
   * ``PREEMPTED`` / ``TERMINATED`` VM, ``SUSPENDED`` / ``FAILED`` queued resource: delete it
     (``--async``); it is created again once it is gone;
   * on the way (``CREATING``, ``DELETING``, ``WAITING_FOR_RESOURCES``, ``PROVISIONING``, ...):
     wait;
   * ``READY``: ask every worker (one ssh) whether trm is set up there (the file
     ``~/REMOTE_DIR/trm-setup.ok`` that the watcher's ``setup`` creates last) and which trm
     jobs run there; then set up a fresh VM, and

     - every worker idle: launch the VM's first unfinished run on all workers (it resumes
       from its last checkpoint);
     - every worker in that run: fine, unless its ``run.json`` has shown no progress
       (``last_step``, ``active_s``) for ``watch_hang_s``: then the run is hung; it is stopped
       on every worker (SIGTERM, SIGKILL after ``watch_grace_s``) and launched again;
     - anything else (a worker died, or workers in different runs): the run is stopped on
       every worker and launched again on all of them together.

Nothing is decided from memory: the state comes from gcloud and the runs' ``run.json``, so the
watcher can be stopped (Ctrl-C) and started again at any time; runs on the VMs go on without
it. Every gcloud and ssh call has a timeout (``watch_timeout_s``; ``watch_setup_timeout_s``
for setup) after which its whole process group is killed. The watcher's ssh accepts a changed
host key (a VM it recreated has a new one under the same name). Failures (create refused,
setup or ssh failing, a run that stops without progress, a hung run) are retried with
exponential backoff (``watch_backoff_s`` doubling up to ``watch_backoff_max_s``); after
``watch_retries`` failed attempts in a row on one VM the watcher gives up with one line and
exit code 1. Transient API errors (``UNAVAILABLE``, ``INTERNAL``, ``DEADLINE_EXCEEDED``, rate
limits, 5xx, an API call that timed out) are logged and tried again at the next look without
counting. Progress of a VM's runs forgives its earlier failures. Every action is a line with
a UTC timestamp on stdout and in ``watch_log``; that file also gets every command and its
output.

VM time is measured by the watcher: an instance counts from its ``createTime`` (gcloud) to the
moment the watcher deletes it or finds it preempted or gone. The ledger (instances,
preemptions, recreations) is kept in ``<watch_log>.json`` so that the summary of a restarted
watcher still counts the whole study; it is bookkeeping only, never used to decide anything.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import re
import subprocess
import sys
import time
from typing import Callable, Sequence, TextIO

from launchers import common, gcloud, remote, tpu_config
from launchers.named_sweeps import Run
from launchers.tpu_config import TpuConfig

SETUP_MARKER = "trm-setup.ok"
NODE_LOST = {"PREEMPTED", "TERMINATED"}
QUEUED_LOST = {"SUSPENDED", "FAILED"}
_PROBE_LINE = re.compile(r"^trm-watch: (\S+): (setup missing|running (\S+)|idle)\s*$", re.M)


def provisioning_mode(cfg: TpuConfig) -> str:
    """``queued`` or ``create`` (``auto``: queued for a Spot VM of a type that has it)."""
    if cfg.provisioning != "auto":
        return cfg.provisioning
    try:
        queued = tpu_config.family(cfg.accelerator_type)[1].queued
    except ValueError:
        queued = False  # an unknown family: plain create, gcloud's answer decides
    return "queued" if cfg.spot and queued else "create"


def setup_marker(cfg: TpuConfig) -> str:
    return f"{cfg.remote_dir}/{SETUP_MARKER}"


def create_commands(cfg: TpuConfig) -> list[list[str]]:
    if provisioning_mode(cfg) == "queued":
        return gcloud.queued_create_commands(cfg)
    return gcloud.create_commands(cfg, wait=False)


def _ssh(cfg: TpuConfig, script: str) -> list[str]:
    return gcloud.ssh_command(cfg, script, strict_host_keys=False)


def plan_commands(cfg: TpuConfig, sweep_name: str, runs: Sequence[Run],
                  vms: Sequence[str]) -> list[list[str]]:
    """What ``watch`` runs for a fresh VM (``--dry_run``): create, probe, setup, first run.

    The loop around them (describe, probe, stop, delete and create again) depends on what
    gcloud answers, so it is described in comments.
    """
    mode = provisioning_mode(cfg)
    commands = [common.comment(
        f"watch {sweep_name}: every {cfg.watch_poll_s:g} s until every run's run.json says "
        f"completed: gcloud storage cat RUN/run.json for each unfinished run, then for each VM: "
        f"gcloud compute tpus {'queued-resources' if mode == 'queued' else 'tpu-vm'} "
        f"describe; a missing, PREEMPTED or SUSPENDED VM is deleted and created again:")]
    for vm, vm_runs in remote.assign_runs(runs, vms).items():
        if not vm_runs:
            continue
        vcfg = dataclasses.replace(cfg, name=vm)
        commands += create_commands(vcfg)
        commands.append(common.comment(
            "a READY VM: is trm set up, which jobs run on each worker (ssh --worker=all)"))
        commands.append(_ssh(vcfg, remote.worker_probe_script(vcfg, setup_marker(vcfg))))
        commands.append(common.comment("setup missing:"))
        commands += remote.setup_commands(vcfg, marker=setup_marker(vcfg), strict_host_keys=False)
        commands.append(common.comment(
            "workers out of step, or a run hung: stop it on every worker"))
        commands.append(_ssh(vcfg, remote.stop_script(vcfg, cfg.watch_grace_s)))
        commands.append(common.comment(
            f"every worker idle: the VM's first unfinished run, on all workers together "
            f"(then the next of its {len(vm_runs)} run(s))"))
        commands.append(_ssh(vcfg, remote.launch_script(vcfg, vm_runs[0])))
    commands.append(common.comment("every run completed: delete the VMs (unless --keep_vms)"))
    return commands


# ---------------------------------------------------------------------------------------------
# Bookkeeping of VM time (what the summary reports; never used for decisions).


def _parse_time(text: object) -> float | None:
    """``2024-05-01T12:00:00.123456789Z`` -> epoch seconds (None if unparseable)."""
    if not isinstance(text, str):
        return None
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?",
                     text.strip())
    if not m:
        return None
    frac = f".{m.group(2)[:6]}" if m.group(2) else ""
    zone = "+00:00" if m.group(3) in (None, "Z") else m.group(3)
    try:
        return _dt.datetime.fromisoformat(m.group(1) + frac + zone).timestamp()
    except ValueError:
        return None


class Ledger:
    """VM instances (start, end), preemptions and recreations, saved as JSON after each change."""

    def __init__(self, path: str | None, clock: Callable[[], float]):
        self.path, self.clock = path, clock
        self.data = {"instances": [], "preemptions": 0, "recreations": 0, "creations": {},
                     "lost": []}
        if path and os.path.exists(path):
            try:
                with open(path) as f:
                    loaded = json.load(f)
                if isinstance(loaded, dict):
                    self.data.update(loaded)
            except (OSError, ValueError):
                pass  # a broken ledger only loses history; start a new one

    def _save(self) -> None:
        if not self.path:
            return
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f, indent=1)
        os.replace(tmp, self.path)

    def _open(self, vm: str) -> dict | None:
        return next((i for i in self.data["instances"] if i["vm"] == vm and i["end"] is None),
                    None)

    def seen(self, vm: str, create_time: str | None) -> None:
        """A live VM: opens its instance (from its createTime) unless it is the open one."""
        now = self.clock()
        current = self._open(vm)
        if current is not None:
            if create_time is None or current["id"] in (None, create_time):
                if current["id"] is None and create_time:
                    current["id"] = create_time
                    self._save()
                return
            self.lost(vm, "replaced", None)  # another instance than the one we knew
        start = _parse_time(create_time)
        self.data["instances"].append({"vm": vm, "id": create_time,
                                       "start": min(start, now) if start else now,
                                       "end": None, "end_reason": None})
        self._save()

    def lost(self, vm: str, reason: str, resource_id: str | None) -> bool:
        """A preempted / vanished VM or request; True when it had not been counted yet."""
        current = self._open(vm)
        key = f"{vm}@{resource_id}" if resource_id else None
        counted = current is not None or (key is not None and key not in self.data["lost"])
        if current is not None:
            current["end"], current["end_reason"] = self.clock(), reason
        if key and key not in self.data["lost"]:
            self.data["lost"].append(key)
        if counted:
            self.data["preemptions"] += 1
        self._save()
        return counted

    def deleted(self, vm: str) -> None:
        current = self._open(vm)
        if current is not None:
            current["end"], current["end_reason"] = self.clock(), "deleted"
            self._save()

    def has_open(self, vm: str) -> bool:
        return self._open(vm) is not None

    def created(self, vm: str) -> bool:
        """Counts a create; True when it is a recreation (the VM had an instance before)."""
        creations = self.data["creations"]
        before = creations.get(vm, 0) + sum(1 for i in self.data["instances"] if i["vm"] == vm)
        creations[vm] = creations.get(vm, 0) + 1
        again = before > 0
        if again:
            self.data["recreations"] += 1
        self._save()
        return again

    def vm_seconds(self) -> float:
        now = self.clock()
        return sum(max((i["end"] or now) - i["start"], 0.0) for i in self.data["instances"])


# ---------------------------------------------------------------------------------------------
# The watcher.


class StepFailed(RuntimeError):
    """An action on a VM failed; retried after a backoff, counted towards giving up."""


class Transient(RuntimeError):
    """A transient gcloud API error: tried again at the next look, not counted."""


class GiveUp(RuntimeError):
    """Retries are exhausted."""


@dataclasses.dataclass
class Resource:
    state: str
    create_time: str | None = None
    workers: int = 1


@dataclasses.dataclass
class VmWatch:
    """What the watcher remembers about one VM between two looks (bookkeeping for retries,
    stalls and hangs; the decisions themselves come from gcloud and run.json)."""

    failures: int = 0
    next_try: float = 0.0
    progress_seen: tuple | None = None
    launched: tuple | None = None  # (run name, its progress signature at launch)
    stall_reported: bool = False
    moved: tuple | None = None  # (run name, signature, when it last changed)


def _signature(data: dict | None) -> tuple:
    """What changes while a run makes progress (``run.json``)."""
    data = data or {}
    return (data.get("status"), data.get("last_step"), data.get("active_s"))


class Watcher:
    """Tends the VMs of one sweep until every run is completed (see the module docstring).

    ``runner`` replaces the process-group runner of :func:`launchers.gcloud.run` (it gets
    ``subprocess.run``'s arguments), ``clock`` and ``sleep`` the time functions (tests).
    """

    def __init__(self, cfg: TpuConfig, sweep_name: str, runs: Sequence[Run],
                 vms: Sequence[str], *, runner: Callable[..., subprocess.CompletedProcess]
                 | None = None, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep, out: TextIO | None = None,
                 keep_vms: bool = False):
        self.cfg, self.sweep_name, self.runs = cfg, sweep_name, list(runs)
        self.vms = list(vms)
        self.runner = runner
        self.clock, self.sleep, self.out = clock, sleep, out
        self.keep_vms = keep_vms
        self.mode = provisioning_mode(cfg)
        self.assignment = remote.assign_runs(self.runs, self.vms)
        self.ledger = Ledger(f"{cfg.watch_log}.json" if cfg.watch_log else None, clock)
        self.completed: set[str] = set()
        self.run_json: dict[str, dict | None] = {}
        self.vm = {vm: VmWatch() for vm in self.vms}
        self.noted: dict[str, str] = {}
        if self.mode == "queued":
            for vm in self.vms:
                gcloud.queued_resource_id(dataclasses.replace(cfg, name=vm))  # checked up front
        self._log_file = None

    # -- output --------------------------------------------------------------------------------
    def _write_file(self, line: str) -> None:
        if not self.cfg.watch_log:
            return
        if self._log_file is None:
            self._log_file = open(self.cfg.watch_log, "a", encoding="utf-8")
        self._log_file.write(line + "\n")
        self._log_file.flush()

    def log(self, message: str) -> None:
        stamp = _dt.datetime.fromtimestamp(self.clock(), _dt.timezone.utc)
        line = f"{stamp.strftime('%Y-%m-%dT%H:%M:%SZ')} watch: {message}"
        print(line, file=self.out or sys.stdout, flush=True)
        self._write_file(line)

    def note(self, vm: str, message: str) -> None:
        """Logs ``message`` unless it is what was last noted for ``vm`` (waiting states)."""
        if self.noted.get(vm) != message:
            self.noted[vm] = message
            self.log(message)

    # -- commands ------------------------------------------------------------------------------
    def _run(self, argv: list[str], timeout: float | None = None) -> subprocess.CompletedProcess:
        shown = common.format_command(argv)
        self._write_file(f"+ {shown if len(shown) <= 300 else shown[:300] + ' ...'}")
        result = gcloud.run(argv, timeout or self.cfg.watch_timeout_s, self.runner)
        for line in gcloud.output(result).splitlines():
            self._write_file(f"  | {line}")
        if result.returncode:
            self._write_file(f"  exit code {result.returncode}")
        return result

    def _api(self, argv: list[str], what: str) -> subprocess.CompletedProcess | None:
        """A gcloud API call: its result, or None when the resource does not exist.

        Raises:
          Transient: for a transient error (or a timeout); StepFailed for any other failure.
        """
        result = self._run(argv)
        if result.returncode == 0:
            return result
        if gcloud.NOT_FOUND_RE.search(gcloud.output(result)):
            return None
        if gcloud.is_transient(result):
            raise Transient(f"{what}: {_last_line(result)}")
        raise StepFailed(f"{what} failed with exit code {result.returncode}: "
                         f"{_last_line(result)}")

    def _must(self, argv: list[str], what: str, timeout: float | None = None
              ) -> subprocess.CompletedProcess:
        """An ssh / scp / local step: any failure (timeout included) is a StepFailed."""
        result = self._run(argv, timeout)
        if result.returncode != 0:
            raise StepFailed(f"{what} failed with exit code {result.returncode}: "
                             f"{_last_line(result)}")
        return result

    def _describe(self, argv: list[str], what: str) -> dict | None:
        """The JSON that a ``describe`` prints; None when the resource does not exist."""
        result = self._api(argv, what)
        if result is None:
            return None
        try:
            data = json.loads(result.stdout or "{}")
        except ValueError:
            raise StepFailed(f"{what}: not JSON: {common.show(result.stdout)}") from None
        return data if isinstance(data, dict) else {}

    def node(self, vcfg: TpuConfig) -> Resource | None:
        data = self._describe(gcloud.gcloud_tpu(vcfg, "describe", "--format=json"),
                              f"describing VM {vcfg.name}")
        if data is None:
            return None
        endpoints = data.get("networkEndpoints")
        return Resource(str(data.get("state") or "STATE_UNSPECIFIED"), data.get("createTime"),
                        len(endpoints) if isinstance(endpoints, list) and endpoints else 1)

    def queued(self, vcfg: TpuConfig) -> Resource | None:
        data = self._describe(gcloud.gcloud_queued(vcfg, "describe", "--format=json"),
                              f"describing queued resource {gcloud.queued_resource_id(vcfg)}")
        if data is None:
            return None
        state = data.get("state")
        state = state.get("state") if isinstance(state, dict) else state
        return Resource(str(state or "STATE_UNSPECIFIED"), data.get("createTime"))

    # -- runs ----------------------------------------------------------------------------------
    def refresh(self, runs: Sequence[Run]) -> None:
        for run in runs:
            if run.name in self.completed:
                continue  # completed is final
            result = gcloud.run(gcloud.run_json_command(self.cfg, run.name),
                                self.cfg.watch_timeout_s, self.runner)
            try:
                data = json.loads(result.stdout) if result.returncode == 0 else None
            except ValueError:
                data = None
            data = data if isinstance(data, dict) else None
            self.run_json[run.name] = data
            if common.is_completed(data):
                self.completed.add(run.name)
                self.log(f"run {run.name} completed ({len(self.completed)}/{len(self.runs)})")

    def pending(self, vm: str) -> list[Run]:
        return [r for r in self.assignment[vm] if r.name not in self.completed]

    def progress(self, vm: str) -> tuple:
        return tuple(_signature(self.run_json.get(r.name)) for r in self.assignment[vm])

    # -- actions -------------------------------------------------------------------------------
    def create(self, vcfg: TpuConfig) -> None:
        vm = vcfg.name
        what = (f"queued resource {gcloud.queued_resource_id(vcfg)} for VM {vm}"
                if self.mode == "queued" else f"VM {vm}")
        kind = "Spot " if vcfg.spot else "preemptible " if vcfg.preemptible else ""
        self.log(f"creating {what} ({kind}{vcfg.accelerator_type}, {vcfg.runtime()})")
        for argv in create_commands(vcfg):
            result = self._run(argv)
            if result.returncode and gcloud.ALREADY_EXISTS_RE.search(gcloud.output(result)):
                self.log(f"{what} exists already (an earlier create went through): waiting "
                         "for it")
                return
            if result.returncode and gcloud.is_transient(result):
                raise Transient(f"creating {what}: {_last_line(result)}")
            if result.returncode:
                raise StepFailed(f"creating {what} failed with exit code "
                                 f"{result.returncode}: {_last_line(result)}")
        again = self.ledger.created(vm)
        self.vm[vm].launched = None
        self.noted.pop(vm, None)
        self.log(f"{'re' if again else ''}created {what}")

    def delete(self, vcfg: TpuConfig, queued: bool, why: str) -> None:
        vm = vcfg.name
        if queued:
            what = f"queued resource {gcloud.queued_resource_id(vcfg)} (and VM {vm})"
            commands = gcloud.queued_delete_commands(vcfg, wait=False)
        else:
            what, commands = f"VM {vm}", gcloud.delete_commands(vcfg, yes=True, wait=False)
        self.log(f"deleting {what}: {why}")
        for argv in commands:
            self._api(argv, f"deleting {what}")
        self.ledger.deleted(vm)
        self.noted.pop(vm, None)

    def lost(self, vm: str, what: str, resource_id: str | None) -> None:
        self.ledger.lost(vm, what, resource_id)
        self.vm[vm].launched = None
        self.log(f"VM {vm} {what}: its runs stopped; recreating it")

    def probe(self, vcfg: TpuConfig, node: Resource) -> list[tuple[str, str, str | None]]:
        """(host, ``setup missing`` / ``running`` / ``idle``, run) for every worker's answer."""
        script = remote.worker_probe_script(vcfg, setup_marker(vcfg))
        result = self._must(_ssh(vcfg, script), f"asking VM {vcfg.name} (ssh)")
        answers = [(host, state.split()[0] if state.startswith("running") else state, run)
                   for host, state, run in _PROBE_LINE.findall(gcloud.output(result))]
        hosts = {host for host, _, _ in answers}
        if len(hosts) < node.workers:
            raise StepFailed(f"asking VM {vcfg.name} (ssh): {len(hosts)} of {node.workers} "
                             f"worker(s) answered{_last_line(result, ': ')}")
        return answers

    def stop(self, vcfg: TpuConfig, why: str) -> None:
        self.log(f"stopping the run(s) on every worker of VM {vcfg.name}: {why}")
        script = remote.stop_script(vcfg, self.cfg.watch_grace_s)
        self._must(_ssh(vcfg, script), f"stopping the runs on VM {vcfg.name}",
                   self.cfg.watch_timeout_s + self.cfg.watch_grace_s)

    def launch(self, vcfg: TpuConfig, run: Run, workers: int) -> None:
        """Starts ``run`` on every worker; a relaunch without progress since the last launch
        is a failure (once: the next look tries again)."""
        vm, state = vcfg.name, self.vm[vcfg.name]
        signature = _signature(self.run_json.get(run.name))
        if state.launched == (run.name, signature) and not state.stall_reported:
            state.stall_reported = True
            raise StepFailed(f"run {run.name} on VM {vm} stopped without progress; see "
                             f"python -m launchers.tpu logs --run={run.name}")
        state.stall_reported = False
        self._must(_ssh(vcfg, remote.launch_script(vcfg, run)), f"launching {run.name} on VM {vm}")
        state.launched = (run.name, signature)
        state.moved = (run.name, signature, self.clock())
        self.noted.pop(vm, None)
        self.log(f"launched run {run.name} on VM {vm} ({workers} worker(s); "
                 f"{len(self.pending(vm))} unfinished run(s) on this VM)")

    def hung(self, vm: str, run: Run) -> bool:
        """True when ``run`` has shown no progress for ``watch_hang_s`` (watcher's clock)."""
        signature, now = _signature(self.run_json.get(run.name)), self.clock()
        moved = self.vm[vm].moved
        if moved is None or moved[:2] != (run.name, signature):
            self.vm[vm].moved = (run.name, signature, now)
            return False
        return now - moved[2] >= self.cfg.watch_hang_s

    def ensure_running(self, vcfg: TpuConfig, node: Resource) -> None:
        """A READY VM: set it up if it is fresh, and keep its first unfinished run going on
        all its workers together."""
        vm = vcfg.name
        answers = self.probe(vcfg, node)
        if any(state == "setup missing" for _, state, _ in answers):
            self.log(f"setting up VM {vm} (trm on {node.workers} worker(s))")
            for argv in remote.setup_commands(vcfg, marker=setup_marker(vcfg),
                                              strict_host_keys=False):
                self._must(argv, f"setup of VM {vm}", self.cfg.watch_setup_timeout_s)
            self.log(f"VM {vm} is set up")
            answers = [(host, "idle", None) for host, _, _ in answers]
        self.refresh(self.pending(vm))  # fresh, before judging what runs
        pending = self.pending(vm)
        if not pending:
            return
        run = pending[0]
        jobs = {host: sorted(r for h, _, r in answers if h == host and r) for host, _, _ in answers}
        alive = {r for rs in jobs.values() for r in rs}
        if not alive:
            self.launch(vcfg, run, node.workers)
        elif all(rs == [run.name] for rs in jobs.values()):
            if self.hung(vm, run):
                self.stop(vcfg, f"run {run.name} is hung (no progress in its run.json for "
                                f"{self.cfg.watch_hang_s:g} s)")
                self.vm[vm].moved = None
                self.vm[vm].stall_reported = True  # counted here: the relaunch goes ahead
                raise StepFailed(f"run {run.name} on VM {vm} hung; stopped, relaunched at the "
                                 "next look")
            self.note(vm, f"VM {vm}: {run.name} running on {len(jobs)} worker(s)")
        elif alive <= self.completed:
            self.note(vm, f"VM {vm}: completed run(s) {', '.join(sorted(alive))} finishing")
        else:
            shown = "; ".join(f"{h}: {', '.join(rs) or 'idle'}" for h, rs in sorted(jobs.items()))
            self.stop(vcfg, f"workers out of step ({shown})")
            self.launch(vcfg, run, node.workers)

    def _tend_node(self, vcfg: TpuConfig, node: Resource | None) -> None:
        """A VM without a queued resource (plain mode, or one made by hand)."""
        vm = vcfg.name
        if node is None:
            if self.ledger.has_open(vm):
                self.lost(vm, "is gone (preempted or deleted)", None)
            self.create(vcfg)
        elif node.state in NODE_LOST:
            self.lost(vm, f"is {node.state}", node.create_time)
            self.delete(vcfg, False, f"it is {node.state}")
        elif node.state == "READY":
            self.ensure_running(vcfg, node)
        elif node.state == "STOPPED":
            self.log(f"starting VM {vm} (STOPPED)")
            self._api(gcloud.gcloud_tpu(vcfg, "start", "--async"), f"starting VM {vm}")
        else:
            self.note(vm, f"VM {vm} is {node.state}: waiting")

    def _tend_queued(self, vcfg: TpuConfig, node: Resource | None,
                     request: Resource | None) -> None:
        vm = vcfg.name
        if request is None:
            if node is not None:  # a VM made without a queued resource: look after it as is
                self._tend_node(vcfg, node)
                return
            if self.ledger.has_open(vm):
                self.lost(vm, "is gone with its queued resource (preempted or deleted)", None)
            self.create(vcfg)
            return
        state = request.state
        node_lost = (node.state in NODE_LOST) if node is not None else self.ledger.has_open(vm)
        if state in QUEUED_LOST or (state == "ACTIVE" and node_lost):
            failed = state == "FAILED" and not self.ledger.has_open(vm)
            if not failed:
                shown = node.state if node is not None else "gone"
                self.lost(vm, f"is {shown} (queued resource {state})",
                          (node.create_time if node else None) or request.create_time)
            self.delete(vcfg, True, f"the queued resource is {state}")
            if failed:
                raise StepFailed(f"queued resource {gcloud.queued_resource_id(vcfg)} FAILED "
                                 "(capacity or quota?)")
            return
        if state == "ACTIVE" and node is not None and node.state == "READY":
            self.ensure_running(vcfg, node)
            return
        shown = state if state != "ACTIVE" else f"ACTIVE, VM {node.state if node else '-'}"
        self.note(vm, f"queued resource {gcloud.queued_resource_id(vcfg)} is {shown}: waiting")

    def tend(self, vm: str) -> bool:
        """One look at ``vm``; True when it needs nothing more (its runs are all completed and
        it is deleted, or kept with ``--keep_vms``)."""
        vcfg, state = dataclasses.replace(self.cfg, name=vm), self.vm[vm]
        progress = self.progress(vm)
        if state.progress_seen is not None and progress != state.progress_seen:
            state.failures = 0  # the runs move: earlier failures are forgiven
        state.progress_seen = progress
        if self.clock() < state.next_try:
            return False
        try:
            # The request first: a VM that appears in between is then seen as READY.
            request = self.queued(vcfg) if self.mode == "queued" else None
            node = self.node(vcfg)
            if node is not None and node.state not in NODE_LOST | {"DELETING"}:
                self.ledger.seen(vm, node.create_time)
            if not self.pending(vm):
                if node is not None and node.state == "DELETING":
                    return False
                if not self.keep_vms and (node is not None or request is not None):
                    self.delete(vcfg, request is not None, "all its runs are completed")
                    return False
                return True
            if self.mode == "queued":
                self._tend_queued(vcfg, node, request)
            else:
                self._tend_node(vcfg, node)
        except Transient as e:
            self.noted.pop(vm, None)
            self.log(f"transient error on VM {vm} (not counted): {e}; trying again at the next "
                     "look")
        except StepFailed as e:
            self.failed(vm, str(e))
        return False

    def failed(self, vm: str, message: str) -> None:
        state = self.vm[vm]
        state.failures += 1
        n, limit = state.failures, self.cfg.watch_retries
        if n > limit:
            raise GiveUp(f"watch gave up on VM {vm} after {n} failed attempts in a row "
                         f"(watch_retries={limit}); last: {message}")
        wait = min(self.cfg.watch_backoff_s * 2 ** (n - 1), self.cfg.watch_backoff_max_s)
        state.next_try = self.clock() + wait
        self.noted.pop(vm, None)
        self.log(f"attempt failed on VM {vm} ({n}/{limit}): {message}; next try in {wait:g} s")

    # -- the loop ------------------------------------------------------------------------------
    def summary(self) -> str:
        seconds = self.ledger.vm_seconds()
        chips = _chips(self.cfg.accelerator_type)
        hours = seconds / 3600
        text = (f"summary: {len(self.completed)}/{len(self.runs)} runs completed; "
                f"{self.ledger.data['preemptions']} preemption(s) survived; "
                f"{self.ledger.data['recreations']} VM recreation(s); "
                f"VM-hours {hours:.3f} ({common.format_duration(seconds)}")
        if chips:
            text += f", {hours * chips:.3f} chip-hours of {self.cfg.accelerator_type}"
            if self.cfg.price_per_chip_hour is not None:
                text += f", about {hours * chips * self.cfg.price_per_chip_hour:.2f} at " \
                        f"{self.cfg.price_per_chip_hour:g} per chip-hour"
        text += ")"
        if self.cfg.watch_log:
            text += f"; log {self.cfg.watch_log}"
        return text

    def run(self) -> int:
        self.log(f"watching sweep {self.sweep_name}: {len(self.runs)} run(s) on "
                 f"{', '.join(self.vms)}; provisioning {self.mode}"
                 f"{' (Spot)' if self.cfg.spot else ''}; poll every {self.cfg.watch_poll_s:g} s;"
                 f" {self.cfg.watch_retries} retries per VM")
        try:
            while True:
                self.refresh(self.runs)
                done = len(self.completed) == len(self.runs)
                settled = [self.tend(vm) for vm in self.vms]
                if done and all(settled):
                    break
                self.sleep(self.cfg.watch_poll_s)
        except GiveUp as e:
            self.log(self.summary())
            self._write_file(f"error: {e}")
            print(f"error: {e}", file=sys.stderr, flush=True)
            return 1
        except KeyboardInterrupt:
            self.log("interrupted: the VMs and runs are left as they are; run the same "
                     "command again to continue")
            self.log(self.summary())
            return 130
        finally:
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None
        self.log(f"every run is completed{'' if self.keep_vms else '; VMs deleted'}")
        self.log(self.summary())
        return 0


def _chips(accelerator_type: str) -> int | None:
    try:
        return tpu_config.chips(accelerator_type)
    except ValueError:
        return None


def _last_line(result: subprocess.CompletedProcess, prefix: str = "") -> str:
    lines = [l.strip() for l in gcloud.output(result).splitlines() if l.strip()]
    return f"{prefix}{lines[-1][:300]}" if lines else ""
