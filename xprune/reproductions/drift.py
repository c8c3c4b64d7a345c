"""Does attribution drift before accuracy drops? Accuracy and map agreement along sparsity.

For several training seeds, the default analysis pipeline
(:func:`xprune.analysis.run_analysis`) prunes the digits CNN by global L1 magnitude at increasing sparsities with a
short masked fine-tune, and scores each pruned model's Integrated Gradients
maps against the dense model's (Spearman rank correlation, all pixels and
foreground pixels) and by their Gini index. The controls of that analysis say
how far maps move without pruning: a dense model trained from another seed,
and the dense model fine-tuned for the same budget without pruning.

The report gives the highest sparsity at which accuracy is *non-inferior* to
the dense model's (the lower 95% bound of the accuracy change across seeds is
above ``-tolerance``, at that sparsity and every lower one), and the agreement
there against the controls, whatever it is. Maps count as drifted where the
whole 95% interval of (pruned - fine-tuned control) agreement lies below
``-margin``: a detectable but negligible change is not called drift. No paper reports this question on
these data, so there is no published number to set beside ours: the controls
are the reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .._validation import check_fraction, check_positive_int, check_sparsity_list
from ..analysis import run_analysis
from ..attribution import ATTRIBUTION_METHODS
from ..config import (
    AnalysisConfig,
    AttributionConfig,
    ControlsConfig,
    MetricsConfig,
    PruningConfig,
    ReportConfig,
    TrainConfig,
)
from ..report.tables import fmt_ci
from ..stats import holm, mean_ci, paired_test
from . import Context, register
from ._report import ReproductionReport, Section

__all__ = ["Params", "drift_summary", "run"]

TITLE = "Does attribution drift before accuracy drops?"
CITATION = ("no published reference: xprune's own question, asked along sparsity with the "
            "controls of its default analysis (another seed; fine-tuning without pruning)")
BOUNDS = {"accuracy": (0.0, 1.0), "gini_index": (0.0, 1.0), "spearman": (-1.0, 1.0),
          "spearman_foreground": (-1.0, 1.0)}
CONTROLS = {"control:finetune": "fine-tuned, unpruned", "control:other-seed": "another seed"}


@dataclass(frozen=True)
class Params:
    """Parameters of the attribution-drift analysis; the defaults are the full run.

    ``n_seeds`` training seeds, ``context.seed`` upwards; each runs the
    default xprune analysis pipeline at every sparsity (fraction of conv/linear
    weights zeroed, global L1) with ``finetune_epochs`` of masked fine-tuning.
    The seed also draws that run's train/validation/test split. ``tolerance``:
    the accuracy drop (a fraction: 0.01 = 1 point) still counted as kept.
    ``margin``: the smallest drop in mean Spearman agreement, against the
    fine-tuned control, counted as drift.
    """

    n_seeds: int = 5
    sparsities: list[float] = field(default_factory=lambda: [
        0.5, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99])
    methods: list[str] = field(default_factory=lambda: ["integrated_gradients"])
    epochs: int = 20
    finetune_epochs: int = 5
    n_samples: int = 360
    ig_steps: int = 16
    tolerance: float = 0.01
    margin: float = 0.05

    def __post_init__(self) -> None:
        check_positive_int(self.n_seeds, "params.n_seeds")
        if self.n_seeds < 2:
            raise ValueError(f"Expected `params.n_seeds` >= 2 (intervals across seeds), got "
                             f"{self.n_seeds}.")
        check_sparsity_list(self.sparsities, "params.sparsities")
        if not isinstance(self.methods, list) or not self.methods or any(
                m not in ATTRIBUTION_METHODS for m in self.methods):
            raise ValueError(f"Expected `params.methods` to name attribution methods from "
                             f"{sorted(ATTRIBUTION_METHODS)}, got {self.methods!r}.")
        for name in ("epochs", "finetune_epochs", "n_samples", "ig_steps"):
            check_positive_int(getattr(self, name), f"params.{name}")
        check_fraction(self.tolerance, "params.tolerance")
        check_fraction(self.margin, "params.margin")


def _analysis_config(params: Params, seed: int, device: str):
    return AnalysisConfig(
        name=f"drift-seed-{seed}", seed=seed, device=device,
        train=TrainConfig(epochs=params.epochs),
        pruning=PruningConfig(method="l1_unstructured", scope="global",
                              layers="*",  # every layer, as this reproduction always did
                              sparsities=list(params.sparsities),
                              finetune_epochs=params.finetune_epochs),
        controls=ControlsConfig(other_seed=True, finetune=True),
        attribution=AttributionConfig(
            methods=list(params.methods), n_samples=params.n_samples,
            params={"integrated_gradients": {"n_steps": params.ig_steps}}),
        metrics=MetricsConfig(names=["spearman", "gini_index"], versus_random=[],
                              foreground=True),
        report=ReportConfig(n_examples=1, latency_batch=8))


def _per_seed(result, seed: int) -> pd.DataFrame:
    """One row per (model, method): accuracy and mean scores of one seed's run."""
    models = result.models.set_index("model")
    res = result.results
    means = (res.groupby(["model", "attribution", "metric"], sort=False)["value"].mean()
             .unstack("metric"))
    rows = []
    for (model, method), scores in means.iterrows():
        rows.append({"seed": seed, "model": model, "role": models.loc[model, "role"],
                     "sparsity": float(models.loc[model, "requested_sparsity"]),
                     "accuracy": float(models.loc[model, "accuracy"]), "attribution": method,
                     "spearman": scores.get("spearman", math.nan),
                     "spearman_foreground": scores.get("spearman@foreground", math.nan),
                     "gini_index": scores.get("gini_index", math.nan),
                     "completeness_error": float(res.loc[
                         (res["model"] == model) & (res["attribution"] == method)
                         & (res["metric"] == "convergence_delta"), "value"].median())})
    return pd.DataFrame(rows)


def _paired_vs(res: pd.DataFrame, model: str, control: str, method: str,
               metric: str = "spearman") -> np.ndarray:
    """Per-sample agreement of ``model`` minus that of ``control`` (same samples, targets)."""
    sel = res[(res["attribution"] == method) & (res["metric"] == metric)]
    a = sel[sel["model"] == model].set_index("sample")["value"]
    b = sel[sel["model"] == control].set_index("sample")["value"]
    return (a - b.reindex(a.index)).to_numpy(dtype=np.float64)


def _versus_controls(results: dict[int, pd.DataFrame], seeds: list[int], tag: str,
                     method: str) -> dict[str, tuple[float, float, float, int, int]]:
    """Per control: the mean over seeds of (agreement of ``tag`` − the control's), its 95%
    t-interval across seeds, and in how many seeds a Wilcoxon test of the per-sample
    differences is significant after Holm's correction across seeds, with the pruned
    model's agreement below the control's and above it."""
    out = {}
    for control in CONTROLS:
        diffs, pvals = [], []
        for seed in seeds:
            d = _paired_vs(results[seed], tag, control, method)
            diffs.append(float(np.nanmean(d)))
            pvals.append(paired_test(d))
        mean, low, high, _ = mean_ci(np.asarray(diffs))
        significant = holm(pvals) < 0.05
        below = int(np.sum(significant & (np.asarray(diffs) < 0)))
        above = int(np.sum(significant & (np.asarray(diffs) > 0)))
        out[control] = (mean, low, high, below, above)
    return out


def drift_summary(per_seed: pd.DataFrame, tolerance: float) -> tuple[pd.DataFrame, float | None]:
    """Across seeds: each model's mean and 95% t-interval of accuracy, its drop, agreement, Gini.

    ``per_seed`` has one row per (seed, model, attribution) with ``accuracy``
    (fraction), ``spearman``, ``spearman_foreground`` and ``gini_index``.
    Returns the table (one row per model and method, in the input's order)
    and the highest sparsity at which accuracy is non-inferior to the dense
    model's, here and at every lower sparsity: the upper 95% bound of the
    accuracy drop (dense − pruned, across seeds) is at most ``tolerance``
    (None when the lowest sparsity already fails). Intervals of bounded
    quantities are clipped to their range: accuracy and Gini to [0, 1],
    Spearman to [-1, 1].
    """
    dense_acc = per_seed[per_seed["role"] == "dense"].drop_duplicates("seed") \
        .set_index("seed")["accuracy"]
    dense_gini = per_seed[per_seed["role"] == "dense"].set_index(
        ["seed", "attribution"])["gini_index"]
    rows = []
    for (model, method), g in per_seed.groupby(["model", "attribution"], sort=False):
        drop = (dense_acc.reindex(g["seed"]).to_numpy() - g["accuracy"].to_numpy())
        d_gini = g["gini_index"].to_numpy() - dense_gini.reindex(
            list(zip(g["seed"], g["attribution"], strict=True))).to_numpy()
        row = {"model": model, "role": g["role"].iloc[0], "sparsity": g["sparsity"].iloc[0],
               "attribution": method, "seeds": len(g)}
        for name, values in (("accuracy", g["accuracy"]), ("accuracy_drop", drop),
                             ("spearman", g["spearman"]),
                             ("spearman_foreground", g["spearman_foreground"]),
                             ("gini_index", g["gini_index"]), ("gini_change", d_gini)):
            mean, low, high, _ = mean_ci(np.asarray(values, dtype=np.float64))
            lo_bound, hi_bound = BOUNDS.get(name, (-math.inf, math.inf))
            row.update({name: mean, f"{name}_low": max(low, lo_bound),
                        f"{name}_high": min(high, hi_bound)})
        row["completeness_error"] = float(np.median(g["completeness_error"])) \
            if "completeness_error" in g else math.nan
        rows.append(row)
    table = pd.DataFrame(rows)
    sparse = table[table["role"] == "sparse"].drop_duplicates("model")
    kept = sparse[sparse["accuracy_drop_high"] <= tolerance + 1e-12]["sparsity"]
    # the highest sparsity with every lower one also kept: accuracy has not dropped yet
    highest = None
    for s in sorted(sparse["sparsity"]):
        if s not in set(kept):
            break
        highest = float(s)
    return table, highest


def _points(value: float) -> str:
    return f"{value:g} point" + ("" if value == 1 else "s")


# this report's style: 2 decimals, "—" where undefined, Python's "-0.00" kept
_fmt = partial(fmt_ci, digits=2, missing="—", negative_zero=True, finite=True)


@register("attribution_drift", title=TITLE, citation=CITATION, params=Params)
def run(params: Params, context: Context) -> ReproductionReport:
    """Run the drift analysis (see the module docstring) and return its report."""
    seeds = [context.seed + k for k in range(params.n_seeds)]
    frames, results = [], {}
    for seed in seeds:
        context.say(f"seed {seed}: dense, {len(params.sparsities)} sparsities, 2 controls")
        result = run_analysis(_analysis_config(params, seed, context.device),
                              out_dir=context.out_dir / "runs" / f"seed-{seed}",
                              progress=False, use_cache=context.cache.dir is not None,
                              render=False)
        frames.append(_per_seed(result, seed))
        results[seed] = result.results
    per_seed = pd.concat(frames, ignore_index=True)
    table, highest = drift_summary(per_seed, params.tolerance)
    tol_pts = params.tolerance * 100

    sections, findings = [], []
    for method in params.methods:
        t = table[table["attribution"] == method]
        label = method.replace("_", " ")
        shown = pd.DataFrame({
            "model": t["model"],
            "sparsity": [f"{s:.2f}" if r == "sparse" else "—" for s, r in
                         zip(t["sparsity"], t["role"], strict=True)],
            "accuracy %": [_fmt(m * 100, lo * 100, hi * 100, digits=1) for m, lo, hi in
                           zip(t["accuracy"], t["accuracy_low"], t["accuracy_high"],
                               strict=True)],
            "Δ accuracy (points)": [_fmt(-m * 100, -hi * 100, -lo * 100, digits=1) if r != "dense" else "—"
                                    for m, lo, hi, r in zip(
                                        t["accuracy_drop"], t["accuracy_drop_low"],
                                        t["accuracy_drop_high"], t["role"], strict=True)],
            "Spearman vs dense maps": [_fmt(m, lo, hi) for m, lo, hi in zip(
                t["spearman"], t["spearman_low"], t["spearman_high"], strict=True)],
            "Spearman, foreground": [_fmt(m, lo, hi) for m, lo, hi in zip(
                t["spearman_foreground"], t["spearman_foreground_low"],
                t["spearman_foreground_high"], strict=True)],
            "Gini": [_fmt(m, lo, hi, digits=3) for m, lo, hi in zip(
                t["gini_index"], t["gini_index_low"], t["gini_index_high"], strict=True)],
            "Δ Gini": [_fmt(m, lo, hi, digits=3) if r != "dense" else "—" for m, lo, hi, r in zip(
                t["gini_change"], t["gini_change_low"], t["gini_change_high"], t["role"],
                strict=True)]})
        if method == "integrated_gradients":
            shown["IG completeness error (median, logits)"] = [
                f"{v:.3f}" if math.isfinite(v) else "—" for v in t["completeness_error"]]
        text = [f"Mean across {len(seeds)} training seeds with a 95% t-interval across seeds "
                "(clipped to the quantity's range). Each seed also draws its own train / "
                "validation / test split, so the intervals cover the split as well as the "
                "initialisation. Agreement: per-sample Spearman rank correlation of each "
                "model's maps with the dense model's maps of the same seed (same inputs, the "
                "dense model's predicted class), averaged over the test samples; foreground: "
                "over the pixels where the input is nonzero. Controls have no sparsity: their "
                "agreement is how far maps move without pruning. Δ Spearman vs fine-tuned "
                "control: the pruned model's agreement minus the fine-tuned control's, per "
                "seed averaged over samples, then a 95% t-interval across seeds."]
        if method == "integrated_gradients":
            text.append("IG completeness error: |sum of the map − (f(x) − f(baseline))| of the "
                        "explained logit, the median over samples and seeds; small against the "
                        "logit gap means the path integral is accurate.")
        versus = {tag: _versus_controls(results, seeds, tag, method)
                  for tag in t.loc[t["role"] == "sparse", "model"]}
        shown.insert(5, "Δ Spearman vs fine-tuned control", [
            _fmt(*versus[m]["control:finetune"][:3], digits=3) if m in versus else "—"
            for m in t["model"]])
        onset = next((float(s) for m, s in zip(t["model"], t["sparsity"], strict=True)
                      if m in versus and versus[m]["control:finetune"][2] < -params.margin),
                     None)
        vs = None
        if len(seeds) < 3:
            findings.append(f"Only {len(seeds)} training seeds: intervals across seeds are "
                            "too wide to support conclusions; use at least 3 (the full run "
                            "uses 5).")
        if highest is not None:
            model_at = t[(t["role"] == "sparse") & np.isclose(t["sparsity"], highest)]
            at = versus[model_at["model"].iloc[0]]
            vs = pd.DataFrame([{
                "control": f"{control} ({what})",
                "Δ Spearman, pruned − control": _fmt(*at[control][:3], digits=3),
                "seeds significantly below / above (Holm, p < 0.05)":
                    f"{at[control][3]} / {at[control][4]} of {len(seeds)}"}
                for control, what in CONTROLS.items()])
            ft, other = at["control:finetune"], at["control:other-seed"]
            if ft[2] < -params.margin:
                verdict = (f"the maps have drifted beyond what fine-tuning alone does (by more "
                           f"than the {params.margin:g} margin) while accuracy is kept")
            elif ft[2] < 0:
                verdict = (f"the maps differ from fine-tuning alone, but the difference is not "
                           f"shown to exceed the {params.margin:g} margin")
            elif ft[1] > 0:
                verdict = "the maps agree more than fine-tuning alone"
            else:
                verdict = "not distinguishable from fine-tuning alone"
            versus_seed = ("below even a model trained from another seed" if other[2] < 0 else
                           "still above a model trained from another seed" if other[1] > 0
                           else "not distinguishable from a model trained from another seed")
            drop = model_at[["accuracy_drop", "accuracy_drop_low", "accuracy_drop_high"]].iloc[0]
            findings.append(
                f"{label.capitalize()}: the highest sparsity at which accuracy is non-inferior "
                f"to dense (the 95% interval of the change lies above −{_points(tol_pts)}, "
                f"here and at every lower sparsity) is {highest:.2f}: Δ accuracy "
                f"{_fmt(-drop.iloc[0] * 100, -drop.iloc[2] * 100, -drop.iloc[1] * 100, digits=1)} points. There "
                f"the maps agree with the dense maps at Spearman "
                f"{_fmt(*model_at[['spearman', 'spearman_low', 'spearman_high']].iloc[0])}, "
                f"Δ {_fmt(*ft[:3], digits=3)} against the fine-tuned control: {verdict}; "
                f"{versus_seed} (Δ {_fmt(*other[:3], digits=3)}).")
            text.append(f"At the highest sparsity with non-inferior accuracy ({highest:.2f}), "
                        "the pruned model's agreement minus each control's, per seed averaged "
                        "over samples, then a 95% t-interval across seeds; per seed a Wilcoxon "
                        "signed-rank test of the per-sample differences, Holm-corrected across "
                        "seeds, counted by direction.")
        else:
            findings.append(f"{label.capitalize()}: accuracy is not shown non-inferior to dense "
                            f"(within {_points(tol_pts)}) even at the lowest sparsity tried "
                            f"({min(params.sparsities):.2f}).")
        findings.append(
            f"{label.capitalize()}: agreement falls below the fine-tuned control's by more "
            f"than the {params.margin:g} margin (whole 95% interval of the difference below "
            f"−{params.margin:g}) from sparsity {onset:.2f} on."
            if onset is not None else
            f"{label.capitalize()}: at no sparsity tried is agreement shown to fall more "
            f"than {params.margin:g} below the fine-tuned control's.")
        tables = [(f"{label}: accuracy, agreement with the dense maps and Gini per model",
                   shown)]
        if vs is not None:
            tables.append((f"{label}: agreement at sparsity {highest:.2f} against the controls",
                           vs))
        sections.append(Section(f"Accuracy against attribution agreement: {label}", text,
                                tables, [(f"{label}: accuracy and agreement along sparsity "
                                          f"(mean, 95% CI across seeds)",
                                          _figure(t, highest, label))]))
    setup = [f"Digits (scikit-learn, 8x8), the xprune digits CNN trained {params.epochs} epochs "
             f"per seed; {len(seeds)} seeds ({seeds[0]}–{seeds[-1]}), each also drawing its "
             "own stratified train / validation / test split.",
             f"Global L1 magnitude pruning at {', '.join(f'{s:g}' for s in params.sparsities)} "
             f"with {params.finetune_epochs} epochs of masked fine-tuning (the pipeline of "
             "the default `xprune run`).",
             f"Maps: {', '.join(params.methods)} (IG: {params.ig_steps} steps, zero baseline) on "
             f"the first {params.n_samples} test images, explaining the dense model's predicted "
             "class for every model.",
             "Controls per seed: a dense model trained with seed + 1, and the dense model "
             "fine-tuned for the same budget without pruning."]
    return ReproductionReport(
        title=TITLE, citation=CITATION, findings=findings, setup=setup,
        differences=["No paper reports this question on these data; the table has no "
                     "published column. The controls stand in for a reference."],
        sections=sections,
        data={"per_seed": per_seed, "summary": table})


def _figure(t: pd.DataFrame, highest: float | None, label: str) -> plt.Figure:
    fig, (ax_acc, ax_agr) = plt.subplots(1, 2, figsize=(10, 3.6))
    sparse = t[t["role"] == "sparse"].sort_values("sparsity")
    dense = t[t["role"] == "dense"].iloc[0]
    x = sparse["sparsity"].to_numpy()
    ax_acc.errorbar(x, sparse["accuracy"] * 100,
                    yerr=[(sparse["accuracy"] - sparse["accuracy_low"]) * 100,
                          (sparse["accuracy_high"] - sparse["accuracy"]) * 100],
                    marker="o", capsize=3, label="pruned")
    ax_acc.axhline(dense["accuracy"] * 100, color="k", lw=1, label="dense")
    ax_acc.set(xlabel="sparsity", ylabel="test accuracy (%)", title="accuracy")
    for column, name in (("spearman", "all pixels"), ("spearman_foreground", "foreground")):
        ax_agr.errorbar(x, sparse[column], yerr=[sparse[column] - sparse[f"{column}_low"],
                                                 sparse[f"{column}_high"] - sparse[column]],
                        marker="o", capsize=3, label=f"pruned ({name})")
    for (control, what), style in zip(CONTROLS.items(), ("--", ":"), strict=True):
        row = t[t["model"] == control]
        if not row.empty:
            ax_agr.axhline(float(row["spearman"].iloc[0]), color="grey", ls=style,
                           label=f"control: {what}")
    ax_agr.set(xlabel="sparsity", ylabel="Spearman vs dense maps",
               title=f"{label} agreement with the dense maps")
    for ax in (ax_acc, ax_agr):
        if highest is not None:
            ax.axvline(highest, color="tab:red", lw=0.8, alpha=0.6)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
