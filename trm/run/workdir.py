"""One run's directory: a :class:`~trm.run.storage.Storage` folder with the run's lease lock.

Layout (docs/DESIGN.md, docs/RUN_STATE.md)::

    run.json  command.json  config.gin  operative_config.gin  hparams.json  LOCK
    checkpoints/step_XXXXXXXXX/{state.pt,COMMIT}   tb/   eval/step_XXXXXXXXX/

The files are owned by the parts of :mod:`trm.run`: :class:`~trm.run.record.RunRecord`
(run.json, command.json, configs, hparams.json, best tracking),
:class:`~trm.run.checkpoints.CheckpointManager` (checkpoints/),
:class:`~trm.run.tensorboard.SummaryWriterSync` (tb/) and :class:`~trm.run.lock.LeaseLock`
(LOCK).
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

from trm.run.lock import LeaseLock
from trm.run.storage import Storage


class Workdir(Storage):
    """A run directory (local path or fsspec URL) and its lease lock.

    ``acquire_lock`` / ``heartbeat`` / ``release_lock`` / ``holds_lock`` delegate to the
    :class:`~trm.run.lock.LeaseLock` of the folder (see there for the arguments).
    """

    def __init__(self, path: "str | os.PathLike", storage_options: Optional[Dict] = None, *,
                 max_retries: int = 5, retry_base_delay_s: float = 1.0) -> None:
        super().__init__(path, storage_options, max_retries=max_retries,
                         retry_base_delay_s=retry_base_delay_s)
        self.lock = LeaseLock(self)

    def acquire_lock(self, owner_info: Optional[Dict[str, Any]] = None, **kwargs: Any
                     ) -> Dict[str, Any]:
        return self.lock.acquire(owner_info, **kwargs)

    def heartbeat(self, force: bool = False) -> None:
        self.lock.heartbeat(force=force)

    def release_lock(self) -> None:
        self.lock.release()

    @property
    def holds_lock(self) -> bool:
        return self.lock.holds


def as_workdir(workdir: "Workdir | str | os.PathLike") -> Workdir:
    """``workdir`` itself if it is a Workdir, else ``Workdir(workdir)``."""
    return workdir if isinstance(workdir, Workdir) else Workdir(workdir)
