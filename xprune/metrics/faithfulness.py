"""Faithfulness: does the model's output move the way the map says it should?

A *feature* is a column of tabular data or a pixel of an image (all its
channels are replaced together). "Removing" a feature sets it to the baseline.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .._validation import check_count, check_positive_int
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

__all__ = ["DeletionCurve", "deletion_auc", "deletion_curve", "faithfulness_correlation",
           "infidelity", "insertion_auc", "insertion_curve"]


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
                      baseline: Tensor, output: str, max_rows: int) -> Tensor:
    """Scores of ``x`` with feature masks ``masks_for(sample_slice) -> (c, R, d)`` set to baseline.

    Samples are processed in order, in chunks small enough that one forward
    pass sees at most ``max_rows`` rows; returns shape (N, R).
    """
    n = x.shape[0]
    chunk = max(1, max_rows // n_per_sample)
    out = []
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        mask = expand_feature_mask(masks_for(sl), x.shape)  # (c, R, 1, *S) or (c, R, F)
        xs = x[sl, None]
        b = baseline[sl] if baseline.dim() == x.dim() + 1 else baseline  # per-sample baseline
        perturbed = torch.where(mask, b, xs).reshape(-1, *x.shape[1:])
        t = targets[sl].repeat_interleave(n_per_sample)
        out.append(target_scores(model, perturbed, t, output=output, max_rows=max_rows)
                   .reshape(-1, n_per_sample))
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
    ``f_t(x) - f_t(x with x_S := baseline)`` of the target's output.

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
    subsets = []

    def masks_for(sl: slice) -> Tensor:
        mask = torch.zeros(sl.stop - sl.start, n_runs, d, dtype=torch.bool)
        for i in range(sl.stop - sl.start):
            keys = torch.rand(n_runs, d, generator=generator)
            mask[i].scatter_(1, keys.topk(subset_size, dim=1).indices, True)
        subsets.append(mask)
        return mask.to(x.device)

    b = as_baseline(baseline, x)
    perturbed = _perturbed_scores(model, x, targets, masks_for, n_runs, b, output, max_rows)
    original = target_scores(model, x, targets, output=output, max_rows=max_rows)
    mask = torch.cat(subsets)
    mass = (mask.double() * scores.cpu()[:, None, :]).sum(dim=2)
    return pearson(mass, original[:, None] - perturbed)


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
