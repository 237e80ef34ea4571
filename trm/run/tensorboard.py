"""TensorBoard logging into a workdir, local or remote (``gs://``), with periodic upload.

Events are written by :class:`EventFileWriter` -- the TensorBoard event file format (TFRecord
framing of ``Event`` protocol buffers, scalars as ``simple_value``) -- written here with the
``tensorboard`` package's protos only, so a training process never imports TensorFlow (torch's
``SummaryWriter`` imports it when it is installed, before the data layer can configure it).

Object stores cannot append, so for a remote workdir the events go to a local folder first and
:meth:`SummaryWriterSync.sync` re-uploads every changed events file whole to ``WORKDIR/tb/``;
a preemption loses at most what was logged since the last sync. Uploads run on a background
thread (:class:`~trm.run.storage.BackgroundWriter`): a storage outage never blocks or stops
training, the upload is retried until it works, and :meth:`SummaryWriterSync.close` waits for
the final upload (up to the retry budget, or the exit grace window of a stopping process). Each process writes its own
events file (the name holds time, host and pid), so a resumed run adds a new file and never
overwrites the old one.

    tb = SummaryWriterSync(workdir, sync_every_s=60, purge_step=start_step + 1)
    tb.scalars({"train/lm_loss": 1.9, "train/lr": 1e-4}, step)
    tb.flush()        # at log intervals: writes, and uploads if sync_every_s has passed
    tb.close()        # final flush + upload
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import struct
import tempfile
import time
from typing import Dict, Iterable, List, Mapping, Optional

from trm.run.storage import BackgroundWriter, Storage, retry_budget_s
from trm.run.workdir import as_workdir

log = logging.getLogger(__name__)


# -- the event file format -------------------------------------------------------------------
def _crc32c_table() -> List[int]:
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE: Optional[List[int]] = None


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data`` (google_crc32c when installed, else pure Python)."""
    try:
        import google_crc32c
        return int(google_crc32c.value(bytes(data)))
    except ImportError:
        pass
    global _TABLE
    if _TABLE is None:
        _TABLE = _crc32c_table()
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord_frame(payload: bytes) -> bytes:
    """One TFRecord: length, masked CRC of the length, payload, masked CRC of the payload."""
    length = struct.pack("<Q", len(payload))
    return (length + struct.pack("<I", _masked_crc(length)) + payload
            + struct.pack("<I", _masked_crc(payload)))


class EventFileWriter:
    """Appends TensorBoard events to a new file ``events.out.tfevents.<time>.<host>.<pid>.<n>``
    in a local folder. ``purge_step``: TensorBoard then hides earlier files' events at steps
    ``>= purge_step`` (a resumed run logs them again)."""

    _count = 0

    def __init__(self, folder: str, purge_step: Optional[int] = None) -> None:
        from tensorboard.compat.proto import event_pb2
        self._event_pb2 = event_pb2
        os.makedirs(folder, exist_ok=True)
        EventFileWriter._count += 1
        name = (f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}."
                f"{os.getpid()}.{EventFileWriter._count}")
        self.path = os.path.join(folder, name)
        self._file = open(self.path, "ab")
        self._pending: List[bytes] = []
        self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2",
                                    step=purge_step or 0))
        if purge_step is not None:
            self._write(event_pb2.Event(
                wall_time=time.time(), step=int(purge_step),
                session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))
        self.flush()

    def _write(self, event) -> None:
        self._pending.append(tfrecord_frame(event.SerializeToString()))

    def add_scalar(self, tag: str, value: float, step: int,
                   wall_time: Optional[float] = None) -> None:
        """A scalar (``simple_value``); ``wall_time`` defaults to now."""
        from tensorboard.compat.proto import summary_pb2
        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(
            tag=tag, simple_value=float(value))])
        self._write(self._event_pb2.Event(
            wall_time=time.time() if wall_time is None else float(wall_time), step=int(step),
            summary=summary))

    def add_hparams(self, hparams: Mapping[str, object], group_name: str,
                    start_time_s: Optional[float] = None) -> None:
        """The HParams plugin's session start (tag ``_hparams_/session_start_info``): this
        folder is one trial with these hyperparameters (numbers, strings, booleans; None and
        other values are written as text). TensorBoard's HParams dashboard lists every such
        folder under its logdir, with the final value of each of its scalar tags as metrics."""
        from tensorboard.compat.proto import summary_pb2
        from tensorboard.plugins.hparams import (
            metadata, plugin_data_pb2)
        start = time.time() if start_time_s is None else float(start_time_s)
        info = plugin_data_pb2.SessionStartInfo(group_name=group_name, start_time_secs=start)
        for name, value in sorted(hparams.items()):
            if isinstance(value, bool):
                info.hparams[name].bool_value = value
            elif isinstance(value, (int, float)):
                info.hparams[name].number_value = float(value)
            else:
                info.hparams[name].string_value = "None" if value is None else str(value)
        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(
            tag=metadata.SESSION_START_INFO_TAG, tensor=metadata.NULL_TENSOR,
            metadata=metadata.create_summary_metadata(
                plugin_data_pb2.HParamsPluginData(session_start_info=info)))])
        self._write(self._event_pb2.Event(wall_time=start, step=0, summary=summary))

    def add_text(self, tag: str, text: str, step: int) -> None:
        """A text summary (the text plugin's format: a string tensor, tag ``<tag>/text_summary``)."""
        from tensorboard.compat.proto import (
            summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2)
        tensor = tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING, string_val=[text.encode("utf-8")],
            tensor_shape=tensor_shape_pb2.TensorShapeProto(
                dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)]))
        metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="text"))
        summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(
            tag=f"{tag}/text_summary", metadata=metadata, tensor=tensor)])
        self._write(self._event_pb2.Event(wall_time=time.time(), step=int(step),
                                          summary=summary))

    def flush(self) -> None:
        if self._file.closed:
            return
        if self._pending:
            self._file.write(b"".join(self._pending))
            self._pending.clear()
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self.flush()
            self._file.close()


# -- local mirror of a remote folder ------------------------------------------------------------
class LocalMirror:
    """A local folder for files that must be written locally (event files), uploaded whole to
    ``storage/subdir`` by :meth:`sync`. For a local ``storage`` it is ``storage/subdir`` itself
    (nothing to sync); for a remote one a new temporary folder of this process, so a resumed
    run never overwrites the previous process's files. Uploads go through a
    :class:`~trm.run.storage.BackgroundWriter` (retried through outages, latest content wins)."""

    def __init__(self, storage: Storage, subdir: str) -> None:
        self.storage = storage
        self.subdir = subdir.strip("/")
        if storage.is_local:
            self._base = None
            self.path = storage.confined(self.subdir)   # never a link out of the workdir
            self.uploads: Optional[BackgroundWriter] = None
        else:
            self._base = tempfile.mkdtemp(prefix="trm-mirror-")
            self.path = os.path.join(self._base, *self.subdir.split("/"))
            self.uploads = BackgroundWriter(storage, name="trm-mirror-upload")
        os.makedirs(self.path, exist_ok=True)
        self._synced: Dict[str, tuple] = {}
        self._complete: Dict[str, int] = {}

    def _loader(self, rel: str):
        path = os.path.join(self.path, rel)

        def load() -> bytes:
            # Up to the size seen at the last sync(): the writer only appends whole records
            # and flushes before every sync, so the upload never ends inside a record.
            with open(path, "rb") as f:
                return f.read(self._complete[rel])
        return load

    def sync(self, wait: bool = True, timeout: Optional[float] = None) -> List[str]:
        """Queues new or changed files for upload; returns their relative names (none when
        local). With ``wait`` it returns once they are uploaded, waiting through an outage for
        up to ``timeout`` (default: the retry budget) and raising the storage error after."""
        if self.storage.is_local:
            return []
        queued = []
        for rel in _walk_files(self.path):
            st = os.stat(os.path.join(self.path, rel))
            key = (st.st_size, st.st_mtime_ns)
            if self._synced.get(rel) == key:
                continue
            self._complete[rel] = st.st_size
            self.uploads.put(f"{self.subdir}/{rel}", self._loader(rel))
            self._synced[rel] = key
            queued.append(rel)
        if wait:
            self.wait(retry_budget_s() if timeout is None else timeout, raise_errors=True)
        return queued

    def wait(self, timeout: Optional[float] = None, raise_errors: bool = False) -> bool:
        """Waits (at most ``timeout``) for the queued uploads; True once all are uploaded."""
        return True if self.uploads is None else self.uploads.flush(timeout, raise_errors)

    def cleanup(self) -> None:
        """Deletes a remote storage's temporary folder (after a final sync)."""
        if self.uploads is not None:
            self.uploads.close(timeout=0)
        if self._base is not None:
            shutil.rmtree(self._base, ignore_errors=True)
            self._base = None


def _walk_files(root: str) -> Iterable[str]:
    for dirpath, _, files in os.walk(root):
        for name in sorted(files):
            yield os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/")


class SummaryWriterSync:
    """A TensorBoard writer for ``WORKDIR/<subdir>``; see the module docstring.

    Args:
        workdir: the run's Workdir / Storage (or path / URL).
        subdir: the events folder inside the workdir.
        sync_every_s: for remote workdirs, the least time between uploads done by
            :meth:`flush` (:meth:`sync` and :meth:`close` always upload).
        purge_step: when resuming from step ``S`` pass ``S + 1``: TensorBoard then hides the
            previous run's events at steps ``>= S + 1`` (they are logged again).
        rotate_bytes: remote workdirs start a new events file once the current one exceeds
            this size, so each sync re-uploads at most this much of old data.
        sync_wait_s: how long :meth:`flush` waits for its upload while the storage is healthy
            (so a healthy upload is done when flush returns); during an outage it does not
            wait at all: the upload continues in the background.
    """

    def __init__(self, workdir: "Storage | str", subdir: str = "tb", sync_every_s: float = 60.0,
                 purge_step: Optional[int] = None, rotate_bytes: int = 16 << 20,
                 sync_wait_s: float = 2.0) -> None:
        self.sync_wait_s = sync_wait_s
        self.workdir = workdir if isinstance(workdir, Storage) else as_workdir(workdir)
        self.subdir = subdir
        self.sync_every_s = sync_every_s
        self.rotate_bytes = rotate_bytes
        self.mirror = LocalMirror(self.workdir, subdir)
        self.local_dir = self.mirror.path
        self._writer: Optional[EventFileWriter] = EventFileWriter(self.local_dir,
                                                                  purge_step=purge_step)
        self._last_sync = time.monotonic()
        self._closed = False

    @property
    def remote(self) -> bool:
        return not self.workdir.is_local

    @property
    def writer(self) -> "EventFileWriter":
        """The current events file writer."""
        if self._writer is None:
            raise RuntimeError("SummaryWriterSync is closed")
        return self._writer

    def scalar(self, tag: str, value, step: int) -> None:
        """Logs one scalar (``value``: a number or a 1-element tensor; read on the host)."""
        self.writer.add_scalar(tag, float(value), int(step))

    def scalars(self, values: Mapping[str, object], step: int, prefix: str = "") -> None:
        """Logs ``{tag: value}`` at ``step`` (``prefix`` is prepended to every tag)."""
        for tag, value in values.items():
            self.scalar(f"{prefix}{tag}", value, step)

    def hparams(self, values: Mapping[str, object], group_name: str,
                start_time_s: Optional[float] = None) -> None:
        """Logs the run's hyperparameters for TensorBoard's HParams dashboard (see
        :meth:`EventFileWriter.add_hparams`)."""
        self.writer.add_hparams(values, group_name, start_time_s)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        """Logs a text summary (markdown; wrap configs in a code block to keep them verbatim)."""
        self.writer.add_text(tag, text, int(step))

    def flush(self) -> None:
        """Writes pending events to the events file; uploads if ``sync_every_s`` has passed.

        Never blocks for long and never raises for storage: the upload runs in the background;
        while the storage is healthy flush waits up to ``sync_wait_s`` for it to finish."""
        self.writer.flush()
        if self.remote and time.monotonic() - self._last_sync >= self.sync_every_s:
            healthy = self.mirror.uploads.healthy and not self.mirror.uploads.pending()
            self._queue()
            if healthy:
                self.mirror.wait(self.sync_wait_s)

    def _queue(self) -> None:
        """Flushes the events file and queues every changed file for upload (no waiting)."""
        if self._writer is not None:
            self._writer.flush()
        self._last_sync = time.monotonic()
        self.mirror.sync(wait=False)
        self._maybe_rotate()

    def sync(self, timeout: Optional[float] = None) -> bool:
        """Flushes and uploads changed events files now (remote workdirs; else only flushes).

        Waits for the upload at most ``timeout`` (default: the retry budget; the exit grace
        window of a stopping process limits it too). Errors are logged, not raised: the upload
        goes on in the background. Returns whether everything is uploaded.
        """
        if self._writer is not None:
            self._writer.flush()
        if not self.remote:
            return True
        ok = False
        try:
            self._queue()
            ok = self.mirror.wait(retry_budget_s() if timeout is None else timeout,
                                  raise_errors=True)
        except Exception as exc:
            log.warning("Could not upload TensorBoard events to %s (will retry): %s: %s",
                        self.workdir.url(self.subdir), type(exc).__name__, exc)
        return ok

    def _maybe_rotate(self) -> None:
        """Starts a new events file once the current one is big (it was just queued whole)."""
        writer = self._writer
        if writer is None or self.rotate_bytes <= 0:
            return
        try:
            if os.path.getsize(writer.path) < self.rotate_bytes:
                return
        except (AttributeError, OSError):
            return
        writer.close()
        self.mirror.sync(wait=False)
        self._writer = EventFileWriter(self.local_dir)

    def close(self, timeout: Optional[float] = None) -> None:
        """Flushes, closes the events file, uploads it (remote) and removes the local copy.

        Waits for the upload at most ``timeout`` (default: the retry budget, or until a stopping
        process's exit grace window ends). If it is not uploaded by then, the local copy is
        kept and its folder logged.
        """
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.remote:
            if self.sync(timeout):
                self.mirror.cleanup()
            else:
                log.error("TensorBoard events not fully uploaded to %s; the local copy is in %s",
                          self.workdir.url(self.subdir), self.local_dir)

    def __enter__(self) -> "SummaryWriterSync":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
