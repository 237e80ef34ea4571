"""The shape of the house: gin at the edge, TensorFlow only where data is read, no circles in
the library, the launchers, the analysis or the studies, and launchers that run without the
heavy dependencies (numpy, torch, TensorFlow, gin) installed."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRM = os.path.join(REPO, "trm")
PACKAGES = ("trm", "launchers", "analysis", "studies")  # the import graph's nodes
HEAVY = ("numpy", "torch", "tensorflow", "gin")  # what `launchers` must not need to start


def _run(code: str) -> str:
    env = dict(os.environ, PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def _imports(path: str):
    tree = ast.parse(open(os.path.join(REPO, path)).read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module
            for alias in node.names:
                yield f"{node.module}.{alias.name}"


def _py_files(*packages):
    for package in packages:
        for root, _, files in os.walk(os.path.join(REPO, package)):
            for name in files:
                if name.endswith(".py"):
                    yield os.path.relpath(os.path.join(root, name), REPO)


def _library_files():
    return _py_files("trm")


def test_components_load_neither_gin_nor_tensorflow():
    out = _run("import sys; import trm, trm.models, trm.halting, trm.optim, trm.losses, "
               "trm.registry, trm.trainer, trm.run.checkpoints, trm.experiment; "
               "print('gin' in sys.modules, 'tensorflow' in sys.modules)")
    assert out.split() == ["False", "False"]


def test_tensorboard_writer_does_not_import_tensorflow(tmp_path):
    out = _run("import sys\nfrom trm.run.tensorboard import SummaryWriterSync\n"
               f"w = SummaryWriterSync({str(tmp_path / 'run')!r})\n"
               "w.scalar('train/x', 1.0, 1); w.text('config', 'a', 0); w.close()\n"
               "print('tensorflow' in sys.modules)")
    assert out.split() == ["False"]


def test_only_the_gin_edge_imports_gin():
    importers = sorted(f for f in _library_files()
                       if any(m == "gin" or m.startswith("gin.") for m in _imports(f)))
    assert importers == [os.path.join("trm", "gin_edge.py")]


def test_tensorflow_is_imported_only_by_the_data_layer():
    importers = sorted(f for f in _library_files()
                       if any(m == "tensorflow" or m.startswith("tensorflow.")
                              for m in _imports(f)))
    assert importers and all(f.startswith(os.path.join("trm", "data")) for f in importers)


def test_run_state_imports_no_model_code():
    """trm/run/ keeps a run's files, not its model: the trainer hands it the training state's
    check as a callable (lazy, function-level imports count too)."""
    model_code = ("trm.models", "trm.core", "trm.experiment", "trm.train_state", "trm.trainer",
                  "trm.losses", "trm.halting")
    importers = sorted(f for f in _py_files(os.path.join("trm", "run"))
                       if any(m == p or m.startswith(p + ".") for m in _imports(f)
                              for p in model_code))
    assert importers == []


def test_benchmarks_are_outside_the_library_import_graph():
    bench = {"trm.bench", "trm.bench_checkpoint", "trm.bench_reference", "trm.data.bench"}
    for f in _library_files():
        module = f[:-3].replace(os.sep, ".").removesuffix(".__init__")
        if module in bench:
            continue
        hits = [m for m in _imports(f) if m in bench or any(m.startswith(b + ".") for b in bench)]
        assert not hits, f"{f} imports the benchmark module(s) {hits}"


def import_graph(files):
    """Module -> the modules of ``files`` it imports (anywhere in the file, lazy ones too)."""
    modules = {f[:-3].replace(os.sep, ".").removesuffix(".__init__"): f for f in files}
    graph = {}
    for name, f in modules.items():
        deps = set()
        for m in _imports(f):
            while m and m not in modules:
                m = m.rpartition(".")[0]
            if m and m != name:
                deps.add(m)
        graph[name] = deps
    return graph


def find_cycle(graph):
    """One import cycle as a list of modules (first = last), or None. A package and its own
    children are one unit (an ``__init__`` re-exporting its children is no cycle)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if node.startswith(dep + ".") or dep.startswith(node + "."):
                continue  # a package and its own children
            if state.get(dep) == "open":
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                cycle = visit(dep)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_no_import_cycles_anywhere():
    """trm, launchers, analysis and studies: no module reaches itself through imports (lazy,
    function-level imports count: they are the same circle, only deferred)."""
    cycle = find_cycle(import_graph(_py_files(*PACKAGES)))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle():
    graph = {"launchers.tpu": {"launchers.watch"}, "launchers.watch": {"launchers.gcloud"},
             "launchers.gcloud": {"launchers.tpu"}, "launchers": set()}
    assert find_cycle(graph) == ["launchers.gcloud", "launchers.tpu", "launchers.watch",
                                 "launchers.gcloud"]
    graph["launchers.gcloud"] = set()
    assert find_cycle(graph) is None


def test_no_library_module_imports_a_study():
    """Studies use trm and the launchers, never the other way round (the launchers find a
    study's sweeps by name, at run time)."""
    for f in _py_files("trm", "launchers", "analysis"):
        hits = [m for m in _imports(f) if m == "studies" or m.startswith("studies.")]
        assert not hits, f"{f} imports {hits}"


# ---------------------------------------------------------------------------------------------
# The launchers on a machine without numpy, torch, TensorFlow or gin (docs/SETUP_GUIDE.md).

LAUNCHER_CLIS = ("launchers.tpu", "launchers.local", "launchers.sweep")

_IMPORT_ALL = ("import sys; import " + ", ".join(LAUNCHER_CLIS) + "\n"
               "from launchers import named_sweeps, watch, cost, gcloud, remote, tpu_config\n"
               "named_sweeps.list_sweeps()  # the discovery of studies/*/sweep.py too\n"
               f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")


def test_importing_the_launchers_loads_no_heavy_module():
    """Even where numpy & co are installed, importing the launchers must not load them."""
    assert _run(_IMPORT_ALL).split() == ["[]"]


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory):
    """A fresh venv holding the standard library only (no pip, no site packages)."""
    venv = tmp_path_factory.mktemp("bare") / "venv"
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv",
                    "--without-pip", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    for module in HEAVY:  # the premise: none of them can be imported there
        probe = subprocess.run([python, "-c", f"import {module}"], capture_output=True,
                               env={"PATH": os.environ["PATH"]}, cwd=venv, timeout=60)
        assert probe.returncode != 0, f"{module} is importable in the bare venv"
    return python


def _bare(python, args, cwd, path_prefix=""):
    env = {"PATH": path_prefix + os.environ["PATH"], "PYTHONPATH": REPO, "HOME": str(cwd),
           **{k: v for k, v in os.environ.items() if k == "FAKE_CLOUD"}}
    return subprocess.run([python, *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=120)


def test_launchers_run_in_a_bare_venv(bare_python, tmp_path, monkeypatch):
    # (PYTHONPATH=REPO would even let `import gin` find the gin/ folder of config files.)
    out = _bare(bare_python, ["-c", _IMPORT_ALL], tmp_path)
    assert out.returncode == 0 and out.stdout.split() == ["[]"], out.stderr[-2000:]
    for cli in LAUNCHER_CLIS:
        out = _bare(bare_python, ["-m", cli, "--help"], tmp_path)
        assert out.returncode == 0 and "usage" in out.stdout, (cli, out.stderr[-2000:])
    # A study's sweep (studies/cpu_study/sweep.py, found by name) and a dry run of its queue.
    out = _bare(bare_python, ["-m", "launchers.tpu", "sweep", "--sweep=cpu_study", "--name=vm",
                              "--bucket=bkt", "--dry_run"], tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("gcloud compute tpus tpu-vm ssh vm --worker=all --command")
    assert "--workdir=gs://bkt/trm/cpu_study/base_s0" in out.stdout
    out = _bare(bare_python, ["-m", "launchers.sweep", "--sweep=cpu_study", "--list"], tmp_path)
    assert out.returncode == 0 and "cpu_study/ds2_s2" in out.stdout, out.stderr[-2000:]
    # Verbs that run, through the launcher tests' fake gcloud (standard library only, so the
    # bare venv runs it too): a v5e VM gets its family's runtime version, then goes away.
    bin_dir, cloud = tmp_path / "bin", tmp_path / "cloud"
    bin_dir.mkdir()
    cloud.mkdir()
    fake = os.path.join(REPO, "tests", "launchers", "fake_gcloud.py")
    (bin_dir / "gcloud").write_text(f"#!{bare_python} -S\n" + open(fake).read())
    (bin_dir / "gcloud").chmod(0o755)
    (cloud / "state.json").write_text(json.dumps({"vms": {}, "qrs": {}, "instances": 0,
                                                   "events": [], "plan": [], "qr_polls": 0,
                                                   "fail_create": 0}))
    monkeypatch.setenv("FAKE_CLOUD", str(cloud))  # passed on by _bare
    for verb in (["create"], ["delete", "--yes"]):
        out = _bare(bare_python, ["-m", "launchers.tpu", *verb, "--name=vm",
                                  "--accelerator_type=v5litepod-8"], tmp_path, f"{bin_dir}:")
        assert out.returncode == 0, out.stderr[-2000:]
        if verb == ["create"]:
            vm = json.loads((cloud / "state.json").read_text())["vms"]["vm"]
            assert vm["version"] == "v2-alpha-tpuv5-lite" and vm["state"] == "READY"
    assert json.loads((cloud / "state.json").read_text())["vms"] == {}
    calls = [json.loads(l)["argv"] for l in (cloud / "calls.jsonl").read_text().splitlines()]
    assert [c[3] for c in calls] == ["create", "delete"]
