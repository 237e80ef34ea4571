"""analysis.dashboard: a TensorBoard logdir where each run has its own name and HParams data,
read back with TensorBoard's own multiplexer and hparams plugin parsing."""

import os

import pytest

from analysis import dashboard
from analysis import testing as synth


def _load(logdir):
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
    from tensorboard.plugins.hparams import metadata

    mux = EventMultiplexer(size_guidance={"scalars": 0, "tensors": 0})
    mux.AddRunsFromDirectory(logdir)
    mux.Reload()
    sessions = {}
    for run, tags in mux.PluginRunToTagToContent(metadata.PLUGIN_NAME).items():
        content = tags[metadata.SESSION_START_INFO_TAG]
        info = metadata.parse_session_start_info_plugin_data(content)
        sessions[run] = info
    return mux, sessions


def _value(v):
    return getattr(v, v.WhichOneof("kind"))


def test_every_run_is_a_named_hparams_session(tmp_path):
    from trm.run.tensorboard import SummaryWriterSync

    root = tmp_path / "study"
    synth.write_tiny_study(str(root), seeds=(0, 1), train_steps=20, experiments=["e2_2_tn"])
    run = root / "e2_2_tn" / "t3_n6_s0"
    cli = SummaryWriterSync(str(run), subdir="tb/eval_cli/step_000000020_ema")
    cli.scalars({"eval_cli/exact_accuracy": 0.5}, 20)
    cli.close()
    logdir = tmp_path / "board"
    assert dashboard.build(str(root), str(logdir)) == 10
    mux, sessions = _load(str(logdir))
    assert sorted(sessions) == sorted(f"e2_2_tn/t{T}_n{n}_s{s}" for T, n in
                                      ((2, 2), (2, 6), (3, 4), (3, 6), (4, 6)) for s in (0, 1))
    info = sessions["e2_2_tn/t3_n6_s1"]
    hp = {k: _value(v) for k, v in info.hparams.items()}
    assert (hp["T"], hp["n"], hp["seed"], hp["mixer"]) == (3, 6, 1, "mlp")
    assert hp["ema"] is True and hp["experiment"] == "e2_2_tn" and hp["status"] == "completed"
    assert info.group_name == "e2_2_tn/t3_n6_s1" and info.start_time_secs > 0
    # the training curves under the run's own name; trm.eval results beside them
    assert "train/lm_loss" in mux.GetAccumulator("e2_2_tn/t3_n6_s0").Tags()["scalars"]
    assert mux.GetAccumulator("e2_2_tn/t3_n6_s0/eval_cli/step_000000020_ema").Tags()[
        "scalars"] == ["eval_cli/exact_accuracy"]
    # rebuilding replaces the logdir it made; another folder is never overwritten
    assert dashboard.build(str(root), str(logdir), include="*t2*") == 4
    assert sorted(_load(str(logdir))[1]) == ["e2_2_tn/t2_n2_s0", "e2_2_tn/t2_n2_s1",
                                            "e2_2_tn/t2_n6_s0", "e2_2_tn/t2_n6_s1"]
    with pytest.raises(dashboard.CliError, match="not empty"):
        dashboard.build(str(root), str(root))


def test_a_remote_root_is_copied(tmp_path):
    import fsspec
    import uuid

    src = tmp_path / "src"
    synth.write_minimal_study(str(src), train_steps=10)
    fs = fsspec.filesystem("memory")
    name = f"/board{uuid.uuid4().hex}"
    for d, _, files in os.walk(src):
        for f in files:
            rel = os.path.relpath(os.path.join(d, f), src).replace(os.sep, "/")
            fs.pipe_file(f"{name}/{rel}", open(os.path.join(d, f), "rb").read())
    logdir = tmp_path / "board"
    assert dashboard.build(f"memory://{name}", str(logdir)) == 2
    mux, sessions = _load(str(logdir))
    assert sorted(sessions) == ["t2_n2_s0", "t3_n6_s0"]
    files = [os.path.join(d, f) for d, _, fs_ in os.walk(logdir) for f in fs_]
    assert not any(os.path.islink(f) for f in files)
    assert "eval/exact_accuracy" in mux.GetAccumulator("t3_n6_s0").Tags()["scalars"]
    fs.rm(name, recursive=True)


def test_trainer_writer_logs_hparams(tmp_path):
    """SummaryWriterSync.hparams: what a trainer calls to make its own run an HParams
    session (no TensorFlow needed)."""
    from trm.run.tensorboard import SummaryWriterSync

    w = SummaryWriterSync(str(tmp_path / "run"))
    w.hparams({"T": 3, "lr": 1e-4, "ema": False, "mixer": "mlp", "missing": None}, "run")
    w.scalars({"train/lm_loss": 1.0}, 5)
    w.close()
    _, sessions = _load(str(tmp_path / "run"))
    hp = {k: _value(v) for k, v in sessions["tb"].hparams.items()}
    assert hp == {"T": 3.0, "lr": 1e-4, "ema": False, "mixer": "mlp", "missing": "None"}
