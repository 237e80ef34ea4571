r"""Preflight: check a run exactly as its start would, without starting it.

A real start parses the gin files and bindings, fills the :class:`~trm.experiment.TrainConfig`,
validates every value, builds the model, the loss head, the optimizers, the schedule and the
EMA, and compares the config with the workdir's saved ``config.gin``. :func:`check_config` does
all of that on the CPU (no device, no dataset build, no process group), so a typo, a
``TRAIN_STEPS=0``, ``LR=-1``, ``FORWARD_DTYPE='fp16'`` or a ``HIDDEN_SIZE`` the heads do not
divide fails here with the same one line a real start would print, before any VM or run
starts. :func:`workdir_state` says what a start would do with a workdir:

========== ==================================================================================
state      meaning
========== ==================================================================================
new        no run there yet
resume     a run with the same config that has not finished: the start resumes it
completed  a finished run with the same config (launchers skip it)
conflict   a run with another config (a start refuses it without --allow_config_change)
invalid    the workdir cannot be read as a run (e.g. a corrupt run.json)
========== ==================================================================================

Used by ``trm.train --dry_run`` and by the sweep launchers, which run it for every run of a
sweep before starting any::

    echo '[{"name": "a", "gin_files": ["quickstart.gin"], "bindings": ["LR=-1"],
            "workdir": "runs/a"}]' | python -m trm.preflight

prints one JSON line per run (``{"name", "ok", "error", "state", "detail", "num_params"}``)
and exits 1 when any run fails.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any, Dict, List, Optional, Sequence

from trm.errors import TrmError

STATES = ("new", "resume", "completed", "conflict", "invalid")


@dataclasses.dataclass
class Preflight:
    """What :func:`check_config` found: the resolved files, the config text, the data shape
    (and where it came from) and the built model's parameter count."""

    gin_files: List[str]
    config_text: str
    shape: Any
    shape_source: str
    num_params: int
    summary: Dict[str, Any]


class PreflightError(TrmError, ValueError):
    """The run would not start; the message is the one line a real start prints."""


def check_config(gin_files: Sequence[str], bindings: Sequence[str],
                 process_count: int = 1) -> Preflight:
    """Parses, validates and builds everything a start builds, on the CPU.

    Raises:
        PreflightError: with the one-line message of the first problem.
    """
    import torch

    from trm import gin_edge
    from trm.data import DataError
    from trm.experiment import (TrainingError, build_model,
                                dataset_shape, total_steps)
    from trm.registry import RegistryError
    try:
        gin_edge.clear()
        resolved = gin_edge.parse(gin_files, bindings)
        cfg = gin_edge.build_train_config()
        cfg.validate(process_count)
        shape, source = dataset_shape(cfg, gin_edge.query_macro)
        torch.manual_seed(cfg.seed)
        dtype = "float32" if cfg.forward_dtype == "auto" else cfg.forward_dtype
        try:
            model = build_model(cfg, shape, forward_dtype=dtype, init_from_reference=False)
        except (ValueError, TypeError) as e:
            raise TrainingError(f"Cannot build the model: {e}") from e
        try:
            _build_training_parts(cfg, model)
        except (ValueError, TypeError, IndexError, ZeroDivisionError) as e:
            raise TrainingError("Cannot build the loss, optimizers, schedule or EMA: "
                                f"{gin_edge.strip_gin_context(str(e))}") from e
        per_epoch = getattr(shape, "examples_per_epoch", None)  # metadata only
        steps = (total_steps(cfg, per_epoch or 0)
                 if per_epoch is not None or cfg.train_steps is not None else None)
        if steps is not None and steps < 1:
            raise TrainingError(f"The run has {steps} steps: set TRAIN_STEPS or more EPOCHS.")
        text = gin_edge.config_text()
    except (gin_edge.ConfigError, TrainingError, DataError, RegistryError) as e:
        raise PreflightError(gin_edge.strip_gin_context(str(e)).splitlines()[0]) from e
    summary = {"gin_files": resolved, "bindings": list(bindings),
               "num_params": model.num_params(), "vocab_size": shape.vocab_size,
               "seq_len": shape.seq_len, "num_puzzle_identifiers": shape.num_puzzle_identifiers,
               "shape_source": source, "total_steps": steps,
               "H_cycles": model.core.H_cycles, "L_cycles": model.core.L_cycles,
               "hidden_size": model.hidden_size, "num_layers": len(model.core.net.layers),
               "mixer": type(model.core.net.layers[0].mixer).__name__,
               "halting": repr(model.halting), "halt_max_steps": model.halt_max_steps,
               "global_batch_size": cfg.global_batch_size, "lr": cfg.lr,
               "forward_dtype": cfg.forward_dtype,
               "ema": bool(cfg.use_ema and cfg.ema is not None)}
    return Preflight(resolved, text, shape, source, model.num_params(), summary)


def _build_training_parts(cfg, model) -> None:
    """The loss head, optimizers, schedule and EMA, built as the trainer builds them (a binding
    of theirs that gin only checks when called fails here)."""
    from trm.experiment import build_ema, build_optimizers
    cfg.loss()
    build_optimizers(cfg, model)
    cfg.schedule(0, base_lr=cfg.lr, warmup_steps=cfg.lr_warmup_steps,
                 total_steps=max(1, cfg.train_steps or 1), min_ratio=cfg.lr_min_ratio)
    build_ema(cfg, model)


def workdir_state(workdir: str, config_text: str) -> tuple:
    """``(state, detail)``: what a start with ``config_text`` would do with ``workdir`` (see
    the table in the module docstring). Reads run.json and config.gin; writes nothing."""
    from trm.run.record import CONFIG_GIN, RUN_JSON
    from trm.run.storage import Storage
    storage = Storage(workdir, max_retries=1)
    try:
        if not storage.exists(RUN_JSON) and not storage.exists(CONFIG_GIN):
            return "new", "no run yet"
        run = storage.read_json(RUN_JSON, default={})
        saved = storage.read_text(CONFIG_GIN) if storage.exists(CONFIG_GIN) else None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        return "invalid", f"cannot read the run in {workdir}: {e}"
    if not isinstance(run, dict):
        return "invalid", f"{workdir}/{RUN_JSON} is not a JSON object"
    status, step = run.get("status"), run.get("last_step", run.get("step"))
    if saved is not None and saved != config_text:
        return "conflict", (f"{workdir} holds a run with another config (status {status}); "
                            "use another workdir, or --allow_config_change to continue it")
    if status == "completed":
        return "completed", f"finished at step {step}"
    return "resume", f"status {status or 'none'} at step {step}"


def check_run(gin_files: Sequence[str], bindings: Sequence[str], workdir: Optional[str] = None,
              process_count: int = 1) -> Dict[str, Any]:
    """One run's preflight as a JSON-able dict: ``ok``, ``error`` (one line or None),
    ``state`` / ``detail`` (when ``workdir`` is given and the config is valid), ``num_params``."""
    try:
        found = check_config(gin_files, bindings, process_count)
    except PreflightError as e:
        return {"ok": False, "error": str(e), "state": None, "detail": None, "num_params": None}
    out = {"ok": True, "error": None, "state": None, "detail": None,
           "num_params": found.num_params}
    if workdir:
        out["state"], out["detail"] = workdir_state(workdir, found.config_text)
        out["ok"] = out["state"] != "invalid"
        if not out["ok"]:
            out["error"] = out["detail"]
    return out


def main(stdin=None, stdout=None) -> int:
    """Reads a JSON list of runs (``name``, ``gin_files``, ``bindings``, optional ``workdir``)
    on stdin; prints one JSON line per run; exit status 1 if any run fails."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    try:
        runs = json.load(stdin)
        if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
            raise ValueError("expected a JSON list of objects")
    except ValueError as e:
        print(f"trm.preflight: stdin is not a list of runs ({e})", file=sys.stderr)
        return 2
    failed = 0
    for run in runs:
        result = check_run(run.get("gin_files", []), run.get("bindings", []),
                           run.get("workdir"), int(run.get("process_count", 1)))
        failed += not result["ok"]
        print(json.dumps({"name": run.get("name"), **result}), file=stdout, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    import logging
    logging.disable(logging.WARNING)  # stdout is the JSON lines; warnings would only be noise
    sys.exit(main())
