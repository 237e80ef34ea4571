"""trm: Tiny Recursive Models for research at scale (PyTorch, PyTorch/XLA, gin).

Importing ``trm`` registers the built-in components (mixers, cores, halting policies,
losses, optimizers, schedules, EMA); see ``python -m trm.registry``.
"""

__version__ = "0.1.0"

from trm import registry  # noqa: E402
from trm.registry import REGISTRY, register  # noqa: E402
from trm import evaluators, halting, losses, models, optim  # noqa: E402,F401

__all__ = ["REGISTRY", "register", "registry", "evaluators", "halting", "losses", "models", "optim",
           "__version__"]
