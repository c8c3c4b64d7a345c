"""An up-front check of a model against the attribution method about to explain it.

Methods that propagate a modified signal module by module (DeepLIFT's
multipliers, LRP's relevance rules) hold per-module state between the forward
and the backward pass. A module called twice in one forward (one
``nn.ReLU`` reused in a residual block, as torchvision's ResNets do) breaks
that: Captum's DeepLIFT stops with an internal error, and LRP's rules see only
the last call. LRP has no rule for a tensor addition outside a module (a
residual connection ``out + identity``): the relevance flowing into both
branches is no longer conserved, and the map is silently wrong. This module
finds those layers before any attribution runs and names them with the fix.
"""

from __future__ import annotations

import operator

import torch
from torch import Tensor, nn

__all__ = ["check_model_for_method"]

#: Methods whose Captum implementation keeps per-module state across one forward pass.
STATEFUL_METHODS = ("deeplift", "lrp")

_ADDITIONS = (operator.add, operator.iadd, torch.add)


def _module_calls(model: nn.Module, example: Tensor) -> dict[str, int]:
    """How many times each leaf module runs in one forward pass of ``example``."""
    counts: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if name and not list(module.children()):
            def hook(_module, _inputs, _output, name=name):
                counts[name] = counts.get(name, 0) + 1
            handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return counts


def _residual_additions(model: nn.Module) -> list[str] | None:
    """Module paths whose forward adds two tensors outside any module; None if untraceable."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # dynamic control flow and the like: no claim either way
        return None
    found = []
    for node in graph.nodes:
        is_add = ((node.op == "call_function" and node.target in _ADDITIONS)
                  or (node.op == "call_method" and node.target in ("add", "add_")))
        if is_add and sum(isinstance(a, torch.fx.Node) for a in node.args) >= 2:
            stack = list((node.meta.get("nn_module_stack") or {}).keys())
            found.append(stack[-1] if stack else "the model's own forward")
    return found


def _times(n: int) -> str:
    return {2: "twice", 3: "three times"}.get(n, f"{n} times")


def check_model_for_method(model: nn.Module, method: str, example: Tensor) -> None:
    """Raise before attribution if ``model`` has layers ``method`` cannot explain correctly.

    Parameters
    ----------
    model : nn.Module
        In eval mode (the caller's context); its forward runs once on ``example``.
    method : str
        Checked only for :data:`STATEFUL_METHODS` (DeepLIFT, LRP); other methods
        return at once.
    example : Tensor of shape (1, *F)
        One input row on the model's device.

    Raises
    ------
    ValueError
        For DeepLIFT or LRP, naming a module called more than once per forward
        pass (in place or not) and the fix; for LRP, naming the module whose
        forward adds two tensors (a residual connection), which LRP's rules do
        not cover.
    """
    if method not in STATEFUL_METHODS:
        return
    label = {"deeplift": "DeepLIFT", "lrp": "LRP"}[method]
    reused = {name: n for name, n in _module_calls(model, example).items() if n > 1}
    if reused:
        name, n = next(iter(reused.items()))
        module = model.get_submodule(name)
        more = f" ({len(reused) - 1} more such modules: {sorted(reused)[:5]})" \
            if len(reused) > 1 else ""
        raise ValueError(
            f"{label} needs every module to run once per forward pass, but `{name}` "
            f"({module!r}) is used {_times(n)}{more}: its state from one call is overwritten "
            f"by the next. Replace `{name}` with a separate {type(module).__name__} for each "
            f"use, or choose integrated_gradients.")
    if method == "lrp":
        additions = _residual_additions(model)
        if additions:
            raise ValueError(
                f"LRP has no rule for a tensor addition outside a module, and the forward of "
                f"`{additions[0]}` adds two tensors (a residual connection"
                + (f"; {len(additions)} in the model" if len(additions) > 1 else "")
                + "): relevance through it is not conserved, so the map would be silently "
                "wrong. Choose integrated_gradients or deeplift for this model.")
