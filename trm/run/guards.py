"""Guards of the run lifecycle: one-line errors that name the problem and keep the workdir.

Used by the run session (:mod:`trm.run.session`) before anything is written (``open_workdir``)
and when a write fails (``storage_error``); the checks of a training state live with it, in
:mod:`trm.train_state`. See the fault table in docs/RUN_STATE.md.
"""

from __future__ import annotations

import os
from typing import Optional

from trm.errors import TrainingError


def open_workdir(path: str):
    """The run's Workdir; a path that is a file is a one-line error."""
    from trm.run.workdir import Workdir
    if "://" not in str(path) and os.path.isfile(os.path.expanduser(str(path))):
        raise TrainingError(f"--workdir {path} is a file, not a folder; choose a folder (it is "
                            "created if missing).")
    return Workdir(os.path.expanduser(str(path)) if "://" not in str(path) else path)


def storage_error(e: Exception, what: str, workdir: str, latest: Optional[int]) -> Exception:
    """A one-line error for a storage failure while writing run state (other errors are
    returned unchanged)."""
    import errno
    if not isinstance(e, OSError):
        cause = e.__cause__
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__cause__
        if cause is None:
            return e
        e = cause
    keep = (f"the committed checkpoint of step {latest} is intact" if latest is not None
            else "no checkpoint was committed")
    if e.errno == errno.ENOSPC:
        cause = "no space left on the device"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        cause = "the workdir is not writable"
    else:
        cause = f"{type(e).__name__}: {e}"
    return TrainingError(f"Storage error while {what} in {workdir}: {cause}; "
                         f"{keep}. Fix the storage and run the same command to resume.")
