"""Golden files are data: replay never runs code from one and names a file that is not one."""

import os
import subprocess
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _Marker:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _replay(path):
    return subprocess.run([sys.executable, "-m", "trm.interop.replay", str(path)],
                          capture_output=True, text=True, cwd=REPO, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_golden_file_with_code_is_refused(tmp_path):
    marker = tmp_path / "PWNED"
    golden = tmp_path / "evil_golden.pt"
    torch.save({"meta": {"config": {}}, "state_dict": {}, "train_batches": [],
                "train_steps": [], "x": _Marker(str(marker))}, golden)
    proc = _replay(golden)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert str(golden) in last and "run code" in last
    assert not marker.exists()


def test_file_that_is_not_a_golden_file(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("not a torch file")
    proc = _replay(text)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "is not a golden file" in proc.stderr.strip().splitlines()[-1]
    plain = tmp_path / "weights.pt"
    torch.save({"w": torch.ones(2)}, plain)
    proc = _replay(plain)
    assert proc.returncode == 2 and "lacks meta" in proc.stderr


def _golden_with(tmp_path, name, **changes):
    golden = torch.load(os.path.join(REPO, "tests", "golden", "trm_tiny_mlp.pt"),
                        weights_only=False)
    for key, value in changes.items():
        if value is None:
            golden.pop(key)
        else:
            golden[key] = value
    path = tmp_path / name
    torch.save(golden, path)
    return path


def test_golden_files_with_a_broken_structure_are_one_line(tmp_path):
    """Issue #21: a replay file without config (or with other structure) names the problem."""
    variants = {
        "no_config.pt": ({"meta": {"note": "no config"}}, "meta holds no config"),
        "config_list.pt": ({"meta": {"config": [1, 2]}}, "meta holds no config"),
        "bad_field.pt": (None, "wrong type"),
        "short.pt": ({"train_steps": []}, "same, non-zero length"),
    }
    for name, (changes, needle) in variants.items():
        if changes is None:  # a config field that is not a number
            golden = torch.load(os.path.join(REPO, "tests", "golden", "trm_tiny_mlp.pt"),
                                weights_only=False)
            golden["meta"]["config"]["hidden_size"] = "wide"
            path = tmp_path / name
            torch.save(golden, path)
        else:
            path = _golden_with(tmp_path, name, **changes)
        proc = _replay(path)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        last = proc.stderr.strip().splitlines()[-1]
        assert needle in last, (name, last)


def test_init_from_reference_with_a_non_weights_file_is_one_line(tmp_path):
    import pytest

    from trm.interop.reference import ReferenceImportError, load_reference_checkpoint
    from trm.models import TRM
    model = TRM(vocab_size=6, seq_len=4, hidden_size=16, num_heads=2, num_layers=1,
                H_cycles=1, L_cycles=1, halt_max_steps=2, forward_dtype="float32")
    marker = tmp_path / "PWNED"
    text = tmp_path / "notes.txt"
    text.write_text("not weights")
    listed = tmp_path / "list.pt"
    torch.save([torch.ones(2)], listed)
    code = tmp_path / "code.pt"
    torch.save({"w": _Marker(str(marker))}, code)
    fifo = tmp_path / "fifo.pt"
    os.mkfifo(fifo)
    for path, needle in ((text, "not a readable checkpoint"), (listed, "not a weights file"),
                         (code, "run code"), (fifo, "not a regular file"),
                         (tmp_path / "missing.pt", "Cannot read")):
        with pytest.raises(ReferenceImportError) as e:
            load_reference_checkpoint(model, str(path))
        assert needle in str(e.value) and str(path) in str(e.value), str(e.value)
        assert "\n" not in str(e.value)
    assert not marker.exists()
