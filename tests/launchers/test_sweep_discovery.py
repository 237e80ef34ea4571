"""Sweeps defined outside the library, found by name: ``--sweep_module``, ``$TRM_SWEEP_MODULES``,
the ``trm.sweeps`` entry points and ``studies/*/sweep.py`` (real ``python -m`` processes: the
registry is per process)."""

import os
import subprocess
import sys
import textwrap

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _sweep_module(sweep):
    return textwrap.dedent(f"""\
        from launchers.named_sweeps import Sweep, macro_axis
        SWEEPS = (Sweep({sweep!r}, ("cpu_e1_1_baseline.gin",),
                        (macro_axis("HIDDEN_SIZE", [16, 32], "h"),), (0,)),)
        """)


def _cli(cwd, *args, env=None, path=()):
    environ = {k: v for k, v in os.environ.items() if k != "TRM_SWEEP_MODULES"}
    environ.update(PYTHONPATH=os.pathsep.join([*map(str, path), REPO]), **(env or {}))
    return subprocess.run([sys.executable, "-m", "launchers.sweep", *args], cwd=cwd,
                          capture_output=True, text=True, env=environ, timeout=120)


def test_flag_variable_and_entry_point(tmp_path):
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "flag_mod.py").write_text(_sweep_module("from_flag"))
    (mods / "env_mod.py").write_text(_sweep_module("from_env"))
    (mods / "ep_mod.py").write_text(textwrap.dedent("""\
        from launchers.named_sweeps import Sweep
        def make():  # an entry point may name a function that returns the sweeps
            return [Sweep("from_ep", ("cpu_e1_1_baseline.gin",))]
        """))
    dist = mods / "demo_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: demo-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[trm.sweeps]\ndemo = ep_mod:make\n")

    out = _cli(tmp_path, "--sweep_module=flag_mod", "--sweep=from_flag", "--list", path=[mods])
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].split()[:2] == ["from_flag/h16_s0",
                                                       "--gin_file=cpu_e1_1_baseline.gin"]
    out = _cli(tmp_path, "--sweep=from_env", "--list", env={"TRM_SWEEP_MODULES": "env_mod"},
               path=[mods])
    assert out.returncode == 0 and "from_env/h32_s0" in out.stdout, out.stderr
    out = _cli(tmp_path, path=[mods], env={"TRM_SWEEP_MODULES": "env_mod"})
    names = [line.split()[0] for line in out.stdout.splitlines()[1:]]
    assert {"from_env", "from_ep", "cpu_study", "e2_2_tn"} <= set(names), out.stdout


def test_studies_folder_of_the_current_directory(tmp_path):
    (tmp_path / "studies" / "demo").mkdir(parents=True)
    (tmp_path / "studies" / "__init__.py").write_text("")
    (tmp_path / "studies" / "demo" / "__init__.py").write_text("")
    (tmp_path / "studies" / "demo" / "sweep.py").write_text(_sweep_module("demo_study"))
    out = _cli(tmp_path, "--sweep=demo_study", "--list")
    assert out.returncode == 0 and "demo_study/h16_s0" in out.stdout, out.stderr
    # Elsewhere, the checkout's own studies/ (the CPU study) are found.
    out = _cli(tmp_path / "studies", "--sweep=cpu_study", "--list")
    assert out.returncode == 0 and "cpu_study/base_s0" in out.stdout, out.stderr
    # Round two (issue #24): own sweep names, so no run name collides with round one's.
    short = _cli(tmp_path / "studies", "--sweep=cpu_tn_round2", "--list").stdout.splitlines()
    long_ = _cli(tmp_path / "studies", "--sweep=cpu_tn_round2_long", "--list").stdout.splitlines()
    assert [line.split()[0] for line in short][:8] == [
        f"cpu_tn_round2/t2_n2_s{s}" for s in range(3, 10)] + ["cpu_tn_round2/t2_n6_s3"]
    assert len(short) == 21 and len(long_) == 9, (short, long_)
    assert all("TRAIN_STEPS=1500" in line and "EVAL_RAW_WEIGHTS=True" in line for line in short)
    assert [line.split()[0] for line in long_][-3:] == [
        f"cpu_tn_round2_long/t3_n6_s{s}" for s in range(3)]
    assert all("TRAIN_STEPS=3000" in line and "EVAL_EVERY=500" in line for line in long_)


def test_bad_sweep_modules_are_one_line_errors(tmp_path):
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "no_sweeps.py").write_text("X = 1\n")
    (mods / "twin.py").write_text(_sweep_module("e2_2_tn"))  # a built-in's name
    for args, env, want in [
        (["--sweep_module=missing_mod"], {}, "sweep module 'missing_mod' cannot be imported"),
        (["--sweep_module=no_sweeps"], {}, "sweep module 'no_sweeps' has no SWEEPS"),
        (["--sweep_module=twin"], {}, "sweep 'e2_2_tn' is already defined elsewhere"),
        (["--sweep=e2_2_tn"], {"TRM_SWEEP_MODULES": "1bad"}, "is not a dotted Python module"),
    ]:
        out = _cli(tmp_path, *args, env=env, path=[mods])
        assert out.returncode != 0 and want in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr and out.stderr.count("\n") <= 3, out.stderr
