import math

import pytest
import torch

from xprune.attribution import Attributions
from xprune.metrics import METRICS, gini_index


def gini_literal(v: list[float]) -> float:
    """Hurley & Rickard 2009: G = 1 - 2 sum_k (v_k / ||v||_1) ((d - k + 1/2) / d), v ascending."""
    v = sorted(abs(x) for x in v)
    d, total = len(v), sum(abs(x) for x in v)
    return 1 - 2 * sum((vk / total) * ((d - k + 0.5) / d) for k, vk in enumerate(v, start=1))


@pytest.mark.parametrize("d", [2, 5, 64])
def test_one_hot_scores_d_minus_one_over_d(d):
    a = torch.zeros(3, d)
    a[torch.arange(3), torch.tensor([0, d - 1, d // 2])] = torch.tensor([1.0, -7.0, 0.01])
    torch.testing.assert_close(gini_index(a), torch.full((3,), (d - 1) / d, dtype=torch.float64))


def test_constant_maps_score_zero_and_all_zero_maps_are_undefined():
    """../shared/cases/021-constant-map-nan.md: an all-zero map has no Gini index: NaN, with a
    warning naming the metric, the count and the reason."""
    a = torch.stack([torch.full((1, 8, 8), 0.3), torch.full((1, 8, 8), -2.0), torch.zeros(1, 8, 8)])
    with pytest.warns(RuntimeWarning, match=r"1 sample\(s\) have an undefined gini_index "
                                            r"\(NaN; 1 of 3 in this call\): the map is all zero"):
        g = gini_index(a)
    torch.testing.assert_close(g, torch.tensor([0.0, 0.0, math.nan], dtype=torch.float64),
                               equal_nan=True)


def test_matches_the_literal_formula():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(20, 1, 8, 8, generator=gen, dtype=torch.float64) ** 3
    expected = torch.tensor([gini_literal(row.reshape(-1).tolist()) for row in a],
                            dtype=torch.float64)
    torch.testing.assert_close(gini_index(a), expected)


def test_uniform_noise_is_about_one_third():
    a = torch.rand(1, 100_000, generator=torch.Generator().manual_seed(0))
    assert abs(float(gini_index(a)[0]) - 1 / 3) < 0.005


def test_scale_and_permutation_invariance():
    """../shared/cases/002-scale-invariance.md"""
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(16, 1, 8, 8, generator=gen)
    g = gini_index(a)
    torch.testing.assert_close(gini_index(100 * a), g)
    torch.testing.assert_close(gini_index(1e-6 * a), g)
    perm = torch.randperm(64, generator=gen)
    torch.testing.assert_close(gini_index(a.reshape(16, 64)[:, perm]), g)


def test_batch_composition_does_not_change_a_score():
    """../shared/cases/001-batch-composition.md"""
    gen = torch.Generator().manual_seed(2)
    a = torch.rand(256, 1, 8, 8, generator=gen)
    a[64:] *= 1000
    whole = gini_index(a)
    for i in (0, 63, 200):
        torch.testing.assert_close(gini_index(a[i:i + 1]), whole[i:i + 1], atol=1e-6, rtol=0)


def test_channels_of_a_pixel_are_one_feature():
    a = torch.zeros(1, 3, 2, 2)
    a[0, :, 0, 0] = 1.0  # one pixel, all channels: one-hot over 4 pixels
    torch.testing.assert_close(gini_index(a), torch.tensor([0.75], dtype=torch.float64))


def test_accepts_attributions_and_rejects_bad_maps():
    a = torch.rand(2, 1, 8, 8)
    record = Attributions(a, a, torch.zeros(2, dtype=torch.long), "saliency")
    torch.testing.assert_close(gini_index(record), gini_index(a))
    with pytest.raises(ValueError, match="Expected `attributions` to be finite, got 1 NaN"):
        gini_index(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match=r"at least 2 dimensions \(N, ...\), got shape \(4,\)"):
        gini_index(torch.rand(4))
    with pytest.raises(TypeError, match="Expected `attributions` to be a torch.Tensor"):
        gini_index([[1.0, 2.0]])


def test_metadata():
    info = METRICS["gini_index"]
    assert (info.category, info.higher_is_better, info.range) == ("complexity", True, (0.0, 1.0))
    assert "Chalasani" in info.reference


def test_gini_matches_quantus_sparseness():
    """Quantus 0.6 Sparseness with normalise=False: the same Gini index, except that it adds
    1e-7 to every |a_i| (so its values sit within about d * 1e-7 / sum|a| of ours)."""
    import numpy as np

    quantus = pytest.importorskip("quantus")
    gen = torch.Generator().manual_seed(4)
    a = torch.randn(16, 1, 8, 8, generator=gen)
    x = torch.rand(16, 1, 8, 8, generator=gen)
    metric = quantus.Sparseness(normalise=False, disable_warnings=True)
    theirs = metric(model=None, x_batch=x.numpy().copy(), y_batch=np.zeros(16, dtype=int),
                    a_batch=a.numpy().copy(), channel_first=True)
    np.testing.assert_allclose(gini_index(a).numpy(), np.asarray(theirs), atol=1e-5)
