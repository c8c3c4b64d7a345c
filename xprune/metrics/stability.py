"""Stability: how much a map changes when its input barely changes."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .._validation import check_positive_int, check_tensor
from ..attribution import DEFAULT_MAX_ROWS
from ._base import register

__all__ = ["avg_sensitivity", "max_sensitivity", "sensitivity_draws"]


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


def _explain(explain_fn: Callable[[Tensor, Tensor], Tensor], x: Tensor, t: Tensor,
             max_rows: int) -> Tensor:
    parts = []
    for i in range(0, x.shape[0], max_rows):
        out = explain_fn(x[i:i + max_rows], t[i:i + max_rows])
        if out.shape != x[i:i + max_rows].shape:
            raise ValueError(f"Expected `explain_fn` to return maps of the inputs' shape "
                             f"{tuple(x[i:i + max_rows].shape)}, got {tuple(out.shape)}.")
        parts.append(out.detach().double().reshape(out.shape[0], -1).cpu())
    return torch.cat(parts)


@register(category="stability", kind="explainer", higher_is_better=False,
          range=(0.0, float("inf")),
          reference="Yeh, Hsieh, Suggala, Inouye & Ravikumar 2019, 'On the (in)fidelity and "
                    "sensitivity of explanations', NeurIPS (eq. SENS_MAX)")
def max_sensitivity(explain_fn: Callable[[Tensor, Tensor], Tensor], inputs: Tensor, target: Any,
                    *, radius: float = 0.1, n_samples: int = 10, relative: bool = True,
                    generator: torch.Generator | None = None,
                    max_rows: int = DEFAULT_MAX_ROWS) -> Tensor:
    """Max-sensitivity: the largest change of the map under small input noise, per sample.

    ``max_j ||Phi(x + e_j) - Phi(x)||`` over ``n_samples`` draws of noise
    ``e_j`` uniform in [-radius, radius] per element (the L-infinity ball of
    Yeh et al. 2019, sampled as Captum and Quantus do), Frobenius norms.

    Parameters
    ----------
    explain_fn : callable
        ``explain_fn(inputs (M, *F), target (M,)) -> Tensor (M, *F)``, e.g.
        :func:`xprune.explainer`. All perturbations of all samples are sent in
        calls of at most ``max_rows`` rows.
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
                        reduce="max")


@register(category="stability", kind="explainer", higher_is_better=False,
          range=(0.0, float("inf")),
          reference="Bhatt, Weller & Moura 2020, 'Evaluating and aggregating feature-based "
                    "model explanations', IJCAI (definition 2, average sensitivity)")
def avg_sensitivity(explain_fn: Callable[[Tensor, Tensor], Tensor], inputs: Tensor, target: Any,
                    *, radius: float = 0.1, n_samples: int = 10, relative: bool = True,
                    generator: torch.Generator | None = None,
                    max_rows: int = DEFAULT_MAX_ROWS) -> Tensor:
    """Avg-sensitivity: the mean change of the map under small input noise, per sample.

    As :func:`max_sensitivity` (same noise, norms, ``relative`` default and
    errors), with the mean over the ``n_samples`` draws instead of the
    maximum. With the same generator seed both see the same noise, so
    avg <= max sample by sample. Lower is better.
    """
    return _sensitivity(explain_fn, inputs, target, radius=radius, n_samples=n_samples,
                        relative=relative, generator=generator, max_rows=max_rows,
                        reduce="mean")


def sensitivity_draws(explain_fn: Callable[[Tensor, Tensor], Tensor], inputs: Tensor,
                      target: Any, *, radius: float = 0.1, n_samples: int = 10,
                      relative: bool = True, generator: torch.Generator | None = None,
                      max_rows: int = DEFAULT_MAX_ROWS) -> Tensor:
    """The change of the map under each noise draw: Tensor of shape (N, n_samples), float64.

    Its row maximum is :func:`max_sensitivity` and its row mean
    :func:`avg_sensitivity` (same noise for the same generator seed), so both
    can be had from one set of explainer calls. Arguments as for those.
    """
    return _sensitivity(explain_fn, inputs, target, radius=radius, n_samples=n_samples,
                        relative=relative, generator=generator, max_rows=max_rows, reduce=None)


def _sensitivity(explain_fn, inputs, target, *, radius, n_samples, relative, generator,
                 max_rows, reduce: str | None) -> Tensor:
    x = check_tensor(inputs, "inputs", min_dim=2)
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not radius > 0:
        raise ValueError(f"Expected `radius` > 0, got {radius!r}.")
    check_positive_int(n_samples, "n_samples")
    check_positive_int(max_rows, "max_rows")
    n = x.shape[0]
    t = _explain_targets(target, n)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    noise = torch.stack([
        (torch.rand(n_samples, *x.shape[1:], generator=generator) * 2 - 1) * radius
        for _ in range(n)
    ]).to(dtype=x.dtype, device=x.device)                   # (N, S, *F)
    base = _explain(explain_fn, x, t, max_rows)              # (N, D)
    perturbed = (x[:, None] + noise).reshape(n * n_samples, *x.shape[1:])
    maps = _explain(explain_fn, perturbed, t.repeat_interleave(n_samples), max_rows)
    diff = (maps.reshape(n, n_samples, -1) - base[:, None]).norm(dim=2)   # (N, S)
    if relative:
        denom = base.norm(dim=1, keepdim=True)
        if bool((denom == 0).any()):
            warnings.warn(f"{int((denom == 0).sum())} sample(s) have an all-zero map; their "
                          "relative sensitivity is NaN.", RuntimeWarning, stacklevel=3)
        diff = torch.where(denom > 0, diff / denom, torch.full_like(diff, float("nan")))
    if reduce is None:
        return diff
    return diff.amax(dim=1) if reduce == "max" else diff.mean(dim=1)
