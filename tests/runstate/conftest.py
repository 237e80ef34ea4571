"""Fixtures for the run-state tests: a real local GCS emulator, fault proxy, clean memory://."""

from __future__ import annotations

import os
import sys

import pytest

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)


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
