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
