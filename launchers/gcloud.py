"""gcloud command lines for Cloud TPU VMs, queued resources and Cloud Storage (pure: argv lists).

Commands are argv lists (no local shell); scripts given to ``ssh --command`` run in each
worker's login shell and are built, quoted, by :mod:`launchers.remote`.
"""

from __future__ import annotations

import posixpath
from typing import Sequence

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


def scp_command(cfg: TpuConfig, local_path: str, remote_path: str) -> list[str]:
    """Copies a local file to ``~/remote_path`` on every worker (scp takes no VM argument)."""
    common.check_name(remote_path, "remote file name")  # scp's remote side may see a shell
    return ["gcloud", "compute", "tpus", "tpu-vm", "scp", common.local_path(local_path),
            f"{require_name(cfg)}:{remote_path}", *_scope(cfg), "--worker=all"]


def ssh_command(cfg: TpuConfig, script: str, worker: str = "all") -> list[str]:
    """Runs ``script`` on ``worker`` (``all`` = every host of the slice, in parallel).

    ``script`` is run by the worker's login shell: every value in it must be quoted.
    """
    common.check_pattern(worker, _WORKER_PATTERN, "--worker",
                         "all, or worker numbers: 0 / 1,3 / 0-3")
    return gcloud_tpu(cfg, "ssh", f"--worker={worker}", "--command", script)


def create_commands(cfg: TpuConfig) -> list[list[str]]:
    flags = [f"--accelerator-type={cfg.accelerator_type}", f"--version={cfg.runtime()}"]
    if cfg.spot:
        flags.append("--spot")
    if cfg.preemptible:
        flags.append("--preemptible")
    return [gcloud_tpu(cfg, "create", *flags)]


def delete_commands(cfg: TpuConfig, yes: bool = False) -> list[list[str]]:
    return [gcloud_tpu(cfg, "delete", *(["--quiet"] if yes else []))]


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


def queued_delete_commands(cfg: TpuConfig) -> list[list[str]]:
    """Deletes the queued resource and, with ``--force``, its VM if it still exists."""
    return [gcloud_queued(cfg, "delete", "--force", "--quiet")]


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

