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

    def governor(self, cores=None, processes=1, interval=10.0, max_threads=None, runs=None):
        return ThreadGovernor(self.cpus, cores or len(self.cpus), processes, interval,
                              max_threads, clock=lambda: self.t, host_busy=self.host_busy,
                              own=lambda: self.own_s, runs=runs, set_threads=self.set,
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


def test_runs_side_by_side_share_what_other_work_leaves():
    """launchers.local --parallel=2 on 8 CPUs: each run capped at 4; the two runs' own CPU time
    is the group's (``own``), a build on 4 CPUs leaves 4, 2 for each; when one run has ended,
    the other may take what is left up to its cap."""
    host = FakeHost(cpus=8, threads_now=4)
    alive = {"runs": 2}
    g = host.governor(max_threads=4, runs=lambda: alive["runs"])
    host.own = 8.0                          # the two runs at their share: no other work
    host.advance(10)
    assert g.check() is None and host.threads == 4
    host.own, host.others = 4.0, 4.0        # a build starts
    host.advance(10)
    assert g.check().startswith("CPU threads 4 -> 2: other work kept 4.0 of this process's 8 "
                                "CPUs busy over the last 10 s, shared by 2 runs side by side")
    assert g.changes[-1]["group_runs"] == 2 and host.threads == 2
    alive["runs"] = 1                       # the other run ends
    for _ in range(2):
        host.advance(10)
        g.check()
    assert host.threads == 4 and "group_runs" not in g.changes[-1]


@pytest.mark.parametrize("cpus,share,others,runs,expected", [
    (8, 4, 0.0, 2, 4), (8, 4, 4.0, 2, 2), (8, 8, 2.0, 3, 2), (2, 1, 1.5, 2, 1)])
def test_the_rule_with_runs_side_by_side(cpus, share, others, runs, expected):
    assert FakeHost(cpus=cpus).governor(max_threads=share).wanted(others, runs) == expected


def _group_root(spinners):
    """A child process that starts ``spinners`` spinning children of its own, each
    pinned to one of this process's CPUs, and sleeps without reaping them. Returns
    (its Popen, its children's pids)."""
    cpus = sorted(os.sched_getaffinity(0))
    pinned = [cpus[i % len(cpus)] for i in range(spinners)]
    code = f"""
import subprocess, sys, time
spin = "import os\\nos.sched_setaffinity(0, {{%d}})\\nwhile True: pass"
kids = [subprocess.Popen([sys.executable, "-c", spin % c]) for c in {pinned}]
print(" ".join(str(k.pid) for k in kids), flush=True)
time.sleep(120)
"""
    root = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    kids = [int(p) for p in root.stdout.readline().split()]
    return root, kids


def test_a_groups_runs_are_its_own_work_and_exited_runs_do_not_count():
    """Real processes: a root with two spinning children (runs side by side). Their CPU time
    is the group's: other work as the group's governor measures it is lower, by what they
    used, than as a governor without the group measures it; a run that exited (a zombie its
    root has not reaped yet) is not counted as alive."""
    import signal
    cpus = sorted(os.sched_getaffinity(0))
    root, kids = _group_root(2)
    try:
        group = threads.CpuGroup(root.pid)
        assert group.runs() == 2
        time.sleep(0.3)
        own = threads.OwnCpu()
        t0, busy0, own0, grp0 = time.monotonic(), threads.host_busy_s(cpus), own(), group.cpu_s()
        time.sleep(1.0)
        t1, busy1, own1, grp1 = time.monotonic(), threads.host_busy_s(cpus), own(), group.cpu_s()
        if busy0 is None or busy1 is None:
            pytest.skip("no /proc/stat")
        group_cpus = (grp1 - grp0) / (t1 - t0)
        others_alone = ((busy1 - busy0) - (own1 - own0)) / (t1 - t0)
        others_group = ((busy1 - busy0) - (grp1 - grp0)) / (t1 - t0)
        assert group_cpus >= 0.4, group_cpus   # the runs ran (however busy the machine is)
        assert others_alone - others_group == pytest.approx(group_cpus - (own1 - own0) /
                                                            (t1 - t0), abs=0.1)
        os.kill(kids[0], signal.SIGKILL)       # a run ends; its root has not reaped it yet
        deadline = time.monotonic() + 30
        while group.runs() != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert group.runs() == 1
    finally:
        os.killpg(root.pid, signal.SIGKILL)
        root.wait()


def test_the_group_is_named_by_an_ancestor(monkeypatch):
    monkeypatch.delenv(threads.GROUP_ENV, raising=False)
    assert threads.cpu_group_for_this_process() is None
    monkeypatch.setenv(threads.GROUP_ENV, str(os.getppid()))
    assert threads.cpu_group_for_this_process().root == os.getppid()
    for bad in ("launcher", "0", "-4"):
        monkeypatch.setenv(threads.GROUP_ENV, bad)
        with pytest.raises(device.DeviceError, match=f"TRM_CPU_GROUP='{bad}' is not a process "
                                                      "id; unset it"):
            threads.cpu_group_for_this_process()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:   # a live process, but not one this one runs under (e.g. a stale value)
        monkeypatch.setenv(threads.GROUP_ENV, str(child.pid))
        with pytest.raises(device.DeviceError, match="is not a process this one was started "
                                                      "under; unset it"):
            threads.cpu_group_for_this_process()
    finally:
        child.kill()
        child.wait()


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


def _spin(cpu, detached):
    """A process spinning on ``cpu``: this process's child, or (``detached``) an orphan that
    is not its descendant (started by a shell that exits at once). Returns its pid."""
    code = f"import os; os.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"
    if not detached:
        return subprocess.Popen([sys.executable, "-c", code]).pid
    out = subprocess.run(["sh", "-c", f'"{sys.executable}" -c "$0" >/dev/null 2>&1 & echo $!',
                          code], capture_output=True, text=True, check=True, timeout=30)
    return int(out.stdout.strip())


def _stop(pid):
    import signal
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:   # not our child: its parent reaps it
        pass


def test_a_real_busy_process_lowers_the_threads():
    """Real measurements: a spinner on this machine (pinned to one of this process's CPUs, not
    its descendant) is other work; the governor, started at every CPU, drops a thread."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    state = {"n": len(cpus)}
    g = ThreadGovernor(cpus, len(cpus), 1, 0.5, set_threads=lambda n: state.update(n=n),
                       get_threads=lambda: state["n"])
    pid = _spin(cpus[-1], detached=True)
    try:
        time.sleep(0.2)
        g.check()          # restart the window with the spinner running
        g._last = g._sample()
        time.sleep(0.8)
        change = g.check()
    finally:
        _stop(pid)
    assert state["n"] <= len(cpus) - 1, change
    assert change and change.startswith(f"CPU threads {len(cpus)} -> {state['n']}")


def test_a_busy_child_process_is_this_runs_own_work():
    """torch.compile's compile workers are child processes of the run: their CPU time is the
    run's own, not other work. Measured as the difference the child makes to the governor's
    estimate of other work (so that other load on the machine does not matter)."""
    cpus = sorted(os.sched_getaffinity(0))
    pid = _spin(cpus[-1], detached=False)
    own = threads.OwnCpu()
    tick = os.sysconf("SC_CLK_TCK")
    try:
        time.sleep(0.3)
        t0, busy0 = time.monotonic(), threads.host_busy_s(cpus)
        own0, self0 = own(), sum(os.times()[:2])
        child0 = threads.descendant_ticks()[pid]
        time.sleep(1.0)
        t1, busy1 = time.monotonic(), threads.host_busy_s(cpus)
        own1, self1 = own(), sum(os.times()[:2])
        child1 = threads.descendant_ticks()[pid]
    finally:
        _stop(pid)
    if busy0 is None or busy1 is None:
        pytest.skip("no /proc/stat")
    others = ((busy1 - busy0) - (own1 - own0)) / (t1 - t0)
    others_without_children = ((busy1 - busy0) - (self1 - self0)) / (t1 - t0)
    child_cpus = (child1 - child0) / tick / (t1 - t0)   # the CPUs the spinner kept busy
    assert child_cpus >= 0.2, child_cpus   # it ran (however busy the machine is)
    # counted as this run's own work, not other work (to the clock tick)
    assert others_without_children - others == pytest.approx(child_cpus, abs=0.1), \
        (others, others_without_children, child_cpus)


def _descendants_s(pid):
    """CPU-seconds of the live descendants of ``pid``."""
    return sum(threads.descendant_ticks(pid).values()) / os.sysconf("SC_CLK_TCK")


SPIN_THEN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass\n"


def test_own_cpu_time_counts_descendants_and_keeps_their_time_after_they_exit():
    import signal
    own = threads.OwnCpu()
    before = own()
    # a grandchild: the shell waits for python (no exec: "; true" follows)
    shell = subprocess.Popen(["sh", "-c", f'"{sys.executable}" -c "$0"; true',
                              SPIN_THEN + "time.sleep(60)"], start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while _descendants_s(shell.pid) < 0.5 and time.monotonic() < deadline:
            time.sleep(0.1)
        alive = own()
        # the grandchild's spinning (>= 50 clock ticks; 1e-9: float sums of tick counts)
        assert alive - before >= 0.5 - 1e-9
    finally:
        os.killpg(shell.pid, signal.SIGKILL)
        shell.wait()
    assert _descendants_s(shell.pid) == 0.0
    assert own() >= alive     # gone, reaped: its time stays counted, once


def test_own_cpu_time_is_this_processs_alone_without_descendants():
    own = threads.OwnCpu()
    start = own()
    t = time.process_time()
    while time.process_time() - t < 0.3:
        pass
    assert 0.25 <= own() - start <= 2.0


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

