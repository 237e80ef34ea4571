"""The absl entry points' common start: ``--help`` (and ``-h``, ``--helpshort``,
``--helpfull``) prints the usage and exits 0; absl's own handler exits 1, which scripts and CI
read as a failure."""

from __future__ import annotations

import sys
from typing import Callable, List, Optional

HELP_FLAGS = ("--help", "-h", "-?", "--helpshort", "--helpfull", "--help=true")


def run_app(main: Callable[[List[str]], None], argv: Optional[List[str]] = None) -> None:
    """``absl.app.run(main, argv)``, with a help request ending in exit status 0."""
    from absl import app  # pylint: disable=import-outside-toplevel
    argv = list(argv or sys.argv)
    asked_help = any(a in HELP_FLAGS for a in argv[1:])
    try:
        app.run(main, argv=argv)
    except SystemExit as e:
        if asked_help and e.code not in (0, None):
            raise SystemExit(0) from None
        raise
