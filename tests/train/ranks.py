"""Starts N real ``trm.train`` processes that form one torch.distributed (gloo) group through
``env://`` -- like torchrun, but without its agent, which ends the other ranks when one fails
and so would hide a rank left waiting in a collective (on a TPU pod nothing does that)."""

import os
import socket
import subprocess
import sys
from typing import List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GIN = "cpu_e1_1_baseline.gin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_args(workdir: str, bindings: Sequence[str], *extra: str) -> List[str]:
    return [f"--gin_file={GIN}", f"--workdir={workdir}", "--noprogress",
            *[f"--gin_param={b}" for b in bindings], *extra]


def start_ranks(args: Sequence[str], nproc: int = 2, entry: Optional[List[str]] = None,
                env: Optional[dict] = None) -> List[subprocess.Popen]:
    """``nproc`` processes running ``entry`` (default ``python -m trm.train``) with ``args``."""
    port = free_port()
    procs = []
    for rank in range(nproc):
        penv = dict(os.environ, OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="3",
                    MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                    LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc), LOCAL_WORLD_SIZE=str(nproc),
                    **(env or {}))
        cmd = (entry or [sys.executable, "-m", "trm.train"]) + list(args)
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=penv, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    return procs


def finish(procs: Sequence[subprocess.Popen], timeout: float) -> List[tuple]:
    """(returncode, stdout, stderr) of every process; kills them all if one is still running
    after ``timeout`` seconds and fails the test."""
    out = []
    try:
        for p in procs:
            o, e = p.communicate(timeout=timeout)
            out.append((p.returncode, o, e))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        tails = [p.communicate()[1][-1500:] for p in procs]
        raise AssertionError(f"a rank did not exit within {timeout:.0f} s: {tails}")
    return out
