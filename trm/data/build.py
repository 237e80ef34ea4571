"""Builds a dataset: ``python -m trm.data.build <builder> --output_dir=DIR [flags]``.

Builders: sudoku_csv, sudoku_gen, maze_csv, maze_gen, arc, reference_npy (``--help`` on each
lists its flags). ``--output_dir`` may be local or ``gs://bucket/prefix``. An existing dataset
built with the same arguments is left as it is; one built with other arguments is an error
unless ``--overwrite``. See docs/DATA.md.
"""

from __future__ import annotations

import argparse
import sys
import time

from trm.data.builders import BUILDERS, COMMON_ARGS, build_dataset
from trm.errors import TrmError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trm.data.build", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="builder", required=True, metavar="BUILDER")
    for b in BUILDERS.values():
        p = sub.add_parser(b.name, help=b.description.replace("%", "%%"),
                           description=b.description)
        p.add_argument("--output_dir", required=True, help="local folder or gs:// prefix")
        p.add_argument("--overwrite", action="store_true",
                       help="replace an existing dataset built with other arguments")
        for a in b.args + COMMON_ARGS:
            text = a.help + ("" if a.required else f" (default: {a.default})")
            kwargs = dict(help=text.replace("%", "%%"))  # argparse %-formats help text
            if a.type is bool:
                p.add_argument(f"--{a.name}", nargs="?", const="true", default=None, **kwargs)
            else:
                p.add_argument(f"--{a.name}", required=a.required, default=None, **kwargs)
    return parser


def main(argv: list[str] | None = None) -> int:
    ns = _parser().parse_args(argv)
    b = BUILDERS[ns.builder]
    args = {a.name: getattr(ns, a.name) for a in b.args + COMMON_ARGS
            if getattr(ns, a.name) is not None}
    start = time.time()
    try:
        out = build_dataset(ns.builder, ns.output_dir, overwrite=ns.overwrite, **args)
    except TrmError as e:  # DataError, UntrustedFileError, ...: one line (trm.errors)
        print(f"error: {e}", file=sys.stderr)
        return 2
    from trm.data.writer import read_committed_metadata

    meta = read_committed_metadata(out)
    counts = ", ".join(f"{s}: {m['total_groups']} groups / {m['total_puzzles']} puzzles / "
                       f"{m['total_examples']} examples" for s, m in meta["splits"].items())
    print(f"{out}: {ns.builder} dataset ({counts}) in {time.time() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
