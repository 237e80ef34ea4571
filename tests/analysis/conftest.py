"""Fixtures for the analysis tests: synthetic run roots and a local GCS emulator."""

from __future__ import annotations

import os
import sys
import urllib.parse
import urllib.request

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

from analysis import testing as synth  # noqa: E402


@pytest.fixture(scope="session")
def study_root(tmp_path_factory):
    """A small synthetic study (every experiment of :func:`write_tiny_study`, 2 seeds)."""
    root = tmp_path_factory.mktemp("study")
    synth.write_tiny_study(str(root), seeds=(0, 1), train_steps=40)
    return str(root)


@pytest.fixture(scope="session")
def study_runs(study_root):
    from analysis import load_runs

    return load_runs(study_root)


@pytest.fixture(scope="session")
def minimal_root(tmp_path_factory):
    """Two completed runs (the CI smoke set)."""
    root = tmp_path_factory.mktemp("minimal")
    synth.write_minimal_study(str(root))
    return str(root)


@pytest.fixture()
def gcs_fs_bucket(gcs_emulator, gcs_bucket):
    """The shared emulator's fresh bucket as ``(gcsfs filesystem, bucket name)``."""
    import gcsfs

    return gcsfs.GCSFileSystem(token="anon", endpoint_url=gcs_emulator), gcs_bucket[len("gs://"):]


def upload_tree(fs, emulator_url: str, bucket: str, prefix: str, local_dir: str) -> int:
    """Uploads every file under ``local_dir`` to ``gs://bucket/prefix/`` byte-exactly.

    Uses the JSON API's ``uploadType=media``: gcsfs's multipart uploads lose a trailing ``\r``
    or ``\n`` of the content on gcp-storage-emulator (its multipart parser strips it), which
    corrupts ~1 in 128 binary files such as TensorBoard event files. Empty files (which the
    emulator's media upload rejects) go through ``fs`` (gcsfs).
    """
    n = 0
    for dirpath, _, files in os.walk(local_dir):
        for name in files:
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, local_dir).replace(os.sep, "/")
            obj = urllib.parse.quote(f"{prefix}/{rel}", safe="")
            url = f"{emulator_url}/upload/storage/v1/b/{bucket}/o?uploadType=media&name={obj}"
            with open(path, "rb") as f:
                data = f.read()
            n += 1
            if not data:
                fs.pipe_file(f"{bucket}/{prefix}/{rel}", b"")
                continue
            req = urllib.request.Request(url, data=data, method="POST",
                                         headers={"Content-Type": "application/octet-stream"})
            with urllib.request.urlopen(req, timeout=30) as resp:
                assert resp.status == 200
    return n
