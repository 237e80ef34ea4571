"""Converts a dataset in the reference's ``.npy`` + ``dataset.json`` layout (TRM_SPEC 9.1).

Token ids, labels, identifiers, groups and puzzles are kept exactly; ``identifiers.json`` and
``test_puzzles.json`` are copied when present.
"""

from __future__ import annotations

import io
import json
import os
import re

import numpy as np

from trm.data import fsutil
from trm.data.format import BLANK_IDENTIFIER_NAME, IDENTIFIERS_FILE, TEST_PUZZLES_FILE, DataError
from trm.data.writer import SetArrays

_SET_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_AGREE = ("seq_len", "vocab_size", "pad_id", "ignore_label_id", "blank_identifier_id",
          "num_puzzle_identifiers")


def _load_npy(path: str) -> np.ndarray:
    try:
        if fsutil.is_remote(path):
            return np.load(io.BytesIO(fsutil.read_bytes(path)), allow_pickle=False)
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except ValueError as e:
        raise DataError(f"{path}: not a valid .npy array ({e})") from None


def build(args: dict) -> dict:
    src = args["source"]
    metas, splits = {}, {}
    for split in ("train", "test"):
        path = fsutil.join(src, split, "dataset.json")
        if not fsutil.exists(path):
            continue
        try:
            meta = json.loads(fsutil.read_bytes(path))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e})") from None
        missing = [k for k in _AGREE + ("sets",) if k not in meta]
        if missing:
            raise DataError(f"{path}: missing field(s) {missing}")
        metas[split] = meta
        sets = {}
        if not isinstance(meta["sets"], list) or not meta["sets"]:
            raise DataError(f"{path}: 'sets' must be a non-empty list of set names")
        for set_name in meta["sets"]:
            # Metadata is data: a set name becomes part of a file name, so it must not name a
            # path (``../x``, ``/abs``) that leaves the source dataset.
            if not isinstance(set_name, str) or not _SET_NAME.match(set_name) or ".." in set_name:
                raise DataError(f"{path}: set name {set_name!r} is not a plain name (letters, "
                                "digits, '_', '-', '.'); the arrays must lie in the split's folder")
            arr = {k: _load_npy(fsutil.join(src, split, f"{set_name}__{k}.npy"))
                   for k in ("inputs", "labels", "puzzle_identifiers", "puzzle_indices",
                             "group_indices")}
            sets[set_name] = SetArrays(
                inputs=np.asarray(arr["inputs"]), labels=np.asarray(arr["labels"]),
                puzzle_identifiers=np.asarray(arr["puzzle_identifiers"], np.int64),
                puzzle_indices=np.asarray(arr["puzzle_indices"], np.int64),
                group_indices=np.asarray(arr["group_indices"], np.int64))
        splits[split] = sets
    if not metas:
        raise DataError(f"{src}: no train/dataset.json or test/dataset.json found")
    first_split, first = next(iter(metas.items()))
    for split, meta in metas.items():
        for k in _AGREE:
            if meta[k] != first[k]:
                raise DataError(f"{src}: {split}/dataset.json has {k}={meta[k]!r} but "
                                f"{first_split}/dataset.json has {first[k]!r}")
    num_ids = int(first["num_puzzle_identifiers"])
    ident_path = fsutil.join(src, IDENTIFIERS_FILE)
    if fsutil.exists(ident_path):
        names = json.loads(fsutil.read_bytes(ident_path))
        if len(names) < num_ids:
            names = names + [f"puzzle_{i}" for i in range(len(names), num_ids)]
        names = [BLANK_IDENTIFIER_NAME] + [str(n) for n in names[1:num_ids]]
    else:
        names = [BLANK_IDENTIFIER_NAME] + [f"puzzle_{i}" for i in range(1, num_ids)]
    extra = {}
    tp = fsutil.join(src, TEST_PUZZLES_FILE)
    if fsutil.exists(tp):
        extra[TEST_PUZZLES_FILE] = fsutil.read_bytes(tp)
    if int(first["blank_identifier_id"]) != 0:
        raise DataError(f"{src}: blank_identifier_id {first['blank_identifier_id']} != 0 is not "
                        "supported")
    return dict(seq_len=int(first["seq_len"]), vocab_size=int(first["vocab_size"]),
                pad_id=int(first["pad_id"]), ignore_label_id=first["ignore_label_id"],
                blank_identifier_id=0, identifiers=names, splits=splits, extra_files=extra,
                extra_metadata=dict(source_format="reference_npy",
                                    source=os.path.basename(str(src).rstrip("/"))))
