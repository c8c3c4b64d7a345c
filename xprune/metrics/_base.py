"""Shared plumbing of the metric modules: input coercion, feature views, the registry."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .._state import as_logits, eval_mode, model_device, to_model
from .._validation import check_same_shape, check_targets, check_tensor, closest_name
from ..attribution import DEFAULT_MAX_ROWS, Attributions, n_outputs

__all__ = ["METRICS", "MetricInfo", "get_metric", "register"]


@dataclass(frozen=True)
class MetricInfo:
    """Metadata of a registered metric, as data.

    Attributes
    ----------
    name : str
    fn : callable
        The pure function computing one value per sample, shape (N,).
    category : {"complexity", "faithfulness", "agreement", "stability", "randomisation"}
    kind : {"map", "model", "pair", "explainer", "model_explainer", "randomisation"}
        Call signature: ``fn(a)``, ``fn(model, inputs, a, target)``,
        ``fn(a_dense, a_sparse)``, ``fn(explain_fn, inputs, target)``,
        ``fn(model, explain_fn, inputs, target)`` (stability that also needs
        the model's outputs) or ``fn(model, inputs, target, attribute_fn)``
        (sanity checks that re-run the method on a changed model or target;
        ``attribute_fn(model, inputs, targets) -> (N, *F)``).
    higher_is_better : bool
    range : tuple of float
        Attainable values (``float("inf")`` where unbounded).
    reference : str
        The paper the definition comes from.
    images_only : bool
        Defined for image inputs (N, C, H, W) only (a pixel neighbourhood or
        a 2-D window); analyses skip it for tabular data.
    """

    name: str
    fn: Callable[..., Tensor]
    category: str
    kind: str
    higher_is_better: bool
    range: tuple[float, float]
    reference: str
    images_only: bool = False


METRICS: dict[str, MetricInfo] = {}


def register(*, category: str, kind: str, higher_is_better: bool,
             range: tuple[float, float], reference: str,  # noqa: A002
             images_only: bool = False):
    """Register a metric function in :data:`METRICS` under its own name."""

    def decorator(fn):
        METRICS[fn.__name__] = MetricInfo(fn.__name__, fn, category, kind, higher_is_better,
                                          range, reference, images_only)
        return fn

    return decorator


def metric_seed(seed: int, name: str) -> int:
    """The seed of metric ``name``'s generator in a run seeded with ``seed``.

    Depends on the two only, never on execution order, so every model of a
    run sees the same perturbations for the same metric.
    """
    return seed * 1_000_003 + sum((i + 1) * ord(c) for i, c in enumerate(name))


def get_metric(name: str) -> MetricInfo:
    """The :class:`MetricInfo` registered as ``name``; unknown names raise with the closest match."""
    if name not in METRICS:
        raise ValueError(f"Expected a metric name in {sorted(METRICS)}, got {name!r}."
                         + closest_name(name, METRICS))
    return METRICS[name]


def values_of(a: Tensor | Attributions, name: str = "attributions") -> Tensor:
    """The map tensor of ``a`` (a tensor or :class:`Attributions`), checked finite, at least 2-D."""
    if isinstance(a, Attributions):
        a = a.values
    return check_tensor(a, name, min_dim=2)


def feature_map(a: Tensor) -> Tensor:
    """Per-feature attribution, shape (N, d).

    A feature is a column of (N, F) tabular data, or a pixel of (N, C, *S)
    images: its channels are summed with their signs (the pixel's net
    relevance), so an RGB pixel is one feature and channels of opposite sign
    cancel. Quantus instead treats every channel element as a feature.
    """
    if a.dim() >= 3:
        a = a.sum(dim=1)
    return a.reshape(a.shape[0], -1)


def _feature_mask(maps: Sequence[object]) -> Tensor | None:
    """The features that count, bool (N, d): the AND of the maps' ``feature_mask``s.

    None when no map carries a mask or every feature counts.
    """
    mask = None
    for a in maps:
        m = getattr(a, "feature_mask", None) if isinstance(a, Attributions) else None
        if m is not None:
            m = m.reshape(m.shape[0], -1).bool().cpu()
            mask = m if mask is None else mask & m
    return None if mask is None or bool(mask.all()) else mask


def per_sample_masked(fn: Callable[..., Tensor], maps: Sequence[Tensor], mask: Tensor,
                      **params) -> Tensor:
    """``fn`` of each sample's maps restricted to the features where ``mask`` is True.

    Samples with the same number m of counted features are scored together in
    one batched call on (M, m) maps (each row keeps its feature order), so a
    sample's score is that of its own counted features and never depends on
    the other samples.

    Parameters
    ----------
    fn : callable
        A map or pair metric taking maps of shape (M, m) and keyword ``params``.
    maps : sequence of Tensor of shape (N, *F)
        One or two maps; features as in :func:`feature_map`.
    mask : bool Tensor of shape (N, d)
    **params
        Passed to ``fn``; an integer ``k`` larger than a sample's counted
        features is lowered to their number.

    Returns
    -------
    Tensor of shape (N,), float64
        NaN for a sample with no counted feature.
    """
    flat = [feature_map(m) for m in maps]
    if tuple(mask.shape) != tuple(flat[0].shape):
        raise ValueError(f"Expected a feature mask of shape {tuple(flat[0].shape)}, got "
                         f"{tuple(mask.shape)}.")
    mask = mask.to(flat[0].device)
    counts = mask.sum(dim=1)
    out = torch.full((flat[0].shape[0],), float("nan"), dtype=torch.float64)
    for m in counts.unique().tolist():
        if m == 0:
            continue
        rows = (counts == m).nonzero()[:, 0]
        sel = mask[rows]
        compact = [f[rows][sel].reshape(len(rows), m) for f in flat]
        kw = dict(params)
        if isinstance(kw.get("k"), int) and not isinstance(kw["k"], bool):
            kw["k"] = min(kw["k"], m)
        out[rows.cpu()] = fn(*compact, **kw).double().cpu()
    return out


def masked_features(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Make a map or pair metric skip the features an :class:`Attributions`' mask excludes.

    When a map given to the metric carries a ``feature_mask`` (token inputs:
    padding and special tokens are False), the metric is computed per sample
    over the counted features only (:func:`per_sample_masked`); otherwise the
    call is unchanged.
    """

    @functools.wraps(fn)
    def wrapper(*maps, **params):
        mask = _feature_mask(maps)
        if mask is None:
            return fn(*maps, **params)
        values = [values_of(m, "attributions") for m in maps]
        if len(values) == 2:
            check_same_shape(values[0], values[1], "a", "b")
        return per_sample_masked(fn, values, mask, **params)

    return wrapper


def check_map_and_inputs(inputs: Tensor, attributions: Tensor | Attributions) -> tuple[Tensor, Tensor]:
    """Checked (inputs, attribution values) with equal shapes."""
    x = check_tensor(inputs, "inputs", min_dim=2)
    if isinstance(attributions, Attributions) and (
            attributions.attributed.shape != x.shape
            or not torch.equal(attributions.attributed.to(x.device, x.dtype), x)):
        raise ValueError("Expected `attributions` to explain these `inputs`: the Attributions "
                         "record was computed on other inputs.")
    a = values_of(attributions)
    check_same_shape(x, a, "inputs", "attributions")
    return x, a


OUTPUTS = ("probability", "logit")


def check_output(output: str) -> str:
    if output not in OUTPUTS:
        raise ValueError(f"Expected `output` in {OUTPUTS}, got {output!r}.")
    return output


def model_targets(model: nn.Module, x: Tensor, target: Any) -> Tensor:
    """Checked target indices of shape (N,) for ``model`` (zeros for a one-output model)."""
    t = check_targets(target, x.shape[0], n_outputs(model, x))
    return torch.zeros(x.shape[0], dtype=torch.long) if t is None else t


@torch.no_grad()
def target_scores(model: nn.Module, x: Tensor, target: Tensor, *, output: str,
                  max_rows: int = DEFAULT_MAX_ROWS) -> Tensor:
    """The target's logit or softmax probability for each row of ``x``: shape (M,), float64.

    ``target`` has shape (M,). Rows are sent through the model (in eval mode,
    restored afterwards) in chunks of at most ``max_rows``.
    """
    device = model_device(model)
    out = []
    with eval_mode(model):
        for i in range(0, x.shape[0], max_rows):
            logits = as_logits(model(to_model(x[i:i + max_rows], model)), model)
            if logits.dim() == 1:
                logits = logits[:, None]
            scores = logits.softmax(dim=1) if output == "probability" else logits
            idx = target[i:i + max_rows].to(device)[:, None]
            out.append(scores.gather(1, idx)[:, 0].double().cpu())
    return torch.cat(out)


def pearson(x: Tensor, y: Tensor) -> Tensor:
    """Row-wise Pearson correlation of (N, R) tensors, float64; NaN for a constant row."""
    x = x.double() - x.double().mean(dim=1, keepdim=True)
    y = y.double() - y.double().mean(dim=1, keepdim=True)
    denom = x.norm(dim=1) * y.norm(dim=1)
    r = (x * y).sum(dim=1) / denom
    return torch.where(denom > 0, r.clamp(-1.0, 1.0), torch.full_like(r, float("nan")))
