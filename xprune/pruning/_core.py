"""The pruning registry and the facts every method shares: which weights count, ModelPair.

Masks come from ``torch.nn.utils.prune`` (the library PyTorch ships and tests);
xprune adds what it lacks for comparisons: the dense model is deep-copied before
any hook is attached, so it is never mutated; pruning is made permanent before a
model is handed out (a module with pruning hooks cannot be deep-copied, pytorch
#37322, and its state dict has ``weight_orig``/``weight_mask`` keys); the masks
are kept on the pair as data so masked fine-tuning can re-apply them.

Sparsity everywhere means the fraction of exactly-zero entries among the
weights of convolution and linear layers (biases and normalisation layers are
not counted), measured on the model, never assumed from the request.

This module imports no pruning method: the methods live in
:mod:`xprune.pruning.methods`, which :mod:`xprune.pruning._api` imports to fill
:data:`PRUNING_METHODS`.
"""

from __future__ import annotations

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

from .._state import eval_mode, to_model
from .._validation import check_fraction

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


def _weight_gradients(model: nn.Module, data: tuple[Tensor, Tensor]) -> dict[str, tuple]:
    """Gradients of the mean cross-entropy on ``data`` w.r.t. each prunable weight (eval mode)."""
    x, y = data
    params = {weight_name(n): m.weight for n, m in prunable_weights(model)}
    with eval_mode(model):
        logits = model(to_model(x, model))
        loss = nn.functional.cross_entropy(logits, y.to(logits.device))
        grads = torch.autograd.grad(loss, list(params.values()))
    return {k: (g.detach(), w.detach()) for (k, w), g in zip(params.items(), grads, strict=True)}

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

def _make_permanent(model: nn.Module) -> dict[str, Tensor]:
    masks = {}
    for name, module in prunable_weights(model):
        if torch_prune.is_pruned(module) and hasattr(module, "weight_mask"):
            masks[weight_name(name)] = module.weight_mask.detach().bool().clone()
            torch_prune.remove(module, "weight")
    return masks
