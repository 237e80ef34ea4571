"""Shared fixtures: tiny generated datasets, built once per session with the real builders."""

import os

import pytest


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("trm_data")
    os.environ["TRM_DATA_ROOT"] = str(root)
    return root


@pytest.fixture(scope="session")
def sudoku4(data_root):
    """4x4 Sudoku, 200 training puzzles (x4 augmentations), 48 test puzzles."""
    from trm.data import ensure_dataset
    path = str(data_root / "sudoku4")
    ensure_dataset(path, "sudoku_gen", box="2x2", num_train=200, num_test=48, blanks=6,
                   num_aug=4, seed=0, num_shards=4)
    return path
