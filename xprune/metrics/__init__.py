"""Metrics of attribution maps: batched, one value per sample, shape (N,).

Every function accepts plain tensors or :class:`xprune.Attributions`, never
normalises across the batch (a sample's score does not depend on its
batch-mates), and takes a ``torch.Generator`` for every random draw.
Metadata (category, direction, range, reference) is in :data:`METRICS`.
"""

from ._base import METRICS, MetricInfo, feature_map, get_metric
from .agreement import average_ranks, spearman, top_k_intersection
from .complexity import gini_index
from .faithfulness import DeletionCurve, deletion_auc, deletion_curve, faithfulness_correlation
from .stability import max_sensitivity

__all__ = [
    "METRICS",
    "DeletionCurve",
    "MetricInfo",
    "average_ranks",
    "deletion_auc",
    "deletion_curve",
    "faithfulness_correlation",
    "feature_map",
    "get_metric",
    "gini_index",
    "max_sensitivity",
    "spearman",
    "top_k_intersection",
]
