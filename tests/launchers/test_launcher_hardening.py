"""Launcher hardening: hostile values never execute, legitimate ones arrive intact.

Every command the launchers print (``--dry_run``) or run is executed here by real ``bash``
with stub binaries first on ``PATH``: a fake ``gcloud`` that records its argv and runs the
``ssh --command`` script in a fake worker home (again under bash), and, for that script, stub
``python`` / ``pip`` / ``git`` / ``tar`` / ``tail`` / ``setsid`` / ``nohup``. Each setting gets
hostile values (``$(...)``, backquotes, ``;``, quotes, newlines, ``&&``, ``|``, ...) from the
command line, from a ``--config`` file and from ``TRM_TPU_*`` variables. A hostile value either
is rejected with one line naming the setting and its pattern (settings with a grammar) or
reaches the stub byte for byte (free-form values: gin files and bindings, env values,
``find_links``, local paths); either way no marker file is ever created.
"""

import io
import json
import os
import shlex
import subprocess
import sys
import textwrap
import time

import pytest

from launchers import common, local, remote, tpu, tpu_config
from launchers.named_sweeps import Run, get_sweep


def hostile_values(m):
    """Shell metacharacter attacks; each one, if executed, creates a file in ``m``."""
    return [
        f"$(touch {m}/dollar)",
        f"`touch {m}/backquote`",
        f"; touch {m}/semicolon",
        f"x' ; touch {m}/squote ; '",
        f'x" ; touch {m}/dquote ; "',
        f"x\ntouch {m}/newline",
        f"&& touch {m}/and",
        f"| touch {m}/pipe",
        f"--x=$(touch {m}/option)",
        f"\\\"; touch {m}/backslash; \\'",
        f"$IFS${{IFS}}$(touch${{IFS}}{m}/ifs)",
    ]


def markers(m):
    return sorted(os.listdir(m))


def wait_until_gone(pidfile, timeout=10):
    """Waits for the process of a trm pid file to exit (the next launch would see it busy)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pidfile.exists():
            pid = pidfile.read_text().strip()
            if pid and not os.path.exists(f"/proc/{pid}/cmdline"):
                return
        time.sleep(0.05)
    raise AssertionError(f"{pidfile}: still running")


STUB = textwrap.dedent(
    """\
    import json, os, subprocess, sys
    prog = os.path.basename(sys.argv[0])
    args = sys.argv[1:]
    watch = [k for k in os.environ.get("STUB_WATCH", "").split(",") if k]
    record = {"prog": prog, "argv": args, "cwd": os.getcwd(),
              "env": {k: os.environ.get(k) for k in watch}}
    with open(os.environ["STUB_LOG"], "a") as f:
        f.write(json.dumps(record) + "\\n")
    if prog == "gcloud" and args[:4] == ["compute", "tpus", "tpu-vm", "ssh"]:
        # The worker: its login shell runs the --command script in its home directory.
        home = os.environ["FAKE_VM_HOME"]
        script = args[args.index("--command") + 1]
        sys.exit(subprocess.run(["bash", "-c", script], cwd=home,
                                env={**os.environ, "HOME": home}).returncode)
    if prog.startswith("py") and args[:1] == ["-c"] and "sys.argv[1]" in args[1]:
        sys.exit(1)  # trm_done's probe: the run is not completed
    """
)

PYTHON = "py-stub3"  # the interpreter name on the fake worker
STUB_NAMES = ["gcloud", PYTHON, "pip", "pip3", "git", "tar", "tail"]
PASS_THROUGH = ["setsid", "nohup"]


class Stubs:
    """A bin directory of stubs, a fake worker home, a marker directory and the stub log."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.bin = tmp_path / "bin"
        self.home = tmp_path / "vm-home"
        self.m = tmp_path / "markers"
        self.cwd = tmp_path / "cwd"
        for d in (self.bin, self.home, self.m, self.cwd):
            d.mkdir()
        (self.home / "code.d" / "trm+1").mkdir(parents=True)  # what `setup` unpacks
        self.log = tmp_path / "stub.jsonl"
        for name in STUB_NAMES:
            path = self.bin / name
            path.write_text(f"#!{sys.executable} -S\n{STUB}")
            path.chmod(0o755)
        for name in PASS_THROUGH:
            path = self.bin / name
            path.write_text('#!/bin/sh\nexec "$@"\n')
            path.chmod(0o755)
        self.hostile = hostile_values(self.m)
        self.env = {
            "PATH": f"{self.bin}:{os.environ['PATH']}",
            "HOME": str(tmp_path / "local-home"),
            "FAKE_VM_HOME": str(self.home),
            "STUB_LOG": str(self.log),
            "STUB_WATCH": "PJRT_DEVICE," + ",".join(f"TRM_H{i}" for i in range(len(self.hostile))),
            "OMP_NUM_THREADS": "1",
        }

    def bash(self, text):
        """Runs ``text`` (the launcher's printed commands) as a bash script, like a paste."""
        return subprocess.run(["bash", "-c", text], cwd=self.cwd, env=self.env,
                              capture_output=True, text=True, timeout=60)

    def on_worker(self, script):
        """Runs a remote script as the worker's login shell would (HOME = the worker home)."""
        return subprocess.run(["bash", "-c", script], cwd=self.home,
                              env={**self.env, "HOME": str(self.home)},
                              capture_output=True, text=True, timeout=60)

    def records(self, prog=None):
        if not self.log.exists():
            return []
        rows = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [r for r in rows if prog is None or r["prog"] == prog]

    def trainer_records(self, module):
        return [r for r in self.records(PYTHON) if r["argv"][:2] == ["-m", module]]

    def wait_for_trainers(self, module, count, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.trainer_records(module)
            if len(found) >= count:
                return found
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {count} trainer calls: {self.records()}")


@pytest.fixture
def stubs(tmp_path):
    return Stubs(tmp_path)


def dry_output(argv, environ):
    out, err = io.StringIO(), io.StringIO()
    real_out, real_err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        rc = tpu.main([*argv, "--dry_run"], environ=environ)
    finally:
        sys.stdout, sys.stderr = real_out, real_err
    assert rc == 0, err.getvalue()
    return out.getvalue()


# Legitimate values that use every character their grammar allows.
LEGIT = {
    "name": "trm-vm1",
    "project": "my-proj-1",
    "zone": "us-central2-b",
    "accelerator_type": "v5litepod-8",
    "runtime_version": "tpu-vm.v2-alpha_x",
    "bucket": "gs://my.bkt_1/",
    "root": "/st+udy/v.1/",
    "python": PYTHON,
    "train_module": "fake_pkg.train_x",
    "remote_dir": "code.d/trm+1",
    "log_dir": "logs.d/trm-logs",
}
FLAGS = ["name", "project", "zone", "accelerator_type", "runtime_version", "bucket", "root",
         "python", "train_module"]
RUNS_URL = "gs://my.bkt_1/st+udy/v.1"


def settings_from(source, stubs, tmp_path, extra=None):
    """(argv, environ) giving LEGIT + hostile env values + ``extra`` from one source."""
    values = dict(LEGIT, **(extra or {}))
    env_vals = {f"TRM_H{i}": h for i, h in enumerate(stubs.hostile)}
    if source == "flags":
        file_part = {k: values.pop(k) for k in ("remote_dir", "log_dir")}
        (tmp_path / "rest.json").write_text(json.dumps(file_part))
        argv = [f"--{k}={v}" for k, v in values.items()]
        argv += [f"--env={k}={v}" for k, v in env_vals.items()]
        return argv + [f"--config={tmp_path / 'rest.json'}"], {}
    if source == "config":
        # The config file's own path is hostile too: it is only ever opened, never a word.
        cfg_dir = tmp_path / f"cfg$(touch {stubs.m}/cfgdir)"
        cfg_dir.mkdir(parents=True, exist_ok=True)
        (cfg_dir / "launch.json").write_text(json.dumps({**values, "env": env_vals}))
        return [f"--config={cfg_dir / 'launch.json'}"], {}
    environ = {f"TRM_TPU_{k.upper()}": v for k, v in values.items()}
    environ["TRM_TPU_ENV"] = ",".join(f"{k}={v}" for k, v in env_vals.items())
    return [], environ


SOURCES = ["flags", "config", "env"]


def _scope():
    return [f"--project={LEGIT['project']}", f"--zone={LEGIT['zone']}"]


@pytest.mark.parametrize("source", SOURCES)
def test_launch_and_sweep_quote_every_value(source, stubs, tmp_path):
    settings, environ = settings_from(source, stubs, tmp_path)
    gin_files = [f"{h}.gin" for h in stubs.hostile]
    bindings = [f"H{i}={h}" for i, h in enumerate(stubs.hostile)]
    argv = ["launch", *settings, *[f"--gin_file={g}" for g in gin_files],
            *[f"--gin_param={b}" for b in bindings], "--run_name=exp.1/a+b-c"]
    result = stubs.bash(dry_output(argv, environ))
    assert result.returncode == 0, result.stderr
    (call,) = stubs.wait_for_trainers("fake_pkg.train_x", 1)
    assert call["argv"] == ["-m", "fake_pkg.train_x", *[f"--gin_file={g}" for g in gin_files],
                            *[f"--gin_param={b}" for b in bindings],
                            f"--workdir={RUNS_URL}/exp.1/a+b-c"]
    assert call["cwd"] == str(stubs.home / "code.d" / "trm+1")
    assert call["env"] == {"PJRT_DEVICE": "TPU",
                           **{f"TRM_H{i}": h for i, h in enumerate(stubs.hostile)}}
    (ssh,) = [r for r in stubs.records("gcloud") if "ssh" in r["argv"]]
    assert ssh["argv"][:8] == ["compute", "tpus", "tpu-vm", "ssh", "trm-vm1", *_scope(),
                               "--worker=all"]
    log = stubs.home / "logs.d" / "trm-logs" / "exp.1" / "a+b-c.log"
    deadline = time.monotonic() + 10
    while not log.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "starting exp.1/a+b-c" in log.read_text()
    wait_until_gone(log.with_suffix(".pid"))

    # The sweep queue nests the trainer one shell deeper (bash -c inside the script).
    stubs.log.unlink()
    sweep_runs = get_sweep("e2_2_tn").runs([0])
    argv = ["sweep", *settings, "--sweep=e2_2_tn", "--seeds=0",
            *[f"--gin_param={b}" for b in bindings]]
    result = stubs.bash(dry_output(argv, environ))
    assert result.returncode == 0, result.stderr
    calls = stubs.wait_for_trainers("fake_pkg.train_x", len(sweep_runs))
    by_workdir = {c["argv"][-1]: c for c in calls}
    for run in sweep_runs:
        call = by_workdir[f"--workdir={RUNS_URL}/{run.name}"]
        assert call["argv"][2:-1] == ([f"--gin_file={g}" for g in run.gin_files]
                                      + [f"--gin_param={b}" for b in run.bindings + bindings])
        assert call["env"]["TRM_H3"] == stubs.hostile[3]
    time.sleep(0.2)  # let the queue print its last line
    assert markers(stubs.m) == []


@pytest.mark.parametrize("source", SOURCES)
def test_setup_quotes_every_value(source, stubs, tmp_path):
    find_links = "https://x.example/i?" + "".join(stubs.hostile)
    # A local source directory whose path is hostile: argv only, never a shell word.
    src = f"{tmp_path}/src$(touch {stubs.m}/src)`touch {stubs.m}/src2`;x"
    settings, environ = settings_from(source, stubs, tmp_path,
                                      {"find_links": find_links, "source": src})
    if source == "flags":
        settings = [s for s in settings if not s.startswith(("--find_links", "--source"))]
        settings += [f"--find_links={find_links}", f"--source={src}"]
    result = stubs.bash(dry_output(["setup", *settings], environ))
    assert result.returncode == 0, result.stderr
    (git,) = stubs.records("git")
    assert git["argv"] == ["-C", src, "archive", "--format=tar.gz", "--prefix=trm/",
                           "--output=dist/trm-src.tar.gz", "HEAD"]
    scp, ssh = stubs.records("gcloud")
    assert scp["argv"] == ["compute", "tpus", "tpu-vm", "scp", f"{src}/dist/trm-src.tar.gz",
                           "trm-vm1:trm-src.tar.gz", *_scope(), "--worker=all"]
    (tar,) = stubs.records("tar")
    assert tar["argv"] == ["-xzf", "trm-src.tar.gz", "-C", "code.d/trm+1", "--strip-components=1"]
    pips = [r["argv"] for r in stubs.records(PYTHON)]
    assert ["-m", "pip", "install", "-e", "./code.d/trm+1[tpu]", "-f", find_links] in pips
    assert markers(stubs.m) == []

    # A git source whose URL uses every URL character the grammar allows.
    stubs.log.unlink()
    url = f"https://h.example/o/x$(touch$IFS{stubs.m}/git1);touch$IFS{stubs.m}/git2&y(z).git"
    settings, environ = settings_from(source, stubs, tmp_path,
                                      {"source": f"git+{url}@v1.2/rc+1"})
    if source == "flags":
        settings = [s for s in settings if not s.startswith("--source")]
        settings.append(f"--source=git+{url}@v1.2/rc+1")
    result = stubs.bash(dry_output(["setup", *settings], environ))
    assert result.returncode == 0, result.stderr
    assert [r["argv"] for r in stubs.records("git")] == [
        ["clone", url, "code.d/trm+1"], ["-C", "code.d/trm+1", "checkout", "v1.2/rc+1"]]
    assert markers(stubs.m) == []


def test_other_verbs_quote_every_value(stubs, tmp_path):
    settings, environ = settings_from("flags", stubs, tmp_path)
    dest = f"{tmp_path}/dl$(touch {stubs.m}/dl);`touch {stubs.m}/dl2`"
    sdist = f"{tmp_path}/d$(touch {stubs.m}/sd)/trm-0.1.tar.gz"
    script = "".join(
        dry_output(argv, environ)
        for argv in [
            ["create", *settings, "--spot", "--vms=trm-a,trm-b"],
            ["setup", *settings, f"--source={sdist}"],
            ["status", *settings, "--run=exp.1/a+b-c"],
            ["logs", *settings, "--run=exp.1/a+b-c", "--worker=1-3", "--lines=7"],
            ["logs", *settings, "--sweep=e2_2_tn"],
            ["download", *settings, "--run=exp.1/a+b-c", f"--dest={dest}"],
            ["delete", *settings, "--yes"],
        ]
    )
    result = stubs.bash(script)
    assert result.returncode == 0, result.stderr
    gcloud = [r["argv"] for r in stubs.records("gcloud")]
    tpu_cmd = ["compute", "tpus", "tpu-vm"]
    assert gcloud[0] == [*tpu_cmd, "create", "trm-a", *_scope(), "--accelerator-type=v5litepod-8",
                         "--version=tpu-vm.v2-alpha_x", "--spot"]
    assert gcloud[1][4] == "trm-b"
    assert gcloud[2] == [*tpu_cmd, "scp", sdist, "trm-vm1:trm-0.1.tar.gz", *_scope(),
                         "--worker=all"]
    assert gcloud[4] == [*tpu_cmd, "describe", "trm-vm1", *_scope(), "--format=value(state)"]
    assert gcloud[6] == ["storage", "cat", f"{RUNS_URL}/exp.1/a+b-c/run.json"]
    tails = [r["argv"] for r in stubs.records("tail")]
    assert tails == [["-n", "7", "logs.d/trm-logs/exp.1/a+b-c.log"],
                     ["-n", "100", "logs.d/trm-logs/sweeps/e2_2_tn.log"]]
    assert [*tpu_cmd, "ssh", "trm-vm1", *_scope(), "--worker=1-3"] == gcloud[7][:8]
    assert ["storage", "rsync", "--recursive", "--exclude=(.*/)?checkpoints/.*",
            f"{RUNS_URL}/exp.1/a+b-c", f"{dest}/exp.1/a+b-c"] in gcloud
    assert os.path.isdir(f"{dest}/exp.1/a+b-c")  # mkdir -p made the literal path
    assert gcloud[-1] == [*tpu_cmd, "delete", "trm-vm1", *_scope(), "--quiet"]
    assert markers(stubs.m) == []


def test_real_execution_path_runs_no_shell(stubs, tmp_path, monkeypatch):
    """Without --dry_run, main() runs argv lists: the same values arrive intact."""
    for key, value in stubs.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(stubs.cwd)
    settings, _ = settings_from("flags", stubs, tmp_path)
    gin = [f"--gin_param=H{i}={h}" for i, h in enumerate(stubs.hostile)]
    rc = tpu.main(["launch", *settings, "--gin_file=a.gin", *gin, "--run_name=r1"], environ={})
    assert rc == 0
    (call,) = stubs.wait_for_trainers("fake_pkg.train_x", 1)
    assert call["argv"][3:-1] == gin
    dest = f"-dl$(touch {stubs.m}/dl)"
    rc = tpu.main(["download", *settings, "--run=r1", f"--dest={dest}"], environ={})
    assert rc == 0
    assert os.path.isdir(stubs.cwd / dest / "r1")  # ./-dl...: not read as an option
    assert markers(stubs.m) == []


def test_quoting_holds_even_without_validation(stubs, tmp_path):
    """Belt and braces: values that bypass the grammars are still only ever data."""
    cfg = tpu_config.TpuConfig(name="vm", bucket="bkt", python=PYTHON, train_module="fake_pkg.t")
    for key, value in [("log_dir", f"l$(touch {stubs.m}/log)"),
                       ("remote_dir", f"r`touch {stubs.m}/rdir`"),
                       ("root", f"q;touch {stubs.m}/root")]:
        object.__setattr__(cfg, key, value)  # the frozen dataclass's checks are skipped
    run = Run("e/r", ["g.gin"], ["A=1"])
    (stubs.home / cfg.remote_dir).mkdir(parents=True)  # a checkout by that (hostile) name exists
    stubs.on_worker(remote.launch_script(cfg, run))
    (call,) = stubs.wait_for_trainers("fake_pkg.t", 1)
    assert call["argv"][-1] == f"--workdir=gs://bkt/q;touch {stubs.m}/root/e/r"
    wait_until_gone(stubs.home / remote.pid_path(remote.log_path(cfg, run.name)))
    stubs.on_worker(remote.sweep_script(cfg, "sw", [run]))
    stubs.wait_for_trainers("fake_pkg.t", 2)
    stubs.on_worker(remote.processes_script(cfg))
    assert markers(stubs.m) == []


# ---------------------------------------------------------------------------------------------
# Settings with a grammar: hostile values are rejected, with one line, before anything runs.

GRAMMAR_SETTINGS = FLAGS + ["remote_dir", "log_dir"]
# Odd but harmless values these grammars accept: an empty name, project, zone or bucket is
# unset; an empty root is the bucket's top level; a leading / of the root or bucket is dropped;
# python may be any interpreter path.
LEGAL_ODDITIES = {("name", ""), ("project", ""), ("zone", ""), ("runtime_version", ""),
                  ("bucket", ""), ("root", ""),
                  ("root", "/abs"), ("bucket", "/abs"), ("python", "/abs"), ("python", ".."),
                  ("python", "a/../b")}


def _refuse(*args, **kwargs):
    raise AssertionError(f"nothing may run: {args}")


def _one_line_error(capsys):
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("key", GRAMMAR_SETTINGS)
def test_grammar_settings_reject_hostile_values(key, source, tmp_path, capsys):
    m = tmp_path / "markers"
    m.mkdir()
    base = {"name": "vm", "bucket": "bkt"}
    for value in hostile_values(m) + ["", "..", "/abs", "a/../b", "-x", "ok\n"]:
        if (key, value) in LEGAL_ODDITIES:
            continue
        settings = dict(base, **{key: value})
        environ, argv = {}, []
        if source == "flags" and key in FLAGS:
            argv = [f"--{k}={v}" for k, v in settings.items()]
            label = f"--{key}"
        elif source == "env":
            environ = {f"TRM_TPU_{k.upper()}": v for k, v in settings.items()}
            label = f"TRM_TPU_{key.upper()}"
        else:
            path = tmp_path / "launch.json"
            path.write_text(json.dumps(settings))
            argv = [f"--config={path}"]
            label = f"--config {path}: {key}"
        rc = tpu.main(["launch", *argv, "--gin_file=a.gin"], environ=environ, runner=_refuse)
        err = _one_line_error(capsys)
        assert rc == 2, (key, value)
        assert label in err and "must match ^" in err, err
    assert markers(m) == []


@pytest.mark.parametrize("argv,label", [
    (["launch", "--gin_file=a.gin", "--env=A;touch M=1"], "--env: env variable name"),
    (["launch", "--gin_file=a.gin", "--env=$(x)=1"], "--env: env variable name"),
    (["launch", "--gin_file=a.gin", "--run_name=a/../../b"], "--run_name"),
    (["launch", "--gin_file=a.gin", "--run_name=/etc/x"], "--run_name"),
    (["launch", "--gin_file=a.gin", "--run_name=.hidden"], "--run_name"),
    (["launch", "--gin_file=$(touch M).gin"], "run name (from the last --gin_file"),
    (["status", "--run=../x"], "--run"),
    (["download", "--run=x/..", "--dest=d"], "--run"),
    (["logs", "--run=a\nb"], "--run"),
    (["logs", "--sweep=e2_2_tn/../x"], "--sweep"),
    (["logs", "--sweep=a/b"], "--sweep"),
    (["logs", "--run=a", "--worker=0;touch M"], "--worker"),
    (["create", "--vms=a,$(touch M)"], "--vms entry"),
    (["setup", "--source=git+https://h/x.git@-b"], "--source (git ref after @)"),
    (["setup", "--source=git+https://h/x.git@a..b"], "--source (git ref after @)"),
    (["setup", "--source=https://h/x y.git"], "--source (git URL)"),
    (["setup", "--source=https://h/`id`.git"], "--source (git URL)"),
    (["setup", "--source=dist/$(touch M).whl"], "--source (file name)"),
    (["setup", "--source=dist/-rf.tar.gz"], "--source (file name)"),
    (["create", "--spot=maybe"], None),
    (["create", "--preemptible", "--spot"], "spot and preemptible"),
])
def test_names_and_paths_are_checked(argv, label, capsys):
    if label is None:  # argparse: --spot takes no value
        with pytest.raises(SystemExit):
            tpu.main([*argv, "--name=vm", "--bucket=b"], environ={}, runner=_refuse)
        return
    rc = tpu.main([*argv, "--name=vm", "--bucket=b"], environ={}, runner=_refuse)
    err = _one_line_error(capsys)
    assert rc == 2 and label in err, err


def test_bool_and_env_values_from_files_and_environment(tmp_path, capsys):
    path = tmp_path / "launch.json"
    path.write_text(json.dumps({"spot": "maybe"}))
    assert tpu.main(["create", "--name=vm", f"--config={path}"], environ={}) == 2
    assert f"--config {path}: spot 'maybe' is not a boolean" in _one_line_error(capsys)
    assert tpu.main(["create", "--name=vm"], environ={"TRM_TPU_SPOT": "$(x)"}) == 2
    assert "TRM_TPU_SPOT '$(x)' is not a boolean" in _one_line_error(capsys)
    for env in ({"A B": "1"}, ["NOEQUALS"], 5, {"A": "x\0y"}):
        path.write_text(json.dumps({"env": env}))
        assert tpu.main(["create", "--name=vm", f"--config={path}"], environ={}) == 2
        assert f"--config {path}: " in _one_line_error(capsys)
    path.write_text(json.dumps({"name": ["vm"]}))
    assert tpu.main(["create", f"--config={path}"], environ={}) == 2
    assert "must be a string" in _one_line_error(capsys)
    assert tpu.main(["create", "--name=vm"], environ={"TRM_TPU_ENV": "1X=2"}) == 2
    assert "TRM_TPU_ENV: env variable name '1X'" in _one_line_error(capsys)


# ---------------------------------------------------------------------------------------------
# --config files and TRM_TPU_* variables: one line naming the file, never a traceback.


@pytest.mark.parametrize("name,content,expected", [
    ("missing.json", None, "cannot read it: No such file or directory"),
    ("bad.json", '{"name": "vm",', "not valid JSON: Expecting"),
    ("empty.json", "", "not valid JSON"),
    ("list.json", '["name"]', "expected an object of settings, got list"),
    ("latin1.json", b'{"name": "\xff"}', "not valid JSON"),
    ("typo.json", '{"buckt": "b"}', "unknown setting 'buckt' (did you mean 'bucket'?)"),
    ("bad.toml", "name = ", "not valid TOML"),
    ("dir.json", "DIR", "cannot read it"),
])
def test_bad_config_file_is_one_line_naming_it(name, content, expected, tmp_path, capsys):
    if name.endswith(".toml") and sys.version_info < (3, 11):
        pytest.skip("TOML needs Python >= 3.11")
    path = tmp_path / name
    if content == "DIR":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    rc = tpu.main(["create", "--name=vm", f"--config={path}", "--dry_run"], environ={})
    err = _one_line_error(capsys)
    assert rc == 2
    assert err.startswith(f"error: --config {path}: ") and expected in err, err


def test_unknown_trm_tpu_variable_is_named_with_a_suggestion(capsys):
    rc = tpu.main(["create", "--name=vm", "--dry_run"], environ={"TRM_TPU_ZOEN": "x"})
    err = _one_line_error(capsys)
    assert rc == 2 and "unknown setting 'TRM_TPU_ZOEN' (did you mean 'TRM_TPU_ZONE'?)" in err


def test_status_listing_never_becomes_an_option(capsys):
    listing = "gs://b/trm/x/run.json\n--format=json/run.json\ngs://other/trm/y/run.json\n"
    calls = []

    def runner(argv, check=False, **kwargs):
        calls.append(argv)
        out = listing if argv[:3] == ["gcloud", "storage", "ls"] else "{}"
        return subprocess.CompletedProcess(argv, 0, out, "")

    assert tpu.main(["status", "--bucket=b"], environ={}, runner=runner) == 0
    assert calls[1:] == [["gcloud", "storage", "cat", "gs://b/trm/x/run.json"]]


# ---------------------------------------------------------------------------------------------
# The local launcher: argv lists (no shell); printed lines pasted into bash run the same argv.

FAKE_TRAINER = textwrap.dedent(
    """
    import json, os, sys
    workdir = next(a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--workdir="))
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "calls.jsonl"), "a") as f:
        f.write(json.dumps(sys.argv[1:]) + "\\n")
    with open(os.path.join(workdir, "run.json"), "w") as f:
        json.dump({"status": "completed"}, f)
    """
)


@pytest.fixture
def fake_trainer(tmp_path, monkeypatch):
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "fake_trainer.py").write_text(FAKE_TRAINER)
    monkeypatch.setenv("PYTHONPATH", str(mods))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return "fake_trainer"


def test_local_launcher_passes_hostile_bindings_intact(fake_trainer, tmp_path):
    m = tmp_path / "markers"
    m.mkdir()
    hostile = hostile_values(m)
    root = tmp_path / f"runs$(touch {m}/root)"
    args = ["--sweep=cpu_e2_2_tn", "--seeds=0", "--runs=*t2_n2*", f"--root={root}",
            "--no_preflight",  # the bindings are not gin; this checks they travel intact
            f"--train_module={fake_trainer}"] + [f"--gin_param=H{i}={h}" for i, h in
                                                  enumerate(hostile)]
    out = io.StringIO()
    assert local.main(args + ["--dry_run"], out=out) == 0
    printed = out.getvalue()
    result = subprocess.run(["bash", "-c", printed], capture_output=True, text=True,
                            timeout=60)  # the printed line, pasted into a shell
    assert result.returncode == 0, result.stderr
    workdir = root / "cpu_e2_2_tn" / "t2_n2_s0"
    (pasted,) = [json.loads(line) for line in (workdir / "calls.jsonl").read_text().splitlines()]
    assert pasted[-1 - len(hostile):-1] == [f"--gin_param=H{i}={h}" for i, h in enumerate(hostile)]
    (workdir / "run.json").unlink()
    assert local.main(args, out=io.StringIO()) == 0  # the real path: Popen(argv), no shell
    calls = [json.loads(line) for line in (workdir / "calls.jsonl").read_text().splitlines()]
    assert calls == [pasted, pasted]
    assert pasted[-1] == f"--workdir={workdir}"
    assert markers(m) == []


@pytest.mark.parametrize("name", ["../evil", "/abs/x", "a/../../b", "a//b", ".", "-rf", "a\n"])
def test_local_run_names_stay_inside_root(name, tmp_path):
    with pytest.raises(ValueError, match="run name"):
        local.plan([Run(name, ["a.gin"], [])], str(tmp_path), sys.executable, "trm.train")
    assert common.path_inside("r", "sw/a_s0", "run name") == os.path.join("r", "sw", "a_s0")


def test_local_rejects_hostile_train_module_and_bad_runs(tmp_path, capsys, monkeypatch):
    rc = local.main(["--sweep=cpu_e2_2_tn", f"--root={tmp_path}", "--train_module=-c import os"])
    err = _one_line_error(capsys)
    assert rc == 2 and "--train_module" in err

    class Evil:
        name = "evil"

        def runs(self, seeds=None):
            return [Run("evil/../../x", ["a.gin"], [])]

        def swept_keys(self):
            return {"SEED"}

    monkeypatch.setattr(local, "resolve_sweep", lambda name: Evil())
    rc = local.main(["--sweep=evil", f"--root={tmp_path}", "--dry_run"])
    err = _one_line_error(capsys)
    assert rc == 2 and "run name 'evil/../../x'" in err
    assert not any(tmp_path.iterdir())


def test_dq_escapes_what_double_quotes_expand():
    for text in ["$(touch x)", "`x`", 'a"b', "a\\", "$HOME", "plain-name_1.2+3"]:
        out = subprocess.run(["bash", "-c", f'printf %s "{common.dq(text)}"'],
                             capture_output=True, text=True).stdout
        assert out == text
    assert common.dq("e2_2_tn/t3_n6_s0") == "e2_2_tn/t3_n6_s0"
    assert shlex.split(f'"{common.dq(chr(10))}"') == ["\n"]


def test_missing_checkout_stops_the_launch(stubs):
    """A worker where setup never ran: the launch stops with a message instead of starting
    the trainer in the home directory."""
    cfg = tpu_config.TpuConfig(name="vm", bucket="bkt", python=PYTHON, train_module="fake_pkg.t",
                        remote_dir="no-checkout-here")
    run = Run("e/r", ["g.gin"], ["A=1"])
    proc = stubs.on_worker(remote.launch_script(cfg, run))
    time.sleep(0.5)
    assert stubs.trainer_records("fake_pkg.t") == []
    assert proc.returncode == 1
    assert "run python -m launchers.tpu setup first" in (proc.stderr or "")
