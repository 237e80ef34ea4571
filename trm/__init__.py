"""trm: Tiny Recursive Models for research at scale (PyTorch, PyTorch/XLA, gin).

Importing ``trm`` registers the built-in components (mixers, cores, halting policies,
losses, optimizers, schedules, EMA); see ``python -m trm.registry``.
"""

__version__ = "0.1.0"

import os as _os

# TensorFlow only parses records in trm.data (and may be imported by TensorBoard's writer):
# keep its start-up chatter out of the logs unless the user asked for it.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from trm import registry
from trm.registry import REGISTRY, register
from trm import evaluators, halting, losses, models, optim

__all__ = ["REGISTRY", "register", "registry", "evaluators", "halting", "losses", "models", "optim",
           "__version__"]
