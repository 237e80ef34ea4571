"""Process-level helpers of the training loop: graceful stop on SIGTERM/SIGINT, XLA counters."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any, Dict, Optional

log = logging.getLogger("trm.train")


class StopSignal:
    """Records SIGTERM/SIGINT; the loop finishes the step, checkpoints and exits.

    SIGUSR1 asks for a diagnostics report instead (``report_requested``; the loop writes the
    XLA metrics report into the workdir at its next log interval)."""

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self.report_requested = False
        self._previous: Dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        if hasattr(signal, "SIGUSR1"):
            self._previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, self._report)

    def _report(self, signum, frame) -> None:  # noqa: ARG002
        self.report_requested = True

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.received = signum
        log.warning("Received %s: finishing the current step, then checkpointing.",
                    signal.Signals(signum).name)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def xla_metrics() -> Dict[str, float]:
    try:
        import torch_xla.debug.metrics as met  # pylint: disable=import-outside-toplevel
    except ImportError:
        return {}
    out = {}
    compile_data = met.metric_data("CompileTime")
    if compile_data:
        out["xla/compile_count"] = float(compile_data[0])
        out["xla/compile_time_s"] = float(compile_data[1]) / 1e9
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
        import torch_xla.debug.metrics as met  # pylint: disable=import-outside-toplevel
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
        import torch_xla.debug.metrics as met  # pylint: disable=import-outside-toplevel
    except ImportError:
        return None
    return met.metrics_report()
