import math

import numpy as np
import pytest
import torch
from scipy import stats

from xprune.metrics import average_ranks, spearman, top_k_intersection
from xprune.metrics.agreement import foreground, normalise_maps, ssim, ssim_on_features


def test_average_ranks_match_scipy_with_ties():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 5, (30, 64), generator=gen).double()
    expected = np.stack([stats.rankdata(row) for row in x.numpy()])
    np.testing.assert_allclose(average_ranks(x).numpy(), expected)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.int64, torch.bfloat16])
def test_average_ranks_equal_scipy_bitwise_on_every_dtype(dtype):
    """Ranks are exact in float64 whatever sorts the rows (NumPy's argsort for CPU NumPy
    dtypes, torch.sort otherwise): equal to scipy's, ties at -0.0 / 0.0 and +-inf included."""
    gen = torch.Generator().manual_seed(3)
    x = (torch.randn(32, 3072, generator=gen) * 4).round()  # many ties
    x[0, ::2], x[0, 1::2] = -0.0, 0.0
    x[1, :5], x[1, 5:9] = float("inf"), -float("inf")
    x[2] = torch.randn(3072, generator=gen)  # no ties
    x = x[:, :1000] if dtype == torch.int64 else x
    x = x.clamp(-1e9, 1e9).to(dtype) if dtype == torch.int64 else x.to(dtype)
    expected = torch.as_tensor(stats.rankdata(x.double().numpy(), axis=1))
    assert torch.equal(average_ranks(x), expected)


def test_average_ranks_rank_nan_last_in_index_order():
    """As the stable sort did: each NaN its own rank, after the numbers, in index order."""
    x = torch.tensor([[2.0, float("nan"), 1.0, float("nan"), 2.0]], dtype=torch.float64)
    assert average_ranks(x).tolist() == [[2.5, 4.0, 1.0, 5.0, 2.5]]


@pytest.mark.parametrize("ties", [False, True])
def test_spearman_matches_scipy(ties):
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(40, 1, 8, 8, generator=gen)
    b = a + 0.7 * torch.randn(40, 1, 8, 8, generator=gen)
    if ties:
        a, b = a.round(), (b * 2).round()
    expected = [stats.spearmanr(x.reshape(-1), y.reshape(-1)).statistic
                for x, y in zip(a.numpy(), b.numpy(), strict=True)]
    np.testing.assert_allclose(spearman(a, b).numpy(), expected, rtol=1e-10, atol=1e-12)
    expected_abs = [stats.spearmanr(np.abs(x).reshape(-1), np.abs(y).reshape(-1)).statistic
                    for x, y in zip(a.numpy(), b.numpy(), strict=True)]
    np.testing.assert_allclose(spearman(a, b, abs=True).numpy(), expected_abs, rtol=1e-10,
                               atol=1e-12)


def test_a_map_against_itself_scores_one():
    a = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(spearman(a, a), torch.ones(8, dtype=torch.float64))
    torch.testing.assert_close(top_k_intersection(a, a, k=5), torch.ones(8, dtype=torch.float64))


def test_reversed_ranking_scores_minus_one_and_constant_maps_are_nan():
    a = torch.arange(10.0)[None]
    torch.testing.assert_close(spearman(a, -a), torch.tensor([-1.0], dtype=torch.float64))
    assert torch.isnan(spearman(torch.zeros(1, 10), a)).all()


def test_top_k_hand_case():
    a = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
    b = torch.tensor([[5.0, 0.0, -4.0, 1.0, 2.0, 3.0]])
    # top-3 by |.|: a -> {0, 1, 2}; b -> {0, 2, 5}: two shared
    torch.testing.assert_close(top_k_intersection(a, b, k=3),
                               torch.tensor([2 / 3], dtype=torch.float64))
    # signed: b -> {0, 5, 4}: one shared
    torch.testing.assert_close(top_k_intersection(a, b, k=3, abs=False),
                               torch.tensor([1 / 3], dtype=torch.float64))


def test_default_k_is_ten_percent_of_features():
    a = torch.zeros(1, 1, 8, 8)
    b = torch.zeros(1, 1, 8, 8)
    a.view(-1)[:6] = torch.arange(6.0, 0, -1)
    b.view(-1)[:6] = torch.arange(6.0, 0, -1)
    b.view(-1)[5] = 0.0
    b.view(-1)[63] = 100.0  # k = 6: five of six shared
    torch.testing.assert_close(top_k_intersection(a, b), torch.tensor([5 / 6], dtype=torch.float64))


def test_batch_composition_does_not_change_a_score():
    gen = torch.Generator().manual_seed(3)
    a, b = torch.randn(256, 1, 8, 8, generator=gen), torch.randn(256, 1, 8, 8, generator=gen)
    b[10:] *= 1e4
    for fn in (spearman, top_k_intersection):
        whole = fn(a, b)
        torch.testing.assert_close(fn(a[:1], b[:1]), whole[:1], atol=1e-6, rtol=0)


def test_errors():
    with pytest.raises(ValueError, match=r"Expected `k` to be an integer in \[1, 64\]"):
        top_k_intersection(torch.rand(2, 1, 8, 8), torch.rand(2, 1, 8, 8), k=65)
    with pytest.raises(ValueError, match=r"`a` and `b` to have the same shape, got \(2, 64\) and"):
        spearman(torch.rand(2, 64), torch.rand(2, 63))


# --- Adebayo et al. 2018's map normalisation and foreground SSIM ---------------------------

def test_normalise_maps_by_hand():
    maps = torch.tensor([[[[-2.0, 1.0], [0.0, 4.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    torch.testing.assert_close(normalise_maps(maps, absolute=True)[0, 0],
                               torch.tensor([[0.5, 0.25], [0.0, 1.0]], dtype=torch.float64))
    torch.testing.assert_close(normalise_maps(maps, absolute=False)[0, 0],
                               torch.tensor([[-0.5, 0.25], [0.0, 1.0]], dtype=torch.float64))
    assert (normalise_maps(maps, absolute=True)[1] == 0).all()  # all zero stays zero
    # channels summed first; a sample's result does not depend on its batch-mates
    two = torch.cat([maps[:1], maps[:1]], dim=1)
    torch.testing.assert_close(normalise_maps(two, absolute=True)[0],
                               normalise_maps(maps[:1], absolute=True)[0])
    torch.testing.assert_close(normalise_maps(maps[:1], absolute=True),
                               normalise_maps(maps, absolute=True)[:1])
    with pytest.raises(ValueError, match=r"Expected `maps` to be a tensor of shape"):
        normalise_maps(maps[0], absolute=True)


def _digit_like_images(n: int = 6, seed: int = 1) -> torch.Tensor:
    """Digit-like images: a random 'stroke' in [0, 1] on an exactly-zero background."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=gen, dtype=torch.float64)
    x[:, :, :, :2] = 0.0
    x[:, :, :2, :] = 0.0
    return x


def _ssim_windows_literal(a: np.ndarray, b: np.ndarray, keep: np.ndarray, w: int,
                          r: float) -> float:
    """SSIM of each w x w window centred on a kept pixel, by the formula (Wang et al. 2004)."""
    h = a.shape[0]
    pad = (w - 1) // 2
    c1, c2 = (0.01 * r) ** 2, (0.03 * r) ** 2
    values = []
    for i in range(pad, h - pad):
        for j in range(pad, a.shape[1] - pad):
            if not keep[i, j]:
                continue
            pa = a[i - pad:i + pad + 1, j - pad:j + pad + 1].ravel()
            pb = b[i - pad:i + pad + 1, j - pad:j + pad + 1].ravel()
            ma, mb = pa.mean(), pb.mean()
            va, vb = pa.var(ddof=1), pb.var(ddof=1)
            cov = ((pa - ma) * (pb - mb)).sum() / (pa.size - 1)
            values.append((2 * ma * mb + c1) * (2 * cov + c2)
                          / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return float(np.mean(values)) if values else math.nan


def test_foreground_ssim_against_a_literal_loop_and_the_all_pixel_ssim():
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(5, 1, 8, 8, generator=gen, dtype=torch.float64)
    b = torch.rand(5, 1, 8, 8, generator=gen, dtype=torch.float64)
    x = _digit_like_images(5)
    fg = foreground(x)
    fg[4] = False
    fg[4, 0] = True  # a single selected pixel, on the border: no window centred inside
    got = ssim_on_features(a, b, fg, window=3)
    for i in range(4):
        want = _ssim_windows_literal(a[i, 0].numpy(), b[i, 0].numpy(),
                                     fg[i].reshape(8, 8).numpy(), 3, 1.0)
        assert got[i].item() == pytest.approx(want, abs=1e-12)
    assert math.isnan(got[4].item())
    everything = torch.ones(5, 64, dtype=torch.bool)
    for window in (3, 5):
        torch.testing.assert_close(ssim_on_features(a, b, everything, window=window),
                                   ssim(a, b, data_range=1.0, window=window))
    with pytest.raises(ValueError, match=r"Expected `features` to be a bool tensor of shape"):
        ssim_on_features(a, b, fg.float(), window=3)
