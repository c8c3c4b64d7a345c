"""The report's first lines (xprune.report.headline) on hand-made tables: where each pruning
level's agreement stands against the controls, the verdict, and the caveats."""

import math

import pandas as pd
import pytest

from xprune.report.headline import headline, latency_noise, scale_note


def _models(acc_95=0.90):
    rows = [("dense", "dense", "", 0.0, 0.95), ("l1@0.50", "sparse", "l1", 0.5, 0.95),
            ("l1@0.80", "sparse", "l1", 0.8, 0.94), ("l1@0.95", "sparse", "l1", 0.95, acc_95),
            ("control:other-seed", "control", "other-seed", 0.0, 0.95),
            ("control:finetune", "control", "finetune", 0.0, 0.95)]
    return pd.DataFrame([{"model": m, "role": r, "pruning": p, "requested_sparsity": s,
                          "accuracy": a, "accuracy_ci_low": a - 0.02,
                          "accuracy_ci_high": a + 0.02} for m, r, p, s, a in rows])


def _summary():
    # Spearman with the dense maps: mean [ci_low, ci_high]
    agree = {"l1@0.50": (0.97, 0.95, 0.99), "l1@0.80": (0.93, 0.91, 0.95),
             "l1@0.95": (0.40, 0.35, 0.45), "control:other-seed": (0.50, 0.45, 0.55),
             "control:finetune": (0.96, 0.94, 0.98)}
    role = {"control:other-seed": "control", "control:finetune": "control"}
    rows = [{"model": m, "role": role.get(m, "sparse"), "sparsity": 0.0 if m in role else
             float(m.split("@")[1]), "attribution": "integrated_gradients", "metric": "spearman",
             "mean": v[0], "ci_low": v[1], "ci_high": v[2], "diff_mean": math.nan,
             "diff_ci_low": math.nan, "diff_ci_high": math.nan, "p_holm": math.nan}
            for m, v in agree.items()]
    # faithfulness correlation: only the 95% model changes (worse), the others not significantly
    for m, (d, p) in {"l1@0.50": (0.01, 0.6), "l1@0.80": (-0.01, 0.2),
                      "l1@0.95": (-0.20, 0.0001)}.items():
        rows.append({"model": m, "role": "sparse", "sparsity": float(m.split("@")[1]),
                     "attribution": "integrated_gradients", "metric": "faithfulness_correlation",
                     "mean": 0.5 + d, "ci_low": 0.4 + d, "ci_high": 0.6 + d, "diff_mean": d,
                     "diff_ci_low": d - 0.05, "diff_ci_high": d + 0.05, "p_holm": p})
    return pd.DataFrame(rows)


def test_one_sentence_per_level_placed_against_the_controls():
    lines = headline(_models(), _summary())
    assert lines[0] == ("Up to 50% sparsity the IG maps stay as close to the dense maps as a "
                        "fine-tuned copy of the dense model (Spearman 0.97 vs 0.96); at 95% they "
                        "are further from them than a model trained from another seed (0.40 vs "
                        "0.50).")
    assert len(lines) == 4
    # 0.50: CI [0.95, 0.99] reaches the fine-tuned mean 0.96
    assert lines[1].startswith("At 50% sparsity the maps can stand in for the dense model's: "
                               "accuracy 95.0% [93.0, 97.0] vs 95.0% dense; Spearman with the "
                               "dense maps: IG 0.97 [0.95, 0.99], as close as the fine-tuned "
                               "copy (0.96); faithfulness correlation: no clear change.")
    # 0.80: CI [0.91, 0.95] below 0.96, above the other seed's 0.50
    assert "At 80% sparsity the maps moved more than retraining alone moves them" in lines[2]
    assert "between the fine-tuned copy (0.96) and a model from another seed (0.50)" in lines[2]
    # 0.95: CI [0.35, 0.45] below the other seed's 0.50; accuracy CI [0.88, 0.92] below 0.95
    assert lines[3].startswith("At 95% sparsity the maps are further from the dense maps than "
                               "another model's (do not carry conclusions over), and accuracy "
                               "drops: accuracy 90.0% [88.0, 92.0] vs 95.0% dense (lower)")
    assert lines[3].endswith("faithfulness correlation: worse for IG (Δ -0.200 [-0.250, "
                             "-0.150], p_Holm < 0.001).")


def test_an_interval_touching_the_other_seed_mean_is_as_far_as_another_model():
    summary = _summary()
    summary.loc[summary["model"] == "l1@0.95", ["ci_high"]] = 0.50
    lines = headline(_models(acc_95=0.95), summary)
    assert "at 95% they are as far from them as a model trained from another seed" in lines[0]
    assert lines[3].startswith("At 95% sparsity the maps are as different as another model's")


def test_without_controls_no_verdict_is_made():
    summary = _summary()
    summary = summary[~summary["model"].str.startswith("control")]
    models = _models()
    models = models[models["role"] != "control"]
    lines = headline(models, summary)
    assert len(lines) == 3  # no lead without controls
    assert lines[0].startswith("At 50% sparsity no control to judge the maps against: ")


@pytest.mark.parametrize(("metric", "params", "flagged"), [
    ("infidelity", {}, False), ("infidelity", {"normalize": False}, True),
    ("max_sensitivity", {}, False), ("avg_sensitivity", {"relative": False}, True),
    ("effective_complexity", {}, True), ("effective_complexity", {"relative": True}, False),
    ("spearman", {}, False),
])
def test_scale_dependent_metrics_are_flagged(metric, params, flagged):
    assert (scale_note(metric, params) is not None) == flagged


def test_latency_differences_within_the_timer_noise_are_marked():
    timings = pd.DataFrame({"model": ["dense", "a", "b"], "latency_ms": [1.00, 1.04, 1.50],
                            "latency_iqr_ms": [0.05, 0.02, 0.03]})
    assert latency_noise(timings) == {"a": True, "b": False}
    assert latency_noise(timings.drop(columns="latency_iqr_ms")) == {}
