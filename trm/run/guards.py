"""Guards of the run lifecycle: one-line errors that name the problem and keep the workdir.

Used by the trainer before anything is written (``open_workdir``, ``check_compatible``) and when
a write fails (``storage_error``). See the fault table in docs/RUN_STATE.md.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

from trm.experiment import TrainingError


def open_workdir(path: str):
    """The run's Workdir; a path that is a file is a one-line error."""
    from trm.run.workdir import Workdir
    if "://" not in str(path) and os.path.isfile(os.path.expanduser(str(path))):
        raise TrainingError(f"--workdir {path} is a file, not a folder; choose a folder (it is "
                            "created if missing).")
    return Workdir(os.path.expanduser(str(path)) if "://" not in str(path) else path)


def storage_error(e: Exception, what: str, workdir: str, latest: Optional[int]) -> Exception:
    """A one-line error for a storage failure while writing run state (other errors are
    returned unchanged)."""
    import errno
    if not isinstance(e, OSError):
        cause = e.__cause__
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__cause__
        if cause is None:
            return e
        e = cause
    keep = (f"the committed checkpoint of step {latest} is intact" if latest is not None
            else "no checkpoint was committed")
    if e.errno == errno.ENOSPC:
        cause = "no space left on the device"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        cause = "the workdir is not writable"
    else:
        cause = f"{type(e).__name__}: {e}"
    return TrainingError(f"Storage error while {what} in {workdir}: {cause}; "
                         f"{keep}. Fix the storage and run the same command to resume.")


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
    import torch

    from trm.models import Carry
    from trm.run.checkpoints import capture_rng_state, restore_rng_state
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
    not one trm commits: the structure the trainer saves (step, the model's tensors, optimizer
    states, EMA, data position, per-process RNG and carry), and finite weights (only sound
    states are committed, see :func:`state_is_sound`, so a non-finite one was altered or
    written by something else). Given to ``CheckpointManager.restore(check=...)``, so such a
    checkpoint is skipped like a corrupt one and never called the last good checkpoint."""
    import torch

    from trm.run.checkpoints import CheckpointError

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
