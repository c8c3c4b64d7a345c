"""Hooker et al. 2019: pruning-identified exemplars (PIEs) on digits, and how their maps change.

Hooker, Courville, Clark, Dauphin & Frome, 'What do compressed deep neural
networks forget?', arXiv 1911.05248 (2019; first circulated as 'Selective
brain damage: measuring the disparate impact of model pruning').

The paper trains a population of dense models and, at each sparsity t, a
population of pruned models; a test image is a PIE at t when the modal
(most frequent) label of the pruned population differs from that of the dense
population. PIEs are a small part of the test set on which accuracy is much
lower. We repeat this with xprune's digits CNN (several seeds, each dense
model pruned by global L1 magnitude pruning with a short masked fine-tune)
and add what the paper does not measure: how much the dense and pruned
attribution maps of PIEs disagree compared with the rest of the test set,
with controls so that the answer is not just "the prediction changed".
"""

from __future__ import annotations

import math
import warnings
import zlib
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from .._validation import check_positive_int
from ..attribution import attribute, completeness_error
from ..data import DatasetSplit, load_digits_split
from ..metrics import foreground, gini_index, on_features, spearman, top_k_intersection
from ..models import DigitsCNN, predict, train
from ..pruning import fine_tune, layer_table, prune
from ..report.figures import plot_attribution_grid
from ..report.tables import fmt_ci, plural
from ..stats import bootstrap_ci, compare_groups, holm, proportion_ci, stratified_difference
from . import Context, ReproductionReport, Section, register

__all__ = ["Params", "attribution_changes", "modal_labels", "pie_mask", "prune_and_fine_tune",
           "seed_pooled", "train_dense"]

METHODS = ("integrated_gradients", "saliency")
METRICS = ("spearman", "spearman_fg", "top_k", "delta_gini")
METRIC_LABELS = {"spearman": "Spearman", "spearman_fg": "Spearman @foreground",
                 "top_k": "top-k intersection", "delta_gini": "Gini change (pruned - dense)"}
SUBSETS = {"all": "all samples",
           "agree": "both models predict the explained class",
           "strata": "within dense-margin strata"}

METHOD_LABELS = {"integrated_gradients": "Integrated Gradients",
                 "saliency": "Saliency (absolute gradient)"}

# The paper's claims that the report checks, each with where it is stated. Two are quoted from
# the paper's abstract; the PIE rule, its tie-break and the sparsity levels are taken from the
# authors' released code. No numbers from the paper's tables are reproduced here.
CODE = "google-research/google-research, pruning_identified_exemplars"
PAPER_CLAIMS = {
    "narrow": ("Models with radically different numbers of weights have comparable top-line "
               "performance but 'diverge considerably in behavior on a narrow subset of the "
               "dataset' (the PIEs).",
               "quoted from the paper, Abstract, arXiv 1911.05248v3"),
    "accuracy": ("'Removing PIE images from the test-set greatly improves top-1 accuracy for "
                 "both pruned and non-pruned models.'",
                 "quoted from the paper, Abstract, arXiv 1911.05248v1/v2 (first titled "
                 "'Selective Brain Damage: Measuring the Disparate Impact of Model Pruning')"),
    "population": ("A test image is a PIE at a sparsity when the modal (most frequent) label "
                   "of the population of pruned models at that sparsity differs from the modal "
                   "label of the population of non-pruned models, computed at 10, 30, 50, 70 "
                   "and 90% of weights pruned; the released models are ResNet-50s trained on "
                   "ImageNet 'with iterative pruning'.",
                   f"the authors' released code, {CODE}: README.md and "
                   f"pie_dataset_gen/aggregate_predictions.py"),
    "ties": ("Ties between equally frequent labels go to the largest class index: the modal "
             "label is pandas' Series.mode().max().",
             f"the authors' released code, {CODE}/pie_dataset_gen/aggregate_predictions.py"),
}
PAPER_SPARSITIES = (0.1, 0.3, 0.5, 0.7, 0.9)  # levels in the authors' aggregate_predictions.py
NARROW = 0.10  # we call a PIE share below 10% of the test set "narrow"
COLLAPSED = 0.5  # pruned models below 50% test accuracy (chance: 10%) count as collapsed
MIN_PIES = 5  # intervals, tests and tallies only for comparisons with at least 5 PIEs
ALPHA = 0.05  # Holm-adjusted p below this counts as a detected difference


def _fraction_tuple(values, name: str, *, allow_empty: bool = False) -> tuple[float, ...]:
    if not isinstance(values, (list, tuple)) or (not values and not allow_empty):
        raise ValueError(f"Expected `params.{name}` to be a non-empty list of numbers in (0, 1), "
                         f"got {values!r}.")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
            raise ValueError(f"Expected every entry of `params.{name}` in (0, 1), got {v!r}.")
    if len(set(values)) != len(values):
        raise ValueError(f"Expected distinct entries in `params.{name}`, got {list(values)}.")
    return tuple(float(v) for v in values)


def _positive_int(value, name: str, minimum: int = 1) -> int:
    return check_positive_int(value, f"params.{name}", minimum=minimum)


def _positive_float(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0:
        raise ValueError(f"Expected `params.{name}` to be a number > 0, got {value!r}.")
    return float(value)


@dataclass(frozen=True)
class Params:
    """Parameters of the PIE reproduction; the defaults are the full run.

    Attributes
    ----------
    n_seeds : int >= 2
        Dense models trained from independent seeds; each is pruned to every
        sparsity, so each population (dense, pruned at t) has ``n_seeds`` models.
    sparsities : list of float in (0, 1)
        Fractions of conv/linear weights removed (global L1 magnitude).
    epochs, lr, batch_size : dense training (Adam, as xprune's default analysis).
    finetune_epochs, finetune_lr : masked fine-tuning after pruning.
    methods : subset of ("integrated_gradients", "saliency")
    ig_steps : int
        Integrated Gradients path points (zero baseline).
    top_k : float in (0, 1]
        Fraction of the 64 pixels compared by top-k intersection.
    n_bootstrap : int
        Bootstrap resamples of every interval.
    margin_strata : int
        Quantile strata of the dense margin for the conditioned comparison.
    figure_sparsities : list of float, optional
        Sparsities (among ``sparsities``) whose agreement distributions are
        drawn and whose PIEs fill the example grid (the last one). Default:
        the two with the most PIEs among those where the pruned models still
        work (mean test accuracy >= 50%).
    n_examples : int
        PIE images in the example grid.
    """

    n_seeds: int = 9
    sparsities: tuple[float, ...] = (0.3, 0.5, 0.7, 0.9, 0.95, 0.96, 0.97, 0.99)
    epochs: int = 20
    lr: float = 3e-3
    batch_size: int = 64
    finetune_epochs: int = 5
    finetune_lr: float = 1e-3
    methods: tuple[str, ...] = METHODS
    ig_steps: int = 16
    top_k: float = 0.1
    n_bootstrap: int = 2000
    margin_strata: int = 5
    figure_sparsities: tuple[float, ...] | None = None
    n_examples: int = 6

    def __post_init__(self) -> None:
        _positive_int(self.n_seeds, "n_seeds", minimum=2)
        object.__setattr__(self, "sparsities", _fraction_tuple(self.sparsities, "sparsities"))
        for name in ("epochs", "batch_size", "finetune_epochs", "ig_steps", "margin_strata",
                     "n_examples"):
            _positive_int(getattr(self, name), name)
        _positive_int(self.n_bootstrap, "n_bootstrap", minimum=100)
        _positive_float(self.lr, "lr")
        _positive_float(self.finetune_lr, "finetune_lr")
        if not isinstance(self.methods, (list, tuple)) or not self.methods \
                or any(m not in METHODS for m in self.methods) \
                or len(set(self.methods)) != len(self.methods):
            raise ValueError(f"Expected `params.methods` to be a non-empty list of distinct "
                             f"names among {list(METHODS)}, got {self.methods!r}.")
        object.__setattr__(self, "methods", tuple(self.methods))
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, (int, float)) \
                or not 0 < self.top_k <= 1:
            raise ValueError(f"Expected `params.top_k` in (0, 1], got {self.top_k!r}.")
        if self.figure_sparsities is not None:
            figs = _fraction_tuple(self.figure_sparsities, "figure_sparsities")
            missing = [t for t in figs if t not in self.sparsities]
            if missing:
                raise ValueError(f"Expected `params.figure_sparsities` to be among "
                                 f"`params.sparsities` {list(self.sparsities)}, got {missing}.")
            object.__setattr__(self, "figure_sparsities", figs)


# ----------------------------------------------------------------------------- the maths


def modal_labels(predictions, n_classes: int | None = None) -> np.ndarray:
    """The most frequent label of each column of a population's predictions.

    Parameters
    ----------
    predictions : array of shape (n_models, N), integer class indices
        Row m holds model m's predicted class for the N test samples.
    n_classes : int, optional
        Number of classes; default ``predictions.max() + 1``.

    Returns
    -------
    ndarray of shape (N,), int64
        The modal label per sample. Ties between equally frequent labels go
        to the largest class index, as the authors' code does
        (``Series.mode().max()``).

    Raises
    ------
    ValueError
        If ``predictions`` is not a non-empty 2-D array of non-negative integers.
    """
    p = np.asarray(predictions)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] == 0 or not np.issubdtype(p.dtype, np.integer) \
            or p.min() < 0:
        raise ValueError(f"Expected `predictions` to be a non-empty (n_models, N) array of class "
                         f"indices >= 0, got shape {p.shape} and dtype {p.dtype}.")
    c = int(p.max()) + 1 if n_classes is None else int(n_classes)
    counts = np.zeros((p.shape[1], c), dtype=np.int64)
    np.add.at(counts, (np.broadcast_to(np.arange(p.shape[1]), p.shape), p), 1)
    is_max = counts == counts.max(axis=1, keepdims=True)
    return (c - 1 - np.argmax(is_max[:, ::-1], axis=1)).astype(np.int64)


def pie_mask(dense_predictions, pruned_predictions, n_classes: int | None = None) -> np.ndarray:
    """Pruning-identified exemplars: samples whose modal label changes under pruning.

    Hooker et al. 2019: a sample is a PIE at sparsity t when the modal label
    of the pruned population differs from the modal label of the dense
    population (ties as :func:`modal_labels`).

    Parameters
    ----------
    dense_predictions : array of shape (n_dense, N)
    pruned_predictions : array of shape (n_pruned, N)

    Returns
    -------
    bool ndarray of shape (N,); True = PIE.
    """
    d, p = np.asarray(dense_predictions), np.asarray(pruned_predictions)
    if d.ndim != 2 or p.ndim != 2 or d.shape[1] != p.shape[1]:
        raise ValueError(f"Expected dense and pruned predictions of shapes (n_dense, N) and "
                         f"(n_pruned, N), got {d.shape} and {p.shape}.")
    c = int(max(d.max(), p.max())) + 1 if n_classes is None else n_classes
    return modal_labels(d, c) != modal_labels(p, c)


def attribution_changes(dense_map: Tensor, pruned_map: Tensor, inputs: Tensor, *,
                        k: int) -> dict[str, np.ndarray]:
    """Per-sample agreement and sparseness change between a dense and a pruned map.

    Parameters
    ----------
    dense_map, pruned_map : Tensor of shape (N, C, H, W)
        Maps of the same inputs for the same targets.
    inputs : Tensor of shape (N, C, H, W)
        The explained images; their nonzero pixels are the foreground.
    k : int
        Pixels compared by top-k intersection.

    Returns
    -------
    dict of float64 arrays of shape (N,)
        ``spearman`` (all pixels), ``spearman_fg`` (foreground pixels only,
        :func:`~xprune.metrics.on_features`), ``top_k`` (top-k intersection of
        |a|), all in [-1, 1] or [0, 1], higher = more agreement, NaN where
        undefined (a constant map); ``gini_dense``, ``gini_pruned`` and
        ``delta_gini`` = pruned - dense (Gini index of |a|, higher = sparser).
    """
    g_dense, g_pruned = gini_index(dense_map), gini_index(pruned_map)
    return {
        "spearman": spearman(dense_map, pruned_map).numpy(),
        "spearman_fg": on_features(spearman, dense_map, pruned_map, foreground(inputs)).numpy(),
        "top_k": top_k_intersection(dense_map, pruned_map, k=k).numpy(),
        "gini_dense": g_dense.numpy(),
        "gini_pruned": g_pruned.numpy(),
        "delta_gini": (g_pruned - g_dense).numpy(),
    }


def seed_pooled(frame: pd.DataFrame, column: str, *, where: str | None = None) -> pd.Series:
    """Pool per-(seed, sample) values into one value per sample: the mean over seeds.

    Test samples are the units of every PIE-vs-rest comparison (a PIE is a
    property of a sample, not of a seed); each sample's value is averaged
    over the seeds where it is finite, and, with ``where``, only over the
    seeds where that boolean column is True.

    Returns
    -------
    Series indexed by ``sample``; samples with no finite value are left out.
    """
    rows = frame if where is None else frame[frame[where].astype(bool)]
    return rows.groupby("sample")[column].mean().dropna()


# ----------------------------------------------------------------------------- the models




def _new_model(seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return DigitsCNN()


def train_dense(data: DatasetSplit, params: Params, seed: int, device: str) -> nn.Module:
    """A DigitsCNN initialised and trained with ``seed`` (Adam, ``params.epochs``)."""
    model = _new_model(seed).to(device)
    train(model, data.x_train, data.y_train, epochs=params.epochs, lr=params.lr,
          batch_size=params.batch_size, seed=seed)
    return model


def prune_and_fine_tune(dense: nn.Module, sparsity: float, data: DatasetSplit, params: Params,
                        seed: int, device: str) -> nn.Module:
    """Global L1 magnitude pruning of a copy of ``dense``, then masked fine-tuning.

    The stand-in for the paper's gradual magnitude pruning during training,
    as xprune's default analysis prunes (:mod:`xprune.analysis`). ``dense``
    is never mutated.
    """
    pair = prune(dense, sparsity, method="l1_unstructured", scope="global", seed=seed,
                 layers="*")  # every layer, as this reproduction always did
    pair = fine_tune(pair, data.x_train, data.y_train, epochs=params.finetune_epochs,
                     lr=params.finetune_lr, batch_size=params.batch_size, seed=seed,
                     device=device)
    return pair.sparse


def _tag(t: float) -> str:
    return f"{t:g}"


def _method_params(method: str, params: Params) -> dict:
    if method == "integrated_gradients":
        return {"n_steps": params.ig_steps, "baseline": 0.0}
    return {"abs": True}  # Saliency = |gradient|, set explicitly (see METHOD_LABELS)


def _maps(dense: nn.Module, pruned: dict[float, nn.Module], x: Tensor,
          params: Params) -> dict[str, Tensor]:
    """Logits and maps of every model of one seed; targets = the dense model's predictions."""
    out = {"logits_dense": predict(dense, x)}
    targets = out["logits_dense"].argmax(dim=1)
    models = [("dense", dense)] + [(_tag(t), m) for t, m in pruned.items()]
    for tag, model in models[1:]:
        out[f"logits_{tag}"] = predict(model, x)
    for method in params.methods:
        for tag, model in models:
            with warnings.catch_warnings():  # the completeness error is reported instead
                warnings.filterwarnings("ignore", message="Integrated Gradients' median")
                a = attribute(model, x, targets, method, params=_method_params(method, params),
                              model_tag=tag)
            out[f"map_{tag}_{method}"] = a.values
            if a.delta is not None:
                out[f"relerr_{tag}_{method}"] = completeness_error(a)[0]
    return out


def _sample_frame(maps: dict[str, Tensor], data: DatasetSplit, seed: int,
                  params: Params) -> pd.DataFrame:
    """One row per sparsity x method x test sample of one seed."""
    x, y = data.x_test, data.y_test
    probs = maps["logits_dense"].double().softmax(dim=1)
    top2 = probs.topk(2, dim=1).values
    dense_pred = maps["logits_dense"].argmax(dim=1).numpy()
    k = max(1, round(params.top_k * x[0, 0].numel()))  # pixels of one channel
    frames = []
    for t in params.sparsities:
        pruned_pred = maps[f"logits_{_tag(t)}"].argmax(dim=1).numpy()
        for method in params.methods:
            changes = attribution_changes(maps[f"map_dense_{method}"],
                                          maps[f"map_{_tag(t)}_{method}"], x, k=k)
            frames.append(pd.DataFrame({
                "seed": seed, "sparsity": t, "method": method, "sample": np.arange(len(y)),
                "label": y.numpy(), "dense_pred": dense_pred, "pruned_pred": pruned_pred,
                "agree": dense_pred == pruned_pred,
                "dense_margin": (top2[:, 0] - top2[:, 1]).numpy(), **changes}))
    return pd.concat(frames, ignore_index=True)


def _model_frame(dense: nn.Module, pruned: dict[float, nn.Module], maps: dict[str, Tensor],
                 data: DatasetSplit, seed: int, params: Params) -> pd.DataFrame:
    """Per model of one seed: measured sparsity, test accuracy, IG completeness error."""
    n_total = int(layer_table(dense)["numel"].sum())
    rows = []
    for tag, model in [("dense", dense)] + [(_tag(t), m) for t, m in pruned.items()]:
        layers = layer_table(model)
        zeros = int((layers["numel"] - layers["nonzeros"]).sum())
        density = {r.layer: r.nonzeros / r.numel for r in layers.itertuples(index=False)}
        sparsest = min(density, key=density.get)
        acc = float((maps[f"logits_{tag}"].argmax(dim=1) == data.y_test).double().mean())
        row = {"seed": seed, "sparsity": 0.0 if tag == "dense" else float(tag),
               "measured_sparsity": zeros / n_total, "test_accuracy": acc,
               "sparsest_layer": sparsest, "sparsest_layer_density": density[sparsest]}
        key = f"relerr_{tag}_integrated_gradients"
        row["ig_median_rel_completeness_error"] = float(maps[key].median()) if key in maps \
            else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- aggregation


def _pie_frame(samples: pd.DataFrame, params: Params, n_classes: int) -> pd.DataFrame:
    """Per sparsity x sample: modal labels, PIE flag, per-sample accuracy over seeds, margin."""
    first = samples[samples["method"] == params.methods[0]]
    frames = []
    for t in params.sparsities:
        at = first[first["sparsity"] == t]
        dense = at.pivot(index="seed", columns="sample", values="dense_pred")
        pruned = at.pivot(index="seed", columns="sample", values="pruned_pred")
        label = at.groupby("sample")["label"].first()
        d_modal = modal_labels(dense.to_numpy(), n_classes)
        p_modal = modal_labels(pruned.to_numpy(), n_classes)
        frames.append(pd.DataFrame({
            "sparsity": t, "sample": dense.columns.to_numpy(), "label": label.to_numpy(),
            "dense_modal": d_modal, "pruned_modal": p_modal, "pie": d_modal != p_modal,
            "dense_accuracy": (dense.to_numpy() == label.to_numpy()).mean(axis=0),
            "pruned_accuracy": (pruned.to_numpy() == label.to_numpy()).mean(axis=0),
            "dense_margin": at.groupby("sample")["dense_margin"].mean().to_numpy()}))
    return pd.concat(frames, ignore_index=True)


def _seed_of(context: Context, *parts) -> int:
    return context.seed + zlib.crc32("/".join(map(str, parts)).encode())


def _accuracy_table(pies: pd.DataFrame, params: Params, context: Context) -> pd.DataFrame:
    rows = []
    for t in params.sparsities:
        at = pies[pies["sparsity"] == t]
        n, n_pie = len(at), int(at["pie"].sum())
        share = proportion_ci(n_pie, n)
        row = {"sparsity": t, "n": n, "n_pie": n_pie, "share": share[0],
               "share_low": share[1], "share_high": share[2]}
        for model in ("dense", "pruned"):
            for group, mask in (("pie", at["pie"]), ("rest", ~at["pie"])):
                mean, low, high, _ = bootstrap_ci(
                    at.loc[mask, f"{model}_accuracy"].to_numpy(), n_resamples=params.n_bootstrap,
                    seed=_seed_of(context, "accuracy", t, model, group))
                row |= {f"{model}_{group}": mean, f"{model}_{group}_low": low,
                        f"{model}_{group}_high": high}
        rows.append(row)
    return pd.DataFrame(rows)


def _pooled(samples: pd.DataFrame, pies: pd.DataFrame, params: Params) -> pd.DataFrame:
    """Per sparsity x method x metric x subset x sample: the seed-pooled value and PIE flag."""
    frames = []
    for (t, method), group in samples.groupby(["sparsity", "method"], sort=False):
        flags = pies[pies["sparsity"] == t].set_index("sample")
        for metric in METRICS:
            for subset, where in (("all", None), ("agree", "agree")):
                pooled = seed_pooled(group, metric, where=where)
                frames.append(pd.DataFrame({
                    "sparsity": t, "method": method, "metric": metric, "subset": subset,
                    "sample": pooled.index.to_numpy(), "value": pooled.to_numpy(),
                    "pie": flags.loc[pooled.index, "pie"].to_numpy(),
                    "dense_margin": flags.loc[pooled.index, "dense_margin"].to_numpy()}))
    return pd.concat(frames, ignore_index=True)


def _collapsed_sparsities(models: pd.DataFrame) -> list[float]:
    """Sparsities whose pruned models' mean test accuracy is below ``COLLAPSED``."""
    acc = models[models["sparsity"] > 0].groupby("sparsity")["test_accuracy"].mean()
    return [float(t) for t, a in acc.items() if a < COLLAPSED]


def _exclusion(sparsity: float, n_pie: int, collapsed) -> str:
    """Why a comparison gets no interval, test or tally ('' = it gets them)."""
    if sparsity in collapsed:
        return "models collapsed"
    if n_pie < MIN_PIES:
        return f"{n_pie} PIE{'' if n_pie == 1 else 's'}, fewer than {MIN_PIES}"
    return ""


def _as_pie(result: dict) -> dict:
    """A :mod:`xprune.stats` group comparison with the group named PIE (``n_pie``, ``mean_pie``)."""
    return {k.replace("_group", "_pie"): v for k, v in result.items()}


def _comparisons(pooled: pd.DataFrame, params: Params, context: Context,
                 collapsed=()) -> pd.DataFrame:
    """Every PIE-vs-rest comparison; Holm over the valid ones (``excluded`` == '')."""
    rows = []
    for (t, method, metric, subset), g in pooled.groupby(
            ["sparsity", "method", "metric", "subset"], sort=False):
        res = compare_groups(g["value"].to_numpy(), g["pie"].to_numpy(),
                             n_resamples=params.n_bootstrap,
                             seed=_seed_of(context, t, method, metric, subset))
        rows.append({"sparsity": t, "method": method, "metric": metric, "subset": subset,
                     **_as_pie(res)})
        if subset == "all":
            margin = g["dense_margin"].rank(method="first").to_numpy()
            strata = np.minimum((margin - 1) * params.margin_strata // len(g),
                                params.margin_strata - 1).astype(int)
            res = stratified_difference(g["value"].to_numpy(), g["pie"].to_numpy(), strata,
                                        n_resamples=params.n_bootstrap,
                                        seed=_seed_of(context, t, method, metric, "strata"))
            rows.append({"sparsity": t, "method": method, "metric": metric, "subset": "strata",
                         "mean_pie": math.nan, "mean_rest": math.nan, "u": math.nan,
                         **_as_pie(res)})
    out = pd.DataFrame(rows)
    out["excluded"] = [_exclusion(t, int(n), collapsed)
                       for t, n in zip(out["sparsity"], out["n_pie"], strict=True)]
    # one family: every valid test of the run (Mann-Whitney, and van Elteren within strata)
    valid = (out["excluded"] == "").to_numpy()
    out["p_holm"] = holm(np.where(valid, out["p"].to_numpy(), np.nan))
    return out


# ----------------------------------------------------------------------------- figures


def _plot_share(acc: pd.DataFrame, ax=None):
    ax = ax or plt.subplots(figsize=(4.2, 3.0))[1]
    ax.plot(acc["sparsity"], 100 * acc["share"], marker="o", color="tab:red")
    ax.fill_between(acc["sparsity"], 100 * acc["share_low"], 100 * acc["share_high"],
                    color="tab:red", alpha=0.2, linewidth=0)
    ax.set_xlabel("sparsity (fraction of weights removed)")
    ax.set_ylabel("PIEs, % of test set")
    ax.set_title("share of PIEs (95% Wilson CI)", fontsize=10)
    ax.grid(alpha=0.3)
    return ax


def _plot_accuracy(acc: pd.DataFrame, ax=None):
    ax = ax or plt.subplots(figsize=(4.6, 3.2))[1]
    styles = {("dense", "pie"): ("tab:blue", "-"), ("dense", "rest"): ("tab:blue", ":"),
              ("pruned", "pie"): ("tab:orange", "-"), ("pruned", "rest"): ("tab:orange", ":")}
    for (model, group), (colour, line) in styles.items():
        col = f"{model}_{group}"
        ax.plot(acc["sparsity"], 100 * acc[col], color=colour, linestyle=line, marker="o", ms=3,
                label=f"{model}, {'PIEs' if group == 'pie' else 'non-PIEs'}")
        ax.fill_between(acc["sparsity"], 100 * acc[f"{col}_low"], 100 * acc[f"{col}_high"],
                        color=colour, alpha=0.15, linewidth=0)
    ax.set_xlabel("sparsity")
    ax.set_ylabel("top-1 accuracy, mean over seeds (%)")
    ax.set_title("accuracy on PIEs vs non-PIEs (95% bootstrap CI)", fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return ax


def _plot_distributions(pooled: pd.DataFrame, method: str, sparsities, metrics) -> plt.Figure:
    fig, axes = plt.subplots(len(sparsities), len(metrics), squeeze=False,
                             figsize=(2.9 * len(metrics), 2.5 * len(sparsities)))
    for r, t in enumerate(sparsities):
        for c, metric in enumerate(metrics):
            ax = axes[r, c]
            g = pooled[(pooled["sparsity"] == t) & (pooled["method"] == method)
                       & (pooled["metric"] == metric)]
            boxes, names = [], []
            for subset, suffix in (("all", ""), ("agree", "\n(agree)")):
                s = g[g["subset"] == subset]
                for flag, name in ((True, "PIE"), (False, "rest")):
                    boxes.append(s.loc[s["pie"] == flag, "value"].to_numpy())
                    names.append(f"{name}{suffix}\nn={len(boxes[-1])}")
            ax.boxplot([b if len(b) else [np.nan] for b in boxes], showfliers=True,
                       flierprops={"markersize": 2})
            ax.set_xticks(range(1, len(names) + 1), names, fontsize=6)
            ax.set_title(f"{METRIC_LABELS[metric]} @ {t:g}", fontsize=8)
            ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"{METHOD_LABELS[method]}: dense vs pruned map, per test sample "
                 f"(mean over seeds)", fontsize=10)
    fig.tight_layout()
    return fig


def _examples_frame(maps: dict[str, Tensor], x: Tensor, samples: list[int], t: float,
                    methods) -> pd.DataFrame:
    """Long frame (sample, model, attribution, row, col, value) for plot_attribution_grid.

    ``value`` is each map divided by its own max |a| (a pruned model's maps can be
    far weaker than the dense model's and vanish on a shared scale); ``raw_value``
    keeps the attribution.
    """
    h, w = x.shape[2:]
    rr, cc = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    frames = []
    for s in samples:
        frames.append(pd.DataFrame({"sample": s, "model": "input", "attribution": "",
                                    "row": rr.ravel(), "col": cc.ravel(),
                                    "value": x[s].sum(dim=0).numpy().ravel()}))
        for method in methods:
            for tag, name in (("dense", "dense"), (_tag(t), f"pruned@{_tag(t)}")):
                img = maps[f"map_{tag}_{method}"][s].sum(dim=0).double().numpy().ravel()
                scale = np.abs(img).max()
                frames.append(pd.DataFrame({"sample": s, "model": name, "attribution": method,
                                            "row": rr.ravel(), "col": cc.ravel(),
                                            "value": img / scale if scale > 0 else img,
                                            "raw_value": img}))
    return pd.concat(frames, ignore_index=True)


# ----------------------------------------------------------------------------- the run


def _pct(mean, low, high) -> str:
    return fmt_ci(100 * mean, 100 * low, 100 * high, digits=1) + ("" if math.isnan(mean) else "%")


def _all_of(n: int) -> str:
    return {1: "the one sparsity", 2: "both sparsities"}.get(n, f"all {n} sparsities")


def _p(p: float) -> str:
    return "n/a" if p != p else (f"{p:.1e}" if p < 1e-3 else f"{p:.3f}")


@register("hooker2019_pies",
          title="Pruning-identified exemplars on digits, and how their attributions change",
          citation="Hooker, Courville, Clark, Dauphin & Frome, 'What do compressed deep neural "
                   "networks forget?', arXiv 1911.05248, 2019",
          params=Params)
def run(params: Params, context: Context) -> ReproductionReport:
    """Train the dense and pruned populations, find the PIEs and compare their maps."""
    return _run(params, context)


def _run(params: Params, context: Context) -> ReproductionReport:
    data = load_digits_split(seed=context.seed)
    x, dev = data.x_test, context.device
    template = lambda info: DigitsCNN()  # noqa: E731
    frames, model_frames, first_maps = [], [], None
    for i in range(params.n_seeds):
        seed = context.seed * 1000 + i
        context.say(f"seed {i + 1}/{params.n_seeds}: dense model and "
                    f"{len(params.sparsities)} pruned models")
        dense, _ = context.cache.model(
            f"dense-s{i}", template,
            lambda seed=seed: (train_dense(data, params, seed, dev), {"seed": seed}))
        dense.to(dev)
        pruned = {}
        for t in params.sparsities:
            model, _ = context.cache.model(
                f"pruned-s{i}-t{_tag(t)}", template,
                lambda t=t, seed=seed, dense=dense: (
                    prune_and_fine_tune(dense, t, data, params, seed, dev), {"sparsity": t}))
            pruned[t] = model.to(dev)
        maps, _ = context.cache.tensors(f"maps-s{i}",
                                        lambda d=dense, p=pruned: _maps(d, p, x, params))
        frames.append(context.cache.frame(
            f"samples-s{i}", lambda m=maps, s=i: _sample_frame(m, data, s, params)))
        model_frames.append(context.cache.frame(
            f"models-s{i}", lambda d=dense, p=pruned, m=maps, s=i:
            _model_frame(d, p, m, data, s, params)))
        if i == 0:
            first_maps = maps
    context.say("finding PIEs and comparing their maps with the rest")
    samples = pd.concat(frames, ignore_index=True)
    models = pd.concat(model_frames, ignore_index=True)
    pies = _pie_frame(samples, params, data.n_classes)
    acc = _accuracy_table(pies, params, context)
    pooled = _pooled(samples, pies, params)
    comparisons = _comparisons(pooled, params, context, _collapsed_sparsities(models))
    return _report(params, context, data, samples, models, pies, acc, pooled, comparisons,
                   first_maps)


def _report(params, context, data, samples, models, pies, acc, pooled, comparisons,
            first_maps) -> ReproductionReport:
    n = len(data.y_test)
    seeds = params.n_seeds
    acc_by_t = acc.set_index("sparsity")
    top_level = max(PAPER_SPARSITIES)

    # --- findings
    in_range = [t for t in params.sparsities if t <= top_level]
    findings, verdicts = [], {}
    shares = ", ".join(f"{_pct(r.share, r.share_low, r.share_high)} ({r.n_pie}) at {r.sparsity:g}"
                       for r in acc.itertuples())
    if in_range:
        rows = acc_by_t.loc[in_range]
        top, top_high = rows["share"].max(), rows["share_high"].max()
        if top_high < NARROW:
            holds = "holds"
        elif (rows["share_low"] >= NARROW).any():
            holds = "does not hold"
        else:
            holds = "is undecided"
        verdicts["narrow"] = (f"{holds} (at most {100 * top:.1f}%, upper 95% bound "
                              f"{100 * top_high:.1f}%, up to {100 * top_level:.0f}% sparsity)")
        findings.append(
            f"PIEs (modal label of {seeds} pruned models differs from that of the {seeds} dense "
            f"models) are {shares} of the {n} test digits (95% Wilson intervals). Up to "
            f"{100 * top_level:.0f}% sparsity, the highest level the authors' code uses, they "
            f"are at most {100 * top:.1f}% of the test set (upper 95% bound "
            f"{100 * top_high:.1f}%), so the paper's 'narrow subset' claim {holds} here (we call "
            f"a share narrow when its whole interval lies below {100 * NARROW:.0f}%, and not "
            f"narrow when its whole interval lies at or above it).")
    else:
        findings.append(f"PIEs are {shares} of the {n} test digits (no sparsity of this run is "
                        f"at or below the authors' highest level, {100 * top_level:.0f}%).")
        verdicts["narrow"] = f"n/a (no sparsity up to {100 * top_level:.0f}%)"
    pruned_acc = models[models["sparsity"] > 0].groupby("sparsity")["test_accuracy"].mean()
    collapsed = _collapsed_sparsities(models)
    working = acc[~acc["sparsity"].isin(collapsed)]
    scope = (f"with at least {MIN_PIES} PIEs where the pruned models still work (accuracy >= "
             f"{100 * COLLAPSED:.0f}%)")
    for model, who in (("dense", "Dense"), ("pruned", "Pruned")):
        usable = working[working["n_pie"] >= MIN_PIES]
        if usable.empty:
            findings.append(f"{who} accuracy on PIEs vs non-PIEs: no sparsity {scope}; nothing "
                            f"to compare.")
            verdicts[model] = f"n/a (no sparsity {scope})"
            continue
        lower = usable[usable[f"{model}_pie_high"] < usable[f"{model}_rest_low"]]
        parts = "; ".join(
            f"{r.sparsity:g}: {_pct(getattr(r, f'{model}_pie'), getattr(r, f'{model}_pie_low'), getattr(r, f'{model}_pie_high'))} "  # noqa: E501
            f"vs {_pct(getattr(r, f'{model}_rest'), getattr(r, f'{model}_rest_low'), getattr(r, f'{model}_rest_high'))}"  # noqa: E501
            for r in usable.itertuples())
        left_out = _left_out(acc, usable, collapsed)
        if len(lower) == len(usable):
            verdict = f"holds at {_all_of(len(usable))} {scope}"
        else:
            verdict = (f"holds at {len(lower)} of {len(usable)} sparsities {scope}; at the "
                       f"other {len(usable) - len(lower)} it is undecided (intervals overlap)")
        verdicts[model] = verdict
        findings.append(
            f"{who} models' top-1 accuracy (mean over seeds) on PIEs vs non-PIEs, unadjusted "
            f"95% bootstrap intervals — {parts}. The paper's finding that accuracy is far lower "
            f"on PIEs {verdict}; a sparsity counts when the PIE interval lies wholly below the "
            f"non-PIE interval." + (f" Not counted: {left_out}." if left_out else ""))
    if collapsed:
        findings.append(
            "At sparsity " + ", ".join(f"{t:g} ({100 * pruned_acc[t]:.1f}% accuracy)"
                                       for t in collapsed)
            + " the pruned models have collapsed (chance is 10%): global magnitude pruning "
              "leaves almost no weights in the linear layers. PIEs there are most of the test "
              "set, the model no longer works, and PIE-vs-rest comparisons at that sparsity "
              "say nothing about which samples pruning forgets; they are left out of every "
              "count below.")
    findings.append(_attribution_summary(comparisons, params))
    findings += _attribution_findings(comparisons, params)
    agree_rates = samples[samples["method"] == params.methods[0]].groupby(
        "sparsity")["agree"].mean()
    findings.append(
        "Caveat on the control: 'both models predict the explained class' keeps, per seed, the "
        "samples whose pruned prediction equals the dense prediction (the explained target); "
        "pruned models agree with their dense model on "
        + ", ".join(f"{100 * v:.1f}% at {t:g}" for t, v in agree_rates.items())
        + " of the test samples.")

    n_tests = int(comparisons["p_holm"].notna().sum())
    methods_text = " and ".join(METHOD_LABELS[m] for m in params.methods)
    setup = [
        f"Data: scikit-learn digits (8x8), stratified split seeded with {context.seed}; the whole "
        f"test set ({n} images) is used.",
        f"Populations: {seeds} dense DigitsCNNs from independent seeds "
        f"({plural(params.epochs, 'epoch')}, "
        f"Adam lr {params.lr:g}); each is pruned to every sparsity "
        f"({', '.join(f'{t:g}' for t in params.sparsities)}) by global L1 magnitude pruning "
        f"of all conv/linear weights (torch.nn.utils.prune via xprune.prune) and fine-tuned "
        f"with its mask for {plural(params.finetune_epochs, 'epoch')} (lr "
        f"{params.finetune_lr:g}), as "
        f"xprune's default analysis does. This one-shot prune + short fine-tune stands in for "
        f"the authors' iterative pruning during training.",
        "PIE rule (the authors'): a test sample is a PIE at sparsity t when the modal label of "
        "the pruned population at t differs from the modal label of the dense population. "
        "Ties between equally frequent labels go to the largest class index, as the authors' "
        "released code does (pandas Series.mode().max() in "
        "pie_dataset_gen/aggregate_predictions.py).",
        "Reported per sparsity: the share of PIEs with a Wilson interval "
        "(xprune.stats.proportion_ci; over test samples, for this fixed population of models); "
        "top-1 accuracy of the dense and pruned populations on PIEs and non-PIEs as the mean "
        "over seeds, with a BCa bootstrap interval over the samples of the group (each sample's "
        "accuracy = the fraction of seeds that classify it correctly). Intervals are 95% and "
        f"not adjusted for multiple comparisons; PIE groups with fewer than {MIN_PIES} samples "
        "get no interval.",
        f"Attributions (new, not in the paper): for every seed and sparsity, {methods_text} "
        f"maps of the dense and the pruned model of that seed on all test images, both "
        f"explaining the dense model's predicted class (xprune.attribute; Integrated Gradients "
        f"with a zero baseline and {params.ig_steps} Gauss-Legendre steps; Saliency here is the "
        f"absolute value of the input gradient, |gradient|, set explicitly — other xprune "
        f"analyses may use the signed gradient). Per sample: Spearman rank correlation of the "
        f"two maps over all 64 pixels and over the foreground pixels (input nonzero, "
        f"xprune.metrics.on_features + foreground), top-k intersection of |a| "
        f"(k = {max(1, round(params.top_k * 64))} pixels) and the change of the Gini index "
        f"(pruned - dense).",
        "Pooling over seeds: the test sample is the unit. Each sample's value is its mean over "
        "the seeds (where finite), then PIEs are compared with the rest: difference of means "
        "with a two-sample BCa bootstrap interval (scipy.stats.bootstrap, "
        f"{params.n_bootstrap} resamples; 95%, not adjusted for multiple comparisons) and a "
        "two-sided Mann-Whitney U test (scipy.stats.mannwhitneyu).",
        "Controls for 'pruning changed the prediction': (1) the same comparison restricted, "
        "seed by seed, to samples where the pruned model predicts the explained class (the "
        "dense prediction), i.e. both models predict it; (2) the all-sample comparison "
        f"conditioned on the dense margin (softmax p1 - p2 of the dense model, mean over "
        f"seeds): within {params.margin_strata} quantile strata of the margin, PIE - rest "
        "differences averaged with the PIEs' stratum weights, percentile interval from "
        "resampling each stratum's groups (95%, unadjusted), and van Elteren's stratified "
        "rank-sum test (van Elteren 1960).",
        f"Which comparisons count: a comparison gets an interval, a test and a place in the "
        f"counts only when its sparsity's pruned models still work (mean accuracy >= "
        f"{100 * COLLAPSED:.0f}%) and it has at least {MIN_PIES} PIEs. All p-values of those "
        f"comparisons ({n_tests} tests: every method, metric, sparsity and the three "
        f"comparisons) form one Holm family; a difference counts as detected when its "
        f"Holm-adjusted p is below {ALPHA:g}, and as undecided otherwise.",
    ]
    beyond = [t for t in params.sparsities if t > top_level]
    differences = [
        "Task and model: a 2-conv CNN (38k weights) on 8x8 digits, not ResNet-50 on ImageNet "
        "as in the authors' released models; the test set has 360 images, so PIE counts are "
        "small and intervals wide.",
        f"Population size: {seeds} models per population. With this few models, ties in the "
        "modal label are more common and the tie rule matters more.",
        "Pruning: one-shot global L1 magnitude pruning of a trained model plus a short masked "
        "fine-tune, not iterative pruning during training; each pruned model is derived "
        "from its seed's dense model, so the two populations are paired, not independent.",
        *([f"Sparsities {', '.join(f'{t:g}' for t in beyond)} go beyond the authors' highest "
           f"level ({100 * top_level:.0f}%)."] if beyond else []),
        "Paper numbers: no numbers from the paper's tables are reproduced here. The paper's "
        "side of the comparison is its claims, quoted from its abstract (with the version), "
        "and the PIE rule, tie-break and sparsity levels of the authors' released code.",
        "The attribution comparison is new: the paper has no counterpart to check it against.",
    ]

    # --- tables
    claims = pd.DataFrame([
        {"claim": "PIEs are a narrow subset of the test set",
         "paper (source)": f"{PAPER_CLAIMS['narrow'][0]} [{PAPER_CLAIMS['narrow'][1]}]",
         "ours (digits CNN)": shares,
         "holds here?": verdicts["narrow"]},
        {"claim": "Accuracy is far lower on PIEs than on non-PIEs (dense and pruned)",
         "paper (source)": f"{PAPER_CLAIMS['accuracy'][0]} [{PAPER_CLAIMS['accuracy'][1]}]",
         "ours (digits CNN)": "see the per-sparsity table below",
         "holds here?": f"dense: {verdicts['dense']}; pruned: {verdicts['pruned']}"},
        {"claim": "PIE rule",
         "paper (source)": f"{PAPER_CLAIMS['population'][0]} [{PAPER_CLAIMS['population'][1]}]; "
                           f"{PAPER_CLAIMS['ties'][0]} [{PAPER_CLAIMS['ties'][1]}]",
         "ours (digits CNN)": f"same rule and tie-break; {seeds} models per population, "
                              "one-shot pruning + fine-tune",
         "holds here?": "followed"},
    ])
    def pie_acc(r, model: str) -> str:  # no interval below MIN_PIES PIEs
        mean = getattr(r, f"{model}_pie")
        if r.n_pie < MIN_PIES:
            return "n/a" if mean != mean else f"{100 * mean:.1f}% (no interval: {r.n_pie} PIEs)"
        return _pct(mean, getattr(r, f"{model}_pie_low"), getattr(r, f"{model}_pie_high"))

    per_t = pd.DataFrame([{
        "sparsity": f"{r.sparsity:g}" + (" (collapsed)" if r.sparsity in collapsed else ""),
        "among the authors' levels": "yes" if r.sparsity in PAPER_SPARSITIES else "no",
        "ours: PIEs": f"{r.n_pie} / {r.n}",
        "ours: PIE share [95% CI]": _pct(r.share, r.share_low, r.share_high),
        "ours: dense acc. on PIEs": pie_acc(r, "dense"),
        "ours: dense acc. on non-PIEs": _pct(r.dense_rest, r.dense_rest_low, r.dense_rest_high),
        "ours: pruned acc. on PIEs": pie_acc(r, "pruned"),
        "ours: pruned acc. on non-PIEs": _pct(r.pruned_rest, r.pruned_rest_low,
                                             r.pruned_rest_high),
    } for r in acc.itertuples()])
    model_summary = models.groupby("sparsity").agg(
        measured_sparsity=("measured_sparsity", "mean"),
        sparsest=("sparsest_layer", lambda v: v.mode().iloc[0]),
        sparsest_density=("sparsest_layer_density", "mean"),
        accuracy=("test_accuracy", "mean"), accuracy_min=("test_accuracy", "min"),
        accuracy_max=("test_accuracy", "max"),
        ig_error=("ig_median_rel_completeness_error", "median")).reset_index()
    model_table = pd.DataFrame([{
        "model": "dense" if r.sparsity == 0 else f"pruned @ {r.sparsity:g}",
        "measured sparsity": f"{r.measured_sparsity:.4f}",
        "sparsest layer (mean density)": f"{r.sparsest} ({r.sparsest_density:.4f})",
        "test accuracy, mean (min-max) over seeds":
            f"{100 * r.accuracy:.1f}% ({100 * r.accuracy_min:.1f}-{100 * r.accuracy_max:.1f})",
        "IG median relative completeness error": "n/a" if r.ig_error != r.ig_error
        else f"{r.ig_error:.4f}",
    } for r in model_summary.itertuples()])

    def cmp_table(metrics) -> pd.DataFrame:
        rows = []
        c = comparisons.set_index(["sparsity", "method", "metric", "subset"])
        for t in params.sparsities:
            for method in params.methods:
                for metric in metrics:
                    a, g, s = (c.loc[(t, method, metric, sub)] for sub in ("all", "agree",
                                                                             "strata"))
                    rows.append({
                        "sparsity": f"{t:g}", "method": METHOD_LABELS[method],
                        "metric": METRIC_LABELS[metric],
                        "PIE mean (n)": "n/a" if a["mean_pie"] != a["mean_pie"]
                        else f"{a['mean_pie']:.3f} ({int(a['n_pie'])})",
                        "rest mean (n)": f"{a['mean_rest']:.3f} ({int(a['n_rest'])})",
                        "PIE - rest, all [95% CI, unadjusted]": _cell(a),
                        "p all (Holm)": _p(a["p_holm"]),
                        "PIE - rest, both predict target [95% CI, unadjusted] (n PIE)":
                            f"{_cell(g)} ({int(g['n_pie'])})",
                        "p both predict (Holm)": _p(g["p_holm"]),
                        "PIE - rest, within margin strata [95% CI, unadjusted] (n PIE)":
                            f"{_cell(s)} ({int(s['n_pie'])})",
                        "p strata (Holm)": _p(s["p_holm"]),
                    })
        return pd.DataFrame(rows)

    # --- figures
    fig1, ax1 = plt.subplots(figsize=(4.2, 3.0))
    _plot_share(acc, ax1)
    fig2, ax2 = plt.subplots(figsize=(4.8, 3.3))
    _plot_accuracy(acc, ax2)
    if params.figure_sparsities is not None:
        fig_ts = list(params.figure_sparsities)
    else:  # the two working sparsities with the most PIEs
        ranked = working[working["n_pie"] >= 2].sort_values(["n_pie", "sparsity"],
                                                            ascending=False)
        fig_ts = sorted(ranked["sparsity"].head(2))
    dist_figs = [(f"{METHOD_LABELS[m]}: per-sample agreement of the dense and pruned maps, "
                  f"PIEs vs the rest, all samples and restricted to 'both predict the explained "
                  f"class' (agree), at sparsity {', '.join(f'{t:g}' for t in fig_ts)}",
                  _plot_distributions(pooled, m, fig_ts, METRICS))
                 for m in params.methods] if fig_ts else []
    example_figs, example_frame, example_text = [], pd.DataFrame(), []
    seed0 = samples[(samples["seed"] == 0) & (samples["method"] == params.methods[0])]
    candidates = [t for t in (fig_ts or params.sparsities)[::-1]
                  if pies[(pies["sparsity"] == t) & pies["pie"]].shape[0]]
    if candidates:
        t_ex = candidates[0]
        chosen = pies[(pies["sparsity"] == t_ex) & pies["pie"]].head(params.n_examples)
        example_frame = _examples_frame(first_maps, data.x_test, list(chosen["sample"]), t_ex,
                                        params.methods)
        preds = seed0[seed0["sparsity"] == t_ex].set_index("sample")
        desc = "; ".join(f"#{r.sample}: label {r.label}, modal dense {r.dense_modal} / pruned "
                         f"{r.pruned_modal}, seed-0 dense {preds.loc[r.sample, 'dense_pred']} / "
                         f"pruned {preds.loc[r.sample, 'pruned_pred']}"
                         for r in chosen.itertuples())
        scale = (first_maps[f"map_{_tag(t_ex)}_{params.methods[0]}"].abs().amax(dim=(1, 2, 3))
                 / first_maps[f"map_dense_{params.methods[0]}"].abs().amax(dim=(1, 2, 3))
                 .clamp_min(1e-12))[list(chosen["sample"])]
        example_text.append(
            f"PIEs at sparsity {t_ex:g} (rows, top to bottom by sample index), maps of the "
            f"seed-0 dense and pruned models for the seed-0 dense prediction, each map divided "
            f"by its own largest |a| (the pruned maps' largest |a| is "
            f"{float(scale.min()):.2f}-{float(scale.max()):.2f} times the dense one's for "
            f"{METHOD_LABELS[params.methods[0]]}): {desc}.")
        for method in params.methods:
            fig = plot_attribution_grid(example_frame, method, ["dense", f"pruned@{_tag(t_ex)}"])
            top = max(ax.get_position().y1 for ax in fig.axes)
            fig.suptitle(f"{METHOD_LABELS[method]}: PIEs at {t_ex:g}, each map / its max "
                         f"|a|", fontsize=9, va="bottom",
                         y=top + 0.4 / fig.get_figheight())  # above the column titles
            example_figs.append((
                f"{METHOD_LABELS[method]} maps of PIEs at sparsity {t_ex:g} (seed 0)", fig))

    sections = [
        Section("Paper beside ours", text=[
            "The paper's side holds its claims, each with its source: the 'narrow subset' and "
            "accuracy claims are quoted from the paper's abstract (version given); the PIE rule, "
            "its tie-break and the sparsity levels come from the authors' released code. No "
            "numbers from the paper's tables are reproduced here, so the comparison is with "
            "the paper's claims, not its values. Our numbers follow, with 95% intervals "
            f"(unadjusted; none for groups of fewer than {MIN_PIES} PIEs)."],
            tables=[("The paper's claims beside ours", claims),
                    ("PIEs per sparsity: share and top-1 accuracy on PIEs vs non-PIEs", per_t)]),
        Section("PIE share and accuracy vs sparsity",
                figures=[("Share of PIEs in the test set vs sparsity", fig1),
                         ("Top-1 accuracy on PIEs and non-PIEs, dense and pruned populations",
                          fig2)]),
        Section("Attributions of PIEs vs the rest (new)", text=[
            "Each value is a test sample's mean over seeds of the dense-vs-pruned comparison of "
            "its maps (targets: the dense model's prediction). 'PIE - rest' < 0 for an "
            "agreement metric means the pruned model's maps of PIEs agree less with the dense "
            "maps than those of other samples. The restricted column keeps, seed by seed, only "
            "samples where both models predict the explained class; the strata column compares "
            "PIEs with non-PIEs of similar dense margin. A difference that survives both "
            "controls is not just 'pruning changed the prediction'. Intervals are 95% and not "
            "adjusted for multiple comparisons; p-values are Holm-adjusted over all "
            f"{int(comparisons['p_holm'].notna().sum())} valid tests of the run. Comparisons "
            f"with fewer than {MIN_PIES} PIEs, or at a sparsity where the pruned models have "
            "collapsed, show the difference of means only, with the reason, and are not "
            "tested."],
            tables=[("Rank agreement of dense and pruned maps, PIEs vs the rest",
                     cmp_table(("spearman", "spearman_fg", "top_k"))),
                    ("Change of the Gini index (pruned - dense), PIEs vs the rest",
                     cmp_table(("delta_gini",)))],
            figures=dist_figs),
        Section("Example PIEs", text=example_text or ["No PIE at any sparsity: no examples."],
                figures=example_figs),
        Section("Models", tables=[("Measured sparsity, test accuracy and IG completeness per "
                                   "population", model_table)]),
    ]
    data_out = {"samples": samples, "pies": pies, "accuracy": acc, "pooled": pooled,
                "comparisons": comparisons, "models": models}
    if not example_frame.empty:
        data_out["examples"] = example_frame
    return ReproductionReport(
        title="Pruning-identified exemplars (Hooker et al. 2019) on digits, with attributions",
        citation="Hooker, Courville, Clark, Dauphin & Frome, 'What do compressed deep neural "
                 "networks forget?', arXiv 1911.05248, 2019",
        findings=findings, setup=setup, differences=differences, sections=sections,
        data=data_out)


def _cell(row) -> str:
    """A comparison's difference with its unadjusted interval, or why it has none."""
    if row["diff"] != row["diff"]:
        return "n/a"
    if row["excluded"]:
        return f"{row['diff']:+.3f} (not tested: {row['excluded']})"
    return fmt_ci(row["diff"], row["ci_low"], row["ci_high"], signed=True)


def _left_out(table: pd.DataFrame, kept: pd.DataFrame, collapsed) -> str:
    """'0.7 (1 PIE), 0.99 (models collapsed)': the sparsities of ``table`` not in ``kept``."""
    rest = table[~table["sparsity"].isin(kept["sparsity"])]
    return ", ".join(f"{r.sparsity:g} ({_exclusion(r.sparsity, int(r.n_pie), collapsed)})"
                     for r in rest.itertuples() if r.n_pie > 0 or r.sparsity in collapsed)


def _tally(rows: pd.DataFrame) -> tuple[int, int, int]:
    """(lower, higher, total) over the valid comparisons in ``rows``; Holm p < ALPHA."""
    valid = rows[rows["excluded"] == ""]
    hit = valid["p_holm"] < ALPHA
    return (int((hit & (valid["diff"] < 0)).sum()), int((hit & (valid["diff"] > 0)).sum()),
            len(valid))


def _attribution_findings(comparisons: pd.DataFrame, params: Params) -> list[str]:
    """Per method: Spearman agreement and Gini change, PIE - rest, all samples and controls."""
    out = []
    n_tests = int(comparisons["p_holm"].notna().sum())
    for method in params.methods:
        for metric, what in (("spearman", "Spearman agreement of dense and pruned maps"),
                             ("delta_gini", "Gini change (pruned - dense)")):
            parts, skipped = {}, {}
            for subset in ("all", "agree", "strata"):
                rows = comparisons[(comparisons["method"] == method)
                                   & (comparisons["metric"] == metric)
                                   & (comparisons["subset"] == subset)]
                rows = rows[rows["diff"].notna()]
                skipped[subset] = ", ".join(f"{r.sparsity:g} ({r.excluded})"
                                            for r in rows[rows["excluded"] != ""].itertuples())
                valid = rows[rows["excluded"] == ""]
                if valid.empty:
                    parts[subset] = (f"no comparison with at least {MIN_PIES} PIEs where the "
                                     f"pruned models still work")
                    continue
                lower, higher, total = _tally(rows)
                spans = ", ".join(
                    f"{r.sparsity:g}: {fmt_ci(r.diff, r.ci_low, r.ci_high, signed=True)}, "
                    f"p {_p(r.p_holm)}" for r in valid.itertuples())
                parts[subset] = (f"lower on PIEs at {lower}, higher at {higher} and undecided "
                                 f"at {total - lower - higher} of {total} sparsities ({spans})")
            shared = len(set(skipped.values())) == 1
            if not shared:  # the exclusions differ between the comparisons: name them inline
                for subset, text in skipped.items():
                    if text:
                        parts[subset] += f"; not counted: {text}"
            out.append(
                f"{METHOD_LABELS[method]}, {what}, PIE - rest (counted where the Holm-adjusted "
                f"p, over the run's {n_tests} valid tests, is below {ALPHA:g}; intervals 95%, "
                f"unadjusted) — all samples: {parts['all']}; restricted to samples where both "
                f"models predict the explained class: {parts['agree']}; within dense-margin "
                f"strata: {parts['strata']}."
                + (f" Not counted: {skipped['all']}." if shared and skipped["all"] else ""))
    return out


def _attribution_summary(comparisons: pd.DataFrame, params: Params) -> str:
    """The answer of the new part in one sentence: do PIEs' maps change more than the rest's?"""
    c = comparisons[comparisons["metric"] == "spearman"]
    valid = c[c["excluded"] == ""]
    if valid.empty:
        return (f"Attributions (new): no sparsity where the pruned models still work has "
                f"{MIN_PIES} or more PIEs, so the PIE-vs-rest comparison of maps has nothing to "
                f"stand on here.")
    n_tests = int(comparisons["p_holm"].notna().sum())
    tallies = {sub: _tally(c[c["subset"] == sub]) for sub in ("all", "agree", "strata")}
    lower = sum(t[0] for t in tallies.values())
    higher = sum(t[1] for t in tallies.values())
    total = sum(t[2] for t in tallies.values())
    lo_all, lo_ctrl = tallies["all"][0], tallies["agree"][0] + tallies["strata"][0]
    if lower == 0 and higher == 0:
        verdict = (f"there is no evidence that PIEs' maps agree less, or more, between the "
                   f"dense and the pruned model than the rest's: all {total} comparisons are "
                   f"undecided")
    elif lower == 0:
        verdict = (f"there is no evidence that PIEs' maps agree less between the dense and the "
                   f"pruned model than the rest's; where a difference is detected, PIEs agree "
                   f"more ({higher} of {total} comparisons)")
    elif higher == 0 and lo_all and lo_ctrl:
        verdict = (f"PIEs' maps agree less between the dense and the pruned model than the "
                   f"rest's in {lower} of {total} comparisons, including under at least one "
                   f"control")
    elif higher == 0 and lo_all:
        verdict = (f"PIEs' maps agree less on all samples ({lo_all} of {tallies['all'][2]} "
                   f"comparisons), but there is no evidence of it under the controls, so the "
                   f"difference may only reflect the changed prediction")
    elif higher == 0:
        verdict = (f"PIEs' maps agree less only under a control ({lower} of {total} "
                   f"comparisons), not on all samples")
    else:
        verdict = (f"the evidence is mixed: PIEs' maps agree less in {lower} and more in "
                   f"{higher} of {total} comparisons")

    def counts(sub: str) -> str:
        lo, hi, m = tallies[sub]
        return (f"lower in {lo}, higher in {hi}, undecided in {m - lo - hi} of {m}" if m
                else "none counted")

    ts = sorted(valid["sparsity"].unique())
    all_rows = valid[valid["subset"] == "all"]
    size = (f" PIE counts are small (at most {int(all_rows['n_pie'].max())} of "
            f"{int((all_rows['n_pie'] + all_rows['n_rest']).max())} test samples), so small "
            f"differences go undetected." if not all_rows.empty else "")
    return (f"Attributions (new), in short: {verdict}. Counted are the sparsity x method "
            f"comparisons where the pruned models still work and at least {MIN_PIES} PIEs "
            f"remain (sparsities {', '.join(f'{t:g}' for t in ts)}), a difference when its "
            f"Holm-adjusted p is below {ALPHA:g} (one Holm family over the run's {n_tests} "
            f"valid tests). Spearman agreement of the dense and pruned maps, PIE - rest: all "
            f"samples {counts('all')}; both models predict the explained class "
            f"{counts('agree')}; within dense-margin strata {counts('strata')}.{size}")
