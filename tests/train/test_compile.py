"""COMPILE = True (torch.compile of the reasoning networks) with the real trainer on the CPU: the same
training and evaluation as eager, the same checkpoint keys; and clear errors where it cannot
run (under XLA, or without a C++ compiler)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from train_helpers import tiny_bindings

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 6


def _train(workdir, data, compile_, tmp_path):
    bindings = tiny_bindings(data, steps=STEPS, extra=[
        f"COMPILE={compile_}", "EVAL_EVERY=6", "CHECKPOINT_EVERY=6", "H_CYCLES=2",
        "L_CYCLES=2", "HALT_MAX_STEPS=3"])
    env = dict(os.environ, OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="3",
               TRM_DATA_ROOT=str(tmp_path), TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"))
    out = subprocess.run(
        [sys.executable, "-m", "trm.train", "--gin_file=cpu_e1_1_baseline.gin",
         f"--workdir={workdir}", "--noprogress", *[f"--gin_param={b}" for b in bindings]],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    assert ("COMPILE: torch.compile of 1 reasoning network(s), 0 block(s)" in out.stderr) \
        == compile_, out.stderr[-4000:]
    from trm.run.checkpoints import CheckpointManager
    step, state = CheckpointManager(str(workdir), async_save=False).restore("latest")
    assert step == STEPS
    with open(os.path.join(workdir, "eval", f"step_{STEPS:09d}", "metrics.json")) as f:
        return state, json.load(f)


def test_compiled_run_trains_and_evaluates_like_eager(sudoku4, tmp_path):
    eager, eager_eval = _train(tmp_path / "eager", sudoku4, False, tmp_path)
    assert not list((tmp_path / "inductor").rglob("*.so"))
    compiled, compiled_eval = _train(tmp_path / "compiled", sudoku4, True, tmp_path)
    # inductor built C++ kernels (compilation happened, not a silent eager fallback)
    assert list((tmp_path / "inductor").rglob("*.so")), "no compiled kernels"
    # in-place compilation: the same parameter names (no "_orig_mod."), checkpoints
    # interchangeable with eager runs
    assert list(compiled["model"]) == list(eager["model"])
    assert sorted(compiled["ema"]["shadow"]) == sorted(eager["ema"]["shadow"])
    # fused kernels sum in another order: equal up to float32 rounding after 6 steps
    for key, value in eager["model"].items():
        torch.testing.assert_close(compiled["model"][key], value, rtol=1e-4, atol=1e-5,
                                   msg=lambda m, key=key: f"{key}: {m}")
    for key in ("eval/lm_loss", "eval/accuracy"):
        assert compiled_eval[key] == pytest.approx(eager_eval[key], rel=1e-4, abs=1e-5), key


def _tiny_model(core="trm", activation_checkpointing=False):
    from trm.models import TRM
    return TRM(vocab_size=5, seq_len=4, num_puzzle_identifiers=1, hidden_size=8, num_heads=2,
               H_cycles=1, L_cycles=1, num_layers=2, halt_max_steps=2, puzzle_emb_len=0,
               mixer="mlp", positions="none", forward_dtype="float32", core=core,
               activation_checkpointing=activation_checkpointing)


def _compiled(module):
    return module._compiled_call_impl is not None


@pytest.mark.parametrize("core,nets", [("trm", 1), ("trm_separate", 2)])
def test_compile_core_compiles_each_network_in_place(core, nets):
    from trm.runtime.compile import compile_core
    model = _tiny_model(core)
    keys = list(model.state_dict())
    assert compile_core(model, torch.device("cpu")) == f"{nets} reasoning network(s), 0 block(s)"
    assert list(model.state_dict()) == keys
    assert [_compiled(m) for m in (model.core.net, model.core.net_y)] == [True, True]
    assert not any(_compiled(b) for b in model.core.net.layers)
    # twice is harmless: nothing is compiled again
    assert compile_core(model, torch.device("cpu")) == "0 reasoning network(s), 0 block(s)"


def test_compile_core_with_activation_checkpointing_compiles_the_blocks():
    from trm.runtime.compile import compile_core
    model = _tiny_model(activation_checkpointing=True)
    assert compile_core(model, torch.device("cpu")) == "0 reasoning network(s), 2 block(s)"
    assert not _compiled(model.core.net)
    assert all(_compiled(b) for b in model.core.net.layers)
    # and it trains: the checkpointed backward through the compiled blocks
    model.train()
    batch = {"inputs": torch.randint(1, 5, (2, 4), dtype=torch.int32),
             "labels": torch.randint(1, 5, (2, 4), dtype=torch.int32),
             "puzzle_identifiers": torch.zeros(2, dtype=torch.int32)}
    _, out = model(model.initial_carry(batch), batch)
    out["logits"].float().square().mean().backward()
    assert all(p.grad is not None for p in model.core.net.parameters())


def test_compile_under_xla_is_a_clear_error():
    from trm.runtime.compile import CompileError, compile_core
    model = _tiny_model()
    with pytest.raises(CompileError, match="under XLA the whole training step is already "
                                           "compiled.*COMPILE = False"):
        compile_core(model, torch.device("xla"))
    assert not any(_compiled(m) for m in model.modules())


def test_compile_without_a_cxx_compiler_is_a_clear_error(monkeypatch, tmp_path):
    from torch._inductor import config

    from trm.runtime.compile import CompileError, check_can_compile
    monkeypatch.setattr(config.cpp, "cxx", (str(tmp_path / "no-such-g++"),))
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(CompileError, match="needs a C\\+\\+ compiler.*apt install g\\+\\+.*"
                                           "COMPILE = False"):
        check_can_compile(torch.device("cpu"))
