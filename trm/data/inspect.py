"""Prints a dataset's metadata and decoded examples.

    python -m trm.data.inspect DIR [--split=train] [--limit=N] [--format=text|jsonl]

Records are read with ``tf.data.TFRecordDataset`` + ``tf.io.parse_single_example`` (what any
TensorFlow user would do), in storage order. ``jsonl`` prints one JSON object per line: first
``{"metadata": ...}``, then per example its inputs, labels, puzzle identifier and name, group,
puzzle and example index, and a rendering of the grid where meaningful.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from trm.data import fsutil
from trm.data.format import DataError, token_dtype


def render(tokens: np.ndarray, grid: dict | None) -> list[str] | None:
    """Human-readable rows of a token grid (Sudoku digits, maze characters, ARC colours)."""
    if not grid:
        return None
    kind = grid.get("kind")
    if kind == "arc":
        from trm.data.grids import arc_crop

        return ["".join(str(v) for v in row) for row in arc_crop(tokens)]
    rows, cols = grid["rows"], grid["cols"]
    t = np.asarray(tokens).reshape(rows, cols)
    if kind == "sudoku":
        chars = ".123456789ABCDEFG"
        return ["".join(chars[v - 1] if v >= 1 else "?" for v in row) for row in t]
    if kind == "maze":
        cs = grid.get("charset", "# SGo")
        return ["".join(cs[v - 1] if 1 <= v <= len(cs) else "?" for v in row) for row in t]
    return None


def iter_examples(path: str, split: str):
    """Yields dicts of decoded examples of ``split`` in storage order (via tf.data)."""
    from trm.data.pipeline import _Shard, configure_tensorflow, load_metadata

    tf = configure_tensorflow()
    meta = load_metadata(path, split)
    dt = token_dtype(meta.token_dtype)
    spec = {"inputs": tf.io.FixedLenFeature([], tf.string),
            "labels": tf.io.FixedLenFeature([], tf.string)}
    for k in ("puzzle_identifier", "group_index", "puzzle_index", "example_index"):
        spec[k] = tf.io.FixedLenFeature([], tf.int64)
    for ref in meta.shards:
        local = fsutil.stage(ref.path, ref.info.sha256, ref.info.num_bytes)
        _Shard(ref, verify=True, cache=None)  # checks the checksums and the index
        for rec in tf.data.TFRecordDataset(local):
            ex = tf.io.parse_single_example(rec, spec)
            yield dict(
                set=ref.set_name,
                inputs=np.frombuffer(ex["inputs"].numpy(), dt).astype(int),
                labels=np.frombuffer(ex["labels"].numpy(), dt).astype(int),
                **{k: int(ex[k].numpy()) for k in spec if k not in ("inputs", "labels")})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trm.data.inspect", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir")
    parser.add_argument("--split", default="train")
    parser.add_argument("--limit", type=int, default=5, help="examples to print (-1 = all)")
    parser.add_argument("--format", choices=("text", "jsonl"), default="text")
    ns = parser.parse_args(argv)
    try:
        from trm.data.pipeline import load_metadata

        meta = load_metadata(ns.dir, ns.split)
        raw = meta.raw[0]
        grid = raw.get("grid")
        summary = {k: raw[k] for k in ("builder", "created", "seq_len", "vocab_size", "pad_id",
                                        "ignore_label_id", "blank_identifier_id",
                                        "num_puzzle_identifiers", "token_dtype")}
        summary["split"] = {k: v for k, v in raw["splits"][ns.split].items() if k != "shards"}
        summary["split"]["num_shards"] = len(raw["splits"][ns.split]["shards"])
        summary["examples_per_epoch"] = meta.examples_per_epoch
        if ns.format == "jsonl":
            print(json.dumps({"metadata": summary}))
        else:
            print(json.dumps(summary, indent=1))
        for n, ex in enumerate(iter_examples(ns.dir, ns.split)):
            if 0 <= ns.limit <= n:
                break
            obj = dict(set=ex["set"], inputs=ex["inputs"].tolist(), labels=ex["labels"].tolist(),
                       puzzle_identifier=ex["puzzle_identifier"],
                       puzzle_name=meta.identifiers[ex["puzzle_identifier"]],
                       group=ex["group_index"], puzzle=ex["puzzle_index"],
                       example=ex["example_index"])
            r_in, r_out = render(ex["inputs"], grid), render(ex["labels"], grid)
            if r_in is not None:
                obj["render"] = {"inputs": r_in, "labels": r_out}
            if ns.format == "jsonl":
                print(json.dumps(obj))
            else:
                print(f"\n# example {obj['example']} (set {obj['set']}, group {obj['group']}, "
                      f"puzzle {obj['puzzle']}, identifier {obj['puzzle_identifier']} "
                      f"{obj['puzzle_name']!r})")
                if r_in is not None:
                    width = max((len(x) for x in r_in), default=0)
                    for i in range(max(len(r_in), len(r_out))):
                        a = r_in[i] if i < len(r_in) else ""
                        b = r_out[i] if i < len(r_out) else ""
                        print(f"  {a:<{width}}   {b}")
                else:
                    print("  inputs:", obj["inputs"])
                    print("  labels:", obj["labels"])
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
