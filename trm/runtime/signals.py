"""Process-level helpers of the training loop: graceful stop on SIGTERM/SIGINT, XLA counters.

Signals reach Python handlers only in a process's main thread, but ``torch_xla.launch`` (the
TPU path) runs the training function in a worker thread of a spawned child process. So the
launcher runs it inside :func:`forwarded_signals`: the children start with the stop and report
signals blocked (an inherited mask, passed on to every thread they start) and the launcher
forwards what it receives to them; in a worker thread :meth:`StopSignal.install` takes the
signals with ``sigtimedwait`` in a watcher thread. The training loop sees the same flags on every
path.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import select
import signal
import threading
import time
from multiprocessing import resource_tracker
from typing import Any, Dict, Iterator, Optional

log = logging.getLogger("trm.train")

#: The signals a training process handles: stop (SIGTERM, SIGINT) and report (SIGUSR1).
HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
_POLL_S = 0.2
_REPEAT_S = 1.0  # a signal forwarded by the launcher arrives within this of the original


class StopSignal:
    """Records SIGTERM/SIGINT; the loop finishes the step, checkpoints and exits.

    SIGUSR1 asks for a diagnostics report instead (``report_requested``; the loop writes the
    XLA metrics report into the workdir at its next log interval). In the main thread Python
    handlers are installed; in any other thread (``torch_xla.launch``'s) a watcher thread takes
    the signals, which the launcher blocked (:func:`forwarded_signals`)."""

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self.report_requested = False
        self._previous: Dict[int, Any] = {}
        self._received_at = 0.0
        self._target: Optional[int] = None  # the training thread (watcher mode)
        self._watch_stop = threading.Event()
        self._watcher: Optional[threading.Thread] = None

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
            self._previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, self._report)
            return
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
        if not _blocked_in_main_thread():
            log.warning("Training runs outside the main thread and the main thread does not "
                        "block SIGTERM/SIGINT/SIGUSR1: they will not reach training. Start it "
                        "through trm.runtime.signals.forwarded_signals (trm.train does).")
        self._target = threading.get_ident()
        self._watch_stop.clear()
        self._watcher = threading.Thread(target=self._watch, daemon=True, name="trm-signals")
        self._watcher.start()

    def _watch(self) -> None:
        while not self._watch_stop.is_set():
            sig = signal.sigtimedwait(HANDLED, _POLL_S)
            if sig is None:
                continue
            if sig.si_signo == signal.SIGUSR1:
                self._report(sig.si_signo, None)
            elif sig.si_signo == signal.SIGINT and self.received is not None:
                if time.monotonic() - self._received_at > _REPEAT_S:  # not a forwarded copy
                    _raise_in_thread(self._target, KeyboardInterrupt)
            else:
                self._handle(sig.si_signo, None)

    def _report(self, signum, frame) -> None:
        self.report_requested = True

    def _handle(self, signum, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        if self.received is None:
            self._received_at = time.monotonic()
        self.received = signum
        log.warning("Received %s: finishing the current step, then checkpointing.",
                    signal.Signals(signum).name)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        if self._watcher is not None:
            self._watch_stop.set()
            self._watcher.join(timeout=5)
            self._watcher = None


def _blocked_in_main_thread() -> bool:
    """Whether the process's main thread blocks every handled signal (Linux; True elsewhere,
    where it cannot be checked)."""
    try:
        with open("/proc/self/status") as f:
            mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigBlk:"))
    except (OSError, StopIteration, ValueError):
        return True
    return all(mask >> (int(sig) - 1) & 1 for sig in HANDLED)


def _raise_in_thread(ident: Optional[int], exc: type) -> None:
    """Raises ``exc`` in thread ``ident`` at its next Python instruction."""
    if ident is not None:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc))


@contextlib.contextmanager
def forwarded_signals() -> Iterator[None]:
    """For a launcher that starts the training processes inside (``torch_xla.launch``): each
    SIGTERM/SIGINT/SIGUSR1 this process receives is forwarded to its child processes
    (``multiprocessing.active_children()``), and the children start with those signals blocked
    (this thread's mask, which they inherit), so :meth:`StopSignal.install` takes them there.
    Call it in the main thread; everything is restored on exit.

    Delivery here goes through Python's wakeup fd: whichever thread the kernel picks (torch
    starts threads of its own), the signal number reaches the forwarding thread."""
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    previous = {sig: signal.signal(sig, lambda signum, frame: None) for sig in HANDLED}
    stop = threading.Event()

    def forward() -> None:
        while not stop.is_set():
            if not select.select([read_fd], [], [], _POLL_S)[0]:
                continue
            for signum in os.read(read_fd, 64):
                if signum in HANDLED:
                    for child in multiprocessing.active_children():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(child.pid, signum)

    thread = threading.Thread(target=forward, daemon=True, name="trm-signal-forward")
    thread.start()  # before the mask below: this thread and torch's can receive signals
    # Starting multiprocessing's resource tracker unblocks SIGINT/SIGTERM in this thread
    # afterwards; started now, the children's start leaves the mask alone.
    resource_tracker.ensure_running()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        stop.set()
        thread.join(timeout=5)
        signal.set_wakeup_fd(previous_fd)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(read_fd)
        os.close(write_fd)


def xla_metrics() -> Dict[str, float]:
    try:
        import torch_xla.debug.metrics as met
    except ImportError:
        return {}
    out = {}
    compile_data = met.metric_data("CompileTime")
    out["xla/compile_count"] = float(compile_data[0]) if compile_data else 0.0
    out["xla/compile_time_s"] = float(compile_data[1]) / 1e9 if compile_data else 0.0
    # graphs loaded from the persistent compile cache instead of compiled
    for name in ("PersistentCacheHit", "PersistentCacheMiss",
                 "PersistentCacheDeserializeFailure"):
        out[f"xla/{name}"] = float(met.counter_value(name) or 0)
    for name in ("TransferToDeviceTime", "TransferFromDeviceTime", "ExecuteTime"):
        d = met.metric_data(name)
        if d:
            out[f"xla/{name}_count"] = float(d[0])
    # CPU fallbacks: ops XLA could not lower run on the host (a graph break and transfers each
    # time): their total and a counter per op, so a slow step can be diagnosed from the run.
    fallbacks = xla_fallback_counts()
    out["xla/fallback_ops_total"] = float(sum(fallbacks.values()))
    for op, count in fallbacks.items():
        out[f"xla/fallback/{op}"] = float(count)
    return out


def xla_fallback_counts() -> Dict[str, int]:
    """``{op: times executed on the CPU}`` of the XLA ops that fell back (empty off XLA)."""
    try:
        import torch_xla.debug.metrics as met
    except ImportError:
        return {}
    out = {}
    for name in met.counter_names():
        if name.startswith("aten::"):
            out[name[len("aten::"):]] = int(met.counter_value(name) or 0)
    return out


def xla_metrics_report() -> Optional[str]:
    """torch_xla's full metrics report (None off XLA)."""
    try:
        import torch_xla.debug.metrics as met
    except ImportError:
        return None
    return met.metrics_report()
