"""What every analysis command line shares: one-line errors, suggestions, quiet pipes.

* :class:`CliError`: a bad value; :func:`run` prints it as one line (``prog: message``) and
  exits with status 2.
* :class:`Parser`: ``argparse`` whose unknown-option error suggests the closest options
  (``--group-by`` -> ``Did you mean --group_by?``).
* :func:`run`: runs a command's main; ``| head`` closing the pipe ends it quietly (no
  ``BrokenPipeError`` traceback).
* :func:`select_runs`: loads a runs root with the common filters (``--include``,
  ``--experiment``, ``--status``); a filter that matches nothing says so, with the values that
  exist (and the closest ones).
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from typing import Callable, Iterable, Optional, Sequence


class CliError(ValueError):
    """A bad command-line value (reported in one line, exit status 2)."""


def suggest(value: str, known: Iterable[str], n: int = 4) -> str:
    """`` Did you mean a, b?`` for the entries of ``known`` closest to ``value`` (or "")."""
    close = difflib.get_close_matches(value, sorted(set(known)), n=n, cutoff=0.5)
    return f" Did you mean {', '.join(close)}?" if close else ""


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` that suggests the closest options for an unknown one."""

    def error(self, message: str):
        if message.startswith("unrecognized arguments:"):
            options = {o.lstrip("-"): o for a in self._actions for o in a.option_strings}
            for arg in message.split(":", 1)[1].split():
                close = difflib.get_close_matches(arg.split("=")[0].lstrip("-"), options, n=3,
                                                  cutoff=0.6) if arg.startswith("-") else []
                if close:
                    message += f". Did you mean {', '.join(options[c] for c in close)}?"
        self.exit(2, f"{self.prog}: error: {message}\n")


def run(prog: str, main: Callable[[Optional[Sequence[str]]], int],
        argv: Optional[Sequence[str]] = None) -> int:
    """Runs ``main(argv)``: a :class:`CliError` becomes one line on stderr and status 2; a
    closed stdout (``| head``) ends the command quietly."""
    try:
        code = main(argv)
        sys.stdout.flush()
        return code
    except CliError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away: send the rest to /dev/null so the interpreter's final flush
        # does not fail again (the recipe of the Python docs, "Note on SIGPIPE").
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def select_runs(root: str, include: Optional[str] = None, experiment: Optional[str] = None,
                status: Optional[Sequence[str]] = None):
    """Loads the runs under ``root`` that pass the filters; :class:`CliError` for a root that
    is missing or unreadable, holds no runs, or whose runs no filter value matches."""
    from analysis.reader import find_run_dirs
    from analysis.runs import load_runs

    try:
        runs = load_runs(root, include=include)
        if not len(runs):
            ids = [os.path.basename(root.rstrip("/")) if d == "." else d
                   for d in find_run_dirs(root)]
            if not ids:
                raise CliError(f"no runs under {root} (a run is a folder with run.json or tb/)")
            raise CliError(f"--include={include!r} matches none of the {len(ids)} runs under "
                           f"{root}." + suggest(include or "", ids)
                           + f" Runs: {', '.join(ids[:8])}" + (" ..." if len(ids) > 8 else ""))
    except FileNotFoundError:
        raise CliError(f"runs root not found: {root}") from None
    except OSError as e:
        raise CliError(f"cannot read the runs root {root}: {e}") from None
    if experiment is not None:
        known = runs.experiments
        if experiment not in known:
            raise CliError(f"--experiment={experiment!r} matches none of the runs' experiments."
                           + suggest(experiment, known)
                           + f" Experiments: {', '.join(known) or '(none)'}")
        runs = runs.select(experiment=experiment)
    if status:
        known = sorted(set(runs.summary["status"]))
        wanted = [s for s in status if s]
        if not any(s in known for s in wanted):
            raise CliError(f"--status={','.join(wanted)} matches none of the selected runs."
                           + suggest(wanted[0], known) + f" Statuses: {', '.join(known)}")
        runs = runs.select(status=wanted)
    return runs
