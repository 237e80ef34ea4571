"""Settings of the TPU launchers: :class:`TpuConfig`, where it comes from, how it is checked.

Settings (project, zone, VM name, accelerator type, runtime version, bucket, workdir root,
spot/preemptible, ...) come from, highest priority first: command-line flags, a
``--config=FILE`` (JSON, or TOML on Python >= 3.11, keys = the fields of :class:`TpuConfig`),
``TRM_TPU_<FIELD>`` environment variables (e.g. ``TRM_TPU_BUCKET``), the defaults. An unset
project or zone is left to gcloud's own configuration (``gcloud config set ...``).

Settings with a fixed grammar (VM name, project, zone, accelerator type, runtime version, bucket,
root, python, train module, remote and log dirs, git URL, env names) are checked where they come
from and rejected with one line naming the flag, ``--config`` key or ``TRM_TPU_*`` variable and
the allowed pattern (docs/SETUP_GUIDE.md, "Trust boundaries and quoting").
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import posixpath
from typing import Mapping

from launchers import common

LIBTPU_INDEX = "https://storage.googleapis.com/libtpu-releases/index.html"

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

# A git URL for `setup --source`: a URL (scheme://...) or scp-like git@host:path, with an
# optional @REF; no whitespace, quotes, backslashes or backquotes.
_GIT_URL_PATTERN = (r"(?:git\+)?(?:https?|ssh|git|file)://[A-Za-z0-9._~:/?#\[\]@!$&()*+,;=%-]+"
                    r"|git@[A-Za-z0-9.-]+:[A-Za-z0-9._~/+-]+")
_GIT_REF_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_./+-]*"

# ---------------------------------------------------------------------------------------------
# Accelerator families: what the number in a type counts, the software version each needs, the
# zones that have it, its peak bf16 FLOP/s per chip. Sources: Google's Cloud TPU pages
# (tpu/docs/runtimes, tpu/docs/regions-zones, tpu/docs/v4, v5e, v5p, v6e; 2025). Zones change:
# ``gcloud compute tpus accelerator-types list --zone=ZONE`` is the authority.

BASE_RUNTIME = "tpu-ubuntu2204-base"


@dataclasses.dataclass(frozen=True)
class Family:
    """One TPU generation as its accelerator types spell it (``v5litepod`` in ``v5litepod-8``).

    Attributes:
      generation: the marketing name (v4, v5e, v5p, v6e).
      runtime_version: the TPU VM software version it needs (``--version`` of create).
      zones: zones with this family (Google's regions-and-zones page, North America, Europe).
      count_is_cores: the number in the type counts TensorCores, 2 per chip (v2-v4, v5p);
        otherwise it counts chips (v5e, v6e).
      peak_bf16: peak dense bf16 FLOP/s of one chip (None: not tabulated).
      queued: queued resources serve it (``watch``'s Spot capacity).
    """

    generation: str
    runtime_version: str
    zones: tuple[str, ...]
    count_is_cores: bool
    peak_bf16: float | None
    queued: bool


FAMILIES: dict[str, Family] = {
    "v2": Family("v2", BASE_RUNTIME, ("us-central1-b", "us-central1-c", "europe-west4-a"),
                 True, None, False),
    "v3": Family("v3", BASE_RUNTIME, ("us-central1-a", "us-central1-b", "europe-west4-a"),
                 True, None, False),
    "v4": Family("v4", BASE_RUNTIME, ("us-central2-b",), True, 275e12, True),
    "v5litepod": Family("v5e", "v2-alpha-tpuv5-lite",
                        ("us-central1-a", "us-south1-a", "us-west1-c", "us-west4-a",
                         "europe-west4-b"), False, 197e12, True),
    "v5p": Family("v5p", "v2-alpha-tpuv5", ("us-central1-a", "us-east5-a", "europe-west4-b"),
                  True, 459e12, True),
    "v6e": Family("v6e", "v2-alpha-tpuv6e",
                  ("us-central1-b", "us-east1-d", "us-east5-a", "us-east5-b", "europe-west4-a"),
                  False, 918e12, True),
}
FAMILIES["v5e"] = FAMILIES["v5litepod"]  # the generation's own name, as some types spell it
PEAK_SOURCE = "Google Cloud TPU docs (tpu/docs/v4, v5e, v5p, v6e): peak bf16 per chip"


def family(accelerator_type: str) -> tuple[str, Family]:
    """``v5litepod-8`` -> (``v5litepod``, its :class:`Family`); ValueError for an unknown one."""
    name, _, count = accelerator_type.partition("-")
    if not count.isdigit():
        raise ValueError(f"accelerator type {accelerator_type!r}: expected FAMILY-N, e.g. v4-32")
    if name not in FAMILIES:
        raise ValueError(f"accelerator type {accelerator_type!r}: unknown TPU family {name!r} "
                         f"(known: {', '.join(FAMILIES)}); pass --runtime_version and "
                         "--peak_flops_per_chip for another one")
    return name, FAMILIES[name]


def chips(accelerator_type: str) -> int:
    """Chips of a slice: v4-32 -> 16, v5p-8 -> 4, v5litepod-8 -> 8, v6e-16 -> 16."""
    _, fam = family(accelerator_type)
    count = int(accelerator_type.partition("-")[2])
    return max(count // 2, 1) if fam.count_is_cores else count


@dataclasses.dataclass(frozen=True)
class TpuConfig:
    """Where and how to run on Cloud TPU VMs.

    Attributes:
      name: TPU VM name.
      project: GCP project (None: gcloud's ``core/project``).
      zone: zone, e.g. ``us-central2-b`` for v4 (None: gcloud's ``compute/zone``).
      accelerator_type: slice type; v4-32 = 16 chips on 4 hosts (workers 0-3).
      runtime_version: TPU VM software version (``--version`` of create); None: the one the
        accelerator family needs (:data:`FAMILIES`: tpu-ubuntu2204-base for v2-v4,
        v2-alpha-tpuv5-lite for v5e, v2-alpha-tpuv5 for v5p, v2-alpha-tpuv6e for v6e).
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
      watch_timeout_s: the longest any one gcloud or ssh call of ``watch`` may take (killed
        after that; a gcloud API call that times out counts as a transient error).
      watch_setup_timeout_s: the same for ``setup`` (pip installs torch_xla on every worker).
      watch_hang_s: a run whose run.json shows no progress (``last_step``, ``active_s``) for
        this long while its processes are alive on every worker is hung: stopped and relaunched.
      watch_grace_s: seconds between SIGTERM and SIGKILL when ``watch`` stops a run.
      price_per_chip_hour: price of one chip-hour (any currency) for ``cost`` and ``watch``.
      mfu: assumed model FLOPs utilisation for ``cost`` (0 < mfu <= 1).
      peak_flops_per_chip: peak bf16 FLOP/s of one chip; default from the table in
        launchers/cost.py by accelerator type.
    """

    name: str | None = None
    project: str | None = None
    zone: str | None = None
    accelerator_type: str = "v4-32"
    runtime_version: str | None = None
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
    watch_timeout_s: float = 600.0
    watch_setup_timeout_s: float = 3600.0
    watch_hang_s: float = 3600.0
    watch_grace_s: float = 30.0
    price_per_chip_hour: float | None = None
    mfu: float = 0.3
    peak_flops_per_chip: float | None = None

    def __post_init__(self):
        if self.spot and self.preemptible:
            raise ValueError("choose one of spot and preemptible")
        object.__setattr__(self, "env", tuple(self.env))
        for key in FIELDS:
            check_setting(key, getattr(self, key), key)
        self._check_runtime_version()

    def _check_runtime_version(self) -> None:
        """A version of the table that belongs to another family is refused (the API would)."""
        owners = {f.runtime_version: f.generation for f in FAMILIES.values()}
        if self.runtime_version not in owners:
            return  # unset, or a version this table does not know: gcloud decides
        try:
            name, fam = family(self.accelerator_type)
        except ValueError:
            return
        if fam.runtime_version != self.runtime_version:
            raise ValueError(f"runtime_version {self.runtime_version!r} is for TPU "
                             f"{owners[self.runtime_version]}; accelerator_type "
                             f"{self.accelerator_type!r} ({name}) needs {fam.runtime_version!r}"
                             " (leave runtime_version unset to derive it)")

    def runtime(self) -> str:
        """The software version to create the VM with: the setting, else the family's."""
        return self.runtime_version or family(self.accelerator_type)[1].runtime_version

    def zone_warning(self) -> str | None:
        """One line when ``zone`` is not among the family's documented zones (else None)."""
        try:
            name, fam = family(self.accelerator_type)
        except ValueError:
            return None
        if not self.zone or self.zone in fam.zones:
            return None
        return (f"warning: zone {self.zone} is not among the documented zones of {name} "
                f"({', '.join(fam.zones)}); gcloud refuses a zone without such TPUs "
                f"(gcloud compute tpus accelerator-types list --zone={self.zone})")

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


FIELDS = {f.name: f for f in dataclasses.fields(TpuConfig)}
_BOOL_FIELDS = {"spot", "preemptible"}
# Numeric settings: (type, smallest allowed value, whether the smallest is excluded, largest).
_NUMBER_FIELDS: dict[str, tuple[type, float, bool, float | None]] = {
    "watch_poll_s": (float, 0.0, True, None),
    "watch_retries": (int, 0, False, None),
    "watch_backoff_s": (float, 0.0, False, None),
    "watch_backoff_max_s": (float, 0.0, False, None),
    "watch_timeout_s": (float, 0.0, True, None),
    "watch_setup_timeout_s": (float, 0.0, True, None),
    "watch_hang_s": (float, 0.0, True, None),
    "watch_grace_s": (float, 0.0, False, None),
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
    if value == "" and FIELDS[key].default is None:
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
        if text.lower() in ("", "none", "null") and FIELDS[key].default is None:
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
    kind = source_kind(source)
    if kind == "git":
        url, ref = git_url_and_ref(source)
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
    if key not in FIELDS:
        raise _unknown(key, origin, FIELDS)
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
    known = [_ENV_PREFIX + key.upper() for key in FIELDS]
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


def require_name(cfg: TpuConfig) -> str:
    if not cfg.name:
        raise ValueError("no TPU VM name: pass --name, set it in --config or TRM_TPU_NAME")
    return cfg.name


def source_kind(source: str) -> str:
    if "://" in source or source.startswith("git@"):
        return "git"
    if source.endswith(".whl"):
        return "wheel"
    if source.endswith((".tar.gz", ".tgz")):
        return "sdist"
    return "dir"


def git_url_and_ref(source: str) -> tuple[str, str | None]:
    """``git+https://host/org/trm.git@v1`` -> (``https://host/org/trm.git``, ``v1``).

    An ``@`` before the path (``https://user@host/...``, ``git@host:org/trm.git``) is a user.
    """
    url = source.removeprefix("git+")
    path_start = url.find("/", url.find("://") + 3) if "://" in url else url.find(":")
    at = url.rfind("@")
    if 0 <= path_start < at:
        return url[:at], url[at + 1 :]
    return url, None

