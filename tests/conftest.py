"""Test-wide settings: one torch thread, clean gin state, a restored registry."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

import gin  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

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
