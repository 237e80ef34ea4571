"""One training run's life in its workdir: open, check, record, save, finish, close.

:class:`RunSession` owns everything of a run that is not the training itself: the workdir and
its lease lock, the stop signal (SIGTERM/SIGINT: checkpoint and stop; SIGUSR1: XLA report),
the :class:`~trm.run.record.RunRecord`, the :class:`~trm.run.checkpoints.CheckpointManager`,
the TensorBoard writer, the check of the config against the saved ``config.gin``, the
progress lines and the end-of-run summary. The trainer calls, in order::

    session.open()                      # workdir, stop signal, lock
    state = session.restore(check)      # config compared (nothing written), latest checkpoint
    session.begin(...)                  # after the first step: config.gin, run.json, tb/
    session.log(...) / session.evaluated(...) / session.save(...)
    session.finish(status, step)        # or session.fail(error) on an exception
    session.close(...)                  # always: stream, writer, checkpoints, lock

Process 0 does the checks and writes, through ``runtime.on_main``: their failure ends every
process with the same error. This module imports no model code: the trainer hands it the
training state's check and the run's description as callables.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

from trm.errors import TrainingError
from trm.run.guards import open_workdir, storage_error

log = logging.getLogger("trm.train")


class RunSession:
    """The run state of one training run in ``path`` (local path or ``gs://...``).

    Args:
        path: the workdir.
        runtime: the device / process group (``on_main``, ``is_main``, ``is_xla``).
        best_metric: the metric run.json's ``best`` and the best checkpoint follow.
        keep_checkpoints: how many checkpoints to keep.
        async_checkpoint: write checkpoints in the background (process 0).
        trust_checkpoint: load checkpoints with full unpickling (see trm.run.checkpoints).
        force_unlock: take over the workdir's lock even if its owner looks alive.
        config_text: the gin config, saved as ``config.gin`` and checked on resume.
        allow_config_change: resume although ``config_text`` differs from the saved one.
        command: saved as ``command.json``.
        hparams: saved as ``hparams.json``; its macros are TensorBoard's hparams.
        operative_config: returns the operative gin config after the first step (or "").
        progress: print progress lines and the end-of-run summary.
    """

    def __init__(self, path: str, runtime: Any, *, best_metric: Optional[str],
                 keep_checkpoints: int, async_checkpoint: bool, trust_checkpoint: bool = False,
                 force_unlock: bool = False, config_text: str = "",
                 allow_config_change: bool = False, command: Optional[Dict[str, Any]] = None,
                 hparams: Optional[Dict[str, Any]] = None,
                 operative_config: Optional[Callable[[], str]] = None,
                 progress: bool = True) -> None:
        self.path, self.runtime = path, runtime
        self.best_metric, self.keep_checkpoints = best_metric, keep_checkpoints
        self.async_checkpoint, self.trust_checkpoint = async_checkpoint, trust_checkpoint
        self.force_unlock = force_unlock
        self.config_text, self.allow_config_change = config_text, allow_config_change
        self.command, self.hparams = command or {}, hparams
        self.operative_config, self.progress = operative_config, progress
        self.workdir: Any = None
        self.record: Any = None
        self.writer: Any = None
        self.ckpt: Any = None
        self.stopper: Any = None
        self.started = False
        self.config_outcome: Optional[str] = None
        self.best: Optional[Dict[str, Any]] = None
        self.last_eval: Dict[str, float] = {}
        self.eval_step: Optional[int] = None
        self.total_steps = 0

    # -- opening -----------------------------------------------------------------------------
    def open(self) -> "RunSession":
        """Opens the workdir, installs the stop signal (from the start: a preemption during
        start-up stops after step 1) and takes the lease lock (on process 0; its failure
        ends every process). Nothing else is written."""
        from trm.run.record import RunRecord
        from trm.runtime.signals import StopSignal
        self.workdir = open_workdir(self.path)
        self.record = RunRecord(self.workdir, best_metric=self.best_metric)
        stopper = self.stopper = StopSignal()
        stopper.install()
        # A SIGTERM starts the exit grace window of every run-state wait, even one blocked on
        # a storage outage (TRM_EXIT_GRACE_S; docs/RUN_STATE.md, "Storage outages").
        self.workdir.watch_stop(lambda: stopper.received is not None)
        try:
            self.runtime.on_main(self._lock)
        except BaseException:
            stopper.uninstall()
            raise
        return self

    def _lock(self) -> None:
        try:
            self.workdir.acquire_lock({"host": socket.gethostname(), "pid": os.getpid()},
                                      force=self.force_unlock)
        except OSError as e:
            raise TrainingError(f"Cannot write to the workdir {self.path}: "
                                f"{e.strerror or e}. Choose a writable --workdir.") from e

    def restore(self, check: Callable[[Any], None]) -> Optional[Dict[str, Any]]:
        """Opens the checkpoints, compares the config with the workdir's (nothing is written
        until the state is known to fit) and returns the latest good checkpoint's state (None
        for a new run); ``check(state)`` judges each candidate (see
        ``CheckpointManager.restore``)."""
        from trm.run.checkpoints import CheckpointManager
        rt = self.runtime
        self.ckpt = CheckpointManager(self.workdir, keep=self.keep_checkpoints,
                                      best_metric=self.best_metric, best_mode="max",
                                      async_save=self.async_checkpoint and rt.is_main,
                                      trust=self.trust_checkpoint)
        self.config_outcome = rt.on_main(self._check_config)
        restored = self.ckpt.restore("latest", check=check)
        return None if restored is None else restored[1]

    def _check_config(self) -> str:
        """Compares this run's config with the workdir's config.gin, after checking that the
        workdir's run.json is readable (nothing is written)."""
        from trm.run.record import ConfigMismatchError, RunRecordError
        try:
            self.record.read()
            if not self.config_text:
                return "none"
            return self.record.compare_config(self.config_text,
                                              allow_change=self.allow_config_change)
        except RunRecordError as e:
            raise TrainingError(str(e)) from e
        except ConfigMismatchError as e:
            raise TrainingError(
                f"The workdir {self.path} holds a run with another configuration. Use a "
                f"new --workdir, or pass --allow_config_change to continue with the new "
                f"configuration. {e}") from e

    def already_completed(self, resumed: bool, step: int, total_steps: int) -> bool:
        """Whether the restored run has completed (process 0 decides, every process learns
        it; none evaluates again); says so when it has."""
        done = self.runtime.on_main(lambda: resumed and step >= total_steps
                                    and self.record.status == "completed")
        if done and self.progress and self.runtime.is_main:
            print(f"{self.path}: this run is already completed (step {step} of "
                  f"{total_steps}); nothing to do.", flush=True)
        return bool(done)

    # -- the run's records -------------------------------------------------------------------
    @property
    def stop_received(self) -> bool:
        """Whether this process received a stop request (SIGTERM/SIGINT)."""
        return self.stopper is not None and self.stopper.received is not None

    def begin(self, step: int, total_steps: int, resumed: bool,
              describe: Callable[[], Dict[str, Any]], *, ema_change: Optional[Dict] = None,
              forward_auto: bool = False) -> None:
        """Records the run's start, after its first step succeeded: config.gin (replacing a
        changed one only now, after the checkpoint was found compatible), command.json,
        hparams.json, run.json (with ``describe()``'s fields), the operative config and the
        TensorBoard writer."""
        self.started, self.total_steps = True, total_steps
        self.runtime.on_main(lambda: self._record_start(step, resumed, describe, ema_change,
                                                        forward_auto))

    def _record_start(self, step: int, resumed: bool, describe: Callable[[], Dict[str, Any]],
                      ema_change: Optional[Dict], forward_auto: bool) -> None:
        from trm.run.storage import UntrustedFileError
        from trm.run.tensorboard import SummaryWriterSync
        if self.config_text:
            self.record.ensure_config(self.config_text, allow_change=self.allow_config_change)
        # On resume, TensorBoard hides points of the old files from the resumed step on.
        try:
            self.writer = SummaryWriterSync(self.workdir,
                                            purge_step=step + 1 if resumed else None)
        except UntrustedFileError as e:
            raise TrainingError(f"{e}. Remove the link, or use another --workdir.") from e
        if self.config_text and self.config_outcome != "same":
            self.writer.text("config/gin", _md_code(self.config_text), step)
        if self.operative_config is not None and not self.record.has_operative_config():
            self.record.write_operative_config(self.operative_config())
        fields = describe()
        if ema_change is not None:
            previous = self.record.read().get("ema_changes")
            fields["ema_changes"] = (previous if isinstance(previous, list) else []) + [
                ema_change]
        self.record.start(resumed=resumed, step=step, fields=fields,
                          command=self.command, hparams=self.hparams, best=self.best)
        if self.progress:
            print(f"{'resumed' if resumed else 'started'} {self.path} at step "
                  f"{step}/{self.total_steps}: {fields['num_params']:,} parameters, "
                  f"device {fields['device']}, forward {fields['forward_dtype']}"
                  f"{' (auto)' if forward_auto else ''}, "
                  f"{fields['torch_threads']} torch threads"
                  f"{' = ' + fields['cpu_threads_rule'] if fields.get('cpu_threads_rule') else ''}",
                  flush=True)
        if not resumed:
            self.writer.scalars({"params/num_params": float(fields["num_params"])}, 0)
            # TensorBoard's HParams dashboard: this run is one trial, its macros the columns
            macros = (self.hparams or {}).get("macros", {})
            self.writer.hparams({k: v for k, v in macros.items()
                                 if v is None or isinstance(v, (bool, int, float, str))},
                                group_name=self.path)

    def thread_changes(self, step: int, changes: Sequence[Mapping[str, Any]]) -> None:
        """Appends the CPU thread governor's ``changes`` (made before ``step``) to run.json's
        ``cpu_thread_changes`` (process 0; the last 100 kept) and its ``torch_threads``."""
        if not changes:
            return

        def record() -> None:
            previous = self.record.read().get("cpu_thread_changes")
            kept = (previous if isinstance(previous, list) else []) + [
                {**c, "step": step} for c in changes]
            self.record.update_later(cpu_thread_changes=kept[-100:],
                                     torch_threads=changes[-1]["threads"])
        self.runtime.on_main(record)

    def scalar(self, tag: str, value: float, step: int) -> None:
        """One scalar into TensorBoard (process 0, once the run has started)."""
        if self.writer is not None:
            self.writer.scalar(tag, value, step)

    def log(self, step: int, metrics: Mapping[str, float], perf: Mapping[str, float],
            eta_s: float, xla_metrics: bool = False) -> None:
        """A log interval: ``train/*`` and ``perf/*`` (and ``xla/*`` when asked) to
        TensorBoard, run.json's progress, the lock's heartbeat, the progress line."""
        def write() -> None:
            self.writer.scalars({f"train/{k}": v for k, v in metrics.items()}, step)
            self.writer.scalars({f"perf/{k}": v for k, v in perf.items()}, step)
            if xla_metrics:
                from trm.runtime.signals import xla_metrics as read_xla_metrics
                self.writer.scalars(read_xla_metrics(), step)
            self.writer.flush()
            self.record.log(step)
            self.workdir.heartbeat()
            if self.progress:
                print(f"step {step}/{self.total_steps} "
                      f"({100 * step / self.total_steps:.0f}%)  "
                      f"lm_loss {metrics.get('lm_loss', math.nan):.4f}  "
                      f"acc {metrics.get('accuracy', math.nan):.3f}  "
                      f"exact {metrics.get('exact_accuracy', math.nan):.3f}  "
                      f"lr {metrics['lr']:.2e}  {perf['steps_per_s']:.2f} steps/s  "
                      f"ETA {_fmt_s(eta_s)}", flush=True)
        self.runtime.on_main(write)

    def evaluated(self, step: int, tagged: Mapping[str, float],
                  headline: Optional[float]) -> None:
        """Records the evaluation of ``step``: TensorBoard, ``eval/step_X/metrics.json`` and
        run.json's best (process 0); its metrics go with the checkpoint of the same step. A
        non-finite metric ends the run instead (nothing recorded)."""
        bad = sorted(k for k, v in tagged.items() if isinstance(v, float) and not math.isfinite(v))
        if bad:
            raise TrainingError(diverged_message(
                f"The evaluation at step {step} gave non-finite {', '.join(bad)}", self))
        def record() -> None:
            self.writer.scalars(tagged, step)
            self.writer.flush()
            self.best = self.record.evaluation(step, tagged)
            if self.progress:
                print(f"eval step {step}: exact_accuracy "
                      f"{'n/a' if headline is None else f'{headline:.4f}'}  "
                      + "  ".join(f"{k}={v:.4f}" for k, v in sorted(tagged.items())
                                  if k.startswith("ARC/")), flush=True)
        self.runtime.on_main(record)
        self.last_eval, self.eval_step = dict(tagged), step

    def save(self, step: int, state: Mapping[str, Any]) -> None:
        """Commits the checkpoint of ``step`` (process 0), with the metrics of an evaluation of
        the same step; a storage failure is one line that says what is intact."""
        from trm.run.checkpoints import CheckpointError

        def save() -> None:
            fresh = self.eval_step == step
            try:
                self.ckpt.save(step, state, metrics=self.last_eval if fresh else None)
            except (OSError, CheckpointError) as e:
                raise self.storage_error(e, f"saving the checkpoint of step {step}") from e
        self.runtime.on_main(save)

    def storage_error(self, e: Exception, what: str) -> Exception:
        """A one-line error for a storage failure (see :func:`trm.run.guards.storage_error`)."""
        return storage_error(e, what, self.path, self.ckpt.latest_step())

    def serve_report(self, step: int) -> None:
        """Writes the XLA metrics report when SIGUSR1 asked for one (process 0)."""
        if self.stopper.report_requested and self.runtime.is_main:
            self.stopper.report_requested = False
            self.write_xla_report(step)

    def write_xla_report(self, step: int) -> None:
        """The full torch_xla metrics report into WORKDIR/xla_metrics_report.txt (XLA runs; at
        the end of a run and on SIGUSR1), so a slow step can be diagnosed from the run."""
        from trm.runtime.signals import xla_metrics_report
        report = xla_metrics_report() if self.runtime.is_xla else None
        if report:
            try:
                self.workdir.write_text("xla_metrics_report.txt", f"# step {step}\n{report}")
            except OSError as e:
                log.warning("Could not write the XLA metrics report: %s", e)

    # -- the end ---------------------------------------------------------------------------
    def finish(self, status: str, step: int) -> None:
        """Ends a run that stopped normally (``completed`` or ``preempted``): waits for the last
        checkpoint, records the status, writes the XLA report and prints the summary."""
        from trm.run.checkpoints import CheckpointError

        def finish() -> None:
            try:
                self.ckpt.wait()
            except (OSError, CheckpointError) as e:
                raise self.storage_error(e, "saving the final checkpoint") from e
            self.writer.flush()
            self.record.finish(status, step)
            self.write_xla_report(step)
            if self.progress:
                self.print_summary(status, step)
        self.runtime.on_main(finish)

    def print_summary(self, status: str, step: int) -> None:
        wd = self.workdir
        lines = [f"run {status} at step {step}/{self.total_steps}: {wd.path}"]
        if self.best:
            lines.append(f"  best {self.best['metric']} {self.best['value']:.4f} at step "
                         f"{self.best['step']}")
        latest = self.ckpt.latest_step()
        lines.append(f"  checkpoints {wd.url('checkpoints')}"
                     + (f" (latest step {latest})" if latest is not None else ""))
        lines.append(f"  logs        tensorboard --logdir {wd.url('tb')}")
        if status == "preempted":
            lines.append("  the same command resumes it")
        print("\n".join(lines), flush=True)

    def fail(self, error: BaseException) -> None:
        """Records a failure. A start that failed before its first step leaves no run files
        behind (they would block the corrected relaunch); a run that had started records
        ``failed`` (``preempted`` for a KeyboardInterrupt)."""
        if self.runtime.is_main and (self.started or self.workdir.exists("run.json")):
            self.record.fail(error,
                             "preempted" if isinstance(error, KeyboardInterrupt) else "failed")

    def close(self, *first: Tuple[str, Optional[Callable[[], None]]]) -> None:
        """Uninstalls the stop signal and closes ``first`` (``(name, close)`` pairs, e.g. the
        data stream), the TensorBoard writer, the checkpoint manager and the lock, in that
        order. Closing must not hide the error that got us here: a close failure is logged
        (a failed final save is raised by :meth:`finish` on the normal path)."""
        self.stopper.uninstall()
        closers = list(first) + [
            ("TensorBoard writer", getattr(self.writer, "close", None)),
            ("checkpoint manager", getattr(self.ckpt, "close", None)),
            ("workdir lock", self.workdir.release_lock if self.runtime.is_main else None)]
        for name, close in closers:
            if close is None:
                continue
            try:
                close()
            except Exception:
                log.exception("Closing the %s failed.", name)


def diverged_message(what: str, session: Optional[RunSession] = None) -> str:
    """The message of a run stopped by non-finite values: what was found, the last good
    checkpoint (nothing after it was committed) and how to continue."""
    latest = session.ckpt.latest_step() if session is not None and session.ckpt else None
    where = (f"the last good checkpoint is step {latest} "
             f"({session.workdir.url('checkpoints')}); nothing after it was committed"
             if latest is not None else "no checkpoint was committed")
    return (f"{what}: training stopped; {where}. To continue with a lower learning rate, "
            "run the same command with e.g. --gin_param='LR=<lower>' "
            "--allow_config_change (it resumes from the last good checkpoint), or enable "
            "GRAD_CLIP (docs/TROUBLESHOOTING.md).")


class Pace:
    """The training rates of the log intervals from ``step`` on; the time of side work
    (evaluation, checkpoints, the start record) is kept out of them (``side``)."""

    def __init__(self, step: int) -> None:
        self.t_start = self.t_log = time.perf_counter()
        self.step_start = self.step_log = step
        self.side_s = 0.0

    def side(self, seconds: float) -> None:
        self.side_s += seconds

    def interval(self, step: int, global_batch_size: int) -> Tuple[int, Dict[str, float]]:
        """The steps and the ``perf/*`` metrics of the interval ending at ``step``; starts
        the next interval."""
        now = time.perf_counter()
        steps = step - self.step_log
        step_time = (now - self.t_log - self.side_s) / max(steps, 1)
        self.t_log, self.step_log, self.side_s = now, step, 0.0
        return steps, {"examples_per_s": global_batch_size / step_time if step_time > 0 else 0.0,
                       "steps_per_s": 1.0 / step_time if step_time > 0 else 0.0,
                       "step_time_s": step_time}

    def eta(self, step: int, total_steps: int) -> float:
        """Seconds left at the average rate since the start (inf before a step)."""
        rate = (step - self.step_start) / max(time.perf_counter() - self.t_start, 1e-9)
        return (total_steps - step) / rate if rate else float("inf")


def _md_code(text: str) -> str:
    return "    " + text.replace("\n", "\n    ")


def _fmt_s(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
