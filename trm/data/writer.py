"""Writes a dataset (arrays in the reference's layout) as TFRecord shards + metadata, atomically.

Builders produce, per split and set, a :class:`SetArrays` (the reference's ``.npy`` layout) and
call :func:`write_dataset`. Nothing here needs TensorFlow: records are encoded and framed by
:mod:`trm.data.format` (CRC32C from google-crc32c), and tests check TensorFlow reads them.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import json
import os
import re
import shutil
import tempfile
import uuid
from typing import Any, Mapping

import numpy as np

from trm import progress
from trm.data import format as fmt
from trm.data import fsutil
from trm.data.format import DataError


@dataclasses.dataclass
class SetArrays:
    """One set of one split, in the reference's layout (TRM_SPEC 9.1)."""

    inputs: np.ndarray  # [num_examples, seq_len]
    labels: np.ndarray  # [num_examples, seq_len]
    puzzle_identifiers: np.ndarray  # [num_puzzles]
    puzzle_indices: np.ndarray  # [num_puzzles + 1]: example offsets
    group_indices: np.ndarray  # [num_groups + 1]: puzzle offsets

    @property
    def num_groups(self) -> int:
        return len(self.group_indices) - 1

    @property
    def num_puzzles(self) -> int:
        return len(self.puzzle_identifiers)

    @property
    def num_examples(self) -> int:
        return len(self.inputs)

    def validate(self, where: str, seq_len: int, vocab_size: int,
                 num_puzzle_identifiers: int) -> None:
        def fail(msg):
            raise DataError(f"{where}: {msg}")

        for name in ("inputs", "labels"):
            a = getattr(self, name)
            if a.ndim != 2 or a.shape[1] != seq_len:
                fail(f"{name} has shape {a.shape}, expected [N, {seq_len}]")
            if a.size and (a.min() < 0 or a.max() >= vocab_size):
                fail(f"{name} has tokens outside [0, {vocab_size})")
        if self.labels.shape[0] != self.inputs.shape[0]:
            fail("inputs and labels have different numbers of examples")
        pi, gi = np.asarray(self.puzzle_indices), np.asarray(self.group_indices)
        if len(pi) != self.num_puzzles + 1 or pi[0] != 0 or pi[-1] != self.num_examples \
                or np.any(np.diff(pi) <= 0):
            fail("puzzle_indices must rise strictly from 0 to num_examples "
                 "(every puzzle needs at least one example)")
        if len(gi) < 1 or gi[0] != 0 or gi[-1] != self.num_puzzles or np.any(np.diff(gi) <= 0):
            fail("group_indices must rise strictly from 0 to num_puzzles "
                 "(every group needs at least one puzzle)")
        ids = np.asarray(self.puzzle_identifiers)
        if ids.size and (ids.min() < 0 or ids.max() >= num_puzzle_identifiers):
            fail(f"puzzle_identifiers outside [0, {num_puzzle_identifiers})")


def _write_shard(path: str, index_path: str, s: SetArrays, groups: np.ndarray,
                 inputs_b: np.ndarray, labels_b: np.ndarray) -> dict:
    """Writes the given groups of ``s`` to one TFRecord file and its index; returns stats."""
    gi, pi, ids = s.group_indices, s.puzzle_indices, s.puzzle_identifiers
    offsets = [0]
    puzzle_offsets = [0]
    group_offsets = [0]
    shard_ids = []
    pos = 0
    with open(path, "wb") as f:
        for g in groups:
            for p in range(gi[g], gi[g + 1]):
                pid = int(ids[p])
                for e in range(pi[p], pi[p + 1]):
                    rec = fmt.frame_record(fmt.encode_example(
                        inputs_b[e].tobytes(), labels_b[e].tobytes(), pid, int(g), int(p), int(e)))
                    f.write(rec)
                    pos += len(rec)
                    offsets.append(pos)
                puzzle_offsets.append(len(offsets) - 1)
                shard_ids.append(pid)
            group_offsets.append(len(puzzle_offsets) - 1)
    buf = io.BytesIO()
    np.savez(buf, record_offsets=np.asarray(offsets, np.int64),
             puzzle_indices=np.asarray(puzzle_offsets, np.int64),
             group_indices=np.asarray(group_offsets, np.int64),
             puzzle_identifiers=np.asarray(shard_ids, np.int32),
             group_ids=np.asarray(groups, np.int64))
    index_bytes = buf.getvalue()
    with open(index_path, "wb") as f:
        f.write(index_bytes)
    with open(path, "rb") as f:
        digest, n = fmt.sha256_file(f)
    assert n == pos
    return dict(num_records=len(offsets) - 1, num_groups=len(groups),
                num_puzzles=len(puzzle_offsets) - 1, num_bytes=n, sha256=digest,
                index_num_bytes=len(index_bytes), index_sha256=fmt.sha256_bytes(index_bytes))


MAX_METADATA_BYTES = 64 << 20  # a dataset's metadata.json is kilobytes; bigger is not ours


def read_committed_metadata(output_dir: str) -> dict | None:
    """The metadata of the committed dataset at ``output_dir``, or None if there is none."""
    path = fsutil.join(output_dir, fmt.METADATA_FILE)
    try:
        data = fsutil.read_bytes(path, max_bytes=MAX_METADATA_BYTES)
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not a trm metadata file; choose another "
                        "--output_dir") from None
    except PermissionError as e:  # not a regular file (a FIFO, a device), or unreadable
        raise DataError(f"{path}: cannot be read as a trm metadata file ({e})") from None
    fix = ("if this folder should hold a trm dataset, delete that file by hand and build "
           "again; otherwise choose another --output_dir")
    try:
        meta = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e}); {fix}") from None
    if not isinstance(meta, dict) or meta.get("format") != fmt.FORMAT_NAME:
        what = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise DataError(f"{path}: not a trm dataset (format {what!r}); {fix}")
    return meta


# Entries a build may leave in its output folder: its data folders and the temporary files of
# the atomic metadata.json write (see trm.run.storage).
_OURS = re.compile(r"(data-[0-9a-f]{12}|\.metadata\.json\.tmp-.*|metadata\.json)")


def check_output_dir(output_dir: str) -> None:
    """Refuses output folders a build must not write into (raises :class:`DataError`).

    Refused: a filesystem root, the home folder, a bucket root (``gs://bucket``), a path that is
    a file, and an existing non-empty folder without ``metadata.json`` that holds anything a
    build does not write itself (``data-<12 hex digits>`` folders, ``.metadata.json.tmp-*``).
    A folder with a committed ``metadata.json`` is a dataset and accepted (a rebuild only ever
    replaces ``metadata.json`` and removes the ``data-<id>`` folder it named).
    """
    out = str(output_dir)
    if not out:
        raise DataError("--output_dir is empty")
    if fsutil.is_remote(out):
        scheme, _, rest = out.partition("://")
        bucket, _, prefix = rest.strip("/").partition("/")
        if not bucket or not prefix.strip("/"):
            raise DataError(f"--output_dir {out}: a bucket root is not a dataset folder; use a "
                            f"prefix such as {scheme}://{bucket or 'bucket'}/datasets/NAME")
        from trm.run.storage import Storage

        entries = Storage(out).listdir()
    else:
        real = os.path.realpath(os.path.expanduser(out))
        home = os.path.realpath(os.path.expanduser("~"))
        if os.path.dirname(real) == real or real == home:
            raise DataError(f"--output_dir {out} resolves to {real} (a filesystem root or the "
                            "home folder); choose a dedicated folder such as data/NAME")
        if os.path.exists(real) and not os.path.isdir(real):
            raise DataError(f"--output_dir {out} is a file, not a folder; choose a folder")
        try:
            entries = sorted(os.listdir(real))
        except FileNotFoundError:
            return
    if fmt.METADATA_FILE in entries:
        return
    foreign = [e for e in entries if not _OURS.fullmatch(e)]
    if foreign:
        shown = ", ".join(repr(e) for e in foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise DataError(f"--output_dir {out} is not empty and holds no trm dataset (it has "
                        f"{shown}); a build writes only into an empty or new folder or an "
                        "existing trm dataset: choose another --output_dir")


def removable_data_dir(output_dir: str, meta: Mapping[str, Any]) -> str:
    """The path of the data folder ``meta`` names, after checking a rebuild may delete it.

    Only a direct child of ``output_dir`` named ``data-<id>`` that is a real folder (not a
    symlink) qualifies; anything else raises :class:`DataError` before anything is written.
    """
    where = fsutil.join(output_dir, fmt.METADATA_FILE)
    fix = (f"nothing was deleted; check {where} by hand (delete it if this folder should hold "
           "a new dataset) and build again")
    name = fmt.check_relative_path(meta.get("data_dir"), where, "data_dir", single=True,
                                   hint=fix)
    if not fmt.BUILD_DIR_PATTERN.fullmatch(name):
        raise DataError(f"{where}: field data_dir = {name!r} is not a folder a trm build "
                        f"writes (data-<id>); {fix}")
    path = fsutil.join(output_dir, name)
    if not fsutil.is_remote(output_dir):
        if os.path.islink(path):
            raise DataError(f"{where}: field data_dir = {name!r} is a symlink "
                            f"(to {os.path.realpath(path)}); {fix}")
        fmt.check_inside(output_dir, path, where, "data_dir", hint=fix)
    return path


def write_dataset(output_dir: str, *, builder: str, version: str, args: Mapping[str, Any],
                  seq_len: int, vocab_size: int, pad_id: int, ignore_label_id: int | None,
                  blank_identifier_id: int, identifiers: list[str],
                  splits: Mapping[str, Mapping[str, SetArrays]], num_shards: int,
                  extra_files: Mapping[str, bytes] | None = None, overwrite: bool = False,
                  extra_metadata: Mapping[str, Any] | None = None) -> dict:
    """Writes a dataset and commits it by creating ``metadata.json``; returns the metadata.

    The data go to a fresh ``data-<id>`` folder first. Without ``overwrite``, if another
    writer committed first, its dataset is kept and returned (ours is deleted). With
    ``overwrite``, ``metadata.json`` is replaced and the previous data folder removed.
    """
    check_output_dir(output_dir)
    num_ids = len(identifiers)
    if num_ids < 1 or identifiers[0] != fmt.BLANK_IDENTIFIER_NAME:
        raise DataError(f"identifiers must start with {fmt.BLANK_IDENTIFIER_NAME!r}")
    if num_shards < 1:
        raise DataError(f"num_shards must be >= 1, got {num_shards}")
    tdt = "uint8" if vocab_size <= 256 else "int32"
    np_dt = fmt.token_dtype(tdt)
    build_id = uuid.uuid4().hex[:12]
    data_dir = f"data-{build_id}"
    remote = fsutil.is_remote(output_dir)
    local_root = tempfile.mkdtemp(prefix="trm-build-") if remote else \
        os.path.join(output_dir, data_dir)
    final_data = fsutil.join(output_dir, data_dir)
    committed = False
    try:
        os.makedirs(local_root, exist_ok=True)
        split_meta = {}
        for split, sets in splits.items():
            if split not in fmt.SPLITS:
                raise DataError(f"unknown split {split!r} (expected one of {fmt.SPLITS})")
            os.makedirs(os.path.join(local_root, split), exist_ok=True)
            shards, set_stats = [], {}
            for set_name, s in sets.items():
                fmt.check_relative_path(set_name, f"{builder}: split {split!r}", "set name",
                                        single=True)
                s.validate(f"{builder}: split {split!r} set {set_name!r}", seq_len, vocab_size,
                           num_ids)
                set_stats[set_name] = dict(groups=s.num_groups, puzzles=s.num_puzzles,
                                           examples=s.num_examples)
                if s.num_groups == 0:
                    continue
                n_sh = min(num_shards, s.num_groups)
                inputs_b = np.ascontiguousarray(s.inputs.astype(np_dt))
                labels_b = np.ascontiguousarray(s.labels.astype(np_dt))
                with progress.sub(f"writing {split}/{set_name}", n_sh, unit="shards") as bar:
                    for k in range(n_sh):
                        name = fmt.shard_name(set_name, k, n_sh)
                        rel, rel_idx = f"{split}/{name}.tfrecord", f"{split}/{name}.index.npz"
                        stats = _write_shard(os.path.join(local_root, rel),
                                             os.path.join(local_root, rel_idx), s,
                                             np.arange(k, s.num_groups, n_sh), inputs_b,
                                             labels_b)
                        shards.append(dict(file=rel, index=rel_idx, set=set_name, **stats))
                        bar.update(k + 1)
            g = sum(v["groups"] for v in set_stats.values())
            p = sum(v["puzzles"] for v in set_stats.values())
            e = sum(v["examples"] for v in set_stats.values())
            split_meta[split] = dict(sets=list(sets), total_groups=g, total_puzzles=p,
                                     total_examples=e,
                                     mean_puzzle_examples=(e / p) if p else 0.0,
                                     set_stats=set_stats, shards=shards)
        files = {fmt.IDENTIFIERS_FILE: json.dumps(identifiers).encode()}
        files.update(extra_files or {})
        file_meta = {}
        for name, data in files.items():
            fmt.check_relative_path(name, builder, "extra file name", single=True)
            with open(os.path.join(local_root, name), "wb") as f:
                f.write(data)
            file_meta[name] = dict(num_bytes=len(data), sha256=fmt.sha256_bytes(data))
        if remote:
            for dirpath, _, names in os.walk(local_root):
                for name in names:
                    rel = os.path.relpath(os.path.join(dirpath, name), local_root)
                    fsutil.upload_file(os.path.join(dirpath, name),
                                       fsutil.join(final_data, *rel.split(os.sep)))
        meta = dict(
            format=fmt.FORMAT_NAME, format_version=fmt.FORMAT_VERSION,
            builder=dict(name=builder, version=version, args=dict(args)),
            created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            data_dir=data_dir, seq_len=int(seq_len), vocab_size=int(vocab_size),
            pad_id=int(pad_id),
            ignore_label_id=None if ignore_label_id is None else int(ignore_label_id),
            blank_identifier_id=int(blank_identifier_id), num_puzzle_identifiers=num_ids,
            token_dtype=tdt, files=file_meta, splits=split_meta, **(extra_metadata or {}))
        meta_bytes = fmt.json_dumps(meta).encode()
        meta_path = fsutil.join(output_dir, fmt.METADATA_FILE)
        if overwrite:
            previous = read_committed_metadata(output_dir)
            old_data = None
            if previous and previous.get("data_dir") != data_dir:
                old_data = removable_data_dir(output_dir, previous)  # checked before writing
            fsutil.write_bytes(meta_path, meta_bytes)
            committed = True
            if old_data is not None:
                fsutil.remove_tree(old_data)
            return meta
        committed = fsutil.create_exclusive(meta_path, meta_bytes)
        if committed:
            return meta
        winner = read_committed_metadata(output_dir)
        if winner is None or winner.get("data_dir") == data_dir:  # our remote write won
            committed = True
            return meta
        return winner
    finally:
        if remote:
            shutil.rmtree(local_root, ignore_errors=True)
        if not committed:
            fsutil.remove_tree(final_data)
