"""Preflight for a fresh TPU VM (issue #20): one command to run before a study.

    python -m launchers.tpu_check                          # on the TPU VM, from the repo root
    PJRT_DEVICE=CPU python -m launchers.tpu_check --steps=6   # the rehearsal on XLA:CPU

Each check runs in processes of its own (the XLA runtime starts once per process):

* ``collectives``   int32/float32 all_reduce and all_gather, ``gather_objects`` and
  ``on_main`` across every local device (TPU cannot all-reduce 64-bit values);
* ``rng``           the counter RNG of the halting exploration gives on the device exactly the
  CPU's values, and its graph has no int64;
* ``smoke_1``       a ``--steps`` run with ``--num_devices=1`` (one process, one chip);
* ``smoke_all``     the same run on every device (``torch_xla.launch``), with a throughput line;
* ``compile_cache`` a second start (another seed) finds every graph in the persistent compile
  cache (``$TRM_XLA_CACHE_DIR``), so it compiles nothing new;
* ``signals``       training runs in a process launched by ``torch_xla.launch``; SIGUSR1 writes
  the metrics report and training goes on; SIGTERM ends the run with a final checkpoint (of a
  step after the report) and run.json status ``preempted``.

It prints a pass/fail table and exits 1 if any check failed. The runs train a tiny model on a
generated 4x4 Sudoku set (``--gin_param`` adds bindings) in a scratch folder, removed unless
``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from launchers.common import format_table, read_run_json

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKS = ("collectives", "rng", "smoke_1", "smoke_all", "compile_cache", "signals")
TINY = ["HIDDEN_SIZE=64", "NUM_HEADS=2", "H_CYCLES=1", "L_CYCLES=1", "HALT_MAX_STEPS=2",
        "PUZZLE_EMB_LEN=1", "GLOBAL_BATCH_SIZE=64", "EVAL_BATCH_SIZE=64", "LOG_EVERY=5",
        "EVAL_EVERY=0", "CHECKPOINT_EVERY=0", "LR_WARMUP_STEPS=5", "FORWARD_DTYPE='float32'",
        "DEVICE='xla'", "trm.TrainConfig.dataset_builder=None"]
Result = Tuple[bool, str]


# -- the checks that run inside XLA processes -----------------------------------------------
def _collectives(index: int, out: str) -> None:
    import torch
    import torch_xla.core.xla_model as xm
    from trm.runtime import init_runtime
    from trm.runtime.distributed import check_collective_dtypes
    rt = init_runtime("xla")
    n, rank = rt.process_count, rt.process_index
    ints = torch.tensor([rank + 1], dtype=torch.int32, device=rt.device)
    floats = torch.tensor([rank + 0.5], dtype=torch.float32, device=rt.device)
    check_collective_dtypes([ints, floats], "tpu_check")
    # xm directly: a Runtime of one device skips its collectives
    xm.all_reduce(xm.REDUCE_SUM, [ints, floats])
    gathered = xm.all_gather(torch.tensor([rank], dtype=torch.int32, device=rt.device), dim=0)
    objects = rt.gather_objects({"rank": rank})
    shared = rt.on_main(lambda: "from process 0")
    ok = (int(ints.cpu()[0]) == n * (n + 1) // 2 and float(floats.cpu()[0]) == n * n / 2
          and gathered.cpu().tolist() == list(range(n))
          and [o["rank"] for o in objects] == list(range(n)) and shared == "from process 0")
    with open(f"{out}.{rank}", "w") as f:
        json.dump({"ok": ok, "processes": n}, f)


def _rng(out: str) -> None:
    import torch
    import torch_xla
    from trm.halting import counter_randint, counter_uniform
    device = torch_xla.device()
    same, hlo = True, ""
    for step in (0, 1, 5000, 4_000_000):  # the trainer's key: step * 1_000_003 + salt
        outs = []
        for dev in ("cpu", device):
            key = torch.tensor(step, dtype=torch.int32, device=dev) * 1_000_003 + 4567
            outs.append((counter_uniform(key, 257, 0), counter_randint(key, 257, 1, 2, 17)))
        hlo += torch_xla._XLAC._get_xla_tensors_hlo(list(outs[1]))
        same = same and all(torch.equal(a, b.cpu()) for a, b in zip(*outs))
    with open(out, "w") as f:
        json.dump({"same": same, "int64_in_graph": "s64" in hlo}, f)


# -- the checks run from here ----------------------------------------------------------------
class Preflight:
    """Runs the checks in ``scratch`` with ``python`` (``steps`` per smoke run)."""

    def __init__(self, scratch: str, steps: int, bindings: Sequence[str], timeout: float,
                 python: str = sys.executable) -> None:
        self.scratch, self.steps, self.bindings = scratch, steps, list(bindings)
        self.timeout, self.python = timeout, python
        self.cache = os.path.join(scratch, "xla_cache")
        self.data = os.path.join(scratch, "sudoku4")

    def _env(self) -> Dict[str, str]:
        return dict(os.environ, TRM_XLA_CACHE_DIR=self.cache, TF_CPP_MIN_LOG_LEVEL="3",
                    PYTHONPATH=os.pathsep.join(filter(None, [REPO,
                                                             os.environ.get("PYTHONPATH")])))

    def _train_cmd(self, name: str, steps: int, extra: Sequence[str] = (),
                   flags: Sequence[str] = ()) -> Tuple[List[str], str]:
        workdir = os.path.join(self.scratch, name)
        params = TINY + [f"DATA_DIR='{self.data}'", f"TRAIN_STEPS={steps}", *self.bindings,
                         *extra]
        return ([self.python, "-m", "trm.train", "--gin_file=cpu_e1_1_baseline.gin",
                 f"--workdir={workdir}", *flags, *[f"--gin_param={b}" for b in params]],
                workdir)

    def _worker(self, name: str) -> Tuple[subprocess.CompletedProcess, str]:
        out = os.path.join(self.scratch, f"{name}.json")
        proc = subprocess.run([self.python, "-m", "launchers.tpu_check", f"--worker={name}",
                               out], cwd=REPO, env=self._env(), capture_output=True, text=True,
                              timeout=self.timeout)
        return proc, out

    @staticmethod
    def _failed(proc: subprocess.CompletedProcess) -> str:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        return f"exit {proc.returncode}: {lines[-1] if lines else 'no output'}"

    def collectives(self) -> Result:
        proc, out = self._worker("collectives")
        if proc.returncode:
            return False, self._failed(proc)
        ranks = [json.load(open(os.path.join(self.scratch, f)))
                 for f in sorted(os.listdir(self.scratch)) if f.startswith("collectives.json.")]
        ok = bool(ranks) and all(r["ok"] for r in ranks)
        return ok, (f"int32/float32 all_reduce + all_gather, gather_objects, on_main on "
                    f"{len(ranks)} process(es)" + ("" if ok else ": wrong values"))

    def rng(self) -> Result:
        proc, out = self._worker("rng")
        if proc.returncode:
            return False, self._failed(proc)
        r = json.load(open(out))
        ok = r["same"] and not r["int64_in_graph"]
        return ok, ("device values equal the CPU's" if r["same"] else "device values differ "
                    "from the CPU's") + ("; int64 in the graph" if r["int64_in_graph"] else "")

    def _smoke(self, name: str, flags: Sequence[str] = (), extra: Sequence[str] = ()
               ) -> Tuple[Result, Optional[subprocess.CompletedProcess]]:
        cmd, workdir = self._train_cmd(name, self.steps, extra, flags)
        proc = subprocess.run(cmd, cwd=REPO, env=self._env(), capture_output=True, text=True,
                              timeout=self.timeout)
        run = read_run_json(workdir) or {}
        if proc.returncode or run.get("status") != "completed":
            return (False, self._failed(proc) if proc.returncode else f"run.json {run}"), None
        return (True, f"{self.steps} steps on {run.get('world_size')} process(es)"), proc

    def smoke_1(self) -> Result:
        return self._smoke("smoke_1", flags=["--num_devices=1", "--noprogress"])[0]

    def smoke_all(self) -> Result:
        (ok, detail), proc = self._smoke("smoke_all")
        if not ok:
            return ok, detail
        rates = re.findall(r"([0-9.]+) steps/s", proc.stdout)  # the last log window's rate
        batch = 64
        for b in self.bindings:
            if b.startswith("GLOBAL_BATCH_SIZE="):
                batch = int(b.split("=", 1)[1])
        if rates:
            steps_s = float(rates[-1])
            detail += f"; throughput {steps_s:.2f} steps/s = {steps_s * batch:,.0f} examples/s"
        return ok, detail

    def compile_cache(self) -> Result:
        """A start after smoke_all (same shapes, another seed) must find every graph."""
        (ok, detail), _ = self._smoke("cache_second_start", flags=["--noprogress"],
                                      extra=["SEED=12345"])
        if not ok:
            return ok, detail
        counts = _report_counters(os.path.join(self.scratch, "cache_second_start"))
        hits, misses = counts.get("PersistentCacheHit", 0), counts.get("PersistentCacheMiss", 0)
        unloadable = counts.get("PersistentCacheDeserializeFailure", 0)
        if misses or not (hits or unloadable):
            return False, (f"{misses} new graph(s) compiled, {hits + unloadable} found in the "
                           "cache")
        if unloadable:  # XLA:CPU's PJRT client cannot load executables; TPU's can
            return not hits and os.environ.get("PJRT_DEVICE", "").upper() != "TPU", (
                f"all {unloadable} graphs found in the cache; this backend cannot load them")
        return True, f"all {hits} graphs loaded from the cache, none compiled"

    def signals(self) -> Result:
        cmd, workdir = self._train_cmd("signals", 1_000_000, flags=["--noprogress"])
        proc = subprocess.Popen(cmd, cwd=REPO, env=self._env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        report = os.path.join(workdir, "xla_metrics_report.txt")
        try:
            if not _wait(proc, lambda: _last_step(workdir) >= 10, self.timeout):
                return False, "the run did not reach step 10"
            if _children(proc.pid) == []:  # None where /proc cannot tell
                return False, "training did not run in a launched child process"
            proc.send_signal(signal.SIGUSR1)
            if not _wait(proc, lambda: os.path.exists(report), 120):
                return False, "SIGUSR1 wrote no metrics report"
            reported = _last_step(workdir)
            if not _wait(proc, lambda: _last_step(workdir) > reported + 5, 120):
                return False, "training did not go on after SIGUSR1"
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        run = read_run_json(workdir) or {}
        saved = os.path.isdir(os.path.join(workdir, "checkpoints",
                                           f"step_{run.get('last_step', -1):09d}"))
        saved = saved and run.get("last_step", -1) > reported  # after the report, not before
        ok = proc.returncode == 0 and run.get("status") == "preempted" and saved
        return ok, (f"SIGUSR1: report, run went on; SIGTERM: exit {proc.returncode}, status "
                    f"{run.get('status')}, checkpoint of step {run.get('last_step')} "
                    f"{'written' if saved else 'missing'}")


def _last_step(workdir: str) -> int:
    return int((read_run_json(workdir) or {}).get("last_step") or 0)


def _children(pid: int) -> Optional[List[int]]:
    """The child processes of ``pid`` (None where /proc does not say)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return None


def _wait(proc: subprocess.Popen, condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def _report_counters(workdir: str) -> Dict[str, int]:
    """``Counter: NAME`` / ``Value: N`` pairs of a run's xla_metrics_report.txt."""
    try:
        text = open(os.path.join(workdir, "xla_metrics_report.txt")).read()
    except OSError:
        return {}
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r"Counter: (\w+)\n\s+Value: (\d+)", text)}


def _make_data(path: str) -> None:
    from trm.data import ensure_dataset
    ensure_dataset(path, "sudoku_gen", box="2x2", num_train=200, num_test=48, blanks=6,
                   num_aug=4, seed=0, num_shards=4)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m launchers.tpu_check",
                                description="Preflight checks for a fresh TPU VM (see the "
                                            "module docstring); exit 1 on any failure.")
    p.add_argument("--steps", type=int, default=50, help="steps of each smoke run")
    p.add_argument("--only", default=",".join(CHECKS),
                   help=f"comma-separated subset of: {', '.join(CHECKS)}")
    p.add_argument("--gin_param", action="append", default=[],
                   help="an extra binding for the smoke runs (repeatable)")
    p.add_argument("--timeout", type=float, default=1200, help="seconds per check process")
    p.add_argument("--scratch", help="folder for data, runs and the cache (default: a new "
                                     "temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    p.add_argument("--worker", choices=("collectives", "rng"), help=argparse.SUPPRESS)
    p.add_argument("out", nargs="?", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker == "collectives":
        import torch_xla
        torch_xla.launch(_collectives, args=(args.out,))
        return 0
    if args.worker == "rng":
        _rng(args.out)
        return 0
    only = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = sorted(set(only) - set(CHECKS))
    if unknown:
        p.error(f"unknown check(s) {unknown}; choose from {', '.join(CHECKS)}")
    if not os.environ.get("PJRT_DEVICE"):
        print("tpu_check: PJRT_DEVICE is not set: PJRT_DEVICE=TPU on a TPU VM (CPU for the "
              "XLA:CPU rehearsal).", file=sys.stderr)
        return 2
    scratch = args.scratch or tempfile.mkdtemp(prefix="trm_tpu_check_")
    os.makedirs(scratch, exist_ok=True)
    check = Preflight(scratch, args.steps, args.gin_param, args.timeout)
    rows, failed = [], False
    try:
        _make_data(check.data)
        for name in only:
            t0 = time.time()
            try:
                ok, detail = getattr(check, name)()
            except Exception as e:
                ok, detail = False, f"{type(e).__name__}: {e}"
            failed |= not ok
            rows.append([name, "PASS" if ok else "FAIL", f"{time.time() - t0:.0f} s", detail])
            print(f"{name}: {'PASS' if ok else 'FAIL'} {detail}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    print("\n" + format_table(rows, ["check", "result", "time", "detail"]))
    print(f"\n{'FAILED' if failed else 'all checks passed'} "
          f"(PJRT_DEVICE={os.environ.get('PJRT_DEVICE')})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
