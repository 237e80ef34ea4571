"""Gin at the edge: the one module of trm that knows gin.

It exposes the registry's components to gin (``@kind.name``), registers the run-level
``trm.TrainConfig``, finds the shipped experiment files, parses files and bindings, resolves the
config to plain Python (:func:`build_train_config`, :func:`macro_values`; ``hparams.json`` is
written from them by :mod:`trm.hparams`) and writes the operative config. The rest
of the library -- components, the trainer, the run state -- is plain Python; importing
``trm.models`` / ``trm.halting`` / ``trm.optim`` / ``trm.losses`` loads neither gin nor
TensorFlow. Importing this module makes every registered component (and every one registered
later, e.g. by a plugin) available to gin.

``--gin_file=e2_3_mlp.gin`` resolves by file name against the shipped ``gin/`` tree (installed
as the package data ``trm.gin_configs``), from any working directory; paths that exist (absolute
or relative to the working directory) are used as they are. ``include`` lines inside gin files
resolve against the same tree.

Bindings are checked: an unknown configurable or parameter is an error (gin's own check), and
so is a binding of an ALL_CAPS macro that no parsed file defines (gin would silently create a
new, unused macro, e.g. for the typo ``TRAIN_STEP=40``).
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import tokenize
from pathlib import Path
from typing import Any, Iterable, List, NamedTuple, Optional, Sequence

import gin
from gin import config_parser

from trm.errors import TrmError, one_line
from trm.registry import REGISTRY, Component, load_plugins


class ConfigError(TrmError, ValueError):
    """A gin file or binding is missing, ambiguous or invalid."""


@functools.lru_cache(maxsize=None)
def gin_root() -> Path:
    """The directory of the shipped experiment tree.

    ``$TRM_GIN_ROOT`` if set; else ``trm/gin_configs`` inside an installed package (setup.py
    copies gin/ there); else the repository's ``gin/`` (source checkouts, editable installs).
    """
    env = os.environ.get("TRM_GIN_ROOT")
    if env:
        return Path(env)
    package = Path(__file__).resolve().parent
    installed = package / "gin_configs"
    if installed.is_dir():
        return installed
    return package.parent / "gin"


def shipped_gin_files() -> List[Path]:
    """Every ``.gin`` file of the shipped tree, sorted."""
    return sorted(gin_root().rglob("*.gin"))


def experiment_hypothesis(path: Path) -> str:
    """The one-line hypothesis of an experiment file (its ``# Hypothesis:`` header, joined
    across continuation lines), or its first comment line."""
    lines = path.read_text().splitlines()
    first = ""
    for i, line in enumerate(lines):
        text = line.lstrip("#").strip()
        if not line.startswith("#"):
            break
        first = first or text
        if text.startswith("Hypothesis:"):
            parts = [text[len("Hypothesis:"):].strip()]
            for more in lines[i + 1:]:
                cont = more.lstrip("#")
                if not more.startswith("#") or not cont.startswith("   ") or not cont.strip():
                    break
                parts.append(cont.strip())
            return " ".join(parts)
    return first


def list_experiments() -> List[tuple]:
    """``[(relative name, hypothesis)]`` of the shipped experiment files (not the run profiles,
    tasks or models they include)."""
    root = gin_root()
    return [(str(p.relative_to(root / "experiments")), experiment_hypothesis(p))
            for p in shipped_gin_files() if "experiments" in p.relative_to(root).parts[:1]]


SEARCH_PATHS_ENV = "TRM_GIN_SEARCH_PATHS"


def search_paths() -> List[str]:
    """The ``--gin_search_paths`` folders, in order (kept in ``$TRM_GIN_SEARCH_PATHS``, so the
    processes a run starts search the same folders)."""
    return [p for p in os.environ.get(SEARCH_PATHS_ENV, "").split(os.pathsep) if p]


def set_search_paths(paths: Sequence[str]) -> None:
    """Folders searched (in order, before the shipped tree) for ``--gin_file`` names and for
    ``include`` lines (``--gin_search_paths``)."""
    missing = [p for p in paths if not os.path.isdir(p)]
    if missing:
        raise ConfigError(f"--gin_search_paths: {', '.join(missing)} is not a folder.")
    os.environ[SEARCH_PATHS_ENV] = os.pathsep.join(os.path.abspath(p) for p in paths)


def resolve_gin_file(name: str) -> str:
    """Absolute path of a gin file given as a path, as a name in a search path
    (:func:`set_search_paths`), or as a file name in the shipped tree."""
    if os.path.isfile(name):
        return os.path.abspath(name)
    for folder in search_paths():
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    root = gin_root()
    candidate = root / name
    if candidate.is_file():
        return str(candidate)
    base = os.path.basename(name)
    matches = [p for p in shipped_gin_files() if p.name == base]
    if len(matches) == 1:
        return str(matches[0])
    if len(matches) > 1:
        raise ConfigError(
            f"Gin file name {name!r} is ambiguous in {root}: "
            f"{', '.join(str(m.relative_to(root)) for m in matches)}. Give the relative path.")
    names = [p.name for p in shipped_gin_files()]
    close = difflib.get_close_matches(base, names, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"Gin file {name!r} not found (neither as a path nor in the shipped tree {root}).{hint} "
        "List the shipped experiments with `python -m trm.train --list_experiments`.")


_ADDED_PREFIXES: List[str] = []


def _set_include_paths(roots: Sequence[str]) -> None:
    """Puts ``roots`` (the search paths, then the shipped tree) first on gin's include path,
    before the working directory, so ``include 'runs/base.gin'`` finds the file from any
    directory, quietly; folders this module added earlier and no longer wants are dropped."""
    prefixes = gin.config._LOCATION_PREFIXES
    for root in _ADDED_PREFIXES + list(roots):
        while root in prefixes:
            prefixes.remove(root)
    prefixes[0:0] = list(roots)
    _ADDED_PREFIXES[:] = list(roots)


_MACRO_BINDING = re.compile(r"^\s*([A-Z][A-Z0-9_]*)\s*=")


def _macro_names() -> List[str]:
    """Names of the macros bound so far, in the order gin prints them (read from gin's public
    config text, not its private tables)."""
    try:
        text = gin.config_str()
    except Exception:
        return []
    return [st.selector for st in config_parser.ConfigParser(text, _InertDelegate())
            if isinstance(st, config_parser.BindingStatement) and not st.arg_name
            and not st.scope]


def macro_values() -> dict:
    """The value of every macro bound so far, in plain Python (macros and references resolved
    as :func:`build_train_config` resolves them)."""
    return {name: _plain_python(gin.query_parameter(f"%{name}"), f"%{name}")
            for name in _macro_names()}


# -- exposing the registry to gin -------------------------------------------------------------
# gin keeps one global registry with no "unregister", while trm's registry can change (plugins,
# tests restoring a snapshot). So gin gets one stable stand-in per component name, registered
# once, that always means "the component registered under this name now": gin checks parameter
# names against the current object (it follows ``__wrapped__``), and build_train_config() looks
# the name up in trm's registry.
class _Current:
    """gin's view of ``kind.name``: whatever trm's registry holds under that name now."""

    def __init__(self, kind: str, name: str, obj: Any) -> None:
        self._kind, self._name = kind, name
        self.__name__ = self.__qualname__ = getattr(obj, "__name__", name)
        self.__doc__ = getattr(obj, "__doc__", None)

    @property
    def __wrapped__(self):
        # While the name is unregistered gin sees a function without parameters (so binding
        # one is an error) and build_train_config() reports a reference to it in one line.
        if (self._kind, self._name) not in REGISTRY:
            return _unregistered
        return REGISTRY.get(self._kind, self._name)

    def __call__(self, *args, **kwargs):
        return REGISTRY.get(self._kind, self._name)(*args, **kwargs)


def _unregistered():
    """Stands for a component name that is no longer registered."""


_EXPOSED: set = set()  # gin names given a stand-in


def _on_registry_event(event: str, comp: Component) -> None:
    if event == "added" and comp.gin_name not in _EXPOSED:
        gin.external_configurable(_Current(comp.kind, comp.name, comp.obj), name=comp.name,
                                  module=comp.kind)
        _EXPOSED.add(comp.gin_name)


REGISTRY.subscribe(_on_registry_event)

_REGISTERED = False


def register_configurables() -> None:
    """Makes the run-level classes reachable from gin (idempotent).

    ``trm.TrainConfig`` (the run) is registered here, at the edge, so that the library itself
    needs no gin import. Components are registered by :mod:`trm.registry`.
    """
    global _REGISTERED
    if _REGISTERED:
        return
    from trm.experiment import TrainConfig
    gin.register("TrainConfig", module="trm")(TrainConfig)
    _REGISTERED = True


def _syntax(e: SyntaxError) -> str:
    """A gin SyntaxError in one line: what, where, the offending text."""
    where = f"line {e.lineno}" if e.lineno else ""
    text = (e.text or "").strip()
    return f"{e.msg} ({where}{': ' if where and text else ''}{text})" if (where or text) else str(e.msg)


def strip_gin_context(message) -> str:
    """An error message without the lines gin appends (see :func:`trm.errors.one_line`)."""
    return one_line(message)


def clear() -> None:
    """Forgets every parsed binding (before parsing a new experiment in the same process)."""
    gin.clear_config()


# -- saved configs are data --------------------------------------------------------------------
# A run's config.gin lives in a workdir or bucket that others may be able to write. Parsed as gin
# text it could run code (``import os`` / ``from __gin__ import dynamic_registration`` make any
# function a configurable), so it is first parsed into statements without resolving anything,
# checked against an allow-list, and only then bound.
class _Ref(NamedTuple):
    name: str
    evaluate: bool


class _Macro(NamedTuple):
    name: str


class _InertDelegate(config_parser.ParserDelegate):
    """Builds plain markers for ``@references`` and ``%MACROS``: parsing resolves nothing."""

    def configurable_reference(self, scoped_configurable_name, evaluate):
        return _Ref(scoped_configurable_name, evaluate)

    def macro(self, macro_name):
        return _Macro(macro_name)


def _allowed_configurables() -> set:
    """The gin names a saved config may bind or reference: trm's registered components (and
    plugins', loaded by the caller), ``trm.TrainConfig`` and gin's macros."""
    return {c.gin_name for c in REGISTRY} | {"trm.TrainConfig", "gin.macro"}


def _known(selector: str, allowed: set) -> bool:
    """Whether ``selector`` (possibly partial, e.g. ``mlp_mixer``, possibly scoped) names an
    allowed configurable. A partial name that also matches another gin configurable is
    ambiguous, which gin itself refuses when binding."""
    name = selector.rsplit("/", 1)[-1]
    return any(full == name or full.endswith("." + name) for full in allowed)


def _references(value: Any):
    if isinstance(value, _Ref):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _references(v)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _references(k)
            yield from _references(v)


def _statement_problem(statement, allowed: set) -> Optional[str]:
    if isinstance(statement, config_parser.ImportStatement):
        return f"`{statement.format()}` imports a module"
    if isinstance(statement, config_parser.IncludeStatement):
        return f"`include {statement.filename!r}` reads another file"
    if isinstance(statement, config_parser.BlockDeclaration):
        return None if _known(statement.selector, allowed) else \
            f"{statement.selector!r} is not a trm configurable"
    if statement.arg_name and not _known(statement.selector, allowed):
        return f"{statement.selector!r} is not a trm configurable"
    for ref in _references(statement.value):
        if not _known(ref.name, allowed):
            return f"@{ref.name} is not a trm configurable"
    return None


def check_saved_config(text: str, what: str) -> None:
    """Raises a one-line :class:`ConfigError` unless ``text`` is a saved config that is pure data:
    bindings and macros of trm configurables (see :func:`_allowed_configurables`) with literal
    values, references to trm configurables and macros -- no ``import`` (so no dynamic
    registration), no ``include``, nothing unknown. Nothing is bound or imported here."""
    load_plugins()
    register_configurables()
    allowed = _allowed_configurables()
    try:
        for statement in config_parser.ConfigParser(text, _InertDelegate()):
            problem = _statement_problem(statement, allowed)
            if problem is not None:
                raise ConfigError(
                    f"{what}, line {statement.location.line_num}: {problem}; a saved config is "
                    "read as data (trm configurables, macros and literal values only) and never "
                    "runs code. Check who wrote it; `trm.train --dry_run` with the run's gin files "
                    "prints the config it should hold.")
    except SyntaxError as e:
        raise ConfigError(f"Syntax error in {what}: {_syntax(e)}") from None
    except tokenize.TokenError as e:
        raise ConfigError(f"Syntax error in {what}: {_token_error(e)}") from None
    except RecursionError:
        raise ConfigError(f"{what} nests values too deeply to be a trm config") from None


def parse_saved_config(text: str, what: str) -> None:
    """Binds a saved config (a run's ``config.gin``) after :func:`check_saved_config`: the one
    way trm reads gin text from a workdir or bucket."""
    check_saved_config(text, what)
    _parse_one(lambda: gin.parse_config(text, skip_unknown=False), what)


def parse(gin_files: Sequence[str] = (), bindings: Iterable[str] = (),
          finalize: bool = True, config_texts: Sequence[str] = ()) -> List[str]:
    """Loads plugins, parses files in order, then bindings in order. Returns resolved files.

    Later files override earlier ones; bindings override files (and earlier bindings).
    ``config_texts`` (e.g. a run's saved ``config.gin``) are parsed before the files, as data
    (:func:`parse_saved_config`).
    """
    load_plugins()
    register_configurables()
    for text in config_texts:
        parse_saved_config(text, "a saved gin config")
    _set_include_paths(search_paths() + [str(gin_root())])
    resolved = [resolve_gin_file(f) for f in gin_files]
    for path in resolved:
        _parse_one(lambda p=path: gin.parse_config_file(p, skip_unknown=False),
                   f"gin file {path}")
    for binding in bindings:
        match = _MACRO_BINDING.match(binding)
        if match and match.group(1) not in _macro_names():
            known = sorted(m for m in _macro_names() if m.isupper())
            close = difflib.get_close_matches(match.group(1), known, n=3)
            raise ConfigError(
                f"Binding {binding!r} sets the macro {match.group(1)} that no parsed gin file "
                f"defines." + (f" Did you mean {', '.join(close)}?" if close else "") +
                (f" Known macros: {', '.join(known)}." if known else ""))
        _parse_binding(binding)
    if finalize:
        gin.finalize()
    return resolved


def _parse_binding(binding: str) -> None:
    """Parses one ``--gin_param``; a value gin cannot read (``LR=abc``) gets a message that
    shows how values are written."""
    try:
        _parse_one(lambda: gin.parse_config(binding, skip_unknown=False),
                   f"gin binding {binding!r}")
    except ConfigError as e:
        if "=" in binding and "malformed node" in str(e):
            name, value = (part.strip() for part in binding.split("=", 1))
            raise ConfigError(
                f"Binding {binding!r}: {value!r} is not a gin value. Write a number "
                f"({name}=1e-4), a quoted string ({name}='{value}'), True/False/None, a list "
                "([1, 2]) or a reference (@kind.name).") from e
        raise


def _token_error(e: tokenize.TokenError) -> str:
    """A tokenizer error (e.g. an unclosed bracket) in one line."""
    msg, where = (e.args + ("", None))[:2] if e.args else ("unreadable text", None)
    return f"{msg} (line {where[0]})" if isinstance(where, tuple) and where else str(msg)


def _parse_one(parse, what: str) -> None:
    """Runs one gin parse; its errors become a :class:`ConfigError` naming ``what``."""
    try:
        parse()
    except SyntaxError as e:
        raise ConfigError(f"Syntax error in {what}: {_syntax(e)}") from e
    except tokenize.TokenError as e:  # e.g. an unclosed bracket
        raise ConfigError(f"Syntax error in {what}: {_token_error(e)}") from e
    except (ValueError, KeyError, ImportError, IOError) as e:
        raise ConfigError(f"Error in {what}: {e}") from e


TRAIN_CONFIG_SELECTOR = "trm.TrainConfig"
_USED: set = set()  # the configurables the last build_train_config() resolved


def build_train_config():
    """The :class:`~trm.experiment.TrainConfig` described by the parsed gin config, in plain
    Python: every factory is the registered component itself with its bindings applied
    (``functools.partial(TRM, hidden_size=512, mixer=partial(MLPMixer, ...), ...)``), every
    macro replaced by its value, every ``@name()`` already called. Nothing in it reads gin
    when called: the config builds the same model after :func:`clear`.
    """
    register_configurables()
    from trm.experiment import TrainConfig
    _USED.clear()
    _USED.add(TRAIN_CONFIG_SELECTOR)
    bindings = gin.get_bindings(TRAIN_CONFIG_SELECTOR, resolve_references=False)
    return TrainConfig(**{name: _plain_python(value, f"{TRAIN_CONFIG_SELECTOR}.{name}")
                          for name, value in bindings.items()})


def _plain_python(value, where: str, depth: int = 0):
    """A gin binding value with every macro and reference resolved to plain Python."""
    if depth > 50:
        raise ConfigError(f"{where}: references nest too deeply (a reference cycle?)")
    if isinstance(value, gin.config.ConfigurableReference):
        if value.selector == "gin.macro":
            name = value.scoped_selector.split("/")[0]
            return _plain_python(gin.query_parameter(f"%{name}"), f"%{name}", depth + 1)
        factory = _factory(value.selector, depth)
        return factory() if value.evaluate else factory
    if isinstance(value, (list, tuple)):
        return type(value)(_plain_python(v, where, depth + 1) for v in value)
    if isinstance(value, dict):
        return {k: _plain_python(v, where, depth + 1) for k, v in value.items()}
    return value


def _factory(selector: str, depth: int):
    """``functools.partial`` of the component registered as ``selector`` (``kind.name``)
    with its gin bindings, themselves resolved."""
    kind, _, name = selector.rpartition(".")
    if (kind, name) not in REGISTRY:
        raise ConfigError(f"@{selector} is not a registered trm component (kind.name); "
                          "`python -m trm.registry` lists them.")
    _USED.add(selector)
    bindings = gin.get_bindings(selector, resolve_references=False)
    kwargs = {k: _plain_python(v, f"{selector}.{k}", depth + 1) for k, v in bindings.items()}
    obj = REGISTRY.get(kind, name)
    return functools.partial(obj, **kwargs) if kwargs else obj


def query_macro(name: str, default=None):
    """Value of a gin macro, or ``default`` when it is not defined."""
    try:
        return gin.query_parameter(f"%{name}")
    except ValueError:
        return default


def config_text(operative: bool = False) -> str:
    """The parsed config (``gin.config_str()``), or the operative one: the macros and the
    bindings of every configurable the last :func:`build_train_config` resolved (the
    components are called as plain Python, so gin's own operative record stays empty)."""
    try:
        text = gin.config_str()
    except Exception:
        return ""
    if not operative:
        return text
    used = {sel.rsplit("/", 1)[-1] for sel in _USED}
    short = {sel.rsplit(".", 1)[-1] for sel in used}
    kept = []
    for block in text.split("\n\n"):
        head = block.lstrip().splitlines()[0] if block.strip() else ""
        name = head[len("# Parameters for "):-1] if head.startswith("# Parameters for ") else None
        if head.startswith("# Macros") or (name is not None and (
                name in used or name in short or name.rsplit("/", 1)[-1] in short)):
            kept.append(block)
    return "\n\n".join(kept) + "\n" if kept else ""


def maybe_resolve(name: Optional[str]) -> Optional[str]:
    return None if name is None else resolve_gin_file(name)
