"""A workdir others can write is data (issue #21): pruning and removal never follow links out of
the run; a COMMIT's file list names plain files of its own step folder, read only when they are
regular files of the size it states, so nothing it names can hang or leave the run. Real files,
real links, a real FIFO."""

from __future__ import annotations

import json
import logging
import os
import threading

import pytest
import torch

from trm.run.checkpoints import CheckpointError, CheckpointManager, step_dir
from trm.run.storage import Storage, UntrustedFileError
from trm.run.workdir import Workdir


def _state(step):
    return {"step": step, "w": torch.full((4,), float(step))}


def _run(path, steps, keep=0):
    mgr = CheckpointManager(Workdir(str(path)), keep=keep, async_save=False)
    for s in steps:
        mgr.save(s, _state(s))
    return mgr


def _bounded(fn, seconds=30):
    """fn() in a thread; fails the test if it does not return in time (a hang)."""
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["error"] = e
    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), "hung"
    if "error" in box:
        raise box["error"]
    return box["value"]


# -- pruning and removal never follow links out of the run --------------------------------------
def test_pruning_a_linked_step_folder_removes_the_link_not_the_other_runs_checkpoint(tmp_path):
    victim = tmp_path / "victim"
    _run(victim, [1]).close()
    victim_step = victim / step_dir(1)
    before = sorted(os.listdir(victim_step))
    run = tmp_path / "run"
    os.makedirs(run / "checkpoints")
    os.symlink(victim_step, run / step_dir(1))          # planted by someone with write access
    (run / "checkpoints" / "step_000000000").mkdir()
    os.symlink(victim_step / "COMMIT", run / "checkpoints" / "step_000000000" / "COMMIT")
    mgr = _run(run, [2, 3, 4], keep=1)                    # prunes 1, 2, 3 and the garbage
    mgr.close()
    assert sorted(os.listdir(victim_step)) == before      # the other run is untouched
    assert json.load(open(victim_step / "COMMIT"))["step"] == 1
    assert not os.path.lexists(run / step_dir(1))          # our link is gone
    assert CheckpointManager(str(victim)).restore()[0] == 1
    assert mgr.steps() == [4]


def test_a_checkpoints_folder_linked_to_another_run_is_neither_written_nor_pruned(tmp_path):
    victim = tmp_path / "victim"
    _run(victim, [1, 2]).close()
    snapshot = {n: sorted(os.listdir(victim / "checkpoints" / n))
                for n in os.listdir(victim / "checkpoints")}
    run = tmp_path / "run"
    run.mkdir()
    os.symlink(victim / "checkpoints", run / "checkpoints")
    mgr = CheckpointManager(Workdir(str(run)), keep=1, async_save=False)
    assert mgr.restore() is None                          # nothing of the other run is loaded
    with pytest.raises(UntrustedFileError, match="leads out of .*symbolic link"):
        mgr.save(3, _state(3))
    assert {n: sorted(os.listdir(victim / "checkpoints" / n))
            for n in os.listdir(victim / "checkpoints")} == snapshot


def test_storage_removes_links_and_refuses_names_out_of_the_folder(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    folder = tmp_path / "run"
    folder.mkdir()
    os.symlink(outside, folder / "linked")
    st = Storage(str(folder))
    st.remove_tree("linked")
    assert (outside / "keep").read_text() == "x" and not os.path.lexists(folder / "linked")
    os.symlink(outside, folder / "linked")
    for op in (lambda: st.remove("linked/keep"), lambda: st.read_bytes("linked/keep"),
               lambda: st.write_text("linked/new", "y"), lambda: st.read_text("../outside/keep")):
        with pytest.raises(UntrustedFileError):
            op()
    assert sorted(os.listdir(outside)) == ["keep"]


# -- a COMMIT names plain files of its folder, read bounded ------------------------------------
def _tamper(run, step, name, make=None):
    """Points the COMMIT of ``step`` at ``name`` (with state.pt's size and hash)."""
    folder = run / step_dir(step)
    commit = json.load(open(folder / "COMMIT"))
    meta = commit["files"].pop("state.pt")
    commit["files"][name] = meta
    if make is not None:
        os.unlink(folder / "state.pt")
        make(folder / "state.pt", meta["size"])
    (folder / "COMMIT").write_text(json.dumps(commit))


@pytest.mark.parametrize("variant", ["dotdot", "absolute", "fifo", "dev_zero", "big", "slash"])
def test_a_commit_naming_files_outside_or_not_regular_never_hangs(tmp_path, caplog, variant):
    run = tmp_path / "run"
    _run(run, [1, 2]).close()
    elsewhere = tmp_path / "x"
    elsewhere.write_bytes((run / step_dir(2) / "state.pt").read_bytes())
    if variant == "dotdot":
        _tamper(run, 2, "../../../x")
    elif variant == "absolute":
        _tamper(run, 2, "/dev/zero")
    elif variant == "slash":
        _tamper(run, 2, "sub/state.pt")
    elif variant == "fifo":
        _tamper(run, 2, "state.pt", lambda p, n: os.mkfifo(p))
    elif variant == "dev_zero":
        _tamper(run, 2, "state.pt", lambda p, n: os.symlink("/dev/zero", p))
    else:  # a regular file larger than COMMIT says: refused before it is read
        _tamper(run, 2, "state.pt", lambda p, n: p.write_bytes(b"\0" * (n + 10_000_000)))
    mgr = CheckpointManager(str(run), async_save=False)
    with caplog.at_level(logging.WARNING):
        step, _ = _bounded(lambda: mgr.restore("latest"))
    assert step == 1                                      # the last good one
    assert any("step_000000002" in r.getMessage() for r in caplog.records)
    with pytest.raises(CheckpointError) as e:
        _bounded(lambda: CheckpointManager(str(run), async_save=False).restore(2))
    assert "step_000000002" in str(e.value) and "\n" not in str(e.value)
    assert mgr.steps() == [1]
    assert elsewhere.exists()


def test_a_commit_with_a_malformed_file_list_is_skipped(tmp_path):
    run = tmp_path / "run"
    _run(run, [1, 2, 3, 4]).close()
    for step, files in ((2, {"state.pt": {"size": "9", "sha256": "0" * 64}}),
                        (3, {f"f{i}": {"size": 1, "sha256": "0" * 64} for i in range(100)}),
                        (4, [])):
        path = run / step_dir(step) / "COMMIT"
        commit = json.load(open(path))
        commit["files"] = files
        path.write_text(json.dumps(commit))
    mgr = CheckpointManager(str(run), async_save=False)
    assert _bounded(lambda: mgr.restore())[0] == 1
    assert mgr.steps() == [1]
