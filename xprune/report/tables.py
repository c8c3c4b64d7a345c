"""Tables a report shows, derived from the run folder's long results only."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..metrics import METRICS
from ..stats import bootstrap_ci, holm, paired_test

__all__ = ["all_zero_maps", "all_zero_sentence", "fmt_cell", "fmt_ci", "metric_summary",
           "model_order", "plural", "prediction_split", "undefined_note", "what_changed"]

GROUP = ["model", "role", "pruning", "sparsity", "attribution", "metric"]


def plural(n: int, word: str) -> str:
    """``"1 epoch"``, ``"5 epochs"``."""
    return f"{n} {word}" + ("" if n == 1 else "s")


def model_order(models: pd.DataFrame) -> list[str]:
    """Dense first, then sparse models by requested sparsity, then controls."""
    rank = {"dense": 0, "sparse": 1, "control": 2}
    ordered = models.assign(_r=models["role"].map(rank)).sort_values(
        ["_r", "requested_sparsity", "model"], kind="stable")
    return list(ordered["model"])


def metric_summary(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and 95% bootstrap CI per model x attribution x metric, and the paired change vs dense.

    ``diff_*`` columns give mean(score - dense score) over the same samples
    with a BCa bootstrap interval, ``p_value`` the two-sided Wilcoxon
    signed-rank test of those paired differences and ``p_holm`` the same
    p-value Holm-corrected across the metrics tested for that model and
    attribution method. Intervals are clipped to the metric's range.

    ``n`` counts the samples whose score is defined (finite), ``n_total``
    every sample of the cell and ``n_undefined`` the difference: undefined
    scores (NaN, e.g. a rank correlation of a constant map) are left out of
    every mean and test, never counted silently. ``diff_n`` counts the pairs
    with both scores defined.
    """
    columns = [*GROUP, "n", "n_total", "n_undefined", "mean", "ci_low", "ci_high", "diff_n",
               "diff_mean", "diff_ci_low", "diff_ci_high", "p_value", "p_holm"]
    if results.empty:
        return pd.DataFrame(columns=columns)
    dense = results[results["role"] == "dense"].set_index(["attribution", "metric", "sample"])
    rows = []
    for key, group in results.groupby(GROUP, sort=False):
        mean, lo, hi, n = bootstrap_ci(group["value"].to_numpy())
        if key[5] in METRICS:  # keep intervals inside the metric's attainable range
            low_bound, high_bound = METRICS[key[5]].range
            lo, hi = max(lo, low_bound), min(hi, high_bound)
        row = dict(zip(GROUP, key, strict=True)) | {
            "n": n, "n_total": len(group), "n_undefined": len(group) - n, "mean": mean,
            "ci_low": lo, "ci_high": hi}
        idx = pd.MultiIndex.from_arrays([group["attribution"], group["metric"], group["sample"]])
        if key[1] != "dense" and idx.isin(dense.index).all():
            diff = group["value"].to_numpy() - dense.loc[idx, "value"].to_numpy()
            d_mean, d_lo, d_hi, d_n = bootstrap_ci(diff)
            row |= {"diff_n": d_n, "diff_mean": d_mean, "diff_ci_low": d_lo,
                    "diff_ci_high": d_hi, "p_value": paired_test(diff)}
        rows.append(row)
    out = pd.DataFrame(rows)
    for col in ("diff_n", "diff_mean", "diff_ci_low", "diff_ci_high", "p_value"):
        if col not in out:
            out[col] = np.nan
    out = out[[c for c in columns if c != "p_holm"]]
    out["p_holm"] = np.nan
    for _, family in out.groupby(["model", "attribution"], sort=False):
        out.loc[family.index, "p_holm"] = holm(family["p_value"].to_numpy())
    return out


def subset(results: pd.DataFrame, which: str) -> pd.DataFrame:
    """Rows of ``results`` on one subset of samples.

    ``"both_correct"``: samples the dense model (its prediction is the target)
    and the row's model both classify correctly, so that a removal score is
    not moved by samples one of them gets wrong. ``"agree"`` / ``"disagree"``:
    samples where the row's model predicts the dense model's class, or not.
    """
    if which == "both_correct":
        keep = (results["target"] == results["label"]) & (results["prediction"]
                                                           == results["label"])
    elif which == "agree":
        keep = results["prediction"] == results["target"]
    elif which == "disagree":
        keep = results["prediction"] != results["target"]
    else:
        raise ValueError(f"Expected a subset in ('both_correct', 'agree', 'disagree'), "
                         f"got {which!r}.")
    return results[keep]


MIN_BOOTSTRAP_N = 10  # below this many samples a subset's mean is shown without an interval


def prediction_split(results: pd.DataFrame) -> pd.DataFrame:
    """Per non-dense model and method: agreement with the dense maps split by prediction,
    and the paired changes of removal scores on samples both models classify correctly.

    Columns: n agree / disagree (samples where the model predicts the dense
    model's class, or not), mean Spearman agreement on each (bootstrap CI), and
    the paired Δ of faithfulness correlation and deletion AUC over the
    samples both models classify correctly (BCa CI).
    """
    rows = []
    removal = results[results["metric"].isin(["faithfulness_correlation", "deletion_auc"])]
    both = metric_summary(subset(removal, "both_correct"))
    others = results[results["role"] != "dense"]
    for (model, attribution), group in others.groupby(["model", "attribution"], sort=False):
        first = group[group["metric"] == group["metric"].iloc[0]]
        n_agree = int((first["prediction"] == first["target"]).sum())
        row = {"model": model, "attribution": attribution,
               "n agree / disagree": f"{n_agree} / {len(first) - n_agree}"}
        for which in ("agree", "disagree"):
            part = subset(group[group["metric"] == "spearman"], which)
            mean, lo, hi, n = bootstrap_ci(part["value"].to_numpy())
            if n < MIN_BOOTSTRAP_N:  # too few samples for an interval: give the count
                row[f"Spearman ({which})"] = "n/a" if n == 0 else f"{mean:.3f} (n={n})"
            else:
                row[f"Spearman ({which})"] = fmt_ci(mean, lo, hi)
        for metric, label in (("faithfulness_correlation", "Δ faithfulness corr. (both correct)"),
                              ("deletion_auc", "Δ deletion AUC (both correct)")):
            s = both[(both["model"] == model) & (both["attribution"] == attribution)
                     & (both["metric"] == metric)]
            row[label] = ("n/a" if s.empty else
                          fmt_ci(s.iloc[0]["diff_mean"], s.iloc[0]["diff_ci_low"],
                                 s.iloc[0]["diff_ci_high"], signed=True))
        rows.append(row)
    return pd.DataFrame(rows)


def fmt_ci(mean: float, low: float, high: float, digits: int = 3, signed: bool = False, *,
           missing: str = "n/a", negative_zero: bool = False, finite: bool = False) -> str:
    """A mean and its interval as text, ``0.820 [0.801, 0.839]``, with ``digits`` decimals.

    ``signed`` writes "+" before positive numbers. The interval is left out
    where a bound is undefined (None or NaN).

    Keyword-only options (the defaults are the run report's style):

    missing : str
        The text for an undefined mean (None or NaN).
    negative_zero : bool
        Keep Python's "-0.00" for a small negative number; by default a number
        that rounds to zero prints as "0.00".
    finite : bool
        Count infinite values as undefined too (the mean gives ``missing``, a
        bound leaves the interval out); by default they print as "inf".
    """
    def undefined(v: float | None) -> bool:
        if v is None:
            return True
        return not math.isfinite(v) if finite else isinstance(v, float) and math.isnan(v)

    if undefined(mean):
        return missing
    sign = "+" if signed else ""

    def num(v: float) -> str:
        if not negative_zero and round(v, digits) == 0:
            v = 0.0
        return f"{v:{sign}.{digits}f}"

    text = num(mean)
    if not (undefined(low) or undefined(high)):
        text += f" [{num(low)}, {num(high)}]"
    return text


def all_zero_maps(results: pd.DataFrame) -> pd.DataFrame:
    """Per model and attribution method: how many samples' maps are all zero.

    Read from the scores of the map metrics that are undefined exactly for an
    all-zero map (Gini index, entropy complexity, top-k mass: NaN there and
    nowhere else), so it needs one of them in the run. Columns: model,
    attribution, n_zero, n; rows with n_zero > 0 only.
    """
    names = [n for n, i in METRICS.items() if i.kind == "map" and i.undefined == "all-zero map"]
    maps = results[results["metric"].isin(names)]
    if maps.empty:
        return pd.DataFrame(columns=["model", "attribution", "n_zero", "n"])
    per_sample = maps.assign(zero=maps["value"].isna()).groupby(
        ["model", "attribution", "sample"], sort=False)["zero"].any()
    out = per_sample.groupby(["model", "attribution"], sort=False).agg(["sum", "size"])
    out = out.rename(columns={"sum": "n_zero", "size": "n"}).reset_index()
    out["n_zero"] = out["n_zero"].astype(int)
    return out[out["n_zero"] > 0].reset_index(drop=True)


def all_zero_sentence(results: pd.DataFrame) -> str | None:
    """The report's flag for all-zero maps (../shared/cases/029-saturated-all-zero-maps.md)."""
    zero = all_zero_maps(results)
    if zero.empty:
        return None
    parts = [f"{r['attribution']} of {r['model']}: {r['n_zero']} of {r['n']}"
             for _, r in zero.iterrows()]
    return ("All-zero maps (the output does not move with the input: a saturated output or "
            "dead units after pruning; their rank and complexity scores are undefined and left "
            "out of every mean): " + "; ".join(parts) + ".")


def undefined_note(metric: str, n: int, n_total: int) -> str:
    """``""`` when every score is defined, else ``" (n = 250 of 256; 6 undefined: constant map)"``.

    The reason is the metric's :attr:`~xprune.metrics.MetricInfo.undefined`
    (``metric`` may carry an ``@`` suffix such as ``spearman@foreground``).
    """
    if n_total is None or n is None or (isinstance(n, float) and math.isnan(n)) \
            or int(n) >= int(n_total):
        return ""
    info = METRICS.get(str(metric).split("@")[0])
    reason = f": {info.undefined}" if info is not None and info.undefined else ""
    return f" (n = {int(n)} of {int(n_total)}; {int(n_total) - int(n)} undefined{reason})"


def fmt_cell(row: pd.Series, *, diff: bool = False, digits: int = 3) -> str:
    """A summary row as a table cell: mean [CI] (or the paired Δ), with its undefined count.

    ``0.820 [0.801, 0.839]``, or ``0.820 [0.801, 0.839] (n = 250 of 256; 6
    undefined: constant map)`` where some samples' scores are undefined.
    """
    if diff:
        text = fmt_ci(row["diff_mean"], row["diff_ci_low"], row["diff_ci_high"], digits, True)
        n = row.get("diff_n", row.get("n"))
    else:
        text = fmt_ci(row["mean"], row["ci_low"], row["ci_high"], digits)
        n = row.get("n")
    return text + undefined_note(row["metric"], n, row.get("n_total"))


def _get(summary: pd.DataFrame, model: str, attribution: str, metric: str) -> pd.Series | None:
    hit = summary[(summary["model"] == model) & (summary["attribution"] == attribution)
                  & (summary["metric"] == metric)]
    return None if hit.empty else hit.iloc[0]


def what_changed(models: pd.DataFrame, summary: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The summary block: one row per attribution method and non-dense model, plus sentences.

    Pruned models come first by sparsity, then the controls, so that every
    agreement and faithfulness figure of a pruned model stands above the
    levels that retraining alone gives. Columns: accuracy change (points),
    compression ratio, mean Spearman agreement and top-k intersection with the
    dense maps, and the paired changes of faithfulness correlation, deletion
    AUC and max-sensitivity (95% CIs).
    """
    dense = models[models["role"] == "dense"].iloc[0]
    sparse = models[models["role"] == "sparse"].sort_values("requested_sparsity", kind="stable")
    controls = models[models["role"] == "control"]
    rows, sentences = [], []
    for attribution in summary["attribution"].unique():
        for _, m in pd.concat([sparse, controls]).iterrows():
            row = {"attribution": attribution, "model": m["model"],
                   "sparsity": f"{m['measured_sparsity']:.3f}",
                   "Δ accuracy (pts)": f"{100 * (m['accuracy'] - dense['accuracy']):+.1f}",
                   "compression": f"{m['compression_ratio']:.1f}x"}
            for metric, label in (("spearman", "Spearman vs dense"),
                                  ("top_k_intersection", "top-k vs dense")):
                s = _get(summary, m["model"], attribution, metric)
                row[label] = fmt_cell(s) if s is not None else "n/a"
            for metric, label in (("faithfulness_correlation", "Δ faithfulness corr."),
                                  ("deletion_auc", "Δ deletion AUC"),
                                  ("max_sensitivity", "Δ max-sensitivity")):
                s = _get(summary, m["model"], attribution, metric)
                row[label] = fmt_cell(s, diff=True) if s is not None else "n/a"
            rows.append(row)
    for _, m in sparse.iterrows():
        sentences.append(_sentence(m, dense, list(summary["attribution"].unique()), summary,
                                   controls["model"].tolist()))
    return pd.DataFrame(rows), sentences


def _place(value: pd.Series, control: pd.Series) -> str:
    """Where a mean with its CI stands against a control's mean."""
    if math.isnan(value["ci_low"]):
        return "no interval (one sample) against"
    if value["ci_high"] < control["mean"]:
        return "below"
    if value["ci_low"] > control["mean"]:
        return "above"
    return "not distinguishable from"


def _fmt_p(p: float) -> str:
    """Holm-adjusted p-value as a report writes it: ``p_Holm < 0.001`` or ``p_Holm = 0.03``."""
    return "p_Holm < 0.001" if p < 0.001 else f"p_Holm = {p:.2g}"


def _sentence(m, dense, attributions, summary, controls) -> str:
    """One bullet per pruned model: accuracy and size, then each method's maps."""
    text = (f"At {100 * m['requested_sparsity']:g}% sparsity ({m['pruning']}, "
            f"compression {m['compression_ratio']:.1f}x), test accuracy is "
            f"{100 * m['accuracy']:.1f}% [{100 * m['accuracy_ci_low']:.1f}, "
            f"{100 * m['accuracy_ci_high']:.1f}] vs {100 * dense['accuracy']:.1f}% dense.")
    for attribution in attributions:
        name = attribution.replace("_", " ").capitalize()
        agree = _get(summary, m["model"], attribution, "spearman")
        if agree is not None:
            text += f" {name} maps keep a mean Spearman agreement of {fmt_cell(agree, digits=2)}"
            ctrl = [(c, s) for c in controls
                    if (s := _get(summary, c, attribution, "spearman")) is not None]
            if ctrl:
                text += " with the dense maps (" + "; ".join(
                    f"{_place(agree, s)} the {c.split(':')[-1]} control, {s['mean']:.2f}"
                    for c, s in ctrl) + ")"
            else:
                text += " with the dense maps"
        else:
            text += f" {name}:"
        changes = []
        for metric in ("faithfulness_correlation", "max_sensitivity"):
            s = _get(summary, m["model"], attribution, metric)
            if s is None or math.isnan(s["diff_mean"]):
                continue
            worse = (s["diff_mean"] < 0) == METRICS[metric].higher_is_better
            significant = s["p_holm"] < 0.05
            verdict = ("no test (one sample)" if math.isnan(s["p_holm"])
                       else f"{'worse' if worse else 'better'}, {_fmt_p(s['p_holm'])}"
                       if significant else f"no clear change, {_fmt_p(s['p_holm'])}")
            changes.append(f"Δ {metric.replace('_', ' ')} {fmt_cell(s, diff=True)} ({verdict})")
        text += ("; " + ", ".join(changes) + "." if changes else ".")
    return text
