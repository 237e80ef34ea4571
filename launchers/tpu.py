"""Create, set up and drive Cloud TPU VMs: ``python -m launchers.tpu <verb> [flags]``.

Verbs::

    create    create the TPU VM(s)                      gcloud compute tpus tpu-vm create
    setup     ship trm to every worker and pip install it with its ``tpu`` extra
    launch    start one run on all workers, detached     (re-running resumes it)
    sweep     queue a sweep's runs on one VM, or spread them over --vms=a,b,c
    status    VM state, what runs on the VM, last logged step of each run (run.json on gs://)
    logs      tail a run's (or a sweep queue's) log on a worker
    download  copy runs from gs:// to a local directory (gcloud storage rsync)
    delete    delete the TPU VM(s)
    watch     keep a sweep going on preemptible capacity until every run is completed:
              recreate preempted VMs, set them up again, relaunch the unfinished runs
              (launchers/watch.py; also ``sweep --watch``)
    cost      estimated device-hours (and cost) of a sweep from the model's FLOPs
              (launchers/cost.py)

Every verb takes ``--dry_run``: it prints the exact commands, one per line and shell-quoted,
and runs nothing. Without it the commands run one after the other with their output streamed;
the first failure stops the verb and is reported with its exit code.

Settings (project, zone, VM name, accelerator type, runtime version, bucket, workdir root,
spot/preemptible, ...) come from, highest priority first: command-line flags, a
``--config=FILE`` (JSON, or TOML on Python >= 3.11, keys = the fields of :class:`TpuConfig`),
``TRM_TPU_<FIELD>`` environment variables (e.g. ``TRM_TPU_BUCKET``), the defaults below.
An unset project or zone is left to gcloud's own configuration (``gcloud config set ...``).

Trust boundary: the commands are argv lists (no local shell); the scripts given to
``gcloud ... ssh --command`` run in each worker's login shell, so every value in them is
shell-quoted (``shlex.quote``, or :func:`launchers.common.dq` inside ``"..."``). Settings with
a fixed grammar (VM name, project, zone, accelerator type, runtime version, bucket, root,
python, train module, remote and log dirs, git URL, env names, run and sweep names, worker)
are checked where they come from and rejected with one line naming the flag, ``--config``
key or ``TRM_TPU_*`` variable and the allowed pattern; names that become paths stay inside
their folder (no ``..``, no absolute path). Gin files and bindings are code for the trainer:
they are quoted, not restricted. docs/SETUP_GUIDE.md, "Trust boundaries and quoting".

Runs live at ``gs://BUCKET/ROOT/<run name>`` (the workdir of docs/DESIGN.md). On the VM,
each worker keeps ``~/trm-logs/<run name>.log`` and ``.pid``; the trainer runs from ``~/trm``
(the source tree that ``setup`` unpacks and installs in editable mode).

Layout of this module: :class:`TpuConfig` and its loading, pure functions that build
commands (``*_commands``), the remote shell scripts they embed, and :func:`main`, the thin
layer that prints or runs them.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import posixpath
import shlex
import sys
from typing import Mapping, Sequence

from launchers import common
from launchers.named_sweeps import Run, get_sweep

LIBTPU_INDEX = "https://storage.googleapis.com/libtpu-releases/index.html"
SRC_ARCHIVE = "dist/trm-src.tar.gz"  # local path (relative to the source dir) of `git archive`
_ENV_PREFIX = "TRM_TPU_"

# The fixed grammars of settings that name Google Cloud resources or end up as commands,
# options or paths (setting -> (regex, what it means)). Every value is also shell-quoted where
# it reaches a shell; the grammars make a typo or a hostile value fail early, with one line.
_GRAMMARS: dict[str, tuple[str, str]] = {
    "name": (r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?",
             "a TPU VM name: lowercase letters, digits and -, starting with a letter, "
             "at most 63 characters"),
    "project": (r"(?:[a-z][a-z0-9.-]*[a-z0-9]:)?[a-z][a-z0-9-]{4,28}[a-z0-9]",
                "a GCP project id: 6-30 lowercase letters, digits and -"),
    "zone": (r"[a-z][a-z0-9-]*[a-z0-9]", "a zone such as us-central2-b"),
    "accelerator_type": (r"v[0-9]+[a-z]*-[0-9]+", "a TPU type such as v4-32 or v5litepod-8"),
    "runtime_version": (r"[a-z0-9][a-z0-9._-]*",
                        "a TPU software version such as tpu-ubuntu2204-base"),
    "bucket": (r"[a-z0-9](?:[a-z0-9._-]*[a-z0-9])?",
               "a GCS bucket name, with or without gs://: lowercase letters, digits, . _ -"),
    "python": (r"[A-Za-z0-9_.+/][A-Za-z0-9_.+/-]*",
               "an interpreter name or path: letters, digits, _ . + - /; no leading -"),
    "train_module": (common.MODULE_PATTERN, "a dotted Python module name"),
    "remote_dir": (common.RELPATH_PATTERN, "a path relative to the home directory, no .."),
    "log_dir": (common.RELPATH_PATTERN, "a path relative to the home directory, no .."),
    "root": (rf"(?:{common.RELPATH_PATTERN})?",
             "a path inside the bucket: names of letters, digits, _ . + - joined by /, no .."),
    "provisioning": (r"auto|queued|create",
                     "auto (queued resources for Spot VMs where the TPU type has them, plain "
                     "create otherwise), queued or create"),
}
# `python -m launchers.tpu ... --worker`: all, or worker numbers/ranges (0, 1,3, 0-3).
_WORKER_PATTERN = r"all|[0-9]+(?:-[0-9]+)?(?:,[0-9]+(?:-[0-9]+)?)*"
# A git URL for `setup --source`: a URL (scheme://...) or scp-like git@host:path, with an
# optional @REF; no whitespace, quotes, backslashes or backquotes.
_GIT_URL_PATTERN = (r"(?:git\+)?(?:https?|ssh|git|file)://[A-Za-z0-9._~:/?#\[\]@!$&()*+,;=%-]+"
                    r"|git@[A-Za-z0-9.-]+:[A-Za-z0-9._~/+-]+")
_GIT_REF_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_./+-]*"


@dataclasses.dataclass(frozen=True)
class TpuConfig:
    """Where and how to run on Cloud TPU VMs.

    Attributes:
      name: TPU VM name.
      project: GCP project (None: gcloud's ``core/project``).
      zone: zone, e.g. ``us-central2-b`` for v4 (None: gcloud's ``compute/zone``).
      accelerator_type: slice type; v4-32 = 16 chips on 4 hosts (workers 0-3).
      runtime_version: TPU VM software image; PyTorch/XLA uses the plain Ubuntu base.
      bucket: GCS bucket for runs (with or without ``gs://``).
      root: prefix inside the bucket; run workdirs are ``gs://BUCKET/ROOT/<run name>``.
      spot: create a Spot VM (cheap, can be preempted at any time).
      preemptible: create a legacy preemptible VM (at most 24 h).
      python: Python interpreter on the VM.
      source: what ``setup`` installs: a local source directory (shipped with
        ``git archive HEAD``, i.e. committed files only), a local sdist ``.tar.gz`` or wheel,
        or a git URL (``https://...`` / ``git+https://...``, optionally ``@REF``).
      find_links: extra ``pip -f`` index (libtpu releases); empty to leave it out.
      remote_dir: source tree on each worker (relative to the home directory).
      log_dir: logs and pid files on each worker (relative to the home directory).
      train_module: the trainer's module (``python -m <train_module>``).
      env: extra ``KEY=VALUE`` environment of the trainer, after ``PJRT_DEVICE=TPU``.
      provisioning: how ``watch`` (re)creates a VM: ``queued`` (a queued resource, with
        ``--spot`` when ``spot``), ``create`` (``tpu-vm create``), or ``auto`` (queued for a
        Spot VM of a type with queued resources, v4 and later; create otherwise).
      watch_poll_s: seconds between two looks of ``watch`` at the VMs and runs.
      watch_retries: failed attempts in a row (create, setup, launch, a queue that ends
        without progress) that ``watch`` tolerates per VM before it gives up.
      watch_backoff_s: wait after the first failure; doubled after each further one...
      watch_backoff_max_s: ... up to this.
      watch_log: ``watch``'s log file (local); its ledger of VM time is ``<watch_log>.json``.
      price_per_chip_hour: price of one chip-hour (any currency) for ``cost`` and ``watch``.
      mfu: assumed model FLOPs utilisation for ``cost`` (0 < mfu <= 1).
      peak_flops_per_chip: peak bf16 FLOP/s of one chip; default from the table in
        launchers/cost.py by accelerator type.
    """

    name: str | None = None
    project: str | None = None
    zone: str | None = None
    accelerator_type: str = "v4-32"
    runtime_version: str = "tpu-ubuntu2204-base"
    bucket: str | None = None
    root: str = "trm"
    spot: bool = False
    preemptible: bool = False
    python: str = "python3"
    source: str = "."
    find_links: str = LIBTPU_INDEX
    remote_dir: str = "trm"
    log_dir: str = "trm-logs"
    train_module: str = common.DEFAULT_TRAIN_MODULE
    env: tuple[str, ...] = ()
    provisioning: str = "auto"
    watch_poll_s: float = 60.0
    watch_retries: int = 5
    watch_backoff_s: float = 60.0
    watch_backoff_max_s: float = 1800.0
    watch_log: str = "trm-watch.log"
    price_per_chip_hour: float | None = None
    mfu: float = 0.3
    peak_flops_per_chip: float | None = None

    def __post_init__(self):
        if self.spot and self.preemptible:
            raise ValueError("choose one of spot and preemptible")
        object.__setattr__(self, "env", tuple(self.env))
        for key in _FIELDS:
            check_setting(key, getattr(self, key), key)

    @property
    def runs_url(self) -> str:
        """``gs://BUCKET/ROOT``: where all runs live."""
        if not self.bucket:
            raise ValueError("no bucket: pass --bucket, set it in --config or TRM_TPU_BUCKET")
        bucket = _bucket_name(self.bucket)
        root = self.root.strip("/")
        return f"gs://{bucket}/{root}" if root else f"gs://{bucket}"

    def workdir(self, run_name: str) -> str:
        """``gs://BUCKET/ROOT/<run name>``."""
        return f"{self.runs_url}/{check_run_name(run_name)}"

    def trainer_env(self) -> list[str]:
        """``PJRT_DEVICE=TPU`` plus :attr:`env` (a later entry replaces an earlier key)."""
        merged: dict[str, str] = {"PJRT_DEVICE": "TPU"}
        for kv in self.env:
            key, value = kv.split("=", 1)
            merged[key] = value
        return [f"{k}={v}" for k, v in merged.items()]


_FIELDS = {f.name: f for f in dataclasses.fields(TpuConfig)}
_BOOL_FIELDS = {"spot", "preemptible"}
# Numeric settings: (type, smallest allowed value, whether the smallest is excluded, largest).
_NUMBER_FIELDS: dict[str, tuple[type, float, bool, float | None]] = {
    "watch_poll_s": (float, 0.0, True, None),
    "watch_retries": (int, 0, False, None),
    "watch_backoff_s": (float, 0.0, False, None),
    "watch_backoff_max_s": (float, 0.0, False, None),
    "price_per_chip_hour": (float, 0.0, False, None),
    "mfu": (float, 0.0, True, 1.0),
    "peak_flops_per_chip": (float, 0.0, True, None),
}


def _bucket_name(bucket: str) -> str:
    return bucket.removeprefix("gs://").strip("/")


def check_setting(key: str, value: object, label: str) -> None:
    """Raises a one-line ValueError, naming ``label``, if ``value`` breaks ``key``'s grammar.

    ``None`` (unset) and the booleans always pass; free-form values (``find_links``, ``env``
    values) only must not hold a NUL byte (they are shell-quoted wherever they are used).
    """
    if value is None or key in _BOOL_FIELDS:
        return
    if key in _NUMBER_FIELDS:
        _check_number(key, value, label)
        return
    if value == "" and _FIELDS[key].default is None:
        return  # an empty name / project / zone / bucket is unset
    if key == "env":
        for kv in value:
            _check_env_entry(kv, label)
        return
    if not isinstance(value, str):
        raise ValueError(f"{label} {common.show(value)} is not allowed: must be a string")
    if "\0" in value:
        raise ValueError(f"{label} {common.show(value)} is not allowed: it holds a NUL byte")
    if key == "bucket":
        value = _bucket_name(value)
    elif key == "root":
        value = value.strip("/")
    elif key == "source":
        _check_source(value, label)
        return
    if key in _GRAMMARS:
        pattern, what = _GRAMMARS[key]
        common.check_pattern(value, pattern, label, what)


def _check_number(key: str, value: object, label: str) -> None:
    kind, low, open_low, high = _NUMBER_FIELDS[key]
    ok_type = (isinstance(value, int) if kind is int else isinstance(value, (int, float)))
    if isinstance(value, bool) or not ok_type or value != value or value in (float("inf"),
                                                                               float("-inf")):
        raise ValueError(f"{label} {common.show(value)} is not allowed: must be "
                         f"{'an integer' if kind is int else 'a finite number'}")
    if value < low or (open_low and value == low) or (high is not None and value > high):
        bounds = f"{'>' if open_low else '>='} {low:g}" + (f" and <= {high:g}" if high else "")
        raise ValueError(f"{label} {common.show(value)} is not allowed: must be {bounds}")


def _parse_number(key: str, value: object, label: str) -> object:
    """A number setting from a flag, file or variable (``"60"``, ``"1e-3"``, ``"none"``)."""
    kind = _NUMBER_FIELDS[key][0]
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in ("", "none", "null") and _FIELDS[key].default is None:
            return None
        try:
            value = kind(text) if kind is int else float(text)
        except ValueError:
            raise ValueError(f"{label} {common.show(value)} is not allowed: must be "
                             f"{'an integer' if kind is int else 'a number'}") from None
    elif kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    _check_number(key, value, label)
    return value


def _check_env_entry(kv: object, label: str) -> None:
    if not isinstance(kv, str) or "=" not in kv:
        raise ValueError(f"{label}: env entry {common.show(kv)} is not KEY=VALUE")
    key, value = kv.split("=", 1)
    common.check_pattern(key, common.ENV_KEY_PATTERN, f"{label}: env variable name",
                         "letters, digits and _, not starting with a digit")
    if "\0" in value:
        raise ValueError(f"{label}: env entry {common.show(kv)} holds a NUL byte")


def _check_source(source: str, label: str) -> None:
    """A git URL (+ optional @REF) or a local path whose file name is safe on the VM."""
    kind = _source_kind(source)
    if kind == "git":
        url, ref = _git_url_and_ref(source)
        common.check_pattern(url, _GIT_URL_PATTERN, f"{label} (git URL)",
                             "scheme://... (https, http, ssh, git, file) or git@host:path")
        if ref is not None:
            common.check_pattern(ref, _GIT_REF_PATTERN, f"{label} (git ref after @)",
                                 "a branch, tag or commit; no leading -")
            if ".." in ref:
                raise ValueError(f"{label} (git ref after @) {common.show(ref)} is not allowed: "
                                 "no .. in a git ref")
    elif kind in ("wheel", "sdist"):
        # The file keeps its name on the VM (scp's remote side, then tar / pip).
        common.check_name(posixpath.basename(source), f"{label} (file name)")
    elif not source:
        raise ValueError(f"{label} is empty: a source directory, archive or git URL is needed")


def check_run_name(name: str, setting: str = "run name") -> str:
    """Returns ``name`` if it is a relative, path-safe run name (``e2_2_tn/t3_n6_s0``)."""
    return common.check_relpath(name, setting)


def _parse_bool(value: object, label: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{label} {common.show(value)} is not a boolean (true/false, 1/0, yes/no)")


def _unknown(key: str, origin: str, known) -> ValueError:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ValueError(f"{origin}: unknown setting {common.show(key)}{hint}; "
                      f"known: {', '.join(known)}")


def _coerce(key: str, value: object, origin: str, label: str | None = None) -> object:
    """``value`` as the type of setting ``key``, checked against its grammar.

    ``origin`` names where it came from (a file, ``environment``, ``flags``) and ``label`` the
    exact place (``launch.json: zone``, ``TRM_TPU_ZONE``, ``--zone``) for error messages.
    """
    if key not in _FIELDS:
        raise _unknown(key, origin, _FIELDS)
    label = label or f"{origin}: {key}"
    if key in _BOOL_FIELDS:
        return _parse_bool(value, label)
    if key in _NUMBER_FIELDS:
        return _parse_number(key, value, label)
    if key == "env":
        if isinstance(value, Mapping):
            value = tuple(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, str):
            value = tuple(v for v in value.split(",") if v)
        elif isinstance(value, (list, tuple)):
            value = tuple(str(v) for v in value)
        else:
            raise ValueError(f"{label} {common.show(value)} is not allowed: "
                             "env is an object of KEY: VALUE or a list of KEY=VALUE")
    elif value is not None:
        if isinstance(value, (dict, list, tuple)):
            raise ValueError(f"{label} {common.show(value)} is not allowed: must be a string")
        value = str(value)
    check_setting(key, value, label)
    return value


def read_config_file(path: str) -> dict:
    """Settings from a JSON (or, on Python >= 3.11, TOML) file.

    Raises:
      ValueError: one line naming the file, for a missing or unreadable file, a parse error,
        anything but an object of settings, an unknown key (with a suggestion) or a bad value.
    """
    where = f"--config {path}"
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"{where}: cannot read it: {e.strerror or e}") from None
    try:
        if path.endswith(".toml"):
            try:
                import tomllib
            except ImportError:  # Python 3.10
                raise ValueError("TOML needs Python >= 3.11; use JSON") from None
            settings = tomllib.loads(data.decode("utf-8"))
        else:
            settings = json.loads(data)
    except ValueError as e:  # JSONDecodeError, TOMLDecodeError, UnicodeDecodeError
        reason = " ".join(str(e).split())  # one line
        raise ValueError(f"{where}: not valid {'TOML' if path.endswith('.toml') else 'JSON'}: "
                         f"{reason}") from None
    if not isinstance(settings, dict):
        raise ValueError(f"{where}: expected an object of settings, got "
                         f"{type(settings).__name__}")
    return {k: _coerce(k, v, where, f"{where}: {k}") for k, v in settings.items()
            if v is not None}


def _environ_settings(environ: Mapping[str, str]) -> dict[str, object]:
    """``TRM_TPU_<FIELD>`` variables; an unknown ``TRM_TPU_*`` name is an error (a typo)."""
    settings: dict[str, object] = {}
    known = [_ENV_PREFIX + key.upper() for key in _FIELDS]
    for var, value in environ.items():
        if not var.startswith(_ENV_PREFIX):
            continue
        if var not in known:
            raise _unknown(var, "environment", known)
        key = var[len(_ENV_PREFIX):].lower()
        settings[key] = _coerce(key, value, "environment", var)
    return settings


def load_config(
    flags: Mapping[str, object],
    config_file: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> TpuConfig:
    """Merges defaults < ``TRM_TPU_*`` environment < config file < flags (None = unset).

    Every value is checked where it comes from, so an error names the flag, the file or the
    variable (see :func:`check_setting`).
    """
    environ = os.environ if environ is None else environ
    settings = _environ_settings(environ)
    if config_file:
        settings.update(read_config_file(config_file))
    for key, value in flags.items():
        if value is not None and value != ():
            value = _coerce(key, value, "flags", f"--{key}")
            # --env adds to the environment of the config file / TRM_TPU_ENV.
            settings[key] = settings.get("env", ()) + value if key == "env" else value
    return TpuConfig(**settings)


# ---------------------------------------------------------------------------------------------
# Pure command construction. Commands are argv lists; remote scripts are single-line POSIX
# shell strings given to `gcloud ... ssh --command`.


def _scope(cfg: TpuConfig) -> list[str]:
    return ([f"--project={cfg.project}"] if cfg.project else []) + (
        [f"--zone={cfg.zone}"] if cfg.zone else []
    )


def _require_name(cfg: TpuConfig) -> str:
    if not cfg.name:
        raise ValueError("no TPU VM name: pass --name, set it in --config or TRM_TPU_NAME")
    return cfg.name


def gcloud_tpu(cfg: TpuConfig, verb: str, *flags: str) -> list[str]:
    """``gcloud compute tpus tpu-vm VERB NAME [--project] [--zone] FLAGS``."""
    return ["gcloud", "compute", "tpus", "tpu-vm", verb, _require_name(cfg), *_scope(cfg), *flags]


def scp_command(cfg: TpuConfig, local_path: str, remote_path: str) -> list[str]:
    """Copies a local file to ``~/remote_path`` on every worker (scp takes no VM argument)."""
    common.check_name(remote_path, "remote file name")  # scp's remote side may see a shell
    return ["gcloud", "compute", "tpus", "tpu-vm", "scp", common.local_path(local_path),
            f"{_require_name(cfg)}:{remote_path}", *_scope(cfg), "--worker=all"]


def ssh_command(cfg: TpuConfig, script: str, worker: str = "all") -> list[str]:
    """Runs ``script`` on ``worker`` (``all`` = every host of the slice, in parallel).

    ``script`` is run by the worker's login shell: every value in it must be quoted.
    """
    common.check_pattern(worker, _WORKER_PATTERN, "--worker",
                         "all, or worker numbers: 0 / 1,3 / 0-3")
    return gcloud_tpu(cfg, "ssh", f"--worker={worker}", "--command", script)


def create_commands(cfg: TpuConfig) -> list[list[str]]:
    flags = [f"--accelerator-type={cfg.accelerator_type}", f"--version={cfg.runtime_version}"]
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
    qr = _require_name(cfg) + QR_SUFFIX
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
    flags = [f"--node-id={_require_name(cfg)}", f"--accelerator-type={cfg.accelerator_type}",
             f"--runtime-version={cfg.runtime_version}"]
    if cfg.spot:
        flags.append("--spot")
    return [gcloud_queued(cfg, "create", *flags)]


def queued_delete_commands(cfg: TpuConfig) -> list[list[str]]:
    """Deletes the queued resource and, with ``--force``, its VM if it still exists."""
    return [gcloud_queued(cfg, "delete", "--force", "--quiet")]


def _source_kind(source: str) -> str:
    if "://" in source or source.startswith("git@"):
        return "git"
    if source.endswith(".whl"):
        return "wheel"
    if source.endswith((".tar.gz", ".tgz")):
        return "sdist"
    return "dir"


def _git_url_and_ref(source: str) -> tuple[str, str | None]:
    """``git+https://host/org/trm.git@v1`` -> (``https://host/org/trm.git``, ``v1``).

    An ``@`` before the path (``https://user@host/...``, ``git@host:org/trm.git``) is a user.
    """
    url = source.removeprefix("git+")
    path_start = url.find("/", url.find("://") + 3) if "://" in url else url.find(":")
    at = url.rfind("@")
    if 0 <= path_start < at:
        return url[:at], url[at + 1 :]
    return url, None


def setup_commands(cfg: TpuConfig, marker: str | None = None) -> list[list[str]]:
    """Ship trm to every worker, unpack it into ``~/REMOTE_DIR`` and install it editable.

    Local commands (``git archive``, ``scp``) come first, then one ``ssh --worker=all``. With
    ``marker`` (a path relative to the home directory) the script ends by creating that file,
    so ``watch`` can tell a worker that was set up from a fresh one.
    """
    py = shlex.quote(cfg.python)
    rdir = shlex.quote(cfg.remote_dir)
    local: list[list[str]] = []
    kind = _source_kind(cfg.source)
    if kind == "git":
        url, ref = _git_url_and_ref(cfg.source)
        fetch = f"rm -rf {rdir} && git clone {shlex.quote(url)} {rdir}"
        if ref:
            fetch += f" && git -C {rdir} checkout {shlex.quote(ref)}"
        spec = f"./{cfg.remote_dir}[tpu]"
    else:
        if kind == "dir":
            archive_dir = posixpath.join(cfg.source, posixpath.dirname(SRC_ARCHIVE))
            local.append(["mkdir", "-p", common.local_path(archive_dir)])
            local.append(
                ["git", "-C", cfg.source, "archive", "--format=tar.gz", "--prefix=trm/",
                 f"--output={SRC_ARCHIVE}", "HEAD"]
            )
            archive = posixpath.join(cfg.source, SRC_ARCHIVE)
        else:
            archive = cfg.source
        remote_file = posixpath.basename(archive)
        local.append(scp_command(cfg, archive, remote_file))
        if kind == "wheel":  # installed as is: gin files must be package data
            fetch = f"mkdir -p {rdir}"
            spec = f"./{remote_file}[tpu]"
        else:
            fetch = (
                f"rm -rf {rdir} && mkdir -p {rdir} && "
                f"tar -xzf {shlex.quote(remote_file)} -C {rdir} --strip-components=1"
            )
            spec = f"./{cfg.remote_dir}[tpu]"
    pip = f"{py} -m pip install"
    editable = "" if kind == "wheel" else "-e "  # editable: ~/trm/gin stays next to the code
    install = f"{pip} {editable}{shlex.quote(spec)}"
    if cfg.find_links:
        install += f" -f {shlex.quote(cfg.find_links)}"
    check = f"{py} -c " + shlex.quote(
        "import torch, torch_xla, trm; "
        "print(trm.__file__, torch.__version__, torch_xla.__version__)"
    )
    steps = [fetch, f"{pip} --upgrade pip", f"{py} -m pip uninstall -y trm", install, check]
    if marker:
        steps.append(f"touch {_home(common.check_relpath(marker, 'setup marker'))}")
    return local + [ssh_command(cfg, " && ".join(steps))]


def train_command(cfg: TpuConfig, gin_files: Sequence[str], bindings: Sequence[str],
                  run_name: str) -> str:
    """The trainer's shell command line on a worker (environment included)."""
    argv = ["env", *cfg.trainer_env(), cfg.python, "-m", cfg.train_module]
    argv += common.trainer_args(gin_files, bindings, cfg.workdir(run_name))
    return shlex.join(argv)


def _home(relative: str) -> str:
    """A shell word for ``~/relative`` that still expands when quoted one level down."""
    return '"$HOME"/' + shlex.quote(relative)


def _cd_or_fail(cfg: TpuConfig) -> str:
    """``cd`` into the checkout, or stop with a message: a worker where setup never ran must
    not start the trainer in its home directory."""
    where = common.dq(f"~/{cfg.remote_dir}")
    return (f"cd {_home(cfg.remote_dir)} || {{ echo \"trm: $(hostname): {where} is missing: "
            f"run python -m launchers.tpu setup first\" >&2; exit 1; }}")


def _done_function(cfg: TpuConfig) -> str:
    """Shell function ``trm_done URL``: true when ``URL/run.json`` says "completed".

    The probe's Python has no quotes of its own, so the script nests one level less.
    """
    probe = (
        "import json,sys; d=sys.stdin.read().strip(); "
        "sys.exit(0 if d and json.loads(d).get(sys.argv[1])==sys.argv[2] else 1)"
    )
    return (
        'trm_done() { gcloud storage cat "$1/run.json" 2>/dev/null | '
        f"{shlex.quote(cfg.python)} -c {shlex.quote(probe)} status {common.COMPLETED}; }}"
    )


def _alive_function(cfg: TpuConfig) -> str:
    """Shell function ``trm_alive PIDFILE``: true when its process is a live trm job."""
    return (
        f"trm_alive() {{ grep -qsF {shlex.quote(cfg.train_module)} "
        '"/proc/$(cat "$1" 2>/dev/null)/cmdline"; }'
    )


def _guard(cfg: TpuConfig, job: str, pidfile: str) -> str:
    """Exits 0 if ``job`` already runs here, 1 if another trm job holds the TPU.

    A TPU runs one process at a time; this makes ``launch``/``sweep`` safe to repeat.
    """
    job = common.dq(job)
    return (
        f"for f in $(find {_home(cfg.log_dir)} -name '*.pid' 2>/dev/null); do "
        f'if trm_alive "$f"; then '
        f'if [ "$f" = {pidfile} ]; then echo "trm: $(hostname): {job} is already running"; '
        f"exit 0; fi; "
        f'echo "trm: $(hostname): busy with ${{f%.pid}}, not starting {job}" >&2; exit 1; '
        f"fi; done"
    )


def log_path(cfg: TpuConfig, run_name: str) -> str:
    """A run's log on each worker, relative to the home directory."""
    return f"{cfg.log_dir}/{check_run_name(run_name)}.log"


def sweep_log_path(cfg: TpuConfig, sweep_name: str) -> str:
    """A sweep queue's log on each worker, relative to the home directory."""
    return f"{cfg.log_dir}/sweeps/{common.check_name(sweep_name, 'sweep name')}.log"


def _pid_path(log: str) -> str:
    return log.removesuffix(".log") + ".pid"


def launch_script(cfg: TpuConfig, run: Run) -> str:
    """What each worker runs for ``launch``: start the trainer detached from ssh.

    Idempotent: nothing happens if the run is running here or already completed; otherwise
    the trainer starts and resumes from the workdir's last checkpoint, if any.
    """
    log = log_path(cfg, run.name)
    pid = _home(_pid_path(log))
    name = common.dq(run.name)  # for the inside of "..." (already path-safe: belt and braces)
    return "; ".join(
        [
            _alive_function(cfg),
            _done_function(cfg),
            f"mkdir -p {_home(posixpath.dirname(log))}",
            _guard(cfg, run.name, pid),
            f"if trm_done {shlex.quote(cfg.workdir(run.name))}; then "
            f'echo "trm: $(hostname): {name} is already completed"; exit 0; fi',
            _cd_or_fail(cfg),
            f'echo "trm: $(date -u +%FT%TZ) starting {name}" >> {_home(log)}',
            f"setsid nohup {train_command(cfg, run.gin_files, run.bindings, run.name)} "
            f">> {_home(log)} 2>&1 < /dev/null & echo $! > {pid}",
            f'echo "trm: $(hostname): started {name}, log ~/{common.dq(log)}"',
        ]
    )


def launch_commands(cfg: TpuConfig, run: Run) -> list[list[str]]:
    return [ssh_command(cfg, launch_script(cfg, run))]


def sweep_script(cfg: TpuConfig, sweep_name: str, runs: Sequence[Run]) -> str:
    """A detached queue that runs ``runs`` one after the other on every worker.

    Completed runs are skipped (so re-queueing after a preemption resumes where it stopped),
    a failed run does not stop the queue; each run logs to ``~/LOG_DIR/<run name>.log``, the
    queue to ``~/LOG_DIR/sweeps/<sweep>.log``.
    """
    q = shlex.quote
    steps = [_done_function(cfg), _cd_or_fail(cfg)]
    for i, run in enumerate(runs, 1):
        log = log_path(cfg, run.name)
        tag = common.dq(f"[{i}/{len(runs)}] {run.name}")
        steps.append(
            f"mkdir -p {_home(posixpath.dirname(log))}; "
            f'if trm_done {q(cfg.workdir(run.name))}; then echo "trm: {tag} already completed"; '
            f'else echo "trm: $(date -u +%FT%TZ) {tag} starting"; '
            f"{train_command(cfg, run.gin_files, run.bindings, run.name)} >> {_home(log)} 2>&1; "
            f'rc=$?; echo "trm: $(date -u +%FT%TZ) {tag} exited with $rc"; fi'
        )
    shown = common.dq(sweep_name)
    steps.append(f'echo "trm: $(date -u +%FT%TZ) sweep {shown} done"')
    queue = "; ".join(steps)
    log = sweep_log_path(cfg, sweep_name)
    pid = _home(_pid_path(log))
    return "; ".join(
        [
            _alive_function(cfg),
            f"mkdir -p {_home(posixpath.dirname(log))}",
            _guard(cfg, f"sweep {sweep_name}", pid),
            f"setsid nohup bash -c {q(queue)} >> {_home(log)} 2>&1 < /dev/null & echo $! > {pid}",
            f'echo "trm: $(hostname): started sweep {shown} ({len(runs)} runs), '
            f'log ~/{common.dq(log)}"',
        ]
    )


def queue_probe_script(cfg: TpuConfig, sweep_name: str, marker: str) -> str:
    """What ``watch`` asks every worker: is trm set up here, and is the sweep's queue alive?

    Each worker prints one line: ``trm-watch: HOST: setup missing`` (no ``~/MARKER``, the
    file ``setup`` creates last), ``... queue running`` or ``... queue stopped``.
    """
    pid = _home(_pid_path(sweep_log_path(cfg, sweep_name)))
    mark = _home(common.check_relpath(marker, "setup marker"))
    return "; ".join(
        [
            _alive_function(cfg),
            f'if [ ! -f {mark} ]; then echo "trm-watch: $(hostname): setup missing"; '
            f'elif trm_alive {pid}; then echo "trm-watch: $(hostname): queue running"; '
            f'else echo "trm-watch: $(hostname): queue stopped"; fi',
        ]
    )


def assign_runs(runs: Sequence[Run], vms: Sequence[str]) -> dict[str, list[Run]]:
    """Round-robin: run i goes to ``vms[i % len(vms)]``."""
    return {vm: list(runs[i :: len(vms)]) for i, vm in enumerate(vms)}


def sweep_commands(cfg: TpuConfig, sweep_name: str, runs: Sequence[Run],
                   vms: Sequence[str]) -> list[list[str]]:
    commands = []
    for vm, vm_runs in assign_runs(runs, vms).items():
        if vm_runs:
            vm_cfg = dataclasses.replace(cfg, name=vm)
            commands.append(ssh_command(vm_cfg, sweep_script(vm_cfg, sweep_name, vm_runs)))
    return commands


def processes_script(cfg: TpuConfig) -> str:
    """Lists live trm jobs on a worker, with the last line of each job's log."""
    return "; ".join(
        [
            _alive_function(cfg),
            f"for f in $(find {_home(cfg.log_dir)} -name '*.pid' 2>/dev/null); do "
            f'if trm_alive "$f"; then echo "running: ${{f%.pid}} (pid $(cat "$f"))"; '
            f'tail -n 1 "${{f%.pid}}.log" 2>/dev/null; fi; done',
            "true",
        ]
    )


def status_commands(cfg: TpuConfig, vms: Sequence[str],
                    run_names: Sequence[str] | None) -> list[list[str]]:
    """VM states and live jobs (worker 0), then the ``run.json`` reads.

    With ``run_names`` None every run under ``gs://BUCKET/ROOT`` is listed first.
    """
    commands = []
    for vm in vms:
        vm_cfg = dataclasses.replace(cfg, name=vm)
        commands.append(gcloud_tpu(vm_cfg, "describe", "--format=value(state)"))
        commands.append(ssh_command(vm_cfg, processes_script(vm_cfg), worker="0"))
    if run_names is None:
        commands.append(list_runs_command(cfg))
        commands.append(common.comment("then, for each run.json listed: gcloud storage cat URL"))
    else:
        commands += [run_json_command(cfg, name) for name in run_names]
    return commands


def list_runs_command(cfg: TpuConfig) -> list[str]:
    return ["gcloud", "storage", "ls", f"{cfg.runs_url}/**/{common.RUN_JSON}"]


def run_json_command(cfg: TpuConfig, run_name: str) -> list[str]:
    return ["gcloud", "storage", "cat", f"{cfg.workdir(run_name)}/{common.RUN_JSON}"]


def logs_commands(cfg: TpuConfig, log: str, lines: int = 100, follow: bool = False,
                  worker: str = "0") -> list[list[str]]:
    tail = ["tail", "-n", str(int(lines))] + (["-F"] if follow else []) + [log]
    return [ssh_command(cfg, shlex.join(tail), worker=worker)]


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
# Command line: parse flags, build commands, print or run them.


def _config_flags() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("settings (flags > --config > TRM_TPU_* env > defaults)")
    g.add_argument("--config", help="JSON (or TOML) file of settings")
    g.add_argument("--name", "--vm", dest="name", help="TPU VM name")
    g.add_argument("--project", help="GCP project (default: gcloud config)")
    g.add_argument("--zone", help="zone (default: gcloud config)")
    g.add_argument("--accelerator_type", "--accelerator-type", dest="accelerator_type",
                   help="default v4-32")
    g.add_argument("--runtime_version", "--version", dest="runtime_version",
                   help="default tpu-ubuntu2204-base")
    g.add_argument("--bucket", help="GCS bucket for runs")
    g.add_argument("--root", help="prefix in the bucket (default trm)")
    g.add_argument("--spot", action=argparse.BooleanOptionalAction, default=None,
                   help="Spot VM (preemptible at any time)")
    g.add_argument("--preemptible", action=argparse.BooleanOptionalAction, default=None,
                   help="legacy preemptible VM")
    g.add_argument("--python", help="Python on the VM (default python3)")
    g.add_argument("--train_module", help="trainer module (default trm.train)")
    g.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra trainer environment (repeatable)")
    p.add_argument("--dry_run", "--dry-run", dest="dry_run", action="store_true",
                   help="print the commands instead of running them")
    return p


def _runs_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sweep", help="a sweep's runs (launchers.named_sweeps)")
    p.add_argument("--seeds", help="comma-separated seeds for --sweep")
    p.add_argument("--run", action="append", default=[], help="a run name (repeatable)")


def _watch_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("watch (settings: also --config keys / TRM_TPU_* variables)")
    g.add_argument("--provisioning", help="auto (default), queued or create")
    g.add_argument("--poll_s", "--poll", dest="watch_poll_s",
                   help="seconds between two looks (default 60)")
    g.add_argument("--retries", dest="watch_retries",
                   help="failed attempts in a row per VM before giving up (default 5)")
    g.add_argument("--backoff_s", dest="watch_backoff_s",
                   help="wait after a failure, doubled each time (default 60)")
    g.add_argument("--backoff_max_s", dest="watch_backoff_max_s", help="default 1800")
    g.add_argument("--log", dest="watch_log", help="log file (default trm-watch.log)")
    g.add_argument("--price_per_chip_hour", help="for the cost line of the summary")
    g.add_argument("--keep_vms", action="store_true",
                   help="leave the VMs when their runs are done (default: delete them)")


def _cost_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cost (settings: also --config keys / TRM_TPU_* variables)")
    g.add_argument("--price_per_chip_hour", help="price of one chip-hour (default: none)")
    g.add_argument("--mfu", help="assumed model FLOPs utilisation (default 0.3)")
    g.add_argument("--peak_flops_per_chip",
                   help="peak bf16 FLOP/s per chip (default: table by accelerator type)")
    g.add_argument("--examples_per_s", type=float,
                   help="measured training examples per second of the whole slice "
                        "(perf/examples_per_s); replaces the FLOPs-based throughput")
    g.add_argument("--examples_per_epoch", type=float,
                   help="when the dataset is not built and the run uses EPOCHS")
    g.add_argument("--eval_examples", type=float,
                   help="test-set size, to count the evaluations (default: from the dataset)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m launchers.tpu",
        description="Create, set up and drive Cloud TPU VMs for trm.",
    )
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    parent = [_config_flags()]

    def verb(name, help_text):
        return sub.add_parser(name, parents=parent, help=help_text, description=help_text)

    vms_help = "comma-separated VM names (default: --name)"
    p = verb("create", "create the TPU VM(s)")
    p.add_argument("--vms", help=vms_help)
    p = verb("setup", "install trm[tpu] on every worker")
    p.add_argument("--vms", help=vms_help)
    p.add_argument("--source", help="local dir (git archive HEAD), sdist/wheel, or git URL")
    p.add_argument("--find_links", help="extra pip -f index (default: libtpu releases)")
    p = verb("launch", "start one run on all workers (re-run to resume)")
    p.add_argument("--gin_file", action="append", required=True, help="gin file (repeatable)")
    p.add_argument("--gin_param", action="append", default=[], help="gin binding (repeatable)")
    p.add_argument("--run_name", help="default: the last gin file's name without .gin")
    p = verb("sweep", "queue a sweep's runs on one or several VMs")
    p.add_argument("--sweep", required=True)
    p.add_argument("--seeds", help="comma-separated seeds (default: the sweep's)")
    p.add_argument("--gin_param", action="append", default=[], help="extra binding for every run")
    p.add_argument("--vms", help=vms_help + "; runs are dealt round-robin")
    p.add_argument("--watch", action="store_true",
                   help="then keep the sweep going until every run is completed (see watch)")
    _watch_flags(p)
    p = verb("watch", "keep a sweep going on preemptible VMs until every run is completed")
    p.add_argument("--sweep", required=True)
    p.add_argument("--seeds", help="comma-separated seeds (default: the sweep's)")
    p.add_argument("--gin_param", action="append", default=[], help="extra binding for every run")
    p.add_argument("--vms", help=vms_help + "; runs are dealt round-robin")
    _watch_flags(p)
    p = verb("cost", "estimated device-hours (and cost) of a sweep or a run")
    p.add_argument("--sweep", help="the sweep's runs")
    p.add_argument("--seeds", help="comma-separated seeds (default: the sweep's)")
    p.add_argument("--gin_file", action="append", default=[],
                   help="one run's gin file(s) instead of --sweep (repeatable)")
    p.add_argument("--gin_param", action="append", default=[], help="extra binding (repeatable)")
    _cost_flags(p)
    p = verb("status", "VM state, running jobs, last logged step of each run")
    p.add_argument("--vms", help=vms_help)
    p.add_argument("--no_vm", action="store_true", help="only read run.json files")
    _runs_flags(p)
    p = verb("logs", "tail a run's (or a sweep queue's) log on a worker")
    p.add_argument("--run", help="run name")
    p.add_argument("--sweep", help="the sweep queue's log instead")
    p.add_argument("--lines", type=int, default=100)
    p.add_argument("--follow", "-f", action="store_true")
    p.add_argument("--worker", default="0")
    p = verb("download", "copy runs from gs:// to a local directory")
    _runs_flags(p)
    p.add_argument("--dest", default="runs", help="local directory (default runs/)")
    p.add_argument("--with_checkpoints", action="store_true",
                   help="also copy checkpoints/ (large)")
    p = verb("delete", "delete the TPU VM(s)")
    p.add_argument("--vms", help=vms_help)
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    return parser


def _config_from_args(args, environ) -> TpuConfig:
    flags = {k: getattr(args, k, None) for k in _FIELDS}
    flags["env"] = tuple(args.env)
    return load_config(flags, args.config, environ)


def _vms(cfg: TpuConfig, args) -> list[str]:
    if getattr(args, "vms", None):
        vms = [v for v in args.vms.split(",") if v]
        for vm in vms:
            check_setting("name", vm, "--vms entry")
        return vms
    return [_require_name(cfg)]


def _selected_runs(args) -> list[str] | None:
    names = list(args.run or [])
    if args.sweep:
        names += [r.name for r in get_sweep(args.sweep).runs(common.parse_seeds(args.seeds))]
    elif args.seeds:
        raise ValueError("--seeds needs --sweep")
    return [check_run_name(n, "--run") for n in names] or None


def sweep_runs(args) -> tuple[str, list[Run]]:
    """The sweep's name and runs of ``--sweep`` / ``--seeds`` / ``--gin_param``."""
    sweep = get_sweep(args.sweep)
    common.check_extra_bindings(args.gin_param, sweep.swept_keys())
    runs = [
        Run(r.name, r.gin_files, r.bindings + list(args.gin_param))
        for r in sweep.runs(common.parse_seeds(args.seeds))
    ]
    return sweep.name, runs


def _launch_run(args) -> Run:
    bindings = list(args.gin_param)
    for b in bindings:
        if "=" not in b:
            raise ValueError(f"--gin_param {b!r} is not KEY=VALUE")
    name, setting = args.run_name, "--run_name"
    if not name:
        if bindings:
            raise ValueError("--gin_param changes the config: name the run with --run_name")
        name = posixpath.basename(args.gin_file[-1]).removesuffix(".gin")
        setting = "run name (from the last --gin_file; pass --run_name)"
    return Run(check_run_name(name, setting), list(args.gin_file), bindings)


def build_commands(args, cfg: TpuConfig) -> list[list[str]]:
    """The commands of a parsed command line (pure: runs nothing)."""
    def per_vm(fn):
        return [c for vm in _vms(cfg, args) for c in fn(dataclasses.replace(cfg, name=vm))]

    if args.verb == "create":
        return per_vm(create_commands)
    if args.verb == "setup":
        return per_vm(setup_commands)
    if args.verb == "delete":
        return per_vm(lambda c: delete_commands(c, args.yes))
    if args.verb == "launch":
        return launch_commands(cfg, _launch_run(args))
    if args.verb in ("sweep", "watch"):
        sweep_name, runs = sweep_runs(args)
        if args.verb == "watch" or args.watch:
            from launchers import watch  # pylint: disable=import-outside-toplevel
            return watch.plan_commands(cfg, sweep_name, runs, _vms(cfg, args))
        return sweep_commands(cfg, sweep_name, runs, _vms(cfg, args))
    if args.verb == "cost":
        return []
    if args.verb == "status":
        vms = [] if args.no_vm or not (args.vms or cfg.name) else _vms(cfg, args)
        return status_commands(cfg, vms, _selected_runs(args))
    if args.verb == "logs":
        if bool(args.run) == bool(args.sweep):
            raise ValueError("logs needs exactly one of --run and --sweep")
        if args.run:
            log = log_path(cfg, check_run_name(args.run, "--run"))
        else:
            log = sweep_log_path(cfg, common.check_name(args.sweep, "--sweep"))
        return logs_commands(cfg, log, args.lines, args.follow, args.worker)
    if args.verb == "download":
        return download_commands(cfg, args.dest, _selected_runs(args), args.with_checkpoints)
    raise ValueError(f"unknown verb {args.verb!r}")


def _print_status(commands: list[list[str]], runner, runs_url: str) -> int:
    """Runs the VM commands (streamed, failures tolerated), then tabulates run.json reads."""
    states: list[common.RunState] = []
    cat_cmds = [c for c in commands if c[:3] == ["gcloud", "storage", "cat"]]
    for argv in commands:
        if argv[0].startswith("#") or argv in cat_cmds:
            continue
        if argv[:3] == ["gcloud", "storage", "ls"]:
            result = common.capture(argv, runner)
            # Only URLs under the root: a listed object name never becomes an option.
            urls = [u.strip() for u in result.stdout.splitlines()
                    if u.strip().startswith(runs_url + "/")
                    and u.strip().endswith("/" + common.RUN_JSON)]
            if result.returncode != 0 and not urls:
                print(f"no runs found: {common.format_command(argv)}", file=sys.stderr)
            cat_cmds += [["gcloud", "storage", "cat", u] for u in sorted(urls)]
            continue
        try:
            common.execute([argv], dry_run=False, runner=runner)
        except common.CommandError as e:
            print(f"warning: {e}", file=sys.stderr)
    for argv in cat_cmds:
        url = argv[-1]
        result = common.capture(argv, runner)
        try:
            data = json.loads(result.stdout) if result.returncode == 0 else None
        except ValueError:
            data = None
        name = url[: -len("/" + common.RUN_JSON)].removeprefix(runs_url + "/")
        states.append(common.RunState.from_json(name, data))
    if states:
        print(common.format_table([s.row() for s in states], ["run", "status", "step"]))
    return 0


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None,
         runner=None) -> int:
    """Entry point; ``runner`` replaces ``subprocess.run`` (tests)."""
    import subprocess

    runner = runner or subprocess.run
    args = build_parser().parse_args(argv)
    try:
        cfg = _config_from_args(args, os.environ if environ is None else environ)
        commands = build_commands(args, cfg)
    except (ValueError, KeyError, OSError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    if args.verb == "cost":
        from launchers import cost  # pylint: disable=import-outside-toplevel
        return cost.main_cost(args, cfg)
    if args.dry_run:
        common.execute(commands, dry_run=True)
        return 0
    if args.verb == "watch" or (args.verb == "sweep" and args.watch):
        from launchers import watch  # pylint: disable=import-outside-toplevel
        sweep_name, runs = sweep_runs(args)
        return watch.Watcher(cfg, sweep_name, runs, _vms(cfg, args), runner=runner,
                             keep_vms=args.keep_vms).run()
    if args.verb == "status":
        return _print_status(commands, runner, cfg.runs_url)
    try:
        common.execute(commands, dry_run=False, runner=runner)
    except common.CommandError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.returncode or 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
