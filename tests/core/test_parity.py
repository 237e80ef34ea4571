"""Reference parity: the golden files of the reference implementation replay within tolerance.

The compact golden files shipped in tests/golden/ (derived from the full ones by
tests/golden/make_compact.py) are checked on every clone; the full files of ../shared/golden/
too where that folder exists.
"""

import copy
import hashlib
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from trm.interop.reference import (ReferenceImportError, build_model_from_reference,
                                   convert_reference_state_dict, load_reference_checkpoint,
                                   model_kwargs_from_reference_config)
from trm.interop.replay import compare, load_golden, replay

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHIPPED = os.path.join(REPO, "tests", "golden")
SHARED = os.path.join(os.path.dirname(REPO), "shared", "golden")
FILES = ["trm_tiny_mlp.pt", "trm_tiny_attention_rope.pt"]


def golden_path(name, where=SHIPPED):
    path = os.path.join(where, name)
    if where == SHARED and not os.path.exists(path):
        pytest.skip(f"full golden file {path} not present (the shipped compact one is checked)")
    assert os.path.exists(path), f"{path} is missing: it ships with the repository"
    return path


def _make_compact():
    spec = importlib.util.spec_from_file_location(
        "make_compact", os.path.join(SHIPPED, "make_compact.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", params=[(w, f) for w in ("shipped", "shared") for f in FILES],
                ids=lambda p: f"{p[0]}-{p[1][:-3]}")
def golden(request):
    where, name = request.param
    return load_golden(golden_path(name, SHIPPED if where == "shipped" else SHARED))


def test_every_quantity_matches(golden):
    checks = replay(golden)
    failed = [c for c in checks if not c.ok]
    assert not failed, failed[:5]
    names = {c.name.split(".")[0].split("[")[0] for c in checks}
    assert {"train", "eval", "grad", "optim", "num_params"} <= names
    assert len(checks) > 150


def test_changed_weight_fails(golden):
    bad = copy.copy(golden)
    bad["state_dict"] = dict(golden["state_dict"])
    key = "model.inner.L_level.layers.0.mlp.down_proj.weight"
    w = bad["state_dict"][key].clone()
    # 3e-3: the compact files' gradients (small parameters, far from this weight) notice it too
    w[0, 0] += 3e-3
    bad["state_dict"][key] = w
    checks = replay(bad)
    failed = {c.name for c in checks if not c.ok}
    assert any(n.startswith("train[0].logits") for n in failed)
    assert any(n.startswith("grad.") for n in failed)


def test_compiled_prefix_keys_load_identically(golden):
    compiled = {"_orig_mod." + k: v for k, v in golden["state_dict"].items()}
    a = build_model_from_reference(golden["meta"]["config"], golden["state_dict"])
    b = build_model_from_reference(golden["meta"]["config"], compiled)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_split_qkv_and_gate_up_layouts_are_fused():
    golden = load_golden(golden_path("trm_tiny_attention_rope.pt"))
    state = dict(golden["state_dict"])
    for key in list(state):
        if key.endswith("qkv_proj.weight"):
            q, k, v = state.pop(key).chunk(3, dim=0)
            base = key[: -len("qkv_proj.weight")]
            state.update({base + "q_proj.weight": q, base + "k_proj.weight": k,
                          base + "v_proj.weight": v})
        elif key.endswith("gate_up_proj.weight"):
            g, u = state.pop(key).chunk(2, dim=0)
            base = key[: -len("gate_up_proj.weight")]
            state.update({base + "gate_proj.weight": g, base + "up_proj.weight": u})
    fused = convert_reference_state_dict(state)
    direct = convert_reference_state_dict(golden["state_dict"])
    assert fused.keys() == direct.keys()
    assert all(torch.equal(fused[k], direct[k]) for k in direct)


def test_puzzle_table_resize_uses_mean_row():
    golden = load_golden(golden_path("trm_tiny_mlp.pt"))
    cfg = dict(golden["meta"]["config"], num_puzzle_identifiers=9)
    model = build_model_from_reference(cfg)
    info = load_reference_checkpoint(model, golden["state_dict"])
    assert info["resized_puzzle_table"]
    mean = golden["state_dict"]["model.inner.puzzle_emb.weights"].mean(0)
    assert torch.allclose(model.puzzle_emb.weights, mean.expand(9, -1))
    with pytest.raises(ReferenceImportError, match="Puzzle table shape"):
        load_reference_checkpoint(build_model_from_reference(cfg), golden["state_dict"],
                                  resize_puzzle_table=False)


def test_checkpoint_file_with_wrong_shapes_is_a_clear_error(tmp_path):
    golden = load_golden(golden_path("trm_tiny_mlp.pt"))
    path = tmp_path / "step_100"
    torch.save(golden["state_dict"], path)
    cfg = dict(golden["meta"]["config"], hidden_size=64, puzzle_emb_ndim=64)
    with pytest.raises(ReferenceImportError, match="Shape mismatch|Puzzle table"):
        load_reference_checkpoint(build_model_from_reference(cfg), str(path))
    ok = build_model_from_reference(golden["meta"]["config"], str(path))
    assert ok.num_params() == golden["num_params"]


def test_unknown_key_is_reported():
    with pytest.raises(ReferenceImportError, match="Unrecognised reference"):
        convert_reference_state_dict({"model.inner.something_else": torch.zeros(1)})


def test_config_mapping_other_settings():
    kw = model_kwargs_from_reference_config(dict(
        vocab_size=12, seq_len=900, hidden_size=512, H_cycles=3, L_cycles=4, L_layers=2,
        num_heads=8, expansion=4, halt_max_steps=16, pos_encodings="learned",
        no_ACT_continue=False, puzzle_emb_ndim=512))
    assert kw["positions"] == "learned" and kw["mixer"] == "attention"
    assert type(kw["halting"]).__name__ == "HaltContinue"
    with pytest.raises(ReferenceImportError, match="lacks required"):
        model_kwargs_from_reference_config({"vocab_size": 3})


def test_compare_semantics():
    assert compare("x", torch.tensor([1.0 + 1e-6]), torch.tensor([1.0])).ok
    assert not compare("x", torch.tensor([1.001]), torch.tensor([1.0])).ok
    assert not compare("i", torch.tensor([1, 2]), torch.tensor([1, 3])).ok
    assert not compare("s", torch.zeros(2), torch.zeros(3)).ok


@pytest.mark.parametrize("name", FILES)
def test_shipped_files_are_compact_plain_data(name):
    path = golden_path(name)
    assert os.path.getsize(path) < 3.5e6
    data = torch.load(path, weights_only=True)  # plain data: no code, no allow-list
    assert data["meta"]["compact"]["source"] == name
    assert data["meta"]["config"]["forward_dtype"] == "float64"
    assert data["train_steps"][-1]["z_H"].dtype == torch.float64
    assert "z_H" not in data["train_steps"][0] and "z_H" in data["eval_steps"][-1]


@pytest.mark.parametrize("name", FILES)
def test_shipped_files_are_derived_from_the_shared_ones(name):
    """Each shipped file equals make_compact.py's output for the full file, whose SHA-256 it
    records (so a regenerated full file shows up here)."""
    full_path = golden_path(name, SHARED)
    shipped = load_golden(golden_path(name))
    with open(full_path, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    assert shipped["meta"]["compact"]["source_sha256"] == sha, (
        f"{full_path} changed: rerun python tests/golden/make_compact.py")
    derived = _make_compact().compact(load_golden(full_path), name, sha)

    def same(a, b, where="golden"):
        assert type(a) is type(b) or (isinstance(a, str) and isinstance(b, str)), where
        if isinstance(a, torch.Tensor):
            assert a.dtype == b.dtype and torch.equal(a, b), where
        elif isinstance(a, dict):
            assert a.keys() == b.keys(), where
            for k in a:
                same(a[k], b[k], f"{where}[{k!r}]")
        elif isinstance(a, (list, tuple)):
            assert len(a) == len(b), where
            for i, (x, y) in enumerate(zip(a, b)):
                same(x, y, f"{where}[{i}]")
        else:
            assert a == b, where

    same(shipped, derived)


@pytest.mark.slow
def test_replay_cli_exit_codes(tmp_path):
    paths = [golden_path(f) for f in FILES]
    ok = subprocess.run([sys.executable, "-m", "trm.interop.replay", *paths], cwd=REPO,
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout[-2000:] + ok.stderr[-2000:]
    assert "PARITY OK" in ok.stdout and "max|diff|" in ok.stdout
    golden = load_golden(paths[0])
    key = "model.inner.lm_head.weight"
    golden["state_dict"] = dict(golden["state_dict"])
    golden["state_dict"][key] = golden["state_dict"][key] + 1e-3
    bad = tmp_path / "bad.pt"
    torch.save(golden, bad)
    out = subprocess.run([sys.executable, "-m", "trm.interop.replay", str(bad)], cwd=REPO,
                         capture_output=True, text=True)
    assert out.returncode == 1 and "PARITY FAILED" in out.stdout and "FAIL" in out.stdout
