"""The absl entry points' common start and their gin flags.

``--help`` (and ``-h``, ``--helpshort``, ``--helpfull``) prints the usage and exits 0; absl's
own handler exits 1, which scripts and CI read as a failure.

Every tool that takes gin spells it the same way (trm.train, trm.eval, trm.bench, and the
launchers' argparse twins in :mod:`launchers.common`):

``--gin_file=F``          a gin file: a path, or a file name in the search paths / shipped tree
``--gin_param=B``         a binding, e.g. ``'TRAIN_STEPS=40'`` (repeatable)
``--gin_bindings=B``      the same (the dopamine / t5x spelling), applied after --gin_param
``--gin.NAME=VALUE``      the same (t5x style): ``--gin.TRAIN_STEPS=40``
``--gin_search_paths=D``  folders searched for gin file names and ``include`` lines, before
                          the shipped tree (repeatable or comma-separated)
"""

from __future__ import annotations

import os
import sys
from typing import Callable, List, Optional

HELP_FLAGS = ("--help", "-h", "-?", "--helpshort", "--helpfull", "--help=true")
GIN_DOT_PREFIX = "--gin."


def define_gin_flags(files: bool = True) -> None:
    """Defines the gin flags (see the module docstring); ``files=False`` for a tool whose
    config comes from elsewhere (it still takes bindings and search paths)."""
    from absl import flags
    if files:
        flags.DEFINE_multi_string("gin_file", [], "Gin file: a path, or a file name in "
                                  "--gin_search_paths or the shipped tree (repeatable).")
    flags.DEFINE_multi_string("gin_param", [], "Gin binding, e.g. 'TRAIN_STEPS=40' "
                              "(repeatable; also --gin.TRAIN_STEPS=40).")
    flags.DEFINE_multi_string("gin_bindings", [], "Alias of --gin_param (the dopamine / t5x "
                              "spelling); applied after the --gin_param bindings.")
    flags.DEFINE_list("gin_search_paths", [], "Folders searched for gin file names and "
                      "include lines before the shipped tree (comma-separated).")


def gin_bindings() -> List[str]:
    """The bindings of the gin flags, in the order they apply."""
    from absl import flags
    return list(flags.FLAGS.gin_param) + list(flags.FLAGS.gin_bindings)


def expand_gin_dot_flags(argv: List[str]) -> List[str]:
    """``--gin.NAME=VALUE`` (t5x style) -> ``--gin_bindings=NAME=VALUE``, in place order."""
    out = []
    for arg in argv:
        if arg.startswith(GIN_DOT_PREFIX):
            binding = arg[len(GIN_DOT_PREFIX):]
            if "=" not in binding or not binding.split("=", 1)[0].strip():
                raise SystemExit(f"{os.path.basename(argv[0])}: {arg!r} is not "
                                 "--gin.NAME=VALUE (e.g. --gin.TRAIN_STEPS=40)")
            arg = f"--gin_bindings={binding}"
        out.append(arg)
    return out


def run_app(main: Callable[[List[str]], None], argv: Optional[List[str]] = None) -> None:
    """``absl.app.run(main, argv)``, with a help request ending in exit status 0."""
    from absl import app
    argv = expand_gin_dot_flags(list(argv or sys.argv))
    asked_help = any(a in HELP_FLAGS for a in argv[1:])
    try:
        app.run(main, argv=argv)
    except SystemExit as e:
        if asked_help and e.code not in (0, None):
            raise SystemExit(0) from None
        raise
