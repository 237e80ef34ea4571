r"""Evaluate a saved run (optionally with changed settings, e.g. another test-time depth).

    python -m trm.eval --workdir=DIR [--checkpoint=latest|best|STEP] [--weights=ema|raw] \
        [--gin_param='EVAL_HALT_MAX_STEPS=32'] [--output_json=FILE] [--export_state_dict=FILE]

The run's saved ``config.gin`` is read as data (trm configurables and literal values only; an
``import``, ``include`` or unknown configurable is refused, see docs/RUN_STATE.md, "Trust
boundaries"), then the ``--gin_param`` bindings are parsed; the model is built,
the checkpoint's weights loaded (the EMA weights by default when the run kept an EMA), and the
test split evaluated exactly once per example. Each setting (checkpoint step, weights, --tag,
--gin_param bindings) has its own name (:func:`setting_name`, e.g.
``step_000000030_ema_EVAL_HALT_MAX_STEPS=32``), so settings never overwrite each other.
Metrics are printed, written as JSON (``--output_json``, default
``WORKDIR/eval/cli/<setting>.json``) and to TensorBoard as a run of its own,
``WORKDIR/tb/eval_cli/<setting>/`` (tags ``eval_cli[_<tag>]/...``), beside the training curves
and never inside them. ``--checkpoint=best`` picks the checkpoint with the best
``best_metric`` by run.json's rule (a tie goes to the earlier step). ``--export_state_dict``
writes the model's plain ``state_dict`` (with the chosen weights) for use elsewhere.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import re
import sys
from typing import Any, Dict, List, Optional, Sequence

from absl import app, flags

from trm.errors import TrmError, one_line

FLAGS = flags.FLAGS
@functools.lru_cache(maxsize=None)
def define_flags() -> None:
    """Defines this command's absl flags, once, at run time (importing several trm entry
    points in one process must not define the same flag twice)."""
    flags.DEFINE_string("workdir", None, "Run directory (local path or gs://...).")
    flags.DEFINE_string("checkpoint", "latest", "latest | best | a step number.")
    flags.DEFINE_enum("weights", "auto", ["auto", "ema", "raw"],
                      "Which weights: the EMA shadow or the raw weights (auto: EMA when saved).")
    from trm.cli import define_gin_flags
    define_gin_flags()  # --gin_file / --gin_param / --gin_bindings / --gin.K=V / search paths
    flags.DEFINE_string("output_json", None, "Where to write the metrics JSON.")
    flags.DEFINE_string("export_state_dict", None, "Write the model state_dict to this file.")
    flags.DEFINE_string("tag", "", "Suffix for the default JSON name and TensorBoard tags.")
    flags.DEFINE_bool("skip_eval", False, "Only export (with --export_state_dict).")
    flags.DEFINE_bool("trust_checkpoint", False,
                      "Load the checkpoint with full unpickling. This runs any code stored in "
                      "the file: only for a checkpoint you wrote yourself that trm refuses to "
                      "load safely (e.g. one written before RNG states were stored as tensors).")
    flags.DEFINE_bool("progress", True, "Print evaluation progress to stderr.")


log = logging.getLogger("trm.eval")
#: Where the JSON (``<setting>.json``) and evaluator outputs (``<setting>/``) go by default.
EVAL_CLI_OUTPUT = "eval/cli"
#: Where the TensorBoard events go: one TensorBoard run per setting (``<setting>/``).
EVAL_CLI_TB = "tb/eval_cli"
_TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class EvalError(TrmError, RuntimeError):
    """The run cannot be evaluated as asked."""


def evaluate_run(workdir: str, checkpoint: str = "latest", weights: str = "auto",
                 bindings: Optional[List[str]] = None, output_json: Optional[str] = None,
                 export_path: Optional[str] = None, tag: str = "", skip_eval: bool = False,
                 trust_checkpoint: bool = False, progress: bool = False,
                 gin_files: Sequence[str] = ()) -> Dict[str, Any]:
    """Library form of the CLI; returns ``{"step", "weights", "metrics", "json"}``.

    Metrics are named as in training (``eval/exact_accuracy``, ``eval/<set>/...``,
    ``ARC/pass@K``). Nothing is written into the workdir when ``output_json`` points
    elsewhere and the workdir is read-only (the TensorBoard summary is then skipped).
    """
    from trm import gin_edge
    from trm.data import EvalStream, load_metadata
    from trm.eval_loop import evaluate, tag_results
    from trm.data_prep import data_dirs
    from trm.experiment import build_model, resolve_forward_dtype
    from trm.optim import EMA
    from trm.run.checkpoints import (CheckpointError, CheckpointManager,
                                     export_state_dict)
    from trm.train_state import TrainState, check_train_state
    from trm.run.record import RunRecord
    from trm.run.workdir import Workdir
    from trm.runtime import init_runtime

    if tag and not _TAG_RE.match(tag):
        raise EvalError(f"--tag={tag!r} must be a plain name (letters, digits, '_', '-', '.'; "
                        "no '/' or '..'): it becomes part of a file name in the workdir.")
    wd = Workdir(workdir)
    if wd.is_local and not os.path.isdir(wd.path):
        raise EvalError(f"{workdir} is not a folder (the --workdir of a trm run).")
    config_text = RunRecord(wd).config_text()
    if config_text is None:
        raise EvalError(f"{workdir} has no config.gin: is it a trm run directory?")
    gin_edge.clear()
    gin_edge.parse_saved_config(config_text, wd.url("config.gin"))  # data: runs no code
    gin_edge.parse(gin_files, bindings or [])  # your files and bindings, after the saved config
    cfg = gin_edge.build_train_config()
    rt = init_runtime(cfg.device)

    mgr = CheckpointManager(wd, keep=0, best_metric=cfg.best_metric, async_save=False,
                            trust=trust_checkpoint)
    which: Any = int(checkpoint) if str(checkpoint).isdigit() else checkpoint
    if which not in ("latest", "best") and not isinstance(which, int):
        raise EvalError(f"--checkpoint must be latest, best or a step number, not {checkpoint!r}.")
    try:
        restored = (_restore_best(mgr) if which == "best"
                    else mgr.restore(which, check=check_train_state))
    except CheckpointError as e:
        raise EvalError(str(e)) from e
    if restored is None:
        raise EvalError(f"No usable checkpoint {checkpoint!r} in {workdir} "
                        f"(committed steps: {mgr.steps() or 'none'}).")
    step, state = restored[0], TrainState.from_checkpoint(restored[1])
    has_ema = state.ema is not None
    if weights == "ema" and not has_ema:
        raise EvalError(f"Checkpoint step {step} holds no EMA weights (the run had EMA off); "
                        "use --weights=raw.")
    use_ema = has_ema if weights == "auto" else weights == "ema"

    data_dir, test_dir = data_dirs(cfg)
    meta = load_metadata(data_dir, "train")
    model = build_model(cfg, meta, forward_dtype=resolve_forward_dtype(cfg, rt.device),
                        init_from_reference=False)
    model.load_state_dict(state.model)
    if use_ema:
        EMA.copy_state_to(state.ema, model)
    model.to(rt.device)
    result: Dict[str, Any] = {"step": step, "weights": "ema" if use_ema else "raw",
                              "workdir": workdir, "bindings": list(bindings or [])}
    if export_path:
        export_state_dict(model, export_path)
        result["exported"] = export_path
    if skip_eval:
        return result
    evaluators = [make(test_dir) for make in cfg.evaluators]
    batches = EvalStream(test_dir, cfg.eval_batch_size or cfg.global_batch_size,
                         process_index=rt.process_index, process_count=rt.process_count)
    suffix = f"_{tag}" if tag else ""
    setting = setting_name(step, result["weights"], tag,
                           [f"file={os.path.basename(f)}" for f in gin_files] + list(bindings or []))
    out_dir = wd.url(f"{EVAL_CLI_OUTPUT}/{setting}")
    from trm import progress as progress_
    with progress_.phase(f"eval step {step}", len(batches), unit="batches",
                         enabled=progress and rt.is_main) as bar:
        metrics = tag_results(evaluate(model, cfg.loss(), batches, rt, evaluators, out_dir,
                                       progress=bar.update))
    result["metrics"] = metrics
    result["eval_halt_max_steps"] = model.eval_halt_max_steps
    if rt.is_main:
        text = json.dumps(result, indent=2, sort_keys=True, default=str)
        if output_json:
            _write_text(output_json, text)
            result["json"] = output_json
        else:  # through the workdir: never through a link out of it
            name = f"{EVAL_CLI_OUTPUT}/{setting}.json"
            wd.write_text(name, text)
            result["json"] = wd.url(name)
        from trm.run.tensorboard import SummaryWriterSync
        prefix = f"eval_cli{suffix}"
        tb_dir = f"{EVAL_CLI_TB}/{setting}"
        try:
            writer = SummaryWriterSync(wd, subdir=tb_dir)
            writer.scalars({f"{prefix}/{k[len('eval/'):]}" if k.startswith("eval/") else
                            f"{prefix}/{k}": v for k, v in metrics.items()}, step)
            writer.close()
        except OSError as e:  # e.g. a read-only workdir: the JSON went elsewhere
            log.warning("TensorBoard summary not written to %s: %s", wd.url(tb_dir), e)
        result["setting"] = setting
    return result


def setting_name(step: int, weights: str, tag: str, bindings: List[str]) -> str:
    """The name of one evaluation setting (checkpoint step, weights, --tag, --gin_param
    bindings), unique per setting: its outputs never overwrite another setting's.

    ``step_000000030_ema_EVAL_HALT_MAX_STEPS=32``. Characters other than letters, digits and
    ``_.=-`` become ``-``; when that (or shortening a long name) loses information, a hash of
    the exact bindings is appended.
    """
    slugs = [re.sub(r"[^A-Za-z0-9_.=-]+", "-", b).strip("-") for b in bindings]
    name = "_".join([f"step_{int(step):09d}", weights] + ([tag] if tag else []) + slugs)
    if len(name) > 120 or any(s != b for s, b in zip(slugs, bindings)):
        digest = hashlib.sha1("\n".join(bindings).encode("utf-8")).hexdigest()[:8]
        name = f"{name[:110]}_{digest}"
    return name


def _restore_best(mgr: Any) -> Any:
    """The best committed checkpoint, by the rule of run.json's ``best`` (the higher
    ``best_metric``; a tie goes to the earlier step, the one the run recorded first). A
    corrupt candidate is skipped with a warning for the next best, as ``restore("best")``
    does; one that is unsafe to load is raised."""
    from trm.run.checkpoints import (
        CheckpointError, UnsafeCheckpointError)
    if not mgr.best_metric:
        raise EvalError("--checkpoint=best needs the run's best_metric (trm.TrainConfig."
                        "best_metric); name a step instead, e.g. --checkpoint=1000.")
    from trm.train_state import check_train_state
    scored = []
    for s in mgr.steps():
        value = (mgr.commit_info(s) or {}).get("metrics", {}).get(mgr.best_metric)
        if value is not None and math.isfinite(value):
            scored.append((-value, s))
    for _, s in sorted(scored):
        try:
            return mgr.restore(s, check=check_train_state)
        except UnsafeCheckpointError:
            raise  # never fall back silently past a file that may be an attack
        except CheckpointError as e:
            log.warning("Skipping checkpoint step %d for --checkpoint=best: %s", s, e)
    return None


def _write_text(path: str, text: str) -> None:
    from trm.run import storage
    storage.write_bytes(path, text.encode("utf-8"))


def main(argv: List[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS.workdir:
        raise app.UsageError("--workdir is required.")
    logging.getLogger("trm").setLevel(logging.INFO)
    from trm import gin_edge
    try:
        from trm.cli import gin_bindings
        gin_edge.set_search_paths(FLAGS.gin_search_paths)
        result = evaluate_run(FLAGS.workdir, FLAGS.checkpoint, FLAGS.weights, gin_bindings(),
                              FLAGS.output_json, FLAGS.export_state_dict, FLAGS.tag,
                              FLAGS.skip_eval, FLAGS.trust_checkpoint, FLAGS.progress,
                              gin_files=FLAGS.gin_file)
    except TrmError as e:  # every error a user can fix: one line (trm.errors)
        sys.exit(f"trm.eval: {one_line(e)}")
    except OSError as e:
        sys.exit(f"trm.eval: {type(e).__name__}: {e}")
    print(json.dumps(result, indent=2, sort_keys=True, default=str))


def run(argv: Optional[List[str]] = None) -> None:
    define_flags()
    from trm.cli import run_app
    run_app(main, argv or sys.argv)


if __name__ == "__main__":
    run()
