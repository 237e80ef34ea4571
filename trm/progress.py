"""Progress of long phases (dataset builds, evaluations, conversions, reports over many runs).

On a terminal a phase is a tqdm bar; anywhere else (a ``launcher.log``, a TPU VM's log file,
CI) it is a plain line every ``every_s`` seconds (30 by default, ``$TRM_PROGRESS_EVERY_S``)
and one at the end, so a log shows that a 20-minute build is alive and how far it got.
``$TRM_PROGRESS=0`` turns every phase off.

The code that runs a phase opens it; code deep inside it (a dataset builder) reports to
whatever phase is open, without knowing who opened it::

    with progress.phase("building sudoku_gen", unit="puzzles") as bar:
        build()                              # calls progress.current().update(i, total)

    progress.current().update(done, total)   # a no-op when no phase is open
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from typing import IO, Iterator, List, Optional

_OPEN: List["Progress"] = []
_LOCK = threading.Lock()


def _env_every_s() -> float:
    try:
        return max(0.0, float(os.environ.get("TRM_PROGRESS_EVERY_S", "30")))
    except ValueError:
        return 30.0


class Progress:
    """One phase's progress: :meth:`update` with the absolute count done (and the total when
    it is known or changes), :meth:`close` at the end.

    Args:
        desc: what the phase is (``"eval step 500"``).
        total: the count at completion, if known.
        unit: what is counted (``"batches"``).
        stream: where to write (default stderr).
        every_s: seconds between plain lines when ``stream`` is not a terminal.
        enabled: False makes every call a no-op.
        leave: keep the finished bar on a terminal (else it is erased).
        bar: force (True) or forbid (False) the tqdm bar; default: when ``stream`` is a
            terminal and tqdm is installed.
    """

    def __init__(self, desc: str, total: Optional[int] = None, *, unit: str = "it",
                 stream: Optional[IO[str]] = None, every_s: Optional[float] = None,
                 enabled: bool = True, leave: bool = True, bar: Optional[bool] = None) -> None:
        self.desc, self.total, self.unit = desc, total, unit
        self.stream = stream or sys.stderr
        self.every_s = _env_every_s() if every_s is None else every_s
        self.enabled = enabled and os.environ.get("TRM_PROGRESS", "1") != "0"
        self.done = 0
        self.lines = 0
        self._start = self._last_line = time.monotonic()
        self._tqdm = None
        if self.enabled and (bar if bar is not None else _is_terminal(self.stream)):
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self._tqdm = tqdm(total=total, desc=desc, unit=f" {unit}", file=self.stream,
                                  leave=leave, dynamic_ncols=True)

    def update(self, done: int, total: Optional[int] = None) -> None:
        """Records that ``done`` units are done (of ``total``, when given)."""
        if not self.enabled:
            return
        if total is not None and total != self.total:
            self.total = total
            if self._tqdm is not None:
                self._tqdm.total = total
                self._tqdm.refresh()
        if self._tqdm is not None:
            self._tqdm.update(done - self.done)
            self.done = done
            return
        self.done = done
        now = time.monotonic()
        if now - self._last_line >= self.every_s:
            self._line(now)

    def advance(self, n: int = 1) -> None:
        """Records ``n`` more units done."""
        self.update(self.done + n)

    def _line(self, now: float) -> None:
        of = f"/{self.total}" if self.total else ""
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        elapsed = now - self._start
        eta = ""
        if self.total and 0 < self.done < self.total:
            eta = f", ETA {_fmt(elapsed * (self.total - self.done) / self.done)}"
        print(f"{self.desc}: {self.done}{of} {self.unit}{pct}, {_fmt(elapsed)} elapsed{eta}",
              file=self.stream, flush=True)
        self._last_line = now
        self.lines += 1

    def close(self) -> None:
        """Ends the phase: closes the bar, or prints a last line if any line was printed."""
        if not self.enabled:
            return
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None
        elif self.lines:
            self._line(time.monotonic())
        self.enabled = False


class _Nothing(Progress):
    """The phase reported to when none is open: every call does nothing."""

    def __init__(self) -> None:
        self.enabled, self.done, self.total, self.lines = False, 0, None, 0


_NOTHING = _Nothing()


def current() -> Progress:
    """The innermost open phase, or a no-op one."""
    with _LOCK:
        return _OPEN[-1] if _OPEN else _NOTHING


@contextlib.contextmanager
def phase(desc: str, total: Optional[int] = None, **kwargs) -> Iterator[Progress]:
    """Opens a :class:`Progress` (same arguments) for the ``with`` block; code inside
    reports to it through :func:`current`."""
    bar = Progress(desc, total, **kwargs)
    with _LOCK:
        _OPEN.append(bar)
    try:
        yield bar
    finally:
        with _LOCK:
            _OPEN.remove(bar)
        bar.close()


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _fmt(seconds: float) -> str:
    seconds = int(round(max(seconds, 0)))
    return (f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600
            else f"{seconds // 60}:{seconds % 60:02d}")


def sub(desc: str, total: Optional[int] = None, **kwargs):
    """A phase inside the open one (a builder's step inside a dataset build): shown only when
    an enabled phase is open, and named after it (``"building ...: augmenting train"``)."""
    outer = current()
    name = f"{outer.desc}: {desc}" if outer.enabled else desc
    return phase(name, total, enabled=outer.enabled, **kwargs)
