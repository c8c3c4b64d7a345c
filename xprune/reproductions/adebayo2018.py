"""Sanity checks for saliency maps (Adebayo et al. 2018) on the digits CNN, dense and pruned.

The model-parameter randomisation test: each layer of a trained network is
re-initialised, from the logits down to the first convolution ("cascading":
the layers above stay randomised) or one at a time ("independent"), and each
sample's map is compared with its map on the trained network. A map that
explains the network should change; the paper found that Gradient (Saliency)
and Integrated Gradients maps do, while Guided Backprop maps barely change
until the lowest layers are randomised.

Here the test runs on the xprune digits CNN (conv1, conv2, fc1, fc2), dense
and pruned by global L1 magnitude at a few sparsities with the short masked
fine-tune of the default xprune analysis, for several training seeds. Similarity to the
original map: Spearman rank correlation of the signed maps and of their
absolute values, and SSIM of the maps normalised as in the authors' code;
each over all pixels and over the foreground pixels only (zero-baseline
Integrated Gradients is exactly 0 on the digits' zero background whatever the
weights, which inflates any all-pixel similarity).

The randomisation itself is :func:`xprune.metrics.sanity.parameter_randomisation`
(each layer's own ``reset_parameters()``, on a private deep copy); this
module records the maps it computes and scores them with every similarity.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from .._validation import check_positive_int, check_sparsity_list
from ..attribution import attribute
from ..data import load_digits_split
from ..metrics.agreement import (
    foreground,
    normalise_maps,
    on_features,
    spearman,
    ssim,
    ssim_on_features,
)
from ..metrics.sanity import parameter_randomisation
from ..models import DigitsCNN, evaluate, train
from ..pruning import fine_tune, prune, sparsity
from ..report.figures import plot_randomisation_curves
from ..report.tables import fmt_ci, plural
from ..stats import holm, mean_ci, t_test_p
from . import Context, register
from ._report import ReproductionReport, Section

__all__ = ["Params", "map_similarities", "randomisation_curves", "run", "summarise", "verdict"]

TITLE = "Sanity checks for saliency maps: parameter randomisation, dense and pruned"
CITATION = ("Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim, 'Sanity checks for saliency "
            "maps', NeurIPS 2018")

METHODS = ("saliency", "integrated_gradients", "guided_backprop")
SIMILARITIES = ("spearman_abs", "spearman_signed", "ssim")  # the paper's panel order
REGIONS = ("all", "foreground")
TARGETS = ("label", "predicted")
ORDERS = ("cascading", "independent")
RANDOMISATION_OFFSET = 7919  # the re-initialisation seed of training seed s is s + this

SIMILARITY_LABELS = {"spearman_abs": "Spearman of |maps|",
                     "spearman_signed": "Spearman, signed maps",
                     "ssim": "SSIM (|map| / max |map|)"}
METHOD_LABELS = {"saliency": "Saliency (gradient)", "integrated_gradients": "Integrated Gradients",
                 "guided_backprop": "Guided Backprop"}

# The paper reports the randomisation test as figures, not tables: these are its qualitative
# results per method (NeurIPS 2018; arXiv 1810.03292). Fig. 2 (caption checked: "Cascading
# randomization on Inception v3 (ImageNet)", 17 blocks re-initialised from the logits down) shows
# example maps. The similarity of the maps to the original (Spearman with and without absolute
# value, SSIM) along the same cascade is plotted in a further figure whose number we did not
# check, so it is cited without one. No value is read off the figures.
PAPER = {
    "saliency": ("changes: the maps degrade block by block and the similarity to the original "
                 "falls as layers are randomised", "Fig. 2 and the paper's similarity curves"),
    "integrated_gradients": ("changes by the metrics: the similarity falls as layers are "
                             "randomised, although the maps keep the input's outline to the eye",
                             "Fig. 2 and the paper's similarity curves"),
    "guided_backprop": ("changes far less: maps and similarity stay high while the top layers are "
                        "randomised; only the lower layers change them",
                        "Fig. 2 and the paper's similarity curves"),
}
PAPER_VERDICT = {"saliency": "changes", "integrated_gradients": "changes",
                 "guided_backprop": "stays high"}
OPPOSITE = {"changes": "stays high", "stays high": "changes"}
LINE = 0.5  # our descriptive line for "changes" / "stays high"; the paper draws none
PAPER_SHORT = {"saliency": "falls (Fig. 2, similarity curves)",
               "integrated_gradients": "falls by the metrics (similarity curves)",
               "guided_backprop": "stays high under top-layer randomisation (Fig. 2, "
                                  "similarity curves)"}
SIMILARITY_RANGE = (-1.0, 1.0)  # Spearman and SSIM alike
DIFFERENCE_RANGE = (-2.0, 2.0)  # a difference of two similarities
ALPHA = 0.05  # family-wise error of the Holm-corrected tests


@dataclass(frozen=True)
class Params:
    """Parameters of the reproduction; the defaults are the full run.

    ``n_seeds`` training seeds from ``context.seed`` up; per seed a dense
    digits CNN (``epochs`` of training) and one pruned copy per sparsity
    (global L1 magnitude, fraction of conv/linear weights zeroed, then
    ``finetune_epochs`` of masked fine-tuning). The first ``n_samples`` test
    images are explained for the true ``"label"`` (the same class for every
    model) or each model's own ``"predicted"`` class. ``ssim_window``: odd
    side of the SSIM window (the images are 8x8). ``independent`` adds the
    independent-randomisation variant. ``example``: index of the test image
    shown in the grid of maps.
    """

    n_seeds: int = 5
    sparsities: list[float] = field(default_factory=lambda: [0.8, 0.9])
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    epochs: int = 20
    finetune_epochs: int = 5
    n_samples: int = 360
    ig_steps: int = 16
    ssim_window: int = 3
    independent: bool = True
    target: str = "label"
    example: int = 0

    def __post_init__(self) -> None:
        check_positive_int(self.n_seeds, "params.n_seeds")
        check_sparsity_list(self.sparsities, "params.sparsities")
        if (not isinstance(self.methods, list) or not self.methods
                or any(m not in METHODS for m in self.methods)
                or len(set(self.methods)) != len(self.methods)):
            raise ValueError(f"Expected `params.methods` to be a non-empty list of distinct names "
                             f"from {list(METHODS)}, got {self.methods!r}.")
        check_positive_int(self.epochs, "params.epochs")
        check_positive_int(self.finetune_epochs, "params.finetune_epochs", minimum=0)
        check_positive_int(self.n_samples, "params.n_samples", minimum=2)
        check_positive_int(self.ig_steps, "params.ig_steps")
        w = self.ssim_window
        if isinstance(w, bool) or not isinstance(w, int) or w not in (3, 5, 7):
            raise ValueError(f"Expected `params.ssim_window` to be 3, 5 or 7 (an odd window that "
                             f"fits the 8x8 digits), got {w!r}.")
        if not isinstance(self.independent, bool):
            raise ValueError(f"Expected `params.independent` to be true or false, got "
                             f"{self.independent!r}.")
        if self.target not in TARGETS:
            raise ValueError(f"Expected `params.target` in {list(TARGETS)}, got "
                             f"{self.target!r}.")
        if (isinstance(self.example, bool) or not isinstance(self.example, int)
                or not 0 <= self.example < self.n_samples):
            raise ValueError(f"Expected `params.example` to be an index in [0, "
                             f"{self.n_samples}) (below `params.n_samples`), got "
                             f"{self.example!r}.")


# --------------------------------------------------------------------------------------------
# The computations
# --------------------------------------------------------------------------------------------

def map_similarities(original: Tensor, randomised: Tensor, features: Tensor, *,
                     window: int = 3) -> dict[tuple[str, str], Tensor]:
    """Every similarity of the test between each sample's original and randomised map.

    Spearman rank correlation of the signed maps and of |maps| (invariant to
    the per-map normalisation), and SSIM of the maps normalised by
    :func:`~xprune.metrics.agreement.normalise_maps` with ``absolute=True`` (values in [0, 1], data
    range 1); each over all pixels and over the pixels where ``features`` is
    True (Spearman ranks only those pixels; SSIM averages the windows centred
    on them, :func:`~xprune.metrics.agreement.ssim_on_features`).

    Parameters
    ----------
    original, randomised : Tensor of shape (N, C, H, W)
    features : bool Tensor of shape (N, H * W)

    Returns
    -------
    dict
        ``(similarity, region)`` -> Tensor of shape (N,), float64, for
        similarity in :data:`SIMILARITIES` and region in :data:`REGIONS`.
        Higher = more similar = the map depends less on the randomised
        weights; NaN where undefined (a constant map under Spearman).
    """
    a_abs = normalise_maps(original, absolute=True)
    b_abs = normalise_maps(randomised, absolute=True)
    return {
        ("spearman_abs", "all"): spearman(original, randomised, abs=True),
        ("spearman_signed", "all"): spearman(original, randomised),
        ("ssim", "all"): ssim(a_abs, b_abs, data_range=1.0, window=window),
        ("spearman_abs", "foreground"): on_features(spearman, original, randomised, features,
                                                    abs=True),
        ("spearman_signed", "foreground"): on_features(spearman, original, randomised,
                                                       features),
        ("ssim", "foreground"): ssim_on_features(a_abs, b_abs, features, window=window),
    }


class _RecordingAttribution:
    """``attribute_fn(model, inputs, targets) -> maps`` that keeps every map it computes.

    :func:`~xprune.metrics.sanity.parameter_randomisation` calls it once on
    the unchanged copy, then once after each re-initialised layer, in order.
    """

    def __init__(self, method: str, params: Mapping[str, Any]) -> None:
        self.method, self.params = method, dict(params)
        self.maps: list[Tensor] = []

    def __call__(self, model: nn.Module, inputs: Tensor, targets: Tensor) -> Tensor:
        with warnings.catch_warnings():  # IG's coarse-integral warning on random networks
            warnings.simplefilter("ignore", UserWarning)
            values = attribute(model, inputs, targets, self.method, params=self.params).values
        self.maps.append(values.detach().cpu())
        return values


def _similarity_of_signed_spearman(a: Tensor, b: Tensor) -> Tensor:
    with warnings.catch_warnings():  # NaN of constant random maps: counted in the summary
        warnings.simplefilter("ignore", RuntimeWarning)
        return spearman(a, b)


def randomisation_curves(model: nn.Module, inputs: Tensor, targets: Any, method: str, *,
                         order: str = "cascading", seed: int = 0,
                         method_params: Mapping[str, Any] | None = None, window: int = 3
                         ) -> tuple[list[str], dict[tuple[str, str], Tensor], Tensor]:
    """The randomisation test of one model and method, scored with every similarity.

    Runs :func:`xprune.metrics.sanity.parameter_randomisation` (its default
    layers: those with a ``reset_parameters()``, from the output down; a
    private deep copy, so ``model`` is never modified) with the re-initial-
    isation seeds drawn from ``torch.Generator().manual_seed(seed)``, keeps
    every map it computes and scores each with :func:`map_similarities`
    against the original map. Foreground pixels: those where the input is
    nonzero (:func:`xprune.metrics.agreement.foreground`).

    Parameters
    ----------
    model : nn.Module
        Without pruning hooks (make pruning permanent first).
    inputs : Tensor of shape (N, C, H, W)
    targets : "predicted", int or Tensor of shape (N,)
        Resolved once on the unchanged model.
    method : str
        An xprune attribution method.
    order : {"cascading", "independent"}
    seed : int
        Same seed, same random weights (the same for any model of the same
        architecture, and for both orders).
    method_params : mapping, optional
        The method's parameters.
    window : int
        SSIM window.

    Returns
    -------
    layers : list of str
        Re-initialised layers in order (L of them).
    scores : dict
        ``(similarity, region)`` -> Tensor of shape (N, L), float64; column
        l: after re-initialising ``layers[:l + 1]`` (cascading) or
        ``layers[l]`` alone (independent).
    maps : Tensor of shape (L + 1, N, C, H, W)
        The original maps, then the maps after each step.
    """
    record = _RecordingAttribution(method, method_params or {})
    with warnings.catch_warnings():  # NaN similarities are counted in the summary instead
        warnings.simplefilter("ignore", RuntimeWarning)
        curve = parameter_randomisation(model, inputs, targets, record, order=order,
                                        similarity=_similarity_of_signed_spearman,
                                        generator=torch.Generator().manual_seed(seed))
    if len(record.maps) != len(curve.layers) + 1:  # pragma: no cover - a changed library
        raise RuntimeError(f"Expected {len(curve.layers) + 1} attribution calls (the original "
                           f"and one per layer), got {len(record.maps)}.")
    maps = torch.stack(record.maps)
    features = foreground(inputs.cpu())
    columns: dict[tuple[str, str], list[Tensor]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for step in range(1, maps.shape[0]):
            for key, values in map_similarities(maps[0], maps[step], features,
                                                window=window).items():
                columns.setdefault(key, []).append(values)
    scores = {key: torch.stack(values, dim=1) for key, values in columns.items()}
    return list(curve.layers), scores, maps


def verdict(mean: float, low: float, high: float, *, line: float = LINE) -> str:
    """Our reading of one similarity with its 95% interval against a descriptive ``line``.

    ``"changes"`` if the interval lies below ``line``, ``"stays high"`` if it
    lies above, ``"undecided"`` if it contains ``line`` or is undefined. The
    paper reads its figures by eye and sets no such line; 0.5 is ours.
    """
    if not (math.isfinite(low) and math.isfinite(high)):
        low = high = mean
    if not math.isfinite(mean):
        return "undecided"
    if high < line:
        return "changes"
    if low > line:
        return "stays high"
    return "undecided"


def _curve_frame(layers: list[str], scores: dict[tuple[str, str], Tensor],
                 keys: Mapping[str, Any]) -> pd.DataFrame:
    """Wide per-sample table: keys, step (1..L), layer, sample, one column per similarity."""
    n, n_layers = next(iter(scores.values())).shape
    frame = pd.DataFrame({**{k: [v] * (n * n_layers) for k, v in keys.items()},
                          "step": np.repeat(np.arange(1, n_layers + 1), n),
                          "layer": np.repeat(np.asarray(layers, dtype=object), n),
                          "sample": np.tile(np.arange(n), n_layers)})
    for (similarity, region), values in scores.items():
        frame[_column(similarity, region)] = values.T.reshape(-1).numpy()
    return frame


def _column(similarity: str, region: str) -> str:
    return similarity if region == "all" else f"{similarity}@{region}"


class Estimate(NamedTuple):
    """A mean with its 95% t-interval (clipped to ``bounds``) and its t-test against 0."""

    mean: float
    low: float
    high: float
    n: int        # seeds or samples used
    over: str     # "seeds" or "samples"
    p: float      # two-sided one-sample t-test of mean = 0 over the same values
    clipped: bool  # whether the interval was clipped to the possible range


def _clip(low: float, high: float, bounds: tuple[float, float]) -> tuple[float, float, bool]:
    """The interval cut to ``bounds`` (the values the quantity can take); NaN stays NaN."""
    lo, hi = bounds
    clipped = False
    if math.isfinite(low) and low < lo:
        low, clipped = lo, True
    if math.isfinite(high) and high > hi:
        high, clipped = hi, True
    return low, high, clipped


def _interval(frame: pd.DataFrame, column: str,
              bounds: tuple[float, float] = SIMILARITY_RANGE) -> Estimate:
    """Mean and 95% t-interval: across the seeds' sample means if there are several seeds,
    else across the samples of the one seed; the interval clipped to ``bounds``."""
    seeds = frame["seed"].unique()
    if len(seeds) > 1:
        values = frame.groupby("seed")[column].mean().to_numpy(dtype=np.float64)  # NaN left out
        over = "seeds"
    else:
        values, over = frame[column].to_numpy(dtype=np.float64), "samples"
    mean, low, high, n = mean_ci(values)
    low, high, clipped = _clip(low, high, bounds)
    return Estimate(mean, low, high, n, over, t_test_p(values), clipped)


def summarise(per_sample: pd.DataFrame) -> pd.DataFrame:
    """Mean similarity and 95% CI per model, method, order, step and similarity.

    Parameters
    ----------
    per_sample : DataFrame
        One row per seed, model, method, order, step and sample, with columns
        ``seed, model, sparsity, method, order, step, layer, sample`` and one
        column per similarity (``spearman_abs``, ``spearman_abs@foreground``, ...).

    Returns
    -------
    DataFrame
        One row per (model, method, order, step, similarity, region):
        ``mean, ci_low, ci_high`` (Student-t over the seeds' sample means
        with several seeds, else over the samples; clipped to [-1, 1], the
        range of every similarity), ``ci_clipped`` (whether it was), ``n``
        (seeds or samples used), ``interval`` ("seeds" or "samples") and
        ``nan_fraction`` (the share of undefined per-sample values, left out
        of the mean).
    """
    rows = []
    keys = ["model", "sparsity", "method", "order", "step", "layer"]
    for key, g in per_sample.groupby(keys, sort=False):
        for similarity in SIMILARITIES:
            for region in REGIONS:
                column = _column(similarity, region)
                if column not in g:
                    continue
                est = _interval(g, column)
                rows.append({**dict(zip(keys, key, strict=True)), "similarity": similarity,
                             "region": region, "mean": est.mean, "ci_low": est.low,
                             "ci_high": est.high, "ci_clipped": est.clipped, "n": est.n,
                             "interval": est.over,
                             "nan_fraction": float(g[column].isna().mean())})
    return pd.DataFrame(rows)


def _paired(per_sample: pd.DataFrame, left: Mapping[str, Any], right: Mapping[str, Any],
            column: str, step: int | None) -> Estimate:
    """Mean, CI and t-test of a per-sample difference ``left - right`` (the same seeds and
    samples); the interval clipped to [-2, 2], the range of a difference of similarities.

    ``left``/``right`` select rows by column values; ``step`` None averages
    each sample's curve over its steps first (the normalised area under it).
    """
    diff = (_curve_means(per_sample, left, column, step)
            - _curve_means(per_sample, right, column, step)).dropna().rename("d").reset_index()
    return _interval(diff, "d", DIFFERENCE_RANGE)


def _curve_means(per_sample: pd.DataFrame, where: Mapping[str, Any], column: str,
                 step: int | None) -> pd.Series:
    """Per (seed, sample): the value at ``step``, or (None) the mean over the curve's steps."""
    rows = per_sample
    for k, v in where.items():
        rows = rows[rows[k] == v]
    if step is not None:
        rows = rows[rows["step"] == step]
    return rows.groupby(["seed", "sample"])[column].mean()


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------

def _seeded_cnn(seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DigitsCNN(n_classes=10)


def _models(params: Params, data, seed: int, context: Context) -> list[tuple[str, float, nn.Module]]:
    """The dense model of ``seed`` and its pruned copies, from the cache when stored."""
    def template(info):
        return DigitsCNN(n_classes=10)

    def train_dense():
        model = _seeded_cnn(seed)
        res = train(model, data.x_train, data.y_train, epochs=params.epochs, seed=seed,
                    device=context.device)
        return model, {"train_seconds": res.seconds}

    dense, _ = context.cache.model(f"seed-{seed}-dense", template, train_dense)
    dense = dense.to(context.device).eval()
    models = [("dense", 0.0, dense)]
    for s in params.sparsities:
        def pruned(s=s):
            pair = prune(dense, float(s), method="l1_unstructured", scope="global", seed=seed,
                         layers="*")  # every layer, as this reproduction always did
            pair = fine_tune(pair, data.x_train, data.y_train, epochs=params.finetune_epochs,
                             seed=seed, device=context.device)
            # prune() and fine_tune() hand back plain weights (torch.nn.utils.prune.remove
            # applied): a model with pruning hooks could not be deep-copied for randomisation
            return pair.sparse, {"sparsity": sparsity(pair.sparse)}

        model, _ = context.cache.model(f"seed-{seed}-l1-{s:g}", template, pruned)
        models.append((_tag(s), float(s), model.to(context.device).eval()))
    return models


def _tag(s: float) -> str:
    return "dense" if s == 0 else f"l1@{s:.2f}"


def _method_params(method: str, params: Params) -> dict[str, Any]:
    if method == "saliency":
        return {"abs": False}  # the signed gradient; |.| is one of the similarities
    if method == "integrated_gradients":
        return {"n_steps": params.ig_steps, "baseline": 0.0}
    return {}


def _seed_results(params: Params, data, seed: int, context: Context
                  ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """One seed: per-sample similarities, the example maps and the models' accuracy."""
    models = _models(params, data, seed, context)
    keys = (f"seed-{seed}-per-sample", f"seed-{seed}-examples", f"seed-{seed}-models")
    stored = [context.cache.load_frame(k) for k in keys]
    if all(f is not None for f in stored):
        return stored[0], stored[1], stored[2]
    x = data.x_test[:params.n_samples]
    labels = data.y_test[:params.n_samples]
    orders = ORDERS if params.independent else ORDERS[:1]
    frames, examples, infos = [], [], []
    for tag, s, model in models:
        acc = evaluate(model, data.x_test, data.y_test)["accuracy"]
        infos.append({"seed": seed, "model": tag, "sparsity": s,
                      "measured_sparsity": sparsity(model), "accuracy": acc})
        targets = labels if params.target == "label" else "predicted"
        for method in params.methods:
            for order in orders:
                context.say(f"seed {seed}: {tag}, {method}, {order}")
                before = {k: v.detach().clone() for k, v in model.state_dict().items()}
                layers, scores, maps = randomisation_curves(
                    model, x, targets, method, order=order,
                    seed=seed + RANDOMISATION_OFFSET,
                    method_params=_method_params(method, params), window=params.ssim_window)
                if any(not torch.equal(before[k], v) for k, v in model.state_dict().items()):
                    raise RuntimeError("The model changed during the randomisation test.")
                frames.append(_curve_frame(layers, scores, {
                    "seed": seed, "model": tag, "sparsity": s, "method": method,
                    "order": order}))
                if order == "cascading":
                    picture = normalise_maps(maps[:, params.example], absolute=True)
                    for step, name in enumerate(["original", *layers]):
                        examples.append(pd.DataFrame({
                            "seed": seed, "model": tag, "method": method, "step": step,
                            "layer": name, "pixel": np.arange(picture[step].numel()),
                            "value": picture[step].reshape(-1).numpy()}))
    image = x[params.example].double().sum(dim=0).reshape(-1).numpy()
    examples.append(pd.DataFrame({"seed": seed, "model": "input", "method": "input", "step": 0,
                                  "layer": "input", "pixel": np.arange(image.size),
                                  "value": image}))
    result = (pd.concat(frames, ignore_index=True), pd.concat(examples, ignore_index=True),
              pd.DataFrame(infos))
    for key, frame in zip(keys, result, strict=True):
        context.cache.store_frame(key, frame)
    return result


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------

# this report's style: 2 decimals, "—" where undefined, Python's "-0.00" kept
_fmt = partial(fmt_ci, digits=2, missing="—", negative_zero=True, finite=True)


def _at(summary: pd.DataFrame, model: str, method: str, order: str, step: int,
        similarity: str, region: str) -> pd.Series:
    sel = summary[(summary["model"] == model) & (summary["method"] == method)
                  & (summary["order"] == order) & (summary["step"] == step)
                  & (summary["similarity"] == similarity) & (summary["region"] == region)]
    return sel.iloc[0]


def _cell(row: pd.Series) -> str:
    return _fmt(row["mean"], row["ci_low"], row["ci_high"])


def _side_by_side(summary: pd.DataFrame, models: list[str], methods: list[str], region: str,
                  last: int, top: str) -> pd.DataFrame:
    rows = []
    for method in methods:
        for similarity in SIMILARITIES:
            row = {"method": METHOD_LABELS[method], "similarity": SIMILARITY_LABELS[similarity],
                   "paper (qualitative)": PAPER_SHORT[method] if region == "all"
                   else "not reported (all pixels only)"}
            for model in models:
                row[f"{model}: after {top}"] = _cell(
                    _at(summary, model, method, "cascading", 1, similarity, region))
                row[f"{model}: all {last} layers"] = _cell(
                    _at(summary, model, method, "cascading", last, similarity, region))
            rows.append(row)
    return pd.DataFrame(rows)


def _curve_figure(summary: pd.DataFrame, models: list[str], methods: list[str], order: str,
                  region: str) -> plt.Figure:
    fig, axes = plt.subplots(len(methods), len(SIMILARITIES),
                             figsize=(4.4 * len(SIMILARITIES), 3.1 * len(methods)),
                             squeeze=False)
    for i, method in enumerate(methods):
        for j, similarity in enumerate(SIMILARITIES):
            sel = summary[(summary["method"] == method) & (summary["order"] == order)
                          & (summary["similarity"] == similarity)
                          & (summary["region"] == region)]
            curve = pd.DataFrame({
                "attribution": method, "model": sel["model"],
                "metric": [f"{similarity}@{k}:{layer}"
                           for k, layer in zip(sel["step"], sel["layer"], strict=True)],
                "mean": sel["mean"], "ci_low": sel["ci_low"], "ci_high": sel["ci_high"]})
            ax = axes[i, j]
            plot_randomisation_curves(curve, method, models, metric=similarity, ax=ax)
            if order == "independent":  # one layer at a time: no "+" accumulation
                ax.set_xticks(ax.get_xticks(), [t.get_text().lstrip("+")
                                                for t in ax.get_xticklabels()],
                              rotation=30, fontsize=7)
            ax.set_title(f"{METHOD_LABELS[method]}: {SIMILARITY_LABELS[similarity]}",
                         fontsize=9)
            ax.set_ylim(-0.45, 1.05)
            ax.axhline(0.0, color="grey", lw=0.6)
            if j:
                ax.set_ylabel("")
            if (i or j) and ax.get_legend() is not None:  # one legend per figure
                ax.get_legend().remove()
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.07, top=0.96, wspace=0.18, hspace=0.5)
    return fig


def _examples_figure(examples: pd.DataFrame, models: list[str], methods: list[str],
                     layers: list[str]) -> plt.Figure:
    columns = ["original", *layers]
    rows = [(model, method) for method in methods for model in models]
    fig, axes = plt.subplots(len(rows), len(columns) + 1,
                             figsize=(1.15 * (len(columns) + 1) + 1.6, 1.15 * len(rows)),
                             squeeze=False)
    side = int(round(math.sqrt(examples["pixel"].max() + 1)))
    image = examples[examples["model"] == "input"].sort_values("pixel")["value"].to_numpy()
    for r, (model, method) in enumerate(rows):
        axes[r, 0].imshow(image.reshape(side, side), cmap="gray_r")
        axes[r, 0].set_ylabel(f"{METHOD_LABELS[method]}\n{model}", rotation=0, ha="right",
                              va="center", fontsize=7)
        for c, layer in enumerate(columns):
            sel = examples[(examples["model"] == model) & (examples["method"] == method)
                           & (examples["layer"] == layer)].sort_values("pixel")
            axes[r, c + 1].imshow(sel["value"].to_numpy().reshape(side, side), cmap="gray",
                                  vmin=0.0, vmax=1.0)
            if r == 0:
                axes[r, c + 1].set_title(layer if c == 0 else f"+{layer}", fontsize=8)
        if r == 0:
            axes[r, 0].set_title("input", fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    fig.subplots_adjust(left=0.2, right=0.99, bottom=0.01, top=0.97, wspace=0.08, hspace=0.08)
    return fig


def _p_text(p: float) -> str:
    if not math.isfinite(p):
        return "—"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _join(names: list[str]) -> str:
    names = [str(n) for n in names]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _share_text(share: float) -> str:
    return f"{abs(share):.0%}" if math.isfinite(share) else "— (no dense drop)"


SMALL_SHARE = 0.10  # our descriptive line for a pruning effect beside the dense drop; no test


def _pruning_finding(effect: pd.DataFrame, models: list[str], methods: list[str],
                     verdicts: Mapping[tuple[str, str], str], test_unit: str,
                     n_seeds: int) -> str:
    """The finding 'Does pruning change the sanity check?' from the pruned-minus-dense table.

    Every count in it is over the whole table with Holm's correction (one
    family, family-wise error :data:`ALPHA`), except the one sentence that
    says it counts the uncorrected 95% intervals. Sizes are set against the
    dense model's own drop under randomisation (1 − its mean similarity over
    the cascade, per method, similarity and region).
    """
    same = all(verdicts[(m, method)] == verdicts[("dense", method)]
               for m in models for method in methods)
    eff = effect[np.isfinite(effect["_p_holm"])]
    n = len(eff)
    sig = eff[eff["_p_holm"] < ALPHA]
    below, above = int((sig["_mean"] < 0).sum()), int((sig["_mean"] > 0).sum())
    per_method = []
    for method in methods:
        g, gs = eff[eff["_method"] == method], sig[sig["_method"] == method]
        signs = (f", {int((gs['_mean'] < 0).sum())} below and {int((gs['_mean'] > 0).sum())} "
                 "above 0" if len(gs) and (gs["_mean"] > 0).any() and (gs["_mean"] < 0).any()
                 else "")
        per_method.append(
            f"{METHOD_LABELS[method]} {len(gs)} of {len(g)} (all pixels "
            f"{int((gs['_region'] == 'all').sum())}, foreground "
            f"{int((gs['_region'] == 'foreground').sum())}{signs})")
    text = ("Does pruning change the sanity check? The readings above against our line are "
            + ("the same" if same else "not the same") + " for the dense and the pruned models. "
            f"The pruned model's similarity averaged over the cascade minus the dense model's "
            f"(table 'Pruned minus dense') differs from 0 in {len(sig)} of the {n} comparisons "
            f"({plural(effect['_model'].nunique(), 'pruned model')} × "
            f"{plural(effect['_method'].nunique(), 'method')} × {effect['_sim'].nunique()} "
            f"similarit{'y' if effect['_sim'].nunique() == 1 else 'ies'} × "
            f"{plural(effect['_region'].nunique(), 'region')}"
            + (f"; {len(effect) - n} without a test, too few values" if n < len(effect) else "")
            + f") with Holm's correction over all {n} ({test_unit}, family-wise error "
            f"{ALPHA:.0%})"
            + (f": {below} below 0 (the pruned model's maps change more when its weights are "
               f"randomised) and {above} above 0" if len(sig) else "")
            + "; by method " + "; ".join(per_method)
            + ("; by pruned model " + ", ".join(
                f"{m} {int((sig['_model'] == m).sum())}" for m in effect["_model"].unique())
               if effect["_model"].nunique() > 1 else "") + ".")
    raw = eff[(eff["_low"] > 0) | (eff["_high"] < 0)]
    text += (f" Without a correction, {len(raw)} of the {n} 95% intervals exclude 0 "
             f"({int((raw['_high'] < 0).sum())} below, {int((raw['_low'] > 0).sum())} above).")
    drop = ("the dense model's own drop under randomisation (1 − its mean similarity over the "
            "cascade)")
    only_raw = raw[~raw.index.isin(sig.index)]
    if len(only_raw):
        one = len(only_raw) == 1
        text += (f" The {len(only_raw)} that {'excludes' if one else 'exclude'} 0 only without "
                 f"the correction {'is' if one else 'are'} "
                 + (f"{only_raw['_mean'].abs().iloc[0]:.3f}" if one else
                    f"{only_raw['_mean'].abs().min():.3f} to "
                    f"{only_raw['_mean'].abs().max():.3f}")
                 + f" in similarity, at most {_share_text(only_raw['_share'].abs().max())} of "
                 f"{drop}.")
        drop = "that drop"
    shares = eff["_share"].abs()
    if len(sig):
        mags, sig_shares = sig["_mean"].abs(), sig["_share"].abs()
        big = sig.loc[sig_shares.idxmax()] if sig_shares.notna().any() else sig.iloc[0]
        large = sig[sig_shares >= SMALL_SHARE]
        text += (f" Size of the {len(sig)}: {mags.min():.3f} to {mags.max():.3f} in similarity, "
                 f"that is {sig_shares.min():.0%} to {sig_shares.max():.0%} (median "
                 f"{sig_shares.median():.0%}) of {drop}; the largest relative one is "
                 f"{METHOD_LABELS[big['_method']]}, {SIMILARITY_LABELS[big['_sim']]}, "
                 f"{'all pixels' if big['_region'] == 'all' else 'foreground'}, "
                 f"{big['_model']}: {big['_mean']:+.3f}, {_share_text(big['_share'])} of the drop.")
        if large.empty:
            text += (f" Every one is under {SMALL_SHARE:.0%} of that drop (our line, not a "
                     "test): small beside the change randomisation itself causes.")
        else:
            text += (f" {len(large)} of them {'reaches' if len(large) == 1 else 'reach'} "
                     f"{SMALL_SHARE:.0%} of that drop or more (our "
                     "line, not a test), for "
                     + _join(sorted({METHOD_LABELS[m] for m in large["_method"]},
                                    key=list(METHOD_LABELS.values()).index))
                     + ": not negligible beside the change randomisation itself causes"
                     + (", although no reading against our line changes." if same else "."))
    else:
        worst = eff.loc[shares.idxmax()] if shares.notna().any() else None
        text += (" No evidence after the correction that pruning changes how much the maps "
                 "move under randomisation"
                 + (f" (with {plural(n_seeds, 'training seed')} these tests have little power)"
                    if n_seeds < 3 else "") + "."
                 + ("" if worst is None else
                    f" The largest |pruned − dense| relative to {drop} is "
                    f"{abs(worst['_mean']):.3f}, {_share_text(worst['_share'])} of it "
                    f"({METHOD_LABELS[worst['_method']]}, {SIMILARITY_LABELS[worst['_sim']]}, "
                    f"{'all pixels' if worst['_region'] == 'all' else 'foreground'}, "
                    f"{worst['_model']})."))
    return text


@register("adebayo2018_sanity", title=TITLE, citation=CITATION, params=Params)
def run(params: Params, context: Context) -> ReproductionReport:
    """Run the randomisation test on the dense and pruned digits CNNs and return the report."""
    data = load_digits_split(seed=context.seed)
    if params.n_samples > data.x_test.shape[0]:
        raise ValueError(f"Expected `params.n_samples` <= {data.x_test.shape[0]} (the digits "
                         f"test set), got {params.n_samples}.")
    seeds = [context.seed + k for k in range(params.n_seeds)]
    per_seed, all_examples, infos = [], [], []
    for seed in seeds:
        frame, examples, info = _seed_results(params, data, seed, context)
        per_seed.append(frame)
        all_examples.append(examples)
        infos.append(info)
    per_sample = pd.concat(per_seed, ignore_index=True)
    models_info = pd.concat(infos, ignore_index=True)
    summary = summarise(per_sample)
    models = [_tag(0.0)] + [_tag(float(s)) for s in params.sparsities]
    methods = list(params.methods)
    layers = list(per_sample[(per_sample["order"] == "cascading")]
                  .drop_duplicates("step").sort_values("step")["layer"])
    last, top = len(layers), layers[0]
    over = summary["interval"].iloc[0]
    ci_text = (f"mean over the {params.n_samples} test images of each seed, then the mean and "
               f"95% t-interval across {len(seeds)} training seeds" if over == "seeds" else
               f"mean and 95% t-interval across the {params.n_samples} test images of one "
               f"training seed") + " (clipped to the range the quantity can take)"
    test_unit = (f"paired t-tests across the {len(seeds)} training seeds" if over == "seeds" else
                 f"paired t-tests across the {params.n_samples} test images of one training "
                 "seed")

    # --- comparisons: Guided Backprop against the others, pruned against dense --------------
    contrast_rows, effect_rows = [], []
    region_names = {"all": "all pixels", "foreground": "foreground"}
    gap_column = f"GBP − other, after {top}"
    for model in models:
        for other in [m for m in ("saliency", "integrated_gradients") if m in methods]:
            if "guided_backprop" not in methods:
                break
            for region in REGIONS:
                for similarity in SIMILARITIES:
                    col = _column(similarity, region)
                    base = {"model": model, "order": "cascading"}
                    est = _paired(per_sample, {**base, "method": "guided_backprop"},
                                  {**base, "method": other}, col, step=1)
                    contrast_rows.append({
                        "model": model, "versus": METHOD_LABELS[other],
                        "region": region_names[region],
                        "similarity": SIMILARITY_LABELS[similarity],
                        gap_column: _fmt(est.mean, est.low, est.high), "p (Holm)": "",
                        "_mean": est.mean, "_low": est.low, "_high": est.high, "_p": est.p,
                        "_sim": similarity, "_region": region, "_other": other})
    effect_column = "pruned − dense, mean over the curve"
    for tag in models[1:]:
        for method in methods:
            for region in REGIONS:
                for similarity in SIMILARITIES:
                    col = _column(similarity, region)
                    est = _paired(per_sample,
                                  {"model": tag, "method": method, "order": "cascading"},
                                  {"model": "dense", "method": method, "order": "cascading"},
                                  col, step=None)
                    dense = _curve_means(per_sample, {"model": "dense", "method": method,
                                                      "order": "cascading"}, col, None)
                    drop = 1.0 - float(dense.groupby(level="seed").mean().mean())
                    share = est.mean / drop if drop > 1e-12 else math.nan
                    effect_rows.append({
                        "pruned model": tag, "method": METHOD_LABELS[method],
                        "region": region_names[region],
                        "similarity": SIMILARITY_LABELS[similarity],
                        effect_column: _fmt(est.mean, est.low, est.high, digits=3), "p (Holm)": "",
                        "dense drop": f"{drop:.3f}",
                        "difference / dense drop": "—" if math.isnan(share) else f"{share:+.0%}",
                        "_mean": est.mean, "_low": est.low, "_high": est.high, "_p": est.p,
                        "_drop": drop, "_share": share, "_method": method, "_model": tag,
                        "_sim": similarity, "_region": region})
    contrast = pd.DataFrame(contrast_rows)
    effect = pd.DataFrame(effect_rows)
    for table in (contrast, effect):  # one family per table: Holm over all of its rows
        if not table.empty:
            table["_p_holm"] = holm(table["_p"].to_numpy(dtype=np.float64))
            table["p (Holm)"] = [_p_text(p) for p in table["_p_holm"]]

    # --- findings ----------------------------------------------------------------------------
    findings = []
    clipped_share = float(summary["ci_clipped"].mean())
    if len(seeds) == 1:
        findings.append(
            "Only one training seed: every interval below is across the test images of one "
            "trained model and leaves out how much the results vary between training runs, so "
            "it says nothing about other training runs. Run at least 3 seeds (the default is "
            f"{Params().n_seeds}).")
    elif len(seeds) < 3:
        findings.append(
            f"Only {len(seeds)} training seeds: intervals across so few seeds are unreliable "
            f"(a t-interval with {plural(len(seeds) - 1, 'degree')} of freedom): "
            f"{clipped_share:.0%} of the similarity intervals run past the range a similarity "
            "can take and are clipped to it ([-1, 1]; [-2, 2] for a difference of two), and a "
            "reading whose interval is too wide to decide is reported as undecided. Run at "
            f"least 3 seeds (the default is {Params().n_seeds}).")
    verdicts: dict[tuple[str, str], str] = {}
    for method in methods:
        tops, alls = [], []
        for model in models:
            top_fg = _at(summary, model, method, "cascading", 1, "spearman_signed", "foreground")
            all_fg = _at(summary, model, method, "cascading", last, "spearman_signed",
                         "foreground")
            verdicts[(model, method)] = verdict(top_fg["mean"], top_fg["ci_low"],
                                                top_fg["ci_high"])
            tops.append(f"{model} {_cell(top_fg)}")
            alls.append(f"{model} {_cell(all_fg)}")
        seen = {verdicts[(model, method)] for model in models}
        ours = (f"{'every model' if len(models) > 1 else 'the model'}: "
                + ", ".join(sorted(seen)) if len(seen) == 1 else
                "; ".join(f"{model}: {verdicts[(model, method)]}" for model in models))
        paper = PAPER_VERDICT[method]
        against = [m for m in models if verdicts[(m, method)] == OPPOSITE[paper]]
        undecided = [m for m in models if verdicts[(m, method)] == "undecided"]
        agree = [m for m in models if verdicts[(m, method)] == paper]
        if not against and not undecided:
            outcome = "this holds here."
        elif len(undecided) == len(models):
            outcome = ("undecided here: every model's interval contains the line."
                       if len(models) > 1 else "undecided here: the interval contains the line.")
        else:
            bits = []
            if against:
                bits.append(f"this does not hold here for {_join(against)}")
            if undecided:
                bits.append(f"undecided for {_join(undecided)} (the interval contains the line)")
            if agree:
                bits.append(f"it holds for {_join(agree)}")
            outcome = "; ".join(bits) + "."
        findings.append(
            f"{METHOD_LABELS[method]}: after randomising {top} alone, the foreground signed "
            f"Spearman correlation with the original maps is " + ", ".join(tops)
            + f"; after all {last} layers " + ", ".join(alls)
            + f". Against our line at {LINE} (ours, not the paper's: 'changes' if the 95% "
            f"interval after {top} lies below it, 'stays high' if above; each model read on its "
            f"own interval, no multiple-comparison correction): {ours}. The paper: "
            f"{PAPER[method][0]} ({PAPER[method][1]}); " + outcome)
    if "integrated_gradients" in methods:
        a_all = _at(summary, "dense", "integrated_gradients", "cascading", last, "spearman_abs",
                    "all")
        a_fg = _at(summary, "dense", "integrated_gradients", "cascading", last, "spearman_abs",
                   "foreground")
        findings.append(
            f"Integrated Gradients by |maps|: with all {last} layers of the dense model "
            f"randomised, Spearman of |maps| is {_cell(a_all)} over all pixels and "
            f"{_cell(a_fg)} over the foreground. The all-pixel value mostly counts the "
            "background, where zero-baseline IG is exactly 0 for any weights; what remains on "
            "the foreground is |input x mean gradient| following the strokes of the digit, the "
            "input outline the paper sees in its IG maps.")
    if not contrast.empty:
        n_contrast = int(np.isfinite(contrast["_p_holm"]).sum())
        for model in models:
            sel = contrast[(contrast["model"] == model) & (contrast["_region"] == "foreground")
                           & (contrast["_sim"] == "spearman_signed")]
            gaps = [f"{r['versus']} {_fmt(r['_mean'], r['_low'], r['_high'])} "
                    f"(Holm-adjusted p {_p_text(r['_p_holm'])})" for _, r in sel.iterrows()]
            sig = sel["_p_holm"] < ALPHA
            if bool((sig & (sel["_mean"] > 0)).all()):
                outcome = ("the paper's contrast holds here (Guided Backprop changes less: every "
                           "difference above 0)")
            elif bool((sig & (sel["_mean"] < 0)).any()):
                outcome = ("the paper's contrast does not hold here: "
                           + _join(list(sel[sig & (sel["_mean"] < 0)]["versus"]))
                           + " changed less than Guided Backprop")
            else:
                outcome = ("undecided (not every difference is above 0 after the correction, "
                           "and none is below 0)")
            findings.append(
                f"{model}: after randomising {top}, Guided Backprop's foreground signed Spearman "
                f"minus the other method's is " + ", ".join(gaps)
                + f". With Holm's correction over the {n_contrast} comparisons of the table "
                f"'Guided Backprop minus the other methods' ({test_unit}, family-wise error "
                f"{ALPHA:.0%}): " + outcome + ".")
    if len(models) > 1:
        findings.append(_pruning_finding(effect, models, methods, verdicts, test_unit,
                                         len(seeds)))

    # --- tables and figures ------------------------------------------------------------------
    paper_table = pd.DataFrame([{"method": METHOD_LABELS[m], "paper's finding": PAPER[m][0],
                                 "source": f"{PAPER[m][1]}, Inception v3 on ImageNet"}
                                for m in methods])
    accuracy = []
    for tag in models:
        g = models_info[models_info["model"] == tag]
        acc, acc_low, acc_high, _ = mean_ci(g["accuracy"])
        acc_low, acc_high, _ = _clip(acc_low, acc_high, (0.0, 1.0))
        accuracy.append({"model": tag,
                         "test accuracy %": _fmt(100 * acc, 100 * acc_low, 100 * acc_high, digits=1),
                         "measured sparsity": f"{g['measured_sparsity'].mean():.3f}",
                         "seeds": len(g)})
    sections = [
        Section("Side by side: the paper's finding and ours", [
            "The paper reports the randomisation test as figures: its column is the qualitative "
            "result per method, with the figure it comes from; no number is read off a figure. "
            f"Ours: similarity of each sample's map to its map on the trained model after "
            f"randomising the top layer ({top}) and after all {last} layers, cascading from the "
            f"logits down; {ci_text}. 1 = unchanged, 0 = unrelated. Undefined per-sample "
            "values (Spearman of a constant map, e.g. an all-zero map of a randomised network) "
            f"are left out: at most {summary['nan_fraction'].max():.1%} of any cell's."],
            [("The paper's findings (model parameter randomisation, cascading)", paper_table),
             ("All pixels: similarity to the original map (cascading randomisation)",
              _side_by_side(summary, models, methods, "all", last, top)),
             ("Foreground pixels only (input ≠ 0)",
              _side_by_side(summary, models, methods, "foreground", last, top))]),
        *([Section("Does Guided Backprop change less than the other methods?", [
            f"Per sample, Guided Backprop's similarity minus Saliency's (or IG's) after "
            f"randomising {top}, same model, samples and random weights; {ci_text}. Above 0 = "
            "Guided Backprop's maps changed less, the paper's finding. p (Holm): the "
            f"two-sided {test_unit.removeprefix('paired ')} that the difference is 0, "
            f"Holm-adjusted over all {len(contrast)} rows of this table (one family)."],
            [("Guided Backprop minus the other methods after the top layer",
              contrast.drop(columns=[c for c in contrast if c.startswith("_")]))])]
          if not contrast.empty else []),
        Section("Does pruning change the sanity check?", [
            "Per sample, the pruned model's similarity averaged over the cascade (the "
            "normalised area under the curve) minus the dense model's, same seed, samples and "
            f"random weights; {ci_text}. Above 0 = the pruned model's maps change less when "
            "its weights are randomised. p (Holm): the two-sided "
            f"{test_unit.removeprefix('paired ')} that the difference is 0, Holm-adjusted over "
            f"all {len(effect)} rows of this table (one family). Dense drop: 1 − the dense "
            "model's mean similarity over the cascade, how far randomisation itself moves the "
            "dense maps; the last column sets the difference against it."],
            [("Pruned minus dense, mean similarity over the cascading curve",
              effect.drop(columns=[c for c in effect if c.startswith("_")]))]),
        Section("Cascading randomisation curves", [
            "Similarity to the original map as the layers are re-initialised from the logits "
            f"down (x axis: the layer re-initialised last; all above it stay random); {ci_text} "
            "as bands."], [],
            [("Cascading randomisation, all pixels (rows: methods; columns: Spearman of |maps|, "
              "signed Spearman, SSIM)", _curve_figure(summary, models, methods, "cascading",
                                                       "all")),
             ("Cascading randomisation, foreground pixels only",
              _curve_figure(summary, models, methods, "cascading", "foreground"))]),
        Section("Example maps as layers are randomised", [
            f"Test image {params.example} of training seed {seeds[0]}: |map| / max |map| "
            "(the paper's absolute-value visualisation) of the trained model (original) and "
            "after each further layer is re-initialised, as in the paper's Fig. 2."], [],
            [("Maps of one test image under cascading randomisation, dense and pruned",
              _examples_figure(all_examples[0], models, methods, layers))]),
        Section("Models", ["Digits test set (all of it), mean and 95% t-interval across "
                           "seeds, clipped to [0, 100] (one seed: no interval)."],
                [("Accuracy and measured sparsity", pd.DataFrame(accuracy))]),
    ]
    if params.independent:
        ind_rows = []
        for method in methods:
            for similarity in SIMILARITIES:
                for region in REGIONS:
                    row = {"method": METHOD_LABELS[method],
                           "similarity": SIMILARITY_LABELS[similarity],
                           "region": region_names[region]}
                    for model in models:
                        for step, layer in enumerate(layers, start=1):
                            row[f"{model}: {layer}"] = _cell(_at(
                                summary, model, method, "independent", step, similarity,
                                region))
                    ind_rows.append(row)
        at = next(i for i, sec in enumerate(sections) if sec.heading.startswith("Example"))
        sections.insert(at, Section("Independent randomisation", [
            "One layer re-initialised at a time, every other layer trained (the paper's "
            f"independent randomisation), same random weights per layer as the cascade; "
            f"{ci_text}. No published column: compare with the cascade."],
            [("Similarity after re-initialising each layer alone", pd.DataFrame(ind_rows))],
            [("Independent randomisation, all pixels",
              _curve_figure(summary, models, methods, "independent", "all"))]))
    setup = [
        f"Digits (scikit-learn 8x8, split seed {context.seed}); the xprune digits CNN "
        f"(conv1, conv2, fc1, fc2) trained {plural(params.epochs, 'epoch')} per training seed; "
        + (f"seeds {seeds[0]}–{seeds[-1]}." if len(seeds) > 1 else f"seed {seeds[0]}."),
        "Pruned models: global L1 magnitude pruning of conv and linear weights at "
        + ", ".join(f"{s:g}" for s in params.sparsities)
        + f" with {plural(params.finetune_epochs, 'epoch')} of masked fine-tuning (as in the "
        "default xprune analysis); pruning made permanent before the test.",
        "Intervals: Student-t 95% intervals across the training seeds' means (one seed: across "
        "its test images), clipped to the range the quantity can take: [-1, 1] for Spearman "
        "and SSIM, [-2, 2] for a difference of two (summary.csv marks a clipped interval in "
        "ci_clipped). Counts of differences from 0 use Holm's correction over every row of "
        "their table; fewer than 3 seeds make the intervals across seeds unreliable.",
        f"Maps: {', '.join(METHOD_LABELS[m] for m in methods)} (Captum"
        + ("; Saliency as the signed gradient" if "saliency" in methods else "")
        + (f"; IG with a zero baseline and {params.ig_steps} steps"
           if "integrated_gradients" in methods else "")
        + f") of the first {params.n_samples} test images, explaining "
        + ("the true class" if params.target == "label" else "each model's predicted class")
        + ".",
        f"Randomisation as the paper: every layer with weights re-initialised with its own "
        f"initialiser (PyTorch's reset_parameters), from the logits down ({' → '.join(layers)}) "
        "cascading, and one at a time (independent); the same random weights for every model of "
        "a seed (seed + 7919).",
        "Similarities as the paper: Spearman rank correlation of the maps with and without "
        "absolute value, and SSIM. Normalisation as the authors' released code: |map| / "
        "max |map| (abs_grayscale_norm; Spearman is unchanged by it); SSIM of these [0, 1] maps "
        f"with data range 1 and a {params.ssim_window}x{params.ssim_window} uniform window "
        "(scikit-image's formula).",
        "Foreground: the pixels where the input is nonzero; Spearman ranks only them, SSIM "
        "averages the windows centred on them.",
        "Data: per_seed.csv holds each seed's sample means, summary.csv every cell of the "
        "tables and figures; the per-sample values are stored with the run "
        "(.cache/<fingerprint>/seed-<s>-per-sample.csv).",
    ]
    differences = [
        "Data and networks: 8x8 digits and a 4-layer CNN, not Inception v3 on ImageNet (the "
        "paper's Fig. 2 and similarity curves) or its MNIST networks; 4 randomisation steps "
        "instead of 17 blocks.",
        "The paper's results are figures; the side-by-side table quotes them qualitatively, "
        "without numbers read off a figure. Fig. 2 is the paper's figure of example maps under "
        "cascading randomisation on Inception v3 (its caption checked); the paper also plots "
        "the similarity to the original maps along the same cascade, in a figure whose number "
        "we did not check, so it is cited here as 'the paper's similarity curves'.",
        "Which normalisation feeds the paper's SSIM we could not confirm (the released MNIST "
        "notebook computes only rank correlations); we use the absolute-value one "
        "(abs_grayscale_norm of the authors' code) with data range 1. The SSIM window is "
        f"{params.ssim_window}x{params.ssim_window}, not scikit-image's default 7: a 7x7 "
        "window covers almost all of an 8x8 image.",
        "Pruned models are re-initialised densely (each layer's reset_parameters()): after a "
        "layer is randomised it is no longer sparse, so every model ends at the same random "
        "network of its seed. Pruning is compared through the maps of the trained models.",
        f"{plural(len(seeds), 'training seed')}, no HOG similarity, and "
        f"{plural(len(methods), 'method')} of the paper's ("
        + ", ".join(METHOD_LABELS[m] for m in methods) + "; the paper also has SmoothGrad, "
        "Gradient ⊙ Input, GradCAM and Guided GradCAM).",
        "Foreground scores are ours: the paper compares all pixels.",
    ]
    value_columns = [c for c in per_sample if c.split("@")[0] in SIMILARITIES]
    per_seed_means = (per_sample.groupby(["seed", "model", "sparsity", "method", "order", "step",
                                          "layer"], sort=False)[value_columns].mean()
                      .reset_index())
    return ReproductionReport(
        title=TITLE, citation=CITATION, findings=findings, setup=setup,
        differences=differences, sections=sections,
        data={"per_seed": per_seed_means, "summary": summary, "models": models_info})
