"""The pruning core: a trained dense model in, a dense/sparse :class:`ModelPair` out.

Layers inside this package point one way: :mod:`._core` (which weights count,
``ModelPair``, the registry) <- :mod:`.methods` (one module per family of
methods, registering themselves with the core's decorators) <- :mod:`._api`
(``prune``, schedules, fine-tuning), which imports the methods package so that
:data:`PRUNING_METHODS` is complete before anything is pruned.
"""

from ._api import (
    MONOTONE_METHODS,
    SCHEDULES,
    fine_tune,
    prune,
    prune_and_fine_tune,
    schedule_sparsities,
)
from ._core import (
    MATRIX_MODULES,
    PRUNABLE_LAYERS,
    PRUNING_METHODS,
    ModelPair,
    Patterns,
    PruningContext,
    PruningMethod,
    check_n_m,
    counted_weights,
    layer_table,
    n_m_mask,
    output_layer,
    prunable_weights,
    register_importance,
    register_pruning_method,
    select_weights,
    sparsity,
    targets,
    weight_matrices,
    weight_name,
)
from .methods.unstructured import find_threshold

__all__ = [
    "MATRIX_MODULES",
    "MONOTONE_METHODS",
    "PRUNABLE_LAYERS",
    "PRUNING_METHODS",
    "SCHEDULES",
    "ModelPair",
    "Patterns",
    "PruningContext",
    "PruningMethod",
    "check_n_m",
    "counted_weights",
    "find_threshold",
    "fine_tune",
    "layer_table",
    "n_m_mask",
    "output_layer",
    "prunable_weights",
    "prune",
    "prune_and_fine_tune",
    "register_importance",
    "register_pruning_method",
    "schedule_sparsities",
    "select_weights",
    "sparsity",
    "targets",
    "weight_matrices",
    "weight_name",
]
