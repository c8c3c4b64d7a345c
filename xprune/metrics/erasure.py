"""Faithfulness by erasure: comprehensiveness, sufficiency, normalised AOPC and tau-LOO.

The faithfulness scores of ERASER (DeYoung et al. 2020), the normalisation of
Edin et al. (2025) that makes them comparable across models, and the
leave-one-out correlation of Jain and Wallace (2019). They were written for
text, but a feature here is what it is everywhere in :mod:`xprune.metrics`: a
token, a tabular column or a pixel (all channels), and features are taken out
by the removal operator of the data's kind (:mod:`xprune.metrics._removal`).

Notation, per sample: ``x`` the input, ``L`` its number of *counted* features
(for tokens the real ones: padding, and special tokens when the map's
``feature_mask`` says so, are never ranked, never removed and never counted),
``p(x)`` the target's softmax probability (or logit), ``B`` the removal
fractions (default 1, 5, 10, 20 and 50%), ``n_b = floor(b * L)`` and ``r_b``
the ``n_b`` counted features with the highest attribution (signed, descending,
ties by position).

- comprehensiveness ``= 1/|B| sum_b [p(x) - p(x \\ r_b)]``: higher is better,
  removing the evidence hurts the prediction;
- sufficiency ``= 1/|B| sum_b [p(x) - p(r_b)]``, ``p(r_b)`` with only ``r_b``
  kept of the counted features: lower is better, the evidence alone keeps it.

Both are averages over the |B| bins (an AOPC over the fractions; ferret
0.4.2 and the ERASER scorer average over the bins too). A bin with
``n_b = 0`` counts as it is (nothing removed: 0 for comprehensiveness;
everything removed for sufficiency); ferret instead skips empty bins and
bins whose rationale equals the previous one (see the tests).

All samples and bins go through the model together, in forward passes of at
most ``max_rows`` rows, on CPU of about ``CPU_FORWARD_TOKENS`` tokens
(:func:`~xprune.metrics._base.forward_rows`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Generator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._state import as_logits, eval_mode, model_device
from .._validation import check_positive_int, check_targets, check_tensor
from ..attribution import DEFAULT_MAX_ROWS, Attributions, n_outputs
from ..attribution._inputs import ModelInputs, TokenOptions, structure_inputs, token_feature_mask
from ._base import (
    check_output,
    forward_rows,
    output_scores,
    per_sample_masked,
    register,
    warn_undefined,
)
from ._removal import (
    DropTokens,
    Removal,
    ReplaceTokens,
    as_baseline,
    attention_mask_index,
    kind_of,
    removal_for,
)
from .agreement import kendall_tau

__all__ = ["DEFAULT_FRACTIONS", "comprehensiveness", "erasure_curves",
           "normalised_comprehensiveness", "normalised_sufficiency", "sufficiency", "tau_loo"]

#: ERASER's removal fractions (DeYoung et al. 2020, sec. 4.2).
DEFAULT_FRACTIONS = (0.01, 0.05, 0.1, 0.2, 0.5)

_ERASER = ("DeYoung, Jain, Rajani, Lehman, Xiong, Socher & Wallace 2020, 'ERASER: A benchmark "
           "to evaluate rationalized NLP models', ACL (sec. 4.2, AOPC over bins)")
_EDIN = ("Edin, Motzfeldt, Christensen, Ruotsalo, Maaloe & Maistro 2025, 'Normalized AOPC: "
         "fixing misleading faithfulness metrics for feature attribution explainability', ACL")
_REMOVALS = ("replace", "attention", "delete")


# --- inputs ------------------------------------------------------------------------------

class _Setup:
    """Checked inputs of an erasure metric: structure, scores, counted features, targets."""

    def __init__(self, model: nn.Module, inputs: Any, attributions: Tensor | Attributions,
                 target: Any, *, removal: str | Removal | None, baseline: Any,
                 output: str, max_rows: int, feature_mask: Tensor | None) -> None:
        check_output(output)
        check_positive_int(max_rows, "max_rows")
        attribute_to = attributions.attribute_to if isinstance(attributions, Attributions) \
            else None
        structure = structure_inputs(inputs, attribute_to)
        x = structure.main
        tokens = kind_of(x) == "tokens"
        if not tokens:
            x = check_tensor(x, "inputs", min_dim=2)
        values = attributions.values if isinstance(attributions, Attributions) else attributions
        values = check_tensor(values, "attributions", min_dim=2)
        if tuple(values.shape) != tuple(x.shape):
            raise ValueError(f"Expected `attributions` of the attributed input's shape "
                             f"{tuple(x.shape)}, got {tuple(values.shape)}.")
        if isinstance(attributions, Attributions) and (
                attributions.attributed.shape != x.shape
                or not torch.equal(attributions.attributed.to(x.device, x.dtype), x)):
            raise ValueError("Expected `attributions` to explain these `inputs`: the "
                             "Attributions record was computed on other inputs.")
        self.model, self.output, self.max_rows = model, output, max_rows
        self.structure = structure
        self.removal, self.baseline = self._removal(removal, baseline, tokens)
        self.scores = self.removal.feature_scores(values).double().cpu()       # (N, d)
        n, d = self.scores.shape
        if feature_mask is None and isinstance(attributions, Attributions):
            feature_mask = attributions.feature_mask
        if feature_mask is None and tokens:
            feature_mask = token_feature_mask(structure, model, TokenOptions())
        if feature_mask is None:
            kept = torch.ones(n, d, dtype=torch.bool)
        else:
            if not isinstance(feature_mask, Tensor) or feature_mask.dtype != torch.bool \
                    or feature_mask.reshape(n, -1).shape != (n, d):
                got = (f"{feature_mask.dtype} of shape {tuple(feature_mask.shape)}"
                       if isinstance(feature_mask, Tensor) else type(feature_mask).__name__)
                raise ValueError(f"Expected `feature_mask` to be a bool tensor with one entry "
                                 f"per feature, ({n}, {d}), got {got}.")
            kept = feature_mask.reshape(n, d).cpu()
        self.kept = kept
        self.counts = kept.sum(dim=1)                                          # L per sample
        self.targets = self._targets(target)

    def _targets(self, target: Any) -> Tensor:
        t = check_targets(target, self.scores.shape[0], n_outputs(self.model,
                                                                   self.structure.original()))
        return torch.zeros(self.scores.shape[0], dtype=torch.long) if t is None else t

    def _removal(self, removal, baseline, tokens: bool) -> tuple[Removal, Any]:
        x = self.structure.main
        if isinstance(removal, str):
            if removal not in _REMOVALS:
                raise ValueError(f"Expected `removal` in {_REMOVALS} or a Removal operator, got "
                                 f"{removal!r}.")
            if removal != "replace" and not tokens:
                raise ValueError(f"Expected removal='replace' for {kind_of(x)} inputs: "
                                 f"{removal!r} drops tokens through the attention mask, for "
                                 f"token ids only.")
            removal = (None if removal == "replace" else DropTokens(removal))
        op = removal_for(x, removal, metric="erasure metrics")
        if isinstance(op, DropTokens):
            return op, None
        if isinstance(op, ReplaceTokens):
            if baseline is None:
                baseline = getattr(getattr(self.model, "config", None), "mask_token_id", None)
            if baseline is None:
                raise ValueError("Expected `baseline`, the id that replaces removed tokens "
                                 "(tokenizer.mask_token_id for [MASK]), got None; or drop "
                                 "tokens with removal='attention' or 'delete'.")
            return op, torch.as_tensor(baseline)
        return op, as_baseline(0.0 if baseline is None else baseline, x)

    @property
    def params(self) -> dict:
        """How features were removed, for the results' ``params``."""
        op = self.removal
        if isinstance(op, DropTokens):
            return {"removal": op.mode}
        base = self.baseline
        return {"removal": "replace" if isinstance(op, ReplaceTokens) else type(op).__name__,
                "baseline": base.tolist() if base.dim() == 0 else "tensor"}

    def scores_of(self, rows: list[tuple[int, Tensor]]) -> Tensor:
        """The target's score for each (sample, removed mask (d,)) row: shape (len(rows),)."""
        out = torch.empty(len(rows), dtype=torch.float64)
        for start in range(0, len(rows), self.max_rows):
            part = rows[start:start + self.max_rows]
            samples = torch.tensor([i for i, _ in part])
            masks = torch.stack([m for _, m in part])[:, None, :]              # (M, 1, d)
            sub = ModelInputs(self.structure.kind, self.structure.keys,
                              tuple(t[samples.to(t.device)] for t in self.structure.tensors),
                              self.structure.index)
            base = self.baseline
            if isinstance(base, Tensor) and base.dim() == sub.main.dim():       # per sample
                base = base[samples.to(base.device)]
            removed = self.removal.remove_inputs(sub, masks.to(sub.main.device), base,
                                                 model=self.model)
            out[start:start + len(part)] = self._forward(removed, self.targets[samples])
        return out

    @torch.no_grad()
    def _forward(self, structure: ModelInputs, targets: Tensor) -> Tensor:
        """Target scores of the rows of ``structure``.

        Passes of at most ``max_rows`` rows, on CPU of about
        :data:`~xprune.metrics._base.CPU_FORWARD_TOKENS` tokens (or
        ``CPU_FORWARD_ELEMENTS`` input elements), :func:`~xprune.metrics._base.forward_rows`:
        memory stays bounded by the pass, not by the number of rows (tau-LOO's one row per
        token). With an attention mask among the inputs, rows are sorted by their
        attended length and sent in groups of at most :data:`_GROUP` rows (and the
        rows above at the group's width), each cut after its last attended position
        (masked trailing positions change nothing in a model that honours its attention
        mask; they only cost time, and deleting tokens makes sequences shorter).
        """
        where = attention_mask_index(structure, self.model)
        m = len(structure)
        out = torch.empty(m, dtype=torch.float64)
        if where is None:
            step = forward_rows(self.model, structure.main, self.max_rows) if m else 1
            for start in range(0, m, step):
                out[start:start + step] = self._logit_scores(structure.rows(start, start + step),
                                                             targets[start:start + step])
            return out
        mask = structure.tensors[where]
        t = mask.shape[1]
        positions = torch.arange(1, t + 1, device=mask.device)
        lengths = ((mask != 0) * positions).amax(dim=1).clamp(min=1).cpu()
        order = torch.argsort(lengths, stable=True)
        start = 0
        while start < m:
            # at most _GROUP rows, and the rows forward_rows allows at the width of the
            # group's last row (the longest: rows are sorted by length), or fewer
            stop = min(m, start + _GROUP)
            width = int(lengths[order[stop - 1]])
            stop = min(stop, start + forward_rows(self.model, structure.main[:1, :width],
                                                  self.max_rows))
            rows = order[start:stop]
            start = stop
            width = int(lengths[rows].max())
            idx = rows.to(mask.device)
            part = ModelInputs(structure.kind, structure.keys, tuple(
                (x[idx][:, :width] if x.dim() == 2 and x.shape[1] == t else x[idx])
                for x in structure.tensors), structure.index)
            out[rows] = self._logit_scores(part, targets[rows])
        return out

    def _logit_scores(self, structure: ModelInputs, targets: Tensor) -> Tensor:
        device = model_device(self.model)
        with eval_mode(self.model):
            moved = structure.to_model(self.model)
            logits = as_logits(moved.call(self.model, moved.main, moved.others), self.model)
            scores = output_scores(logits, self.output, self.model)
            return scores.gather(1, targets.to(device)[:, None])[:, 0].double().cpu()


#: Rows per forward pass of token inputs with an attention mask, grouped by length.
_GROUP = 256


def _check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    if isinstance(fractions, (str, bytes)) or not isinstance(fractions, Sequence) \
            or not fractions:
        raise ValueError(f"Expected `fractions` to be a non-empty sequence of numbers in "
                         f"(0, 1], got {fractions!r}.")
    for f in fractions:
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
            raise ValueError(f"Expected every entry of `fractions` in (0, 1], got {f!r}.")
    return tuple(float(f) for f in fractions)


def bin_sizes(fractions: Sequence[float], count: int) -> list[int]:
    """``floor(b * count)`` for each fraction b (1e-9 guards products such as 0.29 * 100)."""
    return [int(math.floor(f * count + 1e-9)) for f in fractions]


def _ranks(scores: Tensor, kept: Tensor) -> Tensor:
    """Rank of each counted feature by descending score (0 = highest; ties by position);
    uncounted features rank after every counted one."""
    n, d = scores.shape
    key = torch.where(kept, scores, torch.full_like(scores, -math.inf))
    order = torch.argsort(key, dim=1, descending=True, stable=True)
    ranks = torch.empty_like(order).scatter_(1, order, torch.arange(d).expand(n, d))
    return torch.where(kept, ranks, torch.full_like(ranks, d))


def erasure_curves(model: nn.Module, inputs: Tensor | tuple | Mapping,
                   attributions: Tensor | Attributions, target: Any, *,
                   fractions: Sequence[float] = DEFAULT_FRACTIONS,
                   removal: str | Removal | None = None, baseline: Any = None,
                   output: str = "probability", feature_mask: Tensor | None = None,
                   max_rows: int = DEFAULT_MAX_ROWS,
                   which: Sequence[str] = ("comprehensiveness", "sufficiency")
                   ) -> dict[str, Tensor]:
    """The per-bin drops behind :func:`comprehensiveness` and :func:`sufficiency`.

    Returns a dict with ``"full"`` (N,) the score of the unperturbed input,
    ``"comprehensiveness"`` and ``"sufficiency"`` (N, |B|) the drops
    ``p(x) - p(x \\ r_b)`` and ``p(x) - p(r_b)``, ``"sizes"`` (N, |B|) the
    ``n_b`` and ``"params"`` the removal used. Arguments as for :func:`comprehensiveness`;
    ``which`` names the curves to compute (one forward row per sample and bin each).
    """
    fractions = _check_fractions(fractions)
    s = _Setup(model, inputs, attributions, target, removal=removal, baseline=baseline,
               output=output, max_rows=max_rows, feature_mask=feature_mask)
    ranks = _ranks(s.scores, s.kept)
    n, d = s.scores.shape
    sizes = torch.tensor([bin_sizes(fractions, int(c)) for c in s.counts]).reshape(n, -1)
    which = tuple(which)
    if not which or any(w not in ("comprehensiveness", "sufficiency") for w in which):
        raise ValueError(f"Expected `which` to name 'comprehensiveness' and/or 'sufficiency', "
                         f"got {which!r}.")
    rows: list[tuple[int, Tensor]] = []
    for i in range(n):
        rows.append((i, torch.zeros(d, dtype=torch.bool)))
        for k in sizes[i].tolist():
            top = ranks[i] < k
            for w in which:                     # r_b removed, or only r_b kept
                rows.append((i, top if w == "comprehensiveness" else s.kept[i] & ~top))
    values = s.scores_of(rows).reshape(n, 1 + len(which) * len(fractions))
    full = values[:, 0]
    out = {"full": full, "sizes": sizes, "params": s.params}
    for j, w in enumerate(which):
        out[w] = full[:, None] - values[:, 1 + j::len(which)]
    return out


_ARGS_DOC = """
    Parameters
    ----------
    model : nn.Module
        Returns logits (M, C) (a tensor, a ``ModelOutput`` with ``logits`` or a
        tuple); evaluated in eval mode, restored afterwards.
    inputs : Tensor of shape (N, *F), tuple or mapping of Tensors
        The model's inputs, as for :func:`xprune.attribute` (a tokenizer's
        output for text); the attributed one (the ``Attributions``'
        ``attribute_to``, else the first) loses features, the others follow.
    attributions : Tensor of shape (N, *F) or Attributions
        One score per feature (channels summed for images).
    target : int, sequence or Tensor of shape (N,)
    fractions : sequence of float in (0, 1]
        The bins B; default ERASER's 1, 5, 10, 20 and 50%.
    removal : {"replace", "attention", "delete"} or Removal, optional
        How a feature is taken out. Default and ``"replace"``: the kind's
        replacement (a token id, a column's or pixel's value) by ``baseline``;
        for token ids ``"attention"`` sets the attention mask to 0 at removed
        tokens and ``"delete"`` deletes them from the sequence, as ferret does
        (:class:`~xprune.metrics._removal.DropTokens`).
    baseline : int, float or Tensor, optional
        The replacement: for tokens the [MASK] id (default: the model config's
        ``mask_token_id``; required when it has none), else a value, (*F) or
        (N, *F) (default 0).
    output : {"probability", "logit"}
        The target's softmax probability (ERASER, default) or its logit.
    feature_mask : bool Tensor of shape (N, d), optional
        The counted features; default the ``Attributions``' mask, else for
        token ids the attention mask and the model's pad id, else all.
    max_rows : int
        Rows per forward pass at most.

    Raises
    ------
    ValueError
        On a fraction outside (0, 1], an unknown removal, token dropping for
        non-token inputs or without an attention mask, a missing [MASK] id,
        mismatched shapes, a bad target or output.
"""


@register(category="faithfulness", kind="model", higher_is_better=True, range=(-1.0, 1.0),
          reference=_ERASER + "; ferret 0.4.2")
def comprehensiveness(model: nn.Module, inputs: Tensor | tuple | Mapping,
                      attributions: Tensor | Attributions, target: Any, *,
                      fractions: Sequence[float] = DEFAULT_FRACTIONS,
                      removal: str | Removal | None = None, baseline: Any = None,
                      output: str = "probability", feature_mask: Tensor | None = None,
                      max_rows: int = DEFAULT_MAX_ROWS) -> Tensor:
    """ERASER comprehensiveness, ``1/|B| sum_b [p(x) - p(x \\ r_b)]``, per sample.

    ``r_b`` is the top ``floor(b * L)`` of the L counted features (module docstring).
    {args}
    Returns
    -------
    Tensor of shape (N,), float64
        In [-1, 1] for probabilities; higher is better.
    """
    return erasure_curves(model, inputs, attributions, target, fractions=fractions,
                          removal=removal, baseline=baseline, output=output,
                          feature_mask=feature_mask, max_rows=max_rows,
                          which=("comprehensiveness",))["comprehensiveness"].mean(dim=1)


@register(category="faithfulness", kind="model", higher_is_better=False, range=(-1.0, 1.0),
          reference=_ERASER + "; ferret 0.4.2")
def sufficiency(model: nn.Module, inputs: Tensor | tuple | Mapping,
                attributions: Tensor | Attributions, target: Any, *,
                fractions: Sequence[float] = DEFAULT_FRACTIONS,
                removal: str | Removal | None = None, baseline: Any = None,
                output: str = "probability", feature_mask: Tensor | None = None,
                max_rows: int = DEFAULT_MAX_ROWS) -> Tensor:
    """ERASER sufficiency, ``1/|B| sum_b [p(x) - p(r_b)]``, per sample.

    ``p(r_b)``: every counted feature but the top ``floor(b * L)`` removed;
    uncounted ones (padding, special tokens) stay as they are.
    {args}
    Returns
    -------
    Tensor of shape (N,), float64
        In [-1, 1] for probabilities; lower is better.
    """
    return erasure_curves(model, inputs, attributions, target, fractions=fractions,
                          removal=removal, baseline=baseline, output=output,
                          feature_mask=feature_mask, max_rows=max_rows,
                          which=("sufficiency",))["sufficiency"].mean(dim=1)


comprehensiveness.__doc__ = comprehensiveness.__doc__.replace("{args}", _ARGS_DOC)
sufficiency.__doc__ = sufficiency.__doc__.replace("{args}", _ARGS_DOC)


# --- normalised AOPC (Edin et al.) -------------------------------------------------------

def _chain_bounds(counted: list[int], sizes: list[int], *, exact: bool,
                  beam_size: int) -> Generator[list, list, tuple[float, float]]:
    """Min and max over nested chains S_1 c ... c S_K (|S_k| = sizes[k]) of mean_k v(S_k).

    A generator: it yields the frozensets of counted feature indices whose
    values v it needs next and is sent their values (a list of float), so
    that the searches of all samples advance together and share forward
    passes; it returns (min, max). Exact: dynamic programming over every subset of
    each size (a chain's best prefix only matters through its last set).
    Otherwise a beam search that grows sets one feature at a time, keeping
    the ``beam_size`` best (and, separately, worst) partial chains, each
    ranked by its bins so far plus the value of its current set.
    """
    k = len(sizes)
    if exact:
        best = {frozenset(): (0.0, 0.0)}
        prev = 0
        for size in sizes:
            if size == prev:                       # same set again: same value
                level = list(best)
                vals = yield level
                best = {s: (lo + v, hi + v) for (s, (lo, hi)), v in zip(best.items(), vals,
                                                                         strict=True)}
                continue
            level = [frozenset(c) for c in itertools.combinations(counted, size)]
            vals = yield level
            new = {}
            for s, v in zip(level, vals, strict=True):
                subs = [p for p in (frozenset(c) for c in itertools.combinations(sorted(s), prev))
                        if p in best]
                lo = min(best[p][0] for p in subs)
                hi = max(best[p][1] for p in subs)
                new[s] = (lo + v, hi + v)
            best, prev = new, size
        return min(lo for lo, _ in best.values()) / k, max(hi for _, hi in best.values()) / k
    bounds = []
    zeros = sum(1 for z in sizes if z == 0)
    v_empty = (yield [frozenset()])[0] if zeros else 0.0
    for sign in (-1.0, 1.0):                       # -1: the smallest AOPC, +1: the largest
        pick = max if sign > 0 else min
        beam = [(zeros * v_empty, frozenset())]    # (sum over the bins passed, set)
        for step in range(1, max(sizes) + 1):
            cand: dict[frozenset, float] = {}
            for acc, st in beam:
                for j in counted:
                    if j not in st:
                        grown = st | {j}
                        cand[grown] = pick(cand[grown], acc) if grown in cand else acc
            sets = list(cand)
            hits = sum(1 for z in sizes if z == step)
            ranked = []
            vals = yield sets
            for st, v in zip(sets, vals, strict=True):
                acc = cand[st] + hits * v
                ranked.append((sign * (acc if hits else acc + v), acc, st))
            ranked.sort(key=lambda e: e[0], reverse=True)
            beam = [(acc, st) for _, acc, st in ranked[:beam_size]]
        bounds.append(pick(acc for acc, _ in beam) / k)
    return bounds[0], bounds[1]


def _normalised(which: str, model, inputs, attributions, target, *, fractions, removal,
                baseline, output, feature_mask, exact_up_to, beam_size, max_rows) -> Tensor:
    fractions = _check_fractions(fractions)
    check_positive_int(beam_size, "beam_size")
    if isinstance(exact_up_to, bool) or not isinstance(exact_up_to, int) or exact_up_to < 0:
        raise ValueError(f"Expected `exact_up_to` to be an integer >= 0, got {exact_up_to!r}.")
    curves = erasure_curves(model, inputs, attributions, target, fractions=fractions,
                            removal=removal, baseline=baseline, output=output,
                            feature_mask=feature_mask, max_rows=max_rows, which=(which,))
    score = curves[which].mean(dim=1)
    s = _Setup(model, inputs, attributions, target, removal=removal, baseline=baseline,
               output=output, max_rows=max_rows, feature_mask=feature_mask)
    full = curves["full"]
    n, d = s.scores.shape
    searches, requests, bounds = {}, {}, {}
    for i in range(n):
        counted = s.kept[i].nonzero()[:, 0].tolist()
        searches[i] = _chain_bounds(counted, curves["sizes"][i].tolist(),
                                    exact=len(counted) <= exact_up_to, beam_size=beam_size)
        requests[i] = next(searches[i])
    while requests:                     # one batch of forward rows for every sample's step
        rows = []
        for i, sets in requests.items():
            for st in sets:
                top = torch.zeros(d, dtype=torch.bool)
                top[list(st)] = True
                rows.append((i, top if which == "comprehensiveness" else s.kept[i] & ~top))
        values = s.scores_of(rows)
        start = 0
        for i, sets in list(requests.items()):
            vals = (full[i] - values[start:start + len(sets)]).tolist()
            start += len(sets)
            try:
                requests[i] = searches[i].send(vals)
            except StopIteration as stop:
                bounds[i] = stop.value
                del requests[i]
    out = torch.empty_like(score)
    for i in range(n):
        lo, hi = bounds[i]
        lo, hi = min(lo, float(score[i])), max(hi, float(score[i]))  # the map's own chain
        out[i] = (score[i] - lo) / (hi - lo) if hi > lo else math.nan
    return warn_undefined(out, f"normalised {which}",
                          "every ordering of the features gives the same AOPC")


_NORM_DOC = """
    The attainable range is over every ordering of the L counted features
    (equivalently every nested chain of removed sets of the bins' sizes), for
    the same model, input and removal, as Edin et al. define NAOPC:
    ``(AOPC - AOPC_min) / (AOPC_max - AOPC_min)``. It is exact (dynamic
    programming over all subsets of each bin's size, sum_b C(L, n_b) forward
    rows) when ``L <= exact_up_to``, else from a beam search (Edin et al.'s
    NAOPC_beam, growing sets one feature at a time, about
    ``2 * beam_size * L * max_b n_b`` rows). A beam bound is attainable but may
    not be the extreme; the map's own chain widens the range if needed, so
    the score stays in [0, 1]. Edin et al. remove every feature one at a
    time (all fractions k / L); pass other ``fractions`` for their form.

    Extra parameters: ``exact_up_to`` (int, default 10) and ``beam_size``
    (int, default 5); the others as for :func:`comprehensiveness`.

    Returns
    -------
    Tensor of shape (N,), float64
        In [0, 1]; NaN (with one warning) where every ordering scores the
        same (a model that ignores the features).
"""


@register(category="faithfulness", kind="model", higher_is_better=True, range=(0.0, 1.0),
          reference=_EDIN, undefined="every ordering gives the same AOPC")
def normalised_comprehensiveness(model: nn.Module, inputs: Tensor | tuple | Mapping,
                                 attributions: Tensor | Attributions, target: Any, *,
                                 fractions: Sequence[float] = DEFAULT_FRACTIONS,
                                 removal: str | Removal | None = None, baseline: Any = None,
                                 output: str = "probability",
                                 feature_mask: Tensor | None = None, exact_up_to: int = 10,
                                 beam_size: int = 5,
                                 max_rows: int = DEFAULT_MAX_ROWS) -> Tensor:
    """Comprehensiveness min-max normalised over its attainable range per sample (NAOPC).

    Higher is better (1: no ordering removes the evidence faster).
    {norm}"""
    return _normalised("comprehensiveness", model, inputs, attributions, target,
                       fractions=fractions, removal=removal, baseline=baseline, output=output,
                       feature_mask=feature_mask, exact_up_to=exact_up_to,
                       beam_size=beam_size, max_rows=max_rows)


@register(category="faithfulness", kind="model", higher_is_better=False, range=(0.0, 1.0),
          reference=_EDIN, undefined="every ordering gives the same AOPC")
def normalised_sufficiency(model: nn.Module, inputs: Tensor | tuple | Mapping,
                           attributions: Tensor | Attributions, target: Any, *,
                           fractions: Sequence[float] = DEFAULT_FRACTIONS,
                           removal: str | Removal | None = None, baseline: Any = None,
                           output: str = "probability", feature_mask: Tensor | None = None,
                           exact_up_to: int = 10, beam_size: int = 5,
                           max_rows: int = DEFAULT_MAX_ROWS) -> Tensor:
    """Sufficiency min-max normalised over its attainable range per sample (NAOPC).

    Lower is better (0: no ordering keeps the prediction with fewer features).
    {norm}"""
    return _normalised("sufficiency", model, inputs, attributions, target,
                       fractions=fractions, removal=removal, baseline=baseline, output=output,
                       feature_mask=feature_mask, exact_up_to=exact_up_to,
                       beam_size=beam_size, max_rows=max_rows)


normalised_comprehensiveness.__doc__ = normalised_comprehensiveness.__doc__.replace(
    "{norm}", _NORM_DOC)
normalised_sufficiency.__doc__ = normalised_sufficiency.__doc__.replace("{norm}", _NORM_DOC)


# --- tau-LOO (Jain & Wallace) ------------------------------------------------------------

@register(category="faithfulness", kind="model", higher_is_better=True, range=(-1.0, 1.0),
          reference="Jain & Wallace 2019, 'Attention is not explanation', NAACL (Kendall tau "
                    "with leave-one-out importance); ferret 0.4.2 (taucorr_loo)",
          undefined="constant map or leave-one-out drop")
def tau_loo(model: nn.Module, inputs: Tensor | tuple | Mapping,
            attributions: Tensor | Attributions, target: Any, *,
            removal: str | Removal | None = None, baseline: Any = None,
            output: str = "probability", feature_mask: Tensor | None = None,
            max_rows: int = DEFAULT_MAX_ROWS) -> Tensor:
    """Kendall tau-b between the map and the leave-one-out drop, per sample.

    For each counted feature i, ``drop_i = p(x) - p(x \\ {i})`` (feature i
    alone removed); the score is Kendall's tau-b (scipy's ``kendalltau``)
    between the map and ``drop`` over the counted features. Jain and Wallace
    measure the leave-one-out change as the total variation distance between
    the output distributions, which for two classes is ``|drop_i|``; the
    signed drop of the target (as ferret 0.4.2) keeps the direction the map
    claims. Arguments as for :func:`comprehensiveness` (no fractions); the
    cost is one forward row per counted feature.

    Returns
    -------
    Tensor of shape (N,), float64
        In [-1, 1]; higher is better. NaN (with one warning) for a constant
        map or drop, or fewer than two counted features.
    """
    s = _Setup(model, inputs, attributions, target, removal=removal, baseline=baseline,
               output=output, max_rows=max_rows, feature_mask=feature_mask)
    n, d = s.scores.shape
    rows, where = [], []
    for i in range(n):
        rows.append((i, torch.zeros(d, dtype=torch.bool)))
        for j in s.kept[i].nonzero()[:, 0].tolist():   # only counted features are left out
            rows.append((i, torch.arange(d) == j))
            where.append((i, j))
    values = s.scores_of(rows)
    starts = torch.cumsum(torch.cat([torch.zeros(1, dtype=torch.long),
                                     1 + s.counts[:-1]]), dim=0)
    drop = torch.zeros(n, d, dtype=torch.float64)
    for r, (i, j) in enumerate(where):       # row r + i + 1: sample i's original rows before
        drop[i, j] = values[starts[i]] - values[r + i + 1]
    return per_sample_masked(kendall_tau, [s.scores, drop], s.kept)
