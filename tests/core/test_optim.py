import math

import pytest
import torch

from trm.models import PuzzleEmbedding
from trm.optim import EMA, AdamATan2, SignSGD, constant_with_warmup, cosine_with_warmup


def test_adam_atan2_matches_formula_over_steps():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(10))
    ref = p.detach().clone()
    m = torch.zeros(10)
    v = torch.zeros(10)
    opt = AdamATan2([p], lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    for t in range(1, 6):
        g = torch.randn(10)
        p.grad = g.clone()
        opt.step()
        ref = ref * (1 - 1e-2 * 0.1)
        m = m + 0.1 * (g - m)
        v = v + 0.05 * (g * g - v)
        ref = ref - 1e-2 / (1 - 0.9 ** t) * torch.atan2(m, v.sqrt() / math.sqrt(1 - 0.95 ** t))
        assert torch.allclose(p.detach(), ref, atol=1e-6)


def test_adam_atan2_rejects_closure_and_bad_args():
    p = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError):
        AdamATan2([p], lr=-1)
    with pytest.raises(ValueError):
        AdamATan2([p], betas=(1.0, 0.5))
    with pytest.raises(ValueError, match="closure"):
        AdamATan2([p]).step(lambda: 0)


def test_adam_atan2_state_dict_round_trip_continues_identically():
    torch.manual_seed(0)
    grads = [torch.randn(4) for _ in range(4)]
    a = torch.nn.Parameter(torch.ones(4))
    opt_a = AdamATan2([a], lr=1e-2)
    for g in grads:
        a.grad = g.clone()
        opt_a.step()
    b = torch.nn.Parameter(torch.ones(4))
    opt_b = AdamATan2([b], lr=1e-2)
    for g in grads[:2]:
        b.grad = g.clone()
        opt_b.step()
    state = opt_b.state_dict()
    c = torch.nn.Parameter(b.detach().clone())
    opt_c = AdamATan2([c], lr=1e-2)
    opt_c.load_state_dict(state)
    for g in grads[2:]:
        c.grad = g.clone()
        opt_c.step()
    assert torch.equal(a, c)


def test_sign_sgd_sums_duplicate_ids_and_decays_only_present_rows():
    emb = PuzzleEmbedding(4, 3, init_std=1.0)
    torch.manual_seed(0)
    before = emb.weights.clone()
    emb.train()
    ids = torch.tensor([1, 2, 1], dtype=torch.int32)
    with torch.enable_grad():
        out = emb(ids)
        weights = torch.tensor([[1.0, -1.0, 0.0], [2.0, 2.0, 2.0], [-3.0, 2.0, 0.0]])
        (out * weights).sum().backward()
    opt = SignSGD(emb, lr=0.1, weight_decay=0.5)
    opt.step()
    opt.zero_grad()
    after = emb.weights
    assert torch.equal(after[0], before[0]) and torch.equal(after[3], before[3])
    expect1 = before[1] * (1 - 0.05) - 0.1 * torch.sign(torch.tensor([-2.0, 1.0, 0.0]))
    expect2 = before[2] * (1 - 0.05) - 0.1 * torch.ones(3)
    assert torch.allclose(after[1], expect1) and torch.allclose(after[2], expect2)
    assert emb.local_weights is None


def test_sign_sgd_without_gradient_is_a_no_op():
    emb = PuzzleEmbedding(2, 2, init_std=1.0)
    before = emb.weights.clone()
    SignSGD(emb, lr=1.0).step()
    assert torch.equal(before, emb.weights)


def test_schedule_warmup_then_cosine_to_min_ratio():
    kw = dict(base_lr=1.0, warmup_steps=10, total_steps=110, min_ratio=0.1)
    assert cosine_with_warmup(0, **kw) == 0.0
    assert cosine_with_warmup(1, **kw) == pytest.approx(0.1)
    assert cosine_with_warmup(10, **kw) == pytest.approx(1.0)
    assert cosine_with_warmup(60, **kw) == pytest.approx(0.1 + 0.9 * 0.5)
    assert cosine_with_warmup(110, **kw) == pytest.approx(0.1)
    assert cosine_with_warmup(500, **kw) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 4.9)))
    # the reference's shipped min_ratio 1.0: warm-up then constant
    assert cosine_with_warmup(50, base_lr=2.0, warmup_steps=10, total_steps=100,
                              min_ratio=1.0) == 2.0
    assert constant_with_warmup(5, base_lr=2.0, warmup_steps=10) == 1.0


def test_ema_update_copy_and_state_dict():
    model = torch.nn.Linear(2, 1)
    ema = EMA(model, rate=0.5)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(2.0)
    ema.update(model)
    for n, v in ema.shadow.items():
        assert torch.allclose(v, start[n] + 1.0)
    with ema.averaged(model):
        assert torch.allclose(model.weight, start["weight"] + 1.0)
    assert torch.allclose(model.weight, start["weight"] + 2.0)
    other = EMA(model, rate=0.9)
    other.load_state_dict(ema.state_dict())
    assert other.rate == 0.5 and torch.equal(other.shadow["bias"], ema.shadow["bias"])
    with pytest.raises(KeyError):
        EMA(torch.nn.Linear(3, 3)).load_state_dict(ema.state_dict())


def test_adam_atan2_foreach_equals_the_per_parameter_loop_bitwise():
    from trm.optim import AdamATan2
    torch.manual_seed(0)
    ps1 = [torch.randn(5, 3, requires_grad=True), torch.randn(7, requires_grad=True),
           torch.randn(2, 2, 2, requires_grad=True)]
    ps2 = [p.detach().clone().requires_grad_(True) for p in ps1]
    loop = AdamATan2(ps1, lr=1e-2, weight_decay=0.5, foreach=False)
    multi = AdamATan2(ps2, lr=1e-2, weight_decay=0.5, foreach=True)
    for i in range(6):
        grads = [torch.randn_like(p) for p in ps1]
        for p, g in zip(ps1, grads):
            p.grad = g.clone()
        for j, (p, g) in enumerate(zip(ps2, grads)):
            p.grad = None if (i == 3 and j == 1) else g.clone()  # a param without grad
        if i == 3:
            ps1[1].grad = None
        loop.step()
        multi.step()
    assert all(torch.equal(a, b) for a, b in zip(ps1, ps2))
    for a, b in zip(ps1, ps2):
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(loop.state[a][key], multi.state[b][key])
    # state dicts are interchangeable
    again = AdamATan2([p.detach().clone().requires_grad_(True) for p in ps1], foreach=True)
    again.load_state_dict(loop.state_dict())
