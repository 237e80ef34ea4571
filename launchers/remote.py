"""The shell scripts that the TPU launchers run on every worker (``gcloud ... ssh --command``).

Every script is one line of POSIX shell, run by the worker's login shell: every value in it is
shell-quoted (``shlex.quote``, or :func:`launchers.common.dq` inside ``"..."``). On the VM,
each worker keeps ``~/LOG_DIR/<run name>.log`` and ``.pid``; the trainer runs from
``~/REMOTE_DIR`` (the source tree that ``setup`` unpacks and installs in editable mode).
"""

from __future__ import annotations

import dataclasses
import posixpath
import shlex
from typing import Sequence

from launchers import common
from launchers.gcloud import gcloud_tpu, list_runs_command, run_json_command, scp_command, \
    ssh_command
from launchers.named_sweeps import Run
from launchers.tpu_config import TpuConfig, check_run_name, git_url_and_ref, source_kind

SRC_ARCHIVE = "dist/trm-src.tar.gz"  # local path (relative to the source dir) of `git archive`


def setup_commands(cfg: TpuConfig, marker: str | None = None,
                   strict_host_keys: bool = True) -> list[list[str]]:
    """Ship trm to every worker, unpack it into ``~/REMOTE_DIR`` and install it editable.

    Local commands (``git archive``, ``scp``) come first, then one ``ssh --worker=all``. With
    ``marker`` (a path relative to the home directory) the script ends by creating that file,
    so ``watch`` can tell a worker that was set up from a fresh one.
    """
    py = shlex.quote(cfg.python)
    rdir = shlex.quote(cfg.remote_dir)
    local: list[list[str]] = []
    kind = source_kind(cfg.source)
    if kind == "git":
        url, ref = git_url_and_ref(cfg.source)
        fetch = f"rm -rf {rdir} && git clone {shlex.quote(url)} {rdir}"
        if ref:
            fetch += f" && git -C {rdir} checkout {shlex.quote(ref)}"
        spec = f"./{cfg.remote_dir}[tpu]"
    else:
        if kind == "dir":
            archive_dir = posixpath.join(cfg.source, posixpath.dirname(SRC_ARCHIVE))
            local.append(["mkdir", "-p", common.local_path(archive_dir)])
            local.append(
                ["git", "-C", cfg.source, "archive", "--format=tar.gz", "--prefix=trm/",
                 f"--output={SRC_ARCHIVE}", "HEAD"]
            )
            archive = posixpath.join(cfg.source, SRC_ARCHIVE)
        else:
            archive = cfg.source
        remote_file = posixpath.basename(archive)
        local.append(scp_command(cfg, archive, remote_file, strict_host_keys))
        if kind == "wheel":  # installed as is: gin files must be package data
            fetch = f"mkdir -p {rdir}"
            spec = f"./{remote_file}[tpu]"
        else:
            fetch = (
                f"rm -rf {rdir} && mkdir -p {rdir} && "
                f"tar -xzf {shlex.quote(remote_file)} -C {rdir} --strip-components=1"
            )
            spec = f"./{cfg.remote_dir}[tpu]"
    pip = f"{py} -m pip install"
    editable = "" if kind == "wheel" else "-e "  # editable: ~/trm/gin stays next to the code
    install = f"{pip} {editable}{shlex.quote(spec)}"
    if cfg.find_links:
        install += f" -f {shlex.quote(cfg.find_links)}"
    check = f"{py} -c " + shlex.quote(
        "import torch, torch_xla, trm; "
        "print(trm.__file__, torch.__version__, torch_xla.__version__)"
    )
    steps = [fetch, f"{pip} --upgrade pip", f"{py} -m pip uninstall -y trm", install, check]
    if marker:
        steps.append(f"touch {_home(common.check_relpath(marker, 'setup marker'))}")
    return local + [ssh_command(cfg, " && ".join(steps), strict_host_keys=strict_host_keys)]


def train_command(cfg: TpuConfig, gin_files: Sequence[str], bindings: Sequence[str],
                  run_name: str) -> str:
    """The trainer's shell command line on a worker (environment included)."""
    argv = ["env", *cfg.trainer_env(), cfg.python, "-m", cfg.train_module]
    argv += common.trainer_args(gin_files, bindings, cfg.workdir(run_name))
    return shlex.join(argv)


def _home(relative: str) -> str:
    """A shell word for ``~/relative`` that still expands when quoted one level down."""
    return '"$HOME"/' + shlex.quote(relative)


def _cd_or_fail(cfg: TpuConfig) -> str:
    """``cd`` into the checkout, or stop with a message: a worker where setup never ran must
    not start the trainer in its home directory."""
    where = common.dq(f"~/{cfg.remote_dir}")
    return (f"cd {_home(cfg.remote_dir)} || {{ echo \"trm: $(hostname): {where} is missing: "
            f"run python -m launchers.tpu setup first\" >&2; exit 1; }}")


def _done_function(cfg: TpuConfig) -> str:
    """Shell function ``trm_done URL``: true when ``URL/run.json`` says "completed".

    The probe's Python has no quotes of its own, so the script nests one level less.
    """
    probe = (
        "import json,sys; d=sys.stdin.read().strip(); "
        "sys.exit(0 if d and json.loads(d).get(sys.argv[1])==sys.argv[2] else 1)"
    )
    return (
        'trm_done() { gcloud storage cat "$1/run.json" 2>/dev/null | '
        f"{shlex.quote(cfg.python)} -c {shlex.quote(probe)} status {common.COMPLETED}; }}"
    )


def _alive_function(cfg: TpuConfig) -> str:
    """Shell function ``trm_alive PIDFILE``: true when its process is a live trm job."""
    return (
        f"trm_alive() {{ grep -qsF {shlex.quote(cfg.train_module)} "
        '"/proc/$(cat "$1" 2>/dev/null)/cmdline"; }'
    )


def _guard(cfg: TpuConfig, job: str, pidfile: str) -> str:
    """Exits 0 if ``job`` already runs here, 1 if another trm job holds the TPU.

    A TPU runs one process at a time; this makes ``launch``/``sweep`` safe to repeat.
    """
    job = common.dq(job)
    return (
        f"for f in $(find {_home(cfg.log_dir)} -name '*.pid' 2>/dev/null); do "
        f'if trm_alive "$f"; then '
        f'if [ "$f" = {pidfile} ]; then echo "trm: $(hostname): {job} is already running"; '
        f"exit 0; fi; "
        f'echo "trm: $(hostname): busy with ${{f%.pid}}, not starting {job}" >&2; exit 1; '
        f"fi; done"
    )


def log_path(cfg: TpuConfig, run_name: str) -> str:
    """A run's log on each worker, relative to the home directory."""
    return f"{cfg.log_dir}/{check_run_name(run_name)}.log"


def sweep_log_path(cfg: TpuConfig, sweep_name: str) -> str:
    """A sweep queue's log on each worker, relative to the home directory."""
    return f"{cfg.log_dir}/sweeps/{common.check_name(sweep_name, 'sweep name')}.log"


def pid_path(log: str) -> str:
    return log.removesuffix(".log") + ".pid"


def launch_script(cfg: TpuConfig, run: Run) -> str:
    """What each worker runs for ``launch``: start the trainer detached from ssh.

    Idempotent: nothing happens if the run is running here or already completed; otherwise
    the trainer starts and resumes from the workdir's last checkpoint, if any.
    """
    log = log_path(cfg, run.name)
    pid = _home(pid_path(log))
    name = common.dq(run.name)  # for the inside of "..." (already path-safe: belt and braces)
    return "; ".join(
        [
            _alive_function(cfg),
            _done_function(cfg),
            f"mkdir -p {_home(posixpath.dirname(log))}",
            _guard(cfg, run.name, pid),
            f"if trm_done {shlex.quote(cfg.workdir(run.name))}; then "
            f'echo "trm: $(hostname): {name} is already completed"; exit 0; fi',
            _cd_or_fail(cfg),
            f'echo "trm: $(date -u +%FT%TZ) starting {name}" >> {_home(log)}',
            f"setsid nohup {train_command(cfg, run.gin_files, run.bindings, run.name)} "
            f">> {_home(log)} 2>&1 < /dev/null & echo $! > {pid}",
            f'echo "trm: $(hostname): started {name}, log ~/{common.dq(log)}"',
        ]
    )


def launch_commands(cfg: TpuConfig, run: Run) -> list[list[str]]:
    return [ssh_command(cfg, launch_script(cfg, run))]


def sweep_script(cfg: TpuConfig, sweep_name: str, runs: Sequence[Run]) -> str:
    """A detached queue that runs ``runs`` one after the other on every worker.

    Completed runs are skipped (so re-queueing after a preemption resumes where it stopped),
    a failed run does not stop the queue; each run logs to ``~/LOG_DIR/<run name>.log``, the
    queue to ``~/LOG_DIR/sweeps/<sweep>.log``.
    """
    q = shlex.quote
    steps = [_done_function(cfg), _cd_or_fail(cfg)]
    for i, run in enumerate(runs, 1):
        log = log_path(cfg, run.name)
        tag = common.dq(f"[{i}/{len(runs)}] {run.name}")
        steps.append(
            f"mkdir -p {_home(posixpath.dirname(log))}; "
            f'if trm_done {q(cfg.workdir(run.name))}; then echo "trm: {tag} already completed"; '
            f'else echo "trm: $(date -u +%FT%TZ) {tag} starting"; '
            f"{train_command(cfg, run.gin_files, run.bindings, run.name)} >> {_home(log)} 2>&1; "
            f'rc=$?; echo "trm: $(date -u +%FT%TZ) {tag} exited with $rc"; fi'
        )
    shown = common.dq(sweep_name)
    steps.append(f'echo "trm: $(date -u +%FT%TZ) sweep {shown} done"')
    queue = "; ".join(steps)
    log = sweep_log_path(cfg, sweep_name)
    pid = _home(pid_path(log))
    return "; ".join(
        [
            _alive_function(cfg),
            f"mkdir -p {_home(posixpath.dirname(log))}",
            _guard(cfg, f"sweep {sweep_name}", pid),
            f"setsid nohup bash -c {q(queue)} >> {_home(log)} 2>&1 < /dev/null & echo $! > {pid}",
            f'echo "trm: $(hostname): started sweep {shown} ({len(runs)} runs), '
            f'log ~/{common.dq(log)}"',
        ]
    )


def _for_jobs(cfg: TpuConfig, body: str) -> str:
    """``for f in <every pid file>; do if trm_alive "$f"; then BODY; fi; done``."""
    return (f"for f in $(find {_home(cfg.log_dir)} -name '*.pid' 2>/dev/null); do "
            f'if trm_alive "$f"; then {body}; fi; done')


def worker_probe_script(cfg: TpuConfig, marker: str) -> str:
    """What ``watch`` asks every worker: is trm set up here, and which trm jobs run here?

    Each worker answers with lines ``trm-watch: HOST: setup missing`` (no ``~/MARKER``, the
    file ``setup`` creates last), ``trm-watch: HOST: running NAME`` for each live job (NAME:
    the run, or ``sweeps/<sweep>`` for a queue) or ``trm-watch: HOST: idle``.
    """
    mark = _home(common.check_relpath(marker, "setup marker"))
    return "; ".join(
        [
            _alive_function(cfg),
            f"d={_home(cfg.log_dir)}; h=$(hostname); n=0",
            f'if [ ! -f {mark} ]; then echo "trm-watch: $h: setup missing"; exit 0; fi',
            _for_jobs(cfg, 'r=${f#"$d"/}; echo "trm-watch: $h: running ${r%.pid}"; n=1'),
            '[ "$n" = 1 ] || echo "trm-watch: $h: idle"',
        ]
    )


def stop_script(cfg: TpuConfig, grace_s: float) -> str:
    """Stops every trm job on a worker: SIGTERM to its process group, SIGKILL after
    ``grace_s`` seconds (the trainer checkpoints on SIGTERM when it has the time)."""
    def signal_all(sig: str) -> str:
        return _for_jobs(cfg, f'p=$(cat "$f"); kill -{sig} -- -"$p" 2>/dev/null || '
                              f'kill -{sig} "$p" 2>/dev/null')
    ticks = max(int(grace_s * 5 + 0.999), 0)  # looks 5 times a second
    return "; ".join(
        [
            _alive_function(cfg),
            signal_all("TERM"),
            f"i=0; while [ $i -lt {ticks} ]; do n=0; {_for_jobs(cfg, 'n=1')}; "
            '[ "$n" = 0 ] && break; sleep 0.2; i=$((i+1)); done',
            signal_all("KILL"),
            'echo "trm-watch: $(hostname): stopped"',
        ]
    )


CHECK_MODULE = "launchers.tpu_check"  # the TPU VM preflight (its main(argv))
CHECK_LINE = "trm-check"


def check_script(cfg: TpuConfig, check_args: Sequence[str] = ()) -> str:
    """Runs the preflight ``python -m launchers.tpu_check`` on a worker, in the checkout and
    the trainer's environment; its output comes back prefixed with the worker's name, then one
    line ``trm-check: HOST: pass`` or ``trm-check: HOST: fail (...)``."""
    check = shlex.join(["env", *cfg.trainer_env(), cfg.python, "-m", CHECK_MODULE,
                        *check_args])
    where = common.dq(f"~/{cfg.remote_dir}")
    return "; ".join(
        [
            "h=$(hostname)",
            f'cd {_home(cfg.remote_dir)} || {{ echo "{CHECK_LINE}: $h: fail ({where} is '
            'missing: run python -m launchers.tpu setup first)"; exit 1; }',
            f'out=$({check} 2>&1); rc=$?',
            "printf '%s\\n' \"$out\" | sed \"s/^/[$h] /\"",
            f'if [ "$rc" = 0 ]; then echo "{CHECK_LINE}: $h: pass"; '
            f'else echo "{CHECK_LINE}: $h: fail (exit $rc)"; fi',
            'exit "$rc"',
        ]
    )


def assign_runs(runs: Sequence[Run], vms: Sequence[str]) -> dict[str, list[Run]]:
    """Round-robin: run i goes to ``vms[i % len(vms)]``."""
    return {vm: list(runs[i :: len(vms)]) for i, vm in enumerate(vms)}


def sweep_commands(cfg: TpuConfig, sweep_name: str, runs: Sequence[Run],
                   vms: Sequence[str]) -> list[list[str]]:
    commands = []
    for vm, vm_runs in assign_runs(runs, vms).items():
        if vm_runs:
            vm_cfg = dataclasses.replace(cfg, name=vm)
            commands.append(ssh_command(vm_cfg, sweep_script(vm_cfg, sweep_name, vm_runs)))
    return commands


def processes_script(cfg: TpuConfig) -> str:
    """Lists live trm jobs on a worker, with the last line of each job's log."""
    return "; ".join(
        [
            _alive_function(cfg),
            f"for f in $(find {_home(cfg.log_dir)} -name '*.pid' 2>/dev/null); do "
            f'if trm_alive "$f"; then echo "running: ${{f%.pid}} (pid $(cat "$f"))"; '
            f'tail -n 1 "${{f%.pid}}.log" 2>/dev/null; fi; done',
            "true",
        ]
    )


def status_commands(cfg: TpuConfig, vms: Sequence[str],
                    run_names: Sequence[str] | None) -> list[list[str]]:
    """VM states and live jobs (worker 0), then the ``run.json`` reads.

    With ``run_names`` None every run under ``gs://BUCKET/ROOT`` is listed first.
    """
    commands = []
    for vm in vms:
        vm_cfg = dataclasses.replace(cfg, name=vm)
        commands.append(gcloud_tpu(vm_cfg, "describe", "--format=value(state)"))
        commands.append(ssh_command(vm_cfg, processes_script(vm_cfg), worker="0"))
    if run_names is None:
        commands.append(list_runs_command(cfg))
        commands.append(common.comment("then, for each run.json listed: gcloud storage cat URL"))
    else:
        commands += [run_json_command(cfg, name) for name in run_names]
    return commands


def logs_commands(cfg: TpuConfig, log: str, lines: int = 100, follow: bool = False,
                  worker: str = "0") -> list[list[str]]:
    tail = ["tail", "-n", str(int(lines))] + (["-F"] if follow else []) + [log]
    return [ssh_command(cfg, shlex.join(tail), worker=worker)]

