"""Methods that read calibration inputs: Wanda and SparseGPT.

Both see each selected layer's *inputs* on calibration data (``data``: a tensor
of inputs, ``(x, y)``, a tokenizer's mapping, or a DataLoader or any iterable of
such batches; labels are not used), collected by forward pre-hooks on the dense
copy in one pass before anything is pruned (the papers' LLM pipelines feed each block
the already-pruned outputs of the blocks before it; xprune calibrates every
layer on the dense model's activations). They prune ``nn.Linear`` weights,
``nn.Conv2d`` weights (groups=1, as a matrix on the unfolded input patches,
as SparseGPT's reference code does; N:M groups then run along the flattened
(channel, kh, kw) input) and ``nn.MultiheadAttention``'s ``in_proj_weight``
(whose query, key and value rows see the query, key and value inputs); any
other selected weight is an error that names it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.nn.utils import prune as torch_prune

from ..._batches import batches, forward
from ..._state import eval_mode
from .._core import PruningContext, _prune_n_m, register_pruning_method, targets

_CHUNK = 256  # calibration rows per forward pass


def _row_inputs(module: nn.Module, param: str, args: tuple, kwargs: dict) -> list[Tensor] | None:
    """The inputs that multiply ``param``'s rows, one per block of rows (None: not supported)."""
    if isinstance(module, nn.Linear) and param == "weight":
        return [args[0] if args else kwargs.get("input")]
    if isinstance(module, nn.Conv2d) and param == "weight" and module.groups == 1 \
            and not isinstance(module.padding, str) and module.padding_mode == "zeros":
        x = args[0] if args else kwargs.get("input")
        if x is None:
            return [None]
        cols = nn.functional.unfold(x, module.kernel_size, module.dilation, module.padding,
                                    module.stride)  # (B, C * kh * kw, L): conv = matmul
        return [cols.transpose(1, 2)]
    if isinstance(module, nn.MultiheadAttention) and param == "in_proj_weight":
        names = ("query", "key", "value")
        return [args[i] if len(args) > i else kwargs.get(n) for i, n in enumerate(names)]
    return None


@contextlib.contextmanager
def _calibration_hooks(model: nn.Module, chosen, accumulate) -> Iterator[None]:
    """Forward pre-hooks that pass every selected layer's row-block inputs to ``accumulate``;
    the fast path of ``nn.MultiheadAttention`` (which skips these modules) is off meanwhile."""
    hooks, fastpath = [], torch.backends.mha.get_fastpath_enabled()

    def hook_for(key, param):
        def hook(module, args, kwargs):
            blocks = _row_inputs(module, param, args, kwargs)
            for b, x in enumerate(blocks):
                accumulate(key, b, len(blocks), x.detach().reshape(-1, x.shape[-1]), x)
        return hook

    try:
        torch.backends.mha.set_fastpath_enabled(False)
        for key, module, param in chosen:
            hooks.append(module.register_forward_pre_hook(hook_for(key, param), with_kwargs=True))
        yield
    finally:
        for h in hooks:
            h.remove()
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _check_supported(chosen, method: str) -> None:
    bad = [key for key, module, param in chosen if _row_inputs(module, param, (None,) * 3, {})
           is None]
    if bad:
        raise ValueError(f"Pruning method {method!r} prunes nn.Linear and nn.Conv2d weights "
                         f"(groups=1, numeric padding) and attention in_proj_weight only; the "
                         f"selection also holds {bad}: pass `layers=nn.Linear` or `exclude=` "
                         "them.")


def _calibrate(model: nn.Module, chosen, data, accumulate) -> None:
    """One pass over ``data``, batch by batch (in-memory data in chunks of ``_CHUNK``): the
    hooks hand each batch's layer inputs to ``accumulate``, which keeps running sums only, so
    memory holds one batch however long the stream."""
    with eval_mode(model), torch.no_grad(), _calibration_hooks(model, chosen, accumulate):
        for inputs, _ in batches(data, batch_size=_CHUNK):
            forward(model, inputs)


def input_norms(model: nn.Module, chosen, data) -> dict[str, Tensor]:
    """Per selected weight, ||X_j||_2 of each input feature j over all calibration tokens.

    Returns ``{key: Tensor of the weight's shape}``: the norm of the input
    feature that multiplies each weight (rows of an attention ``in_proj_weight``
    take the query, key or value input's norms). float64.
    """
    sums: dict[tuple[str, int], Tensor] = {}

    def accumulate(key, block, n_blocks, x, source):
        sq = x.double().pow(2).sum(dim=0)
        sums[key, block] = sums.get((key, block), 0) + sq

    _calibrate(model, chosen, data, accumulate)
    out = {}
    for key, module, param in chosen:
        w = getattr(module, param)
        blocks = [sums[k].sqrt() for k in sorted(k for k in sums if k[0] == key)]
        rows = w.shape[0] // len(blocks)
        # one block: a broadcast view (no memory per weight); attention: the row blocks stacked
        rows_of = blocks[0].expand(rows, -1) if len(blocks) == 1 else torch.cat(
            [b.expand(rows, -1) for b in blocks])
        out[key] = rows_of.reshape(w.shape).to(w.device)
    return out


@register_pruning_method(
    "wanda", "Wanda (Sun et al. 2023): prune the lowest |W_ij| * ||X_j||_2 in each output row, "
             "from calibration inputs (`data`); option comparison='row' (paper) or 'layer'.",
    options={"comparison": "row"}, needs_data=True, supports_n_m=True)
def _wanda(model: nn.Module, amount: float, ctx: PruningContext) -> None:
    """Sun, Liu, Bair and Kolter 2023, "A Simple and Effective Pruning Approach for Large Language
    Models", eq. 1: S_ij = |W_ij| * ||X_j||_2, compared within each output row (their default)
    or across the layer (``comparison="layer"``; torchao's WandaSparsifier compares per layer
    with the squared norm)."""
    comparison = ctx.options["comparison"]
    if comparison not in ("row", "layer"):
        raise ValueError(f"Expected the option `comparison` to be 'row' or 'layer', got "
                         f"{comparison!r}.")
    chosen = targets(model, ctx)
    _check_supported(chosen, "wanda")
    norms = input_norms(model, chosen, ctx.data)
    for key, module, param in chosen:  # one layer's scores at a time
        scores = getattr(module, param).detach().abs().double() * norms.pop(key)
        if ctx.n_m is not None:
            _prune_n_m([(key, module, param)], {key: scores}, ctx.n_m)
        else:
            torch_prune.custom_from_mask(module, param, wanda_mask(scores, amount, comparison))
        del scores


def wanda_mask(scores: Tensor, amount: float, comparison: str = "row") -> Tensor:
    """Keep-mask (float 0/1) removing the lowest ``round(amount * n)`` scores of each row
    (``comparison="row"``, n = row length) or of the whole tensor (``"layer"``). Ties go to
    the lower index first."""
    flat = scores.reshape(1, -1) if comparison == "layer" else scores.reshape(scores.shape[0], -1)
    k = round(amount * flat.shape[1])
    mask = torch.ones_like(flat)
    mask.scatter_(1, flat.argsort(dim=1, stable=True)[:, :k], 0.0)
    return mask.reshape(scores.shape)


def input_hessians(model: nn.Module, chosen, data) -> dict[str, list[Tensor]]:
    """Per selected weight, one H = 2 X X^T / n (in x in, float64) per block of rows.

    Each batch's X^T X is computed in the inputs' dtype (float32 for a float32
    model, as llm-compressor does) and summed over batches in float64; layers
    that read the same input tensor in a row (query, key and value; gate and
    up) share one product.
    """
    sums: dict[tuple[str, int], list] = {}
    last: list = [None, -1, None]  # input tensor (held: its id stays unique), version, X^T X

    def accumulate(key, block, n_blocks, x, source):
        if last[0] is not source or last[1] != source._version:  # _version: in-place edits
            last[:] = [source, source._version, (x.T @ x).double()]
        entry = sums.setdefault((key, block), [0, 0])
        entry[0] = entry[0] + last[2]
        entry[1] += x.shape[0]

    _calibrate(model, chosen, data, accumulate)
    last.clear()
    return {key: [2 * sums[k][0] / sums[k][1] for k in sorted(k for k in sums if k[0] == key)]
            for key, _, _ in chosen}


def sparsegpt_layer(weight: Tensor, hessian: Tensor, amount: float | None = None, *,
                    n_m: tuple[int, int] | None = None, blocksize: int = 128,
                    dampening: float = 0.01) -> Tensor:
    """SparseGPT's layer-wise reconstruction (Frantar and Alistarh 2023, Algorithm 1).

    Parameters
    ----------
    weight : Tensor of shape (rows, columns)
        W, applied as W @ x to inputs x of length ``columns``.
    hessian : Tensor of shape (columns, columns)
        H = 2 X X^T of the calibration inputs (any positive scale).
    amount : float in [0, 1), optional
        Fraction of each block of ``blocksize`` columns to remove (the
        adaptive mask selection of Section 3.2, chosen by w^2 / [H^-1]_cc^2 on
        the partly updated weights); with ``n_m`` the N largest of every M
        columns in a row are kept instead.
    blocksize : int
        Columns per lazy batch update (B = 128 in the paper).
    dampening : float
        lambda = dampening * mean(diag(H)) added to H's diagonal (1% in the paper).

    Returns
    -------
    Tensor of shape (rows, columns), the weight's dtype
        The pruned and updated weight W': zeros where pruned; the kept weights
        are changed to compensate (the optimal brain surgeon update),
        reducing ||W X - W' X||^2.

    Raises
    ------
    torch.linalg.LinAlgError
        If H + lambda I is not positive definite (raise ``dampening``).
    """
    return _obs_prune(weight, hessian, amount, n_m, blocksize, dampening)[0]


def _obs_prune(weight, hessian, amount, n_m, blocksize, dampening) -> tuple[Tensor, Tensor]:
    """:func:`sparsegpt_layer`, also returning the keep-mask (True = kept)."""
    rows, cols = weight.shape
    w = weight.detach().double().clone()
    h = hessian.detach().double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += dampening * torch.mean(torch.diag(h)) * torch.eye(cols, dtype=h.dtype, device=h.device)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    pruned = torch.zeros_like(w, dtype=torch.bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1, hinv1 = w[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        err1 = torch.zeros_like(w1)
        mask1 = torch.zeros_like(w1, dtype=torch.bool)
        if n_m is None:
            metric = w1 ** 2 / torch.diag(hinv1).reshape(1, -1) ** 2
            k = round(amount * metric.numel())
            mask1.view(-1)[metric.reshape(-1).argsort(stable=True)[:k]] = True
        for i in range(i2 - i1):
            if n_m is not None and i % n_m[1] == 0:
                m = n_m[1]
                metric = w1[:, i:i + m] ** 2 / torch.diag(hinv1)[i:i + m].reshape(1, -1) ** 2
                drop = metric.argsort(dim=1, stable=True)[:, :m - n_m[0]]
                mask1[:, i:i + m].scatter_(1, drop, True)
            col, d = w1[:, i], hinv1[i, i]
            q = torch.where(mask1[:, i], torch.zeros_like(col), col)
            err = (col - q) / d
            w1[:, i:] -= err.unsqueeze(1) @ hinv1[i, i:].unsqueeze(0)
            w1[:, i] = q
            err1[:, i] = err
        w[:, i1:i2] = w1
        pruned[:, i1:i2] = mask1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    w[pruned] = 0.0
    return w.to(weight.dtype), ~pruned


@register_pruning_method(
    "sparsegpt", "SparseGPT (Frantar and Alistarh 2023): layer-wise optimal-brain-surgeon "
                 "reconstruction with the Hessian 2XX^T of calibration inputs (`data`); the "
                 "kept weights are updated. Options blocksize, dampening.",
    options={"blocksize": 128, "dampening": 0.01}, needs_data=True, supports_n_m=True)
def _sparsegpt(model: nn.Module, amount: float, ctx: PruningContext) -> None:
    blocksize, damp = ctx.options["blocksize"], ctx.options["dampening"]
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 1:
        raise ValueError(f"Expected the option `blocksize` to be an integer >= 1, got "
                         f"{blocksize!r}.")
    if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not damp >= 0:
        raise ValueError(f"Expected the option `dampening` >= 0, got {damp!r}.")
    chosen = targets(model, ctx)
    _check_supported(chosen, "sparsegpt")
    if ctx.n_m is not None:
        bad = [key for key, m, p in chosen if getattr(m, p).shape[1] % ctx.n_m[1]]
        if bad:
            raise ValueError(f"Cannot prune {bad} to {ctx.n_m[0]}:{ctx.n_m[1]}: the input "
                             f"dimension is not a multiple of M = {ctx.n_m[1]}.")
    hessians = input_hessians(model, chosen, ctx.data)
    for key, module, param in chosen:
        weight = getattr(module, param)
        blocks = hessians[key]
        rows = weight.shape[0] // len(blocks)
        matrix = weight.detach().reshape(weight.shape[0], -1)  # a conv's (out, C * kh * kw)
        parts = [_obs_prune(matrix[b * rows:(b + 1) * rows], h, amount, ctx.n_m, blocksize, damp)
                 for b, h in enumerate(blocks)]
        with torch.no_grad():
            weight.copy_(torch.cat([w for w, _ in parts]).reshape(weight.shape))
        torch_prune.custom_from_mask(module, param, torch.cat([k for _, k in parts]).reshape(
            weight.shape).to(weight.dtype))
