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
``launchers.local`` sets that for its runs, so they adapt too. Runs side by side on purpose
(``launchers.local --parallel=N``) are one :class:`CpuGroup` (``$TRM_CPU_GROUP``, the pid of
the process whose children they are): the group's CPU time is not other work, and the CPUs
other work leaves are shared by the group's runs alive now, so the rule becomes

    threads = max(1, min(share, round((CPUs - others_busy) / runs_alive)))

Without the group each run would count the others as other work: a run at its share uses a
little more than its share of CPU time (about 2.1 CPUs at 2 threads, docs/BENCHMARKS.md), and
with many runs the governors would take threads from all of them and give them back, over and
over. The trainer checks at every step and evaluation
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
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

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


def _processes() -> Tuple[Dict[int, List[int]], Dict[int, int], Set[int]]:
    """(live children by parent pid, user + system clock ticks by pid, zombie pids) of every
    process in /proc; empty where /proc is missing."""
    children: Dict[int, List[int]] = {}
    ticks: Dict[int, int] = {}
    zombies: Set[int] = set()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return children, ticks, zombies
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
            if fields[0] == b"Z":
                zombies.add(proc)
        except (OSError, ValueError, IndexError):
            continue   # gone since the listing, or unreadable
    return children, ticks, zombies


def descendant_ticks(pid: Optional[int] = None) -> Dict[int, int]:
    """{pid: user + system clock ticks} of each live descendant of ``pid`` (default: this
    process), from /proc/<pid>/stat; empty where /proc is missing."""
    root = os.getpid() if pid is None else pid
    children, ticks, _ = _processes()
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
    born and gone between two calls is not seen: its time counts as other work.

    ``root``: the descendants of that process instead, without its own time (a
    :class:`CpuGroup`'s runs)."""

    def __init__(self, root: Optional[int] = None) -> None:
        self._lock = threading.Lock()
        self._root = root
        self._last: Optional[Dict[int, int]] = None
        self._descendants = 0

    def __call__(self) -> float:
        with self._lock:
            now = descendant_ticks(self._root)
            if self._last is not None:
                for proc, ticks in now.items():
                    before = self._last.get(proc, 0)
                    # a pid seen with more ticks before is a reused pid: a new process
                    self._descendants += ticks - before if ticks >= before else ticks
            self._last = now
            descendants = self._descendants
        if self._root is not None:
            return descendants / _clock_ticks()
        t = os.times()
        return t.user + t.system + descendants / _clock_ticks()


#: this process's :class:`OwnCpu` (one running total, shared by every caller)
own_cpu_s = OwnCpu()

#: the pid of the process whose children are runs sharing the machine on purpose
#: (``launchers.local --parallel=N`` sets it to itself; :class:`CpuGroup`)
GROUP_ENV = "TRM_CPU_GROUP"


class CpuGroup:
    """Runs that share the machine on purpose: the children of process ``root`` (each with its
    descendants), e.g. ``launchers.local``'s runs side by side. Their CPU time is the group's
    own work, not other work, and the CPUs other work leaves free are shared among the runs
    alive now: a run's governor no longer takes threads away because its siblings use theirs,
    and every run still gives threads up when a process outside the group wants the cores."""

    def __init__(self, root: int) -> None:
        self.root = root
        #: the running total of the group's CPU-seconds (see :class:`OwnCpu`)
        self.cpu_s = OwnCpu(root)

    def runs(self) -> int:
        """The runs alive now (``root``'s children, not counting exited ones), at least 1."""
        children, _, zombies = _processes()
        return max(1, sum(1 for c in children.get(self.root, ()) if c not in zombies))


def _ancestors(pid: int) -> List[int]:
    """The parent, grandparent, ... of ``pid`` (from /proc); empty where /proc is missing."""
    out: List[int] = []
    while pid > 1 and len(out) < 512:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                raw = f.read()
            pid = int(raw[raw.rindex(b")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            break
        out.append(pid)
    return out


def cpu_group_for_this_process() -> Optional[CpuGroup]:
    """The :class:`CpuGroup` named by ``$TRM_CPU_GROUP``, None when it is unset or /proc is
    missing (nothing to measure the group with).

    Raises:
      DeviceError: the value is not a pid, or not one of this process's ancestors (one line,
        with the fix).
    """
    fix = (f"unset it ({GROUP_ENV} names the process whose children run side by side; "
           "launchers.local --parallel sets it to itself).")
    root = device.positive_int_env(GROUP_ENV, "a process id", fix)
    if root is None or not os.path.isdir("/proc/self"):
        return None
    if root not in _ancestors(os.getpid()):
        raise device.DeviceError(f"{GROUP_ENV}={str(root)!r} is not a process this one was "
                                 f"started under; {fix}")
    return CpuGroup(root)


class ThreadGovernor:
    """Re-applies the CPU thread rule during a run (see the module docstring).

    ``cores``: the cores the process may use (:func:`trm.runtime.device.usable_cores`);
    ``cpus``: the CPUs it may run on; ``max_threads``: the most it ever sets
    (``$TRM_CPU_THREADS_MAX``, :func:`trm.runtime.device.threads_max`); ``group``: the
    :class:`CpuGroup` this run shares the machine with (its CPU time is not other work, the
    free CPUs are shared by its runs); the measurements (``clock``, ``host_busy``, ``own``,
    ``runs``) can be replaced, e.g. in tests.
    """

    def __init__(self, cpus: Sequence[int], cores: int, processes_on_host: int = 1,
                 interval_s: float = DEFAULT_INTERVAL_S, max_threads: Optional[int] = None,
                 group: Optional[CpuGroup] = None,
                 clock: Callable[[], float] = time.monotonic,
                 host_busy: Callable[[Sequence[int]], Optional[float]] = host_busy_s,
                 own: Optional[Callable[[], float]] = None,
                 runs: Optional[Callable[[], int]] = None,
                 set_threads: Callable[[int], None] = torch.set_num_threads,
                 get_threads: Callable[[], int] = torch.get_num_threads) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.cpus = list(cpus)
        self.share = device.thread_share(cores, processes_on_host, max_threads)
        self.interval_s = interval_s
        self._clock, self._host_busy = clock, host_busy
        self._own = own or (group.cpu_s if group is not None else own_cpu_s)
        self._runs = runs or (group.runs if group is not None else (lambda: 1))
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

    def wanted(self, others_busy: float, runs: int = 1) -> int:
        """The rule's thread count when other work keeps ``others_busy`` of the CPUs busy and
        ``runs`` runs of this one's group share the rest."""
        return device.free_share(len(self.cpus), others_busy, self.share, runs)

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
        runs = self._runs()
        current, want = self._get(), self.wanted(others, runs)
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
        change: Dict[str, object] = {"threads_from": current, "threads": want,
                                     "others_busy": round(others, 2)}
        if runs > 1:
            change["group_runs"] = runs
        change["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.changes.append(change)
        shared = f", shared by {runs} runs side by side" if runs > 1 else ""
        return (f"CPU threads {current} -> {want}: other work kept {others:.1f} of this "
                f"process's {len(self.cpus)} CPUs busy over the last {t1 - t0:.0f} s{shared} "
                "(TRM_CPU_THREADS fixes the count)")

    def new_changes(self) -> List[Dict[str, object]]:
        """The changes not returned by an earlier call (for run.json)."""
        out = self.changes[self._reported:]
        self._reported = len(self.changes)
        return out


def governor_for_this_process(processes_on_host: int = 1, cpus: Optional[Sequence[int]] = None,
                              cores: Optional[int] = None,
                              group: Optional[CpuGroup] = None) -> Optional[ThreadGovernor]:
    """A governor when the thread rule chose the count (neither ``$TRM_CPU_THREADS`` nor
    ``$OMP_NUM_THREADS`` is set), else None; ``$TRM_CPU_THREADS_INTERVAL_S`` sets its
    interval (0 turns it off). ``cpus`` (:func:`trm.runtime.device.allowed_cpus`) and
    ``cores`` (the count of :func:`trm.runtime.device.usable_cores`) are measured here unless
    the caller already has them; ``group``: :func:`cpu_group_for_this_process`."""
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
    return ThreadGovernor(cpus, cores, processes_on_host, interval, device.threads_max(), group)
