"""What a checkpoint holds: the typed training state, and the checks that keep it sound.

A :class:`TrainState` is everything a run needs to continue exactly: the step, the model's
weights, the optimizer states, the EMA, the data position, and per process its RNG states and
ACT carry. ``to_checkpoint()`` gives the plain dict that ``CheckpointManager.save`` writes
(the same keys in the same order as always, so old checkpoints load and new ones are
byte-compatible); ``from_checkpoint()`` reads one back. The checks:

- :func:`check_train_state`: a loaded dict is a state trm commits (structure, finite weights);
  given to ``CheckpointManager.restore(check=...)`` by the trainer and ``trm.eval``.
- :func:`check_compatible`: the checkpoint's weights fit the model this config builds.
- :func:`state_is_sound`: a state may be committed (finite weights, loss and gradients).

The run state (:mod:`trm.run`) never imports this module: it receives ``check_train_state``
as a callable, so it stays free of model code.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from trm.errors import TrainingError
from trm.models import Carry
from trm.run.checkpoints import CheckpointError, capture_rng_state, restore_rng_state

log = logging.getLogger("trm.train")


@dataclasses.dataclass
class TrainState:
    """One training state, as committed in ``state.pt`` (field order = the file's key order).

    Attributes:
        step: the steps trained.
        total_steps: the run's length when it was saved.
        model: the model's ``state_dict``.
        optimizers: each optimizer's ``state_dict`` (puzzle table first when it has one).
        ema: the EMA's ``state_dict`` (``shadow``, ``rate``), or None (no EMA).
        data: the training stream's position (with ``step``).
        per_process: per process ``{"carry": ..., "rng": ...}``: its ACT carry (one slot, a
            list of slots when accumulating gradients, or None before the first step) and its
            random generators.
        process_count: the processes that wrote it (exact resume needs as many).
        config: the run's gin config.
        best: run.json's best evaluation when saved.
        trm_version: the trm that wrote it.
    """

    step: int
    total_steps: Optional[int]
    model: Dict[str, torch.Tensor]
    optimizers: List[Dict[str, Any]]
    ema: Optional[Dict[str, Any]]
    data: Dict[str, Any]
    per_process: List[Dict[str, Any]]
    process_count: int = 1
    config: str = ""
    best: Optional[Dict[str, Any]] = None
    trm_version: str = ""

    def to_checkpoint(self) -> Dict[str, Any]:
        """The plain dict a checkpoint stores."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_checkpoint(cls, state: Dict[str, Any]) -> "TrainState":
        """The state of a loaded checkpoint dict (checked by :func:`check_train_state`);
        fields older checkpoints lack take their defaults."""
        return cls(step=int(state["step"]), total_steps=state.get("total_steps"),
                   model=state["model"], optimizers=state["optimizers"], ema=state.get("ema"),
                   data=state["data"], per_process=state["per_process"],
                   process_count=state.get("process_count", 1),
                   config=state.get("config", ""), best=state.get("best"),
                   trm_version=state.get("trm_version", ""))

    def restore_into(self, model: torch.nn.Module, optimizers: Sequence[Any], ema: Any,
                     make_ema: Callable[[Any], Any], stream: Any, *, process_count: int,
                     allow_change: bool, workdir: str) -> tuple:
        """Loads the weights, optimizer states, EMA (see :func:`resume_ema`) and data
        position of a run of ``process_count`` processes; ``allow_change``: the run was
        resumed with --allow_config_change. Returns ``(ema, ema_change)``. Raises a one-line
        TrainingError, before anything in ``workdir`` is replaced, when the state does not
        fit."""
        if self.process_count != process_count:
            raise TrainingError(
                f"The checkpoint was written by {self.process_count} processes, this run has "
                f"{process_count}: exact resume needs the same number. Start a new workdir, "
                "or initialise from this run's exported weights.")
        check_compatible(model.state_dict(), self.model, allow_change)
        try:
            model.load_state_dict(self.model)
            if len(self.optimizers) != len(optimizers):
                raise ValueError(f"the checkpoint has {len(self.optimizers)} optimizers, "
                                 f"this config builds {len(optimizers)} (puzzle table or "
                                 "FREEZE_WEIGHTS changed)")
            for opt, saved in zip(optimizers, self.optimizers):
                opt.load_state_dict(saved)
            ema, change = resume_ema(ema, self.ema, make_ema, model, self.step)
            stream.load_state_dict(self.data)
        except (RuntimeError, ValueError, KeyError) as e:
            raise TrainingError(
                f"The checkpoint in {workdir} does not fit this config: {e}. Nothing "
                "was changed in the workdir; resume with its saved config, or start a new "
                "--workdir.") from e
        return ema, change

    def restore_process(self, index: int, device: torch.device,
                        slots: int) -> Optional[List[Carry]]:
        """Restores process ``index``'s random generators and returns its carry slots on
        ``device`` (None when saved before the first step); ``slots``: GRAD_ACCUM_STEPS."""
        mine = self.per_process[index]
        saved = mine["carry"]
        saved = None if saved is None else saved if isinstance(saved, list) else [saved]
        if saved is not None and len(saved) != slots:
            raise TrainingError(
                f"The checkpoint holds {len(saved)} carry slot(s) per process, this config "
                f"GRAD_ACCUM_STEPS={slots}: resume with the same GRAD_ACCUM_STEPS.")
        carries = None if saved is None else [
            Carry.from_state_dict({k: v.to(device) for k, v in c.items()}) for c in saved]
        restore_rng_state(mine["rng"], device)
        return carries


def process_state(carries: Optional[Sequence[Carry]], device: torch.device) -> Dict[str, Any]:
    """This process's part of a :class:`TrainState` (``per_process``): its carry slots on the
    CPU (one slot unwrapped, as always saved) and its random generators."""
    saved = None if carries is None else [
        {k: v.detach().cpu() for k, v in c.state_dict().items()} for c in carries]
    return {"carry": saved[0] if saved and len(saved) == 1 else saved,
            "rng": capture_rng_state(device)}


def resume_ema(ema: Any, saved: Optional[Dict[str, Any]], make_ema: Callable[[Any], Any],
               model: torch.nn.Module, step: int) -> tuple:
    """Restores the EMA, applying a change of it at resume (allowed with
    --allow_config_change) correctly: the rate always comes from this config; an EMA
    switched on starts from the restored weights (not the initial ones); one switched off
    is dropped. Returns ``(ema, change)``: the EMA to use and the change as recorded in
    run.json (``ema_changes``; None when unchanged), which is also logged."""
    change = None
    if ema is None:
        if saved is not None:
            change = "switched off: the saved EMA weights are dropped"
    elif saved is None:
        ema = make_ema(model)   # the shadow of the restored weights
        change = f"switched on (rate {ema.rate}): the EMA starts from the restored weights"
    else:
        rate = ema.rate
        ema.load_state_dict(saved)
        ema.rate = rate
        if float(saved["rate"]) != rate:
            change = f"rate {float(saved['rate'])} -> {rate}"
    if change is not None:
        log.warning("EMA changed at resume (step %d): %s.", step, change)
    return ema, None if change is None else {"step": step, "change": change}


def check_compatible(current: Dict[str, Any], saved: Dict[str, Any], changed: bool) -> None:
    """Raises a TrainingError naming the parameters whose shapes differ between the model this
    config builds and the checkpoint's (before anything in the workdir is replaced)."""
    missing = sorted(set(current) - set(saved))
    extra = sorted(set(saved) - set(current))
    shapes = sorted(k for k in set(current) & set(saved)
                    if tuple(current[k].shape) != tuple(saved[k].shape))
    if not (missing or extra or shapes):
        return
    parts = []
    if shapes:
        parts.append("different shapes: " + ", ".join(
            f"{k} {tuple(saved[k].shape)} -> {tuple(current[k].shape)}" for k in shapes[:6])
            + (" ..." if len(shapes) > 6 else ""))
    if missing:
        parts.append("not in the checkpoint: " + ", ".join(missing[:6])
                     + (" ..." if len(missing) > 6 else ""))
    if extra:
        parts.append("only in the checkpoint: " + ", ".join(extra[:6])
                     + (" ..." if len(extra) > 6 else ""))
    hint = ("--allow_config_change allows changes that keep the weights' shapes (LR, "
            "schedule, evaluation...)" if changed else "the saved config.gin builds it")
    raise TrainingError("The checkpoint does not fit the model this config builds ("
                        + "; ".join(parts) + f"). Nothing was changed in the workdir; {hint}; "
                        "a new model needs a new --workdir.")


def state_is_sound(model, loss_head, carry, batch, ema, runtime, global_batch_size: int) -> bool:
    """Whether a training state may be committed: its parameters (and EMA) are finite, and so
    are its own loss and gradients -- a forward and backward pass of ``batch`` with these
    weights and a copy of ``carry``, without an update (gradients are returned, not stored; the
    RNG is restored afterwards, so training continues bitwise as without the check). So a
    diverged update (e.g. an LR far too high) never becomes a checkpoint, even between
    evaluations. Decided together by all processes."""
    tensors = [p.detach() for p in model.parameters()]
    if ema is not None:
        tensors += list(ema.shadow.values())
    ok = torch.stack([torch.isfinite(t).all() for t in tensors]).all()
    if batch is not None and carry is not None:
        rng = capture_rng_state(runtime.device)
        emb = getattr(model, "puzzle_emb", None)
        saved_locals = list(getattr(emb, "locals", []))
        try:
            copy = Carry.from_state_dict({k: v.clone() for k, v in carry.state_dict().items()})
            copy, outputs = model(copy, batch)
            loss, _, _ = loss_head(copy, outputs)
            params = [p for p in model.parameters() if p.requires_grad]
            if params and loss.requires_grad:
                grads = torch.autograd.grad(loss / global_batch_size, params, allow_unused=True)
                norms = [torch.linalg.vector_norm(g.float()) for g in grads if g is not None]
                if norms:
                    ok = ok & torch.isfinite(torch.stack(norms)).all()
            ok = ok & torch.isfinite(loss.detach())
        finally:
            restore_rng_state(rng, runtime.device)
            if emb is not None and hasattr(emb, "locals"):
                emb.locals = saved_locals
        runtime.mark_step()
    if runtime.distributed:
        flag = ok.to(torch.float32).reshape(1)
        runtime.all_reduce_sum_([flag])
        ok = flag[0] >= runtime.process_count
    return bool(ok)


def check_train_state(state: Any) -> None:
    """Raises a one-line :class:`~trm.run.checkpoints.CheckpointError` when a restored state is
    not one trm commits: the structure of a :class:`TrainState` (step, the model's tensors,
    optimizer states, EMA, data position, per-process RNG and carry), and finite weights (only
    sound states are committed, see :func:`state_is_sound`, so a non-finite one was altered or
    written by something else). Given to ``CheckpointManager.restore(check=...)``, so such a
    checkpoint is skipped like a corrupt one and never called the last good checkpoint."""
    def tensors(obj: Any) -> bool:
        return isinstance(obj, dict) and bool(obj) and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())

    if not isinstance(state, dict):
        raise CheckpointError("its state is not a mapping: not a training state as trm saves it")
    ema, step, per = state.get("ema"), state.get("step"), state.get("per_process")
    problems = (
        ("has no step number", isinstance(step, bool) or not isinstance(step, int) or step < 0),
        ("has no model weights (name -> tensor)", not tensors(state.get("model"))),
        ("has a malformed EMA", ema is not None and not (
            isinstance(ema, dict) and tensors(ema.get("shadow"))
            and isinstance(ema.get("rate"), (int, float)))),
        ("has no optimizer states", not isinstance(state.get("optimizers"), list)),
        ("has no data position", not isinstance(state.get("data"), dict)),
        ("has no per-process RNG and carry", not isinstance(per, list) or not per or not all(
            isinstance(p, dict) and isinstance(p.get("rng"), dict) and "carry" in p
            for p in per)),
    )
    for what, failed in problems:
        if failed:
            raise CheckpointError(f"its state {what}: not a training state as trm saves it")
    weights = dict(state["model"], **{f"ema.{k}": v for k, v in (ema or {}).get(
        "shadow", {}).items()})
    bad = [k for k, v in weights.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(
            f"it holds non-finite weights ({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}); "
            "trm never commits such a state, so it was altered or written by something else")
