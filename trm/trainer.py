"""The TRM training loop: deep supervision, two optimizers, EMA, evaluation, run state.

Plain Python (no gin): :class:`TrainConfig` holds every setting, :class:`Trainer` runs it.
``trm.train`` builds the config from gin files; research code can build it directly.

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

import dataclasses
import logging
import math
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

import trm
from trm.evaluation import MetricSums, evaluate, headline, normalize_train_metrics
from trm.losses import ACTLoss
from trm.models import TRM, Carry
from trm.optim import EMA, AdamATan2, SignSGD, cosine_with_warmup
from trm.runtime import Runtime, default_forward_dtype, init_runtime

log = logging.getLogger("trm.train")

PathLike = Union[str, Sequence[str]]
DEFAULT_DATA_ROOT = "~/.cache/trm/datasets"


class TrainingError(RuntimeError):
    """The run cannot continue (non-finite loss, bad configuration, ...)."""


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run needs. Defaults follow the study's Sudoku baseline.

    Attributes:
        data_dir: dataset folder(s) (local or gs://), split ``train`` is trained on. ``~`` and
            environment variables are expanded, and ``{name}`` fields are filled from
            ``dataset_builder_args`` (so a data-size sweep gets one folder per size).
        test_data_dir: folder(s) whose ``test`` split is evaluated (default: ``data_dir``).
        dataset_builder: if set, build ``data_dir`` with this builder when it does not exist yet
            (``trm.data.ensure_dataset``), with ``dataset_builder_args``.
        model: factory ``(vocab_size=, seq_len=, num_puzzle_identifiers=, forward_dtype=)``.
        loss: the ACT loss head factory.
        optimizer: main optimizer factory ``(params, lr=)`` (weight decay, betas bound inside).
        sparse_optimizer: puzzle-table optimizer factory ``(embedding, lr=, gather_fn=)``.
        schedule: LR schedule ``(step, base_lr=, warmup_steps=, total_steps=, min_ratio=)``.
        ema: EMA factory ``(model) -> EMA`` or None (off).
        epochs / train_steps: total steps = train_steps, or int(epochs * examples per epoch /
            global_batch_size) (section 8).
    """

    data_dir: PathLike = ""
    test_data_dir: Optional[PathLike] = None
    dataset_builder: Optional[str] = None
    dataset_builder_args: Dict[str, Any] = dataclasses.field(default_factory=dict)
    model: Callable[..., TRM] = TRM
    loss: Callable[[], ACTLoss] = ACTLoss
    optimizer: Callable[..., torch.optim.Optimizer] = AdamATan2
    sparse_optimizer: Callable[..., torch.optim.Optimizer] = SignSGD
    schedule: Callable[..., float] = cosine_with_warmup
    ema: Optional[Callable[[torch.nn.Module], EMA]] = EMA
    use_ema: bool = True
    evaluators: Sequence[Callable[..., Any]] = ()
    global_batch_size: int = 256
    eval_batch_size: Optional[int] = None
    epochs: int = 50_000
    train_steps: Optional[int] = None
    lr: float = 1e-4
    puzzle_emb_lr: float = 1e-4
    lr_warmup_steps: int = 2000
    lr_min_ratio: float = 1.0
    grad_clip_norm: Optional[float] = None
    freeze_weights: bool = False
    seed: int = 0
    eval_every: int = 5000
    checkpoint_every: int = 2500
    log_every: int = 100
    xla_metrics_every: int = 1000
    keep_checkpoints: int = 5
    best_metric: str = "eval/exact_accuracy"
    forward_dtype: str = "auto"
    device: str = "auto"
    compile: bool = False
    init_from_reference: Optional[str] = None
    preemption_check_every: int = 10
    async_checkpoint: bool = True

    def validate(self, process_count: int) -> None:
        if not self.data_dir:
            raise TrainingError("No dataset: set the data directory (gin macro DATA_DIR, "
                                "i.e. TrainConfig.data_dir).")
        if self.global_batch_size < 1 or self.global_batch_size % process_count:
            raise TrainingError(
                f"GLOBAL_BATCH_SIZE={self.global_batch_size} is not divisible by the number "
                f"of processes ({process_count}); choose a multiple of {process_count}.")
        eval_bs = self.eval_batch_size or self.global_batch_size
        if eval_bs % process_count:
            raise TrainingError(
                f"EVAL_BATCH_SIZE={eval_bs} is not divisible by the number of processes "
                f"({process_count}).")
        for name in ("eval_every", "checkpoint_every", "log_every"):
            if getattr(self, name) < 0:
                raise TrainingError(f"{name} must be >= 0 (0 = only at the end).")


def _every(step: int, interval: int) -> bool:
    return interval > 0 and step % interval == 0


class _StopSignal:
    """Records SIGTERM/SIGINT; the loop finishes the step, checkpoints and exits."""

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self._previous: Dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.received = signum
        log.warning("Received %s: finishing the current step, then checkpointing.",
                    signal.Signals(signum).name)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class Trainer:
    """Runs one :class:`TrainConfig` in one workdir (see module docstring)."""

    def __init__(self, config: TrainConfig, workdir: str, *, runtime: Optional[Runtime] = None,
                 config_text: str = "", command: Optional[Dict[str, Any]] = None,
                 allow_config_change: bool = False, progress: bool = True,
                 force_unlock: bool = False,
                 step_callback: Optional[Callable[[int], None]] = None) -> None:
        self.cfg = config
        self.workdir_path = workdir
        self.runtime = runtime or init_runtime(config.device)
        self.config_text = config_text
        self.command = command or {}
        self.allow_config_change = allow_config_change
        self.progress = progress
        self.force_unlock = force_unlock
        self.step_callback = step_callback
        self.cfg.validate(self.runtime.process_count)

    # -- set-up ----------------------------------------------------------------------------
    def _prepare_data(self) -> None:
        from trm import data  # pylint: disable=import-outside-toplevel
        cfg, rt = self.cfg, self.runtime
        if cfg.dataset_builder:
            if isinstance(cfg.data_dir, (list, tuple)):
                raise TrainingError("dataset_builder needs a single data_dir.")
            # Every process calls it: the data layer makes concurrent builds safe.
            path = _expand(cfg.data_dir, cfg.dataset_builder_args)
            if rt.is_main:
                log.info("Dataset %s (building it if missing: %s)", path, cfg.dataset_builder)
                data.ensure_dataset(path, cfg.dataset_builder, **dict(cfg.dataset_builder_args))
            rt.barrier()
            if not rt.is_main:
                data.ensure_dataset(path, cfg.dataset_builder, **dict(cfg.dataset_builder_args))
        self.data_dir = _expand(cfg.data_dir, cfg.dataset_builder_args)
        self.test_data_dir = (_expand(cfg.test_data_dir, cfg.dataset_builder_args)
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
        if self.cfg.train_steps:
            self.total_steps = int(self.cfg.train_steps)
        else:
            self.total_steps = int(self.cfg.epochs * self.train_meta.examples_per_epoch
                                   / self.cfg.global_batch_size)
        if self.total_steps < 1:
            raise TrainingError(f"The run has {self.total_steps} steps: set TRAIN_STEPS or more "
                                "EPOCHS.")

    def _build(self) -> None:
        cfg, rt = self.cfg, self.runtime
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2 ** 32)
        random.seed(cfg.seed)
        dtype = (default_forward_dtype(rt.device) if cfg.forward_dtype == "auto"
                 else cfg.forward_dtype)
        meta = self.train_meta
        self.model = cfg.model(vocab_size=meta.vocab_size, seq_len=meta.seq_len,
                               num_puzzle_identifiers=meta.num_puzzle_identifiers,
                               forward_dtype=dtype)
        if cfg.init_from_reference:
            from trm.interop.reference import load_reference_checkpoint  # pylint: disable=import-outside-toplevel
            info = load_reference_checkpoint(self.model, cfg.init_from_reference)
            log.info("Initialised from reference checkpoint %s (%s)", cfg.init_from_reference,
                     info)
        self.model.to(rt.device)
        self.model.train()
        if cfg.compile:
            for layer in self._blocks():
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
        self.evaluators = [make(self.test_data_dir) for make in cfg.evaluators]

    def _blocks(self) -> List[torch.nn.Module]:
        return [m for m in self.model.core.modules() if type(m).__name__ == "Block"]

    # -- state -----------------------------------------------------------------------------
    def _train_state(self) -> Dict[str, Any]:
        """Everything needed to continue exactly (gathered to every process)."""
        from trm.checkpoint import capture_rng_state  # pylint: disable=import-outside-toplevel
        local = {
            "carry": None if self.carry is None else {
                k: v.detach().cpu() for k, v in self.carry.state_dict().items()},
            "rng": capture_rng_state(self.runtime.device),
        }
        per_process = self.runtime.gather_objects(local)
        return {
            "step": self.step,
            "total_steps": self.total_steps,
            "model": self.model.state_dict(),
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "ema": None if self.ema is None else self.ema.state_dict(),
            "data": self.stream.state_dict(),
            "per_process": per_process,
            "process_count": self.runtime.process_count,
            "config": self.config_text,
            "best": self.best,
            "trm_version": trm.__version__,
        }

    def _load_state(self, state: Dict[str, Any]) -> None:
        from trm.checkpoint import restore_rng_state  # pylint: disable=import-outside-toplevel
        rt = self.runtime
        if state.get("process_count", 1) != rt.process_count:
            raise TrainingError(
                f"The checkpoint was written by {state['process_count']} processes, this run has "
                f"{rt.process_count}: exact resume needs the same number. Start a new workdir, "
                "or initialise from this run's exported weights.")
        self.model.load_state_dict(state["model"])
        for opt, s in zip(self.optimizers, state["optimizers"]):
            opt.load_state_dict(s)
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.stream.load_state_dict(state["data"])
        mine = state["per_process"][rt.process_index]
        self.carry = None if mine["carry"] is None else Carry.from_state_dict(
            {k: v.to(rt.device) for k, v in mine["carry"].items()})
        restore_rng_state(mine["rng"], rt.device)
        self.step = int(state["step"])
        self.best = state.get("best")

    # -- the loop --------------------------------------------------------------------------
    def lr_at(self, step: int, base_lr: float) -> float:
        return self.cfg.schedule(step, base_lr=base_lr, warmup_steps=self.cfg.lr_warmup_steps,
                                 total_steps=self.total_steps, min_ratio=self.cfg.lr_min_ratio)

    def train_step(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """One supervision step; returns device-side raw metrics (no host sync)."""
        cfg, rt = self.cfg, self.runtime
        if self.carry is None:
            self.carry = self.model.initial_carry(batch)
        self.carry, outputs = self.model(self.carry, batch)
        loss, metrics, _ = self.loss_head(self.carry, outputs)
        (loss / cfg.global_batch_size).backward()
        params = [p for p in self.model.parameters() if p.grad is not None]
        rt.all_reduce_sum_([p.grad for p in params])
        foreach = None if rt.is_xla else True  # XLA has no foreach kernels
        grad_norm = (torch.nn.utils.get_total_norm([p.grad for p in params], foreach=foreach)
                     if params else torch.zeros((), device=rt.device))
        if cfg.grad_clip_norm and params:
            torch.nn.utils.clip_grads_with_norm_(params, cfg.grad_clip_norm, grad_norm,
                                                 foreach=foreach)
        step = self.step + 1
        for opt, base in zip(self.optimizers, self.base_lrs):
            lr = self.lr_at(step, base)
            for group in opt.param_groups:
                group["lr"] = lr
            opt.step()
            opt.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model)
        self.step = step
        finite = torch.isfinite(loss.detach())
        extra = {"grad_norm": grad_norm.detach(), "loss_finite": finite.to(torch.float32),
                 "lr": torch.tensor(self.lr_at(step, cfg.lr), device=rt.device)}
        self._nonfinite_step = torch.where(
            finite | (self._nonfinite_step > 0), self._nonfinite_step,
            torch.tensor(step, device=rt.device))
        metrics.update(extra)
        rt.mark_step()
        return metrics

    def run(self) -> Dict[str, Any]:
        """Trains (resuming if the workdir has a checkpoint) and returns the final metrics."""
        from trm.checkpoint import CheckpointManager  # pylint: disable=import-outside-toplevel
        from trm.data import TrainStream  # pylint: disable=import-outside-toplevel
        from trm.tb import SummaryWriterSync  # pylint: disable=import-outside-toplevel
        from trm.workdir import Workdir  # pylint: disable=import-outside-toplevel

        cfg, rt = self.cfg, self.runtime
        self.workdir = Workdir(self.workdir_path)
        stopper = _StopSignal()
        stopper.install()  # from the start: a preemption during start-up stops after step 1
        if rt.is_main:
            self.workdir.acquire_lock({"host": socket.gethostname(), "pid": os.getpid()},
                                      force=self.force_unlock)
        try:
            self._prepare_data()
            self._build()
            self.stream = TrainStream(self.data_dir, cfg.global_batch_size,
                                      process_index=rt.process_index,
                                      process_count=rt.process_count, seed=cfg.seed)
            self.ckpt = CheckpointManager(self.workdir, keep=cfg.keep_checkpoints,
                                          best_metric=cfg.best_metric, best_mode="max",
                                          async_save=cfg.async_checkpoint and rt.is_main)
            self.step, self.carry, self.best = 0, None, None
            self._nonfinite_step = torch.zeros((), dtype=torch.int64, device=rt.device)
            config_outcome = self._check_config() if rt.is_main else "none"
            restored = self.ckpt.restore("latest")
            if restored is not None:
                self._load_state(restored[1])
                log.info("Resumed from step %d of %d.", self.step, self.total_steps)
            # On resume, TensorBoard hides points of the old files from the resumed step on.
            self.writer = (SummaryWriterSync(self.workdir, purge_step=self.step + 1 if restored
                                             else None) if rt.is_main else None)
            if rt.is_main:
                self._write_run_files(resumed=restored is not None,
                                      config_changed=config_outcome != "same")
            status = self._loop(stopper)
            return self._finish(status)
        except BaseException as e:
            if rt.is_main:
                status = "preempted" if isinstance(e, KeyboardInterrupt) else "failed"
                try:
                    self.workdir.update_run_json(status=status, error=f"{type(e).__name__}: {e}",
                                                 end_time=_now())
                except Exception:  # noqa: BLE001 - keep the original error
                    pass
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
                except Exception:  # noqa: BLE001
                    log.exception("Closing the %s failed.", name)

    def _loop(self, stopper: _StopSignal) -> str:
        cfg, rt = self.cfg, self.runtime
        sums = MetricSums(rt.device)
        it = iter(self.stream)
        t_log, step_log = time.perf_counter(), self.step
        t_start, step_start = t_log, self.step
        while self.step < self.total_steps:
            batch = rt.to_device(next(it))
            metrics = self.train_step(batch)
            sums.add(metrics)
            first = self.step == step_start + 1
            if first and rt.is_main and not self.workdir.exists("operative_config.gin"):
                self._write_operative_config()
            if _every(self.step, cfg.log_every) or self.step == self.total_steps:
                now = time.perf_counter()
                self._log_train(sums, now - t_log, self.step - step_log, t_start, step_start)
                sums.reset()
                t_log, step_log = now, self.step
            stop = stopper.received is not None
            if rt.distributed and (_every(self.step, cfg.preemption_check_every) or
                                   self.step == self.total_steps):
                flag = torch.tensor([1.0 if stop else 0.0], device=rt.device)
                rt.all_reduce_sum_([flag])
                stop = bool(flag.item() > 0)
            elif rt.distributed:
                stop = False  # decide together at the next check
            last = self.step == self.total_steps
            if self.test_meta is not None and (_every(self.step, cfg.eval_every) or last):
                self._evaluate()
            if stop or last or _every(self.step, cfg.checkpoint_every):
                self._save()
            if self.step_callback is not None:
                self.step_callback(self.step)
            if stop:
                log.warning("Stopped at step %d after a signal; the next start resumes.",
                            self.step)
                return "preempted"
        return "completed"

    # -- pieces of the loop ----------------------------------------------------------------
    def _check_finite(self) -> None:
        bad = int(self._nonfinite_step.item())
        if bad:
            raise TrainingError(
                f"Non-finite loss at step {bad}. Training stopped; the last checkpoint before "
                f"it is kept in {self.workdir_path}/checkpoints. Lower the LR, enable "
                "GRAD_CLIP, or check the data (docs/TROUBLESHOOTING.md).")

    def _log_train(self, sums: MetricSums, elapsed: float, steps: int, t_start: float,
                   step_start: int) -> None:
        cfg, rt = self.cfg, self.runtime
        raw = sums.fetch(rt)
        raw.pop("loss_finite", None)
        if rt.process_count > 1:  # lr and grad norm are identical on every process
            for k in ("lr", "grad_norm"):
                if k in raw:
                    raw[k] /= rt.process_count
        metrics = normalize_train_metrics(raw, cfg.global_batch_size, steps)
        self._check_finite()
        step_time = elapsed / max(steps, 1)
        perf = {"examples_per_s": cfg.global_batch_size / step_time if step_time else 0.0,
                "steps_per_s": 1.0 / step_time if step_time else 0.0, "step_time_s": step_time}
        if rt.is_main:
            self.writer.scalars({f"train/{k}": v for k, v in metrics.items()}, self.step)
            self.writer.scalars({f"perf/{k}": v for k, v in perf.items()}, self.step)
            if rt.is_xla and (_every(self.step, cfg.xla_metrics_every) or self.step <= steps):
                self.writer.scalars(_xla_metrics(), self.step)
            self.writer.flush()
            self.workdir.update_run_json(last_step=self.step, status="running")
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
                      f"lr {metrics.get('lr', 0):.2e}  {perf['steps_per_s']:.2f} steps/s  "
                      f"ETA {_fmt_s(eta)}", flush=True)

    def _evaluate(self) -> Dict[str, float]:
        from trm.data import EvalStream  # pylint: disable=import-outside-toplevel
        cfg, rt = self.cfg, self.runtime
        self._check_finite()
        batches = EvalStream(self.test_data_dir, cfg.eval_batch_size or cfg.global_batch_size,
                             process_index=rt.process_index, process_count=rt.process_count)
        out_dir = os.path.join(self.workdir_path, "eval", f"step_{self.step:09d}")
        t0 = time.perf_counter()
        if self.ema is not None:
            with self.ema.averaged(self.model):
                results = evaluate(self.model, self.loss_head, batches, rt, self.evaluators,
                                   out_dir)
        else:
            results = evaluate(self.model, self.loss_head, batches, rt, self.evaluators, out_dir)
        elapsed = time.perf_counter() - t0
        tagged = {}
        for k, v in results.items():
            set_name, _, metric = k.partition("/")
            if "/" in k and set_name == "all":
                tagged[f"eval/{metric}"] = v
            elif "/" in k and not k.startswith("ARC/"):
                tagged[f"eval/{k}"] = v
            else:
                tagged[k] = v
        tagged["perf/eval_time_s"] = elapsed
        if rt.is_main:
            self.writer.scalars(tagged, self.step)
            self.writer.flush()
            self.workdir.write_json(f"eval/step_{self.step:09d}/metrics.json",
                                    {"step": self.step, **tagged})
            value = tagged.get(cfg.best_metric)
            if value is not None and (self.best is None or value > self.best["value"]):
                self.best = {"step": self.step, "metric": cfg.best_metric, "value": value}
            self.workdir.update_run_json(last_eval_step=self.step, best=self.best,
                                         last_eval={k: v for k, v in tagged.items()
                                                    if k.startswith(("eval/", "ARC/"))})
            if self.progress:
                head = headline(results)
                print(f"eval step {self.step}: exact_accuracy "
                      f"{'n/a' if head is None else f'{head:.4f}'}  "
                      + "  ".join(f"{k}={v:.4f}" for k, v in sorted(tagged.items())
                                  if k.startswith("ARC/")), flush=True)
        self._last_eval, self._eval_step = tagged, self.step
        return tagged

    def _save(self) -> None:
        self._check_finite()
        state = self._train_state()  # a collective: every process takes part
        if self.runtime.is_main:
            fresh = getattr(self, "_eval_step", None) == self.step
            self.ckpt.save(self.step, state, metrics=self._last_eval if fresh else None)

    def _check_config(self) -> str:
        """Saves config.gin, or checks that the workdir's saved one is this run's config."""
        from trm.workdir import ConfigMismatchError  # pylint: disable=import-outside-toplevel
        if not self.config_text:
            return "none"
        try:
            return self.workdir.ensure_config("config.gin", self.config_text,
                                              allow_change=self.allow_config_change)
        except ConfigMismatchError as e:
            raise TrainingError(
                f"The workdir {self.workdir_path} holds a run with another configuration. Use a "
                f"new --workdir, or pass --allow_config_change to continue with the new "
                f"configuration. {e}") from e

    def _write_run_files(self, resumed: bool, config_changed: bool) -> None:
        wd = self.workdir
        if self.config_text and config_changed:
            self.writer.text("config/gin", _md_code(self.config_text), self.step)
        if self.command:
            wd.write_json("command.json", self.command)
        fields = dict(status="running", last_step=self.step, total_steps=self.total_steps,
                      num_params=self.model.num_params(),
                      flops_per_example=self.model.flops_per_example(
                          max_steps=None, training=True),
                      trm_version=trm.__version__, git_commit=_git_commit(),
                      device=str(self.runtime.device), backend=self.runtime.backend,
                      world_size=self.runtime.process_count,
                      global_batch_size=self.cfg.global_batch_size,
                      data_dir=self.data_dir if isinstance(self.data_dir, str)
                      else list(self.data_dir))
        if not resumed or not wd.exists("run.json"):
            fields["start_time"] = _now()
        else:
            fields["resumed_at_step"] = self.step
        wd.update_run_json(**fields)
        if not resumed:
            self.writer.scalars({"params/num_params": float(self.model.num_params())}, 0)

    def _write_operative_config(self) -> None:
        try:
            import gin  # pylint: disable=import-outside-toplevel
            text = gin.operative_config_str()
        except Exception:  # noqa: BLE001 - gin is optional for library users
            return
        if text.strip():
            self.workdir.write_text("operative_config.gin", text)

    def _finish(self, status: str) -> Dict[str, Any]:
        rt = self.runtime
        if rt.is_main:
            self.ckpt.wait()
            self.writer.flush()
            fields = dict(status=status, last_step=self.step)
            if status == "completed":
                fields["end_time"] = _now()
            self.workdir.update_run_json(**fields)
        return {"status": status, "step": self.step, "eval": getattr(self, "_last_eval", {}),
                "best": self.best}


def _xla_metrics() -> Dict[str, float]:
    try:
        import torch_xla.debug.metrics as met  # pylint: disable=import-outside-toplevel
    except ImportError:
        return {}
    out = {}
    compile_data = met.metric_data("CompileTime")
    if compile_data:
        out["xla/compile_count"] = float(compile_data[0])
        out["xla/compile_time_s"] = float(compile_data[1]) / 1e9
    for name in ("TransferToDeviceTime", "TransferFromDeviceTime", "ExecuteTime"):
        d = met.metric_data(name)
        if d:
            out[f"xla/{name}_count"] = float(d[0])
    return out


def _expand(path: PathLike, fields: Optional[Dict[str, Any]] = None) -> PathLike:
    """Expands ``~``, environment variables and ``{field}`` placeholders of a data path.

    ``{data_root}`` is ``$TRM_DATA_ROOT`` (default ``~/.cache/trm/datasets``); other fields
    come from the dataset builder's arguments.
    """
    if isinstance(path, (list, tuple)):
        return [_expand(p, fields) for p in path]
    fields = {"data_root": os.environ.get("TRM_DATA_ROOT", DEFAULT_DATA_ROOT), **(fields or {})}
    if "{" in path:
        try:
            path = path.format(**fields)
        except KeyError as e:
            raise TrainingError(f"Data path {path!r} names {e} which is not a dataset builder "
                                f"argument ({sorted(fields)}).") from e
    return os.path.expanduser(os.path.expandvars(path)) if "://" not in path else path


def _md_code(text: str) -> str:
    return "    " + text.replace("\n", "\n    ")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _fmt_s(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _git_commit() -> Optional[str]:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


if __name__ == "__main__":  # pragma: no cover
    sys.exit("Use `python -m trm.train`.")
