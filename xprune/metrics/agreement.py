"""Agreement between two attribution maps of the same inputs (dense vs sparse)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .._validation import check_count, check_same_shape
from ..attribution import Attributions
from ._base import (
    feature_map,
    masked_features,
    pearson,
    register,
    undefined_reasons,
    values_of,
    warn_undefined,
)

__all__ = ["cosine_similarity", "foreground", "kendall_tau", "normalise_maps", "on_features",
           "sign_agreement", "spearman", "ssim", "ssim_on_features", "top_k_intersection"]


def _pair(a: Tensor | Attributions, b: Tensor | Attributions) -> tuple[Tensor, Tensor]:
    a, b = values_of(a, "a"), values_of(b, "b")
    check_same_shape(a, b, "a", "b")
    return feature_map(a).double(), feature_map(b).double()


def _row_order(x: Tensor) -> Tensor:
    """Indices (N, d) int64 that sort each row of ``x`` ascending; ties in any order, but NaN
    last in index order (as a stable sort puts them).

    CPU tensors of a NumPy dtype without NaN are sorted by NumPy's vectorised ``argsort``
    (about 5x faster than ``torch.sort`` on 32 x 3,072 float64 rows here); others by
    ``torch.sort``."""
    if x.device.type == "cpu" and x.dtype in (torch.float64, torch.float32, torch.int64,
                                               torch.int32) \
            and not (x.is_floating_point() and bool(x.isnan().any())):
        return torch.from_numpy(np.argsort(x.detach().numpy(), axis=1)).to(torch.int64)
    return x.sort(dim=1, stable=True).indices


def average_ranks(x: Tensor) -> Tensor:
    """Row-wise ranks 1..d of an (N, d) tensor, ties given their average rank (as scipy.stats.rankdata).

    Returns float64 (N, d). A run of equal values at sorted positions ``i..j``
    (0-based) gets ``(i + j) / 2 + 1``, exact in float64, so the order of ties
    within the sort does not matter. NaN sorts last and is never equal to
    itself, so each NaN gets its own rank, in index order.
    """
    n, d = x.shape
    order = _row_order(x)
    sorted_x = x.gather(1, order)
    position = torch.arange(d, device=x.device).expand(n, d)
    first = torch.ones_like(sorted_x, dtype=torch.bool)  # the first of a run of equal values
    first[:, 1:] = sorted_x[:, 1:] != sorted_x[:, :-1]
    last = torch.ones_like(first)
    last[:, :-1] = first[:, 1:]
    start = torch.where(first, position, 0).cummax(dim=1).values
    end = torch.where(last, position, d).flip(1).cummin(dim=1).values.flip(1)
    mean_rank = (start + end).double() / 2 + 1
    return torch.empty_like(mean_rank).scatter_(1, order, mean_rank)


@register(category="agreement", kind="pair", higher_is_better=True, range=(-1.0, 1.0),
          reference="Spearman 1904; used for saliency-map similarity by Adebayo et al. 2018, "
                    "'Sanity checks for saliency maps', NeurIPS", undefined="constant map")
@masked_features
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
        scores 1. Undefined (NaN, with one :class:`UndefinedScoreWarning` per
        call giving the count) when either map is constant over its
        features, e.g. all zero.

    Raises
    ------
    ValueError
        If the maps differ in shape or hold NaN/Inf.
    """
    x, y = _pair(a, b)
    if abs:
        x, y = x.abs(), y.abs()
    return warn_undefined(pearson(average_ranks(x), average_ranks(y)), "spearman",
                          "a map is constant (e.g. all zero), so its ranks are all tied")


def _top_k_mask(x: Tensor, k: int) -> Tensor:
    """The k largest entries of each row of ``x`` (ties by index), among the nonzero ones only."""
    order = x.argsort(dim=1, descending=True, stable=True)[:, :k]
    mask = torch.zeros_like(x, dtype=torch.bool).scatter_(1, order, True)
    return mask & (x != 0)


@register(category="agreement", kind="pair", higher_is_better=True, range=(0.0, 1.0),
          reference="Top-k feature overlap, e.g. Ghorbani, Abid & Zou 2019, 'Interpretation "
                    "of neural networks is fragile', AAAI", undefined="all-zero map")
@masked_features
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
        In [0, 1]; higher = more overlap; a map against itself scores 1. NaN,
        with one :class:`UndefinedScoreWarning` per call giving the count,
        when both top-k sets are empty (both maps all zero).

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
    out = torch.where(size > 0, shared / size.clamp_min(1), torch.full_like(size, float("nan")))
    return warn_undefined(out, "top_k_intersection",
                          "both maps are all zero, so both top-k sets are empty")


@register(category="agreement", kind="pair", higher_is_better=True, range=(-1.0, 1.0),
          reference="Kendall 1938, tau-b (Kendall 1945) for ties; scipy.stats.kendalltau",
          undefined="constant map")
@masked_features
def kendall_tau(a: Tensor | Attributions, b: Tensor | Attributions, *,
                abs: bool = False) -> Tensor:  # noqa: A002
    """Kendall rank correlation tau-b between two maps of the same input, per sample.

    ``tau_b = (P - Q) / sqrt((P + Q + T_a) (P + Q + T_b))`` over feature pairs,
    with P concordant and Q discordant pairs and T_a, T_b pairs tied in only
    one map (Kendall 1945), as ``scipy.stats.kendalltau``. O(d^2) per sample.

    Returns
    -------
    Tensor of shape (N,), float64
        In [-1, 1]; a map against itself scores 1; NaN (with one
        :class:`UndefinedScoreWarning` per call) when either map is constant.
    """
    x, y = _pair(a, b)
    if abs:
        x, y = x.abs(), y.abs()
    n, d = x.shape
    upper = torch.ones(d, d, dtype=torch.bool, device=x.device).triu(diagonal=1)
    out = []
    step = max(1, KENDALL_CHUNK_ELEMENTS // max(1, d * d))
    for lo in range(0, n, step):  # samples in chunks keep memory at step * d^2
        xs, ys = x[lo:lo + step], y[lo:lo + step]
        dx = torch.sign(xs[:, :, None] - xs[:, None, :]) * upper
        dy = torch.sign(ys[:, :, None] - ys[:, None, :]) * upper
        # pair counts as exact integers, then the tau-b ratio in float64
        s = (dx * dy).sum(dim=(1, 2), dtype=torch.int64).double()
        n0 = (dx != 0).sum(dim=(1, 2)).double()  # pairs not tied in x
        n1 = (dy != 0).sum(dim=(1, 2)).double()
        denom = torch.sqrt(n0 * n1)
        out.append(torch.where(denom > 0, s / denom.clamp_min(1),
                               torch.full_like(denom, float("nan"))))
    values = torch.cat(out) if out else torch.empty(0, dtype=torch.float64)
    return warn_undefined(values, "kendall_tau",
                          "a map is constant (e.g. all zero), so every pair is tied")


KENDALL_CHUNK_ELEMENTS = 1 << 18  # entries of the d x d sign matrices per chunk (1 MiB each)


@register(category="agreement", kind="pair", higher_is_better=True, range=(-1.0, 1.0),
          reference="Cosine similarity of attribution vectors, e.g. Ghorbani, Abid & Zou 2019",
          undefined="all-zero map")
@masked_features
def cosine_similarity(a: Tensor | Attributions, b: Tensor | Attributions, *,
                      abs: bool = False) -> Tensor:  # noqa: A002
    """Cosine similarity ``<a, b> / (||a|| ||b||)`` of two maps' feature vectors, per sample.

    Returns
    -------
    Tensor of shape (N,), float64
        In [-1, 1]; 1 for maps that differ by a positive factor (scale
        invariant); NaN (with one :class:`UndefinedScoreWarning` per call)
        when either map is all zero.
    """
    x, y = _pair(a, b)
    if abs:
        x, y = x.abs(), y.abs()
    denom = x.norm(dim=1) * y.norm(dim=1)
    out = torch.where(denom > 0, ((x * y).sum(dim=1) / denom).clamp(-1, 1),
                      torch.full_like(denom, float("nan")))
    return warn_undefined(out, "cosine_similarity", "a map is all zero")


@register(category="agreement", kind="pair", higher_is_better=True, range=(0.0, 1.0),
          reference="Sign agreement of feature attributions, as in Krishna et al. 2022, 'The "
                    "disagreement problem in explainable machine learning' (signed agreement)",
          undefined="all-zero maps")
@masked_features
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
        NaN (with one :class:`UndefinedScoreWarning` per call) when both maps
        are all zero (or, with ``k``, the first one is). Not meaningful for maps
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
    out = torch.where(n > 0, (same * counted).sum(dim=1) / n.clamp_min(1),
                      torch.full_like(n, float("nan")))
    return warn_undefined(out, "sign_agreement", "no feature is nonzero in the maps compared")


def _ssim_window(size: int, gaussian: bool, device: torch.device) -> Tensor:
    """The (1, 1, size, size) averaging window: uniform, or a Gaussian of sigma 1.5, summing to 1."""
    if gaussian:
        r = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
        g = torch.exp(-0.5 * (r / 1.5) ** 2)
        g = g / g.sum()
        w = g[:, None] * g[None, :]
    else:
        w = torch.full((size, size), 1.0 / size**2, dtype=torch.float64, device=device)
    return w[None, None]


@register(category="agreement", kind="pair", higher_is_better=True, range=(-1.0, 1.0),
          reference="Wang, Bovik, Sheikh & Simoncelli 2004, 'Image quality assessment: from error "
                    "visibility to structural similarity', IEEE TIP (eq. 13, mean SSIM)",
          images_only=True)
def ssim(a: Tensor | Attributions, b: Tensor | Attributions, *, absolute: bool = False,
         data_range: float | None = None, window: int = 7, gaussian: bool = False) -> Tensor:
    """Mean structural similarity (SSIM) of two image maps, per sample.

    Each map is reduced to one value per pixel (channels summed with their
    signs, as :func:`~xprune.metrics.feature_map`), shape (H, W). Over every
    ``window`` x ``window`` patch that lies inside the image (no padding),

    ``SSIM = (2 mu_a mu_b + C1)(2 s_ab + C2) / ((mu_a^2 + mu_b^2 + C1)(s_a^2 + s_b^2 + C2))``

    with the patch means ``mu``, variances ``s^2`` and covariance ``s_ab``
    (sample estimates: factor P / (P - 1) for P = window^2 pixels),
    ``C1 = (0.01 R)^2`` and ``C2 = (0.03 R)^2`` for the data range ``R``
    (Wang et al. 2004, eq. 13 with K1 = 0.01, K2 = 0.03); the score is the
    mean over the patches. This is ``skimage.metrics.structural_similarity``
    with its defaults (``win_size=7``, ``use_sample_covariance=True``) and
    ``data_range=R``.

    Parameters
    ----------
    a, b : Tensor of shape (N, C, H, W) or Attributions
        Two maps of the same N images; H and W need not be equal.
    absolute : bool
        Compare |a| and |b| (after the channel sum) instead of the signed maps.
    data_range : float > 0, optional
        ``R``. Default: per sample, the range of the two maps together,
        ``max(a, b) - min(a, b)`` over both maps' pixels (after ``absolute``),
        which is what Quantus 0.6 passes to scikit-image. A fixed value makes
        scores of maps with different magnitudes (dense vs sparse) less
        comparable: C1 and C2 then matter more for the smaller maps.
    window : int
        Odd side of the patch, >= 3; 7 as scikit-image's default.
    gaussian : bool
        Weight each patch with a Gaussian of sigma 1.5 (truncated to the
        window and renormalised) instead of uniformly. With ``window=11`` this
        is Wang et al.'s 11 x 11 window and scikit-image's
        ``gaussian_weights=True``.

    Returns
    -------
    Tensor of shape (N,), float64
        In [-1, 1]; higher = more similar; a map against itself scores 1.
        Two identical constant maps (e.g. both all zero) have no data range;
        they score 1 (where scikit-image returns NaN). A constant map against
        a varying one is well defined (C1, C2 > 0).

    Raises
    ------
    ValueError
        If the maps are not 4-D image maps (tabular or 1-D maps have no
        patches), differ in shape or hold NaN/Inf; if ``window`` is not an
        odd integer >= 3 or exceeds the image height or width (scikit-image
        raises too; shrinking the window silently would change the measure);
        or if ``data_range`` is not positive.
    """
    x, y = values_of(a, "a"), values_of(b, "b")
    check_same_shape(x, y, "a", "b")
    if x.dim() != 4:
        raise ValueError(f"Expected `a` and `b` to be image maps of shape (N, C, H, W) for SSIM, "
                         f"got shape {tuple(x.shape)}; use e.g. spearman for tabular maps.")
    if isinstance(window, bool) or not isinstance(window, int) or window < 3 or window % 2 == 0:
        raise ValueError(f"Expected `window` to be an odd integer >= 3, got {window!r}.")
    height, width = x.shape[2:]
    if height < window or width < window:
        raise ValueError(f"Expected images of at least {window} x {window} pixels for an SSIM "
                         f"window of {window}, got {height} x {width}; pass a smaller odd "
                         f"`window`.")
    if data_range is not None and (isinstance(data_range, bool)
                                   or not isinstance(data_range, (int, float))
                                   or not math.isfinite(data_range) or data_range <= 0):
        raise ValueError(f"Expected `data_range` > 0 or None, got {data_range!r}.")
    n = x.shape[0]
    x, y = x.double().sum(dim=1), y.double().sum(dim=1)                      # (N, H, W)
    if absolute:
        x, y = x.abs(), y.abs()
    if data_range is None:
        both = torch.cat([x.reshape(n, -1), y.reshape(n, -1)], dim=1)
        r = both.amax(dim=1) - both.amin(dim=1)
    else:
        r = torch.full((n,), float(data_range), dtype=torch.float64, device=x.device)
    stats = torch.stack([x, y, x * x, y * y, x * y], dim=1).reshape(n * 5, 1, height, width)
    m = torch.nn.functional.conv2d(stats, _ssim_window(window, gaussian, x.device))
    mu_x, mu_y, m_xx, m_yy, m_xy = m.reshape(n, 5, *m.shape[2:]).unbind(dim=1)
    p = window * window
    norm = p / (p - 1)
    var_x, var_y = norm * (m_xx - mu_x * mu_x), norm * (m_yy - mu_y * mu_y)
    cov = norm * (m_xy - mu_x * mu_y)
    c1, c2 = ((0.01 * r) ** 2)[:, None, None], ((0.03 * r) ** 2)[:, None, None]
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)
         / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2)))
    # r = 0 only for two identical constant maps (0/0 above): identical maps score 1
    return torch.where(r > 0, s.mean(dim=(1, 2)), torch.ones_like(r))


def foreground(inputs: Tensor, baseline: float = 0.0) -> Tensor:
    """Features where the input differs from the baseline: bool Tensor of shape (N, d).

    A pixel counts when any of its channels differs from ``baseline``.
    Zero-baseline methods (Integrated Gradients, input x gradient) give
    exactly 0 on every other feature, for any model, which inflates the
    agreement of any two models' maps; comparing over these features only
    removes that shared zero background.

    Parameters
    ----------
    inputs : Tensor of shape (N, *F)
    baseline : float
        The attribution baseline (0 for the digits background).
    """
    x = values_of(inputs, "inputs")
    differs = x != baseline
    if differs.dim() >= 3:
        differs = differs.any(dim=1)
    return differs.reshape(differs.shape[0], -1)


def on_features(metric, a: Tensor | Attributions, b: Tensor | Attributions, features: Tensor,
                **params) -> Tensor:
    """A pair metric computed over a subset of each sample's features only.

    For each sample, the features where ``features`` is True are taken from
    both maps (a pixel's channels summed first, as every agreement metric
    does) and scored by ``metric`` as a map of those features alone, so rank
    correlations rank only them. Samples with the same number of selected
    features are scored together in one batched call.

    Parameters
    ----------
    metric : callable
        A pair metric such as :func:`spearman` taking (M, m) maps.
    a, b : Tensor of shape (N, *F) or Attributions
    features : bool Tensor of shape (N, d)
        e.g. :func:`foreground`; d features per sample as in :func:`feature_map`.
    **params
        Keyword arguments of ``metric``; an integer ``k`` larger than a
        sample's selected features is lowered to their number.

    Returns
    -------
    Tensor of shape (N,), float64
        The metric's value over the selected features; NaN for a sample with
        none selected (and wherever the metric itself is undefined, e.g. a
        rank correlation over a single feature), with one
        :class:`UndefinedScoreWarning` per call for all of them.

    Raises
    ------
    ValueError
        If ``features`` is not a bool tensor of shape (N, d), or on the metric's errors.
    """
    x, y = _pair(a, b)
    if not isinstance(features, Tensor) or features.dtype != torch.bool \
            or tuple(features.shape) != tuple(x.shape):
        raise ValueError(f"Expected `features` to be a bool tensor of shape {tuple(x.shape)}, "
                         f"got {getattr(features, 'dtype', type(features).__name__)} of shape "
                         f"{tuple(getattr(features, 'shape', ()))}.")
    features = features.to(x.device)
    counts = features.sum(dim=1)
    out = torch.full((x.shape[0],), float("nan"), dtype=torch.float64)
    with undefined_reasons() as reasons:  # one warning for the call, not one per group
        for m in counts.unique().tolist():
            if m == 0:
                continue
            rows = (counts == m).nonzero()[:, 0]
            sel = features[rows]
            xs = x[rows][sel].reshape(len(rows), m)   # row-major: each row keeps its order
            ys = y[rows][sel].reshape(len(rows), m)
            kw = dict(params)
            if isinstance(kw.get("k"), int):
                kw["k"] = min(kw["k"], m)
            out[rows.cpu()] = metric(xs, ys, **kw).double().cpu()
    if bool((counts == 0).any()):
        reasons.append("no feature selected")
    name = getattr(metric, "__name__", "metric")
    return warn_undefined(out, f"{name} over the selected features", "; ".join(reasons)
                          or "undefined on the selected features")


def normalise_maps(maps: Tensor, *, absolute: bool) -> Tensor:
    """Each map divided by its largest magnitude, as Adebayo et al.'s released code does.

    A pixel's channels are summed first. ``absolute=True`` gives
    ``|m| / max |m|`` in [0, 1] (their ``abs_grayscale_norm``), else
    ``m / max |m|`` in [-1, 1] (their ``diverging_norm``; Adebayo et al. 2018,
    "Sanity checks for saliency maps"). Per sample, so a
    map's normalisation does not depend on the other maps of the batch; an
    all-zero map stays all zero.

    Parameters
    ----------
    maps : Tensor of shape (N, C, H, W)

    Returns
    -------
    Tensor of shape (N, 1, H, W), float64
    """
    if not isinstance(maps, Tensor) or maps.dim() != 4:
        raise ValueError(f"Expected `maps` to be a tensor of shape (N, C, H, W), got "
                         f"{tuple(getattr(maps, 'shape', ()))}.")
    v = maps.double().sum(dim=1, keepdim=True)
    if absolute:
        v = v.abs()
    peak = v.abs().amax(dim=(1, 2, 3), keepdim=True)
    return torch.where(peak > 0, v / torch.where(peak > 0, peak, 1.0), torch.zeros_like(v))


def ssim_on_features(a: Tensor, b: Tensor, features: Tensor, *, window: int = 3,
                     data_range: float = 1.0) -> Tensor:
    """Mean SSIM over the windows centred on the selected pixels, per sample.

    scikit-image's local SSIM map (``structural_similarity(full=True)``,
    Wang et al. 2004, K1 = 0.01, K2 = 0.03, uniform ``window`` x ``window``
    patches, sample covariance) is averaged over the pixels where
    ``features`` is True among those whose window lies inside the image. With
    every pixel selected this is the mean SSIM of
    :func:`xprune.metrics.agreement.ssim` with the same window and data range.

    Parameters
    ----------
    a, b : Tensor of shape (N, C, H, W)
        Channels are summed first.
    features : bool Tensor of shape (N, H * W)
        e.g. :func:`xprune.metrics.agreement.foreground`.
    window : int
        Odd side of the patch, >= 3.
    data_range : float
        ``R`` in the stabilising constants (1 for maps normalised to [0, 1]).

    Returns
    -------
    Tensor of shape (N,), float64
        In [-1, 1], higher = more similar; NaN for a sample with no selected
        pixel away from the border.
    """
    from skimage.metrics import structural_similarity

    if a.dim() != 4 or a.shape != b.shape:
        raise ValueError(f"Expected `a` and `b` of the same shape (N, C, H, W), got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}.")
    n, _, h, w = a.shape
    if (not isinstance(features, Tensor) or features.dtype != torch.bool
            or tuple(features.shape) != (n, h * w)):
        raise ValueError(f"Expected `features` to be a bool tensor of shape {(n, h * w)}, got "
                         f"{getattr(features, 'dtype', type(features).__name__)} of shape "
                         f"{tuple(getattr(features, 'shape', ()))}.")
    x = a.double().sum(dim=1).cpu().numpy()
    y = b.double().sum(dim=1).cpu().numpy()
    keep = features.reshape(n, h, w).cpu().numpy()
    pad = (window - 1) // 2
    inner = (slice(pad, h - pad), slice(pad, w - pad))
    out = torch.full((n,), math.nan, dtype=torch.float64)
    for i in range(n):
        selected = keep[i][inner]
        if selected.any():
            _, local = structural_similarity(x[i], y[i], win_size=window, data_range=data_range,
                                             full=True)
            out[i] = float(local[inner][selected].mean())
    return out
