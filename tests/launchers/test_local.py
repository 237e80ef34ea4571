"""``python -m launchers.local`` with real subprocesses running a tiny fake trainer.

The fake trainer (written by the tests) records its argv, writes run.json and can fail or
sleep on request, so skip / resume / failure / parallel logic is exercised end to end without
``trm.train``.
"""

import io
import json
import os
import shlex
import sys
import textwrap

import pytest

from launchers import local

FAKE_TRAINER = textwrap.dedent(
    """
    import json, os, sys, time
    args = sys.argv[1:]
    workdir = next(a.split("=", 1)[1] for a in args if a.startswith("--workdir="))
    os.makedirs(workdir, exist_ok=True)
    start = time.time()
    with open(os.path.join(workdir, "calls.jsonl"), "a") as f:
        f.write(json.dumps({"argv": args, "omp": os.environ.get("OMP_NUM_THREADS"),
                            "pid": os.getpid()}) + "\\n")
    if os.environ.get("FAKE_STOP_FILE"):   # a trainer that saves on SIGTERM, then exits
        import signal
        def stop(signum, frame):
            with open(os.path.join(workdir, "stopped"), "w") as f:
                f.write(str(signum))
            sys.exit(143)
        signal.signal(signal.SIGTERM, stop)
    # "training" only once the handler is in place: the tests signal the run when they see it
    print("training", os.path.basename(workdir), flush=True)
    time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
    if os.environ.get("FAKE_FAIL") and os.environ["FAKE_FAIL"] in workdir:
        print("boom", file=sys.stderr)
        sys.exit(3)
    with open(os.path.join(workdir, "command.json"), "w") as f:
        json.dump({"gin_files": [a.split("=", 1)[1] for a in args if a.startswith("--gin_file=")],
                   "gin_params": [a.split("=", 1)[1] for a in args
                                  if a.startswith("--gin_param=")]}, f)
    with open(os.path.join(workdir, "run.json"), "w") as f:
        json.dump({"status": "completed", "last_step": 10, "total_steps": 10,
                   "t0": start, "t1": time.time()}, f)
    """
)


@pytest.fixture
def trainer(tmp_path, monkeypatch):
    mod_dir = tmp_path / "mods"
    mod_dir.mkdir()
    (mod_dir / "fake_trainer.py").write_text(FAKE_TRAINER)
    monkeypatch.setenv("PYTHONPATH", str(mod_dir))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("FAKE_FAIL", raising=False)
    monkeypatch.delenv("FAKE_SLEEP", raising=False)
    return "fake_trainer"


def _run(args, root, preflight=False):
    """launchers.local on the cpu_e2_2_tn sweep with the fake trainer; the preflight (real
    trm.preflight) only when asked, since the fake trainer writes no config.gin."""
    out = io.StringIO()
    rc = local.main(["--sweep=cpu_e2_2_tn", "--seeds=0", f"--root={root}",
                     "--train_module=fake_trainer"] + ([] if preflight else ["--no_preflight"])
                    + args, out=out)
    return rc, out.getvalue()


def _calls(workdir):
    path = os.path.join(workdir, "calls.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_runs_every_run_with_its_bindings(trainer, tmp_path):
    root = tmp_path / "runs"
    rc, out = _run(["--gin_param=TRAIN_STEPS=10", "--gin_param=DATA_DIR='/tmp/a b'"], root)
    assert rc == 0, out
    assert "[5/5]" in out and "ETA 0:00:00" in out and "all 5 runs completed" in out
    workdir = root / "cpu_e2_2_tn" / "t3_n6_s0"
    (call,) = _calls(workdir)
    assert call["argv"] == [
        "--gin_file=cpu_e1_1_baseline.gin", "--gin_param=H_CYCLES=3", "--gin_param=L_CYCLES=6",
        "--gin_param=SEED=0", "--gin_param=TRAIN_STEPS=10", "--gin_param=DATA_DIR='/tmp/a b'",
        f"--workdir={workdir}",
    ]
    log = (workdir / local.LAUNCHER_LOG).read_text()
    assert "training t3_n6_s0" in log and "fake_trainer" in log.splitlines()[0]


def _command(run_name, bindings=()):
    h, n = run_name[1], run_name[4]
    return {"gin_files": ["/somewhere/gin/experiments/cpu/cpu_e1_1_baseline.gin"],
            "gin_params": [f"H_CYCLES={h}", f"L_CYCLES={n}", "SEED=0", *bindings]}


def test_skips_only_runs_completed_with_the_same_config(trainer, tmp_path):
    root = tmp_path / "runs"
    done = root / "cpu_e2_2_tn" / "t2_n2_s0"
    interrupted = root / "cpu_e2_2_tn" / "t2_n6_s0"
    smoke = root / "cpu_e2_2_tn" / "t3_n4_s0"
    for workdir, status, extra in [(done, "completed", ()), (interrupted, "running", ()),
                                   (smoke, "completed", ("TRAIN_STEPS=10",))]:
        workdir.mkdir(parents=True)
        (workdir / "run.json").write_text(json.dumps({"status": status}))
        (workdir / "command.json").write_text(json.dumps(_command(workdir.name, extra)))
    rc, out = _run([], root)
    assert rc == 0, out
    assert "skip cpu_e2_2_tn/t2_n2_s0: completed" in out
    assert _calls(done) == []
    assert len(_calls(interrupted)) == 1
    assert len(_calls(smoke)) == 1  # a 10-step smoke run is not the real run
    assert "4 to run" in out
    # A second invocation finds everything completed and starts nothing.
    rc, out = _run([], root)
    assert rc == 0 and out.count("skip ") == 5
    assert len(_calls(interrupted)) == 1


def test_preflight_stops_the_sweep_before_any_run_starts(trainer, tmp_path):
    root = tmp_path / "runs"
    err = io.StringIO()
    import contextlib
    with contextlib.redirect_stderr(err):
        rc, out = _run(["--gin_param=LR=-1"], root, preflight=True)
    assert rc == 2, out
    lines = err.getvalue().splitlines()
    assert lines[0] == "error: 5 of 5 runs would not start; nothing was started:"
    assert all("LR=-1 (TrainConfig.lr) must be >= 0" in line for line in lines[1:]), lines
    assert not root.exists()


def test_runs_filter_that_matches_nothing_is_an_error(trainer, tmp_path, capsys):
    rc, _ = _run(["--runs=*t9*"], tmp_path / "runs")
    assert rc == 2 and "matches none of the cpu_e2_2_tn runs" in capsys.readouterr().err


def test_continues_past_failures_and_reports_them(trainer, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_FAIL", "t3_n4")
    root = tmp_path / "runs"
    rc, out = _run([], root)
    assert rc == 1
    assert "FAILED (exit 3) cpu_e2_2_tn/t3_n4_s0" in out
    assert "1 of 5 runs failed" in out
    assert "cpu_e2_2_tn/t3_n4_s0: see" in out
    assert (root / "cpu_e2_2_tn" / "t4_n6_s0" / "run.json").exists()  # ran after the failure
    assert "boom" in (root / "cpu_e2_2_tn" / "t3_n4_s0" / local.LAUNCHER_LOG).read_text()
    # Fixed: only the failed run is re-run.
    monkeypatch.delenv("FAKE_FAIL")
    rc, out = _run([], root)
    assert rc == 0 and "1 to run" in out


def test_parallel_runs_overlap(trainer, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_SLEEP", "0.6")
    root = tmp_path / "runs"
    rc, out = _run(["--parallel=2", "--runs=*t2_*"], root)
    assert rc == 0, out
    spans = []
    for name in ["t2_n2_s0", "t2_n6_s0"]:
        with open(root / "cpu_e2_2_tn" / name / "run.json") as f:
            data = json.load(f)
        spans.append((data["t0"], data["t1"]))
    assert max(s[0] for s in spans) < min(s[1] for s in spans), "runs did not overlap"
    assert not (root / "cpu_e2_2_tn" / "t3_n6_s0").exists()  # filtered out by --runs


def test_dry_run_and_bad_flags(trainer, tmp_path):
    root = tmp_path / "runs"
    rc, out = _run(["--dry_run"], root)
    assert rc == 0
    lines = out.splitlines()
    assert len(lines) == 5
    argv = shlex.split(lines[0])
    assert argv[:4] == [sys.executable, "-m", "fake_trainer", "--gin_file=cpu_e1_1_baseline.gin"]
    assert not root.exists()
    rc, _ = _run(["--gin_param=H_CYCLES=9"], root)  # would collapse the grid
    assert rc == 2
    rc, _ = _run(["--gin_param=SEED=1"], root)
    assert rc == 2


def test_a_fifo_run_json_never_hangs_the_launcher(trainer, tmp_path):
    root = tmp_path / "runs"
    workdir = root / "cpu_e2_2_tn" / "t2_n2_s0"
    workdir.mkdir(parents=True)
    os.mkfifo(workdir / "run.json")
    os.mkfifo(workdir / "command.json")
    rc, out = _run(["--runs=*t2_n2*", "--dry_run"], root)  # would block on open() before
    assert rc == 0 and "--workdir=" in out and "skip" not in out


@pytest.mark.parametrize("cpus,quota,parallel,expected", [
    (2, None, 2, "1"),
    (64, None, 4, "16"),
    (64, 4.0, 2, "2"),    # a container limited to 4 CPUs on a 64-core host: 4 // 2, not 32
    (64, 1.0, 2, "1"),    # never below one
    (8, 2.5, 1, "3"),
    (16, None, 1, "16"),
])
def test_each_run_gets_a_share_of_the_usable_cores(monkeypatch, cpus, quota, parallel,
                                                    expected):
    """The share caps each run's thread rule (TRM_CPU_THREADS_MAX) instead of fixing the count
    (OMP_NUM_THREADS turns the rule and the governor off: a run with two fixed threads
    collapses when other work takes a core). Runs side by side also name the launcher as their
    group (TRM_CPU_GROUP: each one's governor does not count the others as other work)."""
    from trm.runtime import device
    for name in ("OMP_NUM_THREADS", "TRM_CPU_THREADS", "TRM_CPU_THREADS_MAX"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TRM_CPU_GROUP", "1")   # an outer launcher's: never passed on as is
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)))
    monkeypatch.setattr(device, "cpu_quota", lambda: quota)
    var = "TRM_CPU_THREADS_MAX"
    env = local._child_env(parallel)
    assert env[var] == expected and "OMP_NUM_THREADS" not in env and "TRM_CPU_THREADS" not in env
    assert env.get("TRM_CPU_GROUP") == (str(os.getpid()) if parallel > 1 else None)
    monkeypatch.setenv("TRM_CPU_THREADS_MAX", "1")   # the user's lower cap wins ...
    assert local._child_env(parallel)[var] == "1"
    monkeypatch.setenv("TRM_CPU_THREADS_MAX", "999")  # ... a higher one does not
    assert local._child_env(parallel)[var] == expected
    monkeypatch.delenv("TRM_CPU_THREADS_MAX")
    for fixed in ("OMP_NUM_THREADS", "TRM_CPU_THREADS"):   # the user's fixed count wins
        monkeypatch.setenv(fixed, "7")
        env = local._child_env(parallel)
        assert env[fixed] == "7" and "TRM_CPU_THREADS_MAX" not in env
        assert "OMP_NUM_THREADS" not in env or fixed == "OMP_NUM_THREADS"
        assert "TRM_CPU_GROUP" not in env
        monkeypatch.delenv(fixed)


@pytest.mark.parametrize("bad", ["0", "two", "-3"])
def test_a_bad_thread_cap_stops_the_sweep_before_anything_starts(trainer, tmp_path, monkeypatch,
                                                                  capsys, bad):
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setenv("TRM_CPU_THREADS_MAX", bad)
    rc, _ = _run([], tmp_path / "runs")
    err = capsys.readouterr().err
    assert rc == 2 and f"TRM_CPU_THREADS_MAX='{bad}' is not a positive thread count" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("calls.jsonl"))


def _launch_and_wait(root, args, workdirs):
    """A real ``python -m launchers.local`` process over the fake trainer (runs that sleep 60 s
    and record a SIGTERM in ``stopped``), once every run in ``workdirs`` is training; returns
    the process (stdout piped, text) and the runs' pids."""
    import subprocess
    import time
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, FAKE_SLEEP="60", FAKE_STOP_FILE="1",
               PYTHONPATH=os.pathsep.join([os.environ["PYTHONPATH"], repo]))
    proc = subprocess.Popen([sys.executable, "-m", "launchers.local", "--sweep=cpu_e2_2_tn",
                             "--seeds=0", f"--root={root}", "--train_module=fake_trainer",
                             "--no_preflight", *args], env=env, cwd=repo,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not all(
            (w / "launcher.log").exists() and "training" in (w / "launcher.log").read_text()
            for w in workdirs):
        time.sleep(0.1)
    return proc, [_calls(str(w))[0]["pid"] for w in workdirs]


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP", "SIGINT"])
def test_a_stop_signal_stops_the_running_runs_and_the_launcher(trainer, tmp_path, signame):
    """A real launcher process: SIGTERM / SIGHUP (e.g. `kill`, a closed terminal) stop the
    sweep as Ctrl-C does. Each running run gets SIGTERM (the trainer saves and exits), the
    launcher says how to resume and exits 128 + the signal; no run is left running."""
    import signal
    root = tmp_path / "runs"
    workdirs = [root / "cpu_e2_2_tn" / n for n in ("t2_n2_s0", "t2_n6_s0")]
    proc, pids = _launch_and_wait(root, ["--parallel=2"], workdirs)
    proc.send_signal(getattr(signal, signame))
    out, _ = proc.communicate(timeout=60)
    signum = getattr(signal, signame)
    assert proc.returncode == 128 + signum, out
    assert f"stopped by {signame}" in out and "run the same command again to resume" in out
    assert out.count("interrupted: stopping") == 2
    for w, pid in zip(workdirs, pids):
        assert (w / "stopped").read_text() == str(int(signal.SIGTERM))   # asked to save
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)                                             # and gone
    assert not (root / "cpu_e2_2_tn" / "t3_n6_s0").exists()              # never started


def test_runs_stop_and_save_when_the_launcher_is_killed(trainer, tmp_path):
    """SIGKILL leaves the launcher no chance to stop its runs: each run gets SIGTERM from the
    kernel (Linux's parent-death signal), saves and exits instead of going on unwatched."""
    import signal
    import time
    if not sys.platform.startswith("linux"):
        pytest.skip("the parent-death signal is Linux's")
    root = tmp_path / "runs"
    workdir = root / "cpu_e2_2_tn" / "t2_n2_s0"
    proc, (pid,) = _launch_and_wait(root, ["--runs=*t2_n2_s0"], [workdir])
    assert os.getsid(pid) == pid            # a session of its own: no terminal signals
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (workdir / "stopped").exists():
        time.sleep(0.1)
    assert (workdir / "stopped").read_text() == str(int(signal.SIGTERM))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the run outlived its killed launcher")
