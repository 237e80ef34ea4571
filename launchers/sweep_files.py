"""Sweeps as data: a sweep file (JSON or YAML) or a command-line grid, no library edit needed.

Every launcher's ``--sweep`` takes a registered sweep's name *or* a path to a sweep file;
``--grid`` builds one on the command line. A sweep file::

    # my_lr_sweep.yaml
    name: lr_batch                      # optional: default is the file name (snake_case)
    description: LR x batch on the 9x9 twin
    gin_files: [cpu/cpu_e1_1_baseline.gin]
    seeds: [0, 1, 2]                    # optional: default [0]
    fixed: {TRAIN_STEPS: 1500}          # optional: bindings of every run
    grid:                               # macro -> values; the first key varies slowest
      LR: [1.0e-4, 3.0e-4]
      GLOBAL_BATCH_SIZE: [32, 64]
    axes:                               # optional, after the grid: axes with own labels
      - name: mixer
        points:
          - {label: mlp}
          - {label: att, gin_files: [cpu/cpu_e2_3_attention.gin], bindings: {NUM_HEADS: 2}}

JSON files have the same keys. Values are gin literals: numbers, ``true``/``false``/``null``
are written for gin (``True``/``False``/``None``); a string is used as written, so a gin
string needs its quotes inside (``"'float32'"``), and ``@name`` / ``%MACRO`` references work.
Run names are ``<name>/<labels>_s<seed>`` with labels ``<prefix><value>`` (prefix: the macro
in lower case, or ``prefix:`` under ``grid_prefixes``), e.g. ``lr_batch/lr0.0001_global_batch_size32_s0``.

The command-line grid: ``--grid=LR=1e-4,3e-4 --grid=H_CYCLES=2,3 --gin_file=quickstart.gin
[--sweep_name=my_grid]`` (values split on commas outside brackets and quotes).
"""

from __future__ import annotations

import ast
import difflib
import json
import os
import re
from typing import Any, Iterable, Mapping, Sequence

from launchers.named_sweeps import Axis, Point, Sweep, get_sweep, list_sweeps

SWEEP_FILE_SUFFIXES = (".json", ".yaml", ".yml")
_FILE_KEYS = ("name", "description", "gin_files", "seeds", "fixed", "grid", "grid_prefixes",
              "axes", "seeds_first")
_AXIS_KEYS = ("name", "points")
_POINT_KEYS = ("label", "bindings", "gin_files")
_MACRO_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_./]*$")


class SweepFileError(ValueError):
    """A sweep file or ``--grid`` is malformed; the message says where and how to fix it."""


def is_sweep_file(spec: str) -> bool:
    """Whether ``--sweep`` names a file (by suffix, or because the path exists)."""
    return spec.endswith(SWEEP_FILE_SUFFIXES) or os.path.isfile(spec)


def resolve_sweep(spec: str) -> Sweep:
    """The sweep ``spec`` names: a sweep file's path, or a registered sweep's name (with a
    did-you-mean when there is none)."""
    if is_sweep_file(spec):
        return load_sweep_file(spec)
    try:
        return get_sweep(spec)
    except KeyError:
        close = difflib.get_close_matches(spec, list_sweeps(), n=3, cutoff=0.6)
        hint = (f" Did you mean {', '.join(close)}?" if close
                else f" Known sweeps: {', '.join(list_sweeps())}.")
        raise KeyError(f"unknown sweep {spec!r}.{hint} A sweep file needs a .json/.yaml/.yml "
                       "name.") from None


def load_sweep_file(path: str) -> Sweep:
    """Reads a JSON or YAML sweep file (see the module docstring)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise SweepFileError(f"cannot read sweep file {path}: {e.strerror or e}") from None
    data = _parse(path, text)
    stem = os.path.splitext(os.path.basename(path))[0]
    return sweep_from_dict(data, default_name=re.sub(r"[^a-z0-9_]", "_", stem.lower()),
                           where=f"sweep file {path}")


def _parse(path: str, text: str) -> Any:
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError:
            raise SweepFileError(f"{path} is YAML but PyYAML is not installed: "
                                 "`pip install pyyaml`, or write the sweep as JSON") from None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise SweepFileError(f"sweep file {path} is not valid YAML: "
                                 f"{str(e).splitlines()[0]}") from None
    try:
        return json.loads(text)
    except ValueError as e:
        raise SweepFileError(f"sweep file {path} is not valid JSON: {e}") from None


def sweep_from_dict(data: Any, default_name: str = "sweep", where: str = "sweep") -> Sweep:
    """A :class:`Sweep` from a sweep file's content."""
    if not isinstance(data, dict):
        raise SweepFileError(f"{where}: expected a mapping with keys {', '.join(_FILE_KEYS)}")
    _check_keys(data, _FILE_KEYS, where)
    gin_files = _str_list(data.get("gin_files"), f"{where}: gin_files")
    if not gin_files:
        raise SweepFileError(f"{where}: gin_files is required (the base experiment files)")
    prefixes = data.get("grid_prefixes") or {}
    if not isinstance(prefixes, dict):
        raise SweepFileError(f"{where}: grid_prefixes must map macros to label prefixes")
    axes = [grid_axis(macro, values, prefixes.get(macro), f"{where}: grid.{macro}")
            for macro, values in _mapping(data.get("grid"), f"{where}: grid").items()]
    axes += [_axis(axis, f"{where}: axes[{i}]") for i, axis in enumerate(data.get("axes") or [])]
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not all(type(s) is int for s in seeds):
        raise SweepFileError(f"{where}: seeds must be a list of integers, e.g. [0, 1, 2]")
    fixed = data.get("fixed") or {}
    fixed = ([f"{k}={gin_literal(v, f'{where}: fixed.{k}')}" for k, v in fixed.items()]
             if isinstance(fixed, dict) else _str_list(fixed, f"{where}: fixed"))
    try:
        return Sweep(name=str(data.get("name") or default_name), gin_files=tuple(gin_files),
                     axes=tuple(axes), seeds=tuple(seeds), fixed=tuple(fixed),
                     description=str(data.get("description", "")),
                     seeds_first=bool(data.get("seeds_first", False)))
    except ValueError as e:
        raise SweepFileError(f"{where}: {e}") from None


def grid_axis(macro: str, values: Any, prefix: str | None = None, where: str = "grid") -> Axis:
    """An axis over one macro's values, labelled ``<prefix><value>``."""
    if not isinstance(macro, str) or not _MACRO_RE.match(macro):
        raise SweepFileError(f"{where}: {macro!r} is not a gin macro or binding name")
    if not isinstance(values, list) or not values:
        raise SweepFileError(f"{where}: give a non-empty list of values")
    prefix = macro.split(".")[-1].lower() if prefix is None else str(prefix)
    points, labels = [], set()
    for value in values:
        literal = gin_literal(value, where)
        label = prefix + re.sub(r"[^A-Za-z0-9_.+-]", "", literal.strip("'\""))
        if label in labels or not re.match(r"^[A-Za-z0-9]", label):
            raise SweepFileError(f"{where}: the value {value!r} gives the label {label!r}, "
                                 "which is empty or repeats another; set a prefix or use "
                                 "explicit axes with labels")
        labels.add(label)
        points.append(Point(label, {macro: literal}))
    return Axis(macro.lower(), tuple(points))


def _axis(data: Any, where: str) -> Axis:
    if not isinstance(data, dict):
        raise SweepFileError(f"{where}: an axis is a mapping with 'name' and 'points'")
    _check_keys(data, _AXIS_KEYS, where)
    points = []
    for j, point in enumerate(data.get("points") or []):
        here = f"{where}.points[{j}]"
        if not isinstance(point, dict) or "label" not in point:
            raise SweepFileError(f"{here}: a point is a mapping with at least a 'label'")
        _check_keys(point, _POINT_KEYS, here)
        bindings = {k: gin_literal(v, f"{here}.bindings.{k}")
                    for k, v in _mapping(point.get("bindings"), f"{here}.bindings").items()}
        try:
            points.append(Point(str(point["label"]), bindings,
                                tuple(_str_list(point.get("gin_files"), f"{here}.gin_files"))))
        except ValueError as e:
            raise SweepFileError(f"{here}: {e}") from None
    try:
        return Axis(str(data.get("name", "")), tuple(points))
    except ValueError as e:
        raise SweepFileError(f"{where}: {e}") from None


def gin_literal(value: Any, where: str) -> str:
    """A sweep value as gin text: numbers and booleans converted, strings checked."""
    if isinstance(value, bool) or value is None:
        return {True: "True", False: "False", None: "None"}[value]
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(gin_literal(v, where) for v in value) + "]"
    if isinstance(value, str):
        text = value.strip()
        if text.startswith(("@", "%")):
            return text
        try:
            ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise SweepFileError(
                f"{where}: {value!r} is not a gin value; a string needs quotes inside "
                f"(\"'{text}'\"), a reference starts with @ or %") from None
        return text
    raise SweepFileError(f"{where}: {value!r} ({type(value).__name__}) is not a gin value")


def command_line_sweep(gin_files: Sequence[str], grids: Iterable[str], name: str = "grid",
                       seeds: Sequence[int] = (0,)) -> Sweep:
    """The sweep of ``--grid=MACRO=v1,v2`` flags over ``--gin_file`` s."""
    if not gin_files:
        raise SweepFileError("--grid needs the base experiment: add --gin_file=<file>")
    axes = []
    for spec in grids:
        if "=" not in spec:
            raise SweepFileError(f"--grid {spec!r} is not MACRO=v1,v2,...")
        macro, values = (part.strip() for part in spec.split("=", 1))
        axes.append(grid_axis(macro, split_values(values), where=f"--grid {spec!r}"))
    try:
        return Sweep(name=name, gin_files=tuple(gin_files), axes=tuple(axes),
                     seeds=tuple(seeds), description="command-line grid")
    except ValueError as e:
        raise SweepFileError(f"--grid: {e}") from None


def split_values(text: str) -> list[str]:
    """``"1e-4,[1, 2],'a,b'"`` -> ``["1e-4", "[1, 2]", "'a,b'"]``: commas outside brackets
    and quotes separate values."""
    values, depth, quote, current = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            values.append(current.strip())
            current = ""
            continue
        current += ch
    values.append(current.strip())
    return [v for v in values if v]


def _check_keys(data: Mapping, known: Sequence[str], where: str) -> None:
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SweepFileError(f"{where}: unknown key {key!r}{hint}; known keys: "
                                 f"{', '.join(known)}")


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SweepFileError(f"{where}: expected a mapping")
    return value


def _str_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SweepFileError(f"{where}: expected a list of strings")
    return list(value)
