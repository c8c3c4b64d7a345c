"""Figures of a report. Each takes DataFrames from the run folder and draws; none computes metrics.

Plot functions take ``ax=None`` and return the ``Axes`` (or the ``Figure`` for grids).
"""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

__all__ = [
    "figure_png",
    "plot_accuracy_and_agreement",
    "plot_accuracy_vs_compression",
    "plot_agreement_distribution",
    "plot_architectures_vs_sparsity",
    "plot_attribution_grid",
    "plot_decision_regions",
    "plot_deletion_curves",
    "plot_feature_importance",
    "plot_key_figure",
    "plot_group_distributions",
    "plot_layer_sparsity",
    "plot_metric_vs_sparsity",
    "plot_randomisation_curves",
    "plot_score_distributions",
    "plot_token_heatmap",
    "token_colour",
    "plot_spectrogram_grid",
    "plot_spectrogram_maps",
]

METHOD_COLOURS = {"saliency": "tab:blue", "integrated_gradients": "tab:orange"}


def _colour(name: str, i: int) -> str:
    return METHOD_COLOURS.get(name, f"C{i + 2}")


def figure_png(fig: plt.Figure) -> bytes:
    """The figure as PNG bytes (the figure is closed)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _image(frame: pd.DataFrame) -> np.ndarray:
    shape = (int(frame["row"].max()) + 1, int(frame["col"].max()) + 1)
    img = np.zeros(shape)
    img[frame["row"].to_numpy(), frame["col"].to_numpy()] = frame["value"].to_numpy()
    return img


def plot_attribution_grid(examples: pd.DataFrame, attribution: str, models: list[str],
                          *, title: str | None = None) -> plt.Figure:
    """Maps of the same inputs (rows) for each model (columns), one colour scale per row.

    Signed maps use a diverging colormap centred on 0; non-negative maps
    (e.g. |gradient|) a sequential one from 0.
    """
    maps = examples[examples["attribution"] == attribution]
    inputs = examples[examples["model"] == "input"]
    samples = sorted(maps["sample"].unique())
    cols = ["input"] + [m for m in models if m in set(maps["model"])]
    fig, axes = plt.subplots(len(samples), len(cols), squeeze=False,
                             figsize=(1.25 * len(cols) + 0.6, 1.25 * len(samples)))
    signed = bool((maps["value"] < 0).any())
    for r, sample in enumerate(samples):
        row_maps = maps[maps["sample"] == sample]
        vmax = float(row_maps["value"].abs().max()) or 1.0
        for c, model in enumerate(cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if model == "input":
                ax.imshow(_image(inputs[inputs["sample"] == sample]), cmap="gray_r")
            else:
                img = _image(row_maps[row_maps["model"] == model])
                im = ax.imshow(img, cmap="RdBu_r" if signed else "magma",
                               vmin=-vmax if signed else 0.0, vmax=vmax)
            if r == 0:
                ax.set_title(model.replace("control:", "").replace("@", "\n@"), fontsize=6)
        fig.colorbar(im, ax=axes[r, :].tolist(), fraction=0.02, pad=0.01).ax.tick_params(labelsize=6)
    fig.suptitle(title or attribution.replace("_", " "), fontsize=10)
    return fig


def plot_metric_vs_sparsity(summary: pd.DataFrame, metric: str, *, attribution: str | None = None,
                            ax=None):
    """Mean metric vs requested sparsity with 95% CI bands.

    One line per attribution method, or, given ``attribution``, one line per
    pruning variant (for comparing methods at matched sparsity). Dense is drawn
    at sparsity 0 on every line; controls as dotted horizontal lines.
    """
    ax = ax or plt.subplots(figsize=(4.2, 3.0))[1]
    data = summary[summary["metric"] == metric]
    if attribution is not None:
        data = data[data["attribution"] == attribution]
        dense = data[data["role"] == "dense"]
        sparse = data[data["role"] == "sparse"]
        lines = [(variant, pd.concat([dense, group]))
                 for variant, group in sparse.groupby("pruning", sort=False)]
        controls = data[data["role"] == "control"]
    else:
        lines = [(method, group[group["role"].isin(["dense", "sparse"])])
                 for method, group in data.groupby("attribution", sort=False)]
        controls = data[data["role"] == "control"]
    for i, (name, group) in enumerate(lines):
        colour = _colour(name, i)
        curve = group.sort_values("sparsity")
        ax.plot(curve["sparsity"], curve["mean"], marker="os^vDP*"[i % 7], ms=3, color=colour,
                linestyle=["-", "--", "-.", ":"][i % 4], label=name.replace("_", " "))
        ax.fill_between(curve["sparsity"], curve["ci_low"], curve["ci_high"], color=colour,
                        alpha=0.2, linewidth=0)
    for j, (_, ctrl) in enumerate(controls.iterrows()):
        colour = "grey" if attribution is not None else _colour(
            ctrl["attribution"], [n for n, _ in lines].index(ctrl["attribution"])
            if ctrl["attribution"] in [n for n, _ in lines] else 0)
        ax.axhline(ctrl["mean"], color=colour, linestyle=[":", "--"][j % 2], linewidth=1,
                   label=f"{ctrl['attribution'].replace('_', ' ')}: {ctrl['model']}"
                   if attribution is None else ctrl["model"])
    ax.set_xlabel("sparsity (fraction of weights removed)")
    ax.set_ylabel(metric.replace("_", " "))
    title = metric.replace("_", " ")
    ax.set_title(title if attribution is None else f"{title}, {attribution.replace('_', ' ')}",
                 fontsize=10)
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)
    return ax


def plot_deletion_curves(curves: pd.DataFrame, attribution: str, models: list[str], *,
                         kind: str = "deletion", ax=None):
    """Mean deletion (or insertion) curve, target probability vs fraction of features removed
    (inserted), per model, with 95% CI bands."""
    ax = ax or plt.subplots(figsize=(4.2, 3.0))[1]
    data = curves[curves["attribution"] == attribution]
    if "curve" in data:  # run folders before insertion curves were stored hold deletion only
        data = data[data["curve"] == kind]
    cmap = plt.get_cmap("viridis")
    for i, model in enumerate(models):
        c = data[data["model"] == model].sort_values("fraction")
        if c.empty:
            continue
        colour = "black" if model == "dense" else cmap(i / max(1, len(models) - 1))
        ax.plot(c["fraction"], c["mean"], color=colour, linewidth=1.2, label=model)
        ax.fill_between(c["fraction"], c["ci_low"], c["ci_high"], color=colour, alpha=0.12,
                        linewidth=0)
    ax.set_xlabel(f"fraction of features {'removed' if kind == 'deletion' else 'inserted'}")
    ax.set_ylabel("target probability")
    ax.set_title(f"{kind} curves, {attribution.replace('_', ' ')}", fontsize=10)
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)
    return ax


def plot_agreement_distribution(results: pd.DataFrame, attribution: str, models: list[str],
                                *, metric: str = "spearman", ax=None):
    """Per-sample agreement with the dense maps, one box per model."""
    ax = ax or plt.subplots(figsize=(4.2, 3.0))[1]
    data = results[(results["attribution"] == attribution) & (results["metric"] == metric)]
    present = [m for m in models if m in set(data["model"])]
    values = [data.loc[data["model"] == m, "value"].dropna().to_numpy() for m in present]
    ax.boxplot(values, showfliers=True, flierprops={"markersize": 2})
    ax.set_xticks(range(1, len(present) + 1),
                  [m.replace("l1_unstructured@", "").replace("control:", "") for m in present],
                  rotation=30, fontsize=7)
    ax.set_ylabel(f"{metric.replace('_', ' ')} vs dense")
    ax.set_title(f"per-sample agreement, {attribution.replace('_', ' ')}", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    return ax


def plot_feature_importance(importance: pd.DataFrame, attribution: str, models: list[str], *,
                            top: int = 15, ax=None):
    """Mean |attribution| of the dense model's ``top`` features, one bar per model, 95% CIs."""
    data = importance[importance["attribution"] == attribution]
    dense = data[data["model"] == "dense"].sort_values("mean_abs", ascending=False)
    features = list(dense["feature"][:top])[::-1]
    present = [m for m in models if m in set(data["model"])]
    ax = ax or plt.subplots(figsize=(5.5, 0.32 * len(features) + 1.2))[1]
    height = 0.8 / max(1, len(present))
    cmap = plt.get_cmap("viridis")
    for i, model in enumerate(present):
        rows = data[data["model"] == model].set_index("feature").reindex(features)
        y = np.arange(len(features)) + (i - (len(present) - 1) / 2) * height
        colour = "black" if model == "dense" else cmap(i / max(1, len(present) - 1))
        err = np.vstack([rows["mean_abs"] - rows["ci_low"], rows["ci_high"] - rows["mean_abs"]])
        ax.barh(y, rows["mean_abs"], height=height, color=colour, label=model,
                xerr=np.nan_to_num(err), error_kw={"linewidth": 0.5})
    ax.set_yticks(np.arange(len(features)), features, fontsize=7)
    ax.set_xlabel("mean |attribution|")
    ax.set_title(f"feature importance, {attribution.replace('_', ' ')}", fontsize=10)
    ax.legend(fontsize=6)
    return ax


def plot_score_distributions(scores: pd.DataFrame, *, title: str = "", ax=None):
    """Per-sample scores of a long (metric, sample, value) table: one box per metric."""
    metrics = list(dict.fromkeys(scores["metric"]))
    ax = ax or plt.subplots(figsize=(max(4.0, 0.55 * len(metrics) + 1.5), 3.2))[1]
    values = [scores.loc[scores["metric"] == m, "value"].dropna().to_numpy() for m in metrics]
    ax.boxplot(values, showfliers=True, flierprops={"markersize": 2})
    ax.set_xticks(range(1, len(metrics) + 1), metrics, rotation=40, ha="right", fontsize=7)
    ax.set_ylabel("per-sample score")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.figure.tight_layout()
    return ax


def plot_randomisation_curves(summary: pd.DataFrame, attribution: str, models: list[str], *,
                              metric: str = "model_parameter_randomisation", ax=None):
    """Cascading randomisation (Adebayo et al. 2018): similarity to the original map as
    layers are re-initialised from the output down, one line per model, 95% CI bands.

    Reads the summary rows ``<metric>@<k>:<layer>``; the original model (k = 0) is 1.
    """
    ax = ax or plt.subplots(figsize=(4.6, 3.0))[1]
    data = summary[(summary["attribution"] == attribution)
                   & summary["metric"].str.startswith(f"{metric}@")]
    data = data.assign(k=data["metric"].str.split("@").str[1].str.split(":").str[0].astype(int),
                       layer=data["metric"].str.split(":").str[1])
    present = [m for m in models if m in set(data["model"])]
    labels = []
    for i, model in enumerate(present):
        curve = data[data["model"] == model].sort_values("k")
        labels = ["original"] + [f"+{layer}" for layer in curve["layer"]]
        x = np.arange(len(curve) + 1)
        ax.plot(x, np.r_[1.0, curve["mean"]], marker="os^vDP*"[i % 7], ms=3,
                linestyle=["-", "--", "-.", ":"][i % 4], color=f"C{i}",
                label=model.replace("l1_unstructured@", "l1 "))
        ax.fill_between(x[1:], curve["ci_low"], curve["ci_high"], color=f"C{i}", alpha=0.15,
                        linewidth=0)
    ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize=7)
    ax.set_ylabel("similarity to the original map")
    ax.set_title(f"cascading randomisation, {attribution.replace('_', ' ')}", fontsize=10)
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)
    return ax


def plot_accuracy_vs_compression(models: pd.DataFrame, *, ax=None):
    """Test accuracy (95% Wilson CI) against compression ratio, one line per pruning method;
    the dense model at 1x and the controls as grey markers."""
    ax = ax or plt.subplots(figsize=(4.2, 3.0))[1]
    dense = models[models["role"] == "dense"]
    for i, (variant, group) in enumerate(models[models["role"] == "sparse"].groupby(
            "pruning", sort=False)):
        curve = pd.concat([dense, group]).sort_values("compression_ratio")
        ax.errorbar(curve["compression_ratio"], 100 * curve["accuracy"],
                    yerr=[100 * (curve["accuracy"] - curve["accuracy_ci_low"]),
                          100 * (curve["accuracy_ci_high"] - curve["accuracy"])],
                    marker="os^vDP*"[i % 7], ms=3, capsize=2, color=f"C{i}",
                    linestyle=["-", "--", "-.", ":"][i % 4], label=variant)
    for _, ctrl in models[models["role"] == "control"].iterrows():
        ax.plot(ctrl["compression_ratio"], 100 * ctrl["accuracy"], "x", color="grey", ms=5)
    ax.set_xscale("log")
    ax.set_xlabel("compression ratio (dense / nonzero weights)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("accuracy vs compression (x: controls)", fontsize=10)
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3, which="both")
    return ax


def plot_layer_sparsity(layers: pd.DataFrame, models: list[str], *, ax=None):
    """Per-layer sparsity of the weights, one bar per model in ``models`` and layer."""
    weights = layers[layers["parameter"].astype(str).str.endswith("weight")]
    names = list(dict.fromkeys(weights["layer"]))
    present = [m for m in models if m in set(weights["model"])]
    ax = ax or plt.subplots(figsize=(max(4.2, 0.9 * len(names) + 1.5), 3.0))[1]
    width = 0.8 / max(1, len(present))
    for i, model in enumerate(present):
        row = weights[weights["model"] == model].set_index("layer").reindex(names)
        ax.bar(np.arange(len(names)) + (i - (len(present) - 1) / 2) * width, row["sparsity"],
               width, color=f"C{i}", label=model.replace("l1_unstructured@", "l1 "))
    ax.set_xticks(range(len(names)), names, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("sparsity of the layer's weights")
    ax.set_title("per-layer sparsity", fontsize=10)
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3, axis="y")
    return ax


def plot_group_distributions(values: list[np.ndarray], labels: list[str], *,
                             reference: list[tuple[int, float]] | None = None,
                             reference_label: str = "paper (mean)",
                             jitter: np.random.Generator | None = None, ax=None):
    """One box (no fliers) and the jittered points per group, with optional reference marks.

    ``values[k]``: the group's values, drawn at x = k with label ``labels[k]``;
    ``reference``: (x, value) pairs drawn as red diamonds (e.g. a paper's
    means), with a legend. ``jitter`` spreads the points horizontally (a
    seeded generator, shared across panels for a reproducible figure).
    """
    ax = ax or plt.subplots(figsize=(3.6, 3.0))[1]
    jitter = jitter or np.random.default_rng(0)
    ax.boxplot(values, positions=range(len(values)), widths=0.55, showfliers=False)
    for k, v in enumerate(values):
        ax.scatter(k + jitter.uniform(-0.18, 0.18, v.size), v, s=7, alpha=0.45, color=f"C{k}")
    if reference:
        ax.scatter(*zip(*reference, strict=True), marker="D", s=36, color="red", zorder=5,
                   label=reference_label)
        ax.legend(loc="lower left", fontsize=7)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    return ax


def plot_decision_regions(grid: pd.DataFrame, samples: pd.DataFrame | None = None, *, ax=None):
    """Predicted class of a two-class model over a regular 2-D grid, with the data on top.

    ``grid``: columns x, y, predicted (0 or 1) on a regular lattice;
    ``samples``: columns x, y, label, kind, where kind "train" is drawn small
    and faint and "reference" large with black edges.
    """
    ax = ax or plt.subplots(figsize=(2.4, 2.4))[1]
    xs, ys = np.unique(grid["x"]), np.unique(grid["y"])
    z = grid.sort_values(["y", "x"])["predicted"].to_numpy().reshape(ys.size, xs.size)
    ax.contourf(xs, ys, z, levels=[-0.5, 0.5, 1.5], colors=["#c6dbef", "#fdd0a2"])
    if samples is not None:
        tr = samples[samples["kind"] == "train"]
        ax.scatter(tr["x"], tr["y"], c=tr["label"], cmap="coolwarm", s=2, alpha=0.25)
        ref = samples[samples["kind"] == "reference"]
        ax.scatter(ref["x"], ref["y"], c=ref["label"], cmap="coolwarm", s=28,
                   edgecolors="black", linewidths=0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def plot_accuracy_and_agreement(models: pd.DataFrame, summary: pd.DataFrame, *,
                                metric: str | None = None, axes=None):
    """The key figure of a study: test accuracy and agreement with the dense maps vs sparsity.

    Left: accuracy (%, 95% Wilson CI as error bars) of the dense model (at 0)
    and each pruning variant; right: the mean ``metric`` (default: the first
    agreement metric the run computed, Spearman first) between each model's
    maps and the dense maps, per attribution method, with 95% CIs as error
    bars. Controls are horizontal lines on both: how far retraining alone
    moves the numbers. Returns the two ``Axes`` (one when no agreement metric
    was computed).
    """
    if metric is None:
        present = set(summary.loc[summary["role"] != "dense", "metric"])
        metric = next((m for m in ("spearman", "kendall_tau", "cosine_similarity",
                                   "top_k_intersection", "pearson", "ssim") if m in present),
                      None)
    n = 1 if metric is None else 2
    if axes is None:
        axes = list(plt.subplots(1, n, figsize=(4.2 * n, 3.0), squeeze=False)[1][0])
    dense = models[models["role"] == "dense"]
    ax = axes[0]
    for i, (variant, group) in enumerate(models[models["role"] == "sparse"].groupby(
            "pruning", sort=False)):
        curve = pd.concat([dense, group]).sort_values("requested_sparsity")
        ax.errorbar(curve["requested_sparsity"], 100 * curve["accuracy"],
                    yerr=[100 * (curve["accuracy"] - curve["accuracy_ci_low"]),
                          100 * (curve["accuracy_ci_high"] - curve["accuracy"])],
                    marker="os^vDP*"[i % 7], ms=3, capsize=2, color=f"C{i}", label=variant)
    for j, (_, ctrl) in enumerate(models[models["role"] == "control"].iterrows()):
        ax.axhline(100 * ctrl["accuracy"], color="grey", linestyle=[":", "--"][j % 2],
                   linewidth=1, label=ctrl["model"])
    ax.set_xlabel("sparsity (fraction of weights removed)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("accuracy", fontsize=10)
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)
    if metric is None:
        return axes
    ax = axes[1]
    data = summary[summary["metric"] == metric]
    for i, (method, group) in enumerate(data.groupby("attribution", sort=False)):
        colour = _colour(method, i)
        curve = group[group["role"] == "sparse"].sort_values("sparsity")
        ax.errorbar(curve["sparsity"], curve["mean"],
                    yerr=[curve["mean"] - curve["ci_low"], curve["ci_high"] - curve["mean"]],
                    marker="os^vDP*"[i % 7], ms=3, capsize=2, color=colour,
                    label=method.replace("_", " "))
        for j, (_, ctrl) in enumerate(group[group["role"] == "control"].iterrows()):
            ax.axhline(ctrl["mean"], color=colour, linestyle=[":", "--"][j % 2], linewidth=1,
                       label=f"{method.replace('_', ' ')}: {ctrl['model']}")
    ax.set_xlabel("sparsity (fraction of weights removed)")
    ax.set_xlim(axes[0].get_xlim())  # the same sparsity axis as the accuracy panel
    ax.set_ylabel(f"{metric.replace('_', ' ')} with the dense maps")
    ax.set_title("agreement with the dense model's maps", fontsize=10)
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)
    return axes


def token_colour(value: float, scale: float) -> tuple[float, float, float, float]:
    """The RGBA colour of a token's attribution ``value`` on a signed scale of ``|value| <= scale``.

    Red for positive (evidence for the explained class), blue for negative,
    the opacity proportional to ``|value| / scale`` (0 is transparent). Used
    by the PNG heat maps and the HTML report alike.
    """
    if not scale or not np.isfinite(value):
        return (1.0, 1.0, 1.0, 0.0)
    share = float(min(1.0, abs(value) / scale))
    rgb = (0.84, 0.15, 0.16) if value > 0 else (0.12, 0.47, 0.71)
    return (*rgb, round(share, 3))


def plot_token_heatmap(tokens: pd.DataFrame, attribution: str, models: list[str], *,
                       samples: list[int] | None = None, ax=None):
    """Sentences with each token coloured by its attribution: the same sentences, one line per
    model (dense above the pruned ones), one colour scale per sentence.

    Parameters
    ----------
    tokens : DataFrame
        A run's ``tokens.csv``: columns ``attribution``, ``model``, ``sample``,
        ``position``, ``token``, ``value`` (padding and special tokens left out).
    attribution : str
        The attribution method drawn.
    models : list of str
        The models, in drawing order (dense first); absent ones are skipped.
    samples : list of int, optional
        The sentences drawn (default: all in ``tokens``).

    Colours as :func:`token_colour`: red for positive, blue for negative
    attribution, scaled by the largest |value| of the sentence over the drawn
    models, so that a map that loses its mass after pruning shows it.
    """
    data = tokens[tokens["attribution"] == attribution]
    models = [m for m in models if m in set(data["model"])]
    samples = sorted(data["sample"].unique()) if samples is None else list(samples)
    lines = len(samples) * (len(models) + 1)
    ax = ax or plt.subplots(figsize=(9.0, 0.26 * lines + 0.5))[1]
    ax.set_xlim(0, 1)
    ax.set_ylim(lines, -0.5)
    ax.axis("off")
    row = 0
    for sample in samples:
        sentence = data[data["sample"] == sample]
        scale = float(sentence["value"].abs().max()) if len(sentence) else 0.0
        ax.text(0.0, row, f"sentence {sample}", fontsize=7, fontweight="bold", va="center")
        row += 1
        for model in models:
            ax.text(0.0, row, model.replace("control:", "ctrl "), fontsize=6, va="center",
                    color="#444")
            x = 0.2
            part = sentence[sentence["model"] == model].sort_values("position")
            for token, value in zip(part["token"], part["value"], strict=True):
                ax.text(x, row, str(token), fontsize=6.5, va="center", family="monospace",
                        bbox={"facecolor": token_colour(value, scale), "edgecolor": "none",
                              "pad": 1.0})
                x += 0.0085 * (len(str(token)) + 1.5)
            row += 1
    ax.set_title(f"{attribution.replace('_', ' ')}: tokens coloured by attribution (red for, "
                 "blue against the explained class; one scale per sentence)", fontsize=8)
    return ax
def _control_band(ax, mean: float, low: float, high: float, colour, label: str,
                  style: str) -> None:
    """A control as a horizontal band (its 95% CI) around a line (its mean)."""
    if not (math.isnan(low) or math.isnan(high)):
        ax.axhspan(low, high, color=colour, alpha=0.12, linewidth=0)
    ax.axhline(mean, color=colour, linestyle=style, linewidth=1, label=label)


_CONTROL_STYLE = {"control:finetune": "--", "control:other-seed": ":"}


def plot_key_figure(models: pd.DataFrame, summary: pd.DataFrame, *,
                    agreement: str | None = None, faithfulness: str | None = None, axes=None):
    """The key figure of a report: accuracy, agreement with the dense maps and faithfulness
    against sparsity.

    Each panel draws the dense model (sparsity 0, where defined) and every
    pruning variant as points with 95% CIs as error bars (accuracy: Wilson;
    metrics: the summary's BCa bootstrap), and each control (the fine-tuned
    copy of the dense model, a model from another seed) as a horizontal band,
    its 95% CI around a line at its mean. ``agreement`` and ``faithfulness``
    name the metrics drawn (default: the first of
    :data:`xprune.report.headline.AGREEMENT_METRICS` and
    :data:`~xprune.report.headline.FAITHFULNESS_METRICS` in ``summary``);
    a panel is left out when its metric is absent. Returns the list of ``Axes``.
    """
    from .headline import agreement_metric, faithfulness_metric

    agreement = agreement or agreement_metric(summary)
    faithfulness = faithfulness or faithfulness_metric(summary)
    panels = ["accuracy"] + [m for m in (agreement, faithfulness) if m]
    if axes is None:
        fig, grid = plt.subplots(1, len(panels), figsize=(3.9 * len(panels), 2.7),
                                 squeeze=False, layout="constrained")
        axes = list(grid[0])
    dense = models[models["role"] == "dense"]
    variants = list(dict.fromkeys(models.loc[models["role"] == "sparse", "pruning"]))
    ax = axes[0]
    for i, variant in enumerate(variants):
        curve = pd.concat([dense, models[(models["role"] == "sparse")
                                         & (models["pruning"] == variant)]])
        curve = curve.sort_values("requested_sparsity")
        ax.errorbar(curve["requested_sparsity"], 100 * curve["accuracy"],
                    yerr=[100 * (curve["accuracy"] - curve["accuracy_ci_low"]),
                          100 * (curve["accuracy_ci_high"] - curve["accuracy"])],
                    marker="os^vDP*"[i % 7], ms=3, capsize=2, color=f"C{i}", label=variant)
    for _, ctrl in models[models["role"] == "control"].iterrows():
        _control_band(ax, 100 * ctrl["accuracy"], 100 * ctrl["accuracy_ci_low"],
                      100 * ctrl["accuracy_ci_high"], "grey", ctrl["model"],
                      _CONTROL_STYLE.get(ctrl["model"], "-."))
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("accuracy", fontsize=10)
    titles = {agreement: "agreement with the dense maps", faithfulness: "faithfulness"}
    for ax, metric in zip(axes[1:], panels[1:], strict=True):
        data = summary[summary["metric"] == metric]
        for i, (method, group) in enumerate(data.groupby("attribution", sort=False)):
            colour = _colour(method, i)
            curve = group[group["role"].isin(["dense", "sparse"])].sort_values("sparsity")
            ax.errorbar(curve["sparsity"], curve["mean"],
                        yerr=[curve["mean"] - curve["ci_low"], curve["ci_high"] - curve["mean"]],
                        marker="os^vDP*"[i % 7], ms=3, capsize=2, color=colour,
                        label=method.replace("_", " "))
            for _, ctrl in group[group["role"] == "control"].iterrows():
                _control_band(ax, ctrl["mean"], ctrl["ci_low"], ctrl["ci_high"], colour,
                              f"{method.replace('_', ' ')}: {ctrl['model']}",
                              _CONTROL_STYLE.get(ctrl["model"], "-."))
        ax.set_ylabel(metric.replace("_", " ").replace("@", " @ "), fontsize=8)
        ax.set_title(titles[metric], fontsize=10)
    for ax in axes:
        ax.set_xlabel("sparsity (fraction of weights removed)", fontsize=8)
        ax.set_xlim(-0.05, 1.0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=5.5, loc="best")
    return axes


def _top_region(img: np.ndarray, top: float) -> np.ndarray:
    """Where ``img`` holds its ``top`` fraction of largest positive values (display only)."""
    k = max(1, int(np.ceil(top * img.size)))
    threshold = np.sort(img.ravel())[::-1][k - 1]
    return (img >= threshold) & (img > 0)


def plot_spectrogram_maps(examples: pd.DataFrame, attribution: str, sample: int,
                          models: list[str], *, top: float = 0.1, ax=None):
    """One recording's spectrogram with the maps of several models overlaid.

    The input (``examples`` rows of model ``"input"``: row = frequency bin,
    col = frame) is drawn in grey, low frequencies at the bottom; each model's
    map (rows of that model and ``attribution``) as the outline of its top
    ``top`` fraction of bins by signed value, positive only (the ranking the
    plausibility metrics score); the ground truth, where ``examples`` holds
    rows of model ``"rationale"`` (the formant bands), as a dotted green
    outline. Dense in blue, the other models in orange, red, purple.
    """
    ax = ax or plt.subplots(figsize=(4.2, 3.0))[1]
    rows = examples[examples["sample"] == sample]
    spec = _image(rows[rows["model"] == "input"])
    ax.imshow(spec, origin="lower", aspect="auto", cmap="gray_r")
    height, width = spec.shape

    def outline(region: np.ndarray, **style) -> None:
        # padded with zeros so that a region at the border closes; the 0.5 level runs
        # along the bins' edges
        ax.contour(np.arange(-1, width + 1), np.arange(-1, height + 1),
                   np.pad(region.astype(float), 1), levels=[0.5], **style)

    handles = []
    truth = rows[rows["model"] == "rationale"]
    if not truth.empty and (mask := _image(truth) > 0.5).any():
        outline(mask, colors="tab:green", linestyles=":", linewidths=1.0)
        handles.append(plt.Line2D([], [], color="tab:green", linestyle=":",
                                  label="formant bands"))
    colours = ["tab:orange", "tab:red", "tab:purple", "tab:brown"]
    maps = rows[rows["attribution"] == attribution]
    for i, model in enumerate(models):
        values = maps[maps["model"] == model]
        if values.empty:
            continue
        region = _top_region(_image(values), top)
        colour = "tab:blue" if model == "dense" else colours[(i - 1) % len(colours)]
        if region.any():
            outline(region, colors=colour, linewidths=1.2)
        handles.append(plt.Line2D([], [], color=colour,
                                  label=f"{model}: top {100 * top:g}%"))
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(-0.5, height - 0.5)
    ax.set_xlabel("frame")
    ax.set_ylabel("mel band")
    ax.legend(handles=handles, fontsize=6, loc="upper right")
    return ax


def plot_spectrogram_grid(examples: pd.DataFrame, attribution: str, models: list[str],
                          samples: list[int], *, top: float = 0.1,
                          title: str | None = None) -> plt.Figure:
    """Rows of recordings, a column per model of ``models[1:]``, each panel the dense
    (``models[0]``) and that model's maps over the same spectrogram
    (:func:`plot_spectrogram_maps`)."""
    others = models[1:] or models[:1]
    fig, axes = plt.subplots(len(samples), len(others), squeeze=False,
                             figsize=(2.6 * len(others) + 0.4, 2.0 * len(samples) + 0.4))
    for r, sample in enumerate(samples):
        for c, model in enumerate(others):
            ax = plot_spectrogram_maps(examples, attribution, sample,
                                       list(dict.fromkeys([models[0], model])), top=top,
                                       ax=axes[r, c])
            ax.tick_params(labelsize=6)
            ax.xaxis.label.set_fontsize(7)
            ax.yaxis.label.set_fontsize(7)
            if r == 0:
                ax.set_title(model.replace("control:", "control "), fontsize=7)
    fig.suptitle(title or attribution.replace("_", " "), fontsize=9)
    return fig


def plot_architectures_vs_sparsity(summary: pd.DataFrame, metric: str, attribution: str, *,
                                   ax=None):
    """Mean metric vs requested sparsity, one line per architecture, 95% CI bands.

    ``summary`` holds several runs' summaries with an ``architecture``
    column (:func:`xprune.report.side_by_side.side_by_side_summary`). Each
    line starts at its dense model (sparsity 0; agreement metrics, which
    compare with the dense maps, start at the first pruned model); each
    architecture's controls are dotted horizontal lines in its colour.
    """
    ax = ax or plt.subplots(figsize=(4.2, 3.0))[1]
    data = summary[(summary["metric"] == metric) & (summary["attribution"] == attribution)]
    for i, (arch, group) in enumerate(data.groupby("architecture", sort=False)):
        colour = f"C{i}"
        if "pruning" not in group:
            group = group.assign(pruning="")
        methods = list(dict.fromkeys(group.loc[group["role"] == "sparse", "pruning"]))
        for k, method in enumerate(methods):  # a line per pruning method, from the dense model
            curve = group[(group["role"] == "dense") | ((group["role"] == "sparse")
                                                       & (group["pruning"] == method))]
            curve = curve.sort_values("sparsity")
            ax.plot(curve["sparsity"], curve["mean"], marker="os^v"[i % 4], ms=3, color=colour,
                    linestyle=["-", "--", ":", "-."][k % 4],
                    label=arch + (f" {method}" if len(methods) > 1 else ""))
            ax.fill_between(curve["sparsity"], curve["ci_low"], curve["ci_high"],
                            color=colour, alpha=0.2 / len(methods), linewidth=0)
        for j, (_, ctrl) in enumerate(group[group["role"] == "control"].iterrows()):
            ax.axhline(ctrl["mean"], color=colour, linestyle=[":", "-."][j % 2], linewidth=0.8,
                       label=f"{arch} {ctrl['model'].replace('control:', '')}")
    ax.set_xlabel("sparsity", fontsize=8)
    ax.set_ylabel(metric.replace("_", " "), fontsize=8)
    ax.set_title(f"{metric.replace('_', ' ')}, {attribution.replace('_', ' ')}", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=5)
    ax.grid(alpha=0.3)
    return ax
