"""Exponential moving average of parameters (registered kind ``ema``), TRM_SPEC.md 7.3.

The shadow covers every parameter with ``requires_grad`` (not buffers: H_init/L_init and the
puzzle table are taken from the live model when the average is used), updated after every
optimizer step as ``shadow <- (1 - rate) * param + rate * shadow``.
"""

from __future__ import annotations

import contextlib
from typing import Dict, Iterator

import torch
from torch import nn

from trm.registry import register


@register("ema", "ema")
class EMA:
    """EMA shadow of a model's trainable parameters, with state_dict / load_state_dict."""

    def __init__(self, model: nn.Module, rate: float = 0.999) -> None:
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"EMA rate must be in [0, 1), got {rate}.")
        self.rate = rate
        self.shadow: Dict[str, torch.Tensor] = {
            name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for name, p in model.named_parameters():
            if name in self.shadow:
                self.shadow[name].mul_(self.rate).add_(p.detach(), alpha=1.0 - self.rate)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Writes the averaged values into ``model``'s parameters."""
        params = dict(model.named_parameters())
        missing = set(self.shadow) - set(params)
        if missing:
            raise KeyError(f"EMA shadow has parameters the model lacks: {sorted(missing)[:5]}")
        for name, value in self.shadow.items():
            params[name].copy_(value)

    @contextlib.contextmanager
    def averaged(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily swaps the averaged weights into ``model`` (restored on exit)."""
        backup = {n: p.detach().clone() for n, p in model.named_parameters() if n in self.shadow}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if name in backup:
                        p.copy_(backup[name])

    @classmethod
    @torch.no_grad()
    def copy_state_to(cls, state: Dict[str, object], model: nn.Module) -> None:
        """Writes the averaged weights of a saved EMA ``state`` (:meth:`state_dict`, e.g. a
        checkpoint's ``"ema"`` entry) into ``model``'s parameters; shapes and names are
        checked."""
        ema = cls(model, rate=float(state.get("rate", 0.0)))
        ema.load_state_dict(state)
        ema.copy_to(model)

    def state_dict(self) -> Dict[str, object]:
        return {"rate": self.rate, "shadow": {k: v.clone() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: Dict[str, object]) -> None:
        shadow = state["shadow"]
        if set(shadow) != set(self.shadow):
            raise KeyError("EMA state does not match the model's parameters: "
                           f"missing {sorted(set(self.shadow) - set(shadow))[:5]}, "
                           f"unexpected {sorted(set(shadow) - set(self.shadow))[:5]}.")
        bad = [k for k, v in shadow.items() if v.shape != self.shadow[k].shape]
        if bad:
            raise KeyError(f"EMA state has other shapes than the model for {bad[:5]}.")
        self.rate = float(state["rate"])
        for k, v in shadow.items():
            self.shadow[k].copy_(v)
