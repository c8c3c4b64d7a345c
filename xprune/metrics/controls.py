"""Controls for removal-based scores: the same score under a random ranking of the features.

When pruning shifts a model's confidence, every removal curve moves with it,
whatever the map says. Subtracting the score that a random map earns on the
same model and inputs leaves the part the map itself is responsible for
(the "random baseline" of Samek et al. 2017 and Hooker et al. 2019, ROAR).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..attribution import Attributions
from ._base import (
    check_map_and_inputs,
    get_metric,
    structure_of,
    undefined_reasons,
    warn_undefined,
)

__all__ = ["random_map_like", "versus_random"]


def random_map_like(attributions: Tensor | Attributions, *,
                    generator: torch.Generator | None = None) -> Tensor:
    """A map that ranks the features in a uniformly random order, per sample.

    Each feature (a tabular column, or an image pixel with all its channels)
    gets one value uniform in [0, 1), drawn sample by sample in batch order;
    the channels of a pixel share it, so a pixel's rank is random but its
    channels stay together. Same shape and dtype as ``attributions``.

    Parameters
    ----------
    attributions : Tensor of shape (N, *F) or Attributions
        Only its shape and dtype are used.
    generator : torch.Generator, optional
        Default: seeded with 0.

    Returns
    -------
    Tensor of shape (N, *F)
    """
    a = attributions.values if isinstance(attributions, Attributions) else attributions
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    n = a.shape[0]
    if a.dim() >= 3:  # one value per pixel, broadcast over channels
        pixel_shape = (1, *a.shape[2:])
        draws = torch.stack([torch.rand(pixel_shape, generator=gen, dtype=torch.float64)
                             for _ in range(n)]) if n else torch.empty(0, *pixel_shape)
        return draws.expand(a.shape).to(dtype=a.dtype, device=a.device).contiguous()
    draws = torch.stack([torch.rand(a.shape[1:], generator=gen, dtype=torch.float64)
                         for _ in range(n)]) if n else torch.empty(a.shape)
    return draws.to(dtype=a.dtype, device=a.device)


def _attributed(inputs: object, attributions: object) -> object:
    """The attributed tensor of ``inputs`` of any structure (the one ``attributions`` records,
    else the first); ``inputs`` itself when it is no tuple or mapping."""
    if not isinstance(inputs, (tuple, list, Mapping)):
        return inputs
    return structure_of(inputs, attributions).main


def versus_random(metric: str | Callable[..., Tensor], model: nn.Module, inputs: Tensor,
                  attributions: Tensor | Attributions, target: Any, *,
                  generator: torch.Generator | None = None, **params: Any) -> Tensor:
    """A model-based score minus the same score of a random ranking, per sample.

    ``metric(model, inputs, attributions, target, **params) -
    metric(model, inputs, random_map_like(attributions), target, **params)``:
    the part of a removal score (deletion/insertion AUC, AOPC, ...) that the
    map is responsible for, with the model's confidence level taken out. A
    metric that takes a generator gets the same seed for both calls, so both
    see the same perturbations.

    Parameters
    ----------
    metric : str or callable
        A registered metric of kind "model" (e.g. ``"deletion_auc"``) or such a function.
    model, inputs (N, *F), attributions (N, *F), target
        As for the metric.
    generator : torch.Generator, optional
        Draws the random map; then seeds the metric's own draws (if it takes a generator).
    **params
        Keyword arguments of the metric.

    Returns
    -------
    Tensor of shape (N,), float64
        Same direction as the metric (e.g. lower is better for deletion AUC);
        0 means the map does no better than chance. For a deletion AUC in
        [0, 1] the result lies in [-1, 1].

    Raises
    ------
    ValueError
        If ``metric`` names an unknown metric or one that is not model-based,
        or on the metric's own errors.
    """
    fn = metric
    if isinstance(metric, str):
        info = get_metric(metric)
        if info.kind != "model":
            raise ValueError(f"Expected a model-based metric (kind 'model') for "
                             f"`versus_random`, got {metric!r} of kind {info.kind!r}.")
        fn = info.fn
    x, a = check_map_and_inputs(_attributed(inputs, attributions), attributions)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    random_map = random_map_like(a, generator=gen)
    if not isinstance(inputs, Tensor):  # several inputs (case 009): the metric takes them all
        x = inputs
        if isinstance(attributions, Attributions):  # keeps which input is attributed
            a, random_map = attributions, dataclasses.replace(attributions, values=random_map)
    import inspect

    with undefined_reasons() as reasons:  # one warning for the pair of calls
        if "generator" in inspect.signature(fn).parameters:
            seed = int(torch.randint(0, 2**62, (1,), generator=gen))
            score = fn(model, x, a, target, generator=torch.Generator().manual_seed(seed),
                       **params)
            chance = fn(model, x, random_map, target,
                        generator=torch.Generator().manual_seed(seed), **params)
        else:
            score = fn(model, x, a, target, **params)
            chance = fn(model, x, random_map, target, **params)
    name = getattr(fn, "__name__", "metric")
    return warn_undefined(score - chance, f"{name}@vs_random",
                          "; ".join(reasons) or "undefined for these maps")
