"""Plausibility: agreement of a map with a known ground-truth rationale.

A rationale is a boolean mask over the features that carry the evidence: the
label-deciding words of a generated sentence, the formant bands of a
synthesised vowel, the object pixels of an image. Every score here compares a
map with that mask, per sample, over the features a ``feature_mask`` keeps
(padding never counts). Definitions after DeYoung et al. 2020 ("ERASER: A
Benchmark to Evaluate Rationalized NLP Models", ACL), section 4.1: token-level
F1 and IOU of the top-k features (hard rationales) and the area under the
precision-recall curve of the scores (soft rationales), as ferret 0.4.2 computes
them.

Shapes: maps ``(N, *F)``; a feature is a token (N, T), a tabular column
(N, F), or a pixel / time-frequency bin of (N, C, *S) inputs (channels summed,
as everywhere in :mod:`xprune.metrics`). ``rationale`` and ``feature_mask``
are boolean tensors of the feature shape: (N, T), (N, F) or (N, *S); for
(N, C, *S) maps a rationale of shape (N, C, *S) is also accepted and reduced
over channels with ``any``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._validation import check_count
from ..attribution import Attributions
from ._base import feature_map, register, values_of, warn_undefined

__all__ = ["rationale_auprc", "rationale_mass", "rationale_top_k", "token_f1", "token_iou"]

_EMPTY = "empty rationale (no evidence feature to find)"
_REFERENCE = ("DeYoung et al. 2020, ERASER: A Benchmark to Evaluate Rationalized NLP Models "
              "(ACL), sec. 4.1; ferret 0.4.2")


def _features(a: Tensor | Attributions, rationale: Tensor, feature_mask: Tensor | None
              ) -> tuple[Tensor, Tensor, Tensor]:
    """(scores (N, d) float64, rationale (N, d) bool, kept (N, d) bool), checked."""
    if feature_mask is None and isinstance(a, Attributions):
        feature_mask = getattr(a, "feature_mask", None)
    values = values_of(a)
    scores = feature_map(values).double()
    n, d = scores.shape
    r = _as_feature_mask(rationale, values, "rationale")
    kept = (torch.ones(n, d, dtype=torch.bool, device=scores.device) if feature_mask is None
            else _as_feature_mask(feature_mask, values, "feature_mask"))
    return scores, r.to(scores.device), kept.to(scores.device)


def _as_feature_mask(mask: object, values: Tensor, name: str) -> Tensor:
    """``mask`` as a boolean (N, d) tensor over the features of ``values`` (N, *F)."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"Expected `{name}` to be a boolean torch.Tensor, got "
                        f"{type(mask).__name__}.")
    if mask.dtype != torch.bool:
        if mask.is_floating_point() or not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"Expected `{name}` to be a boolean mask (or 0/1 integers), got "
                             f"dtype {mask.dtype}.")
        mask = mask.bool()
    shape, feature_shape = tuple(values.shape), tuple(values.shape[:1] + values.shape[2:])
    if values.dim() >= 3 and tuple(mask.shape) == shape:
        mask = mask.any(dim=1)
    elif tuple(mask.shape) != (feature_shape if values.dim() >= 3 else shape):
        expected = f"{feature_shape} or {shape}" if values.dim() >= 3 else f"{shape}"
        raise ValueError(f"Expected `{name}` of shape {expected} (one entry per feature of the "
                         f"maps), got {tuple(mask.shape)}.")
    return mask.reshape(mask.shape[0], -1)


def rationale_top_k(a: Tensor | Attributions, k: int, *, only_positive: bool = True,
                    feature_mask: Tensor | None = None) -> Tensor:
    """The hard rationale of each map: its ``k`` highest-scoring features.

    Parameters
    ----------
    a : Tensor of shape (N, *F) or Attributions
    k : int
        Features to select, 1 <= k <= d.
    only_positive : bool
        Default True (ferret's default): only features with a score > 0 may
        enter, so a map with fewer than k positive features selects fewer.
        False ranks by the signed score and always selects k (of the kept).
    feature_mask : bool Tensor of the feature shape, optional
        False marks features that never enter (padding); default: the
        ``Attributions``' own mask if it has one, else all features.

    Returns
    -------
    bool Tensor of shape (N, d)
        True for the selected features. Ties are broken by position, earlier
        first.
    """
    if feature_mask is None and isinstance(a, Attributions):
        feature_mask = getattr(a, "feature_mask", None)
    values = values_of(a)
    scores = feature_map(values).double()
    kept = (torch.ones_like(scores, dtype=torch.bool) if feature_mask is None
            else _as_feature_mask(feature_mask, values, "feature_mask").to(scores.device))
    check_count(k, "k", scores.shape[1])
    return _top_k(scores, kept, k, only_positive)


def _top_k(scores: Tensor, kept: Tensor, k: int, only_positive: bool) -> Tensor:
    """(N, d) bool: the k best kept features (score > 0 only, if asked); ties by position."""
    ranked = scores.masked_fill(~kept, -torch.inf)
    # a stable sort on -score keeps equal scores in position order
    order = torch.sort(-ranked, dim=1, stable=True).indices[:, :k]
    chosen = torch.zeros_like(kept).scatter_(1, order, True) & kept
    if only_positive:
        chosen &= scores > 0
    return chosen


def _hard_counts(a, rationale, k, only_positive, feature_mask):
    scores, truth, kept = _features(a, rationale, feature_mask)
    check_count(k, "k", scores.shape[1])
    predicted = _top_k(scores, kept, k, only_positive)
    truth = truth & kept
    tp = (predicted & truth).sum(dim=1).double()
    return tp, truth.sum(dim=1).double(), predicted.sum(dim=1).double()


@register(category="plausibility", kind="rationale", higher_is_better=True, range=(0.0, 1.0),
          reference=_REFERENCE, undefined=_EMPTY)
def token_f1(a: Tensor | Attributions, rationale: Tensor, *, k: int = 5,
             only_positive: bool = True, feature_mask: Tensor | None = None) -> Tensor:
    """Token-level F1 of the map's top-k features against the ground-truth rationale.

    ``P = |top_k(a) ∩ R| / |top_k(a)|``, ``Rc = |top_k(a) ∩ R| / |R|``,
    ``F1 = 2 P Rc / (P + Rc)`` per sample (DeYoung et al. 2020, the
    instance-level token F1 that ERASER and ferret average over samples).

    Parameters
    ----------
    a : Tensor of shape (N, *F) or Attributions
    rationale : bool Tensor of the feature shape (N, T), (N, F) or (N, *S)
        True for the features that carry the evidence.
    k : int
        Size of the hard rationale taken from the map, 1 <= k <= d; ferret's
        default 5 (ERASER sets it to the mean human rationale length).
    only_positive : bool
        Only positive scores may enter the top k (ferret's default).
    feature_mask : bool Tensor of the feature shape, optional
        Features outside it (padding) count neither in the top k nor in R.

    Returns
    -------
    Tensor of shape (N,), float64
        In [0, 1]; higher = more plausible. 0 when nothing is selected or
        nothing overlaps (ferret's convention); NaN, with an UndefinedScoreWarning,
        for a sample whose rationale is empty (recall undefined).

    Raises
    ------
    ValueError
        If ``k`` is outside [1, d] or a mask has the wrong shape or dtype.
    """
    tp, positives, selected = _hard_counts(a, rationale, k, only_positive, feature_mask)
    precision = tp / selected.clamp_min(1)
    recall = tp / positives.clamp_min(1)
    f1 = torch.where(tp > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-300),
                     torch.zeros_like(tp))
    return _undefined_without_rationale(f1, positives, "token_f1")


@register(category="plausibility", kind="rationale", higher_is_better=True, range=(0.0, 1.0),
          reference=_REFERENCE, undefined=_EMPTY)
def token_iou(a: Tensor | Attributions, rationale: Tensor, *, k: int = 5,
              only_positive: bool = True, feature_mask: Tensor | None = None) -> Tensor:
    """Token-level intersection over union of the map's top-k features and the rationale.

    ``IOU = |top_k(a) ∩ R| / |top_k(a) ∪ R|`` per sample (DeYoung et al. 2020
    define IOU on the tokens two spans cover). Arguments as :func:`token_f1`.

    Returns
    -------
    Tensor of shape (N,), float64
        In [0, 1]; higher = more plausible; NaN, with an UndefinedScoreWarning, for a
        sample whose rationale is empty.
    """
    tp, positives, selected = _hard_counts(a, rationale, k, only_positive, feature_mask)
    union = positives + selected - tp
    iou = tp / union.clamp_min(1)
    return _undefined_without_rationale(iou, positives, "token_iou")


@register(category="plausibility", kind="rationale", higher_is_better=True, range=(0.0, 1.0),
          reference=_REFERENCE, undefined=_EMPTY)
def rationale_auprc(a: Tensor | Attributions, rationale: Tensor, *,
                    only_positive: bool = False, feature_mask: Tensor | None = None) -> Tensor:
    """Area under the precision-recall curve of the map's scores against the rationale.

    The soft-rationale score of DeYoung et al. 2020 (ERASER's and ferret's
    ``auc(recall, precision)`` over scikit-learn's ``precision_recall_curve``):
    every distinct score is a threshold; at threshold s, precision and recall
    of {features with score >= s} against R; the curve closes at (recall 0,
    precision 1) and is integrated with the trapezoidal rule over recall.
    Signed scores are ranked as they are (a negative score is evidence
    against the class).

    Parameters
    ----------
    a : Tensor of shape (N, *F) or Attributions
    rationale : bool Tensor of the feature shape
    only_positive : bool
        False (ERASER): the signed scores. True: negative scores count as 0,
        ferret 0.4.2's default (after HateXplain), which ties every feature
        with evidence against the class.
    feature_mask : bool Tensor of the feature shape, optional
        Features outside it (padding) are left out of the curve.

    Returns
    -------
    Tensor of shape (N,), float64
        In [0, 1]; higher = more plausible; a map that ranks every rationale
        feature above every other scores 1. NaN, with an UndefinedScoreWarning, for a
        sample whose rationale is empty.
    """
    scores, truth, kept = _features(a, rationale, feature_mask)
    if only_positive:
        scores = scores.clamp_min(0.0)
    truth = truth & kept
    n, d = scores.shape
    # descending by score; kept features first, padding last and never counted
    ranked = scores.masked_fill(~kept, -torch.inf)
    order = torch.sort(-ranked, dim=1, stable=True).indices
    s = ranked.gather(1, order)
    hit = (truth.gather(1, order) & kept.gather(1, order)).double()
    valid = kept.gather(1, order)
    tp = hit.cumsum(dim=1)
    fp = (valid.double() - hit).cumsum(dim=1)
    # a threshold closes after the last feature of each run of equal scores
    last_of_run = torch.ones(n, d, dtype=torch.bool, device=scores.device)
    last_of_run[:, :-1] = s[:, :-1] != s[:, 1:]
    last_of_run &= valid
    positives = truth.sum(dim=1, keepdim=True).double()
    precision = tp / (tp + fp).clamp_min(1)
    recall = tp / positives.clamp_min(1)
    # The curve's points are (recall, precision) at each threshold, from the highest score
    # down, after the starting point (0, 1); each adds the trapezoid from the point before.
    position = torch.arange(d, device=scores.device).expand(n, d)
    previous = torch.where(last_of_run, position, torch.full_like(position, -1)).cummax(dim=1)
    before = torch.cat([torch.full_like(position[:, :1], -1), previous.values[:, :-1]], dim=1)
    first = before < 0
    prev_r = torch.where(first, 0.0, recall.gather(1, before.clamp_min(0)))
    prev_p = torch.where(first, 1.0, precision.gather(1, before.clamp_min(0)))
    pieces = (recall - prev_r) * (precision + prev_p) / 2
    area = torch.where(last_of_run, pieces, torch.zeros_like(pieces)).sum(dim=1)
    return _undefined_without_rationale(area, positives[:, 0], "rationale_auprc")


@register(category="plausibility", kind="rationale", higher_is_better=True, range=(0.0, 1.0),
          reference="Arras, Osman & Samek 2022, 'CLEVR-XAI: a benchmark dataset for the ground "
                    "truth evaluation of neural network explanations', Information Fusion "
                    "(relevance mass accuracy); Quantus 0.6 RelevanceMassAccuracy",
          undefined=_EMPTY + "; all-zero map (no mass to place)")
def rationale_mass(a: Tensor | Attributions, rationale: Tensor, *, only_positive: bool = False,
                   feature_mask: Tensor | None = None) -> Tensor:
    """The fraction of the map's mass that lies on the rationale (relevance mass accuracy).

    ``sum_{i in R} m_i / sum_i m_i`` per sample over the kept features, with
    ``m_i = |s_i|`` (default) or ``max(s_i, 0)`` (``only_positive``, Arras et
    al.'s positive relevance), ``s_i`` the feature's score (a pixel's or
    time-frequency bin's channels summed first). For the synthesised vowels: the
    share of the map's energy in the formant bands. Unlike the top-k scores
    it uses the whole map, and unlike AUPRC its magnitudes, not only its ranking.

    Parameters
    ----------
    a : Tensor of shape (N, *F) or Attributions
    rationale : bool Tensor of the feature shape (N, T), (N, F) or (N, *S)
        (or (N, C, *S), reduced over channels with ``any``).
    only_positive : bool
        Count positive scores only (negative ones carry no mass).
    feature_mask : bool Tensor of the feature shape, optional
        Features outside it (padding) count neither above nor below the line.

    Returns
    -------
    Tensor of shape (N,), float64
        In [0, 1]; higher = more plausible. A map inside the rationale scores
        1, one outside it 0, a constant map ``|R| / d``. Invariant to positive
        scaling of the map. NaN, with an UndefinedScoreWarning, for a sample
        whose rationale is empty or whose map has no mass (all zero, or no
        positive score with ``only_positive``).

    Raises
    ------
    ValueError
        If a mask has the wrong shape or dtype.

    Notes
    -----
    Quantus 0.6 ``RelevanceMassAccuracy`` with ``abs=True, normalise=False``
    gives the same values on one-channel maps (it takes ``|a|`` per element,
    before any channel sum).
    """
    scores, truth, kept = _features(a, rationale, feature_mask)
    mass = scores.clamp_min(0.0) if only_positive else scores.abs()
    mass = mass.masked_fill(~kept, 0.0)
    truth = truth & kept
    total = mass.sum(dim=1)
    share = (mass * truth).sum(dim=1) / total.clamp_min(1e-300)
    nan = torch.full_like(share, float("nan"))
    out = share
    for undefined, reason in ((total <= 0, "the map has no mass (all zero)"),
                              (~truth.any(dim=1), _EMPTY)):
        # each reason counts its own samples, not those another reason made NaN
        warn_undefined(torch.where(undefined, nan, share), "rationale_mass", reason,
                       stacklevel=3)
        out = torch.where(undefined, nan, out)
    return out


def _undefined_without_rationale(score: Tensor, positives: Tensor, name: str) -> Tensor:
    """NaN, with one :class:`UndefinedScoreWarning`, where a sample has no evidence feature."""
    score = torch.where(positives == 0, torch.full_like(score, float("nan")), score)
    return warn_undefined(score, name, _EMPTY, stacklevel=4)
