"""Recursion cores (registered kind ``core``): how one ACT step updates the latents.

In the paper's notation ``y`` (the answer, here ``z_H``) and ``z`` (the latent reasoning
state, here ``z_L``); ``T = H_cycles``, ``n = L_cycles``. A core is built as::

    core_cls(make_block=..., num_layers=L, H_cycles=T, L_cycles=n)

where ``make_block()`` returns a fresh block, and called as
``core(z_H, z_L, x, cos_sin) -> (z_H, z_L)``; the model reads its outputs from ``z_H``.
Gradient modes (``gradient=``):

* ``"last_cycle"`` (TRM): the first ``T-1`` cycles run without gradient, the last one with it.
* ``"one_step"`` (HRM's 1-step approximation): only the last ``z`` update and the last ``y``
  update carry gradient.
* ``"full"``: back-propagate through every cycle (memory grows with ``T·(n+1)``).
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional, Tuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from trm.models.layers import CosSin
from trm.registry import register

GRADIENT_MODES = ("last_cycle", "one_step", "full")


class ReasoningNet(nn.Module):
    """A stack of blocks applied as ``f(h, injection) = blocks(h + injection)``."""

    def __init__(self, make_block: Callable[[], nn.Module], num_layers: int,
                 activation_checkpointing: bool = False) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}.")
        self.layers = nn.ModuleList([make_block() for _ in range(num_layers)])
        self.activation_checkpointing = activation_checkpointing

    def _run(self, h: torch.Tensor, cos_sin: Optional[CosSin]) -> torch.Tensor:
        for layer in self.layers:
            h = layer(h, cos_sin)
        return h

    def forward(self, h: torch.Tensor, injection: torch.Tensor,
                cos_sin: Optional[CosSin] = None) -> torch.Tensor:
        h = h + injection
        if self.activation_checkpointing and torch.is_grad_enabled() and self.training:
            return checkpoint(self._run, h, cos_sin, use_reentrant=False)
        return self._run(h, cos_sin)


class _CoreBase(nn.Module):
    def __init__(self, H_cycles: int, L_cycles: int, gradient: str) -> None:
        super().__init__()
        if H_cycles < 1 or L_cycles < 1:
            raise ValueError(
                f"H_cycles and L_cycles must be >= 1, got {H_cycles} and {L_cycles}.")
        if gradient not in GRADIENT_MODES:
            raise ValueError(f"Unknown gradient mode {gradient!r}; use one of {GRADIENT_MODES}.")
        self.H_cycles = H_cycles
        self.L_cycles = L_cycles
        self.gradient = gradient

    def _grad_ctx(self, cycle: int, inner: int, last_inner: int):
        """Gradient context of update ``inner`` (0..last_inner) within H cycle ``cycle``."""
        if self.gradient == "full":
            return contextlib.nullcontext()
        if cycle < self.H_cycles - 1:
            return torch.no_grad()
        if self.gradient == "one_step" and inner < last_inner - 1:
            return torch.no_grad()
        return contextlib.nullcontext()

    @property
    def applications_per_step(self) -> int:
        """Network applications per ACT step (for FLOP counts)."""
        return self.H_cycles * (self.L_cycles + 1)


@register("core", "trm")
class TRMCore(_CoreBase):
    """TRM recursion: one shared network updates z (n times) then y, repeated T times."""

    def __init__(self, make_block: Callable[[], nn.Module], num_layers: int = 2,
                 H_cycles: int = 3, L_cycles: int = 6, gradient: str = "last_cycle",
                 activation_checkpointing: bool = False) -> None:
        super().__init__(H_cycles, L_cycles, gradient)
        self.net = ReasoningNet(make_block, num_layers, activation_checkpointing)

    @property
    def net_y(self) -> ReasoningNet:
        return self.net

    def forward(self, z_H: torch.Tensor, z_L: torch.Tensor, x: torch.Tensor,
                cos_sin: Optional[CosSin] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        n = self.L_cycles
        for cycle in range(self.H_cycles):
            for i in range(n):
                with self._grad_ctx(cycle, i, n):
                    z_L = self.net(z_L, z_H + x, cos_sin)
            with self._grad_ctx(cycle, n, n):
                z_H = self.net_y(z_H, z_L, cos_sin)
        return z_H, z_L


@register("core", "trm_separate")
class SeparateNetworksCore(TRMCore):
    """TRM with separate networks for the z update (``net``) and the y update (``net_h``)."""

    def __init__(self, make_block: Callable[[], nn.Module], num_layers: int = 2,
                 H_cycles: int = 3, L_cycles: int = 6, gradient: str = "last_cycle",
                 activation_checkpointing: bool = False) -> None:
        super().__init__(make_block, num_layers, H_cycles, L_cycles, gradient,
                         activation_checkpointing)
        self.net_h = ReasoningNet(make_block, num_layers, activation_checkpointing)

    @property
    def net_y(self) -> ReasoningNet:
        return self.net_h


@register("core", "trm_single_latent")
class SingleLatentCore(_CoreBase):
    """One latent only: ``z = f(z, x)`` applied ``n + 1`` times per cycle; y is z.

    Same number of network applications as TRM. The carry keeps ``z`` in both slots.
    """

    def __init__(self, make_block: Callable[[], nn.Module], num_layers: int = 2,
                 H_cycles: int = 3, L_cycles: int = 6, gradient: str = "last_cycle",
                 activation_checkpointing: bool = False) -> None:
        super().__init__(H_cycles, L_cycles, gradient)
        self.net = ReasoningNet(make_block, num_layers, activation_checkpointing)

    def forward(self, z_H: torch.Tensor, z_L: torch.Tensor, x: torch.Tensor,
                cos_sin: Optional[CosSin] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        del z_L
        z = z_H
        n = self.L_cycles
        for cycle in range(self.H_cycles):
            for i in range(n + 1):
                with self._grad_ctx(cycle, i, n):
                    z = self.net(z, x, cos_sin)
        return z, z
