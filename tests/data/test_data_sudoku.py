"""Sudoku: solver/generator, augmentation validity, train/test separation, CSV importer."""

from __future__ import annotations

import itertools
import os

import numpy as np
import pytest

from trm.data import DataError, EvalStream, build_dataset, load_metadata
from trm.data.sudoku import Geometry


def _decode(tokens, n):
    return (np.asarray(tokens).reshape(n, n) - 1).astype(np.int64)


@pytest.mark.parametrize("box,blanks", [((2, 2), 10), ((2, 3), 20), ((3, 3), 45)])
def test_generated_puzzles_have_unique_solutions(box, blanks):
    g = Geometry(*box)
    rng = np.random.default_rng(0)
    for _ in range(5):
        q, s = g.generate(rng, blanks)
        assert (q == 0).sum() == blanks
        assert g.is_valid_solution(s)
        assert ((q == 0) | (q == s)).all()
        count, sol = g.count_solutions(q, limit=3)
        assert count == 1 and np.array_equal(np.reshape(sol, s.shape), s)


def test_solver_counts_multiple_solutions_and_rejects_contradictions():
    g = Geometry(2, 2)
    assert g.count_solutions(np.zeros(16, int), limit=5)[0] == 5
    bad = np.zeros(16, int)
    bad[0] = bad[1] = 1  # same digit twice in a row
    assert g.count_solutions(bad)[0] == 0
    assert g.solve(bad) is None


def test_augmentation_preserves_validity_and_invariant():
    for box in ((2, 2), (2, 3), (3, 3)):
        g = Geometry(*box)
        rng = np.random.default_rng(1)
        q, s = g.generate(rng, g.N * g.N // 2)
        for _ in range(20):
            qa, sa = g.augment(rng, q, s)
            assert g.is_valid_solution(sa)
            assert ((qa == 0) | (qa == sa)).all()
            assert np.array_equal(g.solve(qa), sa)
            assert g.invariant(qa) == g.invariant(q)


def _canonical_4x4(q: np.ndarray) -> bytes:
    """Exact canonical form of a 4x4 puzzle under the full augmentation group (brute force)."""
    best = None
    row_perms = [np.concatenate([b * 2 + np.array(r0), b2 * 2 + np.array(r1)])
                 for (b, b2) in ((0, 1), (1, 0)) for r0 in ((0, 1), (1, 0))
                 for r1 in ((0, 1), (1, 0))]
    for t in (False, True):
        base = q.T if t else q
        for rp, cp in itertools.product(row_perms, row_perms):
            x = base[rp][:, cp].reshape(-1)
            relabel, nxt, out = {0: 0}, 1, []
            for v in x:  # digits renamed in order of first appearance
                if v not in relabel:
                    relabel[v] = nxt
                    nxt += 1
                out.append(relabel[v])
            key = bytes(out)
            best = key if best is None or key < best else best
    return best


def test_sudoku_gen_train_and_test_never_overlap_up_to_augmentation(tmp_path):
    # 4x4 with few givens: equivalent puzzles are common, so the check must really work.
    out = build_dataset("sudoku_gen", str(tmp_path / "s4"), box="2x2", num_train=40,
                        num_test=20, blanks=9, num_aug=3, seed=0, num_shards=2)
    canon = {}
    for split in ("train", "test"):
        rows = [b["inputs"][b["mask"]].numpy() for _, b, _ in EvalStream(out, 16, split=split)]
        canon[split] = {_canonical_4x4(_decode(x, 4)) for x in np.concatenate(rows)}
    assert len(canon["test"]) == 20
    assert len(canon["train"]) == 40  # the augmented copies fall into their original's class
    assert not canon["train"] & canon["test"]


def test_sudoku_gen_test_set_does_not_depend_on_the_training_size():
    """Data-size arms must be scored on the same puzzles (issue #24): the test split depends on
    (seed, box, blanks, num_test) only, and a smaller training set starts a larger one."""
    from trm.data.builders.sudoku import build_gen

    def build(num_train, num_aug=0):
        out = build_gen(dict(box="2x3", num_train=num_train, num_test=12, blanks=None,
                             num_aug=num_aug, seed=3))
        return out["splits"]["train"]["all"], out["splits"]["test"]["all"]

    small_train, small_test = build(20)
    large_train, large_test = build(60)
    np.testing.assert_array_equal(small_test.inputs, large_test.inputs)
    np.testing.assert_array_equal(small_test.labels, large_test.labels)
    np.testing.assert_array_equal(small_train.inputs, large_train.inputs[:20])
    # augmented copies too: the first puzzles get the same augmentations at every size
    aug_small, _ = build(20, num_aug=2)
    aug_large, _ = build(40, num_aug=2)
    np.testing.assert_array_equal(aug_small.inputs, aug_large.inputs[:60])
    other_seed = build_gen(dict(box="2x3", num_train=20, num_test=12, blanks=None, num_aug=0,
                                seed=4))["splits"]["test"]["all"]
    assert not np.array_equal(other_seed.inputs, small_test.inputs)


def test_sudoku_gen_is_deterministic_and_validated(tmp_path):
    a = build_dataset("sudoku_gen", str(tmp_path / "a"), box="2x3", num_train=10, num_test=5,
                      num_aug=2, seed=7, num_shards=2)
    b = build_dataset("sudoku_gen", str(tmp_path / "b"), box="2x3", num_train=10, num_test=5,
                      num_aug=2, seed=7, num_shards=2)
    sha = [[s.info.sha256 for s in load_metadata(p, "train").shards] for p in (a, b)]
    assert sha[0] == sha[1]
    meta = load_metadata(a)
    assert (meta.seq_len, meta.vocab_size, meta.total_groups, meta.total_puzzles) == \
        (36, 8, 10, 30)
    assert meta.raw[0]["builder"]["args"]["blanks"] is None  # default recorded as given
    with pytest.raises(DataError, match="box"):
        build_dataset("sudoku_gen", str(tmp_path / "c"), box="3by3", num_train=1, num_test=1)
    with pytest.raises(DataError, match="unknown argument"):
        build_dataset("sudoku_gen", str(tmp_path / "c"), box="2x2", num_train=1, num_test=1,
                      blank=3)
    with pytest.raises(DataError, match="distinct up to augmentation"):
        build_dataset("sudoku_gen", str(tmp_path / "c"), box="2x2", num_train=50, num_test=50,
                      blanks=1)
    assert not os.path.exists(tmp_path / "c" / "metadata.json")


# ------------------------------------------------------------------------------ sudoku_csv


def _write_csv(path, rows):
    with open(path, "w") as f:
        f.write("source,question,answer,rating\n")
        for q, a, r in rows:
            f.write(f"gen,{q},{a},{r}\n")


def _rows(n, seed):
    g = Geometry(3, 3)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        q, s = g.generate(rng, 40 + i % 5)
        rows.append(("".join("." if v == 0 else str(v) for v in q.reshape(-1)),
                     "".join(str(v) for v in s.reshape(-1)), i % 5))
    return rows


@pytest.fixture(scope="module")
def sudoku_csv_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sudoku_csv")
    _write_csv(d / "train.csv", _rows(12, 0))
    _write_csv(d / "test.csv", _rows(6, 1))
    return d


def test_sudoku_csv_augmented_boards_are_valid_and_round_trip(sudoku_csv_dir, tmp_path):
    out = build_dataset("sudoku_csv", str(tmp_path / "ds"), source=str(sudoku_csv_dir),
                        subsample_size=8, min_rating=1, num_aug=5, seed=0, num_shards=3)
    meta = load_metadata(out)
    assert (meta.seq_len, meta.vocab_size, meta.total_groups, meta.total_puzzles) == \
        (81, 11, 8, 48)
    g = Geometry(3, 3)
    by_group = {}
    for _, b, _ in EvalStream(out, 16, split="train", with_indices=True):
        m = b["mask"]
        for x, y, gi in zip(b["inputs"][m], b["labels"][m], b["group_index"][m]):
            q, s = _decode(x, 9), _decode(y, 9)
            assert g.is_valid_solution(s)
            assert ((q == 0) | (q == s)).all()  # givens agree with the solution
            assert np.array_equal(g.solve(q), s)
            by_group.setdefault(int(gi), []).append(q)
    assert len(by_group) == 8 and all(len(v) == 6 for v in by_group.values())
    # The test split is the (rating-filtered) CSV, unaugmented; example_index = CSV order.
    test_rows = [r for r in _rows(6, 1) if r[2] >= 1]
    got = {int(i): x for _, b, _ in EvalStream(out, 16, split="test", with_indices=True)
           for x, i in zip(b["inputs"][b["mask"]], b["example_index"][b["mask"]])}
    assert sorted(got) == list(range(len(test_rows)))
    for x, (q, _, _) in zip((got[i] for i in range(len(got))), test_rows):
        assert "".join("." if v == 0 else str(v) for v in _decode(x, 9).reshape(-1)) == q


@pytest.mark.parametrize("mutate,message", [
    (lambda r: (r[0][:-1], r[1], r[2]), "characters"),
    (lambda r: (r[0][:-1] + "x", r[1], r[2]), "unknown character"),
    (lambda r: (r[0], r[1][1:] + r[1][0], r[2]), "not a valid 9x9 solution"),
    (lambda r: ("".join("1" if i == r[0].index(next(c for c in r[0] if c != ".")) and c != "1"
                        else c for i, c in enumerate(r[0])) if r[0][0] != "1" else "2" + r[0][1:],
                r[1], r[2]), "contradicts"),
    (lambda r: (r[0], r[1], "hard"), "rating"),
])
def test_sudoku_csv_bad_rows_name_file_and_line(tmp_path, mutate, message):
    rows = _rows(4, 2)
    rows[2] = mutate(rows[2])
    _write_csv(tmp_path / "train.csv", rows)
    _write_csv(tmp_path / "test.csv", _rows(2, 3))
    with pytest.raises(DataError, match=message) as e:
        build_dataset("sudoku_csv", str(tmp_path / "ds"), source=str(tmp_path))
    assert "train.csv: line 4" in str(e.value)
    assert not os.path.exists(tmp_path / "ds" / "metadata.json")


def test_sudoku_csv_missing_inputs(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        build_dataset("sudoku_csv", str(tmp_path / "ds"), source=str(tmp_path / "nope"))
    _write_csv(tmp_path / "train.csv", _rows(2, 0))
    with pytest.raises(DataError, match="test.csv: file not found"):
        build_dataset("sudoku_csv", str(tmp_path / "ds"), source=str(tmp_path))
    (tmp_path / "test.csv").write_text("source,quest,answer\n")
    with pytest.raises(DataError, match="line 1: header"):
        build_dataset("sudoku_csv", str(tmp_path / "ds"), source=str(tmp_path))
    _write_csv(tmp_path / "test.csv", _rows(2, 1))
    with pytest.raises(DataError, match="no puzzles left"):
        build_dataset("sudoku_csv", str(tmp_path / "ds"), source=str(tmp_path), min_rating=99)


def test_sudoku_csv_from_an_http_url_prefix(sudoku_csv_dir, tmp_path):
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(sudoku_csv_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        out = build_dataset("sudoku_csv", str(tmp_path / "ds"), source=url, num_shards=2)
        local = build_dataset("sudoku_csv", str(tmp_path / "local"), source=str(sudoku_csv_dir),
                              num_shards=2)
        assert [s.info.sha256 for s in load_metadata(out).shards] == \
            [s.info.sha256 for s in load_metadata(local).shards]
        with pytest.raises(DataError, match="not found"):
            build_dataset("sudoku_csv", str(tmp_path / "x"), source=url + "/missing")
    finally:
        server.shutdown()
        server.server_close()
