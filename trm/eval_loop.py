"""Evaluation of a TRM on a test split (TRM_SPEC.md 5.5 and 11), one code path for all devices.

Every test example is seen exactly once across all processes (padding rows are masked out);
each batch runs exactly ``model.eval_halt_max_steps`` ACT steps (a fixed count, so no host
sync decides when to stop); the metrics of the final step are summed per set, summed over
processes, and divided by the set's count of valid rows. Evaluators (e.g. the ARC voting
evaluator) receive the predictions on the host.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from trm.losses import ACTLoss
from trm.models import TRM
from trm.runtime import Runtime

METRIC_KEYS = ("count", "accuracy", "exact_accuracy", "q_halt_accuracy", "steps", "lm_loss",
               "q_halt_loss")


class EvalInterrupted(Exception):
    """A stop request ended an evaluation after ``batches`` batches (nothing was recorded)."""

    def __init__(self, batches: int) -> None:
        super().__init__(f"evaluation stopped after {batches} batches by a stop request")
        self.batches = batches


class MetricSums:
    """Device-side sums of raw metrics (no host sync until :meth:`fetch`)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.dtype = torch.float32 if device.type == "xla" else torch.float64
        self.sums: Dict[str, torch.Tensor] = {}
        self.steps = 0

    def add(self, metrics: Dict[str, torch.Tensor], extra: Optional[Dict[str, torch.Tensor]] = None
            ) -> None:
        for source in (metrics, extra or {}):
            for k, v in source.items():
                v = v.detach().to(self.dtype)
                self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.steps += 1

    def fetch(self, runtime: Runtime, extra: Optional[Dict[str, torch.Tensor]] = None
              ) -> Dict[str, float]:
        """Sums over processes and returns plain floats (one host transfer). ``extra`` device
        scalars are summed over processes and fetched in the same transfer."""
        values = dict(self.sums)
        for k, v in (extra or {}).items():
            values[k] = v.detach().to(self.dtype)
        if not values:
            return {}
        keys = sorted(values)
        stacked = torch.stack([values[k] for k in keys])
        if runtime.distributed:  # collectives are 32-bit (float64 sums stay local)
            stacked = stacked.to(torch.float32)
        runtime.all_reduce_sum_([stacked])
        values = stacked.cpu().tolist()
        return dict(zip(keys, values))

    def reset(self) -> None:
        self.sums = {}
        self.steps = 0


class FirstNonFinite:
    """The first step whose loss or gradient norm was not finite, kept on the device (0: none
    so far; no host read in a step) and fetched with a log interval's metrics."""

    def __init__(self, device: torch.device) -> None:
        self.step = torch.zeros((), dtype=torch.int32, device=device)

    def update(self, finite: torch.Tensor, step: torch.Tensor) -> None:
        """Records ``step`` (a device scalar) when ``finite`` is False and none was before."""
        self.step = torch.where(finite | (self.step > 0), self.step, step)

    def flags(self) -> Dict[str, torch.Tensor]:
        """The device scalars to fetch (summed over processes) for :meth:`pop`."""
        return {"nonfinite_count": (self.step > 0).to(torch.float32),
                "nonfinite_stepsum": self.step.to(torch.float32)}

    @staticmethod
    def pop(raw: Dict[str, float]) -> Optional[int]:
        """Removes the flags from fetched metrics; the first non-finite step, or None."""
        count = raw.pop("nonfinite_count", 0.0)
        total = raw.pop("nonfinite_stepsum", 0.0)
        return int(round(total / count)) if count > 0 else None


def normalize_train_metrics(sums: Dict[str, float], global_batch_size: int,
                            num_steps: int) -> Dict[str, float]:
    """Reference normalisation (5.5): losses / global batch, others / count, per step."""
    count = max(sums.get("count", 0.0), 1.0)
    out = {}
    for k, v in sums.items():
        if k == "count":
            continue
        if k.endswith("loss"):
            out[k] = v / (global_batch_size * max(num_steps, 1))
        elif k in ("grad_norm", "lr"):
            out[k] = v / max(num_steps, 1)
        else:
            out[k] = v / count
    out["count"] = sums.get("count", 0.0) / max(num_steps, 1)
    return out


def normalize_eval_metrics(sums: Dict[str, float]) -> Dict[str, float]:
    """Every metric divided by the set's number of valid rows (losses included)."""
    count = sums.get("count", 0.0)
    out = {k: (v / count if count else math.nan) for k, v in sums.items() if k != "count"}
    out["count"] = count
    return out


@torch.no_grad()
def evaluate(model: TRM, loss_head: ACTLoss, batches: Iterable[Tuple[str, Dict[str, torch.Tensor],
                                                                      int]],
             runtime: Runtime, evaluators: Sequence[Any] = (),
             output_dir: Optional[str] = None,
             progress: Optional[Callable[[int], None]] = None,
             should_stop: Optional[Callable[[], bool]] = None) -> Dict[str, float]:
    """Runs the test batches; returns ``{"<set>/<metric>": value, ...}`` plus evaluator metrics.

    The model must already hold the weights to evaluate (e.g. inside ``EMA.averaged``).
    ``progress(batches_done)`` is called after each batch (no device sync).
    ``should_stop()`` is asked after each batch (a stop request, e.g. SIGTERM): when it says
    yes, :class:`EvalInterrupted` is raised, so a stop never waits for a long evaluation.
    """
    was_training = model.training
    model.eval()
    per_set: Dict[str, MetricSums] = {}
    for ev in evaluators:
        ev.begin_eval()
    try:
        moved = runtime.prefetch(batches, move=lambda item: (item[0], runtime.to_device(item[1]),
                                                             item[2]))
        for done, (set_name, batch, _) in enumerate(moved, start=1):
            carry = model.initial_carry(batch)
            for _ in range(model.eval_halt_max_steps):
                carry, outputs = model(carry, batch)
                # one graph per ACT step (compiled once, reused for every step) instead of
                # one with all steps unrolled: about half the compile time (docs/BENCHMARKS.md)
                runtime.mark_step()
            _, metrics, preds = loss_head(carry, outputs)
            per_set.setdefault(set_name, MetricSums(runtime.device)).add(metrics)
            if evaluators:
                host_batch = {k: v.cpu() for k, v in carry.current_data.items()}
                host_out = {"preds": preds.cpu(), "q_halt_logits": outputs["q_halt_logits"].cpu()}
                for ev in evaluators:
                    ev.update(host_batch, host_out)
            runtime.mark_step()
            runtime.adapt_cpu_threads()  # a long evaluation follows the machine's load too
            if progress is not None:
                progress(done)
            if should_stop is not None and should_stop():
                raise EvalInterrupted(done)
    finally:
        if "moved" in locals():
            moved.close()
        model.train(was_training)
    results: Dict[str, float] = {}
    for set_name in sorted(per_set):
        for k, v in normalize_eval_metrics(per_set[set_name].fetch(runtime)).items():
            results[f"{set_name}/{k}"] = v
    for ev in evaluators:
        gather = runtime.gather_objects if runtime.distributed else None
        metrics = ev.result(output_dir=output_dir if runtime.is_main else None, gather_fn=gather)
        results.update(metrics or {})
    return results


def headline(results: Dict[str, float], metric: str = "exact_accuracy") -> Optional[float]:
    """The ``all`` set's value of ``metric`` if present, else the mean over sets."""
    if f"all/{metric}" in results:
        return results[f"all/{metric}"]
    vals: List[float] = [v for k, v in results.items() if k.endswith("/" + metric)]
    return sum(vals) / len(vals) if vals else None


def tag_results(results: Dict[str, float], prefix: str = "eval") -> Dict[str, float]:
    """TensorBoard / metrics.json names of :func:`evaluate`'s results: the ``all`` set as
    ``<prefix>/<metric>``, other sets as ``<prefix>/<set>/<metric>``, evaluator metrics (e.g.
    ``ARC/pass@2``) unchanged. The trainer and ``trm.eval`` both name metrics this way."""
    tagged: Dict[str, float] = {}
    for k, v in results.items():
        set_name, sep, metric = k.partition("/")
        if sep and set_name == "all":
            tagged[f"{prefix}/{metric}"] = v
        elif sep and not k.startswith("ARC/"):
            tagged[f"{prefix}/{k}"] = v
        else:
            tagged[k] = v
    return tagged
