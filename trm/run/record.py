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
"""

from __future__ import annotations

import datetime as _dt
import difflib
import logging
import subprocess
import os
from typing import Any, Dict, Mapping, Optional

from trm.run.storage import Storage, utc_now_iso

log = logging.getLogger(__name__)

RUN_STATUSES = ("running", "completed", "failed", "preempted")
RUN_JSON = "run.json"
COMMAND_JSON = "command.json"
CONFIG_GIN = "config.gin"
OPERATIVE_GIN = "operative_config.gin"
HPARAMS_JSON = "hparams.json"


class ConfigMismatchError(ValueError):
    """A saved config file differs from the one given (see :meth:`RunRecord.ensure_config`)."""


def eval_dir(step: int) -> str:
    """The evaluation output folder of ``step``, relative to the workdir."""
    return f"eval/step_{int(step):09d}"


class RunRecord:
    """Reads and writes a run's record in ``storage`` (a :class:`~trm.run.storage.Storage`)."""

    def __init__(self, storage: Storage, best_metric: Optional[str] = None) -> None:
        self.storage = storage
        self.best_metric = best_metric
        self.best: Optional[Dict[str, Any]] = None

    # -- run.json ---------------------------------------------------------------------------
    def read(self) -> Dict[str, Any]:
        """The run metadata (``{}`` if there is none yet)."""
        return self.storage.read_json(RUN_JSON, default={})

    def update(self, **fields: Any) -> Dict[str, Any]:
        """Merges ``fields`` into ``run.json`` (written atomically) and returns the result.

        Common fields: ``status`` (one of ``running``, ``completed``, ``failed``,
        ``preempted``), ``last_step``, ``total_steps``, ``num_params``, ``flops_per_example``,
        ``start_time``/``end_time`` (ISO 8601 UTC), ``trm_version``, ``git_commit``,
        ``device``, ``world_size``. A field set to None is kept as null.
        """
        status = fields.get("status")
        if status is not None and status not in RUN_STATUSES:
            raise ValueError(f"run.json status must be one of {RUN_STATUSES}, got {status!r}")
        data = self.read()
        data.update(fields)
        self.storage.write_json(RUN_JSON, data)
        return data

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
            old = st.read_text(name)
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
            old = self.storage.read_text(name)
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
            return self.storage.read_text(CONFIG_GIN)
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
        data = dict(fields, status="running", last_step=step, git_commit=git_commit())
        if not resumed or not self.storage.exists(RUN_JSON):
            data["start_time"] = utc_now_iso()
        else:
            data["resumed_at_step"] = step
        self.update(**data)

    def log(self, step: int) -> None:
        """A log interval: the step reached."""
        self.update(last_step=step, status="running")

    def evaluation(self, step: int, metrics: Mapping[str, float]) -> Optional[Dict[str, Any]]:
        """Records an evaluation's metrics (eval/step_X/metrics.json, run.json) and updates
        the best result (by ``best_metric``, higher is better). Returns the best so far."""
        metrics = dict(metrics)
        self.storage.write_json(f"{eval_dir(step)}/metrics.json", {"step": step, **metrics})
        value = metrics.get(self.best_metric) if self.best_metric else None
        if value is not None and (self.best is None or value > self.best["value"]):
            self.best = {"step": step, "metric": self.best_metric, "value": value}
        self.update(last_eval_step=step, best=self.best,
                    last_eval={k: v for k, v in metrics.items()
                               if k.startswith(("eval/", "ARC/"))})
        return self.best

    def finish(self, status: str, step: int) -> None:
        """The end of this process's part of the run (``completed`` or ``preempted``)."""
        fields: Dict[str, Any] = dict(status=status, last_step=step)
        if status == "completed":
            fields["end_time"] = utc_now_iso()
        self.update(**fields)

    def fail(self, error: BaseException, status: str = "failed") -> None:
        """Records an error that ended the run (never raises: the original error matters).

        A completed run stays ``completed``: a failed or refused relaunch of it is recorded as
        ``last_start_error`` only."""
        message = f"{type(error).__name__}: {error}"
        try:
            if self.status == "completed":
                self.update(last_start_error=message, last_start_error_time=utc_now_iso())
            else:
                self.update(status=status, error=message, end_time=utc_now_iso())
        except Exception:  # noqa: BLE001
            log.exception("Could not record the failure in %s", self.storage.url(RUN_JSON))


def git_commit() -> Optional[str]:
    """The git commit of the trm source tree, if it is a checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None
