"""The TRM model with adaptive computation time (TRM_SPEC.md sections 2.5-4).

``TRM`` is an ordinary ``nn.Module``; gin is not needed to build it::

    from trm.models import TRM, MLPMixer
    model = TRM(vocab_size=11, seq_len=81, mixer=MLPMixer, positions="none")
    carry = model.initial_carry(batch)
    carry, outputs = model(carry, batch)       # one ACT (supervision) step

One call is one ACT step. The carry holds the latents, the step counters, which rows halted,
and the data each row is working on. Rows that halted on the previous call restart from
``H_init``/``L_init`` with the new batch's row in that slot; the other rows keep their
puzzle, so shapes never change (no data-dependent Python control flow).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from trm.halting import HaltingPolicy, HaltOnly
from trm.models.cores import TRMCore
from trm.models.layers import CastedEmbedding, CastedLinear, to_dtype, trunc_normal_init_
from trm.models.mixers import AttentionMixer, Block
from trm.models.puzzle_embedding import PuzzleEmbedding
from trm.registry import REGISTRY, register

Batch = Dict[str, torch.Tensor]


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    """Whether ``fn`` takes keyword ``name`` (or ``**kwargs``)."""
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


@dataclasses.dataclass
class Carry:
    """State carried across ACT steps (and across optimizer steps in training)."""

    z_H: torch.Tensor           # [B, S, D] answer state y
    z_L: torch.Tensor           # [B, S, D] latent z
    steps: torch.Tensor         # [B] int32, ACT steps taken by each row's current puzzle
    halted: torch.Tensor        # [B] bool, the row finished and is replaced next call
    current_data: Batch         # the batch rows each slot is working on

    def state_dict(self) -> Dict[str, torch.Tensor]:
        out = {"z_H": self.z_H, "z_L": self.z_L, "steps": self.steps, "halted": self.halted}
        out.update({f"data.{k}": v for k, v in self.current_data.items()})
        return out

    @classmethod
    def from_state_dict(cls, state: Dict[str, torch.Tensor]) -> "Carry":
        data = {k[len("data."):]: v for k, v in state.items() if k.startswith("data.")}
        return cls(state["z_H"], state["z_L"], state["steps"], state["halted"], data)

    def to(self, device) -> "Carry":
        return Carry(self.z_H.to(device), self.z_L.to(device), self.steps.to(device),
                     self.halted.to(device), {k: v.to(device) for k, v in self.current_data.items()})


def _resolve(kind: str, value: Union[str, Callable[..., Any]]) -> Callable[..., Any]:
    return REGISTRY.get(kind, value) if isinstance(value, str) else value


def _check_sizes(**sizes) -> None:
    """One-line errors for sizes that are not positive integers, naming the gin macro."""
    for param, (value, low, macro) in sizes.items():
        if value is None and param == "eval_halt_max_steps":
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"model.trm.{param} ({macro}) must be an integer, got "
                             f"{value!r} ({type(value).__name__}); write it without quotes.")
        if value < low:
            raise ValueError(f"model.trm.{param} ({macro}) must be >= {low}, got {value}.")


@register("model", "trm")
class TRM(nn.Module):
    """Tiny Recursive Model with ACT halting.

    Args:
        vocab_size: number of token ids.
        seq_len: tokens per example (without the puzzle-embedding prefix).
        num_puzzle_identifiers: rows of the puzzle-embedding table.
        hidden_size: model width D.
        num_layers: blocks in the (each) reasoning network (reference ``L_layers``).
        expansion: SwiGLU expansion (both the channel MLP and the MLP mixer).
        num_heads: attention heads (also sets the RoPE head dim).
        mixer: sequence-mixer class or registered name (``"attention"``, ``"mlp"``).
        positions: position-encoding class or name (``"rope"``, ``"learned"``, ``"none"``).
        core: recursion-core class or name (``"trm"``, ``"trm_separate"``,
            ``"trm_single_latent"``); ``H_cycles``/``L_cycles``/``gradient`` go to it.
        H_cycles: T, recursion cycles per ACT step.
        L_cycles: n, latent updates per cycle.
        gradient: gradient path of the core (``"last_cycle"``, ``"one_step"``, ``"full"``).
        puzzle_emb_ndim: width of a puzzle-embedding row (None = hidden_size; 0 disables).
        puzzle_emb_len: prefix positions P (0 = ceil(ndim / D)). Ignored (P = 0) when
            puzzle embeddings are disabled (fixes reference bug 12.2).
        halting: a :class:`~trm.halting.HaltingPolicy` instance, class, or registered name.
        halt_max_steps: maximum ACT steps in training (deep-supervision steps).
        eval_halt_max_steps: ACT steps at evaluation (test-time depth); None = same.
        forward_dtype: activation dtype ("float32", or "bfloat16" as the reference).
        rms_norm_eps, rope_theta: as in the reference.
        activation_checkpointing: recompute each network application in backward.
        swiglu_multiple: the SwiGLU widths (channel MLP and MLP mixer) are rounded up to a
            multiple of this; 256 is the reference's rule, smaller saves work at small widths
            (the CPU quickstart uses 64).
    """

    def __init__(self, vocab_size: int, seq_len: int, num_puzzle_identifiers: int = 1, *,
                 hidden_size: int = 512, num_layers: int = 2, expansion: float = 4.0,
                 num_heads: int = 8,
                 mixer: Union[str, Callable[..., nn.Module]] = AttentionMixer,
                 positions: Union[str, Callable[..., nn.Module]] = "rope",
                 core: Union[str, Callable[..., nn.Module]] = TRMCore,
                 H_cycles: int = 3, L_cycles: int = 6, gradient: str = "last_cycle",
                 puzzle_emb_ndim: Optional[int] = None, puzzle_emb_len: int = 16,
                 halting: Union[str, HaltingPolicy, Callable[[], HaltingPolicy]] = HaltOnly,
                 halt_max_steps: int = 16, eval_halt_max_steps: Optional[int] = None,
                 forward_dtype: Union[str, torch.dtype] = "float32",
                 rms_norm_eps: float = 1e-5, rope_theta: float = 10000.0,
                 activation_checkpointing: bool = False, swiglu_multiple: int = 256) -> None:
        super().__init__()
        _check_sizes(vocab_size=(vocab_size, 2, "VOCAB_SIZE (dataset metadata)"),
                     seq_len=(seq_len, 1, "SEQ_LEN (dataset metadata)"),
                     num_puzzle_identifiers=(num_puzzle_identifiers, 1, "dataset metadata"),
                     hidden_size=(hidden_size, 1, "HIDDEN_SIZE"),
                     num_layers=(num_layers, 1, "NUM_LAYERS"),
                     num_heads=(num_heads, 1, "NUM_HEADS"),
                     H_cycles=(H_cycles, 1, "H_CYCLES"), L_cycles=(L_cycles, 1, "L_CYCLES"),
                     halt_max_steps=(halt_max_steps, 1, "HALT_MAX_STEPS"),
                     eval_halt_max_steps=(eval_halt_max_steps, 1, "EVAL_HALT_MAX_STEPS"),
                     puzzle_emb_len=(puzzle_emb_len, 0, "PUZZLE_EMB_LEN"),
                     swiglu_multiple=(swiglu_multiple, 1, "SWIGLU_MULTIPLE"))
        if isinstance(expansion, bool) or not isinstance(expansion, (int, float)) or \
                not expansion > 0:
            raise ValueError(f"model.trm.expansion (EXPANSION) must be a number > 0, got "
                             f"{expansion!r}.")
        self.vocab_size = vocab_size
        self.seq_len = seq_len
        self.hidden_size = hidden_size
        self.forward_dtype = to_dtype(forward_dtype)
        self.halt_max_steps = halt_max_steps
        self.eval_halt_max_steps = eval_halt_max_steps or halt_max_steps
        halting = _resolve("halting", halting)
        self.halting: HaltingPolicy = halting if isinstance(halting, HaltingPolicy) else halting()
        #: When set (a device integer tensor), the halting exploration draws come from the
        #: counter-based generator keyed by it (trm.halting); the trainer sets it on XLA.
        self.halting_rng_key: Optional[torch.Tensor] = None
        # Policies written before ``rng_key`` existed (plugins) keep working: they get no key
        # and draw from torch's generator.
        self._halting_takes_key = _accepts(self.halting.__call__, "rng_key")

        ndim = hidden_size if puzzle_emb_ndim is None else puzzle_emb_ndim
        self.puzzle_emb_ndim = ndim
        if ndim == 0:
            self.puzzle_emb_len = 0
        else:
            self.puzzle_emb_len = puzzle_emb_len or -(ndim // -hidden_size)
            if ndim > self.puzzle_emb_len * hidden_size:
                raise ValueError(
                    f"puzzle_emb_ndim {ndim} does not fit into puzzle_emb_len "
                    f"{self.puzzle_emb_len} positions of width {hidden_size}.")
        self.full_seq_len = seq_len + self.puzzle_emb_len
        self.embed_scale = math.sqrt(hidden_size)

        # Creation order = RNG draw order of the reference (TRM_SPEC.md 2.8).
        self.embed_tokens = CastedEmbedding(vocab_size, hidden_size, init_std=hidden_size ** -0.5,
                                            cast_to=self.forward_dtype)
        self.lm_head = CastedLinear(hidden_size, vocab_size, bias=False)
        self.q_head = CastedLinear(hidden_size, 2, bias=True)
        self.puzzle_emb = (PuzzleEmbedding(num_puzzle_identifiers, ndim, init_std=0.0,
                                           cast_to=self.forward_dtype) if ndim > 0 else None)
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}.")
        self.positions = _resolve("position", positions)(
            hidden_size=hidden_size, seq_len=self.full_seq_len, head_dim=hidden_size // num_heads,
            rope_theta=rope_theta, forward_dtype=self.forward_dtype)
        mixer_cls = _resolve("mixer", mixer)
        # Mixers written before swiglu_multiple existed (plugins) are built without it.
        mixer_extra = ({"swiglu_multiple": swiglu_multiple}
                       if _accepts(mixer_cls, "swiglu_multiple") else {})

        def make_block() -> nn.Module:
            return Block(mixer_cls(hidden_size=hidden_size, seq_len=self.full_seq_len,
                                   expansion=expansion, num_heads=num_heads,
                                   rms_norm_eps=rms_norm_eps, **mixer_extra),
                         hidden_size, expansion, rms_norm_eps, swiglu_multiple)

        self.core = _resolve("core", core)(
            make_block=make_block, num_layers=num_layers, H_cycles=H_cycles, L_cycles=L_cycles,
            gradient=gradient, activation_checkpointing=activation_checkpointing)
        self.register_buffer("H_init", trunc_normal_init_(
            torch.empty(hidden_size, dtype=self.forward_dtype), std=1.0), persistent=True)
        self.register_buffer("L_init", trunc_normal_init_(
            torch.empty(hidden_size, dtype=self.forward_dtype), std=1.0), persistent=True)
        with torch.no_grad():
            self.q_head.weight.zero_()
            self.q_head.bias.fill_(-5.0)

    # -- sizes -----------------------------------------------------------------------------
    def num_params(self) -> int:
        """Trainable parameters (the puzzle table is a buffer and not counted)."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_example(self, max_steps: Optional[int] = None, training: bool = True) -> float:
        """Approximate model FLOPs for one example and one ACT step (x3 when training).

        Counts the matmuls only (2 FLOPs per multiply-add): every network application, the
        attention scores, and the heads. ``max_steps`` multiplies by ACT steps if given.
        """
        S, D = self.full_seq_len, self.hidden_size
        per_block = 0
        for name, mod in self.core.net.layers[0].named_modules():
            if isinstance(mod, CastedLinear):
                rows = D if ".mlp_t." in f".{name}." else S
                per_block += 2 * mod.weight.numel() * rows
            if mod.__class__.__name__ == "Attention":
                per_block += 2 * 2 * S * S * mod.num_heads * mod.head_dim
        apps = self.core.applications_per_step
        fwd = per_block * len(self.core.net.layers) * apps
        fwd += 2 * S * D * 2 + 2 * self.seq_len * D * self.vocab_size
        # Backward costs ~2x the forward of the differentiated applications.
        grad_apps = self.core.L_cycles + 1 if self.core.gradient != "full" else apps
        total = fwd + (2 * per_block * len(self.core.net.layers) * grad_apps if training else 0)
        return float(total * (max_steps or 1))

    # -- carry -----------------------------------------------------------------------------
    def initial_carry(self, batch: Batch) -> Carry:
        """A carry in which every row is halted, so the first call loads the whole batch."""
        b = batch["inputs"].shape[0]
        device = batch["inputs"].device
        shape = (b, self.full_seq_len, self.hidden_size)
        return Carry(
            z_H=torch.zeros(shape, dtype=self.forward_dtype, device=device),
            z_L=torch.zeros(shape, dtype=self.forward_dtype, device=device),
            steps=torch.zeros(b, dtype=torch.int32, device=device),
            halted=torch.ones(b, dtype=torch.bool, device=device),
            current_data={k: torch.zeros_like(v) for k, v in batch.items()})

    # -- forward ---------------------------------------------------------------------------
    def embed_inputs(self, inputs: torch.Tensor, puzzle_identifiers: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(inputs.to(torch.int32))
        if self.puzzle_emb is not None:
            pe = self.puzzle_emb(puzzle_identifiers)
            pad = self.puzzle_emb_len * self.hidden_size - pe.shape[-1]
            if pad > 0:
                pe = F.pad(pe, (0, pad))
            x = torch.cat((pe.view(-1, self.puzzle_emb_len, self.hidden_size), x), dim=-2)
        x = self.positions.embed(x)
        return self.embed_scale * x

    def inner_step(self, z_H: torch.Tensor, z_L: torch.Tensor, data: Batch):
        """One recursion (section 3): returns new (z_H, z_L), logits, q_halt, q_continue."""
        x = self.embed_inputs(data["inputs"], data["puzzle_identifiers"])
        z_H, z_L = self.core(z_H, z_L, x, self.positions.cos_sin())
        logits = self.lm_head(z_H)[:, self.puzzle_emb_len:]
        q = self.q_head(z_H[:, 0]).to(torch.float32)
        return z_H, z_L, logits, q[..., 0], q[..., 1]

    def forward(self, carry: Carry, batch: Batch):
        """One ACT step. Returns ``(new_carry, outputs)``.

        ``outputs`` has ``logits [B, L, V]``, ``q_halt_logits [B]``, ``q_continue_logits [B]``
        and, for policies with a bootstrapped target in training, ``target_q_continue [B]``.
        """
        halted = carry.halted
        reset = halted.view(-1, 1, 1)
        z_H = torch.where(reset, self.H_init, carry.z_H)
        z_L = torch.where(reset, self.L_init, carry.z_L)
        steps = torch.where(halted, torch.zeros_like(carry.steps), carry.steps)
        data = {k: torch.where(halted.view((-1,) + (1,) * (v.ndim - 1)), batch[k], v)
                for k, v in carry.current_data.items()}

        z_H, z_L, logits, q_halt, q_continue = self.inner_step(z_H, z_L, data)
        outputs = {"logits": logits, "q_halt_logits": q_halt, "q_continue_logits": q_continue}
        z_H, z_L = z_H.detach(), z_L.detach()

        with torch.no_grad():
            steps = steps + 1
            max_steps = self.halt_max_steps if self.training else self.eval_halt_max_steps
            key = ({"rng_key": self.halting_rng_key}
                   if self.halting_rng_key is not None and self._halting_takes_key else {})
            new_halted = self.halting(q_halt=q_halt, q_continue=q_continue, steps=steps,
                                      max_steps=max_steps, training=self.training, **key)
            if self.training and self.halting.bootstrap_target:
                _, _, _, next_halt, next_continue = self.inner_step(z_H, z_L, data)
                outputs["target_q_continue"] = self.halting.continue_target(
                    next_halt, next_continue, steps >= max_steps)
        return Carry(z_H, z_L, steps, new_halted, data), outputs
