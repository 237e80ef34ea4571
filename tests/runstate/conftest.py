"""Fixtures for the run-state tests: a real local GCS emulator, fault proxy, clean memory://."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid

import pytest

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def gcs_emulator():
    """``gcp-storage-emulator`` (in memory) on 127.0.0.1; sets ``STORAGE_EMULATOR_HOST``."""
    exe = os.path.join(os.path.dirname(sys.executable), "gcp-storage-emulator")
    if not os.path.exists(exe):
        exe = "gcp-storage-emulator"
    port = _free_port()
    try:
        proc = subprocess.Popen([exe, "start", "--host", "127.0.0.1", "--port", str(port),
                                 "--in-memory"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    except FileNotFoundError:
        pytest.skip("gcp-storage-emulator is not installed (pip install gcp-storage-emulator)")
    deadline = time.time() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail("gcp-storage-emulator did not start")
            time.sleep(0.1)
    url = f"http://127.0.0.1:{port}"
    old = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = url
    try:
        yield url
    finally:
        if old is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = old
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture()
def gcs_bucket(gcs_emulator):
    """A fresh bucket on the emulator; yields its ``gs://`` URL."""
    import gcsfs

    fs = gcsfs.GCSFileSystem(token="anon", endpoint_url=gcs_emulator)
    bucket = f"trm-{uuid.uuid4().hex[:10]}"
    fs.mkdir(bucket)
    fs.invalidate_cache()
    return f"gs://{bucket}"


@pytest.fixture()
def fault_proxy(gcs_emulator):
    """A :class:`faults.FaultProxy` in front of the emulator."""
    from faults import FaultProxy

    proxy = FaultProxy(gcs_emulator)
    yield proxy
    proxy.close()


@pytest.fixture(autouse=True)
def clean_memory_fs():
    """``memory://`` is process-global: empty it around every test."""
    from fsspec.implementations.memory import MemoryFileSystem

    def clear():
        MemoryFileSystem.store.clear()
        MemoryFileSystem.pseudo_dirs.clear()
        MemoryFileSystem.pseudo_dirs.append("")

    clear()
    yield
    clear()
