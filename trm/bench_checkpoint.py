r"""Benchmark checkpoint saving for the Sudoku baseline (TRM-MLP, hidden 512).

    python -m trm.bench_checkpoint [--workdir=gs://bucket/tmp] [--no_emulator] \
        [--carry_batch=768] [--threads=1] [--repeats=3] [--step_batch=4]

The state is what the trainer saves: the model, AdamATan2's two moments, the EMA shadow, the
puzzle-embedding SignSGD state, RNG states and (with ``--carry_batch``) the ACT carry. For each
target (a local temporary folder, a local GCS emulator started here, and ``--workdir`` if given)
it reports, median of ``--repeats``:

* ``sync_s``: the part of ``save()`` that blocks training (the copy to host memory);
* ``total_s``: until the checkpoint is committed (serialise, sha256, upload, COMMIT);
* ``restore_s``: reading, verifying and deserialising it.

Then the step-time hit: median training-step time (real TRM steps, ``--step_batch``) without
saving, and for steps that overlap a background save. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any, Dict, List, Optional

import torch

from trm.run.checkpoints import CheckpointManager, capture_rng_state
from trm.run.workdir import Workdir


def build(carry_batch: int):
    from trm.bench import BASELINE
    from trm.losses import ACTLoss
    from trm.models import TRM
    from trm.optim import EMA, AdamATan2, SignSGD

    torch.manual_seed(0)
    model = TRM(vocab_size=11, seq_len=81, num_puzzle_identifiers=1, **BASELINE)
    sparse = SignSGD(model.puzzle_emb, lr=1e-4, weight_decay=1.0)
    opt = AdamATan2(model.parameters(), lr=1e-4, weight_decay=1.0)
    ema = EMA(model)
    loss_head = ACTLoss()

    def step(batch_size: int, carry=None):
        gen = torch.Generator().manual_seed(1)
        inputs = torch.randint(1, 11, (batch_size, 81), generator=gen, dtype=torch.int32)
        batch = {"inputs": inputs, "labels": inputs,
                 "puzzle_identifiers": torch.zeros(batch_size, dtype=torch.int32)}
        carry = carry if carry is not None else model.initial_carry(batch)
        carry, outputs = model(carry, batch)
        loss, _, _ = loss_head(carry, outputs)
        (loss / batch_size).backward()
        for o in (sparse, opt):
            o.step()
            o.zero_grad(set_to_none=True)
        ema.update(model)
        return carry

    step(2)   # populate the optimizer moments
    state: Dict[str, Any] = {
        "model": model.state_dict(),
        "optimizers": [sparse.state_dict(), opt.state_dict()],
        "ema": ema.state_dict(),
        "rng": capture_rng_state(),
        "data": {"epoch": 0, "offset": 0},
    }
    if carry_batch:
        seq = model.full_seq_len
        state["carry"] = {
            "z_H": torch.randn(carry_batch, seq, 512), "z_L": torch.randn(carry_batch, seq, 512),
            "steps": torch.zeros(carry_batch, dtype=torch.int32),
            "halted": torch.ones(carry_batch, dtype=torch.bool),
            "data.inputs": torch.zeros(carry_batch, 81, dtype=torch.int32),
            "data.labels": torch.zeros(carry_batch, 81, dtype=torch.int32),
            "data.puzzle_identifiers": torch.zeros(carry_batch, dtype=torch.int32)}
    return model, state, step


def state_bytes(obj) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(state_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(state_bytes(v) for v in obj)
    return 0


def bench_target(url: str, state, repeats: int) -> Dict[str, float]:
    rows: List[Dict[str, float]] = []
    for i in range(repeats):
        mgr = CheckpointManager(url, keep=2, async_save=True)
        start = time.perf_counter()
        mgr.save(i + 1, state)
        returned = time.perf_counter() - start
        mgr.wait()
        total = time.perf_counter() - start
        t0 = time.perf_counter()
        CheckpointManager(url).restore(i + 1)
        rows.append({"sync_s": returned, "total_s": total,
                     "restore_s": time.perf_counter() - t0,
                     "bytes": mgr.last_save_stats["bytes"]})
        mgr.close()
    return {k: statistics.median(r[k] for r in rows) for k in rows[0]}


def bench_step_hit(url: str, state, step, batch: int, steps: int) -> Dict[str, float]:
    step(batch)   # warm-up
    plain = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step(batch)
        plain.append(time.perf_counter() - t0)
    mgr = CheckpointManager(url, keep=1, async_save=True)
    overlapped, blocked = [], []
    for i in range(steps):
        t0 = time.perf_counter()
        mgr.save(1000 + i, state)          # returns after the host copy
        blocked.append(time.perf_counter() - t0)
        step(batch)
        overlapped.append(time.perf_counter() - t0)
        mgr.wait()
    mgr.close()
    base = statistics.median(plain)
    hit = statistics.median(overlapped)
    return {"step_s": base, "step_with_save_s": hit, "save_blocking_s": statistics.median(blocked),
            "hit_fraction": hit / base - 1.0}


def start_emulator():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = os.path.join(os.path.dirname(sys.executable), "gcp-storage-emulator")
    proc = subprocess.Popen([exe if os.path.exists(exe) else "gcp-storage-emulator", "start",
                             "--host", "127.0.0.1", "--port", str(port), "--in-memory"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    import gcsfs
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    gcsfs.GCSFileSystem(token="anon").mkdir(bucket)
    return proc, f"gs://{bucket}/run"


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", help="also benchmark this URL (e.g. a real gs:// path)")
    parser.add_argument("--no_emulator", action="store_true")
    parser.add_argument("--carry_batch", type=int, default=0,
                        help="add an fp32 ACT carry for this many rows (768 = global batch)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--step_batch", type=int, default=4,
                        help="batch of the timed training steps (0: skip the step-hit part)")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, state, step = build(args.carry_batch)
    result: Dict[str, Any] = {"num_params": model.num_params(), "threads": args.threads,
                              "state_mb": state_bytes(state) / 1e6,
                              "carry_batch": args.carry_batch}
    print(f"state: {result['state_mb']:.1f} MB of tensors ({model.num_params():,} parameters), "
          f"torch threads {args.threads}")
    targets = {"local": tempfile.mkdtemp(prefix="trm-ckpt-bench-")}
    proc = None
    if not args.no_emulator:
        proc, targets["emulator"] = start_emulator()
    if args.workdir:
        targets["workdir"] = args.workdir
    try:
        for name, url in targets.items():
            r = bench_target(url, state, args.repeats)
            result[name] = r
            print(f"{name:9s} sync {r['sync_s'] * 1e3:7.1f} ms   total {r['total_s']:6.2f} s   "
                  f"restore {r['restore_s']:6.2f} s   ({r['bytes'] / 1e6:.1f} MB file)")
        if args.step_batch:
            r = bench_step_hit(targets["local"], state, step, args.step_batch, args.steps)
            result["step_hit_local"] = r
            print(f"step (batch {args.step_batch}) {r['step_s']:.3f} s alone, "
                  f"{r['step_with_save_s']:.3f} s overlapping a save to local disk "
                  f"(+{100 * r['hit_fraction']:.0f}%, of which {r['save_blocking_s']:.3f} s "
                  "blocking)")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()
        Workdir(targets["local"]).remove_tree("")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
