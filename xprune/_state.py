"""Temporary model state, set and restored by context managers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

import torch
from torch import nn

__all__ = ["as_logits", "eval_mode", "model_device", "model_dtype", "to_model"]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode; restore every submodule's own mode afterwards, even on error."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a model with neither)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype of the model's first floating parameter or buffer (None if it has neither)."""
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return None


def to_model(x: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """Inputs on the model's device and in its floating dtype.

    Integer inputs become floating point, except token ids for a model with an
    ``nn.Embedding``. A model without floating parameters keeps the inputs' dtype.
    """
    x = x.to(model_device(model))
    dtype = model_dtype(model)
    if not x.is_floating_point():
        if any(isinstance(m, nn.Embedding) for m in model.modules()):
            return x
        return x.to(dtype or torch.get_default_dtype())
    return x if dtype is None else x.to(dtype)


def as_logits(output: object, model: nn.Module) -> torch.Tensor:
    """The model's logits: its output if a tensor, else the ``logits`` of a Hugging Face
    ``ModelOutput`` or mapping, else the first element of a tuple; a clear error otherwise."""
    if isinstance(output, torch.Tensor):
        return output
    logits = None
    if isinstance(output, Mapping) or hasattr(output, "logits"):
        logits = output.get("logits") if isinstance(output, Mapping) else output.logits
    elif isinstance(output, tuple) and output:
        logits = output[0]
    if isinstance(logits, torch.Tensor):
        return logits
    raise ValueError(
        f"Expected {type(model).__name__}.forward to return a tensor of logits (N, C), a "
        f"ModelOutput or mapping with `logits`, or a tuple whose first element is the logits, got "
        f"{type(output).__name__}. Wrap the model so that forward returns the logits.")
