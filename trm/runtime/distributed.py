"""Processes and collectives: torch_xla (TPU / XLA:CPU), torch.distributed (gloo/nccl), or one.

:func:`init_runtime` decides once per process:

* ``PJRT_DEVICE`` set and torch_xla importable -> XLA. On a TPU VM ``trm.train`` is started once
  per host and spawns one process per local device (``torch_xla.launch``); each process sees
  ``torch_xla.runtime.global_ordinal()`` / ``world_size()``. Collectives use ``xm.all_reduce``
  and ``xm.all_gather``.
* ``WORLD_SIZE > 1`` in the environment (``torchrun``) -> torch.distributed with ``nccl`` on
  GPUs and ``gloo`` on CPUs.
* Otherwise a single process.

The :class:`Runtime` methods are the only collectives the trainer uses, so the loop is one code
path for all three. Every tensor they send is 32-bit or smaller (:func:`check_collective_dtypes`):
on TPU, torch_xla's all-gather is a padded all-reduce, and XLA's 64-bit rewrite for TPU does not
support all-reduce (pytorch/xla#1952), so an int64 or float64 collective fails there.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import pickle
import queue
import threading
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional

import torch

from trm.errors import TrmError
from trm.runtime.device import (allowed_cpus, choose_cpu_threads, is_xla_available,
                                select_device, tune_cpu_allocator, usable_cores)

_WIDE_DTYPES = (torch.int64, torch.float64, torch.complex128, torch.uint64)


class CollectiveDtypeError(TrmError, TypeError):
    """A 64-bit tensor was about to enter a collective (unsupported on TPU)."""


def check_collective_dtypes(tensors: Iterable[torch.Tensor], what: str) -> None:
    """Raises :class:`CollectiveDtypeError` if one of ``tensors`` is 64-bit: every collective
    of a :class:`Runtime` goes through this check, on every backend, so the gloo tests catch
    what would fail on TPU."""
    wide = sorted({str(t.dtype) for t in tensors if t.dtype in _WIDE_DTYPES})
    if wide:
        raise CollectiveDtypeError(
            f"{what} got a {', '.join(wide)} tensor: collectives must be 32-bit or smaller (TPU "
            "cannot all-reduce 64-bit values); convert it (e.g. .to(torch.int32) / "
            ".to(torch.float32)) before the collective.")


@dataclasses.dataclass
class Runtime:
    """Where this process runs and how it talks to the others."""

    device: torch.device
    process_index: int = 0
    process_count: int = 1
    backend: str = "none"  # "none" | "gloo" | "nccl" | "xla"
    cpu_threads: str = ""  # torch's CPU threads and the rule that chose them (CPU runs)
    #: re-applies the thread rule as the machine's load changes (CPU runs where the rule chose
    #: the count; :mod:`trm.runtime.threads`)
    thread_governor: Optional[Any] = dataclasses.field(default=None, repr=False, compare=False)

    def describe(self) -> Dict[str, Any]:
        """This process's runtime as run.json records it: device, backend, process count, the
        torch version and CPU threads (with the rule that chose them)."""
        return dict(device=str(self.device), backend=self.backend, world_size=self.process_count,
                    torch_version=torch.__version__, torch_threads=torch.get_num_threads(),
                    cpu_threads_rule=self.cpu_threads or None)

    def adapt_cpu_threads(self) -> Optional[str]:
        """Lets the thread governor (if any) adjust torch's CPU threads to the machine's load
        now; returns the change it made (also logged), else None. Cheap: a clock read between
        its measurements."""
        if self.thread_governor is None:
            return None
        change = self.thread_governor.check()
        if change:
            logging.getLogger("trm.train").warning(change)
        return change

    @property
    def is_main(self) -> bool:
        return self.process_index == 0

    @property
    def is_xla(self) -> bool:
        return self.backend == "xla" or self.device.type == "xla"

    @property
    def distributed(self) -> bool:
        return self.process_count > 1

    # -- data movement ---------------------------------------------------------------------
    def to_device(self, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def prefetch(self, batches: Iterable[Any], depth: int = 2,
                 move: Optional[Callable[[Any], Any]] = None) -> Iterator[Any]:
        """Yields ``move(item)`` for each item of ``batches`` with the host-to-device transfer of
        the next ``depth`` items overlapping the current step's compute.

        ``move`` defaults to :meth:`to_device` (a batch dict). On XLA a background thread
        transfers (as torch_xla's parallel loader does); on CUDA it pins host memory and the
        copy is asynchronous (``non_blocking``); on the CPU items pass through unchanged.
        Shapes are untouched, so XLA sees fixed shapes. The iterator must be closed (or
        exhausted) to stop the thread.
        """
        move = move or self.to_device
        if self.device.type == "cpu":
            for item in batches:
                yield move(item)
            return
        if self.device.type == "cuda":
            def host(item):  # pin in the background; the copy itself is queued async
                return _map_tensors(item, lambda t: t.pin_memory())
            source = _Prefetcher(batches, host, depth)
            try:
                for item in source:
                    yield move(item)
            finally:
                source.close()
            return
        source = _Prefetcher(batches, move, depth)  # XLA: transfer in the background
        try:
            yield from source
        finally:
            source.close()

    def mark_step(self) -> None:
        """Ends one traced step on XLA (cuts and runs the graph); a no-op elsewhere."""
        if self.is_xla:
            import torch_xla
            torch_xla.sync()

    # -- collectives -----------------------------------------------------------------------
    def any_process(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any process (a collective of one float32 scalar)."""
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        self.all_reduce_sum_([t])
        return bool(t.item() > 0)

    def all_reduce_sum_(self, tensors: List[torch.Tensor]) -> None:
        """Sums each tensor over all processes, in place (one flat buffer per dtype)."""
        if not self.distributed or not tensors:
            return
        check_collective_dtypes(tensors, "all_reduce_sum_")
        if self.backend == "xla":
            import torch_xla.core.xla_model as xm
            xm.all_reduce(xm.REDUCE_SUM, tensors)
            return
        import torch.distributed as dist
        by_dtype: Dict[torch.dtype, List[torch.Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for group in by_dtype.values():
            flat = torch.cat([t.reshape(-1) for t in group])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            for t in group:
                n = t.numel()
                t.copy_(flat[offset:offset + n].view_as(t))
                offset += n

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenates ``t`` from all processes along dim 0 (process order)."""
        if not self.distributed:
            return t
        check_collective_dtypes([t], "all_gather")
        if self.backend == "xla":
            import torch_xla.core.xla_model as xm
            return xm.all_gather(t, dim=0)
        import torch.distributed as dist
        out = torch.empty((self.process_count * t.shape[0],) + tuple(t.shape[1:]),
                          dtype=t.dtype, device=t.device)
        dist.all_gather_into_tensor(out, t.contiguous())
        return out

    def gather_objects(self, obj: Any) -> List[Any]:
        """Every process's ``obj`` (a picklable Python object), in process order, on all.

        The pickles travel as uint8 tensors with int32 sizes through :meth:`all_gather` on
        every backend (torch.distributed's object collectives send int64 sizes)."""
        if not self.distributed:
            return [obj]
        data = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8)
        size = torch.tensor([data.numel()], dtype=torch.int32, device=self.device)
        sizes = self.all_gather(size).cpu().tolist()
        padded = torch.zeros(max(sizes), dtype=torch.uint8)
        padded[: data.numel()] = data
        gathered = self.all_gather(padded.to(self.device)).cpu().view(len(sizes), -1)
        return [pickle.loads(gathered[i, :n].numpy().tobytes()) for i, n in enumerate(sizes)]

    def on_main(self, fn: Callable[[], Any]) -> Any:
        """Runs ``fn`` on process 0 only and shares its outcome with every process: its
        result (picklable) is returned everywhere; if it raised, every process raises the same
        error (same class and message). So a failure of process 0 alone -- a held lock, a
        config mismatch, a storage error -- ends all processes at once instead of leaving the
        others waiting in their next collective. A collective: every process must call it."""
        result, failure = None, None
        if self.is_main:
            try:
                result = fn()
            except Exception as e:
                failure = e
        if failure is not None:
            if self.distributed:
                self.gather_objects((None, _portable(failure)))
            raise failure
        if not self.distributed:
            return result
        result, shared = self.gather_objects((result, None))[0]
        if shared is not None:
            raise shared
        return result

    def barrier(self) -> None:
        if not self.distributed:
            return
        if self.backend == "xla":
            import torch_xla.core.xla_model as xm
            xm.rendezvous("trm_barrier")
        else:
            import torch.distributed as dist
            dist.barrier()

    def shutdown(self) -> None:
        if self.backend in ("gloo", "nccl"):
            import torch.distributed as dist
            if dist.is_initialized():
                dist.destroy_process_group()


def _portable(e: Optional[Exception]) -> Optional[Exception]:
    """``e`` if it survives pickling (same class and message elsewhere), else a RuntimeError
    carrying its class name and message."""
    if e is None:
        return None
    try:
        copy = pickle.loads(pickle.dumps(e))
        if type(copy) is type(e) and str(copy) == str(e):
            return e
    except Exception:
        pass
    return RuntimeError(f"{type(e).__name__}: {e}")


def _map_tensors(item: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(item, torch.Tensor):
        return fn(item)
    if isinstance(item, dict):
        return {k: _map_tensors(v, fn) for k, v in item.items()}
    if isinstance(item, (list, tuple)):
        return type(item)(_map_tensors(v, fn) for v in item)
    return item


class _Prefetcher:
    """A background thread applying ``fn`` to the next ``depth`` items of ``iterable``."""

    _DONE = object()

    def __init__(self, iterable: Iterable[Any], fn: Callable[[Any], Any], depth: int) -> None:
        self._queue: "queue.Queue" = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(iter(iterable), fn),
                                        daemon=True, name="trm-prefetch")
        self._thread.start()

    def _run(self, it, fn) -> None:
        try:
            for item in it:
                if self._stop.is_set():
                    return
                self._put(("item", fn(item)))
            self._put(("done", None))
        except BaseException as e:
            self._put(("error", e))

    def _put(self, entry) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.1)
                return
            except queue.Full:
                continue

    def __iter__(self):
        while True:
            kind, value = self._queue.get()
            if kind == "done":
                return
            if kind == "error":
                raise value
            yield value

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def init_runtime(device: str = "auto", timeout_s: float = 1800.0) -> Runtime:
    """Sets up this process's device and process group (see module docstring)."""
    if device in ("auto", "xla") and is_xla_available():
        import torch_xla
        import torch_xla.runtime as xr
        dev = torch_xla.device()
        count = xr.world_size()
        return Runtime(dev, xr.global_ordinal(), count, "xla")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = select_device(device)  # an unavailable explicit device is an error, never the CPU
    threads, governor = "", None
    if dev.type == "cpu":
        from trm.runtime.threads import cpu_group_for_this_process, governor_for_this_process
        tune_cpu_allocator()
        on_host = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        cpus = allowed_cpus()
        cores = usable_cores(cpus)  # measured once for both
        group = cpu_group_for_this_process()  # runs side by side ($TRM_CPU_GROUP)
        threads = choose_cpu_threads(on_host, cpus, cores, group=group)
        governor = governor_for_this_process(on_host, cpus, cores[0], group=group)
    if world > 1:
        import torch.distributed as dist
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
        return Runtime(dev, dist.get_rank(), dist.get_world_size(), backend, threads,
                       governor)
    return Runtime(dev, cpu_threads=threads, thread_governor=governor)


def local_runtime(device: Optional[str] = "cpu") -> Runtime:
    """A single-process runtime without touching any process group (tests, tools)."""
    return Runtime(select_device(device or "auto"))
