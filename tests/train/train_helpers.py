"""Helpers for the training tests (a module of its own: `from conftest import` is ambiguous
when several test folders have a conftest.py)."""

TINY = [
    "HIDDEN_SIZE=32", "NUM_HEADS=2", "H_CYCLES=1", "L_CYCLES=1", "HALT_MAX_STEPS=2",
    "PUZZLE_EMB_LEN=1", "GLOBAL_BATCH_SIZE=16", "EVAL_BATCH_SIZE=16", "LOG_EVERY=5",
    "EVAL_EVERY=0", "CHECKPOINT_EVERY=0", "LR_WARMUP_STEPS=5", "FORWARD_DTYPE='float32'",
    "DEVICE='cpu'", "trm.TrainConfig.dataset_builder=None",
]


def tiny_bindings(data_dir, steps=10, extra=()):
    return TINY + [f"DATA_DIR='{data_dir}'", f"TRAIN_STEPS={steps}", *extra]
