"""Baselines (reference inputs) for path, perturbation and Shapley methods.

The same baseline is used for both models of a pair. A baseline is one of
``"zero"`` or a number (a constant image), a tensor of the features' shape
(e.g. the training-set mean), ``"blur"`` (each input Gaussian-blurred over
its spatial axes, Fong & Vedaldi 2017) or ``"uniform"`` (uniform noise over
each input's own value range, seeded, drawn sample by sample).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

__all__ = ["BASELINE_KINDS", "check_baseline", "check_rows", "make_baseline",
           "rows_of"]

BASELINE_KINDS = ("zero", "blur", "uniform")


def check_baseline(baseline: object, name: str = "baseline", *,
                   blur_sigma: object = None) -> None:
    """Raise ``ValueError`` unless ``baseline`` is a number, a finite tensor or a known kind,
    and ``blur_sigma`` (when given) a finite number > 0 (a width of 0 "blurs" an input into
    itself: the baseline equals the input and every path method's map is 0)."""
    if blur_sigma is not None and (isinstance(blur_sigma, bool)
                                   or not isinstance(blur_sigma, (int, float))
                                   or not np.isfinite(blur_sigma) or blur_sigma <= 0):
        raise ValueError(f"Expected `blur_sigma` to be a finite number > 0 (pixels), got "
                         f"{blur_sigma!r}.")
    if isinstance(baseline, bool):
        raise ValueError(f"Expected `{name}` to be a number, a tensor or one of "
                         f"{BASELINE_KINDS}, got {baseline!r}.")
    if isinstance(baseline, (int, float)):
        if not np.isfinite(baseline):
            raise ValueError(f"Expected `{name}` to be finite, got {baseline!r}.")
        return
    if isinstance(baseline, Tensor):
        if not bool(torch.isfinite(baseline).all()):
            raise ValueError(f"Expected `{name}` to be finite, got NaN or Inf entries.")
        return
    if baseline not in BASELINE_KINDS:
        raise ValueError(f"Expected `{name}` to be a number, a tensor or one of "
                         f"{BASELINE_KINDS}, got {baseline!r}.")


def make_baseline(baseline: float | str | Tensor, x: Tensor, *, blur_sigma: float = 1.0,
                  generator: torch.Generator | None = None) -> Tensor | float:
    """The baseline for a chunk of inputs ``x`` of shape (N, *F).

    Returns a float (a constant baseline) or a tensor of shape (N, *F). A
    tensor baseline of shape (*F) or (1, *F) is one baseline for every input;
    one of shape (N, *F) gives each input its own (see :func:`rows_of`
    for chunks and repeated rows).

    Raises
    ------
    ValueError
        If a tensor baseline has neither the features' shape (*F), nor
        (1, *F), nor (N, *F), or ``"blur"`` is asked of inputs without spatial
        axes.
    """
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return float(baseline)
    if isinstance(baseline, Tensor):
        b = baseline.to(device=x.device, dtype=x.dtype)
        if tuple(b.shape) == tuple(x.shape[1:]):
            return b.expand_as(x).clone()
        if tuple(b.shape) in (tuple(x.shape), (1, *x.shape[1:])):
            return b.expand_as(x).clone()
        raise ValueError(f"Expected a tensor `baseline` of shape {tuple(x.shape[1:])} (one "
                         f"input), {(1, *x.shape[1:])} or {tuple(x.shape)} (one per input), "
                         f"got {tuple(baseline.shape)}.")
    if baseline == "zero":
        return 0.0
    if baseline == "blur":
        check_baseline(baseline, blur_sigma=blur_sigma)
        if x.dim() < 3:
            raise ValueError("Expected image inputs (N, C, H, W) for a 'blur' baseline, "
                             f"got shape {tuple(x.shape)}.")
        sigma = (0, 0) + (blur_sigma,) * (x.dim() - 2)
        blurred = ndimage.gaussian_filter(x.detach().cpu().double().numpy(), sigma=sigma,
                                          mode="nearest")
        return torch.from_numpy(blurred).to(dtype=x.dtype, device=x.device)
    if baseline == "uniform":
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        out = torch.empty_like(x)
        for i in range(x.shape[0]):
            low, high = x[i].min(), x[i].max()
            out[i] = low + (high - low) * torch.rand(x.shape[1:], generator=gen).to(x)
        return out
    check_baseline(baseline)
    raise AssertionError("unreachable")  # pragma: no cover


def check_rows(rows: object, m: int) -> Tensor:
    """``rows`` as a long tensor of shape (m,) of sample indices >= 0, or raise ``ValueError``."""
    if not isinstance(rows, Tensor) or rows.dtype.is_floating_point or rows.dtype == torch.bool \
            or tuple(rows.shape) != (m,) or (m and int(rows.min()) < 0):
        shown = f"shape {tuple(rows.shape)}, {rows.dtype}" if isinstance(rows, Tensor) \
            else type(rows).__name__
        raise ValueError(f"Expected `rows` to be the sample index (>= 0) of each of the {m} "
                         f"input rows: an integer tensor of shape ({m},), got {shown}.")
    return rows.long()


def rows_of(baseline: object, rows: Tensor | None, n: int, feature_dims: int,
            name: str = "baseline") -> object:
    """The part of a per-sample argument (a baseline, a feature mask) that belongs to ``rows``.

    A tensor with a batch axis and more than one row, of shape (B, *F), gives
    each sample its own value. ``rows`` (M,) holds the sample index of each
    input row: a metric that repeats, perturbs or chunks the inputs passes
    it, and the result is ``baseline[rows]`` (M, *F), so every row keeps its
    sample's value (../shared/cases/028). With ``rows=None`` the inputs are
    the samples themselves: B must equal their number ``n``. Anything else (a
    number, a kind, a tensor of shape (*F) or (1, *F), for every input) is
    returned as it is. ``name`` is the argument's name in messages.

    Raises
    ------
    ValueError
        If B differs from ``n`` (``rows`` not given), or an index in ``rows``
        is not below B.
    """
    if not isinstance(baseline, Tensor) or baseline.dim() != feature_dims + 1 \
            or baseline.shape[0] == 1:
        return baseline
    per_sample = baseline.shape[0]
    feat = tuple(baseline.shape[1:])
    if rows is None:
        if per_sample != n:
            raise ValueError(f"Expected a tensor `{name}` of shape {feat} or {(1, *feat)} (one "
                             f"for every input) or {(n, *feat)} (one per input), got "
                             f"{tuple(baseline.shape)}.")
        return baseline
    if rows.numel() and int(rows.max()) >= per_sample:
        raise ValueError(f"Expected `rows` to index the {per_sample} samples that the "
                         f"per-sample `{name}` of shape {tuple(baseline.shape)} describes, got "
                         f"sample index {int(rows.max())}.")
    return baseline[rows.to(baseline.device)]
