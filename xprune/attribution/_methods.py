"""The registered attribution methods: a Captum class, a validated parameter spec, a runner.

No attribution maths lives here. Each runner receives one chunk of inputs and
a row budget, and sets Captum's own batching knobs (``internal_batch_size``,
``nt_samples_batch_size``, ``perturbations_per_eval``) so that no forward pass
sees more than ``max_rows`` rows.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import captum.attr as ca
import numpy as np
import torch
from captum._utils.common import _run_forward
from captum._utils.models.linear_model import SkLearnRidge
from captum.attr._core import lrp as captum_lrp
from torch import Tensor, nn

from .._validation import check_positive_int
from ._baselines import check_baseline, make_baseline
from ._inputs import EmbeddingForward, ModelForward, find_embedding

__all__ = [
    "ATTRIBUTION_METHODS",
    "AttributionMethod",
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
]

Baseline = float | str | Tensor

TOKEN_SCORES = ("gradient_norm", "gradient_x_embedding")


def _check_nonneg(value: float, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"Expected `{name}` >= 0, got {value!r}.")


def _check_token(value: object, name: str = "baseline_token") -> None:
    if value is not None:
        check_positive_int(value, name, minimum=0)


@dataclass(frozen=True)
class SaliencyParams:
    """Saliency (Simonyan, Vedaldi & Zisserman 2014): the input gradient of the target.

    abs : bool
        |gradient| (Captum's default) or the signed gradient.
    token_score : {"gradient_norm", "gradient_x_embedding"}
        For token ids: the L2 norm of the gradient over the embedding
        dimension, or the gradient times the embedding summed over it
        (as ``input_x_gradient``).
    """

    abs: bool = True
    token_score: str = "gradient_norm"

    def __post_init__(self) -> None:
        if self.token_score not in TOKEN_SCORES:
            raise ValueError(f"Expected `token_score` in {TOKEN_SCORES}, got "
                             f"{self.token_score!r}.")


@dataclass(frozen=True)
class InputXGradientParams:
    """Input x gradient (Shrikumar et al. 2016). No parameters."""


@dataclass(frozen=True)
class GuidedBackpropParams:
    """Guided backpropagation (Springenberg et al. 2015). No parameters."""


@dataclass(frozen=True)
class IntegratedGradientsParams:
    """Integrated Gradients (Sundararajan, Taly & Yan 2017, eq. 1).

    n_steps : int >= 1
        Points of the path integral; at most :data:`MAX_GAUSS_LEGENDRE_STEPS`
        with "gausslegendre" (see :func:`check_ig_steps`).
    baseline : float, "zero", "blur", "uniform" or Tensor of shape (*F), (1, *F) or (N, *F)
        Reference input x' (0 = black image); a tensor of shape (N, *F) gives
        each of the N inputs its own, which follows its input through chunks
        and through the repeated rows of stability metrics. See
        :mod:`._baselines`.
    integration : str
        Captum's quadrature rule: "gausslegendre" (default), "riemann_trapezoid", ...
    blur_sigma : float > 0
        Gaussian width in pixels for ``baseline="blur"``.
    seed : int
        Seeds ``baseline="uniform"``.
    delta_tolerance : float
        Warn when the median relative completeness error
        |delta| / |f(x) - f(x')| exceeds this.
    baseline_token : int, optional
        For token ids, whose baseline is a sequence of this token's
        embedding (``baseline`` is then not used). Default: the pad token
        (see :class:`~xprune.attribution.TokenOptions`), else id 0; the id
        used is recorded in the result's ``params``.
    """

    n_steps: int = 50
    baseline: Baseline = 0.0
    integration: str = "gausslegendre"
    blur_sigma: float = 1.0
    seed: int = 0
    delta_tolerance: float = 0.05
    baseline_token: int | None = None

    def __post_init__(self) -> None:
        check_baseline(self.baseline, blur_sigma=self.blur_sigma)
        _check_token(self.baseline_token)
        if self.integration not in ("gausslegendre", "riemann_left", "riemann_right",
                                    "riemann_middle", "riemann_trapezoid"):
            raise ValueError(f"Expected `integration` to be a Captum rule such as "
                             f"'gausslegendre' or 'riemann_trapezoid', got {self.integration!r}.")
        check_ig_steps(self.n_steps, self.integration)
        _check_nonneg(self.delta_tolerance, "delta_tolerance")


# Captum's Gauss-Legendre nodes come from numpy.polynomial.legendre.leggauss(n), whose cost
# grows with n^3 and is paid twice per chunk of inputs: on an idle machine about 0.2 s at
# 1,000 steps, 1.6 s at 2,000, 15 s at 4,000 (issue 21; ../shared/cases/026-ig-steps-hang.md).
MAX_GAUSS_LEGENDRE_STEPS = 1024


def check_ig_steps(n_steps: object, integration: str = "gausslegendre") -> int:
    """Return ``n_steps`` if it is an integer >= 1 that ``integration`` computes in bounded time.

    Raises
    ------
    ValueError
        If ``n_steps`` is not an integer >= 1, or exceeds
        :data:`MAX_GAUSS_LEGENDRE_STEPS` with the Gauss-Legendre rule: the
        message names the limit and the Riemann rules, whose nodes are free.
    """
    check_positive_int(n_steps, "n_steps")
    if integration == "gausslegendre" and n_steps > MAX_GAUSS_LEGENDRE_STEPS:
        raise ValueError(
            f"Expected `n_steps` <= {MAX_GAUSS_LEGENDRE_STEPS} with integration = "
            f"'gausslegendre', got {n_steps}: Captum computes the Gauss-Legendre nodes with "
            f"numpy.polynomial.legendre.leggauss(n_steps), whose cost grows with the cube of "
            f"n_steps (1.6 s at 2,000 steps, 15 s at 4,000, twice per chunk of inputs). Set "
            f"`integration` = 'riemann_trapezoid' (nodes for free) for more steps, or lower "
            f"`n_steps`.")
    return n_steps


@dataclass(frozen=True)
class NoiseTunnelParams:
    """SmoothGrad (Smilkov et al. 2017) / VarGrad (Adebayo et al. 2018) over Saliency.

    nt_samples : int
        Noisy copies per input.
    stdevs : float
        Standard deviation of the Gaussian noise, in input units (0 = no noise).
    abs : bool
        Average |gradient| (Captum's Saliency default) or the signed gradient.
    seed : int
        Seeds the noise (Captum draws from torch's global RNG; xprune forks
        and seeds it, so the caller's RNG state is untouched).
    """

    nt_samples: int = 25
    stdevs: float = 0.15
    abs: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive_int(self.nt_samples, "nt_samples")
        _check_nonneg(self.stdevs, "stdevs")


@dataclass(frozen=True)
class GradientShapParams:
    """GradientSHAP (Lundberg & Lee 2017): expected gradients over a baseline distribution.

    n_samples : int
        Random (baseline, interpolation point) draws per input.
    stdevs : float
        Gaussian noise added to the inputs.
    baseline : float, "zero" or Tensor of shape (*F) or (B, *F)
        A tensor with a batch axis is the distribution baselines are drawn from
        (e.g. training samples).
    seed : int
    baseline_token : int, optional
        For token ids, as for Integrated Gradients.
    """

    n_samples: int = 20
    stdevs: float = 0.0
    baseline: Baseline = 0.0
    seed: int = 0
    baseline_token: int | None = None

    def __post_init__(self) -> None:
        check_positive_int(self.n_samples, "n_samples")
        _check_nonneg(self.stdevs, "stdevs")
        check_baseline(self.baseline)
        _check_token(self.baseline_token)
        if self.baseline in ("blur", "uniform"):
            raise ValueError("Expected a number or a tensor of baselines for GradientSHAP, "
                             f"got {self.baseline!r}.")


@dataclass(frozen=True)
class DeepLiftParams:
    """DeepLIFT, Rescale rule (Shrikumar, Greenside & Kundaje 2017).

    baseline, baseline_token : as for Integrated Gradients.
    """

    baseline: Baseline = 0.0
    blur_sigma: float = 1.0
    seed: int = 0
    baseline_token: int | None = None

    def __post_init__(self) -> None:
        check_baseline(self.baseline, blur_sigma=self.blur_sigma)
        _check_token(self.baseline_token)


@dataclass(frozen=True)
class OcclusionParams:
    """Occlusion (Zeiler & Fergus 2014): output drop when a sliding patch is set to the baseline.

    window : int
        Patch side in pixels (all channels together), or features for tabular
        data, or tokens.
    stride : int
    baseline : as for Integrated Gradients.
    baseline_token : int, optional
        For token ids: the id written over the occluded tokens (default: the
        pad token, else 0).
    """

    window: int = 2
    stride: int = 1
    baseline: Baseline = 0.0
    blur_sigma: float = 1.0
    seed: int = 0
    baseline_token: int | None = None

    def __post_init__(self) -> None:
        check_positive_int(self.window, "window")
        check_positive_int(self.stride, "stride")
        check_baseline(self.baseline, blur_sigma=self.blur_sigma)
        _check_token(self.baseline_token)


@dataclass(frozen=True)
class LimeParams:
    """LIME (Ribeiro, Singh & Guestrin 2016): Captum's Lime, exponential cosine kernel.

    The surrogate is a ridge regression with alpha = 1, as in the ``lime``
    package of the paper's authors (Captum's default Lasso sets every weight
    to 0 when the output moves by less than its penalty, as it does for a
    text model's logits under token removal).

    n_samples : int
        Perturbed copies per input; each keeps a random subset of the
        features (a pixel with all its channels, a column, a token) and sets
        the others to the baseline.
    baseline : float or "zero"
        The value of a removed feature.
    baseline_token : int, optional
        For token ids: the id of a removed token (default: the pad token, else 0).
    seed : int
        Seeds the draws (Captum draws from torch's global RNG; xprune forks it).
    feature_mask : integer Tensor of shape (*F), (1, *F) or (N, *F), optional
        Groups the features into interpretable features (equal ids form one
        feature, ids >= 0), Captum's ``feature_mask``; (N, *F) gives each input
        its own grouping, which follows its input through chunks and the
        repeated rows of stability metrics. Default: a pixel with all its
        channels, a column or a token is one feature.
    """

    n_samples: int = 200
    baseline: Baseline = 0.0
    seed: int = 0
    baseline_token: int | None = None
    feature_mask: Tensor | None = None

    def __post_init__(self) -> None:
        check_positive_int(self.n_samples, "n_samples")
        mask = self.feature_mask
        if mask is not None and (not isinstance(mask, Tensor) or mask.dtype.is_floating_point
                                 or mask.dtype.is_complex or mask.dtype == torch.bool
                                 or mask.dim() == 0 or (mask.numel() and int(mask.min()) < 0)):
            shown = (f"{mask.dtype} of shape {tuple(mask.shape)}" if isinstance(mask, Tensor)
                     else type(mask).__name__)
            raise ValueError(f"Expected `feature_mask` to be an integer tensor of feature ids "
                             f">= 0, of shape (*F), (1, *F) or (N, *F), got {shown}.")
        check_baseline(self.baseline)
        if isinstance(self.baseline, str) and self.baseline != "zero":
            raise ValueError(f"Expected a number or 'zero' as the baseline of LIME and "
                             f"KernelSHAP, got {self.baseline!r}.")
        _check_token(self.baseline_token)


@dataclass(frozen=True)
class KernelShapParams(LimeParams):
    """KernelSHAP (Lundberg & Lee 2017, Theorem 2): LIME with the Shapley kernel.

    Parameters as :class:`LimeParams`.
    """


@dataclass(frozen=True)
class GradCamParams:
    """Grad-CAM (Selvaraju et al. 2017) of a conv layer, upsampled bilinearly to the input.

    layer : str, optional
        Qualified name of the conv layer; default the model's last ``nn.Conv2d``.
    relu_attributions : bool
        Keep only positive evidence (the paper's ReLU).

    The (N, 1, h, w) map is upsampled to (N, 1, H, W) and spread evenly over the
    input's C channels (each gets map / C), so a pixel's channel sum is the map.
    """

    layer: str | None = None
    relu_attributions: bool = True


@dataclass(frozen=True)
class LRPParams:
    """Layer-wise relevance propagation (Bach et al. 2015), Captum's default epsilon rules.

    Runs on a copy of the model (Captum's LRP leaves state on the modules it visits).
    """


@dataclass(frozen=True)
class EmbeddingIntegratedGradientsParams:
    """Integrated Gradients on an ``nn.Embedding``'s output for token inputs (N, T).

    Captum's LayerIntegratedGradients; the per-token map is the sum over the
    embedding dimension. The baseline is a sequence of ``baseline_token`` ids.
    ``layer`` defaults to the model's ``get_input_embeddings()`` (Hugging Face
    models), else its first ``nn.Embedding``. ``"integrated_gradients"`` on
    token ids computes the same maps (with the pad token as default baseline).
    """

    n_steps: int = 50
    layer: str | None = None
    baseline_token: int = 0

    def __post_init__(self) -> None:
        check_ig_steps(self.n_steps)  # Captum's LayerIntegratedGradients: Gauss-Legendre
        check_positive_int(self.baseline_token, "baseline_token", minimum=0)


@dataclass(frozen=True)
class Budget:
    """One chunk's run: at most ``max_rows`` rows per forward pass.

    ``args`` are the inputs that pass through unchanged (Captum's
    ``additional_forward_args``): for token ids attributed in embedding space,
    the ids first. ``baseline``, when set, replaces the spec's: the baseline
    token's embeddings (T, H) or the baseline token id.
    """

    max_rows: int
    chunk_index: int
    args: tuple = ()
    baseline: Any = None

    @property
    def forward_args(self) -> tuple | None:
        return self.args or None


def _random_baseline(spec) -> bool:
    """True when the spec's baseline is drawn at random (``"uniform"``)."""
    baseline = getattr(spec, "baseline", None)
    return isinstance(baseline, str) and baseline == "uniform"


@dataclass(frozen=True)
class AttributionMethod:
    """A registered method.

    rows_per_sample(spec) bounds the rows one input adds to a forward pass
    when Captum cannot be told a batch size; inputs are chunked accordingly.
    random_per_call(spec) is True when the method draws random numbers for
    each call (noise, sampled baselines), seeded per call and chunk: a row's
    map then depends on the other rows of the call. Otherwise it depends on
    the row alone, up to floating-point rounding, which can vary with the
    number of rows.

    tokens says how the method explains token ids (N, T): ``"embedding"``
    (on the embedding layer's output, the (N, T, H) map reduced over H by
    ``token_reduction(spec)``: ``"sum"`` or the L2 ``"norm"``), ``"ids"``
    (perturbing the ids themselves with a baseline token), ``"layer"`` (a
    Captum layer method that takes the ids) or None (not applicable to tokens).

    per_sample names the spec fields that may hold one tensor per input (a
    baseline or a feature mask of shape (N, *F)): chunks and repeated rows take their samples'
    part (:func:`~xprune.attribution._baselines.rows_of`).
    GradientSHAP's (B, *F) baselines are a distribution, not per input.
    """

    name: str
    spec: type
    run: Callable[[nn.Module, Tensor, Tensor | None, Any, Budget], tuple[Tensor, Tensor | None]]
    description: str
    rows_per_sample: Callable[[Any], int] = lambda spec: 1
    integer_inputs: bool = False
    random_per_call: Callable[[Any], bool] = _random_baseline
    tokens: str | None = "embedding"
    token_reduction: Callable[[Any], str] = lambda spec: "sum"
    per_sample: tuple[str, ...] = ()


def _baseline(spec, x: Tensor, budget: Budget):
    if isinstance(budget.baseline, Tensor):  # token embeddings (T, H)
        return make_baseline(budget.baseline, x)
    if budget.baseline is not None:  # a token id
        return budget.baseline
    gen = torch.Generator().manual_seed(getattr(spec, "seed", 0) * 1_000_003
                                        + budget.chunk_index)
    return make_baseline(spec.baseline, x, blur_sigma=getattr(spec, "blur_sigma", 1.0),
                         generator=gen)


class _seeded:
    """Fork torch's and NumPy's global RNGs and seed them, for Captum code that draws from them.

    Captum's NoiseTunnel draws noise from torch's global RNG and GradientSHAP
    picks baselines with ``numpy.random``; the caller's RNG states are restored.
    """

    def __init__(self, seed: int, budget: Budget) -> None:
        self.seed = (seed * 1_000_003 + budget.chunk_index) % 2**32
        self._fork = None
        self._np_state = None

    def __enter__(self):
        self._fork = torch.random.fork_rng(devices=[])
        self._fork.__enter__()
        torch.manual_seed(self.seed)
        self._np_state = np.random.get_state()  # noqa: NPY002
        np.random.seed(self.seed)  # noqa: NPY002  Captum draws from the global NumPy RNG

    def __exit__(self, *exc):
        np.random.set_state(self._np_state)  # noqa: NPY002
        return self._fork.__exit__(*exc)


@contextlib.contextmanager
def _quiet():
    """Silence Captum's notices that it sets (and afterwards removes) hooks on activations."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting (forward, )?backward hooks")
        yield


def _summed_gradients(forward_fn: Callable, inputs: tuple[Tensor, ...], target_ind=None,
                      additional_forward_args=None) -> tuple[Tensor, ...]:
    """Captum's ``compute_gradients`` (same signature) with a single backward root.

    Captum differentiates ``torch.unbind(outputs)``: one autograd root per row,
    each with its own gradient of one, which costs time per row. The gradient
    of the sum of the selected outputs is the same tensor of ones reaching the
    same graph, so the input gradients are bit-identical (a test checks it).
    """
    with torch.autograd.set_grad_enabled(True):
        outputs = _run_forward(forward_fn, inputs, target_ind, additional_forward_args)
        if outputs[0].numel() != 1:
            raise ValueError("Expected a target for a model with several outputs: the gradient "
                             "of several outputs at once is not defined.")
        return torch.autograd.grad(outputs, inputs, grad_outputs=torch.ones_like(outputs))


def _one_root(method):
    """A Captum gradient method (Saliency, InputXGradient, IntegratedGradients,
    GuidedBackprop) computing its input gradients with :func:`_summed_gradients`."""
    method.gradient_func = _summed_gradients
    return method


def _saliency(model, x, target, spec: SaliencyParams, budget):
    if isinstance(model, EmbeddingForward) and spec.token_score == "gradient_x_embedding":
        return _input_x_gradient(model, x, target, spec, budget)
    return _one_root(ca.Saliency(model)).attribute(
        x, target=target, abs=spec.abs, additional_forward_args=budget.forward_args), None


def _input_x_gradient(model, x, target, spec, budget):
    return _one_root(ca.InputXGradient(model)).attribute(
        x, target=target, additional_forward_args=budget.forward_args), None


def _guided_backprop(model, x, target, spec, budget):
    with _quiet():
        return _one_root(ca.GuidedBackprop(model)).attribute(
            x, target=target, additional_forward_args=budget.forward_args), None


def _integrated_gradients(model, x, target, spec: IntegratedGradientsParams, budget):
    return _one_root(ca.IntegratedGradients(model)).attribute(
        x, baselines=_baseline(spec, x, budget), target=target, n_steps=spec.n_steps,
        method=spec.integration, internal_batch_size=budget.max_rows,
        return_convergence_delta=True, additional_forward_args=budget.forward_args)


def _noise_tunnel(kind: str):
    def run(model, x, target, spec: NoiseTunnelParams, budget):
        batch = max(1, min(spec.nt_samples, budget.max_rows // x.shape[0]))
        with _seeded(spec.seed, budget):
            values = ca.NoiseTunnel(_one_root(ca.Saliency(model))).attribute(
                x, nt_type=kind, nt_samples=spec.nt_samples, nt_samples_batch_size=batch,
                stdevs=float(spec.stdevs), target=target, abs=spec.abs,
                additional_forward_args=budget.forward_args)
        return values, None
    return run


def _gradient_shap(model, x, target, spec: GradientShapParams, budget):
    base = spec.baseline
    if isinstance(budget.baseline, Tensor):  # token embeddings (T, H)
        dist = budget.baseline.to(x)[None]
    elif isinstance(base, Tensor):
        dist = base.to(x) if base.dim() == x.dim() else base.to(x)[None]
        if tuple(dist.shape[1:]) != tuple(x.shape[1:]):
            raise ValueError(f"Expected GradientSHAP baselines of shape {tuple(x.shape[1:])} or "
                             f"(B, {', '.join(map(str, x.shape[1:]))}), got {tuple(base.shape)}.")
    else:
        dist = torch.full((1, *x.shape[1:]), 0.0 if base == "zero" else float(base)).to(x)
    with _seeded(spec.seed, budget), _quiet():
        values, delta = ca.GradientShap(model).attribute(
            x, baselines=dist, n_samples=spec.n_samples, stdevs=float(spec.stdevs),
            target=target, return_convergence_delta=True,
            additional_forward_args=budget.forward_args)
    # Captum returns one delta per (input, draw); report the mean per input
    return values, delta.reshape(x.shape[0], -1).mean(dim=1)


def _deeplift(model, x, target, spec: DeepLiftParams, budget):
    base = _baseline(spec, x, budget)
    if not isinstance(base, Tensor):
        base = torch.full_like(x, base)
    with _quiet():
        return ca.DeepLift(model).attribute(x, baselines=base, target=target,
                                            return_convergence_delta=True,
                                            additional_forward_args=budget.forward_args)


def _occlusion(model, x, target, spec: OcclusionParams, budget):
    spatial = tuple(x.shape[2:]) if x.dim() >= 3 else tuple(x.shape[1:])
    if any(spec.window > size for size in spatial):
        raise ValueError(f"Expected occlusion `window` ({spec.window}) to fit the input's "
                         f"spatial size {spatial}.")
    lead = (x.shape[1],) if x.dim() >= 3 else ()  # all channels of a pixel together
    values = ca.Occlusion(model).attribute(
        x, sliding_window_shapes=lead + (spec.window,) * len(spatial),
        strides=lead + (spec.stride,) * len(spatial), baselines=_baseline(spec, x, budget),
        target=target, perturbations_per_eval=max(1, budget.max_rows // x.shape[0]),
        additional_forward_args=budget.forward_args)
    return values, None


def _surrogate(cls):
    """LIME or KernelSHAP; a pixel (all channels), a column or a token is one feature."""
    def run(model, x, target, spec: LimeParams, budget):
        base = _baseline(spec, x, budget)
        mask = None
        if spec.feature_mask is not None:  # the caller's grouping, per input or for all
            mask = spec.feature_mask.to(x.device)
            if mask.dim() == x.dim() - 1:
                mask = mask.unsqueeze(0)
            if tuple(mask.shape[1:]) != tuple(x.shape[1:]) or mask.shape[0] not in (1, x.shape[0]):
                raise ValueError(f"Expected `feature_mask` of shape {tuple(x.shape[1:])}, "
                                 f"{(1, *x.shape[1:])} or {tuple(x.shape)} (one per input), got "
                                 f"{tuple(spec.feature_mask.shape)}.")
        elif x.dim() >= 3:  # one feature per position, all channels together
            positions = int(np.prod(x.shape[2:]))
            mask = torch.arange(positions, device=x.device).reshape(1, 1, *x.shape[2:])
            mask = mask.expand(1, *x.shape[1:])
        with _seeded(spec.seed, budget), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="You are providing multiple inputs")
            method = cls(model) if cls is ca.KernelShap else cls(
                model, interpretable_model=SkLearnRidge(alpha=1.0))
            values = method.attribute(
                x, baselines=base, target=target, feature_mask=mask, n_samples=spec.n_samples,
                perturbations_per_eval=max(1, min(spec.n_samples, budget.max_rows)),
                additional_forward_args=budget.forward_args)
        return values.to(torch.promote_types(values.dtype, torch.float32)), None
    return run


def _last_conv(model: nn.Module) -> str:
    convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"Grad-CAM needs a 2-D convolutional layer; {type(model).__name__} "
                         "has none (use it on CNNs only).")
    return convs[-1]


def _get_layer(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        raise ValueError(f"Expected `layer` to name a submodule of the model, got {name!r}; "
                         f"layers: {names}.") from None


def _grad_cam(model, x, target, spec: GradCamParams, budget):
    layer = _cam_layer(model, spec)
    if x.dim() != 4:
        raise ValueError(f"Grad-CAM needs image inputs (N, C, H, W), got shape {tuple(x.shape)}.")
    cam = ca.LayerGradCam(model, layer).attribute(x, target=target,
                                                  relu_attributions=spec.relu_attributions)
    up = ca.LayerAttribution.interpolate(cam, tuple(x.shape[2:]), interpolate_mode="bilinear")
    return (up / x.shape[1]).expand_as(x).contiguous(), None


def _unwrap(model: nn.Module) -> nn.Module:
    """The caller's model inside xprune's wrappers."""
    if isinstance(model, EmbeddingForward):
        model = model.inner
    return model.model if isinstance(model, (ProbabilityOutput, ModelForward)) else model


def _cam_layer(model: nn.Module, spec: GradCamParams) -> nn.Module:
    inner = _unwrap(model)
    return _get_layer(inner, spec.layer if spec.layer is not None else _last_conv(inner))


def _lrp(model, x, target, spec, budget):
    if isinstance(model, ProbabilityOutput) or getattr(model, "probability", False):
        raise ValueError("LRP explains logits only: its rules have no softmax; "
                         "use output='logit'.")
    supported = tuple(captum_lrp.SUPPORTED_LAYERS_WITH_RULES) + tuple(
        captum_lrp.SUPPORTED_NON_LINEAR_LAYERS)
    for name, module in model.named_modules():
        if not list(module.children()) and not isinstance(module, supported):
            raise ValueError(f"LRP has no rule for layer {name!r} ({type(module).__name__}); "
                             "supported: " + ", ".join(t.__name__ for t in supported) + ".")
    twin = copy.deepcopy(model)  # Captum's LRP leaves activations and rules on the modules
    values, delta = ca.LRP(twin).attribute(x, target=target, return_convergence_delta=True)
    return values, delta


def _embedding_ig(model, x, target, spec: EmbeddingIntegratedGradientsParams, budget):
    inner = _unwrap(model)
    if spec.layer is None:  # get_input_embeddings() of a Hugging Face model, else the first
        _, layer = find_embedding(inner, None)
    else:
        layer = _get_layer(inner, spec.layer)
    baseline = torch.full_like(x, spec.baseline_token)
    values, delta = ca.LayerIntegratedGradients(model, layer).attribute(
        x, baselines=baseline, target=target, n_steps=spec.n_steps,
        internal_batch_size=budget.max_rows, return_convergence_delta=True,
        additional_forward_args=budget.forward_args)
    return values.sum(dim=-1), delta


class ProbabilityOutput(nn.Module):
    """Wraps a logit model so that methods explain softmax probabilities instead."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(self.model(x), dim=1)


ATTRIBUTION_METHODS: dict[str, AttributionMethod] = {m.name: m for m in [
    AttributionMethod("saliency", SaliencyParams, _saliency,
                      "Input gradient of the target (Captum Saliency).",
                      token_reduction=lambda spec: ("norm" if spec.token_score == "gradient_norm"
                                                    else "sum")),
    AttributionMethod("input_x_gradient", InputXGradientParams, _input_x_gradient,
                      "Input times its gradient (Captum InputXGradient)."),
    AttributionMethod("integrated_gradients", IntegratedGradientsParams, _integrated_gradients,
                      "Path integral of gradients from a baseline (Captum IntegratedGradients).",
                      per_sample=("baseline",)),
    AttributionMethod("smoothgrad", NoiseTunnelParams, _noise_tunnel("smoothgrad"),
                      "Saliency averaged over noisy copies (Captum NoiseTunnel, smoothgrad).",
                      random_per_call=lambda spec: True, token_reduction=lambda spec: "norm"),
    AttributionMethod("vargrad", NoiseTunnelParams, _noise_tunnel("vargrad"),
                      "Variance of Saliency over noisy copies (Captum NoiseTunnel, vargrad).",
                      random_per_call=lambda spec: True),
    AttributionMethod("gradient_shap", GradientShapParams, _gradient_shap,
                      "Expected gradients over a baseline distribution (Captum GradientShap).",
                      rows_per_sample=lambda spec: spec.n_samples,
                      random_per_call=lambda spec: True),
    AttributionMethod("deeplift", DeepLiftParams, _deeplift,
                      "DeepLIFT Rescale rule against a baseline (Captum DeepLift).",
                      rows_per_sample=lambda spec: 2, per_sample=("baseline",)),
    AttributionMethod("guided_backprop", GuidedBackpropParams, _guided_backprop,
                      "Guided backpropagation (Captum GuidedBackprop)."),
    AttributionMethod("occlusion", OcclusionParams, _occlusion,
                      "Output drop under a sliding baseline patch (Captum Occlusion).",
                      tokens="ids", per_sample=("baseline",)),
    AttributionMethod("lime", LimeParams, _surrogate(ca.Lime),
                      "Local linear surrogate on random feature subsets (Captum Lime).",
                      random_per_call=lambda spec: True, tokens="ids",
                      per_sample=("feature_mask",)),
    AttributionMethod("kernel_shap", KernelShapParams, _surrogate(ca.KernelShap),
                      "Shapley values by weighted linear regression (Captum KernelShap).",
                      random_per_call=lambda spec: True, tokens="ids",
                      per_sample=("feature_mask",)),
    AttributionMethod("grad_cam", GradCamParams, _grad_cam,
                      "Grad-CAM of the last conv layer, upsampled to the input (Captum "
                      "LayerGradCam).", tokens=None),
    AttributionMethod("lrp", LRPParams, _lrp,
                      "Layer-wise relevance propagation, epsilon rules (Captum LRP).",
                      tokens=None),
    AttributionMethod("embedding_integrated_gradients", EmbeddingIntegratedGradientsParams,
                      _embedding_ig,
                      "Integrated Gradients on an embedding layer, per token (Captum "
                      "LayerIntegratedGradients).", integer_inputs=True, tokens="layer"),
]}


def resolve_spec(method: str, params: Any):
    """The method's spec from ``None``, a mapping of its fields, or the spec itself."""
    from .._validation import closest_name

    if method not in ATTRIBUTION_METHODS:
        raise ValueError(f"Expected `method` to be one of {sorted(ATTRIBUTION_METHODS)}, "
                         f"got {method!r}." + closest_name(method, ATTRIBUTION_METHODS))
    spec_cls = ATTRIBUTION_METHODS[method].spec
    if params is None:
        return spec_cls()
    if isinstance(params, spec_cls):
        return params
    if not isinstance(params, dict) and not hasattr(params, "keys"):
        raise TypeError(f"Expected `params` to be a mapping or {spec_cls.__name__}, "
                        f"got {type(params).__name__}.")
    valid = {f.name for f in dataclasses.fields(spec_cls)}
    unknown = sorted(set(params) - valid)
    if unknown:
        raise ValueError(f"Unknown parameter(s) {unknown} for method {method!r}; "
                         f"expected some of {sorted(valid)}.")
    return spec_cls(**dict(params))


TOKEN_FIELDS = ("baseline_token", "token_score")
"""Spec fields that apply to token ids only: left out of the description of other inputs."""


def describe(spec, *, tokens: bool = False) -> dict[str, Any]:
    """The spec as plain data: tensors are replaced by a short description.

    The token-only fields (:data:`TOKEN_FIELDS`) are described for token inputs only.
    """
    out = {}
    for f in dataclasses.fields(spec):
        if f.name in TOKEN_FIELDS and not tokens:
            continue
        value = getattr(spec, f.name)
        out[f.name] = (f"tensor{tuple(value.shape)}" if isinstance(value, Tensor) else value)
    return out

