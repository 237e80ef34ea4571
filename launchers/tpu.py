"""Create, set up and drive Cloud TPU VMs: ``python -m launchers.tpu <verb> [flags]``.

Verbs::

    create    create the TPU VM(s)                      gcloud compute tpus tpu-vm create
    setup     ship trm to every worker and pip install it with its ``tpu`` extra
    launch    start one run on all workers, detached     (re-running resumes it)
    sweep     queue a sweep's runs on one VM, or spread them over --vms=a,b,c
    status    VM state, what runs on the VM, last logged step of each run (run.json on gs://)
    logs      tail a run's (or a sweep queue's) log on a worker
    download  copy runs from gs:// to a local directory (gcloud storage rsync)
    delete    delete the TPU VM(s)
    check     run the TPU VM preflight (``python -m launchers.tpu_check``) on every worker and
              report each worker's pass / fail
    watch     keep a sweep going on preemptible capacity until every run is completed:
              recreate preempted VMs, set them up again, relaunch the unfinished runs
              (launchers/watch.py; also ``sweep --watch``)
    cost      estimated device-hours (and cost) of a sweep from the model's FLOPs
              (launchers/cost.py)

Every verb takes ``--dry_run``: it prints the exact commands, one per line and shell-quoted,
and runs nothing. Without it the commands run one after the other with their output streamed;
the first failure stops the verb and is reported with its exit code.

This module is the command line only. The pieces it puts together:

* :mod:`launchers.tpu_config` -- the settings (:class:`~launchers.tpu_config.TpuConfig`: flags
  > ``--config`` file > ``TRM_TPU_*`` variables > defaults), their grammars, the accelerator
  families;
* :mod:`launchers.gcloud` -- gcloud command lines (TPU VMs, queued resources, Cloud Storage);
* :mod:`launchers.remote` -- the shell scripts run on every worker (setup, launch, sweep queue);
* :mod:`launchers.watch` and :mod:`launchers.cost` -- the ``watch`` and ``cost`` verbs.

Runs live at ``gs://BUCKET/ROOT/<run name>`` (the workdir of docs/DESIGN.md). Trust boundary:
docs/SETUP_GUIDE.md, "Trust boundaries and quoting".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import posixpath
import re
import subprocess
import sys
from typing import Mapping, Sequence

from launchers import common, cost, gcloud, remote, tpu_config, watch
from launchers.named_sweeps import Run, add_sweep_module_flag
from launchers.sweep_files import resolve_sweep

def _config_flags() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("settings (flags > --config > TRM_TPU_* env > defaults)")
    g.add_argument("--config", help="JSON (or TOML) file of settings")
    g.add_argument("--name", "--vm", dest="name", help="TPU VM name")
    g.add_argument("--project", help="GCP project (default: gcloud config)")
    g.add_argument("--zone", help="zone (default: gcloud config)")
    g.add_argument("--accelerator_type", "--accelerator-type", dest="accelerator_type",
                   help="default v4-32")
    g.add_argument("--runtime_version", "--version", dest="runtime_version",
                   help="TPU software version (default: the accelerator family's, "
                        "e.g. tpu-ubuntu2204-base for v4, v2-alpha-tpuv5-lite for v5e)")
    g.add_argument("--bucket", help="GCS bucket for runs")
    g.add_argument("--root", help="prefix in the bucket (default trm)")
    g.add_argument("--spot", action=argparse.BooleanOptionalAction, default=None,
                   help="Spot VM (preemptible at any time)")
    g.add_argument("--preemptible", action=argparse.BooleanOptionalAction, default=None,
                   help="legacy preemptible VM")
    g.add_argument("--python", help="Python on the VM (default python3)")
    g.add_argument("--train_module", help="trainer module (default trm.train)")
    g.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra trainer environment (repeatable)")
    p.add_argument("--dry_run", "--dry-run", dest="dry_run", action="store_true",
                   help="print the commands instead of running them")
    add_sweep_module_flag(p)
    return p


def _gin_flags(p: argparse.ArgumentParser, help_text: str, preflight: bool = True) -> None:
    """``--gin_param`` with the spellings of every trm tool (``--gin_bindings``, and
    ``--gin.K=V`` through :func:`launchers.common.parse_args`) and the local preflight."""
    p.add_argument("--gin_param", action="append", default=[],
                   help=help_text + "; also --gin_bindings=K=V and --gin.K=V")
    p.add_argument("--gin_bindings", action="append", default=[], help=argparse.SUPPRESS)
    if preflight:
        p.add_argument("--no_preflight", action="store_true",
                       help="skip checking every run here (trm.preflight) before any VM starts")


def _runs_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sweep", help="a sweep's runs: a registered name or a sweep file")
    p.add_argument("--seeds", help="comma-separated seeds for --sweep")
    p.add_argument("--run", action="append", default=[], help="a run name (repeatable)")


def _watch_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("watch (settings: also --config keys / TRM_TPU_* variables)")
    g.add_argument("--provisioning", help="auto (default), queued or create")
    g.add_argument("--poll_s", "--poll", dest="watch_poll_s",
                   help="seconds between two looks (default 60)")
    g.add_argument("--retries", dest="watch_retries",
                   help="failed attempts in a row per VM before giving up (default 5)")
    g.add_argument("--backoff_s", dest="watch_backoff_s",
                   help="wait after a failure, doubled each time (default 60)")
    g.add_argument("--backoff_max_s", dest="watch_backoff_max_s", help="default 1800")
    g.add_argument("--log", dest="watch_log", help="log file (default trm-watch.log)")
    g.add_argument("--timeout_s", dest="watch_timeout_s",
                   help="longest gcloud / ssh call before it is killed (default 600)")
    g.add_argument("--setup_timeout_s", dest="watch_setup_timeout_s",
                   help="the same for setup (default 3600)")
    g.add_argument("--hang_s", dest="watch_hang_s",
                   help="a run without progress this long is hung: restarted (default 3600)")
    g.add_argument("--grace_s", dest="watch_grace_s",
                   help="SIGTERM to SIGKILL when stopping a run (default 30)")
    g.add_argument("--price_per_chip_hour", help="for the cost line of the summary")
    g.add_argument("--keep_vms", action="store_true",
                   help="leave the VMs when their runs are done (default: delete them)")


def _cost_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("cost (settings: also --config keys / TRM_TPU_* variables)")
    g.add_argument("--price_per_chip_hour", help="price of one chip-hour (default: none)")
    g.add_argument("--mfu", help="assumed model FLOPs utilisation (default 0.3)")
    g.add_argument("--peak_flops_per_chip",
                   help="peak bf16 FLOP/s per chip (default: table by accelerator type)")
    g.add_argument("--examples_per_s", type=float,
                   help="measured training examples per second of the whole slice "
                        "(perf/examples_per_s); replaces the FLOPs-based throughput")
    g.add_argument("--examples_per_epoch", type=float,
                   help="when the dataset is not built and the run uses EPOCHS")
    g.add_argument("--eval_examples", type=float,
                   help="test-set size, to count the evaluations (default: from the dataset)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m launchers.tpu",
        description="Create, set up and drive Cloud TPU VMs for trm.",
    )
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    parent = [_config_flags()]

    def verb(name, help_text):
        return sub.add_parser(name, parents=parent, help=help_text, description=help_text)

    vms_help = "comma-separated VM names (default: --name)"
    p = verb("create", "create the TPU VM(s)")
    p.add_argument("--vms", help=vms_help)
    p = verb("setup", "install trm[tpu] on every worker")
    p.add_argument("--vms", help=vms_help)
    p.add_argument("--source", help="local dir (git archive HEAD), sdist/wheel, or git URL")
    p.add_argument("--find_links", help="extra pip -f index (default: libtpu releases)")
    p = verb("launch", "start one run on all workers (re-run to resume)")
    p.add_argument("--gin_file", action="append", required=True, help="gin file (repeatable)")
    _gin_flags(p, "gin binding (repeatable)")
    p.add_argument("--run_name", help="default: the last gin file's name without .gin")
    p = verb("sweep", "queue a sweep's runs on one or several VMs")
    p.add_argument("--sweep", required=True)
    p.add_argument("--seeds", help="comma-separated seeds (default: the sweep's)")
    _gin_flags(p, "extra binding for every run")
    p.add_argument("--vms", help=vms_help + "; runs are dealt round-robin")
    p.add_argument("--watch", action="store_true",
                   help="then keep the sweep going until every run is completed (see watch)")
    _watch_flags(p)
    p = verb("watch", "keep a sweep going on preemptible VMs until every run is completed")
    p.add_argument("--sweep", required=True)
    p.add_argument("--seeds", help="comma-separated seeds (default: the sweep's)")
    _gin_flags(p, "extra binding for every run")
    p.add_argument("--vms", help=vms_help + "; runs are dealt round-robin")
    _watch_flags(p)
    p = verb("cost", "estimated device-hours (and cost) of a sweep or a run")
    p.add_argument("--sweep", help="the sweep's runs")
    p.add_argument("--seeds", help="comma-separated seeds (default: the sweep's)")
    p.add_argument("--gin_file", action="append", default=[],
                   help="one run's gin file(s) instead of --sweep (repeatable)")
    _gin_flags(p, "extra binding (repeatable)", preflight=False)
    _cost_flags(p)
    p = verb("status", "VM state, running jobs, last logged step of each run")
    p.add_argument("--vms", help=vms_help)
    p.add_argument("--no_vm", action="store_true", help="only read run.json files")
    _runs_flags(p)
    p = verb("logs", "tail a run's (or a sweep queue's) log on a worker")
    p.add_argument("--run", help="run name")
    p.add_argument("--sweep", help="the sweep queue's log instead")
    p.add_argument("--lines", type=int, default=100)
    p.add_argument("--follow", "-f", action="store_true")
    p.add_argument("--worker", default="0")
    p = verb("download", "copy runs from gs:// to a local directory")
    _runs_flags(p)
    p.add_argument("--dest", default="runs", help="local directory (default runs/)")
    p.add_argument("--with_checkpoints", action="store_true",
                   help="also copy checkpoints/ (large)")
    p = verb("check", "run the TPU VM preflight (launchers.tpu_check) on every worker")
    p.add_argument("--vms", help=vms_help)
    p.add_argument("--worker", default="all", help="all (default), or worker numbers")
    p.add_argument("--check_arg", action="append", default=[], metavar="ARG",
                   help="an argument for python -m launchers.tpu_check (repeatable)")
    p = verb("delete", "delete the TPU VM(s)")
    p.add_argument("--vms", help=vms_help)
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    return parser


def _config_from_args(args, environ) -> tpu_config.TpuConfig:
    flags = {k: getattr(args, k, None) for k in tpu_config.FIELDS}
    flags["env"] = tuple(args.env)
    return tpu_config.load_config(flags, args.config, environ)


def _vms(cfg: tpu_config.TpuConfig, args) -> list[str]:
    if getattr(args, "vms", None):
        vms = [v for v in args.vms.split(",") if v]
        for vm in vms:
            tpu_config.check_setting("name", vm, "--vms entry")
        return vms
    return [tpu_config.require_name(cfg)]


def _selected_runs(args) -> list[str] | None:
    names = list(args.run or [])
    if args.sweep:
        names += [r.name for r in resolve_sweep(args.sweep).runs(common.parse_seeds(args.seeds))]
    elif args.seeds:
        raise ValueError("--seeds needs --sweep")
    return [tpu_config.check_run_name(n, "--run") for n in names] or None


def sweep_runs(args) -> tuple[str, list[Run]]:
    """The sweep's name and runs of ``--sweep`` / ``--seeds`` / ``--gin_param``."""
    sweep = resolve_sweep(args.sweep)
    common.check_extra_bindings(args.gin_param, sweep.swept_keys())
    runs = [
        Run(r.name, r.gin_files, r.bindings + list(args.gin_param))
        for r in sweep.runs(common.parse_seeds(args.seeds))
    ]
    return sweep.name, runs


def _launch_run(args) -> Run:
    bindings = list(args.gin_param)
    for b in bindings:
        if "=" not in b:
            raise ValueError(f"--gin_param {b!r} is not KEY=VALUE")
    name, setting = args.run_name, "--run_name"
    if not name:
        if bindings:
            raise ValueError("--gin_param changes the config: name the run with --run_name")
        name = posixpath.basename(args.gin_file[-1]).removesuffix(".gin")
        setting = "run name (from the last --gin_file; pass --run_name)"
    return Run(tpu_config.check_run_name(name, setting), list(args.gin_file), bindings)


def _preflight_ok(args) -> bool:
    """``launch`` / ``sweep`` / ``watch``: every run checked here, as its start would check it
    (:mod:`trm.preflight`, this machine's Python), before any VM or run starts; one line per
    bad run. Skipped with a note where trm (torch) is not installed here; ``--no_preflight``
    or ``TRM_LAUNCH_PREFLIGHT=0`` skips it."""
    if args.verb not in ("launch", "sweep", "watch") or args.no_preflight or \
            os.environ.get("TRM_LAUNCH_PREFLIGHT") == "0":
        return True
    runs = [_launch_run(args)] if args.verb == "launch" else sweep_runs(args)[1]
    specs = [{"name": r.name, "gin_files": r.gin_files, "bindings": r.bindings} for r in runs]
    try:
        results = common.preflight(specs, sys.executable)
    except RuntimeError as e:
        if "No module named" not in str(e):
            raise
        print(f"note: preflight skipped: trm is not importable by {sys.executable} "
              "(install trm here to check every run before the VMs start)", file=sys.stderr)
        return True
    errors = common.preflight_errors(specs, results)
    if errors:
        print(f"error: {len(errors)} of {len(specs)} runs would not start; nothing was "
              "started:", file=sys.stderr)
        for line in errors:
            print(f"  {line}", file=sys.stderr)
    return not errors


def build_commands(args, cfg: tpu_config.TpuConfig) -> list[list[str]]:
    """The commands of a parsed command line (pure: runs nothing)."""
    def per_vm(fn):
        return [c for vm in _vms(cfg, args) for c in fn(dataclasses.replace(cfg, name=vm))]

    if args.verb == "create":
        return per_vm(gcloud.create_commands)
    if args.verb == "setup":
        return per_vm(remote.setup_commands)
    if args.verb == "delete":
        return per_vm(lambda c: gcloud.delete_commands(c, args.yes))
    if args.verb == "launch":
        return remote.launch_commands(cfg, _launch_run(args))
    if args.verb in ("sweep", "watch"):
        sweep_name, runs = sweep_runs(args)
        if args.verb == "watch" or args.watch:
            return watch.plan_commands(cfg, sweep_name, runs, _vms(cfg, args))
        return remote.sweep_commands(cfg, sweep_name, runs, _vms(cfg, args))
    if args.verb == "cost":
        return []
    if args.verb == "status":
        vms = [] if args.no_vm or not (args.vms or cfg.name) else _vms(cfg, args)
        return remote.status_commands(cfg, vms, _selected_runs(args))
    if args.verb == "logs":
        if bool(args.run) == bool(args.sweep):
            raise ValueError("logs needs exactly one of --run and --sweep")
        if args.run:
            log = remote.log_path(cfg, tpu_config.check_run_name(args.run, "--run"))
        else:
            log = remote.sweep_log_path(cfg, common.check_name(args.sweep, "--sweep"))
        return remote.logs_commands(cfg, log, args.lines, args.follow, args.worker)
    if args.verb == "check":
        return per_vm(lambda c: [gcloud.gcloud_tpu(c, "describe", "--format=json"),
                                 gcloud.ssh_command(c, remote.check_script(c, args.check_arg),
                                                    worker=args.worker)])
    if args.verb == "download":
        return gcloud.download_commands(cfg, args.dest, _selected_runs(args), args.with_checkpoints)
    raise ValueError(f"unknown verb {args.verb!r}")


def _print_status(commands: list[list[str]], runner, runs_url: str) -> int:
    """Runs the VM commands (streamed, failures tolerated), then tabulates run.json reads."""
    states: list[common.RunState] = []
    cat_cmds = [c for c in commands if c[:3] == ["gcloud", "storage", "cat"]]
    for argv in commands:
        if argv[0].startswith("#") or argv in cat_cmds:
            continue
        if argv[:3] == ["gcloud", "storage", "ls"]:
            result = common.capture(argv, runner)
            # Only URLs under the root: a listed object name never becomes an option.
            urls = [u.strip() for u in result.stdout.splitlines()
                    if u.strip().startswith(runs_url + "/")
                    and u.strip().endswith("/" + common.RUN_JSON)]
            if result.returncode != 0 and not urls:
                print(f"no runs found: {common.format_command(argv)}", file=sys.stderr)
            cat_cmds += [["gcloud", "storage", "cat", u] for u in sorted(urls)]
            continue
        try:
            common.execute([argv], dry_run=False, runner=runner)
        except common.CommandError as e:
            print(f"warning: {e}", file=sys.stderr)
    for argv in cat_cmds:
        url = argv[-1]
        result = common.capture(argv, runner)
        try:
            data = json.loads(result.stdout) if result.returncode == 0 else None
        except ValueError:
            data = None
        name = url[: -len("/" + common.RUN_JSON)].removeprefix(runs_url + "/")
        states.append(common.RunState.from_json(name, data))
    if states:
        print(common.format_table([s.row() for s in states], ["run", "status", "step"]))
    return 0


def _check(commands: list[list[str]], timeout: float, runner) -> int:
    """``check``: per VM, its workers (describe) and the preflight's answer of each (ssh);
    prints the output, then one row per worker. Exit 0 when every worker passed."""
    rows, failed = [], False
    for describe, ssh in zip(commands[::2], commands[1::2]):
        vm = describe[5]
        known = gcloud.run(describe, timeout, runner)
        try:
            endpoints = json.loads(known.stdout).get("networkEndpoints") or []
        except (ValueError, AttributeError):
            endpoints = []
        result = gcloud.run(ssh, timeout, runner)
        text = gcloud.output(result)
        print("\n".join(l for l in text.splitlines() if not l.startswith(remote.CHECK_LINE)))
        answers = re.findall(rf"^{remote.CHECK_LINE}: (\S+): (pass|fail.*)$", text, re.M)
        rows += [[vm, host, verdict] for host, verdict in answers]
        failed |= any(verdict != "pass" for _, verdict in answers)
        missing = len(endpoints) - len(answers) if "--worker=all" in ssh else 0
        if missing > 0 or not answers:
            lines = text.strip().splitlines()
            rows.append([vm, "?", f"no answer from {max(missing, 1)} worker(s) (ssh exit code "
                         f"{result.returncode}{': ' + lines[-1][:200] if lines else ''})"])
            failed = True
    print(common.format_table(rows, ["vm", "worker", "result"]))
    passed = sum(r[2] == "pass" for r in rows)
    print(f"check: {passed} worker(s) passed, {'some failed' if failed else 'none failed'}")
    return 1 if failed else 0


def _cost(args, cfg: tpu_config.TpuConfig) -> int:
    """``cost``: prints the table; errors are one line (exit 2)."""
    try:
        if args.sweep:
            _, runs = sweep_runs(args)
        elif args.gin_file:
            name = posixpath.basename(args.gin_file[-1]).removesuffix(".gin")
            runs = [Run(name, list(args.gin_file), list(args.gin_param))]
        else:
            raise ValueError("cost needs --sweep or --gin_file")
        costs = [cost.run_cost(r, args.examples_per_epoch, args.eval_examples) for r in runs]
        text = cost.report(costs, cfg.accelerator_type, mfu=cfg.mfu,
                           peak=cfg.peak_flops_per_chip, price=cfg.price_per_chip_hour,
                           examples_per_s=args.examples_per_s)
    except (ValueError, KeyError, OSError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    except Exception as e:
        print(f"error: {type(e).__name__}: {' '.join(str(e).split())[:300]}", file=sys.stderr)
        return 2
    print(text)
    return 0


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None,
         runner=None) -> int:
    """Entry point; ``runner`` replaces ``subprocess.run`` (tests)."""
    args = common.parse_args(build_parser(), argv)
    if hasattr(args, "gin_bindings"):
        args.gin_param = list(args.gin_param) + list(args.gin_bindings)
    try:
        cfg = _config_from_args(args, os.environ if environ is None else environ)
        commands = build_commands(args, cfg)
        if not _preflight_ok(args):
            return 2
    except (ValueError, KeyError, OSError, RuntimeError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    if args.verb == "cost":
        return _cost(args, cfg)
    creates = args.verb in ("create", "watch") or (args.verb == "sweep" and args.watch)
    if creates and cfg.zone_warning():
        print(cfg.zone_warning(), file=sys.stderr)
    if args.dry_run:
        common.execute(commands, dry_run=True)
        return 0
    if args.verb == "watch" or (args.verb == "sweep" and args.watch):
        sweep_name, runs = sweep_runs(args)
        return watch.Watcher(cfg, sweep_name, runs, _vms(cfg, args), runner=runner,
                             keep_vms=args.keep_vms).run()
    if args.verb == "check":
        return _check(commands, cfg.watch_timeout_s, runner)
    if args.verb == "status":
        return _print_status(commands, runner or subprocess.run, cfg.runs_url)
    try:
        common.execute(commands, dry_run=False, runner=runner or subprocess.run)
    except common.CommandError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.returncode or 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
