"""Test-wide settings: one torch thread, clean gin state, a restored registry."""

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

import gin
import pytest
import torch

torch.set_num_threads(1)

import trm  # noqa: E402,F401  (registers the built-in components)
from trm.registry import REGISTRY  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN_DIR = os.path.join(os.path.dirname(REPO_ROOT), "shared", "golden")


@pytest.fixture(autouse=True)
def _clean_gin_and_registry():
    """Gin state is global: clear it around every test, and forget test-registered components."""
    snapshot = REGISTRY.snapshot()
    gin.clear_config()
    yield
    gin.clear_config()
    REGISTRY.restore(snapshot)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def gcs_emulator():
    """A real GCS emulator (``gcp-storage-emulator``, in memory) on 127.0.0.1.

    Yields its URL and sets ``STORAGE_EMULATOR_HOST`` for the session, so gcsfs (token
    ``anon``) and trm's ``gs://`` paths talk to it.
    """
    exe = os.path.join(os.path.dirname(sys.executable), "gcp-storage-emulator")
    if not os.path.exists(exe):
        exe = shutil.which("gcp-storage-emulator") or exe
    if not os.path.exists(exe):
        pytest.fail("gcp-storage-emulator is not installed (it is in the dev extra)")
    port = _free_port()
    proc = subprocess.Popen([exe, "start", "--host", "127.0.0.1", "--port", str(port),
                             "--in-memory"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
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
    """A fresh, empty bucket on the emulator; yields its ``gs://`` URL."""
    import gcsfs

    fs = gcsfs.GCSFileSystem(token="anon", endpoint_url=gcs_emulator)
    bucket = f"trm-{uuid.uuid4().hex[:10]}"
    fs.mkdir(bucket)
    fs.invalidate_cache()
    return f"gs://{bucket}"
