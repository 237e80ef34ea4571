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
        bindings[f"{CONFIG_NAME}.{field.name}"] = _describe(getattr(config, field.name), bindings)
    described = {name: _describe(value, bindings) for name, value in (macros or {}).items()}
    return {"macros": dict(sorted(described.items())), "bindings": dict(sorted(bindings.items()))}


def _describe(value: Any, bindings: Dict[str, Any], depth: int = 0) -> Any:
    """A JSON value for ``value``; the arguments of component factories go to ``bindings``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if depth > 50:
        return repr(value)
    if isinstance(value, (list, tuple)):
        return [_describe(v, bindings, depth + 1) for v in value]
    if isinstance(value, dict):
        return {str(k): _describe(v, bindings, depth + 1) for k, v in value.items()}
    if isinstance(value, functools.partial) and not value.args:
        name = REGISTRY.name_of(value.func)
        if name is not None:
            for arg, arg_value in value.keywords.items():
                bindings[f"{name}.{arg}"] = _describe(arg_value, bindings, depth + 1)
            return f"@{name}"
    name = REGISTRY.name_of(value)
    if name is not None:
        return f"@{name}"
    name = REGISTRY.name_of(type(value))
    if name is not None:
        return f"@{name}()"
    return repr(value)
