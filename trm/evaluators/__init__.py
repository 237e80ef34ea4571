"""Evaluators that score model outputs beyond the loss head's metrics (ARC voting, pass@K)."""

from trm.evaluators.arc import ARCEvaluator

__all__ = ["ARCEvaluator"]
