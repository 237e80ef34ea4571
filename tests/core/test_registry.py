import os
import subprocess
import sys
import textwrap

import gin
import pytest
import torch

import trm.gin_edge  # noqa: F401 - exposes registered components to gin
from trm import registry
from trm.registry import (REGISTRY, DuplicateComponentError, Registry, UnknownComponentError,
                          register)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_builtin_kinds_and_names():
    for kind in ("mixer", "core", "halting", "loss", "optimizer", "schedule", "ema", "position"):
        assert REGISTRY.names(kind), kind
    assert REGISTRY.names("mixer") == ["attention", "mlp"]
    assert set(REGISTRY.names("halting")) == {"halt_only", "halt_continue", "none"}
    assert {"adam_atan2", "adamw", "sign_sgd"} <= set(REGISTRY.names("optimizer"))


def test_duplicate_name_raises():
    @register("mixer", "dup_test")
    class A:
        """A."""

    with pytest.raises(DuplicateComponentError, match="already registered"):
        @register("mixer", "dup_test")
        class B:
            """B."""


def test_unknown_name_lists_registered_names():
    with pytest.raises(UnknownComponentError) as err:
        REGISTRY.get("mixer", "convolution")
    assert "attention, mlp" in str(err.value)
    with pytest.raises(UnknownComponentError, match="Registered kinds"):
        REGISTRY.get("no_such_kind", "x")


def test_registration_returns_object_unchanged_and_gin_reaches_it():
    @register("loss", "double_ce")
    def double_ce(logits, labels, factor=2.0):
        """Twice the softmax CE."""
        return factor * logits.sum()

    # plain Python: exactly as written, no gin involvement
    assert double_ce(torch.ones(2), None) == 4.0
    gin.parse_config("loss.double_ce.factor = 3.0")
    assert double_ce(torch.ones(2), None) == 4.0
    assert gin.get_configurable("loss.double_ce")(torch.ones(2), None) == 6.0


def test_restore_forgets_test_components_in_gin_too():
    snap = REGISTRY.snapshot()

    @register("mixer", "temporary_mixer")
    class Temp:
        """Temp."""

    assert ("mixer", "temporary_mixer") in REGISTRY
    REGISTRY.restore(snap)
    assert ("mixer", "temporary_mixer") not in REGISTRY
    with pytest.raises(ValueError):
        gin.parse_config("mixer.temporary_mixer.x = 1")

    @register("mixer", "temporary_mixer")  # can be registered again after a restore
    class Temp2:
        """Temp2."""

        def __init__(self, y=0):
            self.y = y

    # gin checks bindings against the component registered now, not the first one
    gin.parse_config("mixer.temporary_mixer.y = 1")
    with pytest.raises(ValueError, match="doesn't have a parameter named 'x'"):
        gin.parse_config("mixer.temporary_mixer.x = 1")
    assert gin.get_configurable("mixer.temporary_mixer")().y == 1
    gin.clear_config()
    REGISTRY.restore(snap)


def test_names_must_be_snake_case():
    with pytest.raises(registry.RegistryError, match="snake_case"):
        Registry().add("mixer", "BadName", object())


def test_cli_lists_every_component():
    out = subprocess.run([sys.executable, "-m", "trm.registry"], capture_output=True, text=True,
                         check=True, cwd=REPO).stdout
    for comp in REGISTRY:
        assert comp.name in out
    assert "Halt when the halt logit is positive" in out


PLUGIN_SETUP = """
from setuptools import setup
setup(name="trm-plugin-demo", version="0.0.1", py_modules=["trm_plugin_demo"],
      entry_points={"trm.plugins": ["demo = trm_plugin_demo"]})
"""

PLUGIN_MODULE = '''
"""A third-party trm plugin: a sequence mixer and a halting policy."""
import torch
from torch import nn

from trm.halting import HaltingPolicy
from trm.models.layers import rms_norm
from trm.registry import register


@register("mixer", "mean_pool")
class MeanPoolMixer(nn.Module):
    """Adds the sequence mean to every position (a plugin mixer)."""

    def __init__(self, hidden_size, seq_len, expansion=4.0, num_heads=None, rms_norm_eps=1e-5,
                 scale=1.0):
        super().__init__()
        self.scale = scale
        self.eps = rms_norm_eps

    def forward(self, x, cos_sin=None):
        return rms_norm(x + self.scale * x.mean(dim=1, keepdim=True), self.eps)


@register("halting", "always_two")
class AlwaysTwo(HaltingPolicy):
    """Halts after two steps (a plugin policy)."""

    def __call__(self, *, q_halt, q_continue, steps, max_steps, training):
        return steps >= min(2, max_steps)
'''

PLUGIN_GIN = """
model.trm.vocab_size = 6
model.trm.seq_len = 5
model.trm.hidden_size = 8
model.trm.num_heads = 2
model.trm.num_layers = 1
model.trm.H_cycles = 1
model.trm.L_cycles = 1
model.trm.mixer = @mixer.mean_pool
mixer.mean_pool.scale = 0.5
model.trm.halting = @halting.always_two()
model.trm.halt_max_steps = 4
"""

PLUGIN_RUN = """
import gin, torch
import trm.gin_edge
from trm.registry import load_plugins, REGISTRY
loaded = load_plugins()
assert loaded == {"demo": "trm_plugin_demo"}, loaded
gin.parse_config_file(r"%s")
model = gin.get_configurable("model.trm")()
assert type(model.core.net.layers[0].mixer).__name__ == "MeanPoolMixer"
assert model.core.net.layers[0].mixer.scale == 0.5
batch = {"inputs": torch.ones(3, 5, dtype=torch.int32), "labels": torch.ones(3, 5, dtype=torch.int32),
         "puzzle_identifiers": torch.zeros(3, dtype=torch.int32)}
carry = model.initial_carry(batch)
for _ in range(2):
    carry, out = model(carry, batch)
assert carry.halted.all() and carry.steps.tolist() == [2, 2, 2]
print("PLUGIN OK", REGISTRY.component("mixer", "mean_pool").description)
"""


@pytest.mark.slow
def test_installed_plugin_package_is_loaded_and_usable_from_gin(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "setup.py").write_text(PLUGIN_SETUP)
    (src / "trm_plugin_demo.py").write_text(textwrap.dedent(PLUGIN_MODULE))
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--target", str(target), str(src)],
                   check=True, capture_output=True, text=True)
    assert list(target.glob("trm_plugin_demo-0.0.1.dist-info/entry_points.txt"))
    gin_file = tmp_path / "plugin.gin"
    gin_file.write_text(PLUGIN_GIN)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(target), REPO]))
    out = subprocess.run([sys.executable, "-c", PLUGIN_RUN % gin_file], env=env, cwd=tmp_path,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "PLUGIN OK Adds the sequence mean" in out.stdout
    listing = subprocess.run([sys.executable, "-m", "trm.registry", "--kind", "mixer"], env=env,
                             cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert "mean_pool" in listing


def test_broken_plugin_reports_distribution(tmp_path, monkeypatch):
    dist = tmp_path / "broken_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[trm.plugins]\nbroken = no_such_module_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(registry.RegistryError, match="broken-plugin"):
        registry.load_plugins()
