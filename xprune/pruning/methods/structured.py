"""Structured pruning with physical removal, through Torch-Pruning's dependency graph.

Whole output channels (conv) or hidden units (linear) are removed and a
genuinely smaller dense model is rebuilt. Torch-Pruning (Fang et al. 2023,
"DepGraph") finds every coupled layer (the next layer's inputs, BatchNorm,
residual additions, concatenations, grouped convolutions), so the rebuilt model
runs. xprune decides *which* channels go (by L1/L2 norm or first-order Taylor
importance), never removes the classifier's outputs or a layer's last channel,
matches the requested *weight* sparsity (Torch-Pruning's ratio is a fraction
of channels: removing half the channels of consecutive layers leaves about a
quarter of their weights), and builds the masked twin: the dense architecture
with the removed channels' weights, biases and normalisation parameters set
to zero, whose outputs equal the smaller model's.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ..._batches import batches, first_inputs, forward
from ..._state import as_logits, eval_mode, to_model
from ...attribution._inputs import activation_bytes_per_row
from .._core import (
    PRUNABLE_LAYERS,
    ModelPair,
    PruningContext,
    _counts,
    _weight_gradients,
    prunable_weights,
    register_pruning_method,
    weight_name,
)
from ._attention import _head_sites

CHANNEL_LAYERS = PRUNABLE_LAYERS  # layers whose output channels / units can be removed
NORM_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm)


def _out_channels(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def _rows(inputs: Tensor | Mapping[str, Tensor], n: int) -> Tensor | Mapping[str, Tensor]:
    """The first ``n`` rows of a tensor of inputs or of every tensor of a mapping of keyword
    inputs (tests/cases_s6/004-structured-keyword-inputs.md)."""
    if isinstance(inputs, Mapping):
        return {k: v[:n] if isinstance(v, Tensor) and v.dim() else v for k, v in inputs.items()}
    return inputs[:n]


def _execution_order(model: nn.Module, example: Tensor) -> list[str]:
    order: list[str] = []
    names = {m: n for n, m in model.named_modules()}
    hooks = [m.register_forward_hook(lambda mod, i, o: order.append(names[mod]))
             for m in model.modules() if isinstance(m, CHANNEL_LAYERS)]
    try:
        with torch.no_grad():
            forward(model, example)
    finally:
        for h in hooks:
            h.remove()
    return list(dict.fromkeys(order))


def _channel_scores(model: nn.Module, ctx: PruningContext) -> dict[str, Tensor]:
    """Importance of each output channel, in the dense model's channel order.

    Each layer's scores are then rescaled by the option ``normalise``
    (:func:`_normalise`) so that layers can be ranked together.
    """
    criterion, norm = ctx.options["criterion"], ctx.options["norm"]
    layers = {n: m for n, m in model.named_modules() if isinstance(m, CHANNEL_LAYERS)}
    # tests/cases_s6/004-structured-keyword-inputs.md
    if criterion != "magnitude" and isinstance(first_inputs(ctx.data), Mapping):
        raise ValueError(
            f"Structured pruning with the criterion {criterion!r} reads the data as one tensor "
            "of inputs, got a mapping of keyword inputs (a model with several inputs or a "
            "tokenizer's output): use criterion='magnitude' for such a model.")
    if criterion == "magnitude":
        scores = {n: m.weight.detach().reshape(_out_channels(m), -1).norm(p=norm, dim=1)
                  for n, m in layers.items()}
    elif criterion == "taylor":  # Molchanov et al. 2019, eq. 4: (sum over the group of g * w)^2
        grads = _weight_gradients(model, ctx.data, chunk=_samples_per_pass(
            model, to_model(first_inputs(ctx.data)[:1], model)))
        scores = {n: (grads[weight_name(n)][0] * grads[weight_name(n)][1])
                  .reshape(_out_channels(m), -1).sum(dim=1) ** 2 for n, m in layers.items()}
    elif criterion in ("activation_taylor", "activation_gradient"):
        scores = _activation_scores(model, layers, ctx.data, criterion)
    elif criterion in ("integrated_gradients", "lrp"):
        scores = _relevance_scores(model, layers, ctx.data, criterion,
                                   rule=ctx.options["lrp_rule"],
                                   aggregate=ctx.options["aggregate"])
    else:
        raise ValueError(f"Expected the option `criterion` to be one of {list(CRITERIA)}, got "
                         f"{criterion!r}.")
    return {n: _normalise(v, ctx.options["normalise"]) for n, v in scores.items()}


CRITERIA = ("magnitude", "taylor", "activation_taylor", "activation_gradient",
            "integrated_gradients", "lrp")


def _normalise(scores: Tensor, how: str | None) -> Tensor:
    """One layer's scores (C,) rescaled so that layers can be ranked together (Yeom et al. 2021).

    ``None``: unchanged. ``"sum"``: divided by the layer's (signed) sum, so a
    layer whose scores sum to a negative number has its order flipped, as in
    the authors' code. ``"l2"``: divided by the layer's L2 norm. A layer whose
    sum or norm is zero is left unscaled. A new tensor; ``scores`` is untouched.
    """
    if how is None:
        return scores
    scale = scores.sum() if how == "sum" else torch.linalg.vector_norm(scores)
    return scores / scale if bool(scale != 0) else scores.clone()


# Activations one pass of a data-driven criterion may hold for its backward pass: the
# reference data go through the model in chunks that fit, so peak memory does not grow with
# the number of reference samples (or, for Integrated Gradients, with its steps).
SCORE_MAX_BYTES = 2**28


def _samples_per_pass(model: nn.Module, x: Tensor, rows_per_sample: int = 1,
                      max_bytes: int = SCORE_MAX_BYTES) -> int:
    """Reference samples per pass: ``rows_per_sample`` rows each within ``max_bytes``."""
    with eval_mode(model):
        per_row = activation_bytes_per_row(model, x[:1].detach(), (), model)
    return max(1, max_bytes // (max(1, per_row) * rows_per_sample))


def _activation_scores(model: nn.Module, layers: dict[str, nn.Module],
                       data: tuple[Tensor, Tensor], criterion: str) -> dict[str, Tensor]:
    """Unit importance from the layer outputs a and the loss gradient g = dL/da (eval mode).

    L is the mean cross-entropy of the reference batch (N samples); a and g
    are summed over a channel's spatial positions. ``"activation_taylor"``:
    ``|mean_i a_ik g_ik|`` (Molchanov et al. 2017, "Pruning convolutional
    neural networks for resource efficient inference", eq. 8);
    ``"activation_gradient"``: ``|mean_i g_ik|`` (Sun et al. 2017, as Yeom et
    al. 2021 use it). Non-negative, shape (C,) per layer.
    """
    sums: dict[str, Tensor] = {}
    total = 0
    # in memory: chunks within SCORE_MAX_BYTES of activations; a stream: its own batches
    chunk = _samples_per_pass(model, to_model(first_inputs(data)[:1], model))
    for x, y in batches(data, batch_size=chunk):
        per_batch = _activation_batch(model, layers, x, y, criterion)
        n = next(iter(per_batch.values())).shape[0]
        # dL/da of the mean loss over all N samples is n / N times that of this batch's mean
        for name, v in per_batch.items():
            sums[name] = sums.get(name, 0) + v.sum(dim=0) * n
        total += n
        if total == n:
            first = per_batch
    if total == n:  # one batch: exactly the mean over it
        return {name: v.mean(dim=0).abs() for name, v in first.items()}
    return {name: (v / total ** 2).abs() for name, v in sums.items()}


def _activation_batch(model: nn.Module, layers: dict[str, nn.Module], x, y,
                      criterion: str) -> dict[str, Tensor]:
    """Per-sample a * dL/da (or dL/da), summed over positions: (B, C) per layer, L = this
    batch's mean cross-entropy."""
    outputs: dict[str, Tensor] = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: outputs.setdefault(n, o))
             for n, m in layers.items()]
    try:
        with eval_mode(model), torch.enable_grad():
            x = to_model(x, model).detach()
            logits = model(x)
            if y is None:
                raise ValueError("Expected labels with the data for the criterion "
                                 f"{criterion!r}: pass (inputs, labels) batches.")
            loss = nn.functional.cross_entropy(logits, y.to(logits.device))
            names = [n for n in layers if n in outputs]
            grads = dict(zip(names, torch.autograd.grad(loss, [outputs[n] for n in names]),
                             strict=True))
    finally:
        for h in hooks:
            h.remove()
    scores = {}
    for n in names:
        a, g = outputs[n].detach(), grads[n]
        per_sample = a * g if criterion == "activation_taylor" else g
        scores[n] = per_sample.reshape(a.shape[0], a.shape[1], -1).sum(dim=2)
    return scores


def _relevance_scores(model: nn.Module, layers: dict[str, nn.Module],
                      data: tuple[Tensor, Tensor], criterion: str, *, rule: str = "epsilon",
                      aggregate: str = "mean_abs") -> dict[str, Tensor]:
    """Attribution-guided unit importance (Yeom et al. 2021, "Pruning by explaining").

    Each unit's relevance for the true class over the reference batch,
    summed over a channel's spatial positions: Captum's
    LayerIntegratedGradients (16 steps, zero baseline) or LayerLRP (on a copy
    of the model). ``rule``: Captum's default epsilon rules (``"epsilon"``)
    or the z+ rule on every linear and conv layer (``"z+"``: positive
    weights, no bias; Captum's ``Alpha1_Beta0_Rule(set_bias_to_zero=True)``,
    Montavon et al. 2017, the rule of Yeom et al.'s code). ``aggregate``:
    ``"mean_abs"``, the mean absolute relevance over the samples, or
    ``"sum"``, the signed sum over the samples (Yeom et al.).

    The reference samples are scored in chunks whose passes (16 rows a sample
    for IG) keep at most :data:`SCORE_MAX_BYTES` of activations, so memory does
    not grow with the number of samples; a sample's relevance does not depend
    on its chunk, so the scores are those of one call, to rounding.
    """
    sums: dict[str, Tensor] = {}
    total = count = 0
    # in memory: chunks whose passes (16 interpolation rows a sample for IG) keep within
    # SCORE_MAX_BYTES; a stream: its own batches. A sample's relevance does not depend on its chunk.
    chunk = _samples_per_pass(model, to_model(first_inputs(data)[:1], model),
                              16 if criterion == "integrated_gradients" else 1)
    for x, y in batches(data, batch_size=chunk):
        if y is None:
            raise ValueError(f"Expected labels with the data for the criterion {criterion!r} "
                             "(relevance for the true class): pass (inputs, labels) batches.")
        per_sample = _relevance_batch(model, layers, x, y, criterion, rule, aggregate)
        for name, v in per_sample.items():
            sums[name] = sums.get(name, 0) + v.sum(dim=0)
        total, count = total + x.shape[0], count + 1
    if count == 1 and aggregate != "sum":  # one batch: exactly the mean over it
        return {name: v.mean(dim=0) for name, v in per_sample.items()}
    return sums if aggregate == "sum" else {name: v / total for name, v in sums.items()}


def _relevance_batch(model, layers, x, y, criterion, rule, aggregate) -> dict[str, Tensor]:
    """Per layer, each sample's relevance summed over positions (signed for
    ``aggregate="sum"``, absolute otherwise), shape (B, C). IG goes through in one pass of
    B x 16 rows (the caller sizes B within :data:`SCORE_MAX_BYTES`)."""
    import captum.attr as ca
    from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule  # Captum exports no rule publicly

    scores = {}
    with eval_mode(model):
        x = to_model(x, model)
        target = y.to(x.device)
        for name, layer in layers.items():
            if criterion == "integrated_gradients":
                rel = ca.LayerIntegratedGradients(model, layer).attribute(
                    x, target=target, n_steps=16, internal_batch_size=x.shape[0] * 16)
            else:  # a fresh copy per layer: Captum's LRP attaches rules to the layers
                twin = copy.deepcopy(model)
                if rule == "z+":
                    for m in twin.modules():
                        if isinstance(m, CHANNEL_LAYERS):
                            m.rule = Alpha1_Beta0_Rule(set_bias_to_zero=True)
                rel = ca.LayerLRP(twin, twin.get_submodule(name)).attribute(
                    x.clone().requires_grad_(), target=target)
            rel = rel.detach()
            if aggregate != "sum":
                rel = rel.abs()
            scores[name] = rel.reshape(rel.shape[0], rel.shape[1], -1).sum(dim=2)
    return scores


def _remove_channels(model: nn.Module, example: Tensor, ratio: float,
                     scores: dict[str, Tensor], selected: dict[str, list[int]] | None = None,
                     *, layers: set[str] | None = None
                     ) -> tuple[nn.Module, dict[str, list[int]]]:
    """A pruned deep copy and, per module, the dense-model indices of its surviving channels.

    ``selected`` (dense-model channel indices per layer, from
    :func:`_global_selection`) replaces the per-layer ``ratio``. Only the output
    channels of modules in ``layers`` (all if None: the layer selection of
    ``prune(layers=, exclude=)``) are removed.
    """
    import torch_pruning as tp

    pruned = copy.deepcopy(model)
    modules = dict(pruned.named_modules())
    order = _execution_order(pruned, example)
    keep_outputs = order[-1:]  # the classifier's outputs are never removed
    alive = {n: list(range(_out_channels(m) if isinstance(m, CHANNEL_LAYERS) else m.num_features))
             for n, m in modules.items() if isinstance(m, CHANNEL_LAYERS + NORM_LAYERS[:3])}
    graph = tp.DependencyGraph().build_dependency(pruned, example_inputs=example, verbose=False)
    names = {m: n for n, m in pruned.named_modules()}
    traced = {names[m] for m in graph.module2node if m in names}
    untraced = [n for n in order[:-1] if n not in traced and (layers is None or n in layers)]
    if untraced:  # ../shared/cases/016: Torch-Pruning's own error names no module path
        raise ValueError(
            f"Torch-Pruning's dependency graph cannot trace layer(s) {untraced[:5]}"
            f"{f' (and {len(untraced) - 5} more)' if len(untraced) > 5 else ''} of "
            f"{type(model).__name__}, so their channels cannot be removed structurally. Leave "
            f"them out with `exclude=`, or prune them another way: method='attention_heads' or "
            f"'layer_removal' for transformers, 'rnn_units' for recurrent layers, or an "
            f"unstructured method.")
    for name in order:
        if name in keep_outputs or (layers is not None and name not in layers):
            continue
        module = modules[name]
        fn = tp.prune_linear_out_channels if isinstance(module, nn.Linear) \
            else tp.prune_conv_out_channels
        if selected is not None:  # coupled layers may have lost some already
            idxs = [alive[name].index(c) for c in selected.get(name, []) if c in alive[name]]
            if not idxs:
                continue
            group = graph.get_pruning_group(module, fn, idxs)
            if not graph.check_pruning_group(group):
                raise ValueError(f"Cannot remove units {selected[name]} of layer {name!r}: "
                                 "Torch-Pruning refuses the group (a grouped convolution?).")
            _prune_group(group, alive, names)
            continue
        original = len(scores[name])
        target_removed = round(ratio * original)
        already = original - len(alive[name])
        n_remove = min(target_removed - already, len(alive[name]) - 1)  # never zero channels
        if n_remove <= 0:
            continue
        idxs = _choose(scores[name][alive[name]], n_remove,
                       _groups_touched(graph.get_pruning_group(module, fn, [0])))
        if not idxs:
            continue
        group = graph.get_pruning_group(module, fn, idxs)
        if not graph.check_pruning_group(group):
            continue
        _prune_group(group, alive, names)
    return pruned, alive


def _prune_group(group, alive: dict[str, list[int]], names: dict[nn.Module, str]) -> None:
    """Prune a Torch-Pruning group and drop its channels from ``alive``."""
    for item in group:
        target = item.dep.target.module
        if getattr(item.dep.handler, "__name__", "") == "prune_out_channels" \
                and names.get(target) in alive:
            drop = set(item.idxs)
            key = names[target]
            alive[key] = [c for j, c in enumerate(alive[key]) if j not in drop]
    group.prune()


def _global_selection(scores: dict[str, Tensor], layers: list[str],
                      n_units: int) -> dict[str, list[int]]:
    """The ``n_units`` lowest scores over ``layers`` ranked together (Yeom et al. 2021).

    ``scores`` should be normalised per layer (option ``normalise``). Ties
    are broken by layer (in forward order), then unit index, as a stable sort
    (the authors' ``heapq.nsmallest``). A layer's last unit is never taken:
    the next lowest unit elsewhere goes instead.

    Returns
    -------
    dict from layer name to the sorted dense-model indices of its units to remove.

    Raises
    ------
    ValueError
        On non-finite scores or ``n_units`` above the units that can go.
    """
    sizes = [scores[n].numel() for n in layers]
    if n_units > sum(sizes) - len(sizes):
        raise ValueError(f"Expected the option `n_units` <= {sum(sizes) - len(sizes)} (every "
                         f"prunable layer keeps one unit), got {n_units}.")
    flat = torch.cat([scores[n].detach().flatten().cpu() for n in layers])
    if not bool(torch.isfinite(flat).all()):
        raise ValueError("Expected finite unit scores, got NaN or Inf entries (criterion "
                         "and normalisation give undefined scores on this batch).")
    owner = [(n, k) for n, size in zip(layers, sizes, strict=True) for k in range(size)]
    left = dict(zip(layers, sizes, strict=True))
    chosen: dict[str, list[int]] = {n: [] for n in layers}
    for i in torch.argsort(flat, stable=True).tolist():
        if sum(map(len, chosen.values())) == n_units:
            break
        name, k = owner[i]
        if left[name] > 1:
            chosen[name].append(k)
            left[name] -= 1
    return {n: sorted(v) for n, v in chosen.items()}


def _broken_grouped_conv(model: nn.Module) -> str | None:
    """The first grouped conv whose output channels are no longer a nonzero multiple of its
    groups (Torch-Pruning can leave one so, and the model then fails in forward), named with
    its groups and weight shape; ``None`` if there is none."""
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and m.groups > 1:
            out = m.weight.shape[0]
            if out < m.groups or out % m.groups or m.weight.shape[1] * m.groups != m.in_channels:
                return f"{name!r} (groups={m.groups}, weight of shape {tuple(m.weight.shape)})"
    return None


def _groups_touched(group) -> int:
    """The largest ``groups`` of a grouped (not depthwise) conv whose channels the group touches."""
    groups = [1]
    for item in group:
        m = item.dep.target.module
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and m.groups > 1 \
                and not (m.groups == m.in_channels == m.out_channels):
            groups.append(m.groups)
    return max(groups)


def _choose(scores: Tensor, n_remove: int, groups: int) -> list[int]:
    """The lowest-scoring channels; for grouped convs the same positions in every group.

    Removing channels unevenly across the groups of a grouped convolution would
    regroup the remaining channels and change the function, and Torch-Pruning
    prunes a grouped conv's input channels at the same positions in every
    group. So the count is rounded down to a multiple of ``groups`` and the
    positions are chosen by their score summed over the groups (at least one
    channel stays in each group).
    """
    if groups == 1:
        return scores.argsort(stable=True)[:n_remove].tolist()
    size = scores.numel() // groups
    per_block = min(n_remove // groups, size - 1)
    local = scores[:size * groups].reshape(groups, size).sum(dim=0)
    positions = local.argsort(stable=True)[:per_block].tolist()
    return sorted(b * size + j for b in range(groups) for j in positions)


def _masked_twin(model: nn.Module, alive: dict[str, list[int]]) -> nn.Module:
    """The dense architecture with every removed channel's parameters set to zero."""
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for name, module in twin.named_modules():
            if name not in alive:
                continue
            size = _out_channels(module) if isinstance(module, CHANNEL_LAYERS) \
                else module.num_features
            removed = sorted(set(range(size)) - set(alive[name]))
            if not removed:
                continue
            for param in ("weight", "bias"):
                tensor = getattr(module, param, None)
                if isinstance(tensor, Tensor):
                    tensor[removed] = 0
    return twin


#: Names of the query, key and value projections of attention modules that _head_sites does
#: not know (DistilBERT, Llama / OPT / BART / ViT-style, ...), whose heads are split by reshapes.
_QKV_NAMES = (("q_lin", "k_lin", "v_lin"), ("q_proj", "k_proj", "v_proj"),
              ("query", "key", "value"), ("q", "k", "v"))


def _other_attention(model: nn.Module) -> list[tuple[str, set[str]]]:
    """(name, weight keys of its projections) of every module with Linear query, key and value
    projections as direct children, by the usual names."""
    found = []
    for name, m in model.named_modules():
        for names in _QKV_NAMES:
            if all(isinstance(getattr(m, a, None), nn.Linear) for a in names):
                found.append((name, {f"{name}.{a}.weight" if name else f"{a}.weight"
                                     for a in names}))
                break
    return found


def _refuse_attention(model: nn.Module, ctx: PruningContext) -> None:
    """A clear error when the selection holds attention projections (../shared/cases/016).

    Their output channels are split into heads by reshapes that Torch-Pruning's
    dependency graph does not follow (the rebuilt model then fails in forward), so
    transformers are pruned along their own units instead.
    """
    chosen = set(ctx.targets)
    hit = [s.name for s in _head_sites(model) if not chosen or chosen & set(s.keys)]
    for name, keys in _other_attention(model):  # tests/cases_s6/005-structured-distilbert.md
        if name not in hit and (not chosen or chosen & keys):
            hit.append(name)
    if hit:
        raise ValueError(
            f"Structured channel pruning cannot remove channels of the attention module(s) "
            f"{hit[:5]}{f' (and {len(hit) - 5} more)' if len(hit) > 5 else ''}: their "
            f"projections are split into heads, which Torch-Pruning's dependency graph does not "
            f"trace. Prune transformers along their own units: method='attention_heads' (whole "
            f"heads), method='layer_removal' (whole blocks), or method='structured' on the "
            f"feed-forward neurons only (e.g. layers='*intermediate.dense' for BERT, "
            f"'*mlp.c_fc' for GPT-2, '*ffn.lin1' for DistilBERT, '*linear1' for "
            f"nn.TransformerEncoderLayer).")


def _check_unit_options(options) -> None:
    """Validate the options of unit scoring and global selection (the bad value in the message)."""
    allowed = {"normalise": (None, "sum", "l2"), "lrp_rule": ("epsilon", "z+"),
               "aggregate": ("mean_abs", "sum")}
    for key, values in allowed.items():
        if options[key] not in values:
            raise ValueError(f"Expected the option `{key}` to be one of {list(values)}, got "
                             f"{options[key]!r}.")
    n = options["n_units"]
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise ValueError(f"Expected the option `n_units` to be a non-negative integer, got {n!r}.")


@register_pruning_method(
    "structured", "Remove whole output channels / hidden units by L1 or L2 norm (or Taylor "
                  "importance) and rebuild a smaller model (Torch-Pruning's dependency graph); "
                  "keeps a masked twin of the dense architecture.",
    options={"norm": 1, "criterion": "magnitude", "channel_ratio": None, "n_units": None,
             "normalise": None, "lrp_rule": "epsilon", "aggregate": "mean_abs"},
    needs_data=True, amount_optional=True)
def _structured(model: nn.Module, amount: float | None, ctx: PruningContext) -> ModelPair:
    """Remove the lowest-scoring output channels / hidden units; exactly one target is given.

    Targets: ``amount`` (weight sparsity, matched by bisection over a
    per-layer channel ratio), the option ``channel_ratio`` (that fraction of
    each layer's channels), or the option ``n_units`` (that many units over
    all layers ranked together, :func:`_global_selection`). Scores
    (:func:`_channel_scores`): ``criterion`` in :data:`CRITERIA` with ``norm``
    (magnitude), ``lrp_rule`` and ``aggregate`` (LRP, IG), then ``normalise``
    per layer. Yeom et al. 2021's toy protocol is ``n_units`` with, e.g.,
    ``criterion="lrp", lrp_rule="z+", aggregate="sum", normalise="sum"``.
    The pair's ``params`` record ``zero_score_units``: units of the
    removable layers whose score is exactly 0 (ties broken by position).
    No fine-tuning: :func:`xprune.fine_tune` does that.
    """
    if ctx.options["norm"] not in (1, 2):
        raise ValueError(f"Expected the option `norm` to be 1 or 2, got {ctx.options['norm']!r}.")
    ratio, n_units = ctx.options["channel_ratio"], ctx.options["n_units"]
    _check_unit_options(ctx.options)
    if sum(v is not None for v in (amount, ratio, n_units)) != 1:
        raise ValueError("Structured pruning takes exactly one of `amount` (weight sparsity), "
                         "the option `channel_ratio` (fraction of channels) or the option "
                         "`n_units` (units removed over all layers ranked together).")
    _refuse_attention(model, ctx)
    example = _rows(first_inputs(ctx.data), 1)
    scores = _channel_scores(model, ctx)
    keys = list(ctx.targets) or None  # the weights prune(layers=, exclude=) selected
    layers = {n for n, m in prunable_weights(model) if keys is None or weight_name(n) in keys}
    total = _counts(model, keys)[0]
    with eval_mode(model):  # no normalisation statistics updated by the probe
        removable = [n for n in _execution_order(model, example)[:-1]  # never the outputs
                     if n in layers]
    if not removable:  # tests/cases_s6/006-structured-nothing-removable.md
        recurrent = [n for n, m in model.named_modules()
                     if isinstance(m, (nn.LSTM, nn.GRU, nn.RNN))]
        raise ValueError(
            f"Structured pruning found no layer whose channels it can remove among the "
            f"selected weights {sorted(keys or layers)[:8]}: it removes output channels of "
            f"Linear and Conv layers that feed another layer (never the output layer's)"
            + (f"; for the recurrent layers {recurrent} use method='rnn_units'." if recurrent
               else "; select such layers with `layers=`."))
    zeros = sum(int((scores[n] == 0).sum()) for n in removable)

    def removed_fraction(r: float):
        pruned, alive = _remove_channels(model, example, r, scores, layers=layers)
        return 1 - _counts(pruned, keys)[0] / total, pruned, alive

    feasible = [0.0]  # sparsities reached without breaking a grouped conv (for the error)
    if amount is not None:  # bisection over the channel ratio to match the weight sparsity
        low, high = 0.0, 1.0
        best = (float("inf"), None)
        for _ in range(20):
            mid = (low + high) / 2
            measured, pruned, alive = removed_fraction(mid)
            if _broken_grouped_conv(pruned) is None:
                feasible.append(measured)
            if abs(measured - amount) < best[0]:
                best = (abs(measured - amount), (mid, measured, pruned, alive))
            if measured < amount:
                low = mid
            else:
                high = mid
        ratio, measured, pruned, alive = best[1]
        if abs(measured - amount) > 0.01:
            warnings.warn(f"Structured pruning reached weight sparsity {measured:.4f}, more than "
                          f"1 point from the requested {amount}: channels come in whole units.",
                          UserWarning, stacklevel=4)
    elif n_units is not None:
        pruned, alive = _remove_channels(model, example, 0.0, scores,
                                         _global_selection(scores, removable, n_units),
                                         layers=layers)
        measured = 1 - _counts(pruned, keys)[0] / total
    else:
        measured, pruned, alive = removed_fraction(float(ratio))
    if (broken := _broken_grouped_conv(pruned)) is not None:  # ../shared/cases/030-...
        asked = (f"amount = {amount}" if amount is not None else f"n_units = {n_units}"
                 if n_units is not None else f"channel_ratio = {ratio}")
        raise ValueError(
            f"Structured pruning with {asked} would leave the grouped convolution {broken}: its "
            f"channels must stay a nonzero multiple of its groups. The largest weight sparsity "
            f"reached here without that is {max(feasible):.3f}; ask for at most that, or "
            f"leave the layer out.")
    twin = _masked_twin(model, alive)
    with torch.no_grad(), eval_mode(pruned), eval_mode(twin):
        probe = _rows(first_inputs(ctx.data), 32)
        gap = float((as_logits(forward(pruned, probe), pruned)
                     - as_logits(forward(twin, probe), twin)).abs().max())
    if gap > 1e-4:
        warnings.warn(f"The masked twin's outputs differ from the smaller model's by up to "
                      f"{gap:.3g}: a removed unit's zero output is changed downstream (an "
                      "activation with f(0) != 0 such as sigmoid, or LayerNorm). Compare the "
                      "smaller model itself, not the twin.", UserWarning, stacklevel=4)
    masks = {weight_name(n): (m.weight.detach() != 0) for n, m in prunable_weights(twin)}
    return ModelPair(dense=model, sparse=pruned, method="structured",
                     amount=measured if amount is None else amount, masks={},
                     params={"structured": True, "channel_ratio": ratio,
                             "zero_score_units": zeros},
                     twin=twin, twin_masks=masks)
