"""The TRM training loop: deep supervision, two optimizers, EMA, evaluation, run state.

Plain Python (no gin): a :class:`~trm.experiment.TrainConfig` holds every setting, the
:class:`Trainer` runs it. ``trm.train`` builds the config from gin files; research code can
build it directly. Everything of the run that is not training -- the workdir, its lock,
the stop signal, run.json, checkpoints, TensorBoard, progress lines -- is one
:class:`~trm.run.session.RunSession`; what a checkpoint holds is a
:class:`~trm.train_state.TrainState`.

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
import random
import sys
import time
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

import trm
from trm import progress
from trm.data_prep import prepare_data
from trm.eval_loop import (EvalInterrupted, FirstNonFinite, MetricSums, evaluate, headline,
                           normalize_train_metrics, tag_results)
from trm.experiment import (DataShape, TrainConfig, TrainingError,  # noqa: F401
                            build_ema, build_model, build_optimizers, resolve_forward_dtype,
                            total_steps)
from trm.optim.schedules import StepLRs
from trm.run.session import Pace, RunSession, diverged_message
from trm.runtime import Runtime, forward_dtype_rule, init_runtime
from trm.train_state import TrainState, check_train_state, process_state, state_is_sound

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
        self.cfg, self.workdir_path = config, workdir
        self.runtime = runtime or init_runtime(config.device)
        self.config_text, self.hparams = config_text, hparams
        self.allow_config_change, self.progress = allow_config_change, progress
        self.step_callback = step_callback
        try:
            self.cfg.validate(self.runtime.process_count)
            self.test_meta = None
            self.session: Optional[RunSession] = None if not workdir else RunSession(
                workdir, self.runtime, best_metric=config.best_metric,
                keep_checkpoints=config.keep_checkpoints,
                async_checkpoint=config.async_checkpoint, trust_checkpoint=trust_checkpoint,
                force_unlock=force_unlock, config_text=config_text,
                allow_config_change=allow_config_change, command=command, hparams=hparams,
                operative_config=operative_config, progress=progress)
        except BaseException:
            # e.g. a config invalid for the process count: a runtime started here is shut
            # down here (the caller never gets a trainer to shut down), so its process group
            # does not outlive the error into the interpreter's exit
            if runtime is None:
                self.runtime.shutdown()
            raise
        self._ema_change: Optional[Dict[str, Any]] = None   # an EMA change applied at resume

    # -- set-up ----------------------------------------------------------------------------
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
            from trm.runtime.compile import compile_core
            log.info("COMPILE: torch.compile of %s (graphs built at the first steps).",
                     compile_core(self.model, rt.device))
        self.loss_head = cfg.loss()
        self.optimizers, base_lrs = build_optimizers(cfg, self.model, gather_fn=rt.all_gather)
        self.lrs = StepLRs(cfg.schedule, base_lrs, self.total_steps, cfg.lr_warmup_steps,
                           cfg.lr_min_ratio, device=rt.device if rt.is_xla else None)
        self.ema = build_ema(cfg, self.model)
        self.step, self.carries = 0, None
        # int32 on the device (TPUs emulate int64); the halting key wraps modulo 2**32
        self._step_t = _device_int(0, rt.device)
        self._counter_rng = cfg.halting_rng == "counter" or (cfg.halting_rng == "auto"
                                                             and rt.is_xla)
        # per micro-batch constants of the exploration key: seed, process and slot
        # (device inputs, not Python numbers: a 0 would be a constant of the graph, so seed 0
        # and other seeds would compile different graphs and miss the compile cache)
        self._rng_salt = [_device_int((cfg.seed * 7919 + rt.process_index * 131 + i) % 1_000_003,
                                      rt.device) for i in range(cfg.grad_accum_steps)]
        self._nonfinite = FirstNonFinite(rt.device)

    # -- state -----------------------------------------------------------------------------
    def _train_state(self) -> TrainState:
        """Everything needed to continue exactly (gathered to every process)."""
        rt = self.runtime
        return TrainState(
            step=self.step, total_steps=self.total_steps, model=self.model.state_dict(),
            optimizers=[opt.state_dict() for opt in self.optimizers],
            ema=None if self.ema is None else self.ema.state_dict(),
            # the position is the step trained, not what the prefetcher already read ahead
            data=dict(self.stream.state_dict(), step=self.step),
            per_process=rt.gather_objects(process_state(self.carries, rt.device)),
            process_count=rt.process_count, config=self.config_text, best=self.session.best,
            trm_version=trm.__version__)

    def _load_state(self, state: TrainState) -> None:
        rt = self.runtime
        self.ema, self._ema_change = state.restore_into(
            self.model, self.optimizers, self.ema, self.cfg.ema, self.stream,
            process_count=rt.process_count, allow_change=self.allow_config_change,
            workdir=self.workdir_path)
        self.carries = state.restore_process(rt.process_index, rt.device,
                                             self.cfg.grad_accum_steps)
        self.step = state.step
        self._step_t = _device_int(self.step, rt.device)
        self.session.best = state.best

    # -- the step ----------------------------------------------------------------------------
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
            lr = self.lrs.lr(i, step, self._step_t)
            for group in opt.param_groups:
                group["lr"] = lr
            opt.step()
            opt.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)
        self.step = step
        finite = finite & torch.isfinite(grad_norm.detach())
        metrics["grad_norm"] = grad_norm.detach()
        self._nonfinite.update(finite, self._step_t)
        rt.mark_step()
        return metrics

    @property
    def carry(self):
        """The ACT carry (the first micro-batch's when accumulating)."""
        return None if self.carries is None else self.carries[0]

    # -- the run -----------------------------------------------------------------------------
    def run(self) -> Dict[str, Any]:
        """Trains (resuming if the workdir has a checkpoint) and returns the final metrics."""
        from trm.data import TrainStream
        cfg, rt, session = self.cfg, self.runtime, self.session
        if session is None:
            raise TrainingError("Trainer.run() needs a workdir.")
        session.open()
        try:
            self.data_dir, self.test_data_dir, self.train_meta, self.test_meta = prepare_data(
                cfg, rt, self.hparams, self.progress)
            self.build(self.train_meta, total_steps(cfg, self.train_meta.examples_per_epoch))
            self.stream = TrainStream(self.data_dir, cfg.global_batch_size,
                                      process_index=rt.process_index,
                                      process_count=rt.process_count, seed=cfg.seed)
            # Nothing is written until the state is known to fit: the config is compared (not
            # saved), the checkpoint restored into the model built from this config.
            restored = session.restore(check=check_train_state)
            self._resumed = restored is not None
            if restored is not None:
                self._load_state(TrainState.from_checkpoint(restored))
                log.info("Resumed from step %d of %d.", self.step, self.total_steps)
            self._start_step = self.step
            if session.already_completed(self._resumed, self.step, self.total_steps):
                return {"status": "completed", "step": self.step, "eval": {},
                        "best": session.best, "already_completed": True}
            return self._finish(self._loop())
        except BaseException as e:
            session.fail(e)
            raise
        finally:
            session.close(("data stream", getattr(getattr(self, "stream", None), "close", None)))

    def _loop(self) -> str:
        # the next batches cross to the device while the current step computes
        with contextlib.closing(self.runtime.prefetch(self.stream)) as it:
            return self._steps(it)

    def _steps(self, it) -> str:
        cfg, rt, session = self.cfg, self.runtime, self.session
        sums = MetricSums(rt.device)
        self._pace = Pace(self.step)  # evaluation and checkpoint time kept out of the rates
        if self.step >= self.total_steps and self.test_meta is not None:
            return self._evaluate_final_again()
        while self.step < self.total_steps:
            batch = next(it)
            metrics = self.train_step(batch)
            self._last_batch = batch
            rt.adapt_cpu_threads()  # the machine's load may have changed (CPU runs)
            sums.add(metrics)
            if not session.started:
                t0 = time.perf_counter()
                self._start_run()
                self._pace.side(time.perf_counter() - t0)
            if _every(self.step, cfg.log_every) or self.step == self.total_steps:
                self._log_train(sums)
                sums.reset()
            stop = session.stop_received
            check_every = cfg.preemption_check_every or cfg.log_every
            if rt.distributed and (_every(self.step, check_every) or
                                   self.step == self.total_steps):
                # One small transfer and read, only at these steps (default: log intervals,
                # where the metrics are read anyway), never between them.
                stop = rt.any_process(stop)
            elif rt.distributed:
                stop = False  # decide together at the next check
            last = self.step == self.total_steps
            if self.test_meta is not None and (_every(self.step, cfg.eval_every) or last):
                if self._timed(self._evaluate, "perf/eval_time_s") is None:
                    stop = True  # a stop request ended the evaluation: save, then stop
            if stop or last or _every(self.step, cfg.checkpoint_every):
                self._timed(self._save, "perf/checkpoint_time_s")
            session.serve_report(self.step)
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
        self._pace.side(elapsed)
        self.session.scalar(tag, elapsed, self.step)
        return result

    def _evaluate_final_again(self) -> str:
        """A run resumed at its last step was stopped during its final evaluation (a stop ends
        an evaluation, see :meth:`_stop_requested`): evaluates again and records the metrics
        with the last checkpoint."""
        if not self.session.started:
            self._start_run()
        if self._timed(self._evaluate, "perf/eval_time_s") is None:
            return "preempted"
        self._timed(self._save, "perf/checkpoint_time_s")
        return "completed"

    def _stop_requested(self) -> bool:
        """Whether a stop request (SIGTERM/SIGINT) ends the evaluation in progress; decided
        together by all processes (one scalar per evaluation batch), like the loop's check."""
        stop = self.session is not None and self.session.stop_received
        return self.runtime.any_process(stop) if self.runtime.distributed else stop

    def _check_finite(self, raw: Optional[Dict[str, float]] = None) -> None:
        """Raises if a step since the start had a non-finite loss or gradient norm. ``raw``:
        the log interval's fetched metrics, which carry the flag (no extra host read)."""
        if raw is None:
            raw = MetricSums(self.runtime.device).fetch(self.runtime, self._nonfinite.flags())
        step = self._nonfinite.pop(raw)
        if step is not None:
            raise TrainingError(diverged_message(
                f"Non-finite loss or gradients at step {step}", self.session))

    def _log_train(self, sums: MetricSums) -> None:
        cfg, rt = self.cfg, self.runtime
        steps, perf = self._pace.interval(self.step, cfg.global_batch_size)
        raw = sums.fetch(rt, self._nonfinite.flags())  # one transfer: metrics and the flag
        self._check_finite(raw)
        if rt.process_count > 1 and "grad_norm" in raw:  # identical on every process
            raw["grad_norm"] /= rt.process_count
        metrics = normalize_train_metrics(raw, cfg.global_batch_size, steps)
        metrics["lr"] = self.lrs.at(self.step, cfg.lr)  # the LR of the logged step
        if rt.thread_governor is not None:
            perf["cpu_threads"] = float(rt.thread_governor.current())
            self.session.thread_changes(self.step, rt.thread_governor.new_changes())
        xla = rt.is_xla and (_every(self.step, cfg.xla_metrics_every) or self.step <= steps)
        self.session.log(self.step, metrics, perf, self._pace.eta(self.step, self.total_steps),
                         xla_metrics=xla)

    def _evaluate(self) -> Optional[Dict[str, float]]:
        """Evaluates the current weights (EMA if kept, and then the raw ones too with
        ``eval_raw_weights``); None if a stop request ended it."""
        from trm.run.record import eval_dir
        self._check_finite()
        ema = self.ema.averaged(self.model) if self.ema is not None else contextlib.nullcontext()
        done = self._eval_pass(ema, "eval", self.session.workdir.url(eval_dir(self.step)))
        if done is not None and self.ema is not None and self.cfg.eval_raw_weights:
            raw = self._eval_pass(contextlib.nullcontext(), "eval_raw", None)
            done = None if raw is None else ({**done[0], **raw[0]}, done[1])
        if done is None:
            return None
        self.session.evaluated(self.step, *done)
        return done[0]

    def _eval_pass(self, weights, prefix: str, out_dir: Optional[str]):
        """(tagged metrics, headline) of one test pass with ``weights`` (a context manager), or
        None if a stop request ended it; evaluators run in the pass that writes ``out_dir``."""
        from trm.data import EvalStream
        cfg, rt = self.cfg, self.runtime
        batches = EvalStream(self.test_data_dir, cfg.eval_batch_size or cfg.global_batch_size,
                             process_index=rt.process_index, process_count=rt.process_count)
        try:
            with weights, progress.phase(f"{prefix} step {self.step}", len(batches),
                                         unit="batches", enabled=self.progress and rt.is_main,
                                         leave=False) as bar:
                results = evaluate(self.model, self.loss_head, batches, rt,
                                   self.evaluators if out_dir else [], out_dir,
                                   should_stop=self._stop_requested, progress=bar.update)
        except EvalInterrupted as e:
            log.warning("The evaluation at step %d was stopped after %d batches by a stop request;"
                        " the checkpoint is saved without its metrics.", self.step, e.batches)
            return None
        return tag_results(results, prefix), headline(results)

    @property
    def evaluators(self) -> List[Any]:
        if not hasattr(self, "_evaluators"):
            self._evaluators = [make(self.test_data_dir) for make in self.cfg.evaluators]
        return self._evaluators

    def _save(self) -> None:
        self._check_finite()
        self._verify_state()
        self.session.save(self.step, self._train_state().to_checkpoint())  # a collective

    def _verify_state(self) -> None:
        """Commits only sound states (see :func:`trm.train_state.state_is_sound`)."""
        batch = getattr(self, "_last_batch", None)
        n = self.cfg.grad_accum_steps
        if batch is not None and n > 1:  # the first micro-batch, as the first carry slot
            batch = {k: v[:v.shape[0] // n] for k, v in batch.items()}
        if not state_is_sound(self.model, self.loss_head, self.carry, batch, self.ema,
                              self.runtime, self.cfg.global_batch_size):
            raise TrainingError(diverged_message(
                f"The state after step {self.step} is not finite (its parameters, or the loss "
                "or gradients they give)", self.session))

    def _start_run(self) -> None:
        """Records the run's start, after its first step (:meth:`RunSession.begin`)."""
        self.session.begin(self._start_step, self.total_steps, self._resumed, self._describe,
                           ema_change=self._ema_change,
                           forward_auto=self.cfg.forward_dtype == "auto")

    def _describe(self) -> Dict[str, Any]:
        """The run's fields in run.json: its length, model, device and data."""
        rt, model, data_dir = self.runtime, self.model, self.data_dir
        auto = self.cfg.forward_dtype == "auto"
        return dict(total_steps=self.total_steps, num_params=model.num_params(),
                    flops_per_example=model.flops_per_example(max_steps=None, training=True),
                    trm_version=trm.__version__, **rt.describe(),
                    global_batch_size=self.cfg.global_batch_size,
                    data_dir=data_dir if isinstance(data_dir, str) else list(data_dir),
                    forward_dtype=str(model.forward_dtype).replace("torch.", ""),
                    forward_dtype_rule=forward_dtype_rule(rt.device) if auto else "FORWARD_DTYPE")

    def _finish(self, status: str) -> Dict[str, Any]:
        if not self.session.started:
            self._start_run()
        self.session.finish(status, self.step)
        return {"status": status, "step": self.step, "eval": self.session.last_eval,
                "best": self.session.best}


def _device_int(value: int, device: torch.device) -> torch.Tensor:
    """An int32 device scalar moved from the host as a one-element vector: a graph input, never
    a constant (torch_xla turns a 0 or 1 scalar into one), so a fresh and a resumed run, or two
    seeds, trace the same graphs and share the compile cache."""
    return torch.tensor([value], dtype=torch.int32).to(device).reshape(())


if __name__ == "__main__":  # pragma: no cover
    sys.exit("Use `python -m trm.train`.")
