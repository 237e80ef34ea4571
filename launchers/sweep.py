"""List sweeps and their runs.

    python -m launchers.sweep                           # every sweep, one line each
    python -m launchers.sweep --sweep=e2_2_tn --list    # run names and bindings
    python -m launchers.sweep --sweep=e2_2_tn --list --seeds=0,1
    python -m launchers.sweep --sweep=e2_2_tn --list --json
    python -m launchers.sweep --sweep=my_sweep.yaml --list  # a sweep file
    python -m launchers.sweep --grid=LR=1e-4,3e-4 --gin_file=quickstart.gin --list

Sweeps are registered in :mod:`launchers.named_sweeps` or written as sweep files / grids
(:mod:`launchers.sweep_files`); run them with ``python -m launchers.local`` or
``python -m launchers.tpu sweep``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from launchers import common
from launchers.named_sweeps import add_sweep_module_flag, get_sweep, list_sweeps
from launchers.sweep_files import command_line_sweep, resolve_sweep


def format_runs(runs) -> str:
    """One line per run: name, then ``--gin_file=`` flags and bindings, shell-quoted."""
    width = max(len(r.name) for r in runs)
    lines = []
    for run in runs:
        args = [f"--gin_file={f}" for f in run.gin_files] + list(run.bindings)
        lines.append(f"{run.name.ljust(width)}  {common.format_command(args)}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m launchers.sweep", description="List named sweeps and their runs.",
        usage="%(prog)s [--sweep NAME|FILE | --grid MACRO=v1,v2 --gin_file F] [options]")
    parser.add_argument("--sweep", help="sweep name or sweep file (default: list all sweeps)")
    parser.add_argument("--grid", action="append", default=[], metavar="MACRO=v1,v2",
                        help="a command-line grid axis over --gin_file (repeatable)")
    parser.add_argument("--gin_file", action="append", default=[],
                        help="with --grid: the base experiment file")
    parser.add_argument("--list", action="store_true", help="print run names and bindings")
    parser.add_argument("--seeds", help="comma-separated seeds, overrides the sweep's seeds")
    parser.add_argument("--json", action="store_true", help="print runs as JSON")
    add_sweep_module_flag(parser)
    args = parser.parse_args(argv)

    if not args.sweep and not args.grid:
        rows = []
        for name in list_sweeps():
            sweep = get_sweep(name)
            rows.append([name, str(len(sweep.runs())), sweep.description])
        print(common.format_table(rows, ["sweep", "runs", "description"]))
        return 0
    try:
        seeds = common.parse_seeds(args.seeds)
        sweep = (command_line_sweep(args.gin_file, args.grid, seeds=seeds or (0,))
                 if args.grid else resolve_sweep(args.sweep))
        runs = sweep.runs(seeds)
    except (KeyError, ValueError) as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([r.__dict__ for r in runs], indent=2))
    elif args.list:
        print(format_runs(runs))
    else:
        print(f"{sweep.name}: {sweep.description}")
        print(f"base: {' '.join(sweep.gin_files)}; {len(runs)} runs; --list to show them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
