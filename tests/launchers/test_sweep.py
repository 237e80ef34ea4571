"""Sweep definitions, run names and the ``python -m launchers.sweep`` listing."""

import json
import os
import re

import pytest

from launchers import sweep as sweep_cli
from launchers import named_sweeps as sweeps
from launchers.named_sweeps import (Axis, Point, Run, Sweep, get_sweep, list_sweeps,
                                    macro_axis)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def registry():
    """A registry that is restored after the test."""
    saved = dict(sweeps._SWEEPS)
    yield sweeps
    sweeps._SWEEPS.clear()
    sweeps._SWEEPS.update(saved)


def test_study_sweeps_are_registered():
    names = set(list_sweeps())
    for family in ["e2_1_ema", "e2_2_tn", "e2_3_mixer", "e3_1_width", "e3_2_data", "e3_3_lr",
                   "e3_4_batch"]:
        assert family in names
        assert "cpu_" + family in names


def test_e2_2_tn_runs():
    runs = get_sweep("e2_2_tn").runs()
    assert [r.name for r in runs] == [
        "e2_2_tn/t2_n2_s0", "e2_2_tn/t2_n6_s0", "e2_2_tn/t3_n4_s0", "e2_2_tn/t3_n6_s0",
        "e2_2_tn/t4_n6_s0",
    ]
    baseline = runs[3]
    assert baseline.gin_files == ["e1_1_baseline.gin"]
    assert baseline.bindings == ["H_CYCLES=3", "L_CYCLES=6", "SEED=0"]


def test_seeds_axis_and_override():
    runs = get_sweep("e3_4_batch").runs(seeds=[0, 1])
    assert len(runs) == 8
    # Seeds vary slowest: every grid point once before the second seed.
    assert [r.name for r in runs[:4]] == [f"e3_4_batch/b{b}_s0" for b in (256, 512, 1024, 2048)]
    assert runs[4].bindings == ["GLOBAL_BATCH_SIZE=256", "SEED=1"]
    assert len(get_sweep("cpu_e2_2_tn").runs()) == 15  # CPU twins default to 3 seeds


def test_scaling_sweeps_bind_the_contract_macros():
    def keys(name):
        return {k for r in get_sweep(name).runs() for k in r.binding_keys()}

    assert keys("e3_1_width") == {"HIDDEN_SIZE", "SEED"}
    assert keys("e3_2_data") == {"NUM_TRAIN_PUZZLES", "SEED"}
    assert keys("e3_3_lr") == {"LR", "GLOBAL_BATCH_SIZE", "SEED"}
    widths = [r.bindings[0] for r in get_sweep("e3_1_width").runs()]
    assert widths == ["HIDDEN_SIZE=256", "HIDDEN_SIZE=512", "HIDDEN_SIZE=1024"]
    assert [r.bindings[0] for r in get_sweep("e3_2_data").runs()] == [
        "NUM_TRAIN_PUZZLES=250", "NUM_TRAIN_PUZZLES=1000", "NUM_TRAIN_PUZZLES=4000"]
    lr = get_sweep("e3_3_lr").runs()
    assert len(lr) == 20 and lr[0].name == "e3_3_lr/b256_lr5e-5_s0"


def test_file_axes_swap_the_experiment_file():
    runs = get_sweep("cpu_e2_3_mixer").runs(seeds=[0])
    assert [(r.name, r.gin_files) for r in runs] == [
        ("cpu_e2_3_mixer/mlp_s0", ["cpu_e2_3_mlp.gin"]),
        ("cpu_e2_3_mixer/attention_s0", ["cpu_e2_3_attention.gin"]),
    ]
    ema = get_sweep("e2_1_ema").runs()
    assert [r.gin_files for r in ema] == [["e1_1_baseline.gin"], ["e2_1_ema_off.gin"]]


def test_cpu_twins_use_cpu_gin_files():
    for name in list_sweeps():
        if name.startswith("cpu_"):
            for run in get_sweep(name).runs():
                assert all(f.startswith("cpu_") for f in run.gin_files), run


def test_all_run_names_are_unique_and_path_safe():
    pattern = re.compile(r"^[a-z0-9_]+/[A-Za-z0-9_.+-]+$")
    for name in list_sweeps():
        runs = get_sweep(name).runs(seeds=[0, 1])
        names = [r.name for r in runs]
        assert len(set(names)) == len(names), name
        assert all(pattern.match(n) for n in names), names


def test_registry_duplicates_and_misses(registry):
    custom = Sweep("tiny", ("cpu_e1_1_baseline.gin",), (macro_axis("LR", ["1e-3"], "lr"),))
    registry.register_sweep(custom)
    assert get_sweep("tiny").runs()[0] == Run("tiny/lr1e-3_s0", ["cpu_e1_1_baseline.gin"],
                                              ["LR=1e-3", "SEED=0"])
    with pytest.raises(ValueError, match="already registered"):
        registry.register_sweep(custom)
    with pytest.raises(KeyError, match="known sweeps: .*e2_2_tn"):
        get_sweep("nope")


def test_invalid_definitions_raise():
    with pytest.raises(ValueError):
        Point("has space")
    with pytest.raises(ValueError):
        Axis("a", (Point("x"), Point("x")))
    with pytest.raises(ValueError):
        Sweep("Bad-Name", ("a.gin",))
    with pytest.raises(ValueError):
        get_sweep("e2_2_tn").runs(seeds=[0, 0])


def test_gin_files_exist():
    """Every file a sweep names ships in gin/."""
    shipped = {f for _, _, files in os.walk(os.path.join(REPO, "gin")) for f in files
               if f.endswith(".gin")}
    missing = sorted({f for n in list_sweeps() for r in get_sweep(n).runs() for f in r.gin_files
                      if os.path.basename(f) not in shipped})
    assert not missing, f"sweeps reference gin files that gin/ lacks: {missing}"


def test_cli_list(capsys):
    assert sweep_cli.main(["--sweep=e2_2_tn", "--list", "--seeds=0,1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 10
    assert lines[3].split() == ["e2_2_tn/t3_n6_s0", "--gin_file=e1_1_baseline.gin",
                                "H_CYCLES=3", "L_CYCLES=6", "SEED=0"]
    assert lines[-1].startswith("e2_2_tn/t4_n6_s1 ")


def test_cli_overview_json_and_errors(capsys):
    assert sweep_cli.main([]) == 0
    out = capsys.readouterr().out
    assert "e3_3_lr" in out and "cpu_e3_1_width" in out
    assert sweep_cli.main(["--sweep=e3_1_width", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data[0] == {"name": "e3_1_width/h256_s0", "gin_files": ["e1_1_baseline.gin"],
                       "bindings": ["HIDDEN_SIZE=256", "SEED=0"]}
    assert sweep_cli.main(["--sweep=nope", "--list"]) == 2
    assert "Known sweeps" in capsys.readouterr().err
    assert sweep_cli.main(["--sweep=e2_2_tn", "--list", "--seeds=a"]) == 2


_PERCENT = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)%")


def _paper_numbers_of_runs(sweep):
    """The published number (analysis.published, the single source) of each run of ``sweep``,
    matched as analysis.compare does: on the axes that vary among the runs; CPU twins relative to
    their own baseline."""
    import gin
    from analysis import hparams
    from analysis import published as pub
    from trm import gin_edge

    configs = []
    for run in sweep.runs(seeds=[0]):
        gin.clear_config()
        gin_edge.parse(run.gin_files, run.bindings, finalize=False)
        configs.append(hparams.extract_hparams(hparams.parse_gin(gin.config_str())))
    gin.clear_config()
    varying = [c for c in hparams.AXES if len({repr(cfg[c]) for cfg in configs}) > 1]
    entries = [pub.match(cfg, varying, relative=sweep.name.startswith("cpu_")) for cfg in configs]
    return {e.value for e in entries if e is not None}


def test_descriptions_quote_the_published_numbers_of_their_runs():
    quoting = 0
    for name in list_sweeps():
        sweep = get_sweep(name)
        numbers = {float(x) for x in _PERCENT.findall(sweep.description)}
        if not numbers:
            continue
        quoting += 1
        assert numbers <= _paper_numbers_of_runs(sweep), (name, sweep.description)
    assert quoting >= 6  # e2_1, e2_2, e2_3 at both scales


def test_a_wrong_number_in_a_description_is_caught():
    wrong = Sweep("e2_2_wrong", ("e1_1_baseline.gin",), get_sweep("e2_2_tn").axes,
                  description="E2.2 [(2,2) 73.8%]")
    assert not {73.8} <= _paper_numbers_of_runs(wrong)
    assert _paper_numbers_of_runs(wrong) == {73.7, 87.4}
