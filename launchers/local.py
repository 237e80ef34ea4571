"""Run a sweep on this machine: ``python -m launchers.local --sweep=NAME|FILE --root=DIR``.

Each run is a subprocess ``python -m trm.train --gin_file=... --gin_param=...
--workdir=DIR/<run name>`` whose stdout and stderr go to ``DIR/<run name>/launcher.log``.

* Before anything starts, every run is checked exactly as its start would check it
  (:mod:`trm.preflight`, in one subprocess of ``--python``): a bad binding or value in any run
  stops the sweep with one line per bad run and exit code 2, before any run starts.
* A run is skipped as completed only when it finished *with the same config*: a 10-step smoke
  run in the same folder is not the real run. A run whose workdir holds another config is an
  error (use another ``--root``, or remove that run). Other runs (new, interrupted, failed
  before) are started; the trainer resumes from the workdir's last checkpoint by itself.
  With ``--no_preflight`` the same is decided from ``run.json`` and ``command.json``.
* A failed run does not stop the sweep; failures are listed at the end and the exit code is 1.
* ``--parallel=N`` runs N at a time, each with ``cores // N`` torch threads, where cores are
  those the launcher may use: its CPU affinity, capped by a container's CPU quota
  (``trm.runtime.device.usable_cores``). That is a cap (``TRM_CPU_THREADS_MAX``), not a
  fixed count: each run's CPU thread rule and governor (:mod:`trm.runtime.threads`) still
  take threads away while other work keeps the cores busy, so the runs do not collapse when
  something else starts. With ``N > 1`` the runs are one group (``TRM_CPU_GROUP``, the
  launcher's pid): each counts the others' CPU time as the group's, not as other work, and
  they share what other work leaves (``trm.runtime.threads.CpuGroup``). A user's
  ``OMP_NUM_THREADS`` or ``TRM_CPU_THREADS`` fixes the count of every run instead
  (bitwise-repeatable CPU runs), and a ``TRM_CPU_THREADS_MAX`` lowers the share.
* Progress (runs done / total, elapsed, ETA) is printed as runs finish.
* Ctrl-C, ``kill`` (SIGTERM) or a closed terminal (SIGHUP) stops the sweep: each running run
  gets SIGTERM (it saves a checkpoint and exits; killed after 120 s), the launcher says how to
  resume and exits with 128 + the signal. Runs start in sessions of their own (the terminal's
  signals reach only the launcher) and, on Linux, get SIGTERM if the launcher dies in any way
  (``kill -9`` included), so no run is left running without its launcher.
* No shell is involved: each run is an argv list for ``subprocess.Popen``; ``--dry_run``
  prints it shell-quoted, so a printed line pasted into a shell runs the same argv. Run names
  must be relative path-safe names (their workdir stays inside ``--root``) and
  ``--train_module`` a dotted module name; either error is one line and exit code 2.

Flags::

    --sweep=NAME|FILE   a registered sweep (python -m launchers.sweep lists them) or a sweep
                        file (.json/.yaml, launchers.sweep_files)
    --grid=MACRO=v1,v2  a command-line grid over --gin_file (repeatable; instead of --sweep)
    --sweep_name=NAME   the command-line grid's name (default grid)
    --root=DIR          parent directory of the run workdirs
    --parallel=N        concurrent runs (default 1)
    --seeds=0,1         override the sweep's seeds
    --gin_file=F        with --grid: the base experiment; with --sweep: added to every run
    --gin_param=K=V     extra binding for every run (repeatable; not a swept macro; also
                        --gin_bindings=K=V and --gin.K=V)
    --gin_search_paths  folders searched for gin files before the shipped tree
    --runs=GLOB         only runs whose name matches (fnmatch), e.g. '*_s0'
    --train_module=M    trainer module (default trm.train)
    --preflight_module  preflight module (default trm.preflight); --no_preflight skips it
    --dry_run           preflight, then print the commands and which runs would be skipped
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fnmatch
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Sequence, TextIO

from launchers import common
from launchers.named_sweeps import Run, add_sweep_module_flag
from launchers.sweep_files import command_line_sweep, resolve_sweep

LAUNCHER_LOG = "launcher.log"


@dataclasses.dataclass
class Job:
    """One run to execute locally."""

    run: Run
    workdir: str
    argv: list[str]


def plan(runs: Sequence[Run], root: str, python: str, train_module: str,
         extra_bindings: Sequence[str] = (), extra_files: Sequence[str] = (),
         gin_search_paths: Sequence[str] = ()) -> list[Job]:
    """The job of every run (pure).

    Raises:
      ValueError: a run name that is not a relative path-safe name (it would leave ``root``)
        or a ``train_module`` that is not a dotted module name.
    """
    common.check_module(train_module, "--train_module")
    jobs = []
    for run in runs:
        workdir = common.path_inside(root, run.name, "run name")
        run = Run(run.name, list(run.gin_files) + list(extra_files),
                  list(run.bindings) + list(extra_bindings))
        argv = [python, "-m", train_module] + common.trainer_args(
            run.gin_files, run.bindings, workdir, gin_search_paths)
        jobs.append(Job(run, workdir, argv))
    return jobs


def preflight(jobs: Sequence[Job], python: str, module: str,
              gin_search_paths: Sequence[str] = ()) -> list[dict]:
    """Every job checked as its start would check it, its workdir included (see
    :func:`launchers.common.preflight`)."""
    return common.preflight([{"name": j.run.name, "gin_files": j.run.gin_files,
                              "bindings": j.run.bindings, "workdir": j.workdir} for j in jobs],
                            python, module, gin_search_paths)


def completed_without_preflight(job: Job) -> bool:
    """Without a preflight: finished (run.json) with the same gin files and bindings
    (command.json)."""
    if not common.is_completed(common.read_run_json(job.workdir)):
        return False
    command = common.read_json_file(os.path.join(job.workdir, "command.json"))
    if command is None:
        return False
    files = [os.path.basename(f) for f in command.get("gin_files", [])]
    return (files == [os.path.basename(f) for f in job.run.gin_files]
            and list(command.get("gin_params", [])) == list(job.run.bindings))


class Progress:
    """Counts finished runs and estimates the time left from this session's run times."""

    def __init__(self, total: int, already_done: int, parallel: int, out: TextIO):
        self.total, self.done, self.parallel, self.out = total, already_done, parallel, out
        self.start = time.monotonic()
        self.executed = 0
        self.remaining = total - already_done

    def finished(self, job: Job, ok: bool, seconds: float, rc: int) -> None:
        self.done += 1
        self.executed += 1
        self.remaining -= 1
        elapsed = time.monotonic() - self.start
        eta = None
        if self.remaining == 0:
            eta = 0.0
        elif self.executed:
            # Average wall time per run this session, over `parallel` slots.
            eta = elapsed / self.executed * self.remaining
        status = "ok" if ok else f"FAILED (exit {rc})"
        print(
            f"[{self.done}/{self.total}] {status} {job.run.name} in "
            f"{common.format_duration(seconds)} | elapsed {common.format_duration(elapsed)}, "
            f"ETA {common.format_duration(eta)}",
            file=self.out,
            flush=True,
        )


def _child_env(parallel: int) -> dict[str, str]:
    """The runs' environment: the launcher's, with each run's share of the cores as the cap
    of its thread rule (``TRM_CPU_THREADS_MAX``), unless the user fixed the count; runs side by
    side also name the launcher as their group (``TRM_CPU_GROUP``), so each one's governor
    counts the others as the group's work, not as other work, and they share what other work
    leaves free (trm.runtime.threads.CpuGroup)."""
    from trm.runtime.device import THREADS_MAX_ENV, threads_max, usable_cores
    from trm.runtime.threads import GROUP_ENV
    env = dict(os.environ)
    env.pop(GROUP_ENV, None)   # a launcher started under another one's run: not its group
    if any(env.get(k, "").strip() for k in ("OMP_NUM_THREADS", "TRM_CPU_THREADS")):
        return env   # the user's fixed count, for every run
    # the cores this launcher may use (affinity, capped by a container's CPU quota), shared by
    # the runs at a time; a cap set by the user lowers it (a bad one is an error here, once)
    share = max(1, usable_cores()[0] // parallel)
    user = threads_max()
    env[THREADS_MAX_ENV] = str(min(share, user) if user is not None else share)
    if parallel > 1:
        # Without the group, a run at its share (using a little more than its share of CPU
        # time: 2.1 CPUs at 2 threads) would look like other work to the others, and with many
        # runs the governors would take threads from all of them and give them back.
        env[GROUP_ENV] = str(os.getpid())
    return env


#: how long a stopped sweep waits for its running runs to save a checkpoint and exit
STOP_GRACE_S = 120.0


class Stopped(KeyboardInterrupt):
    """The launcher got a stop signal (SIGTERM, SIGHUP) while runs were executing."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _stop_signals():
    """While runs execute, SIGTERM and SIGHUP stop the sweep as Ctrl-C does (the running runs
    are asked to stop, save a checkpoint and exit; the launcher then exits), instead of killing
    the launcher alone and leaving its runs going on unwatched. A repeated signal during that
    stop is ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = []

    def handler(signum, frame):
        if not fired:
            fired.append(signum)
            raise Stopped(signum)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


def execute(todo: Sequence[Job], total: int, parallel: int, out: TextIO,
            env: dict[str, str] | None = None) -> list[Job]:
    """Runs ``todo`` with at most ``parallel`` at a time, in ``env`` (default
    :func:`_child_env`); returns the failed jobs.

    Ctrl-C, SIGTERM or SIGHUP: each running run gets SIGTERM (the trainer saves a checkpoint
    and exits), up to :data:`STOP_GRACE_S` in all before the rest are killed; then the
    interrupt (:class:`Stopped` for the signals) is raised."""
    progress = Progress(total, total - len(todo), parallel, out)
    env = _child_env(parallel) if env is None else env
    pending = list(todo)
    running: list[tuple[Job, subprocess.Popen, TextIO, float]] = []
    failed: list[Job] = []
    with _stop_signals():
        _execute(pending, running, failed, progress, env, out, parallel)
    return failed


def _execute(pending: list[Job], running: list, failed: list[Job], progress: Progress,
             env: dict[str, str], out: TextIO, parallel: int) -> None:
    """The loop of :func:`execute`: starts, watches and (on an interrupt) stops the runs."""
    try:
        while pending or running:
            while pending and len(running) < parallel:
                job = pending.pop(0)
                os.makedirs(job.workdir, exist_ok=True)
                log = open(os.path.join(job.workdir, LAUNCHER_LOG), "a")
                log.write(f"# {time.strftime('%Y-%m-%dT%H:%M:%S')} "
                          f"{common.format_command(job.argv)}\n")
                log.flush()
                # A session of its own: a terminal's hangup or Ctrl-C reaches the launcher,
                # which stops the run properly (SIGTERM: checkpoint, exit), not the run directly;
                # and SIGTERM when the launcher dies in any way (Linux), so no run goes on
                # unwatched.
                proc = subprocess.Popen(job.argv, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=env,
                                        start_new_session=True, preexec_fn=_die_with_parent)
                print(f"started {job.run.name} (log {os.path.join(job.workdir, LAUNCHER_LOG)})",
                      file=out, flush=True)
                running.append((job, proc, log, time.monotonic()))
            time.sleep(0.05)
            for entry in list(running):
                job, proc, log, started = entry
                rc = proc.poll()
                if rc is None:
                    continue
                running.remove(entry)
                log.close()
                if rc != 0:
                    failed.append(job)
                progress.finished(job, rc == 0, time.monotonic() - started, rc)
    except KeyboardInterrupt:
        for job, proc, log, _ in running:   # first the signals, then the words (see _say)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for job, proc, log, _ in running:
            _say(out, f"interrupted: stopping {job.run.name}")
        deadline = time.monotonic() + STOP_GRACE_S
        for job, proc, log, _ in running:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                _say(out, f"interrupted: {job.run.name} did not stop within "
                          f"{STOP_GRACE_S:.0f} s; killed (it resumes from its last checkpoint)")
            log.close()
        raise


def _say(out: TextIO, line: str) -> None:
    """Prints a line of the stop path; a terminal that hung up (SIGHUP) fails writes with
    EIO, which must not keep the runs from being stopped."""
    try:
        print(line, file=out, flush=True)
    except (OSError, ValueError):
        pass


def _prctl():
    """libc's ``prctl``, looked up in the launcher (Linux; None elsewhere): the run's process
    only calls it between fork and exec, where loading a library could deadlock."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl()
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In a run's process, before it starts (Linux): SIGTERM when the launcher's thread that
    started it ends, e.g. the launcher killed with SIGKILL; elsewhere nothing."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m launchers.local",
                                     description="Run a sweep's runs on this machine.")
    parser.add_argument("--sweep", help="a registered sweep's name or a sweep file")
    parser.add_argument("--grid", action="append", default=[], metavar="MACRO=v1,v2",
                        help="a command-line grid axis over --gin_file (repeatable)")
    parser.add_argument("--sweep_name", default="grid", help="the --grid sweep's name")
    parser.add_argument("--root", required=True, help="parent directory of run workdirs")
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--seeds", help="comma-separated seeds (default: the sweep's)")
    common.add_gin_arguments(parser)
    parser.add_argument("--runs", help="only runs whose name matches this glob")
    parser.add_argument("--train_module", default=common.DEFAULT_TRAIN_MODULE)
    parser.add_argument("--preflight_module", default="trm.preflight")
    parser.add_argument("--no_preflight", action="store_true",
                        help="skip the preflight (completed = run.json + command.json)")
    parser.add_argument("--python", default=sys.executable, help="interpreter for the runs")
    parser.add_argument("--dry_run", "--dry-run", dest="dry_run", action="store_true")
    add_sweep_module_flag(parser)
    return parser


def _sweep(args):
    """The sweep of ``--sweep`` or ``--grid``, and the gin files to add to every run."""
    if bool(args.sweep) == bool(args.grid):
        raise ValueError("give either --sweep=NAME|FILE or --grid=MACRO=v1,v2 (with "
                         "--gin_file=<base experiment>)")
    seeds = common.parse_seeds(args.seeds)
    if args.grid:
        return command_line_sweep(args.gin_file, args.grid, args.sweep_name,
                                  seeds or (0,)), seeds, []
    return resolve_sweep(args.sweep), seeds, args.gin_file


def _select(jobs: Sequence[Job], results: Sequence[dict], out: TextIO
            ) -> tuple[list[Job], list[Job], list[str]]:
    """(to run, completed, errors) from the preflight's results."""
    todo, done, errors = [], [], []
    for job, result in zip(jobs, results):
        if not result.get("ok"):
            errors.append(f"{job.run.name}: {result.get('error')}")
        elif result.get("state") == "completed":
            done.append(job)
        elif result.get("state") == "conflict":
            errors.append(f"{job.run.name}: {result.get('detail')}")
        else:
            todo.append(job)
            if result.get("state") == "resume":
                print(f"resume {job.run.name}: {result.get('detail')}", file=out)
    return todo, done, errors


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    parser = _parser()
    args = common.parse_args(parser, argv)
    if args.parallel < 1:
        parser.error("--parallel must be >= 1")
    try:
        env = _child_env(args.parallel)   # a bad TRM_CPU_THREADS_MAX: one line, up front
        sweep, seeds, extra_files = _sweep(args)
        runs = sweep.runs(seeds)
        extra = common.gin_bindings(args)
        common.check_extra_bindings(extra, sweep.swept_keys())
        if args.runs:
            runs = [r for r in runs if fnmatch.fnmatchcase(r.name, args.runs)]
            if not runs:
                raise ValueError(f"--runs={args.runs!r} matches none of the {sweep.name} runs "
                                 "(`python -m launchers.sweep --sweep=... --list` shows them)")
        jobs = plan(runs, args.root, args.python, args.train_module, extra, extra_files,
                    args.gin_search_paths)
        if args.no_preflight:
            done = [j for j in jobs if completed_without_preflight(j)]
            todo, errors = [j for j in jobs if j not in done], []
        else:
            todo, done, errors = _select(jobs, preflight(jobs, args.python,
                                                         args.preflight_module,
                                                         args.gin_search_paths), out)
    except (KeyError, ValueError, RuntimeError) as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2
    if errors:
        print(f"error: {len(errors)} of {len(jobs)} runs would not start; nothing was started:",
              file=sys.stderr)
        for line in errors:
            print(f"  {line}", file=sys.stderr)
        return 2
    for job in done:
        print(f"skip {job.run.name}: completed", file=out)
    if args.dry_run:
        for job in todo:
            print(common.format_command(job.argv), file=out)
        return 0
    print(f"{sweep.name}: {len(runs)} runs, {len(done)} completed, {len(todo)} to run, "
          f"{args.parallel} at a time", file=out, flush=True)
    start = time.monotonic()
    try:
        failed = execute(todo, len(runs), args.parallel, out, env)
    except KeyboardInterrupt as e:
        signum = e.signum if isinstance(e, Stopped) else signal.SIGINT
        _say(out, f"stopped by {signal.Signals(signum).name} after "
                  f"{common.format_duration(time.monotonic() - start)}: the running runs were "
                  "asked to stop and save a checkpoint; run the same command again to resume")
        return 128 + signum
    elapsed = common.format_duration(time.monotonic() - start)
    if failed:
        print(f"{len(failed)} of {len(todo)} runs failed ({elapsed}):", file=out)
        for job in failed:
            print(f"  {job.run.name}: see {os.path.join(job.workdir, LAUNCHER_LOG)}", file=out)
        return 1
    print(f"all {len(runs)} runs completed ({elapsed})", file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
