"""The forward passes of the metrics: one place that picks the fastest safe way to run a model.

Every metric that sends rows through the model (the removal metrics through
:func:`~xprune.metrics._base.target_scores`, ROAD's accuracy, the stability
metrics' logits, infidelity) calls :func:`inference_forward` once per batch of
rows and then the function it returns once per pass. For convolutional models
on float inputs that function runs the model *channels last*: the model
itself, called through :func:`torch.func.functional_call` with channels-last
copies of its 4-D (5-D) parameters and buffers in place of its own, fed inputs
in the same layout, which oneDNN (CPU) and cuDNN (GPU) convolve without the
layout conversions of the default (NCHW) format: 1.2-1.8x faster forwards for
the 8x8 digits CNN and 2.2-3.4x for the 3x32x32 CNN of ``benchmarks/table.py``
(batches of 16-128 rows, an idle 2-core CPU), the logits equal to 2e-8.

Safety, in this order:

- The caller's model is never changed and never copied: ``functional_call``
  swaps the copies in for the call and puts the model's own tensors back
  (also after an error). The copies are made from the model's tensors at every
  batch of rows, so any change of the model between calls (weights, masks,
  attributes, submodules, hooks) is what runs; the model's hooks fire as
  usual. Memory: one channels-last copy of the 4-D (5-D) tensors during a batch.
- It is used only where it can pay: the model holds a ``Conv2d`` / ``Conv3d``
  (or their transposes) and no embedding or attention layer; its float weights
  are float32 on the CPU (float32 / float16 / bfloat16 on a GPU), on one device;
  the inputs are floating point; the model is in eval mode and gradients are off;
  and the batch's input elements are at least 1/16 of the copied weights'
  elements (copying a ResNet-50's weights to score 4 small images costs more
  than it saves).
- On the first pass for a model and a shape of rows, the channels-last logits on
  the first rows (at least two: layout errors such as ``x.view(x.size(0), -1)``
  after a convolution show only for a batch) are compared with the model's own
  with ``torch.testing.assert_close``'s default tolerances; on any error or
  mismatch the model runs as it is from then on for that shape, and the reason is
  logged (``logging`` debug, logger ``xprune.metrics``) and kept
  (:func:`view_status`). The comparison runs under ``torch.random.fork_rng``: it
  consumes no random numbers of a model that draws them. An error on a later pass
  also falls back, for that pass and after.
- Results differ from the model's own by float rounding only (a convolution
  summed in another order). The choice depends on the model, the shape of the
  rows and the check on the first rows of that shape, never on timing, so a
  rerun with the same seed gives the same bits.

Turn it off with ``with xprune.metrics.fast_forwards(False): ...`` (every
metric inside sends rows through the caller's model as it is, bit for bit as
eager PyTorch).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .._state import as_logits, model_device, model_dtype, to_model

__all__ = ["MAX_VIEW_ELEMENTS", "fast_forwards", "inference_forward", "view_status"]

log = logging.getLogger("xprune.metrics")

#: Models with more parameter and buffer elements than this (2^25, 128 MiB of float32) run
#: as they are.
MAX_VIEW_ELEMENTS = 2 ** 25

#: A batch of rows runs channels last only if its input elements times this are at least the
#: elements of the 4-D (5-D) tensors copied for it.
MIN_ROWS_PER_WEIGHT = 16

_CONV = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NOT_CONV = (nn.Embedding, nn.EmbeddingBag, nn.MultiheadAttention, nn.TransformerEncoderLayer,
             nn.TransformerDecoderLayer)
_DTYPES = {"cpu": (torch.float32,), "cuda": (torch.float32, torch.float16, torch.bfloat16)}

_enabled: contextvars.ContextVar[bool] = contextvars.ContextVar("xprune_fast_forwards",
                                                                default=True)


@contextlib.contextmanager
def fast_forwards(enabled: bool) -> Iterator[None]:
    """Turn the metrics' channels-last forwards of conv models on (default) or off inside.

    ``with xprune.metrics.fast_forwards(False): ...`` makes every metric inside
    send its rows through the caller's model as it is (eager PyTorch, bit for
    bit); the setting is restored on exit, also after an error. Per thread and per
    asyncio task (a ``contextvars`` variable): a new thread or worker process
    starts with it on.

    Raises
    ------
    TypeError
        If ``enabled`` is not a bool.
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"Expected `enabled` to be True or False, got {enabled!r}.")
    token = _enabled.set(enabled)
    try:
        yield
    finally:
        _enabled.reset(token)


@dataclass
class _Entry:
    """What is known of one model: per model structure and row shape, "view" or why not."""

    ref: weakref.ref
    why_not: str = ""                                   # why the model gets no view at all
    verdicts: dict[tuple, str] = field(default_factory=dict)   # row key -> "view" or reason


_SEEN: dict[int, _Entry] = {}
_LOCK = threading.Lock()


def _why_not(model: nn.Module) -> str:
    """Why ``model`` never runs channels last (its structure, not the inputs); empty if it may."""
    modules = list(model.modules())
    if not any(isinstance(m, _CONV) for m in modules):
        return "no 2-D or 3-D convolution"
    for m in modules:
        if isinstance(m, _NOT_CONV) or "Attention" in type(m).__name__:
            return f"a transformer or embedding layer ({type(m).__name__})"
    tensors = [*model.parameters(), *model.buffers()]
    elements = sum(t.numel() for t in tensors)
    if elements > MAX_VIEW_ELEMENTS:
        return f"{elements:,} parameter and buffer elements, above MAX_VIEW_ELEMENTS"
    device, dtype = model_device(model), model_dtype(model)
    if dtype not in _DTYPES.get(device.type, ()):
        return f"weights of dtype {dtype} on {device.type}"
    if any(t.device != device or (t.is_floating_point() and t.dtype != dtype) for t in tensors):
        return "weights on several devices or of several dtypes"
    return ""


def _layout(t: Tensor) -> torch.memory_format | None:
    return {4: torch.channels_last, 5: torch.channels_last_3d}.get(t.dim())


def _four_d(model: nn.Module) -> dict[str, Tensor]:
    """Name -> each 4-D (5-D) parameter and buffer of ``model`` (every name of a tied one)."""
    named = [*model.named_parameters(remove_duplicate=False),
             *model.named_buffers(remove_duplicate=False)]
    return {name: t for name, t in named if _layout(t) is not None}


def _channels_last(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Name -> a channels-last copy of each of ``tensors`` (a tensor held under several names,
    tied, gets one copy).

    The copies have the canonical channels-last strides even where the default layout
    already counts as channels-last contiguous (one input channel, as the digits CNN's first
    convolution: ``contiguous`` would return the weight as it is, its strides read as the
    default layout, and that convolution, with the next one's input, ran in the default
    layout: 1.4x the time of a pass of 256 digits)."""
    copies: dict[int, Tensor] = {}
    for t in tensors.values():
        if id(t) not in copies:
            copies[id(t)] = torch.empty_like(t, memory_format=_layout(t)).copy_(t.detach())
    return {name: copies[id(t)] for name, t in tensors.items()}


def _entry(model: nn.Module) -> _Entry:
    """The record of ``model`` (what the metrics learnt of it), made on first use."""
    key = id(model)
    with _LOCK:
        entry = _SEEN.get(key)
        if entry is not None and entry.ref() is model:
            return entry

        def forget(_ref: weakref.ref, key: int = key) -> None:
            with _LOCK:
                if key in _SEEN and _SEEN[key].ref is _ref:
                    del _SEEN[key]

        entry = _SEEN[key] = _Entry(weakref.ref(model, forget))
    return entry


def _row_key(model: nn.Module, x: Tensor) -> tuple:
    """The row shape and the model's structure (a replaced layer is checked again)."""
    return (tuple(x.shape[1:]), x.dtype, x.device.type,
            tuple(type(m) for m in model.modules()))


def _compare(model: nn.Module, tensors: dict[str, Tensor], rows: Tensor) -> str:
    """"view" if the channels-last logits on ``rows`` match the model's, else the reason."""
    probe = rows[:4] if rows.shape[0] >= 2 else torch.cat([rows, rows])
    devices = [probe.device] if probe.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        state = torch.random.get_rng_state()
        expected = as_logits(model(probe), model)
        torch.random.set_rng_state(state)
        try:
            got = as_logits(functional_call(model, tensors, (_to_layout(probe),)), model)
            torch.testing.assert_close(got, expected)
        except Exception as err:  # noqa: BLE001  (any failure: run the model as it is)
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            return f"the channels-last view failed or differed ({type(err).__name__}: {first})"
    return "view"


def _to_layout(x: Tensor) -> Tensor:
    fmt = _layout(x)
    return x if fmt is None else x.contiguous(memory_format=fmt)


def inference_forward(model: nn.Module, x: Tensor) -> Callable[[Tensor], Any]:
    """``forward(rows)``: the model's output for rows like ``x``, by the fastest safe route.

    Call it once per batch of rows to score, then ``forward(x[i:j])`` per pass,
    inside the caller's ``eval_mode`` and ``torch.no_grad``. Each pass moves
    the rows to the model's device and dtype (:func:`~xprune._state.to_model`)
    and runs the model channels last as the module docstring says where that
    applies, else the model as it is.

    Parameters
    ----------
    model : nn.Module
        Never modified.
    x : Tensor of shape (M, *F)
        The rows of this batch (their shape, dtype and number decide).

    Returns
    -------
    callable
        ``forward(rows: Tensor (m, *F)) -> output`` (what ``model`` returns:
        logits or a structure holding them).
    """
    def plain(rows: Tensor) -> Any:
        return model(to_model(rows, model))

    if not _enabled.get() or not x.is_floating_point():
        return plain
    entry = _entry(model)
    entry.why_not = _why_not(model)         # every batch: the model may have changed
    if entry.why_not:
        log.debug("xprune metrics run %s as it is: %s", type(model).__name__, entry.why_not)
        return plain
    key = _row_key(model, x)
    if entry.verdicts.get(key, "view") != "view":
        return plain
    weights = _four_d(model)
    if sum(t.numel() for t in {id(t): t for t in weights.values()}.values()) \
            > MIN_ROWS_PER_WEIGHT * x.numel():
        return plain                              # checked before copying: nothing copied
    tensors = _channels_last(weights)

    def forward(rows: Tensor) -> Any:
        rows = to_model(rows, model)
        if model.training or torch.is_grad_enabled() or rows.shape[0] == 0:
            return model(rows)
        verdict = entry.verdicts.get(key)
        if verdict is None:
            verdict = entry.verdicts[key] = _compare(model, tensors, rows)
            if verdict != "view":
                log.debug("xprune metrics run %s as it is for rows of shape %s: %s",
                          type(model).__name__, key[0], verdict)
        if verdict != "view":
            return model(rows)
        try:
            return functional_call(model, tensors, (_to_layout(rows),))
        except Exception as err:  # noqa: BLE001  (a later failure: the model as it is from now)
            entry.verdicts[key] = (f"the channels-last view failed on a pass of {rows.shape[0]} rows "
                                   f"({type(err).__name__})")
            log.debug("xprune metrics run %s as it is: %s", type(model).__name__,
                      entry.verdicts[key])
            return model(rows)

    return forward


def view_status(model: nn.Module) -> dict[str, str]:
    """What the metrics did with ``model`` so far: per row shape, ``"view"`` (channels last)
    or why not.

    Keys are the row shapes seen (``"(1, 8, 8) float32 cpu"``), or ``"model"``
    when the model as a whole never runs channels last (then the value says why).
    Empty if no metric has run the model. Batches too small for the copy to pay run
    as they are without a record.
    """
    entry = _SEEN.get(id(model))
    if entry is None or entry.ref() is not model:
        return {}
    if entry.why_not:
        return {"model": entry.why_not}
    out: dict[str, str] = {}
    for k, v in entry.verdicts.items():
        out[f"{k[0]} {str(k[1]).removeprefix('torch.')} {k[2]}"] = v
    return out
