"""Progress inside a real training run: the evaluation reports its batches in a log (not a
terminal), and --noprogress silences it."""

import os
import subprocess
import sys

from train_helpers import tiny_bindings


def _train(workdir, data, *extra):
    args = [sys.executable, "-m", "trm.train", "--gin_file=cpu_e1_1_baseline.gin",
            f"--workdir={workdir}", *extra,
            *[f"--gin_param={b}" for b in tiny_bindings(data, steps=4, extra=[
                "EVAL_EVERY=2", "EVAL_BATCH_SIZE=8"])]]
    return subprocess.run(args, capture_output=True, text=True, timeout=600, check=False,
                          env=dict(os.environ, OMP_NUM_THREADS="1", TRM_PROGRESS_EVERY_S="0"))


def test_evaluation_progress_in_a_log(sudoku4, tmp_path):
    out = _train(tmp_path / "a", sudoku4)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "eval step 2: 6/6 batches (100%)" in out.stderr  # 48 test puzzles / 8
    assert "eval step 4: 6/6 batches (100%)" in out.stderr
    quiet = _train(tmp_path / "b", sudoku4, "--noprogress")
    assert quiet.returncode == 0 and "batches (" not in quiet.stderr


def test_every_run_logs_its_hparams_for_the_dashboard(sudoku4, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata
    out = _train(tmp_path / "h", sudoku4, "--noprogress")
    assert out.returncode == 0, out.stderr[-3000:]
    acc = EventAccumulator(str(tmp_path / "h" / "tb"))
    acc.Reload()
    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
    info = metadata.parse_session_start_info_plugin_data(
        content[metadata.SESSION_START_INFO_TAG])
    assert info.group_name == str(tmp_path / "h")
    assert info.hparams["HIDDEN_SIZE"].number_value == 32
    assert info.hparams["FORWARD_DTYPE"].string_value == "float32"
