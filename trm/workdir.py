"""One run's directory on any fsspec URL: small files, run.json, the lease lock, retries.

A workdir is a local path, ``gs://bucket/prefix`` or any other fsspec URL (``memory://`` in
tests). Layout (docs/DESIGN.md, docs/RUN_STATE.md)::

    run.json  command.json  config.gin  operative_config.gin  LOCK
    checkpoints/step_XXXXXXXXX/{state.pt,COMMIT}   tb/   eval/step_XXXXXXXXX/

Writes are whole-file and atomic: locally through a temporary file and ``os.replace``; on GCS
one object upload is atomic already (readers see the old object or the new one, never a
part), so no renames are needed there (renames on GCS are copies, and slow on the emulator).

The lease lock keeps two runs from writing the same workdir::

    wd = Workdir("gs://bucket/runs/e1")
    wd.acquire_lock({"command": " ".join(sys.argv)})   # WorkdirLockedError if another run owns it
    ...  wd.heartbeat()  ...    # cheap; raises LockLostError if another process took the lock
    wd.release_lock()           # (a background thread refreshes the lease every 30 s)
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import logging
import os
import posixpath
import random
import shutil
import socket
import tempfile
import threading
import time
import uuid
from typing import Any, Callable, Dict, Iterable, List, Optional, TypeVar

# gcsfs >= 2026 asks a gRPC API for the bucket type on every open unless this is off
# (against the GCS emulator each open then waits ~60 s). Must be set before gcsfs is imported.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

log = logging.getLogger(__name__)

T = TypeVar("T")

RUN_STATUSES = ("running", "completed", "failed", "preempted")
LOCK_NAME = "LOCK"


class WorkdirLockedError(RuntimeError):
    """Another live run owns the workdir's lease lock."""


class LockLostError(RuntimeError):
    """This process's lease lock was taken over (or removed) by someone else."""


class ConfigMismatchError(ValueError):
    """A saved config file differs from the one given (see :meth:`Workdir.ensure_config`)."""


class ShortWriteError(OSError):
    """The stored object's size differs from what was written (retried as transient)."""


def utc_now_iso() -> str:
    """The current time as ISO 8601 UTC with a ``Z`` suffix, e.g. ``2026-11-27T14:52:16Z``."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# -- retries -------------------------------------------------------------------------------
_TRANSIENT_ERRNOS = {errno.EIO, errno.EAGAIN, errno.EINTR, errno.ETIMEDOUT, errno.ECONNRESET,
                     errno.ECONNREFUSED, errno.ECONNABORTED, errno.EPIPE, errno.EBUSY,
                     errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.ESTALE}
_PERMANENT = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError,
              NotADirectoryError)
# Matched by class name anywhere in the MRO, so that no storage client must be imported:
# aiohttp (ClientError and subclasses), requests, gcsfs (ChecksumError), google.api_core.
_TRANSIENT_NAMES = {"ClientError", "ClientConnectionError", "ClientPayloadError",
                    "ServerDisconnectedError", "ChunkedEncodingError", "ConnectTimeout",
                    "ReadTimeout", "Timeout", "ProxyError", "ChecksumError",
                    "ServiceUnavailable", "InternalServerError", "TooManyRequests",
                    "DeadlineExceeded", "GatewayTimeout", "BadGateway", "RetryError"}
_TRANSIENT_HTTP = {408, 429, 500, 502, 503, 504}


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` looks like a transient storage error worth retrying.

    Transient: connection/timeouts, HTTP 408/429/5xx from any client (gcsfs ``HttpError``,
    ``google.api_core``), aiohttp/requests transport errors, checksum mismatches, a short
    write, and ``OSError`` with an errno such as EIO/ECONNRESET/ETIMEDOUT. Not transient:
    missing files, permission errors, bad requests, programming errors.
    """
    if isinstance(exc, ShortWriteError):
        return True
    if isinstance(exc, _PERMANENT):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    code = getattr(exc, "code", None)
    if type(exc).__name__ == "HttpError" or "api_core" in type(exc).__module__:
        try:
            return int(code) in _TRANSIENT_HTTP
        except (TypeError, ValueError):
            return False
    if any(cls.__name__ in _TRANSIENT_NAMES for cls in type(exc).__mro__):
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    cause = exc.__cause__
    return cause is not None and cause is not exc and is_transient(cause)


def retry(fn: Callable[[], T], *, what: str, max_retries: int = 5, base_delay_s: float = 1.0,
          max_delay_s: float = 30.0,
          transient: Callable[[BaseException], bool] = is_transient) -> T:
    """Calls ``fn()``; on a transient error waits (exponential backoff, jitter) and retries.

    Args:
        fn: the operation; it must be safe to repeat (whole-file writes, reads, deletes).
        what: a description for the log ("writing gs://b/run/checkpoints/.../state.pt").
        max_retries: retries after the first attempt; the last error is re-raised.
        base_delay_s, max_delay_s: the n-th retry waits ``min(max, base * 2**n) * U(0.5, 1)``.
        transient: the predicate deciding what is retried (default :func:`is_transient`).
    """
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 (classified below)
            if attempt >= max_retries or not transient(exc):
                raise
            delay = min(max_delay_s, base_delay_s * 2 ** attempt) * random.uniform(0.5, 1.0)
            attempt += 1
            log.warning("Transient storage error while %s (%s: %s); retry %d/%d in %.1f s",
                        what, type(exc).__name__, exc, attempt, max_retries, delay)
            time.sleep(delay)


# -- process identity (for stale-lock detection) --------------------------------------------
def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _proc_start(pid: int) -> Optional[str]:
    """The process start time in clock ticks since boot (Linux), to tell reused pids apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- the workdir ---------------------------------------------------------------------------
class Workdir:
    """One run's directory; every access goes through fsspec (local files directly).

    Args:
        path: a local path, ``file://...``, ``gs://bucket/prefix``, ``memory://name``, or any
            fsspec URL.
        storage_options: passed to the fsspec filesystem (e.g. ``{"token": "anon",
            "endpoint_url": ...}`` for gcsfs). With ``STORAGE_EMULATOR_HOST`` set (a local
            GCS emulator), ``gs://`` defaults to anonymous credentials.
        max_retries: retries of transient storage errors for each operation.
        retry_base_delay_s: the first retry's backoff (doubling after that).
    """

    def __init__(self, path: "str | os.PathLike", storage_options: Optional[Dict] = None, *,
                 max_retries: int = 5, retry_base_delay_s: float = 1.0) -> None:
        path = os.fspath(path)
        if path.startswith("file://"):
            path = path[len("file://"):]
        self.is_local = "://" not in path
        self.max_retries = max_retries
        self.retry_base_delay_s = retry_base_delay_s
        if self.is_local:
            self.path = os.path.abspath(path)
            self.protocol = "file"
            self.fs = None
            self._root = self.path
        else:
            import fsspec  # pylint: disable=import-outside-toplevel

            self.path = path.rstrip("/")
            self.protocol = path.split("://", 1)[0]
            options = dict(storage_options or {})
            if self.protocol in ("gs", "gcs") and os.environ.get("STORAGE_EMULATOR_HOST"):
                options.setdefault("token", "anon")
            self.fs, self._root = fsspec.core.url_to_fs(self.path, **options)
            self._root = self._root.rstrip("/")
        self._lock: Optional[Dict[str, Any]] = None
        self._lock_last_beat = 0.0
        self._heartbeat_every_s = 30.0
        self._beat_thread: Optional[threading.Thread] = None
        self._beat_stop = threading.Event()
        self._beat_lock = threading.Lock()
        self._lock_error: Optional[LockLostError] = None
        self._mirrors: Dict[str, str] = {}
        self._mirror_synced: Dict[str, Dict[str, tuple]] = {}

    def __repr__(self) -> str:
        return f"Workdir({self.path!r})"

    # -- paths ------------------------------------------------------------------------------
    def url(self, name: str = "") -> str:
        """The full path or URL of ``name`` (relative, ``/``-separated) inside the workdir."""
        name = name.strip("/")
        if not name:
            return self.path
        if self.is_local:
            return os.path.join(self.path, *name.split("/"))
        return f"{self.path}/{name}"

    def _fs_path(self, name: str) -> str:
        name = name.strip("/")
        if self.is_local:
            return self.url(name)
        return f"{self._root}/{name}" if name else self._root

    def _retry(self, fn: Callable[[], T], what: str) -> T:
        return retry(fn, what=what, max_retries=self.max_retries,
                     base_delay_s=self.retry_base_delay_s)

    def _invalidate(self, name: str = "") -> None:
        if self.fs is not None:
            self.fs.invalidate_cache(self._fs_path(name))
            self.fs.invalidate_cache()

    # -- bytes ------------------------------------------------------------------------------
    def write_bytes(self, name: str, data: "bytes | bytearray | memoryview") -> None:
        """Writes ``name`` atomically as a whole (retrying transient errors).

        Local: a temporary file in the same folder, fsync, ``os.replace``. Remote: one object
        upload, then its stored size is checked (a mismatch is retried).
        """
        self._retry(lambda: self._write_once(name, data), f"writing {self.url(name)}")

    def _write_once(self, name: str, data) -> None:
        if self.is_local:
            path = self.url(name)
            folder = os.path.dirname(path)
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            return
        path = self._fs_path(name)
        # fs.open(...,"wb") rather than pipe_file: gcsfs's pipe_file drops a trailing b"\r" on
        # gcp-storage-emulator (its multipart parser), the file API does not.
        with self.fs.open(path, "wb") as f:
            f.write(data)
        if self.protocol in ("gs", "gcs"):
            self._invalidate(name)
            size = self.fs.info(path)["size"]
            if size != len(data):
                raise ShortWriteError(f"{self.url(name)}: stored {size} bytes, wrote {len(data)}")

    def read_bytes(self, name: str) -> bytes:
        """Reads the whole of ``name`` (FileNotFoundError if missing)."""
        def read() -> bytes:
            if self.is_local:
                with open(self.url(name), "rb") as f:
                    return f.read()
            self._invalidate(name)
            return self.fs.cat_file(self._fs_path(name))
        return self._retry(read, f"reading {self.url(name)}")

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode("utf-8"))

    def read_text(self, name: str) -> str:
        return self.read_bytes(name).decode("utf-8")

    def write_json(self, name: str, obj: Any) -> None:
        self.write_text(name, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")

    def read_json(self, name: str, default: Any = FileNotFoundError) -> Any:
        """Parses ``name`` as JSON; returns ``default`` if it is missing (if one is given)."""
        try:
            return json.loads(self.read_text(name))
        except FileNotFoundError:
            if default is FileNotFoundError:
                raise
            return default

    # -- files and folders -----------------------------------------------------------------
    def exists(self, name: str = "") -> bool:
        if self.is_local:
            return os.path.exists(self.url(name))
        self._invalidate(name)
        return self._retry(lambda: self.fs.exists(self._fs_path(name)),
                           f"checking {self.url(name)}")

    def size(self, name: str) -> int:
        if self.is_local:
            return os.path.getsize(self.url(name))
        self._invalidate(name)
        return int(self._retry(lambda: self.fs.info(self._fs_path(name))["size"],
                               f"stat {self.url(name)}"))

    def listdir(self, name: str = "") -> List[str]:
        """Names (not paths) of the entries in folder ``name``; [] if it does not exist."""
        if self.is_local:
            try:
                return sorted(os.listdir(self.url(name)))
            except FileNotFoundError:
                return []
        path = self._fs_path(name)
        self._invalidate(name)

        def ls() -> List[str]:
            try:
                entries = self.fs.ls(path, detail=False)
            except FileNotFoundError:
                return []
            return sorted({posixpath.basename(e.rstrip("/")) for e in entries} - {""})
        return self._retry(ls, f"listing {self.url(name)}")

    def remove(self, name: str, missing_ok: bool = True) -> None:
        """Removes file ``name``."""
        def rm() -> None:
            try:
                if self.is_local:
                    os.unlink(self.url(name))
                else:
                    self.fs.rm_file(self._fs_path(name))
                    self._invalidate(name)
            except FileNotFoundError:
                if not missing_ok:
                    raise
        self._retry(rm, f"removing {self.url(name)}")

    def remove_tree(self, name: str) -> None:
        """Removes folder ``name`` and everything under it (no error if missing)."""
        if self.is_local:
            shutil.rmtree(self.url(name), ignore_errors=True)
            return
        path = self._fs_path(name)

        def rm() -> None:
            self._invalidate(name)
            try:
                files = self.fs.find(path)
            except FileNotFoundError:
                files = []
            for f in files:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm_file(f)
            if self.protocol not in ("gs", "gcs"):
                with contextlib.suppress(FileNotFoundError, OSError):
                    self.fs.rm(path, recursive=True)
            self._invalidate(name)
        self._retry(rm, f"removing {self.url(name)}")

    def upload(self, local_path: str, name: str) -> None:
        """Copies local file ``local_path`` to ``name`` in the workdir (whole-file, atomic)."""
        with open(local_path, "rb") as f:
            data = f.read()
        self.write_bytes(name, data)

    # -- run.json and configs ------------------------------------------------------------------
    def read_run_json(self) -> Dict[str, Any]:
        """The run metadata (``{}`` if there is none yet)."""
        return self.read_json("run.json", default={})

    def update_run_json(self, **fields: Any) -> Dict[str, Any]:
        """Merges ``fields`` into ``run.json`` (written atomically) and returns the result.

        Common fields: ``status`` (one of ``running``, ``completed``, ``failed``,
        ``preempted``), ``last_step``, ``total_steps``, ``num_params``, ``flops_per_example``,
        ``start_time``/``end_time`` (ISO 8601 UTC, see :func:`utc_now_iso`), ``trm_version``,
        ``git_commit``, ``device``, ``world_size``, ``command``. A field set to None is kept
        as null.
        """
        status = fields.get("status")
        if status is not None and status not in RUN_STATUSES:
            raise ValueError(f"run.json status must be one of {RUN_STATUSES}, got {status!r}")
        data = self.read_run_json()
        data.update(fields)
        self.write_json("run.json", data)
        return data

    def ensure_config(self, name: str, text: str, allow_change: bool = False) -> str:
        """Writes config file ``name`` once; on later starts checks it is unchanged.

        Returns ``"written"`` (it did not exist), ``"same"``, or ``"changed"`` (it differed
        and ``allow_change`` was set: the old text is kept as ``<name>.prev-<UTC time>`` and
        the new one written). Raises :class:`ConfigMismatchError` with a diff otherwise.
        """
        try:
            old = self.read_text(name)
        except FileNotFoundError:
            self.write_text(name, text)
            return "written"
        if old == text:
            return "same"
        import difflib  # pylint: disable=import-outside-toplevel

        diff = "".join(list(difflib.unified_diff(
            old.splitlines(True), text.splitlines(True), f"saved {name}", f"new {name}"))[:60])
        if not allow_change:
            raise ConfigMismatchError(
                f"{self.url(name)} differs from this run's config; resuming with a different "
                f"config needs an explicit allow (e.g. --allow_config_change). Diff:\n{diff}")
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.write_text(f"{name}.prev-{stamp}", old)
        self.write_text(name, text)
        log.warning("%s changed on resume (allowed); previous copy kept as %s.prev-%s:\n%s",
                    self.url(name), name, stamp, diff)
        return "changed"

    # -- lease lock ---------------------------------------------------------------------------
    def acquire_lock(self, owner_info: Optional[Dict[str, Any]] = None, *,
                     stale_after_s: float = 180.0, heartbeat_every_s: float = 30.0,
                     background: bool = True, force: bool = False) -> Dict[str, Any]:
        """Takes the workdir's lease lock (file ``LOCK``), or raises WorkdirLockedError.

        The lock records host, pid, start time, a heartbeat time and ``owner_info``. With
        ``background`` (the default) a daemon thread refreshes the heartbeat every
        ``heartbeat_every_s``, so the lease stays fresh through long evals and compilations
        and expires only when the process is gone; without it, call :meth:`heartbeat`.

        An existing lock is *stale* (taken over, with a warning) when its heartbeat is older
        than its ``stale_after_s``, or it is on this host and its process no longer exists.
        ``force=True`` takes over any lock (for an operator who knows the owner is dead).

        Creation is exclusive where the storage allows it (local: a hard link; GCS: an upload
        with the ``ifGenerationMatch=0`` precondition, which real GCS enforces); the lock is
        then read back to confirm ownership. A backend that ignores preconditions (the GCS
        emulator) leaves a race of a few milliseconds between two runs starting at the same
        instant; the loser's next heartbeat finds the lock taken and raises LockLostError.

        Returns the lock record.
        """
        if self._lock is not None:
            return self._lock
        now = time.time()
        record = {
            "owner_id": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
            "proc_start": _proc_start(os.getpid()), "boot_id": _boot_id(),
            "start_time": utc_now_iso(), "heartbeat": now, "heartbeat_time": utc_now_iso(),
            "stale_after_s": stale_after_s, "info": dict(owner_info or {}),
        }
        payload = json.dumps(record, indent=2, sort_keys=True, default=str).encode()
        for _ in range(3):
            if self._create_exclusive(LOCK_NAME, payload):
                break
            current = self._read_lock()
            if current is None:
                continue  # released in between: try again
            reason = "forced" if force else self._stale_reason(current, now)
            if reason is None:
                raise WorkdirLockedError(self._locked_message(current, now))
            log.warning("Taking over the lock of %s held by %s (%s)", self.path,
                        self._describe_owner(current, now), reason)
            # Delete only the lock judged stale (re-read right before), then create anew.
            again = self._read_lock()
            if again is not None and again.get("owner_id") == current.get("owner_id"):
                self.remove(LOCK_NAME)
        else:
            raise WorkdirLockedError(f"Could not acquire the lock of {self.path} (it kept "
                                     "changing hands); is another run starting there?")
        if self.protocol in ("gs", "gcs"):
            time.sleep(0.2)  # let a racing writer's upload land before checking ownership
        current = self._read_lock()
        if current is None or current.get("owner_id") != record["owner_id"]:
            raise WorkdirLockedError(self._locked_message(current or {}, time.time(),
                                                          lost_race=True))
        self._lock = record
        self._lock_last_beat = now
        self._heartbeat_every_s = heartbeat_every_s
        self._lock_error = None
        if background:
            self._beat_stop = threading.Event()
            self._beat_thread = threading.Thread(target=self._beat_loop, daemon=True,
                                                 name="trm-lock-heartbeat")
            self._beat_thread.start()
        return record

    def heartbeat(self, force: bool = False) -> None:
        """Refreshes the lock's heartbeat; raises LockLostError if the lock was taken.

        Cheap to call every step: with the background thread it only reports what the thread
        found; without it, it rewrites LOCK at most every ``heartbeat_every_s`` (or now, with
        ``force``), after checking that the lock is still ours.
        """
        if self._lock_error is not None:
            raise self._lock_error
        if self._lock is None:
            raise RuntimeError(f"heartbeat() without holding the lock of {self.path}")
        if self._beat_thread is not None and not force:
            return
        if not force and time.time() - self._lock_last_beat < self._heartbeat_every_s:
            return
        with self._beat_lock:
            self._beat()

    def _beat(self) -> None:
        now = time.time()
        current = self._read_lock()
        if current is None or current.get("owner_id") != self._lock["owner_id"]:
            owner = self._describe_owner(current, now) if current else "nobody (LOCK removed)"
            # The error first: a reader seeing the lock gone must also see why.
            self._lock_error = LockLostError(
                f"The lock of {self.path} is no longer ours; it is held by {owner}. Stop "
                "writing to this workdir.")
            self._lock = None
            raise self._lock_error
        record = dict(self._lock, heartbeat=now, heartbeat_time=utc_now_iso())
        self.write_json(LOCK_NAME, record)
        self._lock = record
        self._lock_last_beat = now

    def _beat_loop(self) -> None:
        stop = self._beat_stop
        while not stop.wait(self._heartbeat_every_s):
            with self._beat_lock:
                if stop.is_set() or self._lock is None:
                    return
                try:
                    self._beat()
                except LockLostError as exc:
                    log.error("%s", exc)
                    return
                except Exception as exc:  # noqa: BLE001 (storage hiccup: try next time)
                    log.warning("Lock heartbeat for %s failed: %s: %s", self.path,
                                type(exc).__name__, exc)

    def release_lock(self) -> None:
        """Stops the heartbeat; removes LOCK if this process still owns it (never raises
        LockLostError)."""
        if self._beat_thread is not None:
            self._beat_stop.set()
            with self._beat_lock:
                pass
            self._beat_thread.join(timeout=60)
            self._beat_thread = None
        if self._lock is None:
            return
        try:
            current = self._read_lock()
            if current is not None and current.get("owner_id") == self._lock["owner_id"]:
                self.remove(LOCK_NAME)
            else:
                log.warning("Not removing the lock of %s: it is no longer ours", self.path)
        finally:
            self._lock = None

    @property
    def holds_lock(self) -> bool:
        return self._lock is not None

    def _read_lock(self) -> Optional[Dict[str, Any]]:
        try:
            return json.loads(self.read_text(LOCK_NAME))
        except FileNotFoundError:
            return None
        except ValueError:
            # Unreadable (our writes are atomic, so not ours): stale, an owner without heartbeat.
            return {"owner_id": "unparseable", "host": "?", "pid": -1, "heartbeat": 0.0}

    def _create_exclusive(self, name: str, data: bytes) -> bool:
        """Creates ``name`` with ``data`` unless it exists; True if this call created it."""
        if self.is_local:
            path = self.url(name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=f".{name}.tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.link(tmp, path)  # atomic, fails if path exists
                return True
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
        if self.exists(name):
            return False
        path = self._fs_path(name)

        def create() -> bool:
            try:
                with self.fs.open(path, "xb") as f:  # gcsfs: ifGenerationMatch=0
                    f.write(data)
            except FileExistsError:
                return False
            except (ValueError, NotImplementedError):  # backend without exclusive mode
                if self.fs.exists(path):
                    return False
                with self.fs.open(path, "wb") as f:
                    f.write(data)
            self._invalidate(name)
            return True
        return self._retry(create, f"creating {self.url(name)}")

    def _stale_reason(self, lock: Dict[str, Any], now: float) -> Optional[str]:
        age = now - float(lock.get("heartbeat") or 0.0)
        limit = float(lock.get("stale_after_s") or 180.0)
        if age > limit:
            return f"stale: last heartbeat {age:.0f} s ago (> {limit:.0f} s)"
        if lock.get("host") == socket.gethostname() and isinstance(lock.get("pid"), int):
            pid = lock["pid"]
            if lock.get("boot_id") and lock.get("boot_id") != _boot_id():
                return "stale: its host has rebooted since"
            if not _pid_alive(pid):
                return f"stale: process {pid} on this host no longer exists"
            start = lock.get("proc_start")
            if start and _proc_start(pid) not in (None, start):
                return f"stale: pid {pid} now belongs to a different process"
        return None

    @staticmethod
    def _describe_owner(lock: Dict[str, Any], now: float) -> str:
        age = now - float(lock.get("heartbeat") or 0.0)
        text = (f"host {lock.get('host')!r}, pid {lock.get('pid')}, started "
                f"{lock.get('start_time')}, last heartbeat {age:.0f} s ago")
        if lock.get("info"):
            text += f", {json.dumps(lock['info'], default=str)[:300]}"
        return text

    def _locked_message(self, lock: Dict[str, Any], now: float, lost_race: bool = False) -> str:
        what = ("another run took the lock at the same moment" if lost_race
                else "another run holds its lock")
        limit = float(lock.get("stale_after_s") or 180.0)
        return (f"Workdir {self.path} is in use: {what} ({self._describe_owner(lock, now)}). "
                f"Two runs must not write one workdir. If that run is dead, its lease expires "
                f"{limit:.0f} s after its last heartbeat (at once on the same host when its "
                f"process is gone); if you are sure it is dead, delete {self.url(LOCK_NAME)} "
                f"(or take over with acquire_lock(force=True)).")

    # -- local mirrors (TensorBoard) -----------------------------------------------------
    def local_mirror(self, subdir: str) -> str:
        """A local folder for files that must be written locally, synced with :meth:`sync_mirror`.

        For a local workdir this is ``WORKDIR/subdir`` itself (nothing to sync). For a remote
        one it is a new temporary folder for this process, so a resumed run never overwrites
        the previous process's files.
        """
        if subdir in self._mirrors:
            return self._mirrors[subdir]
        if self.is_local:
            local = self.url(subdir)
            os.makedirs(local, exist_ok=True)
        else:
            base = tempfile.mkdtemp(prefix="trm-mirror-")
            local = os.path.join(base, *subdir.strip("/").split("/"))
            os.makedirs(local, exist_ok=True)
        self._mirrors[subdir] = local
        self._mirror_synced[subdir] = {}
        return local

    def sync_mirror(self, subdir: str) -> List[str]:
        """Uploads the mirror's new or changed files (whole files) to ``WORKDIR/subdir/``.

        Returns the relative names uploaded. A no-op for a local workdir.
        """
        if self.is_local or subdir not in self._mirrors:
            return []
        local = self._mirrors[subdir]
        seen = self._mirror_synced[subdir]
        uploaded = []
        for rel in _walk_files(local):
            st = os.stat(os.path.join(local, rel))
            key = (st.st_size, st.st_mtime_ns)
            if seen.get(rel) == key:
                continue
            name = f"{subdir.strip('/')}/{rel}"
            self.upload(os.path.join(local, rel), name)
            seen[rel] = key
            uploaded.append(rel)
        return uploaded

    def cleanup_mirror(self, subdir: str) -> None:
        """Deletes a remote workdir's temporary mirror folder (after a final sync)."""
        local = self._mirrors.pop(subdir, None)
        self._mirror_synced.pop(subdir, None)
        if local and not self.is_local:
            base = local
            for _ in subdir.strip("/").split("/"):
                base = os.path.dirname(base)
            shutil.rmtree(base, ignore_errors=True)


def _walk_files(root: str) -> Iterable[str]:
    for dirpath, _, files in os.walk(root):
        for name in sorted(files):
            yield os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/")


def as_workdir(workdir: "Workdir | str | os.PathLike") -> Workdir:
    """``workdir`` itself if it is a Workdir, else ``Workdir(workdir)``."""
    return workdir if isinstance(workdir, Workdir) else Workdir(workdir)
