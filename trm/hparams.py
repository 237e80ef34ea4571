"""The effective hyperparameters of a run, as plain JSON (a run's ``hparams.json``).

Written from the :class:`~trm.experiment.TrainConfig` the run trains with (plain Python, see
:func:`trm.gin_edge.build_train_config`) and the values of its macros, so the record says what
the run used, not how the config was written::

    {"macros": {"HIDDEN_SIZE": 512, ...},
     "bindings": {"trm.TrainConfig.lr": 0.0001, "trm.TrainConfig.model": "@model.trm",
                  "model.trm.hidden_size": 512, ...}}

Every field of the TrainConfig is listed (defaults included). A factory that is a registered
component with bound arguments (``functools.partial(TRM, hidden_size=512)``) is written as its
name, ``@model.trm``, and its arguments as ``model.trm.hidden_size``; an object built from a
registered class (``@evaluator.sudoku()`` in gin) as ``@evaluator.sudoku()``; anything else
JSON cannot hold as its ``repr``. :mod:`analysis.hparams` reads this format.

A component used again with an argument of a different value (the network and the puzzle
table both on ``@optimizer.adam_atan2`` with different ``lr``) is written as a scoped binding,
as gin would configure it, the scope being the TrainConfig field:
``"trm.TrainConfig.sparse_optimizer": "@sparse_optimizer/optimizer.adam_atan2"`` and
``"sparse_optimizer/optimizer.adam_atan2.lr": 0.01``, so no use overwrites another's arguments.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Dict, Mapping

from trm.registry import REGISTRY

CONFIG_NAME = "trm.TrainConfig"


def hparams(config: Any, macros: Mapping[str, Any] = None) -> Dict[str, Dict[str, Any]]:
    """``{"macros": ..., "bindings": ...}`` for a TrainConfig (a dataclass) and macro values."""
    bindings: Dict[str, Any] = {}
    for field in dataclasses.fields(config):
        bindings[f"{CONFIG_NAME}.{field.name}"] = _describe(getattr(config, field.name), bindings,
                                                            scope=field.name)
    described = {name: _describe(value, bindings, scope=name)
                 for name, value in (macros or {}).items()}
    return {"macros": dict(sorted(described.items())), "bindings": dict(sorted(bindings.items()))}


def _describe(value: Any, bindings: Dict[str, Any], scope: str, depth: int = 0) -> Any:
    """A JSON value for ``value``; the arguments of component factories go to ``bindings``
    (under ``scope/`` when they conflict with another use of the same component)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if depth > 50:
        return repr(value)
    if isinstance(value, (list, tuple)):
        return [_describe(v, bindings, scope, depth + 1) for v in value]
    if isinstance(value, dict):
        return {str(k): _describe(v, bindings, scope, depth + 1) for k, v in value.items()}
    if isinstance(value, functools.partial) and not value.args:
        name = REGISTRY.name_of(value.func)
        if name is not None:
            args = {arg: _describe(v, bindings, scope, depth + 1)
                    for arg, v in value.keywords.items()}
            name = _free_name(name, args, bindings, scope)
            for arg, arg_value in args.items():
                bindings[f"{name}.{arg}"] = arg_value
            return f"@{name}"
    name = REGISTRY.name_of(value)
    if name is not None:
        return f"@{name}"
    name = REGISTRY.name_of(type(value))
    if name is not None:
        return f"@{name}()"
    return repr(value)


def _free_name(name: str, args: Dict[str, Any], bindings: Dict[str, Any], scope: str) -> str:
    """``name``, or ``scope/name`` (``scope_2/name``, ...) when a binding already written for
    another use of the component gives one of ``args`` a different value."""
    candidates = [name] + [f"{scope}{'' if i == 1 else f'_{i}'}/{name}" for i in range(1, 100)]
    for candidate in candidates:
        if all(bindings.get(f"{candidate}.{arg}", v) == v for arg, v in args.items()):
            return candidate
    raise ValueError(f"{name} is used more than 100 times with conflicting arguments")
