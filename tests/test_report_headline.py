"""The report's first lines (xprune.report.headline) on hand-made tables: where each pruning
level's agreement stands against the controls, the verdict, and the caveats."""

import math
import re

import pandas as pd
import pytest

from xprune.report.headline import chance_warning, headline, latency_noise, scale_note


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
    assert lines[0] == ("Up to 50% sparsity the IG maps stay as close to the dense maps as the "
                        "maps of a fine-tuned copy of the dense model (Spearman 0.97 [0.95, "
                        "0.99] vs 0.96); at 80% they are further from them than the fine-tuned "
                        "copy's maps (Spearman 0.93 [0.91, 0.95] vs 0.96) but closer than those "
                        "of a model trained from another seed (0.50); at 95% they are further "
                        "from them than the maps of a model trained from another seed (Spearman "
                        "0.40 [0.35, 0.45] vs 0.50).")
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
    assert "at 95% they are as far from them as the maps of a model trained from another " \
           "seed (Spearman 0.40 [0.35, 0.50] vs 0.50)" in lines[0]
    assert lines[3].startswith("At 95% sparsity the maps are as different as another model's")


def test_without_controls_no_verdict_is_made():
    summary = _summary()
    summary = summary[~summary["model"].str.startswith("control")]
    models = _models()
    models = models[models["role"] != "control"]
    lines = headline(models, summary)
    assert len(lines) == 3  # no lead without controls
    assert lines[0].startswith("At 50% sparsity no control to judge the maps against (turn on "
                               "`controls.finetune` and `controls.other_seed`): ")


def test_constant_maps_are_named_not_compared():
    """A pruned model whose maps are all zero (its output no longer changes with its inputs):
    agreement is undefined (NaN), so no standing against the controls and no faithfulness
    claim; the sentence says the maps are constant and where to look."""
    summary = _summary()
    nan = summary["model"] == "l1@0.95"
    summary.loc[nan & (summary["metric"] == "spearman"), ["mean", "ci_low", "ci_high"]] = math.nan
    lines = headline(_models(acc_95=0.95), summary)
    assert lines[0].endswith("; at 95% they are constant, so they explain nothing (Spearman "
                             "undefined: the model's output no longer changes with its inputs).")
    assert lines[3] == ("At 95% sparsity the maps are constant, so they explain nothing (the "
                        "model's output no longer changes with its inputs: check the layers "
                        "pruned hardest): accuracy 95.0% [93.0, 97.0] vs 95.0% dense; Spearman "
                        "with the dense maps: IG undefined (constant maps).")


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


# ---------------------------------------------------------------- real runs of every kind

KINDS = ("digits", "breast_cancer", "text", "vowels")  # images, table rows, tokens, speech


@pytest.fixture(scope="module", params=KINDS)
def kind_run(request, tmp_path_factory):
    """A tiny run of each kind of data: two sparsities, both controls, saliency maps scored
    for agreement (Spearman) and faithfulness (deletion AUC)."""
    from conftest import TINY

    from xprune.analysis import run_analysis
    from xprune.config import AnalysisConfig
    from xprune.report import metric_summary

    config = AnalysisConfig.from_dict({
        **TINY, "name": request.param, "data": {"dataset": request.param},
        "train": {"epochs": 1}, "pruning": {"sparsities": [0.5, 0.9], "finetune_epochs": 1},
        "metrics": {"names": ["spearman", "deletion_auc"], "versus_random": []}})
    run = run_analysis(config, out_dir=tmp_path_factory.mktemp(request.param), progress=False,
                       use_cache=False, render=False)
    return run.models, metric_summary(run.results)


def _numbers(text: str) -> list[str]:
    return re.findall(r"[-+]?\d+(?:\.\d+)?%?", text.replace("p_Holm", ""))


def test_the_headline_of_every_kind_of_run_quotes_its_tables(kind_run):
    """Each number of each sentence is one of the tables' numbers as the report prints it
    (accuracy in % with its Wilson interval, agreement means and intervals with 2 decimals,
    the controls' means, faithfulness deltas), and each level's sentence quotes its own
    accuracy and agreement: nothing is written that the tables do not hold."""
    models, summary = kind_run
    lines = headline(models, summary)
    barely = chance_warning(models)  # a 1-epoch model can be at chance (the text run is)
    if barely:
        assert lines[0] == f"Warning: {barely}"
        lines = lines[1:]
    sparse = models[models["role"] == "sparse"].sort_values("requested_sparsity")
    dense = models[models["role"] == "dense"].iloc[0]
    assert len(lines) == 1 + len(sparse)  # a lead (one method), then one per level
    quoted = {f"{100 * s:g}%" for s in sparse["requested_sparsity"]}
    quoted |= {f"{100 * dense['accuracy']:.1f}%"}
    for _, m in sparse.iterrows():
        quoted |= {f"{100 * m['accuracy']:.1f}%", f"{100 * m['accuracy_ci_low']:.1f}",
                   f"{100 * m['accuracy_ci_high']:.1f}"}
    for _, r in summary.iterrows():
        quoted |= {f"{r[c]:.2f}" for c in ("mean", "ci_low", "ci_high")}
        if not math.isnan(r["diff_mean"]):
            quoted |= {f"{r[c]:+.3f}" for c in ("diff_mean", "diff_ci_low", "diff_ci_high")}
            quoted |= {f"{r['p_holm']:.2g}", "0.001"}
    for line in lines:
        stray = [n for n in _numbers(line) if n not in quoted]
        assert not stray, (stray, line)
    agreement = summary[summary["metric"] == "spearman"].set_index("model")
    for line, (_, m) in zip(lines[1:], sparse.iterrows(), strict=True):
        own = agreement.loc[m["model"]]
        assert line.startswith(f"At {100 * m['requested_sparsity']:g}% sparsity ")
        assert (f"accuracy {100 * m['accuracy']:.1f}% [{100 * m['accuracy_ci_low']:.1f}, "
                f"{100 * m['accuracy_ci_high']:.1f}] vs {100 * dense['accuracy']:.1f}% dense"
                in line)
        if math.isnan(own["mean"]):  # a model whose maps are all zero: nothing is claimed
            assert "maps are constant, so they explain nothing" in line
            assert "saliency undefined (constant maps)" in line and "deletion auc" not in line
            continue
        assert (f"saliency {own['mean']:.2f} [{own['ci_low']:.2f}, {own['ci_high']:.2f}]"
                in line)
        assert "deletion auc: " in line
    assert "saliency maps" in lines[0] and "IG" not in " ".join(lines)


# ---------------------------------------------------------------- a dense model near chance

def test_a_dense_model_near_chance_leads_the_headline_with_a_warning():
    """Dense accuracy closing less than CHANCE_MARGIN (10%) of the gap between chance (the
    majority-class rate) and 100%: a warning first; further above it, or a table without
    chance_accuracy: none. On imbalanced data a near-perfect model is not near chance."""
    from xprune.report.headline import CHANCE_MARGIN

    assert CHANCE_MARGIN == 0.1
    near = _models().assign(chance_accuracy=0.945)   # dense 0.95 < 0.945 + 0.1 * 0.055
    lines = headline(near, _summary())
    assert lines[0] == "Warning: " + chance_warning(near) == (
        "Warning: The dense model is barely trained: its test accuracy 95.0% closes less than "
        "10% of the gap between chance (94.5%, always predicting the most frequent class) and "
        "100%, so its maps, and how pruning changes them, mean little. Train it longer "
        "(`train.epochs`) or check the data and labels.")
    assert lines[1:] == headline(_models(), _summary())
    assert chance_warning(_models().assign(chance_accuracy=0.94)) is None   # 0.95 > 0.94 + 0.006
    assert chance_warning(_models()) is None
    perfect = _models().assign(accuracy=1.0, chance_accuracy=0.97)          # a review's case
    assert chance_warning(perfect) is None


def test_a_study_of_an_untrained_model_warns_and_says_so_first():
    """Labels independent of the inputs: no model beats chance. The run warns (a Python warning)
    and the headline leads with it; chance is the test split's majority-class rate."""
    import torch
    from torch import nn

    import xprune

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=gen)
    y = (torch.rand(200, generator=gen) < 0.7).long()   # about 70% class 1, unrelated to x
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    config = {"pruning": {"sparsities": [0.5], "finetune_epochs": 0},
              "controls": {"other_seed": False, "finetune": False},
              "attribution": {"n_samples": 4, "methods": ["saliency"]},
              "metrics": {"names": ["gini_index"], "versus_random": []},
              "report": {"latency_batch": 4}}
    with pytest.warns(UserWarning, match="^The dense model is barely trained"):
        study = xprune.study(model, (x, y), config=config, progress=False)
    dense = study.models[study.models["role"] == "dense"].iloc[0]
    assert "chance_accuracy" in pd.read_csv(study.out / "models.csv")  # what the report reads
    split = xprune.data.as_split((x, y), seed=0)
    counts = torch.bincount(split.y_test, minlength=2)
    assert dense["chance_accuracy"] == pytest.approx(float(counts.max()) / len(split.y_test))
    assert study.headline[0].startswith("Warning: The dense model is barely trained")
