"""Synthetic run directories that follow the DESIGN.md workdir contract (for tests and demos).

:func:`write_run` writes one run the way the trainer does: ``run.json``, ``command.json``,
``config.gin``, ``operative_config.gin``, ``hparams.json``, TensorBoard event files under
``tb/`` and ``eval/step_XXXXXXXXX/metrics.json``, all through trm's own writers
(:class:`trm.run.record.RunRecord`, :class:`trm.run.tensorboard.EventFileWriter`, a resumed
process's ``purge_step``; ``hparams.json`` from the TrainConfig the config resolves to,
as ``trm.train`` writes it), or TF2-style tensor scalars with ``scalar_format="tensor"``. Metric
values follow a simple deterministic model of the hyperparameters (deeper
recursion, EMA, the MLP mixer and more parameters help), so analyses have something to find.

:func:`write_tiny_study` writes a small study (T/n sweep, EMA on/off, mixer, size ladder, data
ladder, lr x batch grid, plus a preempted, a running and a resumed run).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import zlib
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np

__all__ = ["SyntheticRun", "write_run", "write_tiny_study", "write_minimal_study",
           "num_params_for", "expected_final_accuracy", "EVAL_SETS"]

EVAL_SETS = ("easy", "medium", "hard")
_T0 = _dt.datetime(2026, 1, 1, tzinfo=_dt.timezone.utc).timestamp()


def num_params_for(hidden_size: int, num_layers: int, mixer: str = "mlp") -> int:
    """A parameter count that grows like the real model's (about 12·L·D² plus embeddings)."""
    per_block = 12 * hidden_size * hidden_size + (97 * 1024 if mixer == "mlp" else 0)
    return int(num_layers * per_block + 2 * 11 * hidden_size + 2 * hidden_size + 2)


def expected_final_accuracy(T: int, n: int, hidden_size: int, num_layers: int, mixer: str,
                            ema: bool, num_train_puzzles: int, lr: float,
                            global_batch_size: int) -> float:
    """The noise-free final exact accuracy of the synthetic model."""
    p = num_params_for(hidden_size, num_layers, mixer)
    err = 0.04 + 40.0 * p ** -0.45 + 2.0 * num_train_puzzles ** -0.5
    depth = T * (n + 1)
    err *= 1.0 + 3.0 / depth
    if not ema:
        err *= 1.35
    if mixer != "mlp":
        err *= 1.6
    # lr optimum grows like sqrt(batch)
    lr_opt = 1e-4 * math.sqrt(global_batch_size / 256.0)
    err *= 1.0 + 0.15 * math.log(lr / lr_opt) ** 2
    return float(np.clip(1.0 - err, 0.0, 1.0))


@dataclasses.dataclass
class SyntheticRun:
    """The hyperparameters and schedule of one synthetic run."""

    T: int = 3
    n: int = 6
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    mixer: str = "mlp"
    ema: bool = True
    halt_max_steps: int = 4
    global_batch_size: int = 32
    lr: float = 1e-4
    num_train_puzzles: int = 1000
    num_aug: int = 8
    seed: int = 0
    train_steps: int = 40
    log_every: int = 5
    eval_every: int = 10
    eval_count: int = 500
    status: str = "completed"  # completed | running | preempted | failed
    last_step: Optional[int] = None  # default: train_steps if completed else train_steps // 2
    resumed_at: Optional[int] = None  # write a second event file re-logging from this step
    scalar_format: str = "simple_value"  # or "tensor" (TF2 tf.summary.scalar style)
    with_flops: bool = True
    with_run_json: bool = True
    start_offset_s: float = 0.0
    step_time_s: float = 0.5
    noise: float = 0.01
    #: step -> exact accuracy of the (EMA) evaluation at that step, replacing the model's value
    eval_exact: Optional[Mapping[int, float]] = None
    #: step -> exact accuracy of the raw weights: also logs ``eval_raw/<metric>`` beside
    #: ``eval/<metric>``, as trm.train with ``EVAL_RAW_WEIGHTS=True``
    eval_raw_exact: Optional[Mapping[int, float]] = None

    @property
    def num_params(self) -> int:
        return num_params_for(self.hidden_size, self.num_layers, self.mixer)

    @property
    def flops_per_example(self) -> float:
        return 6.0 * self.num_params * 16 * self.T * (self.n + 1)

    def final_step(self) -> int:
        if self.last_step is not None:
            return self.last_step
        return self.train_steps if self.status == "completed" else self.train_steps // 2


def _config_gin(r: SyntheticRun, operative: bool) -> str:
    """The run's gin config in the layout of trm's gin files (gin/runs/base.gin,
    gin/models/trm_mlp.gin): ALL_CAPS macros bound to ``model.trm.*`` / ``trm.TrainConfig.*``.

    ``operative=True`` writes it the way ``gin.operative_config_str()`` does: sections per
    configurable, shortest unique selectors (``trm.H_cycles``), a multi-line value.
    """
    macros = {
        "DATA_DIR": repr(f"/tmp/data/sudoku-4x4-{r.num_train_puzzles}-aug-{r.num_aug}"),
        "EMA": repr(r.ema), "EMA_RATE": "0.999", "EVAL_BATCH_SIZE": "64",
        "EVAL_EVERY": str(r.eval_every), "EXPANSION": "4", "GLOBAL_BATCH_SIZE":
        str(r.global_batch_size), "GRADIENT": "'last_cycle'", "H_CYCLES": str(r.T),
        "HALT_EXPLORATION_PROB": "0.1", "HALT_MAX_STEPS": str(r.halt_max_steps),
        "HIDDEN_SIZE": str(r.hidden_size), "L_CYCLES": str(r.n), "LOG_EVERY": str(r.log_every),
        "LR": repr(r.lr), "LR_WARMUP_STEPS": "10", "NUM_HEADS": str(r.num_heads),
        "NUM_LAYERS": str(r.num_layers), "NUM_TRAIN_PUZZLES": str(r.num_train_puzzles),
        "PUZZLE_EMB_LEN": "16", "SEED": str(r.seed), "TRAIN_STEPS": str(r.train_steps),
        "WEIGHT_DECAY": "1.0",
    }
    model = [("H_cycles", "%H_CYCLES"), ("L_cycles", "%L_CYCLES"),
             ("core", "@core.trm"), ("expansion", "%EXPANSION"), ("gradient", "%GRADIENT"),
             ("halt_max_steps", "%HALT_MAX_STEPS"), ("halting", "@halting.halt_only()"),
             ("hidden_size", "%HIDDEN_SIZE"), ("mixer", f"@mixer.{r.mixer}"),
             ("num_heads", "%NUM_HEADS"), ("num_layers", "%NUM_LAYERS"),
             ("positions", "'none'" if r.mixer == "mlp" else "'rope'"),
             ("puzzle_emb_len", "%PUZZLE_EMB_LEN")]
    train = [("data_dir", "%DATA_DIR"), ("ema", "@ema.ema"), ("eval_batch_size",
             "%EVAL_BATCH_SIZE"), ("eval_every", "%EVAL_EVERY"), ("global_batch_size",
             "%GLOBAL_BATCH_SIZE"), ("log_every", "%LOG_EVERY"), ("lr", "%LR"),
             ("lr_warmup_steps", "%LR_WARMUP_STEPS"), ("model", "@model.trm"),
             ("seed", "%SEED"), ("train_steps", "%TRAIN_STEPS"), ("use_ema", "%EMA")]
    rule = "# " + "=" * 78
    lines = ["# Macros:", rule] + [f"{k} = {v}" for k, v in sorted(macros.items())] + [""]
    if not operative:
        lines += [f"model.trm.{k} = {v}" for k, v in model] + [""]
        lines += [f"trm.TrainConfig.{k} = {v}" for k, v in train] + [""]
        lines += ["ema.ema.rate = %EMA_RATE",
                  "halting.halt_only.exploration_prob = %HALT_EXPLORATION_PROB",
                  "optimizer.adam_atan2.weight_decay = %WEIGHT_DECAY", ""]
        return "\n".join(lines)
    lines += ["# Parameters for adam_atan2:", rule, "adam_atan2.betas = (0.9, 0.95)",
              "adam_atan2.weight_decay = %WEIGHT_DECAY", ""]
    if r.ema:
        lines += ["# Parameters for ema:", rule, "ema.rate = %EMA_RATE", ""]
    lines += ["# Parameters for halt_only:", rule,
              "halt_only.exploration_prob = %HALT_EXPLORATION_PROB", ""]
    lines += ["# Parameters for trm:", rule] + [f"trm.{k} = {v}" for k, v in model]
    lines += ["trm.eval_halt_max_steps = None", "trm.forward_dtype = 'float32'",
              "trm.eval_sets = \\", "    ['all',",
              "     " + ",\n     ".join(repr(x) for x in EVAL_SETS) + "]", ""]
    lines += ["# Parameters for TrainConfig:", rule] + [f"TrainConfig.{k} = {v}"
                                                      for k, v in train] + [""]
    return "\n".join(lines)


def _iso(ts: float) -> str:
    # trm.trainer writes "%Y-%m-%dT%H:%M:%SZ"; keep sub-second precision for exact tests
    return _dt.datetime.fromtimestamp(ts, tz=_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _TensorWriter:
    """Writes TF2-style scalar summaries (``tensor`` with the scalars plugin), no TensorFlow."""

    def __init__(self, logdir: str, suffix: str = ""):
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self._w = EventFileWriter(logdir, filename_suffix=suffix)

    def add_scalar(self, tag: str, value: float, step: int, wall_time: float) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, types_pb2

        tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[float(value)])
        meta = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))
        summ = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, tensor=tensor,
                                                                    metadata=meta)])
        self._w.add_event(event_pb2.Event(summary=summ, step=int(step),
                                          wall_time=float(wall_time)))

    def close(self) -> None:
        self._w.close()


def _writer(logdir: str, fmt: str, suffix: str, purge_step: Optional[int] = None):
    """trm's own event writer (as the trainer writes ``tb/``), or a TF2-style one."""
    from analysis.reader import prefer_tensorboard_stub
    from trm.run.tensorboard import EventFileWriter

    prefer_tensorboard_stub()
    if fmt == "tensor":
        return _TensorWriter(logdir, suffix)
    return EventFileWriter(logdir, purge_step=purge_step)


def _resolved_hparams(config_text: str) -> Dict[str, Any]:
    """``hparams.json`` as trm.train writes it: from the TrainConfig the config resolves to."""
    from trm import gin_edge
    from trm.hparams import hparams

    gin_edge.clear()
    try:
        gin_edge.parse([], [], config_texts=[config_text])
        return hparams(gin_edge.build_train_config(), gin_edge.macro_values())
    finally:
        gin_edge.clear()


def _metrics_at(r: SyntheticRun, step: int, rng: np.random.Generator, final: float,
                bump: float = 0.0) -> Dict[str, float]:
    frac = 1.0 - math.exp(-4.0 * step / max(1, r.train_steps))
    acc = float(np.clip(final * frac + bump, 0.0, 1.0))
    return {
        "exact_accuracy": acc,
        "accuracy": float(np.clip(0.3 + 0.7 * acc, 0, 1)),
        "lm_loss": float(2.4 * (1.0 - 0.95 * frac) * (1.1 - acc) + 0.01),
        "q_halt_accuracy": float(np.clip(0.5 + 0.5 * frac, 0, 1)),
        "steps": float(r.halt_max_steps * (1 - 0.5 * frac)),
    }


def write_run(workdir: str, run: Optional[SyntheticRun] = None, **overrides: Any) -> SyntheticRun:
    """Writes one synthetic run under ``workdir`` (created); returns its description."""
    r = dataclasses.replace(run or SyntheticRun(), **overrides)
    from trm.run import record as rec
    from trm.run.storage import Storage

    record = rec.RunRecord(Storage(workdir), best_metric="eval/exact_accuracy")
    tb = os.path.join(workdir, "tb")
    os.makedirs(tb, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(json.dumps(dataclasses.asdict(r), sort_keys=True)
                                           .encode()))
    final = expected_final_accuracy(r.T, r.n, r.hidden_size, r.num_layers, r.mixer, r.ema,
                                    r.num_train_puzzles, r.lr, r.global_batch_size)
    final = float(np.clip(final + rng.normal(0.0, r.noise), 0.0, 1.0))
    start = _T0 + r.start_offset_s
    last = r.final_step()

    def log(w, step: int, walltime: float, bump: float = 0.0) -> None:
        if step == 0:
            w.add_scalar("params/num_params", float(r.num_params), 0, walltime)
        if step > 0 and step % r.log_every == 0:
            m = _metrics_at(r, step, rng, final * 0.95, bump)
            for k in ("lm_loss", "accuracy", "exact_accuracy", "q_halt_accuracy", "steps"):
                w.add_scalar(f"train/{k}", m[k], step, walltime)
            w.add_scalar("train/q_halt_loss", 0.3 * (1 - m["q_halt_accuracy"]), step, walltime)
            w.add_scalar("train/lr", r.lr * min(1.0, step / 10), step, walltime)
            w.add_scalar("train/grad_norm", 1.0 / (1 + step), step, walltime)
            w.add_scalar("perf/examples_per_s", r.global_batch_size / r.step_time_s, step,
                         walltime)
            w.add_scalar("perf/step_time_s", r.step_time_s, step, walltime)
        if step > 0 and step % r.eval_every == 0:
            tagged = {}
            for prefix, given in (("eval", r.eval_exact), ("eval_raw", r.eval_raw_exact)):
                if prefix == "eval_raw" and given is None:
                    continue
                m = _metrics_at(r, step, rng, final, bump)
                if given is not None:
                    m["exact_accuracy"] = float(given[step])
                m["count"] = float(r.eval_count)
                for k, v in m.items():
                    w.add_scalar(f"{prefix}/{k}", v, step, walltime)
                    tagged[f"{prefix}/{k}"] = v
            for i, s in enumerate(EVAL_SETS):
                acc = float(np.clip(tagged["eval/exact_accuracy"] * (1.15 - 0.15 * i), 0, 1))
                w.add_scalar(f"eval/{s}/exact_accuracy", acc, step, walltime)
                w.add_scalar(f"eval/{s}/count", float(r.eval_count // 3), step, walltime)
                tagged[f"eval/{s}/exact_accuracy"] = acc
                tagged[f"eval/{s}/count"] = float(r.eval_count // 3)
            w.add_scalar("perf/eval_time_s", 1.5, step, walltime)
            tagged["perf/eval_time_s"] = 1.5
            if r.with_run_json:  # eval/step_X/metrics.json and run.json's best, as trm.train
                record.evaluation(step, tagged)
            else:
                record.storage.write_json(f"{rec.eval_dir(step)}/metrics.json",
                                          {"step": step, **tagged})

    end_of_first = last if r.resumed_at is None else min(last, r.resumed_at + 2 * r.log_every)
    w = _writer(tb, r.scalar_format, ".0")
    for step in range(0, end_of_first + 1):
        log(w, step, start + step * r.step_time_s)
    w.close()
    if r.resumed_at is not None:
        # A second process resumed from the checkpoint at ``resumed_at`` and re-logged the
        # steps after it (values differ slightly: the rng moved on); later wall times.
        w = _writer(tb, r.scalar_format, ".1", purge_step=r.resumed_at + 1)
        restart = start + (end_of_first + 60) * r.step_time_s
        for step in range(r.resumed_at + 1, last + 1):
            log(w, step, restart + (step - r.resumed_at) * r.step_time_s, bump=0.001)
        w.close()
        end_wall = restart + (last - r.resumed_at) * r.step_time_s
    else:
        end_wall = start + last * r.step_time_s

    if r.with_run_json:
        meta: Dict[str, Any] = {
            "trm_version": "0.0.0+synthetic",
            "git_commit": "0" * 40,
            "device": "cpu",
            "world_size": 1,
            "start_time": _iso(start),
            "end_time": _iso(end_wall + 1.0) if r.status in ("completed", "failed") else None,
            "status": r.status,
            "last_step": last,
            "total_steps": r.train_steps,
            "num_params": r.num_params,
            # the environment, as trm.train records it
            "torch_version": "0.0.0+synthetic", "torch_threads": 1, "cpu_threads_rule": None,
            "forward_dtype": "float32", "forward_dtype_rule": "FORWARD_DTYPE",
            "git_dirty": False,
        }
        if r.with_flops:
            meta["flops_per_example"] = r.flops_per_example
        record.update(**meta)
    bindings = [f"SEED={r.seed}"]
    record.storage.write_json(rec.COMMAND_JSON, {
        "argv": ["python", "-m", "trm.train", "--gin_file=cpu_e1_1_baseline.gin",
                 *[f"--gin_param={b}" for b in bindings]],
        "gin_files": ["gin/experiments/cpu/cpu_e1_1_baseline.gin"], "gin_params": bindings,
        "cwd": "/tmp"})
    config = _config_gin(r, operative=False)
    record.ensure_config(config)
    record.storage.write_json(rec.HPARAMS_JSON, _resolved_hparams(config))
    if last >= 1:
        record.write_operative_config(_config_gin(r, operative=True))
    return r


def write_minimal_study(root: str, **overrides: Any) -> List[str]:
    """Two completed runs (T=2/n=2 and T=3/n=6), one seed each: the CI smoke set."""
    paths = []
    for T, n in ((2, 2), (3, 6)):
        p = os.path.join(root, f"t{T}_n{n}_s0")
        write_run(p, T=T, n=n, **overrides)
        paths.append(p)
    return paths


def write_tiny_study(root: str, seeds: Sequence[int] = (0, 1), train_steps: int = 40,
                     experiments: Optional[Iterable[str]] = None) -> Dict[str, List[str]]:
    """Writes a small synthetic study; returns ``{experiment: [run dirs]}``.

    Experiments: ``e2_2_tn`` (5 schedules), ``e2_1_ema``, ``e2_3_mixer``, ``e3_1_size``
    (3 widths), ``e3_2_data`` (4 data sizes), each over ``seeds``; ``e3_3_lr_batch`` (3 lr x 2
    batch, seed 0); ``misc`` (a preempted run, a running run, a resumed run with two event
    files, a run with TF2 tensor scalars and no run.json).
    """
    specs: Dict[str, List[tuple]] = {
        "e2_2_tn": [(f"t{T}_n{n}", dict(T=T, n=n)) for T, n in
                    ((2, 2), (2, 6), (3, 4), (3, 6), (4, 6))],
        "e2_1_ema": [("ema_on", dict(ema=True)), ("ema_off", dict(ema=False))],
        "e2_3_mixer": [("mlp", dict(mixer="mlp")), ("attention", dict(mixer="attention"))],
        "e3_1_size": [(f"h{h}", dict(hidden_size=h)) for h in (32, 64, 128)],
        "e3_2_data": [(f"d{d}", dict(num_train_puzzles=d)) for d in (100, 250, 1000, 4000)],
    }
    out: Dict[str, List[str]] = {}
    wanted = set(experiments) if experiments is not None else None
    k = 0
    for exp, variants in specs.items():
        if wanted is not None and exp not in wanted:
            continue
        for name, kw in variants:
            for s in seeds:
                p = os.path.join(root, exp, f"{name}_s{s}")
                write_run(p, seed=s, train_steps=train_steps, start_offset_s=3600.0 * k, **kw)
                out.setdefault(exp, []).append(p)
                k += 1
    if wanted is None or "e3_3_lr_batch" in wanted:
        for b in (32, 128):
            for lr in (3e-5, 1e-4, 3e-4):
                p = os.path.join(root, "e3_3_lr_batch", f"b{b}_lr{lr:g}_s0")
                write_run(p, global_batch_size=b, lr=lr, seed=0, train_steps=train_steps,
                          start_offset_s=3600.0 * k)
                out.setdefault("e3_3_lr_batch", []).append(p)
                k += 1
    if wanted is None or "misc" in wanted:
        misc = [
            ("preempted", dict(status="preempted")),
            ("running", dict(status="running")),
            ("resumed", dict(resumed_at=train_steps // 2 - 5)),
            ("tf2_no_runjson", dict(scalar_format="tensor", with_run_json=False)),
        ]
        for name, kw in misc:
            p = os.path.join(root, "misc", name)
            write_run(p, train_steps=train_steps, start_offset_s=3600.0 * k, **kw)
            out.setdefault("misc", []).append(p)
            k += 1
    return out
