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

import torch
from torch import Tensor, nn

from ..._state import eval_mode, to_model
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

CHANNEL_LAYERS = PRUNABLE_LAYERS  # layers whose output channels / units can be removed
NORM_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm)


def _out_channels(module: nn.Module) -> int:
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def _execution_order(model: nn.Module, example: Tensor) -> list[str]:
    order: list[str] = []
    names = {m: n for n, m in model.named_modules()}
    hooks = [m.register_forward_hook(lambda mod, i, o: order.append(names[mod]))
             for m in model.modules() if isinstance(m, CHANNEL_LAYERS)]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    return list(dict.fromkeys(order))


def _channel_scores(model: nn.Module, ctx: PruningContext) -> dict[str, Tensor]:
    """Importance of each output channel, in the dense model's channel order."""
    criterion, norm = ctx.options["criterion"], ctx.options["norm"]
    layers = {n: m for n, m in model.named_modules() if isinstance(m, CHANNEL_LAYERS)}
    if criterion == "magnitude":
        return {n: m.weight.detach().reshape(_out_channels(m), -1).norm(p=norm, dim=1)
                for n, m in layers.items()}
    if criterion == "taylor":  # Molchanov et al. 2019, eq. 4: (sum over the group of g * w)^2
        grads = _weight_gradients(model, ctx.data)
        return {n: (grads[weight_name(n)][0] * grads[weight_name(n)][1])
                .reshape(_out_channels(m), -1).sum(dim=1) ** 2 for n, m in layers.items()}
    if criterion in ("integrated_gradients", "lrp"):
        return _relevance_scores(model, layers, ctx.data, criterion)
    raise ValueError(f"Expected the option `criterion` to be 'magnitude', 'taylor', "
                     f"'integrated_gradients' or 'lrp', got {criterion!r}.")


def _relevance_scores(model: nn.Module, layers: dict[str, nn.Module],
                      data: tuple[Tensor, Tensor], criterion: str) -> dict[str, Tensor]:
    """Attribution-guided unit importance (Yeom et al. 2021, "Pruning by explaining").

    Each unit's score is its mean absolute relevance for the true class over
    the reference batch: Captum's LayerIntegratedGradients (16 steps, zero
    baseline) or LayerLRP (epsilon rules, on a copy of the model), summed over
    a channel's spatial positions.
    """
    import captum.attr as ca

    x, y = data
    scores = {}
    with eval_mode(model):
        x = to_model(x, model)
        target = y.to(x.device)
        for name, layer in layers.items():
            if criterion == "integrated_gradients":
                rel = ca.LayerIntegratedGradients(model, layer).attribute(
                    x, target=target, n_steps=16, internal_batch_size=4096)
            else:
                twin = copy.deepcopy(model)
                rel = ca.LayerLRP(twin, twin.get_submodule(name)).attribute(
                    x.clone().requires_grad_(), target=target)
            rel = rel.detach().abs()
            scores[name] = rel.reshape(rel.shape[0], rel.shape[1], -1).sum(dim=2).mean(dim=0)
    return scores


def _remove_channels(model: nn.Module, example: Tensor, ratio: float,
                     scores: dict[str, Tensor], selected: set[str] | None = None
                     ) -> tuple[nn.Module, dict[str, list[int]]]:
    """A pruned deep copy and, per module, the dense-model indices of its surviving channels.

    Only the output channels of modules in ``selected`` (all if None) are removed.
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
    for name in order:
        if name in keep_outputs or (selected is not None and name not in selected):
            continue
        module = modules[name]
        original = len(scores[name])
        target_removed = round(ratio * original)
        already = original - len(alive[name])
        n_remove = min(target_removed - already, len(alive[name]) - 1)  # never zero channels
        if n_remove <= 0:
            continue
        fn = tp.prune_linear_out_channels if isinstance(module, nn.Linear) \
            else tp.prune_conv_out_channels
        idxs = _choose(scores[name][alive[name]], n_remove,
                       _groups_touched(graph.get_pruning_group(module, fn, [0])))
        if not idxs:
            continue
        group = graph.get_pruning_group(module, fn, idxs)
        if not graph.check_pruning_group(group):
            continue
        for item in group:
            target = item.dep.target.module
            if getattr(item.dep.handler, "__name__", "") == "prune_out_channels" \
                    and names.get(target) in alive:
                drop = set(item.idxs)
                key = names[target]
                alive[key] = [c for j, c in enumerate(alive[key]) if j not in drop]
        group.prune()
    return pruned, alive


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


@register_pruning_method(
    "structured", "Remove whole output channels / hidden units by L1 or L2 norm (or Taylor "
                  "importance) and rebuild a smaller model (Torch-Pruning's dependency graph); "
                  "keeps a masked twin of the dense architecture.",
    options={"norm": 1, "criterion": "magnitude", "channel_ratio": None}, needs_data=True,
    amount_optional=True)
def _structured(model: nn.Module, amount: float | None, ctx: PruningContext) -> ModelPair:
    if ctx.options["norm"] not in (1, 2):
        raise ValueError(f"Expected the option `norm` to be 1 or 2, got {ctx.options['norm']!r}.")
    ratio = ctx.options["channel_ratio"]
    if (ratio is None) == (amount is None):
        raise ValueError("Structured pruning takes either `amount` (weight sparsity) or the "
                         "option `channel_ratio` (fraction of channels), not both.")
    example = ctx.data[0][:1]
    scores = _channel_scores(model, ctx)
    keys = list(ctx.targets) or None
    selected = {n for n, m in prunable_weights(model)
                if keys is None or weight_name(n) in keys}
    total = _counts(model, keys)[0]

    def removed_fraction(r: float):
        pruned, alive = _remove_channels(model, example, r, scores, selected)
        return 1 - _counts(pruned, keys)[0] / total, pruned, alive

    if ratio is None:  # bisection over the channel ratio to match the weight sparsity
        low, high = 0.0, 1.0
        best = (float("inf"), None)
        for _ in range(20):
            mid = (low + high) / 2
            measured, pruned, alive = removed_fraction(mid)
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
    else:
        measured, pruned, alive = removed_fraction(float(ratio))
    twin = _masked_twin(model, alive)
    with torch.no_grad(), eval_mode(pruned), eval_mode(twin):
        probe = ctx.data[0][:32]
        gap = float((pruned(probe) - twin(probe)).abs().max())
    if gap > 1e-4:
        warnings.warn(f"The masked twin's outputs differ from the smaller model's by up to "
                      f"{gap:.3g}: a removed unit's zero output is changed downstream (an "
                      "activation with f(0) != 0 such as sigmoid, or LayerNorm). Compare the "
                      "smaller model itself, not the twin.", UserWarning, stacklevel=4)
    masks = {weight_name(n): (m.weight.detach() != 0) for n, m in prunable_weights(twin)}
    return ModelPair(dense=model, sparse=pruned, method="structured",
                     amount=measured if amount is None else amount, masks={},
                     params={"structured": True, "channel_ratio": ratio},
                     twin=twin, twin_masks=masks)
