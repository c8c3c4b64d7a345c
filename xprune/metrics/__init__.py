"""Metrics of attribution maps: batched, one value per sample, shape (N,).

Every function accepts plain tensors or :class:`xprune.Attributions`, never
normalises across the batch (a sample's score does not depend on its
batch-mates), and takes a ``torch.Generator`` for every random draw.
Metadata (category, direction, range, reference, when a score is undefined)
is in :data:`METRICS`; names from the peer tools resolve through :data:`ALIASES`.
A sample whose score is undefined (e.g. a rank correlation of a constant
map) scores NaN, and the call warns once with an :class:`UndefinedScoreWarning`
giving the metric, the count and the reason.
"""

# Imported first so that METRICS, whose order is the CLI's listing and the report's row order,
# registers agreement, then faithfulness, then complexity metrics, as before the removal module.
from . import agreement, faithfulness  # noqa: F401
from ._base import (
    ALIASES,
    METRICS,
    MetricInfo,
    UndefinedScoreWarning,
    feature_map,
    get_metric,
    resolve_metric_name,
    warn_undefined,
)
from ._forward import fast_forwards
from ._imputation import noisy_linear_imputation
from ._removal import (
    DropTokens,
    Removal,
    ReplaceAudio,
    ReplaceColumns,
    ReplacePixels,
    ReplaceTokens,
)
from .agreement import (
    average_ranks,
    cosine_similarity,
    foreground,
    kendall_tau,
    on_features,
    sign_agreement,
    spearman,
    ssim,
    top_k_intersection,
)
from .complexity import (
    effective_complexity,
    entropy_complexity,
    gini_index,
    model_effective_complexity,
    top_k_mass,
)
from .controls import random_map_like, versus_random
from .erasure import (
    comprehensiveness,
    erasure_curves,
    normalised_comprehensiveness,
    normalised_sufficiency,
    sufficiency,
    tau_loo,
)
from .faithfulness import (
    DeletionCurve,
    aopc,
    deletion_auc,
    deletion_curve,
    faithfulness_correlation,
    infidelity,
    insertion_auc,
    insertion_curve,
    monotonicity_correlation,
    region_perturbation_curve,
    road,
    road_curve,
    sensitivity_n,
    sensitivity_n_curve,
)
from .plausibility import rationale_auprc, rationale_mass, rationale_top_k, token_f1, token_iou
from .sanity import (
    RandomisationCurve,
    model_parameter_randomisation,
    parameter_randomisation,
    random_logit,
)
from .stability import (
    avg_sensitivity,
    local_lipschitz_estimate,
    max_sensitivity,
    relative_input_stability,
    relative_output_stability,
    sensitivity_draws,
    substitute_tokens,
)

__all__ = [
    "substitute_tokens",
    "DropTokens",
    "Removal",
    "ReplaceAudio",
    "ReplaceColumns",
    "ReplacePixels",
    "ReplaceTokens",
    "ALIASES",
    "METRICS",
    "DeletionCurve",
    "MetricInfo",
    "RandomisationCurve",
    "UndefinedScoreWarning",
    "aopc",
    "average_ranks",
    "avg_sensitivity",
    "comprehensiveness",
    "cosine_similarity",
    "deletion_auc",
    "deletion_curve",
    "effective_complexity",
    "entropy_complexity",
    "erasure_curves",
    "faithfulness_correlation",
    "fast_forwards",
    "feature_map",
    "foreground",
    "get_metric",
    "gini_index",
    "infidelity",
    "insertion_auc",
    "insertion_curve",
    "kendall_tau",
    "local_lipschitz_estimate",
    "max_sensitivity",
    "model_effective_complexity",
    "model_parameter_randomisation",
    "monotonicity_correlation",
    "noisy_linear_imputation",
    "normalised_comprehensiveness",
    "normalised_sufficiency",
    "on_features",
    "parameter_randomisation",
    "random_logit",
    "random_map_like",
    "rationale_auprc",
    "rationale_mass",
    "rationale_top_k",
    "region_perturbation_curve",
    "relative_input_stability",
    "relative_output_stability",
    "resolve_metric_name",
    "road",
    "road_curve",
    "sensitivity_draws",
    "sensitivity_n",
    "sensitivity_n_curve",
    "sign_agreement",
    "spearman",
    "ssim",
    "sufficiency",
    "tau_loo",
    "top_k_intersection",
    "token_f1",
    "token_iou",
    "top_k_mass",
    "versus_random",
    "warn_undefined",
]
