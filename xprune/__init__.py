"""xprune: measure how pruning a neural network changes its interpretability."""

from . import metrics
from .attribution import (
    ATTRIBUTION_METHODS,
    Attributions,
    attribute,
    attribute_pair,
    explainer,
)
from .pruning import PRUNING_METHODS, ModelPair, fine_tune, prune, sparsity

__version__ = "0.1.0"

__all__ = [
    "ATTRIBUTION_METHODS",
    "PRUNING_METHODS",
    "Attributions",
    "ModelPair",
    "attribute",
    "attribute_pair",
    "explainer",
    "fine_tune",
    "metrics",
    "prune",
    "sparsity",
]
