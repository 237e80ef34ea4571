"""hparams.json is written from the resolved TrainConfig and macro values, not gin's tables."""

import functools
import json

from analysis import hparams as analysis_hparams
from trm import gin_edge
from trm.experiment import TrainConfig
from trm.hparams import hparams
from trm.models import TRM
from trm.registry import REGISTRY


def _shipped(name, *bindings):
    gin_edge.clear()
    gin_edge.parse([name], list(bindings))
    try:
        return gin_edge.build_train_config(), gin_edge.macro_values()
    finally:
        gin_edge.clear()


def test_a_shipped_experiment_round_trips_through_analysis():
    cfg, macros = _shipped("e2_2_t3_n6.gin", "HIDDEN_SIZE=96", "LR=3e-4")
    out = json.loads(json.dumps(hparams(cfg, macros)))  # plain JSON
    assert out["macros"]["HIDDEN_SIZE"] == 96 and out["macros"]["LR"] == 3e-4
    b = out["bindings"]
    assert b["trm.TrainConfig.model"] == "@model.trm"
    assert b["model.trm.hidden_size"] == 96 and b["trm.TrainConfig.lr"] == 3e-4
    assert b["model.trm.H_cycles"] == 3 and b["model.trm.L_cycles"] == 6
    # fields the config leaves at their defaults are recorded too: the effective values
    assert b["trm.TrainConfig.keep_checkpoints"] == TrainConfig.keep_checkpoints
    row = analysis_hparams.extract_hparams(analysis_hparams.from_hparams_json(out))
    assert (row["T"], row["n"], row["hidden_size"]) == (3, 6, 96)


def test_the_record_needs_no_gin_state():
    cfg, macros = _shipped("e2_3_mlp.gin")
    gin_edge.clear()
    first = hparams(cfg, macros)
    assert hparams(cfg, macros) == first and first["bindings"]["trm.TrainConfig.model"] == "@model.trm"


def test_factories_objects_and_unknown_values():
    class Opaque:
        def __repr__(self):
            return "Opaque()"

    halting = REGISTRY.get("halting", "halt_only")
    cfg = TrainConfig(model=functools.partial(TRM, hidden_size=32, mixer=functools.partial(
        TRM, num_heads=2), halting=halting()), evaluators=(Opaque(),),
        dataset_builder_args={"n": (1, 2)})
    b = hparams(cfg)["bindings"]
    assert b["trm.TrainConfig.model"] == "@model.trm" and b["model.trm.hidden_size"] == 32
    assert b["model.trm.num_heads"] == 2  # arguments of a nested factory
    assert b["model.trm.halting"] == "@halting.halt_only()"  # an object built by a component
    assert b["trm.TrainConfig.evaluators"] == ["Opaque()"]
    assert b["trm.TrainConfig.dataset_builder_args"] == {"n": [1, 2]}
    assert b["trm.TrainConfig.optimizer"] == "@optimizer.adam_atan2"
    assert hparams(cfg)["macros"] == {}
