"""Shared plumbing of the metric modules: input coercion, feature views, the registry."""

from __future__ import annotations

import difflib
import functools
import inspect
import math
import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .._state import as_logits, eval_mode, model_device, to_model
from .._validation import check_same_shape, check_targets, check_tensor, is_token_ids
from ..attribution import DEFAULT_MAX_ROWS, Attributions, n_outputs
from ..attribution._inputs import ModelInputs, structure_inputs
from ._forward import inference_forward

__all__ = ["ALIASES", "METRICS", "MetricInfo", "UndefinedScoreWarning", "get_metric",
           "register", "resolve_metric_name", "undefined_reasons", "unknown_metric_hint",
           "warn_undefined"]


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
    undefined : str
        When a sample's score is undefined (NaN), in a few words ("constant
        map"); empty where the metric is defined for every valid input.
    continuous_noise : bool
        The metric adds continuous noise to the inputs, which token ids
        cannot take: the function refuses them (:func:`refuse_token_ids`) and
        configurations leave it out for token inputs
        (``xprune.config.CONTINUOUS_NOISE`` is read from this flag).
    """

    name: str
    fn: Callable[..., Tensor]
    category: str
    kind: str
    higher_is_better: bool
    range: tuple[float, float]
    reference: str
    images_only: bool = False
    undefined: str = ""
    continuous_noise: bool = False


METRICS: dict[str, MetricInfo] = {}


def register(*, category: str, kind: str, higher_is_better: bool,
             range: tuple[float, float], reference: str,  # noqa: A002
             images_only: bool = False, undefined: str = "", continuous_noise: bool = False):
    """Register a metric function in :data:`METRICS` under its own name."""

    def decorator(fn):
        METRICS[fn.__name__] = MetricInfo(fn.__name__, fn, category, kind, higher_is_better,
                                          range, reference, images_only, undefined,
                                          continuous_noise)
        return fn

    return decorator


def refuse_token_ids(metric: str, inputs: object, tokens: bool) -> None:
    """Raise ``ValueError`` for token ids (``tokens`` True) given to a metric registered with
    ``continuous_noise=True``: ids cannot take continuous noise."""
    if tokens and METRICS[metric].continuous_noise:
        raise ValueError(f"{metric} perturbs its inputs with continuous noise, which token ids "
                         f"(an integer tensor of shape {tuple(inputs.shape)}) cannot take; "
                         f"for token ids use max_sensitivity or avg_sensitivity, which "
                         f"substitute tokens, or the removal metrics (deletion, insertion), "
                         f"which remove them.")


class UndefinedScoreWarning(RuntimeWarning):
    """Some samples' scores are undefined (NaN), e.g. a rank correlation of a constant map.

    Attributes ``metric``, ``count`` (samples), ``total`` (samples in the
    call) and ``reason`` hold what the message says.
    """

    def __init__(self, metric: str, count: int, total: int, reason: str) -> None:
        super().__init__(f"{count} sample(s) have an undefined {metric} (NaN; {count} of "
                         f"{total} in this call): {reason}.")
        self.metric, self.count, self.total, self.reason = metric, count, total, reason


def warn_undefined(values: Tensor, metric: str, reason: str, *, stacklevel: int = 3) -> Tensor:
    """Warn once about the samples whose score is NaN; return ``values`` unchanged.

    The one place every metric reports undefined scores: a single
    :class:`UndefinedScoreWarning` per call naming the metric, how many
    samples (rows of ``values``, shape (N, ...), with any NaN) and why.
    Nothing is emitted when every score is defined.
    """
    bad = torch.isnan(values.detach())
    if bad.numel() and bool(bad.any()):
        rows = int(bad.reshape(bad.shape[0], -1).any(dim=1).sum()) if bad.dim() else 1
        total = int(bad.shape[0]) if bad.dim() else 1
        warnings.warn(UndefinedScoreWarning(metric, rows, total, reason), stacklevel=stacklevel)
    return values


@contextmanager
def undefined_reasons() -> Iterator[list[str]]:
    """Hold back the :class:`UndefinedScoreWarning` raised inside; yield their reasons.

    For a metric built from calls of other metrics (per layer, per group of
    samples), so that it warns once, with its own count, instead of once per
    inner call. Other warnings pass through unchanged.
    """
    reasons: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield reasons
    for w in caught:
        if isinstance(w.message, UndefinedScoreWarning):
            if w.message.reason not in reasons:
                reasons.append(w.message.reason)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def metric_seed(seed: int, name: str) -> int:
    """The seed of metric ``name``'s generator in a run seeded with ``seed``.

    Depends on the two only, never on execution order, so every model of a
    run sees the same perturbations for the same metric.
    """
    return seed * 1_000_003 + sum((i + 1) * ord(c) for i, c in enumerate(name))


# Names users bring from the peer tools and the papers -> xprune's metric. Quantus 0.6 class
# names and Captum 0.9 function names in snake case, and the papers' own names. Where the
# definitions differ in details (normalisation, baselines, integration), the docstring of
# xprune's metric says how.
ALIASES: dict[str, str] = {
    # Bach et al. 2015: the pixel-flipping curve is the deletion curve (Quantus PixelFlipping)
    "pixel_flipping": "deletion_auc",
    "deletion": "deletion_auc",
    "insertion": "insertion_auc",
    # Samek et al. 2017: region perturbation, summarised by the AOPC (Quantus RegionPerturbation)
    "region_perturbation": "aopc",
    # Montavon et al. 2018: selectivity, the output as the most relevant features are removed
    "selectivity": "deletion_auc",
    "sensitivity_max": "max_sensitivity",          # Captum
    "average_sensitivity": "avg_sensitivity",
    "sparseness": "gini_index",                    # Quantus Sparseness (Chalasani et al. 2020)
    "gini": "gini_index",
    "complexity": "entropy_complexity",            # Quantus Complexity (Bhatt et al. 2020)
    "entropy": "entropy_complexity",
    "mprt": "model_parameter_randomisation",       # Quantus MPRT
    "model_parameter_randomization": "model_parameter_randomisation",
    "cascading_randomisation": "model_parameter_randomisation",
    "random_logit_test": "random_logit",
    "local_lipschitz": "local_lipschitz_estimate",
    "lipschitz": "local_lipschitz_estimate",
    "ris": "relative_input_stability",
    "ros": "relative_output_stability",
    "remove_and_debias": "road",
    "spearman_rank_correlation": "spearman",
    "spearman_correlation": "spearman",
    "kendall": "kendall_tau",
    "cosine": "cosine_similarity",
    "structural_similarity": "ssim",
}

# Peer metrics xprune does not compute, with the nearest one it does (named in the error).
_NEAREST = {
    "faithfulness_estimate": "faithfulness_correlation",
    "monotonicity": "monotonicity_correlation",
    "irof": "aopc",
    "iterative_removal_of_features": "aopc",
    "effective_mprt": "model_parameter_randomisation",
    "smooth_mprt": "model_parameter_randomisation",
    "efficient_mprt": "model_parameter_randomisation",
    "continuity": "max_sensitivity",
    "consistency": "max_sensitivity",
    "relative_representation_stability": "relative_output_stability",
}


def _snake(name: str) -> str:
    """``PixelFlipping``, ``pixel-flipping``, ``Pixel Flipping`` -> ``pixel_flipping``."""
    key = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name.strip())
    return re.sub(r"[\s\-]+", "_", key).lower()


def resolve_metric_name(name: str) -> str:
    """The registered name for ``name``: itself, or the metric an alias in :data:`ALIASES` names.

    Matching ignores case and treats CamelCase, ``-`` and spaces as ``_``
    (``PixelFlipping`` and ``pixel-flipping`` both find ``deletion_auc``).
    Unknown names come back unchanged, for the caller's error.
    """
    if not isinstance(name, str) or name in METRICS:
        return name
    key = _snake(name)
    return key if key in METRICS else ALIASES.get(key, name)


def unknown_metric_hint(name: object) -> str:
    """`` Did you mean ...?`` for an unknown metric name, naming what an alias stands for."""
    key = _snake(str(name))
    if key in _NEAREST:
        return (f" xprune has no {key!r} (a metric of the peer tools); the nearest it "
                f"computes is {_NEAREST[key]!r}.")
    match = difflib.get_close_matches(key, [*METRICS, *ALIASES], n=1)
    if not match:
        return ""
    if match[0] in ALIASES:
        return f" Did you mean {match[0]!r} (xprune's {ALIASES[match[0]]!r})?"
    return f" Did you mean {match[0]!r}?"


def get_metric(name: str) -> MetricInfo:
    """The :class:`MetricInfo` registered as ``name`` or as one of its :data:`ALIASES`.

    Raises
    ------
    ValueError
        For an unknown name, listing the valid names and the closest match
        (a metric name or an alias, with the metric it stands for).
    """
    resolved = resolve_metric_name(name)
    if resolved not in METRICS:
        raise ValueError(f"Expected a metric name in {sorted(METRICS)} or an alias in "
                         f"{sorted(ALIASES)}, got {name!r}." + unknown_metric_hint(name))
    return METRICS[resolved]


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
    """Checked (inputs, attribution values) with equal shapes; token ids stay integers."""
    if isinstance(inputs, (Mapping, tuple, list)):  # the public metrics take them: any_inputs
        raise TypeError(
            f"Expected `inputs` to be one tensor (N, *F), the input the maps explain, got "
            f"{type(inputs).__name__}: a metric function takes a tuple or mapping of inputs "
            f"when decorated with `any_inputs` (../shared/cases/009-multi-input-model.md).")
    if isinstance(inputs, Tensor) and not inputs.is_floating_point() \
            and inputs.dtype != torch.bool and inputs.dim() == 2 and inputs.shape[0] > 0:
        x = inputs  # token ids (N, T): removal replaces ids, never floats
    else:
        x = check_tensor(inputs, "inputs", min_dim=2)
    if isinstance(attributions, Attributions) and (
            attributions.attributed.shape != x.shape
            or not torch.equal(attributions.attributed.to(x.device, x.dtype), x)):
        raise ValueError("Expected `attributions` to explain these `inputs`: the Attributions "
                         "record was computed on other inputs.")
    a = values_of(attributions)
    check_same_shape(x, a, "inputs", "attributions")
    return x, a


# --- models of several inputs (../shared/cases/009-multi-input-model.md) -----------------------
# One design with attribution: inputs are a tensor, a tuple of positional tensors or a mapping of
# keyword tensors (xprune.attribution._inputs.structure_inputs); one is attributed, the others
# pass through unchanged. The metrics' cores see the attributed tensor only: :func:`any_inputs`
# binds the other inputs to the model (:class:`PassThrough`) and to the explainer
# (:class:`PassThroughExplainer`), and the forward path (target_scores, perturbed_scores, the
# stability metrics' _explain) gives every row its own sample's other inputs.


def rows_per_sample(n: int, m: int) -> int:
    """R, for m = n * R rows of the attributed input, R per sample (sample major).

    Raises
    ------
    ValueError
        If m is not a multiple of n (or n is 0).
    """
    if n == 0 or m % n:
        raise ValueError(f"Expected the rows of the attributed input to be a multiple of the "
                         f"{n} sample(s) whose other inputs they take, got {m} rows.")
    return m // n


class PassThrough(nn.Module):
    """A model of several inputs seen as a model of the attributed one: ``forward(main)``.

    Holds the model, its inputs for N samples (:class:`~xprune.attribution._inputs.ModelInputs`,
    the other inputs on the model's device) and ``samples`` (n,), the samples of the rows the
    next calls send (None: all N). A call with M = n * R rows of the attributed input, sample
    major (rows ``i * R .. i * R + R - 1`` are sample i's), gives each row its sample's other
    inputs: each of them repeated R times. The metrics' forward path narrows it to the rows of
    one pass with :func:`for_samples` and :func:`for_rows`.

    Raises
    ------
    ValueError
        On a call whose number of rows is not a multiple of n.
    """

    def __init__(self, model: nn.Module, structure: ModelInputs,
                 samples: Tensor | None = None) -> None:
        super().__init__()
        self.model = model
        self.structure = structure
        self.samples = samples

    def _samples(self) -> Tensor:
        return torch.arange(len(self.structure)) if self.samples is None else self.samples

    def select(self, index: slice | Tensor) -> PassThrough:
        """The same model for the samples ``index`` (a slice or indices) of these samples."""
        return PassThrough(self.model, self.structure, self._samples()[index])

    def forward(self, main: Tensor) -> Tensor:
        samples = self._samples()
        r = rows_per_sample(samples.shape[0], main.shape[0])
        index = samples if r == 1 else samples.repeat_interleave(r)
        others = [t[index.to(t.device)] for t in self.structure.others]
        return as_logits(self.structure.call(self.model, main, others), self.model)


def for_samples(model: nn.Module, index: slice | Tensor) -> nn.Module:
    """``model`` for rows of the samples ``index`` only: itself, or a narrowed
    :class:`PassThrough`."""
    return model.select(index) if isinstance(model, PassThrough) else model


def row_forward(model: nn.Module, x: Tensor) -> Callable[[int, int], Any]:
    """``run(start, stop)``: the model's output for the rows ``x[start:stop]``.

    The one forward of every pass of rows in the metrics: through
    :func:`~xprune.metrics._forward.inference_forward` (a checked channels-last view
    of a conv model), or, for a model of several inputs (:class:`PassThrough`, whose
    other inputs follow the rows), the model narrowed to those rows' samples
    (:func:`for_rows`), as it is. Call inside the caller's ``eval_mode`` and ``no_grad``.
    """
    if isinstance(model, PassThrough):
        return lambda start, stop: for_rows(model, x.shape[0], start, stop)(
            to_model(x[start:stop], model))
    forward = inference_forward(model, x)
    return lambda start, stop: forward(x[start:stop])


def for_rows(model: nn.Module, total: int, start: int, stop: int) -> nn.Module:
    """``model`` for the rows ``start:stop`` of a call of ``total`` rows, sample major.

    The rows of one forward pass of a chunked call: a :class:`PassThrough` for n samples sees
    ``total = n * R`` rows, R per sample, and row j belongs to sample ``j // R``. Other models
    are returned as they are.
    """
    if not isinstance(model, PassThrough):
        return model
    r = rows_per_sample(model._samples().shape[0], total)
    return model.select(torch.arange(start, min(stop, total)) // r)


class PassThroughExplainer:
    """An explainer of inputs of any structure seen as one of the attributed tensor.

    ``explain_fn(inputs, target)`` takes the inputs as the caller gave them (a tuple or a
    mapping of tensors, as :func:`xprune.attribute`); this callable takes the attributed
    rows (M, *F) and ``rows`` (M,), the sample of each row, and hands ``explain_fn`` the
    structure with each row's own sample's other inputs. Without ``rows``, M = n * R rows are
    sample major as for :class:`PassThrough`. ``explain_fn`` also gets ``rows`` when it takes
    them (``per_sample_rows``), and may return a tensor or an
    :class:`~xprune.attribution.Attributions`.
    """

    per_sample_rows = True
    _FORWARDED = ("independent_rows", "embeds_integer_inputs", "token_vocabulary",
                  "token_options")

    def __init__(self, explain_fn: Callable[..., Any], structure: ModelInputs) -> None:
        self.explain_fn = explain_fn
        self.structure = structure
        for name in self._FORWARDED:
            if hasattr(explain_fn, name):
                setattr(self, name, getattr(explain_fn, name))

    def __call__(self, inputs: Tensor, target: Tensor, *, rows: Tensor | None = None) -> Any:
        s, m, n = self.structure, inputs.shape[0], len(self.structure)
        if rows is None:
            rows = torch.arange(n).repeat_interleave(rows_per_sample(n, m))
        tensors = tuple(inputs if i == s.index else t[rows.to(t.device)]
                        for i, t in enumerate(s.tensors))
        structured = ModelInputs(s.kind, s.keys, tensors, s.index).original()
        if getattr(self.explain_fn, "per_sample_rows", False) is True:
            return self.explain_fn(structured, target, rows=rows)
        return self.explain_fn(structured, target)


_BINDABLE = {"model": PassThrough, "explain_fn": PassThroughExplainer}


def structure_of(inputs: object, attributions: object) -> ModelInputs:
    """``inputs`` of any structure (a tensor, a tuple or a mapping of tensors) as
    :class:`~xprune.attribution._inputs.ModelInputs`, the attributed one being the one
    ``attributions`` records (an :class:`~xprune.attribution.Attributions` of multi-input
    attribution), else the first; raises as
    :func:`~xprune.attribution._inputs.structure_inputs`."""
    return structure_inputs(inputs, attributions.attribute_to
                            if isinstance(attributions, Attributions) else None)


def any_inputs(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Let a metric of the attributed tensor take a model's inputs of any structure.

    ``inputs`` may be a tensor (the call is unchanged), a tuple of positional tensors or a
    mapping of keyword tensors (a tokenizer's output), every one with the same N rows, as for
    :func:`xprune.attribute`. The attributed input is the one ``attributions`` records (an
    :class:`~xprune.attribution.Attributions` of multi-input attribution), else the first;
    the metric then runs on it, and the others reach the model (:class:`PassThrough`) and the
    explainer (:class:`PassThroughExplainer`) unchanged, each row with its own sample's.

    Raises
    ------
    TypeError, ValueError
        As :func:`~xprune.attribution._inputs.structure_inputs`: entries that are not tensors
        with a batch axis, different numbers of rows.
    """
    signature = inspect.signature(fn)
    at = list(signature.parameters).index("inputs")

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if len(args) > at and not isinstance(args[at], (tuple, list, Mapping)):
            return fn(*args, **kwargs)                   # one tensor: the call is unchanged
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError:
            return fn(*args, **kwargs)
        inputs = bound.arguments.get("inputs")
        if not isinstance(inputs, (tuple, list, Mapping)):
            return fn(*args, **kwargs)
        structure = structure_of(inputs, bound.arguments.get("attributions"))
        model = bound.arguments.get("model")
        if isinstance(model, nn.Module):
            structure = ModelInputs(structure.kind, structure.keys, tuple(
                structure.main if i == structure.index else t
                for i, t in enumerate(structure.to_model(model).tensors)), structure.index)
        for name, bind in _BINDABLE.items():
            if name in bound.arguments and callable(bound.arguments[name]):
                bound.arguments[name] = bind(bound.arguments[name], structure)
        bound.arguments["inputs"] = structure.main
        return fn(*bound.args, **bound.kwargs)

    return wrapper


OUTPUTS = ("probability", "logit")


def check_output(output: str) -> str:
    if output not in OUTPUTS:
        raise ValueError(f"Expected `output` in {OUTPUTS}, got {output!r}.")
    return output


def model_targets(model: nn.Module, x: Tensor, target: Any) -> Tensor:
    """Checked target indices of shape (N,) for ``model`` (zeros for a one-output model)."""
    t = check_targets(target, x.shape[0], n_outputs(for_samples(model, slice(0, 1)), x[:1]))
    return torch.zeros(x.shape[0], dtype=torch.long) if t is None else t


def output_scores(logits: Tensor, output: str, model: nn.Module) -> Tensor:
    """Logits (M,) or (M, C) as (M, C) scores: the logits, or their softmax probabilities.

    Raises
    ------
    ValueError
        For probabilities of a one-output model (a regression model, or a binary
        classifier with one logit): softmax over one column is 1.0 for every input, so
        every removal score would be constant (see tests/cases_s6/003).
    """
    if logits.dim() == 1:
        logits = logits[:, None]
    if output != "probability":
        return logits
    if logits.shape[1] == 1:
        raise ValueError(
            f"Expected a model with two or more outputs for `output='probability'`, got "
            f"{type(model).__name__} with one output: the softmax over one logit is 1.0 for "
            "every input, so every score would be constant. Pass `output='logit'` to score "
            "the output itself, or give a binary classifier two logits.")
    return logits.softmax(dim=1)


#: On CPU a forward pass takes about this many input elements at most (1 MiB of float32):
#: a batch whose activations stay near the caches runs faster per row than a larger one.
#: The small CNN of ``benchmarks/table.py`` on 3,232 rows of 3x32x32, one thread: 16-64
#: rows a pass 2.1-2.5 s, 4,096 rows 5.7 s; with two threads on a machine loaded 10x over,
#: passes under 64 rows were slower than 4,096 (the threads wait for each other at every
#: op), hence not fewer rows than this gives (85 for 3x32x32, 4,096 for 8x8 digits).
#: Other devices take ``max_rows`` rows a pass.
CPU_FORWARD_ELEMENTS = 2 ** 18

#: A convolutional model's passes on CPU hold about this many elements of its widest
#: activation (2 MiB of float32), bounded per row by :func:`conv_activation_elements`: its
#: widest convolution's output channels at the input's full resolution. Small inputs widen
#: the most (the 8x8 digits CNN: 64 input elements, 2,048 in its second convolution's
#: output), so input elements alone sent them in passes of 4,096 rows, 2.0x the time of
#: passes of 256 (its fastest, channels last, one thread; 1.2x faster than 4,096 eager
#: against 1.8x at 128-256 rows). The rule gives 256 rows for the digits CNN.
CPU_FORWARD_ACTIVATIONS = 2 ** 19

#: The activation rule gives no fewer rows than this (the 3x32x32 CNN, 32,768 elements a
#: row in its widest activation, gets 64, its fastest pass): below 64 rows two threads
#: wait for each other at every op (see :data:`CPU_FORWARD_ELEMENTS`).
CPU_FORWARD_MIN_ROWS = 64

#: Token ids (M, T) into a model with an ``nn.Embedding``: a CPU pass takes about this many
#: tokens (64 sequences of 128), since each id becomes a vector of the model's width. The
#: 6-layer, 384-wide BERT of ``benchmarks/table.py`` ran fastest at 64 rows of 128 tokens
#: among 16 to 4,096 (its floor's batch); one pass of 260-400 rows cost it 1.2-1.4x.
CPU_FORWARD_TOKENS = 2 ** 13

_CONV_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                nn.ConvTranspose3d)


def conv_activation_elements(model: nn.Module, row: Tensor) -> int:
    """A bound on the elements per row of a conv model's widest activation; 0 without one.

    ``row`` (C, *S) is one input row; the bound is the largest ``out_channels`` of the
    model's convolutions times the input's positions ``prod(S)`` (every convolution's
    output at full resolution; strides and pooling only shrink it, so it is exact for the
    stride-1 convolutions of the digits CNN: 32 x 8 x 8 = 2,048), times the product of every
    transposed convolution's strides, which upsample. Read from the model's
    structure, without a forward pass. 0 for a model without convolution or rows with
    fewer than two axes.
    """
    if row.dim() < 2:
        return 0
    convs = [m for m in model.modules() if isinstance(m, _CONV_LAYERS)]
    if not convs:
        return 0
    grow = 1      # transposed convolutions upsample: their strides multiply the positions
    for m in convs:
        if isinstance(m, nn.modules.conv._ConvTransposeNd):
            grow *= math.prod(m.stride)
    return max(m.out_channels for m in convs) * (row.numel() // max(1, row.shape[0])) * grow


def forward_rows(model: nn.Module, x: Tensor, max_rows: int) -> int:
    """Rows of ``x`` (M, *F) per forward pass: the one pass-size policy of the metrics.

    ``max_rows`` at most; on CPU fewer: for token ids into a model with an embedding
    :data:`CPU_FORWARD_TOKENS` tokens a pass; otherwise about
    :data:`CPU_FORWARD_ELEMENTS` input elements a pass and, for a convolutional model,
    about :data:`CPU_FORWARD_ACTIVATIONS` elements of its widest activation
    (:func:`conv_activation_elements`) but not fewer than :data:`CPU_FORWARD_MIN_ROWS`
    rows by that rule. At least 1. Depends on the model's structure and the rows' shape
    only, never on timing. Other devices take ``max_rows``.
    """
    if model_device(model).type != "cpu":
        return max_rows
    if is_token_ids(x) and any(isinstance(m, nn.Embedding) for m in model.modules()):
        return max(1, min(max_rows, CPU_FORWARD_TOKENS // max(1, x.shape[1])))
    rows = min(max_rows, CPU_FORWARD_ELEMENTS // max(1, x[0].numel()))
    widest = conv_activation_elements(model, x[0])
    if widest:
        rows = min(rows, max(CPU_FORWARD_MIN_ROWS, CPU_FORWARD_ACTIVATIONS // widest))
    return max(1, rows)


@torch.no_grad()
def target_scores(model: nn.Module, x: Tensor, target: Tensor, *, output: str,
                  max_rows: int = DEFAULT_MAX_ROWS) -> Tensor:
    """The target's logit or softmax probability for each row of ``x``: shape (M,), float64.

    ``target`` has shape (M,). Rows are sent through the model (in eval mode,
    restored afterwards) in chunks of at most ``max_rows``, on CPU of about
    :data:`CPU_FORWARD_ELEMENTS` input elements (:func:`forward_rows`), through
    :func:`~xprune.metrics._forward.inference_forward` (a conv model run channels
    last, checked against the model as it is on the first pass).
    """
    device = model_device(model)
    out = []
    if x.shape[0]:
        max_rows = forward_rows(model, x, max_rows)
    run = row_forward(model, x)
    with eval_mode(model):
        for i in range(0, x.shape[0], max_rows):
            logits = as_logits(run(i, i + max_rows), model)
            scores = output_scores(logits, output, model)
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
