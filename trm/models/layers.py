"""Primitive layers of TRM (TRM_SPEC.md section 2).

Everything here is plain PyTorch and independent of gin. Master weights are float32; the
"casted" layers compute in the dtype of their input (or a fixed ``cast_to`` dtype), which is
how the bfloat16 forward of the reference works.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

CosSin = Tuple[torch.Tensor, torch.Tensor]

# Constants of the JAX-style truncated normal on [-2, 2] (TRM_SPEC.md 2.1).
_TRUNC_LOWER, _TRUNC_UPPER = -2.0, 2.0


def trunc_normal_init_(tensor: torch.Tensor, std: float = 1.0,
                       lower: float = _TRUNC_LOWER, upper: float = _TRUNC_UPPER) -> torch.Tensor:
    """Fills ``tensor`` in place with a truncated normal whose actual std equals ``std``.

    Unlike ``torch.nn.init.trunc_normal_``, the standard deviation of the *truncated*
    distribution is ``std`` (as in JAX's ``truncated_normal`` initialisers). The draw is one
    ``uniform_`` in the tensor's own dtype followed by ``erfinv_``, so the RNG consumption
    (and hence bit-identical initialisation from a seed) matches the reference.
    ``std == 0`` fills zeros and consumes no random numbers.
    """
    with torch.no_grad():
        if std == 0:
            return tensor.zero_()
        sqrt2 = math.sqrt(2.0)
        a = math.erf(lower / sqrt2)
        b = math.erf(upper / sqrt2)
        z = (b - a) / 2
        c = (2 * math.pi) ** -0.5
        pdf_u = c * math.exp(-0.5 * upper ** 2)
        pdf_l = c * math.exp(-0.5 * lower ** 2)
        comp_std = std / math.sqrt(1 - (upper * pdf_u - lower * pdf_l) / z
                                   - ((pdf_u - pdf_l) / z) ** 2)
        tensor.uniform_(a, b)
        tensor.erfinv_()
        tensor.mul_(sqrt2 * comp_std)
        tensor.clip_(lower * comp_std, upper * comp_std)
    return tensor


def to_dtype(dtype) -> torch.dtype:
    """Accepts a torch.dtype or its name ("bfloat16", "float32", ...)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype):
        return getattr(torch, dtype)
    raise ValueError(f"Unknown dtype {dtype!r}; use e.g. 'float32' or 'bfloat16'.")


class CastedLinear(nn.Module):
    """Linear layer with fp32 master weights, computed in the input's dtype.

    Weight ``[out, in]`` initialised with the truncated normal of std ``1/sqrt(in)`` (LeCun);
    optional zero-initialised bias.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(
            trunc_normal_init_(torch.empty(out_features, in_features), std=in_features ** -0.5))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), bias)


class CastedEmbedding(nn.Module):
    """Embedding table with fp32 master weights; lookups are cast to ``cast_to``."""

    def __init__(self, num_embeddings: int, embedding_dim: int, init_std: float,
                 cast_to: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.cast_to = to_dtype(cast_to)
        self.weight = nn.Parameter(
            trunc_normal_init_(torch.empty(num_embeddings, embedding_dim), std=init_std))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight.to(self.cast_to))


def rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Weightless RMSNorm over the last axis, computed in float32, returned in x's dtype."""
    dtype = x.dtype
    x = x.to(torch.float32)
    x = x * torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)
    return x.to(dtype)


def add_rms_norm(x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """``rms_norm(x + y)`` for a fresh sublayer output ``y`` (post-norm residual).

    Without autograd (the gradient-free recursion cycles, evaluation) the normalisation runs in
    place in the sum (float32 only), saving a full-size temporary with bitwise the same result;
    otherwise it is ``rms_norm(x + y, eps)``.
    """
    if (torch.is_grad_enabled() and (x.requires_grad or y.requires_grad)) or \
            y.dtype != torch.float32 or x.dtype != torch.float32 or y.shape != x.shape:
        return rms_norm(x + y, eps)
    # ``x + y`` out of place: its memory layout (which follows the inputs', e.g. a transposed
    # view in the MLP mixer) sets the reduction order of the mean, hence the rounding; keeping
    # it makes the result bitwise equal to rms_norm(x + y) and to the reference.
    out = x + y
    return out.mul_(torch.rsqrt(out.square().mean(-1, keepdim=True).add_(eps)))


def swiglu_inner_size(hidden_size: int, expansion: float, multiple: int = 256) -> int:
    """The SwiGLU width: round(expansion * hidden * 2/3) up to a multiple of ``multiple``.

    256 is the reference's rule (Python's ``round``, banker's rounding, as there: 512*4 -> 1536,
    128*4 -> 512). A smaller multiple saves work at small widths, where rounding up to 256
    inflates the layer (hidden 64: 171 -> 256; a 37-position MLP mixer: 99 -> 256).
    """
    inter = round(expansion * hidden_size * 2 / 3)
    return -(inter // -multiple) * multiple


class SwiGLU(nn.Module):
    """Gated MLP: ``down(silu(gate) * up)`` with a fused ``gate_up_proj`` (gate first); the
    inner width is :func:`swiglu_inner_size` (rounded up to a multiple of ``multiple``)."""

    def __init__(self, hidden_size: int, expansion: float, multiple: int = 256) -> None:
        super().__init__()
        inter = swiglu_inner_size(hidden_size, expansion, multiple)
        self.gate_up_proj = CastedLinear(hidden_size, 2 * inter, bias=False)
        self.down_proj = CastedLinear(inter, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu":
            # On the CPU, two products with the two row blocks of the fused weight: gate and up
            # come out contiguous. The halves of one fused output are strided views, on which
            # CPU elementwise kernels (silu, its backward, mul) run 1.5-3x slower, and whose
            # backward concatenates the two gradients. The same products up to summation order
            # (rounding); the training step is 5-10% faster (docs/BENCHMARKS.md).
            # XLA and CUDA keep the single fused product.
            weight = self.gate_up_proj.weight.to(x.dtype)
            inter = weight.shape[0] // 2
            x = x.contiguous()   # one copy of a transposed input, not one per product
            gate, up = F.linear(x, weight[:inter]), F.linear(x, weight[inter:])
        else:
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        if torch.is_grad_enabled() and (x.requires_grad or gate.requires_grad):
            return self.down_proj(F.silu(gate) * up)
        # Without autograd: in place in the (fresh) gate_up output.
        return self.down_proj(F.silu(gate, inplace=True).mul_(up))


def rotary_cos_sin(head_dim: int, max_positions: int, base: float = 10000.0) -> CosSin:
    """cos/sin tables ``[max_positions, head_dim]`` in float32 (half-split RoPE)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    t = torch.arange(max_positions, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor,
                 sin: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Applies RoPE to ``q, k [B, S, H, d]`` in float32 and casts back to their dtype."""
    dtype = q.dtype
    q = q.to(cos.dtype)
    k = k.to(cos.dtype)
    cos = cos.unsqueeze(-2)
    sin = sin.unsqueeze(-2)
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    return q.to(dtype), k.to(dtype)


class Attention(nn.Module):
    """Non-causal multi-head self-attention (SDPA) with a fused ``qkv_proj``.

    Optional RoPE from ``cos_sin``. No padding mask, as in the reference.
    """

    def __init__(self, hidden_size: int, num_heads: int, head_dim: Optional[int] = None) -> None:
        super().__init__()
        if head_dim is None:
            if hidden_size % num_heads:
                raise ValueError(
                    f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}.")
            head_dim = hidden_size // num_heads
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.qkv_proj = CastedLinear(hidden_size, 3 * num_heads * head_dim, bias=False)
        self.o_proj = CastedLinear(num_heads * head_dim, hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos_sin: Optional[CosSin] = None) -> torch.Tensor:
        b, s, _ = x.shape
        qkv = self.qkv_proj(x).view(b, s, 3 * self.num_heads, self.head_dim)
        q, k, v = qkv.split(self.num_heads, dim=2)
        if cos_sin is not None:
            cos, sin = cos_sin
            q, k = apply_rotary(q, k, cos[:s], sin[:s])
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if q.device.type == "cpu" and q.dtype == torch.bfloat16:
            # CPU SDPA kernels are far slower in bf16 than in fp32 at TRM's small head sizes
            # (measured 17 vs 2.9 ms fwd+bwd at [64, 4, 37, 16]): attend in fp32 there.
            out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(),
                                                 is_causal=False).to(q.dtype)
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=False)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, self.num_heads * self.head_dim))
