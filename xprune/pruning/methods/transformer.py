"""Transformer structure: attention heads and whole blocks.

Torch-Pruning's dependency graph cannot trace Hugging Face attention (its
reshapes into heads are not channel operations), so transformers are pruned
here along their own units (../shared/cases/016):

* ``attention_heads`` removes whole heads, ranked by the magnitude of their
  query/key/value/output weights, by a first-order Taylor estimate of the
  loss change (Michel, Levy and Neubig 2019, "Are Sixteen Heads Really Better
  than One?", eq. 2), or by integrated gradients of the loss along head gates. Heads of BERT-style (``query``/``key``/``value`` +
  ``output.dense``) and GPT-2-style (fused ``c_attn`` + ``c_proj``) attention are
  physically removed (transformers 5 dropped ``PreTrainedModel.prune_heads``;
  the slicing uses its ``prune_linear_layer``); heads of
  ``nn.MultiheadAttention`` (``nn.TransformerEncoderLayer``), whose width is
  fixed, are masked: their in-projection rows and out-projection columns become
  zero, which removes their contribution exactly.
* ``layer_removal`` drops whole blocks of an ``nn.ModuleList`` of identical
  blocks (``bert.encoder.layer``, ``transformer.h``), those whose output is most
  similar to their input on calibration data: block influence
  ``BI = 1 - mean_t cos(x_t, y_t)`` (Men et al. 2024, "ShortGPT: Layers in Large
  Language Models are More Redundant Than You Expect", eq. 1; Gromov et al. 2024,
  "The Unreasonable Ineffectiveness of the Deeper Layers", use the angular
  distance of the same representations).

The dense model is never touched: everything happens on ``prune``'s copy.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ..._batches import batches, forward, n_samples, slice_rows
from ..._state import as_logits, eval_mode
from .._core import ModelPair, PruningContext, register_pruning_method
from ._attention import _head_index, _head_sites, _HeadSite, _join, _Part

# --- attention heads ----------------------------------------------------------------------


def _param(model: nn.Module, part: _Part) -> Tensor:
    return getattr(model.get_submodule(part.module), part.param)


def _magnitude_scores(model: nn.Module, site: _HeadSite) -> Tensor:
    """L2 norm of each head's query, key, value and output-projection weights, shape (H,)."""
    sq = torch.zeros(site.n_heads, dtype=torch.float64)
    for part in site.parts:
        if not part.param.endswith("weight"):
            continue
        w = _param(model, part).detach()
        for h in range(site.n_heads):
            sq[h] += w.index_select(part.dim, _head_index(site, part, [h]).to(w.device)) \
                .double().pow(2).sum().cpu()
    return sq.sqrt()


def _loss(model: nn.Module, inputs, y: Tensor | None) -> Tensor:
    """Mean cross-entropy of the model's logits: (N, C) against labels (N,), or per token
    (N, T, V) against labels (N, T) (entries -100 ignored, as Hugging Face does). ``inputs``:
    a tensor or a mapping of tensors (a tokenizer's output, passed as keyword arguments)."""
    if y is None:
        raise ValueError("Expected labels with the data for head importance (criterion "
                         "'taylor' or 'integrated_gradients'): pass (inputs, labels) batches.")
    logits = as_logits(forward(model, inputs), model)
    y = y.to(logits.device)
    if logits.dim() == 3 and y.dim() == 2:
        return nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=-100)
    return nn.functional.cross_entropy(logits, y)


def _samples(data):
    """Every sample of ``data`` (in memory, or a DataLoader / stream read one batch at a time)
    as ``(inputs, labels)`` of one row each."""
    for inputs, labels in batches(data, argument="data"):
        for i in range(n_samples(inputs)):
            yield slice_rows(inputs, i, i + 1), None if labels is None else labels[i:i + 1]


def _taylor_scores(model: nn.Module, sites: list[_HeadSite], data) -> dict[str, Tensor]:
    """Michel et al. 2019, eq. 2: I_h = mean over samples of |dL/dxi_h|, xi_h a gate on head h.

    The gate multiplies the head's context vectors, which the output projection
    reads through the head's columns W_O[:, h]; so dL/dxi_h equals
    ``sum(dL/dW_O[:, h] * W_O[:, h])``, the gradient x weight of the head's slice of
    the output projection, evaluated one sample at a time (N backward passes, eval mode).
    ``data``: ``(inputs, labels)`` in memory, or a DataLoader / iterable of batches read
    once, one batch at a time.
    """
    outs = {s.name: next(p for p in s.parts if p.output) for s in sites}
    params = [_param(model, outs[s.name]) for s in sites]
    totals = {s.name: torch.zeros(s.n_heads, dtype=torch.float64) for s in sites}
    count = 0
    with eval_mode(model), torch.enable_grad():
        for inputs, y in _samples(data):
            grads = torch.autograd.grad(_loss(model, inputs, y), params)
            count += 1
            for s, w, g in zip(sites, params, grads, strict=True):
                gw = (g * w).detach()
                part = outs[s.name]
                for h in range(s.n_heads):
                    idx = _head_index(s, part, [h]).to(gw.device)
                    totals[s.name][h] += float(gw.index_select(part.dim, idx).sum().abs())
    return {name: t / count for name, t in totals.items()}


def head_integrated_gradients(model: nn.Module, sites: list[_HeadSite], x, y: Tensor | None = None,
                              *, steps: int = 16) -> dict[str, Tensor]:
    """Integrated gradients of each sample's loss with respect to head gates (signed).

    Every head h of ``sites`` gets a gate xi_h on its context vectors (realised
    by scaling its columns of the output projection); all gates move together
    from 0 (every head off) to 1 (the model). Attribution of head h for sample
    i: ``IG_ih = mean over the midpoints a of dL_i/dxi_h at xi = a`` (Sundararajan,
    Taly and Yan 2017, "Axiomatic Attribution for Deep Networks", eq. 3, midpoint
    rule with ``steps`` points), so that ``sum_h IG_ih`` approximates
    ``L_i(all heads on) - L_i(all heads of the sites off)`` (completeness).

    ``x, y``: inputs (N, ...) and labels (N,) or (N, T) in memory; or ``x`` a
    DataLoader / iterable of ``(inputs, labels)`` batches and ``y`` None, read
    once, one batch at a time.

    Returns
    -------
    dict from site name to Tensor of shape (N, H), float64. ``steps * N``
    backward passes in eval mode; ``model`` is restored.
    """
    outs = {s.name: next(p for p in s.parts if p.output) for s in sites}
    params = [_param(model, outs[s.name]) for s in sites]
    dense = [w.detach().clone() for w in params]
    rows: dict[str, list[Tensor]] = {s.name: [] for s in sites}
    try:
        with eval_mode(model), torch.enable_grad():
            for inputs, labels in _samples(x if y is None else (x, y)):
                attr = {s.name: torch.zeros(s.n_heads, dtype=torch.float64) for s in sites}
                for step in range(steps):
                    alpha = (step + 0.5) / steps
                    with torch.no_grad():
                        for w, w0 in zip(params, dense, strict=True):
                            w.copy_(alpha * w0)
                    grads = torch.autograd.grad(_loss(model, inputs, labels), params)
                    for s, w0, g in zip(sites, dense, grads, strict=True):
                        gw, part = (g * w0).detach(), outs[s.name]
                        for h in range(s.n_heads):
                            idx = _head_index(s, part, [h]).to(gw.device)
                            attr[s.name][h] += float(gw.index_select(part.dim, idx).sum()) \
                                / steps
                for name, a in attr.items():
                    rows[name].append(a)
    finally:
        with torch.no_grad():
            for w, w0 in zip(params, dense, strict=True):
                w.copy_(w0)
    return {name: torch.stack(r) for name, r in rows.items()}


def _heads_to_remove(scores: dict[str, Tensor], sites: list[_HeadSite], amount: float,
                     ctx: PruningContext) -> dict[str, list[int]]:
    """Lowest-scoring heads: ``round(amount * H)`` per module (scope="layer") or
    ``round(amount * total)`` over all modules ranked together (scope="global", scores divided
    by each module's L2 norm if ``normalise="l2"``, as Michel et al. do). Every module keeps at
    least one head and at most ``max_layer_sparsity`` of its heads go."""
    cap = ctx.max_layer_sparsity
    limit = {s.name: min(s.n_heads - 1, int(cap * s.n_heads + 1e-9) if cap is not None
                         else s.n_heads) for s in sites}
    if ctx.scope == "layer":
        return {s.name: scores[s.name].argsort(stable=True)[
            :min(round(amount * s.n_heads), limit[s.name])].sort().values.tolist()
            for s in sites}
    ranked = []  # (normalised score, module order, head): ties go to the earlier module
    for order, s in enumerate(sites):
        v = scores[s.name].double()
        if ctx.options["normalise"] == "l2" and float(v.norm()) > 0:
            v = v / v.norm()
        ranked += [(float(v[h]), order, s.name, h) for h in range(s.n_heads)]
    n = round(amount * sum(s.n_heads for s in sites))
    chosen: dict[str, list[int]] = {s.name: [] for s in sites}
    for _, _, name, h in sorted(ranked):
        if sum(map(len, chosen.values())) == n:
            break
        if len(chosen[name]) < limit[name]:
            chosen[name].append(h)
    return {k: sorted(v) for k, v in chosen.items()}


def _zero_heads(model: nn.Module, site: _HeadSite, heads: list[int]) -> None:
    """Set the heads' query/key/value rows (and biases) and output-projection columns to zero."""
    with torch.no_grad():
        for part in site.parts:
            t = _param(model, part)
            t.index_fill_(part.dim, _head_index(site, part, heads).to(t.device), 0.0)


def _remove_heads(model: nn.Module, site: _HeadSite, heads: list[int]) -> None:
    """Physically remove ``heads`` from a BERT- or GPT-2-style attention module of ``model``."""
    from transformers.pytorch_utils import prune_linear_layer

    keep_heads = [h for h in range(site.n_heads) if h not in set(heads)]
    for part in site.parts:
        if part.param == "bias" and site.kind == "bert":
            continue  # prune_linear_layer slices the bias with the weight
        module = model.get_submodule(part.module)
        keep = _head_index(site, part, keep_heads)
        if isinstance(module, nn.Linear):
            parent, _, attr = part.module.rpartition(".")
            setattr(model.get_submodule(parent), attr,
                    prune_linear_layer(module, keep, dim=part.dim))
        else:  # Hugging Face Conv1D: y = x @ W + b, W of shape (in, out)
            old = getattr(module, part.param)
            setattr(module, part.param, nn.Parameter(old.detach().index_select(
                part.dim, keep.to(old.device)).clone(), requires_grad=old.requires_grad))
            if part.param == "weight" and part.dim == 1:
                module.nf = len(keep)
    attn = model.get_submodule(site.name)
    if site.kind == "bert":
        attn.self.num_attention_heads = len(keep_heads)
        attn.self.all_head_size = len(keep_heads) * site.head_dim
    else:
        attn.num_heads = len(keep_heads)
        attn.split_size = attn.embed_dim = len(keep_heads) * site.head_dim


HEAD_CRITERIA = ("magnitude", "taylor", "integrated_gradients")


@register_pruning_method(
    "attention_heads", "Remove whole attention heads by magnitude, Taylor (Michel et al. 2019) or "
                       "integrated-gradients importance (the last two need `data`); Hugging Face "
                       "BERT/GPT-2 heads physically, nn.MultiheadAttention heads by masks. "
                       "`amount` = fraction of heads.",
    options={"criterion": "magnitude", "normalise": "l2"}, ranks_weights=True,
    amount_optional=False)
def _attention_heads(model: nn.Module, amount: float, ctx: PruningContext) -> ModelPair:
    """Remove ``round(amount * heads)`` attention heads of the selected attention modules.

    A module is selected when ``prune(layers=, exclude=)`` selects one of its
    weight matrices. Options: ``criterion`` in :data:`HEAD_CRITERIA`
    (``"taylor"``, Michel et al.'s gate derivative, and ``"integrated_gradients"``,
    the mean |attribution| of :func:`head_integrated_gradients`, need
    ``data=(inputs, labels)``: class labels (N,) or token labels (N, T));
    ``normalise`` (``"l2"`` or None) for the global ranking.
    The pair's ``params["heads_removed"]`` maps each attention module to the
    removed heads' indices (dense-model numbering); its sparsity is measured
    (removed weights count as zeros). Physically pruned pairs carry a masked
    ``twin`` (the dense architecture with the heads' weights zeroed, same outputs).

    Raises
    ------
    ValueError
        If no selected module has heads this method can remove, on an unknown
        criterion, or for ``"taylor"`` without data.
    """
    criterion, norm = ctx.options["criterion"], ctx.options["normalise"]
    if criterion not in HEAD_CRITERIA:
        raise ValueError(f"Expected the option `criterion` to be one of {list(HEAD_CRITERIA)}, "
                         f"got {criterion!r}.")
    if norm not in (None, "l2"):
        raise ValueError(f"Expected the option `normalise` to be 'l2' or None, got {norm!r}.")
    if criterion != "magnitude" and ctx.data is None:
        raise ValueError(f"Head importance criterion {criterion!r} needs a reference batch: pass "
                         "`data=(inputs, labels)`.")
    chosen = set(ctx.targets)
    sites = [s for s in _head_sites(model) if not chosen or chosen & set(s.keys)]
    if not sites:
        raise ValueError(
            f"Pruning method 'attention_heads' found no attention module among the selected "
            f"layers of {type(model).__name__}: it removes heads of Hugging Face BERT-style "
            "(query/key/value + output.dense) or GPT-2-style (c_attn + c_proj) attention and of "
            "nn.MultiheadAttention. For other layers use method='structured' (CNNs, MLPs) or "
            "an unstructured method.")
    if criterion == "magnitude":
        scores = {s.name: _magnitude_scores(model, s) for s in sites}
    elif criterion == "taylor":
        scores = _taylor_scores(model, sites, ctx.data)
    else:  # mean absolute attribution over the samples
        scores = {name: a.abs().mean(dim=0) for name, a in
                  head_integrated_gradients(model, sites, ctx.data).items()}
    removed = _heads_to_remove(scores, sites, amount, ctx)
    twin = copy.deepcopy(model)
    for s in sites:
        if removed[s.name]:
            _zero_heads(twin, s, removed[s.name])
    physical = any(s.kind != "mha" and removed[s.name] for s in sites)
    for s in sites:
        if not removed[s.name]:
            continue
        if s.kind == "mha":
            _zero_heads(model, s, removed[s.name])
        else:
            _remove_heads(model, s, removed[s.name])
    masks = {key: twin.get_parameter(key).detach() != 0 for s in sites for key in s.keys}
    params = {"structured": physical, "criterion": criterion,
              "heads_removed": {s.name: removed[s.name] for s in sites},
              "heads_total": sum(s.n_heads for s in sites),
              "head_scores": {s.name: [float(v) for v in scores[s.name]] for s in sites}}
    if physical:
        return ModelPair(dense=model, sparse=model, method="attention_heads", amount=amount,
                         params=params, twin=twin, twin_masks=masks)
    return ModelPair(dense=model, sparse=model, method="attention_heads", amount=amount,
                     masks=masks, params=params)


# --- whole blocks -------------------------------------------------------------------------


def _block_lists(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """Every ``nn.ModuleList`` of two or more blocks of one class with parameters (the layer
    stacks of BERT, GPT-2, Llama and ``nn.TransformerEncoder``), outermost first."""
    out = []
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) >= 2 \
                and len({type(b) for b in m}) == 1 and any(True for _ in m[0].parameters()):
            if not any(name.startswith(outer + ".") for outer, _ in out):
                out.append((name, m))
    return out


def _hidden(value) -> Tensor | None:
    """The hidden states in a block's input or output (a tensor, or the first of a tuple)."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], Tensor):
        return value[0]
    return None


def _add_cosines(sums: dict[str, list[float]], name: str, x: Tensor, y: Tensor) -> None:
    """Add the per-position cosines of hidden states ``x`` and ``y`` to ``sums[name]``
    (a running [sum, count])."""
    cos = nn.functional.cosine_similarity(x.double().flatten(0, -2), y.double().flatten(0, -2),
                                          dim=-1)
    sums[name][0] += float(cos.sum())
    sums[name][1] += cos.numel()


def _influence(model: nn.Module, data, hooks: list, sums: dict[str, list[float]]
               ) -> dict[str, float]:
    """Run the calibration inputs through ``model`` (eval mode, no gradients) with ``hooks``
    (which fill ``sums`` through :func:`_add_cosines`), remove them, and return
    ``1 - mean cosine`` per name. ``data``: in-memory ``(inputs, labels)`` (one pass) or a
    stream of batches (labels unused)."""
    try:
        with eval_mode(model), torch.no_grad():
            for inputs, _ in batches(data, batch_size=1 << 30):
                forward(model, inputs)
    finally:
        for h in hooks:
            h.remove()
    return {n: 1.0 - total / count for n, (total, count) in sums.items()}


def block_influence(model: nn.Module, blocks: list[tuple[str, nn.Module]], data) -> dict[str,
                                                                                         float]:
    """Block influence of each block on calibration inputs (Men et al. 2024, eq. 1).

    ``BI = 1 - mean over tokens of cos(x, y)``, with ``x`` the block's input
    hidden states and ``y`` its output, of shape (N, T, D) or (N, D); in
    [0, 2], higher = the block changes its input more (more important).
    Computed in eval mode, without gradients, on the inputs of ``data`` (labels unused).
    """
    sums: dict[str, list[float]] = {name: [0.0, 0] for name, _ in blocks}

    def hook_for(name):
        def hook(module, args, kwargs, output):
            x = _hidden(args) if args else kwargs.get("hidden_states")
            y = _hidden(output)
            if x is None or y is None or x.shape != y.shape:
                raise ValueError(f"Block {name!r} does not map hidden states to hidden states of "
                                 "the same shape; its influence is undefined.")
            _add_cosines(sums, name, x, y)
        return hook

    hooks = [b.register_forward_hook(hook_for(n), with_kwargs=True) for n, b in blocks]
    return _influence(model, data, hooks, sums)


class SkippedAttention(nn.Module):
    """Stands in for a removed attention sublayer: the residual stream passes unchanged.

    ``residual_outside=False`` (BERT, whose attention module adds its input and
    normalises): returns its input. ``True`` (GPT-2, whose block adds the
    attention output to the residual): returns zeros. Either way the second
    output (attention weights) is None, as Hugging Face's blocks unpack it.
    """

    def __init__(self, residual_outside: bool):
        super().__init__()
        self.residual_outside = residual_outside

    def forward(self, hidden_states: Tensor, *args, **kwargs) -> tuple[Tensor, None]:
        if self.residual_outside:
            return torch.zeros_like(hidden_states), None
        return hidden_states, None


def _attention_units(lists, chosen: set[str]) -> list[tuple[str, nn.Module, bool]]:
    """(name, module, residual_outside) of the BERT/GPT-2 attention sublayer of every block."""
    units = []
    for name, blocks in lists:
        for i, block in enumerate(blocks):
            prefix = _join(name, str(i))
            for site in _head_sites(block):
                if site.kind == "mha" or (chosen and not chosen & {_join(prefix, k)
                                                                   for k in site.keys}):
                    continue
                units.append((_join(prefix, site.name), block.get_submodule(site.name),
                              site.kind == "gpt2"))
    return units


def attention_influence(model: nn.Module, units, data) -> dict[str, float]:
    """``1 - mean_t cos(x_t, y_t)`` of each attention sublayer (He et al. 2024, "What Matters in
    Transformers? Not All Attention is Needed", eq. 2): ``x`` the residual stream before the
    sublayer, ``y`` after it (``x + attention output`` where the block adds the residual,
    the attention module's output where it adds it itself, as BERT does). In [0, 2]."""
    sums: dict[str, list[float]] = {name: [0.0, 0] for name, _, _ in units}
    owners = {name: name.rpartition(".")[0] for name, _, outside in units if outside}
    stream: dict[str, Tensor] = {}

    def pre(name):
        def hook(module, args, kwargs):
            stream[name] = _hidden(args) if args else kwargs.get("hidden_states")
        return hook

    def post(name, outside):
        def hook(module, args, kwargs, output):
            x = stream[name] if outside else (_hidden(args) if args else
                                              kwargs.get("hidden_states"))
            _add_cosines(sums, name, x, x + _hidden(output) if outside else _hidden(output))
        return hook

    hooks = [model.get_submodule(owners[n]).register_forward_pre_hook(pre(n), with_kwargs=True)
             for n in owners]
    hooks += [m.register_forward_hook(post(n, outside), with_kwargs=True)
              for n, m, outside in units]
    return _influence(model, data, hooks, sums)


@register_pruning_method(
    "layer_removal", "Drop whole transformer blocks (an nn.ModuleList of identical blocks) with "
                     "the lowest block influence 1 - cos(input, output) on calibration data "
                     "(Men et al. 2024, ShortGPT). `amount` = fraction of blocks.",
    options={"n_layers": None, "unit": "block"}, needs_data=True, amount_optional=True)
def _layer_removal(model: nn.Module, amount: float | None, ctx: PruningContext) -> ModelPair:
    """Remove ``round(amount * blocks)`` blocks (or the option ``n_layers``) of the selected
    block lists, lowest block influence first (:func:`block_influence`, ties: later block first).
    With the option ``unit="attention"`` the blocks stay and their attention sublayers
    (BERT-, GPT-2-style) go instead, lowest :func:`attention_influence` first: each is
    replaced by :class:`SkippedAttention`, so the residual stream passes it unchanged.

    A block is a candidate when ``prune(layers=, exclude=)`` selects one of its
    weight matrices; at least one block of every list stays. The model's
    ``config.num_hidden_layers`` (if any) and the blocks' ``layer_idx`` (Hugging
    Face's key-value cache index) are renumbered, so ``generate`` still works. ``params`` record
    ``layers_removed`` (qualified block names) and ``block_influence``.

    Raises
    ------
    ValueError
        If the model has no list of identical blocks among the selected
        layers, or both or neither of ``amount`` and ``n_layers`` are given.
    """
    n_layers = ctx.options["n_layers"]
    if (amount is None) == (n_layers is None):
        raise ValueError("Layer removal takes exactly one of `amount` (fraction of blocks) and "
                         "the option `n_layers`.")
    if n_layers is not None and (isinstance(n_layers, bool) or not isinstance(n_layers, int)
                                 or n_layers < 0):
        raise ValueError(f"Expected the option `n_layers` to be a non-negative integer, got "
                         f"{n_layers!r}.")
    unit = ctx.options["unit"]
    if unit not in ("block", "attention"):
        raise ValueError(f"Expected the option `unit` to be 'block' or 'attention', got {unit!r}.")
    chosen = set(ctx.targets)
    lists = _block_lists(model)
    if unit == "attention":
        return _drop_attention(model, amount, n_layers, lists, chosen, ctx.data)
    candidates = [(_join(name, str(i)), b) for name, blocks in lists for i, b in enumerate(blocks)
                  if not chosen or any(k.startswith(_join(name, str(i)) + ".") for k in chosen)]
    if not candidates:
        raise ValueError(
            f"Pruning method 'layer_removal' found no list of identical blocks (nn.ModuleList, "
            f"as in bert.encoder.layer or transformer.h) among the selected layers of "
            f"{type(model).__name__}; use method='structured' for CNNs and MLPs.")
    influence = block_influence(model, candidates, ctx.data)
    n = n_layers if n_layers is not None else round(amount * len(candidates))
    per_list = {name: len(blocks) for name, blocks in lists}
    order = sorted(range(len(candidates)), key=lambda i: (influence[candidates[i][0]], -i))
    drop: list[str] = []
    for i in order:
        if len(drop) == n:
            break
        owner = candidates[i][0].rpartition(".")[0]
        if per_list[owner] > 1:
            drop.append(candidates[i][0])
            per_list[owner] -= 1
    if len(drop) < n:
        raise ValueError(f"Expected at most {len(drop)} blocks to remove (every block list keeps "
                         f"one), got {n}.")
    for name, blocks in lists:
        kept = [b for i, b in enumerate(blocks) if _join(name, str(i)) not in drop]
        if len(kept) < len(blocks):
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, nn.ModuleList(kept))
            for j, block in enumerate(kept):  # Hugging Face caches are indexed by layer_idx
                for sub in block.modules():
                    if isinstance(getattr(sub, "layer_idx", None), int):
                        sub.layer_idx = j
    config = getattr(model, "config", None)
    if len(lists) == 1 and config is not None and hasattr(config, "num_hidden_layers"):
        config.num_hidden_layers = len(lists[0][1]) - len(drop)
    if len(lists) == 1 and isinstance(getattr(model.get_submodule(lists[0][0].rpartition(".")[0]),
                                              "num_layers", None), int):
        model.get_submodule(lists[0][0].rpartition(".")[0]).num_layers -= len(drop)
    order_drop = [c for c, _ in candidates if c in drop]
    return ModelPair(dense=model, sparse=model, method="layer_removal",
                     amount=amount if amount is not None else len(drop) / len(candidates),
                     params={"structured": True, "layers_removed": order_drop,
                             "block_influence": influence})


def _drop_attention(model: nn.Module, amount, n_layers, lists, chosen, data) -> ModelPair:
    """Replace the lowest-influence attention sublayers by :class:`SkippedAttention`."""
    units = _attention_units(lists, chosen)
    if not units:
        raise ValueError(
            f"Pruning method 'layer_removal' with unit='attention' found no BERT- or GPT-2-style "
            f"attention sublayer in the selected blocks of {type(model).__name__}; "
            "unit='block' drops whole blocks.")
    influence = attention_influence(model, units, data)
    n = n_layers if n_layers is not None else round(amount * len(units))
    if n > len(units):
        raise ValueError(f"Expected at most {len(units)} attention sublayers to remove, got {n}.")
    order = sorted(range(len(units)), key=lambda i: (influence[units[i][0]], -i))
    drop = sorted(order[:n])
    for i in drop:
        name, _, outside = units[i]
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, SkippedAttention(outside))
    return ModelPair(dense=model, sparse=model, method="layer_removal",
                     amount=amount if amount is not None else n / len(units),
                     params={"structured": True, "layers_removed": [units[i][0] for i in drop],
                             "attention_influence": influence})
