"""Faithfulness: does the model's output move the way the map says it should?

A *feature* is a column of tabular data or a pixel of an image (all its
channels are replaced together). Each metric here decides which features go
(a boolean mask over features) and hands the mask to the removal operator of
the data's kind (:mod:`xprune.metrics._removal`): a replaced feature takes the
baseline's value; ROAD imputes removed pixels (:mod:`xprune.metrics._imputation`).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy
import torch
from torch import Tensor, nn

from .._state import as_logits, eval_mode, model_device, to_model
from .._validation import (
    check_count,
    check_fraction,
    check_positive_int,
    check_targets,
    check_tensor,
)
from ..attribution import DEFAULT_MAX_ROWS, Attributions, check_logit_outputs
from ._base import (
    PassThrough,
    any_inputs,
    check_map_and_inputs,
    check_output,
    feature_map,
    for_samples,
    forward_rows,
    model_targets,
    pearson,
    refuse_token_ids,
    register,
    row_forward,
    target_scores,
)
from ._base import warn_undefined as _warn_nan  # the one helper for undefined scores
from ._forward import inference_forward
from ._imputation import NoisyLinearImputation
from ._removal import (
    Removal,
    ReplaceAudio,
    as_baseline,
    grouped,
    perturbed_scores,
    removal_for,
    resolve_baseline,
)
from .agreement import average_ranks

__all__ = ["DEFAULT_MAX_STEPS", "DeletionCurve", "aopc", "deletion_auc", "deletion_curve", "faithfulness_correlation",
           "infidelity", "insertion_auc", "insertion_curve", "monotonicity_correlation",
           "region_perturbation_curve", "road", "road_curve", "sensitivity_n",
           "sensitivity_n_curve"]

#: Default cap on the points of a deletion / insertion curve and on AOPC's regions: the cost
#: of a curve is one forward pass per point, so the default stays bounded for large inputs
#: (shared/cases/025-deletion-default-steps.md); pass ``steps`` for more.
DEFAULT_MAX_STEPS = 64


class DeletionCurve(NamedTuple):
    """A batch of deletion curves.

    fractions : Tensor of shape (T + 1,), float64
        Fraction of features removed at each point, from 0 to 1.
    values : Tensor of shape (N, T + 1), float64
        The target's score at each point; column 0 is the unperturbed input.
    """

    fractions: Tensor
    values: Tensor


@any_inputs
def deletion_curve(model: nn.Module, inputs: Tensor, attributions: Tensor | Attributions,
                   target: Any, *, baseline: float | Tensor = 0.0, steps: int | None = None,
                   output: str = "probability", max_rows: int = DEFAULT_MAX_ROWS,
                   removal: Removal | None = None) -> DeletionCurve:
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
        Points after the first, 1 <= steps <= d. Default ``min(d, 64)``
        (:data:`DEFAULT_MAX_STEPS`): one feature per step up to 64 features
        (the 8 x 8 digits), equal bins of about d / 64 features beyond, so the
        cost stays bounded for large inputs (a 3 x 32 x 32 image: 64 passes
        instead of 1,024). ``steps=d`` gives the exact one-feature-per-step
        curve; ``fractions`` records the bins used.
    output : {"probability", "logit"}
        Track the target's softmax probability (Petsiuk et al., the default) or its logit.
    max_rows : int
        Rows per forward pass at most.
    removal : Removal, optional
        What a feature is and how it is taken out (:mod:`xprune.metrics._removal`),
        e.g. ``ReplaceAudio(patch=(4, 4))`` for 4 x 4 time-frequency patches of
        spectrograms, ranked by the map's sum over each patch. Default: that
        of the inputs' kind (the kind recorded in ``attributions``, else told
        from the shape): columns, pixels, tokens, or bins of audio.

    Raises
    ------
    ValueError
        On mismatched shapes, NaN/Inf, ``steps`` outside [1, d], a bad target or output.

    Notes
    -----
    A step that removes only features already at the baseline's value (a digit's
    black pixels with the zero baseline: about half of them) leaves the input as it
    was: that point takes the previous point's score instead of a forward pass of
    the same row (bit for bit the same row, every input of the model compared). The
    same holds for insertion and region perturbation.
    """
    return _ranked_curve(model, inputs, attributions, target, baseline=baseline, steps=steps,
                         output=output, max_rows=max_rows, insert=False, removal=removal)


def _ranked_curve(model, inputs, attributions, target, *, baseline, steps, output, max_rows,
                  insert: bool, removal: Removal | None = None) -> DeletionCurve:
    """Scores as features are removed (or inserted into the baseline), most important first."""
    x, a = check_map_and_inputs(inputs, attributions)
    check_output(output)
    check_positive_int(max_rows, "max_rows")
    targets = model_targets(model, x, target)
    removal = removal_for(x, removal, attributions=attributions,
                          metric="insertion" if insert else "deletion")
    scores = removal.feature_scores(a.to(x.device))
    n, d = scores.shape
    steps = min(d, DEFAULT_MAX_STEPS) if steps is None else steps
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

    values = perturbed_scores(model, x, targets, masks_for, steps + 1, b, output, max_rows,
                              removal=removal, reuse_repeats=True)
    return DeletionCurve(fractions=changed.cpu().double() / d, values=values)


@any_inputs
def insertion_curve(model: nn.Module, inputs: Tensor, attributions: Tensor | Attributions,
                    target: Any, *, baseline: float | Tensor = 0.0, steps: int | None = None,
                    output: str = "probability", max_rows: int = DEFAULT_MAX_ROWS,
                    removal: Removal | None = None) -> DeletionCurve:
    """Insertion curves: start from the baseline and insert features, most important first.

    The mirror of :func:`deletion_curve`: column 0 is the all-baseline input
    (fraction 0 inserted), the last column the unperturbed input. Same
    arguments, ranking and errors. Petsiuk et al. 2018 start insertion from a
    blurred copy of each image; the default here is the constant 0 of
    deletion. For theirs pass per-sample blurred inputs,
    ``baseline=xprune.attribution.make_baseline("blur", inputs)``.
    """
    return _ranked_curve(model, inputs, attributions, target, baseline=baseline, steps=steps,
                         output=output, max_rows=max_rows, insert=True, removal=removal)


@register(category="faithfulness", kind="model", higher_is_better=True, range=(0.0, 1.0),
          reference="Petsiuk, Das & Saenko 2018, 'RISE: Randomized input sampling for "
                    "explanation of black-box models', BMVC (insertion metric)")
@any_inputs
def insertion_auc(model: nn.Module, inputs: Tensor, attributions: Tensor | Attributions,
                  target: Any, *, baseline: float | Tensor = 0.0, steps: int | None = None,
                  output: str = "probability", max_rows: int = DEFAULT_MAX_ROWS,
                  removal: Removal | None = None) -> Tensor:
    """Area under the insertion curve over the fraction of features inserted, per sample.

    Returns
    -------
    Tensor of shape (N,), float64
        In [0, 1] for probabilities; higher is better (the score rises fast
        when the features the map ranks highest are inserted first).
    """
    curve = insertion_curve(model, inputs, attributions, target, baseline=baseline, steps=steps,
                            output=output, max_rows=max_rows, removal=removal)
    return torch.trapezoid(curve.values, curve.fractions, dim=1)


@register(category="faithfulness", kind="model", higher_is_better=False, range=(0.0, 1.0),
          reference="Petsiuk, Das & Saenko 2018, 'RISE: Randomized input sampling for "
                    "explanation of black-box models', BMVC (deletion metric)")
@any_inputs
def deletion_auc(model: nn.Module, inputs: Tensor, attributions: Tensor | Attributions,
                 target: Any, *, baseline: float | Tensor = 0.0, steps: int | None = None,
                 output: str = "probability", max_rows: int = DEFAULT_MAX_ROWS,
                 removal: Removal | None = None) -> Tensor:
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
                           output=output, max_rows=max_rows, removal=removal)
    return torch.trapezoid(curve.values, curve.fractions, dim=1)


def default_subset_size(d: int) -> int:
    """A quarter of the features, at least 1 and below d (16 of the 64 digits pixels)."""
    return max(1, min(d - 1, d // 4))


@register(category="faithfulness", kind="model", higher_is_better=True, range=(-1.0, 1.0),
          reference="Bhatt, Weller & Moura 2020, 'Evaluating and aggregating feature-based "
                    "model explanations', IJCAI (faithfulness correlation)")
@any_inputs
def faithfulness_correlation(model: nn.Module, inputs: Tensor,
                             attributions: Tensor | Attributions, target: Any, *,
                             baseline: float | Tensor = 0.0, subset_size: int | None = None,
                             n_runs: int = 100, output: str = "logit",
                             generator: torch.Generator | None = None,
                             max_rows: int = DEFAULT_MAX_ROWS,
                             removal: Removal | None = None) -> Tensor:
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
    removal : Removal, optional
        What a feature is and how it is taken out, as for
        :func:`deletion_curve` (e.g. ``ReplaceAudio(patch=(4, 4))``: subsets of
        time-frequency patches, each patch's mass the map's sum over it).

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
    removal = removal_for(x, removal, attributions=attributions,
                          metric="faithfulness correlation")
    scores = removal.feature_scores(a).double()
    n, d = scores.shape
    if subset_size is None:
        if d < 2:
            raise ValueError(f"Faithfulness correlation needs at least 2 features, got {d}.")
        subset_size = default_subset_size(d)
    check_count(subset_size, "subset_size", d, inclusive=False)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    values = _subset_correlations(model, x, scores, targets, [subset_size], n_runs=n_runs,
                                  baseline=baseline, output=output, generator=generator,
                                  max_rows=max_rows, removal=removal)[:, 0]
    _warn_nan(values, "faithfulness correlation",
              "the map or the output drop is constant over the runs")
    return values


#: The random subsets of faithfulness correlation and sensitivity-n are drawn, selected and
#: summed for about this many keys at a time (whole samples; 1 MiB of float32 keys), so that
#: the keys, the masks and the attribution sums stay in the caches.
SUBSET_BLOCK_ELEMENTS = 2 ** 18


def _top_sets(keys: Tensor, size: int) -> Tensor:
    """Bool mask of the ``size`` largest keys of each row, the set ``keys.topk(size)`` selects.

    Parameters
    ----------
    keys : Tensor of shape (*B, d), float, on the CPU, without NaN
    size : int
        1 <= size < d.

    Returns
    -------
    bool Tensor of shape (*B, d)
        True at the ``size`` largest keys of each row. Where the ``size``-th largest key has
        a tie below it, the set is the one :func:`torch.topk` picks (those rows are handed to
        it); elsewhere the set is unique, found by NumPy's :func:`numpy.partition` (a
        vectorised selection, 5-20x faster than ``topk`` here) and a comparison with the
        ``size``-th largest key.
    """
    d = keys.shape[-1]
    flat = keys.reshape(-1, d)
    part = numpy.partition(flat.numpy(), d - size, axis=1)
    kth = torch.from_numpy(part[:, d - size].copy())               # the size-th largest
    mask = flat >= kth[:, None]
    tied = torch.from_numpy(numpy.flatnonzero(part[:, :d - size].max(axis=1) == part[:, d - size]))
    if tied.numel():           # a key below equals the size-th largest: topk decides which
        mask[tied] = torch.zeros(tied.numel(), d, dtype=torch.bool).scatter_(
            1, flat[tied].topk(size, dim=1, sorted=False).indices, True)
    return mask.reshape(keys.shape)


def _subset_correlations(model: nn.Module, x: Tensor, scores: Tensor, targets: Tensor,
                         sizes: list[int], *, n_runs: int, baseline: float | Tensor, output: str,
                         generator: torch.Generator, max_rows: int,
                         removal: Removal | None = None) -> Tensor:
    """Per sample and subset size n: Pearson correlation, over ``n_runs`` random subsets S of n
    features, between ``sum_{i in S} a_i`` and the drop of the output when S is set to baseline.

    ``scores`` is the feature map (N, d). Subsets are drawn sample by sample in batch order,
    and within a sample size by size, ``n_runs`` at a time: S is the set of the n largest of
    d uniform keys ``torch.rand(d, generator=generator)`` (:func:`_top_sets`). Returns shape
    (N, len(sizes)). Shared by faithfulness correlation (one size) and sensitivity-n (a curve
    over sizes).
    """
    d = scores.shape[1]
    k = len(sizes)
    scores = scores.cpu()
    mass = []   # the attribution mass of each subset of the current chunk, (c, k * n_runs)
    block = max(1, SUBSET_BLOCK_ELEMENTS // (k * n_runs * d))       # samples per block

    def masks_for(sl: slice) -> Tensor:
        c = sl.stop - sl.start
        mask = torch.empty(c, k * n_runs, d, dtype=torch.bool)
        sums = torch.empty(c, k * n_runs, dtype=scores.dtype)
        for i in range(0, c, block):
            j = min(c, i + block)
            # one draw in sample, size, run order: the same numbers as n_runs rows at a time
            keys = torch.rand(j - i, k, n_runs, d, generator=generator)
            for m, size in enumerate(sizes):
                mask[i:j, m * n_runs:(m + 1) * n_runs] = _top_sets(keys[:, m], size)
            # the same sums, bit for bit, as (mask * scores).sum(2), without the (c, R, d) product
            sums[i:j] = torch.where(mask[i:j], scores[sl.start + i:sl.start + j, None, :],
                                    0.0).sum(dim=2)
        mass[:] = [sums]
        return mask.to(x.device)

    def correlations(sl: slice, perturbed: Tensor) -> Tensor:      # (c, k)
        c = perturbed.shape[0]
        drop = original[sl, None] - perturbed
        return pearson(mass[0].reshape(c * k, n_runs), drop.reshape(c * k, n_runs)).reshape(c, k)

    b = as_baseline(baseline, x)
    original = target_scores(model, x, targets, output=output, max_rows=max_rows)
    removal = removal or removal_for(x, metric="faithfulness correlation / sensitivity-n")
    return perturbed_scores(model, x, targets, masks_for, k * n_runs, b, output, max_rows,
                            reduce=correlations, removal=removal)


@register(category="faithfulness", kind="model", higher_is_better=False,
          continuous_noise=True,
          range=(0.0, float("inf")),
          reference="Yeh, Hsieh, Suggala, Inouye & Ravikumar 2019, 'On the (in)fidelity and "
                    "sensitivity of explanations', NeurIPS (eq. INFD); Captum's infidelity")
@any_inputs
def infidelity(model: nn.Module, inputs: Tensor, attributions: Tensor | Attributions,
               target: Any, *, noise_std: float = 0.1, n_samples: int = 10,
               normalize: bool = False, generator: torch.Generator | None = None,
               max_rows: int = DEFAULT_MAX_ROWS) -> Tensor:
    """Infidelity ``E_I[(I^T a - (f_t(x) - f_t(x - I)))^2]``, per sample (Yeh et al. 2019).

    The mean over ``n_samples`` Gaussian perturbations ``I ~ N(0, noise_std^2)``
    per element, drawn from ``generator``; ``f_t`` is the target's logit. The
    same computation as Captum's ``captum.metrics.infidelity`` given these
    perturbations (a test compares the two on injected noise), done in one
    forward pass of each sample's unperturbed input and cache-sized passes of
    the perturbed rows, with the dot products ``I^T a`` and the errors reduced
    in float64 on the CPU. The N x (n_samples + 1) rows are all the forwards
    it runs: the targets are checked against the outputs of its first pass.

    Parameters
    ----------
    model, inputs (N, *F), attributions (N, *F), target : as for :func:`deletion_curve`.
    noise_std : float > 0
        Standard deviation of the perturbation, in input units.
    n_samples : int
        Perturbations per sample.
    normalize : bool
        Rescale the map by the optimal factor ``beta = sum(I^T a * drop) /
        sum((I^T a)^2)`` over a sample's perturbations first (Captum's option;
        beta = 0 where every ``I^T a`` is 0), which makes the score invariant to
        the map's scale; without it the score depends on the map's units (Yeh
        et al.'s definition).
    generator : torch.Generator, optional
        The perturbations are drawn on the CPU, one ``Tensor.normal_(0,
        noise_std)`` of shape (n_samples, *F) per sample, in sample order, in
        float32 (float64 for a float64 model), then cast to the model's dtype:
        the same seed gives the same perturbations whatever the pass size or
        device, and bit-identical scores for the same batch. Default: seed 0.
    max_rows : int
        At most this many rows per forward pass (on CPU fewer: rows =
        :func:`~xprune.metrics._base.forward_rows`): the ``n_samples`` perturbed
        rows of c = rows // n_samples whole samples (at least one; where one
        sample's rows exceed the pass they go in several), with their c
        unperturbed rows where c (n_samples + 1) is at most ``max_rows`` and
        rows + rows // 4, else those go first in passes of their own. Memory is
        bounded by the pass, not by N x n_samples; the scores do not depend on
        it beyond floating-point rounding.

    Returns
    -------
    Tensor of shape (N,), float64
        >= 0; lower is better. For a linear model its gradient map scores 0.
    """
    x, a = check_map_and_inputs(inputs, attributions)
    refuse_token_ids("infidelity", x, not x.is_floating_point())
    check_positive_int(n_samples, "n_samples")
    check_positive_int(max_rows, "max_rows")
    if isinstance(noise_std, bool) or not isinstance(noise_std, (int, float)) \
            or not noise_std > 0:
        raise ValueError(f"Expected `noise_std` > 0, got {noise_std!r}.")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    n, feat, s = x.shape[0], x.shape[1:], n_samples
    rows = forward_rows(model, x, max_rows)
    chunk = max(1, rows // s)
    # each sample's unperturbed row rides in its samples' pass (c (s + 1) rows, c more than
    # the c * s <= rows of the draws) where that stays within `max_rows` and a quarter above
    # the cache-sized `rows`, else the unperturbed rows go first, in passes of their own
    fold = min(chunk, n) * (s + 1) <= min(max_rows, rows + rows // 4)
    logits = _FirstPassTargets(model, target, n, min(max_rows, rows + rows // 4))
    out = torch.empty(n, dtype=torch.float64)
    with eval_mode(model), torch.no_grad():
        xm = to_model(x, model)
        # float64 normals cost about 5x float32 ones on CPU: draw in the model's precision
        draw = torch.float64 if xm.dtype == torch.float64 else torch.float32
        if not fold:
            original = torch.cat([logits(slice(i, min(n, i + rows)), xm[i:i + rows], 1)
                                  for i in range(0, n, rows)])
        for start in range(0, n, chunk):
            sl = slice(start, min(n, start + chunk))
            c = sl.stop - sl.start
            k = 1 if fold else 0          # each sample's unperturbed row, first in its block
            # one draw per sample, in sample order: the noise does not depend on the passes
            noise = torch.cat([torch.empty((s, *feat), dtype=draw).normal_(
                0.0, noise_std, generator=gen) for _ in range(c)]).to(xm.dtype)  # I, (c*s, *F)
            batch = xm.new_empty((c, k + s, *feat))    # sample major: [x; x - I_1 .. x - I_s]
            if fold:
                batch[:, 0] = xm[sl]
            torch.sub(xm[sl, None], noise.to(xm.device).reshape(c, s, *feat),
                      out=batch[:, k:])                       # a view: written in place
            scores = logits(sl, batch.reshape(-1, *feat), k + s).reshape(c, k + s)
            base = scores[:, 0] if fold else original[sl]
            drop = base[:, None] - scores[:, k:]                  # f_t(x) - f_t(x - I)
            a_c = a[sl].detach().reshape(c, -1, 1).to("cpu", torch.float64)
            explained = torch.bmm(noise.reshape(c, s, -1).double(), a_c)[..., 0]   # I^T a
            if normalize:
                num = (explained * drop).sum(dim=1)
                den = explained.pow(2).sum(dim=1)
                beta = torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 0.0)
                explained = beta[:, None] * explained
            out[sl] = (explained - drop).pow(2).mean(dim=1)
    return out


class _FirstPassTargets:
    """``logits(sl, batch, r)``: the target's logit (float64, CPU) of each row of ``batch``,
    one forward pass of the rows of samples ``sl``, ``r`` rows per sample, sample major.

    Rows go through the model at most ``step`` at a time. The targets are checked (:func:`~xprune._validation.check_targets`, and that the model
    returns logits, :func:`~xprune.attribution.check_logit_outputs`) against the outputs of
    the first pass, whose first row must be sample 0's unperturbed input: the number of
    outputs comes from the pass the metric needs anyway, not from a forward of its own.
    """

    def __init__(self, model: nn.Module, target: Any, n: int, step: int) -> None:
        self.model, self.target, self.n, self.step = model, target, n, step
        self.targets: Tensor | None = None
        self.forward: Any = None

    def __call__(self, sl: slice, batch: Tensor, r: int) -> Tensor:
        if isinstance(self.model, PassThrough):     # other inputs follow the samples
            run = row_forward(for_samples(self.model, sl), batch)
        else:   # every pass has rows of one shape: the model's forward is prepared once
            if self.forward is None:
                self.forward = inference_forward(self.model, batch)
            forward = self.forward
            run = lambda i, j: forward(batch[i:j])  # noqa: E731
        m = batch.shape[0]      # more than `step` rows only where one sample's rows exceed it
        out = torch.cat([as_logits(run(i, min(m, i + self.step)), self.model)
                         for i in range(0, m, self.step)])
        if self.targets is None:
            check_logit_outputs(self.model, out[:1])
            t = check_targets(self.target, self.n, out.shape[1] if out.dim() > 1 else 1)
            self.targets = torch.zeros(self.n, dtype=torch.long) if t is None else t
        out = out if out.dim() > 1 else out[:, None]
        idx = self.targets[sl].to(out.device).repeat_interleave(r)
        return out.gather(1, idx[:, None])[:, 0].double().cpu()


# --- sensitivity-n ------------------------------------------------------------------------

def _default_ns(d: int) -> list[int]:
    """Subset sizes 1, 2, 4, ... up to 80% of the d features (and below d)."""
    top = max(1, min(d - 1, int(0.8 * d)))
    ns, n = [], 1
    while n <= top:
        ns.append(n)
        n *= 2
    return ns


@any_inputs
def sensitivity_n_curve(model: nn.Module, inputs: Tensor, attributions: Tensor | Attributions,
                        target: Any, *, ns: list[int] | None = None,
                        baseline: float | Tensor = 0.0, n_runs: int = 100,
                        output: str = "logit", generator: torch.Generator | None = None,
                        max_rows: int = DEFAULT_MAX_ROWS, removal: Removal | None = None
                        ) -> Tensor:
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
    removal : Removal, optional
        What a feature is and how it is taken out, as for :func:`deletion_curve`
        (``ReplaceAudio(patch=(4, 4))``: time-frequency patches, each ranked by
        the map's sum over it). Default: that of the inputs' kind.

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
    removal = removal_for(x, removal, attributions=attributions, metric="sensitivity-n")
    scores = removal.feature_scores(a).double()
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
                                  max_rows=max_rows, removal=removal)
    _warn_nan(values, "sensitivity-n", "the map or the output drop is constant over the runs")
    return values


@register(category="faithfulness", kind="model", higher_is_better=True, range=(-1.0, 1.0),
          reference="Ancona, Ceolini, Oztireli & Gross 2018, 'Towards better understanding of "
                    "gradient-based attribution methods for deep neural networks', ICLR "
                    "(sensitivity-n)")
@any_inputs
def sensitivity_n(model: nn.Module, inputs: Tensor, attributions: Tensor | Attributions,
                  target: Any, *, n: int | None = None, baseline: float | Tensor = 0.0,
                  n_runs: int = 100, output: str = "logit",
                  generator: torch.Generator | None = None,
                  max_rows: int = DEFAULT_MAX_ROWS, removal: Removal | None = None) -> Tensor:
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
    removal = removal_for(x, removal, attributions=attributions, metric="sensitivity-n")
    d = removal.feature_scores(a[:1]).shape[1]
    if n is None:
        if d < 2:
            raise ValueError(f"Sensitivity-n needs at least 2 features, got {d}.")
        n = default_subset_size(d)
    return sensitivity_n_curve(model, x, a, target, ns=[n], baseline=baseline, n_runs=n_runs,
                               output=output, generator=generator, max_rows=max_rows,
                               removal=removal)[:, 0]


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


@any_inputs
def region_perturbation_curve(model: nn.Module, inputs: Tensor,
                              attributions: Tensor | Attributions, target: Any, *,
                              patch_size: int = 1, steps: int | None = None,
                              baseline: float | Tensor | str = 0.0, output: str = "logit",
                              generator: torch.Generator | None = None,
                              max_rows: int = DEFAULT_MAX_ROWS,
                              removal: Removal | None = None) -> DeletionCurve:
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
        only 64); must be 1 for tabular inputs, and for a ``removal`` whose
        features are already regions (audio patches).
    steps : int, optional
        L, the number of regions perturbed, in [1, number of regions]; default
        ``min(P, 64)`` for P regions (:data:`DEFAULT_MAX_STEPS`: all of the
        64 pixels of a digit; the 64 most relevant regions of larger inputs,
        as Samek et al. evaluate the first L = 100 of theirs).
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
    removal : Removal, optional
        What a feature is and how it is taken out, as for :func:`deletion_curve`;
        with ``ReplaceAudio(patch=(f, t))`` the regions are those time-frequency
        patches (``patch_size`` must then be 1). Default: that of the inputs' kind.

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
    removal = removal_for(x, removal, attributions=attributions, metric="region perturbation")
    scores = removal.feature_scores(a).double().cpu()
    if scores.shape[1] == feature_map(a[:1]).shape[1]:   # features are pixels, bins, columns
        ids, n_patches = _patch_ids(x.shape[1:], patch_size)
    elif patch_size != 1:
        raise ValueError(f"Expected `patch_size` = 1 with a removal whose features are "
                         f"regions already ({removal}), got {patch_size!r}.")
    else:                                               # the removal's patches are the regions
        ids, n_patches = torch.arange(scores.shape[1]), scores.shape[1]
    steps = min(n_patches, DEFAULT_MAX_STEPS) if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= n_patches:
        raise ValueError(f"Expected `steps` to be an integer in [1, {n_patches}] (the number "
                         f"of regions of side {patch_size}), got {steps!r}.")
    n = scores.shape[0]
    relevance = torch.zeros(n, n_patches, dtype=torch.float64).index_add_(1, ids, scores)
    order = relevance.argsort(dim=1, descending=True, stable=True)
    patch_rank = torch.empty_like(order).scatter_(1, order, torch.arange(n_patches).expand(n, -1))
    feature_rank = patch_rank[:, ids].to(x.device)                      # (N, d)
    ks = torch.arange(steps + 1, device=x.device)
    b = resolve_baseline(baseline, x, generator)

    def masks_for(sl: slice) -> Tensor:  # True = the pixel's region has been perturbed
        return feature_rank[sl, None, :] < ks[None, :, None]

    values = perturbed_scores(model, x, targets, masks_for, steps + 1, b, output, max_rows,
                              removal=removal, reuse_repeats=True)
    return DeletionCurve(fractions=torch.arange(steps + 1, dtype=torch.float64) / n_patches,
                         values=values)


@register(category="faithfulness", kind="model", higher_is_better=True,
          range=(-float("inf"), float("inf")),
          reference="Samek, Binder, Montavon, Lapuschkin & Mueller 2017, 'Evaluating the "
                    "visualization of what a deep neural network has learned', IEEE TNNLS "
                    "(AOPC)")
@any_inputs
def aopc(model: nn.Module, inputs: Tensor, attributions: Tensor | Attributions, target: Any,
         *, patch_size: int = 1, steps: int | None = None,
         baseline: float | Tensor | str = 0.0, output: str = "logit",
         generator: torch.Generator | None = None,
         max_rows: int = DEFAULT_MAX_ROWS, removal: Removal | None = None) -> Tensor:
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
                                      generator=generator, max_rows=max_rows, removal=removal)
    return (curve.values[:, :1] - curve.values).mean(dim=1)


# --- monotonicity correlation -------------------------------------------------------------

@register(category="faithfulness", kind="model", higher_is_better=True, range=(-1.0, 1.0),
          reference="Nguyen & Martinez 2020, 'On quantitative aspects of model "
                    "interpretability', arXiv 2007.07584 (monotonicity)")
@any_inputs
def monotonicity_correlation(model: nn.Module, inputs: Tensor,
                             attributions: Tensor | Attributions, target: Any, *,
                             perturbation: str | Tensor = "uniform", noise_std: float = 0.1,
                             n_samples: int = 10, output: str = "probability",
                             generator: torch.Generator | None = None,
                             max_rows: int = DEFAULT_MAX_ROWS,
                             removal: Removal | None = None) -> Tensor:
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
    removal : Removal, optional
        What a feature is, as for :func:`deletion_curve`: with
        ``ReplaceAudio(patch=(f, t))`` feature i is a time-frequency patch,
        perturbed as a whole (every bin takes the draw's values), and ``|a_i|``
        is the magnitude of the map's sum over it. Default: that of the inputs' kind.

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
    removal = removal_for(x, removal, attributions=attributions,
                          metric="monotonicity correlation")
    magnitude = removal.feature_scores(a).double().abs().cpu()
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
            rows = removal.remove(x[i:i + 1], one_hot[None, :, None], draws[None, None])
            rows = rows.reshape(-1, *feat)                  # (b * S, *F), feature-major
            t = targets[i:i + 1].expand(rows.shape[0])
            out = target_scores(for_samples(model, slice(i, i + 1)), rows, t, output=output,
                                max_rows=max_rows)
            change = (original[i] - out.reshape(stop - start, n_samples)) ** 2
            loss[i, start:stop] = change.mean(dim=1)
    rho = pearson(average_ranks(magnitude), average_ranks(loss))
    _warn_nan(rho, "monotonicity correlation",
              "|a| or the expected output change is constant over the features")
    return rho


# --- ROAD ---------------------------------------------------------------------------------


def _top_hits(model: nn.Module, x: Tensor, target: Tensor, max_rows: int) -> Tensor:
    """1.0 where the target is the model's top class (first maximum), else 0.0: shape (M,)."""
    device = model_device(model)
    out = []
    run = row_forward(model, x)
    with eval_mode(model), torch.no_grad():
        for i in range(0, x.shape[0], max_rows):
            logits = as_logits(run(i, i + max_rows), model)
            if logits.dim() == 1:
                logits = logits[:, None]
            hit = logits.argmax(dim=1) == target[i:i + max_rows].to(device)
            out.append(hit.double().cpu())
    return torch.cat(out)


ROAD_OUTPUTS = ("probability", "logit", "accuracy")
ROAD_PERCENTAGES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@any_inputs
def road_curve(model: nn.Module, inputs: Tensor, attributions: Tensor | Attributions,
               target: Any, *, percentages: tuple[float, ...] = ROAD_PERCENTAGES,
               order: str = "morf", noise_std: float = 0.01, output: str = "probability",
               generator: torch.Generator | None = None,
               max_rows: int = DEFAULT_MAX_ROWS, removal: Removal | None = None) -> Tensor:
    """ROAD: the target's score after removing a fraction p of pixels by imputation, per sample.

    For each p, the ``floor(p * H * W)`` pixels the map ranks highest (MoRF)
    or lowest (LeRF) are removed, all channels together, and filled by
    :func:`noisy_linear_imputation`; the model is not retrained (Rong, Leemann
    et al. 2022, "RemOve And Debias"). Pixels are ranked by the map summed over
    channels, signed, ties by index (row-major). The removed sets of one image
    are nested, so one Cholesky factorisation of its largest system of up to
    192 unknowns serves every such percentage; larger systems are banded, built
    for all images and percentages at once and solved one LAPACK call per
    half-bandwidth (same solution, to rounding).

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
    removal : Removal, optional
        What a feature is: ``ReplaceAudio(patch=(f, t))`` ranks time-frequency
        patches of spectrograms by the map's sum over each and removes the
        top ``floor(p * P)`` of the P patches, every bin of them imputed (the
        imputation fills removed values, not the operator's baseline).
        Default: pixels (bins of audio).

    Returns
    -------
    Tensor of shape (N, len(percentages)), float64
        For MoRF lower is better (the output falls fast when the top pixels
        are gone); for LeRF higher is better.

    Raises
    ------
    ValueError
        If the inputs are not 4-D images (tabular data has no neighbourhood),
        ``removal`` is not ``ReplaceAudio``, a percentage is outside [0, 1), on an unknown ``order`` or ``output``,
        ``noise_std`` < 0, mismatched shapes, NaN/Inf or a bad target.

    Notes
    -----
    Quantus 0.6 ``ROAD`` ranks the map per element (the same as per pixel for
    one channel), returns per percentage the accuracy averaged over the batch
    (``argmax == y``), and draws its noise from the global NumPy generator;
    with ``noise_std=0`` and ``output="accuracy"`` the batch mean of this curve
    equals it.
    """
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    features = removal
    removal = removal_for(inputs, NoisyLinearImputation(noise_std, generator), metric="ROAD")
    x, a = check_map_and_inputs(inputs, attributions)
    if features is not None and not isinstance(features, ReplaceAudio):
        raise ValueError(f"Expected `removal` for ROAD to be None or ReplaceAudio(patch=...) "
                         f"(which features are imputed), got {type(features).__name__}: ROAD "
                         f"replaces removed values by its noisy linear imputation, never by "
                         f"another operator's baseline.")
    if features is not None:  # patches of audio: each bin of a removed patch imputed
        removal = grouped(removal, removal_for(x, features, attributions=attributions,
                                               metric="ROAD"))
    if output not in ROAD_OUTPUTS:
        raise ValueError(f"Expected `output` in {ROAD_OUTPUTS}, got {output!r}.")
    if order not in ("morf", "lerf"):
        raise ValueError(f"Expected `order` in ('morf', 'lerf'), got {order!r}.")
    check_positive_int(max_rows, "max_rows")
    percentages = list(percentages)
    if not percentages:
        raise ValueError("Expected `percentages` to hold at least one fraction, got none.")
    for p in percentages:
        check_fraction(p, "percentages")
    targets = model_targets(model, x, target)
    scores = removal.feature_scores(a).double().cpu()
    n, d = scores.shape
    counts = [min(d - 1, int(math.floor(p * d + 1e-9))) for p in percentages]
    ranked = scores.argsort(dim=1, descending=True, stable=True)      # most relevant first
    removal_order = ranked if order == "morf" else ranked.flip(1)
    n_p = len(percentages)
    chunk = max(1, max_rows // n_p)
    out = []
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        batch = removal.remove_prefixes(x[sl], removal_order[sl], counts)   # (c, n_p, *F)
        batch = batch.reshape(-1, *x.shape[1:])
        t = targets[sl].repeat_interleave(n_p)
        if output == "accuracy":
            values = _top_hits(for_samples(model, sl), batch, t, max_rows)
        else:
            values = target_scores(for_samples(model, sl), batch, t, output=output,
                                   max_rows=max_rows)
        out.append(values.reshape(-1, n_p))
    return torch.cat(out)


@register(category="faithfulness", kind="model", higher_is_better=False, range=(0.0, 1.0),
          reference="Rong, Leemann, Borisov, Kasneci & Kasneci 2022, 'A consistent and efficient "
                    "evaluation strategy for attribution methods', ICML (ROAD, MoRF)",
          images_only=True)
@any_inputs
def road(model: nn.Module, inputs: Tensor, attributions: Tensor | Attributions, target: Any,
         *, percentages: tuple[float, ...] = ROAD_PERCENTAGES, order: str = "morf",
         noise_std: float = 0.01, output: str = "probability",
         generator: torch.Generator | None = None,
         max_rows: int = DEFAULT_MAX_ROWS, removal: Removal | None = None) -> Tensor:
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
                      max_rows=max_rows, removal=removal).mean(dim=1)
