"""One spelling of the gin flags in every tool: --gin_file, --gin_param, --gin_bindings,
--gin.NAME=VALUE and --gin_search_paths (trm.train shown end to end; the launchers'
argparse twins in launchers.common)."""

import argparse
import json
import os
import subprocess
import sys

import pytest

from launchers import common

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _dry_run(*args):
    out = subprocess.run([sys.executable, "-m", "trm.train", "--dry_run", *args],
                         capture_output=True, text=True, cwd="/", timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS="1",
                                  PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", "")))
    summary = None
    if out.returncode == 0:
        summary = json.loads(out.stdout[out.stdout.index("{\n"):out.stdout.rindex("}") + 1])
    return out, summary


def test_search_paths_find_files_and_includes(tmp_path):
    (tmp_path / "overrides.gin").write_text("HIDDEN_SIZE = 40\n")
    (tmp_path / "mine.gin").write_text("include 'experiments/quickstart.gin'\n"
                                       "include 'overrides.gin'\nH_CYCLES = 1\n")
    out, summary = _dry_run(f"--gin_search_paths={tmp_path}", "--gin_file=mine.gin",
                            "--gin_param=L_CYCLES=2", "--gin.L_CYCLES=3")
    assert out.returncode == 0, out.stderr[-2000:]
    assert (summary["hidden_size"], summary["H_cycles"], summary["L_cycles"]) == (40, 1, 3)
    out, _ = _dry_run("--gin_file=mine.gin")  # not found without the search path
    assert out.returncode == 1 and "mine.gin" in out.stderr.splitlines()[-1]
    out, _ = _dry_run(f"--gin_search_paths={tmp_path / 'nope'}", "--gin_file=quickstart.gin")
    assert out.returncode == 1 and "is not a folder" in out.stderr.splitlines()[-1]


def test_gin_dot_flag_without_value_is_one_line():
    out, _ = _dry_run("--gin_file=quickstart.gin", "--gin.HIDDEN_SIZE")
    assert out.returncode != 0 and "is not --gin.NAME=VALUE" in out.stderr.strip()
    assert "Traceback" not in out.stderr


def test_launcher_flags_spell_the_same():
    parser = argparse.ArgumentParser()
    common.add_gin_arguments(parser)
    args = common.parse_args(parser, ["--gin_file=a.gin", "--gin_param=A=1", "--gin.B=2",
                                      "--gin_bindings=C='x'", "--gin_search_paths=d1,d2"])
    assert args.gin_file == ["a.gin"] and args.gin_search_paths == ["d1", "d2"]
    assert common.gin_bindings(args) == ["A=1", "B=2", "C='x'"]
    assert common.trainer_args(args.gin_file, common.gin_bindings(args), "w",
                               args.gin_search_paths)[-2:] == ["--gin_search_paths=d1,d2",
                                                               "--workdir=w"]
    with pytest.raises(SystemExit):
        common.parse_args(parser, ["--gin.B"])
    with pytest.raises(SystemExit):
        common.parse_args(parser, ["--bogus=1"])
