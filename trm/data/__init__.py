"""trm's data layer: dataset builders, the TFRecord format and the input pipeline.

Importing ``trm.data`` is light (no TensorFlow); TensorFlow is imported by the pipeline only
when a stream is created. Public API::

    build_dataset(builder, output_dir, **builder_args) -> str
    ensure_dataset(output_dir, builder, **builder_args) -> str
    load_metadata(path_or_paths, split="train") -> DatasetMetadata
    TrainStream(paths, global_batch_size, *, process_index=0, process_count=1, seed=0)
    EvalStream(paths, global_batch_size, *, process_index=0, process_count=1, split="test")
    eval_batches(...)  -> iterator of (set_name, batch, num_valid)
    DataError

See docs/DATA.md.
"""

from __future__ import annotations

import importlib

from trm.data.format import IGNORE_LABEL, DataError

_LAZY = {
    "build_dataset": "trm.data.builders",
    "ensure_dataset": "trm.data.builders",
    "BUILDERS": "trm.data.builders",
    "load_metadata": "trm.data.pipeline",
    "DatasetMetadata": "trm.data.pipeline",
    "TrainStream": "trm.data.pipeline",
    "EvalStream": "trm.data.pipeline",
    "eval_batches": "trm.data.pipeline",
    "read_dataset_json": "trm.data.pipeline",
}

__all__ = ["DataError", "IGNORE_LABEL", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'trm.data' has no attribute {name!r}")
