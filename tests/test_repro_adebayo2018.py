"""The Adebayo et al. (2018) sanity-check reproduction: its config, its report, and its own
computations against hand-computed cases and scipy / scikit-image."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from skimage.metrics import structural_similarity
from torch import nn

import xprune.reproductions.adebayo2018 as adb  # registers the reproduction
from xprune._cache import RunCache
from xprune.data import load_digits_split
from xprune.metrics.agreement import foreground
from xprune.metrics.sanity import parameter_randomisation
from xprune.models import DigitsCNN
from xprune.reproductions import Context, load_reproduction, run_reproduction, torch_threads

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "analyses" / "smoke" / "repro-adebayo2018-sanity.toml"
FULL = ROOT / "analyses" / "repro-adebayo2018-sanity.toml"


class LinearImage(nn.Module):
    """f(x) = W flatten(x) + b on 1x8x8 images: the gradient of class t is the row W[t]."""

    def __init__(self, *, spare: bool = False, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(64, 10).double()
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(10, 64, generator=gen, dtype=torch.float64))
        if spare:  # registered after fc, so re-initialised first; never used in forward
            self.spare = nn.Linear(4, 4).double()

    def forward(self, x):
        return self.fc(x.reshape(x.shape[0], -1))


def _images(n: int = 6, seed: int = 1) -> torch.Tensor:
    """Digit-like images: a random 'stroke' in [0, 1] on an exactly-zero background."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=gen, dtype=torch.float64)
    x[:, :, :, :2] = 0.0
    x[:, :, :2, :] = 0.0
    return x


# --- the run -----------------------------------------------------------------------------------

def test_smoke_run_reports_the_paper_beside_ours_and_reuses_its_cache(tmp_path):
    out = tmp_path / "run"
    html = run_reproduction(SMOKE, out_dir=out, progress=False)
    md = (out / "report.md").read_text(encoding="utf-8")
    assert html.exists() and "Side by side: the paper's finding and ours" in md
    for method in ("saliency", "integrated_gradients", "guided_backprop"):
        assert adb.PAPER_SHORT[method] in md and adb.PAPER[method][0] in md
    assert "l1@0.90: after fc2" in md and "dense: all 4 layers" in md
    assert "Independent randomisation" in md and "Foreground pixels only" in md
    per_seed = pd.read_csv(out / "per_seed.csv")
    summary = pd.read_csv(out / "summary.csv")
    # 2 seeds x 2 models x 3 methods x 2 orders x 4 layers
    assert len(per_seed) == 2 * 2 * 3 * 2 * 4
    assert set(per_seed["layer"]) == {"fc2", "fc1", "conv2", "conv1"}
    assert (summary["interval"] == "seeds").all() and (summary["n"] == 2).all()
    cascade = summary[summary["order"] == "cascading"]
    assert cascade["mean"].between(-1, 1).all()
    # the table cells are the summary's numbers
    row = summary[(summary["model"] == "dense") & (summary["method"] == "saliency")
                  & (summary["order"] == "cascading") & (summary["step"] == 1)
                  & (summary["similarity"] == "spearman_signed") & (summary["region"] == "all")]
    assert f"{row['mean'].iloc[0]:.2f} [" in md
    csvs = {p.name: p.read_bytes() for p in out.glob("*.csv")}
    stored = {p: p.stat().st_mtime_ns for p in (out / ".cache").rglob("*")}
    # a rerun reads the stored models and frames and writes identical CSVs
    run_reproduction(SMOKE, out_dir=out, progress=False)
    assert {p.name: p.read_bytes() for p in out.glob("*.csv")} == csvs
    assert {p: p.stat().st_mtime_ns for p in (out / ".cache").rglob("*")} == stored
    # same seed, nothing stored: recomputing a seed gives the stored numbers bit for bit
    config = load_reproduction(SMOKE)
    kept = RunCache(out, config.store_key()).load_frame("seed-1-per-sample")
    context = Context(out_dir=tmp_path / "fresh", seed=0, device="cpu",
                      cache=RunCache(None, {}), progress=False)
    with torch_threads(config.threads):
        fresh, _, _ = adb._seed_results(config.params, load_digits_split(seed=0), 1, context)
    pd.testing.assert_frame_equal(fresh, kept, check_dtype=False)


def test_smoke_report_reads_wide_intervals_as_undecided_and_clips_them(tmp_path):
    out = tmp_path / "run"
    run_reproduction(SMOKE, out_dir=out, progress=False)
    md = (out / "report.md").read_text(encoding="utf-8")
    findings = md.split("## Findings", 1)[1].split("## Setup", 1)[0]
    summary = pd.read_csv(out / "summary.csv")
    # every interval within the range a similarity (or a difference of two) can take
    assert summary["ci_low"].ge(-1).all() and summary["ci_high"].le(1).all()
    assert summary["ci_clipped"].any()
    for low, high in re.findall(r"\[(-?\d+\.\d+), (-?\d+\.\d+)\]", md.split("## Models")[0]):
        assert -2 <= float(low) <= float(high) <= 2
    accuracy = md.split("## Models")[1]
    assert re.findall(r"\[(-?\d+\.\d+), (-?\d+\.\d+)\]", accuracy)
    for low, high in re.findall(r"\[(-?\d+\.\d+), (-?\d+\.\d+)\]", accuracy):
        assert 0 <= float(low) <= float(high) <= 100
    # two seeds: said in the findings, and no reading decided on intervals that wide
    assert findings.lstrip("\n- ").startswith("Only 2 training seeds: intervals across so few")
    assert f"{summary['ci_clipped'].mean():.0%} of the similarity intervals" in findings
    assert "does not hold" not in findings and "undecided" in findings
    # the pruning finding: the full tally with its correction, and the uncorrected count apart
    pruning = next(line for line in findings.splitlines() if "Does pruning change" in line)
    assert "of the 18 comparisons (1 pruned model × 3 methods × 3 similarities × 2 regions) " \
           "with Holm's correction over all 18 (paired t-tests across the 2 training seeds" \
           in pruning
    assert "Without a correction, " in pruning and "the dense model's own drop" in pruning
    # plain wording; only the figure whose number was checked is cited by number
    for word in ("main job", "Fig. 3", "Figs.", "the issue"):
        assert word not in md, word


def test_the_full_config_is_the_default_run():
    config = load_reproduction(FULL)
    assert config.reproduction == "adebayo2018_sanity"
    assert config.params == adb.Params()
    assert load_reproduction(SMOKE).params.n_samples < config.params.n_samples


# --- the computations --------------------------------------------------------------------------

def test_linear_model_curve_is_the_spearman_of_the_two_weight_rows():
    model = LinearImage().eval()
    x, t = _images(), torch.tensor([0, 3, 3, 7, 9, 1])
    original = model.fc.weight.detach().clone()
    layers, scores, maps = adb.randomisation_curves(model, x, t, "saliency", seed=5,
                                                    method_params={"abs": False})
    # the random weights, read directly from the copy by a second run with the same seed
    seen = []

    def read_weights(m, inputs, targets):
        seen.append(m.fc.weight.detach().clone())
        return torch.zeros_like(inputs)

    parameter_randomisation(model, x, t, read_weights, generator=torch.Generator().manual_seed(5),
                            similarity=lambda a, b: torch.zeros(a.shape[0]))
    random = seen[1]
    assert layers == ["fc"] and maps.shape == (2, 6, 1, 8, 8)
    assert not torch.equal(random, original)
    for i, target in enumerate(t.tolist()):
        torch.testing.assert_close(maps[0, i].reshape(-1), original[target])  # gradient = W[t]
        torch.testing.assert_close(maps[1, i].reshape(-1), random[target])
        rho = stats.spearmanr(original[target].numpy(), random[target].numpy()).statistic
        rho_abs = stats.spearmanr(original[target].abs().numpy(),
                                  random[target].abs().numpy()).statistic
        assert scores[("spearman_signed", "all")][i, 0].item() == pytest.approx(rho, abs=1e-12)
        assert scores[("spearman_abs", "all")][i, 0].item() == pytest.approx(rho_abs, abs=1e-12)
        fg = x[i].reshape(-1) != 0
        rho_fg = stats.spearmanr(original[target][fg].numpy(),
                                 random[target][fg].numpy()).statistic
        assert scores[("spearman_signed", "foreground")][i, 0].item() == pytest.approx(
            rho_fg, abs=1e-12)
        a = (original[target].abs() / original[target].abs().max()).reshape(8, 8).numpy()
        b = (random[target].abs() / random[target].abs().max()).reshape(8, 8).numpy()
        assert scores[("ssim", "all")][i, 0].item() == pytest.approx(
            structural_similarity(a, b, win_size=3, data_range=1.0), abs=1e-10)


def test_a_layer_that_cannot_change_the_maps_scores_one():
    model = LinearImage(spare=True).eval()
    x, t = _images(), torch.tensor([0, 1, 2, 3, 4, 5])
    for order in ("cascading", "independent"):
        layers, scores, maps = adb.randomisation_curves(model, x, t, "saliency", order=order,
                                                        method_params={"abs": False})
        assert layers == ["spare", "fc"]
        torch.testing.assert_close(maps[1], maps[0], rtol=0, atol=0)
        for key, values in scores.items():
            torch.testing.assert_close(values[:, 0], torch.ones(6, dtype=torch.float64),
                                       msg=f"{key}, {order}")
            assert (values[:, 1] < 1).all(), key


def _digits_cnn_and_batch(n: int):
    """An untrained (seeded) digits CNN and the first n test digits: the properties below hold
    for any weights."""
    torch.manual_seed(0)
    data = load_digits_split(seed=0)
    return DigitsCNN().eval(), data.x_test[:n].clone(), data.y_test[:n].clone()


def test_the_model_and_inputs_are_unchanged_and_the_run_is_deterministic():
    digits_cnn, x, y = _digits_cnn_and_batch(8)
    state = {k: v.clone() for k, v in digits_cnn.state_dict().items()}
    x_before = x.clone()
    runs = [adb.randomisation_curves(digits_cnn, x, y, "guided_backprop", seed=3)
            for _ in range(2)]
    assert all(torch.equal(state[k], v) for k, v in digits_cnn.state_dict().items())
    assert torch.equal(x, x_before) and x.grad is None
    assert runs[0][0] == ["fc2", "fc1", "conv2", "conv1"]
    for key in runs[0][1]:
        torch.testing.assert_close(runs[0][1][key], runs[1][1][key], rtol=0, atol=0,
                                   equal_nan=True)


def test_zero_baseline_ig_is_zero_on_the_background_whatever_the_weights():
    digits_cnn, x, y = _digits_cnn_and_batch(6)
    _, _, maps = adb.randomisation_curves(digits_cnn, x, y, "integrated_gradients",
                                          method_params={"n_steps": 4})
    background = (x == 0).expand_as(maps)
    assert background.any()
    assert (maps[background] == 0).all()


def test_foreground_scores_use_only_the_foreground_pixels():
    gen = torch.Generator().manual_seed(2)
    original = torch.randn(4, 1, 8, 8, generator=gen, dtype=torch.float64)
    randomised = torch.randn(4, 1, 8, 8, generator=gen, dtype=torch.float64)
    x = _images(4)
    fg = foreground(x)
    scores = adb.map_similarities(original, randomised, fg)
    assert set(scores) == {(s, r) for s in adb.SIMILARITIES for r in adb.REGIONS}
    # changing background pixels changes the all-pixel scores only
    moved = randomised.clone()
    moved[x == 0] = torch.randn(int((x == 0).sum()), generator=gen, dtype=torch.float64)
    again = adb.map_similarities(original, moved, fg)
    for similarity in ("spearman_abs", "spearman_signed"):
        torch.testing.assert_close(again[(similarity, "foreground")],
                                   scores[(similarity, "foreground")])
        assert not torch.allclose(again[(similarity, "all")], scores[(similarity, "all")])
    for i in range(4):
        keep = fg[i].numpy()
        want = stats.spearmanr(original[i].reshape(-1).numpy()[keep],
                               randomised[i].reshape(-1).numpy()[keep]).statistic
        assert scores[("spearman_signed", "foreground")][i].item() == pytest.approx(want,
                                                                                   abs=1e-12)


def test_paired_differences_by_hand():
    rows = []
    for seed in (0, 1):
        for sample in (0, 1):
            for method, value in (("guided_backprop", 0.9), ("saliency", 0.1 * (seed + sample))):
                for step in (1, 2):
                    rows.append({"seed": seed, "sample": sample, "model": "dense",
                                 "method": method, "order": "cascading", "step": step,
                                 "spearman_signed": value + (0.1 if step == 2 else 0.0)})
    frame = pd.DataFrame(rows)
    left, right = {"method": "guided_backprop"}, {"method": "saliency"}
    est = adb._paired(frame, left, right, "spearman_signed", step=1)
    # per seed: mean over samples of 0.9 - 0.1 (seed + sample): seed 0 -> 0.85, seed 1 -> 0.75
    seeds = np.array([0.85, 0.75])
    assert (est.mean, est.n, est.over) == (pytest.approx(0.8), 2, "seeds")
    assert (est.low, est.high) == pytest.approx(stats.t.interval(0.95, 1, loc=0.8,
                                                                 scale=stats.sem(seeds)))
    assert not est.clipped  # [0.16, 1.44]: inside [-2, 2], the range of a difference
    assert est.p == pytest.approx(stats.ttest_1samp(seeds, 0.0).pvalue)
    # step None: each sample's curve averaged first (here the same offset at both steps)
    assert adb._paired(frame, left, right, "spearman_signed", step=None).mean == \
        pytest.approx(0.8)


def test_intervals_are_clipped_to_the_range():
    assert adb._clip(-4.2, 4.1, (-1.0, 1.0)) == (-1.0, 1.0, True)
    assert adb._clip(-0.2, 0.3, (-1.0, 1.0)) == (-0.2, 0.3, False)
    low, high, clipped = adb._clip(math.nan, math.nan, (-1.0, 1.0))
    assert math.isnan(low) and math.isnan(high) and not clipped


def test_verdict_against_the_line():
    assert adb.verdict(0.1, -0.1, 0.3) == "changes"
    assert adb.verdict(0.8, 0.6, 0.9) == "stays high"
    assert adb.verdict(0.5, 0.3, 0.7) == "undecided"
    assert adb.verdict(0.4, math.nan, math.nan) == "changes"  # no interval: the mean
    assert adb.verdict(math.nan, math.nan, math.nan) == "undecided"
    assert adb.verdict(0.45, 0.41, 0.49, line=0.4) == "stays high"


def test_summarise_by_hand():
    rows = []
    values = {0: [0.1, 0.2, 0.6], 1: [0.5, np.nan, 0.7]}
    for seed, vals in values.items():
        for sample, v in enumerate(vals):
            rows.append({"seed": seed, "model": "dense", "sparsity": 0.0, "method": "saliency",
                         "order": "cascading", "step": 1, "layer": "fc2", "sample": sample,
                         "spearman_signed": v})
    frame = pd.DataFrame(rows)
    out = adb.summarise(frame)
    assert len(out) == 1
    row = out.iloc[0]
    means = np.array([0.3, 0.6])  # per-seed means, the NaN left out
    low, high = stats.t.interval(0.95, 1, loc=means.mean(), scale=stats.sem(means))
    assert row["mean"] == pytest.approx(0.45) and row["interval"] == "seeds"
    assert low < -1 and high > 1  # two seeds: wider than a similarity can go, so clipped
    assert (row["ci_low"], row["ci_high"], row["ci_clipped"]) == (-1.0, 1.0, True)
    assert row["n"] == 2 and row["nan_fraction"] == pytest.approx(1 / 6)
    one = adb.summarise(frame[frame["seed"] == 0]).iloc[0]  # one seed: across samples
    low, high = stats.t.interval(0.95, 2, loc=0.3, scale=stats.sem([0.1, 0.2, 0.6]))
    assert one["interval"] == "samples" and one["n"] == 3
    assert low > -1 and high < 1 and not one["ci_clipped"]
    assert (one["ci_low"], one["ci_high"]) == pytest.approx((low, high))


def _effect_table(means, p_holm, shares, lows=None, highs=None):
    n = len(means)
    methods = (["saliency", "integrated_gradients", "guided_backprop"] * n)[:n]
    return pd.DataFrame({
        "_model": "l1@0.90", "_method": methods,
        "_region": (["all", "foreground"] * n)[:n], "_sim": "spearman_signed",
        "_mean": means, "_p_holm": p_holm, "_share": shares,
        "_low": lows if lows is not None else [m - 0.01 for m in means],
        "_high": highs if highs is not None else [m + 0.01 for m in means]})


def test_pruning_finding_counts_every_cell_with_one_correction():
    models = ["dense", "l1@0.90"]
    methods = ["saliency", "integrated_gradients", "guided_backprop"]
    verdicts = {(m, k): "changes" for m in models for k in methods}
    means = [-0.02, 0.001, -0.09, 0.03, -0.001, 0.0]
    lows = [m - 0.01 for m in means]
    lows[1] = 0.0005  # excludes 0 without the correction only
    effect = _effect_table(means, [0.01, 0.9, 0.001, 0.04, 0.5, math.nan],
                           [-0.03, 0.01, -0.23, 0.05, -0.002, 0.0], lows=lows,
                           highs=[m + 0.01 for m in means])
    text = adb._pruning_finding(effect, models, methods, verdicts, "paired t-tests across the 5 "
                                "training seeds", 5)
    assert "the same for the dense and the pruned models" in text
    assert ("differs from 0 in 3 of the 5 comparisons (1 pruned model × 3 methods × 1 similarity"
            " × 2 regions; 1 without a test, too few values) with Holm's correction over all 5 "
            "(paired t-tests across the 5 training seeds, family-wise error 5%): 2 below 0") in text
    assert "and 1 above 0; by method Saliency (gradient) 2 of 2 (all pixels 1, foreground 1, " \
           "1 below and 1 above 0); Integrated Gradients 0 of 2" in text
    assert "Guided Backprop 1 of 1 (all pixels 1, foreground 0)" in text
    # rows 0, 2 (below), 1 and 3 (above) of the 5 tested exclude 0; row 1 only uncorrected
    assert "Without a correction, 4 of the 5 95% intervals exclude 0 (2 below, 2 above)" in text
    assert ("The 1 that excludes 0 only without the correction is 0.001 in similarity, at most "
            "1% of the dense model's own drop under randomisation (1 − its mean similarity over "
            "the cascade).") in text
    assert "0.020 to 0.090 in similarity, that is 3% to 23% (median 5%) of that drop" in text
    assert "Guided Backprop, Spearman, signed maps, all pixels, l1@0.90: -0.090, 23% of the " \
           "drop" in text
    assert "1 of them reaches 10% of that drop or more (our line, not a test), for Guided " \
           "Backprop: not negligible" in text
    # nothing significant: no evidence, with the low power of few seeds said
    quiet = adb._pruning_finding(_effect_table([-0.02, 0.01], [0.2, 0.6], [-0.05, 0.02]),
                                 models, methods[:2], verdicts, "paired t-tests across the 2 "
                                 "training seeds", 2)
    assert "No evidence after the correction that pruning changes" in quiet
    assert "(with 2 training seeds these tests have little power)" in quiet
    assert "The 1 that excludes 0 only without the correction is 0.020" in quiet
    assert "relative to that drop is 0.020, 5% of it (Saliency (gradient)" in quiet


@pytest.mark.parametrize(("changes", "message"), [
    ({"n_seeds": 0}, r"Expected `params.n_seeds` to be an integer >= 1, got 0"),
    ({"sparsities": []}, r"Expected `params.sparsities` to be a non-empty list, got \[\]"),
    ({"sparsities": [0.8, 1.0]}, r"Expected every `params.sparsities` entry in \(0, 1\), got 1.0"),
    ({"sparsities": [0.9, 0.8]}, r"increasing without repeats"),
    ({"methods": ["saliency", "lrp"]}, r"Expected `params.methods` to be a non-empty list of "
                                       r"distinct names from \['saliency'"),
    ({"methods": ["saliency", "saliency"]}, r"distinct names"),
    ({"finetune_epochs": -1}, r"Expected `params.finetune_epochs` to be an integer >= 0"),
    ({"n_samples": 1}, r"Expected `params.n_samples` to be an integer >= 2, got 1"),
    ({"ssim_window": 4}, r"Expected `params.ssim_window` to be 3, 5 or 7 .*got 4"),
    ({"independent": 1}, r"Expected `params.independent` to be true or false, got 1"),
    ({"target": "true"}, r"Expected `params.target` in \['label', 'predicted'\], got 'true'"),
    ({"example": 12, "n_samples": 12}, r"Expected `params.example` to be an index in \[0, 12\)"),
])
def test_bad_params_raise_pinned_errors(changes, message):
    with pytest.raises(ValueError, match=message):
        adb.Params(**changes)


def test_too_many_samples_is_refused_before_any_training(tmp_path):
    config = load_reproduction(SMOKE)
    config = config.replace(params=adb.Params(n_samples=361, n_seeds=1))
    with pytest.raises(ValueError, match=r"Expected `params.n_samples` <= 360 \(the digits "
                                         r"test set\), got 361"):
        run_reproduction(config, out_dir=tmp_path, progress=False)
    assert not (tmp_path / ".cache").exists() or not any((tmp_path / ".cache").rglob("*.safe*"))


