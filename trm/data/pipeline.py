"""The input pipeline: metadata, the training stream and evaluation batches.

Training (:class:`TrainStream`) reproduces the reference's group-wise sampling (TRM_SPEC 9.4):
every epoch draws one puzzle per group and visits the groups in a random order, taking all
examples of each drawn puzzle in random order. To let every process read only its own shards
while keeping the *global* batch sequence independent of the number of processes, the split's
shards are cut into ``V`` fixed *streams* (``V`` depends only on the dataset and the global
batch size). Each stream has its own groups, epochs and random generator (seeded by
``(seed, dataset, stream, epoch)``) and supplies ``global_batch_size / V`` consecutive rows of
every global batch; process ``p`` of ``P`` runs streams ``[p*V/P, (p+1)*V/P)``. So the local
batches of processes 0..P-1 concatenated are exactly the single-process batch, and the
position of the whole stream is one number: the global step.

Records are read by byte offset (from each shard's index) out of memory-mapped local files,
checked against their CRC32C, parsed by TensorFlow (``tf.io.parse_example`` in a ``tf.data``
map) and prefetched in a TensorFlow thread. ``gs://`` shards are first staged into a local cache
(see :func:`trm.data.fsutil.stage`); TensorFlow only ever reads local files.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import math
import mmap
import os
import struct
import threading
import weakref
from typing import Any, Iterator, Sequence

import numpy as np

from trm.data import format as fmt
from trm.data import fsutil
from trm.data.format import IGNORE_LABEL, DataError, ShardInfo

_AGREE = ("seq_len", "vocab_size", "pad_id", "ignore_label_id", "blank_identifier_id",
          "token_dtype")

# --------------------------------------------------------------------------------- TensorFlow

_TF = None
_TF_LOCK = threading.Lock()


def configure_tensorflow(threads: int | None = None):
    """Imports TensorFlow for the pipeline, once, and returns the module.

    Hides accelerators from TensorFlow (it must never grab the GPU/TPU that torch uses), sets
    ``TF_CPP_MIN_LOG_LEVEL=2`` unless already set, and limits TensorFlow's thread pools to
    ``threads`` (default ``$TRM_TF_THREADS`` or 1) so they do not compete with torch.
    """
    global _TF
    with _TF_LOCK:
        if _TF is not None:
            return _TF
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # silences a start-up message
        os.environ.setdefault("TPU_LOAD_LIBRARY", "0")
        import tensorflow as tf

        for kind in ("GPU", "TPU"):
            try:
                tf.config.set_visible_devices([], kind)
            except (RuntimeError, ValueError):
                pass  # no such device type, or TF already initialised
        n = int(threads or os.environ.get("TRM_TF_THREADS", "1"))
        try:
            tf.config.threading.set_intra_op_parallelism_threads(n)
            tf.config.threading.set_inter_op_parallelism_threads(n)
        except RuntimeError:
            pass  # TF already initialised by someone else
        _TF = tf
        return tf


# --------------------------------------------------------------------------------- metadata


@dataclasses.dataclass
class ShardRef:
    """A shard of one dataset, with the dataset-level facts the reader needs."""

    dataset: int  # index into DatasetMetadata.paths
    set_name: str  # after renaming (multi-path rule)
    path: str  # full path/URL of the TFRecord file
    index_path: str
    info: ShardInfo
    identifier_offset: int
    number: int = 0  # position in DatasetMetadata.shards
    dataset_path: str = ""
    seq_len: int = 0
    vocab_size: int = 0
    token_dtype: str = "uint8"
    num_identifiers: int = 0  # of its own dataset (identifiers are offset later)
    builder: str = ""


@dataclasses.dataclass
class DatasetMetadata:
    """Metadata of one split of one dataset, or of several datasets combined (TRM_SPEC 9.2)."""

    paths: list[str]
    split: str
    seq_len: int
    vocab_size: int
    pad_id: int
    ignore_label_id: int | None
    blank_identifier_id: int
    num_puzzle_identifiers: int
    total_groups: int
    total_puzzles: int
    total_examples: int
    mean_puzzle_examples: float
    sets: list[str]
    identifiers: list[str]
    token_dtype: str
    shards: list[ShardRef]
    builders: list[dict]
    raw: list[dict]  # each dataset's metadata.json

    @property
    def examples_per_epoch(self) -> float:
        """total_groups * mean_puzzle_examples: the reference's epoch size for total steps."""
        return self.total_groups * self.mean_puzzle_examples

    def shards_of_set(self, set_name: str) -> list[ShardRef]:
        return [s for s in self.shards if s.set_name == set_name]


def _read_metadata(path: str) -> dict:
    from trm.data.writer import read_committed_metadata

    meta = read_committed_metadata(path)
    if meta is None:
        raise DataError(f"no dataset at {path}: {fmt.METADATA_FILE} is missing (not built yet, "
                        "or its build did not finish); build it with python -m trm.data.build")
    if isinstance(meta.get("format_version"), int) and meta["format_version"] > \
            fmt.FORMAT_VERSION:
        raise DataError(f"{path}: dataset format version {meta['format_version']} is newer than "
                        f"this trm supports ({fmt.FORMAT_VERSION})")
    meta_path = fsutil.join(path, fmt.METADATA_FILE)
    meta = fmt.validate_metadata(meta, meta_path, path)
    fmt.check_inside(path, fsutil.join(path, meta["data_dir"]), meta_path, "data_dir",
                     hint=fmt.rebuild_hint(path, meta))
    return meta


def read_dataset_file(path: str, name: str, meta: dict | None = None) -> bytes:
    """Reads an extra file (``identifiers.json``, ``test_puzzles.json``) of a dataset, checked."""
    meta = meta or _read_metadata(path)
    info = meta["files"].get(name)
    if info is None:
        raise DataError(f"{path}: dataset has no {name}")
    try:
        data = fsutil.read_bytes(fsutil.join(path, meta["data_dir"], name),
                                 max_bytes=int(info.get("num_bytes") or 0) or None)
    except PermissionError as e:  # not a regular file, or larger than metadata says
        raise DataError(f"{path}: {name} cannot be read ({e})") from None
    if fmt.sha256_bytes(data) != info["sha256"]:
        raise DataError(f"{path}: {name} does not match its checksum in {fmt.METADATA_FILE}")
    return data


def read_dataset_json(path: str, name: str) -> Any:
    return json.loads(read_dataset_file(path, name))


def load_metadata(path_or_paths: str | Sequence[str], split: str = "train") -> DatasetMetadata:
    """Loads (and combines) dataset metadata for ``split``.

    Several paths must agree on seq_len, vocab, pad / ignore / blank ids and token type; group,
    puzzle and example counts are summed, ``mean_puzzle_examples`` is averaged weighted by
    puzzles, the i-th extra path's sets are renamed ``<set><i>``, and the puzzle identifiers of
    path i are offset by the identifiers of paths before it (blank stays 0).
    """
    paths = [path_or_paths] if isinstance(path_or_paths, (str, os.PathLike)) else \
        list(path_or_paths)
    if not paths:
        raise DataError("load_metadata: no dataset paths given")
    paths = [str(p) for p in paths]
    raws = [_read_metadata(p) for p in paths]
    for p, m in zip(paths, raws):
        if split not in m["splits"]:
            raise DataError(f"{p}: dataset has no split {split!r} (has {sorted(m['splits'])})")
    first = raws[0]
    for p, m in zip(paths[1:], raws[1:]):
        for k in _AGREE:
            if m.get(k) != first.get(k):
                raise DataError(f"datasets disagree on {k}: {paths[0]} has {first.get(k)!r}, "
                                f"{p} has {m.get(k)!r}")
    identifiers = [fmt.BLANK_IDENTIFIER_NAME]
    shards, sets, builders = [], [], []
    offset = 0
    for i, (p, m) in enumerate(zip(paths, raws)):
        names = json.loads(read_dataset_file(p, fmt.IDENTIFIERS_FILE, m))
        if len(names) != m["num_puzzle_identifiers"]:
            raise DataError(f"{p}: identifiers.json has {len(names)} names, metadata says "
                            f"{m['num_puzzle_identifiers']}")
        identifiers.extend(names[1:])
        sm = m["splits"][split]
        suffix = "" if i == 0 else str(i)
        sets.extend(s + suffix for s in sm["sets"])
        root = fsutil.join(p, m["data_dir"])
        where = fsutil.join(p, fmt.METADATA_FILE)
        for j, d in enumerate(sm["shards"]):
            info = ShardInfo.from_json(d)
            ref = ShardRef(
                dataset=i, set_name=info.set + suffix,
                path=fsutil.join(root, *info.file.split("/")),
                index_path=fsutil.join(root, *info.index.split("/")),
                info=info, identifier_offset=offset, number=len(shards), dataset_path=p,
                seq_len=m["seq_len"], vocab_size=m["vocab_size"], token_dtype=m["token_dtype"],
                num_identifiers=m["num_puzzle_identifiers"], builder=m["builder"].get("name", "")
                if isinstance(m.get("builder"), dict) else "")
            for key, full in (("file", ref.path), ("index", ref.index_path)):
                fmt.check_inside(root, full, where, f"splits.{split}.shards[{j}].{key}",
                                 hint=fmt.rebuild_hint(p, m))
            shards.append(ref)
        offset += m["num_puzzle_identifiers"] - 1
        builders.append(m["builder"])
    splits = [m["splits"][split] for m in raws]
    puzzles = sum(s["total_puzzles"] for s in splits)
    mean = (sum(s["mean_puzzle_examples"] * s["total_puzzles"] for s in splits) / puzzles
            if puzzles else 0.0)
    return DatasetMetadata(
        paths=paths, split=split, seq_len=first["seq_len"], vocab_size=first["vocab_size"],
        pad_id=first["pad_id"], ignore_label_id=first["ignore_label_id"],
        blank_identifier_id=first["blank_identifier_id"],
        num_puzzle_identifiers=len(identifiers),
        total_groups=sum(s["total_groups"] for s in splits), total_puzzles=puzzles,
        total_examples=sum(s["total_examples"] for s in splits), mean_puzzle_examples=mean,
        sets=sets, identifiers=identifiers, token_dtype=first["token_dtype"], shards=shards,
        builders=builders, raw=raws)


# --------------------------------------------------------------------------------- shards


class _Shard:
    """A local, memory-mapped TFRecord shard with its index; reads records by number."""

    def __init__(self, ref: ShardRef, verify: bool, cache: str | None):
        info = ref.info
        idx_local = fsutil.stage(ref.index_path, info.index_sha256, info.index_num_bytes, cache)
        local = fsutil.stage(ref.path, info.sha256, info.num_bytes, cache)
        if verify:
            fsutil.verify_local(idx_local, info.index_sha256, info.index_num_bytes)
            fsutil.verify_local(local, info.sha256, info.num_bytes)
        elif not os.path.exists(local):
            raise DataError(f"{ref.path}: shard file missing (the dataset is incomplete)")
        self.ref, self.path = ref, ref.path
        try:
            with np.load(idx_local, allow_pickle=False) as z:
                self.offsets = np.asarray(z["record_offsets"], np.int64)
                self.puzzle_indices = np.asarray(z["puzzle_indices"], np.int64)
                self.group_indices = np.asarray(z["group_indices"], np.int64)
                self.group_ids = np.asarray(z["group_ids"], np.int64)
                self.puzzle_identifiers = (np.asarray(z["puzzle_identifiers"], np.int64)
                                           if "puzzle_identifiers" in z.files else None)
        except (KeyError, ValueError, OSError) as e:
            self._fail("index", f"is not a valid shard index ({e})")
        n = len(self.offsets) - 1
        if (n != info.num_records or self.offsets[-1] != info.num_bytes
                or len(self.puzzle_indices) - 1 != info.num_puzzles
                or len(self.group_indices) - 1 != info.num_groups):
            raise DataError(f"{ref.path}: shard index disagrees with {fmt.METADATA_FILE} "
                            f"({n} records in the index, {info.num_records} in the metadata); "
                            f"{fmt.rebuild_hint(ref.dataset_path or ref.path)}")
        self._check_index()
        with open(local, "rb") as f:
            self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        if len(self._mm) != info.num_bytes:
            raise DataError(f"{ref.path}: {len(self._mm)} bytes, metadata says {info.num_bytes}")
        if n:
            for r in sorted({0, n - 1}):
                self._check_record(r)

    def _fail(self, field: str, msg: str):
        ref = self.ref
        where = ref.dataset_path or os.path.dirname(ref.path)
        hint = fmt.rebuild_hint(where, {"builder": {"name": ref.builder or None}})
        raise DataError(f"{where}: shard {ref.info.file}: {field} {msg}; the records disagree "
                        f"with {fmt.METADATA_FILE}: {hint}")

    def _check_index(self) -> None:
        """The index's structure (vectorised; a few microseconds)."""
        off, pi, gi = self.offsets, self.puzzle_indices, self.group_indices
        n = len(off) - 1
        if off[0] != 0 or np.any(np.diff(off) <= fmt.RECORD_OVERHEAD):
            self._fail("index record_offsets", "are not increasing from 0 by whole records")
        if pi[0] != 0 or pi[-1] != n or np.any(np.diff(pi) <= 0):
            self._fail("index puzzle_indices", f"do not rise strictly from 0 to {n} records")
        if gi[0] != 0 or gi[-1] != len(pi) - 1 or np.any(np.diff(gi) <= 0):
            self._fail("index group_indices",
                       f"do not rise strictly from 0 to {len(pi) - 1} puzzles")
        ids, num_ids = self.puzzle_identifiers, self.ref.num_identifiers
        if ids is not None and num_ids and ids.size and (ids.min() < 0 or ids.max() >= num_ids):
            bad = int(ids[(ids < 0) | (ids >= num_ids)][0])
            self._fail("puzzle_identifier", f"{bad} is outside [0, num_puzzle_identifiers = "
                       f"{num_ids})")

    def _check_record(self, r: int) -> None:
        """Parses record ``r`` (without TensorFlow) and compares it with the metadata."""
        out: list = []
        self.read((r,), out)
        try:
            ex = fmt.decode_example(out[0])
        except ValueError as e:
            self._fail(f"record {r}", f"is not a tf.train.Example ({e})")
        ref = self.ref
        dt = fmt.token_dtype(ref.token_dtype) if ref.token_dtype else np.dtype("<u1")
        for name in ("inputs", "labels"):
            v = ex.get(name)
            if not (isinstance(v, list) and len(v) == 1 and isinstance(v[0], bytes)):
                self._fail(f"record {r} field '{name}'", "is missing or not one bytes value")
            if ref.seq_len and len(v[0]) != ref.seq_len * dt.itemsize:
                self._fail(f"record {r} field '{name}'",
                           f"holds {len(v[0]) / dt.itemsize:g} tokens ({ref.token_dtype}) but "
                           f"{fmt.METADATA_FILE} says seq_len {ref.seq_len}")
            tokens = np.frombuffer(v[0], dt)
            if ref.vocab_size and tokens.size and (tokens.min() < 0
                                                   or tokens.max() >= ref.vocab_size):
                self._fail(f"record {r} field '{name}'",
                           f"holds token {int(tokens.max())} outside [0, vocab_size = "
                           f"{ref.vocab_size})")
        for name in fmt.INT_FEATURES:
            v = ex.get(name)
            if not (isinstance(v, list) and len(v) == 1 and isinstance(v[0], int)):
                self._fail(f"record {r} field '{name}'", "is missing or not one int64 value")
        pid = ex["puzzle_identifier"][0]
        if ref.num_identifiers and not 0 <= pid < ref.num_identifiers:
            self._fail(f"record {r} field 'puzzle_identifier'",
                       f"= {pid} is outside [0, num_puzzle_identifiers = {ref.num_identifiers})")
        if self.puzzle_identifiers is not None:
            j = int(np.searchsorted(self.puzzle_indices, r, side="right") - 1)
            if pid != int(self.puzzle_identifiers[j]):
                self._fail(f"record {r} field 'puzzle_identifier'",
                           f"= {pid} but the shard index says {int(self.puzzle_identifiers[j])}")

    def read(self, records, out: list) -> None:
        """Appends the data of the given record numbers (a list of ints) to ``out``."""
        mm, offsets = self._mm, self.offsets
        crc, unpack = fmt.masked_crc32c, struct.unpack_from
        for r in records:
            start, end = int(offsets[r]), int(offsets[r + 1])
            data = mm[start + 12:end - 4]
            if (unpack("<Q", mm, start)[0] != end - start - fmt.RECORD_OVERHEAD
                    or unpack("<I", mm, end - 4)[0] != crc(data)):
                raise DataError(f"{self.path}: record {r} is corrupt (length or CRC32C "
                                "mismatch)")
            out.append(data)


def _parse_fn(tf, meta: DatasetMetadata, with_indices: bool):
    dtype = tf.uint8 if meta.token_dtype == "uint8" else tf.int32
    features = {"inputs": tf.io.FixedLenFeature([], tf.string),
                "labels": tf.io.FixedLenFeature([], tf.string)}
    for k in fmt.INT_FEATURES:
        features[k] = tf.io.FixedLenFeature([], tf.int64)
    L, ignore, blank = meta.seq_len, meta.ignore_label_id, meta.blank_identifier_id

    def parse(serialized, id_offset, dataset, shard):
        ex = tf.io.parse_example(serialized, features)
        inputs = tf.reshape(tf.cast(tf.io.decode_raw(ex["inputs"], dtype), tf.int32), [-1, L])
        labels = tf.reshape(tf.cast(tf.io.decode_raw(ex["labels"], dtype), tf.int32), [-1, L])
        if ignore is not None:
            labels = tf.where(labels == ignore, tf.constant(IGNORE_LABEL, tf.int32), labels)
        ids = tf.cast(ex["puzzle_identifier"], tf.int32)
        ids = tf.where(ids == blank, ids, ids + id_offset)
        out = {"inputs": inputs, "labels": labels, "puzzle_identifiers": ids,
               "dataset": dataset, "_shard": shard, "example_index": ex["example_index"]}
        if with_indices:
            out.update({k: ex[k] for k in fmt.INT_FEATURES[1:]})
        return out

    return parse


def _to_torch(batch: dict) -> dict:
    import torch

    return {k: torch.from_numpy(np.array(v)) for k, v in batch.items()}


_LIVE_PIPELINES: "weakref.WeakSet[_Pipeline]" = weakref.WeakSet()


@atexit.register
def _close_live_pipelines() -> None:
    # A tf.data pipeline whose Python generator is left suspended makes interpreter exit hang;
    # end every live one cleanly first.
    for pipe in list(_LIVE_PIPELINES):
        pipe.close()


class _Pipeline:
    """Runs a generator of (serialized records, identifier offsets, dataset numbers) through
    tf.data: parse in a map, prefetch in TensorFlow's thread. Call :meth:`close` when done."""

    def __init__(self, meta: DatasetMetadata, generator, with_indices: bool, prefetch: int):
        tf = configure_tensorflow()
        self.error: BaseException | None = None
        self._meta, self._with_indices = meta, with_indices
        self._stop = threading.Event()

        def guarded():
            try:
                for item in generator:
                    if self._stop.is_set():
                        return
                    yield item
            except DataError as e:
                self.error = e
                raise

        ds = tf.data.Dataset.from_generator(guarded, output_signature=(
            tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.int32),
            tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.int32)))
        ds = ds.map(_parse_fn(tf, meta, with_indices), num_parallel_calls=1, deterministic=True)
        ds = ds.prefetch(prefetch)
        opts = tf.data.Options()
        opts.threading.private_threadpool_size = max(1, int(os.environ.get("TRM_TF_THREADS", 1)))
        opts.threading.max_intra_op_parallelism = 1
        opts.autotune.enabled = False
        opts.experimental_optimization.apply_default_optimizations = False
        self._it = iter(ds.with_options(opts))
        self._tf = tf
        _LIVE_PIPELINES.add(self)

    def __next__(self) -> dict:
        try:
            out = next(self._it)
        except self._tf.errors.OpError as e:
            self._it = None
            if self.error is not None:
                raise self.error from None
            raise DataError(f"input pipeline failed: {e.message}") from None
        batch = {k: v.numpy() for k, v in out.items()}
        check_batch(self._meta, batch)
        shard = batch.pop("_shard")
        del shard
        if not self._with_indices:
            del batch["dataset"], batch["example_index"]
        return batch

    def close(self) -> None:
        """Stops the generator and drains the prefetch buffer, so no TF thread is left waiting
        on Python."""
        it, self._it = getattr(self, "_it", None), None
        if it is None:
            return
        self._stop.set()
        try:
            for _ in it:
                pass
        except Exception:  # an error while draining does not matter any more
            pass
        _LIVE_PIPELINES.discard(self)


def check_batch(meta: DatasetMetadata, batch: dict) -> None:
    """Bound check of one host batch before it reaches the model (vectorised, microseconds):
    token ids in [0, vocab_size), labels also -100, puzzle ids in [0, num_puzzle_identifiers).

    ``batch`` holds numpy arrays with the internal ``_shard`` / ``dataset`` / ``example_index``
    columns, which name the culprit in the :class:`DataError`.
    """
    V = meta.vocab_size
    checks = (("inputs", batch["inputs"], 0, V, None),
              ("labels", batch["labels"], 0, V, IGNORE_LABEL),
              ("puzzle_identifier", batch["puzzle_identifiers"], 0, meta.num_puzzle_identifiers,
               None))
    for field, x, lo, hi, allowed in checks:
        if not x.size:
            continue
        lo_v, hi_v = x.min(), x.max()
        if hi_v < hi and (lo_v >= lo or (allowed is not None
                                         and not ((x < lo) & (x != allowed)).any())):
            continue
        bad = (x >= hi) | (x < lo)
        if allowed is not None:
            bad &= x != allowed
        row = int(np.argwhere(bad)[0][0])
        value = int(x[bad][0])
        ref = meta.shards[int(batch["_shard"][row])]
        what = "num_puzzle_identifiers" if field == "puzzle_identifier" else "vocab_size"
        raise DataError(
            f"{ref.dataset_path}: shard {ref.info.file} example {int(batch['example_index'][row])}"
            f": field '{field}' holds {value}, outside [0, {what} = {hi}) of "
            f"{fmt.METADATA_FILE}: the records disagree with the metadata; "
            f"{fmt.rebuild_hint(ref.dataset_path, {'builder': {'name': ref.builder or None}})}")


# --------------------------------------------------------------------------------- training


class _Stream:
    """One training stream: some shards of one dataset, with its own seeded epochs."""

    def __init__(self, shards: list[_Shard], seed: int, dataset: int, uid: int):
        self.shards, self.key = shards, [int(seed), int(dataset), int(uid)]
        self.dataset = dataset
        self.id_offset = shards[0].ref.identifier_offset
        self.shard_numbers = np.asarray([s.ref.number for s in shards], np.int32)
        g_start, g_n, p_start, p_size, ex_shard, ex_rec = [], [], [], [], [], []
        n_puz = n_ex = 0
        for k, s in enumerate(shards):
            gi, pi = s.group_indices, s.puzzle_indices
            g_start.append(gi[:-1] + n_puz)
            g_n.append(np.diff(gi))
            p_start.append(pi[:-1] + n_ex)
            p_size.append(np.diff(pi))
            ex_shard.append(np.full(pi[-1], k, np.int32))
            ex_rec.append(np.arange(pi[-1], dtype=np.int64))
            n_puz += len(pi) - 1
            n_ex += int(pi[-1])
        self.group_start, self.group_n = np.concatenate(g_start), np.concatenate(g_n)
        self.puzzle_start, self.puzzle_size = np.concatenate(p_start), np.concatenate(p_size)
        self.ex_shard, self.ex_record = np.concatenate(ex_shard), np.concatenate(ex_rec)
        sizes = np.unique(self.puzzle_size)
        self.const_epoch = int(sizes[0]) * len(self.group_n) if len(sizes) == 1 else None

    def _rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng(self.key + [int(epoch)])

    def _choice(self, rng) -> np.ndarray:
        return self.group_start + rng.integers(0, self.group_n)  # first draw of every epoch

    def epoch_size(self, epoch: int) -> int:
        if self.const_epoch is not None:
            return self.const_epoch
        return int(self.puzzle_size[self._choice(self._rng(epoch))].sum())

    def epoch_plan(self, epoch: int) -> np.ndarray:
        """Stream-local example ids of one epoch, in order."""
        rng = self._rng(epoch)
        chosen = self._choice(rng)[rng.permutation(len(self.group_n))]
        sizes = self.puzzle_size[chosen]
        if self.const_epoch is not None and sizes[0] == 1:
            return self.puzzle_start[chosen]
        owner = np.repeat(np.arange(len(chosen)), sizes)
        within = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        order = np.lexsort((rng.random(len(owner)), owner))  # random order inside each puzzle
        return self.puzzle_start[chosen][owner] + within[order]

    def locate(self, consumed: int) -> tuple[int, int]:
        """(epoch, position in it) after ``consumed`` examples."""
        if self.const_epoch is not None:
            return divmod(consumed, self.const_epoch)
        epoch = 0
        while True:
            n = self.epoch_size(epoch)
            if consumed < n:
                return epoch, consumed
            consumed -= n
            epoch += 1

    def examples(self, consumed: int, rows: int) -> Iterator[np.ndarray]:
        """Yields ``rows`` example ids per step, forever, starting after ``consumed``."""
        epoch, pos = self.locate(consumed)
        plan = self.epoch_plan(epoch)
        while True:
            parts, need = [], rows
            while need:
                if pos == len(plan):
                    epoch, pos = epoch + 1, 0
                    plan = self.epoch_plan(epoch)
                k = min(need, len(plan) - pos)
                parts.append(plan[pos:pos + k])
                pos, need = pos + k, need - k
            yield parts[0] if len(parts) == 1 else np.concatenate(parts)

    def read(self, ids: np.ndarray, out: list) -> None:
        records = self.ex_record[ids].tolist()
        if len(self.shards) == 1:
            self.shards[0].read(records, out)
            return
        for s, r in zip(self.ex_shard[ids].tolist(), records):
            self.shards[s].read((r,), out)


def _choose_streams(shard_counts: list[int], global_batch_size: int,
                    num_streams: int | None) -> int:
    """Shards per stream k (dividing every dataset's shard count) so that V = total / k
    divides the batch; the smallest k (most parallelism) unless ``num_streams`` is given."""
    total = sum(shard_counts)
    options = [k for k in range(1, max(shard_counts) + 1)
               if all(c % k == 0 for c in shard_counts)]
    if num_streams is not None:
        k = total // num_streams if num_streams and total % num_streams == 0 else 0
        if k not in options:
            raise DataError(f"num_streams={num_streams} must be the number of shards "
                            f"{shard_counts} divided by a common divisor (options: "
                            f"{[total // k for k in options]})")
        if global_batch_size % num_streams:
            raise DataError(f"global_batch_size {global_batch_size} is not divisible by "
                            f"num_streams={num_streams}")
        return k
    for k in options:
        if global_batch_size % (total // k) == 0:
            return k
    raise DataError(f"global_batch_size {global_batch_size} is not divisible by any usable "
                    f"number of data streams {[total // k for k in options]} (from the training "
                    f"shard counts {shard_counts}); choose a batch size that is")


class TrainStream:
    """Infinite, reproducible, process-sharded training batches (see the module docstring).

    Iterating yields dicts of int32 torch tensors ``inputs [b, L]``, ``labels [b, L]`` (-100 =
    ignored), ``puzzle_identifiers [b]`` with ``b = global_batch_size / process_count``.
    ``state_dict()`` / ``load_state_dict()`` save and restore the position (the global step);
    the state is the same on every process and valid for any process count.

    Args:
        paths: dataset folder(s) (local or gs://); several are combined (load_metadata).
        global_batch_size: rows of one global batch.
        process_index, process_count: this process and the number of processes.
        seed: seeds the sampling (with the dataset and stream number and the epoch).
        num_streams: the number of streams V; default: the most that divides the batch.
        prefetch: batches prepared ahead in a TensorFlow thread.
        verify_checksums: check each shard's sha256 when it is opened (records are always
            checked against their CRC32C when read).
        cache_dir: where gs:// shards are staged (default $TRM_DATA_CACHE or ~/.cache/trm/data).
        with_indices: also yield ``group_index``, ``puzzle_index``, ``example_index`` and
            ``dataset`` (int64) per row, for tests and debugging.
    """

    STATE_VERSION = 1

    def __init__(self, paths: str | Sequence[str], global_batch_size: int, *,
                 process_index: int = 0, process_count: int = 1, seed: int = 0,
                 num_streams: int | None = None, prefetch: int = 4,
                 verify_checksums: bool = True, cache_dir: str | None = None,
                 split: str = "train", with_indices: bool = False):
        B, P, p = int(global_batch_size), int(process_count), int(process_index)
        if B < 1:
            raise DataError(f"global_batch_size must be >= 1, got {global_batch_size}")
        if P < 1 or not 0 <= p < P:
            raise DataError(f"process_index {process_index} not in [0, {process_count})")
        if B % P:
            raise DataError(f"global_batch_size {B} is not divisible by process_count {P}")
        self.metadata = meta = load_metadata(paths, split)
        counts = [sum(1 for s in meta.shards if s.dataset == d) for d in range(len(meta.paths))]
        for d, c in enumerate(counts):
            if c == 0:
                raise DataError(f"{meta.paths[d]}: split {split!r} has no examples")
        k = _choose_streams(counts, B, num_streams)
        V = sum(counts) // k
        if V % P:
            raise DataError(
                f"process_count {P} does not divide the number of data streams {V} (training "
                f"shards {counts}, batch {B}); rebuild the dataset with --num_shards a multiple "
                f"of {P}, or use a batch size / process count that fits")
        self.global_batch_size, self.local_batch_size = B, B // P
        self.process_index, self.process_count = p, P
        self.seed, self.num_streams, self.rows_per_stream = int(seed), V, B // V
        self._mine = range(p * V // P, (p + 1) * V // P)
        self._k, self._prefetch, self._with_indices = k, prefetch, with_indices
        self._verify, self._cache = verify_checksums, cache_dir
        self._streams: list[_Stream] | None = None
        self.step = 0
        self._pipe: _Pipeline | None = None

    def _open(self) -> list[_Stream]:
        if self._streams is None:
            meta, k = self.metadata, self._k
            groups = []  # (dataset, stream number within dataset, shard refs)
            for d in range(len(meta.paths)):
                refs = [s for s in meta.shards if s.dataset == d]
                groups += [(d, j, refs[j * k:(j + 1) * k]) for j in range(len(refs) // k)]
            self._streams = [
                _Stream([_Shard(r, self._verify, self._cache) for r in refs], self.seed, d, j)
                for v, (d, j, refs) in enumerate(groups) if v in self._mine]
        return self._streams

    def _generator(self, start_step: int):
        streams, r = self._open(), self.rows_per_stream
        its = [s.examples(start_step * r, r) for s in streams]
        offsets = np.concatenate([np.full(r, s.id_offset, np.int32) for s in streams])
        datasets = np.concatenate([np.full(r, s.dataset, np.int32) for s in streams])
        while True:
            out: list[bytes] = []
            numbers = []
            for s, it in zip(streams, its):
                ids = next(it)
                s.read(ids, out)
                numbers.append(s.shard_numbers[s.ex_shard[ids]])
            yield out, offsets, datasets, np.concatenate(numbers)

    def state_dict(self) -> dict:
        """The stream's position: JSON-able, identical on every process."""
        return dict(version=self.STATE_VERSION, step=self.step, seed=self.seed,
                    global_batch_size=self.global_batch_size, num_streams=self.num_streams,
                    paths=list(self.metadata.paths))

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "global_batch_size", "num_streams"):
            if state.get(key) != getattr(self, key):
                raise DataError(f"stream state has {key}={state.get(key)!r} but this stream has "
                                f"{getattr(self, key)!r}: it was saved by a different "
                                "data configuration")
        self.step = int(state["step"])
        self.close()

    def close(self) -> None:
        """Stops the background pipeline (it restarts from ``step`` on the next batch)."""
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self._pipe is None:
            self._pipe = _Pipeline(self.metadata, self._generator(self.step), self._with_indices,
                                   self._prefetch)
        batch = next(self._pipe)
        self.step += 1
        return _to_torch(batch)


# --------------------------------------------------------------------------------- evaluation


class EvalStream:
    """Every example of a split exactly once across all processes, in fixed-size batches.

    Iterating yields ``(set_name, batch, num_valid)`` per batch: ``batch`` holds int32 torch
    tensors ``inputs``, ``labels``, ``puzzle_identifiers`` with exactly ``b =
    global_batch_size / process_count`` rows, padded with pad_id / -100 / blank id, and a bool
    ``mask [b]`` (False = padding); ``num_valid`` = ``mask.sum()`` (local). For each set in
    turn, its examples (in storage order) are split into ``process_count`` contiguous ranges;
    every process yields the same number of batches per set (``len(stream)`` in total), so
    collectives stay in step.
    """

    def __init__(self, paths: str | Sequence[str], global_batch_size: int, *,
                 process_index: int = 0, process_count: int = 1, split: str = "test",
                 prefetch: int = 2, verify_checksums: bool = True, cache_dir: str | None = None,
                 with_indices: bool = False):
        B, P, p = int(global_batch_size), int(process_count), int(process_index)
        if P < 1 or not 0 <= p < P:
            raise DataError(f"process_index {process_index} not in [0, {process_count})")
        if B < 1 or B % P:
            raise DataError(f"global_batch_size {B} is not divisible by process_count {P}")
        self.metadata = load_metadata(paths, split)
        self.local_batch_size, self.process_index, self.process_count = B // P, p, P
        self._prefetch, self._with_indices = prefetch, with_indices
        self._verify, self._cache = verify_checksums, cache_dir
        self._plan = []  # (set name, shard refs, lo, hi, batches)
        for set_name in self.metadata.sets:
            refs = self.metadata.shards_of_set(set_name)
            n = sum(r.info.num_records for r in refs)
            batches = math.ceil(math.ceil(n / P) / self.local_batch_size) if n else 0
            self._plan.append((set_name, refs, p * n // P, (p + 1) * n // P, batches))

    def __len__(self) -> int:
        return sum(x[4] for x in self._plan)

    def _generator(self):
        b = self.local_batch_size
        for set_name, refs, lo, hi, batches in self._plan:
            starts = np.cumsum([0] + [r.info.num_records for r in refs])
            shards: dict[int, _Shard] = {}
            for i in range(batches):
                a, z = min(lo + i * b, hi), min(lo + (i + 1) * b, hi)
                out: list[bytes] = []
                offs, dss, shs = [], [], []
                while a < z:
                    k = int(np.searchsorted(starts, a, side="right") - 1)
                    if k not in shards:
                        shards[k] = _Shard(refs[k], self._verify, self._cache)
                    end = min(z, int(starts[k + 1]))
                    shards[k].read(range(a - starts[k], end - starts[k]), out)
                    offs += [refs[k].identifier_offset] * (end - a)
                    dss += [refs[k].dataset] * (end - a)
                    shs += [refs[k].number] * (end - a)
                    a = end
                yield (out, np.asarray(offs, np.int32), np.asarray(dss, np.int32),
                       np.asarray(shs, np.int32))

    def __iter__(self) -> Iterator[tuple[str, dict, int]]:
        pipe = _Pipeline(self.metadata, self._generator(), self._with_indices, self._prefetch)
        try:
            yield from self._batches(pipe)
        finally:
            pipe.close()

    def _batches(self, pipe):
        import torch

        meta, b = self.metadata, self.local_batch_size
        for set_name, _, _, _, batches in self._plan:
            for _ in range(batches):
                raw = next(pipe)
                n = len(raw["inputs"])
                pad = {"inputs": meta.pad_id, "labels": IGNORE_LABEL,
                       "puzzle_identifiers": meta.blank_identifier_id}
                batch = {}
                for k, v in raw.items():
                    full = np.full((b,) + v.shape[1:], pad.get(k, -1), v.dtype)
                    full[:n] = v
                    batch[k] = torch.from_numpy(full)
                mask = np.zeros(b, bool)
                mask[:n] = True
                batch["mask"] = torch.from_numpy(mask)
                yield set_name, batch, n


def eval_batches(paths: str | Sequence[str], global_batch_size: int, *, process_index: int = 0,
                 process_count: int = 1, **kwargs) -> Iterator[tuple[str, dict, int]]:
    """``iter(EvalStream(...))``: yields ``(set_name, batch, num_valid)``."""
    return iter(EvalStream(paths, global_batch_size, process_index=process_index,
                           process_count=process_count, **kwargs))
