"""Dataset file access: the shared storage layer plus staging of remote shards. No TensorFlow.

Path operations (``exists``, ``read_bytes``, ``write_bytes``, ``join``, ...) are those of
:mod:`trm.run.storage`, the one fsspec layer of trm (atomic whole-file writes, retries of
transient errors). TensorFlow never sees a remote path: the pipeline stages remote shards into
a local cache first (see :func:`stage`).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import tempfile

from trm.data.format import DataError, sha256_file
from trm.run.storage import (  # noqa: F401 - the data layer's path operations
    create_exclusive, exists, filesystem, is_remote, join, read_bytes, remove_tree, upload_file,
    write_bytes)


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
