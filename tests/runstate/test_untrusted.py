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
        except BaseException as e:
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


# -- a saved config.gin is data: reading it runs no code ------------------------------------------
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _attack(marker):
    """With plain gin parsing, this config runs ``touch MARKER`` when the config is built."""
    return ("from __gin__ import dynamic_registration\nimport os\nimport trm.experiment\n"
            f"os.system.command = 'touch {marker}'\n"
            "trm.experiment.TrainConfig.seed = @os.system()\n")


def _config_variants(tmp_path, marker):
    module = tmp_path / "mods" / "evil_mod.py"
    module.parent.mkdir()
    module.write_text(f"open({str(marker)!r}, 'w').close()\n")
    (tmp_path / "inc.gin").write_text("import evil_mod\n")
    return {
        "dynamic_registration": (_attack(marker), "imports a module"),
        "import": ("import evil_mod\nTrainConfig.seed = 1\n", "`import evil_mod` imports"),
        "include": (f"include '{tmp_path / 'inc.gin'}'\n", "reads another file"),
        "unknown_reference": ("SEED = @os.system()\nTrainConfig.seed = %SEED\n",
                              "@os.system is not a trm configurable"),
        "unknown_configurable": ("os.system.command = 'x'\n", "'os.system' is not a trm"),
        "unclosed_bracket": ("TrainConfig.seed = (1,\n", "Syntax error in"),
        "deep_nesting": ("TrainConfig.seed = " + "[" * 5000 + "]" * 5000 + "\n",
                         "nests values too deeply"),
    }


@pytest.mark.parametrize("variant", ["dynamic_registration", "import", "include",
                                     "unknown_reference", "unknown_configurable",
                                     "unclosed_bracket", "deep_nesting"])
def test_eval_reads_a_saved_config_as_data(tmp_path, monkeypatch, variant):
    from trm.eval import evaluate_run
    from trm.gin_edge import ConfigError
    marker = tmp_path / "PWNED"
    text, needle = _config_variants(tmp_path, marker)[variant]
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.gin").write_text(text)
    with pytest.raises(ConfigError) as e:
        evaluate_run(str(run))
    assert needle in str(e.value) and str(run / "config.gin") in str(e.value)
    assert "\n" not in str(e.value)
    assert not marker.exists()
    import sys
    assert "evil_mod" not in sys.modules


def test_eval_cli_refuses_config_code_in_one_line(tmp_path):
    import subprocess
    import sys
    marker = tmp_path / "PWNED"
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.gin").write_text(_attack(marker))
    proc = subprocess.run([sys.executable, "-m", "trm.eval", f"--workdir={run}"],
                          capture_output=True, text=True, cwd=REPO, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="3"))
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("trm.eval: ") and "line 1: `from __gin__ import" in last
    assert not marker.exists()


def test_eval_reads_a_saved_config_on_gs_as_data(gcs_bucket, tmp_path):
    import fsspec
    from trm.eval import evaluate_run
    from trm.gin_edge import ConfigError
    marker = tmp_path / "PWNED"
    url = f"{gcs_bucket}/runs/shared"
    fs = fsspec.filesystem("gs", token="anon")
    with fs.open(f"{url}/config.gin", "wb") as f:
        f.write(_attack(marker).encode())
    fs.invalidate_cache()
    with pytest.raises(ConfigError, match=r"gs://.*/runs/shared/config.gin, line 1: "):
        evaluate_run(url)
    assert not marker.exists()


def test_an_unclosed_bracket_in_a_gin_file_is_one_line(tmp_path):
    from trm import gin_edge
    bad = tmp_path / "bad.gin"
    bad.write_text("TRAIN_STEPS = (1,\n")
    with pytest.raises(gin_edge.ConfigError, match=r"Syntax error in gin file .*bad.gin: EOF"):
        gin_edge.parse([str(bad)], [], finalize=False)
    with pytest.raises(gin_edge.ConfigError, match=r"Syntax error in gin binding"):
        gin_edge.parse([], ["TrainConfig.seed = [1"], finalize=False)


# -- corrupt run files: one line, or a stale lock taken over; never a traceback or a hang -------
@pytest.mark.parametrize("content", [
    b"[", b"[]", b'"x"', b"\xff\xfe", b'{"owner_id": "a", "heartbeat": "abc", "pid": 1}',
    b'{"owner_id": "a", "heartbeat": NaN, "pid": 1}',
    b'{"owner_id": "a", "heartbeat": 1e300, "pid": 1, "stale_after_s": 180}',
    b'{"owner_id": "a", "heartbeat": 1e300, "pid": 1, "stale_after_s": 1e300}',
    b'{"owner_id": "a", "heartbeat": 0, "pid": 0, "host": "HOST"}', "fifo", "link"])
def test_a_corrupt_lock_is_taken_over_as_stale(tmp_path, caplog, content):
    import socket
    run = tmp_path / "run"
    run.mkdir()
    other = tmp_path / "other_LOCK"
    other.write_text("{}")
    if content == "fifo":
        os.mkfifo(run / "LOCK")
    elif content == "link":
        os.symlink(other, run / "LOCK")
    else:
        (run / "LOCK").write_bytes(content.replace(b"HOST", socket.gethostname().encode()))
    wd = Workdir(str(run))
    with caplog.at_level(logging.WARNING):
        _bounded(lambda: wd.acquire_lock(background=False))
    assert "Taking over the lock" in caplog.text
    wd.heartbeat(force=True)
    wd.release_lock()
    assert not os.path.lexists(run / "LOCK") and other.read_text() == "{}"


@pytest.mark.parametrize("content", [b'{"status": "runn', b"[1, 2]", b"\xff\xfe\x00", "fifo"])
def test_a_corrupt_run_json_is_one_line(tmp_path, content):
    from trm.run.record import RunRecord, RunRecordError
    run = tmp_path / "run"
    run.mkdir()
    if content == "fifo":
        os.mkfifo(run / "run.json")
    else:
        (run / "run.json").write_bytes(content)
    record = RunRecord(Workdir(str(run)))
    with pytest.raises(RunRecordError) as e:
        _bounded(record.read)
    assert str(run / "run.json") in str(e.value) and "\n" not in str(e.value)
    assert "move it aside" in str(e.value)
    record.fail(RuntimeError("x"))                       # logs one line, never raises


def test_folders_where_files_belong_and_files_where_folders_belong(tmp_path):
    """run.json, LOCK or COMMIT that are folders, a step 'folder' or checkpoints/ that is a
    file: one line or skipped, never a traceback."""
    from trm.run.lock import WorkdirLockedError
    from trm.run.record import RunRecord, RunRecordError
    run = tmp_path / "run"
    _run(run, [1, 2]).close()
    (run / "run.json").mkdir()
    with pytest.raises(RunRecordError, match="run.json"):
        RunRecord(Workdir(str(run))).read()
    (run / "LOCK").mkdir()
    with pytest.raises(WorkdirLockedError, match="remove it by hand"):
        Workdir(str(run)).acquire_lock(background=False)
    os.unlink(run / step_dir(2) / "COMMIT")
    (run / step_dir(2) / "COMMIT").mkdir()
    (run / "checkpoints" / "step_000000003").write_text("not a folder")
    mgr = CheckpointManager(str(run), keep=1, async_save=False)
    assert mgr.restore()[0] == 1
    mgr.save(4, _state(4))                     # prunes the broken ones, the file included
    assert sorted(os.listdir(run / "checkpoints")) == ["step_000000001", "step_000000004"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "checkpoints").write_text("a file")
    assert CheckpointManager(str(other), async_save=False).restore() is None


def test_remote_reads_are_bounded_before_reading(tmp_path):
    """The same checks on an object store (memory://, as gcsfs): a file larger than its bound
    is refused from its stated size, before its content is fetched."""
    run = Workdir("memory://bounded")
    mgr = CheckpointManager(run, async_save=False)
    for s in (1, 2):
        mgr.save(s, _state(s))
    size = run.size(f"{step_dir(2)}/state.pt")
    run.write_bytes(f"{step_dir(2)}/state.pt", b"\0" * (size + 1_000_000))
    with pytest.raises(UntrustedFileError, match="more than the"):
        run.read_bytes(f"{step_dir(2)}/state.pt", max_bytes=size)
    assert CheckpointManager("memory://bounded", async_save=False).restore()[0] == 1
    run.write_bytes("run.json", b"{" * 100)
    with pytest.raises(UntrustedFileError):
        run.read_text("run.json", max_bytes=10)
    with pytest.raises(UntrustedFileError, match="leads out"):
        run.read_bytes("checkpoints/../../elsewhere")
