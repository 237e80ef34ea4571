"""Checkpoints with atomic commit markers, async saving, keep-K + best retention, RNG state.

Layout inside a workdir (see docs/RUN_STATE.md)::

    checkpoints/step_000001000/state.pt   torch.save of the whole training state
    checkpoints/step_000001000/COMMIT     JSON, written last: step, size + sha256 of every
                                          file, metrics, time, trm version

A checkpoint exists only once its COMMIT is there and matches its files; anything else
(a crash mid-save, a truncated upload) is skipped with a warning. Nothing is ever renamed,
so the same protocol is atomic on local disk, GCS and any fsspec store.

    mgr = CheckpointManager(workdir, keep=5, best_metric="eval/exact_accuracy")
    restored = mgr.restore()                 # None on a fresh workdir, else (step, state)
    ...
    mgr.save(step, {"model": model.state_dict(), "optimizers": [...], "rng": capture_rng_state()})
    ...
    mgr.record_metrics(step, {"eval/exact_accuracy": 0.87})   # eval after the save is fine
    mgr.close()                              # waits for the background save

The state is serialised with ``torch.save`` and always read back with
``torch.load(weights_only=True)``: tensors, numbers, strings and plain containers only (plus
numpy arrays, allow-listed by name, for checkpoints written before RNG states became tensors).
Unpickling anything else could run code from the file, so such a file is refused with
:class:`UnsafeCheckpointError` naming it, never skipped silently; ``trust=True`` (the CLIs'
``--trust_checkpoint``) loads it with full unpickling, for a file you wrote yourself.
"""

from __future__ import annotations

import concurrent.futures
import copy
import hashlib
import io
import logging
import math
import pickle
import random
import re
import threading
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from trm.errors import TrmError
from trm.run import storage
from trm.run.storage import StorageDeadlineError, is_transient, utc_now_iso
from trm.run.workdir import Workdir, as_workdir

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CHECKPOINTS = "checkpoints"
STATE_FILE = "state.pt"
COMMIT_FILE = "COMMIT"
_STEP_RE = re.compile(r"^step_(\d+)$")
_FILE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")   # a plain name, no '/'
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_COMMIT_FILES = 64


class CheckpointError(TrmError, RuntimeError):
    """A checkpoint could not be saved, or a requested one is missing or corrupt."""


class CheckpointTimeoutError(CheckpointError):
    """A stopping process (SIGTERM) could not commit its checkpoint within the exit grace
    window (storage unreachable). The message names the last committed step and the steps
    lost; the run is recorded as ``preempted`` (the same command resumes)."""

    run_status = "preempted"


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holds objects that only full unpickling (which can run code) would load."""


def _numpy_safe_globals() -> List[Any]:
    """numpy's array reconstruction, allowed for older checkpoints' RNG states: it builds arrays
    only (items of object arrays still go through the restricted unpickler)."""
    out: List[Any] = [np.ndarray, np.dtype]
    for path in ("numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct"):
        module, _, name = path.rpartition(".")
        try:
            out.append(getattr(__import__(module, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    for dtype in (np.uint32, np.int64, np.float64, np.uint8):
        out.append(type(np.dtype(dtype)))
    return out


def safe_load(data: bytes, what: str, trust: bool = False,
              extra_globals: Sequence[Any] = ()) -> Any:
    """``torch.load`` of ``data`` without running code from it (see the module docstring).

    Args:
        data: the serialized bytes.
        what: the file's path or URL, for the error message.
        trust: load with full unpickling (only for files you wrote yourself).
        extra_globals: further classes known to be plain data (e.g. ``TorchVersion``, a
            ``str``), allowed by name.

    Raises:
        UnsafeCheckpointError: the file holds other objects (one line naming ``what``).
    """
    buf = io.BytesIO(data)
    if trust:
        log.warning("Loading %s with full unpickling (--trust_checkpoint): code in the file "
                    "runs.", what)
        return torch.load(buf, map_location="cpu", weights_only=False)
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals() + list(extra_globals)):
            return torch.load(buf, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        blocked = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if blocked is None and "WeightsUnpickler error" in text:
            reason = text.split("WeightsUnpickler error:", 1)[1].strip().splitlines()[0]
            if "global" not in reason.lower():
                raise CheckpointError(f"{what} is not a readable checkpoint ({reason})") from None
        detail = f"it refers to {blocked.group(1)}" if blocked else "it needs full unpickling"
        raise UnsafeCheckpointError(
            f"{what} holds objects other than tensors and plain data ({detail}); trm does not "
            "unpickle them because that can run code from the file. If you wrote this file "
            "yourself and trust it, load it with --trust_checkpoint.") from None


def step_dir(step: int) -> str:
    """The checkpoint folder of ``step``, relative to the workdir."""
    return f"{CHECKPOINTS}/step_{int(step):09d}"


def _trm_version() -> str:
    try:
        from trm import __version__
        return __version__
    except ImportError:  # pragma: no cover
        return "unknown"


# -- copying the caller's state to the host --------------------------------------------------
def to_cpu(obj: Any, _memo: Optional[Dict[int, Any]] = None) -> Any:
    """A snapshot of ``obj`` on the CPU that later in-place updates of ``obj`` cannot change.

    Tensors (any device) are copied to new CPU tensors (one tensor referenced twice stays
    shared), numpy arrays copied, dicts / lists / tuples (incl. namedtuples) rebuilt, strings
    and numbers kept, anything else deep-copied.
    """
    memo = {} if _memo is None else _memo
    if isinstance(obj, torch.Tensor):
        key = id(obj)
        if key not in memo:
            t = obj.detach()
            memo[key] = t.clone() if t.device.type == "cpu" else t.to("cpu")
        return memo[key]
    if isinstance(obj, (str, bytes, int, float, bool, type(None), torch.dtype, torch.device)):
        return obj
    if isinstance(obj, np.ndarray):
        return obj.copy()
    if isinstance(obj, dict):
        items = [(k, to_cpu(v, memo)) for k, v in obj.items()]
        if type(obj) is dict:
            return dict(items)
        out = copy.copy(obj)
        out.clear()
        out.update(items)
        return out
    if isinstance(obj, list):
        return [to_cpu(v, memo) for v in obj]
    if isinstance(obj, tuple):
        items = [to_cpu(v, memo) for v in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
    return copy.deepcopy(obj)


# -- RNG state -------------------------------------------------------------------------------
def _device_type(device) -> Optional[str]:
    if device is None:
        return None
    return torch.device(device).type if not isinstance(device, torch.device) else device.type


def capture_rng_state(device: Union[str, torch.device, None] = None) -> Dict[str, Any]:
    """The state of every random generator a run draws from, for :func:`restore_rng_state`.

    Always: ``python`` (``random``), ``numpy`` (the global ``np.random``), ``torch`` (the CPU
    generator). ``cuda`` (all devices) when ``device`` is CUDA, or CUDA is already initialised.
    ``xla`` (the device's seed, via torch_xla, imported only then) when ``device`` is XLA.
    """
    state: Dict[str, Any] = {
        "python": random.getstate(),
        "numpy": _numpy_state_to_plain(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    kind = _device_type(device)
    if kind == "cuda" or (kind is None and torch.cuda.is_available()
                          and torch.cuda.is_initialized()):
        state["cuda"] = torch.cuda.get_rng_state_all()
    if kind == "xla":
        import torch_xla.core.xla_model as xm
        state["xla"] = int(xm.get_rng_state(device=device))
    return state


def restore_rng_state(state: Mapping[str, Any],
                      device: Union[str, torch.device, None] = None) -> None:
    """Sets the generators captured by :func:`capture_rng_state` (missing entries are left)."""
    if "python" in state:
        random.setstate(_as_tuple(state["python"]))
    if "numpy" in state:
        np.random.set_state(_numpy_state_from_plain(state["numpy"]))
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu() if isinstance(state["torch"], torch.Tensor)
                            else torch.as_tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        saved = list(state["cuda"])
        if len(saved) != torch.cuda.device_count():
            log.warning("Checkpoint has CUDA RNG states for %d devices, this host has %d; "
                        "restoring the first %d", len(saved), torch.cuda.device_count(),
                        min(len(saved), torch.cuda.device_count()))
        for i, s in enumerate(saved[:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)
    if "xla" in state and _device_type(device) == "xla":
        import torch_xla.core.xla_model as xm
        xm.set_rng_state(int(state["xla"]), device=device)


def _numpy_state_to_plain(state: Any) -> Dict[str, Any]:
    """``np.random.get_state()`` as tensors and numbers (loadable with ``weights_only``)."""
    name, keys, pos, has_gauss, cached = state
    return {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _numpy_state_from_plain(state: Any) -> Any:
    if isinstance(state, Mapping):
        keys = state["keys"]
        keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
        return (state["name"], keys.astype(np.uint32), int(state["pos"]),
                int(state["has_gauss"]), float(state["cached_gaussian"]))
    return _as_tuple(state)  # checkpoints written before: the tuple itself


def _as_tuple(obj: Any) -> Any:
    """random/numpy states are nested tuples; a round trip through lists is tolerated."""
    if isinstance(obj, list):
        return tuple(_as_tuple(v) for v in obj)
    return obj


# -- exporting plain state_dicts ---------------------------------------------------------------
def export_state_dict(state_or_model: Union[torch.nn.Module, Mapping[str, Any]], path: str, *,
                      ema: bool = False) -> Dict[str, torch.Tensor]:
    """Writes a plain model ``state_dict`` (CPU tensors) to ``path`` (any fsspec URL).

    Args:
        state_or_model: an ``nn.Module``; a flat ``{name: tensor}`` state_dict; or a training
            state as saved by the trainer, with ``"model"`` (the model's state_dict) and, for
            ``ema=True``, ``"ema"`` (``EMA.state_dict()``, i.e. ``{"rate", "shadow"}``, or
            the shadow itself).
        path: the output file, e.g. ``runs/e1/export/model.pt`` or ``gs://b/e1/model_ema.pt``.
        ema: export the EMA weights (the shadow overlaid on the model's state_dict, so
            buffers and non-averaged entries come from the model).

    Returns:
        the exported state_dict. Load it with :func:`load_state_dict_file` or ``torch.load``.
    """
    if isinstance(state_or_model, torch.nn.Module):
        if ema:
            raise ValueError("ema=True needs a training state holding 'model' and 'ema'")
        sd: Mapping[str, Any] = state_or_model.state_dict()
    elif all(isinstance(v, torch.Tensor) for v in state_or_model.values()) and not ema:
        sd = state_or_model
    else:
        if "model" not in state_or_model:
            raise ValueError("Expected a module, a flat state_dict, or a training state with a "
                             f"'model' entry; got keys {sorted(state_or_model)[:10]}")
        sd = dict(state_or_model["model"])
        if ema:
            shadow = state_or_model.get("ema")
            if shadow is None:
                raise ValueError("ema=True but the state has no 'ema' entry")
            shadow = shadow.get("shadow", shadow)
            unknown = set(shadow) - set(sd)
            if unknown:
                raise ValueError(
                    f"EMA shadow entries missing from the model: {sorted(unknown)[:5]}")
            sd.update(shadow)
    out = {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}
    buf = io.BytesIO()
    torch.save(out, buf)
    storage.write_bytes(path, buf.getvalue())
    return out


def load_state_dict_file(path: str) -> Dict[str, torch.Tensor]:
    """Reads a state_dict written by :func:`export_state_dict` (tensors only, CPU)."""
    return safe_load(storage.read_bytes(path), path)


# -- the manager -------------------------------------------------------------------------------
class CheckpointManager:
    """Saves, lists, prunes and restores a run's checkpoints.

    Args:
        workdir: the run's :class:`~trm.run.workdir.Workdir` (or its path / URL).
        keep: how many of the most recent committed checkpoints to keep (``<= 0``: all). The
            best one (by ``best_metric``) and the one the run was restored from are kept too.
        best_metric: a metric name (as given to :meth:`save` / :meth:`record_metrics`)
            deciding the best checkpoint; None: no best.
        best_mode: ``"max"`` or ``"min"`` (ties go to the later step).
        async_save: copy to the CPU in :meth:`save`, serialise and upload on a background
            thread (one save in flight at a time).
        max_retries: retry transient storage errors this many times per file operation
            (count-based, as before the retry budget; used only when given and
            ``retry_budget_s`` is not).
        retry_budget_s: retry transient storage errors for up to this many seconds per file
            operation (default: :func:`~trm.run.storage.retry_budget_s`,
            ``$TRM_STORAGE_RETRY_BUDGET_S`` or 1800 s), so a save rides out an outage of up to
            the budget. A save still in flight when the next one comes makes that one wait (one
            save in flight at a time); neither fails within the budget.
        retry_base_delay_s: backoff before the first retry (doubling after that, up to 30 s).
        trust: load checkpoints with full unpickling (``--trust_checkpoint``; it runs code from
            the file): only for files written before they could be loaded safely, and trusted.
    """

    def __init__(self, workdir: Union[Workdir, str], keep: int = 5,
                 best_metric: Optional[str] = None, best_mode: str = "max",
                 async_save: bool = True, max_retries: Optional[int] = None, *,
                 retry_base_delay_s: float = 1.0, retry_budget_s: Optional[float] = None,
                 trust: bool = False) -> None:
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
        # A shallow copy, so the retry settings apply to this manager's I/O only.
        self.workdir = copy.copy(as_workdir(workdir))
        if retry_budget_s is None and max_retries is None:
            retry_budget_s = storage.retry_budget_s()
        self.workdir.max_retries = 5 if max_retries is None else max_retries
        self.workdir.retry_base_delay_s = retry_base_delay_s
        self.workdir.retry_budget_s = retry_budget_s
        self.retry_budget_s = retry_budget_s
        self.keep = keep
        self.trust = trust
        self.best_metric = best_metric
        self.best_mode = best_mode
        self.async_save = async_save
        self._commits: Dict[int, Dict[str, Any]] = {}   # committed (COMMIT read), by step
        self._commit_in_flight: Optional[int] = None     # a step whose COMMIT is being written
        self._invalid: Dict[int, str] = {}              # step -> why it was rejected
        self._uncommitted: set = set()                  # step folders without COMMIT
        self._scanned = False
        self._restored_from: Optional[int] = None
        self._last_saved: Optional[int] = None
        self._pending: Optional[Tuple[int, concurrent.futures.Future]] = None
        self._storage_error: Optional[BaseException] = None   # the last save's, if it failed
        self._lock = threading.RLock()
        self.last_save_stats: Dict[str, float] = {}

    # -- saving -------------------------------------------------------------------------------
    def save(self, step: int, state: Mapping[str, Any],
             metrics: Optional[Mapping[str, Any]] = None) -> None:
        """Saves ``state`` as the checkpoint of ``step``.

        Waits for the previous save first (re-raising its error, if any). The tensors are
        copied to the CPU before returning, so the caller may keep training and mutating
        them; with ``async_save`` the rest happens in the background (:meth:`wait`).
        Saving the step this manager saved or restored last is a no-op apart from merging
        ``metrics`` (the state is the same).
        Committed checkpoints with a *higher* step than ``step`` (left by an abandoned
        timeline after a restore from an older step) are retired once this one commits.
        """
        step = int(step)
        try:
            self.wait()
        except CheckpointTimeoutError:
            raise self._timeout_error(step) from None
        metrics = _plain_metrics(metrics or {})
        if step in (self._last_saved, self._restored_from) and step in self._commits \
                and step not in self._invalid:
            log.info("Checkpoint step %d already saved; merging metrics only", step)
            if metrics:
                self.record_metrics(step, metrics)
            return
        start = time.perf_counter()
        snapshot = to_cpu(state)
        sync_s = time.perf_counter() - start
        self.last_save_stats = {"step": step, "sync_s": sync_s}
        if not self.async_save:
            try:
                self._write(step, snapshot, metrics, start)
            except StorageDeadlineError:
                raise self._timeout_error(step) from None
            return
        # A daemon thread (not a pool): a save abandoned at the end of a stopping process's
        # grace window must not keep the interpreter from exiting.
        future: concurrent.futures.Future = concurrent.futures.Future()

        def work() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(self._write(step, snapshot, metrics, start))
            except BaseException as exc:
                future.set_exception(exc)

        threading.Thread(target=work, daemon=True, name=f"trm-checkpoint-{step}").start()
        self._pending = (step, future)

    def wait(self, timeout: Optional[float] = None) -> None:
        """Blocks until the pending background save is done; re-raises its error.

        Through a storage outage the save retries for up to the retry budget. ``timeout``
        limits the wait, and so does the exit grace window once the process is stopping
        (a SIGTERM, see :meth:`~trm.run.storage.Storage.watch_stop`): then
        :class:`CheckpointTimeoutError` is raised, naming the last committed step and the
        steps lost, and the save is abandoned.
        """
        pending = self._pending
        if pending is None:
            return
        step, future = pending
        end = None if timeout is None else time.monotonic() + timeout
        while not future.done():
            left = None if end is None else end - time.monotonic()
            exit_left = self.workdir.exit.remaining()
            if exit_left is not None:
                left = exit_left if left is None else min(left, exit_left)
            if left is not None and left <= 0:
                self._pending = None
                raise self._timeout_error(step)
            concurrent.futures.wait([future], timeout=0.5 if left is None else min(left, 0.5))
        self._pending = None
        try:
            future.result()
        except StorageDeadlineError:
            raise self._timeout_error(step) from None
        except Exception as exc:
            if is_transient(exc):
                self._storage_error = exc
            raise CheckpointError(f"Saving checkpoint step {step} to "
                                  f"{self.workdir.url(step_dir(step))} failed: "
                                  f"{type(exc).__name__}: {exc}") from exc
        self._storage_error = None

    def _known_steps(self) -> List[int]:
        """The committed steps this manager knows, without the storage and without its lock
        (a save stuck in an outage may hold it); ``dict()`` copies are atomic in CPython."""
        commits, invalid = dict(self._commits), dict(self._invalid)
        return sorted(s for s in commits if s not in invalid)

    def _timeout_error(self, step: int) -> CheckpointTimeoutError:
        committed = [s for s in self._known_steps() if s != step]
        last = max(committed) if committed else None
        grace = self.workdir.exit.grace_s
        window = (f"the {grace:.0f} s exit grace window" if grace is not None
                  else "the time allowed")
        kept = (f"the last committed checkpoint is step {last}: the {step - last} steps after "
                f"it are lost; the same command resumes from step {last}"
                if last is not None else
                f"no checkpoint was committed: all {step} steps are lost")
        # A COMMIT whose write was cut off by the outage may have reached the storage even
        # though no answer came back: say so rather than claim more is lost than may be.
        flying = self._commit_in_flight
        if flying is not None and flying not in committed and (last is None or flying > last):
            kept += (f" (unless the COMMIT of step {flying}, being written when the storage "
                     f"became unreachable, reached it: then the same command resumes from step "
                     f"{flying})")
        return CheckpointTimeoutError(
            f"Storage unreachable while stopping: the checkpoint of step {step} could not be "
            f"committed to {self.workdir.url(CHECKPOINTS)} within {window}; {kept}.")

    def close(self) -> None:
        """Waits for the pending save (within the limits of :meth:`wait`)."""
        self.wait()

    def __enter__(self) -> "CheckpointManager":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _write(self, step: int, state: Any, metrics: Dict[str, float], start: float) -> None:
        wd = self.workdir
        folder = step_dir(step)
        buf = io.BytesIO()
        torch.save(state, buf)
        data = buf.getbuffer()
        digest = hashlib.sha256(data).hexdigest()
        serialized = time.perf_counter()
        with self._lock:
            self._scan()
            overwrite = step in self._commits or step in self._invalid or \
                step in self._uncommitted
        if overwrite:
            # Invalidate first: a reader must never pair the old COMMIT with new files.
            wd.remove(f"{folder}/{COMMIT_FILE}")
        wd.write_bytes(f"{folder}/{STATE_FILE}", data)
        commit = {
            "format": FORMAT_VERSION,
            "step": step,
            "files": {STATE_FILE: {"size": len(data), "sha256": digest}},
            "metrics": metrics,
            "time": utc_now_iso(),
            "trm_version": _trm_version(),
        }
        self._commit_in_flight = step
        wd.write_json(f"{folder}/{COMMIT_FILE}", commit)   # the commit point
        done = time.perf_counter()
        with self._lock:
            self._commit_in_flight = None
            self._commits[step] = commit
            self._invalid.pop(step, None)
            self._uncommitted.discard(step)
            self._last_saved = step
        self.last_save_stats.update(serialize_s=serialized - start, total_s=done - start,
                                    bytes=len(data))
        log.info("Saved checkpoint %s (%.1f MB) in %.2f s (%.3f s blocking)",
                 wd.url(folder), len(data) / 1e6, done - start,
                 self.last_save_stats.get("sync_s", 0.0))
        self._apply_retention(current=step)

    # -- metrics and retention -------------------------------------------------------------------
    def record_metrics(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Merges ``metrics`` into the COMMIT of ``step`` (e.g. eval run after the save).

        The COMMIT is rewritten atomically. May change the best checkpoint, and so prune the
        previous best. Steps without a committed checkpoint are ignored with a warning.
        """
        step = int(step)
        self.wait()
        with self._lock:
            self._scan()
            commit = self._commits.get(step)
            if commit is None or step in self._invalid:
                log.warning("record_metrics: no committed checkpoint for step %d in %s; "
                            "metrics not recorded", step, self.workdir.path)
                return
            commit = dict(commit, metrics={**commit.get("metrics", {}),
                                           **_plain_metrics(metrics)})
            self.workdir.write_json(f"{step_dir(step)}/{COMMIT_FILE}", commit)
            self._commits[step] = commit
        self._apply_retention(current=self._last_saved)

    def _apply_retention(self, current: Optional[int]) -> None:
        """Prunes to keep-K + best + restored-from; ``current``: the step just saved."""
        with self._lock:
            valid = sorted(s for s in self._commits if s not in self._invalid)
            if not valid:
                return
            if current is None:
                current = valid[-1]
            protected = {current, self._best_step_locked(), self._restored_from}
            if self.keep > 0:
                protected |= set([s for s in valid if s <= current][-self.keep:])
            else:
                protected |= {s for s in valid if s <= current}
            doomed = [s for s in valid if s not in protected]
            newer = [s for s in doomed if s > current]
            if newer:
                log.warning("Retiring checkpoints %s of %s: they are newer than the step just "
                            "saved (%d), from a run that was resumed at an older step",
                            newer, self.workdir.path, current)
            garbage = sorted((set(self._invalid) | self._uncommitted) - {current})
        for s in doomed:
            self._delete(s)
        for s in garbage:
            log.warning("Removing incomplete or invalid checkpoint %s (%s)",
                        self.workdir.url(step_dir(s)), self._invalid.get(s, "no COMMIT"))
            self._delete(s)

    def _delete(self, step: int) -> None:
        folder = step_dir(step)
        try:
            try:
                self.workdir.remove(f"{folder}/{COMMIT_FILE}")   # invisible first
            except (storage.UntrustedFileError, IsADirectoryError, NotADirectoryError):
                pass  # a link out of the run, or not a file / folder: remove_tree removes it
            self.workdir.remove_tree(folder)   # never follows a link
        except Exception as exc:
            log.warning("Could not delete checkpoint %s: %s: %s", self.workdir.url(folder),
                        type(exc).__name__, exc)
            return
        with self._lock:
            self._commits.pop(step, None)
            self._invalid.pop(step, None)
            self._uncommitted.discard(step)
        log.info("Deleted checkpoint %s", self.workdir.url(folder))

    # -- listing ----------------------------------------------------------------------------------
    def _scan(self, refresh: bool = False) -> None:
        """Syncs the index with storage (lists the folder; reads COMMITs not yet known)."""
        with self._lock:
            listed = set()
            for name in self.workdir.listdir(CHECKPOINTS):
                m = _STEP_RE.match(name)
                if m:
                    listed.add(int(m.group(1)))
            for gone in set(self._commits) - listed:
                self._commits.pop(gone)
            for gone in set(self._invalid) - listed:
                self._invalid.pop(gone)
            self._uncommitted &= listed
            for step in sorted(listed):
                if step in self._commits and not refresh:
                    continue
                path = f"{step_dir(step)}/{COMMIT_FILE}"
                try:
                    commit = self.workdir.read_json(path)
                except FileNotFoundError:
                    self._commits.pop(step, None)
                    self._uncommitted.add(step)
                    continue
                except (ValueError, storage.UntrustedFileError, IsADirectoryError,
                        NotADirectoryError) as exc:
                    self._reject(step, f"unreadable COMMIT ({exc})")
                    self._commits[step] = {}
                    continue
                problem = _commit_problem(commit, step)
                if problem is not None:
                    self._reject(step, f"COMMIT does not describe this checkpoint: {problem}")
                    self._commits[step] = {}
                    continue
                self._commits[step] = commit
                self._uncommitted.discard(step)
            self._scanned = True

    def _reject(self, step: int, reason: str) -> None:
        if self._invalid.get(step) != reason:
            log.warning("Skipping checkpoint %s: %s", self.workdir.url(step_dir(step)), reason)
        self._invalid[step] = reason

    def steps(self) -> List[int]:
        """Committed checkpoint steps, ascending (contents are verified only by restore).

        While the storage is unreachable (the last save failed on it, or a stopping process's
        grace window has ended), the steps this manager already knows are returned, with a
        warning, instead of waiting on the storage."""
        self.wait()
        if self._scanned and (self._storage_error is not None or self.workdir.exit.passed()):
            log.warning("Storage of %s unreachable; listing the checkpoints this process knows",
                        self.workdir.path)
            return self._known_steps()
        try:
            with self._lock:
                self._scan()
                return sorted(s for s in self._commits if s not in self._invalid)
        except Exception as exc:
            if not (self._scanned and is_transient(exc)):
                raise
            log.warning("Listing the checkpoints of %s failed (%s: %s); using the ones this "
                        "process knows", self.workdir.path, type(exc).__name__, exc)
            return self._known_steps()

    def latest_step(self) -> Optional[int]:
        steps = self.steps()
        return steps[-1] if steps else None

    def best_step(self) -> Optional[int]:
        """The committed step with the best ``best_metric`` (None without metric or values)."""
        self.wait()
        with self._lock:
            self._scan()
            return self._best_step_locked()

    def _best_step_locked(self) -> Optional[int]:
        if not self.best_metric:
            return None
        best, best_value = None, None
        for s in sorted(self._commits):
            if s in self._invalid:
                continue
            value = self._commits[s].get("metrics", {}).get(self.best_metric)
            if value is None or not math.isfinite(value):
                continue
            if best is None or (value >= best_value if self.best_mode == "max"
                                else value <= best_value):
                best, best_value = s, value
        return best

    def commit_info(self, step: int) -> Optional[Dict[str, Any]]:
        """The COMMIT record of ``step`` (files, metrics, time), or None."""
        self.wait()
        with self._lock:
            self._scan()
            commit = self._commits.get(int(step))
            return dict(commit) if commit and int(step) not in self._invalid else None

    @property
    def restored_step(self) -> Optional[int]:
        """The step the last :meth:`restore` returned (kept by retention)."""
        return self._restored_from

    # -- restoring --------------------------------------------------------------------------------
    def restore(self, step: Union[str, int] = "latest",
                check: Optional[Callable[[Any], None]] = None) -> Optional[Tuple[int, Any]]:
        """Loads a checkpoint: ``"latest"``, ``"best"`` or a step number.

        ``check(state)``, if given, judges each loaded state (e.g. its structure, finite
        weights): a :class:`CheckpointError` it raises rejects that checkpoint like a corrupt
        file, so ``"latest"`` means the latest *good* checkpoint.

        Every file is checked against the sizes and sha256 in COMMIT before it is
        deserialised. For ``"latest"`` / ``"best"``, a checkpoint without COMMIT, truncated,
        altered or failing to deserialise is skipped with a warning naming it, and the next
        one (older / next best) is tried. A specific step that is missing or corrupt raises
        CheckpointError. Storage errors that persist after retries are raised, not skipped.

        Returns:
            ``(step, state)`` with tensors on the CPU, or None when there is no usable
            checkpoint.
        """
        self.wait()
        with self._lock:
            self._scan(refresh=True)
            valid = sorted(s for s in self._commits if s not in self._invalid)
            for s in sorted(self._uncommitted):
                log.warning("Skipping checkpoint %s: no COMMIT (an interrupted save)",
                            self.workdir.url(step_dir(s)))
        if step == "latest":
            candidates = valid[::-1]
        elif step == "best":
            if not self.best_metric:
                raise ValueError("restore('best') needs best_metric")
            sign = 1.0 if self.best_mode == "max" else -1.0
            scored = []
            for s in valid:
                value = self._commits[s].get("metrics", {}).get(self.best_metric)
                if value is not None and math.isfinite(value):
                    scored.append((sign * value, s))
            candidates = [s for _, s in sorted(scored, reverse=True)]
        else:
            s = int(step)
            if s not in valid:
                why = self._invalid.get(s) or ("no COMMIT" if s in self._uncommitted
                                               else "no such checkpoint")
                raise CheckpointError(f"Checkpoint {self.workdir.url(step_dir(s))}: {why}")
            candidates = [s]
        for s in candidates:
            try:
                state = self._load(s)
                if check is not None:
                    check(state)
            except UnsafeCheckpointError:
                raise  # never fall back silently past a file that may be an attack
            except Exception as exc:
                if is_transient(exc):
                    raise
                reason = f"{type(exc).__name__}: {exc}"
                with self._lock:
                    self._reject(s, reason)
                if not isinstance(step, str):
                    raise CheckpointError(
                        f"Checkpoint {self.workdir.url(step_dir(s))} is corrupt: {reason}") from exc
                continue
            self._restored_from = s
            log.info("Restored checkpoint %s", self.workdir.url(step_dir(s)))
            return s, state
        return None

    def _load(self, step: int) -> Any:
        commit = self._commits[step]
        files = {}
        for name, meta in commit["files"].items():
            # a plain name (checked by _scan), a regular file, no larger than COMMIT says
            data = self.workdir.read_bytes(f"{step_dir(step)}/{name}", max_bytes=meta["size"])
            if len(data) != meta["size"]:
                raise CheckpointError(f"{name} has {len(data)} bytes, COMMIT says "
                                      f"{meta['size']} (truncated or partly written)")
            if hashlib.sha256(data).hexdigest() != meta["sha256"]:
                raise CheckpointError(f"{name} fails its sha256 check (corrupt or altered)")
            files[name] = data
        if STATE_FILE not in files:
            raise CheckpointError(f"COMMIT lists no {STATE_FILE}")
        return safe_load(files[STATE_FILE], self.workdir.url(f"{step_dir(step)}/{STATE_FILE}"),
                         trust=self.trust)


def _commit_problem(commit: Any, step: int) -> Optional[str]:
    """Why a COMMIT read from storage cannot be trusted as the record of ``step`` (None if it
    can): it must name its step, list at most :data:`MAX_COMMIT_FILES` plain file names of its
    own folder, each with an integer size and a sha256, and hold numeric metrics only."""
    if not isinstance(commit, dict) or commit.get("step") != step:
        return "it names another step, or is not a JSON object"
    files = commit.get("files")
    if not isinstance(files, dict) or not 0 < len(files) <= MAX_COMMIT_FILES:
        return f"'files' must map 1 to {MAX_COMMIT_FILES} file names to their size and sha256"
    for name, meta in files.items():
        if not _FILE_NAME_RE.match(name) or ".." in name:
            return f"it names {name!r}, not a plain file name inside its step folder"
        size = meta.get("size") if isinstance(meta, dict) else None
        if isinstance(size, bool) or not isinstance(size, int) or size < 0 or \
                not _SHA256_RE.match(str(meta.get("sha256"))):
            return f"the entry of {name!r} needs an integer size >= 0 and a sha256"
    metrics = commit.get("metrics", {})
    if not isinstance(metrics, dict) or any(
            isinstance(v, bool) or not isinstance(v, (int, float)) for v in metrics.values()):
        return "'metrics' must map names to numbers"
    return None


def _plain_metrics(metrics: Mapping[str, Any]) -> Dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor):
            v = v.item()
        try:
            out[str(k)] = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"metric {k!r} is not a number: {v!r}") from None
    return out

