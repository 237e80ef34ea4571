"""Faults and bad input in the data layer (docs/DATA.md, "Faults and bad input"): metadata that
leaves its folder, records that disagree with their metadata, dangerous output folders,
duplicates and test-in-train leakage, CSV line numbers. Real builders, real TFRecords."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from trm.data import DataError, EvalStream, TrainStream, build_dataset, load_metadata
from trm.data import format as fmt
from trm.data.builders import maze
from trm.data.format import DataWarning
from trm.data.sudoku import Geometry

SMALL = dict(box="2x2", num_train=8, num_test=4, blanks=8, num_aug=1, num_shards=2)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


def _edit_meta(path, fn):
    meta_path = os.path.join(path, "metadata.json")
    meta = json.load(open(meta_path))
    fn(meta)
    open(meta_path, "w").write(json.dumps(meta))


def _one_line(e):
    assert "\n" not in str(e.value), str(e.value)
    return str(e.value)


# ------------------------------------------------------------------ metadata paths are data


@pytest.mark.parametrize("field,value", [
    ("data_dir", "../victim"), ("data_dir", "/etc"), ("data_dir", "gs://other-bucket/x"),
    ("data_dir", "data-x/.."), ("shard", "../../victim/f.tfrecord"), ("shard", "/abs.tfrecord"),
    ("index", "train/../../x.npz"), ("set", "../x"),
])
def test_metadata_paths_outside_the_dataset_are_rejected(sudoku6, tmp_path, field, value):
    ds = _copy(sudoku6, tmp_path / "ds")

    def edit(m):
        sh = m["splits"]["train"]["shards"][0]
        if field == "data_dir":
            m["data_dir"] = value
        elif field == "shard":
            sh["file"] = value
        elif field == "index":
            sh["index"] = value
        else:
            m["splits"]["train"]["sets"] = [value]
    _edit_meta(ds, edit)
    with pytest.raises(DataError, match="metadata.json: field ") as e:
        load_metadata(ds)
    msg = _one_line(e)
    assert "inside the dataset folder" in msg or "is not one of the split's sets" in msg


def test_symlink_escapes_are_rejected(sudoku6, tmp_path):
    ds = _copy(sudoku6, tmp_path / "ds")
    data_dir = json.load(open(os.path.join(ds, "metadata.json")))["data_dir"]
    outside = tmp_path / "outside"
    shutil.move(os.path.join(ds, data_dir), outside)
    os.symlink(outside, os.path.join(ds, data_dir))
    with pytest.raises(DataError, match="field data_dir leads to .* outside the dataset folder"):
        load_metadata(ds)
    # a shard file that is a symlink out of the folder
    os.unlink(os.path.join(ds, data_dir))
    shutil.move(outside, os.path.join(ds, data_dir))
    shard = os.path.join(ds, data_dir, "train", os.listdir(os.path.join(ds, data_dir, "train"))[0])
    shutil.move(shard, tmp_path / "elsewhere")
    os.symlink(tmp_path / "elsewhere", shard)
    with pytest.raises(DataError, match=r"shards\[\d+\]\.(file|index) leads to"):
        load_metadata(ds)


def test_overwrite_never_deletes_outside_the_output_dir(tmp_path):
    out = str(tmp_path / "ds")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("keep me")
    build_dataset("sudoku_gen", out, **SMALL)
    before = sorted(os.listdir(out))
    for bad in ("../victim", str(victim), "data-abc/../../victim"):
        _edit_meta(out, lambda m: m.update(data_dir=bad))
        r = subprocess.run([sys.executable, "-m", "trm.data.build", "sudoku_gen",
                            f"--output_dir={out}", "--overwrite", "--box=2x2", "--num_train=9",
                            "--num_test=4", "--blanks=8", "--num_shards=2"],
                           capture_output=True, text=True, env=dict(os.environ,
                                                                    PYTHONPATH=os.getcwd()))
        assert r.returncode == 2, r.stderr
        err = r.stderr.strip()
        assert err.count("\n") == 0 and "field data_dir" in err and "nothing was deleted" in err
        assert (victim / "precious.txt").read_text() == "keep me"
        assert sorted(os.listdir(out)) == before  # nothing written, nothing removed
    # a data_dir that is a symlink to a folder outside: refused, the target survives
    _edit_meta(out, lambda m: m.update(data_dir="data-link"))
    os.symlink(victim, os.path.join(out, "data-link"))
    with pytest.raises(DataError, match="is a symlink"):
        build_dataset("sudoku_gen", out, overwrite=True, **dict(SMALL, num_train=9))
    assert (victim / "precious.txt").exists()


def test_dangerous_output_dirs_are_refused(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="filesystem root or the home folder"):
        build_dataset("sudoku_gen", "/", **SMALL)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(DataError, match="filesystem root or the home folder"):
        build_dataset("sudoku_gen", "~", **SMALL)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty and holds no trm dataset .*'notes.txt'"):
        build_dataset("sudoku_gen", str(busy), **SMALL)
    assert os.listdir(busy) == ["notes.txt"]
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DataError, match="is a file"):
        build_dataset("sudoku_gen", str(tmp_path / "afile"), **SMALL)
    # leftovers of an interrupted build are ours: building there is fine
    ok = tmp_path / "ok"
    (ok / "data-0123456789ab").mkdir(parents=True)
    build_dataset("sudoku_gen", str(ok), **SMALL)
    assert load_metadata(str(ok)).total_groups == 8


def test_dangerous_gcs_output_dirs_are_refused(gcs_bucket):
    with pytest.raises(DataError, match="bucket root"):
        build_dataset("sudoku_gen", gcs_bucket, **SMALL)
    with pytest.raises(DataError, match="bucket root"):
        build_dataset("sudoku_gen", gcs_bucket + "/", **SMALL)


def test_gcs_metadata_naming_another_bucket_is_rejected(gcs_bucket, sudoku6):
    from trm.run.storage import write_bytes

    remote = f"{gcs_bucket}/crafted"
    meta = json.load(open(os.path.join(sudoku6, "metadata.json")))
    meta["data_dir"] = "gs://another-bucket/data"
    write_bytes(f"{remote}/metadata.json", json.dumps(meta).encode())
    with pytest.raises(DataError, match="field data_dir .* inside the dataset folder"):
        load_metadata(remote)
    with pytest.raises(DataError, match="field data_dir .*nothing was deleted"):
        build_dataset("sudoku_gen", remote, overwrite=True, **SMALL)


# --------------------------------------------------------- records that disagree with metadata


def test_seq_len_in_metadata_differs_from_records(sudoku6, tmp_path):
    ds = _copy(sudoku6, tmp_path / "ds")
    _edit_meta(ds, lambda m: m.update(seq_len=81))  # the records hold 36 tokens
    for make in (lambda: next(TrainStream(ds, 8)),
                 lambda: list(EvalStream(ds, 8))):
        with pytest.raises(DataError) as e:
            make()
        msg = _one_line(e)
        assert msg.startswith(ds + ": shard ") and ".tfrecord" in msg
        assert "field 'inputs' holds 36 tokens" in msg and "seq_len 81" in msg
        assert "python -m trm.data.build sudoku_gen" in msg and "--overwrite" in msg


def test_tokens_and_identifiers_out_of_range(sudoku6, tmp_path):
    ds = _copy(sudoku6, tmp_path / "ds")
    _edit_meta(ds, lambda m: m.update(vocab_size=4))  # 6x6 Sudoku tokens go up to 7
    with pytest.raises(DataError, match=r"field 'inputs' holds token \d outside \[0, "
                                        r"vocab_size = 4\)") as e:
        next(TrainStream(ds, 8))
    _one_line(e)
    # the per-batch host check (catches records past the first/last one of a shard)
    from trm.data.pipeline import check_batch

    meta = load_metadata(sudoku6)
    batch = dict(inputs=np.ones((4, 36), np.int32), labels=np.full((4, 36), -100, np.int32),
                 puzzle_identifiers=np.zeros(4, np.int32), _shard=np.array([0, 0, 1, 1]),
                 dataset=np.zeros(4, np.int32), example_index=np.arange(4))
    check_batch(meta, batch)  # fine
    batch["inputs"][2, 5] = meta.vocab_size
    with pytest.raises(DataError, match=rf"shard {meta.shards[1].info.file} example 2: field "
                                        r"'inputs' holds 8, outside \[0, vocab_size = 8\)"):
        check_batch(meta, batch)
    batch["inputs"][2, 5] = 1
    batch["labels"][1, 0] = -3
    with pytest.raises(DataError, match="field 'labels' holds -3"):
        check_batch(meta, batch)
    batch["labels"][1, 0] = -100
    batch["puzzle_identifiers"][3] = 1
    with pytest.raises(DataError, match=r"'puzzle_identifier' holds 1, outside \[0, "
                                        r"num_puzzle_identifiers = 1\)"):
        check_batch(meta, batch)


def test_identifier_count_in_metadata_too_small(arc_small, tmp_path):
    ds = _copy(arc_small, tmp_path / "ds")
    meta_path = os.path.join(ds, "metadata.json")
    m = json.load(open(meta_path))
    ident = os.path.join(ds, m["data_dir"], "identifiers.json")
    names = json.load(open(ident))[:3]
    data = json.dumps(names).encode()
    open(ident, "wb").write(data)
    m["files"]["identifiers.json"] = dict(num_bytes=len(data), sha256=fmt.sha256_bytes(data))
    m["num_puzzle_identifiers"] = 3
    open(meta_path, "w").write(json.dumps(m))
    with pytest.raises(DataError, match=r"puzzle_identifier \d+ is outside \[0, "
                                        r"num_puzzle_identifiers = 3\)") as e:
        next(TrainStream(ds, 8))
    assert "python -m trm.data.build arc" in _one_line(e)


def test_record_count_and_totals_must_match(sudoku6, tmp_path):
    ds = _copy(sudoku6, tmp_path / "ds")
    _edit_meta(ds, lambda m: m["splits"]["test"].update(total_examples=999))
    with pytest.raises(DataError, match=r"field splits.test.total_examples = 999 but its shards "
                                        r"hold 24") as e:
        load_metadata(ds, "test")
    _one_line(e)
    ds2 = _copy(sudoku6, tmp_path / "ds2")
    _edit_meta(ds2, lambda m: m.update(seq_len="81"))
    with pytest.raises(DataError, match="field seq_len must be an integer"):
        load_metadata(ds2)


def test_example_decoder_matches_the_encoder():
    data = fmt.encode_example(b"\x01\x02", b"\x03\x04", 7, 300, 2, -1)
    ex = fmt.decode_example(data)
    assert ex == {"inputs": [b"\x01\x02"], "labels": [b"\x03\x04"], "puzzle_identifier": [7],
                  "group_index": [300], "puzzle_index": [2], "example_index": [-1]}
    with pytest.raises(ValueError):
        fmt.decode_example(data[:-3])


# ------------------------------------------------------------- CSV line numbers, duplicates


def _q(x):
    return "".join("." if v == 0 else str(v) for v in np.asarray(x).reshape(-1))


def _sudoku_rows(n, seed, box=(2, 2), blanks=8):
    g = Geometry(*box)
    rng = np.random.default_rng(seed)
    return [(_q(q), _q(s)) for q, s in (g.generate(rng, blanks) for _ in range(n))]


def _write(path, rows, header="source,question,answer,rating"):
    with open(path, "w") as f:
        f.write(header + "\n")
        for q, a in rows:
            f.write(f"gen,{q},{a},1\n")


def test_csv_errors_name_the_first_line_of_a_row(tmp_path):
    rows = _sudoku_rows(6, 0)
    _write(tmp_path / "test.csv", rows[4:])
    lines = ["source,question,answer,rating", "", f"gen,{rows[0][0]},{rows[0][1]},1",
             f'"multi\nline source",{rows[1][0]},{rows[1][1]},1',  # lines 4-5
             f'"x\ny","{rows[2][0][:-1]}\n",{rows[2][1]},1']  # lines 6-8: bad question
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"train.csv: line 6: ") as e:
        build_dataset("sudoku_csv", str(tmp_path / "ds"), source=str(tmp_path))
    _one_line(e)
    lines[4] = 'gen,"unterminated'
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"train.csv: line 6: malformed CSV"):
        build_dataset("sudoku_csv", str(tmp_path / "ds"), source=str(tmp_path))
    lines[4] = f"gen,{rows[2][0]},{rows[2][1]},oops"
    (tmp_path / "train.csv").write_text("\ufeff" + "\r\n".join(lines) + "\r\n")  # BOM, CRLF
    with pytest.raises(DataError, match=r"train.csv: line 6: rating 'oops'"):
        build_dataset("sudoku_csv", str(tmp_path / "ds"), source=str(tmp_path))


def _transform(q: str, seed: int) -> str:
    n = int(len(q) ** 0.5)
    g = Geometry(int(n ** 0.5), int(n ** 0.5))
    x = np.array([0 if c == "." else int(c) for c in q]).reshape(n, n)
    return _q(g.augment(np.random.default_rng(seed), x)[0])


def test_sudoku_csv_reports_duplicates_and_leakage_with_lines(tmp_path):
    rows = _sudoku_rows(12, 1, box=(3, 3), blanks=45)
    from trm.data.builders.sudoku import sudoku_equivalent, sudoku_keys

    train = rows[:8] + [(_transform(rows[2][0], 5), _transform(rows[2][1], 5))]  # dup of line 4
    test = rows[8:11] + [(_transform(rows[6][0], 9), _transform(rows[6][1], 9))]  # = line 8
    # the generated rows are distinct up to augmentation except where we made them equal
    keys = sudoku_keys(np.array([[0 if c == "." else int(c) for c in q] for q, _ in rows]
                                ).reshape(-1, 9, 9), 3)
    assert len(set(keys)) == 12
    _write(tmp_path / "train.csv", train)
    _write(tmp_path / "test.csv", test)
    args = dict(source=str(tmp_path), num_aug=2, num_shards=1)
    with pytest.raises(DataError) as e:
        build_dataset("sudoku_csv", str(tmp_path / "ds"), **args)
    msg = _one_line(e)
    assert "1 test puzzles also appear in train" in msg
    assert "test.csv line 5 = train.csv line 8" in msg and "--allow_overlap" in msg
    assert not os.path.exists(tmp_path / "ds" / "metadata.json")
    with pytest.warns(DataWarning, match=r"1 train puzzles duplicate .*train.csv line 10 = "
                                         r"train.csv line 4"):
        out = build_dataset("sudoku_csv", str(tmp_path / "ds"), allow_overlap=True, **args)
    overlap = load_metadata(out).raw[0]["overlap"]
    assert overlap["test_in_train"] == 1 and overlap["duplicates"] == {"train": 1, "test": 0}
    # without augmentation only identical questions count
    build_dataset("sudoku_csv", str(tmp_path / "ds0"), **dict(args, num_aug=0))
    a = np.array([0 if c == "." else int(c) for c in rows[0][0]]).reshape(9, 9)
    b = np.array([0 if c == "." else int(c) for c in _transform(rows[0][0], 3)]).reshape(9, 9)
    assert sudoku_equivalent(a, b, 3) and sudoku_equivalent(a.T, b, 3)


def test_sudoku_keys_are_invariant_and_equivalence_is_exact():
    from trm.data.builders.sudoku import sudoku_equivalent, sudoku_keys

    g = Geometry(3, 3)
    rng = np.random.default_rng(0)
    qs = [g.generate(rng, 50)[0] for _ in range(3)]
    for q in qs:
        for s in range(5):
            t = g.augment(np.random.default_rng(s), q)[0]
            assert sudoku_keys(np.stack([q, t]), 3)[0] == sudoku_keys(np.stack([q, t]), 3)[1]
            assert sudoku_equivalent(q, t, 3)
    assert not sudoku_equivalent(qs[0], qs[1], 3)
    swapped = qs[0].copy()
    swapped[[0, 3]] = swapped[[3, 0]]  # rows of different bands: not an augmentation
    assert not sudoku_equivalent(qs[0], swapped, 3) or \
        sudoku_keys(np.stack([qs[0], swapped]), 3)[0] == sudoku_keys(np.stack([qs[0], swapped]),
                                                                     3)[1]


def _maze_csv(path, mazes):
    with open(path, "w") as f:
        f.write("source,question,answer,rating\n")
        for q, a in mazes:
            f.write("gen," + "".join(maze.CHARSET[v] for v in q.reshape(-1)) + ","
                    + "".join(maze.CHARSET[v] for v in a.reshape(-1)) + ",0\n")


def test_maze_csv_reports_leakage_up_to_dihedral_transforms(tmp_path):
    from trm.data.grids import dihedral

    rng = np.random.default_rng(4)
    mazes = [maze.generate_maze(9, rng, 6, 0.0) for _ in range(4)]
    rotated = tuple(dihedral(m, 1) for m in mazes[1])
    _maze_csv(tmp_path / "train.csv", mazes[:3] + [mazes[0]])  # line 5 = line 2
    _maze_csv(tmp_path / "test.csv", [mazes[3], rotated])  # test line 3 = train line 3
    with pytest.raises(DataError, match=r"1 test mazes also appear in train up to the 8 "
                                        r"dihedral.*test.csv line 3 = train.csv line 3"):
        build_dataset("maze_csv", str(tmp_path / "a"), source=str(tmp_path), aug=True)
    # without --aug the rotation is a different maze; the exact duplicate is still reported
    with pytest.warns(DataWarning, match="1 train mazes duplicate.*train.csv line 5 = "
                                         "train.csv line 2"):
        out = build_dataset("maze_csv", str(tmp_path / "b"), source=str(tmp_path))
    assert load_metadata(out).raw[0]["overlap"]["test_in_train"] == 0


def test_arc_reports_test_pairs_found_in_train(tmp_path):
    rng = np.random.default_rng(0)

    def grid():
        return rng.integers(0, 10, (3, 4)).tolist()

    def pair():
        return {"input": grid(), "output": grid()}

    a_train, b_train = [pair(), pair()], [pair(), pair()]
    leaked = {"input": np.rot90(np.array(a_train[1]["input"])).tolist(),
              "output": np.rot90(np.array(a_train[1]["output"])).tolist()}
    training = {"aaaa0001": {"train": a_train, "test": [pair()]},
                "aaaa0002": {"train": b_train, "test": [pair()]}}
    evaluation = {"bbbb0001": {"train": [pair()], "test": [leaked]},
                  "bbbb0002": {"train": [pair()], "test": [pair()]}}
    prefix = str(tmp_path / "arc")
    for name, tasks in (("training", training), ("evaluation", evaluation)):
        open(f"{prefix}_{name}_challenges.json", "w").write(json.dumps(tasks))
    args = dict(source=prefix, subsets="training,evaluation", test_set_name="evaluation",
                num_aug=2, num_shards=1)
    with pytest.warns(DataWarning, match=r"arc: 1 test pairs also appear in train .*"
                                         r"evaluation task bbbb0001 test pair 0 = training task "
                                         r"aaaa0001 train-split pair 1"):
        out = build_dataset("arc", str(tmp_path / "ok"), **args)
    assert load_metadata(out).raw[0]["overlap"]["test_in_train"] == 1
    with pytest.raises(DataError, match="1 test pairs also appear in train"):
        build_dataset("arc", str(tmp_path / "strict"), allow_overlap=False, **args)


def test_older_metadata_without_new_arguments_still_matches(tmp_path):
    rows = _sudoku_rows(6, 2)
    _write(tmp_path / "train.csv", rows[:4])
    _write(tmp_path / "test.csv", rows[4:])
    out = build_dataset("sudoku_csv", str(tmp_path / "ds"), source=str(tmp_path), num_shards=1)
    _edit_meta(out, lambda m: m["builder"]["args"].pop("allow_overlap"))  # built before it
    assert build_dataset("sudoku_csv", out, source=str(tmp_path), num_shards=1) == out


# ------------------------------------------------------------------ metadata values are bounded


@pytest.mark.parametrize("edit,field", [
    (lambda m: m["splits"]["train"].update(mean_puzzle_examples=float("nan")),
     "mean_puzzle_examples"),
    (lambda m: m["splits"]["train"].update(mean_puzzle_examples=float("inf")),
     "mean_puzzle_examples"),
    (lambda m: m["splits"]["train"].update(mean_puzzle_examples=1e300), "mean_puzzle_examples"),
    (lambda m: m.update(num_puzzle_identifiers=10 ** 18), "num_puzzle_identifiers"),
    (lambda m: m.update(ignore_label_id=10 ** 30), "ignore_label_id"),
    (lambda m: m.update(seq_len=float("nan")), "seq_len"),
    (lambda m: m["splits"]["train"]["shards"][0].update(num_records=10 ** 30), "num_records"),
    (lambda m: m["splits"]["train"].update(total_examples=-(10 ** 30)), "total_examples"),
])
def test_metadata_with_nan_or_huge_values_is_one_line(sudoku6, tmp_path, edit, field):
    ds = _copy(sudoku6, tmp_path / "ds")
    _edit_meta(ds, edit)
    with pytest.raises(DataError, match=f"metadata.json: field .*{field}") as e:
        load_metadata(ds)
    _one_line(e)


def test_a_fifo_or_oversized_metadata_is_a_data_error_not_a_hang(tmp_path):
    import os as _os
    from trm.data import DataError, load_metadata
    fifo_dir = tmp_path / "fifo"
    fifo_dir.mkdir()
    _os.mkfifo(fifo_dir / "metadata.json")
    with pytest.raises(DataError, match="cannot be read as a trm metadata file"):
        load_metadata(str(fifo_dir))
    big_dir = tmp_path / "big"
    big_dir.mkdir()
    with open(big_dir / "metadata.json", "wb") as f:
        f.truncate((64 << 20) + 1)
    with pytest.raises(DataError, match="cannot be read as a trm metadata file"):
        load_metadata(str(big_dir))
