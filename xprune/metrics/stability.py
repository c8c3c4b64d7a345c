"""Stability: how much a map changes when its input barely changes."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .._state import as_logits, eval_mode
from .._validation import check_positive_int, check_tensor
from ..attribution import DEFAULT_MAX_ROWS, Attributions
from ._base import (
    any_inputs,
    for_samples,
    forward_rows,
    model_targets,
    refuse_token_ids,
    register,
    row_forward,
    values_of,
    warn_undefined,
)

__all__ = ["avg_sensitivity", "local_lipschitz_estimate", "max_sensitivity",
           "relative_input_stability", "relative_output_stability", "sensitivity_draws",
           "substitute_tokens"]


def _explain_targets(target: Any, n: int) -> Tensor:
    if target is None or isinstance(target, (bool, str)):
        raise ValueError(f"Expected `target` to be an int or class indices of shape ({n},) "
                         f"for the explainer, got {target!r}.")
    if isinstance(target, int):
        return torch.full((n,), target, dtype=torch.long)
    t = torch.as_tensor(target)
    if t.is_floating_point() or t.shape != (n,) or (t.numel() and int(t.min()) < 0):
        raise ValueError(f"Expected `target` to be an int or non-negative class indices of "
                         f"shape ({n},), got {target!r:.80}.")
    return t.long()


def _explain(explain_fn: Callable[..., Tensor], x: Tensor, t: Tensor, rows: Tensor,
             max_rows: int) -> Tensor:
    """Maps of the rows ``x`` (M, *F), (M, D) float64 on the CPU, in calls of ``max_rows`` rows.

    The one place where stability metrics call the explainer. ``rows`` (M,) is
    the sample index of each row (a perturbed copy of sample i has index i),
    ``t`` (N,) the samples' targets: each row is explained for ``t[rows]``,
    and an explainer that holds per-sample arguments (``per_sample_rows`` True,
    as :func:`xprune.explainer`'s, e.g. one baseline per input) also gets
    ``rows=``, so those arguments follow their rows through the repeats and
    chunks exactly as the targets do (../shared/cases/028).
    """
    by_rows = getattr(explain_fn, "per_sample_rows", False) is True
    parts = []
    for i in range(0, x.shape[0], max_rows):
        part, index = x[i:i + max_rows], rows[i:i + max_rows]
        out = explain_fn(part, t[index], rows=index) if by_rows else explain_fn(part, t[index])
        out = out.values if isinstance(out, Attributions) else out   # xprune.attribute's record
        if out.shape != part.shape:
            raise ValueError(f"Expected `explain_fn` to return maps of the inputs' shape "
                             f"{tuple(part.shape)}, got {tuple(out.shape)}.")
        parts.append(out.detach().double().reshape(out.shape[0], -1).cpu())
    return torch.cat(parts)


def _noise(x: Tensor, n_samples: int, scale: float, generator: torch.Generator, *,
           gaussian: bool) -> Tensor:
    """Noise of shape (N, n_samples, *F) in ``x``'s dtype and device, drawn sample by sample.

    Gaussian with standard deviation ``scale``, or uniform in [-scale, scale]
    per element. Each sample's draws come from ``generator`` in batch order
    (in float32 on the CPU), so they do not depend on the samples after it.
    """
    draws = []
    for _ in range(x.shape[0]):
        if gaussian:
            draws.append(torch.randn(n_samples, *x.shape[1:], generator=generator) * scale)
        else:
            draws.append((torch.rand(n_samples, *x.shape[1:], generator=generator) * 2 - 1)
                         * scale)
    return torch.stack(draws).to(dtype=x.dtype, device=x.device)


def _given_maps(attributions: Tensor | Attributions | None, x: Tensor, t: Tensor
                ) -> Tensor | None:
    """The caller's unperturbed maps as (N, D) float64 on the CPU, checked; None if not given.

    ``attributions`` must be the explainer's maps of ``x`` for the targets ``t``
    (an :class:`~xprune.attribution.Attributions` record is also checked to
    have been computed on ``x`` with those targets); they then stand in for
    the maps of the unperturbed inputs, which are not explained again.
    """
    if attributions is None:
        return None
    if isinstance(attributions, Attributions):
        if (tuple(attributions.attributed.shape) != tuple(x.shape)
                or not torch.equal(attributions.attributed.to(x.device, x.dtype), x)):
            raise ValueError("Expected `attributions` to explain these `inputs`: the "
                             "Attributions record was computed on other inputs.")
        if not torch.equal(attributions.targets.cpu().long(), t.cpu()):
            raise ValueError("Expected `attributions` to explain the given `target`: the "
                             "Attributions record holds maps of other targets.")
    a = values_of(attributions, "attributions")
    if tuple(a.shape) != tuple(x.shape):
        raise ValueError(f"Expected `attributions` of the inputs' shape {tuple(x.shape)}, got "
                         f"{tuple(a.shape)}.")
    return a.detach().double().reshape(a.shape[0], -1).cpu()


def _explained_chunks(explain_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, t: Tensor,
                      n_samples: int, scale: float, generator: torch.Generator, *,
                      gaussian: bool, max_rows: int, given: Tensor | None = None,
                      draw: Callable[[slice], Tensor] | None = None):
    """Noisy copies of ``x`` and their maps, a chunk of samples at a time.

    Yields ``(sl, perturbed, base, maps)`` for consecutive sample slices ``sl``:
    ``perturbed`` (c, S, *F) = ``x[sl]`` plus the noise of :func:`_noise` (drawn
    chunk by chunk, which gives the same draws as the whole batch at once),
    ``base`` (c, D) the maps of ``x[sl]`` and ``maps`` (c, S, D) those of
    ``perturbed``, float64 on the CPU. Memory is bounded by the chunk, not by N.

    ``draw(sl)``, if given, returns the perturbed copies (c, S, *F) of
    ``x[sl]`` instead of the noise (token substitution for token ids).

    ``given`` (N, D), the caller's maps of ``x`` (:func:`_given_maps`), are
    the ``base`` maps when passed: ``explain_fn`` then sees exactly the
    N x S perturbed rows the definition needs, nothing else. Without them it
    also explains the N unperturbed rows.

    How rows are sent to ``explain_fn`` (calls of at most ``max_rows`` rows):

    - An explainer whose map of a row does not depend on the other rows of the
      call (``explain_fn.independent_rows`` is True, as :func:`xprune.explainer`
      sets for deterministic methods) gets the perturbed rows of
      ``max_rows // S`` samples per call (with their unperturbed rows,
      ``max_rows // (S + 1)`` samples, when ``given`` is None).
    - Any other callable (e.g. SmoothGrad, whose noise is drawn per call) sees
      the calls it always saw: the unperturbed rows, ``max_rows`` per call
      (unless ``given``), and the perturbed rows, sample-major, in calls of
      ``max_rows``. Chunks of ``max_rows`` samples keep those call boundaries,
      so its maps, and the scores, are those of one call over the whole batch;
      for N <= ``max_rows`` even the order of the calls is unchanged.
    """
    n, s = x.shape[0], n_samples
    merged = getattr(explain_fn, "independent_rows", False) is True
    if merged:
        chunk = max(1, max_rows // (s if given is not None else s + 1))
    else:
        chunk = max_rows
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        xs = x[sl]
        c = xs.shape[0]
        perturbed = draw(sl) if draw is not None else \
            xs[:, None] + _noise(xs, s, scale, generator, gaussian=gaussian)
        flat = perturbed.reshape(c * s, *x.shape[1:])
        own = torch.arange(sl.start, sl.stop)          # sample index of each unperturbed row
        flat_rows = own.repeat_interleave(s)           # ... and of each perturbed row
        if given is not None:
            base = given[sl]
            maps = _explain(explain_fn, flat, t, flat_rows, max_rows)
        elif merged:
            maps = _explain(explain_fn, torch.cat([xs, flat]), t,
                            torch.cat([own, flat_rows]), max_rows)
            base, maps = maps[:c], maps[c:]
        else:
            base = _explain(explain_fn, xs, t, own, max_rows)
            maps = _explain(explain_fn, flat, t, flat_rows, max_rows)
        yield sl, perturbed, base, maps.reshape(c, s, -1)


@register(category="stability", kind="explainer", higher_is_better=False,
          range=(0.0, float("inf")),
          reference="Yeh, Hsieh, Suggala, Inouye & Ravikumar 2019, 'On the (in)fidelity and "
                    "sensitivity of explanations', NeurIPS (eq. SENS_MAX)")
@any_inputs
def max_sensitivity(explain_fn: Callable[[Tensor, Tensor], Tensor], inputs: Tensor, target: Any,
                    *, radius: float = 0.1, n_samples: int = 10, relative: bool = True,
                    generator: torch.Generator | None = None,
                    max_rows: int = DEFAULT_MAX_ROWS,
                    attributions: Tensor | Attributions | None = None) -> Tensor:
    """Max-sensitivity: the largest change of the map under small input noise, per sample.

    ``max_j ||Phi(x + e_j) - Phi(x)||`` over ``n_samples`` draws of noise
    ``e_j`` uniform in [-radius, radius] per element (the L-infinity ball of
    Yeh et al. 2019, sampled as Captum and Quantus do), Frobenius norms.

    Token ids (an integer (N, T) tensor, with an ``explain_fn`` from
    :func:`xprune.explainer` for a model with an embedding layer) take no
    noise: each draw substitutes ``ceil(radius * L)`` of the L counted tokens
    (``attributions.feature_mask``, else all but the pad and special ids) by
    other vocabulary ids (:func:`substitute_tokens`); ``radius`` is then that
    fraction, in (0, 1].

    Parameters
    ----------
    explain_fn : callable
        ``explain_fn(inputs (M, *F), target (M,)) -> Tensor (M, *F)``, e.g.
        :func:`xprune.explainer`. All perturbations of all samples are sent in
        calls of at most ``max_rows`` rows, a chunk of samples at a time (with
        the unperturbed inputs in the same calls when ``explain_fn`` has the
        attribute ``independent_rows = True``, as :func:`xprune.explainer`
        gives deterministic methods), so memory does not grow with N. A
        callable with ``per_sample_rows = True`` (:func:`xprune.explainer`'s)
        also gets ``rows=``, the sample index of each row, so its per-sample
        arguments (a baseline or feature mask (N, *F), an attention mask)
        follow the noisy copies of their sample.
    inputs : Tensor of shape (N, *F)
    target : int or Tensor of shape (N,)
    radius : float > 0
        Half-width of the uniform noise, in input units.
    n_samples : int
        Noise draws per sample.
    relative : bool
        Default True: divide by ||Phi(x)||, as Captum's ``sensitivity_max`` and
        Quantus 0.6 ``MaxSensitivity`` do; this makes dense and sparse models,
        whose maps differ in magnitude, comparable. False gives Yeh et al.'s
        absolute SENS_MAX (no denominator).
    generator : torch.Generator, optional
        Noise source; drawn sample by sample in batch order, so the same seed
        gives bit-identical scores and a sample's noise does not depend on
        the samples after it.
    max_rows : int >= 1
        Rows per explainer call.
    attributions : Tensor of shape (N, *F) or Attributions, optional
        ``explain_fn``'s maps of ``inputs`` for ``target``, if the caller holds
        them (an ``Attributions`` record is checked to explain these inputs and
        targets). They are used as the unperturbed maps ``Phi(x)``, so
        ``explain_fn`` sees only the N x ``n_samples`` perturbed rows, the
        explanations the definition needs; without them it also explains the
        N unperturbed inputs. Scores agree to floating-point rounding (a map
        can differ in its last bits with the rows it was computed with).

    Returns
    -------
    Tensor of shape (N,), float64
        >= 0; lower is better (more stable). Plain gradients of a linear
        model score 0. With ``relative=True`` a sample whose unperturbed map is
        all zero scores NaN, with a warning.

    Raises
    ------
    ValueError
        On NaN/Inf inputs, ``radius`` <= 0, ``n_samples`` < 1, a bad target, or
        an ``explain_fn`` returning the wrong shape.
    """
    return _sensitivity(explain_fn, inputs, target, radius=radius, n_samples=n_samples,
                        relative=relative, generator=generator, max_rows=max_rows,
                        attributions=attributions, reduce="max")


@register(category="stability", kind="explainer", higher_is_better=False,
          range=(0.0, float("inf")),
          reference="Bhatt, Weller & Moura 2020, 'Evaluating and aggregating feature-based "
                    "model explanations', IJCAI (definition 2, average sensitivity)")
@any_inputs
def avg_sensitivity(explain_fn: Callable[[Tensor, Tensor], Tensor], inputs: Tensor, target: Any,
                    *, radius: float = 0.1, n_samples: int = 10, relative: bool = True,
                    generator: torch.Generator | None = None,
                    max_rows: int = DEFAULT_MAX_ROWS,
                    attributions: Tensor | Attributions | None = None) -> Tensor:
    """Avg-sensitivity: the mean change of the map under small input noise, per sample.

    As :func:`max_sensitivity` (same noise, norms, ``relative`` default and
    errors), with the mean over the ``n_samples`` draws instead of the
    maximum. With the same generator seed both see the same noise, so
    avg <= max sample by sample. Lower is better.
    """
    return _sensitivity(explain_fn, inputs, target, radius=radius, n_samples=n_samples,
                        relative=relative, generator=generator, max_rows=max_rows,
                        attributions=attributions, reduce="mean")


@any_inputs
def sensitivity_draws(explain_fn: Callable[[Tensor, Tensor], Tensor], inputs: Tensor,
                      target: Any, *, radius: float = 0.1, n_samples: int = 10,
                      relative: bool = True, generator: torch.Generator | None = None,
                      max_rows: int = DEFAULT_MAX_ROWS,
                      attributions: Tensor | Attributions | None = None) -> Tensor:
    """The change of the map under each noise draw: Tensor of shape (N, n_samples), float64.

    Its row maximum is :func:`max_sensitivity` and its row mean
    :func:`avg_sensitivity` (same noise for the same generator seed), so both
    can be had from one set of explainer calls. Arguments as for those.
    """
    return _sensitivity(explain_fn, inputs, target, radius=radius, n_samples=n_samples,
                        relative=relative, generator=generator, max_rows=max_rows,
                        attributions=attributions, reduce=None)


def _token_ids(explain_fn: Callable, inputs: object) -> bool:
    """Whether ``inputs`` are token ids for the model behind ``explain_fn``."""
    return (isinstance(inputs, Tensor) and not inputs.is_floating_point()
            and bool(getattr(explain_fn, "embeds_integer_inputs", False)))


def substitute_tokens(ids: Tensor, counted: Tensor, n_samples: int, fraction: float,
                      generator: torch.Generator, *, vocab_size: int,
                      excluded: Tensor) -> Tensor:
    """Copies of token ids with a fraction of each sequence's counted tokens substituted.

    Each of the ``n_samples`` draws of sample i replaces ``ceil(fraction * L_i)``
    of its ``L_i`` counted tokens (positions where ``counted`` is True), chosen
    uniformly without replacement, each by an id drawn uniformly from the
    vocabulary ``0 .. vocab_size - 1`` less ``excluded`` (padding and special
    ids) and less the token it replaces. Draws come from ``generator`` sample
    by sample in batch order, so a sample's copies do not depend on the
    samples after it. The discrete counterpart, for token ids, of the small
    input noise of :func:`max_sensitivity` (as in the token-substitution
    perturbations of robustness studies of text explanations).

    Parameters
    ----------
    ids : int Tensor of shape (N, T)
    counted : bool Tensor of shape (N, T)
    fraction : float in (0, 1]

    Returns
    -------
    int Tensor of shape (N, n_samples, T), ``ids``' dtype; uncounted positions unchanged.
    """
    allowed = torch.ones(vocab_size, dtype=torch.bool)
    allowed[excluded[(excluded >= 0) & (excluded < vocab_size)]] = False
    pool = allowed.nonzero().flatten()
    if pool.numel() < 2:
        raise ValueError(f"Expected at least two substitutable token ids in a vocabulary of "
                         f"{vocab_size} less {excluded.numel()} padding and special ids.")
    index_in_pool = torch.full((vocab_size,), -1, dtype=torch.long)
    index_in_pool[pool] = torch.arange(pool.numel())
    cpu = ids.detach().cpu().long()
    out = cpu[:, None].repeat(1, n_samples, 1)
    for i in range(cpu.shape[0]):
        positions = counted[i].cpu().nonzero().flatten()
        k = min(positions.numel(), math.ceil(fraction * positions.numel()))
        for j in range(n_samples):
            chosen = positions[torch.randperm(positions.numel(), generator=generator)[:k]]
            old = index_in_pool[cpu[i, chosen].clamp(0, vocab_size - 1)]
            step = torch.randint(1, pool.numel(), (k,), generator=generator)
            # a step of 1 .. |pool|-1 from the old id's place never lands on it again; an old
            # id outside the pool (-1) lands anywhere but the pool's last entry, uniformly
            out[i, j, chosen] = pool[(old + step) % pool.numel()]
    return out.to(device=ids.device, dtype=ids.dtype)


def _token_draws(explain_fn: Callable, x: Tensor, attributions: Tensor | Attributions | None,
                 n_samples: int, fraction: float, generator: torch.Generator, metric: str
                 ) -> Callable[[slice], Tensor]:
    """The substitution draws of token ids ``x`` (N, T) for ``metric``, as ``draw(sl)``."""
    vocab = getattr(explain_fn, "token_vocabulary", None)
    if not isinstance(vocab, int):
        raise ValueError(f"{metric} on token ids substitutes tokens, which needs the size of "
                         f"the model's vocabulary: pass an `explain_fn` made by "
                         f"xprune.explainer(model, ...), which finds the embedding layer.")
    if not 0 < fraction <= 1:
        raise ValueError(f"Expected `radius` in (0, 1] for token ids (the fraction of each "
                         f"sequence's tokens substituted per draw), got {fraction!r}.")
    mask = attributions.feature_mask if isinstance(attributions, Attributions) else None
    options = getattr(explain_fn, "token_options", None)
    special = [i for i in ([getattr(options, "pad_token_id", None)]
                           + list(getattr(options, "special_token_ids", ()) or ()))
               if i is not None]
    counted = mask.cpu().bool() if mask is not None else \
        ~torch.isin(x.cpu(), torch.tensor(special, dtype=x.dtype))
    # padding and special ids: those named, and whatever stands where the mask says not counted
    excluded = torch.unique(torch.cat([torch.tensor(special, dtype=torch.long),
                                       x.cpu().long()[~counted]]))
    draws = substitute_tokens(x, counted, n_samples, fraction, generator, vocab_size=vocab,
                              excluded=excluded)
    return lambda sl: draws[sl]


def _refuse_token_ids(explain_fn: Callable, inputs: object, metric: str) -> None:
    """Stability metrics that add continuous noise to the inputs: token ids cannot take it."""
    refuse_token_ids(metric, inputs, _token_ids(explain_fn, inputs))


def _sensitivity(explain_fn, inputs, target, *, radius, n_samples, relative, generator,
                 max_rows, attributions, reduce: str | None) -> Tensor:
    metric = {"max": "max_sensitivity", "mean": "avg_sensitivity",
              None: "sensitivity_draws"}[reduce]
    tokens = _token_ids(explain_fn, inputs)
    if tokens:
        x = inputs
        if x.dim() != 2 or x.shape[0] == 0:
            raise ValueError(f"Expected token ids of shape (N, T) with N >= 1, got "
                             f"{tuple(x.shape)}.")
    else:
        x = check_tensor(inputs, "inputs", min_dim=2)
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not radius > 0:
        raise ValueError(f"Expected `radius` > 0, got {radius!r}.")
    check_positive_int(n_samples, "n_samples")
    check_positive_int(max_rows, "max_rows")
    n = x.shape[0]
    t = _explain_targets(target, n)
    given = _given_maps(attributions, x, t)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    draw = _token_draws(explain_fn, x, attributions, n_samples, float(radius), generator,
                        metric) if tokens else None
    diff = torch.empty(n, n_samples, dtype=torch.float64)
    denom = torch.empty(n, 1, dtype=torch.float64)
    for sl, _, base, maps in _explained_chunks(explain_fn, x, t, n_samples, radius, generator,
                                               gaussian=False, max_rows=max_rows, given=given,
                                               draw=draw):
        diff[sl] = (maps - base[:, None]).norm(dim=2)        # (c, S)
        denom[sl] = base.norm(dim=1, keepdim=True)
    if relative:
        diff = torch.where(denom > 0, diff / denom, torch.full_like(diff, float("nan")))
        warn_undefined(diff, "relative sensitivity", "an all-zero map at the unperturbed input "
                       "(the relative form divides by its norm)", stacklevel=4)
    if reduce is None:
        return diff
    return diff.amax(dim=1) if reduce == "max" else diff.mean(dim=1)


# --- local Lipschitz estimate and relative stability ------------------------------------------

def _check_scale(value: object, name: str) -> float:
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or not value > 0):
        raise ValueError(f"Expected `{name}` to be a finite number > 0, got {value!r}.")
    return float(value)


def _max_over_valid(ratio: Tensor, valid: Tensor, metric: str, what: str,
                    stacklevel: int) -> Tensor:
    """Row maximum of (N, S) ``ratio`` over its ``valid`` entries; NaN, with a warning, for none."""
    none = ~valid.any(dim=1)
    best = torch.where(valid, ratio, torch.full_like(ratio, -math.inf)).amax(dim=1)
    return warn_undefined(best.masked_fill(none, math.nan), metric, f"no {what}",
                          stacklevel=stacklevel + 1)


@torch.no_grad()
def _logits(model: nn.Module, x: Tensor, max_rows: int) -> Tensor:
    """The model's outputs for each row of ``x``: (M, C), float64 on the CPU, in eval mode."""
    out = []
    run = row_forward(model, x)
    with eval_mode(model):
        for i in range(0, x.shape[0], max_rows):
            logits = as_logits(run(i, i + max_rows), model)
            out.append(logits.reshape(logits.shape[0], -1).double().cpu())
    return torch.cat(out)


def _predicted(logits: Tensor) -> Tensor:
    """Predicted class of (..., C) logits; a one-output model predicts 1 where its logit is > 0."""
    if logits.shape[-1] == 1:
        return (logits[..., 0] > 0).long()
    return logits.argmax(dim=-1)


def _relative_change(ref: Tensor, other: Tensor, eps_min: float) -> Tensor:
    """Element-wise ``(ref - other) / ref``, with ``eps_min`` in place of ``ref`` where it is 0."""
    return (ref - other) / ref.masked_fill(ref == 0, eps_min)


@register(category="stability", kind="explainer", higher_is_better=False,
          continuous_noise=True,
          range=(0.0, float("inf")),
          reference="Alvarez-Melis & Jaakkola 2018, 'On the robustness of interpretability "
                    "methods', ICML Workshop on Human Interpretability (arXiv 1806.08049), "
                    "local Lipschitz estimate; also 'Towards robust interpretability with "
                    "self-explaining neural networks', NeurIPS 2018")
@any_inputs
def local_lipschitz_estimate(explain_fn: Callable[[Tensor, Tensor], Tensor], inputs: Tensor,
                             target: Any, *, noise_std: float = 0.1, n_samples: int = 10,
                             generator: torch.Generator | None = None,
                             max_rows: int = DEFAULT_MAX_ROWS,
                             attributions: Tensor | Attributions | None = None) -> Tensor:
    """Local Lipschitz estimate: the largest change of the map per unit change of the input.

    ``max_j ||Phi(x) - Phi(x_j)||_2 / ||x - x_j||_2`` over ``n_samples``
    neighbours ``x_j = x + e_j``, ``e_j ~ N(0, noise_std^2)`` i.i.d. per
    element (Euclidean norms over all elements of a sample). This is the
    finite-sample estimate of Alvarez-Melis & Jaakkola 2018 with the
    neighbourhood sampled as Quantus 0.6 ``LocalLipschitzEstimate`` does
    (Gaussian noise, default sigma 0.1; Quantus adds 1e-10 to the
    denominator, which changes nothing here). Unlike Quantus's default, maps are
    never normalised (Quantus divides by a batch-wide maximum); compare with
    its ``normalise=False, abs=False``. The predicted class is not checked.

    Parameters
    ----------
    explain_fn : callable
        ``explain_fn(inputs (M, *F), target (M,)) -> Tensor (M, *F)``, e.g.
        :func:`xprune.explainer`. All neighbours of all samples are sent in
        calls of at most ``max_rows`` rows, chunk by chunk, as for
        :func:`max_sensitivity`.
    inputs : Tensor of shape (N, *F)
    target : int or Tensor of shape (N,)
        The class explained, for ``x`` and all its neighbours.
    noise_std : float > 0
        Standard deviation of the Gaussian noise, in input units.
    n_samples : int >= 1
        Neighbours per sample.
    generator : torch.Generator, optional
        Noise source (default ``torch.Generator().manual_seed(0)``); drawn
        sample by sample in batch order, so the same seed gives bit-identical
        scores and a sample's noise does not depend on the samples after it.
    max_rows : int >= 1
        Rows per explainer call.
    attributions : Tensor of shape (N, *F) or Attributions, optional
        The unperturbed maps, reused instead of explaining ``inputs`` again,
        as for :func:`max_sensitivity`.

    Returns
    -------
    Tensor of shape (N,), float64
        In [0, inf); lower is better (more stable). The gradient of a linear
        model scores 0; an explainer ``Phi(x) = c x`` scores ``|c|``
        exactly. Neighbours that equal ``x`` in the inputs' dtype (noise
        below its resolution) are skipped; a sample with no other neighbour
        scores NaN, with a RuntimeWarning.

    Raises
    ------
    ValueError
        On NaN/Inf inputs, ``noise_std`` <= 0 or not finite, ``n_samples`` or
        ``max_rows`` < 1, a bad target, or an ``explain_fn`` returning the
        wrong shape.
    """
    _refuse_token_ids(explain_fn, inputs, "local_lipschitz_estimate")
    x = check_tensor(inputs, "inputs", min_dim=2)
    noise_std = _check_scale(noise_std, "noise_std")
    check_positive_int(n_samples, "n_samples")
    check_positive_int(max_rows, "max_rows")
    n, s = x.shape[0], n_samples
    t = _explain_targets(target, n)
    given = _given_maps(attributions, x, t)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    change = torch.empty(n, s, dtype=torch.float64)
    step = torch.empty(n, s, dtype=torch.float64)
    for sl, perturbed, base, maps in _explained_chunks(explain_fn, x, t, s, noise_std, generator,
                                                       gaussian=True, max_rows=max_rows,
                                                       given=given):
        change[sl] = (maps - base[:, None]).norm(dim=2)                           # (c, S)
        step[sl] = (perturbed.double() - x[sl].double()[:, None]).reshape(
            perturbed.shape[0], s, -1).norm(dim=2).cpu()
    return _max_over_valid(change / step, step > 0, "local_lipschitz_estimate",
                           "neighbour that differs from the input", stacklevel=3)


def _relative_stability(model, explain_fn, inputs, target, *, radius, n_samples, eps_min,
                        generator, max_rows, attributions, denominator: str) -> Tensor:
    _refuse_token_ids(explain_fn, inputs, "relative_input_stability" if denominator == "input"
                      else "relative_output_stability")
    x = check_tensor(inputs, "inputs", min_dim=2)
    radius = _check_scale(radius, "radius")
    eps_min = _check_scale(eps_min, "eps_min")
    check_positive_int(n_samples, "n_samples")
    check_positive_int(max_rows, "max_rows")
    n, s = x.shape[0], n_samples
    t = model_targets(model, x, target)
    given = _given_maps(attributions, x, t)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    change = torch.empty(n, s, dtype=torch.float64)
    ref = torch.empty(n, s, dtype=torch.float64)
    valid = torch.empty(n, s, dtype=torch.bool)
    for sl, perturbed, base, maps in _explained_chunks(explain_fn, x, t, s, radius, generator,
                                                       gaussian=False, max_rows=max_rows,
                                                       given=given):
        # The chunk's N x (S + 1) rows, in the cache-sized passes of the other metrics'
        # forwards: a float32 model may round a row's logits differently with its
        # pass-mates, as the explainer its maps, within float rounding (case 001).
        # Sample major ([x_i; x_i + d_i1 .. x_i + d_iS]): a several-input model's other
        # inputs follow their rows.
        c, xs = perturbed.shape[0], x[sl]
        rows = torch.cat([xs[:, None], perturbed], dim=1).reshape(c * (s + 1), *x.shape[1:])
        logits = _logits(for_samples(model, sl), rows, forward_rows(model, rows, max_rows))
        logits = logits.reshape(c, s + 1, -1)
        h, h_pert = logits[:, 0], logits[:, 1:]                                   # (c, C), (c, S, C)
        valid[sl] = _predicted(h_pert) == _predicted(h)[:, None]
        change[sl] = _relative_change(base[:, None], maps, eps_min).norm(dim=2)   # (c, S)
        if denominator == "input":
            moved = _relative_change(xs.double().reshape(c, 1, -1).cpu(),
                                     perturbed.double().reshape(c, s, -1).cpu(), eps_min)
        elif denominator == "relative_logits":
            moved = _relative_change(h[:, None], h_pert, eps_min)
        else:
            moved = h[:, None] - h_pert
        ref[sl] = moved.norm(dim=2)
    ratio = change / ref.clamp_min(eps_min)
    return _max_over_valid(ratio, valid, ("relative_input_stability" if denominator == "input"
                            else "relative_output_stability"),
                           "perturbation that keeps the predicted class", stacklevel=4)


@register(category="stability", kind="model_explainer", higher_is_better=False,
          continuous_noise=True,
          range=(0.0, float("inf")),
          reference="Agarwal, Johnson, Pawelczyk, Krishna, Saxena, Zitnik & Lakkaraju 2022, "
                    "'Rethinking stability for attribution-based explanations', arXiv "
                    "2203.06877 (Sec. 3.3, relative input stability RIS)")
@any_inputs
def relative_input_stability(model: nn.Module, explain_fn: Callable[[Tensor, Tensor], Tensor],
                             inputs: Tensor, target: Any, *, radius: float = 0.2,
                             n_samples: int = 10, eps_min: float = 1e-6,
                             generator: torch.Generator | None = None,
                             max_rows: int = DEFAULT_MAX_ROWS,
                             attributions: Tensor | Attributions | None = None) -> Tensor:
    """Relative input stability (RIS): relative change of the map per relative change of the input.

    ``max_{x'} ||(Phi(x) - Phi(x')) / Phi(x)||_2 / max(||(x - x') / x||_2, eps_min)``
    over ``n_samples`` perturbations ``x'`` that keep the model's predicted
    class (Agarwal et al. 2022), ratios element-wise.

    Parameters
    ----------
    model : nn.Module
        (M, *F) -> (M, C) logits; only its predicted class is used (eval mode,
        restored afterwards; run on its own device).
    explain_fn : callable
        ``explain_fn(inputs (M, *F), target (M,)) -> Tensor (M, *F)``, e.g.
        :func:`xprune.explainer` of the same model. All perturbations of all
        samples are sent in calls of at most ``max_rows`` rows.
    inputs : Tensor of shape (N, *F)
    target : int, sequence or Tensor of shape (N,)
        The class explained at ``x`` and at every ``x'`` (usually the
        predicted class); may be omitted for a one-output model.
    radius : float > 0
        Half-width of the uniform noise, in input units.
    n_samples : int >= 1
        Perturbations per sample.
    eps_min : float > 0
        Stands in for zero denominators (see below); Quantus's default 1e-6.
    generator : torch.Generator, optional
        Noise source (default ``torch.Generator().manual_seed(0)``), drawn
        sample by sample in batch order: same seed, bit-identical scores.
    max_rows : int >= 1
        Rows per explainer call and per forward pass (on CPU, passes of about
        2**18 input elements, as the other metrics' forwards). All perturbations are drawn, explained and scored a chunk
        of samples at a time, as for :func:`max_sensitivity`, so memory does
        not grow with N.
    attributions : Tensor of shape (N, *F) or Attributions, optional
        The unperturbed maps, reused instead of explaining ``inputs`` again,
        as for :func:`max_sensitivity`.

    Returns
    -------
    Tensor of shape (N,), float64
        In [0, inf); lower is better (more stable). The gradient of a linear
        model scores 0; an explainer ``Phi(x) = c x`` (c != 0) scores 1 on
        inputs with no zero element, ``Phi(x) = x^k`` about ``|k|`` for small
        ``radius``. NaN, with
        a RuntimeWarning, for a sample whose every perturbation changes the
        prediction.

    Raises
    ------
    ValueError
        On NaN/Inf inputs, ``radius`` or ``eps_min`` <= 0 or not finite,
        ``n_samples`` or ``max_rows`` < 1, a target that is missing, of the
        wrong shape or out of the model's range, or an ``explain_fn``
        returning the wrong shape.

    Notes
    -----
    Element-wise ratios and zeros. Both relative changes divide element by
    element, which is undefined where ``Phi(x)_i = 0`` or ``x_i = 0``. As in
    Quantus 0.6, ``eps_min`` takes the place of such a zero denominator, so an element that is 0 at ``x`` and
    moves by ``delta`` counts ``delta / eps_min``. On inputs that are exactly 0
    on many features (every background pixel of a digits image) the input term
    is then dominated by those features, about ``||noise there|| / eps_min``,
    and RIS scales with ``eps_min``; on maps that are exactly 0 at ``x``
    (zero-baseline methods on such pixels) the numerator is dominated the same
    way. Compare scores only at equal ``eps_min``, ``radius`` and
    ``n_samples``. The denominator norm is floored at ``eps_min`` as in the
    paper (Quantus adds ``eps_min`` only where it is exactly 0; the two differ
    only for norms below ``eps_min``).

    Perturbations. ``x' = x + e`` with ``e`` uniform in [-radius, radius] per
    element, drawn as :func:`max_sensitivity` draws its noise (same seed, same
    noise). Quantus 0.6 draws uniform noise in [0.02, 0.2], a one-sided shift;
    we sample the box centred on ``x`` (pass Quantus
    ``perturb_func_kwargs={"lower_bound": r, "upper_bound": None}`` for the
    same distribution). Norms are Euclidean (p = 2) over all elements (every
    channel of every pixel), as Quantus's.

    Changed predictions. Perturbations after which the model's predicted class
    (argmax of its outputs; ``logit > 0`` for a one-output model) differs from
    its prediction at ``x`` are left out of the maximum, as the paper requires.
    A sample with no perturbation left scores NaN, with a RuntimeWarning.
    Quantus instead scores NaN as soon as one perturbation changes the
    prediction.
    """
    return _relative_stability(model, explain_fn, inputs, target, radius=radius,
                               n_samples=n_samples, eps_min=eps_min, generator=generator,
                               max_rows=max_rows, attributions=attributions,
                               denominator="input")


@register(category="stability", kind="model_explainer", higher_is_better=False,
          continuous_noise=True,
          range=(0.0, float("inf")),
          reference="Agarwal, Johnson, Pawelczyk, Krishna, Saxena, Zitnik & Lakkaraju 2022, "
                    "'Rethinking stability for attribution-based explanations', arXiv "
                    "2203.06877 (Sec. 3.3, relative output stability ROS)")
@any_inputs
def relative_output_stability(model: nn.Module, explain_fn: Callable[[Tensor, Tensor], Tensor],
                              inputs: Tensor, target: Any, *, radius: float = 0.2,
                              n_samples: int = 10, eps_min: float = 1e-6,
                              relative_logits: bool = True,
                              generator: torch.Generator | None = None,
                              max_rows: int = DEFAULT_MAX_ROWS,
                              attributions: Tensor | Attributions | None = None) -> Tensor:
    """Relative output stability (ROS): relative change of the map per relative change of the logits.

    ``max_{x'} ||(Phi(x) - Phi(x')) / Phi(x)||_2 / max(||(h(x) - h(x')) / h(x)||_2, eps_min)``
    over ``n_samples`` perturbations ``x'`` that keep the model's predicted
    class, ``h`` the model's logit vector (all classes), ratios element-wise
    (Agarwal et al. 2022). Arguments, perturbations, zero handling and errors
    as :func:`relative_input_stability`; the same seed gives the same
    perturbations, so RIS and ROS can be read side by side.

    Parameters
    ----------
    relative_logits : bool
        Default True: the paper's relative change of the logits. False divides
        by the absolute change ``||h(x) - h(x')||_2`` instead, which is what
        Quantus 0.6 ``RelativeOutputStability`` computes.

    Returns
    -------
    Tensor of shape (N,), float64
        In [0, inf); lower is better (more stable). The gradient of a linear
        model scores 0. NaN, with a RuntimeWarning, for a sample whose every
        perturbation changes the prediction.

    Notes
    -----
    Logits that are exactly 0 at ``x`` get ``eps_min`` as their denominator,
    as zero inputs do in RIS. The prediction check, the perturbations and the
    treatment of zero map elements are those of :func:`relative_input_stability`.
    """
    return _relative_stability(model, explain_fn, inputs, target, radius=radius,
                               n_samples=n_samples, eps_min=eps_min, generator=generator,
                               max_rows=max_rows, attributions=attributions,
                               denominator="relative_logits" if relative_logits else "logits")
