"""`sudoku_csv --source=<hub id>` downloads through huggingface_hub (the real code path, with a
stand-in module that serves local files: this machine has no network). The `tpu` extra must
install huggingface_hub so that a fresh TPU VM can build Sudoku-Extreme."""

import os
import re
import sys
import types

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

def test_hub_id_downloads_each_split_with_hf_hub_download(tmp_path, monkeypatch):
    from trm.data.builders.sources import resolve_source_file
    served = tmp_path / "hub"
    served.mkdir()
    (served / "train.csv").write_text("a")
    calls = []

    def hf_hub_download(repo_id, filename, repo_type):
        calls.append((repo_id, filename, repo_type))
        return str(served / filename)

    monkeypatch.setitem(sys.modules, "huggingface_hub",
                        types.SimpleNamespace(hf_hub_download=hf_hub_download))
    path = resolve_source_file("sapientinc/sudoku-extreme", "train.csv")
    assert path == str(served / "train.csv")
    assert calls == [("sapientinc/sudoku-extreme", "train.csv", "dataset")]


def test_hub_errors_name_the_file_and_dataset(monkeypatch):
    from trm.data.builders.sources import resolve_source_file
    from trm.data.format import DataError

    def failing(repo_id, filename, repo_type):
        raise OSError("network is unreachable")

    monkeypatch.setitem(sys.modules, "huggingface_hub",
                        types.SimpleNamespace(hf_hub_download=failing))
    with pytest.raises(DataError, match=r"test.csv of Hugging Face dataset 'org/set'"):
        resolve_source_file("org/set", "test.csv")


def test_tpu_extra_installs_huggingface_hub():
    pyproject = os.path.join(REPO, "pyproject.toml")
    extras = None
    if os.path.exists(pyproject):
        import tomllib
        with open(pyproject, "rb") as f:
            extras = tomllib.load(f).get("project", {}).get("optional-dependencies")
    if extras and "tpu" in extras:
        tpu = " ".join(extras["tpu"])
    else:
        text = open(os.path.join(REPO, "setup.py")).read()
        found = re.search(r"[\"']tpu[\"']\s*:\s*\[(.*?)\]\s*(?:,|\n)", text, re.S)
        assert found, "no tpu extra in pyproject.toml or setup.py"
        tpu = found.group(1)
    assert "huggingface_hub" in tpu or "huggingface-hub" in tpu, tpu
