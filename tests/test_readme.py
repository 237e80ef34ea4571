"""The README's Python example runs as written, and its set-up commands exist."""

import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(REPO, "README.md")).read()


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_readme_python_example_runs_without_gin():
    blocks = python_blocks()
    assert blocks, "README has no python example"
    example = blocks[0]
    assert len(example.strip().splitlines()) <= 22
    assert "gin" not in example
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", example], capture_output=True, text=True,
                         env=env, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr
    assert re.search(r"^694,274 parameters, loss \d+\.\d{3}$", out.stdout.strip()), out.stdout


def test_readme_setup_commands_are_make_targets_and_ci_runs_the_test_one():
    assert "make quickstart" in README and "make test" in README
    makefile = open(os.path.join(REPO, "Makefile")).read()
    assert re.search(r"^quickstart:", makefile, flags=re.M)
    assert re.search(r"^test:", makefile, flags=re.M)
    assert "--gin_file=quickstart.gin" in makefile
    ci = open(os.path.join(REPO, ".ci", "run")).read()
    assert re.search(r"^make test$", ci, flags=re.M)
