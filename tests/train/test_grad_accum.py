"""Gradient accumulation keeps ACT semantics: N micro-batches of B (each with its own carry
slot) make the same loss and the same update as one step on N*B rows."""

import functools
import json
import os

import pytest
import torch

from train_helpers import tiny_bindings
from trm.experiment import DataShape, TrainConfig, TrainingError
from trm.halting import HaltOnly
from trm.models import TRM
from trm.train import train
from trm.trainer import Trainer


def _trainer(accum):
    model = functools.partial(TRM, hidden_size=32, num_layers=1, num_heads=2, mixer="mlp",
                              positions="none", H_cycles=2, L_cycles=1, puzzle_emb_len=1,
                              halt_max_steps=3, halting=HaltOnly(exploration_prob=0.0))
    cfg = TrainConfig(data_dir="(in memory)", model=model, global_batch_size=16,
                      grad_accum_steps=accum, lr=3e-3, puzzle_emb_lr=3e-3, lr_warmup_steps=2,
                      device="cpu", forward_dtype="float32", seed=0)
    t = Trainer(cfg, None, progress=False)
    t.build(DataShape(vocab_size=6, seq_len=16, num_puzzle_identifiers=5), num_steps=10)
    return t


def _batches(n):
    g = torch.Generator().manual_seed(1)
    for _ in range(n):
        inputs = torch.randint(1, 6, (16, 16), generator=g, dtype=torch.int32)
        yield {"inputs": inputs, "labels": torch.randint(1, 6, (16, 16), generator=g,
                                                          dtype=torch.int32),
               "puzzle_identifiers": torch.randint(0, 5, (16,), generator=g, dtype=torch.int32)}


@pytest.mark.parametrize("accum", [2, 4])
def test_micro_batches_equal_one_large_batch(accum):
    whole, micro = _trainer(1), _trainer(accum)
    for batch in _batches(4):
        a = whole.train_step(batch)
        b = micro.train_step(batch)
        for key in ("lm_loss", "q_halt_loss", "accuracy", "exact_accuracy", "count", "steps"):
            torch.testing.assert_close(b[key].double(), a[key].double(), rtol=1e-5, atol=1e-5)
    for (name, p), q in zip(whole.model.named_parameters(), micro.model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(micro.model.puzzle_emb.weights, whole.model.puzzle_emb.weights,
                               rtol=1e-5, atol=1e-6)
    assert len(micro.carries) == accum and micro.carries[0].halted.shape[0] == 16 // accum


def test_accumulated_run_resumes_and_rejects_another_accumulation(sudoku4, tmp_path):
    wd = str(tmp_path / "run")
    bindings = tiny_bindings(sudoku4, steps=6, extra=["GRAD_ACCUM_STEPS=2",
                                                      "CHECKPOINT_EVERY=3"])
    train(["cpu_e1_1_baseline.gin"], tiny_bindings(sudoku4, steps=3, extra=[
        "GRAD_ACCUM_STEPS=2", "CHECKPOINT_EVERY=3"]), wd, progress=False)
    result = train(["cpu_e1_1_baseline.gin"], bindings, wd, progress=False,
                   allow_config_change=True)
    assert result["status"] == "completed" and result["step"] == 6
    assert json.load(open(os.path.join(wd, "run.json")))["resumed_at_step"] == 3
    other = str(tmp_path / "other")
    train(["cpu_e1_1_baseline.gin"], tiny_bindings(sudoku4, steps=3, extra=[
        "GRAD_ACCUM_STEPS=2", "CHECKPOINT_EVERY=3"]), other, progress=False)
    with pytest.raises(TrainingError, match="GRAD_ACCUM_STEPS"):
        train(["cpu_e1_1_baseline.gin"], tiny_bindings(sudoku4, steps=6, extra=[
            "GRAD_ACCUM_STEPS=4", "CHECKPOINT_EVERY=3"]), other, progress=False,
            allow_config_change=True)


def test_batch_not_divisible_by_accumulation_is_one_line():
    with pytest.raises(TrainingError, match="GRAD_ACCUM_STEPS=3"):
        TrainConfig(data_dir="x", global_batch_size=16, grad_accum_steps=3).validate(1)
