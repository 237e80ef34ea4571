"""trm.train_state: the typed training state keeps the checkpoint format byte for byte."""

import io

import pytest
import torch

from trm.errors import TrainingError
from trm.run.checkpoints import CheckpointError
from trm.train_state import TrainState, check_train_state, process_state

# The keys of state.pt, in the order the trainer has always written them (docs/RUN_STATE.md).
KEYS = ["step", "total_steps", "model", "optimizers", "ema", "data", "per_process",
        "process_count", "config", "best", "trm_version"]


def _saved_dict():
    """A state as written before TrainState existed: a plain dict in the file's key order."""
    torch.manual_seed(0)
    weights = {"w": torch.randn(3, 2), "b": torch.zeros(2)}
    return {"step": 7, "total_steps": 10, "model": weights,
            "optimizers": [{"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}],
            "ema": {"shadow": {k: v.clone() for k, v in weights.items()}, "rate": 0.999},
            "data": {"epoch": 0, "index": 7, "step": 7},
            "per_process": [{"carry": None, "rng": {"torch": torch.get_rng_state()}}],
            "process_count": 1, "config": "LR = 0.1\n", "best": None, "trm_version": "0.1"}


def _bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_round_trip_writes_the_same_bytes():
    saved = _saved_dict()
    state = TrainState.from_checkpoint(saved)
    assert list(state.to_checkpoint()) == KEYS
    assert _bytes(state.to_checkpoint()) == _bytes(saved)


def test_an_older_checkpoint_without_the_later_keys_loads_with_defaults():
    old = {k: v for k, v in _saved_dict().items()
           if k not in ("total_steps", "process_count", "config", "best", "trm_version")}
    check_train_state(old)
    state = TrainState.from_checkpoint(old)
    assert (state.step, state.total_steps, state.process_count, state.config, state.best) == (
        7, None, 1, "", None)


def test_check_rejects_what_trm_never_commits():
    bad = _saved_dict()
    bad["model"]["w"][0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="non-finite weights"):
        check_train_state(bad)
    with pytest.raises(CheckpointError, match="no data position"):
        check_train_state({**_saved_dict(), "data": None})


def _carry(value: float):
    from trm.models import Carry
    return Carry(torch.full((2, 3, 4), value), torch.zeros(2, 3, 4),
                 torch.zeros(2, dtype=torch.int32), torch.zeros(2, dtype=torch.bool),
                 {"inputs": torch.ones(2, 3, dtype=torch.int32)})


def test_carry_slots_are_saved_and_restored_as_before():
    """One slot is stored unwrapped (as before gradient accumulation), several as a list; a
    resume with another slot count is one line."""
    cpu = torch.device("cpu")
    one = process_state([_carry(1.0)], cpu)
    assert isinstance(one["carry"], dict) and set(one["rng"]) >= {"python", "numpy", "torch"}
    two = process_state([_carry(1.0), _carry(2.0)], cpu)
    assert [c["z_H"][0, 0, 0].item() for c in two["carry"]] == [1.0, 2.0]
    state = TrainState.from_checkpoint({**_saved_dict(), "per_process": [two]})
    restored = state.restore_process(0, cpu, slots=2)
    assert [c.z_H[0, 0, 0].item() for c in restored] == [1.0, 2.0]
    with pytest.raises(TrainingError, match="GRAD_ACCUM_STEPS=1"):
        state.restore_process(0, cpu, slots=1)
    assert process_state(None, cpu)["carry"] is None
