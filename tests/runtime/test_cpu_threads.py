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

    def set_host(cores, load):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
        monkeypatch.setattr(device, "busy_cores", lambda n: (load, "sampled"))

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
