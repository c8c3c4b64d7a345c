"""The pruning registry and the facts every method shares: which weights count, ModelPair.

Masks come from ``torch.nn.utils.prune`` (the library PyTorch ships and tests);
xprune adds what it lacks for comparisons: the dense model is deep-copied before
any hook is attached, so it is never mutated; pruning is made permanent before a
model is handed out (a module with pruning hooks cannot be deep-copied, pytorch
#37322, and its state dict has ``weight_orig``/``weight_mask`` keys); the masks
are kept on the pair as data so masked fine-tuning can re-apply them.

Sparsity everywhere means the fraction of exactly-zero entries among weight
matrices (Linear, Conv, attention and recurrent matrices; biases and
normalisation layers are not counted), measured on the model, never assumed
from the request: over the selected weights (:func:`select_weights`; by
default all but the output layer) and over all of them.

This module imports no pruning method: the methods live in
:mod:`xprune.pruning.methods`, which :mod:`xprune.pruning._api` imports to fill
:data:`PRUNING_METHODS`.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn
from torch.nn.utils import prune as torch_prune

from .._batches import Data, batch_loss, batches, n_samples
from .._state import eval_mode
from .._validation import check_fraction

PRUNABLE_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
"""Layers whose output channels structured pruning removes; the output layer is the last of them."""

MATRIX_MODULES: tuple[type[nn.Module], ...] = PRUNABLE_LAYERS + (nn.MultiheadAttention,
                                                                 nn.RNNBase)
"""Modules whose weight matrices count as "all weights" and are pruned by default: Linear,
Conv, ``nn.MultiheadAttention`` (``in_proj_weight`` or ``q/k/v_proj_weight``; its
``out_proj`` is a Linear) and recurrent layers (``weight_ih_l*``, ``weight_hh_l*``), plus
Hugging Face's ``Conv1D`` (matched by class name)."""

Patterns = str | type[nn.Module] | Sequence[str | type[nn.Module]] | None
"""What ``layers=`` and ``exclude=`` take (see :func:`select_weights`)."""


def prunable_weights(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The (qualified module name, module) of every Linear/Conv layer, in registration order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, PRUNABLE_LAYERS)]


def weight_name(module_name: str, param: str = "weight") -> str:
    """State-dict key of a module's parameter (``"weight"`` for a bare layer's weight)."""
    return f"{module_name}.{param}" if module_name else param


def _is_matrix_module(module: nn.Module) -> bool:
    return isinstance(module, MATRIX_MODULES) or type(module).__name__ == "Conv1D"


def weight_matrices(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """Every weight matrix of ``model``: (state-dict key, owning module, parameter name).

    A weight matrix is a parameter with two or more dimensions registered
    directly on a module (any module: Linear and Conv weights, attention
    projections, recurrent gate matrices, embeddings, custom parameters); a
    parameter shared by several modules is listed once, under its first name.
    Biases and normalisation scales (1-D) are never candidates.
    """
    out, seen = [], set()
    for name, module in model.named_modules():
        for param, tensor in module.named_parameters(recurse=False):
            if tensor.dim() >= 2 and id(tensor) not in seen:
                seen.add(id(tensor))
                out.append((weight_name(name, param), module, param))
    return out


def counted_weights(model: nn.Module) -> list[str]:
    """Keys of the weights that "all weights" counts: the matrices of :data:`MATRIX_MODULES`
    (for a Keras model: the kernels of its Dense and Conv layers, :func:`keras_kernels`)."""
    kernels = set(keras_kernels(model)) if is_keras(model) else set()
    return [key for key, module, _ in weight_matrices(model)
            if _is_matrix_module(module) or key in kernels]


# --- Keras 3 models (torch backend) ----------------------------------------------------------
# A Keras layer keeps each weight in a keras Variable whose value is a torch Parameter; the
# model registers those Parameters in ParameterDicts keyed by the variable's path
# ("_functional._torch_params.sequential/dense/kernel"), so torch.nn.utils.prune masks them
# in place (its remove() writes the pruned values into the same Parameter the Variable holds).
# copy.deepcopy renames the paths, so the sparse copy is cloned from the Keras config instead.

KERAS_KERNEL_LAYERS = ("Dense", "EinsumDense", "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose",
                       "Conv2DTranspose", "Conv3DTranspose")
"""Keras layer classes (and subclasses) whose ``kernel`` counts as a weight matrix."""

KERAS_PRUNING_METHODS = ("custom_mask", "l1_unstructured", "random_unstructured", "threshold")
"""The methods that prune a Keras model: they mask weights and need no forward pass of their own."""


def is_keras(model: nn.Module) -> bool:
    """Whether ``model`` is a Keras 3 model (torch backend: also an ``nn.Module``)."""
    return type(model).__module__.split(".")[0] == "keras"


def _keras_layers(layer) -> list:
    out = []
    for child in getattr(layer, "layers", None) or []:
        out.append(child)
        out.extend(_keras_layers(child))
    return out


def keras_kernels(model: nn.Module) -> list[str]:
    """State-dict keys of the kernels of a Keras model's Dense/Conv layers, in layer order.

    The last is the output layer's, which :func:`select_weights` leaves dense by default.
    """
    by_id = {id(getattr(module, param)): key for key, module, param in weight_matrices(model)}
    keys = []
    for layer in _keras_layers(model):
        kernel = getattr(layer, "kernel", None)
        if any(c.__name__ in KERAS_KERNEL_LAYERS for c in type(layer).__mro__) \
                and kernel is not None and id(getattr(kernel, "value", None)) in by_id:
            keys.append(by_id[id(kernel.value)])
    return list(dict.fromkeys(keys))


def copy_for_pruning(model: nn.Module) -> nn.Module:
    """A copy of ``model`` to prune, with the same state-dict keys; ``model`` is not touched.

    A PyTorch model is deep-copied. A Keras model is cloned from its config
    (``keras.models.clone_model``) and given the original's weights
    (``set_weights``), which keeps its weights' names; ``copy.deepcopy`` would
    rename them.

    Raises
    ------
    ValueError
        If a Keras model cannot be cloned with the same weight names (e.g. a
        subclassed model without ``get_config``).
    """
    if not is_keras(model):
        return copy.deepcopy(model)
    import keras

    names = [n for n, _ in model.named_parameters()]
    try:
        with warnings.catch_warnings():  # Keras's own NumPy 2 notice about __array__(copy=)
            warnings.simplefilter("ignore", DeprecationWarning)
            clone = keras.models.clone_model(model)
            clone.set_weights(model.get_weights())
    except Exception as exc:  # Keras raises many kinds for models it cannot rebuild
        raise ValueError(f"Cannot copy the Keras model {type(model).__name__} for pruning: "
                         f"keras.models.clone_model failed ({type(exc).__name__}: {exc}); "
                         f"give the model a get_config, or rebuild it in PyTorch.") from None
    if [n for n, _ in clone.named_parameters()] != names:
        raise ValueError(f"Cannot copy the Keras model {type(model).__name__} for pruning: its "
                         f"clone names its weights differently ({names[:3]} ...); rebuild it "
                         f"as a Sequential or functional model, or in PyTorch.")
    return clone.to(next(iter(model.parameters())).device) if names else clone


def output_layer(model: nn.Module) -> str | None:
    """Name of the output layer: the last Linear/Conv (or ``Conv1D``) in module order, or None.

    Module order is registration order, which for the usual classifiers and
    language models (``fc2``, ``classifier``, ``lm_head``) ends with the layer
    that produces the logits; pass ``layers`` to :func:`select_weights` where
    it does not.
    """
    names = [n for n, m in model.named_modules()
             if isinstance(m, PRUNABLE_LAYERS) or type(m).__name__ == "Conv1D"]
    return names[-1] if names else None


def _as_patterns(value, argument: str) -> list:
    items = [value] if isinstance(value, (str, type)) else value
    if not isinstance(items, (list, tuple)) or not all(
            isinstance(p, str) or (isinstance(p, type) and issubclass(p, nn.Module))
            for p in items):
        raise TypeError(f"Expected `{argument}` to be a glob pattern over module names, a module "
                        f"type (nn.Linear or 'Linear'), or a list of them, got {value!r}.")
    return list(items)


def _matches(pattern, name: str, module: nn.Module, key: str) -> bool:
    if isinstance(pattern, type):
        return isinstance(module, pattern)
    return (fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(key, pattern)
            or any(cls.__name__ == pattern for cls in type(module).__mro__))


def select_weights(model: nn.Module, layers: Patterns = None, exclude: Patterns = None
                   ) -> list[str]:
    """The keys of the weight matrices that pruning may touch, in module order.

    Parameters
    ----------
    model : nn.Module
    layers : glob pattern, module type, or a list of them, optional
        A weight matrix is selected if a pattern matches its module's
        qualified name (``"encoder.*"``), its state-dict key
        (``"*.in_proj_weight"``), or its module's type (``nn.Linear``, or the
        class name ``"Linear"``; subclasses match too). Default: every
        matrix of :data:`MATRIX_MODULES` except the output layer
        (:func:`output_layer`), which stays dense unless a pattern asks for it.
    exclude : same, optional
        Removed from the selection (``["*classifier*", "*pooler*"]``).

    Returns
    -------
    list of str
        State-dict keys such as ``"fc1.weight"``.

    Raises
    ------
    TypeError
        If a pattern is not a string or a module type.
    ValueError
        If any one pattern matches no weight matrix, or nothing is left to
        prune; the message lists the model's modules with weight matrices.
    """
    matrices = weight_matrices(model)
    names = {key: name for name, module in model.named_modules()
             for key, owner, _ in matrices if owner is module}
    listing = list(dict.fromkeys(names[k] or "(the model itself)" for k, _, _ in matrices))

    def hits(pattern, argument: str) -> set[str]:
        found = {key for key, module, _ in matrices if _matches(pattern, names[key], module, key)}
        if not found:
            raise ValueError(f"Pattern {getattr(pattern, '__name__', pattern)!r} in `{argument}` "
                             f"selects no weight matrix; the model's modules with weight "
                             f"matrices are {listing}.")
        return found

    if layers is None and is_keras(model):
        chosen = set(keras_kernels(model)[:-1])  # all Dense/Conv kernels but the output layer's
    elif layers is None:
        output = output_layer(model)
        chosen = {key for key, module, _ in matrices
                  if _is_matrix_module(module) and names[key] != output}
    else:
        chosen = set().union(*(hits(p, "layers") for p in _as_patterns(layers, "layers")))
    if exclude is not None:
        chosen -= set().union(*(hits(p, "exclude") for p in _as_patterns(exclude, "exclude")))
    selected = [key for key, _, _ in matrices if key in chosen]
    if not selected:
        default = " (the default leaves the output layer dense: pass `layers='*'` to prune " \
                  "it)" if layers is None else ""
        raise ValueError(f"Expected `layers`/`exclude` to leave at least one weight matrix to "
                         f"prune, got none{default}; the model's modules with weight matrices "
                         f"are {listing}.")
    return selected


def _resolve(model: nn.Module, keys) -> list[tuple[str, nn.Module, str]]:
    """(key, module, parameter name) for ``keys`` (all counted weights if None) present in model."""
    by_key = {key: (key, module, param) for key, module, param in weight_matrices(model)}
    keys = counted_weights(model) if keys is None else keys
    return [by_key[k] for k in keys if k in by_key]


def layer_table(model: nn.Module, keys=None) -> pd.DataFrame:
    """Per-weight counts: columns layer, parameter, numel, nonzeros, sparsity (in [0, 1]).

    One row per weight matrix in ``keys`` (default: all counted weights,
    :func:`counted_weights`).
    """
    rows = []
    for key, module, param in _resolve(model, keys):
        w = getattr(module, param).detach()
        nnz = int(torch.count_nonzero(w))
        rows.append({"layer": key.rpartition(".")[0] if key != param else "", "parameter": key,
                     "numel": w.numel(), "nonzeros": nnz, "sparsity": 1.0 - nnz / w.numel()})
    return pd.DataFrame(rows, columns=["layer", "parameter", "numel", "nonzeros", "sparsity"])


def _counts(model: nn.Module, keys=None) -> tuple[int, int]:
    total = nnz = 0
    for _, module, param in _resolve(model, keys):
        w = getattr(module, param).detach()
        total += w.numel()
        nnz += int(torch.count_nonzero(w))
    return total, nnz


def sparsity(model: nn.Module, layers: Patterns = None, exclude: Patterns = None) -> float:
    """Measured sparsity in [0, 1]: zero weights / all weights (higher = sparser).

    Over all weight matrices (:func:`counted_weights`: Linear, Conv, attention
    and recurrent matrices) by default, or over the weights
    ``select_weights(model, layers, exclude)`` selects when either is given.
    """
    keys = None if layers is None and exclude is None else select_weights(model, layers, exclude)
    total, nnz = _counts(model, keys)
    if total == 0:
        raise ValueError("Expected a model with at least one Linear, Conv, attention or recurrent "
                         "layer, found none.")
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
        Requested sparsity in [0, 1) of the selected weights.
    masks : dict[str, Tensor]
        ``"layer.weight"`` -> bool mask (True = kept), for masked fine-tuning.
    params : dict
        The method's parameters (scope, seed, ...) and what was done afterwards
        (e.g. fine-tuning epochs and seconds).
    twin : nn.Module or None
        For structured pruning: the dense architecture with the removed
        channels' parameters set to zero; its outputs equal the smaller
        ``sparse`` model's. ``twin_masks`` are its weight masks.
    layers : tuple of str
        State-dict keys of the weights selected for pruning
        (:func:`select_weights`); :attr:`sparsity` is measured over them,
        :attr:`sparsity_all` over all weight matrices. Empty = all weights.
    """

    dense: nn.Module
    sparse: nn.Module
    method: str
    amount: float
    masks: Mapping[str, Tensor] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    twin: nn.Module | None = None
    twin_masks: Mapping[str, Tensor] = field(default_factory=dict)
    layers: tuple[str, ...] = ()

    @property
    def _keys(self) -> list[str] | None:
        return list(self.layers) or None

    @property
    def sparsity(self) -> float:
        """Measured sparsity over the selected weights, in [0, 1] (higher = sparser): the
        fraction of the dense model's selected weights (:attr:`layers`) that are zero or
        physically removed in the sparse model. :attr:`sparsity_all` counts all weights."""
        return 1.0 - self.nonzero_weights / self.total_weights

    @property
    def sparsity_all(self) -> float:
        """Measured sparsity over all weight matrices (:func:`counted_weights`), in [0, 1]:
        the selected layers and the ones left dense (the output layer by default)."""
        total, nnz = _counts(self.dense)[0], _counts(self.sparse)[1]
        return 1.0 - nnz / total

    @property
    def total_weights(self) -> int:
        """Selected weights of the dense model."""
        return _counts(self.dense, self._keys)[0]

    @property
    def nonzero_weights(self) -> int:
        """Nonzero selected weights of the sparse model."""
        return _counts(self.sparse, self._keys)[1]

    @property
    def compression_ratio(self) -> float:
        """Dense / nonzero sparse selected weights (1 = no compression; higher = smaller)."""
        nnz = self.nonzero_weights
        return self.total_weights / nnz if nnz else float("inf")

    @classmethod
    def from_models(cls, dense: nn.Module, sparse: nn.Module, *, method: str = "external",
                    amount: float | None = None, params: Mapping[str, Any] | None = None
                    ) -> ModelPair:
        """A pair pruned elsewhere (Torch-Pruning, NNI, your own code), for comparison only.

        Masks are read off the sparse model (kept = nonzero) where a weight has
        the dense weight's shape; weights whose shapes differ (structured
        removal) get no mask, and the two models are compared in input space
        only. Sparsity counts all weight matrices. ``amount`` defaults to the
        measured sparsity. Neither model is modified; pruning hooks still
        attached to ``sparse`` are an error.

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
        dense_shapes = {k: getattr(m, p).shape for k, m, p in _resolve(dense, None)}
        masks = {k: (getattr(m, p).detach() != 0).clone() for k, m, p in _resolve(sparse, None)
                 if dense_shapes.get(k) == getattr(m, p).shape}
        structured = len(masks) < len(dense_shapes)
        pair = cls(dense=dense, sparse=sparse, method=method, amount=0.0, masks=masks,
                   params={**(params or {}), "structured": structured})
        measured = pair.sparsity
        amount = measured if amount is None else check_fraction(amount, "amount")
        return dataclasses.replace(pair, amount=amount)

    def layer_table(self) -> pd.DataFrame:
        """Per-weight table of the sparse model over all weights (see :func:`layer_table`),
        with a bool column ``selected`` (True = chosen for pruning)."""
        table = layer_table(self.sparse)
        chosen = set(self.layers) if self.layers else set(table["parameter"])
        return table.assign(selected=table["parameter"].isin(chosen))


@dataclass(frozen=True)
class PruningContext:
    """What a pruning method may use besides the model copy and the requested amount.

    scope : "global" or "layer"
    generator : torch.Generator, seeded from ``prune(seed=...)``
    max_layer_sparsity : float or None
        No layer may lose more than this fraction of its weights.
    data : tensor, (inputs, labels), mapping, DataLoader or iterable of batches, or None
        Data for data-driven criteria (Taylor, attribution-guided) and
        calibration (Wanda, SparseGPT), in any form
        :func:`xprune._batches.batches` reads; read it with that function,
        batch by batch, so that a stream never has to fit in memory.
    options : dict
        The method's own options, validated against :attr:`PruningMethod.options`.
    targets : tuple of str
        State-dict keys of the weights to prune (:func:`select_weights`);
        :func:`targets` resolves them in the model copy. Empty = all weights.
    n_m : (N, M) or None
        Semi-structured sparsity: keep the N highest-scoring of every M
        consecutive weights along the input dimension (:func:`n_m_mask`).
    """

    scope: str
    generator: torch.Generator
    max_layer_sparsity: float | None
    data: Data | None
    options: Mapping[str, Any]
    targets: tuple[str, ...] = ()
    n_m: tuple[int, int] | None = None


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
    supports_n_m: bool = False  # honours prune(n_m=(N, M))


PRUNING_METHODS: dict[str, PruningMethod] = {}


def register_pruning_method(name: str, description: str, *, options: Mapping[str, Any] | None = None,
                            needs_data: bool = False, amount_optional: bool = False,
                            ranks_weights: bool = False, supports_n_m: bool = False):
    """Register ``fn(model_copy, amount, ctx)`` as a pruning method under ``name``.

    ``options`` maps each accepted option to its default. The method then
    works with :func:`prune`, analysis configs and ``xprune list``.
    """

    def decorator(fn):
        PRUNING_METHODS[name] = PruningMethod(name, fn, description, dict(options or {}),
                                              needs_data, amount_optional, ranks_weights,
                                              supports_n_m)
        return fn
    return decorator


def register_importance(name: str, description: str, *, needs_data: bool = False,
                        options: Mapping[str, Any] | None = None):
    """Register an unstructured criterion: ``scores(model, ctx) -> {"layer.weight": Tensor}``.

    ``scores`` gives one tensor of the weight's shape for (at least) every
    key in ``ctx.targets`` (:func:`targets` lists them with their modules).
    The lowest-scoring weights are pruned, globally or per layer, honouring
    ``max_layer_sparsity``; this is how a user adds a criterion of their own.
    """

    def decorator(score_fn):
        def fn(model: nn.Module, amount: float | None, ctx: PruningContext) -> None:
            _prune_by_scores(model, amount, score_fn(model, ctx), ctx)
        register_pruning_method(name, description, options=options, needs_data=needs_data,
                                ranks_weights=True, supports_n_m=True)(fn)
        return score_fn
    return decorator


def targets(model: nn.Module, ctx: PruningContext) -> list[tuple[str, nn.Module, str]]:
    """(key, module, parameter name) of the weights ``ctx`` selects in ``model``, in module order."""
    return _resolve(model, list(ctx.targets) or None)


def n_m_mask(scores: Tensor, n: int, m: int) -> Tensor:
    """Semi-structured N:M mask: the N highest scores of every M consecutive input weights.

    Parameters
    ----------
    scores : Tensor of shape (out, in) or (out, in, *kernel)
        Importance of each weight (higher = kept). Groups run along the
        input dimension (dim 1): for a convolution, over input channels at
        each kernel position, as NVIDIA's 2:4 sparse tensor cores expect.
    n, m : int
        Keep ``n`` of every ``m``; ``0 < n < m``. Ties keep the lower index.

    Returns
    -------
    Tensor of bool, the shape of ``scores``
        True = kept; every group holds exactly ``n`` True.

    Raises
    ------
    ValueError
        If ``scores`` has fewer than 2 dimensions or its input dimension is
        not a multiple of ``m``.

    Notes
    -----
    Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks" (2:4).
    This is a mask: on CPU the zeros save no time; on an Ampere or newer GPU
    ``torch.sparse.to_sparse_semi_structured`` turns a 2:4 weight into a
    faster kernel.
    """
    if scores.dim() < 2 or scores.shape[1] % m:
        raise ValueError(f"Expected a weight whose input dimension (dim 1) is a multiple of "
                         f"M = {m} for N:M sparsity, got shape {tuple(scores.shape)}.")
    grouped = scores.movedim(1, -1)
    flat = grouped.reshape(-1, m)
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep.scatter_(1, flat.argsort(dim=1, descending=True, stable=True)[:, :n], True)
    return keep.reshape(grouped.shape).movedim(-1, 1).contiguous()


def check_n_m(n_m) -> tuple[int, int]:
    """Validate ``n_m``: a pair of integers (N, M) with 0 < N < M."""
    if not (isinstance(n_m, (tuple, list)) and len(n_m) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in n_m)
            and 0 < n_m[0] < n_m[1]):
        raise ValueError(f"Expected `n_m` to be a pair of integers (N, M) with 0 < N < M, "
                         f"e.g. (2, 4), got {n_m!r}.")
    return int(n_m[0]), int(n_m[1])


def _scores_for(chosen, scores: Mapping[str, Tensor]) -> dict[str, Tensor]:
    missing = [key for key, _, _ in chosen if key not in scores]
    if missing:
        raise ValueError(f"The importance scores name no score for the selected weight(s) "
                         f"{missing}; expected one tensor per key in {[k for k, _, _ in chosen]}.")
    return {key: scores[key].detach().to(getattr(m, p).device).clone() for key, m, p in chosen}


def _prune_n_m(chosen, scores: Mapping[str, Tensor], n_m: tuple[int, int]) -> None:
    for key, module, param in chosen:
        try:
            mask = n_m_mask(scores[key], *n_m)
        except ValueError as err:
            raise ValueError(f"Cannot prune {key!r} to {n_m[0]}:{n_m[1]}: {err} Exclude it with "
                             "`exclude=`.") from None
        torch_prune.custom_from_mask(module, param, mask.float())


def _prune_by_scores(model: nn.Module, amount: float, scores: Mapping[str, Tensor],
                     ctx: PruningContext) -> None:
    """Prune the lowest ``scores`` with torch.nn.utils.prune, capped per layer if asked
    (or keep the top N of every M with ``ctx.n_m``)."""
    chosen = targets(model, ctx)
    scores = _scores_for(chosen, scores)
    if ctx.n_m is not None:
        _prune_n_m(chosen, scores, ctx.n_m)
        return
    # torch's L1Unstructured ranks |score|: shift so that any criterion's order survives
    finite = torch.cat([v[torch.isfinite(v)].reshape(-1) for v in scores.values()])
    low = float(finite.min()) if finite.numel() else 0.0
    scores = {key: v - low for key, v in scores.items()}
    total = sum(getattr(m, p).numel() for _, m, p in chosen)
    cap = ctx.max_layer_sparsity
    if cap is not None:
        protected = 0
        for key, m, p in chosen:  # the largest (1 - cap) of each layer can never be chosen
            keep = math.ceil((1 - cap) * getattr(m, p).numel())
            if keep:
                top = scores[key].reshape(-1).topk(keep).indices
                scores[key].view(-1)[top] = float("inf")
                protected += keep
        if round(amount * total) > total - protected:
            raise ValueError(f"Cannot reach sparsity {amount} with `max_layer_sparsity` = {cap}: "
                             f"at most {(total - protected) / total:.4f} is reachable.")
    if ctx.scope == "global":
        torch_prune.global_unstructured(
            [(m, p) for _, m, p in chosen], pruning_method=torch_prune.L1Unstructured,
            amount=amount, importance_scores={(m, p): scores[key] for key, m, p in chosen})
    else:
        if cap is not None and amount > cap:
            raise ValueError(f"Expected `amount` <= `max_layer_sparsity` ({cap}) with "
                             f"scope='layer', got {amount}.")
        for key, m, p in chosen:
            torch_prune.l1_unstructured(m, p, amount=amount, importance_scores=scores[key])
    emptied = [key.rpartition(".")[0] if key.endswith(".weight") else key
               for key, m, p in chosen if not bool(getattr(m, p + "_mask").any())]
    if emptied:
        warnings.warn(f"Pruning removed every weight of layer(s) {emptied}: the model can no "
                      "longer pass information through them. Set `max_layer_sparsity` "
                      "(e.g. 0.99) to cap each layer.", UserWarning, stacklevel=4)


def _weight_gradients(model: nn.Module, data: Data, keys=None, *,
                      chunk: int = 4096) -> dict[str, tuple]:
    """Gradients of the mean loss over all of ``data``'s samples w.r.t. the weights ``keys``
    (default: all counted weights), in eval mode: ``{key: (gradient, weight)}``.

    The loss is the cross-entropy of each batch's logits against its labels
    (or the model's own ``loss``, :func:`~xprune._batches.batch_loss`). The
    data are streamed (:func:`~xprune._batches.batches`): each batch's
    gradient, weighted by its share of the samples, is added to a running
    sum, so memory holds one batch and the result equals the gradient of the
    mean loss over the whole set (in-memory data: batches of up to ``chunk`` samples).
    """
    params = {key: getattr(m, p) for key, m, p in _resolve(model, keys)}
    sums = [torch.zeros_like(w, dtype=torch.float64) for w in params.values()]
    total = count = 0
    with eval_mode(model):
        for inputs, labels in batches(data, batch_size=chunk):
            n = n_samples(inputs)
            grads = torch.autograd.grad(batch_loss(model, inputs, labels),
                                        list(params.values()))
            for acc, g in zip(sums, grads, strict=True):
                acc += n * g.detach().double()
            total, count = total + n, count + 1
    if count == 1:  # one batch: its gradient as autograd gave it
        return {k: (g.detach(), w.detach())
                for (k, w), g in zip(params.items(), grads, strict=True)}
    return {k: ((acc / total).to(w.dtype), w.detach())
            for (k, w), acc in zip(params.items(), sums, strict=True)}


def _apply_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> None:
    known = {key: (m, p) for key, m, p in weight_matrices(model)}
    for key, mask in masks.items():
        if key not in known:
            raise ValueError(f"Expected mask names among {sorted(known)}, got {key!r}.")
        module, param = known[key]
        shape = tuple(getattr(module, param).shape)
        if tuple(mask.shape) != shape:
            raise ValueError(f"Expected the mask for {key!r} of shape {shape}, got "
                             f"{tuple(mask.shape)}.")
        torch_prune.custom_from_mask(module, param, mask.to(getattr(module, param).device).float())


def _make_permanent(model: nn.Module) -> dict[str, Tensor]:
    """Remove every torch.nn.utils.prune reparametrisation; returns ``{key: kept-mask}``."""
    masks = {}
    for name, module in model.named_modules():
        pruned = [h._tensor_name for h in list(module._forward_pre_hooks.values())
                  if isinstance(h, torch_prune.BasePruningMethod)]
        for param in pruned:
            masks[weight_name(name, param)] = getattr(module, param + "_mask").detach().bool().clone()
            torch_prune.remove(module, param)
    return masks
