"""The trm dataset format: layout, metadata, record encoding. No TensorFlow here.

A dataset directory (local path or ``gs://bucket/prefix``) looks like::

    DIR/
      metadata.json                 the commit marker: a dataset exists once this file exists
      data-<build_id>/
        identifiers.json            list: puzzle identifier -> name ("<blank>" for 0)
        test_puzzles.json           ARC only: the raw test puzzles, for the evaluator
        train/<set>-00000-of-00016.tfrecord        tf.train.Example records
        train/<set>-00000-of-00016.index.npz       byte offsets + group/puzzle structure
        test/...

``metadata.json`` names the ``data-<build_id>`` folder it describes, so a rebuild writes a
new folder and switches to it by rewriting one small file; readers never see half a dataset.

Each record is one *example* (an input/label pair) with the features

    inputs             bytes   seq_len tokens (``token_dtype``, little endian)
    labels             bytes   seq_len tokens; ``ignore_label_id`` marks unsupervised cells
    puzzle_identifier  int64   row of the puzzle-embedding table (0 = blank)
    group_index        int64   index of the group within its split and set
    puzzle_index       int64   index of the puzzle within its split and set
    example_index      int64   index of the example within its split and set

A *group* is one original puzzle and all its augmented versions, a *puzzle* is one (possibly
augmented) task with its own identifier, an *example* is one input/label pair. Groups are
dealt round-robin to the shards of their split (group g goes to shard g % num_shards), and a
shard stores its groups in increasing order, each group's puzzles and each puzzle's examples
contiguously. The index file of a shard holds, for the records of that shard:

    record_offsets   int64 [n + 1]   byte offset of every record in the TFRecord file
    puzzle_indices   int64 [p + 1]   puzzle j owns records [puzzle_indices[j], puzzle_indices[j+1])
    group_indices    int64 [g + 1]   group i owns puzzles [group_indices[i], group_indices[i+1])
    puzzle_identifiers int32 [p]
    group_ids        int64 [g]       global group index (within split and set)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import struct
from typing import Any, Mapping

import numpy as np

from trm.errors import TrmError

FORMAT_NAME = "trm-tfrecord"
FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
IDENTIFIERS_FILE = "identifiers.json"
TEST_PUZZLES_FILE = "test_puzzles.json"
BLANK_IDENTIFIER_NAME = "<blank>"
IGNORE_LABEL = -100  # label value of unsupervised positions in batches (torch's ignore_index)
SPLITS = ("train", "test")
INT_FEATURES = ("puzzle_identifier", "group_index", "puzzle_index", "example_index")


class DataError(TrmError, ValueError):
    """Bad input data, or a dataset that is missing, corrupt or inconsistent."""


class DataWarning(UserWarning):
    """Input a builder accepted but reports: duplicates inside a split, test items that also
    appear in train (when allowed)."""


def shard_name(set_name: str, index: int, count: int) -> str:
    return f"{set_name}-{index:05d}-of-{count:05d}"


# --------------------------------------------------------------------------------------------
# tf.train.Example encoding (hand-written protobuf, keys in sorted order, so that files are
# byte-for-byte deterministic). Tests check that TensorFlow parses it back identically.


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1  # negative int64 -> two's complement, as protobuf does
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _len_field(field_number: int, payload: bytes) -> bytes:
    return _varint((field_number << 3) | 2) + _varint(len(payload)) + payload


def _bytes_feature(value: bytes) -> bytes:
    return _len_field(1, _len_field(1, value))  # Feature.bytes_list{value}


def _int64_feature(value: int) -> bytes:
    return _len_field(3, _len_field(1, _varint(int(value))))  # Feature.int64_list{packed}


_KEYS = {k: _len_field(1, k.encode()) for k in ("example_index", "group_index", "inputs",
                                                   "labels", "puzzle_identifier", "puzzle_index")}


def encode_example(inputs: bytes, labels: bytes, puzzle_identifier: int, group_index: int,
                   puzzle_index: int, example_index: int) -> bytes:
    """Serialises one example as a ``tf.train.Example`` (features sorted by key)."""
    entries = (
        _KEYS["example_index"] + _len_field(2, _int64_feature(example_index)),
        _KEYS["group_index"] + _len_field(2, _int64_feature(group_index)),
        _KEYS["inputs"] + _len_field(2, _bytes_feature(inputs)),
        _KEYS["labels"] + _len_field(2, _bytes_feature(labels)),
        _KEYS["puzzle_identifier"] + _len_field(2, _int64_feature(puzzle_identifier)),
        _KEYS["puzzle_index"] + _len_field(2, _int64_feature(puzzle_index)),
    )
    features = b"".join(_len_field(1, e) for e in entries)  # Features.feature map entries
    return _len_field(1, features)  # Example.features


# --------------------------------------------------------------------------------------------
# TFRecord framing: uint64 length, masked crc32c(length), data, masked crc32c(data).

_CRC_MASK_DELTA = 0xA282EAD8


def masked_crc32c(data: bytes) -> int:
    import google_crc32c  # installed with gcsfs (google-cloud-storage)

    crc = google_crc32c.value(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _CRC_MASK_DELTA) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return (header + struct.pack("<I", masked_crc32c(header)) + data
            + struct.pack("<I", masked_crc32c(data)))


RECORD_OVERHEAD = 16  # bytes of framing around each record's data


# --------------------------------------------------------------------------------------------
# Metadata


@dataclasses.dataclass
class ShardInfo:
    """One TFRecord file of a split, as listed in ``metadata.json``."""

    file: str  # relative to the data folder
    index: str
    set: str
    num_records: int
    num_groups: int
    num_puzzles: int
    num_bytes: int
    sha256: str
    index_num_bytes: int
    index_sha256: str

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "ShardInfo":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(fileobj, chunk: int = 1 << 22) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    while True:
        block = fileobj.read(chunk)
        if not block:
            return h.hexdigest(), n
        h.update(block)
        n += len(block)


def json_dumps(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=False)


def token_dtype(name: str) -> np.dtype:
    if name not in ("uint8", "int32"):
        raise DataError(f"unsupported token_dtype {name!r} (uint8 or int32)")
    return np.dtype("<u1") if name == "uint8" else np.dtype("<i4")


# --------------------------------------------------------------------------------------------
# Reading records back without TensorFlow (a minimal protobuf decoder for the checks that run
# when a shard is opened).


def _read_varint(buf, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _fields(buf):
    """(field number, wire type, value) of a serialised protobuf message."""
    pos, n = 0, len(buf)
    while pos < n:
        key, pos = _read_varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 2:
            size, pos = _read_varint(buf, pos)
            if pos + size > n:
                raise ValueError("truncated length-delimited field")
            value, pos = bytes(buf[pos:pos + size]), pos + size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = bytes(buf[pos:pos + size]), pos + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


def decode_example(data: bytes) -> dict[str, Any]:
    """Decodes a serialised ``tf.train.Example``: {key: [bytes...] | [int...] | "float"}.

    Raises ValueError for bytes that are not a well-formed Example.
    """
    out: dict[str, Any] = {}
    for number, wire, features in _fields(data):
        if number != 1 or wire != 2:
            continue
        for n2, w2, entry in _fields(features):
            if n2 != 1 or w2 != 2:
                continue
            key, feature = None, b""
            for n3, w3, v in _fields(entry):
                if n3 == 1 and w3 == 2:
                    key = v.decode("utf-8", "replace")
                elif n3 == 2 and w3 == 2:
                    feature = v
            value: Any = None
            for kind, w4, lst in _fields(feature):
                if kind == 1 and w4 == 2:
                    value = [v for f, w, v in _fields(lst) if f == 1 and w == 2]
                elif kind == 3 and w4 == 2:
                    ints = []
                    for f, w, v in _fields(lst):
                        if f != 1:
                            continue
                        if w == 2:  # packed
                            p = 0
                            while p < len(v):
                                x, p = _read_varint(v, p)
                                ints.append(x)
                        elif w == 0:
                            ints.append(v)
                    value = [x - (1 << 64) if x >= 1 << 63 else x for x in ints]
                elif kind == 2:
                    value = "float"
            out[key] = value
    return out


# --------------------------------------------------------------------------------------------
# Metadata is data: every path in it must stay inside the dataset folder, every field must have
# the type and range the reader relies on. See docs/DATA.md, "Faults and bad input".

_HEX64 = re.compile(r"[0-9a-f]{64}")
_COMPONENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.=+-]*")
BUILD_DIR_PATTERN = re.compile(r"data-[0-9a-zA-Z_-]+")  # the data folder a build writes
MAX_COUNT = 1 << 40       # records, puzzles, groups, bytes of one split or shard: far above any
INT32_MAX = (1 << 31) - 1  # token ids, puzzle identifiers and labels are stored as int32


def rebuild_hint(dataset: str, meta: Mapping[str, Any] | None = None) -> str:
    """The fix for a dataset whose files disagree: the command that rebuilds it."""
    builder = "<builder>"
    if isinstance(meta, Mapping) and isinstance(meta.get("builder"), Mapping):
        builder = str(meta["builder"].get("name") or builder)
    return (f"rebuild the dataset with python -m trm.data.build {builder} "
            f"--output_dir={dataset} --overwrite (same flags as before)")


def check_relative_path(value: Any, where: str, field: str, *, single: bool = False,
                        hint: str = "") -> str:
    """Returns ``value`` if it is a relative, ``/``-separated path that stays inside its folder.

    Rejects absolute paths, ``~``, ``..`` and ``.`` components, empty components, backslashes,
    drive letters, URLs (another bucket or scheme) and control characters; with ``single``
    only one plain component (a file or folder name) is allowed.
    """
    ok = isinstance(value, str) and bool(value)
    if ok:
        parts = value.split("/")
        ok = (not (single and len(parts) != 1)
              and all(_COMPONENT.fullmatch(p) and p not in (".", "..") for p in parts))
    if not ok:
        what = "a plain name" if single else "a relative path"
        raise DataError(f"{where}: field {field} = {value!r} must be {what} inside the dataset "
                        "folder (no absolute path, '..', URL, other bucket or odd character)"
                        + (f"; {hint}" if hint else ""))
    return value


def check_inside(root: str, path: str, where: str, field: str, hint: str = "") -> None:
    """For local paths: ``path`` (symlinks resolved) must lie inside ``root`` (resolved)."""
    if "://" in str(root) and not str(root).startswith("file://"):
        return  # object stores have no symlinks; check_relative_path keeps URLs inside
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
        raise DataError(f"{where}: field {field} leads to {real}, outside the dataset folder "
                        f"{real_root} (a symlink escapes it)" + (f"; {hint}" if hint else ""))


def validate_metadata(meta: Any, where: str, dataset: str) -> dict:
    """Checks the fields of a ``metadata.json`` the reader relies on; returns it.

    ``where`` names the file in messages, ``dataset`` the folder (for the rebuild hint).
    Raises :class:`DataError` naming the file and the field.
    """
    hint = rebuild_hint(dataset, meta if isinstance(meta, Mapping) else None)

    def fail(field: str, msg: str):
        raise DataError(f"{where}: field {field} {msg}; {hint}")

    def integer(obj, field, key, lo=None, hi=None, optional=False):
        v = obj.get(key) if isinstance(obj, Mapping) else None
        if v is None and optional:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            fail(field, f"must be an integer, got {v!r}")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            fail(field, f"= {v} is outside [{lo}, {hi}]")
        return v

    if not isinstance(meta, Mapping):
        raise DataError(f"{where}: not a JSON object; {hint}")
    check_relative_path(meta.get("data_dir"), where, "data_dir", single=True, hint=hint)
    integer(meta, "format_version", "format_version", 1)
    integer(meta, "seq_len", "seq_len", 1, 1 << 24)
    vocab = integer(meta, "vocab_size", "vocab_size", 1, INT32_MAX)
    tdt = meta.get("token_dtype")
    if tdt not in ("uint8", "int32"):
        fail("token_dtype", f"= {tdt!r} must be 'uint8' or 'int32'")
    if tdt == "uint8" and vocab > 256:
        fail("token_dtype", f"is uint8 but vocab_size {vocab} > 256")
    integer(meta, "pad_id", "pad_id", 0, vocab - 1)
    integer(meta, "ignore_label_id", "ignore_label_id", -INT32_MAX - 1, INT32_MAX, optional=True)
    num_ids = integer(meta, "num_puzzle_identifiers", "num_puzzle_identifiers", 1, INT32_MAX)
    integer(meta, "blank_identifier_id", "blank_identifier_id", 0, num_ids - 1)
    files = meta.get("files")
    if not isinstance(files, Mapping):
        fail("files", "must be a mapping of file name -> {num_bytes, sha256}")
    for name, info in files.items():
        check_relative_path(name, where, f"files[{name!r}]", single=True, hint=hint)
        if not isinstance(info, Mapping) or not _HEX64.fullmatch(str(info.get("sha256"))):
            fail(f"files[{name!r}].sha256", "must be 64 lowercase hex digits")
    splits = meta.get("splits")
    if not isinstance(splits, Mapping):
        fail("splits", "must be a mapping of split name -> split")
    for split, sm in splits.items():
        f = f"splits.{split}"
        if split not in SPLITS:
            fail(f, f"is not one of {SPLITS}")
        if not isinstance(sm, Mapping):
            fail(f, "must be a mapping")
        sets = sm.get("sets")
        if not isinstance(sets, list):
            fail(f"{f}.sets", "must be a list of set names")
        for s in sets:
            check_relative_path(s, where, f"{f}.sets", single=True, hint=hint)
        shards = sm.get("shards")
        if not isinstance(shards, list):
            fail(f"{f}.shards", "must be a list")
        totals = dict(num_records=0, num_groups=0, num_puzzles=0)
        for i, d in enumerate(shards):
            fs = f"{f}.shards[{i}]"
            if not isinstance(d, Mapping):
                fail(fs, "must be a mapping")
            for key in ("file", "index"):
                check_relative_path(d.get(key), where, f"{fs}.{key}", hint=hint)
            if d.get("set") not in sets:
                fail(f"{fs}.set", f"= {d.get('set')!r} is not one of the split's sets {sets}")
            for key in ("num_records", "num_groups", "num_puzzles", "num_bytes",
                        "index_num_bytes"):
                v = integer(d, f"{fs}.{key}", key, 0, MAX_COUNT)
                if key in totals:
                    totals[key] += v
            for key in ("sha256", "index_sha256"):
                if not _HEX64.fullmatch(str(d.get(key))):
                    fail(f"{fs}.{key}", "must be 64 lowercase hex digits")
        for key, total in (("total_examples", "num_records"), ("total_groups", "num_groups"),
                           ("total_puzzles", "num_puzzles")):
            v = integer(sm, f"{f}.{key}", key, 0, MAX_COUNT)
            if v != totals[total]:
                fail(f"{f}.{key}", f"= {v} but its shards hold {totals[total]} ({total})")
        mpe = sm.get("mean_puzzle_examples")
        if isinstance(mpe, bool) or not isinstance(mpe, (int, float)) or \
                not (math.isfinite(mpe) and 0 <= mpe <= MAX_COUNT):
            fail(f"{f}.mean_puzzle_examples", f"must be a finite number in [0, {MAX_COUNT}], "
                                              f"got {mpe!r}")
    return dict(meta)
