"""One registry of trm components, by kind and name.

Components (sequence mixers, recursion cores, halting policies, losses, optimizers, LR
schedules, EMA, ...) register themselves with a decorator::

    from trm.registry import register

    @register("mixer", "mlp", description="MLP mixing along the sequence axis")
    class MLPMixer(nn.Module):
        ...

The decorated object is returned unchanged, so plain Python use is exactly as written. The
registry is plain Python (no gin): the gin edge, :mod:`trm.gin_edge`, exposes every component
to gin (``gin.register``, which does not wrap or modify it) under the module name of its kind,
so gin files reference it as ``@mixer.mlp`` (a callable/class) or ``@mixer.mlp()`` (called
once, result shared). It learns of components through :meth:`Registry.subscribe`.

Third-party packages add components through the ``trm.plugins`` entry-point group: every
entry point in that group is imported by :func:`load_plugins`, which the entry points
(``trm.train``, ``trm.eval`` ...) call before gin parses any file. A plugin module simply
uses ``@trm.registry.register(...)`` at import time.

``python -m trm.registry`` prints every kind and name with a one-line description.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import sys
from importlib import metadata
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from trm.errors import TrmError

#: The kinds trm itself uses. Plugins may add new kinds with :func:`register` as well.
KINDS: Tuple[str, ...] = (
    "mixer", "position", "core", "halting", "loss", "optimizer", "schedule", "ema",
    "model", "dataset", "evaluator",
)

PLUGIN_GROUP = "trm.plugins"


class RegistryError(TrmError):
    """Base class of registry errors."""


class DuplicateComponentError(RegistryError, ValueError):
    """A (kind, name) pair was registered twice."""


class UnknownComponentError(RegistryError, KeyError):
    """A lookup named a kind or component that is not registered."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


@dataclasses.dataclass(frozen=True)
class Component:
    kind: str
    name: str
    obj: Any
    description: str
    source: str  # "module:qualname" of the object

    @property
    def gin_name(self) -> str:
        return f"{self.kind}.{self.name}"


def _first_doc_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    for line in doc.splitlines():
        if line.strip():
            return line.strip()
    return ""


class Registry:
    """Components by kind and name. Duplicate names raise; misses list the known names."""

    def __init__(self) -> None:
        self._entries: Dict[str, Dict[str, Component]] = {}
        self._listeners: List[Callable[[str, Component], None]] = []

    # -- registration --------------------------------------------------------------------
    def add(self, kind: str, name: str, obj: Any, description: Optional[str] = None
            ) -> Component:
        _check_identifier("kind", kind)
        _check_identifier("name", name)
        kind_entries = self._entries.setdefault(kind, {})
        if name in kind_entries:
            existing = kind_entries[name]
            raise DuplicateComponentError(
                f"A {kind!r} component named {name!r} is already registered (by "
                f"{existing.source}); {_source(obj)} tried to register the same name. "
                f"Pick another name.")
        comp = Component(kind, name, obj, description or _first_doc_line(obj), _source(obj))
        kind_entries[name] = comp
        self._notify("added", comp)
        return comp

    def register(self, kind: str, name: Optional[str] = None, *,
                 description: Optional[str] = None) -> Callable[[Any], Any]:
        """Decorator form of :meth:`add`; returns the object unchanged."""

        def decorator(obj: Any) -> Any:
            self.add(kind, name or _snake_case(obj.__name__), obj, description)
            return obj

        return decorator

    # -- observers (the gin edge) -------------------------------------------------------
    def subscribe(self, listener: Callable[[str, Component], None]) -> None:
        """Calls ``listener(event, component)`` for every component now registered
        (``"added"``) and for every later change: ``"added"``, ``"removed"`` (by
        :meth:`restore`), ``"restored"`` (present again after :meth:`restore`)."""
        self._listeners.append(listener)
        for comp in self:
            listener("added", comp)

    def _notify(self, event: str, comp: Component) -> None:
        for listener in list(self._listeners):
            listener(event, comp)

    # -- lookup ----------------------------------------------------------------------------
    def get(self, kind: str, name: str) -> Any:
        return self.component(kind, name).obj

    def component(self, kind: str, name: str) -> Component:
        if kind not in self._entries:
            raise UnknownComponentError(
                f"Unknown component kind {kind!r}. Registered kinds: "
                f"{', '.join(sorted(self._entries)) or '(none)'}.")
        entries = self._entries[kind]
        if name not in entries:
            raise UnknownComponentError(
                f"Unknown {kind} {name!r}. Registered {kind} names: "
                f"{', '.join(sorted(entries)) or '(none)'}. "
                f"(Third-party components are loaded from the {PLUGIN_GROUP!r} entry points.)")
        return entries[name]

    def names(self, kind: str) -> List[str]:
        return sorted(self._entries.get(kind, {}))

    def kinds(self) -> List[str]:
        return sorted(self._entries)

    def name_of(self, obj: Any) -> Optional[str]:
        """``kind.name`` of the component registered as ``obj`` itself (None if it is not one;
        the first in sorted order if one object is registered under several names)."""
        return next((comp.gin_name for comp in self if comp.obj is obj), None)

    def __iter__(self) -> Iterator[Component]:
        for kind in sorted(self._entries):
            for name in sorted(self._entries[kind]):
                yield self._entries[kind][name]

    def __contains__(self, key: Tuple[str, str]) -> bool:
        kind, name = key
        return name in self._entries.get(kind, {})

    # -- test support --------------------------------------------------------------------
    def snapshot(self) -> Dict[str, Dict[str, Component]]:
        return {k: dict(v) for k, v in self._entries.items()}

    def restore(self, snapshot: Dict[str, Dict[str, Component]]) -> None:
        """Restores a :meth:`snapshot`; components added since are forgotten (listeners, e.g.
        the gin edge, are told)."""
        removed = [comp for kind, entries in self._entries.items()
                   for name, comp in entries.items() if name not in snapshot.get(kind, {})]
        self._entries = {k: dict(v) for k, v in snapshot.items()}
        for comp in removed:
            self._notify("removed", comp)
        for comp in self:
            self._notify("restored", comp)


def _check_identifier(what: str, value: str) -> None:
    if not isinstance(value, str) or not value.isidentifier() or not value.islower():
        raise RegistryError(
            f"Component {what} must be a lower-case Python identifier (snake_case), got "
            f"{value!r}.")


def _snake_case(name: str) -> str:
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i and (not name[i - 1].isupper() or
                                   (i + 1 < len(name) and name[i + 1].islower())):
            out.append("_")
        out.append(ch.lower())
    return "".join(out)


def _source(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', repr(obj))}"


#: The process-wide registry.
REGISTRY = Registry()
register = REGISTRY.register
get = REGISTRY.get
names = REGISTRY.names

_BUILTINS_LOADED = False
_PLUGINS_LOADED: Dict[str, str] = {}


def load_builtins() -> None:
    """Imports trm's own component modules (idempotent)."""
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    for module in ("trm.models", "trm.losses", "trm.halting", "trm.optim", "trm.evaluators"):
        importlib.import_module(module)
    _BUILTINS_LOADED = True


def load_plugins(group: str = PLUGIN_GROUP) -> Dict[str, str]:
    """Imports every module named by an entry point of ``group`` (idempotent).

    Returns a mapping entry-point name -> module. A plugin that fails to import raises a
    :class:`RegistryError` naming the distribution and entry point.
    """
    load_builtins()
    for ep in metadata.entry_points(group=group):
        if ep.name in _PLUGINS_LOADED:
            continue
        try:
            ep.load()
        except Exception as e:
            dist = getattr(getattr(ep, "dist", None), "name", "?")
            raise RegistryError(
                f"Could not load trm plugin {ep.name!r} ({ep.value}) from distribution "
                f"{dist!r}: {type(e).__name__}: {e}") from e
        _PLUGINS_LOADED[ep.name] = ep.value
    return dict(_PLUGINS_LOADED)


def format_table(registry: Registry = REGISTRY) -> str:
    rows = [(c.kind, c.name, c.description) for c in registry]
    width_kind = max([len("kind")] + [len(r[0]) for r in rows])
    width_name = max([len("name")] + [len(r[1]) for r in rows])
    lines = [f"{'kind':<{width_kind}}  {'name':<{width_name}}  description",
             f"{'-' * width_kind}  {'-' * width_name}  {'-' * 11}"]
    lines += [f"{k:<{width_kind}}  {n:<{width_name}}  {d}" for k, n, d in rows]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    import argparse
    parser = argparse.ArgumentParser(
        prog="python -m trm.registry",
        description="List every registered trm component (built-ins and plugins).")
    parser.add_argument("--kind", help="only this kind")
    args = parser.parse_args(argv)
    load_plugins()
    if args.kind:
        if args.kind not in REGISTRY.kinds():
            print(f"Unknown kind {args.kind!r}; known kinds: {', '.join(REGISTRY.kinds())}",
                  file=sys.stderr)
            return 2
        reg = Registry()
        for c in REGISTRY:
            if c.kind == args.kind:
                reg._entries.setdefault(c.kind, {})[c.name] = c
        print(format_table(reg))
    else:
        print(format_table())
    return 0
