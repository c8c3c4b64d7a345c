"""Data as a stream of batches: in-memory tensors, DataLoaders and any iterable of batches.

Everything in xprune that reads data batch by batch (calibration, data-driven
importance, fine-tuning, evaluation) takes its data through :func:`batches`,
which accepts

* in memory: a tensor of inputs ``x`` (N, *F); a pair ``(x, y)`` of inputs
  and labels (N,) (``y`` may be None); or a mapping of tensors whose first
  dimension is N (a tokenizer's output over the whole set, with an optional
  ``"labels"`` entry). These are cut into batches of ``batch_size`` samples,
  views, never copies.
* streamed: a ``torch.utils.data.DataLoader``, a list or any other iterable
  (a generator) whose items are batches: a tensor of inputs, a tuple or list
  ``(inputs, labels, ...)`` (extra items are ignored), or a mapping such as
  a tokenizer's ``BatchEncoding`` (``input_ids``, ``attention_mask``, and
  ``labels`` if present). Items are taken one at a time and never stored,
  so a caller that accumulates statistics batch by batch uses memory for one
  batch, however many there are.

A tuple is always in-memory ``(inputs, labels)``; pass a list for a sequence
of batches. A mapping batch is passed to the model as keyword arguments
(``model(**batch)``, as Hugging Face models take it), anything else
positionally. This module imports only :mod:`._state` (it sits with the data and models,
one layer above the foundation).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ._state import as_logits, model_device, model_dtype, to_model

__all__ = ["Data", "Inputs", "batch_loss", "batches", "check_class_labels", "check_data",
           "first_inputs", "first_rows", "forward", "is_stream", "n_samples", "slice_rows"]

Inputs = Tensor | Mapping[str, Tensor]
"""One batch of model inputs: a tensor (B, *F) or a mapping of tensors whose first dim is B."""

Data = Tensor | tuple | Mapping[str, Tensor] | Iterable[Any]
"""What :func:`batches` accepts (see the module docstring)."""

_FORMS = ("a tensor of inputs, a pair (inputs, labels), a mapping of tensors (a tokenizer's "
          "output), or a torch.utils.data.DataLoader / iterable of such batches")


def _in_memory(data: object, argument: str) -> tuple[Inputs, Tensor | None] | None:
    """``(inputs, labels)`` if ``data`` is held in memory whole, None if it is a stream."""
    if isinstance(data, Tensor):
        return data, None
    if isinstance(data, tuple):
        if len(data) != 2 or not isinstance(data[0], (Tensor, Mapping)) or not (
                data[1] is None or isinstance(data[1], Tensor)):
            raise TypeError(f"Expected `{argument}` as a tuple to be (inputs, labels) with "
                            f"tensors (labels may be None), got a tuple of "
                            f"{[type(v).__name__ for v in data]}; pass a list or a DataLoader "
                            "for a sequence of batches.")
        x, y = data
        if y is not None and y.shape[:1] != (n_samples(x),):
            raise ValueError(f"Expected `{argument}` = (inputs, labels) with one label per "
                             f"sample ({n_samples(x)}), got labels of shape {tuple(y.shape)}.")
        return x, y
    if isinstance(data, Mapping):
        n_samples(data)  # checks the values
        return data, data.get("labels")
    return None


def check_data(data: object, argument: str = "data") -> None:
    """Raise a clear TypeError unless ``data`` is one of the accepted forms (see module doc)."""
    if _in_memory(data, argument) is None and (
            isinstance(data, (str, bytes)) or not isinstance(data, Iterable)):
        raise TypeError(f"Expected `{argument}` to be {_FORMS}, got {type(data).__name__}.")


def is_stream(data: object) -> bool:
    """True if ``data`` is streamed (an iterable of batches), False if held in memory."""
    return not isinstance(data, (Tensor, tuple, Mapping))


def n_samples(inputs: Inputs) -> int:
    """Samples in a batch: the first dimension of the tensor or of the mapping's tensors."""
    if isinstance(inputs, Tensor):
        if inputs.dim() == 0:
            raise ValueError("Expected a batch of inputs with a sample dimension, got a scalar.")
        return inputs.shape[0]
    if isinstance(inputs, Mapping):
        sizes = {k: v.shape[0] for k, v in inputs.items() if isinstance(v, Tensor) and v.dim()}
        if not sizes or len(set(sizes.values())) != 1:
            raise ValueError(f"Expected a mapping batch of tensors that share their first "
                             f"(sample) dimension, got sizes {sizes or dict(inputs)!r}.")
        return next(iter(sizes.values()))
    raise TypeError(f"Expected a batch of inputs to be a tensor or a mapping of tensors, got "
                    f"{type(inputs).__name__}.")


def slice_rows(inputs: Inputs, start: int, stop: int) -> Inputs:
    """Samples ``start:stop`` of a batch of inputs (a tensor, or every tensor of a mapping):
    views, never copies."""
    return _slice(inputs, start, stop)


def _slice(inputs: Inputs, start: int, stop: int) -> Inputs:
    if isinstance(inputs, Tensor):
        return inputs[start:stop]
    return {k: v[start:stop] if isinstance(v, Tensor) and v.dim() else v
            for k, v in inputs.items()}


def _split(item: object, argument: str) -> tuple[Inputs, Tensor | None]:
    """One streamed item as ``(inputs, labels)``."""
    if isinstance(item, Tensor):
        return item, None
    if isinstance(item, Mapping):
        return item, item.get("labels")
    if isinstance(item, (tuple, list)) and item and isinstance(item[0], (Tensor, Mapping)):
        labels = item[1] if len(item) > 1 else None
        if labels is not None and not isinstance(labels, Tensor):
            raise TypeError(f"Expected the labels of each batch in `{argument}` to be a tensor, "
                            f"got {type(labels).__name__}.")
        return item[0], labels
    raise TypeError(f"Expected each batch in `{argument}` to be a tensor, a tuple (inputs, "
                    f"labels) or a mapping of tensors, got {type(item).__name__}.")


def batches(data: Data, *, batch_size: int = 256, argument: str = "data"
            ) -> Iterator[tuple[Inputs, Tensor | None]]:
    """The batches of ``data`` as ``(inputs, labels)`` pairs, one at a time.

    Parameters
    ----------
    data : tensor, (inputs, labels), mapping, DataLoader or iterable of batches
        See the module docstring for the forms.
    batch_size : int
        Samples per batch for in-memory data; a stream keeps its own batches.
    argument : str
        The argument's name, for error messages.

    Yields
    ------
    (inputs, labels)
        ``inputs``: Tensor (B, *F) or a mapping of tensors; ``labels``:
        Tensor (B, ...) or None when the data carry none.

    Raises
    ------
    TypeError
        If ``data`` or one of its batches has none of the accepted forms.
    ValueError
        If the data hold no batch at all (an empty loader, or a generator
        already used up: a generator can be read only once).
    """
    check_data(data, argument)
    whole = _in_memory(data, argument)
    if whole is not None:
        x, y = whole
        n = n_samples(x)
        for start in range(0, n, batch_size):
            yield _slice(x, start, start + batch_size), None if y is None else y[start:start
                                                                                  + batch_size]
        if n == 0:
            raise ValueError(f"Expected `{argument}` to hold at least one sample, got none.")
        return
    empty = True
    for item in data:
        empty = False
        yield _split(item, argument)
    if empty:
        raise ValueError(f"Expected `{argument}` to yield at least one batch, got none (a "
                         "generator can be read only once: pass a DataLoader or a list to "
                         "read the data again).")


def first_inputs(data: Data, *, argument: str = "data") -> Inputs:
    """The inputs of the first batch (one item of a stream is read)."""
    for inputs, _ in batches(data, argument=argument):
        return inputs
    raise AssertionError("unreachable: batches() raises on empty data")


class _FirstRows:
    """The batches of a stream up to its first ``n`` samples (the last one cut), re-iterable."""

    def __init__(self, data: Data, n: int) -> None:
        self.data, self.n = data, n

    def __iter__(self) -> Iterator[tuple[Inputs, Tensor | None]]:
        left = self.n
        if left <= 0:
            return
        for inputs, labels in batches(self.data, argument="data"):
            size = n_samples(inputs)
            if size > left:
                inputs = _slice(inputs, 0, left)
                labels = None if labels is None else labels[:left]
            left -= min(size, left)
            yield inputs, labels
            if left <= 0:  # never read the batch after the last one needed
                return


def first_rows(data: Data, n: int) -> Data:
    """The first ``n`` samples of ``data``: in memory, views of them; a stream, a stream that
    stops after them (read again on every pass, one batch at a time)."""
    whole = _in_memory(data, "data") if not is_stream(data) else None
    if whole is not None:
        x, y = whole
        return _slice(x, 0, n), None if y is None else y[:n]
    return _FirstRows(data, n)


def _to_device(inputs: Inputs, model: nn.Module) -> Inputs:
    if isinstance(inputs, Tensor):
        return to_model(inputs, model)
    device, dtype = model_device(model), model_dtype(model)
    return {k: (v.to(device, dtype if v.is_floating_point() and dtype else v.dtype)
                if isinstance(v, Tensor) else v) for k, v in inputs.items()}


def _takes_keyword(model: nn.Module, name: str) -> bool:
    """Whether ``model.forward`` accepts the keyword ``name`` (by name or through ``**kwargs``)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return True
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD
                                 for p in params.values())


def forward(model: nn.Module, inputs: Inputs) -> Any:
    """``model(inputs)`` for a tensor, ``model(**inputs)`` for a mapping, on the model's device
    (floating inputs cast to its dtype; token ids stay integers). A mapping's ``"labels"``
    entry goes to the model only if its ``forward`` takes ``labels`` (a Hugging Face model,
    which then computes its own loss); for any other model it is the batch's labels only."""
    inputs = _to_device(inputs, model)
    if isinstance(inputs, Mapping):
        if "labels" in inputs and not _takes_keyword(model, "labels"):
            inputs = {k: v for k, v in inputs.items() if k != "labels"}
        return model(**inputs)
    return model(inputs)


def batch_loss(model: nn.Module, inputs: Inputs, labels: Tensor | None) -> Tensor:
    """The mean loss of one batch: the model's own ``loss`` if its output carries one (a Hugging
    Face model given ``labels``), else the cross-entropy of logits (B, C) against labels (B,).

    Raises
    ------
    ValueError
        If the batch has no labels and the model computes no loss.
    """
    output = forward(model, inputs)
    own = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
    if isinstance(own, Tensor):
        return own
    if labels is None:
        raise ValueError("Expected labels with the data for a loss-based criterion or "
                         "training: pass (inputs, labels) batches, or mappings with a "
                         "'labels' entry for a model that computes its own loss.")
    logits = as_logits(output, model)
    check_class_labels(labels, logits.shape[-1] if logits.dim() > 1 else 1)
    return nn.functional.cross_entropy(logits, labels.to(logits.device))


def check_class_labels(labels: Tensor, n_classes: int, *, argument: str = "data") -> None:
    """Raise ``ValueError`` unless ``labels`` are class indices 0..n_classes-1 (an integer tensor).

    xprune trains and scores classifiers (cross-entropy on (B, C) logits): continuous
    targets (regression) and labels beyond the model's outputs are refused in the user's
    terms instead of inside ``torch.nn.functional.cross_entropy``.
    """
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(
            f"Expected the labels of `{argument}` to be class indices 0..{n_classes - 1} (an "
            f"integer tensor), got dtype {str(labels.dtype).replace('torch.', '')}: xprune "
            "trains and scores classifiers (cross-entropy on logits (N, C)); a regression "
            "target is not supported. Integer-valued labels: pass `labels.long()`.")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n_classes):
        raise ValueError(
            f"Expected the labels of `{argument}` to be class indices 0..{n_classes - 1} (the "
            f"model has {n_classes} output(s)), got labels from {int(labels.min())} to "
            f"{int(labels.max())}.")
