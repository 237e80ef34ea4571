"""Helpers shared by the launchers: command lines, running them, run state, formatting.

Command construction elsewhere is pure (lists of argv lists); this module holds the thin layer
that prints or executes them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import stat
import subprocess
import sys
from typing import Callable, Iterable, Sequence, TextIO

RUN_JSON = "run.json"
COMPLETED = "completed"
DEFAULT_TRAIN_MODULE = "trm.train"


class CommandError(RuntimeError):
    """A command exited non-zero."""

    def __init__(self, argv: Sequence[str], returncode: int):
        self.argv = list(argv)
        self.returncode = returncode
        super().__init__(f"command failed with exit code {returncode}: {format_command(argv)}")


def format_command(argv: Sequence[str]) -> str:
    """One shell-quoted line that a POSIX shell splits back into exactly ``argv``."""
    return shlex.join(argv)


def execute(
    commands: Iterable[Sequence[str]],
    *,
    dry_run: bool,
    out: TextIO | None = None,
    runner: Callable[..., subprocess.CompletedProcess] = subprocess.run,
) -> None:
    """Prints (``dry_run``) or runs ``commands`` one after the other.

    Runs stream their output to this process's stdout/stderr. Lines starting with ``#`` are
    comments: printed in a dry run, skipped otherwise.

    Raises:
      CommandError: for the first command that exits non-zero (later ones do not run).
    """
    out = out or sys.stdout
    for argv in commands:
        argv = list(argv)
        if argv and argv[0].startswith("#"):
            if dry_run:
                print(" ".join(argv), file=out)
            continue
        line = format_command(argv)
        if dry_run:
            print(line, file=out)
            continue
        print(f"+ {line}", file=sys.stderr, flush=True)
        try:
            result = runner(argv, check=False)
        except FileNotFoundError:
            raise CommandError(argv, 127) from None
        if result.returncode != 0:
            raise CommandError(argv, result.returncode)


def capture(
    argv: Sequence[str],
    runner: Callable[..., subprocess.CompletedProcess] = subprocess.run,
) -> subprocess.CompletedProcess:
    """Runs ``argv`` and returns its result with stdout/stderr captured as text."""
    try:
        return runner(list(argv), check=False, capture_output=True, text=True)
    except FileNotFoundError:
        return subprocess.CompletedProcess(list(argv), 127, "", f"{argv[0]}: not found")


def comment(text: str) -> list[str]:
    """A dry-run comment line (see :func:`execute`)."""
    return [f"# {text}"]


# ---------------------------------------------------------------------------------------------
# Validation of user strings: one grammar per kind of value, one-line errors that name the
# setting and the allowed pattern. Everything that reaches a shell is also quoted (shlex.quote
# or :func:`dq`); the grammars keep values that become file names, paths or options sane.

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.+-]*"
RELPATH_PATTERN = rf"{NAME_PATTERN}(/{NAME_PATTERN})*"
MODULE_PATTERN = r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
ENV_KEY_PATTERN = r"[A-Za-z_][A-Za-z0-9_]*"


def show(value: object, limit: int = 80) -> str:
    """``repr`` of a value for a one-line error (control characters escaped, long ones cut)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def check_pattern(value: str, pattern: str, setting: str, what: str = "") -> str:
    """Returns ``value`` if the whole of it matches ``pattern``; else a one-line ValueError."""
    if not isinstance(value, str) or not re.fullmatch(pattern, value):
        hint = f" ({what})" if what else ""
        shown = f"^(?:{pattern})$" if "|" in pattern else f"^{pattern}$"
        raise ValueError(f"{setting} {show(value)} is not allowed: must match {shown}{hint}")
    return value


def check_name(value: str, setting: str) -> str:
    """A single path-safe name: no ``/``, no ``..``, not absolute, not starting with ``.``/``-``."""
    return check_pattern(value, NAME_PATTERN, setting,
                         "one name: letters, digits, _ . + -; no / and no leading . or -")


def check_relpath(value: str, setting: str) -> str:
    """A relative path of path-safe names (``e2_2_tn/t3_n6_s0``): stays inside its folder."""
    return check_pattern(value, RELPATH_PATTERN, setting,
                         "a relative path of names made of letters, digits, _ . + -; "
                         "no .., no leading / . or -")


def check_module(value: str, setting: str) -> str:
    """A dotted Python module name (``trm.train``)."""
    return check_pattern(value, MODULE_PATTERN, setting, "a dotted Python module name")


def dq(text: str) -> str:
    """``text`` escaped for the inside of a double-quoted shell word.

    Inside ``"..."`` a POSIX shell still expands ``$``, backquotes and ``\\``; escaping those
    and ``"`` leaves only literal text (a newline stays a literal newline).
    """
    return re.sub(r'([\\"$`])', r"\\\1", text)


def local_path(path: str) -> str:
    """A local path as a command argument: ``./-x`` for ``-x`` so no tool reads it as an option."""
    return "./" + path if path.startswith("-") else path


def path_inside(root: str, relative: str, setting: str) -> str:
    """``root/relative`` after checking that ``relative`` cannot leave ``root``."""
    check_relpath(relative, setting)
    return os.path.join(root, *relative.split("/"))


# ---------------------------------------------------------------------------------------------
# Trainer command lines and run state.


def trainer_args(
    gin_files: Sequence[str], bindings: Sequence[str], workdir: str,
    gin_search_paths: Sequence[str] = (),
) -> list[str]:
    """The flags of ``python -m trm.train`` for one run."""
    return (
        [f"--gin_file={f}" for f in gin_files]
        + [f"--gin_param={b}" for b in bindings]
        + ([f"--gin_search_paths={','.join(gin_search_paths)}"] if gin_search_paths else [])
        + [f"--workdir={workdir}"]
    )


def add_gin_arguments(parser, files: bool = True) -> None:
    """The gin flags every trm tool spells the same way (see :mod:`trm.cli`): ``--gin_file``,
    ``--gin_param`` / ``--gin_bindings`` and ``--gin_search_paths``; ``--gin.NAME=VALUE``
    is read by :func:`parse_args`. :func:`gin_bindings` returns the bindings in order."""
    if files:
        parser.add_argument("--gin_file", action="append", default=[],
                            help="gin file: a path or a name in the search paths / shipped "
                                 "tree (repeatable)")
    parser.add_argument("--gin_param", action="append", default=[],
                        help="gin binding for every run, e.g. TRAIN_STEPS=40 (repeatable; "
                             "also --gin.TRAIN_STEPS=40)")
    parser.add_argument("--gin_bindings", action="append", default=[],
                        help="alias of --gin_param, applied after it")
    parser.add_argument("--gin_search_paths", type=lambda s: [p for p in s.split(",") if p],
                        default=[], help="comma-separated folders searched for gin files "
                                         "before the shipped tree")


def parse_args(parser, argv: Sequence[str] | None):
    """``parser.parse_args`` that also takes t5x-style ``--gin.NAME=VALUE`` bindings, as
    ``--gin_bindings=NAME=VALUE`` in their place (so bindings keep the command line's order)."""
    expanded = []
    for arg in sys.argv[1:] if argv is None else argv:
        if arg.startswith("--gin."):
            name, sep, value = arg[len("--gin."):].partition("=")
            if not sep or not name.strip():
                parser.error(f"{arg!r} is not --gin.NAME=VALUE (e.g. --gin.TRAIN_STEPS=40)")
            arg = f"--gin_bindings={name}={value}"
        expanded.append(arg)
    return parser.parse_args(expanded)


def gin_bindings(args) -> list[str]:
    """The bindings of :func:`add_gin_arguments`' flags, in the order they apply."""
    return list(args.gin_param) + list(args.gin_bindings)


def preflight(runs: Sequence[dict], python: str, module: str = "trm.preflight",
              gin_search_paths: Sequence[str] = ()) -> list[dict]:
    """Every run (``name``, ``gin_files``, ``bindings``, optional ``workdir``) checked as its
    start would check it, by ``python -m <module>`` in one process (the runs as JSON on
    stdin; :mod:`trm.preflight`): one result per run, in order.

    Raises:
      RuntimeError: the preflight process itself failed (its last line says why).
    """
    check_module(module, "--preflight_module")
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    if gin_search_paths:
        env["TRM_GIN_SEARCH_PATHS"] = os.pathsep.join(os.path.abspath(p)
                                                      for p in gin_search_paths)
    proc = subprocess.run([python, "-m", module], input=json.dumps(list(runs)), text=True,
                          capture_output=True, env=env, check=False)
    results = []
    for line in proc.stdout.splitlines():
        try:
            results.append(json.loads(line))
        except ValueError:
            continue
    if len(results) != len(runs):
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the preflight (python -m {module}) failed with exit code "
                           f"{proc.returncode}: {last}")
    return results


def preflight_errors(runs: Sequence[dict], results: Sequence[dict]) -> list[str]:
    """``"<run>: <one line>"`` for every run the preflight refused."""
    return [f"{run['name']}: {result.get('error')}" for run, result in zip(runs, results)
            if not result.get("ok")]


def check_extra_bindings(extra: Sequence[str], swept: Iterable[str]) -> None:
    """Rejects extra ``--gin_param`` s that would override a swept macro (or are malformed).

    Raises:
      ValueError: naming the offending binding.
    """
    swept = set(swept)
    for binding in extra:
        if "=" not in binding:
            raise ValueError(f"--gin_param {binding!r} is not KEY=VALUE")
        key = binding.split("=", 1)[0].strip()
        if key in swept:
            hint = " (use --seeds)" if key == "SEED" else ""
            raise ValueError(
                f"--gin_param {binding!r} overrides {key}, which this sweep varies{hint}"
            )


def parse_seeds(text: str | None) -> tuple[int, ...] | None:
    """``"0,1,2"`` -> ``(0, 1, 2)``; ``None`` or ``""`` -> ``None`` (the sweep's default)."""
    if not text:
        return None
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated integers, got {text!r}") from None


MAX_JSON_BYTES = 16 << 20  # run.json / command.json are kilobytes


def read_json_file(path: str) -> dict | None:
    """A small JSON object from a local file others may write, or ``None`` if missing,
    unreadable or not an object. Only a regular file of at most ``MAX_JSON_BYTES`` is read:
    opened without blocking and checked with ``fstat`` first, so a FIFO or a device there
    never hangs the launcher."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_JSON_BYTES:
            return None
        try:
            data = json.loads(f.read(MAX_JSON_BYTES + 1))
        except (OSError, ValueError):
            return None
    return data if isinstance(data, dict) else None


def read_run_json(workdir: str) -> dict | None:
    """The parsed ``run.json`` of a local workdir, or ``None`` if missing or unreadable."""
    return read_json_file(os.path.join(workdir, RUN_JSON))


def is_completed(run_json: dict | None) -> bool:
    return bool(run_json) and run_json.get("status") == COMPLETED


@dataclasses.dataclass
class RunState:
    """What ``run.json`` says about one run (all fields optional)."""

    name: str
    status: str | None = None
    last_step: int | None = None
    total_steps: int | None = None

    @classmethod
    def from_json(cls, name: str, data: dict | None) -> "RunState":
        """Reads ``status``, ``last_step`` (or ``step``), ``total_steps`` (or ``train_steps``)."""
        if not data:
            return cls(name=name, status="not started")
        return cls(
            name=name,
            status=data.get("status"),
            last_step=data.get("last_step", data.get("step")),
            total_steps=data.get("total_steps", data.get("train_steps")),
        )

    def row(self) -> list[str]:
        step = "-" if self.last_step is None else str(self.last_step)
        if self.total_steps:
            step += f"/{self.total_steps}"
        return [self.name, self.status or "-", step]


def format_table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    """Left-aligned columns, two spaces apart."""
    rows = [list(header)] + [list(r) for r in rows]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows
    )


def format_duration(seconds: float | None) -> str:
    """``3725`` -> ``"1:02:05"``; ``None`` -> ``"?"``."""
    if seconds is None:
        return "?"
    seconds = int(round(max(seconds, 0)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
