"""Faithfulness: does the model's output move the way the map says it should?

A *feature* is a column of tabular data or a pixel of an image (all its
channels are replaced together). "Removing" a feature sets it to the baseline.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .._state import as_logits, eval_mode, model_device, to_model
from .._validation import check_count, check_fraction, check_positive_int, check_tensor
from ..attribution import DEFAULT_MAX_ROWS, Attributions
from ._base import (
    as_baseline,
    check_map_and_inputs,
    check_output,
    expand_feature_mask,
    feature_map,
    model_targets,
    pearson,
    register,
    target_scores,
)
from ._base import warn_undefined as _warn_nan  # the one helper for undefined scores
from .agreement import average_ranks

__all__ = ["DeletionCurve", "aopc", "deletion_auc", "deletion_curve", "faithfulness_correlation",
           "infidelity", "insertion_auc", "insertion_curve", "monotonicity_correlation",
           "noisy_linear_imputation", "region_perturbation_curve", "road", "road_curve",
           "sensitivity_n", "sensitivity_n_curve"]


class DeletionCurve(NamedTuple):
    """A batch of deletion curves.

    fractions : Tensor of shape (T + 1,), float64
        Fraction of features removed at each point, from 0 to 1.
    values : Tensor of shape (N, T + 1), float64
        The target's score at each point; column 0 is the unperturbed input.
    """

    fractions: Tensor
    values: Tensor


def _perturbed_scores(model: nn.Module, x: Tensor, targets: Tensor, masks_for, n_per_sample: int,
                      baseline, output: str, max_rows: int, reduce=None) -> Tensor:
    """Scores of ``x`` with feature masks ``masks_for(sample_slice) -> (c, *R, d)`` replaced.

    True in a mask replaces the feature (all channels of a pixel) by
    ``baseline``: a Tensor broadcastable against ``x[:, None]`` (see
    :func:`as_baseline`), or a callable ``replacement_for(sample_slice) ->
    Tensor`` broadcastable to (c, *R, *F), values per row such as fresh random
    draws. ``R`` is one axis of ``n_per_sample`` rows, or several axes that,
    broadcast with the replacement's, hold that many (row-major): masks
    (c, K, 1, d) and draws (c, 1, S, *F) give K * S rows without copies.

    Samples are processed in order, in chunks small enough that one forward
    pass sees at most ``max_rows`` rows; ``masks_for`` and then
    ``replacement_for`` are called once per chunk, in order, so both may draw
    from a generator and keep per-chunk results. Returns shape
    (N, n_per_sample), or with ``reduce(sample_slice, scores (c,
    n_per_sample)) -> Tensor (c, ...)`` the reduced chunks concatenated, so
    that only each chunk's reduction is kept.
    """
    n, feat = x.shape[0], x.shape[1:]
    chunk = max(1, max_rows // n_per_sample)
    out = []
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        features = masks_for(sl)                              # (c, *R, d)
        mask = expand_feature_mask(features, x.shape)         # (c, *R, 1, *S) or (c, *R, F)
        c, lead = features.shape[0], (1,) * (features.dim() - 2)
        xs = x[sl].reshape(c, *lead, *feat)
        if callable(baseline):
            b = baseline(sl)
        elif baseline.dim() == x.dim() + 1:                   # one baseline per sample
            b = baseline[sl].reshape(c, *lead, *feat)
        else:
            b = baseline
        perturbed = torch.where(mask, b, xs).reshape(-1, *feat)
        t = targets[sl].repeat_interleave(n_per_sample)
        scores = target_scores(model, perturbed, t, output=output, max_rows=max_rows)
        scores = scores.reshape(-1, n_per_sample)
        out.append(scores if reduce is None else reduce(sl, scores))
    return torch.cat(out)


def deletion_curve(model: nn.Module, inputs: Tensor, attributions: Tensor | Attributions,
                   target: Any, *, baseline: float | Tensor = 0.0, steps: int | None = None,
                   output: str = "probability", max_rows: int = DEFAULT_MAX_ROWS) -> DeletionCurve:
    """Deletion curves: the target's score as features are removed, most important first.

    Features are ranked by their signed attribution, descending (ties by
    index); after step j, the first ``round(j * d / steps)`` are set to the
    baseline. The curve starts at the unperturbed input (fraction 0) and ends
    with every feature removed (fraction 1). This is the deletion metric of
    Petsiuk et al. 2018 and the pixel-flipping curve of Bach et al. 2015.

    Parameters
    ----------
    model : nn.Module
        (M, *F) -> (M, C) logits; evaluated in eval mode, restored afterwards.
    inputs : Tensor of shape (N, *F)
    attributions : Tensor of shape (N, *F) or Attributions
    target : int, sequence or Tensor of shape (N,)
        The class whose score is tracked.
    baseline : float or Tensor of shape (*F) or (N, *F)
        Value a removed feature takes (per sample with a leading batch axis).
    steps : int, optional
        Points after the first, 1 <= steps <= d; default d (one feature per step).
    output : {"probability", "logit"}
        Track the target's softmax probability (Petsiuk et al., the default) or its logit.
    max_rows : int
        Rows per forward pass at most.

    Returns
    -------
    DeletionCurve
        ``fractions`` (T + 1,) and ``values`` (N, T + 1).

    Raises
    ------
    ValueError
        On mismatched shapes, NaN/Inf, ``steps`` outside [1, d], a bad target or output.
    """
    return _ranked_curve(model, inputs, attributions, target, baseline=baseline, steps=steps,
                         output=output, max_rows=max_rows, insert=False)


def _ranked_curve(model, inputs, attributions, target, *, baseline, steps, output, max_rows,
                  insert: bool) -> DeletionCurve:
    """Scores as features are removed (or inserted into the baseline), most important first."""
    x, a = check_map_and_inputs(inputs, attributions)
    check_output(output)
    check_positive_int(max_rows, "max_rows")
    targets = model_targets(model, x, target)
    scores = feature_map(a.to(x.device))
    n, d = scores.shape
    steps = d if steps is None else steps
    check_count(steps, "steps", d)
    changed = torch.round(torch.arange(steps + 1, dtype=torch.float64) * d / steps).long()
    changed = changed.to(x.device)
    order = scores.argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(d).expand(n, d))
    b = as_baseline(baseline, x)

    def masks_for(sl: slice) -> Tensor:  # True = the feature is at the baseline
        if insert:
            return rank[sl, None, :] >= changed[None, :, None]
        return rank[sl, None, :] < changed[None, :, None]

    values = _perturbed_scores(model, x, targets, masks_for, steps + 1, b, output, max_rows)
    return DeletionCurve(fractions=changed.cpu().double() / d, values=values)


def insertion_curve(model: nn.Module, inputs: Tensor, attributions: Tensor | Attributions,
                    target: Any, *, baseline: float | Tensor = 0.0, steps: int | None = None,
                    output: str = "probability", max_rows: int = DEFAULT_MAX_ROWS
                    ) -> DeletionCurve:
    """Insertion curves: start from the baseline and insert features, most important first.

    The mirror of :func:`deletion_curve`: column 0 is the all-baseline input
    (fraction 0 inserted), the last column the unperturbed input. Same
    arguments, ranking and errors. Petsiuk et al. 2018 start insertion from a
    blurred copy of each image; the default here is the constant 0 of
    deletion. For theirs pass per-sample blurred inputs,
    ``baseline=xprune.attribution.make_baseline("blur", inputs)``.
    """
    return _ranked_curve(model, inputs, attributions, target, baseline=baseline, steps=steps,
                         output=output, max_rows=max_rows, insert=True)


@register(category="faithfulness", kind="model", higher_is_better=True, range=(0.0, 1.0),
          reference="Petsiuk, Das & Saenko 2018, 'RISE: Randomized input sampling for "
                    "explanation of black-box models', BMVC (insertion metric)")
def insertion_auc(model: nn.Module, inputs: Tensor, attributions: Tensor | Attributions,
                  target: Any, *, baseline: float | Tensor = 0.0, steps: int | None = None,
                  output: str = "probability", max_rows: int = DEFAULT_MAX_ROWS) -> Tensor:
    """Area under the insertion curve over the fraction of features inserted, per sample.

    Returns
    -------
    Tensor of shape (N,), float64
        In [0, 1] for probabilities; higher is better (the score rises fast
        when the features the map ranks highest are inserted first).
    """
    curve = insertion_curve(model, inputs, attributions, target, baseline=baseline, steps=steps,
                            output=output, max_rows=max_rows)
    return torch.trapezoid(curve.values, curve.fractions, dim=1)


@register(category="faithfulness", kind="model", higher_is_better=False, range=(0.0, 1.0),
          reference="Petsiuk, Das & Saenko 2018, 'RISE: Randomized input sampling for "
                    "explanation of black-box models', BMVC (deletion metric)")
def deletion_auc(model: nn.Module, inputs: Tensor, attributions: Tensor | Attributions,
                 target: Any, *, baseline: float | Tensor = 0.0, steps: int | None = None,
                 output: str = "probability", max_rows: int = DEFAULT_MAX_ROWS) -> Tensor:
    """Area under the deletion curve over the fraction of features removed, per sample.

    Trapezoidal rule over :func:`deletion_curve` on x in [0, 1]. Arguments as
    for :func:`deletion_curve`.

    Returns
    -------
    Tensor of shape (N,), float64
        In [0, 1] for probabilities; lower is better (the score falls fast when
        the features the map ranks highest are removed).
    """
    curve = deletion_curve(model, inputs, attributions, target, baseline=baseline, steps=steps,
                           output=output, max_rows=max_rows)
    return torch.trapezoid(curve.values, curve.fractions, dim=1)


def default_subset_size(d: int) -> int:
    """A quarter of the features, at least 1 and below d (16 of the 64 digits pixels)."""
    return max(1, min(d - 1, d // 4))


@register(category="faithfulness", kind="model", higher_is_better=True, range=(-1.0, 1.0),
          reference="Bhatt, Weller & Moura 2020, 'Evaluating and aggregating feature-based "
                    "model explanations', IJCAI (faithfulness correlation)")
def faithfulness_correlation(model: nn.Module, inputs: Tensor,
                             attributions: Tensor | Attributions, target: Any, *,
                             baseline: float | Tensor = 0.0, subset_size: int | None = None,
                             n_runs: int = 100, output: str = "logit",
                             generator: torch.Generator | None = None,
                             max_rows: int = DEFAULT_MAX_ROWS) -> Tensor:
    """Faithfulness correlation (Bhatt et al. 2020), per sample.

    For ``n_runs`` random subsets S of ``subset_size`` features, the Pearson
    correlation between the attribution mass ``sum_{i in S} a_i`` and the drop
    ``f_t(x) - f_t(x with x_S := baseline)`` of the target's output. This
    is sensitivity-n (Ancona et al. 2018) for n = ``subset_size``; see
    :func:`sensitivity_n_curve` for a sweep over n.

    Parameters
    ----------
    model : nn.Module
    inputs : Tensor of shape (N, *F)
    attributions : Tensor of shape (N, *F) or Attributions
    target : int, sequence or Tensor of shape (N,)
    baseline : float or Tensor of shape (*F)
        Replacement value of removed features.
    subset_size : int, optional
        Features per subset, 1 <= subset_size < d. Default: a quarter of d.
    n_runs : int
        Random subsets per sample (>= 2).
    output : {"logit", "probability"}
        Score logits (default, as Bhatt et al. and Quantus) or softmax probabilities.
    generator : torch.Generator, optional
        Source of the random subsets. Subsets are drawn sample by sample in
        batch order, so a sample's subsets depend only on the generator state
        and its position, and the same seed gives bit-identical scores.
    max_rows : int
        Rows per forward pass at most.

    Returns
    -------
    Tensor of shape (N,), float64
        In [-1, 1]; higher = more faithful. For a linear model, zero baseline
        and the exact attribution w * x it is 1 (its negation: -1). Invariant
        to positive scaling of the map. NaN (documented) when either side of
        the correlation is constant over the runs: an all-zero map, or a model
        whose output does not change when the subsets are removed.

    Raises
    ------
    ValueError
        If ``subset_size`` is not below the number of features, ``n_runs`` < 2,
        or on the errors of :func:`deletion_curve`.
    """
    x, a = check_map_and_inputs(inputs, attributions)
    check_output(output)
    check_positive_int(n_runs, "n_runs", minimum=2)
    targets = model_targets(model, x, target)
    scores = feature_map(a).double()
    n, d = scores.shape
    if subset_size is None:
        if d < 2:
            raise ValueError(f"Faithfulness correlation needs at least 2 features, got {d}.")
        subset_size = default_subset_size(d)
    check_count(subset_size, "subset_size", d, inclusive=False)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    values = _subset_correlations(model, x, scores, targets, [subset_size], n_runs=n_runs,
                                  baseline=baseline, output=output, generator=generator,
                                  max_rows=max_rows)[:, 0]
    _warn_nan(values, "faithfulness correlation",
              "the map or the output drop is constant over the runs")
    return values


def _subset_correlations(model: nn.Module, x: Tensor, scores: Tensor, targets: Tensor,
                         sizes: list[int], *, n_runs: int, baseline: float | Tensor, output: str,
                         generator: torch.Generator, max_rows: int) -> Tensor:
    """Per sample and subset size n: Pearson correlation, over ``n_runs`` random subsets S of n
    features, between ``sum_{i in S} a_i`` and the drop of the output when S is set to baseline.

    ``scores`` is the feature map (N, d). Subsets are drawn sample by sample in batch order,
    and within a sample size by size, ``n_runs`` at a time. Returns shape (N, len(sizes)).
    Shared by faithfulness correlation (one size) and sensitivity-n (a curve over sizes).
    """
    d = scores.shape[1]
    k = len(sizes)
    scores = scores.cpu()
    mass = []   # the attribution mass of each subset of the current chunk, (c, k * n_runs)

    def masks_for(sl: slice) -> Tensor:
        mask = torch.zeros(sl.stop - sl.start, k * n_runs, d, dtype=torch.bool)
        for i in range(sl.stop - sl.start):
            for j, size in enumerate(sizes):
                keys = torch.rand(n_runs, d, generator=generator)
                mask[i, j * n_runs:(j + 1) * n_runs].scatter_(
                    1, keys.topk(size, dim=1).indices, True)
        mass[:] = [(mask.double() * scores[sl, None, :]).sum(dim=2)]
        return mask.to(x.device)

    def correlations(sl: slice, perturbed: Tensor) -> Tensor:      # (c, k)
        c = perturbed.shape[0]
        drop = original[sl, None] - perturbed
        return pearson(mass[0].reshape(c * k, n_runs), drop.reshape(c * k, n_runs)).reshape(c, k)

    b = as_baseline(baseline, x)
    original = target_scores(model, x, targets, output=output, max_rows=max_rows)
    return _perturbed_scores(model, x, targets, masks_for, k * n_runs, b, output, max_rows,
                             reduce=correlations)


@register(category="faithfulness", kind="model", higher_is_better=False,
          range=(0.0, float("inf")),
          reference="Yeh, Hsieh, Suggala, Inouye & Ravikumar 2019, 'On the (in)fidelity and "
                    "sensitivity of explanations', NeurIPS (eq. INFD); Captum's infidelity")
def infidelity(model: nn.Module, inputs: Tensor, attributions: Tensor | Attributions,
               target: Any, *, noise_std: float = 0.1, n_samples: int = 10,
               normalize: bool = False, generator: torch.Generator | None = None,
               max_rows: int = DEFAULT_MAX_ROWS) -> Tensor:
    """Infidelity ``E_I[(I^T a - (f_t(x) - f_t(x - I)))^2]``, per sample (Yeh et al. 2019).

    Computed by Captum's ``captum.metrics.infidelity`` over ``n_samples``
    Gaussian perturbations ``I ~ N(0, noise_std^2)`` per element, drawn from
    ``generator`` (xprune supplies the perturbation function; Captum has no
    default). ``f_t`` is the target's logit.

    Parameters
    ----------
    model, inputs (N, *F), attributions (N, *F), target : as for :func:`deletion_curve`.
    noise_std : float > 0
        Standard deviation of the perturbation, in input units.
    n_samples : int
        Perturbations per sample.
    normalize : bool
        Rescale the map by the optimal factor beta first (Captum's option),
        which makes the score invariant to the map's scale; without it the
        score depends on the map's units (Yeh et al.'s definition).
    generator : torch.Generator, optional
        Perturbations are drawn in Captum's batch order, so the same seed gives
        bit-identical scores for the same batch.

    Returns
    -------
    Tensor of shape (N,), float64
        >= 0; lower is better. For a linear model its gradient map scores 0.
    """
    import captum.metrics

    from .._state import eval_mode, to_model

    x, a = check_map_and_inputs(inputs, attributions)
    check_positive_int(n_samples, "n_samples")
    check_positive_int(max_rows, "max_rows")
    if isinstance(noise_std, bool) or not isinstance(noise_std, (int, float)) \
            or not noise_std > 0:
        raise ValueError(f"Expected `noise_std` > 0, got {noise_std!r}.")
    targets = model_targets(model, x, target)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    xm = to_model(x, model)
    am = a.to(device=xm.device, dtype=xm.dtype)

    def perturb(batch: Tensor) -> tuple[Tensor, Tensor]:
        noise = (torch.randn(batch.shape, generator=gen, dtype=torch.float64) * noise_std)
        noise = noise.to(device=batch.device, dtype=batch.dtype)
        return noise, batch - noise

    chunk = max(1, max_rows // n_samples)  # Captum cannot split below its input batch
    out = []
    with eval_mode(model), torch.no_grad():
        for i in range(0, xm.shape[0], chunk):
            c = min(chunk, xm.shape[0] - i)
            out.append(captum.metrics.infidelity(
                model, perturb, xm[i:i + c], am[i:i + c], target=targets[i:i + c].to(xm.device),
                n_perturb_samples=n_samples, max_examples_per_batch=c * n_samples,
                normalize=normalize).detach().double().cpu())
    return torch.cat(out)


# --- sensitivity-n ------------------------------------------------------------------------

def _default_ns(d: int) -> list[int]:
    """Subset sizes 1, 2, 4, ... up to 80% of the d features (and below d)."""
    top = max(1, min(d - 1, int(0.8 * d)))
    ns, n = [], 1
    while n <= top:
        ns.append(n)
        n *= 2
    return ns


def sensitivity_n_curve(model: nn.Module, inputs: Tensor, attributions: Tensor | Attributions,
                        target: Any, *, ns: list[int] | None = None,
                        baseline: float | Tensor = 0.0, n_runs: int = 100,
                        output: str = "logit", generator: torch.Generator | None = None,
                        max_rows: int = DEFAULT_MAX_ROWS) -> Tensor:
    """Sensitivity-n (Ancona et al. 2018) for several subset sizes n, per sample.

    For each n, the Pearson correlation over ``n_runs`` random subsets S of n
    features between the attribution mass ``sum_{i in S} a_i`` and the output
    drop ``f_t(x) - f_t(x with x_S := baseline)``. A map satisfies
    sensitivity-n (Ancona et al.) when the two are equal for every subset of
    size n; the correlation measures how close it comes, and the curve over
    n shows where it breaks down. For one n this is exactly
    :func:`faithfulness_correlation` with ``subset_size=n`` (same code, same
    draws for the same seed).

    Parameters
    ----------
    model : nn.Module
    inputs : Tensor of shape (N, *F)
    attributions : Tensor of shape (N, *F) or Attributions
    target : int, sequence or Tensor of shape (N,)
    ns : list of int, optional
        Subset sizes, each in [1, d). Default 1, 2, 4, ... up to 80% of the d
        features (a log-spaced sweep): 1, 2, ..., 32 for the 64 digits pixels.
    baseline : float or Tensor of shape (*F) or (N, *F)
        Replacement value of removed features (default zero).
    n_runs : int
        Random subsets per sample and per n (>= 2).
    output : {"logit", "probability"}
        Default: the target's logit.
    generator : torch.Generator, optional
        Subsets are drawn sample by sample in batch order, for each sample n by
        n; the same seed gives bit-identical scores.
    max_rows : int
        Rows per forward pass at most.

    Returns
    -------
    Tensor of shape (N, len(ns)), float64
        In [-1, 1]; higher = more faithful. For a linear model and its exact
        attribution ``w * (x - baseline)`` every entry is 1. NaN (documented,
        with a warning) where either side is constant over the runs: an
        all-zero map, or an output that does not move.

    Raises
    ------
    ValueError
        If an n is outside [1, d), ``n_runs`` < 2, on fewer than 2 features,
        mismatched shapes, NaN/Inf, or a bad target or output.

    Notes
    -----
    Quantus 0.6 ``SensitivityN`` computes something else: it removes features
    cumulatively in descending order of the map (as in pixel flipping) and,
    for each step, correlates across the *batch* the step's attribution with
    the output drop, returning one value per step for the whole batch, so a
    sample's score depends on its batch-mates. Here every value is per sample.
    """
    x, a = check_map_and_inputs(inputs, attributions)
    check_output(output)
    check_positive_int(n_runs, "n_runs", minimum=2)
    check_positive_int(max_rows, "max_rows")
    targets = model_targets(model, x, target)
    scores = feature_map(a).double()
    d = scores.shape[1]
    if d < 2:
        raise ValueError(f"Sensitivity-n needs at least 2 features, got {d}.")
    ns = _default_ns(d) if ns is None else list(ns)
    if not ns:
        raise ValueError("Expected `ns` to hold at least one subset size, got an empty list.")
    for n in ns:
        check_count(n, "ns", d, inclusive=False)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    values = _subset_correlations(model, x, scores, targets, ns, n_runs=n_runs,
                                  baseline=baseline, output=output, generator=generator,
                                  max_rows=max_rows)
    _warn_nan(values, "sensitivity-n", "the map or the output drop is constant over the runs")
    return values


@register(category="faithfulness", kind="model", higher_is_better=True, range=(-1.0, 1.0),
          reference="Ancona, Ceolini, Oztireli & Gross 2018, 'Towards better understanding of "
                    "gradient-based attribution methods for deep neural networks', ICLR "
                    "(sensitivity-n)")
def sensitivity_n(model: nn.Module, inputs: Tensor, attributions: Tensor | Attributions,
                  target: Any, *, n: int | None = None, baseline: float | Tensor = 0.0,
                  n_runs: int = 100, output: str = "logit",
                  generator: torch.Generator | None = None,
                  max_rows: int = DEFAULT_MAX_ROWS) -> Tensor:
    """Sensitivity-n for one subset size n, per sample (Ancona et al. 2018).

    :func:`sensitivity_n_curve` with ``ns=[n]``; ``n`` defaults to a quarter
    of the d features (16 of the 64 digits pixels), as the subset size of
    :func:`faithfulness_correlation`, which is the same quantity (Bhatt et al.
    2020 fix one n; Ancona et al. sweep it): with the same arguments and seed
    both return the same values.

    Returns
    -------
    Tensor of shape (N,), float64
        In [-1, 1]; higher is better. NaN (documented, with a warning) for an
        all-zero map or an output that does not move.
    """
    x, a = check_map_and_inputs(inputs, attributions)
    d = feature_map(a[:1]).shape[1]
    if n is None:
        if d < 2:
            raise ValueError(f"Sensitivity-n needs at least 2 features, got {d}.")
        n = default_subset_size(d)
    return sensitivity_n_curve(model, x, a, target, ns=[n], baseline=baseline, n_runs=n_runs,
                               output=output, generator=generator, max_rows=max_rows)[:, 0]


# --- region perturbation / AOPC -----------------------------------------------------------

def _patch_ids(feat_shape: torch.Size, patch_size: int) -> tuple[Tensor, int]:
    """The patch index of each of the d features (shape (d,)) and the number of patches.

    Images (C, *S) are tiled by a grid of ``patch_size``-wide cells over every
    spatial axis; when ``patch_size`` does not divide an axis the grid is
    centred, the leftover split between partial cells at both ends (floor
    before, ceil after), as Quantus 0.6 pads. Tabular features are their own patch.
    """
    if len(feat_shape) < 2:
        if patch_size != 1:
            raise ValueError(f"Expected `patch_size` = 1 for tabular inputs (N, F), where each "
                             f"feature is its own region, got {patch_size!r}.")
        return torch.arange(feat_shape[0]), int(feat_shape[0])
    spatial = tuple(int(s) for s in feat_shape[1:])
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) \
            or not 1 <= patch_size <= max(spatial):
        raise ValueError(f"Expected `patch_size` to be an integer in [1, {max(spatial)}] for "
                         f"images of spatial shape {spatial}, got {patch_size!r}.")
    cells, counts = [], []
    for size in spatial:
        before = ((-size) % patch_size) // 2
        cells.append((torch.arange(size) + before) // patch_size)
        counts.append(-(-(size + (-size) % patch_size) // patch_size))
    ids = torch.zeros(spatial, dtype=torch.long)
    for axis, cell in enumerate(cells):
        shape = [1] * len(spatial)
        shape[axis] = spatial[axis]
        ids = ids * counts[axis] + cell.reshape(shape)
    return ids.reshape(-1), math.prod(counts)


def _resolve_baseline(baseline: float | Tensor | str, x: Tensor,
                      generator: torch.Generator | None) -> Tensor:
    """A checked baseline broadcastable against ``x[:, None]``; strings via make_baseline."""
    if isinstance(baseline, str):
        from ..attribution import make_baseline

        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        baseline = make_baseline(baseline, x, generator=gen)
    return as_baseline(baseline, x)


def region_perturbation_curve(model: nn.Module, inputs: Tensor,
                              attributions: Tensor | Attributions, target: Any, *,
                              patch_size: int = 1, steps: int | None = None,
                              baseline: float | Tensor | str = 0.0, output: str = "logit",
                              generator: torch.Generator | None = None,
                              max_rows: int = DEFAULT_MAX_ROWS) -> DeletionCurve:
    """Region perturbation, most relevant first (MoRF; Samek et al. 2017), per sample.

    The image is tiled into non-overlapping ``patch_size`` x ``patch_size``
    regions (all channels of a pixel together; for tabular data each feature
    is a region). A region's relevance is the sum of the map over its pixels
    (channels summed with their signs). ``x^(0) = x`` and ``x^(k)`` is
    ``x^(k-1)`` with the k-th most relevant region replaced (ties by region
    index, row-major), so the perturbation accumulates over L steps.

    Samek et al. perturb square neighbourhoods (9 x 9 pixels in their
    experiments) around the most relevant locations; tiling into a grid (as
    Quantus 0.6 ``RegionPerturbation``) keeps regions disjoint, and with
    ``patch_size=1`` both are pixel flipping (Bach et al. 2015).
    When ``patch_size`` does not divide a side, the grid is centred and the
    edge regions are partial (as Quantus pads).

    Parameters
    ----------
    model : nn.Module
    inputs : Tensor of shape (N, *F)
        Images (N, C, *S) or tabular data (N, F).
    attributions : Tensor of shape (N, *F) or Attributions
    target : int, sequence or Tensor of shape (N,)
    patch_size : int
        Side of a region in pixels, default 1 (one pixel: the 8 x 8 digits have
        only 64); must be 1 for tabular inputs.
    steps : int, optional
        L, the number of regions perturbed, in [1, number of regions]; default
        all of them.
    baseline : float, Tensor of shape (*F) or (N, *F), or {"uniform", "blur", "zero"}
        The values a perturbed region takes. ``"uniform"`` draws, per sample,
        uniform noise over that input's own value range (Samek et al. replace
        regions with uniform random values); one draw covers every region, as
        each pixel is perturbed at most once.
    output : {"logit", "probability"}
        The target's logit (default) or softmax probability. Quantus's default
        is the probability (``softmax=True``).
    generator : torch.Generator, optional
        Source of the ``"uniform"`` baseline, drawn sample by sample in batch order.
    max_rows : int
        Rows per forward pass at most.

    Returns
    -------
    DeletionCurve
        ``fractions`` (L + 1,): the fraction of regions perturbed, ``k / P``;
        ``values`` (N, L + 1): ``f_t(x^(k))``, column 0 the unperturbed input.

    Raises
    ------
    ValueError
        On a ``patch_size`` outside [1, largest side] (or not 1 for tabular
        data), ``steps`` outside [1, number of regions], mismatched shapes,
        NaN/Inf, a bad target, output or baseline.
    """
    x, a = check_map_and_inputs(inputs, attributions)
    check_output(output)
    check_positive_int(max_rows, "max_rows")
    targets = model_targets(model, x, target)
    ids, n_patches = _patch_ids(x.shape[1:], patch_size)
    steps = n_patches if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= n_patches:
        raise ValueError(f"Expected `steps` to be an integer in [1, {n_patches}] (the number "
                         f"of regions of side {patch_size}), got {steps!r}.")
    scores = feature_map(a).double().cpu()
    n = scores.shape[0]
    relevance = torch.zeros(n, n_patches, dtype=torch.float64).index_add_(1, ids, scores)
    order = relevance.argsort(dim=1, descending=True, stable=True)
    patch_rank = torch.empty_like(order).scatter_(1, order, torch.arange(n_patches).expand(n, -1))
    feature_rank = patch_rank[:, ids].to(x.device)                      # (N, d)
    ks = torch.arange(steps + 1, device=x.device)
    b = _resolve_baseline(baseline, x, generator)

    def masks_for(sl: slice) -> Tensor:  # True = the pixel's region has been perturbed
        return feature_rank[sl, None, :] < ks[None, :, None]

    values = _perturbed_scores(model, x, targets, masks_for, steps + 1, b, output, max_rows)
    return DeletionCurve(fractions=torch.arange(steps + 1, dtype=torch.float64) / n_patches,
                         values=values)


@register(category="faithfulness", kind="model", higher_is_better=True,
          range=(-float("inf"), float("inf")),
          reference="Samek, Binder, Montavon, Lapuschkin & Mueller 2017, 'Evaluating the "
                    "visualization of what a deep neural network has learned', IEEE TNNLS "
                    "(AOPC)")
def aopc(model: nn.Module, inputs: Tensor, attributions: Tensor | Attributions, target: Any,
         *, patch_size: int = 1, steps: int | None = None,
         baseline: float | Tensor | str = 0.0, output: str = "logit",
         generator: torch.Generator | None = None,
         max_rows: int = DEFAULT_MAX_ROWS) -> Tensor:
    """Area over the MoRF perturbation curve, ``AOPC = 1/(L+1) sum_{k=0..L} f(x^(0)) - f(x^(k))``.

    Samek et al. 2017 average this over a data set; here it is per sample
    (one draw of the random baseline, if one is asked for). Arguments as for
    :func:`region_perturbation_curve`.

    Returns
    -------
    Tensor of shape (N,), float64
        Higher is better (the output falls fast when the regions the map ranks
        highest go first). Unbounded for logits; in [-1, 1] for probabilities.
        For a linear model, ``patch_size=1`` and the exact attribution
        ``w * (x - baseline)`` it is the largest attainable value,
        ``1/(L+1) sum_k`` (sum of the k largest contributions).

    Notes
    -----
    Quantus 0.6 ``RegionPerturbation`` returns the curve of drops
    ``f(x^(0)) - f(x^(k))`` for k = 1..L (no k = 0 term); its sum divided by
    L + 1 is this AOPC when the same baseline, patch size, output and L are used.
    """
    curve = region_perturbation_curve(model, inputs, attributions, target, patch_size=patch_size,
                                      steps=steps, baseline=baseline, output=output,
                                      generator=generator, max_rows=max_rows)
    return (curve.values[:, :1] - curve.values).mean(dim=1)


# --- monotonicity correlation -------------------------------------------------------------

@register(category="faithfulness", kind="model", higher_is_better=True, range=(-1.0, 1.0),
          reference="Nguyen & Martinez 2020, 'On quantitative aspects of model "
                    "interpretability', arXiv 2007.07584 (monotonicity)")
def monotonicity_correlation(model: nn.Module, inputs: Tensor,
                             attributions: Tensor | Attributions, target: Any, *,
                             perturbation: str | Tensor = "uniform", noise_std: float = 0.1,
                             n_samples: int = 10, output: str = "probability",
                             generator: torch.Generator | None = None,
                             max_rows: int = DEFAULT_MAX_ROWS) -> Tensor:
    """Monotonicity (Nguyen & Martinez 2020): Spearman's rho between |a_i| and e_i, per sample.

    ``e_i = E[(f_t(x) - f_t(x with feature i perturbed))^2]``, the expected
    squared change of the output when feature i alone (a pixel: all its
    channels) is perturbed, estimated from ``n_samples`` draws; the score is
    the Spearman rank correlation between the magnitudes ``|a_i|`` (a pixel's
    channels summed first) and ``e_i`` over the d features, with average ranks
    for ties. This is the unnormalised expected loss of the paper.

    Parameters
    ----------
    model : nn.Module
    inputs : Tensor of shape (N, *F)
    attributions : Tensor of shape (N, *F) or Attributions
    target : int, sequence or Tensor of shape (N,)
    perturbation : {"uniform", "normal"} or Tensor of shape (N, n_samples, *F)
        How feature i is perturbed in draw s:

        - ``"uniform"`` (default): replaced by a value drawn uniformly over the
          input's own range [min x, max x] (one value per channel);
        - ``"normal"``: shifted by Gaussian noise of std ``noise_std`` per channel;
        - a tensor: feature i of draw s takes ``perturbation[n, s]`` at its
          positions (explicit replacement values; ``n_samples`` is its second size).

        With the two named kinds every feature sees the same ``n_samples``
        draws (common random numbers): each e_i is still an unbiased estimate,
        and comparing features is less noisy.
    noise_std : float > 0
        Standard deviation for ``"normal"``.
    n_samples : int
        Draws per feature (ignored for a tensor). The cost is
        ``d * n_samples`` forward rows per sample.
    output : {"probability", "logit"}
        The target's softmax probability (default, as Quantus) or its logit.
    generator : torch.Generator, optional
        Source of the draws, sample by sample in batch order; the same seed
        gives bit-identical scores.
    max_rows : int
        Rows per forward pass at most.

    Returns
    -------
    Tensor of shape (N,), float64
        In [-1, 1]; higher = more faithful. Closed forms for a linear model
        ``f = w . x`` (logits): with ``"normal"`` noise ``e_i`` is exactly
        proportional to ``w_i^2``, so the gradient map scores 1; replacing by
        a constant c (a tensor of c's) gives ``e_i = (w_i (x_i - c))^2``, so the
        exact attribution ``w * (x - c)`` scores 1. Invariant to positive
        scaling of the map. NaN (documented, with a warning) when |a| or e is
        constant over the features: an all-zero map, a constant input under
        ``"uniform"``, or an output that does not move.

    Raises
    ------
    ValueError
        On an unknown ``perturbation`` or a tensor of the wrong shape,
        ``noise_std`` <= 0, ``n_samples`` < 1, mismatched shapes, NaN/Inf, a bad
        target or output.

    Notes
    -----
    Quantus 0.6 ``MonotonicityCorrelation`` replaces each element by uniform
    [0, 1] values (a fresh value per feature and draw) and divides e by
    ``f(x)^2``; that division is one positive number per sample and leaves the
    ranks, hence Spearman's rho, unchanged. On [0, 1] images whose range is
    [0, 1] (most digits) its perturbation is our ``"uniform"`` without common
    random numbers; pass its draws as a tensor to reproduce it exactly.
    """
    x, a = check_map_and_inputs(inputs, attributions)
    check_output(output)
    check_positive_int(max_rows, "max_rows")
    targets = model_targets(model, x, target)
    n = x.shape[0]
    feat = x.shape[1:]
    magnitude = feature_map(a).double().abs().cpu()
    d = magnitude.shape[1]
    image = len(feat) >= 2
    channel_shape = (feat[0],) + (1,) * (len(feat) - 1) if image else (1,) * len(feat)
    if isinstance(perturbation, Tensor):
        values = check_tensor(perturbation, "perturbation", min_dim=2)
        if values.dim() != x.dim() + 1 or values.shape[0] != n or values.shape[2:] != feat:
            raise ValueError(f"Expected `perturbation` of shape (N, n_samples, *F) = "
                             f"({n}, n_samples, {', '.join(map(str, feat))}), got "
                             f"{tuple(perturbation.shape)}.")
        values = values.to(device=x.device, dtype=x.dtype)
        n_samples = values.shape[1]
    elif perturbation in ("uniform", "normal"):
        check_positive_int(n_samples, "n_samples")
        if perturbation == "normal" and (isinstance(noise_std, bool)
                                         or not isinstance(noise_std, (int, float))
                                         or not noise_std > 0):
            raise ValueError(f"Expected `noise_std` > 0, got {noise_std!r}.")
    else:
        raise ValueError(f"Expected `perturbation` to be 'uniform', 'normal' or a tensor of "
                         f"shape (N, n_samples, *F), got {perturbation!r}.")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    original = target_scores(model, x, targets, output=output, max_rows=max_rows)
    block = max(1, max_rows // n_samples)            # features per forward pass
    loss = torch.empty(n, d, dtype=torch.float64)
    for i in range(n):
        xi = x[i]
        if isinstance(perturbation, Tensor):
            draws = values[i]                                          # (S, *F)
        elif perturbation == "uniform":
            low, high = xi.min(), xi.max()
            u = torch.rand(n_samples, *channel_shape, generator=generator, dtype=torch.float64)
            draws = (low + (high - low) * u.to(x.device)).to(x.dtype)  # (S, C, 1, 1)
        else:
            e = torch.randn(n_samples, *channel_shape, generator=generator, dtype=torch.float64)
            draws = xi + (noise_std * e).to(device=x.device, dtype=x.dtype)
        for start in range(0, d, block):
            stop = min(d, start + block)
            one_hot = torch.zeros(stop - start, d, dtype=torch.bool, device=x.device)
            one_hot[torch.arange(stop - start), torch.arange(start, stop)] = True
            mask = expand_feature_mask(one_hot, x.shape)[:, None]  # (b, 1, 1|F, ...)
            rows = torch.where(mask, draws[None], xi[None, None]).reshape(-1, *feat)
            t = targets[i:i + 1].expand(rows.shape[0])
            out = target_scores(model, rows, t, output=output, max_rows=max_rows)
            change = (original[i] - out.reshape(stop - start, n_samples)) ** 2
            loss[i, start:stop] = change.mean(dim=1)
    rho = pearson(average_ranks(magnitude), average_ranks(loss))
    _warn_nan(rho, "monotonicity correlation",
              "|a| or the expected output change is constant over the features")
    return rho


# --- ROAD ---------------------------------------------------------------------------------

# Weights of the 8 neighbours in ROAD's linear imputation (Rong, Leemann et al. 2022):
# 1/6 for the 4 direct neighbours, 1/12 for the 4 diagonal ones (they sum to 1).
_NEIGHBOURS = tuple(((dr, dc), 1 / 6 if dr == 0 or dc == 0 else 1 / 12)
                    for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0))


def _neighbour_matrix(height: int, width: int):
    """Sparse (d, d) matrix of neighbour weights of an H x W grid (CSR), row-major pixels."""
    import numpy as np
    from scipy import sparse

    rows, cols, vals = [], [], []
    r, c = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    r, c = r.ravel(), c.ravel()
    for (dr, dc), weight in _NEIGHBOURS:
        rr, cc = r + dr, c + dc
        ok = (rr >= 0) & (rr < height) & (cc >= 0) & (cc < width)
        rows.append((r * width + c)[ok])
        cols.append((rr * width + cc)[ok])
        vals.append(np.full(int(ok.sum()), weight))
    d = height * width
    return sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                             shape=(d, d))


def _impute(image, removed, weights):
    """Linear imputation of one image: (C, d) float64 array, removed (d,) bool -> imputed copy.

    Each removed pixel equals the weighted mean of its in-image neighbours
    (weights renormalised at the border), solved jointly for all removed
    pixels: ``(D - W_RR) z = W_RK x_K`` per channel.
    """
    import numpy as np
    from scipy import sparse
    from scipy.sparse.linalg import spsolve

    out = image.copy()
    idx = np.flatnonzero(removed)
    if idx.size == 0:
        return out
    keep = np.flatnonzero(~removed)
    w_r = weights[idx]
    degree = np.asarray(w_r.sum(axis=1)).ravel()
    system = (sparse.diags(degree) - w_r[:, idx]).tocsc()
    rhs = w_r[:, keep] @ image[:, keep].T                     # (k, C)
    solution = spsolve(system, rhs)
    out[:, idx] = np.asarray(solution).reshape(idx.size, image.shape[0]).T
    return out


def noisy_linear_imputation(inputs: Tensor, removed: Tensor, *, noise_std: float = 0.01,
                            generator: torch.Generator | None = None) -> Tensor:
    """Fill removed pixels by ROAD's noisy linear imputation (Rong, Leemann et al. 2022).

    Every removed pixel becomes the weighted mean of its 8 neighbours (1/6 for
    the direct, 1/12 for the diagonal ones; at the border, the in-image
    neighbours renormalised), where removed neighbours are themselves unknowns:
    one linear system over all removed pixels of an image, for all channels.
    Images with the same number k <= 192 of removed pixels are solved together
    as one batch of dense systems (Cholesky, in blocks of at most 2^22 matrix
    elements); larger systems one image at a time with
    ``scipy.sparse.linalg.spsolve``, which is faster there. Both give the same
    solution (to rounding, about 1e-15). Gaussian noise of std ``noise_std`` is
    then added to each imputed value. Kept pixels are unchanged.

    Parameters
    ----------
    inputs : Tensor of shape (N, C, H, W)
    removed : bool Tensor of shape (N, H, W)
        True where a pixel (all its channels) is removed. At least one pixel of
        each image must be kept.
    noise_std : float >= 0
        In input units (the authors' code defaults to 0.01, on images in [0, 1]
        before normalisation); 0 gives the deterministic imputation.
    generator : torch.Generator, optional
        Noise source, drawn image by image in batch order, ``(C, k)`` values for
        the k removed pixels in row-major order.

    Returns
    -------
    Tensor of shape (N, C, H, W)
        A new tensor in the inputs' dtype and device; the inputs are not modified.

    Raises
    ------
    ValueError
        If the inputs are not (N, C, H, W) images, ``removed`` has another
        shape, every pixel of an image is removed, or ``noise_std`` < 0.
    """
    x = _check_images(inputs, "noisy linear imputation")
    if not isinstance(removed, Tensor) or removed.shape != (x.shape[0], *x.shape[2:]):
        shape = tuple(removed.shape) if isinstance(removed, Tensor) else type(removed).__name__
        raise ValueError(f"Expected `removed` to be a bool tensor of shape "
                         f"{(x.shape[0], *x.shape[2:])}, got {shape}.")
    removed = removed.bool().reshape(x.shape[0], -1).cpu()
    if bool(removed.all(dim=1).any()):
        raise ValueError("Expected at least one kept pixel per image: with every pixel "
                         "removed there is nothing to impute from.")
    _check_noise(noise_std)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    return _noisy_impute(x, removed, noise_std, generator)


def _check_images(inputs: Tensor, what: str) -> Tensor:
    if isinstance(inputs, Tensor) and inputs.dim() != 4:
        raise ValueError(f"Expected `inputs` to be images of shape (N, C, H, W) for {what}, "
                         f"got shape {tuple(inputs.shape)}: it imputes a pixel from its "
                         f"neighbours, and tabular features have no neighbourhood.")
    return check_tensor(inputs, "inputs", min_dim=4)


def _check_noise(noise_std: float) -> None:
    if isinstance(noise_std, bool) or not isinstance(noise_std, (int, float)) \
            or not noise_std >= 0 or not math.isfinite(noise_std):
        raise ValueError(f"Expected `noise_std` >= 0, got {noise_std!r}.")


# Unknowns per image up to which the imputation is solved as a batch of dense systems
# (Cholesky, torch.linalg, many images per call); above it, one sparse scipy solve per image.
# Dense costs k^3 / 6 per image, the sparse solve far less for large k: on one CPU core
# they cross near k = 220 (k = 64: dense 8x faster per image; k = 384: 2x slower).
_DENSE_MAX_UNKNOWNS = 192
# Elements of the dense systems (images x k x k) solved in one call: 2^22 float64, 32 MiB.
_DENSE_MAX_ELEMENTS = 2 ** 22


def _grid_neighbours(height: int, width: int) -> tuple[Tensor, Tensor, Tensor]:
    """Neighbour table of an H x W grid, row-major pixels: for each pixel and each of the 8
    offsets of ``_NEIGHBOURS``, the neighbour's index (d, 8) (0 where it is outside the
    image), its weight (d, 8) float64 (0 outside), and the pixel's degree, the sum of its
    in-image weights (d,)."""
    r, c = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    r, c = r.reshape(-1, 1), c.reshape(-1, 1)
    dr = torch.tensor([o[0] for o, _ in _NEIGHBOURS])
    dc = torch.tensor([o[1] for o, _ in _NEIGHBOURS])
    w = torch.tensor([wt for _, wt in _NEIGHBOURS], dtype=torch.float64)
    rr, cc = r + dr, c + dc
    inside = (rr >= 0) & (rr < height) & (cc >= 0) & (cc < width)
    index = torch.where(inside, rr * width + cc, 0)
    weight = torch.where(inside, w, 0.0)
    return index, weight, weight.sum(dim=1)


class _Unknowns(NamedTuple):
    """The neighbourhood of B images' unknown pixels ``idx`` (B, k), in the order of ``idx``.

    neighbour, weight : (B, k, 8) neighbour pixel and its weight (0 outside the image).
    unknown : (B, k, 8) the neighbour's position in ``idx``, k if it is not there.
    degree : (B, k) the sum of each unknown's in-image weights.
    """

    neighbour: Tensor
    weight: Tensor
    unknown: Tensor
    degree: Tensor


def _unknowns(idx: Tensor, grid: tuple[Tensor, Tensor, Tensor], d: int) -> _Unknowns:
    b, k = idx.shape
    table, table_weight, table_degree = grid
    position = torch.full((b, d), k, dtype=torch.long)
    position.scatter_(1, idx, torch.arange(k).expand(b, k))
    neighbour = table[idx]
    unknown = position.gather(1, neighbour.reshape(b, -1)).reshape(b, k, 8)
    return _Unknowns(neighbour, table_weight[idx], unknown, table_degree[idx])


def _system(u: _Unknowns) -> Tensor:
    """``D - W_RR`` of :func:`_impute` over all the unknowns of ``u``: (B, k, k) float64."""
    b, k = u.degree.shape
    coupled = u.unknown < k
    system = torch.zeros(b, k * k, dtype=torch.float64)
    column = torch.arange(k)[None, :, None] * k + u.unknown.clamp_max(k - 1)
    system.scatter_add_(1, column.reshape(b, -1),
                        torch.where(coupled, -u.weight, 0.0).reshape(b, -1))
    system = system.reshape(b, k, k)
    system.diagonal(dim1=1, dim2=2).add_(u.degree)
    return system


def _rhs(values: Tensor, u: _Unknowns, k: int) -> Tensor:
    """``W_RK x_K`` of :func:`_impute` when only the first k unknowns of ``u`` are removed:
    (B, k, C). ``values`` (B, C, k', 8) are the neighbours' pixel values, k' >= k."""
    known = torch.where(u.unknown[:, :k] < k, 0.0, u.weight[:, :k])      # (B, k, 8)
    return (values[:, :, :k] * known[:, None]).sum(dim=3).transpose(1, 2)


def _neighbour_values(images: Tensor, u: _Unknowns) -> Tensor:
    """Pixel values (B, C, k, 8) of the neighbours of ``u``'s unknowns; ``images`` (B, C, d)."""
    b, c = images.shape[:2]
    flat = u.neighbour.reshape(b, 1, -1).expand(b, c, -1)
    return images.gather(2, flat).reshape(b, c, *u.neighbour.shape[1:])


def _solve_spd(system: Tensor, rhs: Tensor) -> tuple[Tensor, Tensor]:
    """Cholesky factors (B, k, k) of the systems ``D - W_RR`` and the solutions (B, k, C).

    ``W`` is symmetric and every group of connected removed pixels borders a kept one, so
    each system is an irreducibly diagonally dominant symmetric M-matrix, hence positive
    definite; Cholesky is then about twice as fast as LU. A system it fails on (not
    expected) is solved by LU instead; its factor is then NaN.
    """
    factor, info = torch.linalg.cholesky_ex(system)
    solution = torch.cholesky_solve(rhs, factor)
    failed = info != 0
    if bool(failed.any()):
        solution[failed] = torch.linalg.solve(system[failed], rhs[failed])
        factor[failed] = math.nan
    return factor, solution


def _impute_rows(images: Tensor, removed: Tensor, height: int, width: int) -> Tensor:
    """Noise-free linear imputation of M images at once: the solution of :func:`_impute`.

    ``images`` (M, C, d) float64 on the CPU, ``removed`` (M, d) bool, at least one pixel
    of each image kept. Images with the same number k of removed pixels are solved
    together, as dense (B, k, k) systems in calls of at most ``_DENSE_MAX_ELEMENTS``
    elements, when k <= ``_DENSE_MAX_UNKNOWNS``; else one sparse solve per image.
    Returns a new (M, C, d) tensor, kept pixels copied exactly.
    """
    out = images.clone()
    counts = removed.sum(dim=1)
    weights = grid = None
    for k in counts.unique().tolist():
        if k == 0:
            continue
        rows = (counts == k).nonzero()[:, 0]
        if k > _DENSE_MAX_UNKNOWNS:
            if weights is None:
                weights = _neighbour_matrix(height, width)
            for i in rows.tolist():
                out[i] = torch.from_numpy(_impute(images[i].numpy(), removed[i].numpy(),
                                                  weights))
            continue
        grid = _grid_neighbours(height, width) if grid is None else grid
        step = max(1, _DENSE_MAX_ELEMENTS // (k * k))
        for start in range(0, rows.numel(), step):
            sub = rows[start:start + step]
            idx = removed[sub].nonzero()[:, 1].reshape(-1, k)   # ascending within each row
            u = _unknowns(idx, grid, height * width)
            _, solution = _solve_spd(_system(u), _rhs(_neighbour_values(images[sub], u), u, k))
            out[sub] = images[sub].scatter(
                2, idx[:, None, :].expand(-1, images.shape[1], -1), solution.transpose(1, 2))
    return out


def _impute_prefixes(images: Tensor, order: Tensor, counts: list[int], height: int,
                     width: int) -> Tensor:
    """Imputation of each image with the first ``counts[j]`` pixels of its ``order`` removed.

    ``images`` (B, C, d) float64 on the CPU, ``order`` (B, d) a permutation of the pixels
    per image (ROAD's removal order), every count < d. Returns (B, len(counts), C, d),
    the solutions of :func:`_impute`. The systems of nested removed sets are leading
    blocks of the largest one, ordered by removal, and so are their Cholesky factors:
    one factorisation per image serves every count. Falls back to :func:`_impute_rows`
    beyond ``_DENSE_MAX_UNKNOWNS`` unknowns or if a factorisation fails.
    """
    b, c, d = images.shape
    out = images[:, None].repeat(1, len(counts), 1, 1)
    k_max = max(counts)
    if k_max == 0:
        return out
    removed = [order[:, :k] for k in counts]
    if k_max > _DENSE_MAX_UNKNOWNS:
        return _impute_prefixes_by_rows(images, removed, height, width)
    grid = _grid_neighbours(height, width)
    step = max(1, _DENSE_MAX_ELEMENTS // (k_max * k_max))
    for start in range(0, b, step):
        sl = slice(start, min(b, start + step))
        u = _unknowns(order[sl, :k_max], grid, d)
        values = _neighbour_values(images[sl], u)
        factor, info = torch.linalg.cholesky_ex(_system(u))
        if bool((info != 0).any()):                          # not expected: solve one by one
            return _impute_prefixes_by_rows(images, removed, height, width)
        for j, k in enumerate(counts):
            if k == 0:
                continue
            solution = torch.cholesky_solve(_rhs(values, u, k), factor[:, :k, :k])
            idx = removed[j][sl]
            out[sl, j].scatter_(2, idx[:, None, :].expand(-1, c, -1), solution.transpose(1, 2))
    return out


def _impute_prefixes_by_rows(images: Tensor, removed: list[Tensor], height: int,
                             width: int) -> Tensor:
    """:func:`_impute_prefixes` through :func:`_impute_rows`, given the removed pixels."""
    b, c, d = images.shape
    masks = torch.zeros(b, len(removed), d, dtype=torch.bool)
    for j, idx in enumerate(removed):
        masks[:, j].scatter_(1, idx, True)
    rows = _impute_rows(images.repeat_interleave(len(removed), dim=0), masks.reshape(-1, d),
                        height, width)
    return rows.reshape(b, len(removed), c, d)


def _add_noise(filled: Tensor, removed: Tensor, noise_std: float,
               generator: torch.Generator) -> Tensor:
    """Add noise to the ``removed`` (M, d) pixels of ``filled`` (M, C, d) float64, in place.

    Drawn image by image, ``(C, k)`` values for an image's k removed pixels in
    row-major order (nothing for k = 0), as one image at a time would.
    """
    c = filled.shape[1]
    noise = [torch.randn(c, k, generator=generator, dtype=torch.float64).T
             for k in removed.sum(dim=1).tolist() if k]
    if noise:
        imputed = filled.transpose(1, 2)                 # (M, d, C), a view of `filled`
        imputed[removed] += torch.cat(noise) * noise_std
    return filled


def _noisy_impute(x: Tensor, removed: Tensor, noise_std: float,
                  generator: torch.Generator) -> Tensor:
    """Images (M, C, H, W) with ``removed`` (M, d) pixels imputed, plus noise from ``generator``
    (see :func:`_add_noise`). Returns the inputs' dtype and device."""
    m, c = x.shape[:2]
    flat = x.detach().reshape(m, c, -1).double().cpu()
    filled = _add_noise(_impute_rows(flat, removed, *x.shape[2:]), removed, noise_std, generator)
    return filled.reshape(x.shape).to(device=x.device, dtype=x.dtype)


def _top_hits(model: nn.Module, x: Tensor, target: Tensor, max_rows: int) -> Tensor:
    """1.0 where the target is the model's top class (first maximum), else 0.0: shape (M,)."""
    device = model_device(model)
    out = []
    with eval_mode(model), torch.no_grad():
        for i in range(0, x.shape[0], max_rows):
            logits = as_logits(model(to_model(x[i:i + max_rows], model)), model)
            if logits.dim() == 1:
                logits = logits[:, None]
            hit = logits.argmax(dim=1) == target[i:i + max_rows].to(device)
            out.append(hit.double().cpu())
    return torch.cat(out)


ROAD_OUTPUTS = ("probability", "logit", "accuracy")
ROAD_PERCENTAGES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def road_curve(model: nn.Module, inputs: Tensor, attributions: Tensor | Attributions,
               target: Any, *, percentages: tuple[float, ...] = ROAD_PERCENTAGES,
               order: str = "morf", noise_std: float = 0.01, output: str = "probability",
               generator: torch.Generator | None = None,
               max_rows: int = DEFAULT_MAX_ROWS) -> Tensor:
    """ROAD: the target's score after removing a fraction p of pixels by imputation, per sample.

    For each p, the ``floor(p * H * W)`` pixels the map ranks highest (MoRF)
    or lowest (LeRF) are removed, all channels together, and filled by
    :func:`noisy_linear_imputation`; the model is not retrained (Rong, Leemann
    et al. 2022, "RemOve And Debias"). Pixels are ranked by the map summed over
    channels, signed, ties by index (row-major). The removed sets of one image
    are nested, so one Cholesky factorisation of its largest system serves
    every percentage (same solution, to rounding).

    Parameters
    ----------
    model : nn.Module
    inputs : Tensor of shape (N, C, H, W)
        Images only: imputation needs a pixel neighbourhood.
    attributions : Tensor of shape (N, C, H, W) or Attributions
    target : int, sequence or Tensor of shape (N,)
    percentages : sequence of float
        Fractions removed, each in [0, 1); default 0.1, 0.2, ..., 0.9.
        (Quantus takes percent values; its default is 1, 3, ..., 99.)
    order : {"morf", "lerf"}
        Remove the most (default) or the least relevant pixels first. LeRF at p
        removes the fraction p least relevant, so both curves share the
        x-axis. (The authors' code removes the complement, ``1 - p``, for LeRF.)
    noise_std : float >= 0
        Noise added to imputed values, default 0.01 (the default of the authors'
        code, which imputes images in [0, 1] before normalising them).
    output : {"probability", "logit", "accuracy"}
        The target's softmax probability (default), its logit, or 1.0 when the
        target stays the top class (the paper's and Quantus's accuracy, per
        sample, when the target is the label).
    generator : torch.Generator, optional
        Noise source, drawn sample by sample in batch order and within a sample
        percentage by percentage; the same seed gives bit-identical curves.
    max_rows : int
        Rows per forward pass at most.

    Returns
    -------
    Tensor of shape (N, len(percentages)), float64
        For MoRF lower is better (the output falls fast when the top pixels
        are gone); for LeRF higher is better.

    Raises
    ------
    ValueError
        If the inputs are not 4-D images (tabular data has no neighbourhood),
        a percentage is outside [0, 1), on an unknown ``order`` or ``output``,
        ``noise_std`` < 0, mismatched shapes, NaN/Inf or a bad target.

    Notes
    -----
    Quantus 0.6 ``ROAD`` ranks the map per element (the same as per pixel for
    one channel), returns per percentage the accuracy averaged over the batch
    (``argmax == y``), and draws its noise from the global NumPy generator;
    with ``noise_std=0`` and ``output="accuracy"`` the batch mean of this curve
    equals it.
    """
    x = _check_images(inputs, "ROAD")
    x, a = check_map_and_inputs(x, attributions)
    if output not in ROAD_OUTPUTS:
        raise ValueError(f"Expected `output` in {ROAD_OUTPUTS}, got {output!r}.")
    if order not in ("morf", "lerf"):
        raise ValueError(f"Expected `order` in ('morf', 'lerf'), got {order!r}.")
    _check_noise(noise_std)
    check_positive_int(max_rows, "max_rows")
    percentages = list(percentages)
    if not percentages:
        raise ValueError("Expected `percentages` to hold at least one fraction, got none.")
    for p in percentages:
        check_fraction(p, "percentages")
    targets = model_targets(model, x, target)
    scores = feature_map(a).double().cpu()
    n, d = scores.shape
    counts = [min(d - 1, int(math.floor(p * d + 1e-9))) for p in percentages]
    ranked = scores.argsort(dim=1, descending=True, stable=True)      # most relevant first
    rank = torch.empty(n, d, dtype=torch.long).scatter_(1, ranked, torch.arange(d).expand(n, d))
    removal = ranked if order == "morf" else ranked.flip(1)           # removal order
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    n_p = len(percentages)
    chunk = max(1, max_rows // n_p)
    removed_counts = torch.tensor(counts)[None, :, None]
    out = []
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        if order == "morf":                                  # (c, n_p, d), sample-major
            removed = rank[sl, None, :] < removed_counts
        else:
            removed = rank[sl, None, :] >= d - removed_counts
        images = x[sl].detach().reshape(*x[sl].shape[:2], d).double().cpu()
        filled = _impute_prefixes(images, removal[sl], counts, *x.shape[2:])
        filled = _add_noise(filled.reshape(-1, *images.shape[1:]), removed.reshape(-1, d),
                            noise_std, generator)
        batch = filled.reshape(-1, *x.shape[1:]).to(device=x.device, dtype=x.dtype)
        t = targets[sl].repeat_interleave(n_p)
        if output == "accuracy":
            values = _top_hits(model, batch, t, max_rows)
        else:
            values = target_scores(model, batch, t, output=output, max_rows=max_rows)
        out.append(values.reshape(-1, n_p))
    return torch.cat(out)


@register(category="faithfulness", kind="model", higher_is_better=False, range=(0.0, 1.0),
          reference="Rong, Leemann, Borisov, Kasneci & Kasneci 2022, 'A consistent and efficient "
                    "evaluation strategy for attribution methods', ICML (ROAD, MoRF)",
          images_only=True)
def road(model: nn.Module, inputs: Tensor, attributions: Tensor | Attributions, target: Any,
         *, percentages: tuple[float, ...] = ROAD_PERCENTAGES, order: str = "morf",
         noise_std: float = 0.01, output: str = "probability",
         generator: torch.Generator | None = None,
         max_rows: int = DEFAULT_MAX_ROWS) -> Tensor:
    """ROAD summarised per sample: the mean of :func:`road_curve` over the percentages.

    The mean weights every requested percentage equally and needs no x-axis
    end points (the curve has no point at 0 or 1 removed); for evenly spaced
    percentages it is the area under the curve divided by its width, up to
    the trapezoid's half weights at the two ends. Arguments as for
    :func:`road_curve`.

    Returns
    -------
    Tensor of shape (N,), float64
        In [0, 1] for probabilities or accuracy. With ``order="morf"`` (the
        default) lower is better; with ``"lerf"`` higher is better.
    """
    return road_curve(model, inputs, attributions, target, percentages=percentages,
                      order=order, noise_std=noise_std, output=output, generator=generator,
                      max_rows=max_rows).mean(dim=1)
