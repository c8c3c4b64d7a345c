"""Removal of features: one operator per kind of data, called by every removal metric.

Deletion and insertion curves, pixel flipping, region perturbation (AOPC),
faithfulness correlation, sensitivity-n, monotonicity correlation, model
effective complexity and ROAD all ask what the model says once some features
are gone. They differ in *which* features go, a boolean mask each metric
builds, and in *what takes their place*, which depends on the kind of data
only. The second part is a :class:`Removal`, chosen in one place,
:func:`removal_for`; :func:`perturbed_scores` sends the removed inputs
through the model in bounded chunks.

A *feature* is the unit a map ranks (see :func:`~xprune.metrics.feature_map`):
a column of tabular rows (N, F), a pixel of images (N, C, *S) with all its
channels. A ``removed`` mask has shape (N, *R, d): for each sample, ``*R``
rows (steps of a curve, random subsets, draws), each True where one of its d
features is removed. ``remove`` returns the model inputs (N, *R, *F), a new
tensor; the caller's inputs are never modified.

Operators
---------
:class:`ReplaceColumns` (tabular)
    Column i takes the baseline's value.
:class:`ReplacePixels` (image)
    Every channel of pixel i takes the baseline's value (one pixel, one feature).
:class:`ReplaceTokens` (tokens)
    Token i's id becomes the baseline id ([MASK], [UNK] or [PAD]).
:class:`DropTokens` (tokens with an attention mask)
    Token i is dropped: attention mask 0 at its position (``mode="attention"``),
    or deleted from the sequence (``mode="delete"``, as ferret 0.4.2, which
    shifts the positions of the tokens after it). Works on the model's inputs
    as a structure (:meth:`Removal.remove_inputs`), not on the ids alone.
:class:`ReplaceAudio` (audio)
    Every bin of time-frequency patch i of a spectrogram (or every sample of
    time segment i of a waveform), all channels, takes the baseline's value.
:class:`~xprune.metrics._imputation.NoisyLinearImputation` (image)
    ROAD's noisy linear imputation (Rong, Leemann et al. 2022): a removed pixel
    becomes the weighted mean of its neighbours plus noise; no baseline.
:class:`Grouped`
    An element-wise operator (the imputation) over the features of another
    (:class:`ReplaceAudio`'s patches): ROAD on spectrograms by patches.

Every metric that removes features takes ``removal=`` and ranks the
operator's features (:meth:`Removal.feature_scores`): deletion, insertion,
faithfulness correlation, sensitivity-n, region perturbation (AOPC),
monotonicity, model effective complexity, ROAD and the erasure metrics.
An analysis names the operator in its config, ``[metrics] removal = {unit =
"patch", frequency_bins = 2, frames = 4}``: :data:`REMOVAL_UNITS` maps each
unit to its kind of data, keys and operator (:func:`removal_from_spec`), and
:func:`check_removal_spec` checks it against the data before any training.

Adding a kind of data
---------------------
One class: a frozen dataclass subclassing :class:`Removal`, its fields the
configuration, with ``kind`` set, ``check_inputs`` (refuse inputs of another
kind with a message naming the kind) and ``remove``; then the kind's default
in ``_DEFAULTS`` and, if it can be told from the tensor, in :func:`kind_of`.
Override :meth:`Removal.remove_prefixes` only where nested removals share work
(the imputation does).

- Tokens (N, T) of integer ids: :class:`ReplaceTokens` replaces token i by a
  chosen id ([MASK], [UNK], [PAD]), the baseline; :class:`DropTokens` drops
  tokens through the attention mask (``mode="attention"``) or deletes them
  from the sequence (``mode="delete"``, ferret's and ERASER's practice). Both
  change another model input than the ids, so they work on the model's inputs
  as a structure: :meth:`Removal.remove_inputs` takes and returns a
  :class:`~xprune.attribution._inputs.ModelInputs` (every replacing operator
  inherits a version that changes the attributed tensor only). Integer ids
  must not go through ``check_tensor`` (it casts to float).
- Audio: :class:`ReplaceAudio`. A spectrogram (N, C, F, T) or a waveform
  (N, C, T) cannot be told from an image by its shape, so the audio kind is
  named: ``kind="audio"`` to :func:`removal_for`, or recorded in the
  :class:`~xprune.attribution.Attributions` (``kind``, set from the data set
  by the analysis). Its features are time-frequency patches (time segments of
  a waveform) of a chosen size, so an operator also says how a map ranks its
  features: :meth:`Removal.feature_scores`.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .._validation import check_positive_int, check_tensor, closest_name
from ..attribution import make_baseline
from ..attribution._inputs import ModelInputs
from ._base import PassThrough, feature_map, for_samples, rows_per_sample, target_scores

__all__ = ["REMOVAL_UNITS", "DropTokens", "Grouped", "Removal", "ReplaceAudio",
           "ReplaceColumns", "ReplacePixels", "ReplaceTokens", "as_baseline", "grouped",
           "check_removal_spec", "kind_of", "perturbed_scores", "removal_for",
           "removal_from_spec"]


class Removal(ABC):
    """How one kind of data loses features: (inputs, removed mask) -> model inputs.

    Subclasses are frozen dataclasses (their fields are the configuration)
    with a class attribute ``kind``.
    """

    kind: ClassVar[str]

    @abstractmethod
    def check_inputs(self, inputs: Tensor, metric: str) -> Tensor:
        """``inputs`` checked to be of this operator's kind, for ``metric`` (named in errors)."""

    @abstractmethod
    def remove(self, inputs: Tensor, removed: Tensor, baseline: Tensor | float | None = None
               ) -> Tensor:
        """The inputs with the ``removed`` features taken out.

        Parameters
        ----------
        inputs : Tensor of shape (N, *F)
        removed : bool Tensor of shape (N, *R, d)
            True where a feature of a sample is removed; ``*R`` (any number of
            axes, possibly none) are rows per sample.
        baseline : float or Tensor, optional
            What removed features become, for operators that replace: a
            scalar, shape (*F) for every sample, (N, *F) one per sample, or
            (N, *R', *F) with as many row axes as the mask, broadcast with
            them (values per row, such as fresh random draws: a mask (N, K, 1,
            d) and draws (N, 1, S, *F) give K x S rows). Operators that
            compute the replacement take none.

        Returns
        -------
        Tensor of shape (N, *R, *F)
            ``*R`` the mask's row axes (broadcast with the baseline's).
            A new tensor in the inputs' dtype and device.

        Raises
        ------
        ValueError
            On inputs of another kind, a mask of the wrong shape or dtype (the
            message names both shapes), or a baseline that does not fit.
        """

    def feature_scores(self, values: Tensor) -> Tensor:
        """A map (N, *F) as one score per feature this operator removes, shape (N, d).

        By default :func:`~xprune.metrics.feature_map` (a column, a pixel
        with its channels summed, a token); operators whose features group
        several elements (:class:`ReplaceAudio`'s patches) sum the map over
        each group, so that removing the top-ranked features removes the
        most attribution mass.
        """
        return feature_map(values)

    def remove_prefixes(self, inputs: Tensor, order: Tensor, counts: Sequence[int],
                        baseline: Tensor | float | None = None) -> Tensor:
        """The inputs with the first ``counts[j]`` features of each sample's ``order`` removed.

        ``order`` (N, d) is a permutation of the features per sample; returns
        (N, len(counts), *F), the same as :meth:`remove` with the nested masks
        of those prefixes. Operators whose nested removals share work override it.
        """
        removed = prefix_masks(order, counts)
        return self.remove(inputs, removed.to(inputs.device), baseline)

    def remove_inputs(self, structure: ModelInputs, removed: Tensor,
                      baseline: Tensor | float | None = None, *, model: nn.Module | None = None
                      ) -> ModelInputs:
        """The model's inputs of any structure with the ``removed`` features taken out.

        Parameters
        ----------
        structure : ModelInputs
            N rows; the attributed tensor (``structure.main``, (N, *F)) loses features.
        removed : bool Tensor of shape (N, R, d)
            R rows per sample, True where a feature is removed.
        baseline : as for :meth:`remove`.
        model : nn.Module, optional
            The model the inputs are for (operators that look up another input
            by the forward's parameter names use it).

        Returns
        -------
        ModelInputs
            N * R rows, sample-major (sample i's rows are ``i * R .. i * R + R - 1``):
            the attributed tensor from :meth:`remove`, every other input repeated.
        """
        r = removed.shape[1]
        main = self.remove(structure.main, removed, baseline)
        main = main.reshape(-1, *structure.main.shape[1:])
        tensors = tuple(main if i == structure.index else t.repeat_interleave(r, dim=0)
                        for i, t in enumerate(structure.tensors))
        return ModelInputs(structure.kind, structure.keys, tensors, structure.index)


def prefix_masks(order: Tensor, counts: Sequence[int]) -> Tensor:
    """(N, len(counts), d) bool: True for the first ``counts[j]`` features of each ``order`` row."""
    n, d = order.shape
    position = torch.empty_like(order).scatter_(
        1, order, torch.arange(d, device=order.device).expand(n, d))
    return position[:, None, :] < torch.as_tensor(list(counts), device=order.device)[None, :, None]


def check_removed(removed: Tensor, inputs: Tensor, d: int) -> Tensor:
    """``removed`` checked to be a bool mask (N, *R, d) over the d features of ``inputs``."""
    if not isinstance(removed, Tensor) or removed.dtype != torch.bool or removed.dim() < 2 \
            or removed.shape[0] != inputs.shape[0] or removed.shape[-1] != d:
        got = (f"shape {tuple(removed.shape)} ({removed.dtype})" if isinstance(removed, Tensor)
               else type(removed).__name__)
        raise ValueError(f"Expected `removed` to be a bool mask of shape (N, ..., d) = "
                         f"({inputs.shape[0]}, ..., {d}) over the features of inputs of shape "
                         f"{tuple(inputs.shape)}, got {got}.")
    return removed


@dataclass(frozen=True)
class _Replacement(Removal):
    """Removed features take the baseline's values: ``torch.where(mask, baseline, inputs)``."""

    def remove(self, inputs: Tensor, removed: Tensor, baseline: Tensor | float | None = None
               ) -> Tensor:
        x = self.check_inputs(inputs, "removal")
        feat = x.shape[1:]
        removed = check_removed(removed, x, self.n_features(feat)).to(x.device)
        rows = removed.shape[1:-1]
        if baseline is None:
            raise ValueError(f"Expected a `baseline` for {type(self).__name__}, which replaces "
                             f"removed features by it, got None.")
        b = torch.as_tensor(baseline, dtype=x.dtype, device=x.device)
        if b.dim() == x.dim() and rows:                   # one per sample: (N, 1.., *F)
            b = b.reshape(b.shape[0], *(1,) * len(rows), *b.shape[1:])
        shape = (x.shape[0], *rows, *feat)
        try:
            out = torch.broadcast_shapes(b.shape, shape)
            if len(out) != len(shape) or out[0] != shape[0] or out[len(out) - len(feat):] != feat:
                raise RuntimeError
        except RuntimeError:
            raise ValueError(f"Expected `baseline` to broadcast with the removed inputs' shape "
                             f"{shape} (a scalar, {tuple(feat)}, or one per sample "
                             f"{tuple(x.shape)}), got shape {tuple(b.shape)}.") from None
        mask = self.element_mask(removed, feat)
        return torch.where(mask, b, x.reshape(x.shape[0], *(1,) * len(rows), *feat))

    @staticmethod
    @abstractmethod
    def n_features(feat: torch.Size) -> int:
        """The number d of features of one input of shape ``feat``."""

    @staticmethod
    @abstractmethod
    def element_mask(removed: Tensor, feat: torch.Size) -> Tensor:
        """The feature mask (..., d) as a mask broadcastable to the elements (..., *F)."""


@dataclass(frozen=True)
class ReplaceColumns(_Replacement):
    """Tabular rows (N, F): a removed column takes the baseline's value."""

    kind: ClassVar[str] = "tabular"

    def check_inputs(self, inputs: Tensor, metric: str) -> Tensor:
        x = check_tensor(inputs, "inputs", min_dim=2)
        if x.dim() != 2:
            raise ValueError(f"Expected `inputs` to be tabular rows of shape (N, F) for "
                             f"{metric}, got shape {tuple(x.shape)}.")
        return x

    @staticmethod
    def n_features(feat: torch.Size) -> int:
        return int(feat[0])

    @staticmethod
    def element_mask(removed: Tensor, feat: torch.Size) -> Tensor:
        return removed


@dataclass(frozen=True)
class ReplacePixels(_Replacement):
    """Images (N, C, *S): every channel of a removed pixel takes the baseline's value."""

    kind: ClassVar[str] = "image"

    def check_inputs(self, inputs: Tensor, metric: str) -> Tensor:
        x = check_tensor(inputs, "inputs", min_dim=2)
        if x.dim() < 3:
            raise ValueError(f"Expected `inputs` to be images of shape (N, C, *S) for "
                             f"{metric}, got shape {tuple(x.shape)}.")
        return x

    @staticmethod
    def n_features(feat: torch.Size) -> int:
        return math.prod(feat[1:])

    @staticmethod
    def element_mask(removed: Tensor, feat: torch.Size) -> Tensor:
        return expand_feature_mask(removed, feat)


def expand_feature_mask(mask: Tensor, feat: torch.Size) -> Tensor:
    """A feature mask (..., d) of images (C, *S) as (..., 1, *S): all channels of a pixel."""
    return mask.reshape(*mask.shape[:-1], 1, *feat[1:])


@dataclass(frozen=True)
class ReplaceTokens(ReplaceColumns):
    """Token ids (N, T): a removed token's id is replaced by the baseline id.

    The baseline is a token id, the same for every sample (an int, or a
    scalar or (N,) / (T,) / (N, T) integer tensor): the tokenizer's
    ``[MASK]`` id where it has one, ``[UNK]``, or ``[PAD]`` (id 0 in BERT-style
    vocabularies, the metrics' default baseline 0). The attention mask is not
    changed: a replaced token is still attended to, as in ERASER's
    replacement variant (DeYoung et al. 2020). Padding positions are features
    like any other here; their maps are 0 when the ``Attributions`` carry a
    feature mask, and replacing ``[PAD]`` by ``[PAD]`` changes nothing.
    """

    kind: ClassVar[str] = "tokens"

    def check_inputs(self, inputs: Tensor, metric: str) -> Tensor:
        if not isinstance(inputs, Tensor) or inputs.is_floating_point() \
                or inputs.dtype == torch.bool or inputs.dim() != 2:
            got = (f"{inputs.dtype} of shape {tuple(inputs.shape)}" if isinstance(inputs, Tensor)
                   else type(inputs).__name__)
            raise ValueError(f"Expected `inputs` to be token ids, an integer tensor of shape "
                             f"(N, T), for {metric}, got {got}.")
        if inputs.shape[0] == 0:
            raise ValueError("Expected `inputs` to hold at least one sample, got an empty batch.")
        return inputs

    def remove(self, inputs: Tensor, removed: Tensor, baseline: Tensor | float | None = None
               ) -> Tensor:
        if baseline is None:
            raise ValueError("Expected a `baseline` token id for ReplaceTokens, got None.")
        b = torch.as_tensor(baseline)
        if b.is_floating_point() and not bool((b == b.round()).all()):
            raise ValueError(f"Expected `baseline` to be a token id (an integer) for token "
                             f"inputs, got {baseline!r}.")
        return super().remove(inputs, removed, b.round().long())


DROP_MODES = ("attention", "delete")


@dataclass(frozen=True)
class DropTokens(Removal):
    """Token ids (N, T) with an attention mask: removed tokens are dropped, not replaced.

    ``mode="attention"`` (default) sets the attention mask to 0 at removed
    positions: no other token attends to them, and the ids and positions of
    the others are unchanged. ``mode="delete"`` deletes them from the
    sequence: the kept tokens move left, in order, and every (N, T) input
    (ids, attention mask, token type ids) follows; the freed positions at the
    end take attention mask 0. That is what ferret 0.4.2 does (it decodes the
    kept ids to text and tokenizes that again) and what ERASER's
    comprehensiveness means by ``x \\ r``; with absolute position embeddings
    the two modes differ, since deletion shifts the positions of the tokens
    after a removed one.

    Needs an ``attention_mask`` among the model's inputs (a mapping key, or a
    parameter of ``model.forward`` of that name for a tuple); the removed mask
    is over the T positions of the ids. Padding positions (attention mask 0)
    are never removed by the metrics, so dropping one would change nothing.
    """

    mode: str = "attention"
    kind: ClassVar[str] = "tokens"

    def __post_init__(self) -> None:
        if self.mode not in DROP_MODES:
            raise ValueError(f"Expected `mode` in {DROP_MODES}, got {self.mode!r}.")

    def check_inputs(self, inputs: Tensor, metric: str) -> Tensor:
        return ReplaceTokens().check_inputs(inputs, metric)

    def remove(self, inputs: Tensor, removed: Tensor, baseline: Tensor | float | None = None
               ) -> Tensor:
        raise ValueError("DropTokens changes the attention mask, not the ids alone: pass the "
                         "model's inputs with an `attention_mask` (a mapping such as a "
                         "tokenizer's output) to the metric, or replace tokens by an id "
                         "(removal='replace'). Deletion, insertion, AOPC, faithfulness "
                         "correlation, sensitivity-n and the erasure metrics drop tokens; "
                         "monotonicity and model effective complexity, which put random "
                         "values in a feature's place, cannot.")

    def remove_inputs(self, structure: ModelInputs, removed: Tensor,
                      baseline: Tensor | float | None = None, *, model: nn.Module | None = None
                      ) -> ModelInputs:
        ids = self.check_inputs(structure.main, "token dropping")
        n, t = ids.shape
        removed = check_removed(removed, ids, t).to(ids.device)
        where = attention_mask_index(structure, model)
        if where is None:
            raise ValueError(f"Expected an `attention_mask` among the model's inputs to drop "
                             f"tokens through it (DropTokens, mode={self.mode!r}), got inputs "
                             f"{list(structure.keys)}: pass a mapping with 'attention_mask', or "
                             f"replace tokens by an id (removal='replace').")
        r = removed.shape[1]
        flat = removed.reshape(n * r, t)
        mask = structure.tensors[where].repeat_interleave(r, dim=0)
        kept_mask = mask * (~flat).to(mask.dtype)
        if self.mode == "attention":
            tensors = [t_.repeat_interleave(r, dim=0) for t_ in structure.tensors]
            tensors[where] = kept_mask
            return ModelInputs(structure.kind, structure.keys, tuple(tensors), structure.index)
        order = torch.argsort(flat.to(torch.int8), dim=1, stable=True)  # kept first, in order
        tensors = []
        for i, t_ in enumerate(structure.tensors):
            rows = kept_mask if i == where else t_.repeat_interleave(r, dim=0)
            if rows.dim() == 2 and rows.shape[1] == t:
                rows = rows.gather(1, order.to(rows.device))
            tensors.append(rows)
        return ModelInputs(structure.kind, structure.keys, tuple(tensors), structure.index)


def attention_mask_index(structure: ModelInputs, model: nn.Module | None) -> int | None:
    """Position in ``structure.tensors`` of the ``attention_mask`` (not the attributed input).

    By key for a mapping; for a tuple, by the name of ``model.forward``'s
    parameter at that position. None when there is none of the ids' shape.
    """
    if structure.kind == "mapping":
        names = structure.keys
    elif structure.kind == "tuple" and model is not None:
        try:
            names = tuple(inspect.signature(model.forward).parameters)[:len(structure.keys)]
        except (TypeError, ValueError):
            return None
    else:
        return None
    for i, name in enumerate(names):
        if name == "attention_mask" and i != structure.index \
                and tuple(structure.tensors[i].shape) == tuple(structure.main.shape):
            return i
    return None


@dataclass(frozen=True)
class ReplaceAudio(_Replacement):
    """Audio: spectrograms (N, C, F, T) by time-frequency patches, waveforms (N, C, T) by
    time segments; every element of a removed patch, all channels, takes the baseline's value.

    Parameters
    ----------
    patch : tuple of int, optional
        The patch, in bins: ``(frequency bins, frames)`` for spectrograms,
        ``(samples,)`` for waveforms. Feature i is the i-th patch of the grid
        that tiles the input from bin (0, 0), in row-major order (frequency
        first); the last patch of an axis is cut short where the axis is not a
        multiple of the patch. Default: one bin (one sample), the same
        removal as :class:`ReplacePixels`.

    A map ranks the patches by the sum of its values over each
    (:meth:`feature_scores`). Removing patches rather than single bins is
    the usual choice for spectrograms (the occlusion of Zeiler and Fergus
    2014 over time-frequency tiles), where a lone missing bin is an artefact
    a model never saw.

    Raises
    ------
    ValueError
        For a patch that is not a tuple of positive ints, or inputs that are
        neither spectrograms nor waveforms, or whose number of axes does not
        match the patch.
    """

    kind: ClassVar[str] = "audio"
    patch: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        p = self.patch
        if p is not None and (not isinstance(p, (tuple, list)) or len(p) not in (1, 2) or not all(
                isinstance(q, int) and not isinstance(q, bool) and q >= 1 for q in p)):
            raise ValueError(f"Expected `patch` to be (frequency bins, frames) or (samples,), "
                             f"positive ints, got {p!r}.")
        if p is not None:
            object.__setattr__(self, "patch", tuple(p))

    def check_inputs(self, inputs: Tensor, metric: str) -> Tensor:
        x = check_tensor(inputs, "inputs", min_dim=2)
        if x.dim() not in (3, 4):
            raise ValueError(f"Expected `inputs` to be audio for {metric}: spectrograms of "
                             f"shape (N, C, F, T) or waveforms (N, C, T), got shape "
                             f"{tuple(x.shape)}.")
        axes = "(F, T)" if x.dim() == 4 else "(T,)"
        if self.patch is not None and len(self.patch) != x.dim() - 2:
            raise ValueError(f"Expected a `patch` of {x.dim() - 2} sizes for inputs of shape "
                             f"{tuple(x.shape)} ({axes}), got {self.patch}.")
        if self.patch is not None and any(q > s for q, s in zip(self.patch, x.shape[2:],
                                                                 strict=True)):
            raise ValueError(f"Expected a `patch` no larger than the inputs' {axes} = "
                             f"{tuple(x.shape[2:])} for {metric}, got {self.patch}.")
        return x

    def _sizes(self, spatial: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(patch, grid): the patch size and the number of patches along each axis."""
        patch = self.patch or (1,) * len(spatial)
        return patch, tuple(-(-s // q) for s, q in zip(spatial, patch, strict=True))

    def n_features(self, feat: torch.Size) -> int:
        return math.prod(self._sizes(feat[1:])[1])

    def element_mask(self, removed: Tensor, feat: torch.Size) -> Tensor:
        spatial = tuple(feat[1:])
        patch, grid = self._sizes(spatial)
        mask = removed.reshape(*removed.shape[:-1], *grid)
        first = removed.dim() - 1
        for axis, (q, s) in enumerate(zip(patch, spatial, strict=True)):
            if q > 1:
                mask = mask.repeat_interleave(q, dim=first + axis).narrow(first + axis, 0, s)
        return mask.unsqueeze(first)                                    # (..., 1, *S)

    def feature_scores(self, values: Tensor) -> Tensor:
        """The map (N, C, *S) summed over channels and over each patch: (N, d)."""
        m = values.sum(dim=1)
        patch, grid = self._sizes(tuple(m.shape[1:]))
        pad = [a for g, q, s in zip(reversed(grid), reversed(patch), reversed(m.shape[1:]),
                                    strict=True) for a in (0, g * q - s)]
        m = torch.nn.functional.pad(m, pad)
        split = [a for g, q in zip(grid, patch, strict=True) for a in (g, q)]
        m = m.reshape(m.shape[0], *split)
        return m.sum(dim=tuple(range(2, m.dim(), 2))).reshape(m.shape[0], -1)


# The default operator of each kind of data.
_DEFAULTS: dict[str, type[Removal]] = {"tabular": ReplaceColumns, "image": ReplacePixels,
                                       "tokens": ReplaceTokens, "audio": ReplaceAudio}


def kind_of(inputs: Tensor, attributions: object = None) -> str:
    """The kind of data of ``inputs`` (N, *F).

    The kind recorded in ``attributions`` (an
    :class:`~xprune.attribution.Attributions` whose ``kind`` is set) if
    there is one; else told from the tensor: ``"tokens"`` for integer (N, T)
    ids, ``"tabular"`` for other (N, F), else ``"image"`` (audio has the
    shape of an image and must be recorded or named).
    """
    recorded = getattr(attributions, "kind", None)
    if recorded is not None:
        return recorded
    if inputs.dim() == 2 and not inputs.is_floating_point() and inputs.dtype != torch.bool:
        return "tokens"
    return "tabular" if inputs.dim() == 2 else "image"


def removal_for(inputs: Tensor, removal: Removal | None = None, *, kind: str | None = None,
                attributions: object = None, metric: str = "this metric") -> Removal:
    """The removal operator for ``inputs``: ``removal`` if given, else the default of their kind.

    The one place a metric's removal is chosen. The kind is ``kind`` if
    given (one of ``_DEFAULTS``), else the one recorded in ``attributions``
    (the maps being scored), else told from the tensor (:func:`kind_of`).
    ``removal`` (or the default) is checked to fit the inputs, with
    ``metric`` named in the error.

    Raises
    ------
    ValueError
        On an unknown ``kind`` (the message lists the known ones), or if the
        operator cannot remove features of these inputs (ROAD's imputation on
        tabular rows, say).
    """
    if kind is None:
        kind = getattr(attributions, "kind", None)
    if kind is not None and kind not in _DEFAULTS:
        raise ValueError(f"Expected `kind` in {sorted(_DEFAULTS)}, got {kind!r}."
                         + closest_name(str(kind), _DEFAULTS))
    if removal is not None and not isinstance(removal, Removal):
        raise ValueError(f"Expected `removal` to be a removal operator (xprune.metrics."
                         f"ReplaceAudio, ReplacePixels, ...), got {type(removal).__name__}.")
    if removal is None:
        removal = _DEFAULTS[kind_of(inputs) if kind is None else kind]()
    elif kind is not None and removal.kind != kind:
        raise ValueError(f"Expected a removal operator for {kind} data for {metric}, got "
                         f"{type(removal).__name__}, which removes {removal.kind} features.")
    removal.check_inputs(inputs, metric)
    return removal


@dataclass(frozen=True)
class Grouped(Removal):
    """Features grouped as ``groups`` groups them, removed element by element by ``inner``.

    For operators that compute the replacement of single pixels (ROAD's noisy
    linear imputation) on data whose features are groups of elements
    (:class:`ReplaceAudio`'s time-frequency patches): ``groups`` says what a
    feature is (:meth:`feature_scores`, ``n_features``, ``element_mask``),
    ``inner`` what takes a removed element's place. Removing patch i removes
    each of its bins through ``inner``.
    """

    inner: Removal
    groups: ReplaceAudio

    @property
    def kind(self) -> str:  # type: ignore[override]
        return self.groups.kind

    def check_inputs(self, inputs: Tensor, metric: str) -> Tensor:
        self.inner.check_inputs(inputs, metric)
        return self.groups.check_inputs(inputs, metric)

    def feature_scores(self, values: Tensor) -> Tensor:
        return self.groups.feature_scores(values)

    def remove(self, inputs: Tensor, removed: Tensor, baseline: Tensor | float | None = None
               ) -> Tensor:
        x = self.check_inputs(inputs, "removal")
        removed = check_removed(removed, x, self.groups.n_features(x.shape[1:])).to(x.device)
        bins = self.groups.element_mask(removed, x.shape[1:])       # (N, *R, 1, *S)
        bins = bins.reshape(*removed.shape[:-1], -1)                 # (N, *R, prod(S))
        return self.inner.remove(x, bins, baseline)


def grouped(inner: Removal, groups: Removal) -> Removal:
    """``inner`` over the features of ``groups``: ``inner`` itself unless ``groups`` groups
    several elements into a feature (a :class:`ReplaceAudio` with a patch larger than one bin)."""
    if isinstance(groups, ReplaceAudio) and groups.patch is not None \
            and math.prod(groups.patch) > 1:
        return Grouped(inner, groups)
    return inner


@dataclass(frozen=True)
class _Unit:
    """A removal a configuration names: the kind of data it applies to, its keys, its operator."""

    kind: str
    keys: tuple[str, ...]
    make: Callable[..., Removal]
    example: str


#: The removals an analysis configuration names, ``[metrics] removal = {unit = ..., ...}``:
#: what a feature is for the removal metrics, beyond each kind's default (one column, pixel,
#: token or time-frequency bin, replaced by the baseline). Everything that differs by kind
#: of data is here and in ``_DEFAULTS``; a new unit is one entry.
REMOVAL_UNITS: dict[str, _Unit] = {
    "patch": _Unit("audio", ("frequency_bins", "frames"),
                   lambda frequency_bins, frames: ReplaceAudio(patch=(frequency_bins, frames)),
                   '{unit = "patch", frequency_bins = 8, frames = 4}'),
    "segment": _Unit("audio", ("samples",), lambda samples: ReplaceAudio(patch=(samples,)),
                     '{unit = "segment", samples = 160}'),
}


def removal_from_spec(spec: object, name: str = "removal") -> Removal:
    """The removal operator a configuration table names, e.g. ``{unit = "patch",
    frequency_bins = 8, frames = 4}`` -> ``ReplaceAudio(patch=(8, 4))``.

    Parameters
    ----------
    spec : Mapping
        ``unit`` (one of :data:`REMOVAL_UNITS`) and that unit's keys, positive
        integers: ``frequency_bins`` and ``frames`` for time-frequency patches
        of spectrograms, ``samples`` for time segments of waveforms.
    name : str
        How errors name the table (``"metrics.removal"`` in a config).

    Returns
    -------
    Removal
        The operator; :func:`removal_for` then checks it against the data
        (its kind, and a patch no larger than the inputs).

    Raises
    ------
    ValueError
        If ``spec`` is not a table, names no or an unknown ``unit``, has unknown
        or missing keys (the message lists the expected ones), or a value that
        is not a positive integer.
    """
    if not isinstance(spec, dict):
        raise ValueError(f"Expected `{name}` to be a table such as "
                         f"{REMOVAL_UNITS['patch'].example}, got {spec!r}.")
    unit = spec.get("unit")
    if unit not in REMOVAL_UNITS:
        raise ValueError(f"Expected `{name}.unit` in {sorted(REMOVAL_UNITS)}, got {unit!r}."
                         + closest_name(str(unit), list(REMOVAL_UNITS)))
    entry = REMOVAL_UNITS[unit]
    allowed = ("unit", *entry.keys)
    for key in spec:
        if key not in allowed:
            raise ValueError(f"Unknown key `{key}` in `{name}` (unit {unit!r}); expected some "
                             f"of {sorted(allowed)}." + closest_name(str(key), allowed))
    missing = [k for k in entry.keys if k not in spec]
    if missing:
        raise ValueError(f"Expected `{name}` with unit {unit!r} to set {' and '.join(entry.keys)}"
                         f", e.g. {entry.example}; missing {', '.join(missing)}.")
    return entry.make(**{k: check_positive_int(spec[k], f"{name}.{k}") for k in entry.keys})


def spec_kind(spec: object) -> str | None:
    """The kind of data a (valid) removal table applies to, None for none."""
    return REMOVAL_UNITS[spec["unit"]].kind if isinstance(spec, dict) else None


def as_baseline(baseline: float | Tensor, x: Tensor) -> Tensor:
    """A checked replacement baseline for inputs ``x`` (N, *F): a scalar tensor, (*F) or (N, *F).

    A number, a tensor of the features' shape (*F), or one per sample (N, *F);
    in the inputs' dtype and device.
    """
    if isinstance(baseline, Tensor):
        b = check_tensor(baseline.reshape(1, *baseline.shape), "baseline", min_dim=1)[0]
        if tuple(b.shape) == tuple(x.shape):
            return b.to(dtype=x.dtype, device=x.device)
        if b.dim() and tuple(b.shape) != tuple(x.shape[1:]):
            raise ValueError(f"Expected `baseline` to be a scalar or of shape "
                             f"{tuple(x.shape[1:])} or {tuple(x.shape)}, got "
                             f"{tuple(baseline.shape)}.")
        return b.to(dtype=x.dtype, device=x.device)
    if isinstance(baseline, bool) or not isinstance(baseline, (int, float)):
        raise ValueError(f"Expected `baseline` to be a number or a tensor, got {baseline!r}.")
    return torch.tensor(float(baseline), dtype=x.dtype, device=x.device)


def resolve_baseline(baseline: float | Tensor | str, x: Tensor,
                     generator: torch.Generator | None) -> Tensor:
    """:func:`as_baseline`, with a name (``"uniform"``, ``"blur"``, ...) made by make_baseline."""
    if isinstance(baseline, str):
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        baseline = make_baseline(baseline, x, generator=gen)
    return as_baseline(baseline, x)


def perturbed_scores(model: nn.Module, x: Tensor, targets: Tensor,
                     masks_for: Callable[[slice], Tensor], n_per_sample: int,
                     baseline: Tensor | Callable[[slice], Tensor], output: str, max_rows: int,
                     reduce: Callable[[slice, Tensor], Tensor] | None = None, *,
                     removal: Removal, reuse_repeats: bool = False) -> Tensor:
    """Scores of ``x`` with the features of ``masks_for(sample_slice) -> (c, *R, d)`` removed.

    ``removal`` (the metric's choice, from :func:`removal_for`) takes out the
    features True in a mask; a replacing operator puts ``baseline`` there: a tensor
    from :func:`as_baseline` (scalar, (*F) or per sample (N, *F)), or a
    callable ``replacement_for(sample_slice) -> Tensor`` of the operator's
    per-row form (c, *R', *F), values per row such as fresh random draws.
    ``R`` is one axis of ``n_per_sample`` rows, or several axes that, broadcast
    with the replacement's, hold that many (row-major): masks (c, K, 1, d) and
    draws (c, 1, S, *F) give K * S rows without copies.

    Samples are processed in order, in chunks small enough that one forward
    pass sees at most ``max_rows`` rows; ``masks_for`` and then
    ``replacement_for`` are called once per chunk, in order, so both may draw
    from a generator and keep per-chunk results. Returns shape
    (N, n_per_sample), or with ``reduce(sample_slice, scores (c,
    n_per_sample)) -> Tensor (c, ...)`` the reduced chunks concatenated, so
    that only each chunk's reduction is kept.

    ``reuse_repeats`` (the curves: deletion, insertion, region perturbation / AOPC)
    forwards only the rows that differ from the row before them of the same sample
    (:func:`repeated_rows`: bit for bit, in every input the model takes) and gives each
    repeat its predecessor's score: a step that removes (or inserts) only features
    already at the baseline's value (the digits' black pixels with a black baseline)
    leaves the row as it was. The scores are those of the rows forwarded, so a curve
    equals the one scored row by row; against scoring every row it differs only by the
    rounding a pass's composition may bring (float32 convolutions batch rows
    differently), and the same call repeated gives the same bits.
    """
    n = x.shape[0]
    chunk = max(1, max_rows // n_per_sample)
    out = []
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        removed = masks_for(sl)                                       # (c, *R, d)
        if callable(baseline):
            b = baseline(sl)
        elif baseline.dim() == x.dim():                               # one baseline per sample
            b = baseline[sl]
        else:
            b = baseline
        part, perturbed = removed_rows(model, removal, x, sl, removed, b, n_per_sample)
        t = targets[sl].repeat_interleave(n_per_sample)
        if reuse_repeats and n_per_sample > 1:
            scores = _scores_of_distinct_rows(part, perturbed, t, n_per_sample, output,
                                              max_rows)
        else:
            scores = target_scores(part, perturbed, t, output=output, max_rows=max_rows)
        scores = scores.reshape(-1, n_per_sample)
        out.append(scores if reduce is None else reduce(sl, scores))
    return torch.cat(out)


def _row_bits(t: Tensor) -> Tensor:
    """``t`` as integers of its elements' width (float rows compare bit for bit: -0.0 is not
    0.0, a NaN equals itself), or itself when it is not floating point."""
    if not t.is_floating_point():
        return t
    return t.view({8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}[t.element_size()])


def repeated_rows(tensors: Sequence[Tensor], n_per_sample: int) -> Tensor:
    """True where a row equals the row before it of the same sample: bool (M,).

    ``tensors`` hold the same M = c * ``n_per_sample`` rows, sample major (sample i's rows
    ``i * n_per_sample ..``), e.g. the attributed input and any other input given per row; a
    row repeats when it is bit for bit the previous one in every tensor. A sample's first
    row never repeats.
    """
    m = tensors[0].shape[0]
    c = m // n_per_sample
    same = torch.ones(c, n_per_sample - 1, dtype=torch.bool)
    for t in tensors:
        bits = _row_bits(t).reshape(c, n_per_sample, -1)
        same &= (bits[:, 1:] == bits[:, :-1]).all(dim=2).cpu()
    return torch.cat([torch.zeros(c, 1, dtype=torch.bool), same], dim=1).reshape(m)


def _scores_of_distinct_rows(model: nn.Module, rows: Tensor, targets: Tensor,
                             n_per_sample: int, output: str, max_rows: int) -> Tensor:
    """:func:`target_scores` of ``rows`` (M, *F), each repeat (:func:`repeated_rows`)
    given the score of the row it repeats instead of being forwarded: shape (M,).

    A :class:`PassThrough` model's other inputs follow the forwarded rows: those of each
    row's sample, or, where the removal gave every row its own (token dropping), the row's
    own, which must repeat too.
    """
    m = rows.shape[0]
    tensors = [rows]
    if isinstance(model, PassThrough) and model._samples().shape[0] == m:   # inputs per row
        own = model._samples()
        tensors += [t[own.to(t.device)] for t in model.structure.others]
    repeat = repeated_rows(tensors, n_per_sample)
    if not bool(repeat.any()):
        return target_scores(model, rows, targets, output=output, max_rows=max_rows)
    kept = (~repeat).nonzero()[:, 0]
    if isinstance(model, PassThrough):          # each forwarded row keeps its own other inputs
        model = model.select(kept // rows_per_sample(model._samples().shape[0], m))
    scores = target_scores(model, rows[kept.to(rows.device)], targets[kept], output=output,
                           max_rows=max_rows)
    return scores[(~repeat).cumsum(0) - 1]       # a repeat: the last forwarded row before it


def removed_rows(model: nn.Module, removal: Removal, x: Tensor, sl: slice, removed: Tensor,
                 baseline: Tensor | float | None, n_per_sample: int) -> tuple[nn.Module, Tensor]:
    """The removed rows (c * n_per_sample, *F) of the samples ``sl`` of ``x``, and their model.

    The model's other inputs (a :class:`~xprune.metrics._base.PassThrough`) follow each row's
    sample. An operator that changes another input too (:class:`DropTokens`: the attention
    mask) works on the inputs as a structure (:meth:`Removal.remove_inputs`), and the model
    then takes the rows' own other inputs.
    """
    if not isinstance(model, PassThrough) or \
            type(removal).remove_inputs is Removal.remove_inputs:
        return (for_samples(model, sl),
                removal.remove(x[sl], removed, baseline).reshape(-1, *x.shape[1:]))
    flat = removed.reshape(removed.shape[0], -1, removed.shape[-1])       # (c, R, d)
    if flat.shape[1] != n_per_sample:
        raise ValueError(f"{type(removal).__name__} removes features from the model's inputs "
                         f"as a structure, one removal per row; this metric broadcasts random "
                         f"replacement values over its rows, which it cannot take: use "
                         f"removal=ReplaceTokens() (or another replacing operator).")
    part = model.select(sl)
    s, samples = part.structure, part._samples()
    inputs = ModelInputs(s.kind, s.keys, tuple(
        x[sl] if i == s.index else t[samples.to(t.device)] for i, t in enumerate(s.tensors)),
        s.index)
    rows = removal.remove_inputs(inputs, flat, baseline, model=model.model)
    return PassThrough(model.model, rows), rows.main


def check_removal_spec(spec: dict[str, Any], inputs: Tensor, kind: str | None, data: str,
                       name: str = "metrics.removal") -> Removal:
    """The operator a configured removal table names, checked against the data before training.

    Parameters
    ----------
    spec : Mapping
        As for :func:`removal_from_spec`.
    inputs : Tensor of shape (N, *F)
        A batch of the data (one sample suffices).
    kind : str or None
        The data's recorded kind (``DatasetSplit.kind``); None: told from the tensor.
    data : str
        The data set's name, for the messages.

    Raises
    ------
    ValueError
        On an invalid table (:func:`removal_from_spec`), data of another kind
        than the unit removes from, inputs of the wrong number of axes for the
        unit, or a patch larger than the inputs (naming the key and the size).
    """
    op = removal_from_spec(spec, name)
    unit = REMOVAL_UNITS[spec["unit"]]
    data_kind = kind or kind_of(inputs)
    if op.kind != data_kind:
        raise ValueError(f"Expected {op.kind} data for `{name}` (unit {spec['unit']!r} "
                         f"removes {op.kind} features), got the data {data!r} of kind "
                         f"{data_kind!r}; leave `{name}` out to remove each kind's single "
                         f"features.")
    if inputs.dim() - 2 != len(unit.keys):
        raise ValueError(f"Expected inputs with {len(unit.keys)} axes after the channels for "
                         f"`{name}` (unit {spec['unit']!r}: {', '.join(unit.keys)}), got the "
                         f"data {data!r} of shape {tuple(inputs.shape[1:])} per sample.")
    for key, size in zip(unit.keys, inputs.shape[2:], strict=True):
        if spec[key] > size:
            raise ValueError(f"Expected `{name}.{key}` <= {size}, the data {data!r}'s "
                             f"{key.replace('_', ' ')} per sample (shape "
                             f"{tuple(inputs.shape[1:])}), got {spec[key]}.")
    return removal_for(inputs, op, kind=data_kind, metric=f"`{name}`")
