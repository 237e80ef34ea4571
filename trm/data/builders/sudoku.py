"""Sudoku builders: ``sudoku_csv`` (Sudoku-Extreme CSV) and ``sudoku_gen`` (generated).

Encoding (TRM_SPEC 10.1): token = cell value + 1 (blank -> 1, digits -> 2..N+1), PAD 0,
vocab N + 2, seq_len N*N row-major. Labels are the full solution. Each source puzzle is one
group of 1 + num_aug puzzles (the original first), one example per puzzle, identifier 0.
"""

from __future__ import annotations

import math

import numpy as np

from trm.data.builders.sources import read_puzzle_csv, resolve_source_file
from trm.data.format import BLANK_IDENTIFIER_NAME, DataError
from trm.data.sudoku import Geometry, parse_box
from trm.data.writer import SetArrays


def _set_arrays(questions: np.ndarray, answers: np.ndarray, geom: Geometry, num_aug: int,
                rng: np.random.Generator) -> SetArrays:
    """Groups of (original + num_aug augmentations), one example per puzzle."""
    n = len(questions)
    k = 1 + num_aug
    L = geom.N * geom.N
    inputs = np.empty((n * k, L), np.uint8)
    labels = np.empty((n * k, L), np.uint8)
    for i in range(n):
        inputs[i * k] = questions[i].reshape(-1) + 1
        labels[i * k] = answers[i].reshape(-1) + 1
        for a in range(1, k):
            q, s = geom.augment(rng, questions[i], answers[i])
            inputs[i * k + a] = q.reshape(-1) + 1
            labels[i * k + a] = s.reshape(-1) + 1
    return SetArrays(inputs=inputs, labels=labels,
                     puzzle_identifiers=np.zeros(n * k, np.int32),
                     puzzle_indices=np.arange(n * k + 1, dtype=np.int64),
                     group_indices=np.arange(0, n * k + 1, k, dtype=np.int64))


def _result(geom: Geometry, train: SetArrays, test: SetArrays) -> dict:
    n = geom.N
    return dict(seq_len=n * n, vocab_size=n + 2, pad_id=0, ignore_label_id=0,
                blank_identifier_id=0, identifiers=[BLANK_IDENTIFIER_NAME],
                splits={"train": {"all": train}, "test": {"all": test}},
                extra_metadata=dict(grid=dict(kind="sudoku", rows=n, cols=n,
                                              box=f"{geom.R}x{geom.C}")))


# ------------------------------------------------------------------------------- sudoku_csv


def _load_csv(path: str, geom_cache: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray, Geometry]:
    qs, ans, ratings, lines = read_puzzle_csv(path)
    length = len(qs[0])
    n = math.isqrt(length)
    box = math.isqrt(n)
    if n * n != length or box * box != n or n > 9 or n < 4:
        raise DataError(f"{path}: line {lines[0]}: question has {length} characters; expected "
                        "N*N cells with N in (4, 9) (e.g. 81 for 9x9)")
    q_ok = set(".0") | set("123456789"[:n])
    a_ok = set("123456789"[:n])
    for q, a, line in zip(qs, ans, lines):
        if len(q) != length or len(a) != length:
            raise DataError(f"{path}: line {line}: question/answer have {len(q)}/{len(a)} "
                            f"characters, expected {length}")
        if not set(q) <= q_ok:
            raise DataError(f"{path}: line {line}: unknown character(s) "
                            f"{sorted(set(q) - q_ok)} in question (allowed: '.', '0', 1..{n})")
        if not set(a) <= a_ok:
            raise DataError(f"{path}: line {line}: unknown character(s) "
                            f"{sorted(set(a) - a_ok)} in answer (allowed: 1..{n})")
    geom = geom_cache.setdefault(n, Geometry(box, box))
    q = np.frombuffer("".join(qs).encode("ascii"), np.uint8).reshape(-1, length).copy()
    q[q == ord(".")] = ord("0")
    q = (q - ord("0")).astype(np.int64)
    a = (np.frombuffer("".join(ans).encode("ascii"), np.uint8).reshape(-1, length)
         - ord("0")).astype(np.int64)
    bad = np.flatnonzero(~geom.valid_solutions_mask(a))
    if bad.size:
        raise DataError(f"{path}: line {lines[bad[0]]}: answer is not a valid {n}x{n} solution")
    bad = np.flatnonzero(((q != 0) & (q != a)).any(axis=1))
    if bad.size:
        raise DataError(f"{path}: line {lines[bad[0]]}: answer contradicts the question's givens")
    return q.reshape(-1, n, n), a.reshape(-1, n, n), np.asarray(ratings), geom


def build_csv(args: dict) -> dict:
    rng = np.random.default_rng(args["seed"])
    geoms: dict = {}
    data = {}
    for split in ("train", "test"):
        path = resolve_source_file(args["source"], f"{split}.csv")
        q, a, rating, geom = _load_csv(path, geoms)
        keep = np.ones(len(q), bool) if args["min_rating"] is None else rating >= args["min_rating"]
        idx = np.flatnonzero(keep)
        if split == "train" and args["subsample_size"] is not None:
            if args["subsample_size"] < 1:
                raise DataError(f"subsample_size must be >= 1, got {args['subsample_size']}")
            if args["subsample_size"] < len(idx):
                idx = np.sort(rng.choice(idx, args["subsample_size"], replace=False))
        if not len(idx):
            raise DataError(f"{path}: no puzzles left after filtering (min_rating "
                            f"{args['min_rating']})")
        data[split] = (q[idx], a[idx], geom)
    if data["train"][2] is not data["test"][2]:
        raise DataError(f"{args['source']}: train.csv and test.csv have different grid sizes")
    geom = data["train"][2]
    if args["num_aug"] < 0:
        raise DataError(f"num_aug must be >= 0, got {args['num_aug']}")
    train = _set_arrays(data["train"][0], data["train"][1], geom, args["num_aug"], rng)
    test = _set_arrays(data["test"][0], data["test"][1], geom, 0, rng)
    return _result(geom, train, test)


# ------------------------------------------------------------------------------- sudoku_gen


def build_gen(args: dict) -> dict:
    geom = Geometry(*parse_box(args["box"]))
    n2 = geom.N * geom.N
    blanks = args["blanks"] if args["blanks"] is not None else round(0.53 * n2)
    for name in ("num_train", "num_test"):
        if args[name] < 1:
            raise DataError(f"{name} must be >= 1, got {args[name]}")
    if args["num_aug"] < 0:
        raise DataError(f"num_aug must be >= 0, got {args['num_aug']}")
    rng = np.random.default_rng(args["seed"])
    seen: set[int] = set()  # equivalence-class invariants of every kept puzzle
    splits = {}
    budget = 1000 + 20 * (args["num_train"] + args["num_test"])
    for split, count in (("train", args["num_train"]), ("test", args["num_test"])):
        qs, ss = [], []
        while len(qs) < count:
            q, s = geom.generate(rng, blanks)
            inv = geom.invariant(q)
            if inv in seen:  # equal (or equivalent under augmentation) to a kept puzzle
                budget -= 1
                if budget < 0:
                    raise DataError(
                        f"sudoku_gen: found only {len(seen)} puzzles of box {args['box']} with "
                        f"{blanks} blanks that are distinct up to augmentation; ask for fewer "
                        "puzzles or more blanks")
                continue
            seen.add(inv)
            qs.append(q)
            ss.append(s)
        splits[split] = (np.stack(qs), np.stack(ss))
    train = _set_arrays(*splits["train"], geom, args["num_aug"], rng)
    test = _set_arrays(*splits["test"], geom, 0, rng)
    return _result(geom, train, test)


def build(args: dict) -> dict:
    return build_csv(args) if args["builder"] == "sudoku_csv" else build_gen(args)
