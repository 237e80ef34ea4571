"""gin at the edge: build_train_config() returns plain Python (registered components with
their bindings applied); it builds the same model after gin is cleared."""

import functools

import gin
import torch

from trm import gin_edge
from trm.experiment import DataShape, build_model
from trm.models import TRM


def _no_gin(value):
    if isinstance(value, functools.partial):
        assert "gin" not in type(value.func).__module__ and "gin" not in value.func.__module__
        for v in value.keywords.values():
            _no_gin(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _no_gin(v)
    else:
        assert "gin" not in type(value).__module__, value


def test_config_is_plain_python_and_builds_the_same_model_without_gin():
    gin_edge.clear()
    gin_edge.parse(["e2_3_attention.gin"], ["HIDDEN_SIZE=32", "NUM_HEADS=2", "H_CYCLES=1"])
    cfg = gin_edge.build_train_config()
    shape = DataShape(11, 81, 1)
    torch.manual_seed(0)
    with_gin = build_model(cfg, shape, init_from_reference=False)
    for field in ("model", "loss", "optimizer", "sparse_optimizer", "schedule", "ema"):
        _no_gin(getattr(cfg, field))
    assert cfg.model.func is TRM and cfg.model.keywords["hidden_size"] == 32
    gin_edge.clear()
    assert not gin.config_str().strip()
    torch.manual_seed(0)
    without_gin = build_model(cfg, shape, init_from_reference=False)
    assert type(without_gin.core.net.layers[0].mixer) is type(with_gin.core.net.layers[0].mixer)
    for (k, a), (_, b) in zip(with_gin.state_dict().items(), without_gin.state_dict().items()):
        assert torch.equal(a, b), k
    opt = cfg.optimizer(without_gin.parameters(), lr=1e-3)
    assert opt.defaults["weight_decay"] == 1.0 or opt.defaults["weight_decay"] >= 0
