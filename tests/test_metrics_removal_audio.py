"""Audio as a kind of data in the removal operator (xprune.metrics._removal.ReplaceAudio).

Hand-computed small cases: which bins a removed time-frequency patch (or
waveform segment) takes out, how a map ranks patches, deletion and
faithfulness correlation over patches on a linear model whose answers are
known in closed form, and the choice of the audio kind from the kind recorded
in the maps or named explicitly (audio has the shape of an image).
"""

import dataclasses

import pytest
import torch
from torch import nn

from xprune.attribution import Attributions
from xprune.checkpoint import load_attributions, save_attributions
from xprune.metrics import (
    ReplaceAudio,
    ReplacePixels,
    deletion_auc,
    deletion_curve,
    faithfulness_correlation,
    insertion_curve,
)
from xprune.metrics._removal import kind_of, removal_for


def spectrogram():
    """One 1-channel spectrogram of 5 frequency bins x 4 frames, bins 1..20: (1, 1, 5, 4)."""
    return torch.arange(1.0, 21.0).reshape(1, 1, 5, 4)


def test_a_removed_patch_takes_out_its_bins_and_cut_short_edge_patches():
    # patch (2, 3) tiles 5 x 4 as a 3 x 2 grid; the last row of patches has 1 bin, the last
    # column 1 frame. Patch 1 = rows 0-1, frame 3; patch 4 = row 4, frames 0-2.
    x = spectrogram()
    removed = torch.tensor([[False, True, False, False, True, False]])
    out = ReplaceAudio(patch=(2, 3)).remove(x, removed, -1.0)
    expected = x.clone()
    expected[0, 0, 0:2, 3] = -1.0
    expected[0, 0, 4, 0:3] = -1.0
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert torch.equal(x, spectrogram())  # the inputs are not modified


def test_rows_of_masks_and_every_channel_of_a_patch():
    x = torch.stack([spectrogram()[0, 0], -spectrogram()[0, 0]])[None]  # (1, 2, 5, 4)
    removed = torch.zeros(1, 2, 6, dtype=torch.bool)
    removed[0, 0, 0] = True        # row 0: patch 0 (rows 0-1, frames 0-2)
    removed[0, 1, 5] = True        # row 1: patch 5 (row 4, frame 3)
    out = ReplaceAudio(patch=(2, 3)).remove(x, removed, 0.0)
    assert out.shape == (1, 2, 2, 5, 4)
    first = x[0].clone()
    first[:, 0:2, 0:3] = 0.0
    second = x[0].clone()
    second[:, 4, 3] = 0.0
    torch.testing.assert_close(out[0, 0], first, rtol=0, atol=0)
    torch.testing.assert_close(out[0, 1], second, rtol=0, atol=0)


def test_waveform_segments():
    x = torch.arange(1.0, 15.0).reshape(1, 2, 7)   # 2 channels, 7 samples, segments of 3
    removed = torch.tensor([[False, False, True]])  # the last segment: sample 6 only
    out = ReplaceAudio(patch=(3,)).remove(x, removed, torch.tensor(9.0))
    expected = x.clone()
    expected[0, :, 6] = 9.0
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert ReplaceAudio(patch=(3,)).n_features(x.shape[1:]) == 3


def test_feature_scores_sum_the_map_over_channels_and_patches():
    m = torch.stack([spectrogram()[0, 0], torch.ones(5, 4)])[None]  # (1, 2, 5, 4)
    scores = ReplaceAudio(patch=(2, 3)).feature_scores(m)
    s = spectrogram()[0, 0] + 1.0
    expected = torch.tensor([[s[0:2, 0:3].sum(), s[0:2, 3].sum(), s[2:4, 0:3].sum(),
                              s[2:4, 3].sum(), s[4, 0:3].sum(), s[4, 3]]])
    torch.testing.assert_close(scores, expected)
    assert scores.tolist() == [[24.0 + 6, 12.0 + 2, 72.0 + 6, 28.0 + 2, 54.0 + 3, 20.0 + 1]]


def test_one_bin_patches_are_the_pixel_operator():
    x = torch.randn(3, 1, 5, 4, generator=torch.Generator().manual_seed(0))
    removed = torch.rand(3, 4, 20, generator=torch.Generator().manual_seed(1)) > 0.5
    torch.testing.assert_close(ReplaceAudio().remove(x, removed, 0.5),
                               ReplacePixels().remove(x, removed, 0.5), rtol=0, atol=0)
    torch.testing.assert_close(ReplaceAudio(patch=(1, 1)).feature_scores(x),
                               x.reshape(3, 20), rtol=0, atol=0)


class Linear(nn.Module):
    """f(x) = sum(w * x) for the one class (a second class scores 0): logits (M, 2)."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x):
        score = (self.w * x).flatten(1).sum(dim=1)
        return torch.stack([score, torch.zeros_like(score)], dim=1)


def test_deletion_and_insertion_remove_patches_in_the_maps_order():
    # x (1, 1, 2, 4), patches (2, 2): patch 0 = frames 0-1, patch 1 = frames 2-3.
    x = torch.tensor([[[[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]]]])
    w = torch.tensor([[[1.0, 1.0, 2.0, 2.0], [1.0, 1.0, 2.0, 2.0]]])
    model = Linear(w)
    # the map ranks patch 1 (sum 4) above patch 0 (sum 3), though its top bin is in patch 0
    a = torch.tensor([[[[3.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]]])
    removal = ReplaceAudio(patch=(2, 2))
    curve = deletion_curve(model, x, a, 0, output="logit", steps=2, removal=removal)
    # f(x) = 1+2+5+6 + 2*(3+4+7+8) = 14 + 44 = 58; without patch 1: 14; without both: 0
    torch.testing.assert_close(curve.fractions, torch.tensor([0.0, 0.5, 1.0],
                                                             dtype=torch.float64))
    torch.testing.assert_close(curve.values, torch.tensor([[58.0, 14.0, 0.0]], dtype=torch.float64))
    inserted = insertion_curve(model, x, a, 0, output="logit", steps=2, removal=removal)
    torch.testing.assert_close(inserted.values,
                               torch.tensor([[0.0, 44.0, 58.0]], dtype=torch.float64))
    auc = deletion_auc(model, x, a, 0, output="logit", steps=2, removal=removal,
                       baseline=1.0)  # baseline 1: f = 4 + 2 * 4 = 12 with everything removed
    # without patch 1 (baseline 1 there): 14 + 2 * 4 = 22; trapezoid over [0, .5, 1]
    torch.testing.assert_close(auc, torch.tensor([0.25 * (58 + 22) + 0.25 * (22 + 12)],
                                                 dtype=torch.float64))
    # by single bins the first removed is bin (0, 0), the map's top bin: 58 - 1 = 57
    by_bin = deletion_curve(model, x, a, 0, output="logit", steps=8)
    assert by_bin.values[0, 1].item() == 57.0


def test_faithfulness_correlation_over_patches_of_a_linear_model():
    # Removing a patch of a linear model at baseline 0 drops its output by the patch's sum
    # of w * x, exactly the mass of the map w * x over that patch: correlation 1 (-1 for -map).
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 6, 8, generator=g)
    model = Linear(torch.randn(1, 6, 8, generator=g))
    a = (model.w * x).detach()
    removal = ReplaceAudio(patch=(3, 2))
    kw = dict(subset_size=3, n_runs=10, removal=removal)
    ones = faithfulness_correlation(model, x, a, 0, generator=torch.Generator().manual_seed(1),
                                    **kw)
    torch.testing.assert_close(ones, torch.ones(2, dtype=torch.float64))
    minus = faithfulness_correlation(model, x, -a, 0,
                                     generator=torch.Generator().manual_seed(1), **kw)
    torch.testing.assert_close(minus, -torch.ones(2, dtype=torch.float64))
    # a map of each bin's own value that is blind to patches: no longer 1 by patch
    noisy = a + torch.randn(a.shape, generator=g)
    assert (faithfulness_correlation(model, x, noisy, 0,
                                     generator=torch.Generator().manual_seed(1), **kw)
            < 0.999).all()


def test_the_kind_recorded_in_the_maps_or_named_chooses_audio():
    x = spectrogram()
    maps = Attributions(torch.ones_like(x), x, torch.tensor([0]), "saliency", kind="audio")
    assert kind_of(x) == "image"
    assert kind_of(x, maps) == "audio"
    assert isinstance(removal_for(x, attributions=maps), ReplaceAudio)
    assert isinstance(removal_for(x, kind="audio"), ReplaceAudio)
    assert type(removal_for(x)) is ReplacePixels
    # the explicit kind wins over the recorded one
    assert type(removal_for(x, kind="image", attributions=maps)) is ReplacePixels
    # recorded audio: the default (one-bin) audio operator gives the image numbers
    model = Linear(torch.randn(1, 5, 4, generator=torch.Generator().manual_seed(0)))
    m = torch.randn(1, 1, 5, 4, generator=torch.Generator().manual_seed(1))
    recorded = dataclasses.replace(maps, values=m)
    assert torch.equal(deletion_auc(model, x, recorded, 0, steps=20),
                       deletion_auc(model, x, m, 0, steps=20))


def test_the_recorded_kind_survives_saving(tmp_path):
    x = spectrogram()
    maps = Attributions(torch.ones_like(x), x, torch.tensor([0]), "saliency", kind="audio")
    assert load_attributions(save_attributions(maps, tmp_path / "a.safetensors")).kind == "audio"
    plain = dataclasses.replace(maps, kind=None)
    assert load_attributions(save_attributions(plain, tmp_path / "b.safetensors")).kind is None


def test_audio_errors_name_the_argument_and_shape():
    with pytest.raises(ValueError, match=r"Expected `patch` to be \(frequency bins, frames\)"):
        ReplaceAudio(patch=(0, 2))
    with pytest.raises(ValueError, match="Expected `patch`"):
        ReplaceAudio(patch=(1, 2, 3))
    with pytest.raises(ValueError, match=r"audio for deletion: spectrograms of shape "
                                         r"\(N, C, F, T\) or waveforms \(N, C, T\), got shape "
                                         r"\(2, 5\)"):
        removal_for(torch.ones(2, 5), kind="audio", metric="deletion")
    with pytest.raises(ValueError, match=r"Expected a `patch` of 2 sizes for inputs of shape "
                                         r"\(1, 1, 5, 4\)"):
        ReplaceAudio(patch=(3,)).check_inputs(spectrogram(), "deletion")
    with pytest.raises(ValueError, match=r"Expected `kind` in \['audio', 'image', 'tabular', "
                                         r"'tokens'\], got 'audo'"):
        removal_for(spectrogram(), kind="audo")
    with pytest.raises(ValueError, match="Expected `removal` to be a removal operator"):
        deletion_curve(Linear(torch.ones(1, 5, 4)), spectrogram(), spectrogram(), 0,
                       removal=(2, 2))


# --- every removal metric over patches, against its literal definition ------------------
# A linear model of 2 spectrograms (1, 5, 6) and patches (2, 4): a 3 x 2 grid whose last
# row (bin 4) and last column (frames 4-5) are cut short, so partial patches are covered.

PATCH = (2, 4)


def patch_slices(f=5, t=6, patch=PATCH):
    """(frequency slice, frame slice) of each patch, row-major (frequency first)."""
    return [(slice(i, min(i + patch[0], f)), slice(j, min(j + patch[1], t)))
            for i in range(0, f, patch[0]) for j in range(0, t, patch[1])]


def literal_removed(xi, patches, value):
    """xi (C, F, T) with every bin of the given patches (indices) set to ``value``."""
    out = xi.clone()
    for p in patches:
        fs, ts = patch_slices()[p]
        out[:, fs, ts] = value
    return out


def patch_sums(ai):
    return torch.stack([ai[:, fs, ts].sum() for fs, ts in patch_slices()]).double()


def linear_case(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 1, 5, 6, generator=g, dtype=torch.float64)
    model = Linear(torch.randn(1, 5, 6, generator=g, dtype=torch.float64))
    a = torch.randn(2, 1, 5, 6, generator=g, dtype=torch.float64)
    return model, x, a


def logit(model, xi):
    with torch.no_grad():
        return model(xi[None])[0, 0].double().item()


def test_aopc_and_region_perturbation_over_patches_equal_the_literal_loop():
    from xprune.metrics import aopc
    from xprune.metrics.faithfulness import region_perturbation_curve
    model, x, a = linear_case()
    removal = ReplaceAudio(patch=PATCH)
    curve = region_perturbation_curve(model, x, a, 0, removal=removal, baseline=0.5, steps=6)
    expected = []
    for i in range(2):
        order = sorted(range(6), key=lambda p: (-patch_sums(a[i])[p].item(), p))
        expected.append([logit(model, literal_removed(x[i], order[:k], 0.5)) for k in range(7)])
    expected = torch.tensor(expected, dtype=torch.float64)
    torch.testing.assert_close(curve.values, expected)
    torch.testing.assert_close(curve.fractions, torch.arange(7, dtype=torch.float64) / 6)
    torch.testing.assert_close(aopc(model, x, a, 0, removal=removal, baseline=0.5, steps=6),
                               (expected[:, :1] - expected).mean(dim=1))
    with pytest.raises(ValueError, match="Expected `patch_size` = 1 with a removal whose "
                                         "features are regions already"):
        aopc(model, x, a, 0, removal=removal, patch_size=2)


def test_monotonicity_over_patches_equals_the_literal_definition():
    from scipy.stats import spearmanr

    from xprune.metrics import monotonicity_correlation
    model, x, a = linear_case(1)
    values = torch.full((2, 3, 1, 5, 6), 0.0, dtype=torch.float64)
    values[:, 1] = 1.0
    values[:, 2] = -2.0                      # three replacement constants per sample
    rho = monotonicity_correlation(model, x, a, 0, perturbation=values, output="logit",
                                   removal=ReplaceAudio(patch=PATCH))
    expected = []
    for i in range(2):
        e = [sum((logit(model, x[i]) - logit(model, literal_removed(x[i], [p], c))) ** 2
                 for c in (0.0, 1.0, -2.0)) / 3 for p in range(6)]
        expected.append(spearmanr(patch_sums(a[i]).abs().numpy(), e).statistic.item())
    torch.testing.assert_close(rho, torch.tensor(expected, dtype=torch.float64))


def test_model_effective_complexity_over_patches_equals_the_literal_definition():
    from xprune.metrics import model_effective_complexity
    model, x, a = linear_case(2)
    eps = 0.5
    k = model_effective_complexity(model, x, a, 0, eps=eps, n_samples=1, noise=(0.0, 0.0),
                                   output="logit", removal=ReplaceAudio(patch=PATCH))
    expected = []
    for i in range(2):
        order = sorted(range(6), key=lambda p: (-patch_sums(a[i]).abs()[p].item(), p))
        losses = [(logit(model, x[i]) - logit(model, literal_removed(x[i], order[j:], 0.0))) ** 2
                  for j in range(7)]
        expected.append(next(j for j, loss in enumerate(losses) if loss < eps))
    torch.testing.assert_close(k, torch.tensor(expected, dtype=torch.float64))


def test_road_over_patches_imputes_the_top_patches():
    from xprune.metrics import road, road_curve
    from xprune.metrics._imputation import NoisyLinearImputation
    model, x, a = linear_case(3)
    percentages = (0.2, 0.5, 0.9)
    removal = ReplaceAudio(patch=PATCH)
    curve = road_curve(model, x, a, 0, percentages=percentages, noise_std=0.0, output="logit",
                       removal=removal)
    imputation = NoisyLinearImputation(0.0)
    expected = []
    for i in range(2):
        order = sorted(range(6), key=lambda p: (-patch_sums(a[i])[p].item(), p))
        row = []
        for p in percentages:
            bins = literal_removed(torch.zeros(1, 5, 6), order[:int(p * 6)], 1.0).bool()
            imputed = imputation.remove(x[i:i + 1], bins.reshape(1, 30))[0]
            row.append(logit(model, imputed))
        expected.append(row)
    torch.testing.assert_close(curve, torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(road(model, x, a, 0, percentages=percentages, noise_std=0.0,
                                    output="logit", removal=removal), curve.mean(dim=1))


def test_sensitivity_n_over_patches_sees_only_each_patchs_mass():
    # The exact map w * x with its bins shuffled inside every patch keeps each patch's mass:
    # over patches sensitivity-n is exactly 1 (removing a subset drops the output by its
    # mass), over single bins it is not.
    from xprune.metrics import sensitivity_n, sensitivity_n_curve
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 1, 5, 6, generator=g, dtype=torch.float64)
    model = Linear(torch.randn(1, 5, 6, generator=g, dtype=torch.float64))
    exact = (model.w * x).detach()
    shuffled = exact.clone()
    for fs, ts in patch_slices():
        block = shuffled[:, :, fs, ts]
        flat = block.reshape(2, -1)
        shuffled[:, :, fs, ts] = flat[:, torch.randperm(flat.shape[1], generator=g)
                                      ].reshape(block.shape)
    removal = ReplaceAudio(patch=PATCH)
    curve = sensitivity_n_curve(model, x, shuffled, 0, ns=[1, 2, 4], n_runs=8, removal=removal)
    torch.testing.assert_close(curve, torch.ones(2, 3, dtype=torch.float64))
    one = sensitivity_n(model, x, shuffled, 0, n=2, n_runs=8, removal=removal)
    torch.testing.assert_close(one, torch.ones(2, dtype=torch.float64))
    by_bin = sensitivity_n(model, x, shuffled, 0, n=7, n_runs=8)
    assert (by_bin < 0.99).all()


def test_erasure_metrics_remove_the_top_patches():
    from xprune.metrics import comprehensiveness
    model, x, a = linear_case(5)
    c = comprehensiveness(model, x, a, 0, fractions=(0.5,), removal=ReplaceAudio(patch=PATCH),
                          baseline=0.0, output="logit")
    expected = []
    for i in range(2):
        order = sorted(range(6), key=lambda p: (-patch_sums(a[i])[p].item(), p))
        expected.append(logit(model, x[i]) - logit(model, literal_removed(x[i], order[:3], 0.0)))
    torch.testing.assert_close(c, torch.tensor(expected, dtype=torch.float64))


def test_one_bin_patches_leave_every_metric_unchanged():
    # the single-bin default: ReplaceAudio() (recorded audio) and (1, 1) patches give the
    # image numbers bit for bit
    from xprune.metrics import (
        aopc,
        model_effective_complexity,
        monotonicity_correlation,
        road,
        sensitivity_n,
    )
    model, x, a = linear_case(6)
    for fn, kw in ((aopc, {"steps": 5}), (sensitivity_n, {"n": 3, "n_runs": 4}),
                   (monotonicity_correlation, {"n_samples": 2}),
                   (model_effective_complexity, {"n_samples": 2}),
                   (road, {"percentages": (0.3,)})):
        plain = fn(model, x, a, 0, **kw)
        for removal in (ReplaceAudio(), ReplaceAudio(patch=(1, 1))):
            assert torch.equal(fn(model, x, a, 0, removal=removal, **kw), plain), fn.__name__


# --- the configuration key ----------------------------------------------------------------

def test_the_config_names_patches_for_every_removal_metric():
    from xprune.config import AnalysisConfig, MetricsConfig
    mc = MetricsConfig(removal={"unit": "patch", "frequency_bins": 8, "frames": 4},
                       params={"aopc": {"removal": {"unit": "patch", "frequency_bins": 2,
                                                    "frames": 2}}})
    for name in ("deletion_auc", "insertion_auc", "faithfulness_correlation", "sensitivity_n",
                 "monotonicity_correlation", "road", "model_effective_complexity",
                 "comprehensiveness"):
        assert mc.metric_params(name, 100)["removal"] == ReplaceAudio(patch=(8, 4)), name
    assert mc.metric_params("aopc", 100)["removal"] == ReplaceAudio(patch=(2, 2))  # params win
    assert "removal" not in mc.metric_params("gini_index", 100)
    assert "removal" not in mc.metric_params("infidelity", 100)  # Gaussian noise, no removal
    assert "removal" not in MetricsConfig().metric_params("deletion_auc", 100)
    segment = MetricsConfig(removal={"unit": "segment", "samples": 160})
    assert segment.removal_operator() == ReplaceAudio(patch=(160,))
    # the resolved config (config.json) records the choice
    config = AnalysisConfig.from_dict({"metrics": {"removal": {"unit": "patch",
                                                               "frequency_bins": 8,
                                                               "frames": 4}}})
    assert config.to_dict()["metrics"]["removal"] == {"unit": "patch", "frequency_bins": 8,
                                                      "frames": 4}


@pytest.mark.parametrize("removal, message", [
    ([8, 4], r"Expected `metrics.removal` to be a table such as \{unit = \"patch\""),
    ({"frequency_bins": 8, "frames": 4}, r"Expected `metrics.removal.unit` in \['patch', "
                                         r"'segment'\], got None"),
    ({"unit": "patches"}, r"got 'patches'. Did you mean 'patch'\?"),
    ({"unit": "patch", "frequency_bins": 8, "frame": 4},
     r"Unknown key `frame` in `metrics.removal` \(unit 'patch'\); expected some of \['frames', "
     r"'frequency_bins', 'unit'\]. Did you mean 'frames'\?"),
    ({"unit": "patch", "frequency_bins": 8},
     r"to set frequency_bins and frames, e.g. .*; missing frames"),
    ({"unit": "patch", "frequency_bins": 0, "frames": 4},
     r"Expected `metrics.removal.frequency_bins` to be an integer >= 1, got 0"),
    ({"unit": "segment", "samples": 2.5},
     r"Expected `metrics.removal.samples` to be an integer >= 1, got 2.5"),
])
def test_bad_removal_tables_are_named(removal, message):
    from xprune.config import MetricsConfig
    with pytest.raises(ValueError, match=message):
        MetricsConfig(removal=removal)


def test_a_bad_removal_in_metric_params_is_named():
    from xprune.config import MetricsConfig
    with pytest.raises(ValueError, match=r"Expected `metrics.params.aopc.removal.unit`"):
        MetricsConfig(params={"aopc": {"removal": {"unit": "pixel"}}})


def test_the_removal_is_checked_against_the_data_before_training():
    from xprune.metrics._removal import check_removal_spec
    spec = {"unit": "patch", "frequency_bins": 8, "frames": 4}
    spectrograms = torch.zeros(1, 1, 40, 63)
    assert check_removal_spec(spec, spectrograms, "audio", "vowels") == ReplaceAudio(patch=(8, 4))
    with pytest.raises(ValueError, match=r"Expected audio data for `metrics.removal` \(unit "
                                         r"'patch' removes audio features\), got the data "
                                         r"'digits' of kind 'image'"):
        check_removal_spec(spec, torch.zeros(1, 1, 8, 8), None, "digits")
    with pytest.raises(ValueError, match="got the data 'wine' of kind 'tabular'"):
        check_removal_spec(spec, torch.zeros(1, 13), None, "wine")
    with pytest.raises(ValueError, match=r"Expected `metrics.removal.frequency_bins` <= 40, the "
                                         r"data 'vowels''s frequency bins per sample \(shape "
                                         r"\(1, 40, 63\)\), got 64"):
        check_removal_spec({**spec, "frequency_bins": 64}, spectrograms, "audio", "vowels")
    with pytest.raises(ValueError, match=r"`metrics.removal.frames` <= 63"):
        check_removal_spec({**spec, "frames": 100}, spectrograms, "audio", "vowels")
    with pytest.raises(ValueError, match=r"Expected inputs with 1 axes after the channels for "
                                         r"`metrics.removal` \(unit 'segment': samples\)"):
        check_removal_spec({"unit": "segment", "samples": 4}, spectrograms, "audio", "vowels")


def test_an_audio_removal_on_recorded_image_maps_and_a_patch_too_large_are_refused():
    x = torch.zeros(1, 1, 8, 8)
    maps = Attributions(torch.ones_like(x), x, torch.tensor([0]), "saliency", kind="image")
    with pytest.raises(ValueError, match=r"Expected a removal operator for image data for "
                                         r"deletion, got ReplaceAudio, which removes audio"):
        deletion_curve(Linear(torch.ones(1, 8, 8)), x, maps, 0,
                       removal=ReplaceAudio(patch=(2, 2)))
    with pytest.raises(ValueError, match=r"Expected a `patch` no larger than the inputs' "
                                         r"\(F, T\) = \(5, 4\) for deletion, got \(6, 1\)"):
        deletion_curve(Linear(torch.ones(1, 5, 4)), spectrogram(), spectrogram(), 0,
                       removal=ReplaceAudio(patch=(6, 1)))


def test_road_refuses_a_removal_it_would_ignore():
    """ROAD imputes what it removes: an operator with a baseline (ReplacePixels) was accepted
    and silently ignored."""
    from xprune.metrics import road_curve
    from xprune.metrics._removal import ReplacePixels
    model, x, a = linear_case(3)
    with pytest.raises(ValueError, match="Expected `removal` for ROAD to be None or ReplaceAudio"):
        road_curve(model, x, a, 0, removal=ReplacePixels())
