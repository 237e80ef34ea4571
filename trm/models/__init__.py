"""TRM model family: layers, sequence mixers, position encodings, recursion cores, ACT model."""

from trm.models.cores import (GRADIENT_MODES, ReasoningNet, SeparateNetworksCore,
                              SingleLatentCore, TRMCore)
from trm.models.layers import (Attention, CastedEmbedding, CastedLinear, SwiGLU, apply_rotary,
                               rms_norm, rotary_cos_sin, swiglu_inner_size, trunc_normal_init_)
from trm.models.mixers import (AttentionMixer, Block, LearnedPositions, MLPMixer, NoPositions,
                               RotaryPositions)
from trm.models.puzzle_embedding import PuzzleEmbedding
from trm.models.trm import TRM, Carry

__all__ = [
    "Attention", "AttentionMixer", "Block", "Carry", "CastedEmbedding", "CastedLinear",
    "GRADIENT_MODES", "LearnedPositions", "MLPMixer", "NoPositions", "PuzzleEmbedding",
    "ReasoningNet", "RotaryPositions", "SeparateNetworksCore", "SingleLatentCore", "SwiGLU",
    "TRM", "TRMCore", "apply_rotary", "rms_norm", "rotary_cos_sin", "swiglu_inner_size",
    "trunc_normal_init_",
]
