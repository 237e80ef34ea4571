"""TensorBoard logging into a workdir, local or remote (``gs://``), with periodic upload.

torch's ``SummaryWriter`` writes scalars as ``simple_value``. Object stores cannot append, so
for a remote workdir the events go to a local folder first and :meth:`SummaryWriterSync.sync`
re-uploads every changed events file whole to ``WORKDIR/tb/``; a preemption loses at most
what was logged since the last sync. Each process writes its own events file (the name holds
time, host and pid), so a resumed run adds a new file and never overwrites the old one.

    tb = SummaryWriterSync(workdir, sync_every_s=60, purge_step=start_step + 1)
    tb.scalars({"train/lm_loss": 1.9, "train/lr": 1e-4}, step)
    tb.flush()        # at log intervals: writes, and uploads if sync_every_s has passed
    tb.close()        # final flush + upload
"""

from __future__ import annotations

import logging
import os
import time
from typing import Mapping, Optional

from torch.utils.tensorboard import SummaryWriter

from trm.workdir import Workdir, as_workdir

log = logging.getLogger(__name__)


class SummaryWriterSync:
    """A TensorBoard writer for ``WORKDIR/<subdir>``; see the module docstring.

    Args:
        workdir: the run's Workdir (or path / URL).
        subdir: the events folder inside the workdir.
        sync_every_s: for remote workdirs, the least time between uploads done by
            :meth:`flush` (:meth:`sync` and :meth:`close` always upload).
        purge_step: when resuming from step ``S`` pass ``S + 1``: TensorBoard then hides the
            previous run's events at steps ``>= S + 1`` (they are logged again).
        rotate_bytes: remote workdirs start a new events file once the current one exceeds
            this size, so each sync re-uploads at most this much of old data.
    """

    def __init__(self, workdir: "Workdir | str", subdir: str = "tb", sync_every_s: float = 60.0,
                 purge_step: Optional[int] = None, rotate_bytes: int = 16 << 20) -> None:
        self.workdir = as_workdir(workdir)
        self.subdir = subdir
        self.sync_every_s = sync_every_s
        self.rotate_bytes = rotate_bytes
        self.local_dir = self.workdir.local_mirror(subdir)
        self._writer: Optional[SummaryWriter] = SummaryWriter(
            log_dir=self.local_dir, purge_step=purge_step, flush_secs=3600, max_queue=1000)
        self._last_sync = time.monotonic()
        self._closed = False

    @property
    def remote(self) -> bool:
        return not self.workdir.is_local

    @property
    def writer(self) -> SummaryWriter:
        """The underlying ``torch.utils.tensorboard.SummaryWriter`` (for histograms etc.)."""
        if self._writer is None:
            raise RuntimeError("SummaryWriterSync is closed")
        return self._writer

    def scalar(self, tag: str, value, step: int) -> None:
        """Logs one scalar (``value``: a number or a 1-element tensor; read on the host)."""
        self.writer.add_scalar(tag, float(value), global_step=int(step))

    def scalars(self, values: Mapping[str, object], step: int, prefix: str = "") -> None:
        """Logs ``{tag: value}`` at ``step`` (``prefix`` is prepended to every tag)."""
        for tag, value in values.items():
            self.scalar(f"{prefix}{tag}", value, step)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        """Logs a text summary (markdown; wrap configs in a code block to keep them verbatim)."""
        self.writer.add_text(tag, text, global_step=int(step))

    def flush(self) -> None:
        """Writes pending events to the events file; uploads if ``sync_every_s`` has passed."""
        self.writer.flush()
        if self.remote and time.monotonic() - self._last_sync >= self.sync_every_s:
            self.sync()

    def sync(self) -> bool:
        """Flushes and uploads changed events files now (remote workdirs; else only flushes).

        Upload errors (after retries) are logged, not raised: the next sync tries again.
        Returns whether everything is uploaded.
        """
        if self._writer is not None:
            self._writer.flush()
        if not self.remote:
            return True
        ok = True
        try:
            uploaded = self.workdir.sync_mirror(self.subdir)
            if uploaded:
                log.debug("Uploaded %s to %s", uploaded, self.workdir.url(self.subdir))
        except Exception as exc:  # noqa: BLE001 (logging must not kill training)
            ok = False
            log.warning("Could not upload TensorBoard events to %s (will retry at the next "
                        "sync): %s: %s", self.workdir.url(self.subdir), type(exc).__name__, exc)
        self._last_sync = time.monotonic()
        if ok:
            self._maybe_rotate()
        return ok

    def _maybe_rotate(self) -> None:
        """Starts a new events file once the current one is big (it was just uploaded)."""
        writer = self._writer
        if writer is None or self.rotate_bytes <= 0:
            return
        try:
            path = writer.file_writer.event_writer._file_name  # pylint: disable=protected-access
            if os.path.getsize(path) < self.rotate_bytes:
                return
        except (AttributeError, OSError):
            return
        writer.close()
        self.workdir.sync_mirror(self.subdir)
        self._writer = SummaryWriter(log_dir=self.local_dir, flush_secs=3600, max_queue=1000)

    def close(self) -> None:
        """Flushes, closes the events file, uploads it (remote) and removes the local copy.

        If the final upload fails, the local copy is kept and its folder logged.
        """
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.remote:
            if self.sync():
                self.workdir.cleanup_mirror(self.subdir)
            else:
                log.error("TensorBoard events not fully uploaded to %s; the local copy is in %s",
                          self.workdir.url(self.subdir), self.local_dir)

    def __enter__(self) -> "SummaryWriterSync":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
