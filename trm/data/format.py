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
import struct
from typing import Any, Mapping

import numpy as np

FORMAT_NAME = "trm-tfrecord"
FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
IDENTIFIERS_FILE = "identifiers.json"
TEST_PUZZLES_FILE = "test_puzzles.json"
BLANK_IDENTIFIER_NAME = "<blank>"
IGNORE_LABEL = -100  # label value of unsupervised positions in batches (torch's ignore_index)
SPLITS = ("train", "test")
INT_FEATURES = ("puzzle_identifier", "group_index", "puzzle_index", "example_index")


class DataError(ValueError):
    """Bad input data, or a dataset that is missing, corrupt or inconsistent."""


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
