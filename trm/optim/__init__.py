"""Optimizers, LR schedules and EMA (registered kinds ``optimizer``, ``schedule``, ``ema``)."""

import torch

from trm.optim.adam_atan2 import AdamATan2
from trm.optim.ema import EMA
from trm.optim.schedules import constant_with_warmup, cosine_with_warmup
from trm.optim.sign_sgd import SignSGD
from trm.registry import REGISTRY

REGISTRY.add("optimizer", "adamw", torch.optim.AdamW,
             "torch.optim.AdamW (decoupled weight decay Adam)")

__all__ = ["AdamATan2", "EMA", "SignSGD", "constant_with_warmup", "cosine_with_warmup"]
