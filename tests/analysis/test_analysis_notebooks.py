"""Both notebooks execute headless on tiny runs (CI keeps them from rotting)."""

import os

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NB_DIR = os.path.join(REPO, "analysis", "notebooks")


@pytest.mark.parametrize("name", ["sudoku_analysis", "scaling_laws"])
def test_notebook_executes(name, minimal_root, monkeypatch):
    monkeypatch.setenv("TRM_RUNS_ROOT", minimal_root)
    monkeypatch.setenv("TRM_N_BOOT", "20")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(os.path.join(NB_DIR, f"{name}.ipynb"), as_version=4)
    nbclient.NotebookClient(nb, timeout=180, kernel_name="python3",
                            resources={"metadata": {"path": NB_DIR}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []))
    assert "runs=2" in text


def test_notebooks_are_committed_without_outputs():
    for name in ("sudoku_analysis", "scaling_laws"):
        nb = nbformat.read(os.path.join(NB_DIR, f"{name}.ipynb"), as_version=4)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
        first_code = next(c for c in nb.cells if c.cell_type == "code")
        assert "RUNS_ROOT" in first_code.source and "TRM_RUNS_ROOT" in first_code.source
