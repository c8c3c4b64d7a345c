"""Sanity checks: does a map change when what it claims to explain is destroyed?

Both checks re-run an attribution method, so they take an ``attribute_fn``
that maps ``(model, inputs (N, *F), targets (N,))`` to maps of shape (N, *F)
(a tensor or :class:`~xprune.Attributions`), for example
``functools.partial(xprune.attribute, method="saliency")``, and a
``similarity``: any "pair" metric ``fn(a, b) -> (N,)`` such as
:func:`~xprune.metrics.agreement.spearman` (the default) or
:func:`~xprune.metrics.agreement.ssim`. Lower similarity = the map depends on
what it should depend on = better.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.utils import prune as torch_prune

from .._state import model_device
from .._validation import check_targets, check_tensor, closest_name
from ..attribution import Attributions, n_outputs, resolve_targets
from ._base import register, structure_of, undefined_reasons, values_of, warn_undefined
from .agreement import spearman

__all__ = ["RandomisationCurve", "model_parameter_randomisation", "parameter_randomisation",
           "random_logit"]

AttributeFn = Callable[[nn.Module, Tensor, Tensor], "Tensor | Attributions"]
SimilarityFn = Callable[[Tensor, Tensor], Tensor]

ORDERS = ("cascading", "independent")


class RandomisationCurve(NamedTuple):
    """Similarity of each sample's map to its original map as layers are re-initialised.

    layers : list of str
        Qualified names (as ``model.named_modules()``) of the re-initialised
        layers, in the order they were re-initialised (output layer first by
        default); ``""`` is the model itself.
    values : Tensor of shape (N, L), float64
        Column l: the similarity after re-initialising ``layers[:l + 1]``
        (cascading) or ``layers[l]`` alone (independent).
    """

    layers: list[str]
    values: Tensor


def _draw_seed(generator: torch.Generator) -> int:
    """One seed for torch's global RNG, drawn from ``generator``."""
    return int(torch.randint(0, 2**62, (1,), generator=generator))


@contextlib.contextmanager
def _seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global RNG of the CPU (and of ``device`` if CUDA) inside a fork.

    ``reset_parameters()`` draws from the global RNG; the fork restores the
    caller's RNG state afterwards, also after an error. Only the RNG of the
    device that holds the layer is seeded (``torch.manual_seed`` would seed
    every GPU and, before CUDA starts, queue a seeding for later).
    """
    cuda = []
    if device.type == "cuda":
        cuda = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(cuda[0]):
                torch.cuda.manual_seed(seed)
        yield


def _check_callable(fn: object, name: str) -> None:
    if not callable(fn):
        raise ValueError(f"Expected `{name}` to be callable, got {type(fn).__name__}.")


def _model_inputs(inputs: object, attributions: object) -> tuple[object, Tensor]:
    """(the inputs as given, for the model and ``attribute_fn``; the attributed tensor, checked).

    Inputs of any structure (../shared/cases/009-multi-input-model.md): a tensor, a tuple or a
    mapping of tensors, as for :func:`xprune.attribute`; the attributed one is the one
    ``attributions`` records, else the first. ``attribute_fn`` gets them all, unchanged.
    """
    if not isinstance(inputs, (tuple, list, Mapping)):
        return inputs, _checked_inputs(inputs)
    return inputs, _checked_inputs(structure_of(inputs, attributions).main)


def _checked_inputs(inputs: object) -> Tensor:
    """The checked inputs (N, *F); token ids (integer (N, T)) stay integers for the embedding."""
    if isinstance(inputs, Tensor) and inputs.dim() == 2 and inputs.shape[0] > 0 \
            and not inputs.is_floating_point() and inputs.dtype != torch.bool:
        return inputs
    return check_tensor(inputs, "inputs", min_dim=2)


def _targets(model: nn.Module, x: Tensor, target: Any, inputs: object = None,
             outputs: int | None = None) -> Tensor:
    """Class indices (N,), resolved once on the unchanged model ("predicted" included).

    ``inputs``: the model's inputs of any structure (default ``x``). With the model's number
    of ``outputs`` known, given indices are checked against it without probing the model
    again."""
    if outputs is not None and not isinstance(target, str):
        t = check_targets(target, x.shape[0], outputs)
    else:
        t = resolve_targets(model, x if inputs is None else inputs, target)
    return torch.zeros(x.shape[0], dtype=torch.long) if t is None else t


def _maps(attribute_fn: AttributeFn, model: nn.Module, x: Tensor, t: Tensor,
          inputs: object = None) -> Tensor:
    """``attribute_fn``'s maps of ``inputs`` (all of a model's inputs; default ``x``), checked to
    have the shape of the attributed ``x``."""
    out = attribute_fn(model, x if inputs is None else inputs, t)
    if not isinstance(out, (Tensor, Attributions)):
        raise ValueError(f"Expected `attribute_fn` to return a Tensor or Attributions, got "
                         f"{type(out).__name__}.")
    values = out.values if isinstance(out, Attributions) else out
    if values.shape != x.shape:
        raise ValueError(f"Expected `attribute_fn` to return maps of the inputs' shape "
                         f"{tuple(x.shape)}, got {tuple(values.shape)}.")
    return values_of(values.detach(), "maps")


def _given(attributions: Tensor | Attributions, x: Tensor) -> Tensor:
    """The caller's original maps of ``x``, checked: shape (N, *F)."""
    if isinstance(attributions, Attributions) and (
            tuple(attributions.attributed.shape) != tuple(x.shape)
            or not torch.equal(attributions.attributed.to(x.device, x.dtype), x)):
        raise ValueError("Expected `attributions` to explain these `inputs`: the Attributions "
                         "record was computed on other inputs.")
    values = values_of(attributions, "attributions").detach()
    if values.shape != x.shape:
        raise ValueError(f"Expected `attributions` of the inputs' shape {tuple(x.shape)}, got "
                         f"{tuple(values.shape)}.")
    return values


def _similarity(similarity: SimilarityFn, a: Tensor, b: Tensor) -> Tensor:
    s = similarity(a, b)
    if not isinstance(s, Tensor) or s.shape != (a.shape[0],):
        shape = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
        raise ValueError(f"Expected `similarity` to return one value per sample, shape "
                         f"({a.shape[0]},), got {shape}.")
    return s.detach().double().cpu()


def _randomisable(module: nn.Module) -> bool:
    return (callable(getattr(module, "reset_parameters", None))
            and any(True for _ in module.parameters(recurse=False)))


def _layer_names(model: nn.Module, layers: Sequence[str] | None) -> list[str]:
    valid = [name for name, m in model.named_modules() if _randomisable(m)]
    if layers is None:
        if not valid:
            raise ValueError("Expected a model with at least one layer that has parameters and a "
                             "reset_parameters() method, got none.")
        return valid[::-1]
    if isinstance(layers, str) or not isinstance(layers, Sequence) or not layers:
        raise ValueError(f"Expected `layers` to be a non-empty sequence of layer names, got "
                         f"{layers!r}.")
    for name in layers:
        if name not in valid:
            raise ValueError(f"Expected `layers` to name layers with parameters and a "
                             f"reset_parameters() method, {valid}, got {name!r}."
                             + closest_name(str(name), valid))
    if len(set(layers)) != len(layers):
        raise ValueError(f"Expected `layers` without repeats, got {list(layers)}.")
    return list(layers)


def _private_copy(model: nn.Module) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise ValueError(f"Expected `model` to be a torch.nn.Module, got {type(model).__name__}.")
    if torch_prune.is_pruned(model):
        raise ValueError("Expected a model without pruning hooks (weight_orig/weight_mask): "
                         "make pruning permanent with torch.nn.utils.prune.remove first, since "
                         "a module with pruning hooks cannot be deep-copied.")
    return copy.deepcopy(model).eval()


def parameter_randomisation(model: nn.Module, inputs: Tensor, target: Any,
                            attribute_fn: AttributeFn, *, order: str = "cascading",
                            similarity: SimilarityFn = spearman,
                            generator: torch.Generator | None = None,
                            layers: Sequence[str] | None = None,
                            attributions: Tensor | Attributions | None = None
                            ) -> RandomisationCurve:
    """Model-parameter randomisation test: similarity curves as layers are re-initialised.

    The original maps are computed on a deep copy of ``model``; then, layer
    by layer from the output down, the copy's layer is re-initialised with its
    own ``reset_parameters()`` (weights and bias, drawn as at construction)
    and the maps recomputed. ``"cascading"`` keeps the earlier layers
    randomised (Adebayo et al. 2018, sec. 3, cascading randomisation from the
    top); ``"independent"`` restores every other layer first (their
    independent randomisation). Each sample's new map is compared with its
    original map by ``similarity``.

    Parameters
    ----------
    model : nn.Module
        Never modified: the randomisation happens on a private deep copy, put
        in eval mode. A model still carrying ``torch.nn.utils.prune`` hooks is
        refused (it cannot be deep-copied).
    inputs : Tensor of shape (N, *F)
    target : "predicted", int, sequence of int or Tensor of shape (N,)
        Resolved once, on the unchanged model: ``"predicted"`` explains the
        original model's predicted class at every layer, not the randomised
        model's.
    attribute_fn : callable
        ``attribute_fn(model, inputs, targets) -> Tensor or Attributions`` of
        shape (N, *F), e.g. ``functools.partial(xprune.attribute,
        method="saliency")``.
    order : {"cascading", "independent"}
    similarity : callable
        A "pair" metric ``fn(a, b) -> Tensor (N,)`` (original map first).
        Default Spearman rank correlation of the signed maps; Adebayo et al.
        also report it on |maps| (``functools.partial(spearman, abs=True)``)
        and SSIM (:func:`~xprune.metrics.agreement.ssim`).
    generator : torch.Generator, optional
        One seed per layer is drawn from it, in the order of ``layers``, and
        ``reset_parameters()`` runs under torch's global RNG seeded with it
        inside a fork, so the caller's global RNG state is left as it was. The
        same generator state gives the same random weights (bit-identical
        scores for a deterministic ``attribute_fn``), and a layer gets the
        same weights in both orders. Default ``torch.Generator().manual_seed(0)``.
        The weights do not depend on the inputs, so a sample's score does not
        depend on its batch-mates.
    layers : sequence of str, optional
        Names (as ``model.named_modules()``) of the layers to re-initialise,
        in this order. Default: every submodule with parameters of its own
        and a ``reset_parameters()`` method (Linear, Conv*, Embedding, and
        normalisation layers, whose reset is to their identity initialisation
        and running statistics), in reverse registration order, i.e. from
        the output layer down for a model that registers its layers in
        forward order (as Quantus assumes too). Layers without
        ``reset_parameters()`` cannot be re-initialised and are skipped.
    attributions : Tensor of shape (N, *F) or Attributions, optional
        ``attribute_fn``'s maps of ``inputs`` for the targets on the unchanged
        model, when the caller holds them: they are the original maps, so
        ``attribute_fn`` runs once per layer and no more (an ``Attributions``
        record is checked to explain these inputs).

    Returns
    -------
    RandomisationCurve
        ``layers`` and ``values`` of shape (N, L), float64. Lower = the map
        depends more on the learned weights = better; the original model
        itself would score 1 (not included). A pruned model's layers are
        re-initialised densely: its zeros are not kept. NaN (with a
        RuntimeWarning) where ``similarity`` is undefined, e.g. Spearman of
        a randomised model whose map is constant.

    Raises
    ------
    ValueError
        On an unknown ``order``, bad inputs or target, unknown or repeated
        ``layers``, a model with no layer to re-initialise or with pruning
        hooks, or an ``attribute_fn`` / ``similarity`` that returns the wrong
        shape.
    """
    inputs, x = _model_inputs(inputs, attributions)
    if order not in ORDERS:
        raise ValueError(f"Expected `order` in {ORDERS}, got {order!r}."
                         + closest_name(str(order), ORDERS))
    _check_callable(attribute_fn, "attribute_fn")
    _check_callable(similarity, "similarity")
    work = _private_copy(model)
    names = _layer_names(work, layers)
    t = _targets(model, x, target, inputs)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    seeds = [_draw_seed(generator) for _ in names]
    modules = dict(work.named_modules())
    original = (_given(attributions, x) if attributions is not None
                else _maps(attribute_fn, work, x, t, inputs))
    values = []
    with undefined_reasons() as reasons:  # one warning for the whole curve
        for i, (name, seed) in enumerate(zip(names, seeds, strict=True)):
            if order == "independent" and i:  # the caller's untouched weights, copied back
                work.load_state_dict(model.state_dict())
            module = modules[name]
            with _seeded_rng(seed, model_device(module)), torch.no_grad():
                module.reset_parameters()
            values.append(_similarity(similarity, original,
                                      _maps(attribute_fn, work, x, t, inputs)))
    curve = torch.stack(values, dim=1)
    n_nan = int(torch.isnan(curve).sum())
    why = "; ".join(reasons) or "undefined for these maps"
    warn_undefined(curve, "parameter randomisation similarity",
                   f"{n_nan} of {curve.numel()} similarities are NaN (samples x layers): {why}",
                   stacklevel=3)
    return RandomisationCurve(names, curve)


@register(category="randomisation", kind="randomisation", higher_is_better=False,
          range=(-1.0, 1.0),
          reference="Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim 2018, 'Sanity checks for "
                    "saliency maps', NeurIPS (cascading model-parameter randomisation); the "
                    "mean over the curve")
def model_parameter_randomisation(model: nn.Module, inputs: Tensor, target: Any,
                                  attribute_fn: AttributeFn, *, order: str = "cascading",
                                  similarity: SimilarityFn = spearman,
                                  generator: torch.Generator | None = None,
                                  attributions: Tensor | Attributions | None = None) -> Tensor:
    """Mean similarity over the model-parameter randomisation curve, per sample.

    The mean of :func:`parameter_randomisation`'s ``values`` over its L
    layers (the normalised area under the curve of Adebayo et al.'s figures).
    One number per sample for a table, chosen over the two other summaries
    in use: the last point (fully randomised model) is low for nearly every
    method and misses the paper's main finding, maps that stay similar while
    the top layers are destroyed; the first point alone ignores depth. The
    mean rewards a map that decorrelates early and stays decorrelated. It
    depends on L, so compare it between models of the same architecture
    (dense vs pruned), and read the curve itself for the why.

    Quantus 0.6 ``MPRT(return_average_correlation=True)`` averages the same
    layers plus the similarity of the original model with itself (1 for a
    deterministic method), i.e. ``(1 + L * ours) / (L + 1)``.

    Parameters and errors as :func:`parameter_randomisation` (default
    cascading, Spearman of the signed maps).

    Returns
    -------
    Tensor of shape (N,), float64
        In the similarity's range ([-1, 1] for Spearman or SSIM); lower is
        better. NaN (with a warning) if the similarity is undefined at any
        layer.
    """
    return parameter_randomisation(model, inputs, target, attribute_fn, order=order,
                                   similarity=similarity, generator=generator,
                                   attributions=attributions).values.mean(dim=1)


def _other_classes(targets: Tensor, n_classes: int, generator: torch.Generator) -> Tensor:
    """For each sample in order, a class drawn uniformly from the n_classes - 1 non-targets.

    One ``torch.randint`` of N draws: on the CPU generator the same values as N
    one-element draws in sample order (a sample's class does not depend on the
    batch after it)."""
    r = torch.randint(0, n_classes - 1, targets.shape, generator=generator)
    other = r + (r >= targets.cpu()).long()  # skip the target: r indexes the other classes
    return other.to(targets.device)


@register(category="randomisation", kind="randomisation", higher_is_better=False,
          range=(-1.0, 1.0),
          reference="Sixt, Granz & Landgraf 2020, 'When explanations lie: why many modified BP "
                    "attributions fail', ICML (random logit test)")
def random_logit(model: nn.Module, inputs: Tensor, target: Any, attribute_fn: AttributeFn, *,
                 n_classes: int | None = None, similarity: SimilarityFn = spearman,
                 generator: torch.Generator | None = None,
                 attributions: Tensor | Attributions | None = None) -> Tensor:
    """Similarity between the map of the target class and that of a random other class.

    For each sample a class ``c != target`` is drawn uniformly from the other
    ``n_classes - 1`` classes and ``similarity(map(x, target), map(x, c))``
    is returned. A map that explains the decision should change when asked
    about another class; methods that mostly reconstruct the input (many
    modified-backprop rules, Sixt et al. 2020) score high.

    Parameters
    ----------
    model : nn.Module
        Passed to ``attribute_fn`` as it is; nothing here modifies it.
    inputs : Tensor of shape (N, *F)
    target : "predicted", int, sequence of int or Tensor of shape (N,)
        Each value in [0, n_classes).
    attribute_fn : callable
        ``attribute_fn(model, inputs, targets) -> Tensor or Attributions`` of
        shape (N, *F).
    n_classes : int, optional
        Classes to draw from, 2 <= n_classes <= the model's outputs. Default:
        all the model's outputs (Quantus's ``RandomLogit`` defaults to 1000,
        which must be set to the model's class count).
    similarity : callable
        A "pair" metric ``fn(a, b) -> (N,)``; default Spearman of the signed
        maps, which works for any data. Quantus defaults to SSIM; pass
        :func:`~xprune.metrics.agreement.ssim` for image maps.
    generator : torch.Generator, optional
        The other classes are drawn one per sample in batch order; default
        ``torch.Generator().manual_seed(0)``. Same seed, same classes.
    attributions : Tensor of shape (N, *F) or Attributions, optional
        The maps of the target classes, when the caller holds them; then
        ``attribute_fn`` runs once, for the other classes.

    Returns
    -------
    Tensor of shape (N,), float64
        In the similarity's range; lower is better (more class-sensitive).
        NaN where the similarity is undefined (e.g. Spearman of a constant map),
        with one :class:`UndefinedScoreWarning` per call giving the count.

    Raises
    ------
    ValueError
        If the model has a single output, ``n_classes`` is out of range, a
        target is not below ``n_classes``, or on the errors of
        :func:`parameter_randomisation` for inputs, ``attribute_fn`` and
        ``similarity``.
    """
    inputs, x = _model_inputs(inputs, attributions)
    _check_callable(attribute_fn, "attribute_fn")
    _check_callable(similarity, "similarity")
    outputs = n_outputs(model, inputs)
    if outputs < 2:
        raise ValueError("Expected a model with at least 2 outputs for the random logit test, "
                         "got 1.")
    if n_classes is None:
        n_classes = outputs
    if (isinstance(n_classes, bool) or not isinstance(n_classes, int)
            or not 2 <= n_classes <= outputs):
        raise ValueError(f"Expected `n_classes` to be an integer in [2, {outputs}] for a model "
                         f"with {outputs} outputs, got {n_classes!r}.")
    t = _targets(model, x, target, inputs, outputs)
    if int(t.max()) >= n_classes:
        raise ValueError(f"Expected every target below `n_classes` = {n_classes}, got "
                         f"{int(t.max())}.")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    other = _other_classes(t, n_classes, generator)
    with undefined_reasons() as reasons:
        original = (_given(attributions, x) if attributions is not None
                    else _maps(attribute_fn, model, x, t, inputs))
        values = _similarity(similarity, original, _maps(attribute_fn, model, x, other, inputs))
    return warn_undefined(values, "random_logit",
                          "; ".join(reasons) or "the similarity is undefined for these maps")
