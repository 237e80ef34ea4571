"""Input-pipeline throughput: ``python -m trm.data.bench DIR [--batch_size=256] [--seconds=5]``.

Prints examples/s of :class:`trm.data.TrainStream` (read + CRC check + parse + batch +
to-torch, group-wise sampling) and of a plain numpy memmap loader on the same data (random
rows gathered from ``.npy`` memmaps, cast to int32, ``torch.from_numpy``), the reference's
way of loading.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np


def _rate(make_batch, batch_size: int, seconds: float) -> float:
    for _ in range(3):  # warm up
        make_batch()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        make_batch()
        n += 1
    return n * batch_size / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trm.data.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--split", default="train")
    parser.add_argument("--torch_threads", type=int, default=1)
    ns = parser.parse_args(argv)

    import torch

    torch.set_num_threads(ns.torch_threads)
    from trm import progress
    from trm.data.inspect import iter_examples
    from trm.data.pipeline import TrainStream

    stream = TrainStream(ns.dir, ns.batch_size, seed=0, split=ns.split)
    meta = stream.metadata
    pipe_rate = _rate(lambda: next(stream), ns.batch_size, ns.seconds)
    stream.close()

    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        with progress.phase(f"converting {ns.dir} ({ns.split}) to .npy for the numpy loader",
                            meta.total_examples, unit="examples") as bar:
            for row in iter_examples(ns.dir, ns.split):
                rows.append(row)
                bar.update(len(rows))
        for name in ("inputs", "labels"):
            np.save(os.path.join(tmp, f"{name}.npy"),
                    np.stack([r[name] for r in rows]).astype(np.uint8))
        np.save(os.path.join(tmp, "ids.npy"),
                np.asarray([r["puzzle_identifier"] for r in rows], np.int32))
        inputs = np.load(os.path.join(tmp, "inputs.npy"), mmap_mode="r")
        labels = np.load(os.path.join(tmp, "labels.npy"), mmap_mode="r")
        ids = np.load(os.path.join(tmp, "ids.npy"))
        rng = np.random.default_rng(0)
        ignore = meta.ignore_label_id

        def numpy_batch():
            idx = np.sort(rng.integers(0, len(ids), ns.batch_size))
            lab = labels[idx].astype(np.int32)
            if ignore is not None:
                lab[lab == ignore] = -100
            return {"inputs": torch.from_numpy(inputs[idx].astype(np.int32)),
                    "labels": torch.from_numpy(lab), "puzzle_identifiers": torch.from_numpy(ids[idx])}

        np_rate = _rate(numpy_batch, ns.batch_size, ns.seconds)
    print(f"dataset {ns.dir} split {ns.split}: {meta.total_examples} examples, seq_len "
          f"{meta.seq_len}, batch {ns.batch_size}, {stream.num_streams} streams, torch threads "
          f"{ns.torch_threads}, TF threads {os.environ.get('TRM_TF_THREADS', '1')}")
    print(f"  trm pipeline (TrainStream): {pipe_rate:12,.0f} examples/s")
    print(f"  numpy memmap loader:        {np_rate:12,.0f} examples/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
