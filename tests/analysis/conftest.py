"""Fixtures for the analysis tests: synthetic run roots and a bucket on the shared emulator."""

from __future__ import annotations

import os
import sys

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
