"""Shared helpers for the run-state tests: a tiny real training setup and deep comparison."""

from __future__ import annotations

import random
from typing import Any, Dict, Tuple

import numpy as np
import torch

from trm.run.checkpoints import capture_rng_state, restore_rng_state


def make_setup(seed: int = 0) -> Tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Dropout(0.1),
                                torch.nn.Linear(16, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    return model, opt


def train_steps(model, opt, n: int) -> None:
    """n steps drawing data from torch, numpy and python RNGs (and dropout)."""
    for _ in range(n):
        x = torch.randn(5, 8) + float(np.random.rand()) + random.random()
        loss = model(x).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def full_state(model, opt, step: int) -> Dict[str, Any]:
    return {
        "step": step,
        "model": model.state_dict(),
        "optimizers": [opt.state_dict()],
        "ema": {"rate": 0.999, "shadow": {k: v.detach().clone() * 0.5
                                          for k, v in model.named_parameters()}},
        "rng": capture_rng_state(),
        "data": {"epoch": 2, "offset": 1234, "order": np.arange(10, dtype=np.int64)[::-1].copy()},
        # Drawn from its own generator: capturing the state must not advance the global RNGs.
        "carry": {"z_H": torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(1)),
                  "halted": torch.tensor([True, False]),
                  "steps": torch.tensor([1, 3], dtype=torch.int32)},
        "config": "model.trm.hidden_size = 16\n",
        "misc": ("tuple", 1, 2.5, None),
    }


def load_full_state(model, opt, state) -> None:
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizers"][0])
    restore_rng_state(state["rng"])


def assert_same(a: Any, b: Any, path: str = "state") -> None:
    """Bitwise equality of nested states (tensor dtype, shape, values; numpy; python)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), path
        assert a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a.view(torch.uint8) if a.dtype == torch.bool else a,
                           b.view(torch.uint8) if b.dtype == torch.bool else b), path
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype, path
        np.testing.assert_array_equal(a, b, err_msg=path)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), path
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def params_equal(m1, m2) -> bool:
    s1, s2 = m1.state_dict(), m2.state_dict()
    return list(s1) == list(s2) and all(torch.equal(s1[k], s2[k]) for k in s1)
