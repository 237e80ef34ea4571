"""SignSGD for the sparse puzzle-embedding table (TRM_SPEC.md 7.2).

Reads the gradient of the rows the last training forward gathered
(``PuzzleEmbedding.local_weights.grad`` and ``local_ids``), gathers them from every process
(``gather_fn``), sums the gradient rows of equal identifiers, and updates only those rows::

    w[id] <- w[id] * (1 - lr * wd) - lr * sign(sum of grads of id)

Rows absent from the batch are untouched (lazy decay). The per-identifier sum is written with
fixed shapes (an ``[N, N]`` equality matrix times the ``[N, ndim]`` gradients, then a
row scatter where duplicate ids write identical values), so it compiles once on XLA.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch

from trm.registry import register

GatherFn = Callable[[torch.Tensor], torch.Tensor]


def _default_gather(t: torch.Tensor) -> torch.Tensor:
    """Concatenates ``t`` from every process of the default torch.distributed group."""
    import torch.distributed as dist
    from trm.runtime.distributed import check_collective_dtypes
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    check_collective_dtypes([t], "SignSGD's gather")
    out = torch.empty((dist.get_world_size() * t.shape[0],) + tuple(t.shape[1:]),
                      dtype=t.dtype, device=t.device)
    dist.all_gather_into_tensor(out, t.contiguous())
    return out


@register("optimizer", "sign_sgd")
class SignSGD(torch.optim.Optimizer):
    """Sparse sign-SGD with decoupled weight decay for a :class:`~trm.models.PuzzleEmbedding`."""

    def __init__(self, embedding, lr: float = 1e-2, weight_decay: float = 0.1,
                 gather_fn: Optional[GatherFn] = None) -> None:
        if lr < 0 or weight_decay < 0:
            raise ValueError(f"Invalid lr {lr} or weight_decay {weight_decay}.")
        self.embedding = embedding
        self.gather_fn = gather_fn or _default_gather
        super().__init__([embedding.weights], dict(lr=lr, weight_decay=weight_decay))

    def _local(self) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
        """Gradients and ids of the rows gathered since the last step (all micro-batches of
        an accumulated step: duplicate ids are summed below, as in one large batch)."""
        pairs = [(local.grad, ids) for local, ids in getattr(self.embedding, "locals", [])
                 if local is not None and local.grad is not None]
        if not pairs:
            return None
        if len(pairs) == 1:
            return pairs[0]
        return torch.cat([g for g, _ in pairs]), torch.cat([i for _, i in pairs])

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("SignSGD.step() takes no closure.")
        local = self._local()
        if local is None:
            return None
        grad, ids = local
        grad = self.gather_fn(grad)
        # the ids travel as int32 (TPU collectives are 32-bit); index_copy_ wants int64
        ids = self.gather_fn(ids.to(torch.int32)).to(torch.int64)
        same = (ids.unsqueeze(0) == ids.unsqueeze(1)).to(grad.dtype)
        summed = same @ grad
        group = self.param_groups[0]
        lr, wd = group["lr"], group["weight_decay"]
        weights = group["params"][0]
        rows = weights.index_select(0, ids) * (1 - lr * wd) - lr * torch.sign(summed)
        weights.index_copy_(0, ids, rows.to(weights.dtype))
        return None

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.embedding.clear_local()
