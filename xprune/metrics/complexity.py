"""Sparsity / complexity of a single attribution map."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._validation import check_count
from ..attribution import Attributions
from ._base import feature_map, register, values_of

__all__ = ["entropy_complexity", "gini_index", "top_k_mass"]


@register(category="complexity", kind="map", higher_is_better=True, range=(0.0, 1.0),
          reference="Chalasani et al. 2020, 'Concise explanations of neural networks using "
                    "adversarial training', ICML (after Hurley & Rickard 2009)")
def gini_index(attributions: Tensor | Attributions) -> Tensor:
    """Gini index of the attribution magnitudes of each sample.

    With ``v`` the per-feature magnitudes |a_i| sorted ascending (a pixel's
    channels summed first), ``G = sum_k (2k - d - 1) v_k / (d * sum_k v_k)``
    for k = 1..d (Hurley & Rickard 2009, eq. for G; used as a sparseness score
    by Chalasani et al. 2020).

    Parameters
    ----------
    attributions : Tensor of shape (N, *F) or Attributions

    Returns
    -------
    Tensor of shape (N,), float64
        In [0, (d-1)/d]; higher = sparser (concentrated on fewer features).
        A one-hot map scores (d-1)/d, a constant map 0. Invariant to positive
        scaling and to permuting features. An all-zero map has no defined
        Gini index; it scores 0 (the limit of a constant map).

    Raises
    ------
    ValueError
        If the map has NaN/Inf entries or fewer than 2 dimensions.
    """
    v = feature_map(values_of(attributions)).double().abs().sort(dim=1).values
    d = v.shape[1]
    k = torch.arange(1, d + 1, dtype=v.dtype, device=v.device)
    total = v.sum(dim=1)
    g = ((2 * k - d - 1) * v).sum(dim=1) / (d * total)
    return torch.where(total > 0, g, torch.zeros_like(g))


@register(category="complexity", kind="map", higher_is_better=False,
          range=(0.0, float("inf")),
          reference="Bhatt, Weller & Moura 2020, 'Evaluating and aggregating feature-based model "
                    "explanations', IJCAI (complexity as the entropy of fractional contributions)")
def entropy_complexity(attributions: Tensor | Attributions) -> Tensor:
    """Entropy of the fractional contributions ``p_i = |a_i| / sum_j |a_j|``, per sample.

    ``C = -sum_i p_i log p_i`` (natural log; terms with p_i = 0 contribute 0),
    a pixel's channels summed first.

    Parameters
    ----------
    attributions : Tensor of shape (N, *F) or Attributions

    Returns
    -------
    Tensor of shape (N,), float64
        In [0, log d]; lower = simpler (mass on fewer features). A one-hot map
        scores 0, a constant map log d. Invariant to positive scaling and to
        permuting features. An all-zero map has no distribution; it scores
        log d (the limit of a constant map), documented.
    """
    v = feature_map(values_of(attributions)).double().abs()
    total = v.sum(dim=1, keepdim=True)
    p = v / total.clamp_min(torch.finfo(torch.float64).tiny)
    c = -(p * torch.log(torch.where(p > 0, p, torch.ones_like(p)))).sum(dim=1)
    return torch.where(total[:, 0] > 0, c, torch.full_like(c, math.log(v.shape[1])))


@register(category="complexity", kind="map", higher_is_better=True, range=(0.0, 1.0),
          reference="Top-k attribution mass, e.g. as a concentration score in Kokhlikyan et al. "
                    "2020 (Captum); the share of |a| on the k most important features")
def top_k_mass(attributions: Tensor | Attributions, *, k: int | None = None) -> Tensor:
    """Share of the attribution magnitude held by the ``k`` largest features, per sample.

    ``sum of the k largest |a_i| / sum_i |a_i|``.

    Parameters
    ----------
    attributions : Tensor of shape (N, *F) or Attributions
    k : int, optional
        1 <= k <= d; default 10% of the d features (at least 1).

    Returns
    -------
    Tensor of shape (N,), float64
        In [k/d, 1]; higher = more concentrated. Invariant to positive scaling.
        An all-zero map scores k/d (the limit of a constant map).

    Raises
    ------
    ValueError
        If ``k`` is outside [1, d].
    """
    v = feature_map(values_of(attributions)).double().abs()
    d = v.shape[1]
    k = max(1, round(0.1 * d)) if k is None else k
    check_count(k, "k", d)
    total = v.sum(dim=1)
    top = v.topk(k, dim=1).values.sum(dim=1)
    return torch.where(total > 0, top / total.clamp_min(torch.finfo(torch.float64).tiny),
                       torch.full_like(total, k / d))
