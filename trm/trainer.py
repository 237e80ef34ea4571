"""The TRM training loop: deep supervision, two optimizers, EMA, evaluation, run state.

Plain Python (no gin): a :class:`~trm.experiment.TrainConfig` holds every setting, the
:class:`Trainer` runs it. ``trm.train`` builds the config from gin files; research code can
build it directly. The run's files are written through one object, the
:class:`~trm.run.record.RunRecord` (run.json, configs, hparams, best), next to the
checkpoint manager and the TensorBoard writer of :mod:`trm.run`.

One optimizer step per ACT (supervision) step (TRM_SPEC.md section 6): the carry persists
across batches; rows that halted take the next batch's row in their slot; the loss (a sum over
the local rows) is divided by the *global* batch size and gradients are summed over processes,
so the result is the global mean for any number of processes. The puzzle table is updated by
SignSGD, the network by the main optimizer (AdamATan2 by default), both on one LR schedule
with their own base LRs; the EMA is updated after every step.

XLA discipline: fixed shapes, no host reads inside a step; metrics stay on the device and are
fetched every ``log_every`` steps; the step counter and LR live on the host.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import socket
import sys
import time
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

import trm
from trm import progress
from trm.eval_loop import (EvalInterrupted, MetricSums, evaluate, headline,
                           normalize_train_metrics, tag_results)
from trm.experiment import (DataShape, TrainConfig, TrainingError, build_model,  # noqa: F401
                            resolve_data_path, resolve_forward_dtype, total_steps)
from trm.models import Carry
from trm.run.checkpoints import CheckpointError
from trm.run.guards import (check_compatible, check_train_state, open_workdir, state_is_sound,
                            storage_error)
from trm.run.storage import UntrustedFileError
from trm.runtime import Runtime, init_runtime
from trm.runtime.signals import StopSignal, xla_metrics, xla_metrics_report

log = logging.getLogger("trm.train")


def _every(step: int, interval: int) -> bool:
    return interval > 0 and step % interval == 0


class Trainer:
    """Runs one :class:`~trm.experiment.TrainConfig` in one workdir.

    Args:
        config: the run's settings.
        workdir: the run directory (local path or ``gs://...``).
        runtime: the device / process group (default: from ``config.device``).
        config_text: the gin config, saved as ``config.gin`` and checked on resume.
        command: saved as ``command.json`` (argv, gin files, bindings).
        hparams: the effective value of every setting, saved as ``hparams.json``.
        allow_config_change: resume although ``config_text`` differs from the saved one.
        operative_config: returns the operative gin config after the first step (or "").
        progress: print progress lines and the end-of-run summary.
        force_unlock: take over the workdir's lock even if its owner looks alive.
        trust_checkpoint: load checkpoints with full unpickling (runs code from the file; only
            for older checkpoints you wrote yourself, see trm.run.checkpoints).
        step_callback: called with the step number after every step (benchmarks, tests).

    Without a workdir, :meth:`build` and :meth:`train_step` run steps on given batches (what
    ``trm.bench`` times).
    """

    def __init__(self, config: TrainConfig, workdir: Optional[str] = None, *,
                 runtime: Optional[Runtime] = None, config_text: str = "",
                 command: Optional[Dict[str, Any]] = None,
                 hparams: Optional[Dict[str, Any]] = None, allow_config_change: bool = False,
                 operative_config: Optional[Callable[[], str]] = None, progress: bool = True,
                 force_unlock: bool = False, trust_checkpoint: bool = False,
                 step_callback: Optional[Callable[[int], None]] = None) -> None:
        config.validate(process_count=1)  # before the runtime starts: one line per problem
        self.cfg = config
        self.workdir_path = workdir
        self.runtime = runtime or init_runtime(config.device)
        self.config_text = config_text
        self.command = command or {}
        self.hparams = hparams
        self.allow_config_change = allow_config_change
        self.operative_config = operative_config
        self.progress = progress
        self.force_unlock = force_unlock
        self.trust_checkpoint = trust_checkpoint
        self.step_callback = step_callback
        self.cfg.validate(self.runtime.process_count)
        self.test_meta = None
        self._last_eval: Dict[str, float] = {}
        self._eval_step: Optional[int] = None
        self._stopper: Optional[StopSignal] = None
        self._ema_change: Optional[Dict[str, Any]] = None   # an EMA change applied at resume

    # -- set-up ----------------------------------------------------------------------------
    def _prepare_data(self) -> None:
        from trm import data
        cfg, rt = self.cfg, self.runtime
        if cfg.dataset_builder:
            if isinstance(cfg.data_dir, (list, tuple)):
                raise TrainingError("dataset_builder needs a single data_dir.")
            # Process 0 builds (to the shared data root, e.g. gs://) while the others wait;
            # its outcome reaches every process, so a failed build ends all of them with the
            # same error instead of leaving them at a barrier. Then every process checks the
            # dataset (a host-local root is built once per host; concurrent builds are safe).
            path = resolve_data_path(cfg.data_dir, cfg.dataset_builder_args)
            failure = None
            if rt.is_main:
                log.info("Dataset %s (building it if missing: %s)", path, cfg.dataset_builder)
                try:
                    data.ensure_dataset(path, cfg.dataset_builder, show_progress=self.progress,
                                        **dict(cfg.dataset_builder_args))
                except Exception as e:
                    failure = f"{type(e).__name__}: {e}"
            failure = rt.gather_objects(failure)[0]  # also the barrier
            if failure is not None:
                raise TrainingError(f"Building the dataset {path} ({cfg.dataset_builder}) "
                                    f"failed on process 0: {failure}")
            if not rt.is_main:
                data.ensure_dataset(path, cfg.dataset_builder, show_progress=False,
                                    **dict(cfg.dataset_builder_args))
        self.data_dir = resolve_data_path(cfg.data_dir, cfg.dataset_builder_args)
        self.test_data_dir = (resolve_data_path(cfg.test_data_dir, cfg.dataset_builder_args)
                              if cfg.test_data_dir else self.data_dir)
        try:
            self.train_meta = data.load_metadata(self.data_dir, "train")
        except data.DataError as e:
            raise TrainingError(f"Cannot load the training data from {self.data_dir}: {e}. "
                                "Build it with `python -m trm.data.build ...` (docs/DATA.md) "
                                "or set DATA_DIR.") from e
        try:
            self.test_meta = data.load_metadata(self.test_data_dir, "test")
        except data.DataError as e:
            log.warning("No test split in %s (%s): evaluation is skipped.", self.test_data_dir, e)
            self.test_meta = None
        self._check_data_agrees()

    def _check_data_agrees(self) -> None:
        """The test split must fit the model built for the training split (same seq_len and
        vocab: an error otherwise); a dataset that differs from the task file's SEQ_LEN /
        VOCAB_SIZE hints is reported (the model follows the dataset)."""
        macros = (self.hparams or {}).get("macros", {})
        meta = self.train_meta
        for macro, field in (("SEQ_LEN", "seq_len"), ("VOCAB_SIZE", "vocab_size")):
            declared = macros.get(macro)
            if isinstance(declared, int) and declared != getattr(meta, field):
                log.warning("The dataset %s has %s %d but the task file declares %s=%d (a "
                            "hint for dry runs): the model is built for the dataset. If that is "
                            "not this task's data, fix DATA_DIR.", self.data_dir, field,
                            getattr(meta, field), macro, declared)
        test = self.test_meta
        if test is not None:
            for field in ("seq_len", "vocab_size"):
                if getattr(test, field) != getattr(meta, field):
                    raise TrainingError(
                        f"The test data {self.test_data_dir} has {field} "
                        f"{getattr(test, field)}, the training data {getattr(meta, field)}: "
                        "they belong to different tasks. Fix TEST_DATA_DIR / DATA_DIR.")
            if test.num_puzzle_identifiers > meta.num_puzzle_identifiers:
                log.warning("The test data has more puzzle identifiers (%d) than the training "
                            "data (%d): identifiers beyond the table use row 0.",
                            test.num_puzzle_identifiers, meta.num_puzzle_identifiers)

    def build(self, shape: Any, num_steps: int) -> None:
        """Builds the model, loss, optimizers and EMA for a dataset of ``shape`` (metadata or
        :class:`~trm.experiment.DataShape`) and a run of ``num_steps`` steps."""
        cfg, rt = self.cfg, self.runtime
        self.total_steps = int(num_steps)
        if self.total_steps < 1:
            raise TrainingError(f"The run has {self.total_steps} steps: set TRAIN_STEPS or more "
                                "EPOCHS.")
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2 ** 32)
        random.seed(cfg.seed)
        try:
            self.model = build_model(cfg, shape,
                                     forward_dtype=resolve_forward_dtype(cfg, rt.device))
        except (ValueError, TypeError) as e:
            raise TrainingError(f"Cannot build the model: {e}") from e
        self.model.to(rt.device)
        self.model.train()
        if cfg.compile:
            for layer in self.model.core.modules():
                if type(layer).__name__ == "Block":
                    layer.compile()
        self.loss_head = cfg.loss()
        self.optimizers: List[torch.optim.Optimizer] = []
        self.base_lrs: List[float] = []
        if self.model.puzzle_emb is not None:
            self.optimizers.append(cfg.sparse_optimizer(self.model.puzzle_emb, lr=0.0,
                                                        gather_fn=rt.all_gather))
            self.base_lrs.append(cfg.puzzle_emb_lr)
        if not cfg.freeze_weights:
            self.optimizers.append(cfg.optimizer(self.model.parameters(), lr=0.0))
            self.base_lrs.append(cfg.lr)
        else:
            for p in self.model.parameters():
                p.requires_grad_(False)
        use_ema = cfg.use_ema and cfg.ema is not None and not cfg.freeze_weights
        self.ema = cfg.ema(self.model) if use_ema else None
        self.step, self.carries, self.best = 0, None, None
        # int32 on the device (TPUs emulate int64); the halting key wraps modulo 2**32
        self._step_t = _device_int(0, rt.device)
        self._counter_rng = cfg.halting_rng == "counter" or (cfg.halting_rng == "auto"
                                                             and rt.is_xla)
        # per micro-batch constants of the exploration key: seed, process and slot
        # (device inputs, not Python numbers: a 0 would be a constant of the graph, so seed 0
        # and other seeds would compile different graphs and miss the compile cache)
        self._rng_salt = [_device_int((cfg.seed * 7919 + rt.process_index * 131 + i) % 1_000_003,
                                      rt.device) for i in range(cfg.grad_accum_steps)]
        self._lr_tables = None
        self._nonfinite_step = torch.zeros((), dtype=torch.int32, device=rt.device)

    # -- state -----------------------------------------------------------------------------
    def _train_state(self) -> Dict[str, Any]:
        """Everything needed to continue exactly (gathered to every process)."""
        from trm.run.checkpoints import capture_rng_state
        carries = None if self.carries is None else [
            {k: v.detach().cpu() for k, v in c.state_dict().items()} for c in self.carries]
        local = {
            "carry": carries[0] if carries and len(carries) == 1 else carries,
            "rng": capture_rng_state(self.runtime.device),
        }
        per_process = self.runtime.gather_objects(local)
        return {
            "step": self.step,
            "total_steps": self.total_steps,
            "model": self.model.state_dict(),
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "ema": None if self.ema is None else self.ema.state_dict(),
            # the position is the step trained, not what the prefetcher already read ahead
            "data": dict(self.stream.state_dict(), step=self.step),
            "per_process": per_process,
            "process_count": self.runtime.process_count,
            "config": self.config_text,
            "best": self.best,
            "trm_version": trm.__version__,
        }

    def _load_state(self, state: Dict[str, Any]) -> None:
        from trm.run.checkpoints import restore_rng_state
        rt = self.runtime
        if state.get("process_count", 1) != rt.process_count:
            raise TrainingError(
                f"The checkpoint was written by {state['process_count']} processes, this run has "
                f"{rt.process_count}: exact resume needs the same number. Start a new workdir, "
                "or initialise from this run's exported weights.")
        check_compatible(self.model.state_dict(), state["model"], self.allow_config_change)
        try:
            self.model.load_state_dict(state["model"])
            if len(state["optimizers"]) != len(self.optimizers):
                raise ValueError(f"the checkpoint has {len(state['optimizers'])} optimizers, "
                                 f"this config builds {len(self.optimizers)} (puzzle table or "
                                 "FREEZE_WEIGHTS changed)")
            for opt, s in zip(self.optimizers, state["optimizers"]):
                opt.load_state_dict(s)
            self._resume_ema(state.get("ema"), int(state["step"]))
            self.stream.load_state_dict(state["data"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise TrainingError(
                f"The checkpoint in {self.workdir_path} does not fit this config: {e}. Nothing "
                "was changed in the workdir; resume with its saved config, or start a new "
                "--workdir.") from e
        mine = state["per_process"][rt.process_index]
        saved = mine["carry"]
        saved = None if saved is None else saved if isinstance(saved, list) else [saved]
        if saved is not None and len(saved) != self.cfg.grad_accum_steps:
            raise TrainingError(
                f"The checkpoint holds {len(saved)} carry slot(s) per process, this config "
                f"GRAD_ACCUM_STEPS={self.cfg.grad_accum_steps}: resume with the same "
                "GRAD_ACCUM_STEPS.")
        self.carries = None if saved is None else [
            Carry.from_state_dict({k: v.to(rt.device) for k, v in c.items()}) for c in saved]
        restore_rng_state(mine["rng"], rt.device)
        self.step = int(state["step"])
        self._step_t = _device_int(self.step, rt.device)
        self.best = state.get("best")

    def _resume_ema(self, saved: Optional[Dict[str, Any]], step: int) -> None:
        """Restores the EMA, applying a change of it at resume (allowed with
        --allow_config_change) correctly: the rate always comes from this config; an EMA
        switched on starts from the restored weights (not the initial ones); one switched off
        is dropped. A change is logged and recorded in run.json (``ema_changes``)."""
        change = None
        if self.ema is None:
            if saved is not None:
                change = "switched off: the saved EMA weights are dropped"
        elif saved is None:
            self.ema = self.cfg.ema(self.model)   # the shadow of the restored weights
            change = (f"switched on (rate {self.ema.rate}): the EMA starts from the restored "
                      "weights")
        else:
            rate = self.ema.rate
            self.ema.load_state_dict(saved)
            self.ema.rate = rate
            if float(saved["rate"]) != rate:
                change = f"rate {float(saved['rate'])} -> {rate}"
        self._ema_change = None if change is None else {"step": step, "change": change}
        if change is not None:
            log.warning("EMA changed at resume (step %d): %s.", step, change)

    # -- the step ----------------------------------------------------------------------------
    def lr_at(self, step: int, base_lr: float) -> float:
        return self.cfg.schedule(step, base_lr=base_lr, warmup_steps=self.cfg.lr_warmup_steps,
                                 total_steps=self.total_steps, min_ratio=self.cfg.lr_min_ratio)

    def train_step(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """One supervision step; returns device-side raw metrics (no host sync).

        With ``grad_accum_steps = N`` the local batch is split into N micro-batches, each with
        its own carry slot; their gradients add up before the one update, so the step equals one
        step on the whole batch (the loss is divided by the global batch size either way).
        """
        cfg, rt = self.cfg, self.runtime
        n = cfg.grad_accum_steps
        chunks = [batch] if n == 1 else [
            {k: v[i * (v.shape[0] // n):(i + 1) * (v.shape[0] // n)] for k, v in batch.items()}
            for i in range(n)]
        if self.carries is None:
            self.carries = [self.model.initial_carry(c) for c in chunks]
        metrics: Dict[str, torch.Tensor] = {}
        finite = None
        for i, chunk in enumerate(chunks):
            if self._counter_rng:
                self.model.halting_rng_key = self._step_t * 1_000_003 + self._rng_salt[i]
            self.carries[i], outputs = self.model(self.carries[i], chunk)
            loss, part, _ = self.loss_head(self.carries[i], outputs)
            (loss / cfg.global_batch_size).backward()
            for k, v in part.items():
                v = v.detach()
                metrics[k] = v if k not in metrics else metrics[k] + v
            ok = torch.isfinite(loss.detach())
            finite = ok if finite is None else finite & ok
        params = [p for p in self.model.parameters() if p.grad is not None]
        rt.all_reduce_sum_([p.grad for p in params])
        foreach = None if rt.is_xla else True  # XLA has no foreach kernels
        grad_norm = (torch.nn.utils.get_total_norm([p.grad for p in params], foreach=foreach)
                     if params else torch.zeros((), device=rt.device))
        if cfg.grad_clip_norm and params:
            torch.nn.utils.clip_grads_with_norm_(params, cfg.grad_clip_norm, grad_norm,
                                                 foreach=foreach)
        step = self.step + 1
        self._step_t.add_(1)  # the device's copy of the step counter (no transfer)
        for i, opt in enumerate(self.optimizers):
            lr = self._lr(i, step)
            for group in opt.param_groups:
                group["lr"] = lr
            opt.step()
            opt.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)
        self.step = step
        finite = finite & torch.isfinite(grad_norm.detach())
        metrics["grad_norm"] = grad_norm.detach()
        self._nonfinite_step = torch.where(
            finite | (self._nonfinite_step > 0), self._nonfinite_step, self._step_t)
        rt.mark_step()
        return metrics

    def _lr(self, index: int, step: int):
        """The LR of optimizer ``index`` at ``step``: a Python number on CPU/CUDA (a kernel
        argument, no transfer); on XLA a device scalar read from a table made once, so no
        per-step value crosses from the host (a new Python float would be a transfer)."""
        if not self.runtime.is_xla:
            return self.lr_at(step, self.base_lrs[index])
        if self._lr_tables is None:
            steps = range(self.total_steps + 1)
            self._lr_tables = [torch.tensor([self.lr_at(s, base) for s in steps],
                                            dtype=torch.float32).to(self.runtime.device)
                               for base in self.base_lrs]
        return self._lr_tables[index].index_select(0, self._step_t.reshape(1)).reshape(())

    @property
    def carry(self):
        """The ACT carry (the first micro-batch's when accumulating)."""
        return None if self.carries is None else self.carries[0]

    # -- the run -----------------------------------------------------------------------------
    def run(self) -> Dict[str, Any]:
        """Trains (resuming if the workdir has a checkpoint) and returns the final metrics."""
        from trm.data import TrainStream
        from trm.run.checkpoints import CheckpointManager
        from trm.run.record import RunRecord

        cfg, rt = self.cfg, self.runtime
        if not self.workdir_path:
            raise TrainingError("Trainer.run() needs a workdir.")
        self.workdir = open_workdir(self.workdir_path)
        self.record = RunRecord(self.workdir, best_metric=cfg.best_metric)
        self.writer = None
        self._started = False
        stopper = StopSignal()
        stopper.install()  # from the start: a preemption during start-up stops after step 1
        self._stopper = stopper
        # A SIGTERM starts the exit grace window of every run-state wait, even one blocked on
        # a storage outage (TRM_EXIT_GRACE_S; docs/RUN_STATE.md, "Storage outages").
        self.workdir.watch_stop(lambda: stopper.received is not None)

        def lock() -> None:
            try:
                self.workdir.acquire_lock({"host": socket.gethostname(), "pid": os.getpid()},
                                          force=self.force_unlock)
            except OSError as e:
                raise TrainingError(f"Cannot write to the workdir {self.workdir_path}: "
                                    f"{e.strerror or e}. Choose a writable --workdir.") from e
        # Process 0's checks and writes go through rt.on_main: their failure ends every process.
        try:
            rt.on_main(lock)
        except BaseException:
            stopper.uninstall()
            raise
        try:
            self._prepare_data()
            self.build(self.train_meta, total_steps(cfg, self.train_meta.examples_per_epoch))
            self.stream = TrainStream(self.data_dir, cfg.global_batch_size,
                                      process_index=rt.process_index,
                                      process_count=rt.process_count, seed=cfg.seed)
            self.ckpt = CheckpointManager(self.workdir, keep=cfg.keep_checkpoints,
                                          best_metric=cfg.best_metric, best_mode="max",
                                          async_save=cfg.async_checkpoint and rt.is_main,
                                          trust=self.trust_checkpoint)
            # Nothing is written until the state is known to fit: the config is compared (not
            # saved), the checkpoint restored into the model built from this config.
            self._config_outcome = rt.on_main(self._check_config)
            restored = self.ckpt.restore("latest", check=check_train_state)
            self._resumed = restored is not None
            if restored is not None:
                self._load_state(restored[1])
                log.info("Resumed from step %d of %d.", self.step, self.total_steps)
            self._start_step = self.step
            # a collective on every process (process 0 decides; none evaluates again)
            if rt.on_main(lambda: restored is not None and self.step >= self.total_steps
                          and self.record.status == "completed"):
                if self.progress and rt.is_main:
                    print(f"{self.workdir_path}: this run is already completed (step "
                          f"{self.step} of {self.total_steps}); nothing to do.", flush=True)
                return {"status": "completed", "step": self.step, "eval": {},
                        "best": self.best, "already_completed": True}
            status = self._loop(stopper)
            return self._finish(status)
        except BaseException as e:
            # A start that failed before its first step leaves no run files behind (they would
            # block the corrected relaunch); a run that had started records the failure.
            if rt.is_main and (self._started or self.workdir.exists("run.json")):
                self.record.fail(e, "preempted" if isinstance(e, KeyboardInterrupt) else "failed")
            raise
        finally:
            stopper.uninstall()
            # Closing must not hide the error that got us here: log close failures instead
            # (a failed final save is raised by _finish() on the normal path).
            for name, close in (("data stream", getattr(getattr(self, "stream", None),
                                                        "close", None)),
                                ("TensorBoard writer", getattr(getattr(self, "writer", None),
                                                               "close", None)),
                                ("checkpoint manager", getattr(getattr(self, "ckpt", None),
                                                               "close", None)),
                                ("workdir lock", self.workdir.release_lock if rt.is_main
                                 else None)):
                if close is None:
                    continue
                try:
                    close()
                except Exception:
                    log.exception("Closing the %s failed.", name)

    def _loop(self, stopper: StopSignal) -> str:
        # the next batches cross to the device while the current step computes
        it = self.runtime.prefetch(self.stream)
        try:
            return self._steps(stopper, it)
        finally:
            it.close()

    def _steps(self, stopper: StopSignal, it) -> str:
        cfg, rt = self.cfg, self.runtime
        sums = MetricSums(rt.device)
        t_log, step_log = time.perf_counter(), self.step
        t_start, step_start = t_log, self.step
        self._side_s = 0.0   # evaluation and checkpoint time inside the current log window
        if self.step >= self.total_steps and self.test_meta is not None:
            return self._evaluate_final_again()
        while self.step < self.total_steps:
            batch = next(it)
            metrics = self.train_step(batch)
            self._last_batch = batch
            sums.add(metrics)
            if not self._started:
                t0 = time.perf_counter()
                self._start_run()
                self._side_s += time.perf_counter() - t0
            if _every(self.step, cfg.log_every) or self.step == self.total_steps:
                now = time.perf_counter()
                self._log_train(sums, now - t_log - self._side_s, self.step - step_log,
                                t_start, step_start)
                sums.reset()
                t_log, step_log, self._side_s = now, self.step, 0.0
            stop = stopper.received is not None
            check_every = cfg.preemption_check_every or cfg.log_every
            if rt.distributed and (_every(self.step, check_every) or
                                   self.step == self.total_steps):
                # One small transfer and read, only at these steps (default: log intervals,
                # where the metrics are read anyway), never between them.
                flag = torch.tensor([1.0 if stop else 0.0], device=rt.device)
                rt.all_reduce_sum_([flag])
                stop = bool(flag.item() > 0)
            elif rt.distributed:
                stop = False  # decide together at the next check
            last = self.step == self.total_steps
            if self.test_meta is not None and (_every(self.step, cfg.eval_every) or last):
                if self._timed(self._evaluate, "perf/eval_time_s") is None:
                    stop = True  # a stop request ended the evaluation: save, then stop
            if stop or last or _every(self.step, cfg.checkpoint_every):
                self._timed(self._save, "perf/checkpoint_time_s")
            if stopper.report_requested and rt.is_main:
                stopper.report_requested = False
                self._write_xla_report()
            if self.step_callback is not None:
                self.step_callback(self.step)
            if stop:
                log.warning("Stopped at step %d after a signal; the next start resumes.",
                            self.step)
                return "preempted"
        return "completed"

    # -- pieces of the loop ----------------------------------------------------------------
    def _timed(self, fn: Callable[[], Any], tag: str) -> Any:
        """Runs ``fn`` and returns its result; its time is logged as ``tag`` and kept out of
        the training rates."""
        t0 = time.perf_counter()
        result = fn()
        elapsed = time.perf_counter() - t0
        self._side_s += elapsed
        if self.writer is not None:
            self.writer.scalar(tag, elapsed, self.step)
        return result

    def _evaluate_final_again(self) -> str:
        """A run resumed at its last step was stopped during its final evaluation (a stop ends
        an evaluation, see :meth:`_stop_requested`): evaluates again and records the metrics
        with the last checkpoint."""
        if not self._started:
            self._start_run()
        if self._timed(self._evaluate, "perf/eval_time_s") is None:
            return "preempted"
        self._timed(self._save, "perf/checkpoint_time_s")
        return "completed"

    def _stop_requested(self) -> bool:
        """Whether a stop request (SIGTERM/SIGINT) ends the evaluation in progress; decided
        together by all processes (one scalar per evaluation batch), like the loop's check."""
        stop = self._stopper is not None and self._stopper.received is not None
        if self.runtime.distributed:
            flag = torch.tensor([1.0 if stop else 0.0], device=self.runtime.device)
            self.runtime.all_reduce_sum_([flag])
            stop = bool(flag.item() > 0)
        return stop

    def _check_finite(self, raw: Optional[Dict[str, float]] = None) -> None:
        """Raises if a step since the start had a non-finite loss or gradient norm. ``raw``:
        the log interval's fetched metrics, which carry the flag (no extra host read)."""
        if raw is None:
            raw = MetricSums(self.runtime.device).fetch(self.runtime, self._finite_flags())
        count = raw.pop("nonfinite_count", 0.0)
        total = raw.pop("nonfinite_stepsum", 0.0)
        if count > 0:
            raise TrainingError(self._diverged_message(
                f"Non-finite loss or gradients at step {int(round(total / count))}"))

    def _finite_flags(self) -> Dict[str, torch.Tensor]:
        bad = self._nonfinite_step
        return {"nonfinite_count": (bad > 0).to(torch.float32),
                "nonfinite_stepsum": bad.to(torch.float32)}

    def _log_train(self, sums: MetricSums, elapsed: float, steps: int, t_start: float,
                   step_start: int) -> None:
        cfg, rt = self.cfg, self.runtime
        raw = sums.fetch(rt, self._finite_flags())  # one transfer: metrics and the flag
        self._check_finite(raw)
        if rt.process_count > 1:  # grad norm is identical on every process
            if "grad_norm" in raw:
                raw["grad_norm"] /= rt.process_count
        metrics = normalize_train_metrics(raw, cfg.global_batch_size, steps)
        metrics["lr"] = self.lr_at(self.step, cfg.lr)  # the LR of the logged step
        step_time = elapsed / max(steps, 1)
        perf = {"examples_per_s": cfg.global_batch_size / step_time if step_time > 0 else 0.0,
                "steps_per_s": 1.0 / step_time if step_time > 0 else 0.0,
                "step_time_s": step_time}

        def write() -> None:
            self.writer.scalars({f"train/{k}": v for k, v in metrics.items()}, self.step)
            self.writer.scalars({f"perf/{k}": v for k, v in perf.items()}, self.step)
            if rt.is_xla and (_every(self.step, cfg.xla_metrics_every) or self.step <= steps):
                self.writer.scalars(xla_metrics(), self.step)
            self.writer.flush()
            self.record.log(self.step)
            self.workdir.heartbeat()
            if self.progress:
                done = self.step - step_start
                rate = done / max(time.perf_counter() - t_start, 1e-9)
                eta = (self.total_steps - self.step) / rate if rate else float("inf")
                print(f"step {self.step}/{self.total_steps} "
                      f"({100 * self.step / self.total_steps:.0f}%)  "
                      f"lm_loss {metrics.get('lm_loss', math.nan):.4f}  "
                      f"acc {metrics.get('accuracy', math.nan):.3f}  "
                      f"exact {metrics.get('exact_accuracy', math.nan):.3f}  "
                      f"lr {metrics['lr']:.2e}  {perf['steps_per_s']:.2f} steps/s  "
                      f"ETA {_fmt_s(eta)}", flush=True)
        rt.on_main(write)

    def _evaluate(self) -> Optional[Dict[str, float]]:
        """Evaluates the current weights (EMA if kept); None if a stop request ended it."""
        from trm.data import EvalStream
        from trm.run.record import eval_dir
        cfg, rt = self.cfg, self.runtime
        self._check_finite()
        batches = EvalStream(self.test_data_dir, cfg.eval_batch_size or cfg.global_batch_size,
                             process_index=rt.process_index, process_count=rt.process_count)
        out_dir = self.workdir.url(eval_dir(self.step))
        weights = (self.ema.averaged(self.model) if self.ema is not None
                   else contextlib.nullcontext())
        try:
            with weights, progress.phase(f"eval step {self.step}", len(batches),
                                         unit="batches", enabled=self.progress and rt.is_main,
                                         leave=False) as bar:
                results = evaluate(self.model, self.loss_head, batches, rt, self.evaluators,
                                   out_dir, should_stop=self._stop_requested,
                                   progress=bar.update)
        except EvalInterrupted as e:
            log.warning("The evaluation at step %d was stopped after %d batches by a stop "
                        "request; the checkpoint is saved without its metrics.", self.step,
                        e.batches)
            return None
        tagged = tag_results(results)
        bad = sorted(k for k, v in tagged.items() if isinstance(v, float) and not math.isfinite(v))
        if bad:
            raise TrainingError(self._diverged_message(
                f"The evaluation at step {self.step} gave non-finite {', '.join(bad)}"))

        def record() -> None:
            self.writer.scalars(tagged, self.step)
            self.writer.flush()
            self.best = self.record.evaluation(self.step, tagged)
            if self.progress:
                head = headline(results)
                print(f"eval step {self.step}: exact_accuracy "
                      f"{'n/a' if head is None else f'{head:.4f}'}  "
                      + "  ".join(f"{k}={v:.4f}" for k, v in sorted(tagged.items())
                                  if k.startswith("ARC/")), flush=True)
        rt.on_main(record)
        self._last_eval, self._eval_step = tagged, self.step
        return tagged

    @property
    def evaluators(self) -> List[Any]:
        if not hasattr(self, "_evaluators"):
            self._evaluators = [make(self.test_data_dir) for make in self.cfg.evaluators]
        return self._evaluators

    def _save(self) -> None:
        self._check_finite()
        self._verify_state()
        state = self._train_state()  # a collective: every process takes part

        def save() -> None:
            fresh = self._eval_step == self.step
            try:
                self.ckpt.save(self.step, state, metrics=self._last_eval if fresh else None)
            except (OSError, CheckpointError) as e:
                raise self._storage_error(e, f"saving the checkpoint of step {self.step}") from e
        self.runtime.on_main(save)

    def _verify_state(self) -> None:
        """Commits only sound states (see :func:`trm.run.guards.state_is_sound`)."""
        batch = getattr(self, "_last_batch", None)
        n = self.cfg.grad_accum_steps
        if batch is not None and n > 1:  # the first micro-batch, as the first carry slot
            batch = {k: v[:v.shape[0] // n] for k, v in batch.items()}
        if not state_is_sound(self.model, self.loss_head, self.carry, batch, self.ema,
                              self.runtime,
                              self.cfg.global_batch_size):
            raise TrainingError(self._diverged_message(
                f"The state after step {self.step} is not finite (its parameters, or the loss "
                "or gradients they give)"))

    def _storage_error(self, e: Exception, what: str) -> Exception:
        return storage_error(e, what, self.workdir_path, self.ckpt.latest_step())

    def _diverged_message(self, what: str) -> str:
        latest = self.ckpt.latest_step() if hasattr(self, "ckpt") else None
        where = (f"the last good checkpoint is step {latest} "
                 f"({self.workdir.url('checkpoints')}); nothing after it was committed"
                 if latest is not None else "no checkpoint was committed")
        return (f"{what}: training stopped; {where}. To continue with a lower learning rate, "
                "run the same command with e.g. --gin_param='LR=<lower>' "
                "--allow_config_change (it resumes from the last good checkpoint), or enable "
                "GRAD_CLIP (docs/TROUBLESHOOTING.md).")

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
                f"The workdir {self.workdir_path} holds a run with another configuration. Use a "
                f"new --workdir, or pass --allow_config_change to continue with the new "
                f"configuration. {e}") from e

    def _start_run(self) -> None:
        """Records the run's start, after its first step succeeded: config.gin (replacing a
        changed one only now, after the checkpoint was found compatible), command.json,
        hparams.json, run.json, the operative config and the TensorBoard writer."""
        self._started = True
        self.runtime.on_main(self._record_start)

    def _record_start(self) -> None:
        from trm.run.tensorboard import SummaryWriterSync
        resumed = self._resumed
        start_step = self._start_step
        if self.config_text:
            self.record.ensure_config(self.config_text, allow_change=self.allow_config_change)
        # On resume, TensorBoard hides points of the old files from the resumed step on.
        try:
            self.writer = SummaryWriterSync(self.workdir,
                                            purge_step=start_step + 1 if resumed else None)
        except UntrustedFileError as e:
            raise TrainingError(f"{e}. Remove the link, or use another --workdir.") from e
        if self.config_text and self._config_outcome != "same":
            self.writer.text("config/gin", _md_code(self.config_text), start_step)
        if self.operative_config is not None and not self.record.has_operative_config():
            self.record.write_operative_config(self.operative_config())
        data_dir = self.data_dir if isinstance(self.data_dir, str) else list(self.data_dir)
        fields = dict(total_steps=self.total_steps, num_params=self.model.num_params(),
                      flops_per_example=self.model.flops_per_example(
                          max_steps=None, training=True),
                      trm_version=trm.__version__, device=str(self.runtime.device),
                      backend=self.runtime.backend, world_size=self.runtime.process_count,
                      global_batch_size=self.cfg.global_batch_size, data_dir=data_dir,
                      forward_dtype=str(self.model.forward_dtype).replace("torch.", ""),
                      torch_threads=torch.get_num_threads())
        if self._ema_change is not None:
            previous = self.record.read().get("ema_changes")
            fields["ema_changes"] = (previous if isinstance(previous, list) else []) + [
                self._ema_change]
        self.record.start(resumed=resumed, step=start_step, fields=fields,
                          command=self.command, hparams=self.hparams, best=self.best)
        if self.progress:
            auto = " (auto)" if self.cfg.forward_dtype == "auto" else ""
            print(f"{'resumed' if resumed else 'started'} {self.workdir_path} at step "
                  f"{start_step}/{self.total_steps}: {self.model.num_params():,} parameters, "
                  f"device {self.runtime.device}, forward {fields['forward_dtype']}{auto}, "
                  f"{fields['torch_threads']} torch threads", flush=True)
        if not resumed:
            self.writer.scalars({"params/num_params": float(self.model.num_params())}, 0)
            # TensorBoard's HParams dashboard: this run is one trial, its macros the columns
            macros = (self.hparams or {}).get("macros", {})
            self.writer.hparams({k: v for k, v in macros.items()
                                 if v is None or isinstance(v, (bool, int, float, str))},
                                group_name=self.workdir_path)

    def _finish(self, status: str) -> Dict[str, Any]:
        rt = self.runtime
        if not self._started:
            self._start_run()

        def finish() -> None:
            try:
                self.ckpt.wait()
            except (OSError, CheckpointError) as e:
                raise self._storage_error(e, "saving the final checkpoint") from e
            self.writer.flush()
            self.record.finish(status, self.step)
            self._write_xla_report()
            if self.progress:
                self._print_summary(status)
        rt.on_main(finish)
        return {"status": status, "step": self.step, "eval": self._last_eval, "best": self.best}

    def _write_xla_report(self) -> None:
        """The full torch_xla metrics report into WORKDIR/xla_metrics_report.txt (XLA runs; at
        the end of a run and on SIGUSR1), so a slow step can be diagnosed from the run."""
        report = xla_metrics_report() if self.runtime.is_xla else None
        if report:
            try:
                self.workdir.write_text("xla_metrics_report.txt",
                                        f"# step {self.step}\n{report}")
            except OSError as e:
                log.warning("Could not write the XLA metrics report: %s", e)

    def _print_summary(self, status: str) -> None:
        wd = self.workdir
        lines = [f"run {status} at step {self.step}/{self.total_steps}: {wd.path}"]
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


def _device_int(value: int, device: torch.device) -> torch.Tensor:
    """An int32 device scalar moved from the host as a one-element vector: a graph input, never
    a constant (torch_xla turns a 0 or 1 scalar into one), so a fresh and a resumed run, or two
    seeds, trace the same graphs and share the compile cache."""
    return torch.tensor([value], dtype=torch.int32).to(device).reshape(())


def _md_code(text: str) -> str:
    return "    " + text.replace("\n", "\n    ")


def _fmt_s(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"



if __name__ == "__main__":  # pragma: no cover
    sys.exit("Use `python -m trm.train`.")
