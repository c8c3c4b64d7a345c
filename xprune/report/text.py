"""What a report adds for token inputs: heat-map rows for HTML, and the magnitude-vs-random test.

Reads only the run folder's tables (``tokens.csv``, ``results.csv``); computes
no metric. :func:`magnitude_vs_random` puts to the test, on a run's own data,
the finding of Bejjani et al. 2025 ("Explain This, Pruner!"): magnitude
pruning leaves the faithfulness of Integrated Gradients explanations about
unchanged, while random pruning at the same sparsity degrades it.
"""

from __future__ import annotations

import math

import pandas as pd

from ..metrics import METRICS
from ..stats import bootstrap_ci
from .figures import token_colour
from .tables import fmt_cell, fmt_ci

__all__ = ["FAITHFULNESS_FOR_COMPARISON", "magnitude_vs_random", "magnitude_vs_random_text",
           "sparsity_table", "token_heatmap_rows"]

# faithfulness scores the comparison reads, in this order, where the run has them;
# deletion_auc@vs_random takes out confidence shifts (the score minus a random ranking's)
FAITHFULNESS_FOR_COMPARISON = ("comprehensiveness", "sufficiency", "faithfulness_correlation",
                               "deletion_auc@vs_random", "insertion_auc")


def token_heatmap_rows(tokens: pd.DataFrame, attribution: str, models: list[str],
                       samples: list[int] | None = None) -> list[dict]:
    """The heat maps of one method as data for the HTML report: one entry per sentence.

    Each entry is ``{"sample": int, "rows": [{"model": str, "tokens": [{"text": str,
    "colour": "rgba(r, g, b, a)", "value": str}]}]}``, models in the order
    given (dense first), tokens in sentence order, colours as
    :func:`xprune.report.figures.token_colour` (one scale per sentence, as
    the PNG). Texts are left as they are: the template escapes them.
    """
    data = tokens[tokens["attribution"] == attribution]
    models = [m for m in models if m in set(data["model"])]
    samples = sorted(data["sample"].unique()) if samples is None else list(samples)
    out = []
    for sample in samples:
        sentence = data[data["sample"] == sample]
        scale = float(sentence["value"].abs().max()) if len(sentence) else 0.0
        rows = []
        for model in models:
            part = sentence[sentence["model"] == model].sort_values("position")
            cells = []
            for token, value in zip(part["token"], part["value"], strict=True):
                r, g, b, a = token_colour(float(value), scale)
                cells.append({"text": str(token), "value": f"{value:+.4g}",
                              "colour": f"rgba({round(255 * r)}, {round(255 * g)}, "
                                        f"{round(255 * b)}, {a})"})
            rows.append({"model": model, "tokens": cells})
        out.append({"sample": int(sample), "rows": rows})
    return out


def _family(name: str) -> str:
    return name.split("@")[0]


def _worse(diff: float, metric: str) -> bool:
    """Whether a change ``diff`` of ``metric`` is towards less faithful."""
    return (diff < 0) == METRICS[_family(metric)].higher_is_better


def _verdict(mean: float, low: float, high: float, metric: str) -> str:
    """'worse', 'better' or 'unchanged' (the interval holds 0) for a change of ``metric``."""
    if any(isinstance(v, float) and math.isnan(v) for v in (mean, low, high)):
        return "no interval"
    if low <= 0 <= high:
        return "unchanged"
    return "worse" if _worse(mean, metric) else "better"


def magnitude_vs_random(results: pd.DataFrame, *, attribution: str = "integrated_gradients",
                        magnitude: str = "l1_unstructured", random: str = "random_unstructured"
                        ) -> pd.DataFrame:
    """Per sparsity and faithfulness score: the change of magnitude- and random-pruned maps.

    For every sparsity where the run has both a ``magnitude``- and a
    ``random``-pruned model (pruning labels starting with those names) and
    every score of :data:`FAITHFULNESS_FOR_COMPARISON` the run computed for
    ``attribution``: the paired change against the dense model (Δ = pruned -
    dense on the same samples) of each, and the paired difference random -
    magnitude, each a mean with a 95% BCa bootstrap interval over samples,
    and a verdict per change ("unchanged" when the interval holds 0, else
    "worse" / "better" in the score's direction).

    Returns
    -------
    DataFrame
        One row per sparsity and metric: ``sparsity``, ``metric``, ``better``,
        ``delta_magnitude``, ``delta_random``, ``random_minus_magnitude``
        (each ``(mean, low, high)``), their ``verdict_*`` and ``agrees``: True
        where magnitude pruning is not worse and random pruning is worse than
        dense and than magnitude (the finding of Bejjani et al. 2025). Empty
        if the run lacks one of the two methods or the attribution.
    """
    columns = ["sparsity", "metric", "better", "delta_magnitude", "delta_random",
               "random_minus_magnitude", "verdict_magnitude", "verdict_random",
               "verdict_random_vs_magnitude", "agrees"]
    data = results[results["attribution"] == attribution]
    sparse = data[data["role"] == "sparse"].drop_duplicates("model")
    dense = data[data["role"] == "dense"].set_index(["metric", "sample"])["value"]
    rows = []
    for s in sorted(sparse["sparsity"].unique()):
        at = sparse[sparse["sparsity"] == s]
        mag = at.loc[at["pruning"].astype(str).str.startswith(magnitude), "model"]
        rnd = at.loc[at["pruning"].astype(str).str.startswith(random), "model"]
        if mag.empty or rnd.empty:
            continue
        for metric in [m for m in FAITHFULNESS_FOR_COMPARISON if m in set(data["metric"])
                       and _family(m) in METRICS]:
            def values(model: str, metric: str = metric) -> pd.Series:
                part = data[(data["model"] == model) & (data["metric"] == metric)]
                return part.set_index("sample")["value"]

            m_vals, r_vals = values(mag.iloc[0]), values(rnd.iloc[0])
            base = dense.xs(metric, level="metric")
            common = m_vals.index.intersection(r_vals.index).intersection(base.index)
            d_mag = bootstrap_ci((m_vals[common] - base[common]).to_numpy())[:3]
            d_rnd = bootstrap_ci((r_vals[common] - base[common]).to_numpy())[:3]
            d_rm = bootstrap_ci((r_vals[common] - m_vals[common]).to_numpy())[:3]
            v_mag, v_rnd, v_rm = (_verdict(*d, metric) for d in (d_mag, d_rnd, d_rm))
            rows.append({"sparsity": float(s), "metric": metric,
                         "better": "higher" if METRICS[_family(metric)].higher_is_better
                         else "lower",
                         "delta_magnitude": d_mag, "delta_random": d_rnd,
                         "random_minus_magnitude": d_rm, "verdict_magnitude": v_mag,
                         "verdict_random": v_rnd, "verdict_random_vs_magnitude": v_rm,
                         "agrees": v_mag in ("unchanged", "better") and v_rnd == "worse"
                         and v_rm == "worse"})
    return pd.DataFrame(rows, columns=columns)


def magnitude_vs_random_text(comparison: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The comparison as a report table and sentences (empty when there is nothing to compare).

    One sentence per faithfulness score: at how many of the sparsities the
    run agrees with Bejjani et al. 2025, then the per-sparsity table of the
    three paired changes with their intervals.
    """
    if comparison.empty:
        return pd.DataFrame(), []
    table = pd.DataFrame({
        "sparsity": comparison["sparsity"].map("{:g}".format),
        "metric": comparison["metric"], "better": comparison["better"],
        "Δ magnitude vs dense": [f"{fmt_ci(*d, signed=True)} ({v})" for d, v in zip(
            comparison["delta_magnitude"], comparison["verdict_magnitude"], strict=True)],
        "Δ random vs dense": [f"{fmt_ci(*d, signed=True)} ({v})" for d, v in zip(
            comparison["delta_random"], comparison["verdict_random"], strict=True)],
        "random - magnitude": [f"{fmt_ci(*d, signed=True)} ({v})" for d, v in zip(
            comparison["random_minus_magnitude"], comparison["verdict_random_vs_magnitude"],
            strict=True)],
        "agrees with Bejjani et al.": comparison["agrees"].map({True: "yes", False: "no"}),
    })
    sentences = []
    for metric, group in comparison.groupby("metric", sort=False):
        agree = group[group["agrees"]]
        levels = ", ".join(f"{s:g}" for s in group["sparsity"])
        if len(agree) == len(group):
            head = f"agree at every sparsity ({levels})"
        elif agree.empty:
            head = f"do not agree at any sparsity ({levels})"
        else:
            head = (f"agree at sparsity {', '.join(f'{s:g}' for s in agree['sparsity'])} "
                    f"of {levels}")
        top = group.iloc[-1]
        sentences.append(
            f"{metric} of Integrated Gradients: xprune's numbers {head}. At {top['sparsity']:g}, "
            f"magnitude pruning changes it by {fmt_ci(*top['delta_magnitude'], signed=True)} "
            f"({top['verdict_magnitude']}), random pruning by "
            f"{fmt_ci(*top['delta_random'], signed=True)} ({top['verdict_random']}); random "
            f"minus magnitude {fmt_ci(*top['random_minus_magnitude'], signed=True)} "
            f"({top['verdict_random_vs_magnitude']} for random; {top['better']} is better).")
    return table, sentences


# the columns of :func:`sparsity_table`: (metric, paired change vs dense?) where the run has them
SPARSITY_COLUMNS = (("comprehensiveness", True), ("sufficiency", True), ("token_f1", True),
                    ("rationale_auprc", True), ("spearman", False),
                    ("top_k_intersection", False))


def sparsity_table(summary: pd.DataFrame, models: pd.DataFrame, *,
                   attribution: str = "integrated_gradients") -> pd.DataFrame:
    """How plausibility, removal faithfulness and agreement with the dense maps move with
    sparsity, the controls below: one row per non-dense model, for one attribution method.

    Columns: the model's pruning method and sparsity, then for each metric of
    :data:`SPARSITY_COLUMNS` the run computed, the paired change against the
    dense model (plausibility, comprehensiveness, sufficiency) or the mean
    agreement with the dense maps, each with its 95% BCa interval over
    samples (from the run's ``summary.csv``). Empty if the run has no
    plausibility metric (no ground-truth rationale) or not that method.
    """
    data = summary[summary["attribution"] == attribution]
    present = [(m, d) for m, d in SPARSITY_COLUMNS if m in set(data["metric"])]
    if not any(m in ("token_f1", "rationale_auprc") for m, _ in present):
        return pd.DataFrame()
    rank = {"sparse": 0, "control": 1}
    others = models[models["role"].isin(rank)].assign(_r=models["role"].map(rank))
    others = others.sort_values(["_r", "pruning", "requested_sparsity"], kind="stable")
    rows = []
    for _, m in others.iterrows():
        level = m.get("selected_sparsity", m["measured_sparsity"])
        row = {"model": m["model"], "sparsity (pruned layers)": f"{level:.3f}"}
        for metric, diff in present:
            hit = data[(data["model"] == m["model"]) & (data["metric"] == metric)]
            label = f"Δ {metric}" if diff else f"{metric} vs dense"
            row[label] = fmt_cell(hit.iloc[0], diff=diff) if not hit.empty else "n/a"
        rows.append(row)
    return pd.DataFrame(rows)
