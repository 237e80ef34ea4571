"""Halting policies for adaptive computation time (registered kind ``halting``).

The ACT wrapper (:class:`trm.models.TRM`) asks its policy, after every ACT step, which rows
stop. Policies work on whole tensors (``torch.where`` / masks), never on Python values of
tensors, so they compile to one fixed graph on XLA.

* ``halt_only`` (the reference default, ``no_ACT_continue=True``): halt when ``q_halt > 0``.
* ``halt_continue``: halt when ``q_halt > q_continue``; ``q_continue`` is trained towards a
  bootstrapped target computed by a second forward on the new carry (as in HRM). The
  reference crashes on this path (TRM_SPEC.md 12.1); trm computes the target correctly.
* ``none``: no adaptive halting, every row runs ``max_steps`` steps (the q head is still
  trained, so its accuracy stays observable).

Exploration (training only): with probability ``exploration_prob`` a row must run at least
``r ~ U{2..max_steps}`` steps before it may halt. Both random draws happen every training
step (even at probability 0), as in the reference, so the RNG stream is the same.

Where the draws come from: by default torch's generator of the device (``torch.rand_like``),
as in the reference. Given an ``rng_key`` (a device integer tensor; the trainer passes one on
XLA, see ``trm.TrainConfig.halting_rng``), they come from :func:`counter_uniform` /
:func:`counter_randint`, a counter-based generator: a murmur3-style hash of (key, stream,
row) computed with integer ops on the device. torch_xla uploads a fresh RNG seed to the
device for every graph that calls ``torch.rand``; a hash of the device step counter needs no
upload, so a training step moves only its batch. The draws are still independent uniforms per
row and step (tested), reproducible from (seed, step, micro-batch, process) on any device and
after a resume.
"""

from __future__ import annotations

from typing import Optional

import torch

from trm.registry import register

_MASK32 = 0xFFFFFFFF


def _s32(c: int) -> int:
    """The int32 holding the 32 bits of ``c`` (two's complement)."""
    c &= _MASK32
    return c - (1 << 32) if c >= 1 << 31 else c


def _shr(h: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of the 32 bits held by an int32 tensor. Only non-negative values are
    shifted (torch_xla rounds a negative ``>>`` towards zero); the sign bit is added back."""
    return ((h & 0x7FFFFFFF) >> k) + _negative(h).to(torch.int32) * (1 << (31 - k))


def _negative(h: torch.Tensor) -> torch.Tensor:
    """``h < 0`` against an int32 zero (a Python 0 makes torch_xla compare in int64)."""
    return h < h.new_zeros(())


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    """The murmur3 32-bit finaliser on int32 tensors (products wrap modulo 2**32, as on XLA)."""
    h = h ^ _shr(h, 16)
    h = h * _s32(0x85EBCA6B)
    h = h ^ _shr(h, 13)
    h = h * _s32(0xC2B2AE35)
    return h ^ _shr(h, 16)


def _bits32(key: torch.Tensor, n: int, stream: int) -> torch.Tensor:
    """The ``n`` random 32-bit words of (key, stream) as int32, computed with 32-bit ops only
    (no int64 on the device: TPUs emulate it)."""
    k = key.reshape(())
    if k.dtype != torch.int32:  # e.g. a host int64 key: its low 32 bits
        k = (k.to(torch.int64) & _MASK32).to(torch.int32)
    k = _fmix32(k * _s32(0x9E3779B1) + _s32(stream * 0x632BE5AB + 0x5BD1E995))
    rows = torch.arange(n, device=key.device, dtype=torch.int32)
    return _fmix32(_fmix32(rows * _s32(0x7FEB352D) + k) ^ k)


def counter_bits(key: torch.Tensor, n: int, stream: int) -> torch.Tensor:
    """``n`` pseudo-random 32-bit values (int64 in [0, 2**32)) for ``key`` (an integer tensor
    of any shape with one element; only its low 32 bits count) and ``stream``; a pure function
    of its arguments. The draws below use the int32 words directly."""
    return _bits32(key, n, stream).to(torch.int64) & _MASK32


def counter_uniform(key: torch.Tensor, n: int, stream: int) -> torch.Tensor:
    """``n`` float32 uniforms in [0, 1) (24 random bits each) from :func:`counter_bits`."""
    return _shr(_bits32(key, n, stream), 8).to(torch.float32) * (1.0 / (1 << 24))


def counter_randint(key: torch.Tensor, n: int, stream: int, low: int, high: int
                    ) -> torch.Tensor:
    """``n`` int32 integers uniform in [low, high) (modulo bias below 2**-20 for ranges under
    4096): the unsigned 32-bit word modulo the range, in int32 arithmetic."""
    span = high - low
    h = _bits32(key, n, stream)
    r = torch.remainder(h, span)  # for a negative int32 word, add 2**32 mod span
    return low + torch.where(_negative(h), torch.remainder(r + (1 << 32) % span, span), r)



class HaltingPolicy:
    """Base class: halts only at the maximum number of steps."""

    #: Whether the policy needs the bootstrapped ``q_continue`` target (a second forward).
    bootstrap_target: bool = False

    def __init__(self, exploration_prob: float = 0.0) -> None:
        if not 0.0 <= exploration_prob <= 1.0:
            raise ValueError(f"exploration_prob must be in [0, 1], got {exploration_prob}.")
        self.exploration_prob = exploration_prob

    def wants_halt(self, q_halt: torch.Tensor, q_continue: torch.Tensor) -> torch.Tensor:
        """Rows the q head would stop (training only). Default: none."""
        return torch.zeros_like(q_halt, dtype=torch.bool)

    def __call__(self, *, q_halt: torch.Tensor, q_continue: torch.Tensor,
                 steps: torch.Tensor, max_steps: int, training: bool,
                 rng_key: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Returns the ``halted`` mask after an ACT step (``steps`` already incremented).

        ``rng_key``: draw the exploration from the counter-based generator with this key
        (module docstring) instead of torch's generator."""
        is_last = steps >= max_steps
        halted = is_last
        if training and max_steps > 1:
            halted = halted | self.wants_halt(q_halt, q_continue)
            if rng_key is None:
                explore = torch.rand_like(q_halt) < self.exploration_prob
                bound = torch.randint_like(steps, low=2, high=max_steps + 1)
            else:
                n = q_halt.shape[0]
                explore = counter_uniform(rng_key, n, 0) < self.exploration_prob
                bound = counter_randint(rng_key, n, 1, 2, max_steps + 1).to(steps.dtype)
            min_steps = explore * bound
            halted = halted & (steps >= min_steps)
        return halted

    @staticmethod
    def continue_target(next_q_halt: torch.Tensor, next_q_continue: torch.Tensor,
                        is_last: torch.Tensor) -> torch.Tensor:
        """Bootstrapped target for ``q_continue`` (a probability)."""
        return torch.sigmoid(torch.where(is_last, next_q_halt,
                                         torch.maximum(next_q_halt, next_q_continue)))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(exploration_prob={self.exploration_prob})"


@register("halting", "halt_only")
class HaltOnly(HaltingPolicy):
    """Halt when the halt logit is positive (reference default), with exploration."""

    def __init__(self, exploration_prob: float = 0.1) -> None:
        super().__init__(exploration_prob)

    def wants_halt(self, q_halt, q_continue):
        return q_halt > 0


@register("halting", "halt_continue")
class HaltContinue(HaltingPolicy):
    """Halt when q_halt > q_continue; q_continue learns a bootstrapped target (2nd forward)."""

    bootstrap_target = True

    def __init__(self, exploration_prob: float = 0.1) -> None:
        super().__init__(exploration_prob)

    def wants_halt(self, q_halt, q_continue):
        return q_halt > q_continue


@register("halting", "none")
class NoHalting(HaltingPolicy):
    """No adaptive halting: every row runs the maximum number of supervision steps."""

    def __init__(self, exploration_prob: float = 0.0) -> None:
        super().__init__(exploration_prob)
