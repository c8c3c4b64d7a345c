"""The answer a report leads with: one sentence per pruning level, and the caveats that stand
beside the numbers they qualify.

Everything here reads the run's tables only (``models.csv``, the summary of
``results.csv``, ``timings.csv``, the resolved config): no metric is computed.
"""

from __future__ import annotations

import math

import pandas as pd

from .tables import fmt_ci

__all__ = ["AGREEMENT_METRICS", "CHANCE_MARGIN", "FAITHFULNESS_METRICS", "agreement_metric",
           "chance_warning", "faithfulness_metric", "headline", "latency_noise", "scale_note"]

# the metrics the headline and the key figure read, in order of preference
AGREEMENT_METRICS = ("spearman", "kendall_tau", "cosine_similarity", "top_k_intersection",
                     "pearson", "ssim")
FAITHFULNESS_METRICS = ("faithfulness_correlation", "deletion_auc@vs_random",
                        "insertion_auc@vs_random", "deletion_auc", "insertion_auc")

FINETUNE, OTHER_SEED = "control:finetune", "control:other-seed"

# a dense model whose test accuracy closes less than this fraction of the gap between chance
# and a perfect score has barely learned
CHANCE_MARGIN = 0.1

def agreement_metric(summary: pd.DataFrame) -> str | None:
    """The agreement metric the headline reads: the first of :data:`AGREEMENT_METRICS` scored."""
    present = set(summary.loc[summary["role"] != "dense", "metric"])
    return next((m for m in AGREEMENT_METRICS if m in present), None)


def faithfulness_metric(summary: pd.DataFrame) -> str | None:
    """The faithfulness metric the headline reads: the first of :data:`FAITHFULNESS_METRICS`."""
    present = set(summary["metric"])
    return next((m for m in FAITHFULNESS_METRICS if m in present), None)


def _row(summary: pd.DataFrame, model: str, attribution: str, metric: str) -> pd.Series | None:
    hit = summary[(summary["model"] == model) & (summary["attribution"] == attribution)
                  & (summary["metric"] == metric)]
    return None if hit.empty else hit.iloc[0]


CONSTANT = 4
"""The standing of maps whose agreement is undefined: constant maps (all zero), of a model
whose output no longer changes with its inputs."""


def _standing(row: pd.Series, finetune: pd.Series | None, other: pd.Series | None) -> int | None:
    """Where the model's mean agreement (with its 95% CI) stands against the controls' means:
    0 as close as the fine-tuned copy, 1 between the two controls, 2 as far as the other-seed
    model, 3 further, :data:`CONSTANT` undefined (every map constant); None without a control
    or an interval."""
    if math.isnan(row["mean"]):
        return CONSTANT
    if finetune is None and other is None or math.isnan(row["ci_low"]):
        return None
    if finetune is not None and row["ci_high"] >= finetune["mean"]:
        return 0
    if other is None:
        return 1
    if row["ci_low"] > other["mean"]:
        return 1
    return 2 if row["ci_high"] >= other["mean"] else 3


def _name(attribution: str) -> str:
    return {"integrated_gradients": "IG"}.get(attribution, attribution.replace("_", " "))


def _pct(sparsity: float) -> str:
    return f"{100 * sparsity:g}%"


def _faithfulness_clause(rows: list[tuple[str, pd.Series]], metric: str) -> str:
    """"faithfulness: no clear change", or the methods whose paired test (Holm-corrected
    p < 0.05) shows a change, with the Δ and its 95% CI."""
    from ..metrics import METRICS

    label = metric.split("@")[0].replace("_", " ") + (" vs random" if "@vs_random" in metric
                                                      else "")
    changed = []
    for method, row in rows:
        p = row.get("p_holm")
        if pd.isna(row.get("diff_mean")) or p is None or math.isnan(p) or p >= 0.05:
            continue
        better = (row["diff_mean"] > 0) == METRICS[metric.split("@")[0]].higher_is_better
        p_text = "p_Holm < 0.001" if p < 0.001 else f"p_Holm = {p:.2g}"
        delta = fmt_ci(row["diff_mean"], row["diff_ci_low"], row["diff_ci_high"], 3, True)
        changed.append(f"{'better' if better else 'worse'} for {_name(method)} "
                       f"(Δ {delta}, {p_text})")
    if not rows:
        return ""
    return f"{label}: " + ("; ".join(changed) if changed else "no clear change")


def _against(where: int | None, ft: pd.Series | None, other: pd.Series | None) -> str:
    """Where the maps stand, in a few words with the controls' means."""
    f = f"the fine-tuned copy ({ft['mean']:.2f})" if ft is not None else ""
    o = f"a model from another seed ({other['mean']:.2f})" if other is not None else ""
    return {None: "no control to compare with",
            0: f"as close as {f}",
            1: f"between {f} and {o}" if f and o else f"further than {f or o}",
            2: f"as far as {o}",
            3: f"further than {o}"}[where]


_VERDICT = {
    0: "{maps} can stand in for the dense model's",
    1: "{maps} moved more than retraining alone moves them",
    2: "{maps} are as different as another model's (do not carry conclusions over)",
    3: "{maps} are further from the dense maps than another model's (do not carry "
       "conclusions over)",
    CONSTANT: "{maps} are constant, so they explain nothing (the model's output no longer "
              "changes with its inputs: check the layers pruned hardest)",
}

NO_CONTROL = ("no control to judge the maps against (turn on `controls.finetune` and "
              "`controls.other_seed`)")


def _level_sentence(m: pd.Series, dense: pd.Series, summary: pd.DataFrame, methods: list[str],
                    agreement: str | None, faithfulness: str | None, several: bool) -> str:
    lower = m["accuracy_ci_high"] < dense["accuracy"]
    accuracy = (f"accuracy {100 * m['accuracy']:.1f}% [{100 * m['accuracy_ci_low']:.1f}, "
                f"{100 * m['accuracy_ci_high']:.1f}] vs {100 * dense['accuracy']:.1f}% dense")
    clauses, standing = [], {}
    for method in methods:
        row = _row(summary, m["model"], method, agreement) if agreement else None
        if row is None:
            continue
        ft = _row(summary, FINETUNE, method, agreement)
        other = _row(summary, OTHER_SEED, method, agreement)
        where = _standing(row, ft, other)
        if where is not None:
            standing[method] = where
        clauses.append(f"{_name(method)} undefined (constant maps)" if where == CONSTANT else
                       f"{_name(method)} {fmt_ci(row['mean'], row['ci_low'], row['ci_high'], 2)}"
                       f", {_against(where, ft, other)}")
    parts = [accuracy + (" (lower)" if lower else "")]
    if clauses:
        parts.append(f"{_name(agreement).capitalize()} with the dense maps: "
                     + "; ".join(clauses))
    if faithfulness:
        rows = [(method, r) for method in methods  # constant maps: no faithfulness claim
                if (r := _row(summary, m["model"], method, faithfulness)) is not None
                and standing.get(method) != CONSTANT]
        clause = _faithfulness_clause(rows, faithfulness)
        if clause:
            parts.append(clause)
    worst = max(standing.values(), default=None)
    if worst is None:
        verdict = NO_CONTROL
    else:  # the worst method's standing; named where the methods stand apart
        named = [_name(k) for k, v in standing.items() if v == worst]
        maps = "the maps" if len(set(standing.values())) == 1 else \
            f"the {' and '.join(named)} maps"
        verdict = _VERDICT[worst].format(maps=maps)
    if lower:
        verdict += ", and accuracy drops"
    level = _pct(m["requested_sparsity"]) + (f" ({m['pruning']})" if several else "")
    return f"At {level} sparsity {verdict}: " + "; ".join(parts) + "."


def _relation(where: int, them: str, metric: str, row: pd.Series, ft: pd.Series | None,
              other: pd.Series | None) -> str:
    """How far a level's maps are from ``them`` against the controls, each number named: the
    level's mean [95% CI] first, then the control's mean it is compared with."""
    value = f"{metric} {fmt_ci(row['mean'], row['ci_low'], row['ci_high'], 2)}"
    o = f"{other['mean']:.2f}" if other is not None else None
    f = f"{ft['mean']:.2f}" if ft is not None else None
    if where == 0:
        return (f"as close to {them} as the maps of a fine-tuned copy of the dense model "
                f"({value} vs {f})")
    if where == 1:
        if f is None:
            return (f"closer to {them} than the maps of a model trained from another seed "
                    f"({value} vs {o})")
        return (f"further from {them} than the fine-tuned copy's maps ({value} vs {f})"
                + (f" but closer than those of a model trained from another seed ({o})"
                   if o else ""))
    if where == CONSTANT:
        return (f"constant, so they explain nothing ({metric} undefined: the model's output "
                f"no longer changes with its inputs)")
    return (f"{'as far from' if where == 2 else 'further from'} {them} "
            f"{'as' if where == 2 else 'than'} the maps of a model trained from another seed "
            f"({value} vs {o})")


def _lead(sparse: pd.DataFrame, summary: pd.DataFrame, method: str, agreement: str) -> str | None:
    """"Up to 80% sparsity the IG maps stay as close to the dense maps as a fine-tuned copy's
    (...); at 95% they are further from them than a model trained from another seed's (...)":
    the highest level that stays as close as the fine-tuned copy, then the first level beyond
    it and, where it stands further, the level furthest from the dense maps."""
    ft = _row(summary, FINETUNE, method, agreement)
    other = _row(summary, OTHER_SEED, method, agreement)
    levels = []
    for _, m in sparse.iterrows():
        row = _row(summary, m["model"], method, agreement)
        if row is not None:
            levels.append((m["requested_sparsity"], row, _standing(row, ft, other)))
    if not levels or any(w is None for _, _, w in levels):
        return None
    name, metric = _name(method), _name(agreement).capitalize()
    close = 0
    while close < len(levels) and levels[close][2] == 0:
        close += 1
    if close:
        s, row, _ = levels[close - 1]
        text = f"Up to {_pct(s)} sparsity the {name} maps stay " + _relation(
            0, "the dense maps", metric, row, ft, other)
        if close == len(levels):
            return text + ", at every level tested."
        rest, them = levels[close:], "them"
        text += f"; at {_pct(rest[0][0])} they are "
    else:
        rest, them = levels, "the dense maps"
        text = f"Already at {_pct(rest[0][0])} sparsity the {name} maps are "
    first = rest[0]
    text += _relation(first[2], them, metric, first[1], ft, other)
    worst = max(rest, key=lambda lv: (lv[2], -lv[1]["mean"] if lv[2] != CONSTANT else 0))
    if worst is not first and worst[2] == first[2] and worst[2] != CONSTANT:
        row = worst[1]
        text += (f"; at {_pct(worst[0])} further still ({metric} "
                 f"{fmt_ci(row['mean'], row['ci_low'], row['ci_high'], 2)})")
    elif worst is not first:
        text += f"; at {_pct(worst[0])} they are " + _relation(worst[2], "them", metric,
                                                               worst[1], ft, other)
    return text + "."


def chance_warning(models: pd.DataFrame) -> str | None:
    """A warning when the dense model's test accuracy is near chance, or None.

    Chance is ``models["chance_accuracy"]`` of the dense row: the accuracy of
    always predicting the test split's most frequent class (at least
    1/n_classes). "Near" means closing less than :data:`CHANCE_MARGIN` (10%) of the
    gap between chance and 100%: on imbalanced data (95% of one class) a model that is
    right 96% of the time is near chance, one right 99.9% is not. The maps of a model that has not learned the task
    explain little, and so does how pruning changes them. None where the
    table has no ``chance_accuracy`` column (runs written before it).
    """
    dense = models[models["role"] == "dense"]
    if "chance_accuracy" not in models or dense.empty:
        return None
    accuracy, chance = float(dense["accuracy"].iloc[0]), float(dense["chance_accuracy"].iloc[0])
    if not accuracy < chance + CHANCE_MARGIN * (1.0 - chance):
        return None
    return (f"The dense model is barely trained: its test accuracy "
            f"{100 * accuracy:.1f}% closes less than {100 * CHANCE_MARGIN:.0f}% of the gap "
            f"between chance ({100 * chance:.1f}%, always predicting the most frequent class) "
            f"and 100%, so its maps, "
            f"and how pruning changes them, mean little. Train it longer (`train.epochs`) or "
            f"check the data and labels.")


def headline(models: pd.DataFrame, summary: pd.DataFrame) -> list[str]:
    """The report's first lines: a lead sentence per attribution method, then one sentence
    per pruned model (pruning level), each with a verdict a reader can act on.

    A pruned model's agreement with the dense maps (the first of
    :data:`AGREEMENT_METRICS` scored: its mean with the 95% CI) is placed
    against the two controls' means: a fine-tuned copy of the dense model (how
    far retraining alone moves the maps) and a model trained from another seed
    (how far another model's maps are). "As close as" means the interval
    reaches the control's mean. Faithfulness (the first of
    :data:`FAITHFULNESS_METRICS`) is "unchanged" unless the paired test against
    the dense model gives Holm-corrected p < 0.05. Accuracy is "lower" when its
    95% Wilson interval lies below the dense accuracy.

    Returns
    -------
    list of str
        "Warning: " and the :func:`chance_warning` if the dense model's
        accuracy is near chance, lead sentences (one per method with an agreement metric and
        controls), then one sentence per sparse model in order of sparsity.
    """
    dense = models[models["role"] == "dense"].iloc[0]
    sparse = models[models["role"] == "sparse"].sort_values(["pruning", "requested_sparsity"],
                                                            kind="stable")
    methods = list(dict.fromkeys(summary["attribution"]))
    agreement, faithfulness = agreement_metric(summary), faithfulness_metric(summary)
    several = sparse["pruning"].nunique() > 1
    barely = chance_warning(models)
    out = [f"Warning: {barely}"] if barely else []
    if agreement and not several and len(sparse) > 1:
        out += [s for s in (_lead(sparse, summary, m, agreement) for m in methods) if s]
    out += [_level_sentence(m, dense, summary, methods, agreement, faithfulness, several)
            for _, m in sparse.iterrows()]
    return out


def scale_note(metric: str, params: dict) -> str | None:
    """Why ``metric`` (with these parameters) depends on the scale of the maps, or None.

    A map multiplied by a constant explains the same ranking; a metric that
    changes under that scaling can "improve" because a pruned model's maps are
    smaller overall (Yeh et al. 2019 for infidelity; the relative form of
    max-sensitivity divides by the map's norm).
    """
    base = metric.split("@")[0]
    if base == "infidelity" and not params.get("normalize", True):
        return ("scales with the square of the maps' size: smaller maps score lower (better) "
                "without being more faithful; use normalize=true (the default) to compare models")
    if base in ("max_sensitivity", "avg_sensitivity") and not params.get("relative", True):
        return ("absolute change of the map: scales with the maps' size, so smaller maps score "
                "lower (better); relative=true (the default) divides by the map's norm")
    if base == "effective_complexity" and not params.get("relative", False):
        return ("counts features above an absolute threshold eps: depends on the maps' size; "
                "relative=true compares with each map's largest value")
    return None


def latency_noise(timings: pd.DataFrame, dense: str = "dense") -> dict[str, bool]:
    """Per model: True where its median latency differs from the dense model's by less than
    the timer's noise (the larger interquartile range of the two measurements).

    Runs written before ``latency_iqr_ms`` was recorded give an empty dict.
    """
    if "latency_iqr_ms" not in timings or dense not in set(timings["model"]):
        return {}
    ref = timings.set_index("model").loc[dense]
    out = {}
    for _, t in timings.iterrows():
        if t["model"] == dense:
            continue
        noise = max(t["latency_iqr_ms"], ref["latency_iqr_ms"])
        out[t["model"]] = bool(abs(t["latency_ms"] - ref["latency_ms"]) <= noise)
    return out
