"""Sudoku builders: ``sudoku_csv`` (Sudoku-Extreme CSV) and ``sudoku_gen`` (generated).

Encoding (TRM_SPEC 10.1): token = cell value + 1 (blank -> 1, digits -> 2..N+1), PAD 0,
vocab N + 2, seq_len N*N row-major. Labels are the full solution. Each source puzzle is one
group of 1 + num_aug puzzles (the original first), one example per puzzle, identifier 0.
"""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np

from trm import progress
from trm.data.builders.sources import (find_overlaps, read_puzzle_csv, report_overlaps,
                                       resolve_source_file)
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
    with progress.sub("augmenting" if num_aug else "encoding", n, unit="puzzles") as bar:
        for i in range(n):
            inputs[i * k] = questions[i].reshape(-1) + 1
            labels[i * k] = answers[i].reshape(-1) + 1
            for a in range(1, k):
                q, s = geom.augment(rng, questions[i], answers[i])
                inputs[i * k + a] = q.reshape(-1) + 1
                labels[i * k + a] = s.reshape(-1) + 1
            bar.update(i + 1)
    return SetArrays(inputs=inputs, labels=labels,
                     puzzle_identifiers=np.zeros(n * k, np.int32),
                     puzzle_indices=np.arange(n * k + 1, dtype=np.int64),
                     group_indices=np.arange(0, n * k + 1, k, dtype=np.int64))


def _result(geom: Geometry, train: SetArrays, test: SetArrays, overlap: dict | None = None
            ) -> dict:
    n = geom.N
    extra = dict(grid=dict(kind="sudoku", rows=n, cols=n, box=f"{geom.R}x{geom.C}"))
    if overlap is not None:
        extra["overlap"] = overlap
    return dict(seq_len=n * n, vocab_size=n + 2, pad_id=0, ignore_label_id=0,
                blank_identifier_id=0, identifiers=[BLANK_IDENTIFIER_NAME],
                splits={"train": {"all": train}, "test": {"all": test}},
                extra_metadata=extra)


# ------------------------------------------------------------------ equivalence (sudoku_csv)
# The augmentation group of square-box Sudoku (Geometry.augment): digit relabelling, transpose,
# band and row-in-band permutations, stack and column-in-stack permutations.


@functools.lru_cache(maxsize=None)
def _line_perms(n: int, r: int) -> np.ndarray:
    """Every permutation of n lines that keeps bands of r lines together: [m, n]."""
    out = []
    for bands in itertools.permutations(range(n // r)):
        for inner in itertools.product(*(itertools.permutations(range(r))
                                         for _ in range(n // r))):
            out.append([b * r + i for b, perm in zip(bands, inner) for i in perm])
    return np.asarray(out, np.int64)


def sudoku_keys(q: np.ndarray, r: int) -> list[bytes]:
    """Invariants of puzzles ``q`` [k, n, n] (0 = blank) under the augmentation group.

    Equivalent puzzles get equal keys (vectorised: about a microsecond per puzzle); equal keys
    are confirmed by :func:`sudoku_equivalent`. Each given cell is described by the given counts
    of its row, column, digit, box, band and stack; the key is the sorted list of these
    descriptions (the smaller of the puzzle's and its transpose's) and the sorted digit counts.
    """
    k, n = q.shape[0], q.shape[1]
    out: list[bytes] = []
    lines = np.arange(n) // r
    for a in range(0, k, 20000):
        x = np.asarray(q[a:a + 20000], np.int64)
        m = len(x)
        g = x != 0
        rc, cc = g.sum(2), g.sum(1)
        dc = np.stack([(x == d).sum((1, 2)) for d in range(1, n + 1)], 1)
        band, stack = rc.reshape(m, n // r, r).sum(2), cc.reshape(m, n // r, r).sum(2)
        box = g.reshape(m, n // r, r, n // r, r).sum((2, 4))
        d_f = np.take_along_axis(np.concatenate([np.zeros((m, 1), np.int64), dc], 1),
                                 x.reshape(m, -1), 1).reshape(m, n, n)
        box_f = box[:, lines][:, :, lines]
        r_f, c_f = np.broadcast_to(rc[:, :, None], x.shape), np.broadcast_to(cc[:, None, :],
                                                                           x.shape)
        b_f = np.broadcast_to(band[:, lines][:, :, None], x.shape)
        s_f = np.broadcast_to(stack[:, lines][:, None, :], x.shape)
        big = np.int64(1) << 40

        def codes(f1, f2, f3, f4):
            c = ((((f1 * 32 + f2) * 32 + d_f) * 32 + box_f) * 32 + f3) * 32 + f4
            return np.sort(np.where(g, c, big).reshape(m, -1), axis=1)

        c1, c2 = codes(r_f, c_f, b_f, s_f), codes(c_f, r_f, s_f, b_f)  # puzzle, transpose
        diff = c1 != c2
        first = diff.argmax(1)
        rows = np.arange(m)
        use2 = diff.any(1) & (c2[rows, first] < c1[rows, first])
        best = np.where(use2[:, None], c2, c1)
        key = np.concatenate([np.sort(dc, 1), best], 1)
        out.extend(row.tobytes() for row in key)
    return out


def sudoku_equivalent(a: np.ndarray, b: np.ndarray, r: int) -> bool:
    """Whether puzzle ``b`` is ``a`` after some augmentation (exact search, pruned by counts)."""
    n = a.shape[0]
    perms = _line_perms(n, r)
    gb = b != 0
    for x in (a, a.T):
        gx = x != 0
        rows = perms[(gx.sum(1)[perms] == gb.sum(1)).all(1)]
        cols = perms[(gx.sum(0)[perms] == gb.sum(0)).all(1)]
        if not len(rows) or not len(cols):
            continue
        for rp in rows:
            z = x[rp][:, cols].transpose(1, 0, 2)  # [len(cols), n, n]
            for c in np.flatnonzero(((z != 0) == gb).all((1, 2))):
                pairs = set(zip(z[c][gb].tolist(), b[gb].tolist()))
                if len(pairs) == len({p for p, _ in pairs}) == len({q for _, q in pairs}):
                    return True  # a digit bijection maps one onto the other
    return False


# ------------------------------------------------------------------------------- sudoku_csv


def _load_csv(path: str, geom_cache: dict
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, Geometry, np.ndarray]:
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
    return q.reshape(-1, n, n), a.reshape(-1, n, n), np.asarray(ratings), geom, np.asarray(lines)


def build_csv(args: dict) -> dict:
    rng = np.random.default_rng(args["seed"])
    geoms: dict = {}
    data, where = {}, {}
    for split in ("train", "test"):
        path = resolve_source_file(args["source"], f"{split}.csv")
        q, a, rating, geom, lines = _load_csv(path, geoms)
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
        where[split] = (path, lines[idx])
    if data["train"][2] is not data["test"][2]:
        raise DataError(f"{args['source']}: train.csv and test.csv have different grid sizes")
    geom = data["train"][2]
    if args["num_aug"] < 0:
        raise DataError(f"num_aug must be >= 0, got {args['num_aug']}")
    overlap = _check_overlaps(data, where, geom, args)
    train = _set_arrays(data["train"][0], data["train"][1], geom, args["num_aug"], rng)
    test = _set_arrays(data["test"][0], data["test"][1], geom, 0, rng)
    return _result(geom, train, test, overlap)


def _check_overlaps(data: dict, where: dict, geom: Geometry, args: dict) -> dict:
    """Duplicate questions per split and test questions in train, up to the augmentations
    applied (exact comparison without augmentation)."""
    qs = {split: data[split][0] for split in ("train", "test")}
    if args["num_aug"] > 0:
        keys = {s: sudoku_keys(q, geom.R) for s, q in qs.items()}
        up_to = ("up to digit relabelling, transposition and band/row/stack/column "
                 "permutations (the augmentations applied)")

        def equivalent(sa, i, sb, j):
            return sudoku_equivalent(qs[sa][i], qs[sb][j], geom.R)
    else:
        keys = {s: [np.asarray(x, np.uint8).tobytes() for x in q] for s, q in qs.items()}
        up_to, equivalent = "(identical questions; no augmentation applied)", None
    dups, leaks = find_overlaps(keys, equivalent)

    def name(split, i):
        path, lines = where[split]
        return f"{path.rsplit('/', 1)[-1]} line {int(lines[i])}"

    return report_overlaps("sudoku_csv", dups, leaks, name, up_to, args["allow_overlap"])


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
    # Each split draws from a stream of its own (seed, split), the test puzzles first, so the test
    # set depends only on (seed, box, blanks, num_test): data-size arms (num_train) are scored
    # on the same puzzles, and a smaller training set is the start of a larger one.
    streams = {split: np.random.default_rng([args["seed"], i])
               for i, split in enumerate(("train", "test", "augment"))}
    seen: set[int] = set()  # equivalence-class invariants of every kept puzzle
    splits = {}
    budget = 1000 + 20 * (args["num_train"] + args["num_test"])
    for split, count in (("test", args["num_test"]), ("train", args["num_train"])):
        rng, qs, ss = streams[split], [], []
        with progress.sub(f"generating {split} puzzles", count, unit="puzzles") as bar:
            while len(qs) < count:
                q, s = geom.generate(rng, blanks)
                inv = geom.invariant(q)
                if inv in seen:  # equal (or equivalent under augmentation) to a kept puzzle
                    budget -= 1
                    if budget < 0:
                        raise DataError(
                            f"sudoku_gen: found only {len(seen)} puzzles of box {args['box']} "
                            f"with {blanks} blanks that are distinct up to augmentation; ask "
                            "for fewer puzzles or more blanks")
                    continue
                seen.add(inv)
                qs.append(q)
                ss.append(s)
                bar.update(len(qs))
        splits[split] = (np.stack(qs), np.stack(ss))
    train = _set_arrays(*splits["train"], geom, args["num_aug"], streams["augment"])
    test = _set_arrays(*splits["test"], geom, 0, streams["augment"])
    return _result(geom, train, test)


def build(args: dict) -> dict:
    return build_csv(args) if args["builder"] == "sudoku_csv" else build_gen(args)
