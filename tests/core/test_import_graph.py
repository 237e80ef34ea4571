"""The shape of the house: gin at the edge, TensorFlow only where data is read, no circles."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRM = os.path.join(REPO, "trm")


def _run(code: str) -> str:
    env = dict(os.environ, PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def _imports(path: str):
    tree = ast.parse(open(path).read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module
            for alias in node.names:
                yield f"{node.module}.{alias.name}"


def _library_files():
    for root, _, files in os.walk(TRM):
        for name in files:
            if name.endswith(".py"):
                yield os.path.relpath(os.path.join(root, name), REPO)


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


def test_benchmarks_are_outside_the_library_import_graph():
    bench = {"trm.bench", "trm.bench_checkpoint", "trm.data.bench"}
    for f in _library_files():
        module = f[:-3].replace(os.sep, ".").removesuffix(".__init__")
        if module in bench:
            continue
        hits = [m for m in _imports(f) if m in bench or any(m.startswith(b + ".") for b in bench)]
        assert not hits, f"{f} imports the benchmark module(s) {hits}"


def test_no_import_cycles_between_library_modules():
    modules = {f[:-3].replace(os.sep, ".").removesuffix(".__init__"): f for f in _library_files()}
    graph = {}
    for name, f in modules.items():
        deps = set()
        for m in _imports(f):
            while m and m not in modules:
                m = m.rpartition(".")[0]
            if m and m != name and m != "trm":
                deps.add(m)
        graph[name] = deps
    # Package __init__ modules that only re-export their children are part of the package.
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if node.startswith(dep + ".") or dep.startswith(node + "."):
                continue  # a package and its own children
            if state.get(dep) == "open":
                cycle = stack[stack.index(dep):] + [dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
