"""gcloud for Cloud TPU VMs, queued resources and Cloud Storage: command lines and running them.

Commands are argv lists (no local shell); scripts given to ``ssh --command`` run in each
worker's login shell and are built, quoted, by :mod:`launchers.remote`. :func:`run` runs one
with a timeout (the whole process group is killed when it passes) and the ``*_RE`` patterns
read gcloud's answers: a missing resource, an existing one, a transient API error, a changed
host key.
"""

from __future__ import annotations

import os
import posixpath
import re
import signal
import subprocess
from typing import Callable, Sequence

from launchers import common
from launchers.tpu_config import TpuConfig, check_run_name, check_setting, require_name

# `python -m launchers.tpu ... --worker`: all, or worker numbers/ranges (0, 1,3, 0-3).
_WORKER_PATTERN = r"all|[0-9]+(?:-[0-9]+)?(?:,[0-9]+(?:-[0-9]+)?)*"


def _scope(cfg: TpuConfig) -> list[str]:
    return ([f"--project={cfg.project}"] if cfg.project else []) + (
        [f"--zone={cfg.zone}"] if cfg.zone else []
    )


def gcloud_tpu(cfg: TpuConfig, verb: str, *flags: str) -> list[str]:
    """``gcloud compute tpus tpu-vm VERB NAME [--project] [--zone] FLAGS``."""
    return ["gcloud", "compute", "tpus", "tpu-vm", verb, require_name(cfg), *_scope(cfg), *flags]


def scp_command(cfg: TpuConfig, local_path: str, remote_path: str,
                strict_host_keys: bool = True) -> list[str]:
    """Copies a local file to ``~/remote_path`` on every worker (scp takes no VM argument)."""
    common.check_name(remote_path, "remote file name")  # scp's remote side may see a shell
    keys = [] if strict_host_keys else ["--strict-host-key-checking=no"]
    return ["gcloud", "compute", "tpus", "tpu-vm", "scp", common.local_path(local_path),
            f"{require_name(cfg)}:{remote_path}", *_scope(cfg), "--worker=all", *keys]


def ssh_command(cfg: TpuConfig, script: str, worker: str = "all",
                strict_host_keys: bool = True) -> list[str]:
    """Runs ``script`` on ``worker`` (``all`` = every host of the slice, in parallel).

    ``script`` is run by the worker's login shell: every value in it must be quoted. Without
    ``strict_host_keys`` a changed host key is accepted (``watch``: a VM it recreated under the
    same name has a new one).
    """
    common.check_pattern(worker, _WORKER_PATTERN, "--worker",
                         "all, or worker numbers: 0 / 1,3 / 0-3")
    keys = [] if strict_host_keys else ["--strict-host-key-checking=no"]
    return gcloud_tpu(cfg, "ssh", f"--worker={worker}", *keys, "--command", script)


def create_commands(cfg: TpuConfig, wait: bool = True) -> list[list[str]]:
    """``tpu-vm create``; ``wait=False`` returns at once (``--async``: the VM is CREATING)."""
    flags = [f"--accelerator-type={cfg.accelerator_type}", f"--version={cfg.runtime()}"]
    if cfg.spot:
        flags.append("--spot")
    if cfg.preemptible:
        flags.append("--preemptible")
    return [gcloud_tpu(cfg, "create", *flags, *([] if wait else ["--async"]))]


def delete_commands(cfg: TpuConfig, yes: bool = False, wait: bool = True) -> list[list[str]]:
    """``tpu-vm delete``; ``wait=False`` returns at once (``--async``: the VM is DELETING)."""
    flags = (["--quiet"] if yes else []) + ([] if wait else ["--async"])
    return [gcloud_tpu(cfg, "delete", *flags)]


# Queued resources (``gcloud compute tpus queued-resources``): the way to ask for Spot capacity
# that waits in a queue (WAITING_FOR_RESOURCES, PROVISIONING, ACTIVE; SUSPENDED once its Spot
# VM is preempted, FAILED when it cannot be honoured). ``watch`` names the request after the VM.
QR_SUFFIX = "-qr"


def queued_resource_id(cfg: TpuConfig) -> str:
    """The queued resource of VM ``NAME``: ``NAME-qr`` (checked like a VM name)."""
    qr = require_name(cfg) + QR_SUFFIX
    check_setting("name", qr, "queued resource id (the VM name + -qr)")
    return qr


def gcloud_queued(cfg: TpuConfig, verb: str, *flags: str) -> list[str]:
    """``gcloud compute tpus queued-resources VERB NAME-qr [--project] [--zone] FLAGS``."""
    return ["gcloud", "compute", "tpus", "queued-resources", verb, queued_resource_id(cfg),
            *_scope(cfg), *flags]


def queued_create_commands(cfg: TpuConfig) -> list[list[str]]:
    """A queued resource for one VM named ``cfg.name`` (Spot when ``cfg.spot``)."""
    if cfg.preemptible:
        raise ValueError("queued resources take Spot VMs, not legacy preemptible ones: use "
                         "--spot, or --provisioning=create")
    flags = [f"--node-id={require_name(cfg)}", f"--accelerator-type={cfg.accelerator_type}",
             f"--runtime-version={cfg.runtime()}"]
    if cfg.spot:
        flags.append("--spot")
    return [gcloud_queued(cfg, "create", *flags)]


def queued_delete_commands(cfg: TpuConfig, wait: bool = True) -> list[list[str]]:
    """Deletes the queued resource and, with ``--force``, its VM if it still exists."""
    return [gcloud_queued(cfg, "delete", "--force", "--quiet", *([] if wait else ["--async"]))]


def list_runs_command(cfg: TpuConfig) -> list[str]:
    return ["gcloud", "storage", "ls", f"{cfg.runs_url}/**/{common.RUN_JSON}"]


def run_json_command(cfg: TpuConfig, run_name: str) -> list[str]:
    return ["gcloud", "storage", "cat", f"{cfg.workdir(run_name)}/{common.RUN_JSON}"]


def download_commands(cfg: TpuConfig, dest: str, run_names: Sequence[str] | None,
                      with_checkpoints: bool = False) -> list[list[str]]:
    """``gcloud storage rsync`` each run (or the whole root) into ``dest``; incremental."""
    exclude = [] if with_checkpoints else ["--exclude=(.*/)?checkpoints/.*"]
    dest = common.local_path(dest)  # never read as an option by mkdir / gcloud
    pairs = (
        [(cfg.runs_url, dest)]
        if run_names is None
        else [(cfg.workdir(n), posixpath.join(dest, check_run_name(n))) for n in run_names]
    )
    commands = []
    for src, dst in pairs:
        commands.append(["mkdir", "-p", dst])
        commands.append(["gcloud", "storage", "rsync", "--recursive", *exclude, src, dst])
    return commands



# ---------------------------------------------------------------------------------------------
# Running gcloud, and reading its answers.

TIMEOUT_RC = 124  # the exit code of a call killed at its timeout (as timeout(1) uses)
NOT_FOUND_RE = re.compile(r"NOT_FOUND|not found|does not exist", re.I)
ALREADY_EXISTS_RE = re.compile(r"ALREADY_EXISTS|already exists", re.I)
# Errors of the API (or of the way to it) that say nothing about the request: try again later.
TRANSIENT_RE = re.compile(
    r"\b(UNAVAILABLE|INTERNAL|DEADLINE_EXCEEDED|ABORTED|RATE_LIMIT_EXCEEDED|rateLimitExceeded)\b"
    r"|\b(HTTP|Error) ?50[0234]\b|Connection reset by peer|Temporary failure in name resolution"
    r"|timed out after [0-9.]+ s \(launchers\)")
HOST_KEY_CHANGED_RE = re.compile(r"REMOTE HOST IDENTIFICATION HAS CHANGED")


def output(result: subprocess.CompletedProcess) -> str:
    """stdout and stderr of a captured call, together."""
    return (result.stdout or "") + (result.stderr or "")


def is_transient(result: subprocess.CompletedProcess) -> bool:
    """A failed gcloud API call whose error is the service's, not the request's."""
    return result.returncode != 0 and bool(TRANSIENT_RE.search(output(result)))


def _run_group(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Runs ``argv`` in its own process group, killed as a whole at ``timeout``: ``gcloud
    ssh`` leaves ssh (and the remote command's pipes) behind when only gcloud is killed."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:  # a grandchild that left the group holds a pipe
            proc.stdout.close()
            proc.stderr.close()
            proc.wait()
            out, err = "", ""
        return subprocess.CompletedProcess(argv, TIMEOUT_RC, out or "", (err or "") +
                                           f"\ntimed out after {timeout:g} s (launchers)")
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def run(argv: Sequence[str], timeout: float,
        runner: Callable[..., subprocess.CompletedProcess] | None = None
        ) -> subprocess.CompletedProcess:
    """Runs ``argv`` with its output captured; never longer than ``timeout`` seconds.

    A call that times out returns exit code :data:`TIMEOUT_RC` and says so on stderr; a missing
    program returns 127. ``runner`` replaces the process group runner (tests); it gets
    ``subprocess.run``'s arguments, ``timeout`` included.
    """
    argv = list(argv)
    try:
        if runner is None:
            return _run_group(argv, timeout)
        return runner(argv, check=False, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        return subprocess.CompletedProcess(argv, 127, "", f"{argv[0]}: not found")
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess(argv, TIMEOUT_RC, "", f"{e}\ntimed out after "
                                           f"{timeout:g} s (launchers)")
