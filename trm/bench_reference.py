r"""Time trm's training step against the reference implementation's, on the same CPU.

    python -m trm.bench_reference --reference_repo=PATH [--hidden=128] [--batch=64] \
        [--steps=6] [--warmup=2] [--threads=T] [--forward_dtype=float32] \
        [--write_doc=docs/BENCHMARKS.md]

``PATH`` is a checkout of SamsungSAILMontreal/TinyRecursiveModels (never part of trm); its
model needs ``einops`` and ``pydantic`` (``pip install -e '.[bench-reference]'``). Both sides
run the Sudoku TRM-MLP of ``e1_1_baseline.gin`` (``--hidden``, ``--H_cycles``, ``--L_cycles``
resize it) on one fixed random batch, in this one process:

* trm: :meth:`trm.trainer.Trainer.train_step`, what ``trm.bench`` times.
* reference: its ``pretrain.py`` ``train_batch`` on one process: the ACT step through its
  ``ACTLossHead``, ``(loss / batch).backward()``, its sparse puzzle-embedding SignSGD, AdamATan2
  on the rest, its ``EMAHelper`` update (the recipe keeps an EMA). The reference imports
  AdamATan2 from the ``adam_atan2`` package, a CUDA-only extension: this side uses
  ``trm.optim.AdamATan2`` with the recipe's LR schedule, betas and weight decay.

Before timing, the reference's initial weights are converted into the trm model
(:func:`trm.interop.reference.convert_reference_state_dict`) and one forward of each from the
same initial carry must give the same logits; otherwise the command refuses to time. The steps
alternate between the two (reference, trm, trm, reference, ...), so a slow minute of the
machine slows both. The table gives ms/step (median and min) of each, their ratio, and the
threads, dtype, CPU, torch version and the reference's commit; the last line is JSON.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Optional

import torch
from absl import app, flags

from trm import bench, gin_edge
from trm.errors import TrmError, one_line
from trm.experiment import DataShape, build_ema
from trm.interop.reference import load_reference_checkpoint
from trm.runtime import synchronize
from trm.runtime.device import cpu_info

FLAGS = flags.FLAGS
REFERENCE_URL = "https://github.com/SamsungSAILMontreal/TinyRecursiveModels"
RECIPE = "e1_1_baseline.gin"
SUDOKU = DataShape(vocab_size=11, seq_len=81, num_puzzle_identifiers=1)
# Largest max |logit difference| / max(1, max |logit|) accepted as "the same computation".
TOLERANCE = {"float32": 1e-4, "bfloat16": 3e-2}
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


class BenchReferenceError(TrmError):
    """The reference cannot be loaded, or does not compute what trm computes."""


@functools.lru_cache(maxsize=None)
def define_flags() -> None:
    flags.DEFINE_string("reference_repo", None, "Checkout of the reference implementation "
                        f"({REFERENCE_URL}).")
    flags.DEFINE_integer("hidden", 128, "Hidden size (HIDDEN_SIZE).")
    flags.DEFINE_integer("H_cycles", 3, "T (H_CYCLES).")
    flags.DEFINE_integer("L_cycles", 6, "n (L_CYCLES).")
    flags.DEFINE_integer("batch", 64, "Batch size (examples per step).")
    flags.DEFINE_integer("steps", 6, "Timed steps of each implementation.")
    flags.DEFINE_integer("warmup", 2, "Untimed steps of each first.")
    flags.DEFINE_integer("threads", None, "torch intra-op threads (default: the runtime's rule).")
    flags.DEFINE_enum("forward_dtype", "float32", ["float32", "bfloat16"], "Activation dtype.")
    flags.DEFINE_bool("compile", False, "torch.compile both sides: the reference's whole loss "
                      "head, as its pretrain.py does by default, and trm with COMPILE=True.")
    flags.DEFINE_string("write_doc", None, "Append the table, settings and command to this "
                        "markdown file (e.g. docs/BENCHMARKS.md).")


@dataclasses.dataclass(frozen=True)
class Settings:
    """The benchmarked configuration (the same on both sides)."""

    hidden: int = 128
    H_cycles: int = 3
    L_cycles: int = 6
    batch: int = 64
    forward_dtype: str = "float32"
    compile: bool = False


# -- the reference -----------------------------------------------------------------------------
def import_reference(repo: str) -> SimpleNamespace:
    """The reference's model, loss head, sparse SignSGD and EMA modules, imported from
    ``repo`` (put first on ``sys.path`` for the import only: its top-level packages ``models``
    and ``utils`` are names trm does not use)."""
    repo = os.path.abspath(repo)
    if not os.path.isdir(repo):
        raise BenchReferenceError(f"--reference_repo={repo} does not exist: pass a checkout of "
                                  f"the reference (git clone {REFERENCE_URL}).")
    if not os.path.isfile(os.path.join(repo, "models", "recursive_reasoning", "trm.py")):
        raise BenchReferenceError(f"{repo} is not a checkout of the reference implementation (no "
                                  f"models/recursive_reasoning/trm.py): pass the root of a clone "
                                  f"of {REFERENCE_URL}.")
    missing = [m for m in ("einops", "pydantic") if not _importable(m)]
    if missing:
        raise BenchReferenceError(f"The reference model needs {' and '.join(missing)} (not "
                                  "installed): pip install -e '.[bench-reference]' (or pip "
                                  f"install {' '.join(missing)}).")
    loaded = sys.modules.get("models")
    if loaded is not None and os.path.join(repo, "models") not in [
            os.path.abspath(p) for p in getattr(loaded, "__path__", [])]:
        raise BenchReferenceError(f"Another module named 'models' is already imported "
                                  f"({loaded!r}): run trm.bench_reference in a fresh process.")
    sys.path.insert(0, repo)
    try:
        names = ("recursive_reasoning.trm", "losses", "sparse_embedding", "ema")
        mods = {n.split(".")[-1]: importlib.import_module("models." + n) for n in names}
    except Exception as e:
        raise BenchReferenceError(f"Cannot import the reference's models from {repo}: "
                                  f"{type(e).__name__}: {e}") from None
    finally:
        sys.path.remove(repo)
    return SimpleNamespace(**mods)


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def reference_commit(repo: str) -> str:
    """``git rev-parse HEAD`` of ``repo``, or "unknown" where it is not the root of a git
    checkout (an extracted archive, or a folder inside another repository)."""
    try:
        out = subprocess.run(["git", "-C", repo, "rev-parse", "--show-toplevel", "HEAD"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = out.stdout.split()
    if out.returncode or len(lines) != 2 or \
            os.path.realpath(lines[0]) != os.path.realpath(repo):
        return "unknown"
    return lines[1]


def reference_config(settings: Settings) -> Dict[str, Any]:
    """The reference's model config fields (TRM_SPEC.md section 1) of the parsed recipe: its
    model macros, the MLP mixer without positions (models/trm_mlp.gin), one puzzle-embedding
    row per puzzle as wide as the hidden state."""
    macro = gin_edge.query_macro
    return dict(
        batch_size=settings.batch, seq_len=SUDOKU.seq_len, vocab_size=SUDOKU.vocab_size,
        num_puzzle_identifiers=SUDOKU.num_puzzle_identifiers, puzzle_emb_ndim=settings.hidden,
        puzzle_emb_len=macro("PUZZLE_EMB_LEN"), hidden_size=settings.hidden,
        H_cycles=settings.H_cycles, L_cycles=settings.L_cycles, H_layers=0,
        L_layers=macro("NUM_LAYERS"), expansion=macro("EXPANSION"), num_heads=macro("NUM_HEADS"),
        pos_encodings="none", mlp_t=True, halt_max_steps=macro("HALT_MAX_STEPS"),
        halt_exploration_prob=macro("HALT_EXPLORATION_PROB"), no_ACT_continue=True,
        forward_dtype=settings.forward_dtype)


class ReferenceStep:
    """The reference's ``train_batch`` (pretrain.py, one process) with the optimizer settings,
    LR schedule and EMA rate of a trm trainer; one call = one training step."""

    def __init__(self, ref: SimpleNamespace, config: Dict[str, Any], trainer: Any,
                 compile: bool = False) -> None:
        try:
            model = ref.trm.TinyRecursiveReasoningModel_ACTV1(config)
        except Exception as e:
            raise BenchReferenceError(f"The reference rejects the config {config}: "
                                      f"{type(e).__name__}: {e}") from None
        # e1_1_baseline.gin: loss.act_loss.lm_loss = @loss.stablemax_cross_entropy
        self.head = ref.losses.ACTLossHead(model, loss_type="stablemax_cross_entropy")
        # pretrain.py compiles the whole loss head unless DISABLE_COMPILE is set
        self.step_head = torch.compile(self.head) if compile else self.head
        sign_sgd = trainer.optimizers[0]
        self.optimizers = [
            ref.sparse_embedding.CastedSparseEmbeddingSignSGD_Distributed(
                model.puzzle_emb.buffers(), lr=0.0, world_size=1,
                weight_decay=sign_sgd.param_groups[0]["weight_decay"]),
            trainer.cfg.optimizer(self.head.parameters(), lr=0.0)]   # trm.optim.AdamATan2
        self.lrs, self.batch_size, self.step, self.carry = trainer.lrs, config["batch_size"], 0, None
        self.ema = None
        if trainer.ema is not None:
            self.ema = ref.ema.EMAHelper(mu=trainer.ema.rate)
            self.ema.register(self.head)

    def __call__(self, batch: Dict[str, torch.Tensor]) -> None:
        if self.carry is None:
            self.carry = self.head.initial_carry(batch)
        self.carry, loss, _, _, _ = self.step_head(carry=self.carry, batch=batch,
                                                   return_keys=[])
        (loss / self.batch_size).backward()
        self.step += 1
        for optimizer, base_lr in zip(self.optimizers, self.lrs.base_lrs):
            for group in optimizer.param_groups:
                group["lr"] = self.lrs.at(self.step, base_lr)
            optimizer.step()
            optimizer.zero_grad()
        if self.ema is not None:
            self.ema.update(self.head)


# -- the pair ------------------------------------------------------------------------------------
def build_trainer(settings: Settings, num_steps: int) -> Any:
    """trm's trainer for the recipe at ``settings`` on the CPU (``trm.bench``'s set-up)."""
    bindings = [f"HIDDEN_SIZE={settings.hidden}", f"H_CYCLES={settings.H_cycles}",
                f"L_CYCLES={settings.L_cycles}"]
    cfg, shape = bench.gin_experiment([RECIPE], bindings, SUDOKU)
    cfg = bench.for_benchmark(cfg, settings.batch, "cpu", settings.forward_dtype,
                              settings.compile)
    return bench.build_trainer(cfg, shape, num_steps)


def load_same_weights(reference: ReferenceStep, trainer: Any) -> None:
    """The reference's initial weights into trm's model (and a fresh EMA of them)."""
    load_reference_checkpoint(trainer.model, reference.head.state_dict())
    if trainer.ema is not None:
        trainer.ema = build_ema(trainer.cfg, trainer.model)


@torch.no_grad()
def logit_difference(reference: ReferenceStep, model: torch.nn.Module,
                     batch: Dict[str, torch.Tensor]) -> float:
    """max |logit difference| / max(1, max |logit|) of one deterministic forward (evaluation
    mode: no halting exploration) of each model from its initial carry."""
    head = reference.head
    head.eval()
    model.eval()
    try:
        _, ref_out = head.model(carry=head.initial_carry(batch), batch=batch)
        _, out = model(model.initial_carry(batch), batch)
    finally:
        head.train()
        model.train()
    ref_logits, logits = ref_out["logits"].float(), out["logits"].float()
    if ref_logits.shape != logits.shape:
        return float("inf")
    return ((ref_logits - logits).abs().max() / ref_logits.abs().max().clamp_min(1.0)).item()


def check_same_computation(reference: ReferenceStep, trainer: Any,
                           batch: Dict[str, torch.Tensor], forward_dtype: str) -> float:
    """The logit difference; raises when it is above :data:`TOLERANCE`."""
    diff = logit_difference(reference, trainer.model, batch)
    if not diff <= TOLERANCE[forward_dtype]:
        raise BenchReferenceError(
            f"trm and the reference give different logits with the same weights (relative max "
            f"difference {diff:.3g} > {TOLERANCE[forward_dtype]:g}): the two steps would not "
            "time the same computation; refusing to time (is the checkout a version of the "
            "reference that trm.interop.reference does not describe?).")
    return diff


def time_interleaved(steps: Dict[str, Callable[[], Any]], timed: int,
                     warmup: int) -> Dict[str, List[float]]:
    """Seconds per call of each function: ``warmup`` untimed then ``timed`` timed rounds, the
    order alternating every round (a, b, b, a, ...) so that machine noise hits all alike."""
    names, times = list(steps), {name: [] for name in steps}
    cpu = torch.device("cpu")
    for i in range(warmup + timed):
        for name in (names if i % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            steps[name]()
            synchronize(cpu)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def run(repo: str, settings: Settings, steps: int, warmup: int) -> Dict[str, Any]:
    """Builds both sides, checks that they compute the same, and times them interleaved."""
    ref = import_reference(repo)
    trainer = build_trainer(settings, warmup + steps + 1)
    reference = ReferenceStep(ref, reference_config(settings), trainer, settings.compile)
    load_same_weights(reference, trainer)
    batch = bench.fixed_batch(trainer.model, settings.batch, torch.device("cpu"))
    diff = check_same_computation(reference, trainer, batch, settings.forward_dtype)
    times = time_interleaved({"reference": lambda: reference(batch),
                              "trm": lambda: trainer.train_step(batch)}, steps, warmup)
    name, cpu_flags = cpu_info()
    adam = reference.optimizers[1].param_groups[0]
    result: Dict[str, Any] = {}
    for side, ts in times.items():
        result[f"{side}_ms_median"] = round(statistics.median(ts) * 1e3, 2)
        result[f"{side}_ms_min"] = round(min(ts) * 1e3, 2)
        result[f"{side}_step_times_s"] = [round(t, 4) for t in ts]
    result.update(
        ratio_median=round(result["reference_ms_median"] / result["trm_ms_median"], 3),
        ratio_min=round(result["reference_ms_min"] / result["trm_ms_min"], 3),
        **dataclasses.asdict(settings), steps=steps, warmup=warmup,
        threads=torch.get_num_threads(), cpu=name,
        cpu_flags={f: f in cpu_flags for f in CPU_FLAGS}, torch=torch.__version__,
        python=platform.python_version(), reference_repo=os.path.abspath(repo),
        reference_commit=reference_commit(repo), max_logit_difference=diff,
        num_params=trainer.model.num_params(), ema=reference.ema is not None,
        reference_optimizer=f"{type(reference.optimizers[1]).__module__}."
                            f"{type(reference.optimizers[1]).__name__}",
        betas=list(adam["betas"]), weight_decay=adam["weight_decay"])
    return result


def markdown(r: Dict[str, Any], command: str) -> str:
    """The result as a BENCHMARKS.md section."""
    flags_text = ", ".join(f"{f} {'yes' if on else 'no'}" for f, on in r["cpu_flags"].items())
    return "\n".join([
        f"### `python -m trm.bench_reference` on {r['cpu']}, {datetime.date.today().isoformat()}",
        "",
        f"Sudoku TRM-MLP ({RECIPE}: hidden {r['hidden']}, T={r['H_cycles']}, n={r['L_cycles']}), "
        f"batch {r['batch']}, {r['forward_dtype']}, {r['threads']} torch thread(s), "
        f"{'both sides compiled (torch.compile)' if r['compile'] else 'eager'}, one "
        f"process, {r['steps']} timed steps of each after {r['warmup']} warm-up, interleaved. "
        f"CPU: {r['cpu']} ({flags_text}); torch {r['torch']}, Python {r['python']}; reference "
        f"commit {r['reference_commit']}. Same weights on both sides (relative max logit "
        f"difference {r['max_logit_difference']:.2g}); the reference side's AdamATan2 is "
        f"{r['reference_optimizer']} (betas {tuple(r['betas'])}, weight decay "
        f"{r['weight_decay']:g}): the adam_atan2 package is CUDA-only. EMA: {r['ema']}. "
        f"Command: `python -m trm.bench_reference {command}`",
        "",
        "| implementation | ms/step (median) | ms/step (min) |",
        "|---|---|---|",
        f"| reference | {r['reference_ms_median']:.1f} | {r['reference_ms_min']:.1f} |",
        f"| trm | {r['trm_ms_median']:.1f} | {r['trm_ms_min']:.1f} |",
        f"| **reference / trm** | **{r['ratio_median']:.2f}x** | {r['ratio_min']:.2f}x |",
    ]) + "\n"


def main(argv: List[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not FLAGS.reference_repo:
        raise app.UsageError(f"--reference_repo is required: a checkout of {REFERENCE_URL}.")
    if FLAGS.threads:
        bench.set_threads(FLAGS.threads)
    settings = Settings(FLAGS.hidden, FLAGS.H_cycles, FLAGS.L_cycles, FLAGS.batch,
                        FLAGS.forward_dtype, FLAGS.compile)
    try:
        result = run(FLAGS.reference_repo, settings, FLAGS.steps, FLAGS.warmup)
    except TrmError as e:  # every error a user can fix: one line (trm.errors)
        sys.exit(f"trm.bench_reference: {one_line(e)}")
    table = markdown(result, " ".join(sys.argv[1:]))
    print(table)
    if FLAGS.write_doc:
        with open(FLAGS.write_doc, "a") as f:
            f.write("\n" + table)
    print(json.dumps(result))


def cli(argv: Optional[List[str]] = None) -> None:
    define_flags()
    from trm.cli import run_app
    run_app(main, argv or sys.argv)


if __name__ == "__main__":
    cli()
