"""Run a sweep on this machine: ``python -m launchers.local --sweep=NAME --root=DIR``.

Each run is a subprocess ``python -m trm.train --gin_file=... --gin_param=...
--workdir=DIR/<run name>`` whose stdout and stderr go to ``DIR/<run name>/launcher.log``.

* Runs whose ``run.json`` says ``"status": "completed"`` are skipped.
* Other runs (new, interrupted, failed before) are started; the trainer resumes from the
  workdir's last checkpoint by itself.
* A failed run does not stop the sweep; failures are listed at the end and the exit code is 1.
* ``--parallel=N`` runs N at a time; each gets ``OMP_NUM_THREADS = cores // N`` unless the
  environment already sets it.
* Progress (runs done / total, elapsed, ETA) is printed as runs finish.
* No shell is involved: each run is an argv list for ``subprocess.Popen``; ``--dry_run``
  prints it shell-quoted, so a printed line pasted into a shell runs the same argv. Run names
  must be relative path-safe names (their workdir stays inside ``--root``) and
  ``--train_module`` a dotted module name; either error is one line and exit code 2.

Flags::

    --sweep=NAME        a sweep of launchers.named_sweeps (python -m launchers.sweep lists them)
    --root=DIR          parent directory of the run workdirs
    --parallel=N        concurrent runs (default 1)
    --seeds=0,1         override the sweep's seeds
    --gin_param=K=V     extra binding for every run (repeatable; not a swept macro)
    --runs=GLOB         only runs whose name matches (fnmatch), e.g. '*_s0'
    --train_module=M    trainer module (default trm.train)
    --dry_run           print the commands and which runs would be skipped
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import os
import signal
import subprocess
import sys
import time
from typing import Sequence, TextIO

from launchers import common
from launchers.named_sweeps import Run, add_sweep_module_flag, get_sweep

LAUNCHER_LOG = "launcher.log"


@dataclasses.dataclass
class Job:
    """One run to execute locally."""

    run: Run
    workdir: str
    argv: list[str]


def plan(runs: Sequence[Run], root: str, python: str, train_module: str,
         extra_bindings: Sequence[str] = ()) -> tuple[list[Job], list[Job]]:
    """Splits ``runs`` into (to run, already completed). Pure apart from reading run.json.

    Raises:
      ValueError: a run name that is not a relative path-safe name (it would leave ``root``)
        or a ``train_module`` that is not a dotted module name.
    """
    todo, done = [], []
    common.check_module(train_module, "--train_module")
    for run in runs:
        workdir = common.path_inside(root, run.name, "run name")
        argv = [python, "-m", train_module] + common.trainer_args(
            run.gin_files, list(run.bindings) + list(extra_bindings), workdir
        )
        job = Job(run, workdir, argv)
        (done if common.is_completed(common.read_run_json(workdir)) else todo).append(job)
    return todo, done


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
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // parallel))
    return env


def execute(todo: Sequence[Job], total: int, parallel: int, out: TextIO) -> list[Job]:
    """Runs ``todo`` with at most ``parallel`` at a time; returns the failed jobs."""
    progress = Progress(total, total - len(todo), parallel, out)
    env = _child_env(parallel)
    pending = list(todo)
    running: list[tuple[Job, subprocess.Popen, TextIO, float]] = []
    failed: list[Job] = []
    try:
        while pending or running:
            while pending and len(running) < parallel:
                job = pending.pop(0)
                os.makedirs(job.workdir, exist_ok=True)
                log = open(os.path.join(job.workdir, LAUNCHER_LOG), "a")
                log.write(f"# {time.strftime('%Y-%m-%dT%H:%M:%S')} "
                          f"{common.format_command(job.argv)}\n")
                log.flush()
                proc = subprocess.Popen(job.argv, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=env)
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
        for job, proc, log, _ in running:
            print(f"interrupted: stopping {job.run.name}", file=out, flush=True)
            proc.send_signal(signal.SIGTERM)
        for job, proc, log, _ in running:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
        raise
    return failed


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    parser = argparse.ArgumentParser(prog="python -m launchers.local",
                                     description="Run a sweep's runs on this machine.")
    parser.add_argument("--sweep", required=True)
    parser.add_argument("--root", required=True, help="parent directory of run workdirs")
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--seeds", help="comma-separated seeds (default: the sweep's)")
    parser.add_argument("--gin_param", action="append", default=[],
                        help="extra binding for every run (repeatable)")
    parser.add_argument("--runs", help="only runs whose name matches this glob")
    parser.add_argument("--train_module", default=common.DEFAULT_TRAIN_MODULE)
    parser.add_argument("--python", default=sys.executable, help="interpreter for the runs")
    parser.add_argument("--dry_run", "--dry-run", dest="dry_run", action="store_true")
    add_sweep_module_flag(parser)
    args = parser.parse_args(argv)
    if args.parallel < 1:
        parser.error("--parallel must be >= 1")
    try:
        sweep = get_sweep(args.sweep)
        runs = sweep.runs(common.parse_seeds(args.seeds))
        common.check_extra_bindings(args.gin_param, sweep.swept_keys())
    except (KeyError, ValueError) as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2
    if args.runs:
        runs = [r for r in runs if fnmatch.fnmatchcase(r.name, args.runs)]
    try:
        todo, done = plan(runs, args.root, args.python, args.train_module, args.gin_param)
    except ValueError as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
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
    failed = execute(todo, len(runs), args.parallel, out)
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
