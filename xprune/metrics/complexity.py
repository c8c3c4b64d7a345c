"""Sparsity / complexity of a single attribution map."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from .._validation import check_count, check_positive_int
from ..attribution import DEFAULT_MAX_ROWS, Attributions
from ._base import (
    any_inputs,
    check_map_and_inputs,
    check_output,
    feature_map,
    masked_features,
    model_targets,
    register,
    target_scores,
    values_of,
    warn_undefined,
)
from ._removal import Removal, perturbed_scores, removal_for

__all__ = ["effective_complexity", "entropy_complexity", "gini_index",
           "model_effective_complexity", "top_k_mass"]

ALL_ZERO = "the map is all zero (e.g. a dead or saturated model), so |a| has no distribution"


@register(category="complexity", kind="map", higher_is_better=True, range=(0.0, 1.0),
          reference="Chalasani et al. 2020, 'Concise explanations of neural networks using "
                    "adversarial training', ICML (after Hurley & Rickard 2009)",
          undefined="all-zero map")
@masked_features
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
        Gini index (its magnitudes have no distribution): NaN, with one
        :class:`UndefinedScoreWarning` per call giving the count.

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
    return warn_undefined(torch.where(total > 0, g, torch.full_like(g, math.nan)), "gini_index",
                          ALL_ZERO)


@register(category="complexity", kind="map", higher_is_better=False,
          range=(0.0, float("inf")),
          reference="Bhatt, Weller & Moura 2020, 'Evaluating and aggregating feature-based model "
                    "explanations', IJCAI (complexity as the entropy of fractional contributions)",
          undefined="all-zero map")
@masked_features
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
        permuting features. An all-zero map has no distribution p: NaN, with
        one :class:`UndefinedScoreWarning` per call giving the count (as every
        other metric of such a map).
    """
    v = feature_map(values_of(attributions)).double().abs()
    total = v.sum(dim=1, keepdim=True)
    p = v / total.clamp_min(torch.finfo(torch.float64).tiny)
    c = -(p * torch.log(torch.where(p > 0, p, torch.ones_like(p)))).sum(dim=1)
    return warn_undefined(torch.where(total[:, 0] > 0, c, torch.full_like(c, math.nan)),
                          "entropy_complexity", ALL_ZERO)


@register(category="complexity", kind="map", higher_is_better=True, range=(0.0, 1.0),
          reference="Top-k attribution mass, e.g. as a concentration score in Kokhlikyan et al. "
                    "2020 (Captum); the share of |a| on the k most important features",
          undefined="all-zero map")
@masked_features
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
        An all-zero map has no share to give: NaN, with one
        :class:`UndefinedScoreWarning` per call giving the count.

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
    out = torch.where(total > 0, top / total.clamp_min(torch.finfo(torch.float64).tiny),
                      torch.full_like(total, math.nan))
    return warn_undefined(out, "top_k_mass", ALL_ZERO)


def _check_eps(eps: float, *, positive: bool = False) -> float:
    ok = (isinstance(eps, (int, float)) and not isinstance(eps, bool) and math.isfinite(eps)
          and (eps > 0 if positive else eps >= 0))
    if not ok:
        raise ValueError(f"Expected `eps` {'>' if positive else '>='} 0, got {eps!r}.")
    return float(eps)


@register(category="complexity", kind="map", higher_is_better=False,
          range=(0.0, float("inf")),
          reference="Nguyen & Martinez 2020, 'On quantitative aspects of model interpretability', "
                    "arXiv 2007.07584 (effective complexity; the thresholded count of Quantus "
                    "EffectiveComplexity)")
@masked_features
def effective_complexity(attributions: Tensor | Attributions, *, eps: float = 1e-5,
                         relative: bool = False) -> Tensor:
    """Number of features whose attribution magnitude exceeds a threshold, per sample.

    ``C = #{i : |a_i| > eps}`` over the d features (a pixel's channels summed
    first, with their signs, as in :func:`~xprune.metrics.feature_map`).

    This is the map-only count that Quantus 0.6 calls ``EffectiveComplexity``,
    not the definition of Nguyen & Martinez 2020: the paper keeps the k
    highest-ranked features, perturbs the rest, and takes the smallest k whose
    expected loss stays below a tolerance, which needs the model (see
    :func:`model_effective_complexity`). The count here treats a feature as
    "used" when its attribution is not negligible, whatever the model does.

    Parameters
    ----------
    attributions : Tensor of shape (N, *F) or Attributions
    eps : float >= 0
        Threshold. Absolute (in the map's units) by default. Quantus applies
        its 1e-5 after dividing the whole batch by its largest |a|, so its
        count for a sample moves with the batch; this function never
        normalises across the batch.
    relative : bool
        Compare with ``eps * max_i |a_i|`` of the sample's own map instead of
        with ``eps``. The count is then invariant to positive scaling of each
        map (a dense and a sparse model's maps differ in magnitude) and still
        independent of the batch.

    Returns
    -------
    Tensor of shape (N,), float64
        Integer counts in [0, d]; lower = simpler (fewer features used). An
        all-zero map scores 0, a map with every |a_i| > eps scores d. With
        ``relative=True`` the largest feature of a nonzero map counts for
        ``eps < 1`` (so the count is >= 1) and nothing counts for ``eps >= 1``.

    Raises
    ------
    ValueError
        If ``eps`` is negative or not finite, or the map holds NaN/Inf.
    """
    eps = _check_eps(eps)
    v = feature_map(values_of(attributions)).double().abs()
    threshold = eps * v.amax(dim=1, keepdim=True) if relative else eps
    return (v > threshold).sum(dim=1).double()


@register(category="complexity", kind="model", higher_is_better=False,
          range=(0.0, float("inf")),
          reference="Nguyen & Martinez 2020, 'On quantitative aspects of model interpretability', "
                    "arXiv 2007.07584 (effective complexity: the smallest set of top-ranked "
                    "features that holds the expected loss within a tolerance)")
@any_inputs
def model_effective_complexity(model: nn.Module, inputs: Tensor,
                               attributions: Tensor | Attributions, target: Any, *,
                               eps: float = 0.01, n_samples: int = 16,
                               noise: tuple[float, float] = (0.0, 1.0),
                               output: str = "probability",
                               generator: torch.Generator | None = None,
                               max_rows: int = DEFAULT_MAX_ROWS,
                               removal: Removal | None = None) -> Tensor:
    """Effective complexity with the model: how many top-ranked features must be kept, per sample.

    Features are ranked by |a_i| (descending, ties by index); ``M_k`` is the
    set of the k first. For k = 0..d the features outside ``M_k`` are replaced
    by random values and the expected loss

    ``L(k) = E_z[(f_t(x_{M_k}, z_{not M_k}) - f_t(x))^2]``

    is estimated with ``n_samples`` draws ``z``, every element uniform in
    ``noise`` = (low, high). The score is ``k* = min{k : L(k) < eps}``, the
    effective complexity of Nguyen & Martinez 2020 (the smallest set of
    top-ranked features that holds the expected loss within the tolerance
    when the others are marginalised): a map whose top few features already
    pin the output down is simple. Since ``L(d) = 0``, ``k*`` <= d always
    exists; ``k* = 0`` means the output does not move even when every
    feature is randomised.

    Choices made here, not fixed by that definition: the loss is the squared change of
    the target's ``output`` (softmax probability by default, so that ``eps``
    has a fixed scale); the unkept features are drawn independently and
    uniformly (``noise=(c, c)`` replaces them with the constant ``c``
    instead, a deterministic baseline); the same draws ``z`` serve every k
    (common random numbers, so ``L`` is smooth in k); a pixel is kept or
    replaced with all its channels. ``L(k)`` need not decrease in k: ``k*`` is
    the first k below the tolerance, as the paper's argmin states.

    Uniform noise puts the unkept pixels off the data's distribution: on the
    digits CNN, maps that leave the blank background at zero (Integrated
    Gradients, input x gradient) then score no better than a random ranking,
    because randomising the background moves the output, while saliency maps
    score far lower. ``noise=(0, 0)`` (the zero baseline) avoids this at the
    price of a deterministic, single-baseline loss.

    Parameters
    ----------
    model : nn.Module
        (M, *F) -> (M, C) logits; evaluated in eval mode, restored afterwards.
    inputs : Tensor of shape (N, *F)
    attributions : Tensor of shape (N, *F) or Attributions
        Only the ranking of |a| matters: the score is invariant to positive
        scaling of the map.
    target : int, sequence or Tensor of shape (N,)
    eps : float > 0
        Tolerance on the expected squared change of ``output``.
    n_samples : int
        Draws of ``z`` per sample.
    noise : (float, float)
        Range of the replacement values, low <= high, in input units.
    output : {"probability", "logit"}
    generator : torch.Generator, optional
        Source of ``z``, drawn sample by sample in batch order (shape
        (n_samples, *F) each); default ``torch.Generator().manual_seed(0)``.
    max_rows : int
        Largest forward pass. Cost: (d + 1) * n_samples rows per sample.
    removal : Removal, optional
        What a feature is (:mod:`xprune.metrics._removal`): with
        ``ReplaceAudio(patch=(f, t))`` a time-frequency patch, ranked by the
        magnitude of the map's sum over it and kept or replaced whole.
        Default: that of the inputs' kind.

    Returns
    -------
    Tensor of shape (N,), float64
        Integer counts in [0, d]; lower = simpler.

    Raises
    ------
    ValueError
        On a non-positive ``eps``, ``n_samples`` < 1, ``noise`` not a pair
        low <= high, an unknown ``output``, a bad target, or maps that do not
        match the inputs.
    """
    x, a = check_map_and_inputs(inputs, attributions)
    eps = _check_eps(eps, positive=True)
    check_positive_int(n_samples, "n_samples")
    check_positive_int(max_rows, "max_rows")
    check_output(output)
    if (not isinstance(noise, (tuple, list)) or len(noise) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                       and math.isfinite(v) for v in noise) or noise[0] > noise[1]):
        raise ValueError(f"Expected `noise` to be a pair (low, high) of numbers with "
                         f"low <= high, got {noise!r}.")
    targets = model_targets(model, x, target)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    low, high = float(noise[0]), float(noise[1])
    removal = removal_for(x, removal, attributions=attributions,
                          metric="model effective complexity")
    scores = removal.feature_scores(a).double()
    n, d = scores.shape
    order = scores.abs().argsort(dim=1, descending=True, stable=True)
    # rank[i, j]: position of feature j in sample i's ranking (0 = the highest)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(d).expand(n, d))
    kept = torch.arange(d + 1, device=rank.device)[None, :, None, None]

    def masks_for(sl: slice) -> Tensor:  # row (k, j): draw j outside the k top features
        return (rank[sl, None, None, :] >= kept).to(x.device)         # (c, d+1, 1, d)

    def replacement_for(sl: slice) -> Tensor:                         # (c, 1, S, *F)
        z = torch.stack([low + (high - low) * torch.rand(n_samples, *x.shape[1:],
                                                         generator=generator,
                                                         dtype=torch.float64)
                         for _ in range(sl.start, sl.stop)])
        return z.to(dtype=x.dtype, device=x.device)[:, None]

    def expected_loss(sl: slice, f: Tensor) -> Tensor:               # L(k): (c, d+1)
        f = f.reshape(-1, d + 1, n_samples)
        return ((f - original[sl, None, None]) ** 2).mean(dim=2)

    original = target_scores(model, x, targets, output=output, max_rows=max_rows)
    losses = perturbed_scores(model, x, targets, masks_for, (d + 1) * n_samples,
                              replacement_for, output, max_rows, reduce=expected_loss,
                              removal=removal)
    below = losses < eps
    return below.double().argmax(dim=1).double()  # first k below tolerance (L(d) = 0 < eps)
