"""Agreement between two attribution maps of the same inputs (dense vs sparse)."""

from __future__ import annotations

import torch
from torch import Tensor

from .._validation import check_count, check_same_shape
from ..attribution import Attributions
from ._base import feature_map, pearson, register, values_of

__all__ = ["cosine_similarity", "kendall_tau", "sign_agreement", "spearman",
           "top_k_intersection"]


def _pair(a: Tensor | Attributions, b: Tensor | Attributions) -> tuple[Tensor, Tensor]:
    a, b = values_of(a, "a"), values_of(b, "b")
    check_same_shape(a, b, "a", "b")
    return feature_map(a).double(), feature_map(b).double()


def average_ranks(x: Tensor) -> Tensor:
    """Row-wise ranks 1..d of an (N, d) tensor, ties given their average rank (as scipy.stats.rankdata)."""
    n, d = x.shape
    sorted_x, order = x.sort(dim=1, stable=True)
    new_group = torch.ones_like(sorted_x, dtype=torch.long)
    new_group[:, 1:] = (sorted_x[:, 1:] != sorted_x[:, :-1]).long()
    group = new_group.cumsum(dim=1) - 1 + d * torch.arange(n, device=x.device)[:, None]
    position = torch.arange(1, d + 1, dtype=torch.float64, device=x.device).expand(n, d)
    flat = group.reshape(-1)
    sums = torch.zeros(n * d, dtype=torch.float64, device=x.device).index_add_(
        0, flat, position.reshape(-1))
    counts = torch.zeros(n * d, dtype=torch.float64, device=x.device).index_add_(
        0, flat, torch.ones(n * d, dtype=torch.float64, device=x.device))
    mean_rank = (sums[flat] / counts[flat]).reshape(n, d)
    return torch.empty_like(mean_rank).scatter_(1, order, mean_rank)


@register(category="agreement", kind="pair", higher_is_better=True, range=(-1.0, 1.0),
          reference="Spearman 1904; used for saliency-map similarity by Adebayo et al. 2018, "
                    "'Sanity checks for saliency maps', NeurIPS")
def spearman(a: Tensor | Attributions, b: Tensor | Attributions, *, abs: bool = False) -> Tensor:  # noqa: A002
    """Spearman rank correlation between two maps of the same input, per sample.

    The Pearson correlation of the features' ranks (average ranks for ties,
    as ``scipy.stats.spearmanr``), a pixel's channels summed first.

    Parameters
    ----------
    a, b : Tensor of shape (N, *F) or Attributions
        Two maps of the same N inputs (e.g. dense and sparse).
    abs : bool
        Rank |a| and |b| instead of the signed maps. Note that Captum's
        Saliency already returns |gradient| by default.

    Returns
    -------
    Tensor of shape (N,), float64
        In [-1, 1]; higher = more similar rankings; a map against itself
        scores 1. Undefined (NaN, documented) when either map is constant
        over its features, e.g. all zero.

    Raises
    ------
    ValueError
        If the maps differ in shape or hold NaN/Inf.
    """
    x, y = _pair(a, b)
    if abs:
        x, y = x.abs(), y.abs()
    return pearson(average_ranks(x), average_ranks(y))


def _top_k_mask(x: Tensor, k: int) -> Tensor:
    """The k largest entries of each row of ``x`` (ties by index), among the nonzero ones only."""
    order = x.argsort(dim=1, descending=True, stable=True)[:, :k]
    mask = torch.zeros_like(x, dtype=torch.bool).scatter_(1, order, True)
    return mask & (x != 0)


@register(category="agreement", kind="pair", higher_is_better=True, range=(0.0, 1.0),
          reference="Top-k feature overlap, e.g. Ghorbani, Abid & Zou 2019, 'Interpretation "
                    "of neural networks is fragile', AAAI")
def top_k_intersection(a: Tensor | Attributions, b: Tensor | Attributions, *,
                       k: int | None = None, abs: bool = True) -> Tensor:  # noqa: A002
    """Fraction of the k most important features that two maps share, per sample.

    ``|topk(a) ∩ topk(b)| / max(|topk(a)|, |topk(b)|)``, features ranked by |a|
    (``abs=True``, the default) or by the signed value, ties broken by feature
    index. Only features with a nonzero score enter a top-k set: zeros carry no
    importance, and counting tied zeros as shared would make two sparse maps
    with nothing in common agree. With k nonzero features in each map this is
    the usual ``|topk(a) ∩ topk(b)| / k``.

    Parameters
    ----------
    a, b : Tensor of shape (N, *F) or Attributions
    k : int, optional
        Features to compare, 1 <= k <= d. Default: 10% of the d features
        (at least 1).
    abs : bool
        Rank by magnitude (default) or by signed value.

    Returns
    -------
    Tensor of shape (N,), float64
        In [0, 1]; higher = more overlap; a map against itself scores 1 (NaN,
        documented, if it is all zero, as for two all-zero maps).

    Raises
    ------
    ValueError
        If ``k`` is outside [1, d], or the maps differ in shape / hold NaN/Inf.
    """
    x, y = _pair(a, b)
    d = x.shape[1]
    if k is None:
        k = max(1, round(0.1 * d))
    check_count(k, "k", d)
    if abs:
        x, y = x.abs(), y.abs()
    top_x, top_y = _top_k_mask(x, k), _top_k_mask(y, k)
    size = torch.maximum(top_x.sum(dim=1), top_y.sum(dim=1)).double()
    shared = (top_x & top_y).sum(dim=1).double()
    return torch.where(size > 0, shared / size.clamp_min(1), torch.full_like(size, float("nan")))


@register(category="agreement", kind="pair", higher_is_better=True, range=(-1.0, 1.0),
          reference="Kendall 1938, tau-b (Kendall 1945) for ties; scipy.stats.kendalltau")
def kendall_tau(a: Tensor | Attributions, b: Tensor | Attributions, *,
                abs: bool = False) -> Tensor:  # noqa: A002
    """Kendall rank correlation tau-b between two maps of the same input, per sample.

    ``tau_b = (P - Q) / sqrt((P + Q + T_a) (P + Q + T_b))`` over feature pairs,
    with P concordant and Q discordant pairs and T_a, T_b pairs tied in only
    one map (Kendall 1945), as ``scipy.stats.kendalltau``. O(d^2) per sample.

    Returns
    -------
    Tensor of shape (N,), float64
        In [-1, 1]; a map against itself scores 1; NaN (documented) when
        either map is constant.
    """
    x, y = _pair(a, b)
    if abs:
        x, y = x.abs(), y.abs()
    out = []
    for i in range(x.shape[0]):  # one sample at a time keeps memory at d^2
        dx = torch.sign(x[i, :, None] - x[i, None, :]).triu(diagonal=1)
        dy = torch.sign(y[i, :, None] - y[i, None, :]).triu(diagonal=1)
        s = (dx * dy).sum()
        n0 = (dx != 0).sum().double()  # pairs not tied in x
        n1 = (dy != 0).sum().double()
        denom = torch.sqrt(n0 * n1)
        out.append(s / denom if denom > 0 else torch.tensor(float("nan"), dtype=torch.float64))
    return torch.stack(out).double()


@register(category="agreement", kind="pair", higher_is_better=True, range=(-1.0, 1.0),
          reference="Cosine similarity of attribution vectors, e.g. Ghorbani, Abid & Zou 2019")
def cosine_similarity(a: Tensor | Attributions, b: Tensor | Attributions, *,
                      abs: bool = False) -> Tensor:  # noqa: A002
    """Cosine similarity ``<a, b> / (||a|| ||b||)`` of two maps' feature vectors, per sample.

    Returns
    -------
    Tensor of shape (N,), float64
        In [-1, 1]; 1 for maps that differ by a positive factor (scale
        invariant); NaN (documented) when either map is all zero.
    """
    x, y = _pair(a, b)
    if abs:
        x, y = x.abs(), y.abs()
    denom = x.norm(dim=1) * y.norm(dim=1)
    return torch.where(denom > 0, ((x * y).sum(dim=1) / denom).clamp(-1, 1),
                       torch.full_like(denom, float("nan")))


@register(category="agreement", kind="pair", higher_is_better=True, range=(0.0, 1.0),
          reference="Sign agreement of feature attributions, as in Krishna et al. 2022, 'The "
                    "disagreement problem in explainable machine learning' (signed agreement)")
def sign_agreement(a: Tensor | Attributions, b: Tensor | Attributions, *,
                   k: int | None = None) -> Tensor:
    """Fraction of features whose attributions have the same sign (-1, 0, +1), per sample.

    Counted over the features where at least one map is nonzero (a feature
    both maps leave at 0 says nothing about agreement), or, with ``k``, over
    the k features of largest |a| (the first map is the reference, e.g. the
    dense model's).

    Returns
    -------
    Tensor of shape (N,), float64
        In [0, 1]; higher = more agreement; a map against itself scores 1.
        NaN (documented) when both maps are all zero. Not meaningful for maps
        that are |.| already (Captum's Saliency default).
    """
    x, y = _pair(a, b)
    same = (torch.sign(x) == torch.sign(y)).double()
    if k is None:
        counted = ((x != 0) | (y != 0)).double()
    else:
        check_count(k, "k", x.shape[1])
        counted = _top_k_mask(x.abs(), k).double()
    n = counted.sum(dim=1)
    return torch.where(n > 0, (same * counted).sum(dim=1) / n.clamp_min(1),
                       torch.full_like(n, float("nan")))
