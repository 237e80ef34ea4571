"""The run record: what a run says about itself, in its workdir.

It owns the run's small files; the trainer calls it at start / log / eval / finish:

| file | written | what |
|---|---|---|
| ``run.json`` | start, every log interval, eval, finish | status, steps, sizes, versions, times, best |
| ``command.json`` | start | argv, resolved gin files, bindings, working directory |
| ``config.gin`` | first start (checked on every later start) | the full gin config |
| ``config.gin.prev-<UTC>`` | a start allowed to change the config | the replaced config |
| ``operative_config.gin`` | after the first step | the bindings the run actually used |
| ``hparams.json`` | start | the effective value of every binding (``analysis`` reads it) |
| ``eval/step_XXXXXXXXX/metrics.json`` | each evaluation | the evaluation's metrics |

A run has finished when ``run.json`` says ``"status": "completed"``.

Storage outages: on a remote workdir (``gs://``) the writes made during training --
:meth:`RunRecord.log` at log intervals and :meth:`RunRecord.evaluation` -- go to a
:class:`~trm.run.storage.BackgroundWriter`: they return at once, never raise, are retried
through an outage, and only the latest run.json content is kept (coalesced). The record keeps
run.json in memory (this process is its only writer), so nothing needs to be read back.
:meth:`RunRecord.update`, :meth:`RunRecord.start` and :meth:`RunRecord.finish` return once
run.json is written, waiting through an outage for up to the retry budget
(:func:`~trm.run.storage.retry_budget_s`) or until the exit grace window of a stopping process
ends.
"""

from __future__ import annotations

import copy
import datetime as _dt
import difflib
import logging
import subprocess
import os
import threading
import time
from typing import Any, Dict, Mapping, Optional

from trm.errors import TrmError
from trm.run.storage import (BackgroundWriter, Storage, UntrustedFileError, call_bounded,
                             json_bytes, retry_budget_s, utc_now_iso)

log = logging.getLogger(__name__)

RUN_STATUSES = ("running", "completed", "failed", "preempted")
RUN_JSON = "run.json"
COMMAND_JSON = "command.json"
CONFIG_GIN = "config.gin"
OPERATIVE_GIN = "operative_config.gin"
HPARAMS_JSON = "hparams.json"


class ConfigMismatchError(TrmError, ValueError):
    """A saved config file differs from the one given (see :meth:`RunRecord.ensure_config`)."""


class RunRecordError(TrmError, ValueError):
    """A run file in the workdir (run.json, config.gin) is not what trm writes: not valid
    JSON / UTF-8, not a JSON object, not a regular file or too large. One line naming it."""


def eval_dir(step: int) -> str:
    """The evaluation output folder of ``step``, relative to the workdir."""
    return f"eval/step_{int(step):09d}"


class RunRecord:
    """Reads and writes a run's record in ``storage`` (a :class:`~trm.run.storage.Storage`)."""

    def __init__(self, storage: Storage, best_metric: Optional[str] = None) -> None:
        self.storage = storage
        self.best_metric = best_metric
        self.best: Optional[Dict[str, Any]] = None
        self._data: Optional[Dict[str, Any]] = None   # run.json as this record last wrote it
        self._mutex = threading.Lock()
        self._writer: Optional[BackgroundWriter] = None

    # -- run.json ---------------------------------------------------------------------------
    def read(self) -> Dict[str, Any]:
        """The run metadata (``{}`` if there is none yet); on a remote workdir, once this
        record has written run.json, its own latest content (which may not be uploaded yet)."""
        with self._mutex:
            if self._data is not None:
                return copy.deepcopy(self._data)
        return self._read_run_json()

    def _read_run_json(self) -> Dict[str, Any]:
        """run.json from storage (``{}`` if missing); RunRecordError if it is not a JSON
        object trm could have written."""
        url = self.storage.url(RUN_JSON)
        try:
            data = self.storage.read_json(RUN_JSON, default={})
        except (ValueError, UntrustedFileError, IsADirectoryError, NotADirectoryError) as e:
            raise RunRecordError(f"{url} is not readable ({e}); it is only the run's record "
                                 "(the checkpoints hold its state): move it aside and run the "
                                 "same command again to resume") from None
        if not isinstance(data, dict):
            raise RunRecordError(f"{url} holds a JSON {type(data).__name__}, not an object; "
                                 "move it aside and run the same command again to resume")
        return data

    def _read_text(self, name: str) -> str:
        """A saved text file (config.gin ...): FileNotFoundError if missing, RunRecordError if
        it is not a small UTF-8 regular file."""
        try:
            return self.storage.read_text(name)
        except (ValueError, UntrustedFileError, IsADirectoryError, NotADirectoryError) as e:
            raise RunRecordError(f"{self.storage.url(name)} is not readable ({e}); restore "
                                 "it or move it aside") from None

    @property
    def background(self) -> Optional[BackgroundWriter]:
        """The background writer of a remote workdir (None for a local one)."""
        if self.storage.is_local:
            return None
        with self._mutex:
            if self._writer is None:
                self._writer = BackgroundWriter(self.storage, name="trm-run-record")
            return self._writer

    def _merge(self, fields: Mapping[str, Any]) -> Dict[str, Any]:
        status = fields.get("status")
        if status is not None and status not in RUN_STATUSES:
            raise ValueError(f"run.json status must be one of {RUN_STATUSES}, got {status!r}")
        if self.storage.is_local:   # read-merge-write, as files on disk may be edited by hand
            data = self._read_run_json()
            data.update(fields)
            return data
        if self._data is None:
            loaded = self._read_run_json()
            with self._mutex:
                if self._data is None:
                    self._data = loaded
        with self._mutex:
            self._data.update(copy.deepcopy(dict(fields)))
            return copy.deepcopy(self._data)

    def update(self, **fields: Any) -> Dict[str, Any]:
        """Merges ``fields`` into ``run.json`` (written atomically) and returns the result.

        Returns once the file is written. On a remote workdir a storage outage is waited out
        for up to the retry budget (or the exit grace window of a stopping process); then the
        error is raised.

        Common fields: ``status`` (one of ``running``, ``completed``, ``failed``,
        ``preempted``), ``last_step``, ``total_steps``, ``num_params``, ``flops_per_example``,
        ``start_time``/``end_time`` (ISO 8601 UTC), ``active_s`` (seconds the run's processes
        ran, summed over restarts), ``trm_version``, ``git_commit``, ``git_dirty``,
        ``device``, ``world_size``. A field set to None is kept as null.
        """
        return self._update(fields, wait=retry_budget_s())

    def update_later(self, **fields: Any) -> Dict[str, Any]:
        """Like :meth:`update`, but on a remote workdir it returns at once and never raises a
        storage error: the write happens in the background (see the module docstring)."""
        return self._update(fields, wait=None)

    def _update(self, fields: Mapping[str, Any], wait: Optional[float]) -> Dict[str, Any]:
        data = self._merge(fields)
        writer = self.background
        if writer is None:
            self.storage.write_json(RUN_JSON, data)
            return data
        writer.put(RUN_JSON, json_bytes(data))
        if wait is not None:
            writer.flush(timeout=wait, raise_errors=True)
        return data

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Waits (at most ``timeout``) until the background writes are done; True if they are."""
        writer = self._writer
        return True if writer is None else writer.flush(timeout)

    @property
    def status(self) -> Optional[str]:
        return self.read().get("status")

    # -- configs ----------------------------------------------------------------------------
    def ensure_config(self, text: str, allow_change: bool = False, name: str = CONFIG_GIN
                      ) -> str:
        """Writes config file ``name`` once; on later starts checks it is unchanged.

        Returns ``"written"`` (it did not exist), ``"same"``, or ``"changed"`` (it differed
        and ``allow_change`` was set: the old text is kept as ``<name>.prev-<UTC time>`` and
        the new one written). Raises :class:`ConfigMismatchError` with a diff otherwise.
        """
        st = self.storage
        try:
            old = self._read_text(name)
        except FileNotFoundError:
            st.write_text(name, text)
            return "written"
        if old == text:
            return "same"
        diff = "".join(list(difflib.unified_diff(
            old.splitlines(True), text.splitlines(True), f"saved {name}", f"new {name}"))[:60])
        if not allow_change:
            raise ConfigMismatchError(
                f"{st.url(name)} differs from this run's config; resuming with a different "
                f"config needs an explicit allow (e.g. --allow_config_change). Diff:\n{diff}")
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        st.write_text(f"{name}.prev-{stamp}", old)
        st.write_text(name, text)
        log.warning("%s changed on resume (allowed); previous copy kept as %s.prev-%s:\n%s",
                    st.url(name), name, stamp, diff)
        return "changed"

    def compare_config(self, text: str, allow_change: bool = False, name: str = CONFIG_GIN
                       ) -> str:
        """Like :meth:`ensure_config` but writes nothing: ``"written"`` (there is none yet),
        ``"same"``, or ``"changed"`` (differs, ``allow_change`` set); raises
        :class:`ConfigMismatchError` with a diff when it differs and no change is allowed."""
        try:
            old = self._read_text(name)
        except FileNotFoundError:
            return "written"
        if old == text:
            return "same"
        if not allow_change:
            diff = "".join(list(difflib.unified_diff(
                old.splitlines(True), text.splitlines(True), f"saved {name}",
                f"new {name}"))[:60])
            raise ConfigMismatchError(
                f"{self.storage.url(name)} differs from this run's config; resuming with a "
                f"different config needs an explicit allow (e.g. --allow_config_change). "
                f"Diff:\n{diff}")
        return "changed"

    def config_text(self) -> Optional[str]:
        """The saved ``config.gin`` (None if there is none)."""
        try:
            return self._read_text(CONFIG_GIN)
        except FileNotFoundError:
            return None

    def has_operative_config(self) -> bool:
        return self.storage.exists(OPERATIVE_GIN)

    def write_operative_config(self, text: str) -> None:
        if text.strip():
            self.storage.write_text(OPERATIVE_GIN, text)

    def hparams(self) -> Optional[Dict[str, Any]]:
        """The saved ``hparams.json`` (None for runs that predate it)."""
        return self.storage.read_json(HPARAMS_JSON, default=None)

    # -- the lifecycle --------------------------------------------------------------------------
    def start(self, *, resumed: bool, step: int, fields: Mapping[str, Any],
              command: Optional[Mapping[str, Any]] = None,
              hparams: Optional[Mapping[str, Any]] = None,
              best: Optional[Dict[str, Any]] = None) -> None:
        """Records a (re)start: command.json, hparams.json and run.json (status running)."""
        self.best = best
        if command:
            self.storage.write_json(COMMAND_JSON, dict(command))
        if hparams is not None:
            self.storage.write_json(HPARAMS_JSON, dict(hparams))
        data = dict(fields, status="running", last_step=step, git_commit=git_commit(),
                    git_dirty=git_dirty())
        # ``active_s``: seconds the run's processes have been running, summed over restarts
        # (start_time..end_time also counts the time a preempted run waited to be resumed).
        self._active_t0 = time.monotonic()
        self._active_prev = 0.0
        if not resumed or not self.storage.exists(RUN_JSON):
            data["start_time"] = utc_now_iso()
        else:
            data["resumed_at_step"] = step
            prev = self.read().get("active_s")
            if isinstance(prev, (int, float)) and not isinstance(prev, bool) and prev >= 0:
                self._active_prev = float(prev)
        data["active_s"] = round(self._active_prev, 1)
        self.update(**data)

    def _active_s(self) -> Optional[float]:
        t0 = getattr(self, "_active_t0", None)
        if t0 is None:
            return None
        return round(self._active_prev + time.monotonic() - t0, 1)

    def log(self, step: int) -> None:
        """A log interval: the step reached (in the background on a remote workdir: never
        blocks or raises for storage)."""
        self.update_later(last_step=step, status="running", active_s=self._active_s())

    def evaluation(self, step: int, metrics: Mapping[str, float]) -> Optional[Dict[str, Any]]:
        """Records an evaluation's metrics (eval/step_X/metrics.json, run.json) and updates
        the best result (by ``best_metric``, higher is better). Returns the best so far."""
        metrics = dict(metrics)
        name, content = f"{eval_dir(step)}/metrics.json", {"step": step, **metrics}
        if self.background is not None:
            self.background.put(name, json_bytes(content))
        else:
            self.storage.write_json(name, content)
        value = metrics.get(self.best_metric) if self.best_metric else None
        if value is not None and (self.best is None or value > self.best["value"]):
            self.best = {"step": step, "metric": self.best_metric, "value": value}
        self.update_later(last_eval_step=step, best=self.best,
                          last_eval={k: v for k, v in metrics.items()
                                     if k.startswith(("eval/", "ARC/"))})
        return self.best

    def finish(self, status: str, step: int) -> None:
        """The end of this process's part of the run (``completed`` or ``preempted``).

        Waits until run.json (and every earlier background write) is written: through an
        outage for up to the retry budget, or until a stopping process's grace window ends.
        A ``completed`` that cannot be written raises; a ``preempted`` is logged (the
        checkpoint is what matters, and a run.json left at ``running`` resumes the same)."""
        fields: Dict[str, Any] = dict(status=status, last_step=step)
        if self._active_s() is not None:
            fields["active_s"] = self._active_s()
        if status == "completed":
            fields["end_time"] = utc_now_iso()
        try:
            self.update(**fields)
            if self._writer is not None:
                self._writer.flush(timeout=retry_budget_s(), raise_errors=True)
        except Exception as exc:
            if status == "completed":
                raise
            log.warning("Could not record status %r in %s: %s: %s", status,
                        self.storage.url(RUN_JSON), type(exc).__name__, exc)

    def fail(self, error: BaseException, status: str = "failed", timeout_s: float = 60.0
             ) -> None:
        """Records an error that ended the run (never raises: the original error matters).

        A completed run stays ``completed``: a failed or refused relaunch of it is recorded as
        ``last_start_error`` only. An error with a ``run_status`` attribute (a preemption that
        could not save during an outage) records that status. Waits at most ``timeout_s`` (or
        until a stopping process's grace window ends) for the storage."""
        message = f"{type(error).__name__}: {error}"
        status = getattr(error, "run_status", None) or status
        try:
            current = (self.read() if self.storage.is_local or self._data is not None
                       else call_bounded(self.read, timeout_s, f"reading {RUN_JSON}"))
            if current.get("status") == "completed":
                fields = dict(last_start_error=message, last_start_error_time=utc_now_iso())
            else:
                fields = dict(status=status, error=message, end_time=utc_now_iso())
            self._update(fields, wait=None)
            if self._writer is not None and not self._writer.flush(timeout=timeout_s):
                log.error("Could not record the failure in %s (storage unreachable)",
                          self.storage.url(RUN_JSON))
        except Exception as exc:
            log.error("Could not record the failure in %s: %s: %s", self.storage.url(RUN_JSON),
                      type(exc).__name__, exc)


def _git(*args: str) -> Optional[str]:
    """The output of ``git ARGS`` in the trm source tree (None if it is not a checkout)."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", *args], cwd=here, capture_output=True, text=True,
                             timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_commit() -> Optional[str]:
    """The git commit of the trm source tree, if it is a checkout."""
    return (_git("rev-parse", "HEAD") or "").strip() or None


def git_dirty() -> Optional[bool]:
    """Whether the trm source tree has uncommitted changes (tracked files changed, or files
    git does not ignore added), so ``git_commit`` alone does not say what ran; None if it is
    not a checkout."""
    status = _git("status", "--porcelain")
    return None if status is None else bool(status.strip())
