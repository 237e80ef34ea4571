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
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar

# gcsfs >= 2026 asks a gRPC API for the bucket type on every open unless this is off
# (against the GCS emulator each open then waits ~60 s). Must be set before gcsfs is imported.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

log = logging.getLogger(__name__)

T = TypeVar("T")


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

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r})"

    # -- paths ------------------------------------------------------------------------------
    def url(self, name: str = "") -> str:
        """The full path or URL of ``name`` (relative, ``/``-separated) inside the folder."""
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
        """Copies local file ``local_path`` to ``name`` in the folder (whole-file, atomic)."""
        with open(local_path, "rb") as f:
            data = f.read()
        self.write_bytes(name, data)

    def create_exclusive(self, name: str, data: bytes) -> bool:
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
    import fsspec  # pylint: disable=import-outside-toplevel

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


def read_bytes(path: str) -> bytes:
    if not is_remote(path):
        with open(path, "rb") as f:
            return f.read()
    folder, name = _parent(path)
    return folder.read_bytes(name)


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
