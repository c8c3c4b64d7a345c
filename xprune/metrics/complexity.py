"""Sparsity / complexity of a single attribution map."""

from __future__ import annotations

import torch
from torch import Tensor

from ..attribution import Attributions
from ._base import feature_map, register, values_of

__all__ = ["gini_index"]


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
