"""Multi-process data parallel (torchrun + gloo on CPU) equals one process with the same global
batch: same per-step losses and final weights (within float tolerance)."""

import os
import subprocess
import sys

import pytest
import torch

from train_helpers import tiny_bindings
from test_train import read_scalars

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _train_cmd(workdir, bindings, nproc):
    args = ["--gin_file=cpu_e1_1_baseline.gin", f"--workdir={workdir}", "--noprogress"]
    args += [f"--gin_param={b}" for b in bindings]
    if nproc == 1:
        return [sys.executable, "-m", "trm.train", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", "-m", "trm.train", *args]


def _final_model(workdir):
    from trm.run.checkpoints import CheckpointManager
    step, state = CheckpointManager(workdir, async_save=False).restore("latest")
    return step, state["model"]


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(sudoku4, tmp_path):
    bindings = tiny_bindings(sudoku4, steps=12, extra=[
        "GLOBAL_BATCH_SIZE=16", "EVAL_BATCH_SIZE=16", "LOG_EVERY=3", "HALT_EXPLORATION_PROB=0.0",
        "EVAL_EVERY=12", "CHECKPOINT_EVERY=12", "LR=3e-3", "PUZZLE_EMB_LR=1e-2"])
    env = dict(os.environ, OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="3",
               TRM_DATA_ROOT=str(tmp_path))
    runs = {}
    for nproc in (1, 2):
        wd = str(tmp_path / f"p{nproc}")
        r = subprocess.run(_train_cmd(wd, bindings, nproc), cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-4000:]
        runs[nproc] = wd
    one, two = read_scalars(runs[1]), read_scalars(runs[2])
    for tag in ("train/lm_loss", "train/q_halt_loss", "train/accuracy", "train/grad_norm",
                "eval/exact_accuracy", "eval/lm_loss", "eval/count"):
        a, b = one[tag], two[tag]
        assert [s for s, _ in a] == [s for s, _ in b], tag
        for (_, x), (_, y) in zip(a, b):
            assert abs(x - y) <= 1e-4 + 1e-3 * abs(x), (tag, a, b)
    assert one["eval/count"][-1][1] == 48
    s1, m1 = _final_model(runs[1])
    s2, m2 = _final_model(runs[2])
    assert s1 == s2 == 12
    for k in m1:
        assert torch.allclose(m1[k].float(), m2[k].float(), atol=2e-4, rtol=1e-3), k
    # the puzzle table was trained sparsely on both
    assert torch.allclose(m1["puzzle_emb.weights"], m2["puzzle_emb.weights"], atol=1e-4)
    # only the main process writes: one events file set, one run.json
    run_json = open(os.path.join(runs[2], "run.json")).read()
    assert '"world_size": 2' in run_json and '"backend": "gloo"' in run_json


@pytest.mark.slow
def test_under_torchrun_trm_cpu_threads_sets_each_processs_threads(sudoku4, tmp_path):
    """torchrun sets OMP_NUM_THREADS=1 for its processes when it is unset (one thread each,
    the rule off); TRM_CPU_THREADS=N gives each N (docs/SETUP_GUIDE.md)."""
    import json
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "TRM_CPU_THREADS")}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", TRM_DATA_ROOT=str(tmp_path))
    bindings = tiny_bindings(sudoku4, steps=2)
    for threads, rule in ((None, "1 (OMP_NUM_THREADS)"), ("2", "2 (TRM_CPU_THREADS)")):
        wd = str(tmp_path / f"run{threads}")
        r = subprocess.run(_train_cmd(wd, bindings, 2), cwd=REPO,
                           env=dict(env, **({"TRM_CPU_THREADS": threads} if threads else {})),
                           capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stderr[-4000:]
        run = json.load(open(os.path.join(wd, "run.json")))
        assert run["world_size"] == 2 and run["cpu_threads_rule"] == rule, run


def test_a_64_bit_tensor_never_enters_a_collective():
    from trm.runtime.distributed import CollectiveDtypeError, Runtime
    rt = Runtime(torch.device("cpu"), 0, 2, "gloo")  # the guard runs before any process group
    for bad in (torch.zeros(2, dtype=torch.int64), torch.zeros(2, dtype=torch.float64)):
        with pytest.raises(CollectiveDtypeError, match="32-bit"):
            rt.all_reduce_sum_([torch.zeros(2), bad])
        with pytest.raises(CollectiveDtypeError, match="32-bit"):
            rt.all_gather(bad)


@pytest.mark.slow
def test_training_checkpoints_and_eval_send_only_32_bit_collectives(sudoku4, tmp_path):
    """Two gloo processes train (SignSGD puzzle table, gradient all-reduce, metric sums),
    evaluate and checkpoint (gather_objects) with every torch.distributed collective spied on:
    all of them carry 32-bit (or smaller) tensors, none is an object collective (int64 sizes),
    so the same calls work as xm collectives on TPU."""
    from ranks import finish, start_ranks, train_args
    bindings = tiny_bindings(sudoku4, steps=6, extra=[
        "GLOBAL_BATCH_SIZE=16", "EVAL_BATCH_SIZE=16", "LOG_EVERY=3", "EVAL_EVERY=6",
        "CHECKPOINT_EVERY=3"])
    spy = os.path.join(REPO, "tests", "train", "collective_spy.py")
    procs = start_ranks(train_args(str(tmp_path / "run"), bindings),
                        entry=[sys.executable, spy, str(tmp_path)])
    for rc, _, err in finish(procs, timeout=600):
        assert rc == 0, err[-3000:]
    import json
    for rank in (0, 1):
        seen = json.load(open(tmp_path / f"rank{rank}.json"))
        ops = {(c["op"], d) for c in seen for d in c["dtypes"]}
        assert not {o for o in ops if o[1] in ("torch.int64", "torch.float64", "object")}, ops
        # the paths this test is about were taken: gradients and metric sums, the puzzle
        # table's ids and rows, gather_objects' sizes and payload
        assert {("all_reduce", "torch.float32"), ("all_gather_into_tensor", "torch.int32"),
                ("all_gather_into_tensor", "torch.float32"),
                ("all_gather_into_tensor", "torch.uint8")} <= ops, ops
