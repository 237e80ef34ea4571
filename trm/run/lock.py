"""The lease lock that keeps two runs from writing one workdir.

    lock = LeaseLock(Storage("gs://bucket/runs/e1"))
    lock.acquire({"command": " ".join(sys.argv)})   # WorkdirLockedError if another run owns it
    ...  lock.heartbeat()  ...   # cheap; raises LockLostError if another process took the lock
    lock.release()               # (a background thread refreshes the lease every 30 s)

The lock is the file ``LOCK`` (JSON: owner id, host, pid, process start time, boot id, start
time, heartbeat). It is *stale* -- and taken over with a warning -- when its heartbeat is older
than its ``stale_after_s``, or when it is on this host and its process is gone.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from typing import Any, Dict, Optional

from trm.errors import TrmError
from trm.run.storage import Storage, UntrustedFileError, call_bounded, utc_now_iso

log = logging.getLogger(__name__)

LOCK_NAME = "LOCK"
MAX_STALE_AFTER_S = 86400.0   # a LOCK claiming a longer lease is not one trm wrote
_UNREADABLE = {"owner_id": "unparseable", "host": "?", "pid": -1, "heartbeat": 0.0}


class WorkdirLockedError(TrmError, RuntimeError):
    """Another live run owns the workdir's lease lock."""


class LockLostError(RuntimeError):
    """This process's lease lock was taken over (or removed) by someone else."""


# -- process identity (for stale-lock detection) --------------------------------------------
def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _proc_start(pid: int) -> Optional[str]:
    """The process start time in clock ticks since boot (Linux), to tell reused pids apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        return stat.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

def _lock_record(raw: Any) -> Dict[str, Any]:
    """A LOCK as read from storage, if its fields have the types and ranges the checks rely on
    (a finite heartbeat, a lease of at most a day, a positive pid); anything else reads as an
    owner without heartbeat, i.e. stale."""
    if not isinstance(raw, dict):
        return dict(_UNREADABLE)
    beat, limit, pid = raw.get("heartbeat"), raw.get("stale_after_s", 180.0), raw.get("pid")

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    ok = (isinstance(raw.get("owner_id"), str) and number(beat) and number(limit)
          and 0 < limit <= MAX_STALE_AFTER_S and isinstance(pid, int)
          and not isinstance(pid, bool) and pid > 0)
    return dict(raw) if ok else dict(_UNREADABLE)


class LeaseLock:
    """The lease lock of one folder (see the module docstring)."""

    def __init__(self, storage: Storage, name: str = LOCK_NAME) -> None:
        self.storage = storage
        self.name = name
        self.path = storage.path
        self._lock: Optional[Dict[str, Any]] = None
        self._lock_last_beat = 0.0
        self._heartbeat_every_s = 30.0
        self._beat_thread: Optional[threading.Thread] = None
        self._beat_stop = threading.Event()
        self._beat_lock = threading.Lock()
        self._lock_error: Optional[LockLostError] = None

    def acquire(self, owner_info: Optional[Dict[str, Any]] = None, *,
                     stale_after_s: float = 180.0, heartbeat_every_s: float = 30.0,
                     background: bool = True, force: bool = False) -> Dict[str, Any]:
        """Takes the workdir's lease lock (file ``LOCK``), or raises WorkdirLockedError.

        The lock records host, pid, start time, a heartbeat time and ``owner_info``. With
        ``background`` (the default) a daemon thread refreshes the heartbeat every
        ``heartbeat_every_s``, so the lease stays fresh through long evals and compilations
        and expires only when the process is gone; without it, call :meth:`heartbeat`.

        An existing lock is *stale* (taken over, with a warning) when its heartbeat is older
        than its ``stale_after_s``, or it is on this host and its process no longer exists.
        ``force=True`` takes over any lock (for an operator who knows the owner is dead).

        Creation is exclusive where the storage allows it (local: a hard link; GCS: an upload
        with the ``ifGenerationMatch=0`` precondition, which real GCS enforces); the lock is
        then read back to confirm ownership. A backend that ignores preconditions (the GCS
        emulator) leaves a race of a few milliseconds between two runs starting at the same
        instant; the loser's next heartbeat finds the lock taken and raises LockLostError.

        Returns the lock record.
        """
        if self._lock is not None:
            return self._lock
        now = time.time()
        record = {
            "owner_id": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
            "proc_start": _proc_start(os.getpid()), "boot_id": _boot_id(),
            "start_time": utc_now_iso(), "heartbeat": now, "heartbeat_time": utc_now_iso(),
            "stale_after_s": stale_after_s, "info": dict(owner_info or {}),
        }
        payload = json.dumps(record, indent=2, sort_keys=True, default=str).encode()
        for _ in range(3):
            if self.storage.create_exclusive(self.name, payload):
                break
            current = self._read_lock()
            if current is None:
                continue  # released in between: try again
            reason = "forced" if force else self._stale_reason(current, now)
            if reason is None:
                raise WorkdirLockedError(self._locked_message(current, now))
            log.warning("Taking over the lock of %s held by %s (%s)", self.path,
                        self._describe_owner(current, now), reason)
            # Delete only the lock judged stale (re-read right before), then create anew.
            again = self._read_lock()
            if again is not None and again.get("owner_id") == current.get("owner_id"):
                try:
                    self.storage.remove(self.name)
                except OSError as e:  # e.g. a folder named LOCK
                    raise WorkdirLockedError(f"Cannot take over {self.storage.url(self.name)} "
                                             f"({type(e).__name__}: {e}); remove it by hand."
                                             ) from None
        else:
            raise WorkdirLockedError(f"Could not acquire the lock of {self.path} (it kept "
                                     "changing hands); is another run starting there?")
        if self.storage.protocol in ("gs", "gcs"):
            time.sleep(0.2)  # let a racing writer's upload land before checking ownership
        current = self._read_lock()
        if current is None or current.get("owner_id") != record["owner_id"]:
            raise WorkdirLockedError(self._locked_message(current or {}, time.time(),
                                                          lost_race=True))
        self._lock = record
        self._lock_last_beat = now
        self._heartbeat_every_s = heartbeat_every_s
        self._lock_error = None
        if background:
            self._beat_stop = threading.Event()
            self._beat_thread = threading.Thread(target=self._beat_loop, daemon=True,
                                                 name="trm-lock-heartbeat")
            self._beat_thread.start()
        return record

    def heartbeat(self, force: bool = False) -> None:
        """Refreshes the lock's heartbeat; raises LockLostError if the lock was taken.

        Cheap to call every step: with the background thread it only reports what the thread
        found; without it, it rewrites LOCK at most every ``heartbeat_every_s`` (or now, with
        ``force``), after checking that the lock is still ours.
        """
        if self._lock_error is not None:
            raise self._lock_error
        if self._lock is None:
            raise RuntimeError(f"heartbeat() without holding the lock of {self.path}")
        if self._beat_thread is not None and not force:
            return
        if not force and time.time() - self._lock_last_beat < self._heartbeat_every_s:
            return
        with self._beat_lock:
            self._beat()

    def _beat(self, storage: Optional[Storage] = None) -> None:
        storage = storage or self.storage
        now = time.time()
        current = self._read_lock(storage)
        if current is None or current.get("owner_id") != self._lock["owner_id"]:
            owner = self._describe_owner(current, now) if current else "nobody (LOCK removed)"
            # The error first: a reader seeing the lock gone must also see why.
            self._lock_error = LockLostError(
                f"The lock of {self.path} is no longer ours; it is held by {owner}. Stop "
                "writing to this workdir.")
            self._lock = None
            raise self._lock_error
        record = dict(self._lock, heartbeat=now, heartbeat_time=utc_now_iso())
        storage.write_json(self.name, record)
        self._lock = record
        self._lock_last_beat = now

    def _beat_loop(self) -> None:
        """The heartbeat thread. During a storage outage a beat fails (one attempt, no retries:
        the next beat comes soon) and the failure is logged; training is never blocked. An
        outage longer than ``stale_after_s`` lets another run take the lock over; the first
        beat after the outage then finds it taken (LockLostError at the next log interval)."""
        stop = self._beat_stop
        # One attempt per beat (gcsfs still retries each request for ~30 s on its own).
        quick = copy.copy(self.storage)
        quick.max_retries = 0
        quick.retry_budget_s = None
        failing_since: Optional[float] = None
        while not stop.wait(self._heartbeat_every_s):
            with self._beat_lock:
                if stop.is_set() or self._lock is None:
                    return
                try:
                    self._beat(quick)
                except LockLostError as exc:
                    log.error("%s", exc)
                    return
                except Exception as exc:
                    if failing_since is None:
                        failing_since = time.time()
                    log.warning("Lock heartbeat for %s failed (storage unreachable for %.0f s; "
                                "the lease goes stale %.0f s after the last beat): %s: %s",
                                self.path, time.time() - failing_since,
                                float(self._lock.get("stale_after_s") or 180.0),
                                type(exc).__name__, exc)
                    continue
                if failing_since is not None:
                    log.warning("Lock heartbeat for %s works again after %.0f s", self.path,
                                time.time() - failing_since)
                    failing_since = None

    def release(self, timeout_s: float = 60.0) -> None:
        """Stops the heartbeat; removes LOCK if this process still owns it (never raises
        LockLostError).

        Bounded: at most ``timeout_s`` (or until a stopping process's exit grace window ends)
        is spent on the storage. If LOCK cannot be removed in that time (an outage), it is left
        in place with a warning; it goes stale ``stale_after_s`` after its last heartbeat, and
        at once for a restart on this host (the process is gone)."""
        exit_left = self.storage.exit.remaining()
        if exit_left is not None:
            timeout_s = min(timeout_s, max(exit_left, 0.0))
        if self._beat_thread is not None:
            self._beat_stop.set()
            # Wait for a beat in progress (so it cannot rewrite LOCK after the removal), but
            # not for one stuck in an outage.
            if self._beat_lock.acquire(timeout=min(5.0, timeout_s)):
                self._beat_lock.release()
                self._beat_thread.join(timeout=5)
            self._beat_thread = None
        if self._lock is None:
            return
        owner = self._lock["owner_id"]

        def drop() -> bool:
            current = self._read_lock()
            if current is not None and current.get("owner_id") == owner:
                self.storage.remove(self.name)
                return True
            return current is None

        try:
            if not call_bounded(drop, timeout_s, f"releasing the lock of {self.path}"):
                log.warning("Not removing the lock of %s: it is no longer ours", self.path)
        except Exception as exc:
            log.warning("Could not remove the lock of %s (%s: %s); it goes stale %.0f s after "
                        "its last heartbeat, and at once for a restart on this host", self.path,
                        type(exc).__name__, exc,
                        float(self._lock.get("stale_after_s") or 180.0))
        finally:
            self._lock = None

    @property
    def holds(self) -> bool:
        return self._lock is not None

    def _read_lock(self, storage: Optional[Storage] = None) -> Optional[Dict[str, Any]]:
        try:
            return _lock_record(json.loads((storage or self.storage).read_text(self.name)))
        except FileNotFoundError:
            return None
        except (ValueError, UntrustedFileError, IsADirectoryError):
            # Unreadable (our writes are atomic, so not ours): stale, an owner without heartbeat.
            return dict(_UNREADABLE)

    def _stale_reason(self, lock: Dict[str, Any], now: float) -> Optional[str]:
        age = now - float(lock.get("heartbeat") or 0.0)
        limit = float(lock.get("stale_after_s") or 180.0)
        if age > limit:
            return f"stale: last heartbeat {age:.0f} s ago (> {limit:.0f} s)"
        if age < -limit:
            return f"stale: its heartbeat lies {-age:.0f} s in the future"
        if lock.get("host") == socket.gethostname() and isinstance(lock.get("pid"), int):
            pid = lock["pid"]
            if lock.get("boot_id") and lock.get("boot_id") != _boot_id():
                return "stale: its host has rebooted since"
            if not _pid_alive(pid):
                return f"stale: process {pid} on this host no longer exists"
            start = lock.get("proc_start")
            if start and _proc_start(pid) not in (None, start):
                return f"stale: pid {pid} now belongs to a different process"
        return None

    @staticmethod
    def _describe_owner(lock: Dict[str, Any], now: float) -> str:
        age = now - float(lock.get("heartbeat") or 0.0)
        text = (f"host {lock.get('host')!r}, pid {lock.get('pid')}, started "
                f"{lock.get('start_time')}, last heartbeat {age:.0f} s ago")
        if lock.get("info"):
            text += f", {json.dumps(lock['info'], default=str)[:300]}"
        return text

    def _locked_message(self, lock: Dict[str, Any], now: float, lost_race: bool = False) -> str:
        what = ("another run took the lock at the same moment" if lost_race
                else "another run holds its lock")
        limit = float(lock.get("stale_after_s") or 180.0)
        return (f"Workdir {self.path} is in use: {what} ({self._describe_owner(lock, now)}). "
                f"Two runs must not write one workdir. If that run is dead, its lease expires "
                f"{limit:.0f} s after its last heartbeat (at once on the same host when its "
                f"process is gone); if you are sure it is dead, delete {self.storage.url(self.name)} "
                f"(or take over with --force_unlock / acquire(force=True)).")

