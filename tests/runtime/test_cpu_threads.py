"""How a CPU run picks torch's thread count (issue #25): a documented rule, overridable."""

import os

import pytest
import torch

from trm.runtime import device


@pytest.fixture
def machine(monkeypatch):
    """A fake host: ``set(cores, load)``; torch's thread count is restored afterwards."""
    before = torch.get_num_threads()
    monkeypatch.delenv("TRM_CPU_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("TRM_CPU_THREADS_MAX", raising=False)
    monkeypatch.delenv("TRM_CPU_THREADS_INTERVAL_S", raising=False)

    def set_host(cores, load, quota=None):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
        monkeypatch.setattr(device, "busy_cores",
                            lambda cpus, exclude=None: (load, "sampled"))
        monkeypatch.setattr(device, "cpu_quota", lambda: quota)

    yield set_host
    torch.set_num_threads(before)


@pytest.mark.parametrize("cores,load,processes,expected", [
    (2, 0.0, 1, 2),    # a quiet 2-core machine: both cores
    (2, 1.1, 1, 1),    # one other busy process: one thread, not two fighting for a core
    (2, 3.0, 1, 1),    # overloaded: never fewer than one
    (16, 0.2, 1, 16),
    (16, 0.0, 4, 4),   # four training processes on the host share the cores
    (16, 14.0, 4, 2),  # ... and what other work leaves
])
def test_the_rule(machine, cores, load, processes, expected):
    machine(cores, load)
    rule = device.choose_cpu_threads(processes)
    assert torch.get_num_threads() == expected
    assert rule.startswith(f"{expected} (rule: {cores} cores")


def test_environment_overrides(machine, monkeypatch):
    machine(2, 0.0)
    monkeypatch.setenv("TRM_CPU_THREADS", "1")
    assert device.choose_cpu_threads() == "1 (TRM_CPU_THREADS)" and torch.get_num_threads() == 1
    monkeypatch.delenv("TRM_CPU_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    assert device.choose_cpu_threads() == "1 (OMP_NUM_THREADS)"


def test_busy_cores_measures_the_host_now(monkeypatch):
    """A real /proc/stat sample: between 0 and the cores, and a busy process in the sample
    counts; without /proc/stat, the 1-minute load average."""
    import subprocess
    import sys
    busy, how = device.busy_cores(2, sample_s=0.2)
    assert 0.0 <= busy <= 2.0 and how == "sampled over 0.2 s"
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time
        time.sleep(0.3)
        assert device.busy_cores(2, sample_s=0.5)[0] > 0.5  # the spinner holds about one core
    finally:
        spinner.kill()
        spinner.wait()

    def no_proc(*args, **kwargs):
        raise OSError("no /proc")
    monkeypatch.setattr(device, "_cpu_ticks", no_proc)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.5, 1.0, 1.0))
    assert device.busy_cores(2) == (1.5, "1-minute load average")


@pytest.mark.parametrize("bad", ["0", "two", "-1"])
def test_a_bad_override_is_one_clear_line(machine, monkeypatch, bad):
    machine(2, 0.0)
    monkeypatch.setenv("TRM_CPU_THREADS", bad)
    with pytest.raises(device.DeviceError, match="TRM_CPU_THREADS=.*positive thread count"):
        device.choose_cpu_threads()


@pytest.mark.parametrize("cores,load,processes,cap,expected", [
    (16, 0.0, 1, 4, 4),     # a quiet 16-core host, each launcher run capped at 4
    (16, 14.0, 1, 4, 2),    # other work still takes threads away under the cap
    (16, 0.0, 8, 4, 2),     # the training processes' share is below the cap
    (2, 0.0, 1, 1, 1),
    (2, 0.0, 1, 64, 2),     # a cap above the cores changes nothing
])
def test_a_thread_cap_caps_the_rule(machine, monkeypatch, cores, load, processes, cap, expected):
    machine(cores, load)
    monkeypatch.setenv("TRM_CPU_THREADS_MAX", str(cap))
    rule = device.choose_cpu_threads(processes)
    assert torch.get_num_threads() == expected
    assert rule.startswith(f"{expected} (rule: {cores} cores / {processes} process(es) on the "
                           f"host, at most {cap} (TRM_CPU_THREADS_MAX),")
    # the governor re-applies the same cap
    from trm.runtime.threads import governor_for_this_process
    governor = governor_for_this_process(processes)
    assert governor.share == device.thread_share(cores, processes, cap)
    assert governor.wanted(0.0) == min(cap, max(1, cores // processes))


@pytest.mark.parametrize("bad", ["0", "many", "-2", "1.5"])
def test_a_bad_thread_cap_is_one_clear_line(machine, monkeypatch, bad):
    machine(2, 0.0)
    monkeypatch.setenv("TRM_CPU_THREADS_MAX", bad)
    with pytest.raises(device.DeviceError, match="TRM_CPU_THREADS_MAX=.*positive thread count"):
        device.choose_cpu_threads()


def test_a_cpu_runtime_records_its_choice(machine, monkeypatch):
    machine(2, 1.0)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    from trm.runtime.distributed import init_runtime
    rt = init_runtime("cpu")
    assert rt.cpu_threads.startswith("1 (rule:") and torch.get_num_threads() == 1


def test_the_forward_dtype_rule_says_why(monkeypatch):
    monkeypatch.setenv("TRM_CPU_BF16", "0")
    assert device.forward_dtype_rule(torch.device("cpu")) == "auto: TRM_CPU_BF16=0"
    assert device.default_forward_dtype(torch.device("cpu")) == torch.float32
    monkeypatch.delenv("TRM_CPU_BF16")
    native = device.cpu_has_native_bf16()
    assert ("natively" in device.forward_dtype_rule(torch.device("cpu"))) == native
    assert device.forward_dtype_rule(torch.device("cuda")) == "auto: bfloat16 on cuda"


@pytest.mark.parametrize("cores,load,quota,processes,expected", [
    (64, 0.0, 2.0, 1, 2),    # docker --cpus=2 on a quiet 64-core host: 2, not 64
    (64, 30.0, 2.0, 1, 2),   # other containers keep 30 of the host's CPUs busy
    (64, 0.0, 1.5, 1, 2),    # a fractional quota rounds up (both threads are throttled together)
    (64, 0.0, 0.5, 1, 1),
    (64, 0.0, 8.0, 4, 2),    # four training processes share the quota
    (2, 0.0, 4.0, 1, 2),     # a quota above the CPUs changes nothing
])
def test_a_cpu_quota_caps_the_threads(machine, cores, load, quota, processes, expected):
    machine(cores, load, quota)
    rule = device.choose_cpu_threads(processes)
    assert torch.get_num_threads() == expected
    if quota < cores:
        assert rule.startswith(f"{expected} (rule: {-int(-quota // 1)} cores (CPU quota "
                               f"{quota:g} of {cores} CPUs) / {processes} process(es)"), rule
    else:
        assert rule.startswith(f"{expected} (rule: {cores} cores / "), rule


def _cgroup_file(tmp_path, text):
    path = tmp_path / "self_cgroup"
    path.write_text(text)
    return str(path)


def _write(folder, name, text):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)


def test_cpu_quota_reads_cgroup_v2_along_the_hierarchy(tmp_path):
    root = tmp_path / "cg"
    own = root / "kubepods" / "pod1" / "ctr"
    _write(own, "cpu.max", "max 100000\n")                       # no limit of its own
    _write(root / "kubepods" / "pod1", "cpu.max", "150000 100000\n")  # the pod's: 1.5 cores
    _write(root / "kubepods", "cpu.max", "800000 100000\n")
    cg = _cgroup_file(tmp_path, "0::/kubepods/pod1/ctr\n")
    assert device.cpu_quota(cg, str(root)) == 1.5
    # inside a container (cgroup namespace) its own cgroup is the mount's root
    _write(tmp_path / "ns", "cpu.max", "200000 100000\n")
    assert device.cpu_quota(_cgroup_file(tmp_path, "0::/\n"), str(tmp_path / "ns")) == 2.0


def test_cpu_quota_reads_cgroup_v1(tmp_path):
    root = tmp_path / "cg"
    cpu = root / "cpu,cpuacct" / "docker" / "abc"
    _write(cpu, "cpu.cfs_quota_us", "300000\n")
    _write(cpu, "cpu.cfs_period_us", "100000\n")
    _write(root / "cpu,cpuacct", "cpu.cfs_quota_us", "-1\n")     # the root: unlimited
    _write(root / "cpu,cpuacct", "cpu.cfs_period_us", "100000\n")
    cg = _cgroup_file(tmp_path, "12:memory:/docker/abc\n3:cpuacct,cpu:/docker/abc\n"
                                "2:cpuset:/docker/abc\n")
    assert device.cpu_quota(cg, str(root)) == 3.0
    # older Docker: /proc/self/cgroup names the host's path, the mount holds only the container
    lone = tmp_path / "lone"
    _write(lone / "cpu", "cpu.cfs_quota_us", "50000\n")
    _write(lone / "cpu", "cpu.cfs_period_us", "100000\n")
    assert device.cpu_quota(_cgroup_file(tmp_path, "4:cpu:/docker/abc\n"), str(lone)) == 0.5


@pytest.mark.parametrize("files", [
    {},                                                    # no cgroup files at all
    {"cpu.max": "max 100000\n"},                          # unlimited
    {"cpu.max": "garbage\n"},                             # unreadable values: no limit
    {"cpu.max": "0 100000\n"},
])
def test_cpu_quota_is_none_without_a_usable_limit(tmp_path, files):
    for name, text in files.items():
        _write(tmp_path / "cg", name, text)
    assert device.cpu_quota(_cgroup_file(tmp_path, "0::/\n"), str(tmp_path / "cg")) is None
    assert device.cpu_quota(str(tmp_path / "missing"), str(tmp_path / "cg")) is None


def test_busy_cores_counts_only_the_cpus_this_process_may_use():
    """Work pinned to another CPU is not in this process's way: a real spinner pinned to CPU 1
    counts for [1] and for the host, not for [0] against [1]."""
    import subprocess
    import sys
    import time
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    other = cpus[1]
    spinner = subprocess.Popen([sys.executable, "-c", f"import os; os.sched_setaffinity(0, "
                                f"{{{other}}})\nwhile True: pass"])
    try:
        time.sleep(0.3)
        pinned, how = device.busy_cores([other], sample_s=0.5)
        assert pinned > 0.5 and how == "sampled over 0.5 s"   # the spinner holds CPU 1
        assert pinned <= 1.0                                 # a list of one CPU: at most one
    finally:
        spinner.kill()
        spinner.wait()


def test_busy_cores_per_cpu_arithmetic(monkeypatch):
    """From two /proc/stat samples: CPU 0 half busy, CPU 1 idle, CPU 2 fully busy."""
    samples = iter([{None: (0, 0), 0: (0, 0), 1: (0, 0), 2: (0, 0)},
                    {None: (300, 150), 0: (100, 50), 1: (100, 100), 2: (100, 0)}])
    monkeypatch.setattr(device, "_cpu_ticks", lambda: next(samples))
    monkeypatch.setattr(device.time, "sleep", lambda s: None)
    assert device.busy_cores([0, 1], sample_s=0.1) == (0.5, "sampled over 0.1 s")
    samples = iter([{None: (0, 0), 0: (0, 0)}, {None: (300, 150), 0: (100, 50)}])
    # CPU 5 has no line of its own: the host's share (0.5) times the CPUs asked about
    assert device.busy_cores([0, 5], sample_s=0.1) == (1.0, "sampled over 0.1 s")


class FakeGroup:
    """Runs side by side (trm.runtime.threads.CpuGroup): ``runs`` alive, no CPU time."""

    def __init__(self, runs):
        self._runs = runs

    def runs(self):
        return self._runs

    def cpu_s(self):
        return 0.0


@pytest.mark.parametrize("cores,load,cap,runs,expected", [
    (16, 0.0, 8, 2, 8),    # quiet: each run its share (the launcher's cap)
    (16, 4.0, 8, 2, 6),    # a build on 4 CPUs: the 12 it leaves, shared by the 2 runs
    (16, 12.0, 4, 4, 1),   # 4 left for 4 runs
    (2, 1.0, 1, 2, 1),     # never fewer than one
    (8, 2.0, 8, 1, 6),     # one run alive: all that other work leaves, as without a group
])
def test_runs_side_by_side_share_what_other_work_leaves(machine, monkeypatch, cores, load, cap,
                                                        runs, expected):
    machine(cores, load)
    monkeypatch.setenv("TRM_CPU_THREADS_MAX", str(cap))
    rule = device.choose_cpu_threads(1, group=FakeGroup(runs))
    assert torch.get_num_threads() == expected
    assert rule.startswith(f"{expected} (rule: {cores} cores / 1 process(es) on the host, "
                           f"at most {cap} (TRM_CPU_THREADS_MAX), {load:.1f} of its {cores} "
                           "CPUs busy with other work (sampled), the rest shared by "
                           f"{runs} runs side by side (TRM_CPU_GROUP)"), rule


def test_busy_cores_takes_off_the_groups_time(monkeypatch):
    """CPUs 0 and 2 busy 1.5 CPUs over the sample, of which the group's runs used 1.0."""
    samples = iter([{None: (0, 0), 0: (0, 0), 2: (0, 0)},
                    {None: (200, 50), 0: (100, 50), 2: (100, 0)}])
    clock, group = iter([10.0, 10.25]), iter([3.0, 3.25])
    monkeypatch.setattr(device, "_cpu_ticks", lambda: next(samples))
    monkeypatch.setattr(device.time, "sleep", lambda s: None)
    monkeypatch.setattr(device.time, "monotonic", lambda: next(clock))
    busy, how = device.busy_cores([0, 2], sample_s=0.25, exclude=lambda: next(group))
    assert busy == pytest.approx(0.5) and how == "sampled over 0.25 s"


def test_busy_ticks_of_a_cpu_list_and_the_governors_busy_seconds(monkeypatch):
    """One computation for the start's rule and the governor: the CPUs' own lines summed, or
    the host line scaled to them where one has no line (or only a count is known)."""
    from trm.runtime import threads
    ticks = {None: (400, 100), 0: (100, 50), 1: (100, 0), 2: (100, 25), 3: (100, 25)}
    assert device.busy_ticks(ticks, [0, 1]) == (150.0, 200.0)
    assert device.busy_ticks(ticks, [1, 7]) == (150.0, 200.0)  # CPU 7: the host's 3/4 each
    assert device.busy_ticks(ticks, 2) == (150.0, 200.0)
    monkeypatch.setattr(device, "_cpu_ticks", lambda: ticks)
    monkeypatch.setattr(threads, "_clock_ticks", lambda: 100.0)
    assert threads.host_busy_s([0, 2]) == 1.25
    monkeypatch.setattr(device, "_cpu_ticks", lambda: {0: (1, 1)})  # no host line: unknown
    assert threads.host_busy_s([5]) is None


def test_proc_stat_parsing(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  10 0 5 80 5 0 0 0 0 0\ncpu0 5 0 2 40 3 0 0 0 0 0\n"
                    "cpu1 5 0 3 40 2 0 0 0 0 0\nintr 1 2 3\n")
    assert device._cpu_ticks(str(stat)) == {None: (100, 85), 0: (50, 43), 1: (50, 42)}
    stat.write_text("intr 1 2 3\n")
    with pytest.raises(ValueError):
        device._cpu_ticks(str(stat))


def test_a_pinned_process_takes_the_cpus_it_may_use():
    """A real process pinned to one CPU: the rule sees one core (its affinity), whatever the
    host has."""
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS",
                                                             "TRM_CPU_THREADS")}
    code = ("import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})\n"
            "import torch; from trm.runtime import device\n"
            "print(device.choose_cpu_threads(), torch.get_num_threads())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout.strip()
    assert out.startswith("1 (rule: 1 cores") and out.endswith(" 1"), out
