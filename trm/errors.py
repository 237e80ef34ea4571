"""The one base class of the errors trm reports as one line.

Every error a user can cause and fix -- a bad config or binding, a dataset that is missing or
malformed, a workdir that is locked, holds another run or a broken checkpoint, a file that
is not what trm wrote, a device that is not there -- is a :class:`TrmError` (and also the
builtin it always was, ``ValueError``, ``RuntimeError``, ``KeyError``, ``PermissionError``...,
so existing ``except`` clauses keep working). Entry points (``trm.train``, ``trm.eval``,
``trm.bench``, ``trm.data.build``, ``trm.interop.replay``) catch ``TrmError`` and print
``<tool>: <message>``; anything else is a bug and keeps its traceback. This module imports
nothing, so every layer (registry, data, run state, runtime) can use it; :class:`TrainingError`
lives here (``trm.experiment`` re-exports it) so the run state raises it without model code.
"""


class TrmError(Exception):
    """An error with a one-line message that says what is wrong and how to fix it."""


def one_line(error: BaseException) -> str:
    """The message of ``error`` for a one-line report: gin's appended context lines
    (``In call to configurable ...``) dropped, whitespace trimmed."""
    return "\n".join(line for line in str(error).splitlines()
                     if not line.strip().startswith("In call to configurable")).strip()


class TrainingError(TrmError, RuntimeError):
    """The run cannot continue (non-finite loss, bad configuration, ...)."""
