"""One error base class: every error a user can fix is a TrmError (and still the builtin it
was), and the entry points print it as one line."""

import os
import subprocess
import sys

import pytest

from trm.errors import TrmError, one_line

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_every_user_error_class_is_a_trm_error_and_keeps_its_builtin():
    from trm.data import DataError
    from trm.eval import EvalError
    from trm.experiment import TrainingError
    from trm.gin_edge import ConfigError
    from trm.preflight import PreflightError
    from trm.registry import RegistryError, UnknownComponentError
    from trm.run.checkpoints import CheckpointError, UnsafeCheckpointError
    from trm.run.lock import WorkdirLockedError
    from trm.run.record import ConfigMismatchError, RunRecordError
    from trm.run.storage import UntrustedFileError
    from trm.runtime import DeviceError
    pairs = [(DataError, ValueError), (EvalError, RuntimeError), (TrainingError, RuntimeError),
             (ConfigError, ValueError), (PreflightError, ValueError), (RegistryError, Exception),
             (UnknownComponentError, KeyError), (CheckpointError, RuntimeError),
             (UnsafeCheckpointError, RuntimeError), (WorkdirLockedError, RuntimeError),
             (ConfigMismatchError, ValueError), (RunRecordError, ValueError),
             (UntrustedFileError, PermissionError), (DeviceError, RuntimeError)]
    for cls, builtin in pairs:
        assert issubclass(cls, TrmError) and issubclass(cls, builtin), cls


def test_one_line_drops_gin_context():
    err = ValueError("bad value\n  In call to configurable 'trm' (<class 'TRM'>)")
    assert one_line(err) == "bad value"


@pytest.mark.parametrize("tool,args,expected", [
    ("trm.train", ["--gin_file=nope.gin", "--workdir=/tmp/x"], "Gin file 'nope.gin' not found"),
    ("trm.eval", ["--workdir=/nonexistent/run"], "trm.eval: "),
    ("trm.bench", ["--gin_file=quickstart.gin", "--gin_param=HIDDEN_SIZE=63", "--steps=1"],
     "hidden_size 63 is not divisible"),
])
def test_entry_points_print_one_line(tool, args, expected, tmp_path):
    out = subprocess.run([sys.executable, "-m", tool, *args], capture_output=True, text=True,
                         cwd=REPO, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode != 0
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    assert expected in out.stderr.strip().splitlines()[-1]
