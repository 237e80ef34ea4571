"""Local and remote (``gs://``, any fsspec URL) file access for datasets. No TensorFlow here.

Remote paths go through fsspec (gcsfs for ``gs://``). TensorFlow never sees a remote path:
the pipeline stages remote shards into a local cache first (see :func:`stage`).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import tempfile
import uuid

# gcsfs >= 2026 asks a gRPC API for the bucket type on every open unless this is off; against
# the GCS emulator (and anything without that API) each open then waits ~60 s.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

from trm.data.format import DataError, sha256_file  # noqa: E402


def is_remote(path: str) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


def join(base: str, *parts: str) -> str:
    base = str(base)
    if is_remote(base):
        return posixpath.join(base.rstrip("/"), *parts)
    return os.path.join(base, *parts)


def filesystem(path: str):
    """The fsspec filesystem for ``path`` (remote only)."""
    import fsspec

    protocol = str(path).split("://", 1)[0]
    kwargs = {}
    if protocol in ("gs", "gcs") and os.environ.get("STORAGE_EMULATOR_HOST"):
        kwargs["token"] = "anon"
    return fsspec.filesystem(protocol, **kwargs)


def exists(path: str) -> bool:
    if not is_remote(path):
        return os.path.exists(path)
    fs = filesystem(path)
    fs.invalidate_cache()
    return fs.exists(path)


def read_bytes(path: str) -> bytes:
    if not is_remote(path):
        with open(path, "rb") as f:
            return f.read()
    fs = filesystem(path)
    fs.invalidate_cache()
    with fs.open(path, "rb") as f:
        return f.read()


def write_bytes(path: str, data: bytes) -> None:
    """Writes a file in one piece (local: via a temporary file and ``os.replace``)."""
    if not is_remote(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return
    with filesystem(path).open(path, "wb") as f:
        f.write(data)


def create_exclusive(path: str, data: bytes) -> bool:
    """Creates ``path`` with ``data`` unless it exists; True if this call created it.

    Local: atomic (hard link of a complete temporary file). Remote: check-then-write (object
    stores have no portable create-if-absent through fsspec); callers must tolerate a lost
    race, which for deterministic builds means both writers wrote equivalent datasets.
    """
    if not is_remote(path):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
    if exists(path):
        return False
    write_bytes(path, data)
    return True


def upload_file(local_path: str, remote_path: str) -> None:
    fs = filesystem(remote_path)
    fs.put_file(local_path, remote_path)


def remove_tree(path: str) -> None:
    if not is_remote(path):
        import shutil

        shutil.rmtree(path, ignore_errors=True)
        return
    fs = filesystem(path)
    fs.invalidate_cache()
    if fs.exists(path):
        fs.rm(path, recursive=True)


def cache_dir() -> str:
    """Local folder for staged remote shards: ``$TRM_DATA_CACHE`` or ``~/.cache/trm/data``."""
    return os.environ.get("TRM_DATA_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "trm", "data")


def stage(path: str, sha256: str, num_bytes: int, cache: str | None = None) -> str:
    """Returns a local path holding the verified content of ``path``.

    Local files are returned as they are (their checksum is checked by the reader). Remote
    files are downloaded once into the cache (keyed by their checksum), verified, and moved
    into place atomically, so processes sharing a host may stage concurrently.
    """
    if not is_remote(path):
        return path
    cache = cache or cache_dir()
    local = os.path.join(cache, sha256[:2], f"{sha256}-{posixpath.basename(path)}")
    if os.path.exists(local) and os.path.getsize(local) == num_bytes:
        return local
    os.makedirs(os.path.dirname(local), exist_ok=True)
    fs = filesystem(path)
    fs.invalidate_cache()
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(local), prefix=".staging-")
    try:
        h = hashlib.sha256()
        n = 0
        with os.fdopen(fd, "wb") as out, fs.open(path, "rb") as src:
            while True:
                block = src.read(1 << 22)
                if not block:
                    break
                h.update(block)
                n += len(block)
                out.write(block)
        if n != num_bytes or h.hexdigest() != sha256:
            raise DataError(
                f"{path}: checksum mismatch while staging (got {n} bytes, sha256 "
                f"{h.hexdigest()[:16]}..., metadata says {num_bytes} bytes, {sha256[:16]}...): "
                "the file is corrupt or was modified after the dataset was built")
        os.replace(tmp, local)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return local


_VERIFIED: set = set()


def verify_local(path: str, sha256: str, num_bytes: int) -> None:
    """Checks a local file's size and sha256 once per process (cached by path/size/mtime)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DataError(f"{path}: shard file missing (the dataset is incomplete)") from None
    if st.st_size != num_bytes:
        raise DataError(f"{path}: size {st.st_size} bytes, metadata says {num_bytes}: the file "
                        "is corrupt or was modified after the dataset was built")
    key = (path, st.st_size, st.st_mtime_ns, sha256)
    if key in _VERIFIED:
        return
    with open(path, "rb") as f:
        digest, _ = sha256_file(f)
    if digest != sha256:
        raise DataError(f"{path}: sha256 checksum mismatch: the file is corrupt or was "
                        "modified after the dataset was built")
    _VERIFIED.add(key)
