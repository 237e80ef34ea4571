r"""Benchmark TRM training steps on the current device.

    python -m trm.bench --gin_file=e1_1_baseline.gin [--gin_param=...] --batch=64 --steps=5 \
        --threads=2
    python -m trm.bench --reference_config=config.json --batch=64 --steps=5

Times ``--steps`` full training steps (one ACT step forward, the loss, backward, the SignSGD
and AdamATan2 updates) after ``--warmup`` untimed ones, and prints ms/step, examples/s, peak
memory, and the model's FLOP/s next to the device's measured matmul FLOP/s. The last line is
one JSON object with the keys ``ms_per_step``, ``examples_per_s``, ``peak_mem_bytes``,
``model_flops_per_s``, ``matmul_flops_per_s`` (and the settings).

Without ``--gin_file`` / ``--reference_config`` the model is the Sudoku TRM-MLP baseline
(hidden 512, T=3, n=6, 2 layers, seq 81, vocab 11). ``--seq_len``, ``--vocab_size`` and
``--num_puzzle_identifiers`` stand in for the dataset metadata; with ``--gin_file`` the model
has the experiment's shape (:func:`trm.experiment.dataset_shape`: the dataset's metadata when
it is built, else the task file's macros), the flags only for what neither gives.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from absl import app, flags

from trm import gin_edge
from trm.errors import TrmError, one_line
from trm.cli import gin_bindings
from trm.experiment import DataShape, TrainConfig, dataset_shape
from trm.models import TRM
from trm.runtime.device import device_peak_flops
from trm.runtime import (matmul_flops, peak_memory_bytes, synchronize, tune_cpu_allocator)

FLAGS = flags.FLAGS
@functools.lru_cache(maxsize=None)
def define_flags() -> None:
    """Defines this command's absl flags, once, at run time (importing several trm entry
    points in one process must not define the same flag twice)."""
    from trm.cli import define_gin_flags
    define_gin_flags()
    flags.DEFINE_string("reference_config", None, "JSON file of reference config fields.")
    flags.DEFINE_integer("batch", 64, "Batch size (examples per step).")
    flags.DEFINE_integer("steps", 5, "Timed steps.")
    flags.DEFINE_integer("warmup", 1, "Untimed steps first (compilation, allocator warm-up).")
    flags.DEFINE_integer("threads", None, "torch intra-op threads (default: torch's choice).")
    flags.DEFINE_enum("device", "auto", ["auto", "xla", "cuda", "cpu"], "Device.")
    flags.DEFINE_string("forward_dtype", "auto", "auto (bf16 on TPU/GPU and bf16 CPUs, else fp32), float32, "
                        "bfloat16.")
    flags.DEFINE_integer("seq_len", 81, "Tokens per example (when the config does not set it).")
    flags.DEFINE_integer("vocab_size", 11, "Vocabulary size (when the config does not set it).")
    flags.DEFINE_integer("num_puzzle_identifiers", 1, "Puzzle-table rows.")
    flags.DEFINE_bool("activation_checkpointing", None, "Override activation checkpointing.")
    flags.DEFINE_bool("compile", False, "COMPILE=True: torch.compile the reasoning networks "
                      "(CPU/GPU; not with XLA).")
    flags.DEFINE_float("matmul_seconds", 1.0, "Seconds spent measuring the matmul FLOP/s.")
    flags.DEFINE_integer("profile_steps", 0,
                         "After timing, profile this many more steps (torch.profiler; CPU or "
                         "CUDA) and print where the step's time goes: the matrix products' "
                         "share, the most that any change to the rest could gain, and the "
                         "top operators.")
    flags.DEFINE_bool("suite", False,
                      "Benchmark the study's baseline (e1_1_baseline.gin) and attention "
                      "(e2_3_attention.gin) configs, each without and with --compile, and print "
                      "a table (--gin_param / --batch / --device apply to all).")
    flags.DEFINE_string("write_doc", None,
                        "With --suite: append the table, machine, versions, command and date to "
                        "this markdown file (e.g. docs/BENCHMARKS.md).")
    flags.DEFINE_enum("mode", "step", ["step", "loop"],
                      "step: the bare training step on a fixed batch; loop: the full training loop "
                      "(data, step, metrics, logging) of a gin experiment vs its bare step.")

BASELINE = dict(hidden_size=512, num_layers=2, expansion=4, num_heads=8, mixer="mlp",
                positions="none", H_cycles=3, L_cycles=6, puzzle_emb_len=16, halt_max_steps=16)


def bench_config() -> Tuple[TrainConfig, DataShape]:
    """The benchmarked run's config and data shape, from the flags.

    ``--gin_file`` / ``--gin_param``: the experiment's TrainConfig (its model, optimizers, EMA,
    schedule, clipping); ``--reference_config``: a reference config's model; else the study's
    Sudoku baseline (:data:`BASELINE`) with the default TrainConfig recipe.
    """
    shape = DataShape(FLAGS.vocab_size, FLAGS.seq_len, FLAGS.num_puzzle_identifiers)
    if FLAGS.gin_file or gin_bindings():
        cfg, shape = gin_experiment(FLAGS.gin_file, gin_bindings(), shape)
        factory = cfg.model
    elif FLAGS.reference_config:
        from trm.interop.reference import model_kwargs_from_reference_config
        with open(FLAGS.reference_config) as f:
            ref = json.load(f)
        kwargs = model_kwargs_from_reference_config({**dataclasses.asdict(shape), **ref})
        for key in ("vocab_size", "seq_len", "num_puzzle_identifiers", "forward_dtype"):
            kwargs.pop(key, None)
        cfg, factory = TrainConfig(), functools.partial(TRM, **kwargs)
    else:
        cfg, factory = TrainConfig(), functools.partial(TRM, **BASELINE)
    overrides: Dict[str, Any] = {}
    if FLAGS.activation_checkpointing is not None:
        overrides["activation_checkpointing"] = FLAGS.activation_checkpointing
    cfg = dataclasses.replace(
        cfg, model=functools.partial(factory, **overrides) if overrides else factory)
    return for_benchmark(cfg, FLAGS.batch, FLAGS.device, FLAGS.forward_dtype,
                         FLAGS.compile), shape


def gin_experiment(gin_files: List[str], bindings: List[str],
                   fallback: DataShape) -> Tuple[TrainConfig, DataShape]:
    """The TrainConfig of a gin experiment and its data shape (the dataset's metadata when it
    is built, else the task file's macros, else ``fallback``)."""
    gin_edge.clear()
    gin_edge.parse(gin_files, bindings, finalize=False)
    cfg = gin_edge.build_train_config()
    default = {"VOCAB_SIZE": fallback.vocab_size, "SEQ_LEN": fallback.seq_len,
               "NUM_PUZZLE_IDENTIFIERS": fallback.num_puzzle_identifiers}
    shape, _ = dataset_shape(cfg, lambda name, _: gin_edge.query_macro(name, default[name]))
    return cfg, shape


def for_benchmark(cfg: TrainConfig, batch: int, device: str, forward_dtype: str,
                  compile: bool = False) -> TrainConfig:
    """``cfg`` set up to run steps on a synthetic batch of ``batch`` examples (no dataset,
    no reference weights)."""
    return dataclasses.replace(
        cfg, data_dir=cfg.data_dir or "(benchmark: synthetic batch)", device=device,
        forward_dtype=forward_dtype, compile=compile, global_batch_size=batch,
        eval_batch_size=batch, init_from_reference=None)


def build_trainer(cfg: TrainConfig, shape: DataShape, num_steps: int):
    """A :class:`trm.trainer.Trainer` without a workdir, built for ``num_steps`` steps (the
    CPU allocator tuned first on a CPU)."""
    from trm.trainer import Trainer
    trainer = Trainer(cfg, None, progress=False)
    if trainer.runtime.device.type == "cpu":
        tune_cpu_allocator()
    trainer.build(shape, num_steps=num_steps)
    return trainer


def fixed_batch(model: TRM, batch_size: int, device: torch.device) -> Dict[str, torch.Tensor]:
    """A random batch (seed 0) of ``model``'s shape whose labels are its inputs."""
    gen = torch.Generator().manual_seed(0)
    inputs = torch.randint(1, model.vocab_size, (batch_size, model.seq_len), generator=gen,
                           dtype=torch.int32)
    rows = model.puzzle_emb.num_embeddings if model.puzzle_emb is not None else 1
    ids = torch.randint(0, max(1, rows), (batch_size,), generator=gen, dtype=torch.int32)
    return {"inputs": inputs.to(device), "labels": inputs.to(device),
            "puzzle_identifiers": ids.to(device)}


def run_benchmark() -> Dict[str, Any]:
    """Times :meth:`trm.trainer.Trainer.train_step` -- the step users run: forward, ACT loss,
    backward, all-reduce, clipping, LR schedule, both optimizers, EMA -- on a fixed batch."""
    cfg, shape = bench_config()
    trainer = build_trainer(cfg, shape, FLAGS.warmup + FLAGS.steps + 1)
    device, model = trainer.runtime.device, trainer.model
    b, L = FLAGS.batch, model.seq_len
    batch = fixed_batch(model, b, device)
    for _ in range(FLAGS.warmup):
        trainer.train_step(batch)
    synchronize(device)
    times = []
    for _ in range(FLAGS.steps):
        start = time.perf_counter()
        trainer.train_step(batch)
        synchronize(device)
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    profiled = (profile_steps(lambda: trainer.train_step(batch), device, FLAGS.profile_steps,
                              model.flops_per_example(training=True) * b)
                if FLAGS.profile_steps > 0 else None)
    dtype = model.forward_dtype
    flops = model.flops_per_example(training=True) * b / step_s
    mm = matmul_flops(device, dtype, seconds=FLAGS.matmul_seconds)
    peak = device_peak_flops(device, dtype)
    return {
        "config": ",".join(FLAGS.gin_file) or "baseline",
        "peak_flops_per_s": peak if peak is not None else mm,
        "peak_source": "data sheet" if peak is not None else "measured matmul",
        "mfu": flops / (peak if peak is not None else mm),
        "ms_per_step": round(step_s * 1e3, 3),
        "examples_per_s": round(b / step_s, 3),
        "tokens_per_s": round(b * L / step_s, 1),
        "peak_mem_bytes": peak_memory_bytes(device),
        "model_flops_per_s": flops,
        "matmul_flops_per_s": mm,
        "mfu_vs_matmul": flops / mm,
        "device": str(device),
        "forward_dtype": str(dtype).replace("torch.", ""),
        "batch": b,
        "threads": torch.get_num_threads(),
        "num_params": model.num_params(),
        "step_times_s": [round(t, 4) for t in times],
        "activation_checkpointing": model.core.net.activation_checkpointing,
        "compile": FLAGS.compile,
        "ema": trainer.ema is not None,
        **({"profile": profiled} if profiled is not None else {}),
    }


# Operators that are matrix products (dense GEMMs, their batched forms, fused attention).
PRODUCT_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_mm",
               "aten::_scaled_dot_product_flash_attention_for_cpu",
               "aten::_scaled_dot_product_flash_attention",
               "aten::_scaled_dot_product_efficient_attention",
               "aten::_scaled_dot_product_cudnn_attention")


def profile_steps(step: Callable[[], Any], device: torch.device, steps: int,
                  flops_per_step: Optional[float] = None, top: int = 10) -> Dict[str, Any]:
    """Where ``steps`` calls of ``step`` spend their time, by operator self time (torch.profiler
    on the CPU, device time on CUDA): ``product_share`` (the matrix products, ``PRODUCT_OPS``),
    ``bound_speedup`` (1 / share: the most a step can gain with its products unchanged, were
    everything else free), ``product_flops_per_s`` (``flops_per_step``, the model's matrix-product
    FLOPs, over the products' time) and the ``top`` operators in ms per step."""
    from torch.profiler import ProfilerActivity, profile
    if device.type not in ("cpu", "cuda"):
        raise TrmError(f"--profile_steps profiles CPU and CUDA steps, not {device.type}: on "
                       "XLA use the XLA profiler (docs/TROUBLESHOOTING.md).")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
            synchronize(device)
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    totals: Dict[str, float] = {}
    for event in prof.key_averages():
        us = float(getattr(event, attr))
        if us > 0:
            totals[event.key] = totals.get(event.key, 0.0) + us
    total = sum(totals.values())
    if total <= 0:
        raise TrmError("the profiler recorded no operator time: nothing to report.")
    products = sum(us for name, us in totals.items() if name in PRODUCT_OPS)
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])[:top]
    product_rate = (flops_per_step * steps / (products / 1e6)
                    if flops_per_step and products > 0 else None)
    return {
        "steps": steps,
        "ms_per_step": total / steps / 1e3,
        "product_share": products / total,
        "bound_speedup": total / products if products > 0 else float("inf"),
        "product_flops_per_s": product_rate,
        "top_ops": [{"op": name, "ms_per_step": round(us / steps / 1e3, 3),
                     "share": round(us / total, 4)} for name, us in ranked],
    }


def run_loop_benchmark() -> Dict[str, Any]:
    """Steps/s of ``trm.trainer.Trainer``'s loop vs its bare ``train_step`` on one batch."""
    import tempfile

    from trm.trainer import Trainer
    if not FLAGS.gin_file:
        raise app.UsageError("--mode=loop needs --gin_file (an experiment with a dataset).")
    total = FLAGS.warmup + FLAGS.steps + 1
    gin_edge.clear()
    gin_edge.parse(FLAGS.gin_file, gin_bindings() + [
        f"TRAIN_STEPS={total}", "EVAL_EVERY=0", "CHECKPOINT_EVERY=0"])
    cfg = gin_edge.build_train_config()
    stamps: Dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="trm_bench_") as workdir:
        trainer = Trainer(cfg, workdir, progress=False,
                          step_callback=lambda step: stamps.__setitem__(step, time.perf_counter()))
        trainer.test_meta = None  # no evaluation inside the timed loop
        run_result = trainer.run()
        first, last = FLAGS.warmup, total - 1   # the last step also writes the final checkpoint
        loop_s = (stamps[last] - stamps[first]) / (last - first)
        rt = trainer.runtime
        from trm.data import TrainStream
        stream = TrainStream(trainer.data_dir, b := cfg.global_batch_size, seed=cfg.seed)
        batch = rt.to_device(next(iter(stream)))
        stream.close()
        for _ in range(FLAGS.warmup):
            trainer.train_step(batch)
        synchronize(rt.device)
        times = []
        for _ in range(FLAGS.steps):
            start = time.perf_counter()
            trainer.train_step(batch)
            synchronize(rt.device)
            times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    return {
        "mode": "loop", "loop_steps_per_s": 1.0 / loop_s, "step_steps_per_s": 1.0 / step_s,
        "loop_overhead": loop_s / step_s - 1.0, "ms_per_step": round(step_s * 1e3, 3),
        "loop_ms_per_step": round(loop_s * 1e3, 3), "examples_per_s": round(b / loop_s, 3),
        "peak_mem_bytes": peak_memory_bytes(rt.device), "batch": b, "device": str(rt.device),
        "threads": torch.get_num_threads(), "status": run_result["status"],
        "model_flops_per_s": trainer.model.flops_per_example(training=True) * b / step_s,
        "matmul_flops_per_s": matmul_flops(rt.device, seconds=FLAGS.matmul_seconds),
    }


SUITE = (("baseline (MLP)", "e1_1_baseline.gin"), ("attention", "e2_3_attention.gin"))


def run_suite() -> List[Dict[str, Any]]:
    """The study's baseline and attention configs, without and with compile."""
    rows = []
    saved_files, saved_compile = list(FLAGS.gin_file), FLAGS.compile
    try:
        for label, gin_file in SUITE:
            for compiled in (False, True):
                FLAGS.gin_file, FLAGS.compile = [gin_file], compiled
                try:
                    r = run_benchmark()
                except Exception as e:
                    r = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
                rows.append({"label": label, "gin_file": gin_file, "compile": compiled, **r})
    finally:
        FLAGS.gin_file, FLAGS.compile = saved_files, saved_compile
    return rows


def suite_markdown(rows: List[Dict[str, Any]]) -> str:
    import datetime
    import platform
    ok = [r for r in rows if "error" not in r]
    device = ok[0]["device"] if ok else FLAGS.device
    name = (torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda")
            else platform.processor() or platform.machine())
    lines = [f"### `python -m trm.bench --suite` on {name}, "
             f"{datetime.date.today().isoformat()}", "",
             f"torch {torch.__version__}, Python {platform.python_version()}, batch "
             f"{FLAGS.batch}, bindings {gin_bindings() or 'none'}; command: "
             f"`python -m trm.bench {' '.join(sys.argv[1:])}`", "",
             "| config | compile | dtype | ms/step | tokens/s | model FLOP/s | MFU | peak | "
             "peak memory |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['label']} | {r['compile']} | — | failed: {r['error']} "
                         "| | | | | |")
            continue
        lines.append(
            f"| {r['label']} | {r['compile']} | {r['forward_dtype']} | {r['ms_per_step']:.1f} "
            f"| {r['tokens_per_s']:,.0f} | {format_flops(r['model_flops_per_s'])} "
            f"| {100 * r['mfu']:.1f}% | {format_flops(r['peak_flops_per_s'])} "
            f"({r['peak_source']}) | {r['peak_mem_bytes'] / 2 ** 30:.2f} GiB |")
    return "\n".join(lines) + "\n"


def format_flops(flops_per_s: float) -> str:
    """A FLOP rate with the unit that keeps 3-4 significant digits: ``172.1 GFLOP/s``,
    ``1.23 TFLOP/s``, ``989 TFLOP/s``."""
    for scale, unit in ((1e15, "PFLOP/s"), (1e12, "TFLOP/s"), (1e9, "GFLOP/s"),
                        (1e6, "MFLOP/s")):
        if flops_per_s >= scale:
            value = flops_per_s / scale
            return f"{value:.3g} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{flops_per_s:.3g} FLOP/s"


def main(argv: List[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.threads:
        set_threads(FLAGS.threads)
    try:
        gin_edge.set_search_paths(FLAGS.gin_search_paths)
        _report()
    except TrmError as e:  # every error a user can fix: one line (trm.errors)
        sys.exit(f"trm.bench: {one_line(e)}")


def set_threads(threads: int) -> None:
    """torch's intra-op thread count, also as the runtime's override (``TRM_CPU_THREADS``):
    its thread rule must not replace the asked-for count."""
    os.environ["TRM_CPU_THREADS"] = str(threads)
    torch.set_num_threads(threads)


def _report() -> None:
    """Runs the benchmark the flags ask for and prints it."""
    if FLAGS.suite:
        rows = run_suite()
        table = suite_markdown(rows)
        print(table)
        print(json.dumps(rows, default=str))
        if FLAGS.write_doc:
            with open(FLAGS.write_doc, "a") as f:
                f.write("\n" + table)
        if not any("error" not in r for r in rows):
            sys.exit("trm.bench: every suite configuration failed")
        return
    if FLAGS.mode == "loop":
        r = run_loop_benchmark()
        print(f"full loop   {r['loop_steps_per_s']:.2f} steps/s ({r['loop_ms_per_step']:.1f} ms)")
        print(f"bare step   {r['step_steps_per_s']:.2f} steps/s ({r['ms_per_step']:.1f} ms)")
        print(f"overhead    {100 * r['loop_overhead']:.1f}% of the bare step")
        print(json.dumps(r))
        return
    r = run_benchmark()
    print(f"device {r['device']}  dtype {r['forward_dtype']}  threads {r['threads']}  "
          f"batch {r['batch']}  params {r['num_params']:,}")
    print(f"ms/step            {r['ms_per_step']:.1f}")
    print(f"examples/s         {r['examples_per_s']:.2f}")
    print(f"peak memory        {r['peak_mem_bytes'] / 2 ** 30:.2f} GiB")
    print(f"tokens/s           {r['tokens_per_s']:,.0f}")
    print(f"model FLOP/s       {format_flops(r['model_flops_per_s'])} "
          f"(MFU {100 * r['mfu']:.1f}% of the {r['peak_source']} peak "
          f"{format_flops(r['peak_flops_per_s'])})")
    print(f"matmul FLOP/s      {format_flops(r['matmul_flops_per_s'])}")
    if "profile" in r:
        p = r["profile"]
        print(f"profile            {p['steps']} step(s), {p['ms_per_step']:.1f} ms/step of "
              f"operator time; matrix products {100 * p['product_share']:.1f}%: with the "
              f"products unchanged the step can be at most {p['bound_speedup']:.2f}x faster")
        if p["product_flops_per_s"]:
            print(f"  the products run at {format_flops(p['product_flops_per_s'])} in the step "
                  f"(the measured matmul rate: {format_flops(r['matmul_flops_per_s'])})")
        for op in p["top_ops"]:
            print(f"  {op['op'][:60]:<60} {op['ms_per_step']:9.2f} ms  {100 * op['share']:5.1f}%")
    print(json.dumps(r))


def run(argv: Optional[List[str]] = None) -> None:
    define_flags()
    from trm.cli import run_app
    run_app(main, argv or sys.argv)


if __name__ == "__main__":
    run()
