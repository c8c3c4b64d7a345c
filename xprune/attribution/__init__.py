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

import contextlib
import copy
import dataclasses
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .._state import as_logits, eval_mode, model_device, model_dtype, to_model
from .._validation import check_device, check_positive_int, check_targets, check_tensor
from ..models import forward_error, layer_trace, predict
from ._baselines import BASELINE_KINDS, check_rows, make_baseline, rows_of
from ._inputs import (
    CPU_MIN_PASS_ROWS,
    CPU_PASS_BYTES,
    DEFAULT_MAX_BYTES,
    EmbeddingForward,
    ModelForward,
    ModelInputs,
    TokenOptions,
    activation_bytes_per_row,
    check_token_options,
    find_embedding,
    pad_token_id,
    structure_inputs,
    token_feature_mask,
)
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
    KernelShapParams,
    LimeParams,
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
    "DEFAULT_MAX_BYTES",
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
    "KernelShapParams",
    "LRPParams",
    "LimeParams",
    "NoiseTunnelParams",
    "OcclusionParams",
    "SaliencyParams",
    "TokenOptions",
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
        One map per input, the attributed input's shape (for token inputs
        (N, T), one value per token, 0 where ``feature_mask`` is False).
        Units: those of the explained output (``params``'s ``output``: logit
        by default) per unit of input for gradients, output units for IG,
        DeepLIFT, occlusion and LRP.
    inputs : Tensor of shape (N, *F), tuple of Tensors or dict of Tensors
        The explained inputs, in the structure they were given in (a
        tokenizer's ``BatchEncoding`` is kept as a dict). ``attributed`` is
        the one the maps explain.
    targets : Tensor of shape (N,), int64
        The explained output index per sample.
    method : str
        Name in :data:`ATTRIBUTION_METHODS`.
    params : dict
        The method's resolved parameters plus ``output`` (for token inputs,
        the ``baseline_token`` used).
    model_tag : str or None
        Which model made the maps (``"dense"``, ``"sparse"``, ...).
    delta : Tensor of shape (N,) or None
        Convergence (completeness) delta per sample, for methods that have one
        (IG, DeepLIFT, GradientSHAP, LRP): sum(values) - (f(x) - f(baseline)),
        the sum taken before masking.
    predictions : Tensor of shape (N,) or None
        The model's own predicted class for each input, so that samples where
        two models disagree can be flagged.
    feature_mask : bool Tensor of shape (N, T) or None
        For token inputs: True where a token counts, False at padding (from
        the attention mask or the pad id) and at special tokens. Metrics
        compute over the True positions only. None for other inputs.
    attribute_to : int or str or None
        Which of ``inputs`` is attributed (a position or a key); None for a
        single tensor.
    kind : str or None
        The kind of data explained, where it cannot be told from the
        inputs' shape: ``"audio"`` for spectrograms (N, C, F, T) and
        waveforms (N, C, T), which the removal metrics then take out by
        time-frequency patches or time segments
        (:func:`xprune.metrics._removal.removal_for`). None: told from the
        inputs (tabular, image or tokens).
    """

    values: Tensor
    inputs: Tensor | tuple[Tensor, ...] | Mapping[str, Tensor]
    targets: Tensor
    method: str
    params: Mapping[str, Any] = field(default_factory=dict)
    model_tag: str | None = None
    delta: Tensor | None = None
    predictions: Tensor | None = None
    feature_mask: Tensor | None = None
    attribute_to: int | str | None = None
    kind: str | None = None

    def __len__(self) -> int:
        return self.values.shape[0]

    @property
    def shape(self) -> torch.Size:
        return self.values.shape

    @property
    def attributed(self) -> Tensor:
        """The input the maps explain, shape (N, *F)."""
        if isinstance(self.inputs, Tensor):
            return self.inputs
        return self.inputs[self.attribute_to if self.attribute_to is not None else
                           (0 if isinstance(self.inputs, tuple) else next(iter(self.inputs)))]


def _describe_input(x: object) -> str:
    if isinstance(x, Tensor):
        return f"dtype {x.dtype} and shape {tuple(x.shape)}"
    return type(x).__name__


def _token_methods() -> list[str]:
    return sorted(n for n, m in ATTRIBUTION_METHODS.items() if m.tokens is not None)


def _is_tokens(main: Tensor, model: nn.Module, info: AttributionMethod) -> bool:
    """Token ids: integer inputs of a model with an embedding layer (or of a token-only method)."""
    if main.is_floating_point():
        return False
    return info.integer_inputs or any(isinstance(m, nn.Embedding) for m in model.modules())


def _check_main(main: Tensor, info: AttributionMethod, tokens: bool) -> Tensor:
    """The attributed input, checked; float-converted (as before) unless it is token ids."""
    if info.integer_inputs or tokens:
        if main.is_floating_point() or main.dim() != 2:
            want = "an integer tensor of shape (N, T)"
            raise ValueError(f"Expected `inputs` for {info.name!r} to be token ids, {want}, got "
                             f"{_describe_input(main)}.")
        if main.shape[0] == 0:
            raise ValueError("Expected `inputs` to hold at least one sample, got an empty batch.")
        if info.tokens is None:
            raise ValueError(f"Method {info.name!r} cannot explain token ids (an integer tensor "
                             f"of shape {tuple(main.shape)}): it needs floating-point inputs. "
                             f"Methods that explain tokens: {', '.join(_token_methods())}.")
        return main
    return check_tensor(main, "inputs", min_dim=2)


def resolve_targets(model: nn.Module, inputs: Tensor | tuple | Mapping, target: Any, *,
                    labels: Tensor | None = None, max_rows: int = DEFAULT_MAX_ROWS,
                    attribute_to: int | str | None = None) -> Tensor | None:
    """Turn a target policy into class indices of shape (N,).

    Parameters
    ----------
    inputs : Tensor of shape (N, *F), tuple or mapping of Tensors
        As for :func:`attribute`.
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
    structure = structure_inputs(inputs, attribute_to)
    return _resolve_targets(model, structure, target, labels=labels, max_rows=max_rows,
                            outputs=_n_outputs(model, structure))


def _logits(model: nn.Module, structure: ModelInputs, batch_size: int) -> Tensor:
    """Logits (N, C) on CPU of ``model`` on inputs of any structure, in batches, in eval mode."""
    if structure.kind == "tensor":
        return predict(model, structure.main, batch_size=batch_size)
    outs = []
    with torch.no_grad(), eval_mode(model):
        for i in range(0, len(structure), batch_size):
            part = structure.rows(i, i + batch_size).to_model(model)
            out = as_logits(part.call(model, part.main, part.others), model)
            outs.append(out.float().cpu())
    return torch.cat(outs)


def _resolve_targets(model: nn.Module, structure: ModelInputs, target: Any, *,
                     labels: Tensor | None, max_rows: int, outputs: int) -> Tensor | None:
    """:func:`resolve_targets` for a model with a known number of ``outputs``."""
    n = len(structure)
    if isinstance(target, str):
        if target == "predicted":
            return _logits(model, structure, max_rows).argmax(dim=1)
        if target == "label":
            if labels is None:
                raise ValueError("target='label' needs the true labels: pass `labels`.")
            return check_targets(labels, n, outputs, name="labels")
        raise ValueError(f"Expected `target` to be 'predicted', 'label', an int or a tensor of "
                         f"class indices, got {target!r}.")
    return check_targets(target, n, outputs)


def n_outputs(model: nn.Module, inputs: Tensor | tuple | Mapping) -> int:
    """Number of model outputs (classes), from one forward pass of one input.

    Raises
    ------
    ValueError
        If the outputs are already probabilities (see :func:`check_logit_outputs`).
    """
    return _n_outputs(model, structure_inputs(inputs))


def _n_outputs(model: nn.Module, structure: ModelInputs) -> int:
    out = _logits(model, structure.rows(0, 1), 1)
    check_logit_outputs(model, out)
    return out.shape[1] if out.dim() > 1 else 1


def _outputs_and_kind(model: nn.Module, structure: ModelInputs) -> tuple[int, bool]:
    """From one forward pass of one row: the number of outputs, and whether the forward
    returns a tensor (else a ModelOutput, tuple or mapping whose logits are read)."""
    part = structure.rows(0, 1).to_model(model)
    with torch.no_grad(), eval_mode(model), layer_trace(model) as stack:
        try:
            raw = part.call(model, part.main, part.others)
        except Exception as exc:  # noqa: BLE001 - the model's own error, named with its layer
            if isinstance(exc, RuntimeError) and "indices" in str(exc):
                raise  # float ids into an embedding: _float_ids_refused names them
            shape = tuple(part.main.shape[1:]) if isinstance(part.main, Tensor) else "?"
            raise forward_error(model, stack, exc,
                                f"Expected `model` to take `inputs` (shape {shape} per sample)"
                                ) from None
    out = as_logits(raw, model)
    check_logit_outputs(model, out)
    return (out.shape[1] if out.dim() > 1 else 1), isinstance(raw, Tensor)


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


def attribute(model: nn.Module, inputs: Tensor | tuple | Mapping, target: Any,
              method: str = "integrated_gradients", *,
              params: Mapping[str, Any] | Any | None = None, output: str = "logit",
              model_tag: str | None = None, max_rows: int = DEFAULT_MAX_ROWS,
              device: str | torch.device | None = None, labels: Tensor | None = None,
              attribute_to: int | str | None = None,
              tokens: TokenOptions | Mapping[str, Any] | None = None,
              max_bytes: int = DEFAULT_MAX_BYTES) -> Attributions:
    """Attribute the target output of ``model`` to each input feature with a Captum method.

    Parameters
    ----------
    model : nn.Module
        Maps the inputs to (N, C) logits, or to a Hugging Face ``ModelOutput``
        (its ``logits`` are explained) or a tuple (its first element). Put in
        eval mode during the call; every submodule's mode is restored
        afterwards, also after an error. No hook survives the call.
    inputs : Tensor of shape (N, *F), tuple of Tensors or mapping of Tensors
        Images (N, C, H, W), tabular rows (N, F) or token ids (N, T); or the
        positional (tuple) or keyword (mapping, e.g. a tokenizer's
        ``BatchEncoding``) arguments of the model's forward, each with N rows.
        One of them is attributed (``attribute_to``); the others pass through
        unchanged. Left untouched (no ``requires_grad``, no ``.grad``).
        Float inputs are cast to the model's dtype (maps come back in the
        inputs' floating dtype) and moved to the model's device.
        Token ids (integer inputs of a model with an ``nn.Embedding``) are
        attributed on the embedding layer's output (see :class:`TokenOptions`),
        one value per token: gradient methods on the (N, T, H) embeddings,
        summed over H (Saliency: the gradient's L2 norm, or gradient x
        embedding with ``token_score``), occlusion, LIME and KernelSHAP by
        replacing tokens with ``baseline_token``; baselines are sequences of
        ``baseline_token`` (default: the pad token).
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
    attribute_to : int or str, optional
        Which input is attributed: a position of a tuple or a key of a
        mapping (e.g. ``"input_ids"``). Default: the first.
    tokens : TokenOptions or mapping, optional
        For token ids: the embedding layer, the pad id and the special ids
        that :attr:`Attributions.feature_mask` masks.
    max_bytes : int
        Memory budget of one forward pass, in bytes of activations kept for
        the backward pass (default :data:`DEFAULT_MAX_BYTES` = 1 GiB). One
        probe pass measures the bytes a row costs
        (:func:`~xprune.attribution._inputs.activation_bytes_per_row`), and
        the rows per pass (``n_steps`` of IG included) are bounded by
        ``max_bytes`` / that, as well as by ``max_rows``; on the CPU also by
        about :data:`~xprune.attribution._inputs.CPU_PASS_BYTES` (16 MiB) of
        activations a pass, the faster size there (at least 8 rows), except
        for methods that draw random numbers per pass (SmoothGrad, VarGrad,
        GradientSHAP, LIME, KernelSHAP, a ``"uniform"`` baseline), whose
        draws follow ``max_rows`` and ``max_bytes`` alone. Deterministic
        methods' results do not depend on the passes beyond floating-point
        rounding.

    Returns
    -------
    Attributions
        ``values`` of the attributed input's shape on its device, ``targets``,
        ``predictions``, for token inputs a ``feature_mask``, and for IG,
        DeepLIFT, GradientSHAP and LRP the convergence delta per sample.

    Raises
    ------
    TypeError
        If ``inputs`` is not a tensor, a tuple or a mapping of tensors.
    ValueError
        On NaN/Inf or empty inputs, a missing or out-of-range target, an
        unknown method, parameter or output, a method that cannot explain
        token ids (the message names those that can), a layer the method
        cannot handle, or a method whose per-sample rows exceed ``max_rows``
        or the rows ``max_bytes`` allows.

    Warns
    -----
    UserWarning
        When Integrated Gradients' median relative completeness error exceeds
        its ``delta_tolerance``: raise ``n_steps``.
    """
    return _attribute(model, inputs, target, method, params=params, output=output,
                      model_tag=model_tag, max_rows=max_rows, device=device, labels=labels,
                      with_predictions=True, attribute_to=attribute_to, tokens=tokens,
                      max_bytes=max_bytes)


@contextlib.contextmanager
def _float_ids_refused(main: Tensor):
    """Turn the embedding layer's raw error on float inputs into a clear one."""
    try:
        yield
    except RuntimeError as exc:
        if "indices" in str(exc) and main.is_floating_point():
            raise ValueError(f"Expected `inputs` to be token ids (an integer tensor) for a model "
                             f"whose embedding layer reads them, got {_describe_input(main)}; "
                             f"pass the ids as integers.") from None
        raise


def _rows_per_pass(forward: nn.Module, x: Tensor, args: tuple, model: nn.Module, *,
                   max_rows: int, max_bytes: int, memo: dict | None, min_rows: int = 1,
                   cpu_cut: bool = True) -> int:
    """The rows one forward pass may hold: ``max_rows``, lowered to fit ``max_bytes``, and on
    the CPU (``cpu_cut``) to about :data:`~._inputs.CPU_PASS_BYTES` of activations (the
    faster passes there), never below ``min_rows`` (the method's rows per input) or
    :data:`~._inputs.CPU_MIN_PASS_ROWS` for that cut: only ``max_bytes`` may refuse a method.
    Methods that draw random numbers per call take no CPU cut: their draws follow the passes,
    and a seed must give the same maps on every device."""
    key = ("bytes_per_row", type(forward).__name__, tuple(x.shape[1:]))
    if memo is not None and key in memo:
        per_row = memo[key]
    else:
        per_row = activation_bytes_per_row(forward, x, args, model)
        if memo is not None:
            memo[key] = per_row
    rows = max(1, min(max_rows, max_bytes // per_row))
    if cpu_cut and model_device(model).type == "cpu":
        rows = min(rows, max(min_rows, CPU_MIN_PASS_ROWS, CPU_PASS_BYTES // per_row))
    return rows


def _per_sample_spec(spec, fields: tuple[str, ...], rows: Tensor | None, n: int,
                     feature_dims: int) -> Callable[[int, int], Any]:
    """``spec_of(start, stop)``: the spec of input rows ``start:stop``, each per-sample field
    (:attr:`AttributionMethod.per_sample`) cut to those rows' samples (``rows``, or the
    rows themselves). Shapes are checked here, once, before any chunk runs."""
    held = [f for f in fields if isinstance(getattr(spec, f), Tensor)
            and getattr(spec, f).dim() == feature_dims + 1 and getattr(spec, f).shape[0] > 1]
    for f in held:  # raises on a count of baselines that fits neither the inputs nor rows
        rows_of(getattr(spec, f), rows, n, feature_dims, f)
    if not held:
        return lambda start, stop: spec

    def spec_of(start: int, stop: int):
        index = rows[start:stop] if rows is not None else torch.arange(start, stop)
        return dataclasses.replace(spec, **{f: rows_of(getattr(spec, f), index, n,
                                                                feature_dims, f)
                                            for f in held})
    return spec_of


def _attribute(model, inputs, target, method, *, params, output, model_tag, max_rows, device,
               labels, with_predictions, attribute_to=None, tokens=None,
               max_bytes=DEFAULT_MAX_BYTES, memo: dict | None = None,
               sample_rows: Tensor | None = None) -> Attributions:
    """:func:`attribute`; ``memo``, when given, keeps the model's number of outputs and the
    bytes a row costs from one call to the next, which saves forward passes per call.
    ``sample_rows`` (N,), when given, is the sample index of each input row, which picks its
    part of per-sample arguments (see :func:`explainer`)."""
    spec = resolve_spec(method, params)
    info = ATTRIBUTION_METHODS[method]
    structure = structure_inputs(inputs, attribute_to)
    token_options = check_token_options(tokens)
    is_tokens = _is_tokens(structure.main, model, info)
    main = _check_main(structure.main, info, is_tokens)
    check_positive_int(max_rows, "max_rows")
    check_positive_int(max_bytes, "max_bytes")
    if output not in OUTPUTS:
        raise ValueError(f"Expected `output` in {OUTPUTS}, got {output!r}.")
    if device is not None:
        check_device(str(device))
    run_device = torch.device(device) if device is not None else model_device(model)
    if run_device != model_device(model):
        model = copy.deepcopy(model).to(run_device)
    structure = ModelInputs(structure.kind, structure.keys,
                            tuple(main if i == structure.index else t
                                  for i, t in enumerate(structure.tensors)), structure.index)
    if memo is not None and "outputs" in memo:
        outputs, plain = memo["outputs"], memo["plain"]
    else:
        with _float_ids_refused(main):
            outputs, returns_tensor = _outputs_and_kind(model, structure)
        plain = structure.kind == "tensor" and returns_tensor
        if memo is not None:
            memo["outputs"], memo["plain"] = outputs, plain
    if output == "probability" and outputs == 1:
        raise ValueError("Expected a model with several outputs for output='probability': the "
                         "softmax of a single output is constant, so every map would be zero. "
                         "Use output='logit'.")
    probability = output == "probability"
    if plain and not is_tokens:  # a tensor in, logits out: the model itself
        explained = ProbabilityOutput(model) if probability else model
    else:
        explained = ModelForward(model, structure, probability=probability)
    layer = None
    baseline_token = None
    if is_tokens:
        if info.tokens in ("embedding", "ids"):
            _, layer = find_embedding(model, token_options.embedding)
        if hasattr(spec, "baseline_token"):
            baseline_token = spec.baseline_token
            if baseline_token is None:
                pad = pad_token_id(model, token_options)
                baseline_token = 0 if pad is None else pad
    described = describe(spec, tokens=is_tokens)
    if baseline_token is not None:
        described["baseline_token"] = baseline_token
    embedded = EmbeddingForward(explained, layer) if layer is not None else None

    def prepared(part: ModelInputs) -> tuple[nn.Module, Tensor, tuple, Any]:
        """(forward, attributed input, pass-through args, baseline override) of a chunk."""
        part = part.to_model(model)
        x = part.main.detach().clone()
        if info.tokens == "embedding" and embedded is not None:
            with torch.no_grad():
                emb = layer(x).detach()
                base = layer(torch.full_like(x[:1], baseline_token))[0].detach() \
                    if baseline_token is not None else None
            return embedded, emb.requires_grad_(), (x, *part.others), base
        if x.is_floating_point():
            x.requires_grad_()
        return explained, x, part.others, baseline_token

    if plain and not is_tokens:  # DeepLIFT and LRP: layers they cannot explain, up front
        with eval_mode(model):
            check_model_for_method(model, method, to_model(main[:1], model))
    if sample_rows is not None:
        sample_rows = check_rows(sample_rows, len(structure))
    spec_of = _per_sample_spec(spec, tuple(f for f in info.per_sample  # ids: no baseline
                                           if not (is_tokens and f == "baseline")),
                               sample_rows, len(structure), main.dim() - 1)
    rows = info.rows_per_sample(spec)
    with eval_mode(model):
        probe_forward, probe_x, probe_args, _ = prepared(structure.rows(0, 1))
        if is_tokens and embedded is not None and info.tokens != "embedding":
            with torch.no_grad():
                emb = layer(probe_x)
            probe_forward, probe_x, probe_args = embedded, emb, (probe_x, *probe_args)
        budget_rows = _rows_per_pass(probe_forward, probe_x, probe_args, model,
                                     max_rows=max_rows, max_bytes=max_bytes, memo=memo,
                                     min_rows=rows, cpu_cut=not info.random_per_call(spec))
    targets = _resolve_targets(model, structure, target, labels=labels, max_rows=budget_rows,
                               outputs=outputs)
    if rows > max_rows:
        raise ValueError(f"Method {method!r} sends {rows} rows per input through one forward "
                         f"pass, more than `max_rows` = {max_rows}; raise max_rows.")
    if rows > budget_rows:
        raise ValueError(f"Method {method!r} sends {rows} rows per input through one forward "
                         f"pass, more than the {budget_rows} rows that `max_bytes` = {max_bytes} "
                         f"allows for this model; raise max_bytes.")
    n = len(structure)
    chunk = max(1, min(n, budget_rows // rows))
    values, deltas = [], []
    with eval_mode(model):
        for index, start in enumerate(range(0, n, chunk)):
            forward, x, args, base = prepared(structure.rows(start, start + chunk))
            t = None if targets is None else targets[start:start + chunk].to(run_device)
            v, d = info.run(forward, x, t, spec_of(start, min(n, start + chunk)),
                            Budget(budget_rows, index, tuple(args), base))
            if is_tokens and v.dim() == 3:
                v = v.norm(dim=-1) if info.token_reduction(spec) == "norm" else v.sum(dim=-1)
            dtype = (torch.promote_types(main.dtype, v.dtype) if main.is_floating_point()
                     else torch.promote_types(model_dtype(model) or v.dtype, v.dtype))
            values.append(v.detach().to(device=main.device, dtype=dtype))
            if d is not None:
                deltas.append(d.detach().reshape(-1).to(main.device))
        predictions = None
        if with_predictions:
            predictions = _logits(model, structure, budget_rows).argmax(dim=1)
    value = values[0] if len(values) == 1 else torch.cat(values)
    delta = torch.cat(deltas) if deltas else None
    fields = dict(
        inputs=structure.original(),
        targets=(targets if targets is not None
                 else torch.zeros(n, dtype=torch.long)).cpu(),
        method=method, params={**described, "output": output}, model_tag=model_tag,
        delta=delta, predictions=predictions,
        attribute_to=None if structure.kind == "tensor" else structure.attribute_to)
    if method == "integrated_gradients":  # completeness holds for the unmasked sums
        _warn_on_coarse_integral(Attributions(values=value, **fields), spec)
    feature_mask = None
    if is_tokens:
        feature_mask = token_feature_mask(structure, model, token_options)
        value = value * feature_mask.to(value.device)
    result = Attributions(values=value, feature_mask=feature_mask, **fields)
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
                      f"raise n_steps (now {spec.n_steps}).", UserWarning, stacklevel=4)


def attribute_pair(dense: nn.Module, sparse: nn.Module, inputs: Tensor | tuple | Mapping, *,
                   method: str = "integrated_gradients", target: Any = "predicted",
                   params: Mapping[str, Any] | Any | None = None, output: str = "logit",
                   labels: Tensor | None = None, max_rows: int = DEFAULT_MAX_ROWS,
                   device: str | torch.device | None = None,
                   tags: tuple[str, str] = ("dense", "sparse"),
                   attribute_to: int | str | None = None,
                   tokens: TokenOptions | Mapping[str, Any] | None = None,
                   max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[Attributions, Attributions]:
    """Attribute the same inputs on both models, with the same targets and baseline.

    ``target="predicted"`` resolves to the *dense* model's prediction, used for
    both models, so both maps answer the same question. Each result carries its
    own model's ``predictions``; ``dense.predictions != sparse.predictions``
    flags the samples where the two models disagree. Inputs and the other
    options are as for :func:`attribute`. Returns
    ``(dense_attributions, sparse_attributions)``.
    """
    info = ATTRIBUTION_METHODS.get(method)
    structure = structure_inputs(inputs, attribute_to)
    if info is not None:
        checked = _check_main(structure.main, info, _is_tokens(structure.main, dense, info))
    else:
        checked = check_tensor(structure.main, "inputs", min_dim=2)
    structure = ModelInputs(structure.kind, structure.keys,
                            tuple(checked if i == structure.index else t
                                  for i, t in enumerate(structure.tensors)), structure.index)
    targets = _resolve_targets(dense, structure, target, labels=labels, max_rows=max_rows,
                               outputs=_n_outputs(dense, structure))
    kw = dict(method=method, params=params, output=output, max_rows=max_rows, device=device,
              attribute_to=attribute_to, tokens=tokens, max_bytes=max_bytes)
    return (attribute(dense, inputs, targets, model_tag=tags[0], **kw),
            attribute(sparse, inputs, targets, model_tag=tags[1], **kw))


def _forward_args(forward_args: object, attribute_to: int | str | None) -> ModelInputs | None:
    """The explainer's per-sample other inputs, checked, as :class:`ModelInputs` whose
    attributed slot is left for the rows; None when there are none."""
    if forward_args is None:
        return None
    if isinstance(forward_args, Tensor) or not isinstance(forward_args, (tuple, list, Mapping)):
        raise TypeError(f"Expected `forward_args` to be a tuple of tensors (the positional "
                        f"arguments after the attributed input) or a mapping of tensors "
                        f"(keyword arguments), got {type(forward_args).__name__}.")
    if isinstance(forward_args, Mapping) and not isinstance(attribute_to, str):
        raise ValueError(f"Expected `attribute_to` to name the attributed keyword argument "
                         f"(e.g. 'input_ids') when `forward_args` is a mapping, got "
                         f"{attribute_to!r}.")
    if isinstance(forward_args, (tuple, list)) and attribute_to not in (None, 0):
        raise ValueError(f"Expected `attribute_to` None or 0 with a tuple of `forward_args` (the "
                         f"attributed input comes first), got {attribute_to!r}.")
    return structure_inputs(forward_args)


def _with_forward_args(inputs: object, others: ModelInputs, attribute_to, rows) -> object:
    """``inputs`` (M rows) with the rows ``rows`` (or all N, M = N) of the other inputs."""
    if not isinstance(inputs, Tensor):
        raise TypeError(f"Expected `inputs` to be the attributed tensor for an explainer made "
                        f"with `forward_args`, got {type(inputs).__name__}.")
    m, n = inputs.shape[0], len(others)
    if rows is None:
        if m != n:
            raise ValueError(f"Expected `inputs` with the {n} rows of `forward_args`, got {m}; "
                             f"pass `rows` (the sample index of each row) for other rows.")
        index = torch.arange(m)
    else:
        index = check_rows(rows, m)
        if m and int(index.max()) >= n:
            raise ValueError(f"Expected `rows` to index the {n} samples of `forward_args`, got "
                             f"sample index {int(index.max())}.")
    parts = [t[index.to(t.device)] for t in others.tensors]
    if others.kind == "mapping":
        return {attribute_to: inputs, **dict(zip(others.keys, parts, strict=True))}
    return (inputs, *parts)


def explainer(model: nn.Module, method: str = "integrated_gradients", *,
              params: Mapping[str, Any] | Any | None = None, output: str = "logit",
              max_rows: int = DEFAULT_MAX_ROWS, device: str | torch.device | None = None,
              attribute_to: int | str | None = None,
              tokens: TokenOptions | Mapping[str, Any] | None = None,
              max_bytes: int = DEFAULT_MAX_BYTES,
              forward_args: tuple | Mapping[str, Tensor] | None = None
              ) -> Callable[[Any, Tensor], Tensor]:
    """An ``explain_fn(inputs, target) -> Tensor`` for stability metrics.

    The callable maps inputs of shape (M, *F) (or a tuple or mapping of
    tensors with M rows, as for :func:`attribute`) and targets of shape (M,)
    to attribution values of shape (M, *F), with the guarantees of
    :func:`attribute`. The model's number of outputs (to check the targets)
    and the bytes a row costs are found at the first call and reused by later
    calls; make a new explainer for a model whose output layer has changed.

    Per-sample arguments (a ``baseline`` of shape (N, *F), one per input of a
    batch of N) follow their rows: ``explain_fn(inputs, target, rows=r)``
    with ``r`` (M,) the sample index (0 .. N-1) of each of the M rows gives
    row j the baseline of sample ``r[j]``. Metrics that repeat, perturb or
    chunk the inputs pass ``rows`` to every callable whose attribute
    ``per_sample_rows`` is True, as this one's is (../shared/cases/028). Without
    ``rows`` the inputs are the N samples themselves.

    ``forward_args`` holds the model's other inputs for the N samples (e.g.
    an attention mask (N, T)): a tuple of positional arguments after the
    attributed one, or a mapping of keyword arguments (``attribute_to`` then
    names the attributed one, e.g. ``"input_ids"``). ``explain_fn`` then
    takes the attributed tensor alone and adds each row's sample's other
    inputs, so a stability metric's perturbed rows keep their mask.

    The callable's attribute ``independent_rows`` is True when a row's map
    does not depend on the other rows of the call (up to floating-point
    rounding): every method except those that draw random numbers per call
    (SmoothGrad, VarGrad, GradientSHAP, LIME, KernelSHAP, a ``"uniform"``
    baseline). Stability metrics then explain unperturbed and perturbed
    inputs in one call. For token models, ``token_vocabulary`` (the embedding
    layer's ``num_embeddings``) and ``token_options`` let max- and
    avg-sensitivity substitute tokens (:func:`xprune.metrics.substitute_tokens`).
    """
    spec = resolve_spec(method, params)
    token_options = check_token_options(tokens)
    others = _forward_args(forward_args, attribute_to)
    memo: dict[Any, Any] = {}

    def explain_fn(inputs: Tensor | tuple | Mapping, target: Tensor, *,
                   rows: Tensor | None = None) -> Tensor:
        if others is not None:
            inputs = _with_forward_args(inputs, others, attribute_to, rows)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # IG's coarse-integral warning per call
            return _attribute(model, inputs, target, method, params=spec, output=output,
                              model_tag=None, max_rows=max_rows, device=device, labels=None,
                              with_predictions=False, attribute_to=attribute_to,
                              tokens=token_options, max_bytes=max_bytes, memo=memo,
                              sample_rows=rows).values

    explain_fn.per_sample_rows = True

    explain_fn.independent_rows = not ATTRIBUTION_METHODS[method].random_per_call(spec)
    # integer inputs are token ids for this model: stability metrics cannot add noise to them
    explain_fn.embeds_integer_inputs = (ATTRIBUTION_METHODS[method].integer_inputs or any(
        isinstance(m, nn.Embedding) for m in model.modules()))
    # for stability metrics that substitute tokens: the vocabulary and the ids not to draw
    explain_fn.token_options = dataclasses.replace(
        token_options, pad_token_id=pad_token_id(model, token_options))
    explain_fn.token_vocabulary = None
    if explain_fn.embeds_integer_inputs:
        try:
            layer = find_embedding(model, token_options.embedding)[1]
        except ValueError:
            layer = None
        explain_fn.token_vocabulary = getattr(layer, "num_embeddings", None)
    return explain_fn
