"""The GPU check: one prepared script for a machine with a GPU (issue #15), tried on the CPU first.

    python -m launchers.gpu_check                     # on the GPU machine, from the repo root
    python -m launchers.gpu_check --device=cpu --quick --doc=/tmp/b.md   # a dry rehearsal here

It (1) installs trm into the current interpreter when it is not importable (``pip install -e .``
without touching torch: the GPU machine's CUDA build of torch is kept), (2) runs the benchmark
suite (``python -m trm.bench --suite``: the study's baseline and attention configs, eager and
``torch.compile``, bf16, batch per device of ``runs/gpu.gin``; tokens/s, MFU against the
device's data-sheet peak, peak memory), (3) trains the quickstart on the device and records
its wall time and held-out exact accuracy, and (4) appends both, with machine, versions,
command and date, to ``--doc`` (docs/BENCHMARKS.md). Each phase has a time limit; the whole
check stays under ~8 minutes on an H100/H200. A missing GPU is a one-line error (exit 2).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from typing import List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(argv: List[str], timeout: float, env: Optional[dict] = None) -> subprocess.CompletedProcess:
    print("+ " + " ".join(shlex.quote(a) for a in argv), flush=True)
    return subprocess.run(argv, cwd=REPO, env=env, timeout=timeout, text=True,
                          capture_output=True)


def _ensure_installed(python: str) -> None:
    r = subprocess.run([python, "-c", "import trm, gin, absl"], cwd="/", capture_output=True)
    if r.returncode == 0:
        return
    # --no-deps for torch: keep the machine's (CUDA) torch; the rest of the deps normally.
    _run([python, "-m", "pip", "install", "-q", "-e", REPO, "--no-deps"], 600).check_returncode()
    deps = ["gin-config", "absl-py", "numpy", "tensorboard", "fsspec", "gcsfs", "tensorflow-cpu"]
    _run([python, "-m", "pip", "install", "-q", *deps], 900).check_returncode()


def _device_name(python: str, device: str) -> str:
    code = ("import torch, platform; print(torch.cuda.get_device_name(0) if "
            f"{device!r} == 'cuda' else (platform.processor() or platform.machine()))")
    r = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return r.stdout.strip() or device


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launchers.gpu_check",
                                description="Benchmark suite + quickstart on a GPU, numbers "
                                            "appended to docs/BENCHMARKS.md.")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                   help="cuda on the GPU machine; cpu to rehearse the script here")
    p.add_argument("--doc", default=os.path.join(REPO, "docs", "BENCHMARKS.md"))
    p.add_argument("--quick", action="store_true",
                   help="tiny settings (a rehearsal: 2 timed steps, a 20-step quickstart)")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--bench_timeout", type=float, default=330.0)
    p.add_argument("--train_timeout", type=float, default=150.0)
    args = p.parse_args(argv)

    if args.device == "cuda":
        r = subprocess.run([args.python, "-c", "import torch; assert torch.cuda.is_available()"],
                           capture_output=True)
        if r.returncode:
            print("error: no CUDA GPU visible to this Python (torch.cuda.is_available() is "
                  "False); run on the GPU machine or rehearse with --device=cpu --quick",
                  file=sys.stderr)
            return 2
    _ensure_installed(args.python)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.device == "cpu":
        env.setdefault("OMP_NUM_THREADS", "1")
    started = time.time()
    sections = []

    bench = [args.python, "-m", "trm.bench", "--suite", f"--device={args.device}"]
    bench += (["--batch=4", "--steps=2", "--warmup=1", "--matmul_seconds=0.2",
               "--gin_param=HIDDEN_SIZE=32", "--gin_param=NUM_HEADS=2", "--gin_param=H_CYCLES=1",
               "--gin_param=L_CYCLES=1"] if args.quick else
              ["--batch=256", "--steps=20", "--warmup=5", "--forward_dtype=bfloat16"])
    t0 = time.time()
    r = _run(bench, args.bench_timeout, env)
    table = r.stdout.split("\n[", 1)[0].strip() if r.returncode == 0 else ""
    if r.returncode != 0 or not table.startswith("###"):
        sections.append(f"Benchmark suite failed (exit {r.returncode}): "
                        f"`{r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ''}`")
    else:
        sections.append(table + f"\n\n(suite wall time {time.time() - t0:.0f} s)")

    workdir = tempfile.mkdtemp(prefix="trm-gpu-quickstart-")
    train = [args.python, "-m", "trm.train", "--gin_file=quickstart.gin", f"--workdir={workdir}",
             "--noprogress", f"--gin_param=DEVICE='{args.device}'"]
    if args.quick:
        train += ["--gin_param=TRAIN_STEPS=20", "--gin_param=EVAL_EVERY=20",
                  "--gin_param=CHECKPOINT_EVERY=20", "--gin_param=NUM_TRAIN_PUZZLES=100",
                  "--gin_param=NUM_TEST_PUZZLES=50"]
    t0 = time.time()
    try:
        r = _run(train, args.train_timeout, env)
        rc, wall = r.returncode, time.time() - t0
        err = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""
    except subprocess.TimeoutExpired:
        rc, wall, err = 124, time.time() - t0, f"over the {args.train_timeout:.0f} s limit"
    meta = {}
    try:
        with open(os.path.join(workdir, "run.json")) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        pass
    acc = (meta.get("last_eval") or {}).get("eval/exact_accuracy")
    cmd = " ".join(shlex.quote(a) for a in ["python"] + train[1:])
    if rc == 0 and acc is not None:
        sections.append(
            f"Quickstart on the device: `{cmd}` -> {100 * acc:.1f}% exact accuracy on "
            f"{int((meta.get('last_eval') or {}).get('eval/count', 0))} held-out puzzles after "
            f"{meta.get('last_step')} steps, {wall:.0f} s wall (dataset build included), "
            f"forward dtype {meta.get('forward_dtype')}.")
    else:
        sections.append(f"Quickstart on the device failed (exit {rc}) after {wall:.0f} s: "
                        f"`{err}`")

    head = (f"### GPU check (`python -m launchers.gpu_check"
            f"{' --device=cpu --quick' if args.quick else ''}`) on "
            f"{_device_name(args.python, args.device)}, {datetime.date.today().isoformat()}")
    text = "\n\n".join([head, f"Python {platform.python_version()}; total "
                              f"{time.time() - started:.0f} s.", *sections]) + "\n"
    with open(args.doc, "a") as f:
        f.write("\n" + text)
    print(text)
    return 0 if all("failed" not in s for s in sections) else 1


if __name__ == "__main__":
    sys.exit(main())
