"""Evaluators that score model outputs beyond the loss head's metrics (registered kind
``evaluator``): the ARC evaluator votes over augmentations and reports pass@K."""

from trm.evaluators.arc import ARCEvaluator
from trm.registry import REGISTRY

REGISTRY.add("evaluator", "arc", ARCEvaluator)

__all__ = ["ARCEvaluator"]
