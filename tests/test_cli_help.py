"""`--help` works for every tool and every dataset builder: exit 0, usage text on stdout or
stderr, no traceback (a `%` in a builder's help text used to crash argparse)."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TOOLS = [["trm.train"], ["trm.eval"], ["trm.bench"], ["trm.registry"], ["trm.interop.replay"],
         ["trm.data.build"], ["trm.data.inspect"], ["trm.data.bench"], ["launchers.sweep"],
         ["launchers.local"], ["launchers.tpu"], ["launchers.gpu_check"], ["analysis.report"],
         ["analysis.compare"], ["analysis.dashboard"], ["studies.cpu_study.analysis"],
         ["launchers.tpu_check"], ["trm.runtime.eval_compile_bench"],
         ["trm.bench_reference"]]
BUILDERS = ["sudoku_csv", "sudoku_gen", "maze_csv", "maze_gen", "arc", "reference_npy"]
TPU_VERBS = ["create", "setup", "launch", "sweep", "status", "logs", "delete", "watch", "cost",
             "check"]


def _help(args):
    out = subprocess.run([sys.executable, "-m", *args, "--help"], capture_output=True,
                         text=True, cwd=REPO, timeout=300,
                         env=dict(os.environ, OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="3"))
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-3000:]
    assert "Traceback" not in text, text[-2000:]
    assert len(text.strip().splitlines()) >= 3
    # argparse prints "usage:", absl the module docstring's command line
    assert "usage" in text.lower() or f"python -m {args[0]}" in text, text[-2000:]
    return text


@pytest.mark.parametrize("tool", TOOLS, ids=lambda t: t[0])
def test_every_tool_has_help(tool):
    _help(tool)


@pytest.mark.parametrize("builder", BUILDERS)
def test_every_builder_has_help(builder):
    text = _help(["trm.data.build", builder])
    assert "--output_dir" in text


@pytest.mark.parametrize("verb", TPU_VERBS)
def test_every_tpu_verb_has_help(verb):
    _help(["launchers.tpu", verb])


# The console scripts' --help: tests/test_packaging.py.
