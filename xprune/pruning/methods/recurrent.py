"""Recurrent networks: per-gate magnitude pruning and removal of hidden units.

PyTorch stacks the gates of a recurrent layer along the rows of ``weight_ih_l{k}``
(shape (G * H, input)) and ``weight_hh_l{k}`` (shape (G * H, H)): G = 4 for
``nn.LSTM`` (input, forget, cell, output), 3 for ``nn.GRU`` (reset, update, new),
1 for ``nn.RNN``. Torch-Pruning's dependency graph has no handler for GRU, so
both methods are written here:

* ``gate_magnitude`` prunes each gate block of each recurrent matrix to the
  requested sparsity separately (a gate with small weights is not emptied
  for the benefit of another), every other selected matrix as a whole.
* ``rnn_units`` removes hidden units: unit k of layer l loses its row in every
  gate of ``weight_ih_l``/``weight_hh_l`` and their biases, its column of
  ``weight_hh_l``, and its column of whatever reads the layer: the next layer's
  ``weight_ih``, or the first Linear or recurrent module that the model feeds
  the output to. The smaller model's outputs equal those of the dense model
  with the units' rows, biases and outgoing columns set to zero (the masked
  ``twin``): with zero initial state such a unit's state stays exactly 0.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import Tensor, nn
from torch.nn.utils import prune as torch_prune

from ..._state import eval_mode, to_model
from .._core import ModelPair, PruningContext, register_pruning_method, targets

_GATES = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}


def gates(module: nn.Module) -> int:
    """Gate blocks stacked along the rows of a recurrent layer's matrices (1 if not recurrent)."""
    return next((g for cls, g in _GATES.items() if isinstance(module, cls)), 1)


def gate_magnitude_mask(weight: Tensor, n_gates: int, amount: float) -> Tensor:
    """Keep-mask (bool, the weight's shape) pruning ``round(amount * n)`` smallest |w| of each
    of the ``n_gates`` row blocks of ``weight`` (n = entries per block); ties: lower index goes.

    Raises
    ------
    ValueError
        If the rows are not a multiple of ``n_gates``.
    """
    if weight.shape[0] % n_gates:
        raise ValueError(f"Expected a weight whose rows are a multiple of {n_gates} gates, got "
                         f"shape {tuple(weight.shape)}.")
    keep = torch.ones_like(weight, dtype=torch.bool)
    for block_w, block_k in zip(weight.detach().chunk(n_gates), keep.chunk(n_gates), strict=True):
        k = round(amount * block_w.numel())
        if k:
            order = block_w.abs().reshape(-1).argsort(stable=True)[:k]
            block_k.view(-1)[order] = False
    return keep


@register_pruning_method(
    "gate_magnitude", "Magnitude pruning of each gate block of LSTM/GRU/RNN weight_ih/weight_hh "
                      "to `amount` separately (other matrices per layer).")
def _gate_magnitude(model: nn.Module, amount: float, ctx: PruningContext) -> None:
    for _key, module, param in targets(model, ctx):
        n = gates(module) if param.startswith(("weight_ih_l", "weight_hh_l")) else 1
        mask = gate_magnitude_mask(getattr(module, param), n, amount)
        torch_prune.custom_from_mask(module, param, mask.float())


# --- hidden units ---------------------------------------------------------------------------


def _outputs(value) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _outputs(v)]
    return []


def _readers(model: nn.Module, rnns: list[str], example: Tensor) -> dict[str, str | None]:
    """For each recurrent module, the first module with parameters run after it whose input
    depends on its outputs (through autograd), or None if nothing reads them."""
    order: list[tuple[str, list[Tensor], list[Tensor]]] = []
    names = {m: n for n, m in model.named_modules()}

    def hook(module, args, output):
        order.append((names[module], _outputs(args), _outputs(output)))

    leaves = [m for m in model.modules()
              if next(m.parameters(recurse=False), None) is not None]
    hooks = [m.register_forward_hook(hook) for m in leaves]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    try:
        for p in frozen:  # the trace follows autograd: frozen weights must take part
            p.requires_grad_(True)
        with eval_mode(model), torch.enable_grad():
            x = to_model(example, model)
            if x.is_floating_point():
                x = x.detach().requires_grad_()
            model(x)
    finally:
        for h in hooks:
            h.remove()
        for p in frozen:
            p.requires_grad_(False)
    readers: dict[str, str | None] = {}
    for name in rnns:
        at = next(i for i, (n, _, _) in enumerate(order) if n == name)
        outs = [t for t in order[at][2] if t.requires_grad]
        readers[name] = None
        for later, inputs, _ in order[at + 1:]:
            if any(t.requires_grad and any(g is not None for g in torch.autograd.grad(
                    t.sum(), outs, retain_graph=True, allow_unused=True)) for t in inputs):
                readers[name] = later
                break
    return readers


def _unit_scores(rnn: nn.RNNBase, layer: int) -> Tensor:
    """L2 norm of each hidden unit's weights in a layer: its rows in every gate of
    ``weight_ih``/``weight_hh`` and its column of ``weight_hh``; shape (H,)."""
    g, h = gates(rnn), rnn.hidden_size
    w_ih = getattr(rnn, f"weight_ih_l{layer}").detach().double()
    w_hh = getattr(rnn, f"weight_hh_l{layer}").detach().double()
    rows = w_ih.pow(2).sum(1).reshape(g, h).sum(0) + w_hh.pow(2).sum(1).reshape(g, h).sum(0)
    return (rows + w_hh.pow(2).sum(0)).sqrt()


def _check_rnn(name: str, rnn: nn.RNNBase) -> None:
    if rnn.bidirectional or getattr(rnn, "proj_size", 0):
        raise ValueError(f"Method 'rnn_units' removes hidden units of unidirectional recurrent "
                         f"layers without projections; {name!r} is "
                         f"{'bidirectional' if rnn.bidirectional else 'projected'}: exclude it "
                         f"with `exclude=` or use method='gate_magnitude'.")


def _rebuild(rnn: nn.RNNBase, keep: list[list[int]], inputs: list[int] | None) -> nn.RNNBase:
    """A new recurrent module with hidden units ``keep[l]`` of every layer l (equal counts) and
    input features ``inputs`` (all if None), the kept weights copied."""
    g, h = gates(rnn), rnn.hidden_size
    kwargs = {"nonlinearity": rnn.nonlinearity} if isinstance(rnn, nn.RNN) else {}
    new = type(rnn)(len(inputs) if inputs is not None else rnn.input_size, len(keep[0]),
                    num_layers=rnn.num_layers, bias=rnn.bias, batch_first=rnn.batch_first,
                    dropout=rnn.dropout, **kwargs)
    new = new.to(device=rnn.weight_ih_l0.device, dtype=rnn.weight_ih_l0.dtype)
    with torch.no_grad():
        for layer in range(rnn.num_layers):
            rows = torch.tensor([b * h + k for b in range(g) for k in keep[layer]])
            cols_in = keep[layer - 1] if layer else inputs
            for kind in ("ih", "hh"):
                w = getattr(rnn, f"weight_{kind}_l{layer}")[rows]
                cols = keep[layer] if kind == "hh" else cols_in
                if cols is not None:
                    w = w[:, torch.tensor(cols, dtype=torch.long)]
                getattr(new, f"weight_{kind}_l{layer}").copy_(w)
                if rnn.bias:
                    getattr(new, f"bias_{kind}_l{layer}").copy_(
                        getattr(rnn, f"bias_{kind}_l{layer}")[rows])
    new.train(rnn.training)
    return new


def _zero_units(model: nn.Module, name: str, rnn_removed: list[list[int]],
                reader: str | None) -> None:
    """In ``model`` (the twin): zero the removed units' gate rows, biases and outgoing columns."""
    rnn = model.get_submodule(name)
    g, h = gates(rnn), rnn.hidden_size
    with torch.no_grad():
        for layer, units in enumerate(rnn_removed):
            if not units:
                continue
            rows = torch.tensor([b * h + k for b in range(g) for k in units])
            for kind in ("ih", "hh"):
                getattr(rnn, f"weight_{kind}_l{layer}")[rows] = 0
                if rnn.bias:
                    getattr(rnn, f"bias_{kind}_l{layer}")[rows] = 0
            getattr(rnn, f"weight_hh_l{layer}")[:, units] = 0
            if layer + 1 < rnn.num_layers:
                getattr(rnn, f"weight_ih_l{layer + 1}")[:, units] = 0
        last = rnn_removed[-1]
        if reader is not None and last:
            target = model.get_submodule(reader)
            key = "weight_ih_l0" if isinstance(target, nn.RNNBase) else "weight"
            getattr(target, key)[:, last] = 0


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


@register_pruning_method(
    "rnn_units", "Remove hidden units of LSTM/GRU/RNN layers (every gate's rows, recurrent and "
                 "next-layer columns) by the L2 norm of their weights; `amount` = fraction of "
                 "units of each layer.", needs_data=True)
def _rnn_units(model: nn.Module, amount: float, ctx: PruningContext) -> ModelPair:
    """Remove ``round(amount * H)`` hidden units from every layer of each selected recurrent
    module (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``; unidirectional, no projection), the lowest
    :func:`_unit_scores` of each layer (``nn.LSTM`` keeps one ``hidden_size`` for all layers,
    so every layer loses the same count; at least one unit stays).

    ``data[0][:1]`` is traced to find the module that reads each recurrent
    module's output (:func:`_readers`); a Linear reader loses the units' input
    columns, a recurrent reader its ``weight_ih_l0`` columns. ``params``
    record ``units_removed`` (per module, per layer, dense-model indices).

    Raises
    ------
    ValueError
        If no recurrent module is selected, one is bidirectional or projected,
        or its output is read by a module other than a Linear or recurrent
        layer with ``hidden_size`` input features (the message names it).
    """
    chosen = set(ctx.targets)
    rnns = [(n, m) for n, m in model.named_modules() if isinstance(m, tuple(_GATES))
            and (not chosen or any(k.startswith(f"{n}.weight_") for k in chosen))]
    if not rnns:
        raise ValueError(f"Pruning method 'rnn_units' found no nn.LSTM, nn.GRU or nn.RNN among "
                         f"the selected layers of {type(model).__name__}; use method="
                         "'structured' for CNNs and MLPs.")
    for name, rnn in rnns:
        _check_rnn(name, rnn)
    example = ctx.data[0][:2]
    readers = _readers(model, [n for n, _ in rnns], example)
    removed: dict[str, list[list[int]]] = {}
    for name, rnn in rnns:
        n = min(round(amount * rnn.hidden_size), rnn.hidden_size - 1)
        removed[name] = [sorted(_unit_scores(rnn, layer).argsort(stable=True)[:n].tolist())
                         for layer in range(rnn.num_layers)]
        reader = readers[name]
        if reader is None:
            continue
        target = model.get_submodule(reader)
        width = target.input_size if isinstance(target, nn.RNNBase) else \
            getattr(target, "in_features", None)
        if not isinstance(target, (nn.Linear, nn.RNNBase)) or width != rnn.hidden_size:
            raise ValueError(f"The output of recurrent layer {name!r} is read by {reader!r} "
                             f"({type(target).__name__}); method 'rnn_units' can shrink only a "
                             f"Linear or recurrent layer with {rnn.hidden_size} input features "
                             f"that reads it. Exclude {name!r} with `exclude=` or use "
                             "method='gate_magnitude'.")
    twin = copy.deepcopy(model)
    for name, _ in rnns:
        _zero_units(twin, name, removed[name], readers[name])
    inputs: dict[str, list[int]] = {}  # reader -> its kept input columns
    for name, rnn in rnns:
        keep = [[k for k in range(rnn.hidden_size) if k not in set(units)]
                for units in removed[name]]
        reader = readers[name]
        if reader is not None:
            inputs[reader] = keep[-1]
    for name, rnn in rnns:
        keep = [[k for k in range(rnn.hidden_size) if k not in set(units)]
                for units in removed[name]]
        _set(model, name, _rebuild(rnn, keep, inputs.pop(name, None)))
    for reader, cols in inputs.items():  # Linear readers
        old = model.get_submodule(reader)
        if isinstance(old, nn.RNNBase):  # an unselected recurrent reader
            _set(model, reader, _rebuild(old, [list(range(old.hidden_size))] * old.num_layers,
                                         cols))
            continue
        new = nn.Linear(len(cols), old.out_features, bias=old.bias is not None,
                        device=old.weight.device, dtype=old.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(old.weight[:, cols])
            if old.bias is not None:
                new.bias.copy_(old.bias)
        _set(model, reader, new)
    with torch.no_grad(), eval_mode(model), eval_mode(twin):
        x = to_model(example, model)
        gap = max((float((a - b).abs().max()) for a, b in
                   zip(_outputs(model(x)), _outputs(twin(x)), strict=True)), default=0.0)
    if gap > 1e-4:
        warnings.warn(f"The masked twin's outputs differ from the smaller model's by up to "
                      f"{gap:.3g}: the model reads the recurrent state in a way the unit "
                      "removal does not follow (a non-zero initial state?). Compare the smaller "
                      "model itself.", UserWarning, stacklevel=4)
    masks = {f"{n}.{p}": (getattr(twin.get_submodule(n), p).detach() != 0)
             for n, m in rnns for p, t in m.named_parameters() if t.dim() == 2}
    return ModelPair(dense=model, sparse=model, method="rnn_units", amount=amount,
                     params={"structured": True, "units_removed": removed,
                             "readers": readers}, twin=twin, twin_masks=masks)
