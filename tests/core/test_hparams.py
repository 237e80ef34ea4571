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


def test_a_component_used_twice_with_other_arguments_is_scoped():
    """The second use of a component with a conflicting argument is written as a scoped binding
    (the TrainConfig field as scope), so neither use's arguments are lost; analysis reads the
    unscoped (first) use for its columns."""
    adam = REGISTRY.get("optimizer", "adam_atan2")
    cfg = TrainConfig(model=functools.partial(TRM, hidden_size=32),
                      optimizer=functools.partial(adam, weight_decay=0.1, betas=(0.9, 0.95)),
                      sparse_optimizer=functools.partial(adam, weight_decay=0.5))
    b = json.loads(json.dumps(hparams(cfg)))["bindings"]
    assert b["trm.TrainConfig.optimizer"] == "@optimizer.adam_atan2"
    assert b["optimizer.adam_atan2.weight_decay"] == 0.1
    assert b["optimizer.adam_atan2.betas"] == [0.9, 0.95]
    assert b["trm.TrainConfig.sparse_optimizer"] == "@sparse_optimizer/optimizer.adam_atan2"
    assert b["sparse_optimizer/optimizer.adam_atan2.weight_decay"] == 0.5
    # the same arguments again (or a subset that agrees): no scope needed
    cfg = TrainConfig(optimizer=functools.partial(adam, weight_decay=0.1),
                      sparse_optimizer=functools.partial(adam, weight_decay=0.1))
    b = hparams(cfg)["bindings"]
    assert b["trm.TrainConfig.sparse_optimizer"] == "@optimizer.adam_atan2"
    assert not any("/" in key for key in b)
    # a third conflicting use within one field gets its own scope
    cfg = TrainConfig(evaluators=(functools.partial(adam, lr=1.0), functools.partial(adam, lr=2.0),
                                  functools.partial(adam, lr=3.0)))
    b = hparams(cfg)["bindings"]
    assert b["trm.TrainConfig.evaluators"] == [
        "@optimizer.adam_atan2", "@evaluators/optimizer.adam_atan2",
        "@evaluators_2/optimizer.adam_atan2"]
    assert [b["optimizer.adam_atan2.lr"], b["evaluators/optimizer.adam_atan2.lr"],
            b["evaluators_2/optimizer.adam_atan2.lr"]] == [1.0, 2.0, 3.0]
    row = analysis_hparams.from_hparams_json(hparams(cfg))
    assert not row.errors
