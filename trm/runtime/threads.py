"""Keeping a CPU run's torch thread count right while the machine's load changes.

:func:`trm.runtime.device.choose_cpu_threads` picks the thread count once, at start, from the
load it sees then. Other work that starts later (a second run, a build, a browser) makes torch's
threads fight it for the cores, and a step can get tens of times slower (two threads on two
busy cores: docs/BENCHMARKS.md, the platform notes). :class:`ThreadGovernor` re-applies the same
rule during the run: every ``interval_s`` (``$TRM_CPU_THREADS_INTERVAL_S``, default 10 s) it
measures how many of the process's CPUs *other* work kept busy over the last interval -- the
CPUs' busy time from /proc/stat less this process's own CPU time and its descendant processes'
(torch.compile's compile workers are the run's own work; :class:`OwnCpu`) -- and sets

    threads = max(1, min(cores // processes_on_host, $TRM_CPU_THREADS_MAX,
                         round(CPUs - others_busy)))

It lowers the count at the first interval that asks for fewer threads (a collapse costs more
than a briefly idle core) and raises it again only after two intervals in a row agree (the other
work has ended). It runs only where the rule chose the count: ``$TRM_CPU_THREADS`` or
``$OMP_NUM_THREADS`` fix it for the whole run. ``$TRM_CPU_THREADS_MAX`` only caps it:
``launchers.local`` sets that for runs one at a time, so they adapt too; runs side by side get
a fixed share (``OMP_NUM_THREADS``), as each governor would count the other runs as other
work: a run at its share uses a little more than its share of CPU time (about 2.1 CPUs at 2
threads, docs/BENCHMARKS.md), and with many runs the governors would take threads from all
of them and give them back, over and over. The trainer checks at every step and evaluation
batch (a clock read between checks), logs each change, and records them in run.json
(``cpu_thread_changes``) and TensorBoard (``perf/cpu_threads``).

The thread count can change the last bits of a CPU result (parallel reductions split the work
differently), so a run whose count changed is not bitwise repeatable; set ``TRM_CPU_THREADS``
(or ``OMP_NUM_THREADS``; ``launchers.local`` passes either on to its runs) where that
matters.
"""

from __future__ import annotations

import math
import os
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

from trm.runtime import device

__all__ = ["ThreadGovernor", "governor_for_this_process", "DEFAULT_INTERVAL_S"]

DEFAULT_INTERVAL_S = 10.0
INTERVAL_ENV = "TRM_CPU_THREADS_INTERVAL_S"


def _clock_ticks() -> float:
    try:
        return float(os.sysconf("SC_CLK_TCK"))
    except (AttributeError, ValueError, OSError):
        return 100.0


def host_busy_s(cpus: Sequence[int]) -> Optional[float]:
    """CPU-seconds the ``cpus`` have been busy since boot (/proc/stat), None where unknown."""
    try:
        busy, _ = device.busy_ticks(device._cpu_ticks(), cpus)
    except (OSError, ValueError, IndexError, KeyError):
        return None
    return busy / _clock_ticks()


def descendant_ticks(pid: Optional[int] = None) -> Dict[int, int]:
    """{pid: user + system clock ticks} of each live descendant of ``pid`` (default: this
    process), from /proc/<pid>/stat; empty where /proc is missing."""
    root = os.getpid() if pid is None else pid
    children: Dict[int, List[int]] = {}
    ticks: Dict[int, int] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return {}
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                raw = f.read()
            # the fields after the command name "(...)": state, ppid, ..., utime (the line's
            # 14th field), stime
            fields = raw[raw.rindex(b")") + 2:].split()
            proc = int(entry)
            children.setdefault(int(fields[1]), []).append(proc)
            ticks[proc] = int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            continue   # gone since the listing, or unreadable
    out: Dict[int, int] = {}
    todo = list(children.get(root, ()))
    while todo:
        proc = todo.pop()
        if proc in out or proc == root:
            continue
        out[proc] = ticks.get(proc, 0)
        todo.extend(children.get(proc, ()))
    return out


class OwnCpu:
    """A running total of the CPU-seconds of this process (every thread: torch's, tf.data's,
    ...) and of its descendant processes (e.g. torch.compile's compile workers: the run's own
    work, not other work) since the first call.

    Descendants count by what each one used between two calls while it was alive, so the total
    never goes down when one exits (its accumulated time is kept), and nothing counts twice (a
    child's time that reappears in its parent's totals once reaped is not read). A descendant
    born and gone between two calls is not seen: its time counts as other work."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: Optional[Dict[int, int]] = None
        self._descendants = 0

    def __call__(self) -> float:
        with self._lock:
            now = descendant_ticks()
            if self._last is not None:
                for proc, ticks in now.items():
                    before = self._last.get(proc, 0)
                    # a pid seen with more ticks before is a reused pid: a new process
                    self._descendants += ticks - before if ticks >= before else ticks
            self._last = now
            descendants = self._descendants
        t = os.times()
        return t.user + t.system + descendants / _clock_ticks()


#: this process's :class:`OwnCpu` (one running total, shared by every caller)
own_cpu_s = OwnCpu()


class ThreadGovernor:
    """Re-applies the CPU thread rule during a run (see the module docstring).

    ``cores``: the cores the process may use (:func:`trm.runtime.device.usable_cores`);
    ``cpus``: the CPUs it may run on; ``max_threads``: the most it ever sets
    (``$TRM_CPU_THREADS_MAX``, :func:`trm.runtime.device.threads_max`); the measurements
    (``clock``, ``host_busy``, ``own``) can be replaced, e.g. in tests.
    """

    def __init__(self, cpus: Sequence[int], cores: int, processes_on_host: int = 1,
                 interval_s: float = DEFAULT_INTERVAL_S, max_threads: Optional[int] = None,
                 clock: Callable[[], float] = time.monotonic,
                 host_busy: Callable[[Sequence[int]], Optional[float]] = host_busy_s,
                 own: Callable[[], float] = own_cpu_s,
                 set_threads: Callable[[int], None] = torch.set_num_threads,
                 get_threads: Callable[[], int] = torch.get_num_threads) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.cpus = list(cpus)
        self.share = device.thread_share(cores, processes_on_host, max_threads)
        self.interval_s = interval_s
        self._clock, self._host_busy, self._own = clock, host_busy, own
        self._set, self._get = set_threads, get_threads
        self._last = self._sample()
        self._raise_votes = 0
        #: every change so far: {"threads_from", "threads", "others_busy", "time"}
        self.changes: List[Dict[str, object]] = []
        self._reported = 0

    def current(self) -> int:
        """The thread count now."""
        return self._get()

    def _sample(self):
        return self._clock(), self._host_busy(self.cpus), self._own()

    def wanted(self, others_busy: float) -> int:
        """The rule's thread count when other work keeps ``others_busy`` of the CPUs busy."""
        free = int(len(self.cpus) - others_busy + 0.5)
        return max(1, min(self.share, free))

    def check(self) -> Optional[str]:
        """Measures and adjusts once an interval has passed since the last measurement;
        returns a one-line description of a change, else None. Cheap between intervals."""
        now = self._clock()
        if now - self._last[0] < self.interval_s:
            return None
        t1, busy1, own1 = self._sample()
        t0, busy0, own0 = self._last
        self._last = (t1, busy1, own1)
        if busy0 is None or busy1 is None or t1 <= t0:
            return None
        others = ((busy1 - busy0) - (own1 - own0)) / (t1 - t0)
        others = min(float(len(self.cpus)), max(0.0, others))
        current, want = self._get(), self.wanted(others)
        if want > current:
            self._raise_votes += 1
            if self._raise_votes < 2:
                return None
        else:
            self._raise_votes = 0
        if want == current:
            return None
        self._raise_votes = 0
        self._set(want)
        self.changes.append({"threads_from": current, "threads": want,
                             "others_busy": round(others, 2),
                             "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        return (f"CPU threads {current} -> {want}: other work kept {others:.1f} of this "
                f"process's {len(self.cpus)} CPUs busy over the last {t1 - t0:.0f} s "
                "(TRM_CPU_THREADS fixes the count)")

    def new_changes(self) -> List[Dict[str, object]]:
        """The changes not returned by an earlier call (for run.json)."""
        out = self.changes[self._reported:]
        self._reported = len(self.changes)
        return out


def governor_for_this_process(processes_on_host: int = 1, cpus: Optional[Sequence[int]] = None,
                              cores: Optional[int] = None) -> Optional[ThreadGovernor]:
    """A governor when the thread rule chose the count (neither ``$TRM_CPU_THREADS`` nor
    ``$OMP_NUM_THREADS`` is set), else None; ``$TRM_CPU_THREADS_INTERVAL_S`` sets its
    interval (0 turns it off). ``cpus`` (:func:`trm.runtime.device.allowed_cpus`) and
    ``cores`` (the count of :func:`trm.runtime.device.usable_cores`) are measured here unless
    the caller already has them."""
    if any(os.environ.get(k, "").strip() for k in ("TRM_CPU_THREADS", "OMP_NUM_THREADS")):
        return None
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    try:
        interval = float(raw) if raw else DEFAULT_INTERVAL_S
        if not math.isfinite(interval):
            raise ValueError(raw)
    except ValueError:
        raise device.DeviceError(f"{INTERVAL_ENV}={raw!r} is not a number of seconds; set it "
                                 "to e.g. 10, or 0 to keep the start's thread count") from None
    if interval <= 0:
        return None
    cpus = device.allowed_cpus() if cpus is None else list(cpus)
    cores = device.usable_cores(cpus)[0] if cores is None else cores
    return ThreadGovernor(cpus, cores, processes_on_host, interval, device.threads_max())
