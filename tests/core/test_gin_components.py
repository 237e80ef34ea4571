"""Every registered mixer, halting policy, core and token loss is reachable from gin."""

import inspect

import gin
import pytest
import torch

import trm.gin_edge  # noqa: F401 - the edge exposes the registry to gin
from trm.registry import REGISTRY

BASE = """
model.trm.vocab_size = 6
model.trm.seq_len = 5
model.trm.num_puzzle_identifiers = 2
model.trm.hidden_size = 16
model.trm.num_heads = 2
model.trm.num_layers = 1
model.trm.H_cycles = 2
model.trm.L_cycles = 1
model.trm.halt_max_steps = 2
model.trm.puzzle_emb_len = 1
"""


def one_step(config: str):
    gin.parse_config(BASE + config)
    torch.manual_seed(0)
    model = gin.get_configurable("model.trm")()
    loss_head = gin.get_configurable("loss.act_loss")()
    batch = {"inputs": torch.randint(1, 6, (3, 5), dtype=torch.int32),
             "labels": torch.randint(1, 6, (3, 5), dtype=torch.int32),
             "puzzle_identifiers": torch.tensor([0, 1, 1], dtype=torch.int32)}
    model.train()
    carry = model.initial_carry(batch)
    carry, outputs = model(carry, batch)
    loss, metrics, _ = loss_head(carry, outputs)
    loss.backward()
    opt = gin.get_configurable("optimizer.adam_atan2")(model.parameters(), lr=1e-3)
    opt.step()
    assert torch.isfinite(loss)
    return model, loss_head


@pytest.mark.parametrize("mixer", REGISTRY.names("mixer"))
def test_each_mixer(mixer):
    model, _ = one_step(f"model.trm.mixer = @mixer.{mixer}")
    assert type(model.core.net.layers[0].mixer) is REGISTRY.get("mixer", mixer)


@pytest.mark.parametrize("halting", REGISTRY.names("halting"))
def test_each_halting_policy(halting):
    model, _ = one_step(f"model.trm.halting = @halting.{halting}()\n"
                        f"halting.{halting}.exploration_prob = 0.5")
    assert type(model.halting) is REGISTRY.get("halting", halting)
    assert model.halting.exploration_prob == 0.5


@pytest.mark.parametrize("core", REGISTRY.names("core"))
def test_each_core(core):
    model, _ = one_step(f"model.trm.core = @core.{core}")
    assert type(model.core) is REGISTRY.get("core", core)


@pytest.mark.parametrize("position", REGISTRY.names("position"))
def test_each_position(position):
    one_step(f"model.trm.positions = @position.{position}\nmodel.trm.mixer = @mixer.attention")


@pytest.mark.parametrize("loss", [n for n in REGISTRY.names("loss") if n != "act_loss"])
def test_each_token_loss(loss):
    _, head = one_step(f"loss.act_loss.lm_loss = @loss.{loss}")
    # gin's wrapper -> the edge's stand-in for the name -> the registered function
    assert inspect.unwrap(head.lm_loss) is REGISTRY.get("loss", loss)


def test_unknown_component_reference_is_an_error():
    with pytest.raises(ValueError, match="No configurable matching"):
        gin.parse_config("model.trm.mixer = @mixer.conv")
