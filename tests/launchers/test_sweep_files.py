"""Sweeps as data: sweep files (JSON, YAML), the command-line grid, and their errors."""

import io
import json
import subprocess
import sys

import pytest

from launchers import local, sweep_files
from launchers.sweep_files import SweepFileError

SPEC = {
    "name": "lr_batch",
    "description": "LR x batch",
    "gin_files": ["cpu/cpu_e1_1_baseline.gin"],
    "seeds": [0, 1],
    "fixed": {"TRAIN_STEPS": 20, "FORWARD_DTYPE": "'float32'"},
    "grid": {"LR": [1e-4, 3e-4], "GLOBAL_BATCH_SIZE": [32]},
    "axes": [{"name": "mixer", "points": [
        {"label": "mlp"},
        {"label": "att", "gin_files": ["cpu/cpu_e2_3_attention.gin"],
         "bindings": {"NUM_HEADS": 2, "EMA": True}}]}],
}


def _write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def test_json_sweep_file_expands_to_runs(tmp_path):
    sweep = sweep_files.resolve_sweep(_write(tmp_path, "s.json", SPEC))
    runs = sweep.runs()
    assert sweep.name == "lr_batch" and len(runs) == 2 * 1 * 2 * 2
    first = runs[0]
    assert first.name == "lr_batch/lr0.0001_global_batch_size32_mlp_s0"
    assert first.gin_files == ["cpu/cpu_e1_1_baseline.gin"]
    assert first.bindings == ["TRAIN_STEPS=20", "FORWARD_DTYPE='float32'", "LR=0.0001",
                              "GLOBAL_BATCH_SIZE=32", "SEED=0"]
    att = [r for r in runs if "_att_" in r.name][0]
    assert att.gin_files == ["cpu/cpu_e2_3_attention.gin"]
    assert "NUM_HEADS=2" in att.bindings and "EMA=True" in att.bindings
    assert sweep.swept_keys() >= {"LR", "GLOBAL_BATCH_SIZE", "NUM_HEADS", "SEED"}


def test_yaml_sweep_file_equals_the_json_one(tmp_path):
    yaml = pytest.importorskip("yaml")
    from_yaml = sweep_files.resolve_sweep(_write(tmp_path, "s.yaml", yaml.safe_dump(SPEC, sort_keys=False)))
    from_json = sweep_files.resolve_sweep(_write(tmp_path, "s.json", SPEC))
    assert from_yaml.runs() == from_json.runs()


def test_name_defaults_to_the_file_name(tmp_path):
    spec = {k: v for k, v in SPEC.items() if k != "name"}
    assert sweep_files.resolve_sweep(_write(tmp_path, "My-Sweep.json", spec)).name == "my_sweep"


@pytest.mark.parametrize("change,expected", [
    ({"gird": {}}, "unknown key 'gird' (did you mean 'grid'?)"),
    ({"gin_files": []}, "gin_files is required"),
    ({"grid": {"FORWARD_DTYPE": ["float32"]}}, "'float32' is not a gin value"),
    ({"grid": {"LR": 1e-4}}, "give a non-empty list of values"),
    ({"grid": {"LR": [1e-4, 0.0001]}}, "repeats another"),
    ({"seeds": "0,1"}, "seeds must be a list of integers"),
    ({"name": "Bad Name"}, "must be snake_case"),
    ({"axes": [{"name": "m", "points": [{"lable": "x"}]}]}, "a point is a mapping with at least"),
    ({"axes": [{"name": "m", "points": [{"label": "../x"}]}]}, "not path-safe"),
    # a macro with two sources: a run would silently take the later value
    ({"grid": {"SEED": [1, 2]}}, "axis 'seed' binds SEED, but each run binds its own SEED"),
    ({"fixed": {"SEED": 3}}, "fixes 'SEED=3', but each run binds its own SEED"),
    ({"fixed": {"LR": 1e-3}}, "axis 'lr' and its fixed bindings both bind LR"),
    ({"axes": [{"name": "m", "points": [{"label": "x", "bindings": {"GLOBAL_BATCH_SIZE": 8}}]}]},
     "axis 'm' and axis 'global_batch_size' both bind GLOBAL_BATCH_SIZE"),
])
def test_malformed_sweep_files_get_one_line(tmp_path, change, expected):
    path = _write(tmp_path, "bad.json", {**SPEC, **change})
    with pytest.raises(SweepFileError) as e:
        sweep_files.resolve_sweep(path)
    assert expected in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert "bad.json" in str(e.value)


def test_unparseable_files(tmp_path):
    with pytest.raises(SweepFileError, match="not valid JSON"):
        sweep_files.resolve_sweep(_write(tmp_path, "x.json", "{"))
    with pytest.raises(SweepFileError, match="cannot read sweep file"):
        sweep_files.resolve_sweep(str(tmp_path / "missing.yaml"))
    pytest.importorskip("yaml")
    with pytest.raises(SweepFileError, match="not valid YAML"):
        sweep_files.resolve_sweep(_write(tmp_path, "x.yaml", "a: [1,"))


def test_unknown_sweep_name_suggests_close_ones():
    with pytest.raises(KeyError) as e:
        sweep_files.resolve_sweep("cpu_e2_2_t")
    assert "Did you mean cpu_e2_2_tn" in e.value.args[0]


def test_command_line_grid():
    sweep = sweep_files.command_line_sweep(["quickstart.gin"], ["LR=1e-4,3e-4",
                                                                "X=[1, 2],'a,b'"], seeds=(3,))
    assert [r.name for r in sweep.runs()] == ["grid/lr1e-4_x12_s3", "grid/lr1e-4_xab_s3",
                                              "grid/lr3e-4_x12_s3", "grid/lr3e-4_xab_s3"]
    assert sweep.runs()[1].bindings == ["LR=1e-4", "X='a,b'", "SEED=3"]
    with pytest.raises(SweepFileError, match="add --gin_file"):
        sweep_files.command_line_sweep([], ["LR=1"])
    with pytest.raises(SweepFileError, match="is not MACRO=v1,v2"):
        sweep_files.command_line_sweep(["q.gin"], ["LR"])
    with pytest.raises(SweepFileError, match="axis 'lr' and axis 'lr' both bind LR"):
        sweep_files.command_line_sweep(["q.gin"], ["LR=1,2", "LR=3"])


def test_a_seed_grid_is_refused_not_run_with_seed_0(tmp_path, capsys):
    """``--grid=SEED=1,2`` used to launch runs named seed1_s0 and seed2_s0 that both trained
    with SEED=0 (each run's own SEED binding comes last and wins)."""
    rc = local.main(["--grid=SEED=1,2", "--gin_file=quickstart.gin", f"--root={tmp_path}",
                     "--dry_run"], out=io.StringIO())
    err = capsys.readouterr().err
    assert rc == 2 and "binds SEED" in err and "--seeds" in err, err
    out = io.StringIO()
    assert local.main(["--grid=LR=1e-4", "--gin_file=quickstart.gin", f"--root={tmp_path}",
                       "--seeds=1,2", "--dry_run"], out=out) == 0
    lines = out.getvalue().splitlines()
    assert [line.count("--gin_param=SEED=") for line in lines] == [1, 1]
    assert "--gin_param=SEED=1 " in lines[0] and "--gin_param=SEED=2 " in lines[1]


def test_local_runs_a_sweep_file_and_a_grid(tmp_path, monkeypatch):
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "echo_trainer.py").write_text(
        "import sys, json, os\n"
        "wd = [a.split('=', 1)[1] for a in sys.argv if a.startswith('--workdir=')][0]\n"
        "os.makedirs(wd, exist_ok=True)\n"
        "open(os.path.join(wd, 'argv.json'), 'w').write(json.dumps(sys.argv[1:]))\n")
    monkeypatch.setenv("PYTHONPATH", str(mods))
    root = tmp_path / "runs"
    spec = {"gin_files": ["quickstart.gin"], "grid": {"LR": [1e-4, 2e-4]}}
    out = io.StringIO()
    rc = local.main([f"--sweep={_write(tmp_path, 'two.json', spec)}", f"--root={root}",
                     "--train_module=echo_trainer", "--no_preflight", "--gin.TRAIN_STEPS=5"],
                    out=out)
    assert rc == 0, out.getvalue()
    argv = json.loads((root / "two" / "lr0.0001_s0" / "argv.json").read_text())
    assert argv[:3] == ["--gin_file=quickstart.gin", "--gin_param=LR=0.0001",
                        "--gin_param=SEED=0"]
    assert "--gin_param=TRAIN_STEPS=5" in argv
    out = io.StringIO()
    rc = local.main(["--grid=H_CYCLES=1,2", "--gin_file=quickstart.gin", "--sweep_name=hc",
                     f"--root={root}", "--train_module=echo_trainer", "--no_preflight",
                     "--seeds=4", "--dry_run"], out=out)
    assert rc == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].endswith(f"--workdir={root}/hc/h_cycles1_s4")


def test_sweep_cli_lists_a_sweep_file(tmp_path):
    path = _write(tmp_path, "s.json", SPEC)
    out = subprocess.run([sys.executable, "-m", "launchers.sweep", f"--sweep={path}", "--list"],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.splitlines()) == 8
    bad = subprocess.run([sys.executable, "-m", "launchers.sweep", "--grid=LR=abc",
                          "--gin_file=q.gin", "--list"], capture_output=True, text=True,
                         check=False)
    assert bad.returncode == 2 and "'abc' is not a gin value" in bad.stderr
