"""Sequence mixers and position encodings (registered kinds ``mixer`` and ``position``).

A mixer is the first half of a post-norm TRM block: it mixes information across the
sequence and returns ``norm(x + mix(x))``. Every mixer class is built as::

    mixer_cls(hidden_size=D, seq_len=S, expansion=e, num_heads=H, rms_norm_eps=eps)

(where ``S`` includes the puzzle-embedding prefix) and called as ``mixer(x, cos_sin)``. A
mixer whose constructor also takes ``swiglu_multiple`` receives the model's (the rounding of
its SwiGLU widths, :func:`trm.models.layers.swiglu_inner_size`); others are built without it.

A position encoding is built as ``position_cls(hidden_size=D, seq_len=S, head_dim=d,
rope_theta=theta, forward_dtype=dtype)``; ``embed(x)`` adjusts the input embedding and
``cos_sin()`` returns the rotary tables (or None).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from trm.models.layers import (Attention, CastedEmbedding, CosSin, SwiGLU, add_rms_norm,
                               rotary_cos_sin, to_dtype)
from trm.registry import register


@register("mixer", "attention")
class AttentionMixer(nn.Module):
    """Multi-head self-attention over the sequence (SDPA, non-causal), post-norm."""

    def __init__(self, hidden_size: int, seq_len: int, expansion: float = 4.0,
                 num_heads: int = 8, rms_norm_eps: float = 1e-5) -> None:
        super().__init__()
        del seq_len, expansion  # attention works for any length; no MLP here
        self.rms_norm_eps = rms_norm_eps
        self.self_attn = Attention(hidden_size, num_heads)

    def forward(self, x: torch.Tensor, cos_sin: Optional[CosSin] = None) -> torch.Tensor:
        return add_rms_norm(x, self.self_attn(x, cos_sin), self.rms_norm_eps)


@register("mixer", "mlp")
class MLPMixer(nn.Module):
    """SwiGLU applied along the sequence axis (TRM-MLP, the reference's ``mlp_t``).

    The input ``[B, S, D]`` is transposed to ``[B, D, S]``, mixed and normalised over the
    *sequence* axis, then transposed back. The sequence length is therefore fixed at build
    time and position encodings are unnecessary.
    """

    def __init__(self, hidden_size: int, seq_len: int, expansion: float = 4.0,
                 num_heads: Optional[int] = None, rms_norm_eps: float = 1e-5,
                 swiglu_multiple: int = 256) -> None:
        super().__init__()
        del hidden_size, num_heads  # mixes positions, independent of the width
        self.rms_norm_eps = rms_norm_eps
        self.mlp_t = SwiGLU(seq_len, expansion, swiglu_multiple)

    def forward(self, x: torch.Tensor, cos_sin: Optional[CosSin] = None) -> torch.Tensor:
        del cos_sin
        xt = x.transpose(1, 2)
        return add_rms_norm(xt, self.mlp_t(xt), self.rms_norm_eps).transpose(1, 2)


class _Positions(nn.Module):
    def embed(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - trivial
        return x

    def cos_sin(self) -> Optional[CosSin]:
        return None


@register("position", "none")
class NoPositions(_Positions):
    """No position information (used with the MLP mixer)."""

    def __init__(self, **unused) -> None:
        super().__init__()


@register("position", "rope")
class RotaryPositions(_Positions):
    """Rotary position embedding (half-split convention) applied to queries and keys."""

    def __init__(self, seq_len: int, head_dim: int, rope_theta: float = 10000.0,
                 **unused) -> None:
        super().__init__()
        cos, sin = rotary_cos_sin(head_dim, seq_len, rope_theta)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def cos_sin(self) -> CosSin:
        return self.cos, self.sin


@register("position", "learned")
class LearnedPositions(_Positions):
    """Learned absolute positions: ``x = (x + pos) / sqrt(2)``."""

    def __init__(self, hidden_size: int, seq_len: int, forward_dtype="float32",
                 **unused) -> None:
        super().__init__()
        self.embed_pos = CastedEmbedding(seq_len, hidden_size, init_std=hidden_size ** -0.5,
                                         cast_to=to_dtype(forward_dtype))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return 0.707106781 * (x + self.embed_pos.weight.to(x.dtype))


class Block(nn.Module):
    """Post-norm TRM block: ``x = mixer(x)`` then ``x = norm(x + SwiGLU(x))``."""

    def __init__(self, mixer: nn.Module, hidden_size: int, expansion: float,
                 rms_norm_eps: float, swiglu_multiple: int = 256) -> None:
        super().__init__()
        self.mixer = mixer
        self.mlp = SwiGLU(hidden_size, expansion, swiglu_multiple)
        self.rms_norm_eps = rms_norm_eps

    def forward(self, x: torch.Tensor, cos_sin: Optional[CosSin] = None) -> torch.Tensor:
        x = self.mixer(x, cos_sin)
        return add_rms_norm(x, self.mlp(x), self.rms_norm_eps)
