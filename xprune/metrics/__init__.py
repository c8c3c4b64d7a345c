"""Metrics of attribution maps: batched, one value per sample, shape (N,).

Every function accepts plain tensors or :class:`xprune.Attributions`, never
normalises across the batch (a sample's score does not depend on its
batch-mates), and takes a ``torch.Generator`` for every random draw.
Metadata (category, direction, range, reference) is in :data:`METRICS`.
"""

from ._base import METRICS, MetricInfo, feature_map, get_metric
from .agreement import (
    average_ranks,
    cosine_similarity,
    kendall_tau,
    sign_agreement,
    spearman,
    top_k_intersection,
)
from .complexity import entropy_complexity, gini_index, top_k_mass
from .faithfulness import (
    DeletionCurve,
    deletion_auc,
    deletion_curve,
    faithfulness_correlation,
    infidelity,
    insertion_auc,
    insertion_curve,
)
from .stability import avg_sensitivity, max_sensitivity, sensitivity_draws

__all__ = [
    "METRICS",
    "DeletionCurve",
    "MetricInfo",
    "average_ranks",
    "avg_sensitivity",
    "cosine_similarity",
    "deletion_auc",
    "deletion_curve",
    "entropy_complexity",
    "faithfulness_correlation",
    "feature_map",
    "get_metric",
    "gini_index",
    "infidelity",
    "insertion_auc",
    "insertion_curve",
    "kendall_tau",
    "max_sensitivity",
    "sensitivity_draws",
    "sign_agreement",
    "spearman",
    "top_k_intersection",
    "top_k_mass",
]
