r"""Benchmark a CPU training run when other work starts part-way through it.

    python -m trm.bench_busy [--gin_file=quickstart.gin] [--gin_param=...] \
        [--busy_after_s=25] [--modes=on,off] [--timeout_s=900] [--launcher]

Runs ``python -m trm.train`` once per mode, one after the other, each in a fresh temporary
workdir. ``--busy_after_s`` seconds after each start, a busy process (a Python loop spinning
on one core) starts and runs until the training ends. The modes:

* ``on``: the CPU thread governor re-applies the thread rule every ``--interval_s`` (10 s,
  the default);
* ``off``: ``TRM_CPU_THREADS_INTERVAL_S=0``, so the count chosen at start is kept, as before;
* ``fixed``: ``OMP_NUM_THREADS`` set to every usable core (the rule and the governor off):
  what ``launchers.local --parallel=1`` gave its runs before it capped the rule instead.

``--launcher`` starts each run through ``python -m launchers.local --parallel=1`` (a one-run
sweep file, ``--seeds=<the run's SEED>``) instead of directly, so the launcher's own thread
setting is what is measured. ``OMP_NUM_THREADS``, ``TRM_CPU_THREADS`` and
``TRM_CPU_THREADS_MAX`` are removed from the runs' environment (mode ``fixed`` sets the
first), so the rule chooses. Each mode prints one line: wall time, exit code, the final exact
accuracy, and the thread changes. The last line is one JSON object. Run it on an otherwise
quiet machine.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

MODES = ("on", "off", "fixed")
_THREAD_ENV = ("OMP_NUM_THREADS", "TRM_CPU_THREADS", "TRM_CPU_THREADS_MAX")
_EXACT = re.compile(r"exact_accuracy (\d+\.\d+)")
_CHANGE = re.compile(r"CPU threads (\d+) -> (\d+)")


def run_mode(mode: str, gin_files: Sequence[str], gin_params: Sequence[str],
             busy_after_s: float, timeout_s: float, interval_s: float = 10.0,
             launcher: bool = False) -> Dict[str, Any]:
    """One training run with a busy process from ``busy_after_s`` on; its wall time, exit
    code, final evaluation accuracy and thread changes."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    env = {k: v for k, v in os.environ.items() if k not in _THREAD_ENV}
    env["TRM_CPU_THREADS_INTERVAL_S"] = "0" if mode == "off" else f"{interval_s:g}"
    if mode == "fixed":
        from trm.runtime.device import usable_cores
        env["OMP_NUM_THREADS"] = str(usable_cores()[0])
    with tempfile.TemporaryDirectory(prefix=f"trm_bench_busy_{mode}_") as tmp:
        if launcher:   # a one-run sweep file; the launcher binds SEED from --seeds
            seeds = [p.split("=", 1)[1].strip() for p in gin_params
                     if p.split("=", 1)[0].strip() == "SEED"]
            sweep = os.path.join(tmp, "busy.json")
            with open(sweep, "w") as f:
                json.dump({"name": "busy", "gin_files": list(gin_files)}, f)
            argv = [sys.executable, "-m", "launchers.local", f"--sweep={sweep}",
                    f"--root={tmp}/runs", "--parallel=1", f"--seeds={seeds[-1] if seeds else 0}",
                    *[f"--gin_param={p}" for p in gin_params
                      if p.split("=", 1)[0].strip() != "SEED"]]
        else:
            argv = [sys.executable, "-m", "trm.train", *(f"--gin_file={g}" for g in gin_files),
                    *(f"--gin_param={p}" for p in gin_params), f"--workdir={tmp}/run"]
        log_path = os.path.join(tmp, "train.log")
        with open(log_path, "w") as log:
            start = time.monotonic()
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    stdin=subprocess.DEVNULL)
            spinner: Optional[subprocess.Popen] = None
            try:
                try:
                    rc: Optional[int] = proc.wait(timeout=busy_after_s)
                except subprocess.TimeoutExpired:
                    rc = None
                if rc is None:
                    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
                    try:
                        rc = proc.wait(timeout=max(1.0, timeout_s - busy_after_s))
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        rc = proc.wait()
            finally:
                if spinner is not None:
                    spinner.kill()
                    spinner.wait()
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            wall = time.monotonic() - start
        with open(log_path) as f:
            text = f.read()
        for run_log in sorted(glob.glob(os.path.join(tmp, "runs", "*", "*", "launcher.log"))):
            with open(run_log) as f:   # the run's own output, through the launcher
                text += f.read()
    exact = _EXACT.findall(text.split("eval step")[-1]) if "eval step" in text else []
    changes = [f"{a}->{b}" for a, b in _CHANGE.findall(text)]
    return {"mode": mode, "rc": rc, "wall_s": round(wall, 1),
            "exact_accuracy": float(exact[0]) if exact else None,
            "thread_changes": changes, "busy_after_s": busy_after_s, "launcher": launcher,
            "log_tail": text.strip().splitlines()[-3:] if rc else []}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trm.bench_busy", description=__doc__.split(
        "\n\n")[0].strip(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gin_file", action="append", default=None,
                   help="the run's gin files (default: quickstart.gin)")
    p.add_argument("--gin_param", action="append", default=[], help="extra bindings")
    p.add_argument("--busy_after_s", type=float, default=25.0,
                   help="seconds after the start when the busy process starts")
    p.add_argument("--modes", default="on,off", help="comma-separated: on, off, fixed")
    p.add_argument("--launcher", action="store_true",
                   help="start each run through launchers.local --parallel=1")
    p.add_argument("--timeout_s", type=float, default=900.0, help="per run")
    p.add_argument("--interval_s", type=float, default=10.0,
                   help="the governor's interval in mode on (TRM_CPU_THREADS_INTERVAL_S)")
    args = p.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        p.error(f"--modes: {', '.join(bad) or 'nothing'} is not a mode; use one or more of "
                "on, off, fixed")
    if args.busy_after_s < 0 or args.timeout_s <= args.busy_after_s:
        p.error("--busy_after_s must be >= 0 and below --timeout_s")
    if args.interval_s <= 0:
        p.error("--interval_s must be positive (mode off is the governor switched off)")
    results: List[Dict[str, Any]] = []
    for mode in modes:
        r = run_mode(mode, args.gin_file or ["quickstart.gin"], args.gin_param,
                     args.busy_after_s, args.timeout_s, args.interval_s, args.launcher)
        results.append(r)
        acc = "n/a" if r["exact_accuracy"] is None else f"{100 * r['exact_accuracy']:.1f}%"
        print(f"governor {mode}: {r['wall_s']:.1f} s, exit {r['rc']}, exact {acc}, thread "
              f"changes {', '.join(r['thread_changes']) or 'none'}", flush=True)
        for line in r["log_tail"]:
            print(f"  {line}", flush=True)
    print(json.dumps({"bench": "busy", "results": results}))
    return 0 if all(r["rc"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
