"""Workdir: small files, run.json, configs, the lease lock (also across processes), mirrors."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from trm.run.lock import LockLostError, WorkdirLockedError
from trm.run.record import ConfigMismatchError, RunRecord
from trm.run.storage import is_transient, retry, utc_now_iso
from trm.run.tensorboard import LocalMirror
from trm.run.workdir import Workdir

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(params=["local", "memory"])
def workdir(request, tmp_path):
    return Workdir(str(tmp_path / "run") if request.param == "local" else "memory://run")


def test_files_and_run_json(workdir):
    workdir.write_text("config.gin", "a = 1\r\n")
    assert workdir.read_text("config.gin") == "a = 1\r\n"
    workdir.write_json("command.json", {"argv": ["trm.train", "--x"]})
    assert workdir.read_json("command.json")["argv"][1] == "--x"
    assert workdir.read_json("missing.json", default=None) is None
    with pytest.raises(FileNotFoundError):
        workdir.read_text("missing.txt")
    assert workdir.exists("config.gin") and not workdir.exists("nope")
    assert workdir.listdir() == ["command.json", "config.gin"]

    start = utc_now_iso()
    RunRecord(workdir).update(status="running", start_time=start, num_params=5, world_size=1)
    data = RunRecord(workdir).update(last_step=100, status="completed", end_time=utc_now_iso())
    assert data["num_params"] == 5 and data["status"] == "completed" and data["last_step"] == 100
    assert RunRecord(workdir).read() == data and start.endswith("Z")
    with pytest.raises(ValueError, match="status"):
        RunRecord(workdir).update(status="finished")


def test_local_writes_leave_no_temporary_files(tmp_path):
    wd = Workdir(tmp_path / "run")
    for i in range(3):
        wd.write_bytes("a/b.bin", bytes([i]) * 10)
    assert os.listdir(tmp_path / "run" / "a") == ["b.bin"]
    assert wd.read_bytes("a/b.bin") == b"\x02" * 10
    assert Workdir(f"file://{tmp_path}/run").read_bytes("a/b.bin") == b"\x02" * 10


def test_ensure_config(workdir, caplog):
    assert RunRecord(workdir).ensure_config("x = 1\n") == "written"
    assert RunRecord(workdir).ensure_config("x = 1\n") == "same"
    with pytest.raises(ConfigMismatchError, match=r"(?s)-x = 1.*\+x = 2"):
        RunRecord(workdir).ensure_config("x = 2\n")
    with caplog.at_level(logging.WARNING):
        assert RunRecord(workdir).ensure_config("x = 2\n", allow_change=True) == "changed"
    assert workdir.read_text("config.gin") == "x = 2\n"
    assert any(n.startswith("config.gin.prev-") for n in workdir.listdir())


def test_second_lock_refuses_with_owner_named(workdir):
    owner = workdir.acquire_lock({"command": "trm.train --gin_file=a.gin"})
    assert owner["pid"] == os.getpid()
    other = Workdir(workdir.path)
    with pytest.raises(WorkdirLockedError) as err:
        other.acquire_lock()
    msg = str(err.value)
    assert socket.gethostname() in msg and str(os.getpid()) in msg and "a.gin" in msg
    workdir.heartbeat(force=True)
    workdir.release_lock()
    other.acquire_lock()
    other.release_lock()
    assert not workdir.exists("LOCK")


def _write_lock(wd, **fields):
    record = {"owner_id": "old", "host": "some-other-host", "pid": 4242, "heartbeat": time.time(),
              "start_time": "2026-01-01T00:00:00Z", "stale_after_s": 600.0, "info": {}}
    record.update(fields)
    wd.write_json("LOCK", record)


def test_stale_lock_takeover(workdir, caplog):
    _write_lock(workdir, heartbeat=time.time() - 3600)          # lease expired
    with caplog.at_level(logging.WARNING):
        workdir.acquire_lock()
    assert "last heartbeat 3600 s ago" in caplog.text
    assert workdir.read_json("LOCK")["pid"] == os.getpid()
    workdir.release_lock()

    _write_lock(workdir, host=socket.gethostname(), pid=2 ** 22 + 12345)   # dead process here
    other = Workdir(workdir.path)
    other.acquire_lock()
    other.release_lock()

    _write_lock(workdir)                                          # fresh, other host: refused
    with pytest.raises(WorkdirLockedError, match="some-other-host"):
        Workdir(workdir.path).acquire_lock()
    forced = Workdir(workdir.path)
    forced.acquire_lock(force=True)
    forced.release_lock()


def test_heartbeat_detects_lost_lock(workdir):
    workdir.acquire_lock(background=False)
    _write_lock(workdir, owner_id="thief")
    with pytest.raises(LockLostError, match="some-other-host"):
        workdir.heartbeat(force=True)
    assert not workdir.holds_lock


def test_background_heartbeat_keeps_lease_fresh_and_reports_loss(workdir, caplog):
    workdir.acquire_lock(heartbeat_every_s=0.05)
    first = workdir.read_json("LOCK")["heartbeat"]
    deadline = time.time() + 10
    while workdir.read_json("LOCK")["heartbeat"] == first and time.time() < deadline:
        time.sleep(0.05)
    assert workdir.read_json("LOCK")["heartbeat"] > first
    workdir.heartbeat()                                 # still ours: no error
    with caplog.at_level(logging.ERROR):
        # A heartbeat in flight (read ours, then write) can overwrite one theft: steal until
        # the heartbeat thread notices.
        deadline = time.time() + 10
        while workdir.holds_lock and time.time() < deadline:
            _write_lock(workdir, owner_id="thief")
            time.sleep(0.2)
        with pytest.raises(LockLostError, match="some-other-host"):
            workdir.heartbeat()
        workdir.release_lock()                          # joins the heartbeat thread
    assert "no longer ours" in caplog.text
    assert workdir.read_json("LOCK")["owner_id"] == "thief"   # not ours: left alone


def test_lock_held_by_another_process(tmp_path):
    path = str(tmp_path / "run")
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {REPO!r})
        from trm.run.workdir import Workdir
        wd = Workdir({path!r})
        wd.acquire_lock({{"command": "child"}})
        print("locked", flush=True)
        sys.stdin.readline()
        wd.release_lock()
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(WorkdirLockedError, match=f"pid {child.pid}"):
            Workdir(path).acquire_lock()
        child.kill()                               # dies without releasing: stale on this host
        child.wait()
        wd = Workdir(path)
        wd.acquire_lock()
        assert wd.read_json("LOCK")["pid"] == os.getpid()
        wd.release_lock()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_memory_mirror_sync():
    wd = Workdir("memory://mirror")
    mirror = LocalMirror(wd, "tb")
    local = mirror.path
    assert os.path.isdir(local) and not local.startswith("memory")
    with open(os.path.join(local, "a.txt"), "w") as f:
        f.write("1")
    assert mirror.sync() == ["a.txt"]
    assert mirror.sync() == []                # unchanged: nothing uploaded
    time.sleep(0.01)
    with open(os.path.join(local, "a.txt"), "a") as f:
        f.write("2")
    assert mirror.sync() == ["a.txt"]
    assert wd.read_text("tb/a.txt") == "12"
    mirror.cleanup()
    assert not os.path.exists(local)


def test_retry_classification():
    assert is_transient(ConnectionResetError()) and is_transient(TimeoutError())
    assert not is_transient(FileNotFoundError()) and not is_transient(ValueError())

    class HttpError(Exception):
        def __init__(self, code):
            super().__init__(code)
            self.code = code

    assert is_transient(HttpError(503)) and not is_transient(HttpError(404))
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise HttpError(503)
        return "ok"

    assert retry(flaky, what="test", base_delay_s=0.001) == "ok" and len(calls) == 3
    with pytest.raises(json.JSONDecodeError):
        retry(lambda: json.loads("{"), what="test", base_delay_s=0.001)


def test_active_seconds_sum_over_restarts_and_exclude_the_wait(tmp_path):
    """run.json's ``active_s`` counts the time the run's processes ran, over every restart,
    not the time a preempted run waited (start_time..end_time counts both)."""
    from trm.run.record import RunRecord
    from trm.run.storage import Storage

    st = Storage(str(tmp_path / "run"))
    first = RunRecord(st)
    first.start(resumed=False, step=0, fields={})
    time.sleep(0.3)
    first.log(5)
    first.finish("preempted", 5)
    after_first = RunRecord(st).read()["active_s"]
    assert 0.3 <= after_first < 2
    time.sleep(0.5)  # the run waits for its relaunch
    second = RunRecord(st)
    second.start(resumed=True, step=5, fields={})
    time.sleep(0.2)
    second.finish("completed", 10)
    data = RunRecord(st).read()
    assert after_first + 0.2 <= data["active_s"] < after_first + 1.5
    assert data["status"] == "completed" and data["resumed_at_step"] == 5


def test_run_json_says_whether_the_source_tree_had_uncommitted_changes(tmp_path, monkeypatch):
    """Issue #21: git_commit alone does not say what ran when the tree was edited."""
    import shutil

    import trm.run.record as record_module
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    tree = tmp_path / "src"
    (tree / "trm" / "run").mkdir(parents=True)
    source = tree / "trm" / "run" / "record.py"
    source.write_text("# a checkout\n")
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "x"]):
        subprocess.run(["git", *args], cwd=tree, check=True, env=env, capture_output=True)
    monkeypatch.setattr(record_module, "__file__", str(source))
    record = RunRecord(Workdir(str(tmp_path / "clean")))
    record.start(resumed=False, step=0, fields={})
    clean = record.read()
    assert len(clean["git_commit"]) == 40 and clean["git_dirty"] is False
    source.write_text("# edited, not committed\n")
    record = RunRecord(Workdir(str(tmp_path / "dirty")))
    record.start(resumed=False, step=0, fields={})
    dirty = record.read()
    assert dirty["git_commit"] == clean["git_commit"] and dirty["git_dirty"] is True
