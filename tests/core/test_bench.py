"""trm.bench times the trainer's own step (schedule, EMA, clipping, all-reduce included)."""

import json
import os
import subprocess
import sys

import pytest
import torch
from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_bench_times_the_trainer_step(monkeypatch):
    from trm import bench
    from trm.trainer import Trainer
    bench.define_flags()
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["bench", "--gin_file=quickstart.gin", "--gin_param=HIDDEN_SIZE=16",
                 "--gin_param=GRAD_CLIP=1.0", "--batch=4", "--steps=2", "--warmup=1",
                 "--matmul_seconds=0.01"])
    calls = []
    original = Trainer.train_step

    def counting(self, batch):
        calls.append(self.step)
        return original(self, batch)

    monkeypatch.setattr(Trainer, "train_step", counting)
    try:
        result = bench.run_benchmark()
    finally:
        flags.FLAGS.unparse_flags()
    assert calls == [0, 1, 2]                        # warm-up + timed steps, one trainer
    assert result["ema"] is True and result["batch"] == 4
    assert result["ms_per_step"] > 0 and result["tokens_per_s"] > 0
    assert len(result["step_times_s"]) == 2


def test_bench_cli_prints_json():
    # no OMP_NUM_THREADS: --threads must win over the runtime's thread rule
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "TRM_CPU_THREADS")}
    out = subprocess.run([sys.executable, "-m", "trm.bench", "--gin_file=quickstart.gin",
                          "--gin_param=HIDDEN_SIZE=16", "--gin_param=EMA=False", "--batch=4",
                          "--steps=1", "--warmup=0", "--matmul_seconds=0.01", "--threads=1"],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["ema"] is False and result["num_params"] > 0 and result["threads"] == 1


def test_suite_covers_baseline_and_attention_with_and_without_compile(monkeypatch, tmp_path):
    from trm import bench
    bench.define_flags()
    flags.FLAGS.unparse_flags()
    doc = tmp_path / "BENCH.md"
    flags.FLAGS(["bench", "--suite", f"--write_doc={doc}", "--batch=4"])
    seen = []

    def fake():
        seen.append((tuple(flags.FLAGS.gin_file), flags.FLAGS.compile))
        if flags.FLAGS.compile and "attention" in flags.FLAGS.gin_file[0]:
            raise RuntimeError("compile failed\nmore")
        return {"device": "cpu", "forward_dtype": "bfloat16", "ms_per_step": 10.0,
                "tokens_per_s": 1000.0, "model_flops_per_s": 1e12, "mfu": 0.4,
                "peak_flops_per_s": 2.5e12, "peak_source": "measured matmul",
                "peak_mem_bytes": 2 ** 30}

    monkeypatch.setattr(bench, "run_benchmark", fake)
    try:
        bench.main(["bench"])
    finally:
        flags.FLAGS.unparse_flags()
    assert seen == [(("e1_1_baseline.gin",), False), (("e1_1_baseline.gin",), True),
                    (("e2_3_attention.gin",), False), (("e2_3_attention.gin",), True)]
    text = doc.read_text()
    assert text.count("| baseline (MLP) |") == 2 and "40.0%" in text
    assert "failed: RuntimeError: compile failed |" in text


def test_flop_rates_print_with_a_unit_that_keeps_the_digits():
    from trm.bench import format_flops
    assert format_flops(29.3e9) == "29.3 GFLOP/s"
    assert format_flops(172.1e9) == "172 GFLOP/s"
    assert format_flops(0.17e12) == "170 GFLOP/s"  # a CPU peak is not "0T"
    assert format_flops(1.234e12) == "1.23 TFLOP/s"
    assert format_flops(989e12) == "989 TFLOP/s"
    assert format_flops(2.5e6) == "2.5 MFLOP/s"


def test_profile_steps_says_where_the_step_time_goes():
    from trm import bench
    bench.define_flags()
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["bench", "--gin_file=quickstart.gin", "--gin_param=HIDDEN_SIZE=16", "--batch=4",
                 "--steps=1", "--warmup=1", "--matmul_seconds=0.01", "--profile_steps=2"])
    try:
        result = bench.run_benchmark()
    finally:
        flags.FLAGS.unparse_flags()
    p = result["profile"]
    assert p["steps"] == 2 and p["ms_per_step"] > 0
    assert 0 < p["product_share"] < 1
    assert p["bound_speedup"] == pytest.approx(1 / p["product_share"])
    product_s = p["product_share"] * p["ms_per_step"] / 1e3
    assert p["product_flops_per_s"] == pytest.approx(
        result["model_flops_per_s"] * result["ms_per_step"] / 1e3 / product_s, rel=1e-3)
    names = [op["op"] for op in p["top_ops"]]
    assert "aten::mm" in names and len(names) == 10
    per_step = [op["ms_per_step"] for op in p["top_ops"]]
    assert per_step == sorted(per_step, reverse=True)
    assert sum(op["share"] for op in p["top_ops"]) <= 1.0 + 1e-3


def test_profile_steps_refuses_xla_with_a_pointer():
    from trm import bench
    from trm.errors import TrmError
    with pytest.raises(TrmError, match="not xla: on XLA use the XLA profiler"):
        bench.profile_steps(lambda: None, torch.device("xla"), 1)
