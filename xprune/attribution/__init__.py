"""The attribution layer: Captum's methods on any model, and on both halves of a pair.

No attribution maths lives here: each method is a Captum class plus a validated
parameter spec (see :data:`ATTRIBUTION_METHODS`). What xprune adds is what
makes a dense and a sparse map comparable: the same inputs, the same target
for both models, the same baseline, an explicit output space (logits by
default), the model in eval mode (restored afterwards), inputs left untouched,
and a bound on the rows any single forward pass sees, whatever ``N`` and
``n_steps`` are (Captum's ``internal_batch_size`` alone does not bound it: a
value below the number of inputs is raised to that number).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .._state import eval_mode, model_device, to_model
from .._validation import check_device, check_positive_int, check_targets, check_tensor
from ..models import predict
from ._baselines import BASELINE_KINDS, make_baseline
from ._methods import (
    ATTRIBUTION_METHODS,
    AttributionMethod,
    Budget,
    DeepLiftParams,
    EmbeddingIntegratedGradientsParams,
    GradCamParams,
    GradientShapParams,
    GuidedBackpropParams,
    InputXGradientParams,
    IntegratedGradientsParams,
    LRPParams,
    NoiseTunnelParams,
    OcclusionParams,
    ProbabilityOutput,
    SaliencyParams,
    describe,
    resolve_spec,
)
from ._model_check import check_model_for_method

__all__ = [
    "ATTRIBUTION_METHODS",
    "BASELINE_KINDS",
    "DEFAULT_MAX_ROWS",
    "AttributionMethod",
    "Attributions",
    "ConstantMapWarning",
    "DeepLiftParams",
    "EmbeddingIntegratedGradientsParams",
    "GradCamParams",
    "GradientShapParams",
    "GuidedBackpropParams",
    "InputXGradientParams",
    "IntegratedGradientsParams",
    "LRPParams",
    "NoiseTunnelParams",
    "OcclusionParams",
    "SaliencyParams",
    "attribute",
    "attribute_pair",
    "check_logit_outputs",
    "completeness_error",
    "explainer",
    "make_baseline",
    "n_outputs",
    "resolve_targets",
    "warn_constant_maps",
]

DEFAULT_MAX_ROWS = 4096
"""Default bound on the rows of any single forward pass during attribution."""

OUTPUTS = ("logit", "probability")


@dataclass(frozen=True)
class Attributions:
    """Attribution maps with their provenance.

    Attributes
    ----------
    values : Tensor of shape (N, *F)
        One map per input, the inputs' shape (for token inputs (N, T), one
        value per token). Units: those of the explained output (``params``'s
        ``output``: logit by default) per unit of input for gradients, output
        units for IG, DeepLIFT, occlusion and LRP.
    inputs : Tensor of shape (N, *F)
        The explained inputs.
    targets : Tensor of shape (N,), int64
        The explained output index per sample.
    method : str
        Name in :data:`ATTRIBUTION_METHODS`.
    params : dict
        The method's resolved parameters plus ``output``.
    model_tag : str or None
        Which model made the maps (``"dense"``, ``"sparse"``, ...).
    delta : Tensor of shape (N,) or None
        Convergence (completeness) delta per sample, for methods that have one
        (IG, DeepLIFT, GradientSHAP, LRP): sum(values) - (f(x) - f(baseline)).
    predictions : Tensor of shape (N,) or None
        The model's own predicted class for each input, so that samples where
        two models disagree can be flagged.
    """

    values: Tensor
    inputs: Tensor
    targets: Tensor
    method: str
    params: Mapping[str, Any] = field(default_factory=dict)
    model_tag: str | None = None
    delta: Tensor | None = None
    predictions: Tensor | None = None

    def __len__(self) -> int:
        return self.values.shape[0]

    @property
    def shape(self) -> torch.Size:
        return self.values.shape


def _check_inputs(inputs: object, method: AttributionMethod) -> Tensor:
    if method.integer_inputs:
        if not isinstance(inputs, Tensor) or inputs.is_floating_point() or inputs.dim() != 2:
            raise ValueError(f"Expected `inputs` for {method.name!r} to be token ids, an integer "
                             f"tensor of shape (N, T), got {_describe_input(inputs)}.")
        if inputs.shape[0] == 0:
            raise ValueError("Expected `inputs` to hold at least one sample, got an empty batch.")
        return inputs
    return check_tensor(inputs, "inputs", min_dim=2)


def _describe_input(x: object) -> str:
    if isinstance(x, Tensor):
        return f"dtype {x.dtype} and shape {tuple(x.shape)}"
    return type(x).__name__


def resolve_targets(model: nn.Module, inputs: Tensor, target: Any, *,
                    labels: Tensor | None = None, max_rows: int = DEFAULT_MAX_ROWS
                    ) -> Tensor | None:
    """Turn a target policy into class indices of shape (N,).

    Parameters
    ----------
    target : "predicted", "label", int, sequence of int, Tensor of shape (N,) or None
        ``"predicted"``: the model's argmax on ``inputs``; ``"label"``: the
        true ``labels``; an index or indices; ``None`` only for a one-output model.
    labels : Tensor of shape (N,), optional
        Required by ``"label"``.

    Raises
    ------
    ValueError
        On an unknown policy, a missing target for a multi-output model, or
        indices of the wrong length or out of range.
    """
    return _resolve_targets(model, inputs, target, labels=labels, max_rows=max_rows,
                            outputs=n_outputs(model, inputs))


def _resolve_targets(model: nn.Module, inputs: Tensor, target: Any, *, labels: Tensor | None,
                     max_rows: int, outputs: int) -> Tensor | None:
    """:func:`resolve_targets` for a model with a known number of ``outputs``."""
    if isinstance(target, str):
        if target == "predicted":
            return predict(model, inputs, batch_size=max_rows).argmax(dim=1)
        if target == "label":
            if labels is None:
                raise ValueError("target='label' needs the true labels: pass `labels`.")
            return check_targets(labels, inputs.shape[0], outputs, name="labels")
        raise ValueError(f"Expected `target` to be 'predicted', 'label', an int or a tensor of "
                         f"class indices, got {target!r}.")
    return check_targets(target, inputs.shape[0], outputs)


def n_outputs(model: nn.Module, inputs: Tensor) -> int:
    """Number of model outputs (classes), from one forward pass of one input.

    Raises
    ------
    ValueError
        If the outputs are already probabilities (see :func:`check_logit_outputs`).
    """
    out = predict(model, inputs[:1])
    check_logit_outputs(model, out)
    return out.shape[1] if out.dim() > 1 else 1


def check_logit_outputs(model: nn.Module, outputs: Tensor, *, atol: float = 1e-4) -> None:
    """Raise if a model's outputs (N, C), C >= 2, are probabilities rather than logits.

    Probabilities: every row non-negative and summing to 1 within ``atol`` (the
    error names the model's last module when it is an ``nn.Softmax``; a Softmax
    elsewhere, e.g. in attention, is no reason to refuse). xprune explains and
    scores logits and applies softmax itself (``output="probability"``, deletion/insertion),
    so a model that ends in softmax would be explained as if it gave logits
    and squashed a second time (../shared/cases/027-softmax-output.md).
    ``nn.LogSoftmax`` outputs are fine: they are logits up to a constant per row.
    """
    if outputs.dim() != 2 or outputs.shape[1] < 2:
        return
    rows = outputs.detach().double()
    if bool((rows >= 0).all()) and bool(((rows.sum(dim=1) - 1).abs() <= atol).all()):
        leaves = [(name, m) for name, m in model.named_modules() if not any(m.children())]
        where = (f"its last module {leaves[-1][0]!r} is nn.Softmax"
                 if leaves and leaves[-1][0] and isinstance(leaves[-1][1], nn.Softmax)
                 else "every row is non-negative and sums to 1")
        raise ValueError(
            f"Expected `model` to return logits, but {type(model).__name__}'s outputs are "
            f"already probabilities ({where}). xprune explains and scores logits and applies "
            f"softmax itself for output='probability' and the removal metrics, which would "
            f"apply it a second time. Pass the model without its final softmax, or wrap it so "
            f"that forward returns torch.log of the probabilities (logits up to a constant "
            f"per row).")


def attribute(model: nn.Module, inputs: Tensor, target: Any, method: str = "integrated_gradients",
              *, params: Mapping[str, Any] | Any | None = None, output: str = "logit",
              model_tag: str | None = None, max_rows: int = DEFAULT_MAX_ROWS,
              device: str | torch.device | None = None, labels: Tensor | None = None,
              ) -> Attributions:
    """Attribute the target output of ``model`` to each input feature with a Captum method.

    Parameters
    ----------
    model : nn.Module
        Maps (N, *F) to (N, C) logits. Put in eval mode during the call; every
        submodule's mode is restored afterwards, also after an error. No hook
        survives the call.
    inputs : Tensor of shape (N, *F)
        Images (N, C, H, W), tabular rows (N, F), or token ids (N, T) for
        ``"embedding_integrated_gradients"``. Left untouched (no
        ``requires_grad``, no ``.grad``). Integer or float64 inputs are cast to
        the model's dtype (maps come back in the inputs' floating dtype) and
        moved to the model's device.
    target : "predicted", "label", int, sequence of int or Tensor of shape (N,)
        The output index to explain per sample (see :func:`resolve_targets`).
        Required for a multi-output model.
    method : str
        A name in :data:`ATTRIBUTION_METHODS`.
    params : mapping or the method's spec dataclass, optional
        E.g. ``{"n_steps": 64, "baseline": "blur"}`` for IG. Unknown keys raise.
    output : {"logit", "probability"}
        Explain the logits (default) or the softmax probabilities. Do not ask
        for probabilities of a model that already ends in softmax.
    model_tag : str, optional
        Recorded on the result (``"dense"``, ``"sparse"``, ...).
    max_rows : int
        No single forward pass sees more rows than this: inputs are split into
        chunks and Captum's batching options are set within each chunk.
    device : optional
        Run on this device. If it differs from the model's, a copy of the model
        is moved there (the caller's model stays where it is).
    labels : Tensor of shape (N,), optional
        True labels, for ``target="label"``.

    Returns
    -------
    Attributions
        ``values`` of the inputs' shape on the inputs' device, ``targets``,
        ``predictions``, and for IG, DeepLIFT, GradientSHAP and LRP the
        convergence delta per sample.

    Raises
    ------
    ValueError
        On NaN/Inf or empty inputs, a missing or out-of-range target, an
        unknown method, parameter or output, a layer the method cannot handle,
        or a method whose per-sample rows exceed ``max_rows``.

    Warns
    -----
    UserWarning
        When Integrated Gradients' median relative completeness error exceeds
        its ``delta_tolerance``: raise ``n_steps``.
    """
    return _attribute(model, inputs, target, method, params=params, output=output,
                      model_tag=model_tag, max_rows=max_rows, device=device, labels=labels,
                      with_predictions=True)


def _attribute(model, inputs, target, method, *, params, output, model_tag, max_rows, device,
               labels, with_predictions, memo: dict[str, int] | None = None) -> Attributions:
    """:func:`attribute`; ``memo``, when given, keeps the model's number of outputs
    (``memo["outputs"]``) from one call to the next, which saves a forward pass per call."""
    spec = resolve_spec(method, params)
    info = ATTRIBUTION_METHODS[method]
    inputs = _check_inputs(inputs, info)
    check_positive_int(max_rows, "max_rows")
    if output not in OUTPUTS:
        raise ValueError(f"Expected `output` in {OUTPUTS}, got {output!r}.")
    if device is not None:
        check_device(str(device))
    run_device = torch.device(device) if device is not None else model_device(model)
    if run_device != model_device(model):
        model = copy.deepcopy(model).to(run_device)
    if memo is not None and "outputs" in memo:
        outputs = memo["outputs"]
    else:
        outputs = n_outputs(model, inputs)
        if memo is not None:
            memo["outputs"] = outputs
    targets = _resolve_targets(model, inputs, target, labels=labels, max_rows=max_rows,
                               outputs=outputs)
    if output == "probability" and outputs == 1:
        raise ValueError("Expected a model with several outputs for output='probability': the "
                         "softmax of a single output is constant, so every map would be zero. "
                         "Use output='logit'.")
    with eval_mode(model):
        check_model_for_method(model, method, to_model(inputs[:1], model))
    rows = info.rows_per_sample(spec)
    if rows > max_rows:
        raise ValueError(f"Method {method!r} sends {rows} rows per input through one forward "
                         f"pass, more than `max_rows` = {max_rows}; raise max_rows.")
    chunk = max(1, min(inputs.shape[0], max_rows // rows))
    explained = ProbabilityOutput(model) if output == "probability" else model
    values, deltas = [], []
    with eval_mode(model):
        for index, start in enumerate(range(0, inputs.shape[0], chunk)):
            x = to_model(inputs[start:start + chunk].detach().clone(), model)
            if x.is_floating_point():
                x.requires_grad_()
            t = None if targets is None else targets[start:start + chunk].to(run_device)
            v, d = info.run(explained, x, t, spec, Budget(max_rows, index))
            dtype = torch.promote_types(inputs.dtype, v.dtype) if x.is_floating_point() else None
            values.append(v.detach().to(device=inputs.device, dtype=dtype))
            if d is not None:
                deltas.append(d.detach().reshape(-1).to(inputs.device))
        predictions = None
        if with_predictions:
            predictions = predict(model, inputs, batch_size=max_rows).argmax(dim=1)
    result = Attributions(
        values=values[0] if len(values) == 1 else torch.cat(values), inputs=inputs.detach(),
        targets=(targets if targets is not None
                 else torch.zeros(inputs.shape[0], dtype=torch.long)).cpu(),
        method=method, params={**describe(spec), "output": output}, model_tag=model_tag,
        delta=torch.cat(deltas) if deltas else None, predictions=predictions,
    )
    if method == "integrated_gradients":
        _warn_on_coarse_integral(result, spec)
    warn_constant_maps(result)
    return result


def completeness_error(result: Attributions) -> tuple[Tensor, Tensor]:
    """Relative completeness error of each map, and its denominator |f(x) - f(x')|.

    Completeness (Sundararajan et al. 2017, "Axiomatic attribution for deep
    networks", prop. 1): sum(a) = f(x) - f(x'); Captum's convergence delta is
    sum(a) - (f(x) - f(x')). Returns ``(|delta| / max(|f(x) - f(x')|, 1e-12),
    |f(x) - f(x')|)``, both float64 of shape (N,); 0 is exact, lower is better.

    Raises
    ------
    ValueError
        If ``result`` carries no delta (a method without one).
    """
    if result.delta is None:
        raise ValueError(f"Expected attributions with a completeness delta (Integrated "
                         f"Gradients), got method {result.method!r} without one.")
    delta = result.delta.double()
    total = result.values.reshape(len(result), -1).double().sum(dim=1)
    gap = (total - delta).abs()  # |f(x) - f(x')|
    return delta.abs() / gap.clamp_min(1e-12), gap


class ConstantMapWarning(UserWarning):
    """Some maps are constant over their features (all zero, typically): they rank nothing."""


def warn_constant_maps(result: Attributions) -> int:
    """Warn once, with the count and the likely causes, if some maps are constant; return it.

    A map that is the same for every feature (all zero in practice: a
    saturated output gives zero gradients, and IG's completeness check then
    passes since f(x) - f(x') = 0 too; dead units after pruning do the same)
    ranks nothing: rank agreements and complexity scores of it are undefined
    (../shared/cases/029-saturated-all-zero-maps.md).
    """
    flat = result.values.detach().reshape(len(result), -1)
    constant = (flat == flat[:, :1]).all(dim=1) & (flat.shape[1] > 1)
    count = int(constant.sum())
    if count:
        zero = int((constant & (flat[:, 0] == 0)).sum())
        tag = f" of model {result.model_tag!r}" if result.model_tag else ""
        warnings.warn(ConstantMapWarning(
            f"{count} of {len(result)} {result.method} maps{tag} are constant ({zero} all "
            f"zero): the model's output does not change with these inputs at the explained "
            f"target, likely a saturated output (e.g. a sigmoid or softmax at 0 or 1) or dead "
            f"units after pruning. Their rank-based and complexity scores are undefined (NaN)."),
            stacklevel=4)
    return count


def _warn_on_coarse_integral(result: Attributions, spec: IntegratedGradientsParams) -> None:
    """Completeness (Sundararajan et al. 2017, prop. 1): sum(a) = f(x) - f(x')."""
    relative, gap = completeness_error(result)
    median = float(relative[gap > 1e-9].median()) if bool((gap > 1e-9).any()) else 0.0
    if median > spec.delta_tolerance:
        warnings.warn(f"Integrated Gradients' median relative completeness error is "
                      f"{median:.3f} > {spec.delta_tolerance}: the path integral is coarse; "
                      f"raise n_steps (now {spec.n_steps}).", UserWarning, stacklevel=3)


def attribute_pair(dense: nn.Module, sparse: nn.Module, inputs: Tensor, *,
                   method: str = "integrated_gradients", target: Any = "predicted",
                   params: Mapping[str, Any] | Any | None = None, output: str = "logit",
                   labels: Tensor | None = None, max_rows: int = DEFAULT_MAX_ROWS,
                   device: str | torch.device | None = None,
                   tags: tuple[str, str] = ("dense", "sparse")) -> tuple[Attributions, Attributions]:
    """Attribute the same inputs on both models, with the same targets and baseline.

    ``target="predicted"`` resolves to the *dense* model's prediction, used for
    both models, so both maps answer the same question. Each result carries its
    own model's ``predictions``; ``dense.predictions != sparse.predictions``
    flags the samples where the two models disagree. Returns
    ``(dense_attributions, sparse_attributions)``.
    """
    info = ATTRIBUTION_METHODS.get(method)
    checked = _check_inputs(inputs, info) if info else check_tensor(inputs, "inputs", min_dim=2)
    targets = resolve_targets(dense, checked, target, labels=labels, max_rows=max_rows)
    kw = dict(method=method, params=params, output=output, max_rows=max_rows, device=device)
    return (attribute(dense, inputs, targets, model_tag=tags[0], **kw),
            attribute(sparse, inputs, targets, model_tag=tags[1], **kw))


def explainer(model: nn.Module, method: str = "integrated_gradients", *,
              params: Mapping[str, Any] | Any | None = None, output: str = "logit",
              max_rows: int = DEFAULT_MAX_ROWS, device: str | torch.device | None = None
              ) -> Callable[[Tensor, Tensor], Tensor]:
    """An ``explain_fn(inputs, target) -> Tensor`` for stability metrics.

    The callable maps inputs of shape (M, *F) and targets of shape (M,) to
    attribution values of shape (M, *F), with the guarantees of :func:`attribute`.
    The model's number of outputs (to check the targets) is found by one
    forward pass at the first call and reused by later calls; make a new
    explainer for a model whose output layer has changed.

    The callable's attribute ``independent_rows`` is True when a row's map
    does not depend on the other rows of the call (up to floating-point
    rounding): every method except those that draw random numbers per call
    (SmoothGrad, VarGrad, GradientSHAP, a ``"uniform"`` baseline). Stability
    metrics then explain unperturbed and perturbed inputs in one call.
    """
    spec = resolve_spec(method, params)
    memo: dict[str, int] = {}

    def explain_fn(inputs: Tensor, target: Tensor) -> Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # IG's coarse-integral warning per call
            return _attribute(model, inputs, target, method, params=spec, output=output,
                              model_tag=None, max_rows=max_rows, device=device, labels=None,
                              with_predictions=False, memo=memo).values

    explain_fn.independent_rows = not ATTRIBUTION_METHODS[method].random_per_call(spec)
    return explain_fn
