import math

import pytest
import torch

from trm.models.layers import (Attention, CastedEmbedding, CastedLinear, SwiGLU, apply_rotary,
                               rms_norm, rotary_cos_sin, swiglu_inner_size, to_dtype,
                               trunc_normal_init_)


def test_trunc_normal_has_requested_std_and_bounds():
    torch.manual_seed(0)
    x = trunc_normal_init_(torch.empty(200_000), std=0.5)
    assert abs(x.std().item() - 0.5) < 2e-3
    assert x.abs().max().item() <= 2 * 0.5 * 1.1368472343385565 + 1e-6
    assert abs(x.mean().item()) < 5e-3


def test_trunc_normal_zero_std_consumes_no_rng():
    torch.manual_seed(1)
    trunc_normal_init_(torch.empty(10), std=0)
    a = torch.rand(3)
    torch.manual_seed(1)
    b = torch.rand(3)
    assert torch.equal(a, b)


def test_trunc_normal_draws_in_tensor_dtype():
    torch.manual_seed(0)
    x = trunc_normal_init_(torch.empty(8, dtype=torch.bfloat16), std=1.0)
    torch.manual_seed(0)
    u = torch.empty(8, dtype=torch.bfloat16).uniform_(math.erf(-2 / math.sqrt(2)),
                                                       math.erf(2 / math.sqrt(2)))
    expected = u.erfinv_().mul_(math.sqrt(2) * 1.1368472343385565)
    assert torch.equal(x, expected.clip_(-2 * 1.1368472343385565, 2 * 1.1368472343385565))


@pytest.mark.parametrize("hidden,expansion,inner", [(512, 4, 1536), (128, 4, 512), (97, 4, 512),
                                                    (18, 4, 256), (1024, 4, 2816)])
def test_swiglu_inner_size_rounding(hidden, expansion, inner):
    assert swiglu_inner_size(hidden, expansion) == inner


@pytest.mark.parametrize("hidden,multiple,inner", [(64, 64, 192), (37, 64, 128), (64, 256, 256),
                                                   (128, 1, 341), (82, 64, 256)])
def test_swiglu_inner_size_other_multiples(hidden, multiple, inner):
    assert swiglu_inner_size(hidden, 4, multiple) == inner
    assert SwiGLU(hidden, 4, multiple).down_proj.weight.shape == (hidden, inner)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("transposed", [False, True])
def test_swiglu_cpu_split_products_equal_the_fused_product(dtype, transposed):
    """On the CPU gate and up are two products with the fused weight's row blocks: the output and
    every gradient equal those of the fused product split in halves (the XLA/CUDA path) up to
    the rounding of a different summation order (the input gradient sums two products)."""
    torch.manual_seed(0)
    mlp = SwiGLU(24, 4).to(dtype)
    x = torch.randn(3, 24, 5, dtype=dtype)
    x = (x.transpose(1, 2) if transposed else x.reshape(3, 5, 24)).requires_grad_()

    def fused(inp):
        gate, up = mlp.gate_up_proj(inp).chunk(2, dim=-1)
        return mlp.down_proj(torch.nn.functional.silu(gate) * up)

    dy = torch.randn(3, 5, 24, dtype=dtype)
    out = mlp(x)
    grads = torch.autograd.grad(out, [x, *mlp.parameters()], dy)
    expected = fused(x)
    expected_grads = torch.autograd.grad(expected, [x, *mlp.parameters()], dy)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out, expected, **tol)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, **tol)
    with torch.no_grad():  # the in-place path
        torch.testing.assert_close(mlp(x), expected, **tol)


def test_casted_linear_computes_in_input_dtype_with_fp32_master():
    lin = CastedLinear(16, 8, bias=True)
    assert lin.weight.dtype == torch.float32
    y = lin(torch.randn(2, 16, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16
    assert abs(lin.weight.std().item() - 16 ** -0.5) < 0.05
    assert torch.equal(lin.bias, torch.zeros(8))


def test_casted_embedding_casts():
    emb = CastedEmbedding(5, 4, init_std=1.0, cast_to=torch.bfloat16)
    assert emb(torch.tensor([0, 4])).dtype == torch.bfloat16
    assert emb.weight.dtype == torch.float32


def test_rms_norm_in_fp32_without_weight():
    x = torch.randn(3, 7, dtype=torch.bfloat16) * 10
    y = rms_norm(x, 1e-5)
    assert y.dtype == torch.bfloat16
    xf = x.float()
    ref = xf / torch.sqrt(xf.square().mean(-1, keepdim=True) + 1e-5)
    assert torch.allclose(y.float(), ref, atol=1e-2)


def test_rope_half_split_rotates_pairs():
    cos, sin = rotary_cos_sin(4, 3, 10000.0)
    assert cos.shape == (3, 4) and torch.equal(cos[0], torch.ones(4))
    q = torch.tensor([[[[1.0, 0.0, 0.0, 0.0]]]]).expand(1, 3, 1, 4)
    q2, _ = apply_rotary(q, q, cos, sin)
    # position p rotates component 0 into component 2 (half split) by angle p * inv_freq[0]
    for p in range(3):
        assert torch.allclose(q2[0, p, 0, 0], torch.cos(torch.tensor(float(p))))
        assert torch.allclose(q2[0, p, 0, 2], torch.sin(torch.tensor(float(p))))


def test_attention_matches_manual_softmax():
    torch.manual_seed(0)
    att = Attention(8, 2)
    x = torch.randn(2, 5, 8)
    out = att(x)
    qkv = att.qkv_proj(x).view(2, 5, 6, 4)
    q, k, v = (t.transpose(1, 2) for t in qkv.split(2, dim=2))
    w = torch.softmax(q @ k.transpose(-1, -2) / 2.0, -1)
    manual = att.o_proj((w @ v).transpose(1, 2).reshape(2, 5, 8))
    assert torch.allclose(out, manual, atol=1e-5)


def test_swiglu_gate_is_first_half():
    torch.manual_seed(0)
    mlp = SwiGLU(6, 4)
    x = torch.randn(3, 6)
    h = mlp.gate_up_proj(x)
    gate, up = h[:, :256], h[:, 256:]
    assert torch.allclose(mlp(x), mlp.down_proj(torch.nn.functional.silu(gate) * up))


def test_to_dtype_rejects_unknown():
    assert to_dtype("bfloat16") is torch.bfloat16
    with pytest.raises(ValueError, match="Unknown dtype"):
        to_dtype("float33")


def test_add_rms_norm_in_place_path_is_bitwise_equal():
    from trm.models.layers import add_rms_norm
    torch.manual_seed(0)
    x = torch.randn(3, 18, 8).transpose(1, 2)  # a strided view, as in the MLP mixer
    y = torch.randn(3, 8, 18)
    expected = rms_norm(x + y, 1e-5)
    with torch.no_grad():
        out = add_rms_norm(x, y.clone(), 1e-5)
    assert torch.equal(out, expected)
    xg = x.clone().requires_grad_()
    assert torch.equal(add_rms_norm(xg, y, 1e-5), expected)  # autograd path: out of place
    assert out.data_ptr() != y.data_ptr()
