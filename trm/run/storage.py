"""Storage: one folder on any fsspec URL, with whole-file atomic writes and retries.

The one file-access layer of trm: the run state (:mod:`trm.run`) and the data layer
(:mod:`trm.data`) both use it. A location is a local path, ``gs://bucket/prefix``, or any
other fsspec URL (``memory://`` in tests).

* :class:`Storage` -- a folder: ``write_bytes`` / ``read_bytes`` / ``write_json`` /
  ``exists`` / ``listdir`` / ``remove_tree`` / ``create_exclusive`` on names relative to it.
* Module functions on whole paths (``exists``, ``read_bytes``, ``write_bytes``, ``join``,
  ``remove_tree``, ``upload_file``, ``create_exclusive``) for callers that hold full paths.
* :func:`retry` / :func:`is_transient` -- the retry policy for transient storage errors.

Writes are whole-file and atomic: locally through a temporary file and ``os.replace``; on GCS
one object upload is atomic already (readers see the old object or the new one, never a part),
so no renames are needed there (renames on GCS are copies, and slow on the emulator).

No torch and no TensorFlow here: any process may import it cheaply.
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
import stat
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar

from trm.errors import TrmError

# gcsfs >= 2026 asks a gRPC API for the bucket type on every open unless this is off
# (against the GCS emulator each open then waits ~60 s). Must be set before gcsfs is imported.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

log = logging.getLogger(__name__)

T = TypeVar("T")


class _OneLineStorageErrors(logging.Filter):
    """gcsfs logs each request that ran out of its own retries as an ERROR with the whole
    aiohttp traceback. trm retries those requests itself and logs one line per retry, so during
    an outage the traceback is noise: it becomes a one-line warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and "out of retries" in str(record.msg):
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()} ({type(exc).__name__}; trm retries it)"
            record.args = None
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


logging.getLogger("gcsfs").addFilter(_OneLineStorageErrors())


class ShortWriteError(OSError):
    """The stored object's size differs from what was written (retried as transient)."""


class UntrustedFileError(TrmError, PermissionError):
    """A folder's content is not what trm reads or removes: a path that leads out of the folder
    (``..``, a symbolic link), a file that is not a regular file (a FIFO, a device), or one
    larger than its bound. Never retried; the message names the path (docs/RUN_STATE.md,
    "Trust boundaries")."""


SMALL_FILE_MAX_BYTES = 64 << 20  # run.json, LOCK, COMMIT, config.gin ...: far below this


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


DEFAULT_RETRY_BUDGET_S = 1800.0
DEFAULT_EXIT_GRACE_S = 20.0


def _env_seconds(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a number of seconds") from None
    if not seconds > 0:
        raise ValueError(f"{name}={value!r} must be > 0 seconds")
    return seconds


def retry_budget_s() -> float:
    """How long run-state writes keep retrying through a storage outage:
    ``$TRM_STORAGE_RETRY_BUDGET_S`` or :data:`DEFAULT_RETRY_BUDGET_S` (30 minutes)."""
    return _env_seconds("TRM_STORAGE_RETRY_BUDGET_S", DEFAULT_RETRY_BUDGET_S)


def exit_grace_s() -> float:
    """How long a stopping process (SIGTERM) waits for storage before it exits anyway:
    ``$TRM_EXIT_GRACE_S`` or :data:`DEFAULT_EXIT_GRACE_S` (preemption notices give ~30 s)."""
    return _env_seconds("TRM_EXIT_GRACE_S", DEFAULT_EXIT_GRACE_S)


class StorageDeadlineError(TimeoutError):
    """The process is stopping and its exit grace window ended before the storage answered."""


class ExitDeadline:
    """When a stopping process must be done with storage (shared by a Storage and its copies).

    Unset while the process runs. :meth:`start` (on SIGTERM) sets it ``grace_s`` from now; from
    then on every retry loop and every wait of the run state ends at the deadline, and an
    operation still running then is abandoned (it runs on a daemon thread), so no storage call
    keeps a stopping process alive. ``watch(fn)``: waits poll ``fn()`` (e.g. "a SIGTERM
    arrived") and start the deadline when it turns true, so a SIGTERM is acted on even while
    the caller is blocked on storage.
    """

    def __init__(self) -> None:
        self.at: Optional[float] = None
        self.grace_s: Optional[float] = None
        self.started = threading.Event()
        self._watch: Optional[Callable[[], bool]] = None
        self._watcher: Optional[int] = None

    def start(self, grace_s: Optional[float] = None) -> float:
        """Starts the grace window (once; a later call never extends it); returns the deadline."""
        if self.at is None:
            self.grace_s = exit_grace_s() if grace_s is None else float(grace_s)
            self.at = time.monotonic() + self.grace_s
            self.started.set()
            log.info("Stopping: storage operations end within %.0f s", self.grace_s)
        return self.at

    def watch(self, stop_requested: Optional[Callable[[], bool]]) -> None:
        """Polls ``stop_requested`` in the waits of the calling thread (the one that acts on a
        stop, e.g. the training loop)."""
        self._watch = stop_requested
        self._watcher = threading.get_ident()

    def poll(self) -> None:
        """Starts the window if the watched condition (a stop request) has become true.

        Only in the thread that set the watch: the window is for that thread's waits on
        storage. A background thread (the lock heartbeat, a background writer) touching storage
        must not start it while that thread is still busy elsewhere -- e.g. finishing a long
        evaluation before it saves -- or the final save would find the window already over."""
        if self.at is None and self._watch is not None and \
                threading.get_ident() == self._watcher:
            try:
                if self._watch():
                    self.start()
            except Exception:
                log.exception("exit deadline watcher failed")

    def remaining(self) -> Optional[float]:
        """Seconds left (<= 0: passed), or None while the process is not stopping."""
        self.poll()
        return None if self.at is None else self.at - time.monotonic()

    def passed(self) -> bool:
        left = self.remaining()
        return left is not None and left <= 0


def call_bounded(fn: Callable[[], T], timeout_s: Optional[float], what: str) -> T:
    """``fn()``, abandoned after ``timeout_s`` (it runs on a daemon thread, so an abandoned call
    never delays the exit): raises StorageDeadlineError then. ``None``: no limit, no thread."""
    if timeout_s is None:
        return fn()
    if timeout_s <= 0:
        raise StorageDeadlineError(f"{what}: not attempted, the exit grace window has ended")
    box: Dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True, name="trm-storage-call")
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise StorageDeadlineError(f"{what}: no answer within the exit grace window "
                                   f"({timeout_s:.1f} s left); abandoned")
    if "error" in box:
        raise box["error"]
    return box["result"]


def retry(fn: Callable[[], T], *, what: str, max_retries: int = 5, base_delay_s: float = 1.0,
          max_delay_s: float = 30.0,
          transient: Callable[[BaseException], bool] = is_transient,
          budget_s: Optional[float] = None, deadline: Optional[ExitDeadline] = None) -> T:
    """Calls ``fn()``; on a transient error waits (exponential backoff, jitter) and retries.

    Args:
        fn: the operation; it must be safe to repeat (whole-file writes, reads, deletes).
        what: a description for the log ("writing gs://b/run/checkpoints/.../state.pt").
        max_retries: retries after the first attempt; the last error is re-raised.
        base_delay_s, max_delay_s: the n-th retry waits ``min(max, base * 2**n) * U(0.5, 1)``.
        transient: the predicate deciding what is retried (default :func:`is_transient`).
        budget_s: retry by time instead of by count: transient errors are retried until
            ``budget_s`` seconds have passed since the first attempt (``max_retries`` is then
            ignored). This is how an outage of up to the budget is ridden out.
        deadline: the process's :class:`ExitDeadline`: once it is started, no attempt or
            backoff runs past it (StorageDeadlineError), whatever the count or budget.
    """
    attempt = 0
    start = time.monotonic()
    while True:
        left = deadline.remaining() if deadline is not None else None
        try:
            return call_bounded(fn, left, what) if left is not None else fn()
        except StorageDeadlineError:
            raise
        except Exception as exc:
            if not transient(exc):
                raise
            elapsed = time.monotonic() - start
            if budget_s is not None:
                if elapsed >= budget_s:
                    raise
            elif attempt >= max_retries:
                raise
            delay = min(max_delay_s, base_delay_s * 2 ** attempt) * random.uniform(0.5, 1.0)
            if budget_s is not None:
                delay = min(delay, max(0.0, budget_s - elapsed))
            left = deadline.remaining() if deadline is not None else None
            if left is not None:
                if left <= 0:
                    raise
                delay = min(delay, left)
            attempt += 1
            if budget_s is not None:
                log.warning("Transient storage error while %s (%s: %s); retry %d in %.1f s "
                            "(%.0f s of the %.0f s retry budget left)", what,
                            type(exc).__name__, exc, attempt, delay,
                            max(0.0, budget_s - elapsed), budget_s)
            else:
                log.warning("Transient storage error while %s (%s: %s); retry %d/%d in %.1f s",
                            what, type(exc).__name__, exc, attempt, max_retries, delay)
            if deadline is not None and not deadline.started.is_set():
                deadline.started.wait(delay)   # a stop request cuts the backoff short
            else:
                time.sleep(delay)


class Storage:
    """One folder; every access goes through fsspec (local files directly).

    Args:
        path: a local path, ``file://...``, ``gs://bucket/prefix``, ``memory://name``, or any
            fsspec URL.
        storage_options: passed to the fsspec filesystem (e.g. ``{"token": "anon",
            "endpoint_url": ...}`` for gcsfs). With ``STORAGE_EMULATOR_HOST`` set (a local
            GCS emulator), ``gs://`` defaults to anonymous credentials.
        max_retries: retries of transient storage errors for each operation.
        retry_base_delay_s: the first retry's backoff (doubling after that).
        retry_budget_s: retry transient errors for this many seconds instead of
            ``max_retries`` times (the run state's checkpoint commits use
            :func:`retry_budget_s`, 30 minutes by default).

    ``exit`` is the folder's :class:`ExitDeadline`, shared with its copies (``copy.copy``):
    :meth:`exit_by` starts it when the process is told to stop.
    """

    def __init__(self, path: "str | os.PathLike", storage_options: Optional[Dict] = None, *,
                 max_retries: int = 5, retry_base_delay_s: float = 1.0,
                 retry_budget_s: Optional[float] = None) -> None:
        path = os.fspath(path)
        self.retry_budget_s = retry_budget_s
        self.exit = ExitDeadline()
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
            import fsspec

            self.path = path.rstrip("/")
            self.protocol = path.split("://", 1)[0]
            options = dict(storage_options or {})
            if self.protocol in ("gs", "gcs") and os.environ.get("STORAGE_EMULATOR_HOST"):
                options.setdefault("token", "anon")
            self.fs, self._root = fsspec.core.url_to_fs(self.path, **options)
            self._root = self._root.rstrip("/")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r})"

    # -- paths ------------------------------------------------------------------------------
    def url(self, name: str = "") -> str:
        """The full path or URL of ``name`` (relative, ``/``-separated) inside the folder.

        Raises UntrustedFileError for a ``..`` component (a name never leaves its folder)."""
        name = name.strip("/")
        if ".." in name.split("/"):
            raise UntrustedFileError(f"{name!r} leads out of {self.path} ('..'); trm never "
                                     "follows a name out of its folder")
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

    def confined(self, name: str, follow_last: bool = True) -> str:
        """The local path of ``name``, checked to stay inside the folder once symbolic links
        are resolved (all of them, or all but the last component with ``follow_last=False``:
        for an operation that replaces or removes a link rather than following it)."""
        path = self.url(name)
        if not self.is_local:
            return path
        root = os.path.realpath(self.path)
        real = os.path.realpath(path if follow_last else os.path.dirname(path))
        if real != root and not real.startswith(root.rstrip(os.sep) + os.sep):
            raise UntrustedFileError(
                f"{path} leads out of {self.path} (a symbolic link to {real}); trm does not "
                "follow links out of a run or dataset folder")
        return path

    def _retry(self, fn: Callable[[], T], what: str) -> T:
        return retry(fn, what=what, max_retries=self.max_retries,
                     base_delay_s=self.retry_base_delay_s,
                     budget_s=getattr(self, "retry_budget_s", None),
                     deadline=getattr(self, "exit", None))

    # -- stopping ------------------------------------------------------------------------------
    def exit_by(self, grace_s: Optional[float] = None) -> float:
        """The process is stopping (SIGTERM): storage waits end ``grace_s`` from now (default
        :func:`exit_grace_s`). Shared with every copy of this folder. Returns the deadline."""
        return self.exit.start(grace_s)

    def watch_stop(self, stop_requested: Callable[[], bool]) -> None:
        """Waits on this folder's storage (checkpoint commits, run.json) poll
        ``stop_requested()`` and start the exit grace window when it is true."""
        self.exit.watch(stop_requested)

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
            path = self.confined(name, follow_last=False)
            folder = os.path.dirname(path)
            os.makedirs(folder, exist_ok=True)
            self.confined(name, follow_last=False)  # again: a folder may have become a link
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

    def read_bytes(self, name: str, max_bytes: Optional[int] = None) -> bytes:
        """Reads the whole of ``name`` (FileNotFoundError if missing).

        Only a regular file inside the folder is read, and with ``max_bytes`` only one of at
        most that size, checked before reading (else UntrustedFileError): content others can
        write never makes a read hang (a FIFO, ``/dev/zero``) or leave the folder."""
        def read() -> bytes:
            if self.is_local:
                return read_local_file(self.confined(name), max_bytes)
            self._invalidate(name)
            path = self._fs_path(name)
            if max_bytes is None:
                return self.fs.cat_file(path)
            info = self.fs.info(path)
            size = int(info.get("size") or 0)
            if info.get("type") not in (None, "file") or size > max_bytes:
                raise UntrustedFileError(_not_readable(self.url(name), info.get("type"), size,
                                                       max_bytes))
            data = self.fs.cat_file(path, start=0, end=max_bytes + 1)
            if len(data) > max_bytes:
                raise UntrustedFileError(_not_readable(self.url(name), "file", len(data),
                                                       max_bytes))
            return data
        return self._retry(read, f"reading {self.url(name)}")

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode("utf-8"))

    def read_text(self, name: str, max_bytes: Optional[int] = SMALL_FILE_MAX_BYTES) -> str:
        """``name`` as UTF-8 text (a small file: at most ``max_bytes``)."""
        return self.read_bytes(name, max_bytes).decode("utf-8")

    def write_json(self, name: str, obj: Any) -> None:
        self.write_bytes(name, json_bytes(obj))

    def read_json(self, name: str, default: Any = FileNotFoundError) -> Any:
        """Parses ``name`` as JSON (a small file, see :meth:`read_text`); returns ``default``
        if it is missing (if one is given). Invalid JSON or UTF-8 raises ValueError."""
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
            except (FileNotFoundError, NotADirectoryError):
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

    def find(self, name: str = "") -> List[str]:
        """Every file under folder ``name``, recursively, as object names relative to this
        folder (``/``-separated, sorted; [] if it does not exist). Names are the store's own:
        a remote store may return names such as ``a/../../x`` (callers copying them to disk
        must check them)."""
        if self.is_local:
            top = self.url(name)
            return sorted(os.path.relpath(os.path.join(d, f), self.path).replace(os.sep, "/")
                          for d, _, files in os.walk(top) for f in files)
        root = self._root + "/"
        self._invalidate(name)
        found = self._retry(lambda: self.fs.find(self._fs_path(name), withdirs=False),
                            f"listing {self.url(name)}")
        return sorted(f[len(root):] for f in found if f.startswith(root))

    def remove(self, name: str, missing_ok: bool = True) -> None:
        """Removes file ``name``."""
        def rm() -> None:
            try:
                if self.is_local:
                    os.unlink(self.confined(name, follow_last=False))  # a link, not its target
                else:
                    self.fs.rm_file(self._fs_path(name))
                    self._invalidate(name)
            except FileNotFoundError:
                if not missing_ok:
                    raise
        self._retry(rm, f"removing {self.url(name)}")

    def remove_tree(self, name: str) -> None:
        """Removes folder ``name`` and everything under it (no error if missing). Links are
        removed, never followed: a folder that is a link loses the link only."""
        if self.is_local:
            path = self.confined(name, follow_last=False)
            if os.path.islink(path) or os.path.isfile(path):
                os.unlink(path)
            else:
                shutil.rmtree(path, ignore_errors=True)
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
        """Copies local file ``local_path`` to ``name`` in the folder (whole-file, atomic)."""
        with open(local_path, "rb") as f:
            data = f.read()
        self.write_bytes(name, data)

    def create_exclusive(self, name: str, data: bytes) -> bool:
        """Creates ``name`` with ``data`` unless it exists; True if this call created it."""
        if self.is_local:
            path = self.confined(name, follow_last=False)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path),
                                       prefix=f".{os.path.basename(path)}.tmp-")
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


def json_bytes(obj: Any) -> bytes:
    """How trm writes a JSON file (indented, sorted keys, trailing newline)."""
    return (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8")


# -- writes in the background ------------------------------------------------------------------
class BackgroundWriter:
    """Writes files of one :class:`Storage` on a daemon thread, riding out outages.

    For the run state that must never stall or kill training (run.json at log intervals,
    evaluation metrics, TensorBoard uploads): :meth:`put` returns at once. Only the latest
    content of each name matters: a newer ``put`` of a name replaces content not yet written
    (coalescing). A transient error is retried, with backoff up to ``max_delay_s``, until it
    succeeds, the content is replaced, the writer is closed, or the folder's exit deadline
    passes -- there is no count limit, since nothing waits on it. A permanent error (permission
    denied, ...) drops that content and is logged. :meth:`flush` waits, with a time limit, for
    everything put so far.

    ``data`` may be bytes or a callable returning bytes, called when the write is attempted
    (so a file's latest content is read then).
    """

    def __init__(self, storage: "Storage", name: str = "trm-writer", *,
                 base_delay_s: float = 1.0, max_delay_s: float = 30.0) -> None:
        self.storage = storage
        self.name = name
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self._cond = threading.Condition()
        self._pending: Dict[str, Tuple[int, Any]] = {}   # name -> (seq, data)
        self._seq = 0
        self._errors: Dict[int, BaseException] = {}      # seq -> permanent error
        self._thread: Optional[threading.Thread] = None
        self._closed = False
        self.outage_since: Optional[float] = None        # monotonic time of the first failure
        self.last_error: Optional[BaseException] = None

    @property
    def healthy(self) -> bool:
        """Whether the last write attempt succeeded (no outage in progress)."""
        return self.outage_since is None

    def put(self, name: str, data: Any) -> int:
        """Queues ``data`` for ``name`` (replacing queued content of that name); returns its
        sequence number."""
        with self._cond:
            self._seq += 1
            if self._closed:   # given up (exit deadline, or closed): flush reports it
                self._errors[self._seq] = StorageDeadlineError(
                    f"{self.storage.url(name)} not written: {self.name} has stopped")
                return self._seq
            self._pending[name] = (self._seq, data)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True, name=self.name)
                self._thread.start()
            self._cond.notify_all()
            return self._seq

    def pending(self) -> List[str]:
        with self._cond:
            return sorted(self._pending)

    def flush(self, timeout: Optional[float] = None, raise_errors: bool = False) -> bool:
        """Waits until everything put so far is written (or dropped by a permanent error).

        ``timeout``: at most this long (None: no limit); the folder's exit deadline, once
        started, limits it too. Returns True when everything was written. With
        ``raise_errors`` a permanent error is raised, and a timeout raises
        StorageDeadlineError (naming the last transient error) instead of returning False.
        """
        end = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._seq
            while True:
                waiting = [s for s, _ in self._pending.values() if s <= target]
                if not waiting:
                    break
                now = time.monotonic()
                left = None if end is None else end - now
                exit_left = self.storage.exit.remaining()
                if exit_left is not None:
                    left = exit_left if left is None else min(left, exit_left)
                if left is not None and left <= 0:
                    if raise_errors:
                        raise StorageDeadlineError(
                            f"{self.storage.url()}: {', '.join(self._pending)} not written in "
                            f"time (storage unreachable: "
                            + (f"{type(self.last_error).__name__}: {self.last_error})"
                               if self.last_error is not None else "no answer yet)"))
                    return False
                self._cond.wait(0.5 if left is None else min(left, 0.5))
            errors = [e for s, e in self._errors.items() if s <= target]
            for s in [s for s in self._errors if s <= target]:
                del self._errors[s]
        if errors:
            if raise_errors:
                raise errors[-1]
            return False
        return True

    def close(self, timeout: Optional[float] = None) -> bool:
        """Flushes (within ``timeout``) and stops the thread; returns whether all was written."""
        ok = self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        return ok

    def _run(self) -> None:
        failures = 0
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return
                name, (seq, data) = min(self._pending.items(), key=lambda kv: kv[1][0])
            if self.storage.exit.passed():
                with self._cond:   # stopping: nobody waits for these any more
                    self._closed = True
                    self._pending.clear()
                    self._cond.notify_all()
                return
            try:
                payload = data() if callable(data) else data
                self.storage._write_once(name, payload)
            except Exception as exc:
                if not is_transient(exc):
                    log.error("Could not write %s: %s: %s (not retried)",
                              self.storage.url(name), type(exc).__name__, exc)
                    with self._cond:
                        if self._pending.get(name, (None,))[0] == seq:
                            del self._pending[name]
                        self._errors[seq] = exc
                        self._cond.notify_all()
                    continue
                failures += 1
                self.last_error = exc
                if self.outage_since is None:
                    self.outage_since = time.monotonic()
                delay = min(self.max_delay_s, self.base_delay_s * 2 ** min(failures - 1, 10))
                log.warning("Storage unreachable for %.0f s while writing %s in the background "
                            "(%s: %s); training continues, retrying in %.0f s",
                            time.monotonic() - self.outage_since, self.storage.url(name),
                            type(exc).__name__, exc, delay)
                with self._cond:
                    if self._closed:   # given up on (close() timed out): stop retrying
                        self._pending.clear()
                        self._cond.notify_all()
                        return
                    self._cond.wait(delay)
                continue
            if self.outage_since is not None:
                log.warning("Storage reachable again after %.0f s: %s written",
                            time.monotonic() - self.outage_since, self.storage.url(name))
            failures = 0
            self.outage_since = None
            self.last_error = None
            with self._cond:
                if self._pending.get(name, (None,))[0] == seq:
                    del self._pending[name]
                self._cond.notify_all()


# -- whole paths -----------------------------------------------------------------------------
def is_remote(path: str) -> bool:
    """Whether ``path`` is an fsspec URL other than ``file://``."""
    return "://" in str(path) and not str(path).startswith("file://")


def join(base: str, *parts: str) -> str:
    base = str(base)
    if is_remote(base):
        return posixpath.join(base.rstrip("/"), *parts)
    return os.path.join(base, *parts)


def split(path: str) -> Tuple[str, str]:
    """``(folder, name)`` of a file path or URL."""
    path = os.fspath(path)
    if is_remote(path):
        head, _, name = path.rstrip("/").rpartition("/")
        return head, name
    path = path[len("file://"):] if path.startswith("file://") else path
    return os.path.dirname(os.path.abspath(path)), os.path.basename(path)


def filesystem(path: str):
    """The fsspec filesystem for a remote ``path`` (anonymous against a GCS emulator)."""
    import fsspec

    protocol = str(path).split("://", 1)[0]
    kwargs = {}
    if protocol in ("gs", "gcs") and os.environ.get("STORAGE_EMULATOR_HOST"):
        kwargs["token"] = "anon"
    return fsspec.filesystem(protocol, **kwargs)


def _parent(path: str) -> Tuple[Storage, str]:
    folder, name = split(path)
    return Storage(folder), name


def exists(path: str) -> bool:
    if not is_remote(path):
        return os.path.exists(path)
    folder, name = _parent(path)
    return folder.exists(name)


def read_local_file(path: str, max_bytes: Optional[int] = None) -> bytes:
    """The content of a local regular file (of at most ``max_bytes``, checked before reading).

    Opened without blocking and checked with ``fstat``: a FIFO, a device or a folder is refused
    with UntrustedFileError instead of hanging or reading forever."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
        if not stat.S_ISREG(info.st_mode) or (max_bytes is not None
                                               and info.st_size > max_bytes):
            raise UntrustedFileError(_not_readable(path, _kind(info.st_mode), info.st_size,
                                                   max_bytes))
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as f:
        data = f.read() if max_bytes is None else f.read(max_bytes + 1)
    if max_bytes is not None and len(data) > max_bytes:  # grew while being read
        raise UntrustedFileError(_not_readable(path, "file", len(data), max_bytes))
    return data


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISCHR, "character device"),
                       (stat.S_ISBLK, "block device"), (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "file" if stat.S_ISREG(mode) else "special file"


def _not_readable(path: str, kind: Optional[str], size: int, max_bytes: Optional[int]) -> str:
    if kind not in (None, "file"):
        return f"{path} is a {kind}, not a regular file; trm reads regular files only"
    return (f"{path} has {size} bytes, more than the {max_bytes} such a file may have; "
            "trm does not read it")


def read_bytes(path: str, max_bytes: Optional[int] = None) -> bytes:
    """The whole of the file at ``path`` (a regular file of at most ``max_bytes``; see
    :meth:`Storage.read_bytes`)."""
    if not is_remote(path):
        return read_local_file(path, max_bytes)
    folder, name = _parent(path)
    return folder.read_bytes(name, max_bytes)


def write_bytes(path: str, data: bytes) -> None:
    """Writes a file in one piece, atomically (see :meth:`Storage.write_bytes`)."""
    folder, name = _parent(path)
    folder.write_bytes(name, data)


def create_exclusive(path: str, data: bytes) -> bool:
    """Creates ``path`` with ``data`` unless it exists; True if this call created it.

    Local: atomic (hard link of a complete temporary file). Remote: an upload with a
    create-only precondition where the store enforces it (GCS), else check-then-write; callers
    must tolerate a lost race.
    """
    folder, name = _parent(path)
    return folder.create_exclusive(name, data)


def upload_file(local_path: str, path: str) -> None:
    """Copies a local file to ``path`` (whole file, atomic, retried)."""
    folder, name = _parent(path)
    folder.upload(local_path, name)


def remove_tree(path: str) -> None:
    """Removes the folder ``path`` and everything under it (no error if missing)."""
    if not is_remote(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    folder, name = _parent(path)
    folder.remove_tree(name)
