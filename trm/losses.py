"""Losses and metrics of TRM (TRM_SPEC.md section 5), registered kind ``loss``.

Token losses take ``logits [B, L, V]`` and ``labels [B, L]`` (ignored positions = -100) and
return the per-token loss ``[B, L]`` (0 at ignored positions):

* ``stablemax_cross_entropy``: the reference's loss, computed in float64 by default (as the
  reference) or in float32 (``compute_dtype="float32"``, the default on XLA devices where
  float64 does not exist) with a log-space formulation that stays finite and accurate.
* ``softmax_cross_entropy``: ordinary cross-entropy that honours the ignore mask (the
  reference's version indexes with -100 and breaks).

:class:`ACTLoss` combines a token loss with the halting BCE terms and computes every metric
as raw sums (normalised later by the trainer), all as tensors without host syncs.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from trm.registry import register

IGNORE_LABEL_ID = -100


def _compute_dtype(logits: torch.Tensor, compute_dtype: Optional[str]) -> torch.dtype:
    if compute_dtype is None or compute_dtype == "auto":
        return torch.float32 if logits.device.type == "xla" else torch.float64
    return getattr(torch, compute_dtype) if isinstance(compute_dtype, str) else compute_dtype


def log_stablemax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``log(s(x_i) / sum_j s(x_j))`` with ``s(x) = x + 1 (x >= 0), 1 / (1 - x) (x < 0)``.

    Computed in log space (``log s(x) = ±log1p(±x)``, then a log-sum-exp), which is exact in
    float64 and accurate in float32 for any logit magnitude.
    """
    log_s = torch.where(x >= 0, torch.log1p(x.clamp(min=0)), -torch.log1p((-x).clamp(min=0)))
    return log_s - torch.logsumexp(log_s, dim=dim, keepdim=True)


@register("loss", "stablemax_cross_entropy")
def stablemax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                            ignore_index: int = IGNORE_LABEL_ID,
                            compute_dtype: Optional[str] = "auto") -> torch.Tensor:
    """Per-token stablemax cross-entropy (float64 on CPU/GPU, float32 on XLA by default)."""
    logprobs = log_stablemax(logits.to(_compute_dtype(logits, compute_dtype)), dim=-1)
    valid = labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels)).to(torch.int64)
    picked = torch.gather(logprobs, -1, safe.unsqueeze(-1)).squeeze(-1)
    return -torch.where(valid, picked, torch.zeros_like(picked))


@register("loss", "softmax_cross_entropy")
def softmax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor,
                          ignore_index: int = IGNORE_LABEL_ID,
                          compute_dtype: Optional[str] = "float32") -> torch.Tensor:
    """Per-token softmax cross-entropy; ignored positions contribute 0."""
    dtype = _compute_dtype(logits, compute_dtype)
    loss = F.cross_entropy(logits.to(dtype).flatten(0, -2), labels.to(torch.int64).flatten(),
                           ignore_index=ignore_index, reduction="none")
    return loss.view(labels.shape)


@register("loss", "act_loss")
class ACTLoss(nn.Module):
    """Deep-supervision loss of one ACT step, and its metrics (raw sums).

    ``loss = sum_b mean_t CE_bt + q_weight * (q_halt_loss + q_continue_loss)`` where the q
    losses are BCE-with-logits summed over rows; the halt target is "the row's prediction is
    exactly right". Rows with ``mask == False`` (eval padding) contribute nothing.
    """

    def __init__(self, lm_loss: Callable[..., torch.Tensor] = stablemax_cross_entropy,
                 q_loss_weight: float = 0.5) -> None:
        super().__init__()
        self.lm_loss = lm_loss
        self.q_loss_weight = q_loss_weight

    def forward(self, carry, outputs: Dict[str, torch.Tensor]
                ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor], torch.Tensor]:
        """Returns ``(loss, metrics, preds)`` for the carry *after* the step."""
        labels = carry.current_data["labels"]
        logits = outputs["logits"]
        halted = carry.halted
        row_mask = carry.current_data.get("mask")

        with torch.no_grad():
            preds = torch.argmax(logits, dim=-1)
            mask = labels != IGNORE_LABEL_ID
            counts = mask.sum(-1)
            divisor = counts.clamp(min=1).unsqueeze(-1)
            correct = mask & (preds == labels)
            seq_correct = correct.sum(-1) == counts
            valid = halted & (counts > 0)
            if row_mask is not None:
                valid = valid & row_mask
            metrics = {
                "count": valid.sum(),
                "accuracy": torch.where(valid, (correct.to(torch.float32) / divisor).sum(-1),
                                        0).sum(),
                "exact_accuracy": (valid & seq_correct).sum(),
                "q_halt_accuracy": (valid & ((outputs["q_halt_logits"] >= 0) == seq_correct)).sum(),
                "steps": torch.where(valid, carry.steps, 0).sum(),
            }

        token_loss = self.lm_loss(logits, labels)
        row_lm = (token_loss / divisor).sum(-1)
        q_halt = F.binary_cross_entropy_with_logits(
            outputs["q_halt_logits"], seq_correct.to(outputs["q_halt_logits"].dtype),
            reduction="none")
        if row_mask is not None:
            row_lm = torch.where(row_mask, row_lm, 0)
            q_halt = torch.where(row_mask, q_halt, 0)
        lm_loss = row_lm.sum()
        q_halt_loss = q_halt.sum()
        metrics["lm_loss"] = lm_loss.detach()
        metrics["q_halt_loss"] = q_halt_loss.detach()
        q_total = q_halt_loss
        if "target_q_continue" in outputs:
            q_cont = F.binary_cross_entropy_with_logits(
                outputs["q_continue_logits"], outputs["target_q_continue"], reduction="none")
            if row_mask is not None:
                q_cont = torch.where(row_mask, q_cont, 0)
            q_continue_loss = q_cont.sum()
            metrics["q_continue_loss"] = q_continue_loss.detach()
            q_total = q_total + q_continue_loss
        loss = lm_loss + self.q_loss_weight * q_total
        return loss, metrics, preds
