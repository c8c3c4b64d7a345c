"""The pruning core: a trained dense model in, a dense/sparse :class:`ModelPair` out.

Masks come from ``torch.nn.utils.prune`` (the library PyTorch ships and tests);
xprune adds what it lacks for comparisons: the dense model is deep-copied before
any hook is attached, so it is never mutated; pruning is made permanent before a
model is handed out (a module with pruning hooks cannot be deep-copied, pytorch
#37322, and its state dict has ``weight_orig``/``weight_mask`` keys); the masks
are kept on the pair as data so masked fine-tuning can re-apply them.

Sparsity everywhere means the fraction of exactly-zero entries among the
weights of convolution and linear layers (biases and normalisation layers are
not counted), measured on the model, never assumed from the request.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn
from torch.nn.utils import prune as torch_prune

from ._validation import check_fraction, closest_name
from .models import train

__all__ = [
    "PRUNABLE_LAYERS",
    "PRUNING_METHODS",
    "ModelPair",
    "PruningContext",
    "PruningMethod",
    "find_threshold",
    "fine_tune",
    "layer_table",
    "prunable_weights",
    "prune",
    "prune_and_fine_tune",
    "register_importance",
    "schedule_sparsities",
    "register_pruning_method",
    "sparsity",
    "weight_name",
]

PRUNABLE_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
"""Layer types whose ``weight`` counts towards sparsity and is pruned."""


def prunable_weights(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The (qualified module name, module) of every prunable layer, in registration order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, PRUNABLE_LAYERS)]


def weight_name(module_name: str) -> str:
    """State-dict key of a prunable layer's weight (``"weight"`` for a bare layer)."""
    return f"{module_name}.weight" if module_name else "weight"


def layer_table(model: nn.Module) -> pd.DataFrame:
    """Per-layer weight counts: columns layer, parameter, numel, nonzeros, sparsity (in [0, 1])."""
    rows = []
    for name, module in prunable_weights(model):
        w = module.weight.detach()
        nnz = int(torch.count_nonzero(w))
        rows.append({"layer": name, "parameter": weight_name(name), "numel": w.numel(),
                     "nonzeros": nnz, "sparsity": 1.0 - nnz / w.numel()})
    return pd.DataFrame(rows, columns=["layer", "parameter", "numel", "nonzeros", "sparsity"])


def _counts(model: nn.Module) -> tuple[int, int]:
    total = nnz = 0
    for _, module in prunable_weights(model):
        total += module.weight.numel()
        nnz += int(torch.count_nonzero(module.weight.detach()))
    return total, nnz


def sparsity(model: nn.Module) -> float:
    """Measured sparsity in [0, 1]: zero weights / all weights of conv and linear layers."""
    total, nnz = _counts(model)
    if total == 0:
        raise ValueError("Expected a model with at least one Linear or Conv layer, found none.")
    return 1.0 - nnz / total


@dataclass(frozen=True)
class ModelPair:
    """A dense model and its sparse twin, with the facts of how the twin was made.

    Attributes
    ----------
    dense, sparse : nn.Module
        The original model (never mutated by xprune) and the pruned model,
        with pruning made permanent (plain ``weight`` parameters, zeros in place).
    method : str
        Pruning method name from :data:`PRUNING_METHODS` (or ``"control:..."``).
    amount : float
        Requested sparsity in [0, 1).
    masks : dict[str, Tensor]
        ``"layer.weight"`` -> bool mask (True = kept), for masked fine-tuning.
    params : dict
        The method's parameters (scope, seed, ...) and what was done afterwards
        (e.g. fine-tuning epochs and seconds).
    twin : nn.Module or None
        For structured pruning: the dense architecture with the removed
        channels' parameters set to zero; its outputs equal the smaller
        ``sparse`` model's. ``twin_masks`` are its weight masks.
    """

    dense: nn.Module
    sparse: nn.Module
    method: str
    amount: float
    masks: Mapping[str, Tensor] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    twin: nn.Module | None = None
    twin_masks: Mapping[str, Tensor] = field(default_factory=dict)

    @property
    def sparsity(self) -> float:
        """Measured sparsity in [0, 1]: the fraction of the dense model's conv/linear weights
        that are zero or physically removed in the sparse model."""
        return 1.0 - self.nonzero_weights / self.total_weights

    @property
    def total_weights(self) -> int:
        """Conv/linear weights of the dense model."""
        return _counts(self.dense)[0]

    @property
    def nonzero_weights(self) -> int:
        """Nonzero conv/linear weights of the sparse model."""
        return _counts(self.sparse)[1]

    @property
    def compression_ratio(self) -> float:
        """Dense weights / nonzero sparse weights (1 = no compression; higher = smaller)."""
        nnz = self.nonzero_weights
        return self.total_weights / nnz if nnz else float("inf")

    @classmethod
    def from_models(cls, dense: nn.Module, sparse: nn.Module, *, method: str = "external",
                    amount: float | None = None, params: Mapping[str, Any] | None = None
                    ) -> ModelPair:
        """A pair pruned elsewhere (Torch-Pruning, NNI, your own code), for comparison only.

        Masks are read off the sparse model (kept = nonzero) where a layer has
        the dense layer's shape; layers whose shapes differ (structured
        removal) get no mask, and the two models are compared in input space
        only. ``amount`` defaults to the measured sparsity. Neither model is
        modified; pruning hooks still attached to ``sparse`` are an error.

        Raises
        ------
        ValueError
            If either model has no prunable layer, or ``sparse`` still carries
            ``torch.nn.utils.prune`` reparametrisations (call
            ``torch.nn.utils.prune.remove`` first).
        """
        for name, model in (("dense", dense), ("sparse", sparse)):
            if not prunable_weights(model):
                raise ValueError(f"Expected the {name} model to have at least one Linear or "
                                 f"Conv layer, found none in {type(model).__name__}.")
            hooked = [n for n, m in model.named_modules() if torch_prune.is_pruned(m)
                      and any(isinstance(h, torch_prune.BasePruningMethod)
                              for h in m._forward_pre_hooks.values())]
            if hooked:
                raise ValueError(f"The {name} model still has pruning hooks on {hooked[:3]}: "
                                 "make pruning permanent with torch.nn.utils.prune.remove first.")
        dense_shapes = {weight_name(n): m.weight.shape for n, m in prunable_weights(dense)}
        masks = {weight_name(n): (m.weight.detach() != 0).clone()
                 for n, m in prunable_weights(sparse)
                 if dense_shapes.get(weight_name(n)) == m.weight.shape}
        structured = len(masks) < len(dense_shapes)
        pair = cls(dense=dense, sparse=sparse, method=method, amount=0.0, masks=masks,
                   params={**(params or {}), "structured": structured})
        measured = pair.sparsity
        amount = measured if amount is None else check_fraction(amount, "amount")
        return dataclasses.replace(pair, amount=amount)

    def layer_table(self) -> pd.DataFrame:
        """Per-layer table of the sparse model (see :func:`layer_table`)."""
        return layer_table(self.sparse)


@dataclass(frozen=True)
class PruningContext:
    """What a pruning method may use besides the model copy and the requested amount.

    scope : "global" or "layer"
    generator : torch.Generator, seeded from ``prune(seed=...)``
    max_layer_sparsity : float or None
        No layer may lose more than this fraction of its weights.
    data : (inputs, labels) or None
        A reference batch, for data-driven criteria (Taylor, attribution-guided).
    options : dict
        The method's own options, validated against :attr:`PruningMethod.options`.
    """

    scope: str
    generator: torch.Generator
    max_layer_sparsity: float | None
    data: tuple[Tensor, Tensor] | None
    options: Mapping[str, Any]


@dataclass(frozen=True)
class PruningMethod:
    """A registered pruning method.

    ``fn(model_copy, amount, ctx)`` prunes the copy in place with
    ``torch.nn.utils.prune`` (masks are collected and made permanent by
    :func:`prune`), or returns a new, physically smaller model.
    """

    name: str
    fn: Callable[[nn.Module, float | None, PruningContext], nn.Module | None]
    description: str
    options: Mapping[str, Any] = field(default_factory=dict)
    needs_data: bool = False
    amount_optional: bool = False
    ranks_weights: bool = False  # honours scope="layer" and max_layer_sparsity


PRUNING_METHODS: dict[str, PruningMethod] = {}


def register_pruning_method(name: str, description: str, *, options: Mapping[str, Any] | None = None,
                            needs_data: bool = False, amount_optional: bool = False,
                            ranks_weights: bool = False):
    """Register ``fn(model_copy, amount, ctx)`` as a pruning method under ``name``.

    ``options`` maps each accepted option to its default. The method then
    works with :func:`prune`, analysis configs and ``xprune list``.
    """

    def decorator(fn):
        PRUNING_METHODS[name] = PruningMethod(name, fn, description, dict(options or {}),
                                              needs_data, amount_optional, ranks_weights)
        return fn
    return decorator


def register_importance(name: str, description: str, *, needs_data: bool = False,
                        options: Mapping[str, Any] | None = None):
    """Register an unstructured criterion: ``scores(model, ctx) -> {"layer.weight": Tensor}``.

    The lowest-scoring weights are pruned, globally or per layer, honouring
    ``max_layer_sparsity``; this is how a user adds a criterion of their own.
    """

    def decorator(score_fn):
        def fn(model: nn.Module, amount: float | None, ctx: PruningContext) -> None:
            _prune_by_scores(model, amount, score_fn(model, ctx), ctx)
        register_pruning_method(name, description, options=options, needs_data=needs_data,
                                ranks_weights=True)(fn)
        return score_fn
    return decorator


def _prune_by_scores(model: nn.Module, amount: float, scores: Mapping[str, Tensor],
                     ctx: PruningContext) -> None:
    """Prune the lowest ``scores`` with torch.nn.utils.prune, capped per layer if asked."""
    targets = prunable_weights(model)
    scores = {name: scores[weight_name(name)].detach().to(m.weight.device).clone()
              for name, m in targets}
    # torch's L1Unstructured ranks |score|: shift so that any criterion's order survives
    finite = torch.cat([v[torch.isfinite(v)].reshape(-1) for v in scores.values()])
    low = float(finite.min()) if finite.numel() else 0.0
    scores = {name: v - low for name, v in scores.items()}
    total = sum(m.weight.numel() for _, m in targets)
    cap = ctx.max_layer_sparsity
    if cap is not None:
        protected = 0
        for name, m in targets:  # the largest (1 - cap) of each layer can never be chosen
            keep = math.ceil((1 - cap) * m.weight.numel())
            if keep:
                top = scores[name].reshape(-1).topk(keep).indices
                scores[name].view(-1)[top] = float("inf")
                protected += keep
        if round(amount * total) > total - protected:
            raise ValueError(f"Cannot reach sparsity {amount} with `max_layer_sparsity` = {cap}: "
                             f"at most {(total - protected) / total:.4f} is reachable.")
    if ctx.scope == "global":
        torch_prune.global_unstructured(
            [(m, "weight") for _, m in targets], pruning_method=torch_prune.L1Unstructured,
            amount=amount, importance_scores={(m, "weight"): scores[name] for name, m in targets})
    else:
        if cap is not None and amount > cap:
            raise ValueError(f"Expected `amount` <= `max_layer_sparsity` ({cap}) with "
                             f"scope='layer', got {amount}.")
        for name, m in targets:
            torch_prune.l1_unstructured(m, "weight", amount=amount, importance_scores=scores[name])
    emptied = [name for name, m in targets if not bool(m.weight_mask.any())]
    if emptied:
        warnings.warn(f"Pruning removed every weight of layer(s) {emptied}: the model can no "
                      "longer pass information through them. Set `max_layer_sparsity` "
                      "(e.g. 0.99) to cap each layer.", UserWarning, stacklevel=4)


@register_importance("l1_unstructured", "Magnitude pruning: remove the weights of smallest |w| "
                                        "(globally across layers, or the same fraction per layer).")
def _magnitude(model: nn.Module, ctx: PruningContext) -> dict[str, Tensor]:
    return {weight_name(n): m.weight.detach().abs() for n, m in prunable_weights(model)}


@register_importance("random_unstructured", "Random control: remove weights chosen uniformly at "
                                            "random (seeded), at the same sparsity.")
def _random(model: nn.Module, ctx: PruningContext) -> dict[str, Tensor]:
    return {weight_name(n): torch.rand(m.weight.shape, generator=ctx.generator)
            for n, m in prunable_weights(model)}


@register_importance("taylor_unstructured",
                     "First-order Taylor importance (g * w)^2 of each weight on a reference batch "
                     "(Molchanov et al. 2019, eq. 3).", needs_data=True)
def _taylor(model: nn.Module, ctx: PruningContext) -> dict[str, Tensor]:
    return {k: (g * w) ** 2 for k, (g, w) in _weight_gradients(model, ctx.data).items()}


def _weight_gradients(model: nn.Module, data: tuple[Tensor, Tensor]) -> dict[str, tuple]:
    """Gradients of the mean cross-entropy on ``data`` w.r.t. each prunable weight (eval mode)."""
    from ._state import eval_mode, to_model

    x, y = data
    params = {weight_name(n): m.weight for n, m in prunable_weights(model)}
    with eval_mode(model):
        logits = model(to_model(x, model))
        loss = nn.functional.cross_entropy(logits, y.to(logits.device))
        grads = torch.autograd.grad(loss, list(params.values()))
    return {k: (g.detach(), w.detach()) for (k, w), g in zip(params.items(), grads, strict=True)}


def find_threshold(model: nn.Module, amount: float, *, iterations: int = 100) -> float:
    """The magnitude threshold theta at which |w| < theta covers ``amount`` of the weights.

    Bisection over theta on the conv/linear weights (one global threshold), so
    that threshold pruning can be compared with other methods at matched
    measured sparsity. The search runs in the weights' own dtype, so the
    returned theta reproduces the count exactly; only weights tied at theta
    can make the match inexact, by their number.
    """
    weights = torch.cat([m.weight.detach().abs().reshape(-1).cpu()
                         for _, m in prunable_weights(model)])
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


def _threshold_masks(model: nn.Module, theta: float) -> dict[str, Tensor]:
    return {weight_name(n): m.weight.detach().abs() >= torch.tensor(theta, dtype=m.weight.dtype)
            for n, m in prunable_weights(model)}


def _apply_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> None:
    modules = dict(model.named_modules())
    known = {weight_name(n) for n, _ in prunable_weights(model)}
    for key, mask in masks.items():
        if key not in known:
            raise ValueError(f"Expected mask names among {sorted(known)}, got {key!r}.")
        module = modules[key.rpartition(".")[0]]
        if tuple(mask.shape) != tuple(module.weight.shape):
            raise ValueError(f"Expected the mask for {key!r} of shape "
                             f"{tuple(module.weight.shape)}, got {tuple(mask.shape)}.")
        torch_prune.custom_from_mask(module, "weight", mask.to(module.weight.device).float())


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
    _apply_masks(model, _threshold_masks(model, theta if theta is not None
                                         else find_threshold(model, amount)))


@register_pruning_method(
    "l1_regularised", "Fine-tune with an L1 penalty lambda * sum|w| on conv/linear weights, then "
                      "threshold to `amount` (or `theta`).",
    options={"lam": 1e-4, "epochs": 5, "lr": 1e-3, "theta": None}, needs_data=True,
    amount_optional=True)
def _l1_regularised(model: nn.Module, amount: float | None, ctx: PruningContext) -> None:
    x, y = ctx.data
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
    _apply_masks(model, {k: torch.as_tensor(v).bool() for k, v in masks.items()})


def prune(model: nn.Module, amount: float | None = None, *, method: str = "l1_unstructured",
          scope: str = "global", seed: int = 0, max_layer_sparsity: float | None = None,
          data: tuple[Tensor, Tensor] | None = None,
          options: Mapping[str, Any] | None = None) -> ModelPair:
    """Prune a copy of ``model`` and return the dense/sparse pair.

    Parameters
    ----------
    model : nn.Module
        The trained dense model. It is deep-copied first and never mutated.
    amount : float in [0, 1), optional
        Requested sparsity: the fraction of conv/linear weights to remove
        (``round(amount * n)`` weights, as ``torch.nn.utils.prune`` counts).
        Required except for methods given their own target (``threshold`` with
        ``theta``, ``custom_mask``).
    method : str
        A name in :data:`PRUNING_METHODS` (``xprune list`` shows them).
    scope : {"global", "layer"}
        ``"global"`` ranks all weights of all layers together; ``"layer"``
        removes ``amount`` of each layer.
    seed : int
        Seeds random methods.
    max_layer_sparsity : float in (0, 1], optional
        Cap on any one layer's sparsity (global magnitude pruning can otherwise
        empty a layer; that case is warned about).
    data : (inputs, labels), optional
        Reference batch for data-driven methods (Taylor, L1-regularised,
        attribution-guided).
    options : mapping, optional
        The method's own options (see :attr:`PruningMethod.options`).

    Returns
    -------
    ModelPair
        ``pair.dense is model``; ``pair.sparse`` is a pruned copy with permanent
        zeros (or a physically smaller model for structured methods);
        ``pair.masks`` maps ``"layer.weight"`` to bool masks.

    Raises
    ------
    ValueError
        If ``amount`` is outside [0, 1) or missing, ``method``, ``scope`` or an
        option is unknown, data is missing for a data-driven method, or the
        model has no Linear/Conv layer to prune.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"Expected `model` to be a torch.nn.Module, got {type(model).__name__}.")
    if method not in PRUNING_METHODS:
        raise ValueError(f"Expected `method` to be one of {sorted(PRUNING_METHODS)}, "
                         f"got {method!r}." + closest_name(method, PRUNING_METHODS))
    info = PRUNING_METHODS[method]
    if amount is None and not info.amount_optional:
        raise ValueError(f"Expected `amount` in [0.0, 1.0) for method {method!r}, got None.")
    if amount is not None:
        amount = check_fraction(amount, "amount")
    if scope not in ("global", "layer"):
        raise ValueError(f"Expected `scope` to be 'global' or 'layer', got {scope!r}.")
    if max_layer_sparsity is not None:
        max_layer_sparsity = check_fraction(max_layer_sparsity, "max_layer_sparsity",
                                            high_inclusive=True)
    if not info.ranks_weights and (scope != "global" or max_layer_sparsity is not None):
        raise ValueError(f"Pruning method {method!r} does not rank weights per layer: "
                         "`scope='layer'` and `max_layer_sparsity` apply only to "
                         + ", ".join(sorted(k for k, v in PRUNING_METHODS.items()
                                            if v.ranks_weights)) + ".")
    unknown = sorted(set(options or {}) - set(info.options))
    if unknown:
        raise ValueError(f"Unknown option(s) {unknown} for pruning method {method!r}; "
                         f"expected some of {sorted(info.options)}.")
    if info.needs_data and data is None:
        raise ValueError(f"Pruning method {method!r} needs a reference batch: pass "
                         "`data=(inputs, labels)`.")
    if not prunable_weights(model):
        raise ValueError(f"Expected a model with at least one prunable layer "
                         f"({', '.join(t.__name__ for t in PRUNABLE_LAYERS)}), "
                         f"found none in {type(model).__name__}.")
    sparse = copy.deepcopy(model)  # before any hook: a hooked module cannot be deep-copied
    ctx = PruningContext(scope=scope, generator=torch.Generator().manual_seed(seed),
                         max_layer_sparsity=max_layer_sparsity, data=data,
                         options={**info.options, **(options or {})})
    try:
        replaced = info.fn(sparse, amount, ctx)
    finally:  # never hand out a model with pruning hooks, even after an error
        masks = _make_permanent(sparse)
    params = {"scope": scope, "seed": seed, "max_layer_sparsity": max_layer_sparsity,
              **{k: v for k, v in ctx.options.items() if k != "masks"}}
    if isinstance(replaced, ModelPair):
        return dataclasses.replace(replaced, dense=model, method=method,
                                   params={**params, **replaced.params})
    pair = ModelPair(dense=model, sparse=sparse, method=method, amount=0.0, masks=masks,
                     params=params)
    return dataclasses.replace(pair, amount=pair.sparsity if amount is None else amount)


SCHEDULES = ("one_shot", "iterative", "gradual")
MONOTONE_METHODS = ("l1_unstructured", "taylor_unstructured", "threshold")


def schedule_sparsities(amount: float, schedule: str, steps: int) -> list[float]:
    """Target sparsity after each pruning step.

    ``one_shot``: ``[amount]``. ``iterative``: equal increments,
    ``amount * k / steps``. ``gradual``: the cubic schedule of Zhu & Gupta
    2017 (eq. 1) from 0, ``s_k = amount * (1 - (1 - k / steps) ** 3)``, which
    prunes fast while the network is redundant and slowly near the target.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"Expected `schedule` in {SCHEDULES}, got {schedule!r}.")
    if schedule == "one_shot":
        return [amount]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"Expected `steps` to be an integer >= 1, got {steps!r}.")
    if schedule == "iterative":
        return [amount * k / steps for k in range(1, steps + 1)]
    return [amount * (1 - (1 - k / steps) ** 3) for k in range(1, steps + 1)]


def prune_and_fine_tune(model: nn.Module, amount: float, x: Tensor, y: Tensor, *,
                        schedule: str = "one_shot", steps: int = 5, epochs: int = 5,
                        method: str = "l1_unstructured", lr: float = 1e-3, seed: int = 0,
                        scope: str = "global", max_layer_sparsity: float | None = None,
                        data: tuple[Tensor, Tensor] | None = None,
                        options: Mapping[str, Any] | None = None) -> ModelPair:
    """Prune and fine-tune on a schedule, within one total fine-tuning budget.

    The ``epochs`` of masked fine-tuning are split evenly over the pruning
    steps (the remainder goes to the last), so one-shot, fixed-step iterative
    and gradual pruning (Zhu & Gupta 2017) are compared at the same cost.
    Each step prunes the current sparse model to the next target sparsity;
    weights pruned earlier stay pruned (the criterion must rank zeros lowest,
    as magnitude, Taylor and threshold do).

    Parameters
    ----------
    model : nn.Module, never mutated
    amount : float in [0, 1)
        Final sparsity.
    x, y : training inputs (N, *F) and labels (N,)
    schedule : {"one_shot", "iterative", "gradual"}
    steps : int
        Pruning steps for "iterative" and "gradual".
    epochs, lr : total fine-tuning budget and learning rate.
    method : str
        One of ``MONOTONE_METHODS``.
    seed, scope, max_layer_sparsity, data, options
        As for :func:`prune`, at every step.

    Returns
    -------
    ModelPair
        ``params`` record the schedule, the per-step sparsities and the total
        ``finetune_seconds``.
    """
    if method not in MONOTONE_METHODS:
        raise ValueError(f"Expected `method` in {MONOTONE_METHODS} for a pruning schedule "
                         f"(earlier zeros must stay pruned), got {method!r}.")
    amount = check_fraction(amount, "amount")
    targets = schedule_sparsities(amount, schedule, steps)
    per_step = [epochs // len(targets)] * len(targets)
    per_step[-1] += epochs - sum(per_step)
    current, seconds = model, 0.0
    for k, (target, n_epochs) in enumerate(zip(targets, per_step, strict=True)):
        step = prune(current, target, method=method, seed=seed + k, scope=scope,
                     max_layer_sparsity=max_layer_sparsity, data=data, options=options)
        step = fine_tune(step, x, y, epochs=n_epochs, lr=lr, seed=seed + k)
        seconds += step.params["finetune_seconds"]
        current = step.sparse
    masks = {weight_name(n): m.weight.detach() != 0 for n, m in prunable_weights(current)}
    params = {**step.params, "schedule": schedule, "steps": len(targets),
              "step_sparsities": [round(t, 6) for t in targets], "finetune_epochs": epochs,
              "finetune_seconds": seconds}
    return ModelPair(dense=model, sparse=current, method=method, amount=amount, masks=masks,
                     params=params)


def _make_permanent(model: nn.Module) -> dict[str, Tensor]:
    masks = {}
    for name, module in prunable_weights(model):
        if torch_prune.is_pruned(module) and hasattr(module, "weight_mask"):
            masks[weight_name(name)] = module.weight_mask.detach().bool().clone()
            torch_prune.remove(module, "weight")
    return masks


def fine_tune(pair: ModelPair, x: Tensor, y: Tensor, *, epochs: int, lr: float = 1e-3,
              batch_size: int = 64, seed: int = 0,
              device: str | torch.device | None = None) -> ModelPair:
    """Masked fine-tuning of the sparse model; returns a new pair, the input pair untouched.

    Pruned weights stay exactly zero (their masks are re-applied during
    training). The new pair's ``params`` gain ``finetune_epochs`` and
    ``finetune_seconds`` (wall time). A structured pair's smaller model is
    fine-tuned as it is; its masked twin (which described the weights before
    fine-tuning) is dropped.
    """
    sparse = copy.deepcopy(pair.sparse)
    result = train(sparse, x, y, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                   masks=pair.masks, device=device)
    params = {**pair.params, "finetune_epochs": epochs, "finetune_seconds": result.seconds}
    # a structured pair's masked twin describes the weights before fine-tuning: drop it
    return dataclasses.replace(pair, sparse=sparse, params=params, twin=None, twin_masks={})


from . import _structured  # noqa: E402,F401  registers "structured"
