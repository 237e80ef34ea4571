"""Choosing the device, and the few device-specific operations trm needs.

Every ``torch_xla`` import sits behind :func:`is_xla_available`, which is cached and true only
when torch_xla imports *and* the user asked for it (``PJRT_DEVICE`` is set, e.g. ``TPU`` on a
TPU VM or ``CPU`` for XLA:CPU tests). Otherwise CUDA is used when present, else the CPU.
"""

from __future__ import annotations

import functools
import math
import os
import resource
import time

from typing import Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple, Union

import torch

from trm.errors import TrmError


@functools.lru_cache(maxsize=None)
def is_xla_available() -> bool:
    if not os.environ.get("PJRT_DEVICE"):
        return False
    try:
        import torch_xla  # noqa: F401
    except ImportError:
        return False
    return True


class DeviceError(TrmError, RuntimeError):
    """The requested device is not available here (the message names what to install)."""


def xla_unavailable_reason() -> str:
    """Why ``DEVICE='xla'`` cannot run in this process, with the fix."""
    try:
        import torch_xla  # noqa: F401
    except ImportError:
        return ("DEVICE='xla' needs the package torch_xla, which is not installed: on a TPU VM "
                "pip install 'trm[tpu]' (docs/SETUP_GUIDE.md); for XLA on the CPU pip install "
                "'trm[xla-cpu]' and set PJRT_DEVICE=CPU. Or set DEVICE='auto'/'cpu'.")
    return ("DEVICE='xla' needs PJRT_DEVICE in the environment (PJRT_DEVICE=TPU on a TPU VM, "
            "CPU for XLA on the CPU); it is not set.")


def select_device(preference: str = "auto") -> torch.device:
    """``auto`` | ``xla`` | ``cuda`` | ``cpu`` -> a torch.device.

    An explicit ``xla`` or ``cuda`` that is not available raises :class:`DeviceError` (never a
    silent run on the CPU); ``auto`` takes XLA, then CUDA, then the CPU.
    """
    if preference not in ("auto", "xla", "cuda", "cpu"):
        raise DeviceError(f"Unknown device {preference!r}; use auto, xla, cuda or cpu.")
    if preference in ("auto", "xla") and is_xla_available():
        import torch_xla.core.xla_model as xm
        return xm.xla_device() if not hasattr(torch, "xla") else torch.device("xla")
    if preference == "xla":
        raise DeviceError(xla_unavailable_reason())
    if preference in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if preference == "cuda":
        raise DeviceError("DEVICE='cuda' needs a CUDA GPU and a CUDA build of torch; this "
                          f"process sees none (torch {torch.__version__}, "
                          f"CUDA build: {torch.version.cuda or 'no'}). On a GPU machine install "
                          "a CUDA build of torch (docs/SETUP_GUIDE.md), or set DEVICE='auto'.")
    return torch.device("cpu")


DEFAULT_XLA_CACHE_DIR = "~/.cache/trm/xla_cache"


def init_xla_compile_cache(path: Optional[str] = None) -> Optional[str]:
    """Turns on torch_xla's persistent compile cache, so a resumed run or the next run of the
    same shapes (another seed, another workdir) loads its graphs instead of compiling them.

    ``path``: a local folder; default ``$TRM_XLA_CACHE_DIR``, else ``~/.cache/trm/xla_cache``;
    an empty string turns the cache off. Each process of a host gets its own subfolder (one
    writer per folder). Must run before the process's first XLA computation. Returns the folder,
    or None (no XLA, cache off, or computations already ran)."""
    if path is None:
        path = os.environ.get("TRM_XLA_CACHE_DIR", DEFAULT_XLA_CACHE_DIR)
    if not path or not is_xla_available():
        return None
    if "://" in path:
        raise DeviceError(f"The XLA compile cache must be a local folder, not {path!r}: set "
                          "TRM_XLA_CACHE_DIR to a path on the VM's disk.")
    import torch_xla
    import torch_xla.runtime as xr
    if torch_xla._XLAC._xla_computation_cache_is_initialized():
        return None
    folder = os.path.join(os.path.expanduser(path),
                          f"process_{os.environ.get('PJRT_LOCAL_PROCESS_RANK', '0')}")
    os.makedirs(folder, exist_ok=True)
    xr.initialize_cache(folder, readonly=False)
    return folder


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX-512 BF16 or AMX-BF16 on x86, BF16 on
    Arm). ``$TRM_CPU_BF16=1`` / ``0`` overrides the detection."""
    forced = os.environ.get("TRM_CPU_BF16")
    if forced is not None and forced.strip() != "":
        return forced.strip().lower() not in ("0", "false", "no", "off")
    return bool(cpu_info()[1] & {"avx512_bf16", "amx_bf16", "bf16"})


def cpu_info() -> Tuple[str, FrozenSet[str]]:
    """``(model name, feature flags)`` of the first CPU in /proc/cpuinfo (``("unknown",
    frozenset())`` where it cannot be read)."""
    name, flags = "unknown", frozenset()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key == "model name" and name == "unknown":
                    name = value.strip()
                elif key in ("flags", "features"):
                    flags = frozenset(value.split())
                    break   # the first CPU's; its model name comes before (x86)
    except OSError:
        pass
    return name, flags


def choose_cpu_threads(processes_on_host: int = 1, cpus: Optional[Sequence[int]] = None,
                       cores: Optional[Tuple[int, str]] = None, group: Any = None) -> str:
    """Sets torch's intra-op thread count for a CPU run and returns how it was chosen.

    ``cpus`` (:func:`allowed_cpus`) and ``cores`` (:func:`usable_cores`) are measured here
    unless the caller already has them; ``group``: the runs this one shares the machine with
    on purpose (:class:`trm.runtime.threads.CpuGroup`, ``$TRM_CPU_GROUP``).

    The rule: ``$TRM_CPU_THREADS`` if set; else ``$OMP_NUM_THREADS`` if set (torch already
    follows it); else the cores this process may use (:func:`usable_cores`: its CPU affinity,
    capped by a cgroup CPU quota such as ``docker --cpus`` or a Kubernetes limit), shared by the
    training processes on the host and at most ``$TRM_CPU_THREADS_MAX`` (:func:`thread_share`;
    ``launchers.local --parallel=N`` sets it to its cores // N), less the CPUs other work
    keeps busy now among those it may run on (:func:`busy_cores`; the group's runs are not
    other work, and share what it leaves: :func:`free_share`), at least 1. torch's default
    (every core the host has) collapses when another process wants a core: a small train step
    went from ~4 ms to ~200 ms on 2 cores with one other busy process (docs/BENCHMARKS.md); in
    a container it starts a thread per host core whatever the quota.
    """
    forced = _thread_count_env("TRM_CPU_THREADS", "set it to e.g. 1, or unset it to let trm "
                                                  "choose.")
    if forced is not None:
        torch.set_num_threads(forced)
        return f"{forced} (TRM_CPU_THREADS)"
    if os.environ.get("OMP_NUM_THREADS", "").strip():
        return f"{torch.get_num_threads()} (OMP_NUM_THREADS)"
    cpus = allowed_cpus() if cpus is None else list(cpus)
    cores, why = usable_cores(cpus) if cores is None else cores
    cap = threads_max()
    busy, how = busy_cores(cpus, exclude=group.cpu_s if group is not None else None)
    runs = group.runs() if group is not None else 1
    share = thread_share(cores, processes_on_host, cap)
    threads = free_share(len(cpus), busy, share, runs)
    torch.set_num_threads(threads)
    capped = f", at most {cap} ({THREADS_MAX_ENV})" if cap is not None else ""
    shared = (f", the rest shared by {runs} runs side by side (TRM_CPU_GROUP)"
              if group is not None else "")
    return (f"{threads} (rule: {cores} cores{why} / {processes_on_host} process(es) on the "
            f"host{capped}, {busy:.1f} of its {len(cpus)} CPUs busy with other work ({how})"
            f"{shared}; TRM_CPU_THREADS overrides)")


#: caps the thread rule's count (not a fixed count: the rule and the governor still lower it
#: when other work needs the cores); ``launchers.local`` sets it for runs one at a time
THREADS_MAX_ENV = "TRM_CPU_THREADS_MAX"


def positive_int_env(name: str, what: str, fix: str) -> Optional[int]:
    """``$name`` as a positive whole number, None when unset; else a one-line
    :class:`DeviceError` saying it is not ``what``, ending with ``fix``."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise DeviceError(f"{name}={raw!r} is not {what}; {fix}")
    return value


def _thread_count_env(name: str, fix: str) -> Optional[int]:
    """``$name`` as a positive thread count (:func:`positive_int_env`)."""
    return positive_int_env(name, "a positive thread count", fix)


def threads_max() -> Optional[int]:
    """``$TRM_CPU_THREADS_MAX`` as a positive count, None when unset.

    Raises:
      DeviceError: it is set but not a positive whole number (one line, with the fix).
    """
    return _thread_count_env(THREADS_MAX_ENV, "set it to e.g. 2, or unset it to let the rule "
                                              "use every core it may.")


def thread_share(cores: int, processes_on_host: int = 1, cap: Optional[int] = None) -> int:
    """The most threads the rule gives one process: ``cores`` shared by the training
    processes on the host, at most ``cap`` (:func:`threads_max`), at least 1."""
    share = max(1, cores // max(1, processes_on_host))
    return max(1, min(share, cap)) if cap is not None else share


def free_share(cpus: int, others_busy: float, share: int, runs: int = 1) -> int:
    """The thread rule: the CPUs other work leaves free (rounded), shared by ``runs`` runs side
    by side, at most ``share`` (:func:`thread_share`), at least 1."""
    free = int((cpus - others_busy) / max(1, runs) + 0.5)
    return max(1, min(share, free))


def allowed_cpus() -> List[int]:
    """The CPUs this process may run on (its affinity: ``taskset``, cpusets), else all."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def usable_cores(cpus: Optional[Sequence[int]] = None) -> Tuple[int, str]:
    """How many cores this process can keep busy, and why when it is fewer than its CPUs.

    The CPUs it may run on (:func:`allowed_cpus`), capped by its cgroup's CPU bandwidth limit
    (:func:`cpu_quota`) rounded up: a container limited to 2 CPUs on a 64-core host gets 2,
    where ``os.cpu_count()`` says 64. ``launchers.local`` shares the same count among its runs.
    """
    cpus = allowed_cpus() if cpus is None else list(cpus)
    quota = cpu_quota()
    if quota is not None and math.ceil(quota - 1e-9) < len(cpus):
        return max(1, math.ceil(quota - 1e-9)), f" (CPU quota {quota:g} of {len(cpus)} CPUs)"
    return len(cpus), ""


def cpu_quota(proc_cgroup: str = "/proc/self/cgroup",
              cgroup_root: str = "/sys/fs/cgroup") -> Optional[float]:
    """This process's CPU bandwidth limit in cores (quota / period), or None when it has none.

    Read from its cgroup and every cgroup above it (the smallest limit applies): cgroup v2's
    ``cpu.max`` (``200000 100000`` = 2 cores; ``max`` = none) and cgroup v1's
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (quota -1 = none). Inside a container the
    container's own cgroup is the mount's root, which the walk reaches too.
    """
    try:
        with open(proc_cgroup) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    limits: List[float] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if not controllers:
            limits += _limits_along(cgroup_root, path, _cpu_max_v2)
        elif "cpu" in controllers.split(","):
            for mount in ("cpu,cpuacct", "cpuacct,cpu", "cpu"):
                if os.path.isdir(os.path.join(cgroup_root, mount)):
                    limits += _limits_along(os.path.join(cgroup_root, mount), path, _cfs_v1)
                    break
    return min(limits) if limits else None


def _limits_along(mount: str, path: str, read) -> List[float]:
    """The limits ``read`` finds in ``mount/path`` and each folder above it up to ``mount``."""
    parts = [p for p in path.split("/") if p and p not in (".", "..")]
    found = []
    for depth in range(len(parts), -1, -1):
        value = read(os.path.join(mount, *parts[:depth]))
        if value is not None:
            found.append(value)
    return found


def _read_words(*paths: str) -> Optional[List[str]]:
    try:
        out = []
        for p in paths:
            with open(p) as f:
                out += f.read().split()
        return out
    except OSError:
        return None


def _quota(quota: str, period: str) -> Optional[float]:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _cpu_max_v2(folder: str) -> Optional[float]:
    words = _read_words(os.path.join(folder, "cpu.max"))
    return _quota(words[0], words[1]) if words and len(words) >= 2 else None


def _cfs_v1(folder: str) -> Optional[float]:
    words = _read_words(os.path.join(folder, "cpu.cfs_quota_us"),
                       os.path.join(folder, "cpu.cfs_period_us"))
    return _quota(words[0], words[1]) if words and len(words) >= 2 else None


def _cpu_ticks(path: str = "/proc/stat") -> Dict[Optional[int], Tuple[int, int]]:
    """{CPU number: (all, idle + iowait ticks so far)} from /proc/stat; None = the whole host."""
    out: Dict[Optional[int], Tuple[int, int]] = {}
    with open(path) as f:
        for line in f:
            if not line.startswith("cpu"):
                break
            name, *values = line.split()
            ticks = [int(v) for v in values]
            cpu = None if name == "cpu" else int(name[3:])
            out[cpu] = (sum(ticks), ticks[3] + ticks[4])
    if None not in out:
        raise ValueError(f"{path} has no 'cpu' line")
    return out


def busy_ticks(ticks: Dict[Optional[int], Tuple[int, int]],
               cpus: Union[int, Sequence[int]]) -> Tuple[float, float]:
    """(busy, all) ticks so far of ``cpus`` in a :func:`_cpu_ticks` reading: the sum of their
    own lines, or, where one has no line of its own or ``cpus`` is a count, the host line's
    ticks scaled to that many CPUs."""
    if not isinstance(cpus, int) and all(c in ticks for c in cpus):
        total = sum(ticks[c][0] for c in cpus)
        idle = sum(ticks[c][1] for c in cpus)
        return float(total - idle), float(total)
    count = cpus if isinstance(cpus, int) else len(cpus)
    host_cpus = len(ticks) - 1 or os.cpu_count() or 1
    total, idle = ticks[None]
    return (total - idle) * count / host_cpus, total * count / host_cpus


def busy_cores(cpus: Union[int, Sequence[int]], sample_s: float = 0.25,
               exclude: Optional[Callable[[], float]] = None) -> Tuple[float, str]:
    """How many CPUs other work keeps busy now, and how that was measured.

    ``cpus``: the CPUs this process may run on (a list of CPU numbers: the sum of each one's
    busy share, from its own /proc/stat line, so work pinned elsewhere on a big host does not
    count), or a count (the host's busy share times it). Measured over a ``sample_s`` sample
    of /proc/stat (this process sleeps meanwhile), or the 1-minute load average where
    /proc/stat is missing (it lags: a job that just ended counts). ``exclude``: a running total
    of CPU-seconds that are not other work (e.g. :class:`trm.runtime.threads.CpuGroup`'s
    runs), taken off the sample (not off the load average).
    """
    count = cpus if isinstance(cpus, int) else len(cpus)
    try:
        mine0, t0 = (exclude() if exclude else 0.0), time.monotonic()
        before = _cpu_ticks()
        time.sleep(sample_s)
        after = _cpu_ticks()
        mine1, t1 = (exclude() if exclude else 0.0), time.monotonic()
        # each CPU's own line only where both readings have it, else the host's share
        which = (cpus if not isinstance(cpus, int)
                 and all(c in before and c in after for c in cpus) else count)
        (busy0, all0), (busy1, all1) = busy_ticks(before, which), busy_ticks(after, which)
        if all1 > all0:
            busy = count * (busy1 - busy0) / (all1 - all0) - (mine1 - mine0) / max(t1 - t0, 1e-3)
            return min(float(count), max(0.0, busy)), f"sampled over {sample_s:g} s"
    except (OSError, ValueError, IndexError, KeyError):
        pass
    try:
        return min(float(count), os.getloadavg()[0]), "1-minute load average"
    except (AttributeError, OSError):
        return 0.0, "unknown"


def forward_dtype_rule(device: torch.device) -> str:
    """Why ``FORWARD_DTYPE='auto'`` picks :func:`default_forward_dtype` on ``device`` (run.json
    records it beside the dtype)."""
    if device.type != "cpu":
        return f"auto: bfloat16 on {device.type}"
    if os.environ.get("TRM_CPU_BF16", "").strip():
        return f"auto: TRM_CPU_BF16={os.environ['TRM_CPU_BF16'].strip()}"
    return ("auto: this CPU computes bfloat16 natively" if cpu_has_native_bf16() else
            "auto: this CPU has no native bfloat16 (float32 is faster); TRM_CPU_BF16=1 overrides")


def default_forward_dtype(device: torch.device) -> torch.dtype:
    """The forward dtype ``FORWARD_DTYPE='auto'`` picks: bfloat16 on TPU/GPU (as the
    reference) and on CPUs with native bf16 (master weights, losses and norm statistics stay
    float32, as in the reference); float32 on other CPUs."""
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    return torch.bfloat16


def synchronize(device: torch.device) -> None:
    """Waits for queued work (for timing)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "xla":
        import torch_xla
        torch_xla.sync()
        import torch_xla.core.xla_model as xm
        xm.wait_device_ops()


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory: allocator peak on CUDA/XLA, peak resident set size on the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    if device.type == "xla":
        import torch_xla.core.xla_model as xm
        info = xm.get_memory_info(device)
        return int(info.get("peak_bytes_used", info.get("bytes_used", 0)))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


# Dense (no sparsity) peak bfloat16 tensor-core FLOP/s per device, from the vendors' data
# sheets (SXM / top-bin parts): MFU in trm.bench is measured against these.
PEAK_BF16_FLOPS = {
    "H200": 989e12,   # NVIDIA H200 SXM
    "H100": 989e12,   # NVIDIA H100 SXM (the PCIe part: 756e12)
    "A100": 312e12,   # NVIDIA A100
    "L40S": 362e12,   # NVIDIA L40S
}


def device_peak_flops(device: torch.device, dtype: torch.dtype = torch.bfloat16
                      ) -> Optional[float]:
    """The data-sheet peak of this CUDA device for ``dtype`` (bf16/fp16 tensor cores), or None
    when unknown (CPU, XLA, other GPUs: ``trm.bench`` then uses the measured matmul rate)."""
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
        return None
    name = torch.cuda.get_device_name(device).upper()
    for key, peak in PEAK_BF16_FLOPS.items():
        if key in name:
            return 756e12 if key == "H100" and "PCIE" in name else peak
    return None


def matmul_flops(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048,
                 seconds: float = 1.0) -> float:
    """Measured FLOP/s of an ``n x n`` matmul on ``device`` in ``dtype``."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    synchronize(device)
    reps, start = 0, time.perf_counter()
    while True:
        a @ b
        reps += 1
        if reps % 4 == 0:
            synchronize(device)
            if time.perf_counter() - start >= seconds:
                break
    return 2.0 * n ** 3 * reps / (time.perf_counter() - start)


_ALLOCATOR_TUNED = False


def tune_cpu_allocator() -> bool:
    """Keeps freed memory in the process instead of unmapping it (glibc ``mallopt``).

    glibc serves allocations above 32 MiB with fresh ``mmap`` pages and returns them on free,
    so every large activation of a TRM step page-faults anew (measured: an elementwise op on a
    38 MB tensor ran 2-3x slower). Disabling mmap-backed allocations and trimming makes the
    heap reuse that memory. Idempotent; returns False where glibc is not available.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    if os.environ.get("TRM_NO_MALLOPT"):
        return False
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    ok = bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 1 << 62))
    _ALLOCATOR_TUNED = ok
    return ok
