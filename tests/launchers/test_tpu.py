"""``python -m launchers.tpu``: dry-run commands for every verb, config, failures, and the
remote scripts themselves executed by bash against a fake ``gcloud`` and a fake trainer."""

import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
import textwrap
import time

import pytest

from fakecloud import FakeCloud
from launchers import tpu, tpu_config
from launchers.named_sweeps import get_sweep

BASE = ["--name=trm-v4", "--project=my-proj", "--zone=us-central2-b", "--bucket=my-bucket"]
GCLOUD_TPU = ["gcloud", "compute", "tpus", "tpu-vm"]
SCOPE = ["--project=my-proj", "--zone=us-central2-b"]
TRICKY = "DATA_DIR='gs://b/my data'"  # a gin string with quotes and a space


def dry(capsys, *argv, environ=None):
    """Runs a verb with --dry_run; returns the printed commands, split back into argv."""
    rc = tpu.main([*argv, "--dry_run"], environ={} if environ is None else environ)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return [shlex.split(line) for line in captured.out.splitlines()]


def script_of(argv):
    """The --command script of a `gcloud ... ssh` argv."""
    assert argv[:5] == GCLOUD_TPU + ["ssh"]
    return argv[argv.index("--command") + 1]


# ---------------------------------------------------------------------------------------------
# Dry runs of each verb.


def test_create(capsys):
    (cmd,) = dry(capsys, "create", *BASE)
    assert cmd == GCLOUD_TPU + ["create", "trm-v4", *SCOPE, "--accelerator-type=v4-32",
                                "--version=tpu-ubuntu2204-base"]
    (cmd,) = dry(capsys, "create", *BASE, "--spot", "--accelerator_type=v4-8")
    assert cmd[-3:] == ["--accelerator-type=v4-8", "--version=tpu-ubuntu2204-base", "--spot"]
    (cmd,) = dry(capsys, "create", *BASE, "--preemptible")
    assert cmd[-1] == "--preemptible"
    cmds = dry(capsys, "create", *BASE, "--vms=a,b")
    assert [c[5] for c in cmds] == ["a", "b"]


FAMILY_VERSIONS = [("v2-8", "tpu-ubuntu2204-base"), ("v3-8", "tpu-ubuntu2204-base"),
                   ("v4-8", "tpu-ubuntu2204-base"), ("v5litepod-8", "v2-alpha-tpuv5-lite"),
                   ("v5p-8", "v2-alpha-tpuv5"), ("v6e-8", "v2-alpha-tpuv6e")]


@pytest.mark.parametrize("accelerator,version", FAMILY_VERSIONS)
def test_the_runtime_version_follows_the_accelerator_family(capsys, accelerator, version):
    (cmd,) = dry(capsys, "create", *BASE, f"--accelerator_type={accelerator}")
    assert cmd[-1] == f"--version={version}"
    assert tpu.main(["watch", *BASE, "--sweep=e2_2_tn", "--spot",
                     f"--accelerator_type={accelerator}", "--dry_run"], environ={}) == 0
    creates = [l for l in capsys.readouterr().out.splitlines() if " create " in l]
    assert len(creates) == 1 and creates[0].endswith((f"--version={version} --spot --async",
                                                      f"--runtime-version={version} --spot"))


def test_runtime_version_override_mismatch_unknown_family_and_zone(capsys):
    (cmd,) = dry(capsys, "create", *BASE, "--accelerator_type=v6e-8",
                 "--runtime_version=v2-alpha-tpuv6e-preview")
    assert cmd[-1] == "--version=v2-alpha-tpuv6e-preview"  # a version the table does not know
    assert tpu.main(["create", *BASE, "--accelerator_type=v5litepod-8",
                     "--runtime_version=tpu-ubuntu2204-base", "--dry_run"], environ={}) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ("runtime_version 'tpu-ubuntu2204-base' is for TPU v4; "
                                     "accelerator_type 'v5litepod-8' (v5litepod) needs "
                                     "'v2-alpha-tpuv5-lite'") in err
    assert tpu.main(["create", *BASE, "--accelerator_type=v9x-8", "--dry_run"], environ={}) == 2
    assert "unknown TPU family 'v9x'" in capsys.readouterr().err
    (cmd,) = dry(capsys, "create", *BASE, "--accelerator_type=v9x-8", "--runtime_version=v9-rt")
    assert cmd[-1] == "--version=v9-rt"
    # BASE's zone (us-central2-b) has v4 only: a warning for v5e, none for v4.
    assert tpu.main(["create", *BASE, "--accelerator_type=v5litepod-8", "--dry_run"],
                    environ={}) == 0
    err = capsys.readouterr().err
    assert err.startswith("warning: zone us-central2-b is not among the documented zones of "
                          "v5litepod (us-central1-a, ")
    assert tpu.main(["create", *BASE, "--accelerator_type=v4-8", "--dry_run"], environ={}) == 0
    assert capsys.readouterr().err == ""


def test_the_fake_gcloud_refuses_a_mismatched_version_and_takes_the_derived_ones(
        tmp_path, monkeypatch, capsys):
    """Through the fake gcloud (real subprocesses), as the Cloud TPU API would answer."""
    cloud = FakeCloud(tmp_path / "cloud", monkeypatch)
    bad = cloud.gcloud("compute", "tpus", "tpu-vm", "create", "x", "--accelerator-type=v5p-8",
                       "--version=tpu-ubuntu2204-base")
    assert bad.returncode == 1 and "INVALID_ARGUMENT: runtime version tpu-ubuntu2204-base is " \
        "not supported for accelerator type v5p-8" in bad.stderr
    for i, (accelerator, version) in enumerate(FAMILY_VERSIONS):
        assert tpu.main(["create", f"--name=vm{i}", f"--accelerator_type={accelerator}"],
                        environ={}) == 0, capsys.readouterr().err
        assert cloud.state()["vms"][f"vm{i}"]["version"] == version
    # The fake's host keys: a recreated VM has a new one, refused unless told otherwise.
    assert tpu.main(["delete", "--name=vm0", "--yes"], environ={}) == 0
    ssh = ["compute", "tpus", "tpu-vm", "ssh", "vm2", "--worker=all", "--command", "true"]
    assert cloud.gcloud(*ssh).returncode == 0
    assert tpu.main(["delete", "--name=vm2", "--yes"], environ={}) == 0
    assert tpu.main(["create", "--name=vm2", "--accelerator_type=v4-8"], environ={}) == 0
    again = cloud.gcloud(*ssh)
    assert again.returncode == 255 and "REMOTE HOST IDENTIFICATION HAS CHANGED" in again.stderr
    assert cloud.gcloud(*ssh[:5], "--strict-host-key-checking=no", *ssh[5:]).returncode == 0


def test_project_and_zone_default_to_gcloud_config(capsys):
    (cmd,) = dry(capsys, "delete", "--name=vm1")
    assert cmd == GCLOUD_TPU + ["delete", "vm1"]
    (cmd,) = dry(capsys, "delete", "--name=vm1", "--yes")
    assert cmd[-1] == "--quiet"


def test_setup_from_local_source_dir(capsys):
    mkdir, archive, scp, ssh = dry(capsys, "setup", *BASE)
    assert mkdir == ["mkdir", "-p", "./dist"]
    assert archive == ["git", "-C", ".", "archive", "--format=tar.gz", "--prefix=trm/",
                       "--output=dist/trm-src.tar.gz", "HEAD"]
    assert scp == GCLOUD_TPU + ["scp", "./dist/trm-src.tar.gz", "trm-v4:trm-src.tar.gz", *SCOPE,
                                "--worker=all"]
    assert "--worker=all" in ssh
    script = script_of(ssh)
    assert "tar -xzf trm-src.tar.gz -C trm --strip-components=1" in script
    assert ("python3 -m pip install -e './trm[tpu]' "
            "-f https://storage.googleapis.com/libtpu-releases/index.html") in script
    assert "import torch, torch_xla, trm" in script


def test_setup_from_git_url_and_wheel(capsys):
    (ssh,) = dry(capsys, "setup", *BASE, "--source=git+https://github.com/me/trm.git@v1.2",
                 "--find_links=")
    script = script_of(ssh)
    assert script.startswith(
        "rm -rf trm && git clone https://github.com/me/trm.git trm && git -C trm checkout v1.2")
    assert "pip install -e './trm[tpu]' &&" in script  # no -f when find_links is empty
    scp, ssh = dry(capsys, "setup", *BASE, "--source=dist/trm-0.1-py3-none-any.whl")
    assert scp[5:7] == ["dist/trm-0.1-py3-none-any.whl", "trm-v4:trm-0.1-py3-none-any.whl"]
    assert "pip install './trm-0.1-py3-none-any.whl[tpu]'" in script_of(ssh)


def test_launch(capsys):
    (cmd,) = dry(capsys, "launch", *BASE, "--gin_file=e1_1_baseline.gin")
    assert cmd[:8] == GCLOUD_TPU + ["ssh", "trm-v4", *SCOPE] and cmd[8] == "--worker=all"
    script = script_of(cmd)
    expected = ("setsid nohup env PJRT_DEVICE=TPU python3 -m trm.train "
                "--gin_file=e1_1_baseline.gin --workdir=gs://my-bucket/trm/e1_1_baseline "
                '>> "$HOME"/trm-logs/e1_1_baseline.log 2>&1 < /dev/null &')
    assert expected in script
    assert "trm_done gs://my-bucket/trm/e1_1_baseline" in script
    subprocess.run(["bash", "-n", "-c", script], check=True)  # valid shell


def test_launch_quoting_env_and_root(capsys):
    (cmd,) = dry(capsys, "launch", *BASE, "--root=/study/v1/", "--gin_file=e1_1_baseline.gin",
                 "--gin_file=overrides.gin", f"--gin_param={TRICKY}", "--gin_param=LR=2e-4",
                 "--run_name=baseline/lr2e-4", "--env=XLA_FLAGS=--a=1 --b=2", "--python=python3.11")
    script = script_of(cmd)
    start = script.index("setsid nohup ") + len("setsid nohup ")
    trainer = shlex.split(script[start:script.index(" >> ", start)])
    assert trainer == [
        "env", "PJRT_DEVICE=TPU", "XLA_FLAGS=--a=1 --b=2", "python3.11", "-m", "trm.train",
        "--gin_file=e1_1_baseline.gin", "--gin_file=overrides.gin",
        f"--gin_param={TRICKY}", "--gin_param=LR=2e-4",
        "--workdir=gs://my-bucket/study/v1/baseline/lr2e-4",
    ]
    assert '"$HOME"/trm-logs/baseline/lr2e-4.log' in script


def test_launch_errors(capsys):
    assert tpu.main(["launch", *BASE, "--gin_file=a.gin", "--gin_param=LR=1", "--dry_run"],
                    environ={}) == 2
    assert "--run_name" in capsys.readouterr().err
    assert tpu.main(["launch", *BASE, "--gin_file=a.gin", "--run_name=../x", "--dry_run"],
                    environ={}) == 2
    assert tpu.main(["launch", "--bucket=b", "--gin_file=a.gin", "--dry_run"], environ={}) == 2
    assert "no TPU VM name" in capsys.readouterr().err
    assert tpu.main(["launch", "--name=v", "--gin_file=a.gin", "--dry_run"], environ={}) == 2
    assert "no bucket" in capsys.readouterr().err
    assert tpu.main(["create", *BASE, "--spot", "--preemptible", "--dry_run"], environ={}) == 2


def test_sweep_on_one_vm_and_spread(capsys):
    (cmd,) = dry(capsys, "sweep", *BASE, "--sweep=e2_2_tn", "--gin_param=EVAL_EVERY=1000")
    script = script_of(cmd)
    for run in get_sweep("e2_2_tn").runs():
        assert f"--workdir=gs://my-bucket/trm/{run.name}" in script
    assert script.count("--gin_param=EVAL_EVERY=1000") == 5
    assert '"$HOME"/trm-logs/sweeps/e2_2_tn.log' in script
    subprocess.run(["bash", "-n", "-c", script], check=True)

    cmds = dry(capsys, "sweep", *BASE, "--sweep=e2_2_tn", "--seeds=0,1", "--vms=a,b,c")
    assert [c[5] for c in cmds] == ["a", "b", "c"]
    names = [r.name for r in get_sweep("e2_2_tn").runs(seeds=[0, 1])]
    placed = {n: [c[5] for c in cmds if f"/{n} " in script_of(c)] for n in names}
    assert all(len(vms) == 1 for vms in placed.values()), placed
    assert placed["e2_2_tn/t2_n2_s0"] == ["a"] and placed["e2_2_tn/t2_n6_s0"] == ["b"]
    assert tpu.main(["sweep", *BASE, "--sweep=e2_2_tn", "--gin_param=H_CYCLES=1",
                     "--dry_run"], environ={}) == 2


def test_status_logs_download(capsys):
    cmds = dry(capsys, "status", *BASE, "--sweep=e3_1_width")
    assert cmds[0] == GCLOUD_TPU + ["describe", "trm-v4", *SCOPE, "--format=value(state)"]
    assert cmds[1][8] == "--worker=0"
    assert cmds[2:] == [
        ["gcloud", "storage", "cat", f"gs://my-bucket/trm/e3_1_width/h{h}_s0/run.json"]
        for h in (256, 512, 1024)
    ]
    cmds = dry(capsys, "status", "--bucket=gs://my-bucket/")
    assert cmds[0] == ["gcloud", "storage", "ls", "gs://my-bucket/trm/**/run.json"]

    (cmd,) = dry(capsys, "logs", *BASE, "--run=e2_2_tn/t3_n6_s0", "--follow")
    assert cmd[8] == "--worker=0"
    assert script_of(cmd) == "tail -n 100 -F trm-logs/e2_2_tn/t3_n6_s0.log"
    (cmd,) = dry(capsys, "logs", *BASE, "--sweep=e2_2_tn", "--worker=3", "--lines=20")
    assert cmd[8] == "--worker=3" and script_of(cmd) == "tail -n 20 trm-logs/sweeps/e2_2_tn.log"

    cmds = dry(capsys, "download", *BASE, "--run=e1_1_baseline", "--dest=/tmp/r u")
    assert cmds == [
        ["mkdir", "-p", "/tmp/r u/e1_1_baseline"],
        ["gcloud", "storage", "rsync", "--recursive", "--exclude=(.*/)?checkpoints/.*",
         "gs://my-bucket/trm/e1_1_baseline", "/tmp/r u/e1_1_baseline"],
    ]
    cmds = dry(capsys, "download", *BASE, "--with_checkpoints")
    assert cmds[1] == ["gcloud", "storage", "rsync", "--recursive", "gs://my-bucket/trm", "runs"]


# ---------------------------------------------------------------------------------------------
# Settings.


def test_config_precedence(tmp_path, capsys):
    cfg_file = tmp_path / "launch.json"
    cfg_file.write_text(json.dumps({"name": "from-file", "bucket": "file-bucket", "spot": True,
                                    "env": {"XLA_FLAGS": "--x"}}))
    environ = {"TRM_TPU_NAME": "from-env", "TRM_TPU_ZONE": "env-zone", "TRM_TPU_BUCKET": "eb"}
    (cmd,) = dry(capsys, "create", f"--config={cfg_file}", environ=environ)
    assert cmd[5:7] == ["from-file", "--zone=env-zone"] and cmd[-1] == "--spot"
    (cmd,) = dry(capsys, "create", f"--config={cfg_file}", "--name=from-flag", "--no-spot",
                 environ=environ)
    assert cmd[5] == "from-flag" and "--spot" not in cmd
    cfg = tpu_config.load_config({"env": ("A=1",)}, str(cfg_file), {})
    assert cfg.trainer_env() == ["PJRT_DEVICE=TPU", "XLA_FLAGS=--x", "A=1"]

    cfg_file.write_text(json.dumps({"nmae": "typo"}))
    assert tpu.main(["create", f"--config={cfg_file}", "--dry_run"], environ={}) == 2
    assert "unknown setting 'nmae'" in capsys.readouterr().err
    if sys.version_info >= (3, 11):
        toml = tmp_path / "launch.toml"
        toml.write_text('name = "t"\nspot = true\n')
        (cmd,) = dry(capsys, "create", f"--config={toml}")
        assert cmd[5] == "t" and cmd[-1] == "--spot"


# ---------------------------------------------------------------------------------------------
# Execution layer.


class FakeRunner:
    def __init__(self, results):
        self.results = list(results)
        self.calls = []

    def __call__(self, argv, check=False, **kwargs):
        self.calls.append((argv, kwargs))
        rc, out = self.results.pop(0) if self.results else (0, "")
        return subprocess.CompletedProcess(argv, rc, out, "")


def test_failure_stops_and_reports_the_command(capsys):
    runner = FakeRunner([(0, ""), (0, ""), (7, "")])
    rc = tpu.main(["setup", *BASE], environ={}, runner=runner)
    assert rc == 7
    assert len(runner.calls) == 3  # the ssh after the failed scp did not run
    err = capsys.readouterr().err
    assert "command failed with exit code 7: gcloud compute tpus tpu-vm scp ./dist/" in err


def test_status_reads_run_json(capsys):
    run_json = json.dumps({"status": "running", "last_step": 1200, "total_steps": 50000})
    runner = FakeRunner([(0, "READY\n"), (255, ""), (0, run_json), (1, ""), (0, "{broken")])
    assert tpu.main(["status", *BASE, "--sweep=e3_1_width"], environ={}, runner=runner) == 0
    out, err = capsys.readouterr()
    assert "warning: command failed with exit code 255" in err  # ssh failure tolerated
    rows = [line.split() for line in out.splitlines()]
    assert rows[0] == ["run", "status", "step"]
    assert rows[1:] == [["e3_1_width/h256_s0", "running", "1200/50000"],
                        ["e3_1_width/h512_s0", "not", "started", "-"],
                        ["e3_1_width/h1024_s0", "not", "started", "-"]]

    listing = "gs://b/trm/x/a_s0/run.json\ngs://b/trm/y_s0/run.json\n"
    runner = FakeRunner([(0, listing), (0, json.dumps({"status": "completed", "last_step": 5})),
                         (0, json.dumps({"status": "failed", "last_step": 2}))])
    assert tpu.main(["status", "--bucket=b"], environ={}, runner=runner) == 0
    out = capsys.readouterr().out
    assert [line.split() for line in out.splitlines()][1:] == [
        ["x/a_s0", "completed", "5"], ["y_s0", "failed", "2"]]


# ---------------------------------------------------------------------------------------------
# The remote scripts, run for real by bash with a fake gcloud (gs:// = a local directory) and a
# fake trainer module standing in for trm.train.

FAKE_GCLOUD = textwrap.dedent(
    """\
    #!/bin/sh
    # fake `gcloud storage cat gs://...`: gs://X is $FAKE_GCS/X
    [ "$1 $2" = "storage cat" ] || exit 2
    exec cat "$FAKE_GCS/${3#gs://}" 2>/dev/null
    """
)

FAKE_TRAINER = textwrap.dedent(
    """
    import json, os, sys, time
    args = sys.argv[1:]
    workdir = next(a.split("=", 1)[1] for a in args if a.startswith("--workdir="))
    out = os.path.join(os.environ["FAKE_GCS"], workdir[len("gs://"):])
    os.makedirs(out, exist_ok=True)
    record = {"argv": args, "cwd": os.getcwd(), "pjrt": os.environ.get("PJRT_DEVICE"),
              "xla_flags": os.environ.get("XLA_FLAGS")}
    with open(os.path.join(out, "calls.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\\n")
    print("fake trainer running", flush=True)
    time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
    if os.environ.get("FAKE_FAIL") and os.environ["FAKE_FAIL"] in workdir:
        sys.exit(3)
    with open(os.path.join(out, "run.json"), "w") as f:
        json.dump({"status": "completed"}, f)
    """
)


@pytest.fixture
def vm(tmp_path):
    """A fake worker: HOME with ~/trm, PATH with a fake gcloud, a fake trainer module."""
    home, bin_dir, gcs, mods = (tmp_path / d for d in ("home", "bin", "gcs", "mods"))
    for d in (home / "trm", bin_dir, gcs, mods):
        d.mkdir(parents=True)
    (bin_dir / "gcloud").write_text(FAKE_GCLOUD)
    (bin_dir / "gcloud").chmod(0o755)
    (mods / "fake_trainer.py").write_text(FAKE_TRAINER)
    env = {"HOME": str(home), "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_GCS": str(gcs),
           "PYTHONPATH": str(mods), "OMP_NUM_THREADS": "1"}

    class Vm:
        settings = ["--name=vm", "--bucket=bkt", f"--python={sys.executable}",
                    "--train_module=fake_trainer"]

        def __init__(self):
            self.home, self.gcs, self.env = home, gcs, env

        def ssh(self, script, **extra_env):
            return subprocess.run(["bash", "-c", script], env={**self.env, **extra_env},
                                  capture_output=True, text=True, timeout=20)

        def calls(self, run_name):
            path = gcs / "bkt" / "trm" / run_name / "calls.jsonl"
            return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []

        def wait_for(self, path, text="", timeout=15):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if path.exists() and text in path.read_text():
                    return path.read_text()
                time.sleep(0.05)
            raise AssertionError(f"timed out waiting for {text!r} in {path}")

    return Vm()


def test_launch_script_runs_detached_and_is_idempotent(vm, capsys):
    (cmd,) = dry(capsys, "launch", *vm.settings, "--gin_file=e1_1_baseline.gin",
                 f"--gin_param={TRICKY}", "--run_name=exp/a", "--env=XLA_FLAGS=--x=1 --y")
    script = script_of(cmd)
    first = vm.ssh(script, FAKE_SLEEP="1.5")
    assert first.returncode == 0, first.stderr
    assert "started exp/a" in first.stdout
    run_json = vm.gcs / "bkt" / "trm" / "exp" / "a" / "run.json"
    vm.wait_for(vm.gcs / "bkt" / "trm" / "exp" / "a" / "calls.jsonl")
    (call,) = vm.calls("exp/a")
    assert call["argv"] == ["--gin_file=e1_1_baseline.gin", f"--gin_param={TRICKY}",
                            "--workdir=gs://bkt/trm/exp/a"]
    assert call["pjrt"] == "TPU" and call["xla_flags"] == "--x=1 --y"
    assert call["cwd"] == str(vm.home / "trm")

    again = vm.ssh(script)  # while running: a no-op
    assert again.returncode == 0 and "exp/a is already running" in again.stdout
    (other,) = dry(capsys, "launch", *vm.settings, "--gin_file=x.gin")
    busy = vm.ssh(script_of(other))  # another job would fight for the TPU
    assert busy.returncode == 1 and "busy with" in busy.stderr

    vm.wait_for(run_json, "completed")
    log = (vm.home / "trm-logs" / "exp" / "a.log").read_text()
    assert "starting exp/a" in log and "fake trainer running" in log
    for _ in range(100):  # the finished trainer no longer counts as running
        done = vm.ssh(script)
        if "already completed" in done.stdout:
            break
        time.sleep(0.05)
    assert done.returncode == 0 and "exp/a is already completed" in done.stdout
    assert len(vm.calls("exp/a")) == 1


def test_sweep_script_queues_skips_and_survives_failures(vm, capsys):
    done_dir = vm.gcs / "bkt" / "trm" / "e2_2_tn" / "t2_n2_s0"
    done_dir.mkdir(parents=True)
    (done_dir / "run.json").write_text(json.dumps({"status": "completed"}))
    (cmd,) = dry(capsys, "sweep", *vm.settings, "--sweep=e2_2_tn", f"--gin_param={TRICKY}")
    result = vm.ssh(script_of(cmd), FAKE_FAIL="t3_n4")
    assert result.returncode == 0, result.stderr
    queue_log = vm.wait_for(vm.home / "trm-logs" / "sweeps" / "e2_2_tn.log", "sweep e2_2_tn done")
    assert "[1/5] e2_2_tn/t2_n2_s0 already completed" in queue_log
    assert "[3/5] e2_2_tn/t3_n4_s0 exited with 3" in queue_log
    assert "[5/5] e2_2_tn/t4_n6_s0 exited with 0" in queue_log
    assert vm.calls("e2_2_tn/t2_n2_s0") == []
    (call,) = vm.calls("e2_2_tn/t3_n6_s0")
    assert call["argv"] == ["--gin_file=e1_1_baseline.gin", "--gin_param=H_CYCLES=3",
                            "--gin_param=L_CYCLES=6", "--gin_param=SEED=0",
                            f"--gin_param={TRICKY}", "--workdir=gs://bkt/trm/e2_2_tn/t3_n6_s0"]
    assert "fake trainer running" in (vm.home / "trm-logs" / "e2_2_tn" / "t3_n6_s0.log").read_text()


# ---------------------------------------------------------------------------------------------
# The docs: every launcher command in them works, and every output shown is the dry run's.

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS = ["docs/SETUP_GUIDE.md", "docs/TROUBLESHOOTING.md"]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
PREFIXES = {"python -m launchers.tpu ": "tpu", "python -m launchers.sweep": "sweep",
            "python -m launchers.local ": "local"}


def _doc_examples():
    """(doc, command line, expected output or None) for each launcher line in sh blocks."""
    examples = []
    for doc in DOCS:
        path = os.path.join(REPO, doc)
        if not os.path.exists(path):
            continue
        blocks = FENCE.findall(open(path).read())
        for i, (lang, body) in enumerate(blocks):
            if lang != "sh":
                continue
            lines = [l for l in body.splitlines() if any(l.startswith(p) for p in PREFIXES)]
            shown = blocks[i + 1][1] if i + 1 < len(blocks) and blocks[i + 1][0] == "text" else None
            for line in lines:
                examples.append((doc, line, shown if len(lines) == 1 else None))
    return examples


def _launch_json():
    text = open(os.path.join(REPO, "docs/SETUP_GUIDE.md")).read()
    return next(body for lang, body in FENCE.findall(text) if lang == "json")


def test_docs_have_launcher_examples():
    examples = _doc_examples()
    assert sum(1 for _, _, shown in examples if shown) >= 6
    verbs = {shlex.split(line)[3] for _, line, _ in examples if "launchers.tpu" in line}
    assert verbs >= {"create", "setup", "launch", "sweep", "status", "logs", "download", "delete"}


@pytest.mark.parametrize("doc,line,shown", _doc_examples(),
                         ids=lambda v: v if isinstance(v, str) and v.startswith("python") else "")
def test_doc_commands_match_dry_run(doc, line, shown, tmp_path, monkeypatch, capsys):
    from launchers import local
    from launchers import sweep as sweep_cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "launch.json").write_text(_launch_json())
    argv = shlex.split(line)[3:]
    kind = next(k for p, k in PREFIXES.items() if line.startswith(p))
    if kind == "tpu":
        rc = tpu.main(argv + ["--dry_run"], environ={})
    elif kind == "sweep":
        rc = sweep_cli.main(argv)
    else:
        rc = local.main(argv + ["--dry_run"])
    out, err = capsys.readouterr()
    assert rc == 0, f"{doc}: {line}\n{err}"
    if shown is not None:
        assert out == shown, f"{doc}: the output shown for {line!r} is not the dry run's"


# ---------------------------------------------------------------------------------------------
# `check`: the preflight on every worker, through the fake gcloud.

# Stands in for launchers/tpu_check.py in the source that `setup` unpacks on each worker.
CHECK_STANDIN = """\
import os, sys
assert os.environ["PJRT_DEVICE"] == "TPU"  # the trainer's environment
print("tpu_check stand-in: args", sys.argv[1:])
bad = os.path.join(os.environ["FAKE_CLOUD"], "bad_worker")
sys.exit(3 if os.path.exists(bad) and open(bad).read() == os.environ["FAKE_VM_WORKER"] else 0)
"""


def test_check_runs_the_preflight_on_every_worker(tmp_path, monkeypatch, capsys):
    cloud = FakeCloud(tmp_path / "cloud", monkeypatch)
    src = tmp_path / "src" / "trm-1.0"
    (src / "launchers").mkdir(parents=True)
    (src / "launchers" / "__init__.py").write_text("")
    (src / "launchers" / "tpu_check.py").write_text(CHECK_STANDIN)
    sdist = tmp_path / "trm-1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        tar.add(src, arcname="trm-1.0")
    config = tmp_path / "launch.json"
    config.write_text(json.dumps({"name": "vm", "accelerator_type": "v4-32", "python": "vmpython",
                                  "source": str(sdist), "find_links": ""}))
    vm = [f"--config={config}"]
    assert tpu.main(["create", *vm], environ={}) == 0
    assert tpu.main(["setup", *vm], environ={}) == 0
    capsys.readouterr()

    def check():
        rc = tpu.main(["check", *vm, "--check_arg=--quick"], environ={})
        out = capsys.readouterr().out
        return rc, out, sorted(l.split(None, 2) for l in out.splitlines()
                               if l.startswith("vm ") and not l.startswith("vm  worker"))

    rc, out, rows = check()
    assert rc == 0 and rows == [["vm", f"vm-w{k}", "pass"] for k in range(4)], out
    assert "[vm-w3] tpu_check stand-in: args ['--quick']" in out
    assert out.splitlines()[-1] == "check: 4 worker(s) passed, none failed"

    (cloud.root / "bad_worker").write_text("2")
    rc, out, rows = check()
    assert rc == 1 and rows[2] == ["vm", "vm-w2", "fail (exit 3)"] and rows[1][2] == "pass"

    state = cloud.state()
    state["faults"] = [{"cmd": "ssh", "vm": "vm", "mode": "exit255", "count": 1}]
    cloud.write(state)
    rc, out, rows = check()
    assert rc == 1 and rows == [["vm", "?", "no answer from 4 worker(s) (ssh exit code 255: "
                                            "ssh: connect to host 10.0.0.2 port 22: Connection "
                                            "timed out)"]]
    describe, ssh = dry(capsys, "check", *BASE, "--worker=0,2")
    assert describe == GCLOUD_TPU + ["describe", "trm-v4", *SCOPE, "--format=json"]
    assert ssh[8] == "--worker=0,2" and "python3 -m launchers.tpu_check" in script_of(ssh)
