"""``prune``, pruning schedules and masked fine-tuning: the public entry points."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .._batches import Data, check_data
from .._validation import check_fraction, closest_name
from ..models import train
from . import methods  # noqa: F401  the built-in methods register themselves here
from ._core import (
    KERAS_PRUNING_METHODS,
    PRUNING_METHODS,
    ModelPair,
    Patterns,
    PruningContext,
    _make_permanent,
    _resolve,
    check_n_m,
    copy_for_pruning,
    is_keras,
    select_weights,
)


def prune(model: nn.Module, amount: float | None = None, *, method: str = "l1_unstructured",
          scope: str = "global", seed: int = 0, max_layer_sparsity: float | None = None,
          data: Data | None = None,
          options: Mapping[str, Any] | None = None, layers: Patterns = None,
          exclude: Patterns = None, n_m: tuple[int, int] | None = None) -> ModelPair:
    """Prune a copy of ``model`` and return the dense/sparse pair.

    Parameters
    ----------
    model : nn.Module
        The trained dense model. It is deep-copied first and never mutated.
    amount : float in [0, 1), optional
        Requested sparsity: the fraction of the selected weights to remove
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
    data : tensor, (inputs, labels), mapping, DataLoader or iterable of batches, optional
        Data for the methods that need it (``PruningMethod.needs_data``:
        Taylor, L1-regularised, structured with a data criterion, Wanda,
        SparseGPT): in memory (a tensor of inputs, ``(inputs, labels)``, a
        tokenizer's output) or streamed (a ``torch.utils.data.DataLoader`` or
        any iterable of batches: tensors, ``(inputs, labels)`` tuples, or
        mappings passed to the model as keyword arguments). Statistics
        accumulate batch by batch, so a stream need not fit in memory.
        Calibration (Wanda, SparseGPT) reads inputs only; loss-based criteria
        need labels (or a model that computes its own ``loss``).
    options : mapping, optional
        The method's own options (see :attr:`PruningMethod.options`).
    layers, exclude : glob pattern, module type, or a list of them, optional
        Which weight matrices are pruned (:func:`select_weights`): patterns
        over module names (``"encoder.*"``), state-dict keys
        (``"*.in_proj_weight"``) or module types (``nn.Linear``,
        ``"Linear"``). Default: every Linear, Conv, attention and recurrent
        weight matrix except the output layer (the last Linear/Conv in module
        order), which stays dense unless a pattern selects it.
    n_m : (N, M), optional
        Semi-structured sparsity with any weight-ranking method (magnitude,
        random, Taylor, Wanda, SparseGPT, your own criterion): of every M
        consecutive weights along the input dimension exactly the N
        highest-scoring survive (:func:`~xprune.pruning.n_m_mask`); ``amount``
        is then ``1 - N/M`` (give it or leave it out). On CPU this is a mask:
        the zeros save no time; only 2:4 on an Ampere or newer GPU maps to
        sparse kernels (``torch.sparse.to_sparse_semi_structured``).

    Returns
    -------
    ModelPair
        ``pair.dense is model``; ``pair.sparse`` is a pruned copy with permanent
        zeros (or a physically smaller model for structured methods);
        ``pair.masks`` maps ``"layer.weight"`` to bool masks; ``pair.layers``
        lists the selected weights, ``pair.sparsity`` is measured over them
        and ``pair.sparsity_all`` over all weight matrices.

    Raises
    ------
    ValueError
        If ``amount`` is outside [0, 1) or missing, ``method``, ``scope`` or an
        option is unknown, data is missing for a data-driven method, or a
        pattern in ``layers``/``exclude`` selects nothing (the message lists
        the model's modules).
    TypeError
        If ``model`` is not a module or a pattern is neither a string nor a
        module type.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"Expected `model` to be a torch.nn.Module, got {type(model).__name__}.")
    if method not in PRUNING_METHODS:
        raise ValueError(f"Expected `method` to be one of {sorted(PRUNING_METHODS)}, "
                         f"got {method!r}." + closest_name(method, PRUNING_METHODS))
    info = PRUNING_METHODS[method]
    if is_keras(model) and method not in KERAS_PRUNING_METHODS:
        raise ValueError(f"Pruning method {method!r} cannot prune the Keras model "
                         f"{type(model).__name__}: it needs torch layers (nn.Linear, nn.Conv) to "
                         f"hook, score or rebuild, and Keras layers are not. Keras models are "
                         f"pruned by {', '.join(KERAS_PRUNING_METHODS)}; or rebuild the model "
                         f"in PyTorch.")
    if n_m is not None:
        n_m = check_n_m(n_m)
        if not info.supports_n_m:
            raise ValueError(f"Pruning method {method!r} does not rank weights: `n_m` applies "
                             "only to " + ", ".join(sorted(
                                 k for k, v in PRUNING_METHODS.items() if v.supports_n_m)) + ".")
        if amount is not None and abs(float(amount) - (1 - n_m[0] / n_m[1])) > 1e-9:
            raise ValueError(f"Expected `amount` None or {1 - n_m[0] / n_m[1]} with `n_m` = "
                             f"{n_m}, got {amount}.")
        if max_layer_sparsity is not None:
            raise ValueError("`max_layer_sparsity` does not apply with `n_m`: every layer loses "
                             "M - N of every M weights.")
        amount = 1 - n_m[0] / n_m[1]
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
                         "`data=(inputs, labels)`, a tensor of inputs, or a DataLoader or "
                         "iterable of batches (the methods that need data: " + ", ".join(
                             sorted(k for k, v in PRUNING_METHODS.items() if v.needs_data))
                         + ").")
    if data is not None:
        check_data(data)
    keys = tuple(select_weights(model, layers, exclude))
    sparse = copy_for_pruning(model)  # before any hook: a hooked module cannot be deep-copied
    ctx = PruningContext(scope=scope, generator=torch.Generator().manual_seed(seed),
                         max_layer_sparsity=max_layer_sparsity, data=data,
                         options={**info.options, **(options or {})}, targets=keys, n_m=n_m)
    try:
        replaced = info.fn(sparse, amount, ctx)
    finally:  # never hand out a model with pruning hooks, even after an error
        masks = _make_permanent(sparse)
    params = {"scope": scope, "seed": seed, "max_layer_sparsity": max_layer_sparsity,
              **{k: v for k, v in ctx.options.items() if k != "masks"},
              **({"n_m": list(n_m)} if n_m is not None else {})}
    if isinstance(replaced, ModelPair):
        return dataclasses.replace(replaced, dense=model, method=method,
                                   params={**params, **replaced.params}, layers=keys)
    pair = ModelPair(dense=model, sparse=sparse, method=method, amount=0.0, masks=masks,
                     params=params, layers=keys)
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


def prune_and_fine_tune(model: nn.Module, amount: float, x: Tensor | Data,
                        y: Tensor | None = None, *,
                        schedule: str = "one_shot", steps: int = 5, epochs: int = 5,
                        method: str = "l1_unstructured", lr: float = 1e-3, seed: int = 0,
                        scope: str = "global", max_layer_sparsity: float | None = None,
                        data: Data | None = None,
                        options: Mapping[str, Any] | None = None, layers: Patterns = None,
                        exclude: Patterns = None) -> ModelPair:
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
        Or ``x`` a ``torch.utils.data.DataLoader`` (or list) of
        ``(inputs, labels)`` batches and ``y`` None, read one batch at a time
        (:func:`~xprune.models.train`).
    schedule : {"one_shot", "iterative", "gradual"}
    steps : int
        Pruning steps for "iterative" and "gradual".
    epochs, lr : total fine-tuning budget and learning rate.
    method : str
        One of ``MONOTONE_METHODS``.
    seed, scope, max_layer_sparsity, data, options, layers, exclude
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
                     max_layer_sparsity=max_layer_sparsity, data=data, options=options,
                     layers=layers, exclude=exclude)
        step = fine_tune(step, x, y, epochs=n_epochs, lr=lr, seed=seed + k)
        seconds += step.params["finetune_seconds"]
        current = step.sparse
    masks = {key: getattr(m, p).detach() != 0 for key, m, p in _resolve(current, step.layers)}
    params = {**step.params, "schedule": schedule, "steps": len(targets),
              "step_sparsities": [round(t, 6) for t in targets], "finetune_epochs": epochs,
              "finetune_seconds": seconds}
    return ModelPair(dense=model, sparse=current, method=method, amount=amount, masks=masks,
                     params=params, layers=step.layers)

def fine_tune(pair: ModelPair, x: Tensor | Data, y: Tensor | None = None, *, epochs: int,
              lr: float = 1e-3,
              batch_size: int = 64, seed: int = 0,
              device: str | torch.device | None = None) -> ModelPair:
    """Masked fine-tuning of the sparse model; returns a new pair, the input pair untouched.

    Pruned weights stay exactly zero (their masks are re-applied during
    training). The new pair's ``params`` gain ``finetune_epochs`` and
    ``finetune_seconds`` (wall time). A structured pair's smaller model is
    fine-tuned as it is; its masked twin (which described the weights before
    fine-tuning) is dropped. ``x, y``: in-memory inputs and labels, or ``x`` a
    ``torch.utils.data.DataLoader`` or iterable of batches and ``y`` None
    (:func:`~xprune.models.train`: streamed one batch at a time).
    """
    sparse = copy.deepcopy(pair.sparse)
    result = train(sparse, x, y, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                   masks=pair.masks, device=device)
    params = {**pair.params, "finetune_epochs": epochs, "finetune_seconds": result.seconds}
    # a structured pair's masked twin describes the weights before fine-tuning: drop it
    return dataclasses.replace(pair, sparse=sparse, params=params, twin=None, twin_masks={})
