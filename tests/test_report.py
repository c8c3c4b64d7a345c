import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from xprune.report import metric_summary, what_changed
from xprune.stats import bootstrap_ci, holm, mean_ci, paired_test, proportion_ci


def _results():
    rows = []
    values = {"dense": [0.1, 0.2, 0.3, 0.4], "sparse": [0.3, 0.1, 0.6, 0.2],
              "ctrl": [0.1, 0.25, 0.3, 0.5]}
    for model, role in (("dense", "dense"), ("sparse", "sparse"), ("ctrl", "control")):
        for i, v in enumerate(values[model]):
            rows.append({"model": model, "role": role, "pruning": "", "sparsity": 0.0,
                         "attribution": "saliency", "metric": "faithfulness_correlation",
                         "sample": i, "value": v})
            if role != "dense":
                rows.append({"model": model, "role": role, "pruning": "", "sparsity": 0.0,
                             "attribution": "saliency", "metric": "spearman", "sample": i,
                             "value": {"sparse": 0.2, "ctrl": 0.9}[model] + 0.01 * i})
    return pd.DataFrame(rows)


def _bca(values):
    res = stats.bootstrap((np.asarray(values),), np.mean, n_resamples=2000, method="BCa",
                          rng=np.random.default_rng(0))
    return res.confidence_interval.low, res.confidence_interval.high


def test_summary_means_and_paired_differences():
    summary = metric_summary(_results()).set_index(["model", "metric"])
    row = summary.loc[("sparse", "faithfulness_correlation")]
    sparse, dense = np.array([0.3, 0.1, 0.6, 0.2]), np.array([0.1, 0.2, 0.3, 0.4])
    assert row["mean"] == pytest.approx(0.3) and row["n"] == 4
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(_bca(sparse))
    diff = sparse - dense
    assert row["diff_mean"] == pytest.approx(0.05)
    assert (row["diff_ci_low"], row["diff_ci_high"]) == pytest.approx(_bca(diff))
    assert row["p_value"] == pytest.approx(stats.wilcoxon(diff).pvalue)
    # two metrics tested for (sparse, saliency): Holm doubles the smaller p-value
    p_spearman = summary.loc[("sparse", "spearman"), "p_value"]
    assert math.isnan(p_spearman)  # agreement has no dense value to pair with
    assert row["p_holm"] == pytest.approx(row["p_value"])
    assert math.isnan(summary.loc[("dense", "faithfulness_correlation"), "diff_mean"])


def test_bootstrap_interval_is_close_to_t_for_a_large_normal_sample():
    v = np.random.default_rng(1).normal(2.0, 3.0, size=4000)
    mean, low, high, n = bootstrap_ci(v)
    t_low, t_high = stats.t.interval(0.95, n - 1, loc=v.mean(), scale=stats.sem(v))
    assert mean == pytest.approx(v.mean()) and n == 4000
    assert low == pytest.approx(t_low, abs=0.02) and high == pytest.approx(t_high, abs=0.02)
    assert bootstrap_ci(v) == bootstrap_ci(v)  # seeded
    assert bootstrap_ci([0.5, 0.5, 0.5])[:3] == (0.5, 0.5, 0.5)
    assert math.isnan(bootstrap_ci([1.0, math.nan])[1])


def test_holm_and_wilcoxon_hand_computed():
    # sorted p: 0.01, 0.03, 0.04 (m = 3) -> 0.03, 0.06, max(0.06, 0.04) = 0.06
    np.testing.assert_allclose(holm([0.01, 0.04, math.nan, 0.03]),
                               [0.03, 0.06, math.nan, 0.06])
    np.testing.assert_allclose(holm([0.5, 0.9]), [1.0, 1.0])
    # n = 5 positive differences: exact two-sided p = 2 / 2^5
    assert paired_test([0.1, 0.2, 0.3, 0.4, 0.5]) == pytest.approx(2 / 32)
    assert paired_test([0.0, 0.0, 0.0]) == 1.0
    assert math.isnan(paired_test([0.3]))


def test_summary_block_places_agreement_against_the_controls():
    models = pd.DataFrame([
        {"model": "dense", "role": "dense", "pruning": "", "requested_sparsity": 0.0,
         "measured_sparsity": 0.0, "accuracy": 0.97, "accuracy_ci_low": 0.95,
         "accuracy_ci_high": 0.98, "compression_ratio": 1.0},
        {"model": "sparse", "role": "sparse", "pruning": "l1_unstructured",
         "requested_sparsity": 0.9, "measured_sparsity": 0.9, "accuracy": 0.95,
         "accuracy_ci_low": 0.93, "accuracy_ci_high": 0.97, "compression_ratio": 10.0},
        {"model": "ctrl", "role": "control", "pruning": "other-seed", "requested_sparsity": 0.0,
         "measured_sparsity": 0.0, "accuracy": 0.97, "accuracy_ci_low": 0.95,
         "accuracy_ci_high": 0.98, "compression_ratio": 1.0},
    ])
    table, sentences = what_changed(models, metric_summary(_results()))
    assert list(table["model"]) == ["sparse", "ctrl"]  # pruned first, then the controls
    assert table.iloc[0]["Δ accuracy (pts)"] == "-2.0"
    assert table.iloc[0]["compression"] == "10.0x"
    assert sentences == [
        "At 90% sparsity (l1_unstructured, compression 10.0x), test accuracy is 95.0% "
        "[93.0, 97.0] vs 97.0% dense. Saliency maps keep a mean Spearman agreement of "
        "0.21 [0.20, 0.22] with the dense maps (below the ctrl control, 0.92); "
        "Δ faithfulness correlation +0.050 [-0.150, +0.250] (no clear change, p_Holm = 0.88)."]


def test_intervals():
    assert mean_ci([1.0, float("nan"), 3.0]) == pytest.approx(
        (2.0, *stats.t.interval(0.95, 1, loc=2.0, scale=1.0), 2))
    assert mean_ci([0.5, 0.5])[:3] == (0.5, 0.5, 0.5)
    assert math.isnan(mean_ci([1.0])[1])
    p, low, high = proportion_ci(350, 360)
    assert p == pytest.approx(350 / 360)
    # Wilson interval by its formula
    z, n = stats.norm.ppf(0.975), 360
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert (low, high) == pytest.approx((centre - half, centre + half))


def test_intervals_are_clipped_to_the_metric_range():
    rows = [{"model": "sparse", "role": "sparse", "pruning": "", "sparsity": 0.5,
             "attribution": "saliency", "metric": "top_k_intersection", "sample": i, "value": v}
            for i, v in enumerate([1.0, 1.0, 1.0, 0.5])]
    row = metric_summary(pd.DataFrame(rows)).iloc[0]
    assert row["ci_high"] == 1.0 and row["ci_low"] < row["mean"] < 1.0


def test_prediction_split_and_both_correct_subset():
    from xprune.report.tables import prediction_split, subset

    rows = []
    # 4 samples, labels 0..3; dense predicts [0, 1, 2, 0] (sample 3 wrong);
    # sparse predicts [0, 1, 3, 3] (sample 2 differs from dense, sample 3 right)
    labels, dense_pred, sparse_pred = [0, 1, 2, 3], [0, 1, 2, 0], [0, 1, 3, 3]
    for model, role, preds in (("dense", "dense", dense_pred), ("sparse", "sparse", sparse_pred)):
        for i in range(4):
            common = {"model": model, "role": role, "pruning": "", "sparsity": 0.0,
                      "attribution": "saliency", "sample": i, "label": labels[i],
                      "target": dense_pred[i], "prediction": preds[i]}
            rows.append({**common, "metric": "deletion_auc",
                         "value": (0.1 * i if role == "dense" else 0.2 * i)})
            if role == "sparse":
                rows.append({**common, "metric": "spearman", "value": [0.9, 0.8, 0.1, 0.2][i]})
    results = pd.DataFrame(rows)
    both = subset(results, "both_correct")
    assert sorted(both[both["model"] == "sparse"]["sample"].unique()) == [0, 1]
    split = prediction_split(results).iloc[0]
    # agree: samples 0, 1 (sample 3: dense 0, sparse 3); disagree: 2, 3
    assert split["n agree / disagree"] == "2 / 2"
    assert split["Spearman (agree)"].startswith("0.850")
    assert split["Spearman (disagree)"].startswith("0.150")
    # both correct: samples 0 and 1, Δ deletion = 0.0 and 0.1 -> mean 0.05
    assert split["Δ deletion AUC (both correct)"].startswith("+0.050")
    with pytest.raises(ValueError, match="Expected a subset in"):
        subset(results, "correct")


def test_summaries_without_removal_metrics_and_small_subsets():
    """A run that computes neither deletion nor faithfulness still gets its split table; a
    subset of fewer than 10 samples shows its mean and count, not a bootstrap interval."""
    from xprune.report.tables import prediction_split

    rows = []
    for i in range(12):
        for model, role, pred in (("dense", "dense", 0), ("sparse", "sparse", int(i < 3))):
            common = {"model": model, "role": role, "pruning": "", "sparsity": 0.0,
                      "attribution": "saliency", "sample": i, "label": 0, "target": 0,
                      "prediction": pred}
            rows.append({**common, "metric": "gini_index", "value": 0.1 * i})
            if role == "sparse":
                rows.append({**common, "metric": "spearman", "value": 0.05 * i})
    results = pd.DataFrame(rows)
    assert metric_summary(results.iloc[:0]).empty
    split = prediction_split(results).iloc[0]
    assert split["n agree / disagree"] == "9 / 3"
    assert split["Spearman (disagree)"] == "0.050 (n=3)"  # samples 0, 1, 2
    assert split["Δ deletion AUC (both correct)"] == "n/a"


def test_case_021_undefined_scores_are_counted_per_cell_never_averaged_silently():
    """../shared/cases/021-constant-map-nan.md: a cell with undefined (NaN) scores says how many
    of its samples the mean uses and why the others are missing."""
    from xprune.report.render import _metric_tables
    from xprune.report.tables import fmt_cell

    results = _results()
    nan_rows = (results["model"] == "sparse") & (results["metric"] == "spearman") \
        & results["sample"].isin([1, 3])
    results.loc[nan_rows, "value"] = math.nan
    results.loc[(results["model"] == "dense") & (results["sample"] == 0), "value"] = math.nan
    summary = metric_summary(results).set_index(["model", "metric"])
    row = summary.loc[("sparse", "spearman")]
    # the mean of the two defined scores, 0.20 and 0.22
    assert (row["n"], row["n_total"], row["n_undefined"]) == (2, 4, 2)
    assert row["mean"] == pytest.approx(0.21)
    flat = metric_summary(results)
    cell = fmt_cell(flat[(flat["model"] == "sparse") & (flat["metric"] == "spearman")].iloc[0])
    low, high = _bca([0.20, 0.22])
    assert cell == f"0.210 [{low:.3f}, {high:.3f}] (n = 2 of 4; 2 undefined: constant map)"
    # the dense score of sample 0 is undefined: the paired Δ uses the 3 other pairs
    faith = summary.loc[("sparse", "faithfulness_correlation")]
    assert (faith["n"], faith["n_total"], faith["diff_n"]) == (4, 4, 3)
    assert faith["diff_mean"] == pytest.approx(np.mean([0.1 - 0.2, 0.6 - 0.3, 0.2 - 0.4]))
    dense = summary.loc[("dense", "faithfulness_correlation")]
    assert (dense["n"], dense["n_undefined"]) == (3, 1)
    table = _metric_tables(metric_summary(results), ["dense", "sparse", "ctrl"])["saliency"]
    table = table.set_index("metric")
    assert table.loc["spearman", "sparse"].endswith("(n = 2 of 4; 2 undefined: constant map)")
    low, high = _bca([0.90, 0.91, 0.92, 0.93])
    assert table.loc["spearman", "ctrl"] == f"0.915 [{low:.3f}, {high:.3f}]"  # all defined
    assert table.loc["faithfulness_correlation", "dense"].endswith("(n = 3 of 4; 1 undefined)")


def test_case_023_markdown_cells_are_escaped():
    """../shared/cases/023-markdown-cells.md: `|`, HTML and line breaks in a name stay inside
    their cell of report.md, inert."""
    from xprune.report.render import _md_table, md_cell, md_text

    assert md_cell("a|b") == "a\\|b"
    assert md_cell("<script>alert(1)</script>") == "&lt;script>alert(1)&lt;/script>"
    assert md_cell("one\ntwo\r\nthree") == "one<br>two<br>three"
    assert md_cell("a\\|b") == "a\\\\\\|b"  # the user's backslash cannot un-escape the pipe
    assert md_cell("&amp; &#60; x & y") == "&amp;amp; &amp;#60; x & y"
    assert md_text("p < 0.001, <b>bold</b>\nnext") == "p < 0.001, &lt;b>bold&lt;/b> next"
    frame = pd.DataFrame({"feature": ["a|b", "<script>alert(1)</script>", "x\ny"],
                          "de|nse": ["1", "2", "3"]})
    lines = _md_table(frame).splitlines()
    assert len(lines) == 2 + 3  # header, rule, one line per row: no line break got through
    for line in lines:  # every row has exactly 3 unescaped pipes: 2 columns
        assert len([i for i, c in enumerate(line) if c == "|"
                    and (i == 0 or line[i - 1] != "\\")]) == 3, line
    assert "<script" not in "\n".join(lines) and "a\\|b" in lines[2]
    assert "de\\|nse" in lines[0]
