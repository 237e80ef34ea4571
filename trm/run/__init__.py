"""Run state: everything a training run keeps in its workdir (local path or ``gs://``).

| module | owns |
|---|---|
| :mod:`trm.run.storage` | file access on any fsspec URL: atomic whole-file writes, retries (shared with :mod:`trm.data`) |
| :mod:`trm.run.lock` | the workdir's lease lock (``LOCK``) and its heartbeat thread |
| :mod:`trm.run.workdir` | :class:`Workdir`: a run folder = storage + lock |
| :mod:`trm.run.record` | :class:`RunRecord`: run.json, command.json, config.gin, operative config, hparams.json, best tracking, eval metrics files |
| :mod:`trm.run.checkpoints` | :class:`CheckpointManager`: atomic commits, async save, retention, restore, RNG state, state_dict export |
| :mod:`trm.run.tensorboard` | :class:`SummaryWriterSync`: TensorBoard event files (no TensorFlow), mirrored to remote workdirs |
| :mod:`trm.run.guards` | one-line errors for a workdir that is a file and for failed writes |
| :mod:`trm.run.session` | :class:`RunSession`: one training run's lifecycle over all of the above (lock, stop signal, config check, restore, records, TensorBoard, progress, summary, close) |

No module here imports model code: a training state's checks live in :mod:`trm.train_state`
and reach the session as a callable.

Names are imported lazily, so ``import trm.run.storage`` stays cheap (no torch).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Storage": "trm.run.storage", "retry": "trm.run.storage", "is_transient": "trm.run.storage",
    "LeaseLock": "trm.run.lock", "WorkdirLockedError": "trm.run.lock",
    "LockLostError": "trm.run.lock",
    "Workdir": "trm.run.workdir", "as_workdir": "trm.run.workdir",
    "RunRecord": "trm.run.record", "ConfigMismatchError": "trm.run.record",
    "CheckpointManager": "trm.run.checkpoints", "CheckpointError": "trm.run.checkpoints",
    "export_state_dict": "trm.run.checkpoints", "load_state_dict_file": "trm.run.checkpoints",
    "SummaryWriterSync": "trm.run.tensorboard",
    "RunSession": "trm.run.session",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'trm.run' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
