"""Agreement over the features where the input is not at the baseline."""

import numpy as np
import pytest
import torch
from scipy import stats

import xprune
from xprune import metrics as M


def test_background_zeros_no_longer_count():
    x = torch.tensor([[0.0, 0.0, 1.0, 1.0, 1.0]])
    a = torch.tensor([[0.0, 0.0, 1.0, 2.0, 3.0]])
    b = torch.tensor([[5.0, -5.0, 1.0, 2.0, 3.0]])
    fg = M.foreground(x)
    assert fg.tolist() == [[False, False, True, True, True]]
    assert float(M.spearman(a, b)) < 0.9
    torch.testing.assert_close(M.on_features(M.spearman, a, b, fg),
                               torch.tensor([1.0], dtype=torch.float64))
    torch.testing.assert_close(M.on_features(M.cosine_similarity, a, b, fg),
                               torch.tensor([1.0], dtype=torch.float64))


def test_matches_scipy_on_each_samples_subset():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(40, 1, 6, 5, generator=gen, dtype=torch.float64)
    b = a + torch.randn(40, 1, 6, 5, generator=gen, dtype=torch.float64)
    x = (torch.rand(40, 1, 6, 5, generator=gen) > 0.5).double()  # varied foreground sizes
    fg = M.foreground(x)
    ours = M.on_features(M.spearman, a, b, fg).numpy()
    tau = M.on_features(M.kendall_tau, a, b, fg).numpy()
    for i in range(40):
        keep = fg[i].numpy()
        ai, bi = a[i].reshape(-1).numpy()[keep], b[i].reshape(-1).numpy()[keep]
        np.testing.assert_allclose(ours[i], stats.spearmanr(ai, bi).statistic, rtol=1e-10)
        np.testing.assert_allclose(tau[i], stats.kendalltau(ai, bi).statistic, rtol=1e-10)
    # everything selected: the metric itself
    everything = torch.ones(40, 30, dtype=torch.bool)
    torch.testing.assert_close(M.on_features(M.spearman, a, b, everything), M.spearman(a, b))
    torch.testing.assert_close(M.on_features(M.top_k_intersection, a, b, everything, k=3),
                               M.top_k_intersection(a, b, k=3))


def test_channels_of_a_pixel_count_together_and_empty_samples_are_nan():
    x = torch.zeros(2, 3, 2, 2)
    x[0, 2, 0, 1] = 0.5  # one channel nonzero: the pixel is foreground
    x[0, 0, 1, 1] = 0.5
    fg = M.foreground(x)
    assert fg.tolist() == [[False, True, False, True], [False, False, False, False]]
    a = torch.randn(2, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    out = M.on_features(M.cosine_similarity, a, a, fg)
    assert float(out[0]) == pytest.approx(1.0) and torch.isnan(out[1])
    # k larger than a sample's foreground is lowered to its size
    out = M.on_features(M.top_k_intersection, a, a, fg, k=3)
    assert float(out[0]) == pytest.approx(1.0)


def test_zero_baseline_maps_agree_more_over_the_whole_image(digits_cnn, digits_batch):
    """IG maps of two unrelated models share the zero background: foreground-only is lower."""
    from xprune.models import DigitsCNN

    x = digits_batch[0][:32]
    torch.manual_seed(5)
    other = DigitsCNN().eval()  # untrained: unrelated to the trained model
    t = digits_cnn(x).argmax(1)
    a = xprune.attribute(digits_cnn, x, t, "integrated_gradients", params={"n_steps": 32})
    b = xprune.attribute(other, x, t, "integrated_gradients", params={"n_steps": 32})
    fg = M.foreground(x)
    whole = M.spearman(a, b, abs=True)
    only = M.on_features(M.spearman, a, b, fg, abs=True)
    assert float(whole.mean()) > float(only.mean()) + 0.2


def test_on_features_errors():
    a = torch.zeros(2, 4)
    with pytest.raises(ValueError, match=r"Expected `features` to be a bool tensor of shape "
                                         r"\(2, 4\)"):
        M.on_features(M.spearman, a, a, torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"shape \(2, 4\), got torch.bool of shape \(2, 3\)"):
        M.on_features(M.spearman, a, a, torch.ones(2, 3, dtype=torch.bool))
