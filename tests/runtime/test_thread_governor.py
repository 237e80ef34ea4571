"""The CPU thread governor: the thread rule re-applied while the machine's load changes."""

import os
import subprocess
import sys
import time

import pytest

from trm.runtime import device, threads
from trm.runtime.threads import ThreadGovernor


class FakeHost:
    """A clock and a host whose other work keeps ``others`` CPUs busy; this process uses
    ``own`` CPUs."""

    def __init__(self, cpus=2, threads_now=2):
        self.t, self.busy_s, self.own_s = 0.0, 0.0, 0.0
        self.others, self.own = 0.0, 0.0
        self.threads, self.measured = threads_now, 0
        self.cpus = list(range(cpus))

    def advance(self, seconds):
        self.t += seconds
        self.busy_s += (self.others + self.own) * seconds
        self.own_s += self.own * seconds

    def host_busy(self, cpus):
        self.measured += 1
        return self.busy_s

    def set(self, n):
        self.threads = n

    def governor(self, cores=None, processes=1, interval=10.0):
        return ThreadGovernor(self.cpus, cores or len(self.cpus), processes, interval,
                              clock=lambda: self.t, host_busy=self.host_busy,
                              own=lambda: self.own_s, set_threads=self.set,
                              get_threads=lambda: self.threads)


def test_other_work_lowers_the_threads_at_once_and_its_end_raises_them_after_two_checks():
    host = FakeHost(cpus=2, threads_now=2)
    g = host.governor()
    host.own = 1.5
    host.advance(10)
    assert g.check() is None and host.threads == 2          # quiet: both threads stay
    host.others = 1.0                                         # another process starts
    host.advance(10)
    change = g.check()
    assert host.threads == 1 and change.startswith("CPU threads 2 -> 1: other work kept 1.0 "
                                                   "of this process's 2 CPUs busy")
    host.advance(10)
    assert g.check() is None and host.threads == 1
    host.others = 0.0                                         # it ends
    host.advance(10)
    assert g.check() is None and host.threads == 1            # one quiet interval: wait
    host.advance(10)
    assert g.check().startswith("CPU threads 1 -> 2") and host.threads == 2
    assert [(c["threads_from"], c["threads"]) for c in g.changes] == [(2, 1), (1, 2)]
    assert len(g.new_changes()) == 2 and g.new_changes() == []


def test_a_flickering_load_does_not_flap_the_threads_up():
    host = FakeHost(cpus=2, threads_now=1)
    g = host.governor()
    for others in (0.0, 1.0, 0.0, 1.0, 0.0, 1.0):
        host.others = others
        host.advance(10)
        g.check()
        assert host.threads == 1
    assert g.changes == []


def test_this_process_own_work_is_not_other_work():
    host = FakeHost(cpus=2, threads_now=2)
    g = host.governor()
    host.own, host.others = 1.9, 0.1    # both CPUs busy, nearly all of it this process
    host.advance(10)
    assert g.check() is None and host.threads == 2


@pytest.mark.parametrize("cpus,cores,processes,others,expected", [
    (16, 16, 1, 3.0, 13),
    (16, 16, 4, 0.0, 4),     # the host's training processes share the cores
    (64, 2, 1, 30.0, 2),     # a CPU quota of 2 on a 64-CPU host
    (2, 2, 1, 2.0, 1),       # never below one
])
def test_the_rule_it_reapplies(cpus, cores, processes, others, expected):
    host = FakeHost(cpus=cpus)
    assert host.governor(cores, processes).wanted(others) == expected


def test_between_intervals_it_only_reads_the_clock():
    host = FakeHost()
    g = host.governor(interval=10.0)
    before = host.measured
    for _ in range(100):
        host.advance(0.05)
        assert g.check() is None
    assert host.measured == before


def test_an_unreadable_proc_stat_changes_nothing():
    host = FakeHost(threads_now=2)
    g = ThreadGovernor([0, 1], 2, 1, 1.0, clock=lambda: host.t, host_busy=lambda cpus: None,
                       own=lambda: 0.0, set_threads=host.set, get_threads=lambda: host.threads)
    host.advance(5)
    assert g.check() is None and host.threads == 2


def test_a_real_busy_process_lowers_the_threads():
    """Real measurements: a spinner on this machine (pinned to one of this process's CPUs) is
    other work; the governor, started at every CPU, drops at least one thread."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    state = {"n": len(cpus)}
    g = ThreadGovernor(cpus, len(cpus), 1, 0.5, set_threads=lambda n: state.update(n=n),
                       get_threads=lambda: state["n"])
    spinner = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, "
                                f"{{{cpus[-1]}}})\nwhile True: pass"])
    try:
        time.sleep(0.2)
        g.check()          # restart the window with the spinner running
        g._last = g._sample()
        time.sleep(0.8)
        change = g.check()
    finally:
        spinner.kill()
        spinner.wait()
    assert state["n"] <= len(cpus) - 1, change
    assert change and change.startswith(f"CPU threads {len(cpus)} -> {state['n']}")


def test_only_where_the_rule_chose_the_count(monkeypatch):
    for name in ("TRM_CPU_THREADS", "OMP_NUM_THREADS", threads.INTERVAL_ENV):
        monkeypatch.delenv(name, raising=False)
    g = threads.governor_for_this_process()
    assert g is not None and g.interval_s == threads.DEFAULT_INTERVAL_S
    monkeypatch.setenv(threads.INTERVAL_ENV, "2.5")
    assert threads.governor_for_this_process().interval_s == 2.5
    monkeypatch.setenv(threads.INTERVAL_ENV, "0")
    assert threads.governor_for_this_process() is None
    for bad in ("soon", "nan", "inf"):
        monkeypatch.setenv(threads.INTERVAL_ENV, bad)
        with pytest.raises(device.DeviceError, match=f"TRM_CPU_THREADS_INTERVAL_S='{bad}' is "
                                                      "not a number of seconds"):
            threads.governor_for_this_process()
    monkeypatch.delenv(threads.INTERVAL_ENV)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.governor_for_this_process() is None
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setenv("TRM_CPU_THREADS", "2")
    assert threads.governor_for_this_process() is None

