"""Reading source files for the CSV builders: local, http(s)/gs:// (fsspec) or Hugging Face."""

from __future__ import annotations

import csv
import io
import os
import re

from trm.data import fsutil
from trm.data.format import DataError

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
                return fsutil.read_bytes(path).decode("utf-8")
            with fsspec.open(path, "rb") as f:
                return f.read().decode("utf-8")
        with open(path, "rb") as f:
            return f.read().decode("utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None


def read_puzzle_csv(path: str) -> tuple[list[str], list[str], list[float], list[int]]:
    """Reads a ``source,question,answer,rating`` CSV: (questions, answers, ratings, line numbers).

    Raises :class:`DataError` naming the file and line for a malformed header or row.
    """
    text = read_text(path)
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
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
    for row in reader:
        line = reader.line_num
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
