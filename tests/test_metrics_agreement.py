import numpy as np
import pytest
import torch
from scipy import stats

from xprune.metrics import average_ranks, spearman, top_k_intersection


def test_average_ranks_match_scipy_with_ties():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 5, (30, 64), generator=gen).double()
    expected = np.stack([stats.rankdata(row) for row in x.numpy()])
    np.testing.assert_allclose(average_ranks(x).numpy(), expected)


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
