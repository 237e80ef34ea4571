"""``python -m launchers.tpu cost``: FLOPs from the model, steps from the config, the chip table."""

import re

import pytest

from launchers import cost, tpu, tpu_config
from launchers.named_sweeps import Run, get_sweep


@pytest.mark.parametrize("accel,chips,peak", [
    ("v4-8", 4, 275e12), ("v4-32", 16, 275e12), ("v5p-8", 4, 459e12),
    ("v5litepod-8", 8, 197e12), ("v6e-16", 16, 918e12),
])
def test_chip_table(accel, chips, peak):
    assert tpu_config.chips(accel) == chips
    assert cost.peak_flops(accel) == peak
    assert cost.peak_flops(accel, 1e12) == 1e12


def test_unknown_family_needs_a_peak():
    assert tpu_config.chips("v3-8") == 4
    with pytest.raises(ValueError, match="peak_flops_per_chip"):
        cost.peak_flops("v3-8")
    with pytest.raises(ValueError, match="expected FAMILY-N"):
        tpu_config.chips("v4")


def _model_flops(gin_files, bindings):
    """The FLOPs per training example the way trm.train --dry_run builds the model."""
    from trm import gin_edge
    from trm.experiment import DataShape, build_model
    gin_edge.clear()
    gin_edge.parse(gin_files, bindings)
    cfg = gin_edge.build_train_config()
    shape = DataShape(gin_edge.query_macro("VOCAB_SIZE"), gin_edge.query_macro("SEQ_LEN"))
    model = build_model(cfg, shape, init_from_reference=False)
    gin_edge.clear()
    return model.flops_per_example(training=True), model.num_params()


def test_run_cost_counts_steps_times_batch_times_model_flops():
    bindings = ["TRAIN_STEPS=1000", "GLOBAL_BATCH_SIZE=64", "H_CYCLES=2", "L_CYCLES=3",
                "DATA_DIR='/nonexistent/data'"]
    c = cost.run_cost(Run("r", ["e1_1_baseline.gin"], bindings))
    fpe, params = _model_flops(["e1_1_baseline.gin"], bindings)
    assert c.flops_per_example == fpe and c.num_params == params
    assert c.steps == 1000 and c.examples == 64000
    assert c.train_flops == 1000 * 64 * fpe
    assert c.eval_flops is None and c.eval_examples is None  # Sudoku-Extreme, not built

    deeper = cost.run_cost(Run("r", ["e1_1_baseline.gin"], bindings[:2] + [
        "H_CYCLES=4", "L_CYCLES=6", "DATA_DIR='/nonexistent/data'"]))
    assert deeper.flops_per_example > c.flops_per_example  # the schedule reaches the model

    # EPOCHS: examples per epoch from NUM_TRAIN_PUZZLES (dataset not built) or the flag.
    epochs = ["EPOCHS=10", "GLOBAL_BATCH_SIZE=100", "DATA_DIR='/nonexistent/data'"]
    c = cost.run_cost(Run("r", ["e1_1_baseline.gin"], epochs))
    assert c.steps == 10 * 1000 // 100
    assert any("NUM_TRAIN_PUZZLES = 1000" in n for n in c.notes)
    c = cost.run_cost(Run("r", ["e1_1_baseline.gin"], epochs), examples_per_epoch=5000)
    assert c.steps == 500

    # Evaluation, when the test set's size is known: every EVAL_EVERY steps and at the end.
    c = cost.run_cost(Run("r", ["e1_1_baseline.gin"], bindings + ["EVAL_EVERY=300"]),
                      eval_examples=10)
    assert c.evaluations == 4 and c.eval_examples == 10 and c.eval_source == "--eval_examples"
    assert c.eval_flops > 0 and c.flops == c.train_flops + c.eval_flops
    # A generated task declares its test set (NUM_TEST_PUZZLES = 500 in sudoku_gen.gin).
    twin = cost.run_cost(Run("t", ["cpu_e1_1_baseline.gin"], ["TRAIN_STEPS=100", "EVAL_EVERY=50",
                                                              "DATA_DIR='/nonexistent/data'"]))
    assert twin.eval_examples == 500 and twin.eval_source == "NUM_TEST_PUZZLES"
    assert twin.evaluations == 2 and twin.eval_flops > 0


def test_report_hours_and_price():
    c = cost.RunCost("sw/a_s0", 100, 1e9, 1000, 100, 1e14, None, [])
    text = cost.report([c, c], "v4-8", mfu=0.5, peak=1e12, price=2.0, examples_per_s=None)
    # 1e14 FLOPs / (4 chips x 1e12 x 0.5) = 50 s per run
    hours = 50 / 3600
    assert f"{2 * hours:.1f} slice-hours" in text
    assert f"about {2 * hours * 4 * 2:,.2f} at 2 per chip-hour" in text
    assert "4 chips of v4-8 x 1.00e+12 FLOP/s x MFU 0.5 = 2.00e+12 FLOP/s" in text
    measured = cost.report([c], "v4-8", mfu=0.5, peak=None, price=None, examples_per_s=10.0)
    assert "measured 10 examples/s" in measured  # 100000 examples / 10 per s = 2.8 h
    assert "2.8 slice-hours, 11.1 device-hours" in measured


def test_cost_command(capsys):
    argv = ["cost", "--sweep=e2_2_tn", "--accelerator_type=v5litepod-8",
            "--price_per_chip_hour=1.2", "--mfu=0.25", "--gin_param=TRAIN_STEPS=2000"]
    assert tpu.main(argv, environ={}) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["run", "params", "FLOPs/example", "steps", "evaluations",
                                "FLOPs", "slice-h", "chip-h", "cost"]
    assert all(l.split()[4:6] == ["not", "counted"] for l in lines[1:6])
    assert ("evaluation: not included; NOT counted for e2_2_tn/t2_n2_s0, e2_2_tn/t2_n6_s0, "
            "e2_2_tn/t3_n4_s0 and 2 more: the test-set size is unknown") in out
    assert [l.split()[0] for l in lines[1:6]] == [r.name for r in get_sweep("e2_2_tn").runs()]
    assert all(l.split()[3] == "2,000" for l in lines[1:6])
    assert "8 chips of v5litepod-8" in out and "MFU 0.25" in out and "per chip-hour" in out
    assert tpu.main(argv + ["--dry_run"], environ={}) == 0  # nothing to run: the same table
    assert capsys.readouterr().out == out

    assert tpu.main(argv + ["--eval_examples=1000", "--gin_param=EVAL_EVERY=1000"],
                    environ={}) == 0
    out = capsys.readouterr().out
    assert all(l.split()[4:7] == ["2", "x", "1,000"] for l in out.splitlines()[1:6])
    assert re.search(r"evaluation: included for 5 of 5 run\(s\) \([0-9.]+% of their FLOPs\): "
                     r"every EVAL_EVERY steps and at the end, the test set x the eval ACT steps "
                     r"\(test-set size from --eval_examples\)\n", out), out

    assert tpu.main(["cost", "--accelerator_type=v3-8", "--gin_file=e1_1_baseline.gin"],
                    environ={}) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "peak_flops_per_chip" in err
    assert tpu.main(["cost"], environ={}) == 2
    assert "cost needs --sweep or --gin_file" in capsys.readouterr().err
