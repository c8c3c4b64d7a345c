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
