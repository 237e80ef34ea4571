"""Estimated device-hours and cost of a sweep: ``python -m launchers.tpu cost``.

    python -m launchers.tpu cost --config=launch.json --sweep=e2_2_tn --price_per_chip_hour=1.35
    python -m launchers.tpu cost --accelerator_type=v5litepod-8 --gin_file=e1_1_baseline.gin

For each run the model is built from its gin files and bindings (``trm.gin_edge.parse``,
``build_train_config``, ``trm.experiment.build_model`` with the dataset's shape of
``trm.experiment.dataset_shape``: its metadata when it is built, else the task file's
``VOCAB_SIZE`` / ``SEQ_LEN`` macros, as ``python -m trm.train --dry_run`` does) and its
FLOPs counted by ``TRM.flops_per_example``:

* training: ``steps x GLOBAL_BATCH_SIZE x flops_per_example(training=True)`` (one ACT step of
  every row per optimizer step); ``steps`` is ``TRAIN_STEPS``, or ``EPOCHS x examples per
  epoch / GLOBAL_BATCH_SIZE`` (examples per epoch from the dataset metadata, else
  ``--examples_per_epoch``, else the task's ``NUM_TRAIN_PUZZLES`` macro: one example per
  puzzle group, as for Sudoku);
* evaluation, when the test-set size is known (``--eval_examples``, else the built dataset's
  test split, else the task's ``NUM_TEST_PUZZLES`` macro): every ``EVAL_EVERY`` steps and at
  the end, ``test examples x eval ACT steps x flops_per_example(training=False)``. The table's
  ``evaluations`` column and the ``evaluation:`` line say for which runs it is included, its
  share of the FLOPs and where the test-set size came from, or that it is not counted.

Time = FLOPs / (chips x peak bf16 FLOP/s per chip x MFU), or examples / ``--examples_per_s``
when a measured throughput is given (``perf/examples_per_s`` of a short run on the same slice,
which also captures what FLOPs miss: the input pipeline, host transfers, small matmuls).
Device-hours are chip-hours (the price of a TPU is per chip-hour); slice-hours are the wall
time on the whole slice. Peak numbers and chip counts come from Google's TPU documentation
(the family table of :mod:`launchers.tpu_config`); ``peak_flops_per_chip`` and ``mfu``
override them.

This is the one launcher module that imports trm (and torch), and only when it runs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

from launchers import common, tpu_config
from launchers.named_sweeps import Run


def peak_flops(accelerator_type: str, override: float | None = None) -> float:
    """Peak bf16 FLOP/s of one chip: ``override``, else the family table of tpu_config."""
    if override:
        return float(override)
    peak = tpu_config.family(accelerator_type)[1].peak_bf16
    if peak is None:
        raise ValueError(f"no peak bf16 FLOP/s known for {accelerator_type!r}: set "
                         "peak_flops_per_chip (--peak_flops_per_chip, or in --config)")
    return peak


@dataclasses.dataclass
class RunCost:
    name: str
    num_params: int
    flops_per_example: float  # one training ACT step of one example
    steps: int
    global_batch_size: int
    train_flops: float
    eval_flops: float | None
    notes: list[str]
    eval_examples: float | None = None  # test-set size (None: unknown, evaluation not counted)
    evaluations: int = 0  # evaluations of the whole test set over the run
    eval_source: str = ""  # where the test-set size came from

    @property
    def examples(self) -> int:
        return self.steps * self.global_batch_size

    @property
    def flops(self) -> float:
        return self.train_flops + (self.eval_flops or 0.0)


def _metadata(cfg, split: str):
    from trm import data
    from trm.experiment import resolve_data_path
    try:
        path = cfg.test_data_dir if split == "test" and getattr(cfg, "test_data_dir", None) \
            else cfg.data_dir
        return data.load_metadata(resolve_data_path(path, cfg.dataset_builder_args), split)
    except Exception:
        return None


def run_cost(run: Run, examples_per_epoch: float | None = None,
             eval_examples: float | None = None) -> RunCost:
    """Builds ``run``'s model and counts its FLOPs (see the module docstring)."""
    import torch
    from trm import gin_edge
    from trm.experiment import DataShape, TrainingError, build_model, dataset_shape

    notes: list[str] = []
    gin_edge.clear()
    try:
        gin_edge.parse(run.gin_files, run.bindings)
        tc = gin_edge.build_train_config()
        try:
            shape, _ = dataset_shape(tc, gin_edge.query_macro)
        except TrainingError as e:
            raise ValueError(f"{run.name}: {e}") from e
        meta = None if isinstance(shape, DataShape) else shape
        if meta is None:
            notes.append("shape from the task macros")
        puzzles = gin_edge.query_macro("NUM_TRAIN_PUZZLES")
        test_puzzles = gin_edge.query_macro("NUM_TEST_PUZZLES")
        torch.manual_seed(0)  # the model's factories are gin-configured: build before clear()
        model = build_model(tc, shape, forward_dtype="float32", init_from_reference=False)
    finally:
        gin_edge.clear()
    fpe = float(model.flops_per_example(training=True))
    if tc.train_steps is not None:
        steps = int(tc.train_steps)
    else:
        if meta is not None:
            per_epoch = float(meta.examples_per_epoch)
        elif examples_per_epoch:
            per_epoch = float(examples_per_epoch)
            notes.append("examples per epoch from --examples_per_epoch")
        elif puzzles:
            per_epoch = float(puzzles)
            notes.append(f"examples per epoch = NUM_TRAIN_PUZZLES = {int(puzzles)} (dataset "
                         "not built; one example per group)")
        else:
            raise ValueError(f"{run.name}: uses EPOCHS but the dataset is not built: pass "
                             "--examples_per_epoch (or set TRAIN_STEPS)")
        steps = int(tc.epochs * per_epoch / tc.global_batch_size)
    train_flops = float(steps) * tc.global_batch_size * fpe
    test, source = _test_size(tc, meta, eval_examples, test_puzzles)
    eval_flops, evaluations = None, 0
    if test:
        every = int(tc.eval_every or 0)
        evaluations = (steps // every + (1 if steps % every else 0)) if every > 0 else 1
        act_steps = getattr(model, "eval_halt_max_steps", None) or model.halt_max_steps
        eval_flops = evaluations * float(test) * act_steps * float(
            model.flops_per_example(training=False))
    return RunCost(run.name, int(model.num_params()), fpe, steps, int(tc.global_batch_size),
                   train_flops, eval_flops, notes, test, evaluations, source)


def _test_size(tc, meta, flag: float | None, test_puzzles) -> tuple[float | None, str]:
    """The test-set size and where it comes from: ``--eval_examples``, the built dataset's
    test split, the task's ``NUM_TEST_PUZZLES`` macro (one example per puzzle), else unknown."""
    if flag is not None:
        return float(flag), "--eval_examples"
    test_meta = _metadata(tc, "test") if meta is not None else None
    if test_meta is not None:
        return float(test_meta.total_examples), "the dataset's test split"
    if test_puzzles:
        return float(test_puzzles), "NUM_TEST_PUZZLES"
    return None, ""


def _hours(c: RunCost, slice_flops: float, examples_per_s: float | None) -> float:
    if examples_per_s:
        return c.examples / examples_per_s / 3600 * (c.flops / c.train_flops)
    return c.flops / slice_flops / 3600


def _fmt(x: float) -> str:
    if x == 0:
        return "0"
    exp = int(math.floor(math.log10(abs(x))))
    return f"{x:.3g}" if -2 <= exp < 6 else f"{x:.2e}"


def report(costs: Sequence[RunCost], accelerator_type: str, *, mfu: float,
           peak: float | None, price: float | None, examples_per_s: float | None) -> str:
    n_chips = tpu_config.chips(accelerator_type)
    per_chip = peak_flops(accelerator_type, peak)
    slice_flops = n_chips * per_chip * mfu
    rows, total_h = [], 0.0
    for c in costs:
        h = _hours(c, slice_flops, examples_per_s)
        total_h += h
        evals = (f"{c.evaluations} x {c.eval_examples:,.0f}" if c.eval_flops is not None
                 else "not counted")
        row = [c.name, f"{c.num_params:,}", _fmt(c.flops_per_example), f"{c.steps:,}", evals,
               _fmt(c.flops), f"{h:.2f}", f"{h * n_chips:.1f}"]
        if price is not None:
            row.append(f"{h * n_chips * price:,.2f}")
        rows.append(row)
    header = ["run", "params", "FLOPs/example", "steps", "evaluations", "FLOPs", "slice-h",
              "chip-h"]
    if price is not None:
        header.append("cost")
    lines = [common.format_table(rows, header)]
    if examples_per_s:
        lines.append(f"throughput: measured {examples_per_s:g} examples/s on the slice")
    else:
        lines.append(f"throughput: {n_chips} chips of {accelerator_type} x "
                     f"{_fmt(per_chip)} FLOP/s x MFU {mfu:g} = {_fmt(slice_flops)} FLOP/s "
                     f"({'peak_flops_per_chip setting' if peak else tpu_config.PEAK_SOURCE})")
    lines.append(_evaluation_line(costs))
    total = (f"total: {len(costs)} run(s), {total_h:.1f} slice-hours, "
             f"{total_h * n_chips:.1f} device-hours (chip-hours)")
    if price is not None:
        total += f", about {total_h * n_chips * price:,.2f} at {price:g} per chip-hour"
    lines.append(total)
    notes = sorted({n for c in costs for n in c.notes})
    lines += [f"note: {n}" for n in notes]
    return "\n".join(lines)


def _evaluation_line(costs: Sequence[RunCost]) -> str:
    """Says whether the totals include evaluation, for which runs, and from what test size."""
    counted = [c for c in costs if c.eval_flops is not None]
    missing = [c.name for c in costs if c.eval_flops is None]
    if counted:
        share = sum(c.eval_flops for c in counted) / sum(c.flops for c in counted)
        sources = ", ".join(sorted({c.eval_source for c in counted}))
        text = (f"evaluation: included for {len(counted)} of {len(costs)} run(s) "
                f"({share:.1%} of their FLOPs): every EVAL_EVERY steps and at the end, the "
                f"test set x the eval ACT steps (test-set size from {sources})")
    else:
        text = "evaluation: not included"
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3
                                          else "")
        text += (f"; NOT counted for {shown}: the test-set size is unknown (build the dataset, "
                 "or pass --eval_examples)")
    return text
