"""Learning-rate schedules (registered kind ``schedule``), TRM_SPEC.md section 8.

A schedule is a function ``(step, *, base_lr, warmup_steps, total_steps, **kw) -> lr`` of the
1-based optimizer step; both optimizers (the network's and the puzzle table's) use the same
schedule shape with their own base LR.
"""

from __future__ import annotations

import math

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
