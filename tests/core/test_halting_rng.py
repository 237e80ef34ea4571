"""The counter-based generator of the halting exploration (trm.halting): uniform, independent
across rows, steps and streams, a pure function of its key, and used by the trainer when
trm.TrainConfig.halting_rng asks for it (on XLA by default, so a training step uploads no RNG seed)."""

import numpy as np
import torch
from scipy import stats

from trm.halting import HaltOnly, counter_bits, counter_randint, counter_uniform


def test_uniforms_pass_a_chi_square_test_and_stay_in_range():
    u = counter_uniform(torch.tensor(12345), 200_000, 0)
    assert u.dtype == torch.float32
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    hist = np.histogram(u.numpy(), bins=50, range=(0, 1))[0]
    assert stats.chisquare(hist).pvalue > 1e-4
    assert abs(float(u.mean()) - 0.5) < 0.005


def test_draws_are_independent_across_keys_rows_and_streams():
    keys = [s * 1_000_003 + 17 for s in range(4000)]
    us = torch.stack([counter_uniform(torch.tensor(k), 16, 0) for k in keys]).numpy()
    vs = torch.stack([counter_uniform(torch.tensor(k), 16, 1) for k in keys]).numpy()
    # consecutive steps of one row, neighbouring rows of one step, and the two streams
    for a, b in ((us[:-1, 3], us[1:, 3]), (us[:, 3], us[:, 4]), (us[:, 5], vs[:, 5])):
        assert abs(np.corrcoef(a, b)[0, 1]) < 0.06
    # each row, over steps, is uniform on its own
    for row in range(16):
        assert stats.kstest(us[:, row], "uniform").pvalue > 1e-4


def test_pure_function_of_its_arguments():
    a = counter_bits(torch.tensor(99), 64, 0)
    assert torch.equal(a, counter_bits(torch.tensor([99]), 64, 0))
    assert not torch.equal(a, counter_bits(torch.tensor(100), 64, 0))
    assert not torch.equal(a, counter_bits(torch.tensor(99), 64, 1))
    assert int(a.min()) >= 0 and int(a.max()) < 2 ** 32
    # keys beyond 32 bits are reduced, never overflow into an error
    counter_bits(torch.tensor(2 ** 40 + 5), 8, 0)


def test_randint_covers_its_range_evenly():
    r = counter_randint(torch.tensor(7), 70_000, 1, 2, 9)
    counts = torch.bincount(r, minlength=9)[2:].numpy()
    assert int(r.min()) == 2 and int(r.max()) == 8
    assert stats.chisquare(counts).pvalue > 1e-4


def test_policy_with_a_key_explores_at_its_probability():
    policy = HaltOnly(exploration_prob=0.25)
    n, max_steps = 20_000, 8
    q = torch.full((n,), 5.0)  # the q head wants every row to halt
    steps = torch.full((n,), 1, dtype=torch.int32)
    halted = policy(q_halt=q, q_continue=q, steps=steps, max_steps=max_steps, training=True,
                    rng_key=torch.tensor(3))
    # a row at step 1 halts unless it explores (then it must run >= 2 steps)
    assert abs(1 - float(halted.float().mean()) - 0.25) < 0.015
    again = policy(q_halt=q, q_continue=q, steps=steps, max_steps=max_steps, training=True,
                   rng_key=torch.tensor(3))
    assert torch.equal(halted, again)
    # at the last step every row halts, whatever the draws
    last = torch.full((n,), max_steps, dtype=torch.int32)
    assert bool(policy(q_halt=q, q_continue=q, steps=last, max_steps=max_steps, training=True,
                       rng_key=torch.tensor(3)).all())


def test_model_draws_from_the_key_not_from_torch_when_one_is_set():
    """With ``halting_rng_key`` set, a training ACT step leaves torch's generator untouched (so
    torch_xla has no seed to upload) and its halting depends on the key alone."""
    from test_model import batch, tiny

    model = tiny(halt_max_steps=4)
    model.train()
    b = batch(b=64)
    carry = model.initial_carry(b)
    torch.manual_seed(1)
    before = torch.get_rng_state()
    model(carry, b)
    assert not torch.equal(before, torch.get_rng_state())  # torch mode draws
    model.halting_rng_key = torch.tensor(5)
    torch.manual_seed(1)
    before = torch.get_rng_state()
    model(carry, b)
    assert torch.equal(before, torch.get_rng_state())  # counter mode does not


def test_a_policy_written_without_rng_key_still_works_with_a_key_set():
    """Plugins' policies that predate ``rng_key`` get no key (they draw from torch)."""
    from test_model import batch, tiny

    class Legacy(HaltOnly):
        def __call__(self, *, q_halt, q_continue, steps, max_steps, training):
            return steps >= 2

    model = tiny(halt_max_steps=4, halting=Legacy())
    model.train()
    model.halting_rng_key = torch.tensor(1)
    b = batch(b=8)
    carry, _ = model(model.initial_carry(b), b)
    carry, _ = model(carry, b)
    assert bool(carry.halted.all())
