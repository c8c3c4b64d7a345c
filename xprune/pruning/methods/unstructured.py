"""The unstructured methods: magnitude, random, Taylor, threshold, L1-regularised, custom mask."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from ...models import train
from .._core import (
    PruningContext,
    _apply_masks,
    _resolve,
    _weight_gradients,
    register_importance,
    register_pruning_method,
    targets,
)


@register_importance("l1_unstructured", "Magnitude pruning: remove the weights of smallest |w| "
                                        "(globally across layers, or the same fraction per layer).")
def _magnitude(model: nn.Module, ctx: PruningContext) -> dict[str, Tensor]:
    return {key: getattr(m, p).detach().abs() for key, m, p in targets(model, ctx)}


@register_importance("random_unstructured", "Random control: remove weights chosen uniformly at "
                                            "random (seeded), at the same sparsity.")
def _random(model: nn.Module, ctx: PruningContext) -> dict[str, Tensor]:
    return {key: torch.rand(getattr(m, p).shape, generator=ctx.generator)
            for key, m, p in targets(model, ctx)}


@register_importance("taylor_unstructured",
                     "First-order Taylor importance (g * w)^2 of each weight on a reference batch "
                     "(Molchanov et al. 2019, eq. 3).", needs_data=True)
def _taylor(model: nn.Module, ctx: PruningContext) -> dict[str, Tensor]:
    return {k: (g * w) ** 2 for k, (g, w) in _weight_gradients(model, ctx.data,
                                                                     list(ctx.targets) or None
                                                                     ).items()}


def find_threshold(model: nn.Module, amount: float, *, iterations: int = 100,
                   layers: Sequence[str] | None = None) -> float:
    """The magnitude threshold theta at which |w| < theta covers ``amount`` of the weights.

    Bisection over theta on the weights ``layers`` (state-dict keys from
    :func:`~xprune.pruning.select_weights`; default: all weight matrices), one
    global threshold, so
    that threshold pruning can be compared with other methods at matched
    measured sparsity. The search runs in the weights' own dtype, so the
    returned theta reproduces the count exactly; only weights tied at theta
    can make the match inexact, by their number.
    """
    weights = torch.cat([getattr(m, p).detach().abs().reshape(-1).cpu()
                         for _, m, p in _resolve(model, layers)])
    target = round(amount * weights.numel())
    low = torch.tensor(0.0, dtype=weights.dtype)
    high = torch.nextafter(weights.max(), torch.tensor(float("inf"), dtype=weights.dtype))
    for _ in range(iterations):
        mid = ((low.double() + high.double()) / 2).to(weights.dtype)
        if mid in (low, high):
            break
        if int((weights < mid).sum()) < target:
            low = mid
        else:
            high = mid
    return float(high)


def _threshold_masks(model: nn.Module, theta: float, keys) -> dict[str, Tensor]:
    return {key: getattr(m, p).detach().abs() >= torch.tensor(theta, dtype=getattr(m, p).dtype)
            for key, m, p in _resolve(model, keys)}


@register_pruning_method(
    "threshold", "Remove every weight with |w| < theta (option `theta`), or find theta by "
                 "bisection to reach `amount`.", options={"theta": None}, amount_optional=True)
def _threshold(model: nn.Module, amount: float | None, ctx: PruningContext) -> None:
    theta = ctx.options["theta"]
    if (theta is None) == (amount is None):
        raise ValueError("Threshold pruning takes either `amount` or the option `theta`, "
                         "not both and not neither.")
    if theta is not None and (isinstance(theta, bool) or not isinstance(theta, (int, float))
                              or not theta >= 0):
        raise ValueError(f"Expected `theta` >= 0, got {theta!r}.")
    keys = list(ctx.targets) or None
    _apply_masks(model, _threshold_masks(model, theta if theta is not None
                                         else find_threshold(model, amount, layers=keys), keys))


@register_pruning_method(
    "l1_regularised", "Fine-tune with an L1 penalty lambda * sum|w| on conv/linear weights, then "
                      "threshold to `amount` (or `theta`).",
    options={"lam": 1e-4, "epochs": 5, "lr": 1e-3, "theta": None}, needs_data=True,
    amount_optional=True)
def _l1_regularised(model: nn.Module, amount: float | None, ctx: PruningContext) -> None:
    # in-memory (x, y) is shuffled with the seed; a stream is read as it comes, once per epoch
    x, y = ctx.data if isinstance(ctx.data, tuple) else (ctx.data, None)
    opts = ctx.options
    train(model, x, y, epochs=opts["epochs"], lr=opts["lr"], l1=opts["lam"],
          seed=int(torch.randint(0, 2**31 - 1, (1,), generator=ctx.generator)))
    _threshold(model, amount, dataclasses.replace(ctx, options={"theta": opts["theta"]}))


@register_pruning_method(
    "custom_mask", "Your own mask: option `masks` maps 'layer.weight' to a 0/1 tensor "
                   "(1 = keep), applied with torch.nn.utils.prune.custom_from_mask.",
    options={"masks": None}, amount_optional=True)
def _custom_mask(model: nn.Module, amount: float | None, ctx: PruningContext) -> None:
    masks = ctx.options["masks"]
    if not isinstance(masks, Mapping) or not masks:
        raise ValueError("Expected the option `masks` to map 'layer.weight' names to 0/1 tensors.")
    known = {key for key, _, _ in _resolve(model, list(masks))}  # unknown names: _apply_masks
    outside = sorted(known - set(ctx.targets)) if ctx.targets else []
    if outside:
        raise ValueError(f"The option `masks` names weight(s) {outside} outside the selected "
                         f"layers {list(ctx.targets)}: select them with `layers=`.")
    _apply_masks(model, {k: torch.as_tensor(v).bool() for k, v in masks.items()})
