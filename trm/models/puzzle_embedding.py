"""The sparse per-puzzle embedding table (TRM_SPEC.md 2.7 and 7.2).

The table is a persistent float32 *buffer* ``weights [num_ids, ndim]`` (not a Parameter: the
main optimizer, parameter counts and EMA do not see it). In training, each forward with
gradients enabled gathers the batch's rows into a fresh leaf tensor ``local_weights`` whose
gradient the SignSGD optimizer (:class:`trm.optim.SignSGD`) reads, together with
``local_ids``, to update only those rows. Unlike the reference, the local buffers are not
sized by a fixed batch size, so any batch size works (reference quirk 12.14).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import nn

from trm.models.layers import to_dtype, trunc_normal_init_


class PuzzleEmbedding(nn.Module):
    """Per-identifier embedding rows trained sparsely (see module docstring)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, init_std: float = 0.0,
                 cast_to="float32") -> None:
        super().__init__()
        self.cast_to = to_dtype(cast_to)
        self.register_buffer(
            "weights", trunc_normal_init_(torch.empty(num_embeddings, embedding_dim),
                                          std=init_std), persistent=True)
        # (rows, ids) of every training forward since the last optimizer step: one entry per
        # forward, several with gradient accumulation (micro-batches).
        self.locals: List[Tuple[torch.Tensor, torch.Tensor]] = []

    @property
    def local_weights(self) -> Optional[torch.Tensor]:
        """The rows gathered by the last training forward (a leaf with a gradient)."""
        return self.locals[-1][0] if self.locals else None

    @local_weights.setter
    def local_weights(self, value: Optional[torch.Tensor]) -> None:
        ids = self.locals[-1][1] if self.locals else None
        self.locals = [] if value is None else [(value, ids)]

    @property
    def local_ids(self) -> Optional[torch.Tensor]:
        return self.locals[-1][1] if self.locals else None

    @local_ids.setter
    def local_ids(self, value: Optional[torch.Tensor]) -> None:
        rows = self.locals[-1][0] if self.locals else None
        self.locals = [] if value is None and rows is None else [(rows, value)]

    @property
    def num_embeddings(self) -> int:
        return self.weights.shape[0]

    @property
    def embedding_dim(self) -> int:
        return self.weights.shape[1]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            local = self.weights[ids].detach().requires_grad_(True)
            self.locals.append((local, ids))
            return local.to(self.cast_to)
        return self.weights[ids].to(self.cast_to)

    def clear_local(self) -> None:
        """Drops the rows gathered since the last optimizer step (and their gradients)."""
        self.locals = []

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, cast_to={self.cast_to}"
