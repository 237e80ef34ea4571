"""The launcher tests drive launchers.tpu with made-up gin files and fake trainers: the
local preflight (trm.preflight) is off unless a test turns it on (test_tpu_preflight)."""

import pytest


@pytest.fixture(autouse=True)
def _no_tpu_preflight(monkeypatch):
    monkeypatch.setenv("TRM_LAUNCH_PREFLIGHT", "0")
