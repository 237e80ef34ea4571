"""Learning-rate schedules (registered kind ``schedule``), TRM_SPEC.md section 8.

A schedule is a function ``(step, *, base_lr, warmup_steps, total_steps, **kw) -> lr`` of the
1-based optimizer step; both optimizers (the network's and the puzzle table's) use the same
schedule shape with their own base LR.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import torch

from trm.registry import register


@register("schedule", "cosine_with_warmup")
def cosine_with_warmup(step: int, *, base_lr: float, warmup_steps: int, total_steps: int,
                       min_ratio: float = 0.0, num_cycles: float = 0.5) -> float:
    """Linear warm-up from 0, then cosine decay to ``min_ratio * base_lr``.

    With ``min_ratio = 1`` (the reference's shipped setting) this is warm-up then constant.
    """
    warmup_steps = round(warmup_steps)
    if step < warmup_steps:
        return base_lr * step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * 2.0 * num_cycles * progress))
    return base_lr * (min_ratio + max(0.0, (1.0 - min_ratio) * cosine))


@register("schedule", "constant_with_warmup")
def constant_with_warmup(step: int, *, base_lr: float, warmup_steps: int, total_steps: int = 0
                         ) -> float:
    """Linear warm-up from 0, then constant (``cosine_with_warmup`` with ``min_ratio=1``)."""
    del total_steps
    return cosine_with_warmup(step, base_lr=base_lr, warmup_steps=warmup_steps, total_steps=1,
                              min_ratio=1.0)


class StepLRs:
    """The LR of each optimizer at each step of a run: one ``schedule`` over ``total_steps``
    with each optimizer's base LR (``schedule(step, base_lr=, warmup_steps=, total_steps=,
    min_ratio=)``).

    :meth:`lr` gives a Python number on CPU/CUDA (a kernel argument, no transfer); with
    ``device`` (XLA) a device scalar read from a table made once, so no per-step value crosses
    from the host (a new Python float would be a transfer).
    """

    def __init__(self, schedule: Callable[..., float], base_lrs: Sequence[float],
                 total_steps: int, warmup_steps: int, min_ratio: float,
                 device: Optional[torch.device] = None) -> None:
        self.schedule, self.base_lrs = schedule, list(base_lrs)
        self.total_steps, self.warmup_steps, self.min_ratio = total_steps, warmup_steps, min_ratio
        self.device = device
        self._tables: Optional[list] = None

    def at(self, step: int, base_lr: float) -> float:
        """The schedule's LR at ``step`` for ``base_lr``."""
        return self.schedule(step, base_lr=base_lr, warmup_steps=self.warmup_steps,
                             total_steps=self.total_steps, min_ratio=self.min_ratio)

    def lr(self, index: int, step: int, step_t: torch.Tensor) -> Any:
        """The LR of optimizer ``index`` at ``step`` (``step_t``: the step on the device)."""
        if self.device is None:
            return self.at(step, self.base_lrs[index])
        if self._tables is None:
            steps = range(self.total_steps + 1)
            self._tables = [torch.tensor([self.at(s, base) for s in steps],
                                         dtype=torch.float32).to(self.device)
                            for base in self.base_lrs]
        return self._tables[index].index_select(0, step_t.reshape(1)).reshape(())
