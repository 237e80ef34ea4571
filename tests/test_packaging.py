"""Packaging: pyproject.toml carries the metadata (setup.py only ships gin/), the built wheel
holds the three packages, py.typed, the gin tree and the notebooks, every console script is
installed and answers --help, and a missing `analysis` extra is one line saying how to install
it."""

import importlib.metadata
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {"trm-train": "trm.train:run", "trm-eval": "trm.eval:run",
           "trm-bench": "trm.bench:run", "trm-report": "analysis.report:main",
           "trm-compare": "analysis.compare:main", "trm-sweep": "launchers.sweep:main",
           "trm-data-build": "trm.data.build:main"}
ENV = dict(os.environ, OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="3")


def _pyproject():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def test_pyproject_holds_the_metadata():
    project = _pyproject()["project"]
    assert project["name"] == "trm" and project["dynamic"] == ["version"]
    assert project["scripts"] == SCRIPTS
    extras = project["optional-dependencies"]
    assert set(extras) == {"tpu", "xla-cpu", "dev", "analysis", "bench-reference"}
    assert extras["bench-reference"] == ["einops", "pydantic"]  # the reference model's imports
    assert set(extras["analysis"]) <= set(extras["dev"])
    for extra in ("tpu", "xla-cpu"):  # torch_xla 2.9.0 needs exactly torch 2.9.0
        assert "torch==2.9.0" in extras[extra]
        assert any(r.startswith("torch_xla") and r.endswith("==2.9.0") for r in extras[extra])
    torch_req = [r for r in project["dependencies"] if r.startswith("torch")]
    assert torch_req == ["torch>=2.9"]
    setup_py = open(os.path.join(REPO, "setup.py")).read()
    for field in ("install_requires", "extras_require", "entry_points", "version="):
        assert field not in setup_py, f"setup.py repeats {field}: it belongs in pyproject.toml"


def test_installed_console_scripts_match_pyproject():
    eps = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")
           if ep.dist is not None and ep.dist.name == "trm"}
    assert eps == SCRIPTS, "reinstall trm (pip install -e .): its console scripts changed"


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_console_scripts_are_installed_and_answer_help(script):
    path = os.path.join(os.path.dirname(sys.executable), script)
    assert os.path.exists(path), f"{script} is not installed (pip install -e . installs it)"
    out = subprocess.run([path, "--help"], capture_output=True, text=True, cwd=REPO,
                         timeout=300, env=ENV)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-2000:]
    assert "Traceback" not in text and "usage" in text.lower(), text[-2000:]


@pytest.mark.slow
def test_wheel_contents(tmp_path):
    """A wheel built from a copy of the sources (the checkout's build/ stays untouched)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "MANIFEST.in"):
        shutil.copy2(os.path.join(REPO, name), src / name)
    for name in ("trm", "analysis", "launchers", "gin"):
        shutil.copytree(os.path.join(REPO, name), src / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                          "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                         capture_output=True, text=True, timeout=600, env=ENV)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("trm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.startswith("trm-")} == {
        "trm", "analysis", "launchers"}
    assert "trm/py.typed" in names
    assert "trm/gin_configs/runs/base.gin" in names
    assert "trm/gin_configs/experiments/quickstart.gin" in names
    assert any(n.startswith("analysis/notebooks/") and n.endswith(".ipynb") for n in names)
    assert "launchers/sweep.py" in names and "trm/data/build.py" in names
    dist = zipfile.ZipFile(wheel)
    eps = dist.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    for script, target in SCRIPTS.items():
        assert f"{script} = {target}" in eps
    meta = dist.read(next(n for n in names if n.endswith("METADATA"))).decode()
    import trm
    assert f"Version: {trm.__version__}" in meta
    for extra in ("tpu", "xla-cpu", "dev", "analysis", "bench-reference"):
        assert f"Provides-Extra: {extra}" in meta


# A missing `analysis` extra, simulated: a sitecustomize whose import hook says pandas is absent.
BLOCK_PANDAS = """
import sys

class _NoPandas:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "pandas":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _NoPandas())
"""
HINT = "pip install 'trm[analysis]'"


@pytest.fixture(scope="module")
def no_pandas_env(tmp_path_factory):
    site = tmp_path_factory.mktemp("no_pandas")
    (site / "sitecustomize.py").write_text(BLOCK_PANDAS)
    return dict(ENV, PYTHONPATH=os.pathsep.join([str(site), REPO]))


def _run(cmd, env, cwd):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=cwd)


@pytest.mark.parametrize("cmd", [["-m", "analysis.report", "--runs=R", "--out=O"],
                                 ["-m", "analysis.compare", "--runs=R"],
                                 ["trm-report", "--runs=R", "--out=O"],
                                 ["trm-compare", "--runs=R"]],
                         ids=["report", "compare", "trm-report", "trm-compare"])
def test_missing_analysis_extra_is_one_line(cmd, no_pandas_env, tmp_path):
    if cmd[0] == "-m":
        cmd = [sys.executable] + cmd
    else:
        cmd = [os.path.join(os.path.dirname(sys.executable), cmd[0])] + cmd[1:]
    out = _run(cmd, no_pandas_env, tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and HINT in lines[0] and "pandas" in lines[0], out.stderr


def test_missing_analysis_extra_at_import_level(no_pandas_env, tmp_path):
    script = (
        "import analysis\n"
        "assert analysis.PUBLISHED  # the paper's numbers need no extra\n"
        "for use in ('from analysis import load_runs', 'import analysis.compare'):\n"
        "    try:\n"
        "        exec(use)\n"
        "    except ImportError as e:\n"
        "        assert isinstance(e, ModuleNotFoundError) and e.name == 'pandas', e\n"
        "        print(e)\n"
        "    else:\n"
        "        raise SystemExit(use + ' worked without pandas')\n")
    out = _run([sys.executable, "-c", script], no_pandas_env, tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 2 and all(HINT in line for line in lines), out.stdout
