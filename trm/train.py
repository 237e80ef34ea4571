r"""Train a TRM experiment described by gin files.

    python -m trm.train --gin_file=e2_3_mlp.gin [--gin_file=...] [--gin_param='TRAIN_STEPS=40'] \
        --workdir=gs://bucket/runs/e2_3_mlp [--dry_run]

``--gin_file`` takes a path or a file name of ``--gin_search_paths`` or the shipped ``gin/``
tree (from any working directory); files are parsed in order, then every ``--gin_param`` /
``--gin_bindings`` / ``--gin.NAME=VALUE`` binding in order (later wins; :mod:`trm.cli`).
Unknown configurables, parameters and macros are errors. Run-level knobs are the ALL_CAPS
macros documented in ``gin/runs/base.gin`` (TRAIN_STEPS, EPOCHS, EVAL_EVERY, CHECKPOINT_EVERY,
LOG_EVERY, SEED, GLOBAL_BATCH_SIZE, LR, ...).

A workdir that already holds a checkpoint is resumed. ``--dry_run`` checks the run exactly as a
start would (:mod:`trm.preflight`: every binding and value, the model, optimizers, schedule and
EMA; with ``--workdir``, whether the start would be new, resume, completed or a config
conflict), prints the resolved config and the parameter count, and exits (1 with the start's
one-line error on a problem).

With PyTorch/XLA (``PJRT_DEVICE=TPU`` on a TPU VM, ``CPU`` for XLA:CPU) ``torch_xla.launch``
starts one process per local TPU device (one on XLA:CPU; ``--num_devices=1`` runs in this
process instead); with ``torchrun`` each process joins the torch.distributed group; otherwise
one process runs.
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import os
import sys
from typing import List, Optional, Sequence

from absl import app, flags

from trm.errors import TrmError, one_line

FLAGS = flags.FLAGS
@functools.lru_cache(maxsize=None)
def define_flags() -> None:
    """Defines this command's absl flags, once, at run time (importing several trm entry
    points in one process must not define the same flag twice)."""
    from trm.cli import define_gin_flags
    define_gin_flags()
    flags.DEFINE_string("workdir", None, "Run directory (local path or gs://bucket/prefix).")
    flags.DEFINE_bool("dry_run", False, "Check the run exactly as a start would (bindings, values, "
                      "model, optimizers; with --workdir: new/resume/completed/conflict), print "
                      "the config and parameter count, start nothing; exit 1 on a problem.")
    flags.DEFINE_bool("allow_config_change", False,
                      "Resume a workdir whose saved config differs from this one.")
    flags.DEFINE_bool("list_experiments", False, "List the shipped gin files and exit.")
    flags.DEFINE_bool("progress", True, "Print progress lines (rate, ETA) to stdout.")
    flags.DEFINE_integer("num_devices", None,
                         "1 = single-device smoke mode on a TPU VM: one process on one chip "
                         "(no torch_xla.launch), to test a config before the multi-worker run. "
                         "Default: every local device.")
    flags.DEFINE_bool("trust_checkpoint", False,
                      "Load the workdir's checkpoint with full unpickling. This runs any code "
                      "stored in the file: only for a checkpoint you wrote yourself that trm "
                      "refuses to load safely.")
    flags.DEFINE_bool("force_unlock", False,
                      "Take over the workdir's lock even if its owner looks alive (only when you "
                      "know it is dead, e.g. its VM was deleted; stale locks expire by themselves).")


def dry_run(gin_files: Sequence[str], bindings: Sequence[str],
            workdir: Optional[str] = None) -> dict:
    """Checks the run exactly as a start would (:mod:`trm.preflight`: parse, validate, build
    the model, optimizers, schedule and EMA) and, with ``workdir``, what a start would do with
    it. Prints the resolved config and a summary; raises :class:`trm.preflight.PreflightError`
    with the start's one-line message."""
    from trm import preflight
    found = preflight.check_config(gin_files, bindings)
    summary = dict(found.summary)
    if workdir:
        summary["workdir_state"], summary["workdir_detail"] = preflight.workdir_state(
            workdir, found.config_text)
    print(found.config_text)
    print(json.dumps(summary, indent=2, default=str))
    print(f"parameters: {found.num_params:,}")
    if workdir:
        print(f"workdir {workdir}: {summary['workdir_state']} ({summary['workdir_detail']})")
    return summary


def train(gin_files: Sequence[str], bindings: Sequence[str], workdir: str,
          allow_config_change: bool = False, progress: bool = True, argv: Optional[List[str]] = None,
          force_unlock: bool = False, trust_checkpoint: bool = False) -> dict:
    """Runs one process's share of the training (called once per process)."""
    from trm import gin_edge
    from trm.hparams import hparams
    from trm.runtime.device import init_xla_compile_cache
    from trm.trainer import Trainer
    init_xla_compile_cache()  # before the first XLA computation ($TRM_XLA_CACHE_DIR)
    gin_edge.clear()
    resolved = gin_edge.parse(gin_files, bindings)
    cfg = gin_edge.build_train_config()
    command = {"argv": argv or sys.argv, "gin_files": resolved, "gin_params": list(bindings),
               "cwd": os.getcwd()}
    trainer = Trainer(cfg, workdir, config_text=gin_edge.config_text(), command=command,
                      hparams=hparams(cfg, gin_edge.macro_values()),
                      operative_config=lambda: gin_edge.config_text(operative=True),
                      allow_config_change=allow_config_change, progress=progress,
                      force_unlock=force_unlock, trust_checkpoint=trust_checkpoint)
    try:
        return trainer.run()
    finally:
        # the process group goes before the interpreter exits: gloo's threads torn down at
        # exit can abort the process ("terminate called without an active exception")
        trainer.runtime.shutdown()


def single_tpu_device_env(env) -> None:
    """Restricts this process to one TPU chip (set before torch_xla starts): the documented
    PJRT variables for running one process on one chip of a TPU VM."""
    env.setdefault("TPU_VISIBLE_CHIPS", "0")
    env.setdefault("TPU_PROCESS_BOUNDS", "1,1,1")
    env.setdefault("TPU_CHIPS_PER_PROCESS_BOUNDS", "1,1,1")
    env.setdefault("TPU_PROCESS_ADDRESSES", "localhost:8476")
    env.setdefault("TPU_PROCESS_PORT", "8476")


def _xla_process(index, gin_files, bindings, workdir, allow, progress, argv, force,
                 trust):
    logging.getLogger("trm").setLevel(logging.INFO)  # a spawned process: set it again
    train(gin_files, bindings, workdir, allow, progress, argv, force, trust)


def main(argv: List[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]} (use --gin_param for bindings).")
    logging.getLogger("trm").setLevel(logging.INFO)
    from trm import gin_edge
    if FLAGS.list_experiments:
        for name, hypothesis in gin_edge.list_experiments():
            print(f"{name:<36} {hypothesis}")
        return
    from trm.cli import gin_bindings
    bindings = gin_bindings()
    try:
        gin_edge.set_search_paths(FLAGS.gin_search_paths)
        if FLAGS.dry_run:
            from trm.preflight import PreflightError
            try:
                summary = dry_run(FLAGS.gin_file, bindings, FLAGS.workdir)
            except PreflightError as e:
                sys.exit(f"trm.train: {e}")
            if summary.get("workdir_state") in ("conflict", "invalid") and \
                    not FLAGS.allow_config_change:
                sys.exit(f"trm.train: {summary['workdir_detail']}")
            return
        if not FLAGS.gin_file:
            raise app.UsageError("Give at least one --gin_file (e.g. --gin_file=quickstart.gin).")
        if not FLAGS.workdir:
            raise app.UsageError("--workdir is required (a local path or gs://bucket/prefix).")
        if FLAGS.num_devices is not None and FLAGS.num_devices != 1:
            raise app.UsageError("--num_devices accepts 1 (single-device smoke mode); leave it "
                                 "unset to use every local device.")
        if FLAGS.num_devices == 1 and os.environ.get("PJRT_DEVICE", "").upper() == "TPU":
            single_tpu_device_env(os.environ)
        from trm.runtime import is_xla_available
        if FLAGS.num_devices != 1 and is_xla_available():
            # One process per local device (TPU), or one child on XLA:CPU (the same path);
            # training runs in a worker thread there, so signals are forwarded (SIGTERM /
            # SIGINT: checkpoint and stop; SIGUSR1: metrics report).
            from trm.runtime.signals import forwarded_signals
            with forwarded_signals():
                import torch_xla
                torch_xla.launch(_xla_process, args=(list(FLAGS.gin_file), bindings,
                                                     FLAGS.workdir, FLAGS.allow_config_change,
                                                     FLAGS.progress, list(sys.argv),
                                                     FLAGS.force_unlock, FLAGS.trust_checkpoint))
            return
        result = train(FLAGS.gin_file, bindings, FLAGS.workdir, FLAGS.allow_config_change,
                       FLAGS.progress, list(sys.argv), FLAGS.force_unlock,
                       FLAGS.trust_checkpoint)
    except TrmError as e:  # every error a user can fix: one line (trm.errors)
        failure = f"trm.train: {one_line(e)}"
    else:
        failure = None
    # The run's objects (the trainer, its model, data pipeline and process group buffers) sit
    # in reference cycles, and out of the except block nothing else holds them: they go now,
    # while the interpreter is whole. Left to the collection during its exit, they could abort
    # a process of a multi-process run after its one-line error ("terminate called without an
    # active exception", then "Fatal Python error: Aborted").
    gc.collect()
    if failure is not None:
        sys.exit(failure)
    if result.get("status") == "preempted":
        sys.exit(0)


def run(argv: Optional[List[str]] = None) -> None:
    define_flags()
    from trm.cli import run_app
    run_app(main, argv or sys.argv)


if __name__ == "__main__":
    run()
