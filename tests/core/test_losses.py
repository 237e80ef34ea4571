import torch

from trm.losses import ACTLoss, log_stablemax, softmax_cross_entropy, stablemax_cross_entropy
from trm.models import Carry


def reference_stablemax_logprobs(x):
    """The reference's direct formula in float64."""
    x = x.to(torch.float64)
    s = torch.where(x < 0, 1 / (1 - x + 1e-30), x + 1)
    return torch.log(s / s.sum(-1, keepdim=True))


def test_stablemax_matches_direct_formula_in_fp64():
    x = torch.randn(5, 9, 11) * 4
    assert torch.allclose(log_stablemax(x.double()), reference_stablemax_logprobs(x), atol=1e-12)


def test_stablemax_fp32_path_is_close_and_finite_for_huge_logits():
    x = torch.randn(4, 7, 11) * 3
    labels = torch.randint(0, 11, (4, 7))
    l64 = stablemax_cross_entropy(x, labels, compute_dtype="float64")
    l32 = stablemax_cross_entropy(x, labels, compute_dtype="float32")
    assert l32.dtype == torch.float32 and l64.dtype == torch.float64
    assert torch.allclose(l32.double(), l64, rtol=1e-5, atol=1e-6)
    big = torch.tensor([[[1e30, -1e30, 0.0]]])
    out = stablemax_cross_entropy(big, torch.tensor([[1]]), compute_dtype="float32")
    assert torch.isfinite(out).all()


def test_ignored_positions_contribute_zero():
    x = torch.randn(2, 3, 5)
    labels = torch.tensor([[1, -100, 2], [-100, -100, -100]])
    for fn in (stablemax_cross_entropy, softmax_cross_entropy):
        out = fn(x, labels)
        assert out[0, 1] == 0 and (out[1] == 0).all() and out[0, 0] > 0


def test_softmax_cross_entropy_matches_torch():
    x = torch.randn(2, 3, 5)
    labels = torch.tensor([[1, 0, 2], [4, 3, 1]])
    ref = torch.nn.functional.cross_entropy(x.reshape(-1, 5), labels.reshape(-1), reduction="none")
    assert torch.allclose(softmax_cross_entropy(x, labels).reshape(-1), ref)


def _carry(labels, halted, steps, mask=None):
    b, L = labels.shape
    data = {"inputs": torch.zeros_like(labels), "labels": labels,
            "puzzle_identifiers": torch.zeros(b, dtype=torch.int32)}
    if mask is not None:
        data["mask"] = mask
    return Carry(torch.zeros(b, 1, 1), torch.zeros(b, 1, 1), steps, halted, data)


def test_act_loss_metrics_follow_the_spec():
    # row 0: halted, all correct; row 1: halted, half correct; row 2: not halted;
    # row 3: halted but all ignored (not valid, counts as "correct" for the q target)
    labels = torch.tensor([[1, 2], [1, 2], [1, 2], [-100, -100]])
    logits = torch.full((4, 2, 3), -5.0)
    logits[0, 0, 1] = logits[0, 1, 2] = 5
    logits[1, 0, 1] = logits[1, 1, 0] = 5
    logits[2, 0, 1] = logits[2, 1, 2] = 5
    q_halt = torch.tensor([1.0, 1.0, -1.0, 0.0])
    carry = _carry(labels, torch.tensor([True, True, False, True]),
                   torch.tensor([2, 3, 1, 4], dtype=torch.int32))
    out = {"logits": logits, "q_halt_logits": q_halt, "q_continue_logits": torch.zeros(4)}
    loss, m, preds = ACTLoss()(carry, out)
    assert m["count"] == 2
    assert torch.isclose(m["accuracy"], torch.tensor(1.5))
    assert m["exact_accuracy"] == 1
    # q_halt >= 0 predicts correct: row 0 right (correct), row 1 wrong (q says correct)
    assert m["q_halt_accuracy"] == 1
    assert m["steps"] == 5
    ce = stablemax_cross_entropy(logits, labels)
    lm = (ce / torch.tensor([[2.0], [2.0], [2.0], [1.0]]).double()).sum()
    assert torch.isclose(m["lm_loss"], lm)
    targets = torch.tensor([1.0, 0.0, 1.0, 1.0])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(q_halt, targets, reduction="sum")
    assert torch.isclose(m["q_halt_loss"], bce)
    assert torch.isclose(loss, lm + 0.5 * bce)
    assert preds.shape == (4, 2)


def test_act_loss_mask_drops_padding_rows():
    labels = torch.tensor([[1, 2], [-100, -100]])
    carry = _carry(labels, torch.tensor([True, True]), torch.tensor([1, 1], dtype=torch.int32),
                   mask=torch.tensor([True, False]))
    out = {"logits": torch.zeros(2, 2, 3), "q_halt_logits": torch.zeros(2),
           "q_continue_logits": torch.zeros(2)}
    loss, m, _ = ACTLoss()(carry, out)
    single = _carry(labels[:1], torch.tensor([True]), torch.tensor([1], dtype=torch.int32))
    loss1, m1, _ = ACTLoss()(single, {k: v[:1] for k, v in out.items()})
    assert torch.isclose(loss, loss1) and m["count"] == 1
    assert torch.isclose(m["q_halt_loss"], m1["q_halt_loss"])
