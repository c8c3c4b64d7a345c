"""Model inputs of any structure, token inputs, and the memory budget of a forward pass.

A model's inputs are one tensor, a tuple of positional tensors, or a mapping
of keyword tensors (a tokenizer's ``BatchEncoding``). One of them is
attributed; the others go through unchanged (Captum's
``additional_forward_args``). For token ids the attribution is computed on
the output of the model's embedding layer: :class:`EmbeddingForward` takes
the embeddings as its (float) input and writes them over the layer's output
with a forward hook, so every gradient method of Captum applies to text as it
does to images (the same construction as Captum's layer methods, e.g.
``LayerIntegratedGradients``, which hook the same layer).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .._state import as_logits, eval_mode, model_device, model_dtype

__all__ = ["CPU_MIN_PASS_ROWS", "CPU_PASS_BYTES", "DEFAULT_MAX_BYTES", "EmbeddingForward", "ModelForward", "ModelInputs",
           "TokenOptions", "activation_bytes_per_row", "find_embedding", "structure_inputs",
           "token_feature_mask"]

DEFAULT_MAX_BYTES = 2**30
"""Default memory budget of one forward pass during attribution: 1 GiB of activations."""

CPU_PASS_BYTES = 2**24
"""On the CPU a pass with gradients keeps about this many bytes of activations (16 MiB), at
least :data:`CPU_MIN_PASS_ROWS` rows (and a method's rows per input), whatever ``max_bytes``
allows. Larger passes are slower, not faster: their activations and gradients are blocks
beyond glibc's malloc thresholds (32 MiB for one block, or a freed top of the heap over its
trim threshold), handed back to the system when freed, so every pass page-faults them in
afresh. Measured with Integrated Gradients, 16 steps, on one thread: 640 rows of 1x8x8
through the digits CNN spent 150 ms of system time in such faults per call beside 250 ms of
computing in passes of 3,840 rows, none in passes of 640; 320 rows of 3x32x32 spent 4.3 s
beside 2.3 s in passes of 3,500 rows, none in passes of 54. The computing time per row
was the same within about 10% (the noise) down to about 50 rows a pass (issue 23)."""

CPU_MIN_PASS_ROWS = 8
"""The fewest rows a CPU pass is cut to by :data:`CPU_PASS_BYTES`: for models whose row
alone is that large (a 6-layer BERT on 128 tokens keeps 19 MB a row), one-row passes
computed 1.3x slower than passes of 8-16 rows, which still stay clear of the page faults."""


@dataclass(frozen=True)
class TokenOptions:
    """How token inputs (integer ids of shape (N, T)) are explained.

    Attributes
    ----------
    embedding : str, optional
        Qualified name of the embedding layer whose output is attributed.
        Default: the model's ``get_input_embeddings()`` (Hugging Face models),
        else its first ``nn.Embedding``.
    pad_token_id : int, optional
        Positions holding this id are masked (they never count in a score)
        and its embedding is the default baseline. Default: the model's
        ``config.pad_token_id`` where it has one.
    special_token_ids : tuple of int
        Further ids to mask, e.g. ``tokenizer.all_special_ids`` ([CLS], [SEP]).
    """

    embedding: str | None = None
    pad_token_id: int | None = None
    special_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.embedding is not None and not isinstance(self.embedding, str):
            raise ValueError(f"Expected `tokens.embedding` to be a layer name or None, got "
                             f"{self.embedding!r}.")
        if self.pad_token_id is not None and (isinstance(self.pad_token_id, bool)
                                              or not isinstance(self.pad_token_id, int)
                                              or self.pad_token_id < 0):
            raise ValueError(f"Expected `tokens.pad_token_id` to be an id >= 0 or None, got "
                             f"{self.pad_token_id!r}.")
        ids = self.special_token_ids
        if not isinstance(ids, Sequence) or isinstance(ids, str) or any(
                isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in ids):
            raise ValueError(f"Expected `tokens.special_token_ids` to be a sequence of ids >= 0, "
                             f"got {ids!r}.")
        object.__setattr__(self, "special_token_ids", tuple(ids))


def check_token_options(tokens: object) -> TokenOptions:
    """``tokens`` as :class:`TokenOptions` (from None, a mapping of its fields, or itself)."""
    if tokens is None:
        return TokenOptions()
    if isinstance(tokens, TokenOptions):
        return tokens
    if isinstance(tokens, Mapping):
        unknown = sorted(set(tokens) - {"embedding", "pad_token_id", "special_token_ids"})
        if unknown:
            raise ValueError(f"Unknown key(s) {unknown} in `tokens`; expected some of "
                             f"['embedding', 'pad_token_id', 'special_token_ids'].")
        return TokenOptions(**dict(tokens))
    raise TypeError(f"Expected `tokens` to be a mapping or TokenOptions, got "
                    f"{type(tokens).__name__}.")


@dataclass(frozen=True)
class ModelInputs:
    """The inputs of one forward call, with their structure.

    Attributes
    ----------
    kind : {"tensor", "tuple", "mapping"}
    keys : tuple
        Positions (``"tuple"``) or names (``"mapping"``) of ``tensors``.
    tensors : tuple of Tensor
        Each of shape (N, ...), the same N.
    index : int
        Position in ``tensors`` of the attributed input.
    """

    kind: str
    keys: tuple
    tensors: tuple[Tensor, ...]
    index: int

    @property
    def main(self) -> Tensor:
        """The attributed input."""
        return self.tensors[self.index]

    @property
    def others(self) -> tuple[Tensor, ...]:
        """The inputs that pass through unchanged, in order."""
        return self.tensors[:self.index] + self.tensors[self.index + 1:]

    @property
    def attribute_to(self) -> int | str:
        return self.keys[self.index]

    def __len__(self) -> int:
        return self.main.shape[0]

    def rows(self, start: int, stop: int) -> ModelInputs:
        """Rows ``start:stop`` of every tensor."""
        return ModelInputs(self.kind, self.keys, tuple(t[start:stop] for t in self.tensors),
                           self.index)

    def original(self) -> Tensor | tuple[Tensor, ...] | dict[str, Tensor]:
        """The inputs in the caller's structure (a tensor, a tuple or a dict), detached."""
        tensors = tuple(t.detach() for t in self.tensors)
        if self.kind == "tensor":
            return tensors[0]
        if self.kind == "tuple":
            return tensors
        return dict(zip(self.keys, tensors, strict=True))

    def call(self, model: nn.Module | Any, main: Tensor, others: Sequence[Tensor]) -> Any:
        """``model`` applied to ``main`` in the attributed place and ``others`` in theirs."""
        tensors = list(others)
        tensors.insert(self.index, main)
        if self.kind == "mapping":
            return model(**dict(zip(self.keys, tensors, strict=True)))
        return model(*tensors)

    def to_model(self, model: nn.Module) -> ModelInputs:
        """Every tensor on the model's device; floating tensors in the model's dtype.

        Integer tensors (token ids, attention masks) keep their dtype, except an
        attributed integer input of a model without an ``nn.Embedding``, which
        is cast to the model's floating dtype (integer-valued features).
        """
        device, dtype = model_device(model), model_dtype(model)
        has_embedding = any(isinstance(m, nn.Embedding) for m in model.modules())
        out = []
        for i, t in enumerate(self.tensors):
            t = t.to(device)
            if t.is_floating_point():
                t = t if dtype is None else t.to(dtype)
            elif i == self.index and not has_embedding:
                t = t.to(dtype or torch.get_default_dtype())
            out.append(t)
        return ModelInputs(self.kind, self.keys, tuple(out), self.index)


def _describe(x: object) -> str:
    if isinstance(x, Tensor):
        return f"a tensor of dtype {x.dtype} and shape {tuple(x.shape)}"
    return type(x).__name__


def structure_inputs(inputs: object, attribute_to: int | str | None = None) -> ModelInputs:
    """Checked :class:`ModelInputs` from a tensor, a tuple of tensors or a mapping of tensors.

    Parameters
    ----------
    inputs : Tensor of shape (N, *F), tuple of Tensors or Mapping[str, Tensor]
        Positional or keyword arguments of the model's forward; every tensor
        has the same number N >= 1 of rows.
    attribute_to : int or str, optional
        The attributed input: a position in a tuple, a key of a mapping.
        Default: the first.

    Raises
    ------
    TypeError
        If ``inputs`` is none of the three, or holds something other than tensors.
    ValueError
        If it is empty, the tensors differ in their number of rows, or
        ``attribute_to`` names no input.
    """
    if isinstance(inputs, Tensor):
        if attribute_to not in (None, 0):
            raise ValueError(f"Expected `attribute_to` to be None or 0 for a single input tensor, "
                             f"got {attribute_to!r}.")
        return ModelInputs("tensor", (0,), (inputs,), 0)
    if isinstance(inputs, (tuple, list)):
        kind, keys, tensors = "tuple", tuple(range(len(inputs))), tuple(inputs)
    elif isinstance(inputs, Mapping):
        kind, keys, tensors = "mapping", tuple(inputs.keys()), tuple(inputs.values())
        if not all(isinstance(k, str) for k in keys):
            raise TypeError(f"Expected the keys of `inputs` to be argument names (str), got "
                            f"{list(keys)!r}.")
    else:
        raise TypeError(f"Expected `inputs` to be a torch.Tensor, a tuple of tensors (positional "
                        f"arguments) or a mapping of tensors (keyword arguments), got "
                        f"{type(inputs).__name__}.")
    if not tensors:
        raise ValueError("Expected `inputs` to hold at least one tensor, got none.")
    for key, t in zip(keys, tensors, strict=True):
        if not isinstance(t, Tensor) or t.dim() == 0:
            raise TypeError(f"Expected every entry of `inputs` to be a tensor with a batch axis "
                            f"(N, ...), got {_describe(t)} at {key!r}.")
    rows = {key: t.shape[0] for key, t in zip(keys, tensors, strict=True)}
    if len(set(rows.values())) > 1:
        raise ValueError(f"Expected every tensor of `inputs` to have the same number of rows N, "
                         f"got {rows}.")
    if attribute_to is None:
        index = 0
    elif attribute_to in keys and not isinstance(attribute_to, bool):
        index = keys.index(attribute_to)
    else:
        raise ValueError(f"Expected `attribute_to` to be one of {list(keys)} (the inputs), got "
                         f"{attribute_to!r}.")
    return ModelInputs(kind, keys, tensors, index)


class ModelForward(nn.Module):
    """``forward(main, *others) -> (N, C)`` logits (or probabilities) of a model of any inputs.

    Rebuilds the model's call from the attributed input and the others, and
    takes the logits out of a Hugging Face ``ModelOutput``, a tuple or a
    mapping (:func:`xprune._state.as_logits`).
    """

    def __init__(self, model: nn.Module, structure: ModelInputs, *,
                 probability: bool = False) -> None:
        super().__init__()
        self.model = model
        self.structure = ModelInputs(structure.kind, structure.keys, (), structure.index)
        self.probability = probability

    def forward(self, main: Tensor, *others: Tensor) -> Tensor:
        logits = as_logits(self.structure.call(self.model, main, others), self.model)
        return torch.softmax(logits, dim=1) if self.probability else logits


class EmbeddingForward(nn.Module):
    """``forward(embeddings, ids, *others)``: the model with ``layer``'s output replaced.

    ``embeddings`` of shape (M, T, H) is written over the output of the
    embedding ``layer`` (for the ids (M, T)) by a forward hook that lives for
    the call only; gradients then flow to ``embeddings``.
    """

    def __init__(self, forward: ModelForward, layer: nn.Module) -> None:
        super().__init__()
        self.inner = forward
        self.layer = layer

    def forward(self, embeddings: Tensor, ids: Tensor, *others: Tensor) -> Tensor:
        def replace(module, args, output):
            if output.shape != embeddings.shape:
                raise ValueError(f"Expected the embedding layer's output of shape "
                                 f"{tuple(embeddings.shape)}, got {tuple(output.shape)}: the "
                                 f"layer must embed the attributed token ids.")
            return embeddings

        handle = self.layer.register_forward_hook(replace)
        try:
            return self.inner(ids, *others)
        finally:
            handle.remove()


def find_embedding(model: nn.Module, name: str | None) -> tuple[str, nn.Module]:
    """The embedding layer of ``model`` (its qualified name and the module).

    ``name`` if given; else ``model.get_input_embeddings()`` (Hugging Face
    models); else the first ``nn.Embedding``.

    Raises
    ------
    ValueError
        If ``name`` names no submodule, or the model has no embedding layer.
    """
    modules = dict(model.named_modules())
    if name is not None:
        if name not in modules:
            raise ValueError(f"Expected `tokens.embedding` to name a submodule of the model, got "
                             f"{name!r}; embedding layers: "
                             f"{[n for n, m in modules.items() if isinstance(m, nn.Embedding)]}.")
        return name, modules[name]
    getter = getattr(model, "get_input_embeddings", None)
    if callable(getter):
        try:
            layer = getter()
        except (NotImplementedError, AttributeError):
            layer = None
        for n, m in modules.items():
            if layer is not None and m is layer:
                return n, m
    for n, m in modules.items():
        if isinstance(m, nn.Embedding):
            return n, m
    raise ValueError(f"Expected a model with an embedding layer (nn.Embedding) for token ids; "
                     f"{type(model).__name__} has none. Name the layer with "
                     f"tokens={{'embedding': ...}} or pass floating-point inputs.")


def _attention_mask(structure: ModelInputs, model: nn.Module) -> Tensor | None:
    """The ``attention_mask`` among the inputs: by key, or by the forward's parameter name."""
    if structure.kind == "mapping":
        names = structure.keys
    elif structure.kind == "tuple":
        try:
            params = list(inspect.signature(model.forward).parameters)
        except (TypeError, ValueError):
            return None
        names = tuple(params[:len(structure.keys)])
    else:
        return None
    for i, name in enumerate(names):
        if name == "attention_mask" and i != structure.index and i < len(structure.tensors):
            return structure.tensors[i]
    return None


def pad_token_id(model: nn.Module, tokens: TokenOptions) -> int | None:
    """``tokens.pad_token_id``, else the model's ``config.pad_token_id`` (None if neither)."""
    if tokens.pad_token_id is not None:
        return tokens.pad_token_id
    pad = getattr(getattr(model, "config", None), "pad_token_id", None)
    return pad if isinstance(pad, int) and not isinstance(pad, bool) else None


def token_feature_mask(structure: ModelInputs, model: nn.Module, tokens: TokenOptions) -> Tensor:
    """Which tokens count: bool Tensor of shape (N, T), False at padding and special tokens.

    A position is masked where the ``attention_mask`` among the inputs is 0,
    where the id is the pad id (:func:`pad_token_id`) and where it is one of
    ``tokens.special_token_ids``.
    """
    ids = structure.main
    keep = torch.ones(ids.shape, dtype=torch.bool, device=ids.device)
    mask = _attention_mask(structure, model)
    if mask is not None and tuple(mask.shape) == tuple(ids.shape):
        keep &= mask.to(ids.device) != 0
    pad = pad_token_id(model, tokens)
    if pad is not None:
        keep &= ids != pad
    if tokens.special_token_ids:
        keep &= ~torch.isin(ids, torch.tensor(tokens.special_token_ids, device=ids.device))
    return keep.cpu()


def activation_bytes_per_row(forward: nn.Module, main: Tensor, others: Sequence[Tensor],
                             model: nn.Module) -> int:
    """Bytes of activations one input row keeps for the backward pass.

    Two probe passes with gradients, on one and on two copies of the first
    row of ``main`` (and of each of ``others``); every tensor autograd saves
    for the backward pass is counted once, plus the output, and the
    difference between the two passes is the cost of a row (what does not
    grow with the rows, such as a pruned layer's masked weight, cancels).
    This is the memory a gradient method's forward pass holds per row;
    perturbation methods hold less (no graph), so it bounds them too.
    """
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def saved_bytes(rows: int) -> int:
        seen: set[int] = set()
        total = 0

        held: list[Tensor] = []  # alive until the count is done, so no address is reused

        def pack(t: Tensor) -> None:
            # counted and held here, not in the graph (never run backwards): a saved output
            # kept by its own grad_fn would form a cycle Python's collector cannot see
            nonlocal total
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if ptr not in seen and ptr not in params:
                seen.add(ptr)
                total += storage.nbytes()
            held.append(t)

        x = main[:1].detach().expand(rows, *main.shape[1:]).clone()
        if x.is_floating_point():
            x.requires_grad_()
        rest = tuple(t[:1].expand(rows, *t.shape[1:]).clone() for t in others)
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda _: None):
            out = forward(x, *rest)
        held.clear()  # the graph keeps the hook, the hook this list: break the cycle
        return total + out.numel() * out.element_size()

    with eval_mode(model):
        one = saved_bytes(1)
        two = saved_bytes(2)
    return max(1, two - one)
