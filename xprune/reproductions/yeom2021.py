"""Pruning by explaining (Yeom et al. 2021): the toy experiment on moons and circles.

An MLP 2 -> 1000 -> 1000 -> 1000 -> 2 is trained on scikit-learn's
``make_moons`` or ``make_circles``; then 1,000 of its 3,000 hidden units are
removed at once, without fine-tuning, ranked by one of four criteria computed
on a handful of reference samples: LRP relevance, weight magnitude,
first-order Taylor (activation x gradient) and gradient. The paper reports
that LRP keeps the accuracy best, then weight, then Taylor, then gradient,
most clearly with few reference samples (Pattern Recognition 115, 2021,
Sec. 4.1 and Fig. 3; arXiv 1912.08881).

The facts of the setup come from the authors' released code
(``seulkiyeom/LRP_Pruning_toy_example``: ``main.py``, ``modules/lrp.py``,
``modules/prune.py``), re-implemented here:

- the network: ``linear1 - ReLU - Dropout(0.5) - linear2 - ReLU - linear3 -
  output``. Their third hidden layer has no ReLU: its ReLU is registered under
  the name of the second one (``nonlin2``) in an ``OrderedDict``, which keeps
  one entry per name, so it never enters the network. ``third_relu=True``
  adds it;
- the reference samples are generated afresh for each repetition,
  ``make_moons(2 n, noise=0.1)`` or ``make_circles(2 n, noise=0.1,
  factor=0.3)`` with the repetition's seed: n per class, evenly spaced along
  each curve plus noise, not drawn from the training set;
- the criteria, per hidden unit k of each hidden linear layer (its output
  before any ReLU), on the N reference samples, with the model in eval mode:
  LRP: the relevance R_k at the layer's output, summed over the samples,
  propagated from the true class's logit with the z+ rule (positive weights,
  no bias) on every linear layer; weight: the L1 norm of the unit's incoming
  weights; Taylor: ``|mean_i a_ik g_ik|`` with a the layer output and g the
  gradient of the mean cross-entropy with respect to it (Molchanov et al.
  2017); gradient: ``|mean_i g_ik|``;
- the per-layer normalisation: LRP and weight scores are divided by the
  layer's sum, Taylor and gradient scores by the layer's L2 norm; then the
  1,000 lowest scores over all three layers are removed (a global ranking);
- removing a unit drops its row of weights and bias and the next layer's
  column; the experiment evaluates that smaller network (fewer
  multiply-adds), and the dense network is never changed.

Every step is xprune's structured pruning (:func:`xprune.prune` with
``method="structured"``, :func:`prune_toy`): each criterion is a set of
options of that method (``CORE_OPTIONS``: the score, the per-layer
normalisation, and ``n_units`` for the global ranking), and Torch-Pruning
removes the units. LRP relevances come from Captum (``LayerLRP`` with
``Alpha1_Beta0_Rule(set_bias_to_zero=True)`` on every linear layer, the
option ``lrp_rule="z+"``): Captum's rule clamps the weights to their
positive part and drops the bias, which is the authors' z+ rule, also where
a layer's inputs are negative (the input layer and, without the third ReLU,
the output layer); only the stabiliser differs (Captum adds ``1e-9 *
sign(z)``, the authors ``1e-9``). xprune never removes a layer's last unit
(the authors' code could): the two differ only when a criterion ranks every
unit of a layer among the lowest ``n_prune``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from sklearn.datasets import make_circles, make_moons
from torch import Tensor, nn

from .._validation import check_positive_int
from ..models import predict, train
from ..pruning import ModelPair, prune
from ..report.figures import plot_decision_regions, plot_group_distributions
from ..report.tables import fmt_ci
from ..stats import bootstrap_ci, holm, paired_test
from . import Context, register
from ._report import ReproductionReport, Section

__all__ = [
    "COMPARISONS",
    "CRITERIA",
    "PAPER_DENSE",
    "PAPER_REFERENCE_ACC",
    "PAPER_TRAIN_ACC",
    "CORE_OPTIONS",
    "Params",
    "accuracy",
    "hidden_layers",
    "make_toy",
    "ordering_tests",
    "prune_toy",
    "removed_per_layer",
    "run",
    "summarise",
    "toy_mlp",
]

TITLE = "Pruning by explaining: the toy experiment (moons and circles)"
CITATION = ("Yeom, Seegerer, Lapuschkin, Binder, Wiedemann, Müller & Samek, 'Pruning by "
            "explaining: A novel criterion for deep neural network pruning', Pattern "
            "Recognition 115, 2021")

DATASETS = ("moons", "circles")
CRITERIA = ("lrp", "weight", "taylor", "gradient")  # the paper's ordering, best first
SPLITS = ("reference", "train", "test", "noisy_test")
LABELS = {"lrp": "LRP", "weight": "weight", "taylor": "Taylor", "gradient": "gradient",
          "dense": "dense (unpruned)"}
SPLIT_LABELS = {"reference": "reference samples", "train": "training set",
                "test": "held-out test", "noisy_test": "noisy held-out test"}
STEPS = (("lrp", "weight"), ("weight", "taylor"), ("taylor", "gradient"))
# Each criterion as options of xprune's structured pruning (xprune/pruning/methods/structured.py): the score,
# the authors' per-layer normalisation, and (with n_units) their global ranking over all layers.
CORE_OPTIONS: dict[str, dict] = {
    "lrp": {"criterion": "lrp", "lrp_rule": "z+", "aggregate": "sum", "normalise": "sum"},
    "weight": {"criterion": "magnitude", "norm": 1, "normalise": "sum"},
    "taylor": {"criterion": "activation_taylor", "normalise": "l2"},
    "gradient": {"criterion": "activation_gradient", "normalise": "l2"},
}
# every paired comparison tested (one Holm family): the ordering's steps, then LRP against the rest
COMPARISONS = (*STEPS, ("lrp", "taylor"), ("lrp", "gradient"))
ALPHA = 0.05

# The authors' published toy results: seulkiyeom/LRP_Pruning_toy_example, file
# output/tablestats.txt (commit 3de1a7ea), accuracy in % after pruning 1,000 of the 3,000 hidden
# units, averaged over their repetitions (50 random seeds per their README), n = reference
# samples per class. Rows "dataset=<d>, stage=post, crit=<c>, n=<n> : test acc": their code
# evaluates "test" on the very reference samples the criterion was computed on.
PAPER_REFERENCE_ACC: dict[tuple[str, int], dict[str, float]] = {
    ("moons", 5): {"lrp": 99.20, "weight": 98.20, "taylor": 81.80, "gradient": 81.20},
    ("moons", 10): {"lrp": 99.60, "weight": 98.60, "taylor": 90.90, "gradient": 90.30},
    ("circles", 5): {"lrp": 99.80, "weight": 96.40, "taylor": 87.80, "gradient": 83.80},
    ("circles", 10): {"lrp": 99.90, "weight": 97.30, "taylor": 90.70, "gradient": 84.30},
}
# Same file, rows "dataset=<d>, stage=post, crit=<c>, n=<n> : train acc": their training set.
PAPER_TRAIN_ACC: dict[tuple[str, int], dict[str, float]] = {
    ("moons", 5): {"lrp": 99.86, "weight": 99.60, "taylor": 84.76, "gradient": 86.17},
    ("moons", 10): {"lrp": 99.85, "weight": 99.60, "taylor": 91.33, "gradient": 91.27},
    ("circles", 5): {"lrp": 99.98, "weight": 97.10, "taylor": 87.18, "gradient": 82.23},
    ("circles", 10): {"lrp": 99.99, "weight": 97.10, "taylor": 90.47, "gradient": 83.89},
}
# Same file, rows "stage=pre, no pruning": the unpruned model (listed for n = 1, 5, 10, 20, 50,
# 100, 200 in that order; the entries for n = 5 and 10 are the second and third rows).
PAPER_DENSE: dict[str, dict[tuple[str, int], float]] = {
    "reference": {("moons", 5): 99.20, ("moons", 10): 99.60,
                  ("circles", 5): 100.00, ("circles", 10): 100.00},
    "train": {("moons", 5): 99.90, ("moons", 10): 99.90,
              ("circles", 5): 100.00, ("circles", 10): 100.00},
}

# stable per-dataset codes and purposes for the derived random states
_DATASET_CODE = {"moons": 0, "circles": 1}
_TRAIN, _TEST, _NOISY, _NOISE, _REFERENCE, _INIT = range(6)


@dataclass(frozen=True)
class Params:
    """Parameters of the toy reproduction; the defaults are the full run.

    ``n_seeds`` repetitions per dataset; repetition s draws its own reference
    samples (for every n in ``n_per_class``, samples per class) and held-out
    sets and prunes network ``s % n_models``; every trained network is reused
    for all criteria and all n. The authors trained one network per dataset
    (``n_models = 1``) and repeated over 50 seeds. ``n_prune`` hidden units
    of the ``3 * hidden`` are removed. Training: ``n_train`` samples,
    ``epochs`` of Adam (``lr``, ``batch_size``). Held-out sets: ``n_test``
    samples with the training noise, and ``n_noisy_test`` samples with
    Gaussian noise of standard deviation ``test_noise`` added (their figure's
    noisy test set). ``boundary_grid``: points per axis of the
    decision-boundary figure (0: no figure).
    """

    datasets: list[str] = field(default_factory=lambda: list(DATASETS))
    n_per_class: list[int] = field(default_factory=lambda: [5, 10])
    n_seeds: int = 30
    n_models: int = 1
    n_prune: int = 1000
    hidden: int = 1000
    third_relu: bool = False
    dropout: float = 0.5
    n_train: int = 2000
    n_test: int = 500
    n_noisy_test: int = 500
    noise: float = 0.1
    test_noise: float = 0.3
    circle_factor: float = 0.3
    epochs: int = 4
    batch_size: int = 64
    lr: float = 1e-3
    boundary_grid: int = 100

    def __post_init__(self) -> None:
        if (not isinstance(self.datasets, list) or not self.datasets
                or any(d not in DATASETS for d in self.datasets)
                or len(set(self.datasets)) != len(self.datasets)):
            raise ValueError(f"Expected `params.datasets` to be a non-empty list of distinct names "
                             f"from {list(DATASETS)}, got {self.datasets!r}.")
        if (not isinstance(self.n_per_class, list) or not self.n_per_class
                or any(isinstance(n, bool) or not isinstance(n, int) or n < 1
                       for n in self.n_per_class)
                or sorted(set(self.n_per_class)) != list(self.n_per_class)):
            raise ValueError(f"Expected `params.n_per_class` to be a non-empty increasing list of "
                             f"positive integers, got {self.n_per_class!r}.")
        check_positive_int(self.n_seeds, "params.n_seeds", minimum=2)
        check_positive_int(self.n_models, "params.n_models")
        if self.n_models > self.n_seeds:
            raise ValueError(f"Expected `params.n_models` <= `params.n_seeds` "
                             f"({self.n_seeds}), got {self.n_models}.")
        check_positive_int(self.hidden, "params.hidden")
        check_positive_int(self.n_prune, "params.n_prune")
        if self.n_prune >= 3 * self.hidden:
            raise ValueError(f"Expected `params.n_prune` below the {3 * self.hidden} hidden units "
                             f"(3 * `params.hidden`), got {self.n_prune}.")
        if not isinstance(self.third_relu, bool):
            raise ValueError(f"Expected `params.third_relu` to be true or false, got "
                             f"{self.third_relu!r}.")
        check_positive_int(self.n_train, "params.n_train", minimum=2)
        check_positive_int(self.n_test, "params.n_test", minimum=2)
        check_positive_int(self.n_noisy_test, "params.n_noisy_test", minimum=2)
        check_positive_int(self.epochs, "params.epochs")
        check_positive_int(self.batch_size, "params.batch_size")
        check_positive_int(self.boundary_grid, "params.boundary_grid", minimum=0)
        for name, low, high in (("dropout", 0.0, 1.0), ("circle_factor", 0.0, 1.0)):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not low <= value < high or (name == "circle_factor" and value == 0)):
                bracket = "(" if name == "circle_factor" else "["
                raise ValueError(f"Expected `params.{name}` in {bracket}{low}, {high}), got "
                                 f"{value!r}.")
        for name in ("noise", "test_noise", "lr"):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not math.isfinite(value) or value < 0 or (name == "lr" and value == 0)):
                what = "a positive number" if name == "lr" else "a non-negative number"
                raise ValueError(f"Expected `params.{name}` to be {what}, got {value!r}.")


# --------------------------------------------------------------------------------------------
# Data, network and the four criteria
# --------------------------------------------------------------------------------------------

def make_toy(dataset: str, n_samples: int, *, noise: float, random_state: int,
             factor: float = 0.3) -> tuple[Tensor, Tensor]:
    """scikit-learn's two moons or two circles, as float32 inputs and int64 labels.

    ``make_moons(n_samples, noise=noise)`` or ``make_circles(n_samples,
    noise=noise, factor=factor)`` with ``random_state``; the points lie evenly
    spaced along each curve (half per class, class 1 taking the odd one)
    plus Gaussian noise, in shuffled order.

    Returns
    -------
    x : Tensor of shape (n_samples, 2), float32
    y : Tensor of shape (n_samples,), int64 in {0, 1}
    """
    if dataset == "moons":
        x, y = make_moons(n_samples=n_samples, noise=noise, random_state=random_state)
    elif dataset == "circles":
        x, y = make_circles(n_samples=n_samples, noise=noise, factor=factor,
                            random_state=random_state)
    else:
        raise ValueError(f"Expected `dataset` in {list(DATASETS)}, got {dataset!r}.")
    return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64)


def toy_mlp(*, hidden: int = 1000, third_relu: bool = False, dropout: float = 0.5,
            n_features: int = 2, n_classes: int = 2) -> nn.Sequential:
    """The authors' toy network: (N, n_features) inputs to (N, n_classes) logits.

    ``linear1 - relu1 - dropout1 - linear2 - relu2 - linear3 - [relu3] - output``
    with ``hidden`` units per hidden layer. Without ``third_relu`` the third
    hidden layer is linear, as in the authors' code (see the module docstring).
    """
    layers: list[tuple[str, nn.Module]] = [
        ("linear1", nn.Linear(n_features, hidden)), ("relu1", nn.ReLU()),
        ("dropout1", nn.Dropout(dropout)),
        ("linear2", nn.Linear(hidden, hidden)), ("relu2", nn.ReLU()),
        ("linear3", nn.Linear(hidden, hidden))]
    if third_relu:
        layers.append(("relu3", nn.ReLU()))
    layers.append(("output", nn.Linear(hidden, n_classes)))
    return nn.Sequential(OrderedDict(layers))


def hidden_layers(model: nn.Module) -> list[nn.Linear]:
    """The hidden linear layers (every ``nn.Linear`` but the last), in forward order."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if len(linears) < 2:
        raise ValueError(f"Expected a model with at least two nn.Linear layers, found "
                         f"{len(linears)}.")
    return linears[:-1]


def prune_toy(model: nn.Module, reference: tuple[Tensor, Tensor], criterion: str,
              n_prune: int) -> ModelPair:
    """Remove ``n_prune`` hidden units of ``model`` ranked by ``criterion``, the authors' way.

    :func:`xprune.prune` with ``method="structured"`` and the options of
    ``CORE_OPTIONS[criterion]`` (see the module docstring), scored on the
    ``reference`` batch ((N, 2) inputs, (N,) true classes), without
    fine-tuning. ``pair.sparse`` is the smaller network, ``pair.twin`` the
    dense architecture with the removed rows and biases zeroed; ``model`` is
    never mutated.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"Expected `criterion` in {list(CRITERIA)}, got {criterion!r}.")
    return prune(model, method="structured", data=reference,
                 options={**CORE_OPTIONS[criterion], "n_units": n_prune})


def removed_per_layer(pair: ModelPair) -> list[int]:
    """Units removed from each hidden layer: dense minus smaller width."""
    return [d.out_features - s.out_features for d, s in
            zip(hidden_layers(pair.dense), hidden_layers(pair.sparse), strict=True)]


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Top-1 accuracy in % (higher is better) of ``model`` in eval mode on (x (N, F), y (N,))."""
    return 100.0 * float((predict(model, x).argmax(dim=1) == y.cpu()).double().mean())


# --------------------------------------------------------------------------------------------
# The experiment
# --------------------------------------------------------------------------------------------

def _state(*keys: int) -> int:
    """A 32-bit random state derived from integer keys (the run's seed first)."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


def _data(dataset: str, n: int, params: Params, state: int) -> tuple[Tensor, Tensor]:
    return make_toy(dataset, n, noise=params.noise, random_state=state,
                    factor=params.circle_factor)


def _noisy_test(dataset: str, params: Params, seed: int, s: int) -> tuple[Tensor, Tensor]:
    code = _DATASET_CODE[dataset]
    x, y = _data(dataset, params.n_noisy_test, params, _state(seed, code, _NOISY, s))
    extra = np.random.default_rng(_state(seed, code, _NOISE, s)).normal(
        0.0, params.test_noise, size=tuple(x.shape))
    return x + torch.as_tensor(extra, dtype=torch.float32), y


def _network(dataset: str, m: int, params: Params, context: Context
             ) -> tuple[nn.Module, tuple[Tensor, Tensor], dict]:
    """Network ``m`` of ``dataset`` (trained, or loaded from the run's cache) and its training set."""
    code = _DATASET_CODE[dataset]
    train_xy = _data(dataset, params.n_train, params, _state(context.seed, code, _TRAIN, m))
    init = _state(context.seed, code, _INIT, m)

    device = torch.device(context.device)
    devices = [device.index or 0] if device.type == "cuda" else []

    def build(_info=None) -> nn.Module:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(init)
            return toy_mlp(hidden=params.hidden, third_relu=params.third_relu,
                           dropout=params.dropout)

    def compute():
        model = build().to(device)
        with torch.random.fork_rng(devices=devices):  # dropout draws from the global generator
            torch.manual_seed(init)
            result = train(model, *train_xy, epochs=params.epochs, lr=params.lr,
                           batch_size=params.batch_size, seed=init, device=device)
        context.say(f"{dataset}: trained network {m} in {result.seconds:.1f}s "
                    f"(final loss {result.final_loss:.4f})")
        return model, {"final_loss": result.final_loss}

    model, info = context.cache.model(f"{dataset}-model{m}", build, compute)
    return model.to(context.device).eval(), train_xy, info


def _seed_frame(dataset: str, s: int, model: nn.Module, train_xy: tuple[Tensor, Tensor],
                fixed: dict, params: Params, context: Context) -> pd.DataFrame:
    """Accuracies of the dense model and of each criterion's pruned copy for repetition ``s``."""
    code = _DATASET_CODE[dataset]
    sets = {"train": train_xy,
            "test": _data(dataset, params.n_test, params, _state(context.seed, code, _TEST, s)),
            "noisy_test": _noisy_test(dataset, params, context.seed, s)}
    if "weight" not in fixed:  # the weight criterion ignores the reference samples
        fixed["weight"] = prune_toy(model, train_xy, "weight", params.n_prune)
        fixed["train"] = {"dense": accuracy(model, *train_xy),
                          "weight": accuracy(fixed["weight"].sparse, *train_xy)}
    held_out = {"dense": {k: accuracy(model, *sets[k]) for k in ("test", "noisy_test")},
                "weight": {k: accuracy(fixed["weight"].sparse, *sets[k])
                           for k in ("test", "noisy_test")}}
    rows = []
    for n in params.n_per_class:
        ref = _data(dataset, 2 * n, params, _state(context.seed, code, _REFERENCE, s, n))
        for criterion in ("dense", *CRITERIA):
            if criterion == "dense":
                pair = None
            elif criterion == "weight":
                pair = fixed["weight"]
            else:
                pair = prune_toy(model, ref, criterion, params.n_prune)
            pruned = model if pair is None else pair.sparse  # the smaller network
            acc = {"reference": accuracy(pruned, *ref)}
            for split in ("train", "test", "noisy_test"):
                if criterion in ("dense", "weight"):
                    acc[split] = (fixed["train"][criterion] if split == "train"
                                  else held_out[criterion][split])
                else:
                    acc[split] = accuracy(pruned, *sets[split])
            removed = [0] * 3 if pair is None else removed_per_layer(pair)
            zeros = 0 if pair is None else pair.params["zero_score_units"]
            for split in SPLITS:
                rows.append({"dataset": dataset, "seed": s, "model": s % params.n_models,
                             "n_per_class": n, "criterion": criterion, "split": split,
                             "accuracy": acc[split], "removed_layer1": removed[0],
                             "removed_layer2": removed[1], "removed_layer3": removed[2],
                             "zero_scores": zeros})
    return pd.DataFrame(rows)


def _cached_seed_frame(dataset: str, s: int, networks: list, fixed: list[dict], params: Params,
                       context: Context) -> pd.DataFrame:
    """:func:`_seed_frame` of repetition ``s`` (network ``s % n_models``), stored in the run's cache."""
    m = s % params.n_models
    model, train_xy, _ = networks[m]
    return context.cache.frame(f"{dataset}-seed{s}", lambda: _seed_frame(
        dataset, s, model, train_xy, fixed[m], params, context))


def summarise(results: pd.DataFrame, *, seed: int = 0) -> pd.DataFrame:
    """Mean accuracy across repetitions with a 95% BCa bootstrap interval.

    Parameters
    ----------
    results : DataFrame with columns dataset, n_per_class, criterion, split,
        seed, accuracy (one row per repetition).
    seed : seeds the bootstrap resampling.

    Returns
    -------
    DataFrame with columns dataset, n_per_class, criterion, split, mean,
    low, high, n (repetitions).
    """
    rows = []
    for key, g in results.groupby(["dataset", "n_per_class", "criterion", "split"], sort=False):
        mean, low, high, n = bootstrap_ci(g["accuracy"].to_numpy(dtype=np.float64), seed=seed)
        rows.append(dict(zip(("dataset", "n_per_class", "criterion", "split"), key,
                             strict=True), mean=mean, low=low, high=high, n=n))
    return pd.DataFrame(rows)


def ordering_tests(results: pd.DataFrame, *, seed: int = 0, alpha: float = ALPHA) -> pd.DataFrame:
    """Paired tests of each step of the ordering LRP > weight > Taylor > gradient, and of LRP
    against Taylor and gradient (``COMPARISONS``).

    For each dataset, n and split, the per-repetition accuracy differences
    of LRP - weight, weight - Taylor, Taylor - gradient, LRP - Taylor and
    LRP - gradient (paired by repetition: same network, same reference and
    held-out samples): mean with a 95% BCa bootstrap interval, two-sided
    Wilcoxon signed-rank p (:func:`xprune.stats.paired_test`), Holm-adjusted
    over every test in the table. A comparison ``holds`` when the mean
    difference is positive and the adjusted p is below ``alpha``; it is
    ``reversed`` when negative and below ``alpha``; otherwise it is undecided.

    Returns
    -------
    DataFrame with columns dataset, n_per_class, split, better, worse,
    mean_diff, low, high, p, p_holm, holds, reversed.
    """
    rows = []
    wide = results.pivot_table(index=["dataset", "n_per_class", "split", "seed"],
                               columns="criterion", values="accuracy", sort=False)
    for (dataset, n, split), g in wide.groupby(level=["dataset", "n_per_class", "split"],
                                               sort=False):
        for better, worse in COMPARISONS:
            d = (g[better] - g[worse]).to_numpy(dtype=np.float64)
            mean, low, high, _ = bootstrap_ci(d, seed=seed)
            rows.append({"dataset": dataset, "n_per_class": n, "split": split,
                         "better": better, "worse": worse, "mean_diff": mean, "low": low,
                         "high": high, "p": paired_test(d)})
    out = pd.DataFrame(rows)
    out["p_holm"] = holm(out["p"].to_numpy())
    out["holds"] = (out["mean_diff"] > 0) & (out["p_holm"] < alpha)
    out["reversed"] = (out["mean_diff"] < 0) & (out["p_holm"] < alpha)
    return out


def _boundary_frame(model: nn.Module, pairs: dict[str, ModelPair | None],
                    x: Tensor, grid: int) -> pd.DataFrame:
    """Predicted class on a ``grid`` x ``grid`` lattice around ``x`` for the dense and pruned models."""
    lo, hi = x.min(dim=0).values - 0.3, x.max(dim=0).values + 0.3
    gx, gy = torch.meshgrid(torch.linspace(float(lo[0]), float(hi[0]), grid),
                            torch.linspace(float(lo[1]), float(hi[1]), grid), indexing="xy")
    points = torch.stack([gx.flatten(), gy.flatten()], dim=1)
    frames = []
    for name, pair in pairs.items():
        net = model if pair is None else pair.twin  # removed rows and biases zeroed
        frames.append(pd.DataFrame({"criterion": name, "x": points[:, 0].numpy(),
                                    "y": points[:, 1].numpy(),
                                    "predicted": predict(net, points).argmax(dim=1).numpy()}))
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------------------------
# Figures (draw only)
# --------------------------------------------------------------------------------------------

def plot_accuracy_by_criterion(results: pd.DataFrame, split: str, *,
                               paper: dict[tuple[str, int], dict[str, float]] | None = None,
                               paper_dense: dict[tuple[str, int], float] | None = None
                               ) -> plt.Figure:
    """Per-repetition accuracy per criterion (box and points), one panel per dataset and n.

    The paper's mean (if given) is a red diamond.
    """
    data = results[results["split"] == split]
    datasets = list(dict.fromkeys(data["dataset"]))
    ns = sorted(data["n_per_class"].unique())
    order = ["dense", *CRITERIA]
    fig, axes = plt.subplots(len(datasets), len(ns), figsize=(3.6 * len(ns), 3.0 * len(datasets)),
                             squeeze=False, sharey=True)
    rng = np.random.default_rng(0)  # jitter only
    for i, dataset in enumerate(datasets):
        for j, n in enumerate(ns):
            ax = axes[i][j]
            cell = data[(data["dataset"] == dataset) & (data["n_per_class"] == n)]
            values = [cell.loc[cell["criterion"] == c, "accuracy"].to_numpy() for c in order]
            marks = []
            if paper_dense is not None and (dataset, n) in paper_dense:
                marks.append((0, paper_dense[(dataset, n)]))
            if paper is not None and (dataset, n) in paper:
                marks += [(k + 1, paper[(dataset, n)][c]) for k, c in enumerate(CRITERIA)]
            plot_group_distributions(values, ["dense", *(LABELS[c] for c in CRITERIA)],
                                     reference=marks, jitter=rng, ax=ax)
            ax.set_title(f"{dataset}, n = {n} per class", fontsize=9)
            if j == 0:
                ax.set_ylabel(f"accuracy on {SPLIT_LABELS[split]} (%)", fontsize=8)
    fig.tight_layout()
    return fig


def plot_boundaries(boundaries: pd.DataFrame, samples: pd.DataFrame) -> plt.Figure:
    """Decision regions of the dense and pruned models (columns) per dataset (rows).

    ``boundaries``: columns dataset, criterion, x, y, predicted (a regular
    grid); ``samples``: columns dataset, x, y, label, kind ("train" or
    "reference").
    """
    datasets = list(dict.fromkeys(boundaries["dataset"]))
    order = ["dense", *CRITERIA]
    fig, axes = plt.subplots(len(datasets), len(order), figsize=(2.4 * len(order),
                             2.4 * len(datasets)), squeeze=False)
    for i, dataset in enumerate(datasets):
        pts = samples[samples["dataset"] == dataset]
        for j, criterion in enumerate(order):
            ax = axes[i][j]
            cell = boundaries[(boundaries["dataset"] == dataset)
                              & (boundaries["criterion"] == criterion)]
            plot_decision_regions(cell, pts, ax=ax)
            ax.set_title(f"{dataset}: {LABELS[criterion]}", fontsize=8)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------

def _fmt(mean: float, low: float, high: float, digits: int = 1) -> str:
    """The report's mean [CI] cells: ``fmt_ci`` in the reproductions' style ("—" if undefined)."""
    return fmt_ci(mean, low, high, digits, missing="—", negative_zero=True, finite=True)


def _paper_value(split: str, dataset: str, n: int, criterion: str) -> float:
    if criterion == "dense":
        return PAPER_DENSE.get(split, {}).get((dataset, n), math.nan)
    table = {"reference": PAPER_REFERENCE_ACC, "train": PAPER_TRAIN_ACC}.get(split, {})
    return table.get((dataset, n), {}).get(criterion, math.nan)


def _side_by_side(summary: pd.DataFrame) -> pd.DataFrame:
    rows = []
    idx = summary.set_index(["dataset", "n_per_class", "criterion", "split"])
    keys = summary[["dataset", "n_per_class"]].drop_duplicates().itertuples(index=False)
    for dataset, n in keys:
        for criterion in ("dense", *CRITERIA):
            def ours(split, dataset=dataset, n=n, criterion=criterion):
                r = idx.loc[(dataset, n, criterion, split)]
                return _fmt(r["mean"], r["low"], r["high"])

            def theirs(split, dataset=dataset, n=n, criterion=criterion):
                v = _paper_value(split, dataset, n, criterion)
                return "—" if math.isnan(v) else f"{v:.2f}"

            rows.append({"dataset": dataset, "n per class": str(n),
                         "criterion": LABELS[criterion],
                         "paper: reference samples": theirs("reference"),
                         "ours: reference samples": ours("reference"),
                         "paper: training set": theirs("train"),
                         "ours: training set": ours("train"),
                         "ours: held-out test": ours("test"),
                         "ours: noisy held-out test": ours("noisy_test")})
    return pd.DataFrame(rows)


def _tests_table(tests: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for r in tests.itertuples(index=False):
        verdict = "holds" if r.holds else ("reversed" if r.reversed else "undecided")
        rows.append({"dataset": r.dataset, "n per class": str(r.n_per_class),
                     "split": SPLIT_LABELS[r.split],
                     "comparison": f"{LABELS[r.better]} > {LABELS[r.worse]}",
                     "mean difference (pp) [95% CI]": _fmt(r.mean_diff, r.low, r.high, 2),
                     "Wilcoxon p": "—" if math.isnan(r.p) else f"{r.p:.2g}",
                     "Holm p": "—" if math.isnan(r.p_holm) else f"{r.p_holm:.2g}",
                     "verdict": verdict})
    return pd.DataFrame(rows)


def _cell_name(dataset: str, n: int, split: str | None = None) -> str:
    name = f"{dataset} n={n}"
    return name if split is None else f"{name} on the {SPLIT_LABELS[split]}"


def _tally(rows: pd.DataFrame, *, with_split: bool) -> str:
    """'holds in a of m, is significantly reversed in b (cells), undecided in c' for one comparison."""
    held, rev = int(rows["holds"].sum()), rows[rows["reversed"]]
    text = f"holds in {held} of {len(rows)}"
    if len(rev):
        cells = ", ".join(_cell_name(r.dataset, r.n_per_class, r.split if with_split else None)
                          for r in rev.itertuples(index=False))
        text += f", is significantly reversed in {len(rev)} ({cells})"
    return text + f", undecided in {len(rows) - held - len(rev)}"


def _correction(tests: pd.DataFrame) -> str:
    """How every count of the findings is decided."""
    m = int(np.isfinite(tests["p"].to_numpy(dtype=np.float64)).sum())
    return (f"paired two-sided Wilcoxon tests across repetitions, p < {ALPHA} after Holm's "
            f"correction over all {m} comparisons of this report")


def _nothing_decided(tests: pd.DataFrame, n_seeds: int) -> str:
    """A sentence when no comparison is significant either way (else empty)."""
    if bool((tests["holds"] | tests["reversed"]).any()):
        return ""
    p = tests["p_holm"].to_numpy(dtype=np.float64)
    smallest = f" (smallest: {float(np.nanmin(p)):.2g})" if np.isfinite(p).any() else ""
    return (f"With {n_seeds} repetitions no comparison reaches an adjusted p below "
            f"{ALPHA}{smallest}.")


def _paper_lrp_best() -> tuple[bool, list[int]]:
    """Whether LRP has the highest accuracy in every cell of the paper's tables, and their n."""
    tables = (PAPER_REFERENCE_ACC, PAPER_TRAIN_ACC)
    best = all(max(v, key=v.get) == "lrp" for t in tables for v in t.values())
    return best, sorted({n for t in tables for _, n in t})


def _lrp_best_sentence(params: Params, tests: pd.DataFrame) -> str:
    """Is LRP significantly above each other criterion, cell by cell (dataset, n, split)?"""
    lrp = tests[tests["better"] == "lrp"]
    best, below, open_ = 0, [], []
    for (dataset, n, split), g in lrp.groupby(["dataset", "n_per_class", "split"], sort=False):
        if len(g) == len(CRITERIA) - 1 and bool(g["holds"].all()):
            best += 1
        elif g["reversed"].any():
            others = " and ".join(LABELS[w] for w in g.loc[g["reversed"], "worse"])
            below.append(f"{_cell_name(dataset, n, split)} (below {others})")
        else:
            open_.append(_cell_name(dataset, n, split))
    m = lrp.groupby(["dataset", "n_per_class", "split"], sort=False).ngroups
    undecided = len(open_)
    named = f" ({', '.join(open_)})" if 0 < undecided <= 4 else ""
    paper_best, paper_n = _paper_lrp_best()
    paper = (f"as in every cell of the paper's table for n = {' and '.join(map(str, paper_n))} "
             f"per class" if paper_best else "as the paper reports")
    how = _correction(tests)
    if best == m:
        return (f"LRP keeps the accuracy best, {paper}: its accuracy is significantly above that "
                f"of each of weight, Taylor and gradient in all {m} (dataset, n, split) cells "
                f"({how}).")
    if below:
        return (f"The paper's finding that LRP keeps the accuracy best does not hold here in "
                f"{len(below)} of {m} (dataset, n, split) cells, where LRP's accuracy is "
                f"significantly below another criterion's: {'; '.join(below)}. LRP is "
                f"significantly above each of weight, Taylor and gradient in {best} cells and "
                f"undecided in {undecided}{named} ({how}).")
    if best:
        return (f"LRP keeps the accuracy best, {paper}, in {best} of {m} (dataset, n, split) "
                f"cells here: there its accuracy is significantly above that of each of weight, "
                f"Taylor and gradient. In the other {undecided}{named} at least one comparison "
                f"is undecided, and in no cell is LRP significantly below another criterion "
                f"({how}).")
    return (f"Whether LRP keeps the accuracy best, {paper}, is undecided here: its accuracy is "
            f"significantly above that of each of weight, Taylor and gradient in {best} of {m} "
            f"(dataset, n, split) cells and significantly below another criterion's in none; in "
            f"the other {undecided} at least one comparison is undecided ({how}).")


def _dense_gap_sentence(results: pd.DataFrame, summary: pd.DataFrame, seed: int) -> str:
    """LRP's largest mean shortfall from the unpruned network, with its paired interval."""
    wide = results[results["criterion"].isin(["lrp", "dense"])].pivot_table(
        index=["dataset", "n_per_class", "split", "seed"], columns="criterion",
        values="accuracy", sort=False)
    diff = wide["lrp"] - wide["dense"]
    by_cell = diff.groupby(level=["dataset", "n_per_class", "split"], sort=False).mean()
    if by_cell.empty or not bool(np.isfinite(by_cell).any()):
        return ""
    if float(by_cell.min()) >= 0:
        return ("LRP's mean accuracy is at or above the unpruned network's in every cell.")
    dataset, n, split = by_cell.idxmin()
    mean, low, high, _ = bootstrap_ci(diff.loc[(dataset, n, split)].to_numpy(dtype=np.float64),
                                      seed=seed)
    means = summary.set_index(["dataset", "n_per_class", "split", "criterion"])["mean"]
    return (f"LRP's largest mean shortfall from the unpruned network is for "
            f"{_cell_name(dataset, n, split)}: {means[(dataset, n, split, 'lrp')]:.1f}% against "
            f"{means[(dataset, n, split, 'dense')]:.1f}% (paired difference {mean:.2f} points, "
            f"95% CI [{low:.2f}, {high:.2f}]); in every other cell it is no larger.")


def _span(values, spec: str) -> str:
    """'a to b points across cells', or 'a points in every cell' when all values print the same."""
    lo, hi = format(min(values), spec), format(max(values), spec)
    return f"{lo} points in every cell" if lo == hi else f"{lo} to {hi} points across cells"


def _ordering_sentence(params: Params, tests: pd.DataFrame) -> str:
    """The paper's full ordering, and its two later steps, over all cells."""
    steps = tests[tests.apply(lambda r: (r["better"], r["worse"]) in STEPS, axis=1)]
    cells = steps.groupby(["dataset", "n_per_class", "split"], sort=False)["holds"].all()
    wt = steps[steps["better"] == "weight"]
    tg = steps[steps["better"] == "taylor"]
    text = (f"The paper's full ordering LRP > weight > Taylor > gradient (every step "
            f"significant, same tests and correction) holds in {int(cells.sum())} of "
            f"{len(cells)} cells; weight > Taylor {_tally(wt, with_split=True)}; Taylor > "
            f"gradient {_tally(tg, with_split=True)}")
    if len(tg):
        text += f"; the mean Taylor - gradient difference is {_span(tg['mean_diff'], '+.1f')}"
    paper_gaps = {(d, n): v["taylor"] - v["gradient"] for (d, n), v in PAPER_REFERENCE_ACC.items()
                  if d in params.datasets and n in params.n_per_class}
    if paper_gaps:
        ns = " and ".join(map(str, sorted({n for _, n in paper_gaps})))
        text += (f", where the paper's table of accuracies on the reference samples (n = {ns}) "
                 f"has Taylor ahead of gradient by {_span(paper_gaps.values(), '.1f')}")
    return text + "."


def _ordering_findings(params: Params, tests: pd.DataFrame) -> list[str]:
    out = []
    for split in SPLITS:
        t = tests[tests["split"] == split]
        if t.empty:
            continue
        cells = t.groupby(["dataset", "n_per_class"], sort=False)
        full = [_cell_name(d, n) for (d, n), g in cells
                if all(bool(g.loc[(g["better"] == b) & (g["worse"] == w), "holds"].all())
                       for b, w in STEPS)]
        steps = [f"{LABELS[b]} > {LABELS[w]} "
                 f"{_tally(t[(t['better'] == b) & (t['worse'] == w)], with_split=False)}"
                 for b, w in STEPS]
        verdict = (f"holds in {len(full)} of {cells.ngroups} (dataset, n) cells"
                   + (f" ({', '.join(full)})" if full else ""))
        text = (f"On the {SPLIT_LABELS[split]}, the full ordering LRP > weight > Taylor > "
                f"gradient (every step significant: paired Wilcoxon, Holm-adjusted p < {ALPHA} "
                f"over all {len(tests)} comparisons) {verdict}; step by step: {'; '.join(steps)}.")
        if split == "train":
            text += " " + _train_caveat(params)
        out.append(text)
    return out


def _train_caveat(params: Params) -> str:
    if params.n_models == 1:
        return ("Caveat: these training-set verdicts rest on one trained network per dataset "
                "and its one training set. The repetitions vary only the reference samples, so "
                "the weight criterion (which ignores them) gives the same training accuracy in "
                "every repetition: each comparison with weight tests the other criterion's "
                "spread against a constant, and none says anything about training variance.")
    return (f"Caveat: these training-set verdicts rest on {params.n_models} trained networks per "
            f"dataset, each with its own training set; the weight criterion (which ignores the "
            f"reference samples) gives one training accuracy per network, repeated across that "
            f"network's repetitions.")


def _dense_gap_to_paper(params: Params, summary: pd.DataFrame) -> str:
    """How far our unpruned networks' mean accuracy is from the paper's, per split it lists.

    Computed from the values as the side-by-side table shows them (ours to one
    decimal, the paper's to two), so the stated gap is their difference.
    """
    means = summary[summary["criterion"] == "dense"].set_index(
        ["dataset", "n_per_class", "split"])["mean"]
    parts = []
    for split in ("reference", "train"):
        gaps = []
        for (dataset, n), paper in PAPER_DENSE[split].items():
            if (dataset, n, split) in means.index and math.isfinite(means[(dataset, n, split)]):
                ours = round(float(means[(dataset, n, split)]), 1)
                gaps.append((round(paper - ours, 2), dataset, n, ours, paper))
        if not gaps:
            continue
        gap, dataset, n, ours, paper = max(gaps)
        where = dataset if split == "train" else f"{dataset}, n = {n}"
        if gap > 0:
            parts.append(f"up to {gap:.2f} points less accurate on the {SPLIT_LABELS[split]} "
                         f"({where}: ours {ours:.1f}% against the paper's {paper:.2f}%)")
        else:
            parts.append(f"as accurate as the paper's or more on the {SPLIT_LABELS[split]} in "
                         f"every (dataset, n) cell")
    if not parts:
        return ("The paper's table lists no unpruned accuracy for these datasets and n, so our "
                "unpruned networks are not compared with theirs.")
    return (f"After {params.epochs} Adam epochs against the authors' 10,000 full-batch SGD "
            f"epochs, our unpruned networks are {' and '.join(parts)}.")


def _train_size_sentence(params: Params) -> str:
    used = (f"This run uses {params.n_train:,}, as inferred." if params.n_train == 2000 else
            f"This run uses {params.n_train:,} training samples instead, not the inferred 2,000.")
    return ("Training-set size: the authors' training sets are kept in their repository as NumPy "
            "data files, which we did not use; their size is inferred as 2,000 samples, because "
            "the training accuracy of 94.95% that their repository lists for a multi-class toy "
            "set is a whole number of correct samples only when the set size is a multiple of "
            "2,000, and a commented-out line of their code draws make_moons with 2,000 samples. "
            + used)


def _headline(params: Params, results: pd.DataFrame, summary: pd.DataFrame,
              tests: pd.DataFrame, *, seed: int = 0) -> str:
    """The answer first, computed from the results: is LRP best, how far from the unpruned
    network, and does the paper's whole ordering hold?"""
    parts = [_lrp_best_sentence(params, tests), _nothing_decided(tests, params.n_seeds),
             _dense_gap_sentence(results, summary, seed), _ordering_sentence(params, tests)]
    if params.n_models == 1 and "train" in set(tests["split"]):
        parts.append("In the training-set cells the weight-pruned network's accuracy is the "
                     "same in every repetition (one trained network per dataset and one training "
                     "set; see the caveat below).")
    return " ".join(p for p in parts if p)


@register("yeom2021_toy", title=TITLE, citation=CITATION, params=Params)
def run(params: Params, context: Context) -> ReproductionReport:
    """Train the toy networks, prune them by each criterion, and compare with the paper."""
    frames, boundary_frames, sample_frames, infos = [], [], [], []
    for dataset in params.datasets:
        networks = [_network(dataset, m, params, context) for m in range(params.n_models)]
        for m, (_, _, info) in enumerate(networks):
            infos.append({"dataset": dataset, "network": m,
                          "final training loss": f"{info.get('final_loss', math.nan):.4g}"})
        fixed: list[dict] = [{} for _ in networks]  # per network: the weight-pruned copy
        for s in range(params.n_seeds):
            frames.append(_cached_seed_frame(dataset, s, networks, fixed, params, context))
        context.say(f"{dataset}: {params.n_seeds} repetitions done")
        if params.boundary_grid:
            model, train_xy, _ = networks[0]
            n = params.n_per_class[0]
            ref = _data(dataset, 2 * n, params,
                        _state(context.seed, _DATASET_CODE[dataset], _REFERENCE, 0, n))
            pairs: dict[str, ModelPair | None] = {"dense": None}
            for criterion in CRITERIA:
                pairs[criterion] = prune_toy(model, ref, criterion, params.n_prune)
            b = _boundary_frame(model, pairs, train_xy[0], params.boundary_grid)
            boundary_frames.append(b.assign(dataset=dataset))
            for kind, (x, y) in (("train", train_xy), ("reference", ref)):
                sample_frames.append(pd.DataFrame({"dataset": dataset, "kind": kind,
                                                   "x": x[:, 0].numpy(), "y": x[:, 1].numpy(),
                                                   "label": y.numpy()}))
    results = pd.concat(frames, ignore_index=True)
    summary = summarise(results, seed=context.seed)
    tests = ordering_tests(results[results["criterion"] != "dense"], seed=context.seed)
    return _report(params, results, summary, tests, pd.DataFrame(infos), boundary_frames,
                   sample_frames, seed=context.seed)


def _report(params: Params, results: pd.DataFrame, summary: pd.DataFrame, tests: pd.DataFrame,
            infos: pd.DataFrame, boundary_frames: list[pd.DataFrame],
            sample_frames: list[pd.DataFrame], *, seed: int = 0) -> ReproductionReport:
    idx = summary.set_index(["dataset", "n_per_class", "criterion", "split"])

    def ours(dataset, n, criterion, split):
        r = idx.loc[(dataset, n, criterion, split)]
        return _fmt(r["mean"], r["low"], r["high"])

    findings = [_headline(params, results, summary, tests, seed=seed)]
    for dataset in params.datasets:
        for n in params.n_per_class:
            accs = ", ".join(f"{LABELS[c]} {ours(dataset, n, c, 'reference')}" for c in CRITERIA)
            paper = PAPER_REFERENCE_ACC.get((dataset, n))
            theirs = (f" (paper: {' / '.join(f'{paper[c]:.1f}' for c in CRITERIA)})"
                      if paper else "")
            noisy = ", ".join(f"{LABELS[c]} {ours(dataset, n, c, 'noisy_test')}"
                              for c in CRITERIA)
            findings.append(
                f"{dataset}, n = {n} reference samples per class, accuracy (%) after removing "
                f"{params.n_prune} of {3 * params.hidden} hidden units, mean [95% CI] over "
                f"{params.n_seeds} repetitions: on the reference samples {accs}{theirs}; on the "
                f"noisy held-out test {noisy} (dense: "
                f"{ours(dataset, n, 'dense', 'noisy_test')}).")
    findings += _ordering_findings(params, tests)
    if params.n_models == 1:
        findings.append("All repetitions of a dataset prune the same trained network (as the "
                        "authors did): the intervals cover the choice of reference and held-out "
                        "samples, not training variance.")

    setup = [
        f"Data: scikit-learn make_moons and make_circles (factor {params.circle_factor}), noise "
        f"{params.noise}, as in the authors' code; {params.n_train} training samples per dataset.",
        f"Network: 2 -> {params.hidden} -> {params.hidden} -> {params.hidden} -> 2 with ReLU and "
        f"dropout {params.dropout} after the first hidden layer, ReLU after the second, "
        + ("and, unlike the authors' network, a ReLU after the third."
           if params.third_relu else
           "and no ReLU after the third: the authors' ReLU there shares the name 'nonlin2' with "
           "the second one in an OrderedDict, so it is never part of their network."),
        f"Reference samples: for each repetition and each n in {params.n_per_class}, a fresh "
        f"make_moons/make_circles draw of 2n samples with the repetition's seed (n per class, "
        f"evenly spaced along each curve plus noise), as the authors generate them; they are "
        f"not taken from the training set.",
        "Criteria as in the authors' code, on the layer outputs before the ReLU and with the "
        "model in eval mode: LRP relevance summed over the reference samples, propagated from "
        "the true class's logit with the z+ rule (positive weights, no bias) on every linear "
        "layer; L1 norm of each unit's incoming weights; Taylor |mean(a * dL/da)|; gradient "
        "|mean(dL/da)|, L = mean cross-entropy. Per-layer normalisation as theirs: LRP and "
        "weight divided by the layer sum, Taylor and gradient by the layer's L2 norm; then the "
        f"{params.n_prune} lowest-ranked units over all three layers are removed (a global "
        "ranking), without fine-tuning.",
        "LRP via Captum (LayerLRP, Alpha1_Beta0_Rule with set_bias_to_zero=True on every linear "
        "layer), which is the authors' z+ rule up to the stabiliser (1e-9 * sign(z) against "
        "their 1e-9); tested against a literal implementation.",
        "Removal as in the authors' code: a new, smaller network without the removed units' "
        "weight rows and biases and the next layer's matching columns (xprune.prune with "
        "method 'structured', which removes them with Torch-Pruning). It computes the same "
        "outputs as the dense architecture with those rows and biases set to zero (the pair's "
        "masked twin, tested; the twins draw the decision regions); the dense network is never "
        "changed.",
        f"Accuracy is reported on the reference samples (the paper's 'test acc' rows of "
        f"output/tablestats.txt are computed on them), on the training set (their 'train acc' "
        f"rows), on a held-out set of {params.n_test} samples with the training noise, and on a "
        f"held-out set of {params.n_noisy_test} samples with extra Gaussian noise of standard "
        f"deviation {params.test_noise} (the noisy test set of their README figure, which has "
        "500 samples). Held-out sets are drawn afresh for each repetition.",
        f"{params.n_seeds} repetitions per dataset (the authors: 50), "
        f"{params.n_models} trained network(s) per dataset (the authors: 1); 95% intervals are "
        f"BCa bootstrap intervals over repetitions; each step of the ordering, and LRP against "
        f"Taylor and against gradient, is a paired two-sided Wilcoxon test across repetitions, "
        f"Holm-adjusted over all {len(tests)} comparisons; a comparison with adjusted p >= "
        f"{ALPHA} is reported as undecided.",
    ]
    differences = [
        f"Training: Adam, learning rate {params.lr}, batch {params.batch_size}, {params.epochs} "
        f"epochs (xprune.models.train); the authors' code trains with full-batch SGD (learning "
        f"rate 0.001, momentum 0.9) for 10,000 epochs, too slow for a CPU run of a few minutes, "
        f"and their trained weights are not used. {_dense_gap_to_paper(params, summary)}",
        _train_size_sentence(params),
        "The paper's accuracies on the noisy test set are in a figure only (no table), so the "
        "noisy and clean held-out columns have no published number beside them.",
        f"{params.n_seeds} repetitions per dataset instead of their 50, to shorten the run.",
        "Their code is run once per (criterion, n, seed) with the reference samples seeded by "
        "the seed alone; ours derives every random state from the run's seed, so the draws "
        "differ from theirs (same distributions).",
    ]

    side = _side_by_side(summary)
    layer_rows = []
    removed = results[(results["split"] == "reference") & (results["criterion"] != "dense")]
    for (dataset, n, criterion), g in removed.groupby(["dataset", "n_per_class", "criterion"],
                                                      sort=False):
        layer_rows.append({"dataset": dataset, "n per class": str(n),
                           "criterion": LABELS[criterion],
                           **{f"mean removed from layer {k}":
                              f"{g[f'removed_layer{k}'].mean():.1f}" for k in (1, 2, 3)},
                           "mean units scored exactly 0": f"{g['zero_scores'].mean():.1f}"})
    sections = [
        Section("Side by side: accuracy after pruning, paper and ours",
                [f"Accuracy (%) after removing {params.n_prune} of the {3 * params.hidden} hidden "
                 f"units, mean [95% BCa bootstrap interval] over {params.n_seeds} repetitions. "
                 "Paper: seulkiyeom/LRP_Pruning_toy_example, output/tablestats.txt, rows 'test "
                 "acc' (computed on the reference samples) and 'train acc'; the dense rows are "
                 "their 'stage=pre' rows."],
                tables=[("Accuracy (%) per criterion, paper beside ours", side)]),
        Section("Does the ordering LRP > weight > Taylor > gradient hold?",
                [f"Paired differences across repetitions (same network, same samples), in "
                 f"percentage points, for each step of the ordering and for LRP against Taylor "
                 f"and against gradient. Verdict: 'holds' (or 'reversed') when the mean "
                 f"difference is positive (negative) and the Holm-adjusted p is below {ALPHA}, "
                 f"'undecided' otherwise. In the paper's own table the ordering holds on the "
                 "reference samples for both datasets and both n; on the training set its Taylor "
                 "falls below gradient for moons with n = 5 (84.76 against 86.17)."],
                tables=[("Paired comparisons, Wilcoxon with Holm's correction",
                         _tests_table(tests))]),
        Section("Where the criteria remove units",
                [f"Means over the {params.n_seeds} repetitions, to one decimal, of the number of "
                 f"removed units taken from each hidden layer and of the units whose score is "
                 f"exactly 0. Every repetition removes exactly {params.n_prune} units, so the "
                 f"three layer means of a row add up to {params.n_prune} up to rounding, while "
                 f"each mean need not be a whole number. A unit whose ReLU is off on "
                 "every reference sample gets a gradient, Taylor and LRP score of exactly 0; ties "
                 "are broken by layer, then unit index, as by the authors' heapq.nsmallest, so "
                 f"when more than {params.n_prune} units score 0 the lowest layers lose them "
                 "first, and Taylor and gradient can remove the very same units."],
                tables=[("Removed units per layer", pd.DataFrame(layer_rows)),
                        ("Trained networks", infos)]),
        Section("Figures",
                ["Per-repetition accuracies per criterion; red diamonds: the paper's means."],
                figures=[(f"Accuracy on the {SPLIT_LABELS[split]} per criterion",
                          plot_accuracy_by_criterion(
                              results, split,
                              paper={"reference": PAPER_REFERENCE_ACC,
                                     "train": PAPER_TRAIN_ACC}.get(split),
                              paper_dense=PAPER_DENSE.get(split)))
                         for split in SPLITS]),
    ]
    if boundary_frames:
        n = params.n_per_class[0]
        sections[-1].figures.append(
            (f"Decision regions of network 0 before and after pruning, repetition 0, n = {n} "
             f"per class (large dots: the reference samples; small: the training set)",
             plot_boundaries(pd.concat(boundary_frames, ignore_index=True),
                             pd.concat(sample_frames, ignore_index=True))))
    return ReproductionReport(
        title=TITLE, citation=CITATION, findings=findings, setup=setup, differences=differences,
        sections=sections, data={"results": results, "summary": summary,
                                 "ordering_tests": tests})
