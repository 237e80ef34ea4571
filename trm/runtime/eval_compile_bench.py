"""Graphs and compile time of the evaluation step on XLA (issue #20): all ACT steps of a batch in
one graph, or a graph cut after every ACT step (what :func:`trm.eval_loop.evaluate` does).

    PJRT_DEVICE=CPU python -m trm.runtime.eval_compile_bench --halt_steps=8 --hidden=128

Prints, per variant, the graphs compiled, the compile time, the first batch's time (with the
compilation) and a later batch's time. Numbers in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Optional, Sequence


def _batch(device, seed: int, batch: int):
    import torch
    g = torch.Generator().manual_seed(seed)
    return {"inputs": torch.randint(1, 11, (batch, 81), generator=g).to(device),
            "labels": torch.randint(1, 11, (batch, 81), generator=g).to(device),
            "puzzle_identifiers": torch.zeros(batch, dtype=torch.int32).to(device)}


def _eval_batch(model, loss_head, batch, per_step: bool) -> None:
    import torch
    import torch_xla
    with torch.no_grad():
        carry = model.initial_carry(batch)
        for _ in range(model.eval_halt_max_steps):
            carry, outputs = model(carry, batch)
            if per_step:
                torch_xla.sync()
        _, metrics, _ = loss_head(carry, outputs)
        total = torch.stack([v.float() for v in metrics.values()]).sum()
    torch_xla.sync()
    total.cpu()


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trm.runtime.eval_compile_bench")
    p.add_argument("--halt_steps", type=int, default=8, help="ACT steps per evaluation batch")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args(argv)
    import torch
    import torch_xla
    import torch_xla.debug.metrics as met
    from trm import gin_edge
    from trm.experiment import DataShape, build_model
    gin_edge.parse(["cpu_e1_1_baseline.gin"], [f"HIDDEN_SIZE={args.hidden}",
                                                f"HALT_MAX_STEPS={args.halt_steps}",
                                                "FORWARD_DTYPE='float32'", "DEVICE='xla'"])
    cfg = gin_edge.build_train_config()
    torch.manual_seed(0)
    device = torch_xla.device()
    model = build_model(cfg, DataShape(11, 81, 2), forward_dtype="float32").to(device).eval()
    loss_head = cfg.loss()
    for per_step in (False, True):
        met.clear_all()
        t0 = time.perf_counter()
        _eval_batch(model, loss_head, _batch(device, 1, args.batch), per_step)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        _eval_batch(model, loss_head, _batch(device, 2, args.batch), per_step)
        later = time.perf_counter() - t0
        count, total_ns = met.metric_data("CompileTime")[:2]
        print(f"{'graph per ACT step' if per_step else 'one graph':<18}  halt_steps="
              f"{args.halt_steps} hidden={args.hidden} batch={args.batch}: {count} graph(s) "
              f"compiled in {total_ns / 1e9:.1f} s; first batch {first:.1f} s, later batch "
              f"{later:.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
