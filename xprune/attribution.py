"""The attribution layer: Captum's methods on any model, and on both halves of a pair.

No attribution maths lives here: each method is a Captum class plus a validated
parameter spec. What xprune adds is what makes a dense and a sparse map
comparable: the same inputs, the same target for both models, the model in
eval mode (restored afterwards), inputs left untouched, and a bound on the
rows any single forward pass sees, whatever ``N`` and ``n_steps`` are
(Captum's ``internal_batch_size`` alone does not bound it: a value below the
number of inputs is raised to that number).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import captum.attr
import torch
from torch import Tensor, nn

from ._state import eval_mode, model_device
from ._validation import check_positive_int, check_targets, check_tensor, closest_name

__all__ = [
    "ATTRIBUTION_METHODS",
    "AttributionMethod",
    "Attributions",
    "IntegratedGradientsParams",
    "SaliencyParams",
    "attribute",
    "attribute_pair",
    "explainer",
    "resolve_targets",
]

DEFAULT_MAX_ROWS = 4096
"""Default bound on the rows of any single forward pass during attribution."""


@dataclass(frozen=True)
class Attributions:
    """Attribution maps with their provenance.

    Attributes
    ----------
    values : Tensor of shape (N, *F)
        One map per input, the inputs' shape. Units: those of the explained
        output (logit) per unit of input for gradients; logit for IG.
    inputs : Tensor of shape (N, *F)
        The explained inputs.
    targets : Tensor of shape (N,), int64
        The explained output index per sample.
    method : str
        Name in :data:`ATTRIBUTION_METHODS`.
    params : dict
        The method's resolved parameters.
    model_tag : str or None
        Which model made the maps (``"dense"``, ``"l1_unstructured@0.90"``, ...).
    delta : Tensor of shape (N,) or None
        Integrated Gradients' convergence (completeness) delta per sample:
        sum(values) - (f(x) - f(baseline)); ``None`` for other methods.
    """

    values: Tensor
    inputs: Tensor
    targets: Tensor
    method: str
    params: Mapping[str, Any] = field(default_factory=dict)
    model_tag: str | None = None
    delta: Tensor | None = None

    def __len__(self) -> int:
        return self.values.shape[0]

    @property
    def shape(self) -> torch.Size:
        return self.values.shape


@dataclass(frozen=True)
class SaliencyParams:
    """Saliency (Simonyan et al. 2014): the gradient of the target output w.r.t. the input.

    abs : bool
        Return |gradient| (Captum's default) instead of the signed gradient.
    """

    abs: bool = True


@dataclass(frozen=True)
class IntegratedGradientsParams:
    """Integrated Gradients (Sundararajan et al. 2017, eq. 1), Captum's Riemann/Gauss-Legendre rule.

    n_steps : int >= 1
        Points of the path integral.
    baseline : float
        Constant baseline x' (0 = black image).
    integration : str
        Captum's ``method``: "gausslegendre" (default), "riemann_trapezoid", ...
    """

    n_steps: int = 50
    baseline: float = 0.0
    integration: str = "gausslegendre"

    def __post_init__(self) -> None:
        check_positive_int(self.n_steps, "n_steps")


@dataclass(frozen=True)
class AttributionMethod:
    """A registered attribution method: a Captum class, a parameter spec and the call."""

    name: str
    spec: type
    run: Callable[[nn.Module, Tensor, Tensor | None, Any, int], tuple[Tensor, Tensor | None]]
    description: str


def _run_saliency(model, inputs, target, spec: SaliencyParams, max_rows: int):
    return captum.attr.Saliency(model).attribute(inputs, target=target, abs=spec.abs), None


def _run_integrated_gradients(model, inputs, target, spec: IntegratedGradientsParams,
                              max_rows: int):
    values, delta = captum.attr.IntegratedGradients(model).attribute(
        inputs, baselines=spec.baseline, target=target, n_steps=spec.n_steps,
        method=spec.integration, internal_batch_size=max_rows, return_convergence_delta=True,
    )
    return values, delta


ATTRIBUTION_METHODS: dict[str, AttributionMethod] = {
    "saliency": AttributionMethod("saliency", SaliencyParams, _run_saliency,
                                  "Gradient of the target w.r.t. the input (Captum Saliency)."),
    "integrated_gradients": AttributionMethod(
        "integrated_gradients", IntegratedGradientsParams, _run_integrated_gradients,
        "Path integral of gradients from a baseline (Captum IntegratedGradients)."),
}


def _resolve_spec(method: str, params: Mapping[str, Any] | Any | None):
    if method not in ATTRIBUTION_METHODS:
        raise ValueError(f"Expected `method` to be one of {sorted(ATTRIBUTION_METHODS)}, "
                         f"got {method!r}." + closest_name(method, ATTRIBUTION_METHODS))
    spec_cls = ATTRIBUTION_METHODS[method].spec
    if params is None:
        return spec_cls()
    if isinstance(params, spec_cls):
        return params
    if not isinstance(params, Mapping):
        raise TypeError(f"Expected `params` to be a mapping or {spec_cls.__name__}, "
                        f"got {type(params).__name__}.")
    valid = {f.name for f in dataclasses.fields(spec_cls)}
    unknown = sorted(set(params) - valid)
    if unknown:
        raise ValueError(f"Unknown parameter(s) {unknown} for method {method!r}; "
                         f"expected some of {sorted(valid)}.")
    return spec_cls(**params)


def _rows_per_sample(spec) -> int:
    return getattr(spec, "n_steps", 1)


def resolve_targets(model: nn.Module, inputs: Tensor, target: Any, *,
                    max_rows: int = DEFAULT_MAX_ROWS) -> Tensor | None:
    """Turn a target specification into class indices of shape (N,).

    ``target`` may be ``"predicted"`` (the model's argmax on ``inputs``), an int,
    a sequence or a tensor of shape (N,), or ``None`` for a one-output model.
    """
    from .models import predict

    with torch.no_grad():
        logits = predict(model, inputs[:1])
    n_outputs = logits.shape[1] if logits.dim() > 1 else 1
    if isinstance(target, str):
        if target != "predicted":
            raise ValueError(f"Expected `target` to be 'predicted', an int or a tensor of "
                             f"class indices, got {target!r}.")
        return predict(model, inputs, batch_size=max_rows).argmax(dim=1)
    return check_targets(target, inputs.shape[0], n_outputs)


def attribute(model: nn.Module, inputs: Tensor, target: Any, method: str = "integrated_gradients",
              *, params: Mapping[str, Any] | Any | None = None, model_tag: str | None = None,
              max_rows: int = DEFAULT_MAX_ROWS, device: str | torch.device | None = None
              ) -> Attributions:
    """Attribute the target output of ``model`` to each input feature with a Captum method.

    Parameters
    ----------
    model : nn.Module
        Maps (N, *F) to (N, C). Put in eval mode during the call; every
        submodule's mode is restored afterwards, also after an error.
    inputs : Tensor of shape (N, *F)
        Left untouched (no ``requires_grad``, no ``.grad``).
    target : "predicted", int, sequence of int or Tensor of shape (N,)
        Output index to explain per sample. Required for a multi-output model.
    method : str
        A name in :data:`ATTRIBUTION_METHODS`.
    params : mapping or the method's spec dataclass, optional
        E.g. ``{"n_steps": 64}`` for IG. Unknown keys raise.
    model_tag : str, optional
        Recorded on the result (``"dense"``, ``"sparse"``, ...).
    max_rows : int
        No single forward pass sees more rows than this: inputs are split into
        chunks and Captum's ``internal_batch_size`` is set within each chunk.
    device : optional
        Run on this device. If it differs from the model's, a copy of the model
        is moved there (the caller's model stays where it is).

    Returns
    -------
    Attributions
        ``values`` of the inputs' shape on the inputs' device, ``targets``,
        and for IG the convergence delta per sample.

    Raises
    ------
    ValueError
        On NaN/Inf or empty inputs, a missing or out-of-range target, an
        unknown method or parameter.
    """
    inputs = check_tensor(inputs, "inputs", min_dim=2)
    check_positive_int(max_rows, "max_rows")
    spec = _resolve_spec(method, params)
    run_device = torch.device(device) if device is not None else model_device(model)
    if run_device != model_device(model):
        model = copy.deepcopy(model).to(run_device)
    targets = resolve_targets(model, inputs, target, max_rows=max_rows)
    runner = ATTRIBUTION_METHODS[method].run
    chunk = max(1, min(inputs.shape[0], max_rows))
    values, deltas = [], []
    with eval_mode(model):
        for start in range(0, inputs.shape[0], chunk):
            x = inputs[start:start + chunk].detach().clone().to(run_device).requires_grad_()
            t = None if targets is None else targets[start:start + chunk].to(run_device)
            v, d = runner(model, x, t, spec, max_rows)
            values.append(v.detach().to(inputs.device))
            if d is not None:
                deltas.append(d.detach().reshape(-1).to(inputs.device))
    if targets is None:
        targets = torch.zeros(inputs.shape[0], dtype=torch.long)
    return Attributions(
        values=torch.cat(values), inputs=inputs.detach(), targets=targets.cpu(), method=method,
        params=dataclasses.asdict(spec), model_tag=model_tag,
        delta=torch.cat(deltas) if deltas else None,
    )


def attribute_pair(dense: nn.Module, sparse: nn.Module, inputs: Tensor, *,
                   method: str = "integrated_gradients", target: Any = "predicted",
                   params: Mapping[str, Any] | Any | None = None,
                   max_rows: int = DEFAULT_MAX_ROWS, device: str | torch.device | None = None,
                   tags: tuple[str, str] = ("dense", "sparse")) -> tuple[Attributions, Attributions]:
    """Attribute the same inputs on both models with the same targets.

    ``target="predicted"`` resolves to the *dense* model's prediction, used for
    both models, so both maps answer the same question. Returns
    ``(dense_attributions, sparse_attributions)``.
    """
    targets = resolve_targets(dense, check_tensor(inputs, "inputs", min_dim=2), target,
                              max_rows=max_rows)
    kw = dict(method=method, params=params, max_rows=max_rows, device=device)
    return (attribute(dense, inputs, targets, model_tag=tags[0], **kw),
            attribute(sparse, inputs, targets, model_tag=tags[1], **kw))


def explainer(model: nn.Module, method: str = "integrated_gradients", *,
              params: Mapping[str, Any] | Any | None = None, max_rows: int = DEFAULT_MAX_ROWS,
              device: str | torch.device | None = None) -> Callable[[Tensor, Tensor], Tensor]:
    """An ``explain_fn(inputs, target) -> Tensor`` for stability metrics.

    The callable maps inputs of shape (M, *F) and targets of shape (M,) to
    attribution values of shape (M, *F), with the bounds of :func:`attribute`.
    """
    spec = _resolve_spec(method, params)

    def explain_fn(inputs: Tensor, target: Tensor) -> Tensor:
        return attribute(model, inputs, target, method, params=spec, max_rows=max_rows,
                         device=device).values

    return explain_fn
