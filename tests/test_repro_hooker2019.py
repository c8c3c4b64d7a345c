"""The Hooker et al. 2019 PIE reproduction: the smoke run, the PIE rule and the comparisons."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

import xprune.reproductions.hooker2019 as hk  # registers the reproduction
from xprune.data import load_digits_split
from xprune.reproductions import run_reproduction, torch_threads
from xprune.stats import holm

SMOKE = Path(__file__).resolve().parents[1] / "analyses" / "smoke" / "repro-hooker2019-pies.toml"
CSVS = ("samples", "pies", "accuracy", "pooled", "comparisons", "models")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("hooker2019")
    run_reproduction(SMOKE, out_dir=out, progress=False)
    return out


# --------------------------------------------------------------------------- the smoke run


def test_smoke_report_has_the_side_by_side_table(smoke_run):
    md = (smoke_run / "report.md").read_text()
    html = (smoke_run / "report.html").read_text()
    assert "## Paper beside ours" in md
    assert "The paper's claims beside ours" in md and "The paper&#39;s claims beside ours" in html
    # the paper's claims are quoted with their sources, and our numbers sit beside them
    assert "Removing PIE images from the test-set greatly improves top-1 accuracy" in md
    assert "narrow subset of the dataset" in md and "Abstract, arXiv 1911.05248v3" in md
    assert "Series.mode().max()" in md
    per_t = pd.read_csv(smoke_run / "tables" /
                        "01-2-pies-per-sparsity-share-and-top-1-accuracy-on-pies-vs-non-pi.csv")
    assert list(per_t["sparsity"].astype(str)) == ["0.5", "0.9"]
    assert per_t["ours: PIE share [95% CI]"].str.match(r"\d+\.\d \[\d+\.\d, \d+\.\d\]%").all()
    for name in CSVS:
        assert (smoke_run / f"{name}.csv").is_file()
    assert len(list((smoke_run / "figures").glob("*.png"))) >= 4


def test_smoke_report_wording_for_a_general_reader(smoke_run):
    md = (smoke_run / "report.md").read_text()
    for phrase in ("stored", "could search", "could be searched", "not checked against",
                   "30 per pruning level", "main job", "not readable"):
        assert phrase not in md, phrase
    assert "No numbers from the paper's tables are reproduced here" in md
    assert "quoted from the paper, Abstract" in md
    # the Saliency variant is named wherever a method is named
    assert "Saliency (absolute gradient)" in md and "| saliency " not in md
    assert "not adjusted for multiple comparisons" in md and "[95% CI, unadjusted]" in md
    findings = md.split("## Findings")[1].split("## Setup")[0]
    assert "PIEs' maps do not agree less" not in findings
    assert "Holm" in findings


def test_smoke_holm_family_is_the_valid_comparisons(smoke_run):
    c = pd.read_csv(smoke_run / "comparisons.csv", dtype={"excluded": str})
    c["excluded"] = c["excluded"].fillna("")
    valid = (c["excluded"] == "") & c["p"].notna()
    assert set(c["subset"]) == {"all", "agree", "strata"}
    assert c.loc[c["subset"] == "strata", "p"].notna().all()  # van Elteren p in the family
    np.testing.assert_allclose(c.loc[valid, "p_holm"], holm(c.loc[valid, "p"].to_numpy()))
    assert c.loc[~valid, "p_holm"].isna().all()


def test_smoke_numbers_are_consistent(smoke_run):
    samples = pd.read_csv(smoke_run / "samples.csv")
    pies = pd.read_csv(smoke_run / "pies.csv")
    acc = pd.read_csv(smoke_run / "accuracy.csv")
    assert len(pies) == 2 * 360 and len(samples) == 2 * 2 * 2 * 360  # seeds x t x methods x N
    # the PIE flags follow the rule, recomputed here from the per-seed predictions
    first = samples[samples["method"] == "integrated_gradients"]
    for t in (0.5, 0.9):
        at = first[first["sparsity"] == t]
        dense = at.pivot(index="seed", columns="sample", values="dense_pred").to_numpy()
        pruned = at.pivot(index="seed", columns="sample", values="pruned_pred").to_numpy()
        flags = pies[pies["sparsity"] == t].sort_values("sample")["pie"].to_numpy()
        np.testing.assert_array_equal(flags, hk.pie_mask(dense, pruned, 10))
        row = acc[acc["sparsity"] == t].iloc[0]
        assert row["n_pie"] == flags.sum()
        assert row["share_low"] <= row["share"] <= row["share_high"]
    # dense accuracy on PIEs + non-PIEs recombines to the dense test accuracy
    models = pd.read_csv(smoke_run / "models.csv")
    at = pies[pies["sparsity"] == 0.9]
    assert at["dense_accuracy"].mean() == pytest.approx(
        models.loc[models["sparsity"] == 0, "test_accuracy"].mean())


def test_rerun_reuses_the_cache_and_gives_identical_csvs(smoke_run):
    before = {name: (smoke_run / f"{name}.csv").read_bytes() for name in CSVS}
    cache = smoke_run / ".cache"
    stored = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
    assert any(p.suffix == ".safetensors" for p in stored)
    run_reproduction(SMOKE, out_dir=smoke_run, progress=False)
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()} == stored
    for name in CSVS:
        assert (smoke_run / f"{name}.csv").read_bytes() == before[name], name


def test_same_seed_same_numbers_without_cache(smoke_run, tmp_path):
    run_reproduction(SMOKE, out_dir=tmp_path, progress=False, use_cache=False)
    for name in ("pies", "accuracy", "comparisons"):
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / f"{name}.csv"),
                                      pd.read_csv(smoke_run / f"{name}.csv"))


# --------------------------------------------------------------------------- the PIE rule


def test_modal_labels_by_hand_with_ties_to_the_largest_label():
    predictions = np.array([[1, 2, 3, 0, 7],
                            [1, 3, 3, 1, 7],
                            [2, 2, 4, 2, 5]])
    # columns: 1,1,2 -> 1; 2,3,2 -> 2; 3,3,4 -> 3; 0,1,2 three-way tie -> 2; 7,7,5 -> 7
    np.testing.assert_array_equal(hk.modal_labels(predictions, 10), [1, 2, 3, 2, 7])
    np.testing.assert_array_equal(hk.modal_labels(np.array([[1, 4], [4, 1]])), [4, 4])


def test_modal_labels_match_the_authors_pandas_rule():
    rng = np.random.default_rng(0)
    predictions = rng.integers(0, 4, size=(4, 300))  # 4 models: many ties
    expected = [pd.Series(predictions[:, i]).mode().max() for i in range(300)]
    np.testing.assert_array_equal(hk.modal_labels(predictions, 4), expected)


def test_pie_mask_by_hand():
    dense = np.array([[1, 1, 0], [1, 2, 0]])    # modal: 1, tie 1/2 -> 2, 0
    pruned = np.array([[2, 1, 0], [2, 2, 3]])   # modal: 2, tie 1/2 -> 2, tie 0/3 -> 3
    np.testing.assert_array_equal(hk.pie_mask(dense, pruned), [True, False, True])
    assert not hk.pie_mask(dense, dense).any()


def test_pie_rule_errors():
    with pytest.raises(ValueError, match=r"Expected `predictions` to be a non-empty"):
        hk.modal_labels(np.array([1, 2, 3]))
    with pytest.raises(ValueError, match=r"Expected `predictions` to be a non-empty"):
        hk.modal_labels(np.array([[0.5, 1.0]]))
    with pytest.raises(ValueError, match=r"Expected dense and pruned predictions"):
        hk.pie_mask(np.zeros((2, 3), int), np.zeros((2, 4), int))


# --------------------------------------------------------------------------- the models


def test_pruning_leaves_the_dense_model_unchanged():
    data = load_digits_split(seed=0)
    params = hk.Params(n_seeds=2, sparsities=(0.9,), epochs=1, finetune_epochs=1)
    with torch_threads(1):
        dense = hk.train_dense(data, params, seed=3, device="cpu")
        before = {k: v.clone() for k, v in dense.state_dict().items()}
        sparse = hk.prune_and_fine_tune(dense, 0.9, data, params, seed=3, device="cpu")
    for k, v in dense.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not any(hasattr(m, "weight_mask") for m in dense.modules())
    weights = [m.weight for m in sparse.modules() if isinstance(m, (torch.nn.Conv2d,
                                                                     torch.nn.Linear))]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert zeros == pytest.approx(0.9, abs=1e-4)


# --------------------------------------------------------------------------- the comparisons


def test_seed_pooled_against_a_literal_loop():
    rng = np.random.default_rng(2)
    frame = pd.DataFrame({"seed": np.repeat([0, 1, 2], 5), "sample": np.tile(np.arange(5), 3),
                          "v": rng.normal(size=15), "agree": rng.random(15) < 0.6})
    frame.loc[4, "v"] = np.nan
    for where in (None, "agree"):
        pooled = hk.seed_pooled(frame, "v", where=where)
        for sample in range(5):
            vals = [r.v for r in frame.itertuples()
                    if r.sample == sample and np.isfinite(r.v) and (where is None or r.agree)]
            if vals:
                assert pooled[sample] == pytest.approx(sum(vals) / len(vals))
            else:
                assert sample not in pooled.index


def test_comparisons_leave_collapsed_and_small_cells_out_of_the_holm_family():
    from xprune.reproductions import Context

    rng = np.random.default_rng(7)
    frames = []
    for t, n_pie in ((0.5, 20), (0.9, 3), (0.99, 40)):
        for subset in ("all", "agree"):
            frames.append(pd.DataFrame({
                "sparsity": t, "method": "saliency", "metric": "spearman", "subset": subset,
                "sample": np.arange(100), "value": rng.normal(size=100),
                "pie": np.arange(100) < n_pie, "dense_margin": rng.random(100)}))
    params = hk.Params(methods=("saliency",), n_bootstrap=100, margin_strata=2)
    context = Context(out_dir=Path("."), seed=0, device="cpu", cache=None, progress=False)
    c = hk._comparisons(pd.concat(frames, ignore_index=True), params, context, [0.99])
    assert len(c) == 9 and c["p"].notna().all()
    ok = c["sparsity"] == 0.5
    assert (c.loc[ok, "excluded"] == "").all()
    assert set(c.loc[c["sparsity"] == 0.9, "excluded"]) == {"3 PIEs, fewer than 5"}
    assert set(c.loc[c["sparsity"] == 0.99, "excluded"]) == {"models collapsed"}
    np.testing.assert_allclose(c.loc[ok, "p_holm"], holm(c.loc[ok, "p"].to_numpy()))
    assert c.loc[~ok, "p_holm"].isna().all()


def _fake_comparisons(rows) -> pd.DataFrame:
    """Comparisons frame from (sparsity, method, subset, diff, n_pie, p) tuples."""
    out = pd.DataFrame([{"sparsity": t, "method": m, "metric": "spearman", "subset": sub,
                         "diff": d, "ci_low": d - 0.01, "ci_high": d + 0.01, "n_pie": n,
                         "n_rest": 300, "p": p} for t, m, sub, d, n, p in rows])
    out["excluded"] = [hk._exclusion(t, n, [0.99]) for t, n in zip(out["sparsity"],
                                                                   out["n_pie"], strict=True)]
    out["p_holm"] = holm(np.where(out["excluded"] == "", out["p"], np.nan))
    return out


def test_attribution_summary_counts_only_valid_cells_with_one_correction():
    params = hk.Params(methods=("integrated_gradients",))
    rows = [(0.7, "integrated_gradients", sub, -0.2, 1, 1e-9) for sub in ("all", "agree",
                                                                         "strata")]
    rows += [(0.99, "integrated_gradients", sub, -0.2, 300, 1e-9)
             for sub in ("all", "agree", "strata")]
    rows += [(0.96, "integrated_gradients", "all", +0.04, 18, 1e-6),
             (0.96, "integrated_gradients", "agree", +0.01, 12, 0.3),
             (0.96, "integrated_gradients", "strata", +0.03, 18, 1e-5),
             (0.97, "integrated_gradients", "all", +0.01, 64, 0.2),
             (0.97, "integrated_gradients", "agree", +0.01, 4, 1e-9),
             (0.97, "integrated_gradients", "strata", +0.02, 64, 0.04)]
    c = _fake_comparisons(rows)
    text = hk._attribution_summary(c, params)
    # 0.7 (1 PIE), 0.99 (collapsed) and 0.97 'agree' (4 PIEs) are left out despite tiny p
    assert "no evidence that PIEs' maps agree less" in text
    assert "where a difference is detected, PIEs agree more (2 of 5 comparisons)" in text
    assert "all samples lower in 0, higher in 1, undecided in 1 of 2" in text
    assert "both models predict the explained class lower in 0, higher in 0, undecided in 1 " \
           "of 1" in text
    assert "within dense-margin strata lower in 0, higher in 1, undecided in 1 of 2" in text
    assert "Holm family over the run's 5 valid tests" in text and "0.99" not in text
    lines = hk._attribution_findings(c, params)
    assert "not counted: 0.7 (1 PIE, fewer than 5), 0.99 (models collapsed)" in lines[0]
    assert "[-0.21" not in lines[0]  # no interval for the excluded cells
    assert "higher at 1 and undecided at 1 of 2 sparsities" in lines[0]
    assert hk._cell(c.iloc[0]) == "-0.200 (not tested: 1 PIE, fewer than 5)"


def test_attribution_summary_wording_when_pies_agree_less_or_nothing_is_detected():
    params = hk.Params(methods=("saliency",))
    lower = _fake_comparisons([(0.96, "saliency", sub, -0.05, 20, 1e-6)
                               for sub in ("all", "agree", "strata")])
    text = hk._attribution_summary(lower, params)
    assert "PIEs' maps agree less between the dense and the pruned model than the rest's " \
           "in 3 of 3 comparisons, including under at least one control" in text
    none = _fake_comparisons([(0.96, "saliency", sub, -0.05, 20, 0.5)
                              for sub in ("all", "agree", "strata")])
    assert "all 3 comparisons are undecided" in hk._attribution_summary(none, params)
    few = _fake_comparisons([(0.96, "saliency", sub, -0.05, 3, 1e-9)
                             for sub in ("all", "agree", "strata")])
    assert "nothing to stand on" in hk._attribution_summary(few, params)


def test_saliency_is_the_absolute_gradient():
    assert hk._method_params("saliency", hk.Params()) == {"abs": True}
    assert hk.METHOD_LABELS["saliency"] == "Saliency (absolute gradient)"


def test_attribution_changes_against_literal_computations():
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(6, 1, 8, 8, generator=gen) > 0.5).double()
    a = torch.randn(6, 1, 8, 8, generator=gen, dtype=torch.float64) * x
    b = a + 0.5 * torch.randn(6, 1, 8, 8, generator=gen, dtype=torch.float64)
    out = hk.attribution_changes(a, b, x, k=6)
    for i in range(6):
        ai, bi, fg = a[i].flatten().numpy(), b[i].flatten().numpy(), x[i].flatten().numpy() != 0
        assert out["spearman"][i] == pytest.approx(stats.spearmanr(ai, bi).statistic)
        assert out["spearman_fg"][i] == pytest.approx(stats.spearmanr(ai[fg], bi[fg]).statistic)
        top_a = set(np.argsort(-np.abs(ai), kind="stable")[:6]) & set(np.flatnonzero(ai))
        top_b = set(np.argsort(-np.abs(bi), kind="stable")[:6]) & set(np.flatnonzero(bi))
        assert out["top_k"][i] == pytest.approx(len(top_a & top_b) / max(len(top_a), len(top_b)))

        def gini(v):
            v = np.sort(np.abs(v))
            d = len(v)
            return sum((2 * (k + 1) - d - 1) * v[k] for k in range(d)) / (d * v.sum())

        assert out["delta_gini"][i] == pytest.approx(gini(bi) - gini(ai))
    same = hk.attribution_changes(a, a, x, k=6)
    np.testing.assert_allclose(same["spearman"], 1.0)
    np.testing.assert_allclose(same["delta_gini"], 0.0)


# --------------------------------------------------------------------------- bad params


@pytest.mark.parametrize(("changes", "message"), [
    ({"sparsities": (0.5, 1.0)}, r"Expected every entry of `params.sparsities` in \(0, 1\), got 1.0"),
    ({"sparsities": (0.0,)}, r"Expected every entry of `params.sparsities` in \(0, 1\), got 0.0"),
    ({"sparsities": ()}, r"Expected `params.sparsities` to be a non-empty list"),
    ({"sparsities": (0.5, 0.5)}, r"Expected distinct entries in `params.sparsities`"),
    ({"n_seeds": 1}, r"Expected `params.n_seeds` to be an integer >= 2, got 1"),
    ({"n_seeds": 2.0}, r"Expected `params.n_seeds` to be an integer >= 2, got 2.0"),
    ({"methods": ("occlusion",)}, r"Expected `params.methods` to be a non-empty list"),
    ({"figure_sparsities": (0.8,)}, r"Expected `params.figure_sparsities` to be among"),
    ({"top_k": 0}, r"Expected `params.top_k` in \(0, 1\], got 0"),
    ({"lr": -1.0}, r"Expected `params.lr` to be a number > 0, got -1.0"),
    ({"n_bootstrap": 10}, r"Expected `params.n_bootstrap` to be an integer >= 100, got 10"),
])
def test_bad_params_raise_pinned_errors(changes, message):
    with pytest.raises(ValueError, match=message):
        hk.Params(**changes)


def test_defaults_are_the_full_run():
    from xprune.reproductions import load_reproduction

    full = load_reproduction(SMOKE.parents[1] / "repro-hooker2019-pies.toml")
    assert full.params == hk.Params()


def test_toml_lists_become_tuples_and_unknown_keys_fail(tmp_path):
    from xprune.reproductions import load_reproduction

    config = load_reproduction(SMOKE)
    assert config.params.sparsities == (0.5, 0.9) and config.params.methods == hk.METHODS
    bad = tmp_path / "bad.toml"
    bad.write_text(SMOKE.read_text().replace("n_seeds = 2", "n_seed = 2"))
    with pytest.raises(ValueError, match=r"Unknown key `n_seed`"):
        load_reproduction(bad)
