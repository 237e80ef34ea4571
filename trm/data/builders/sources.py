"""Reading source files for the CSV builders: local, http(s)/gs:// (fsspec) or Hugging Face."""

from __future__ import annotations

import csv
import io
import os
import re
import warnings
from typing import Callable, Hashable, Sequence

from trm.data import fsutil
from trm.data.format import DataError, DataWarning

CSV_COLUMNS = ("source", "question", "answer", "rating")


def resolve_source_file(source: str, filename: str) -> str:
    """Returns a path/URL for ``filename`` inside ``source`` (downloading from HF if needed)."""
    if "://" in source:
        return source.rstrip("/") + "/" + filename
    if os.path.isdir(source):
        return os.path.join(source, filename)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", source) and not os.path.exists(source):
        try:
            from huggingface_hub import hf_hub_download
        except ImportError:
            raise DataError(f"source {source!r} is not a local folder; reading it as a Hugging "
                            "Face dataset id needs `pip install huggingface_hub` (and network)") \
                from None
        try:
            return hf_hub_download(repo_id=source, filename=filename, repo_type="dataset")
        except Exception as e:  # network / missing repo: say which file
            raise DataError(f"could not download {filename} of Hugging Face dataset "
                            f"{source!r}: {e}") from e
    raise DataError(f"source {source!r}: no such folder (expected a folder, an http(s)/gs:// "
                    "URL prefix or a Hugging Face dataset id)")


def read_text(path: str) -> str:
    try:
        if "://" in path:
            import fsspec

            if path.startswith(("gs://", "gcs://")):
                return fsutil.read_bytes(path).decode("utf-8-sig")
            with fsspec.open(path, "rb") as f:
                return f.read().decode("utf-8-sig")
        with open(path, "rb") as f:
            return f.read().decode("utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None


def read_puzzle_csv(path: str) -> tuple[list[str], list[str], list[float], list[int]]:
    """Reads a ``source,question,answer,rating`` CSV: (questions, answers, ratings, line numbers).

    Line numbers are 1-based physical lines of the file, the header being line 1; a row whose
    quoted fields span several lines is numbered by its first line. Raises
    :class:`DataError` naming the file and line for a malformed header or row.
    """
    text = read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)

    def next_row():
        start = reader.line_num + 1  # the row starts on the line after the previous row
        try:
            return next(reader), start
        except csv.Error as e:
            raise DataError(f"{path}: line {start}: malformed CSV ({e})") from None

    try:
        header, _ = next_row()
    except StopIteration:
        raise DataError(f"{path}: empty file (expected header {','.join(CSV_COLUMNS)})") from None
    header = [h.strip() for h in header]
    missing = [c for c in ("question", "answer") if c not in header]
    if missing:
        raise DataError(f"{path}: line 1: header {header} lacks column(s) {missing} "
                        f"(expected {','.join(CSV_COLUMNS)})")
    qi, ai = header.index("question"), header.index("answer")
    ri = header.index("rating") if "rating" in header else None
    qs, ans, ratings, lines = [], [], [], []
    while True:
        try:
            row, line = next_row()
        except StopIteration:
            break
        if not row:
            continue
        if len(row) != len(header):
            raise DataError(f"{path}: line {line}: {len(row)} fields, header has {len(header)}")
        rating = 0.0
        if ri is not None:
            try:
                rating = float(row[ri])
            except ValueError:
                raise DataError(f"{path}: line {line}: rating {row[ri]!r} is not a number") \
                    from None
        qs.append(row[qi])
        ans.append(row[ai])
        ratings.append(rating)
        lines.append(line)
    if not qs:
        raise DataError(f"{path}: no data rows")
    return qs, ans, ratings, lines


# --------------------------------------------------------------------------------------------
# Duplicates inside a split and test items that also appear in train (up to the builder's
# augmentations). Used by sudoku_csv, maze_csv and arc; see docs/DATA.md.


def find_overlaps(keys: dict[str, Sequence[Hashable]],
                  equivalent: Callable[[str, int, str, int], bool] | None = None):
    """Duplicates per split and test items equal to a train item.

    ``keys[split][i]`` is a key of item ``i`` that is equal for equivalent items (a canonical
    form, or an invariant); with an invariant, ``equivalent(split_a, i, split_b, j)`` decides
    items with equal keys exactly. Returns ``(dups, leaks)``: ``dups[split]`` lists
    ``(i, j)`` = item i duplicates the earlier item j; ``leaks`` lists ``(test i, train j)``.
    """
    classes, buckets = {}, {}
    dups: dict[str, list] = {}
    for split, ks in keys.items():
        bucket: dict = {}
        cls, d = [], []
        for i, k in enumerate(ks):
            found = next((j for j in bucket.get(k, ())
                          if equivalent is None or equivalent(split, j, split, i)), None)
            if found is None:
                bucket.setdefault(k, []).append(i)
                cls.append(i)
            else:
                d.append((i, found))
                cls.append(found)
        classes[split], buckets[split], dups[split] = cls, bucket, d
    leaks = []
    if "train" in keys and "test" in keys:
        of_rep: dict = {}
        for i, k in enumerate(keys["test"]):
            r = classes["test"][i]
            if r not in of_rep:
                of_rep[r] = next((j for j in buckets["train"].get(k, ())
                                  if equivalent is None or equivalent("train", j, "test", r)),
                                 None)
            if of_rep[r] is not None:
                leaks.append((i, of_rep[r]))
    return dups, leaks


def report_overlaps(builder: str, dups: dict[str, list], leaks: list,
                    name: Callable[[str, int], str], up_to: str, allow: bool,
                    unit: str = "puzzles") -> dict:
    """Warns about duplicates; fails on test items found in train unless ``allow`` (then warns).

    ``name(split, i)`` names an item (file and line, task and pair). Returns the counts for the
    dataset's metadata.
    """
    def examples(pairs, a, b):
        shown = "; ".join(f"{name(a, i)} = {name(b, j)}" for i, j in pairs[:3])
        return shown + ("; ..." if len(pairs) > 3 else "")

    for split, d in dups.items():
        if d:
            warnings.warn(f"{builder}: {len(d)} {split} {unit} duplicate earlier ones of the same "
                          f"split {up_to} ({examples(d, split, split)})", DataWarning,
                          stacklevel=3)
    if leaks:
        msg = (f"{builder}: {len(leaks)} test {unit} also appear in train {up_to} "
               f"({examples(leaks, 'test', 'train')})")
        if not allow:
            raise DataError(f"{msg}: test results would be inflated; remove them from the "
                            "source, or pass --allow_overlap=true to build anyway (they are then "
                            "counted in metadata.json)")
        warnings.warn(msg + " (allowed by --allow_overlap)", DataWarning, stacklevel=3)
    return dict(up_to=up_to, duplicates={k: len(v) for k, v in dups.items()},
                test_in_train=len(leaks))
