"""A TensorBoard logdir for a runs root: every run under its own name, with HParams.

    python -m analysis.dashboard --runs=ROOT --logdir=DIR [--include=PATTERN]
    tensorboard --logdir DIR

``tensorboard --logdir ROOT`` names every run ``<run>/tb`` and has no hyperparameters to
compare. This command builds ``DIR/<run id>/`` per run: links to the run's event files (for a
remote root, copies of the files :mod:`analysis.reader` stages) -- the
training curves, and ``eval_cli/<setting>/`` for ``python -m trm.eval`` results -- and one
events file of its own with the HParams plugin's session summary (the run's canonical
hyperparameters, its experiment and status; :meth:`trm.run.tensorboard.EventFileWriter.
add_hparams`). TensorBoard's HParams dashboard then lists every run as a trial, its
hyperparameters beside the final value of every scalar, so 100 runs compare in one table.

``DIR`` must be new, empty, or a folder this command made (it is then rebuilt).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from typing import Any, Dict, Optional, Sequence

from analysis.cli import CliError, Parser, run, select_runs

MARKER = ".trm_dashboard"


def _hparams(runs, run_id: str) -> Dict[str, Any]:
    row = runs.hparams.loc[run_id].to_dict() if len(runs) else {}
    summary = runs.summary.set_index("run").loc[run_id]
    values = dict(row, experiment=summary["experiment"], status=summary["status"])
    out = {}
    for k, v in values.items():
        v = v.item() if hasattr(v, "item") else v  # numpy scalars
        if v is not None and v == v:  # None and NaN: not known for this run
            out[k] = v if isinstance(v, (bool, int, float, str)) else str(v)
    return out


def _fresh(logdir: str) -> None:
    if os.path.isdir(logdir) and os.listdir(logdir):
        if not os.path.exists(os.path.join(logdir, MARKER)):
            raise CliError(f"--logdir={logdir} is not empty and was not made by this command; "
                           "name a new folder")
        shutil.rmtree(logdir)
    os.makedirs(logdir, exist_ok=True)
    open(os.path.join(logdir, MARKER), "w").close()


def _link_events(tb_dir: str, dest: str, copy: bool) -> int:
    """Links (or copies) every events file under ``tb_dir`` into ``dest`` (same
    sub-folders)."""
    n = 0
    for dirpath, _, files in os.walk(tb_dir):
        for name in files:
            if "tfevents" not in name:
                continue
            rel = os.path.relpath(dirpath, tb_dir)
            target = os.path.normpath(os.path.join(dest, rel))
            os.makedirs(target, exist_ok=True)
            source = os.path.abspath(os.path.join(dirpath, name))
            (shutil.copyfile if copy else os.symlink)(source, os.path.join(target, name))
            n += 1
    return n


def build(root: str, logdir: str, include: Optional[str] = None) -> int:
    """Builds the logdir (see the module docstring); returns the number of runs in it."""
    from trm.run.storage import is_remote
    from trm.run.tensorboard import EventFileWriter
    from analysis import reader

    _fresh(logdir)
    staged = tempfile.mkdtemp(prefix="trm_dashboard_") if is_remote(root) else None
    try:
        if staged:
            reader.stage(root, staged)
        runs = select_runs(staged or root, include=include)
        for r in runs:
            dest = os.path.join(logdir, *r.id.split("/"))
            # r.path is a local folder: the run itself, or its staged copy (copied, since the
            # staged folder goes away)
            _link_events(os.path.join(r.path, reader.TB_DIR), dest, copy=bool(staged))
            start = runs.summary.set_index("run").loc[r.id, "start_time"]
            writer = EventFileWriter(dest)
            writer.add_hparams(_hparams(runs, r.id), group_name=r.id,
                               start_time_s=None if start != start else start)
            writer.close()
    finally:
        if staged:
            shutil.rmtree(staged, ignore_errors=True)
    return len(runs)


def _main(argv: Optional[Sequence[str]]) -> int:
    p = Parser(prog="python -m analysis.dashboard", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", required=True, help="runs root (local path or gs://...)")
    p.add_argument("--logdir", required=True, help="the TensorBoard logdir to build (local)")
    p.add_argument("--include", default=None, help="fnmatch pattern on run ids")
    args = p.parse_args(argv)
    n = build(args.runs, args.logdir, args.include)
    print(f"{n} runs in {args.logdir}: tensorboard --logdir {args.logdir}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run("python -m analysis.dashboard", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
