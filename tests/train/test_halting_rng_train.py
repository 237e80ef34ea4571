"""trm.TrainConfig.halting_rng='counter' in the real trainer (the generator: tests/core/test_halting_rng.py)."""

import json
import os

import pytest


def _losses(workdir):
    from test_train import read_scalars
    return [v for _, v in read_scalars(workdir)["train/lm_loss"]]


@pytest.mark.slow
def test_trainer_counter_mode_is_deterministic_and_resumes(sudoku4, tmp_path):
    """halting_rng='counter' on CPU: two runs are bitwise equal, a run resumed from a
    checkpoint equals the uninterrupted one, and the setting is validated."""
    from train_helpers import tiny_bindings
    from trm.train import train

    extra = ["trm.TrainConfig.halting_rng='counter'", "HALT_EXPLORATION_PROB=0.5",
             "HALT_MAX_STEPS=4", "LOG_EVERY=2"]
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    train(["cpu_e1_1_baseline.gin"], tiny_bindings(sudoku4, steps=12, extra=extra), a,
          progress=False)
    train(["cpu_e1_1_baseline.gin"], tiny_bindings(sudoku4, steps=6, extra=extra + [
        "CHECKPOINT_EVERY=6"]), b, progress=False)
    train(["cpu_e1_1_baseline.gin"], tiny_bindings(sudoku4, steps=12, extra=extra + [
        "CHECKPOINT_EVERY=6"]), b, progress=False, allow_config_change=True)
    la, lb = _losses(a), _losses(b)
    assert la == lb, (la, lb)
    assert json.load(open(os.path.join(a, "run.json")))["status"] == "completed"

    from trm.experiment import TrainConfig, TrainingError
    with pytest.raises(TrainingError, match="halting_rng='xorshift'"):
        TrainConfig(data_dir="x", halting_rng="xorshift").validate(1)
