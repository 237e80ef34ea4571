import functools

import pytest
import torch

from trm.halting import HaltContinue, HaltOnly, NoHalting
from trm.losses import ACTLoss
from trm.models import (TRM, AttentionMixer, MLPMixer, SeparateNetworksCore, SingleLatentCore,
                        TRMCore)


def tiny(**kw):
    args = dict(vocab_size=7, seq_len=6, num_puzzle_identifiers=3, hidden_size=16, num_layers=1,
                num_heads=2, H_cycles=2, L_cycles=2, halt_max_steps=3, puzzle_emb_len=1,
                forward_dtype="float32")
    args.update(kw)
    torch.manual_seed(0)
    return TRM(**args)


def batch(b=4, seq=6, vocab=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randint(1, vocab, (b, seq), generator=g, dtype=torch.int32)
    return {"inputs": inputs, "labels": inputs.clone(),
            "puzzle_identifiers": torch.randint(0, 3, (b,), generator=g, dtype=torch.int32)}


def test_param_count_sudoku_mlp_matches_reference():
    model = TRM(vocab_size=11, seq_len=81, num_puzzle_identifiers=1, hidden_size=512,
                num_layers=2, expansion=4, num_heads=8, mixer=MLPMixer, positions="none",
                H_cycles=3, L_cycles=6, puzzle_emb_len=16)
    assert model.num_params() == 5_028_866


def test_param_count_arc_attention_matches_reference():
    model = TRM(vocab_size=12, seq_len=900, num_puzzle_identifiers=10, hidden_size=512,
                num_layers=2, expansion=4, num_heads=8, mixer="attention", positions="rope",
                H_cycles=3, L_cycles=4, puzzle_emb_len=16)
    assert model.num_params() == 6_829_058


def test_other_reference_param_counts():
    assert TRM(vocab_size=11, seq_len=81, mixer="attention").num_params() == 6_828_034
    assert TRM(vocab_size=11, seq_len=81, hidden_size=128, mixer="mlp",
               positions="none").num_params() == 694_274


def test_q_head_starts_at_minus_five_and_puzzle_table_zero():
    m = tiny()
    assert torch.equal(m.q_head.weight, torch.zeros_like(m.q_head.weight))
    assert torch.equal(m.q_head.bias, torch.full((2,), -5.0))
    assert torch.equal(m.puzzle_emb.weights, torch.zeros(3, 16))


def test_first_call_loads_every_row_and_halted_rows_are_replaced():
    m = tiny(halting=NoHalting())
    m.train()
    b0, b1 = batch(seed=0), batch(seed=1)
    carry = m.initial_carry(b0)
    carry, _ = m(carry, b0)
    assert torch.equal(carry.current_data["inputs"], b0["inputs"])
    assert torch.equal(carry.steps, torch.ones(4, dtype=torch.int32))
    # mark rows 1 and 3 halted: only they take new data, and restart from step 0
    carry.halted = torch.tensor([False, True, False, True])
    carry, _ = m(carry, b1)
    expect = b0["inputs"].clone()
    expect[[1, 3]] = b1["inputs"][[1, 3]]
    assert torch.equal(carry.current_data["inputs"], expect)
    assert carry.steps.tolist() == [2, 1, 2, 1]


def test_halt_at_max_steps_and_eval_depth():
    m = tiny(halt_max_steps=3, eval_halt_max_steps=5)
    b = batch()
    m.eval()
    with torch.no_grad():
        carry = m.initial_carry(b)
        n = 0
        while True:
            carry, _ = m(carry, b)
            n += 1
            if carry.halted.all():
                break
    assert n == 5
    m.train()
    carry = m.initial_carry(b)
    for _ in range(3):
        carry, _ = m(carry, b)
    assert carry.halted.all()  # the q head starts at -5: only max steps halt


def test_halt_only_policy_uses_q_halt_and_exploration():
    policy = HaltOnly(exploration_prob=0.0)
    steps = torch.tensor([1, 1, 3], dtype=torch.int32)
    halted = policy(q_halt=torch.tensor([1.0, -1.0, -1.0]), q_continue=torch.zeros(3),
                    steps=steps, max_steps=3, training=True)
    assert halted.tolist() == [True, False, True]
    # eval: only the maximum
    halted = policy(q_halt=torch.tensor([1.0, -1.0, -1.0]), q_continue=torch.zeros(3),
                    steps=steps, max_steps=3, training=False)
    assert halted.tolist() == [False, False, True]
    # full exploration forces at least 2 steps
    torch.manual_seed(0)
    halted = HaltOnly(exploration_prob=1.0)(q_halt=torch.tensor([5.0]), q_continue=torch.zeros(1),
                                            steps=torch.tensor([1], dtype=torch.int32),
                                            max_steps=16, training=True)
    assert halted.tolist() == [False]


def test_halt_continue_bootstrapped_target_trains():
    m = tiny(halting=HaltContinue(exploration_prob=0.0))
    with torch.no_grad():  # away from the init's fixed point target == sigmoid(q_continue)
        m.q_head.weight.normal_(0, 0.3)
        m.q_head.bias.copy_(torch.tensor([-1.0, 1.0]))
    m.train()
    b = batch()
    carry = m.initial_carry(b)
    carry, out = m(carry, b)
    assert "target_q_continue" in out
    t = out["target_q_continue"]
    assert t.shape == (4,) and not t.requires_grad and ((t > 0) & (t < 1)).all()
    loss, metrics, _ = ACTLoss()(carry, out)
    assert "q_continue_loss" in metrics
    loss.backward()
    assert m.q_head.weight.grad is not None
    assert m.q_head.weight.grad[1].abs().sum() > 0  # q_continue row receives gradient


def test_halt_continue_matches_manual_second_forward():
    m = tiny(halting=HaltContinue(exploration_prob=0.0))
    m.train()
    b = batch()
    carry = m.initial_carry(b)
    new, out = m(carry, b)
    with torch.no_grad():
        _, _, _, qh, qc = m.inner_step(new.z_H, new.z_L, new.current_data)
    expect = torch.sigmoid(torch.where(new.steps >= m.halt_max_steps, qh, torch.maximum(qh, qc)))
    assert torch.allclose(out["target_q_continue"], expect)


@pytest.mark.parametrize("core", [TRMCore, SeparateNetworksCore, SingleLatentCore])
@pytest.mark.parametrize("gradient", ["last_cycle", "one_step", "full"])
def test_cores_forward_backward(core, gradient):
    m = tiny(core=core, gradient=gradient)
    m.train()
    b = batch()
    carry = m.initial_carry(b)
    carry, out = m(carry, b)
    loss, _, _ = ACTLoss()(carry, out)
    loss.backward()
    assert all(p.grad is not None for p in m.parameters())
    assert m.puzzle_emb.local_weights.grad is not None


def test_separate_networks_have_twice_the_blocks():
    a = tiny(core=TRMCore).num_params()
    b = tiny(core=SeparateNetworksCore).num_params()
    block = sum(p.numel() for p in tiny().core.net.parameters())
    assert b - a == block


def test_last_cycle_gradient_does_not_reach_earlier_cycles():
    """With T=2, n=1 the first cycle is gradient-free: the embedding gets gradient only once."""
    m = tiny(H_cycles=2, L_cycles=1, gradient="last_cycle")
    calls = []
    orig = m.core.net.forward

    def spy(h, inj, cos_sin=None):
        calls.append(torch.is_grad_enabled())
        return orig(h, inj, cos_sin)

    m.core.net.forward = spy
    m.train()
    b = batch()
    m(m.initial_carry(b), b)
    assert calls == [False, False, True, True]
    calls.clear()
    m.core.gradient = "one_step"
    m.core.L_cycles = 3
    m(m.initial_carry(b), b)
    assert calls == [False] * 4 + [False, False, True, True]


def test_activation_checkpointing_gives_same_gradients():
    grads = []
    for ckpt in (False, True):
        m = tiny(activation_checkpointing=ckpt, mixer="attention", positions="rope")
        m.train()
        b = batch()
        carry = m.initial_carry(b)
        carry, out = m(carry, b)
        loss, _, _ = ACTLoss()(carry, out)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters()})
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6), n


@pytest.mark.parametrize("positions", ["rope", "learned", "none"])
def test_positions(positions):
    m = tiny(mixer="attention", positions=positions)
    b = batch()
    carry, out = m(m.initial_carry(b), b)
    assert out["logits"].shape == (4, 6, 7)
    if positions == "learned":
        assert m.positions.embed_pos.weight.shape == (7, 16)


def test_no_puzzle_embedding_means_no_prefix():
    m = tiny(puzzle_emb_ndim=0, puzzle_emb_len=16)
    assert m.puzzle_emb is None and m.full_seq_len == 6
    b = batch()
    carry, out = m(m.initial_carry(b), b)
    assert carry.z_H.shape == (4, 6, 16)


def test_puzzle_emb_ndim_spans_several_positions():
    m = tiny(puzzle_emb_ndim=40, puzzle_emb_len=0)
    assert m.puzzle_emb_len == 3


def test_bfloat16_forward_keeps_fp32_master_weights():
    m = tiny(forward_dtype="bfloat16")
    b = batch()
    carry, out = m(m.initial_carry(b), b)
    assert carry.z_H.dtype == torch.bfloat16 and out["logits"].dtype == torch.bfloat16
    assert out["q_halt_logits"].dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in m.parameters())
    assert m.H_init.dtype == torch.bfloat16


def test_plain_python_mixer_partial():
    m = tiny(mixer=functools.partial(AttentionMixer, num_heads=4), positions="none")
    b = batch()
    m(m.initial_carry(b), b)


def test_swiglu_multiple_sets_both_mlp_widths():
    m = tiny(mixer="mlp", positions="none", swiglu_multiple=8)
    block = m.core.net.layers[0]
    # hidden 16 -> round(42.7) = 43 -> 48; the mixer's 7 positions -> round(18.7) = 19 -> 24
    assert block.mlp.down_proj.weight.shape == (16, 48)
    assert block.mixer.mlp_t.down_proj.weight.shape == (7, 24)
    assert m.num_params() < tiny(mixer="mlp", positions="none").num_params()
    b = batch()
    m(m.initial_carry(b), b)


def test_mixer_without_swiglu_multiple_still_builds():
    """A plugin mixer written against the older constructor protocol gets no new keyword."""
    class OldMixer(torch.nn.Module):
        def __init__(self, hidden_size, seq_len, expansion, num_heads, rms_norm_eps):
            super().__init__()
            self.lin = torch.nn.Linear(hidden_size, hidden_size)

        def forward(self, x, cos_sin=None):
            return self.lin(x)

    m = tiny(mixer=OldMixer, positions="none", swiglu_multiple=8)
    assert m.core.net.layers[0].mlp.down_proj.weight.shape == (16, 48)
    with pytest.raises(ValueError, match="SWIGLU_MULTIPLE"):
        tiny(swiglu_multiple=0)


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="divisible"):
        tiny(hidden_size=15)
    with pytest.raises(ValueError, match="H_cycles"):
        tiny(H_cycles=0)
    with pytest.raises(ValueError, match="gradient mode"):
        tiny(gradient="sometimes")
    with pytest.raises(KeyError, match="Registered mixer names: attention, mlp"):
        tiny(mixer="conv")


def test_carry_state_dict_round_trip():
    m = tiny()
    b = batch()
    carry, _ = m(m.initial_carry(b), b)
    from trm.models import Carry
    again = Carry.from_state_dict(carry.state_dict())
    for k, v in carry.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])


def test_flops_per_example_is_positive_and_scales_with_cycles():
    a = tiny(H_cycles=2, L_cycles=2).flops_per_example()
    b = tiny(H_cycles=4, L_cycles=2).flops_per_example()
    assert 0 < a < b
