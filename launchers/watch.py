"""Keep a sweep going on preemptible TPU capacity: ``python -m launchers.tpu watch``.

    python -m launchers.tpu watch --config=launch.json --sweep=e2_2_tn --seeds=0,1,2
    python -m launchers.tpu sweep --config=launch.json --sweep=e2_2_tn --watch   # the same

Every ``watch_poll_s`` seconds the watcher looks at the world and does the next thing:

1. reads each unfinished run's ``run.json`` (``gcloud storage cat``); when every run says
   ``"status": "completed"`` it deletes the VMs (unless ``--keep_vms``), prints a summary and
   exits 0;
2. for each VM with unfinished runs (runs are dealt round-robin, as ``sweep --vms``), asks
   gcloud for the VM (``tpu-vm describe``) and, with queued resources, its request
   (``queued-resources describe``), then:

   * no VM (never created, or deleted / preempted and gone): create it, with a queued resource
     (``--spot``) or ``tpu-vm create`` (the ``provisioning`` setting);
   * ``PREEMPTED`` / ``TERMINATED`` VM, ``SUSPENDED`` / ``FAILED`` queued resource: delete it
     and create it again;
   * still coming up (``CREATING``, ``WAITING_FOR_RESOURCES``, ``PROVISIONING``, ...): wait;
   * ``READY``: ask every worker (one ssh) whether trm is set up there (the file
     ``~/REMOTE_DIR/trm-setup.ok`` that the watcher's ``setup`` creates last) and whether
     the sweep's queue is alive; run ``setup`` on a fresh VM, and launch the queue of the
     VM's unfinished runs when it is not alive (completed runs are skipped on the VM too,
     the others resume from their last checkpoint).

Nothing is decided from memory: the state comes from gcloud and the runs' ``run.json``, so the
watcher can be stopped (Ctrl-C) and started again at any time; runs on the VMs go on without
it. Failures (create refused, setup or ssh failing, a queue that ends without any progress of
its runs) are retried with exponential backoff (``watch_backoff_s`` doubling up to
``watch_backoff_max_s``); after ``watch_retries`` failed attempts in a row on one VM the
watcher gives up with one line and exit code 1. Every action is a line with a UTC timestamp
on stdout and in ``watch_log``; that file also gets every command and its output.

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
from launchers.tpu_config import TpuConfig
from launchers.named_sweeps import Run

SETUP_MARKER = "trm-setup.ok"
NODE_LOST = {"PREEMPTED", "TERMINATED"}
QUEUED_LOST = {"SUSPENDED", "FAILED"}
_PROBE_LINE = re.compile(r"^trm-watch: .*: (setup missing|queue running|queue stopped)\s*$", re.M)
_NOT_FOUND = re.compile(r"NOT_FOUND|not found|does not exist", re.I)


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
    return gcloud.create_commands(cfg)


def plan_commands(cfg: TpuConfig, sweep_name: str, runs: Sequence[Run],
                  vms: Sequence[str]) -> list[list[str]]:
    """What ``watch`` runs for a fresh VM (``--dry_run``): create, setup, the queue.

    The loop around them (describe, probe, delete and create again) depends on what gcloud
    answers, so it is described in comments.
    """
    mode = provisioning_mode(cfg)
    commands = [common.comment(
        f"watch: every {cfg.watch_poll_s:g} s until every run's run.json says completed: "
        f"gcloud storage cat RUN/run.json for each unfinished run, then for each VM: "
        f"gcloud compute tpus {'queued-resources' if mode == 'queued' else 'tpu-vm'} "
        f"describe; a missing, PREEMPTED or SUSPENDED VM is deleted and created again:")]
    for vm, vm_runs in remote.assign_runs(runs, vms).items():
        if not vm_runs:
            continue
        vcfg = dataclasses.replace(cfg, name=vm)
        commands += create_commands(vcfg)
        commands.append(common.comment(
            "a READY VM: is trm set up, is the queue alive (ssh --worker=all)"))
        commands.append(gcloud.ssh_command(vcfg, remote.queue_probe_script(
            vcfg, sweep_name, setup_marker(vcfg))))
        commands.append(common.comment("setup missing:"))
        commands += remote.setup_commands(vcfg, marker=setup_marker(vcfg))
        commands.append(common.comment("queue stopped: the VM's unfinished runs"))
        commands.append(gcloud.ssh_command(vcfg, remote.sweep_script(vcfg, sweep_name, vm_runs)))
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
    """An action on a VM failed; retried after a backoff."""


class GiveUp(RuntimeError):
    """Retries are exhausted."""


@dataclasses.dataclass
class Resource:
    state: str
    create_time: str | None = None


class Watcher:
    """Tends the VMs of one sweep until every run is completed (see the module docstring).

    ``runner`` replaces ``subprocess.run``, ``clock`` and ``sleep`` the time functions (tests).
    """

    def __init__(self, cfg: TpuConfig, sweep_name: str, runs: Sequence[Run],
                 vms: Sequence[str], *, runner: Callable[..., subprocess.CompletedProcess]
                 | None = None, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep, out: TextIO | None = None,
                 keep_vms: bool = False):
        self.cfg, self.sweep_name, self.runs = cfg, sweep_name, list(runs)
        self.vms = list(vms)
        self.runner = runner or subprocess.run
        self.clock, self.sleep, self.out = clock, sleep, out
        self.keep_vms = keep_vms
        self.mode = provisioning_mode(cfg)
        self.assignment = remote.assign_runs(self.runs, self.vms)
        self.ledger = Ledger(f"{cfg.watch_log}.json" if cfg.watch_log else None, clock)
        self.completed: set[str] = set()
        self.steps: dict[str, int] = {}
        self.failures = {vm: 0 for vm in self.vms}
        self.last_error = {vm: "" for vm in self.vms}
        self.next_try = {vm: 0.0 for vm in self.vms}
        self.progress_seen = {vm: None for vm in self.vms}
        self.launched_at: dict[str, tuple | None] = {vm: None for vm in self.vms}
        self.stall_reported = {vm: False for vm in self.vms}
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
    def _run(self, argv: list[str]) -> subprocess.CompletedProcess:
        shown = common.format_command(argv)
        self._write_file(f"+ {shown if len(shown) <= 300 else shown[:300] + ' ...'}")
        result = common.capture(argv, self.runner)
        for line in ((result.stdout or "") + (result.stderr or "")).splitlines():
            self._write_file(f"  | {line}")
        if result.returncode:
            self._write_file(f"  exit code {result.returncode}")
        return result

    def _must(self, argv: list[str], what: str) -> subprocess.CompletedProcess:
        result = self._run(argv)
        if result.returncode != 0:
            raise StepFailed(f"{what} failed with exit code {result.returncode}"
                             f"{_last_line(result)}")
        return result

    def _describe(self, argv: list[str], what: str) -> dict | None:
        """The JSON that a ``describe`` prints; None when the resource does not exist."""
        result = self._run(argv)
        if result.returncode != 0:
            if _NOT_FOUND.search(result.stderr or "") or _NOT_FOUND.search(result.stdout or ""):
                return None
            raise StepFailed(f"{what} failed with exit code {result.returncode}"
                             f"{_last_line(result)}")
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
        return Resource(str(data.get("state") or "STATE_UNSPECIFIED"), data.get("createTime"))

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
            result = common.capture(gcloud.run_json_command(self.cfg, run.name), self.runner)
            try:
                data = json.loads(result.stdout) if result.returncode == 0 else None
            except ValueError:
                data = None
            state = common.RunState.from_json(run.name, data if isinstance(data, dict) else None)
            if isinstance(state.last_step, int):
                self.steps[run.name] = state.last_step
            if state.status == common.COMPLETED:
                self.completed.add(run.name)
                self.log(f"run {run.name} completed ({len(self.completed)}/{len(self.runs)})")

    def pending(self, vm: str) -> list[Run]:
        return [r for r in self.assignment[vm] if r.name not in self.completed]

    def progress(self, vm: str) -> tuple[int, int]:
        runs = self.assignment[vm]
        return (sum(r.name in self.completed for r in runs),
                sum(self.steps.get(r.name, 0) for r in runs))

    # -- actions -------------------------------------------------------------------------------
    def create(self, vcfg: TpuConfig) -> None:
        vm = vcfg.name
        what = (f"queued resource {gcloud.queued_resource_id(vcfg)} for VM {vm}"
                if self.mode == "queued" else f"VM {vm}")
        kind = "Spot " if vcfg.spot else "preemptible " if vcfg.preemptible else ""
        self.log(f"creating {what} ({kind}{vcfg.accelerator_type})")
        for argv in create_commands(vcfg):
            self._must(argv, f"creating {what}")
        again = self.ledger.created(vm)
        self.launched_at[vm] = None
        self.noted.pop(vm, None)
        self.log(f"{'re' if again else ''}created {what}")

    def delete(self, vcfg: TpuConfig, queued: bool, why: str) -> None:
        vm = vcfg.name
        if queued:
            what = f"queued resource {gcloud.queued_resource_id(vcfg)} (and VM {vm})"
            commands = gcloud.queued_delete_commands(vcfg)
        else:
            what, commands = f"VM {vm}", gcloud.delete_commands(vcfg, yes=True)
        self.log(f"deleting {what}: {why}")
        for argv in commands:
            self._must(argv, f"deleting {what}")
        self.ledger.deleted(vm)
        self.noted.pop(vm, None)

    def lost(self, vm: str, what: str, resource_id: str | None) -> None:
        self.ledger.lost(vm, what, resource_id)
        self.launched_at[vm] = None
        self.log(f"VM {vm} {what}: its runs stopped; recreating it")

    def ensure_running(self, vcfg: TpuConfig) -> None:
        """A READY VM: set it up if it is fresh, launch the queue if it is not alive."""
        vm, marker = vcfg.name, setup_marker(vcfg)
        probe = gcloud.ssh_command(vcfg, remote.queue_probe_script(vcfg, self.sweep_name, marker))
        result = self._run(probe)
        answers = _PROBE_LINE.findall((result.stdout or "") + (result.stderr or ""))
        if result.returncode != 0 or not answers:
            raise StepFailed(f"asking VM {vm} (ssh) failed with exit code "
                             f"{result.returncode}{_last_line(result)}")
        if "setup missing" in answers:
            self.log(f"setting up VM {vm} (trm on every worker)")
            for argv in remote.setup_commands(vcfg, marker=marker):
                self._must(argv, f"setup of VM {vm}")
            self.log(f"VM {vm} is set up")
        elif "queue stopped" not in answers:
            self.note(vm, f"VM {vm}: queue running")
            return
        self.refresh(self.pending(vm))  # fresh, before judging a stopped queue
        pending = self.pending(vm)
        if not pending:
            return
        progress = self.progress(vm)
        if self.launched_at[vm] is not None and progress <= self.launched_at[vm] \
                and not self.stall_reported[vm]:
            self.stall_reported[vm] = True
            raise StepFailed(f"the queue on VM {vm} ended without progress "
                             f"(runs {', '.join(r.name for r in pending)}); see "
                             f"python -m launchers.tpu logs --sweep={self.sweep_name}")
        self.stall_reported[vm] = False
        script = remote.sweep_script(vcfg, self.sweep_name, pending)
        self._must(gcloud.ssh_command(vcfg, script), f"launching the queue on VM {vm}")
        self.launched_at[vm] = progress
        self.noted.pop(vm, None)
        self.log(f"launched {len(pending)} unfinished run(s) on VM {vm}: "
                 f"{', '.join(r.name for r in pending)}")

    def _tend_node(self, vcfg: TpuConfig, node: Resource | None) -> None:
        """A VM without a queued resource (plain mode, or one made by hand)."""
        vm = vcfg.name
        if node is None:
            if self.ledger.has_open(vm):
                self.lost(vm, "is gone (preempted or deleted)", None)
            self.create(vcfg)
            if self.mode == "queued":
                return  # the queued resource's VM comes later
            node = self.node(vcfg)
            if node is None:
                raise StepFailed(f"VM {vm} does not exist right after its creation")
            self.ledger.seen(vm, node.create_time)
        if node.state in NODE_LOST:
            self.lost(vm, f"is {node.state}", node.create_time)
            self.delete(vcfg, False, f"it is {node.state}")
            self.create(vcfg)
            if self.mode == "queued":
                return
            node = self.node(vcfg)
            if node is None:
                raise StepFailed(f"VM {vm} does not exist right after its creation")
            self.ledger.seen(vm, node.create_time)
        if node.state == "READY":
            self.ensure_running(vcfg)
        elif node.state == "STOPPED":
            self.log(f"starting VM {vm} (STOPPED)")
            self._must(gcloud.gcloud_tpu(vcfg, "start"), f"starting VM {vm}")
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
            self.create(vcfg)
            return
        if state == "ACTIVE" and node is not None and node.state == "READY":
            self.ensure_running(vcfg)
            return
        shown = state if state != "ACTIVE" else f"ACTIVE, VM {node.state if node else '-'}"
        self.note(vm, f"queued resource {gcloud.queued_resource_id(vcfg)} is {shown}: waiting")

    def tend(self, vm: str) -> bool:
        """One look at ``vm``; True when it needs nothing more (its runs are all completed and
        it is deleted, or kept with ``--keep_vms``)."""
        vcfg = dataclasses.replace(self.cfg, name=vm)
        now = self.clock()
        progress = self.progress(vm)
        if self.progress_seen[vm] is not None and progress > self.progress_seen[vm]:
            self.failures[vm] = 0  # the runs move: earlier failures are forgiven
        self.progress_seen[vm] = progress
        if now < self.next_try[vm]:
            return False
        try:
            # The request first: a VM that appears in between is then seen as READY.
            request = self.queued(vcfg) if self.mode == "queued" else None
            node = self.node(vcfg)
            if node is not None and node.state not in NODE_LOST:
                self.ledger.seen(vm, node.create_time)
            if not self.pending(vm):
                if not self.keep_vms and (node is not None or request is not None):
                    self.delete(vcfg, request is not None, "all its runs are completed")
                return True
            if self.mode == "queued":
                self._tend_queued(vcfg, node, request)
            else:
                self._tend_node(vcfg, node)
        except StepFailed as e:
            self.failed(vm, str(e))
        return False

    def failed(self, vm: str, message: str) -> None:
        self.failures[vm] += 1
        self.last_error[vm] = message
        n, limit = self.failures[vm], self.cfg.watch_retries
        if n > limit:
            raise GiveUp(f"watch gave up on VM {vm} after {n} failed attempts in a row "
                         f"(watch_retries={limit}); last: {message}")
        wait = min(self.cfg.watch_backoff_s * 2 ** (n - 1), self.cfg.watch_backoff_max_s)
        self.next_try[vm] = self.clock() + wait
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


def _last_line(result: subprocess.CompletedProcess) -> str:
    lines = [l.strip() for l in ((result.stderr or "") + (result.stdout or "")).splitlines()
             if l.strip()]
    return f": {lines[-1][:300]}" if lines else ""
