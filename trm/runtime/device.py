"""Choosing the device, and the few device-specific operations trm needs.

Every ``torch_xla`` import sits behind :func:`is_xla_available`, which is cached and true only
when torch_xla imports *and* the user asked for it (``PJRT_DEVICE`` is set, e.g. ``TPU`` on a
TPU VM or ``CPU`` for XLA:CPU tests). Otherwise CUDA is used when present, else the CPU.
"""

from __future__ import annotations

import functools
import os
import resource
import time

from typing import FrozenSet, Optional, Tuple

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


def choose_cpu_threads(processes_on_host: int = 1) -> str:
    """Sets torch's intra-op thread count for a CPU run and returns how it was chosen.

    The rule: ``$TRM_CPU_THREADS`` if set; else ``$OMP_NUM_THREADS`` if set (torch already
    follows it); else the cores this process may use, shared by the training processes on the
    host, less the cores other work keeps busy now (:func:`busy_cores`), at least 1. torch's
    default (every core) collapses when another process wants a core: a small train step went
    from ~4 ms to ~200 ms on 2 cores with one other busy process (docs/BENCHMARKS.md).
    """
    forced = os.environ.get("TRM_CPU_THREADS", "").strip()
    if forced:
        try:
            threads = int(forced)
        except ValueError:
            threads = 0
        if threads < 1:
            raise DeviceError(f"TRM_CPU_THREADS={forced!r} is not a positive thread count; "
                              "set it to e.g. 1, or unset it to let trm choose.")
        torch.set_num_threads(threads)
        return f"{threads} (TRM_CPU_THREADS)"
    if os.environ.get("OMP_NUM_THREADS", "").strip():
        return f"{torch.get_num_threads()} (OMP_NUM_THREADS)"
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    busy, how = busy_cores(cores)
    share = max(1, cores // max(1, processes_on_host))
    free = int(cores - busy + 0.5)
    threads = max(1, min(share, free))
    torch.set_num_threads(threads)
    return (f"{threads} (rule: {cores} cores / {processes_on_host} process(es) on the host, "
            f"less {busy:.1f} busy ({how}); TRM_CPU_THREADS overrides)")


def _cpu_ticks() -> Tuple[int, int]:
    """(all, idle + iowait) CPU ticks of the host so far, from /proc/stat."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    return sum(ticks), ticks[3] + ticks[4]


def busy_cores(cores: int, sample_s: float = 0.25) -> Tuple[float, str]:
    """How many of ``cores`` other work keeps busy now, and how that was measured: the host's
    busy share over a ``sample_s`` sample of /proc/stat (this process sleeps meanwhile), or the
    1-minute load average where /proc/stat is missing (it lags: a job that just ended counts)."""
    try:
        total0, idle0 = _cpu_ticks()
        time.sleep(sample_s)
        total1, idle1 = _cpu_ticks()
        if total1 > total0:
            share = 1.0 - (idle1 - idle0) / (total1 - total0)
            return min(float(cores), max(0.0, share * cores)), f"sampled over {sample_s:g} s"
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.getloadavg()[0], "1-minute load average"
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
