"""The forward passes of the metrics: one place that picks the fastest safe way to run a model.

Every metric that sends rows through the model (the removal metrics through
:func:`~xprune.metrics._base.target_scores`, ROAD's accuracy, the stability
metrics' logits, infidelity's Captum calls) calls :func:`inference_forward`
once per batch of rows and
then the function it returns once per pass. For convolutional models on
float inputs that function runs a *channels-last view*: a private copy of
the model whose 4-D (5-D) weights are stored channels last, fed inputs in the
same layout, which oneDNN (CPU) and cuDNN (GPU) convolve without the layout
conversions of the default (NCHW) format: 1.2-1.8x faster forwards for the
8x8 digits CNN and 2.2-3.4x for the 3x32x32 CNN of ``benchmarks/table.py``
(batches of 16-128 rows, an idle 2-core CPU; less on a loaded one), the logits
equal to 2e-8.

Safety, in this order:

- The caller's model is never changed: the view is a copy of its modules,
  made once per model and kept while the model lives (at most
  :data:`MAX_VIEWS` models). Only the 4-D (5-D) weights are duplicated, in
  channels-last layout, and copied again from the model's before every batch
  of rows; the other tensors are the model's own. The view is rebuilt when a
  submodule, hook, tensor object or module attribute of the model changed (a
  fingerprint of module types, attributes and tensor data pointers, compared
  before every batch).
- The view is used only where it pays and can be trusted: the model holds a
  ``Conv2d`` / ``Conv3d`` (or their transposes); it is no transformer (no
  ``Embedding``, no attention module); it has at most
  :data:`MAX_VIEW_ELEMENTS` parameter and buffer elements (the copy's memory);
  its weights are float32 on the CPU (float32 / float16 / bfloat16 on a GPU);
  it carries no forward hooks except ``torch.nn.utils.prune``'s; the inputs are
  floating point; the model is in eval mode and gradients are off.
- On the first pass for a model and a shape of rows, the view's logits on the
  first rows (at least two: layout errors such as ``x.view(x.size(0), -1)``
  after a convolution show only for a batch) are compared with the model's
  own with ``torch.testing.assert_close``'s default tolerances; on any error or
  mismatch the model itself runs from then on for that shape, and the reason
  is logged (``logging`` debug, logger ``xprune.metrics``) and kept
  (:func:`view_status`). The comparison runs under ``torch.random.fork_rng``:
  it consumes no random numbers of a model that draws them.
  An error of the view on a later pass also falls back, for that pass and after.
- Results differ from the model's own by float rounding only (a convolution
  summed in another order). The choice depends on the model, the shape of the
  rows and the check on the first rows of that shape, never on timing, so a
  rerun with the same seed gives the same bits.

Turn it off with ``with xprune.metrics.fast_forwards(False): ...`` (every
metric inside sends rows through the caller's model itself, bit for bit as
eager PyTorch).
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import logging
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules import module as _torch_module
from torch.nn.utils import prune as _torch_prune

from .._state import as_logits, model_device, model_dtype, to_model

__all__ = ["MAX_VIEWS", "MAX_VIEW_ELEMENTS", "fast_forwards", "inference_forward", "view_status"]

log = logging.getLogger("xprune.metrics")

#: Models with more parameter and buffer elements than this (2^25, 128 MiB of float32) are
#: run as they are: the view copies their 4-D/5-D weights and is kept while the model lives.
MAX_VIEW_ELEMENTS = 2 ** 25

#: Views kept at most (the most recently used models'); an older one is rebuilt on demand.
MAX_VIEWS = 4

_CONV = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NOT_CONV = (nn.Embedding, nn.EmbeddingBag, nn.MultiheadAttention, nn.TransformerEncoderLayer,
             nn.TransformerDecoderLayer)
_DTYPES = {"cpu": (torch.float32,), "cuda": (torch.float32, torch.float16, torch.bfloat16)}
_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
          "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs",
          "_backward_hooks", "_backward_pre_hooks", "_state_dict_hooks",
          "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
          "_load_state_dict_post_hooks")
_SKIP = {"training", "_parameters", "_buffers", "_modules", "_non_persistent_buffers_set",
         *_HOOKS}

_enabled: contextvars.ContextVar[bool] = contextvars.ContextVar("xprune_fast_forwards",
                                                                default=True)


@contextlib.contextmanager
def fast_forwards(enabled: bool) -> Iterator[None]:
    """Turn the metrics' channels-last view of conv models on (default) or off inside.

    ``with xprune.metrics.fast_forwards(False): ...`` makes every metric inside
    send its rows through the caller's model itself (eager PyTorch, bit for bit
    as before the view existed); the setting is restored on exit, also after an
    error. Per thread and per asyncio task (a ``contextvars`` variable): a new
    thread or worker process starts with the view on.

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
    """What is known of one model: its fingerprint, the view, and per row shape a verdict."""

    ref: weakref.ref
    fingerprint: tuple
    view: nn.Module | None = None
    pairs: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    why_not: str = ""                                   # why the model gets no view at all
    verdicts: dict[tuple, str] = field(default_factory=dict)   # row key -> "view" or reason


_VIEWS: OrderedDict[int, _Entry] = OrderedDict()
_LOCK = threading.Lock()


def _value_key(value: object) -> object:
    """A module attribute as part of the fingerprint: plain values by value, others by id."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple) and all(v is None or isinstance(v, (bool, int, float, str))
                                        for v in value):
        return value
    return ("id", id(value))


def _tensor_key(t: Tensor | None) -> object:
    if t is None:
        return None
    return (t.data_ptr(), t.dtype, t.device, tuple(t.shape), t.stride())


def _fingerprint(model: nn.Module) -> tuple:
    """Changes whenever a parameter, buffer, submodule, hook or attribute of ``model`` does."""
    parts = []
    for name, m in model.named_modules(remove_duplicate=False):
        parts.append((name, type(m),
                      tuple((k, _value_key(v)) for k, v in m.__dict__.items() if k not in _SKIP),
                      tuple((k, _tensor_key(p)) for k, p in m._parameters.items()),
                      tuple((k, _tensor_key(b)) for k, b in m._buffers.items()),
                      tuple(len(getattr(m, h, ())) for h in _HOOKS)))
    return tuple(parts)


def _why_not(model: nn.Module) -> str:
    """Why ``model`` gets no view (its structure, not the inputs); empty when it may."""
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
    for m in modules:
        hooks = [*m._forward_pre_hooks.values(), *m._forward_hooks.values(),
                 *m._backward_hooks.values()]
        if any(not isinstance(h, _torch_prune.BasePruningMethod) for h in hooks):
            return f"forward or backward hooks on {type(m).__name__}"
    if (_torch_module._global_forward_hooks or _torch_module._global_forward_pre_hooks
            or _torch_module._global_backward_hooks):
        return "global module hooks"
    return ""


def _layout(t: Tensor) -> torch.memory_format | None:
    return {4: torch.channels_last, 5: torch.channels_last_3d}.get(t.dim())


def _build_view(model: nn.Module) -> tuple[nn.Module, list[tuple[Tensor, Tensor]]]:
    """A channels-last view of ``model`` in eval mode, and its (model's, view's) 4-D/5-D tensors.

    The view's modules are copies; its 4-D and 5-D parameters and buffers are
    channels-last copies (refreshed from the model's before every batch, by
    :func:`_refresh`), every other tensor is the model's own object, shared, so
    that a change of its values through ``.data`` (which no version counter
    sees) reaches the view too. ``model`` is not changed.
    """
    with torch.inference_mode(False):    # the copies must stay writable outside that mode
        return _copy_view(model)


def _copy_view(model: nn.Module) -> tuple[nn.Module, list[tuple[Tensor, Tensor]]]:
    memo: dict[int, Any] = {}
    for m in model.modules():
        for t in (*m._parameters.values(), *m._buffers.values()):
            if t is not None and _layout(t) is None:
                memo[id(t)] = t
        for v in m.__dict__.values():       # plain tensor attributes: shared as well
            if isinstance(v, Tensor) and not isinstance(v, nn.Parameter):
                memo[id(v)] = v
    view = copy.deepcopy(model, memo)
    pairs = []
    for mo, mv in zip(model.modules(), view.modules(), strict=True):
        for store in ("_parameters", "_buffers"):
            for k, t in getattr(mo, store).items():
                fmt = None if t is None else _layout(t)
                if fmt is None:
                    continue
                copied = getattr(mv, store)[k]
                copied.data = torch.empty_like(t.detach(), memory_format=fmt)
                if isinstance(copied, nn.Parameter):
                    copied.grad = None
                    copied.requires_grad_(False)
                pairs.append((t, copied))
    _refresh(pairs)
    return view.eval(), pairs


def _refresh(pairs: list[tuple[Tensor, Tensor]]) -> None:
    """Copy the model's current 4-D/5-D tensors into the view's channels-last ones."""
    with torch.inference_mode(False), torch.no_grad():
        for original, copied in pairs:
            copied.copy_(original)


def _entry(model: nn.Module) -> _Entry:
    """The cache entry of ``model``, made or refreshed (fingerprint changed) as needed."""
    fingerprint = _fingerprint(model)
    with _LOCK:
        entry = _VIEWS.get(id(model))
        if entry is not None and entry.ref() is model and entry.fingerprint == fingerprint:
            _VIEWS.move_to_end(id(model))
            return entry
        key = id(model)

        def forget(_ref: weakref.ref, key: int = key) -> None:
            with _LOCK:
                if key in _VIEWS and _VIEWS[key].ref is _ref:
                    del _VIEWS[key]

        entry = _Entry(weakref.ref(model, forget), fingerprint)
        _VIEWS[key] = entry
        _VIEWS.move_to_end(key)
        while len(_VIEWS) > MAX_VIEWS:
            _VIEWS.popitem(last=False)
    entry.why_not = _why_not(model)
    if not entry.why_not:
        try:
            entry.view, entry.pairs = _build_view(model)
        except Exception as err:  # noqa: BLE001  (a model that cannot be copied runs as it is)
            entry.why_not = f"the copy failed ({type(err).__name__}: {err})"
    if entry.why_not:
        log.debug("xprune metrics run %s as it is: %s", type(model).__name__, entry.why_not)
    return entry


def _row_key(x: Tensor) -> tuple:
    return (tuple(x.shape[1:]), x.dtype, x.device.type)


def _compare(model: nn.Module, view: nn.Module, rows: Tensor) -> str:
    """"view" if the view's logits on ``rows`` match the model's, else the reason."""
    probe = rows[:4] if rows.shape[0] >= 2 else torch.cat([rows, rows])
    devices = [probe.device] if probe.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        state = torch.random.get_rng_state()
        expected = as_logits(model(probe), model)
        torch.random.set_rng_state(state)
        try:
            got = as_logits(view(_to_layout(probe)), model)
            torch.testing.assert_close(got, expected)
        except Exception as err:  # noqa: BLE001  (any failure of the view: run the model itself)
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
    and runs the channels-last view of the module docstring where it applies,
    else ``model`` itself.

    Parameters
    ----------
    model : nn.Module
        Never modified.
    x : Tensor of shape (M, *F)
        The rows, or some of them (their shape and dtype decide).

    Returns
    -------
    callable
        ``forward(rows: Tensor (m, *F)) -> output`` (what ``model`` returns:
        logits or a structure holding them).
    """
    if not _enabled.get() or not x.is_floating_point():
        return lambda rows: model(to_model(rows, model))
    entry = _entry(model)
    if entry.view is None:
        return lambda rows: model(to_model(rows, model))
    key = _row_key(x)
    if entry.verdicts.get(key, "view") == "view":
        try:
            _refresh(entry.pairs)
        except Exception as err:  # noqa: BLE001  (the view cannot follow: the model itself)
            entry.verdicts[key] = f"the view's weights could not be refreshed ({err})"
            log.debug("xprune metrics run %s as it is: %s", type(model).__name__,
                      entry.verdicts[key])

    def forward(rows: Tensor) -> Any:
        rows = to_model(rows, model)
        if model.training or torch.is_grad_enabled() or rows.shape[0] == 0:
            return model(rows)
        verdict = entry.verdicts.get(key)
        if verdict is None:
            verdict = entry.verdicts[key] = _compare(model, entry.view, rows)
            if verdict != "view":
                log.debug("xprune metrics run %s as it is for rows of shape %s: %s",
                          type(model).__name__, key[0], verdict)
        if verdict != "view":
            return model(rows)
        try:
            return entry.view(_to_layout(rows))
        except Exception as err:  # noqa: BLE001  (a later failure: the model itself from now on)
            entry.verdicts[key] = (f"the channels-last view failed on a pass of "
                                   f"{rows.shape[0]} rows ({type(err).__name__})")
            log.debug("xprune metrics run %s as it is: %s", type(model).__name__,
                      entry.verdicts[key])
            return model(rows)

    return forward


def view_status(model: nn.Module) -> dict[str, str]:
    """What the metrics did with ``model`` so far: per row shape, ``"view"`` or why not.

    Keys are the row shapes seen (``"(1, 8, 8) float32 cpu"``), or ``"model"``
    when the model as a whole gets no view (then the value says why). Empty if
    no metric has run the model since its last change (or since it left the
    cache of :data:`MAX_VIEWS` models).
    """
    entry = _VIEWS.get(id(model))
    if entry is None or entry.ref() is not model:
        return {}
    if entry.why_not:
        return {"model": entry.why_not}
    return {f"{k[0]} {str(k[1]).removeprefix('torch.')} {k[2]}": v
            for k, v in entry.verdicts.items()}
