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
    "PruningMethod",
    "fine_tune",
    "layer_table",
    "prunable_weights",
    "prune",
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
    """

    dense: nn.Module
    sparse: nn.Module
    method: str
    amount: float
    masks: Mapping[str, Tensor] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)

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
class PruningMethod:
    """A registered pruning method: ``fn(model_copy, amount, scope, generator)`` prunes in place."""

    name: str
    fn: Callable[..., None]
    description: str


PRUNING_METHODS: dict[str, PruningMethod] = {}


def _register(name: str, description: str):
    def decorator(fn):
        PRUNING_METHODS[name] = PruningMethod(name, fn, description)
        return fn
    return decorator


def _apply(targets: list[tuple[str, nn.Module]], amount: float, scope: str,
           method: type[torch_prune.BasePruningMethod],
           scores: Mapping[str, Tensor] | None = None) -> None:
    params = [(m, "weight") for _, m in targets]
    if scope == "global":
        importance = None
        if scores is not None:
            importance = {(m, "weight"): scores[name] for name, m in targets}
        torch_prune.global_unstructured(params, pruning_method=method, amount=amount,
                                        importance_scores=importance)
    else:
        for name, m in targets:
            kwargs = {"importance_scores": scores[name]} if scores is not None else {}
            torch_prune.l1_unstructured(m, "weight", amount=amount, **kwargs)


@_register("l1_unstructured", "Magnitude pruning: remove the weights of smallest |w| "
                              "(globally across layers, or the same fraction per layer).")
def _l1_unstructured(model: nn.Module, amount: float, scope: str, generator) -> None:
    _apply(prunable_weights(model), amount, scope, torch_prune.L1Unstructured)


@_register("random_unstructured", "Random control: remove weights chosen uniformly at random "
                                  "(seeded), at the same sparsity.")
def _random_unstructured(model: nn.Module, amount: float, scope: str, generator) -> None:
    targets = prunable_weights(model)
    scores = {name: torch.rand(m.weight.shape, generator=generator).to(m.weight.device)
              for name, m in targets}
    _apply(targets, amount, scope, torch_prune.L1Unstructured, scores)


def prune(model: nn.Module, amount: float, *, method: str = "l1_unstructured",
          scope: str = "global", seed: int = 0) -> ModelPair:
    """Prune a copy of ``model`` and return the dense/sparse pair.

    Parameters
    ----------
    model : nn.Module
        The trained dense model. It is deep-copied first and never mutated.
    amount : float
        Requested sparsity in [0, 1): the fraction of conv/linear weights to
        zero (``round(amount * n)`` weights, as ``torch.nn.utils.prune`` counts).
    method : str
        A name in :data:`PRUNING_METHODS`: ``"l1_unstructured"`` (magnitude) or
        ``"random_unstructured"`` (control).
    scope : {"global", "layer"}
        ``"global"`` ranks all weights of all layers together; ``"layer"``
        removes ``amount`` of each layer.
    seed : int
        Seeds random methods.

    Returns
    -------
    ModelPair
        ``pair.dense is model``; ``pair.sparse`` is a pruned copy with
        permanent zeros; ``pair.masks`` maps ``"layer.weight"`` to bool masks.

    Raises
    ------
    ValueError
        If ``amount`` is outside [0, 1), ``method`` or ``scope`` is unknown, or
        the model has no Linear/Conv layer to prune.
    """
    amount = check_fraction(amount, "amount")
    if method not in PRUNING_METHODS:
        raise ValueError(f"Expected `method` to be one of {sorted(PRUNING_METHODS)}, "
                         f"got {method!r}." + closest_name(method, PRUNING_METHODS))
    if scope not in ("global", "layer"):
        raise ValueError(f"Expected `scope` to be 'global' or 'layer', got {scope!r}.")
    if not prunable_weights(model):
        raise ValueError(f"Expected a model with at least one prunable layer "
                         f"({', '.join(t.__name__ for t in PRUNABLE_LAYERS)}), "
                         f"found none in {type(model).__name__}.")
    sparse = copy.deepcopy(model)  # before any hook: a hooked module cannot be deep-copied
    generator = torch.Generator().manual_seed(seed)
    PRUNING_METHODS[method].fn(sparse, amount, scope, generator)
    masks = {}
    for name, module in prunable_weights(sparse):
        if torch_prune.is_pruned(module) and hasattr(module, "weight_mask"):
            masks[weight_name(name)] = module.weight_mask.detach().bool().clone()
            torch_prune.remove(module, "weight")
    return ModelPair(dense=model, sparse=sparse, method=method, amount=amount, masks=masks,
                     params={"scope": scope, "seed": seed})


def fine_tune(pair: ModelPair, x: Tensor, y: Tensor, *, epochs: int, lr: float = 1e-3,
              batch_size: int = 64, seed: int = 0,
              device: str | torch.device | None = None) -> ModelPair:
    """Masked fine-tuning of the sparse model; returns a new pair, the input pair untouched.

    Pruned weights stay exactly zero (their masks are re-applied during
    training). The new pair's ``params`` gain ``finetune_epochs`` and
    ``finetune_seconds`` (wall time).
    """
    sparse = copy.deepcopy(pair.sparse)
    result = train(sparse, x, y, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                   masks=pair.masks, device=device)
    params = {**pair.params, "finetune_epochs": epochs, "finetune_seconds": result.seconds}
    return dataclasses.replace(pair, sparse=sparse, params=params)
