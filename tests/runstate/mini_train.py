"""A tiny real training loop on the run-state layer, for the kill/preemption tests.

    python mini_train.py WORKDIR TOTAL_STEPS CHECKPOINT_EVERY [STEP_SLEEP_S]

Resumes from the workdir's latest good checkpoint; SIGTERM/SIGINT finish the current step,
save and exit 0; at the end it saves, exports ``final.pt`` and marks run.json completed.
Prints ``step N`` after every step.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from runstate_util import full_state, load_full_state, make_setup, train_steps  # noqa: E402
from trm.run.checkpoints import CheckpointManager, export_state_dict  # noqa: E402
from trm.run.workdir import Workdir  # noqa: E402
from trm.run.record import RunRecord  # noqa: E402


def run(path: str, total: int, every: int, step_sleep: float = 0.0) -> int:
    torch.set_num_threads(1)
    wd = Workdir(path)
    wd.acquire_lock({"command": "mini_train"})
    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signum

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    mgr = CheckpointManager(wd, keep=2)
    try:
        model, opt = make_setup(seed=0)
        restored = mgr.restore()
        if restored is None:
            start = 0
            random.seed(0)
            np.random.seed(0)
            torch.manual_seed(0)
        else:
            start, state = restored
            load_full_state(model, opt, state)
        RunRecord(wd).update(status="running")
        for step in range(start + 1, total + 1):
            train_steps(model, opt, 1)
            print(f"step {step}", flush=True)
            if step % every == 0 or step == total or stop["signal"]:
                mgr.save(step, full_state(model, opt, step))
            if stop["signal"]:
                mgr.close()
                RunRecord(wd).update(status="preempted", last_step=step)
                return step
            wd.heartbeat()
            time.sleep(step_sleep)
        mgr.close()
        export_state_dict(model, wd.url("final.pt"))
        RunRecord(wd).update(status="completed", last_step=total)
        return total
    finally:
        mgr.close()
        wd.release_lock()
        for s, h in old.items():
            signal.signal(s, h)


if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]),
        float(sys.argv[4]) if len(sys.argv) > 4 else 0.0)
