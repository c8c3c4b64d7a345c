"""Tables a report shows, derived from the run folder's long results only."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..metrics import METRICS
from ..stats import bootstrap_ci, holm, paired_test

__all__ = ["fmt_ci", "metric_summary", "model_order", "plural", "prediction_split",
           "what_changed"]

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
    """
    columns = [*GROUP, "n", "mean", "ci_low", "ci_high", "diff_mean", "diff_ci_low",
               "diff_ci_high", "p_value", "p_holm"]
    if results.empty:
        return pd.DataFrame(columns=columns)
    dense = results[results["role"] == "dense"].set_index(["attribution", "metric", "sample"])
    rows = []
    for key, group in results.groupby(GROUP, sort=False):
        mean, lo, hi, n = bootstrap_ci(group["value"].to_numpy())
        if key[5] in METRICS:  # keep intervals inside the metric's attainable range
            low_bound, high_bound = METRICS[key[5]].range
            lo, hi = max(lo, low_bound), min(hi, high_bound)
        row = dict(zip(GROUP, key, strict=True)) | {"n": n, "mean": mean, "ci_low": lo,
                                                    "ci_high": hi}
        idx = pd.MultiIndex.from_arrays([group["attribution"], group["metric"], group["sample"]])
        if key[1] != "dense" and idx.isin(dense.index).all():
            diff = group["value"].to_numpy() - dense.loc[idx, "value"].to_numpy()
            d_mean, d_lo, d_hi, _ = bootstrap_ci(diff)
            row |= {"diff_mean": d_mean, "diff_ci_low": d_lo, "diff_ci_high": d_hi,
                    "p_value": paired_test(diff)}
        rows.append(row)
    out = pd.DataFrame(rows)
    for col in ("diff_mean", "diff_ci_low", "diff_ci_high", "p_value"):
        if col not in out:
            out[col] = np.nan
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
                row[label] = fmt_ci(*_triple(s)) if s is not None else "n/a"
            for metric, label in (("faithfulness_correlation", "Δ faithfulness corr."),
                                  ("deletion_auc", "Δ deletion AUC"),
                                  ("max_sensitivity", "Δ max-sensitivity")):
                s = _get(summary, m["model"], attribution, metric)
                row[label] = fmt_ci(s["diff_mean"], s["diff_ci_low"], s["diff_ci_high"],
                                    signed=True) if s is not None else "n/a"
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


def _triple(s: pd.Series) -> tuple[float, float, float]:
    return s["mean"], s["ci_low"], s["ci_high"]


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
            text += f" {name} maps keep a mean Spearman agreement of {fmt_ci(*_triple(agree), 2)}"
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
            changes.append(f"Δ {metric.replace('_', ' ')} "
                           f"{fmt_ci(s['diff_mean'], s['diff_ci_low'], s['diff_ci_high'], 3, True)}"
                           f" ({verdict})")
        text += ("; " + ", ".join(changes) + "." if changes else ".")
    return text
