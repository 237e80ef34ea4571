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
"""

from __future__ import annotations

import torch

from trm.registry import register


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
                 steps: torch.Tensor, max_steps: int, training: bool) -> torch.Tensor:
        """Returns the ``halted`` mask after an ACT step (``steps`` already incremented)."""
        is_last = steps >= max_steps
        halted = is_last
        if training and max_steps > 1:
            halted = halted | self.wants_halt(q_halt, q_continue)
            explore = torch.rand_like(q_halt) < self.exploration_prob
            min_steps = explore * torch.randint_like(steps, low=2, high=max_steps + 1)
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
