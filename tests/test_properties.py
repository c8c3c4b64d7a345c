"""Property-based tests (hypothesis): metric invariants over random shapes and values."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from xprune import metrics as M

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)


@st.composite
def maps(draw, min_features=2):
    """Attribution maps of random shape: (N, F) or (N, C, H, W), finite values."""
    n = draw(st.integers(1, 6))
    if draw(st.booleans()):
        shape = (n, draw(st.integers(min_features, 40)))
    else:
        shape = (n, draw(st.integers(1, 3)), draw(st.integers(1, 6)),
                 draw(st.integers(max(1, min_features), 7)))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.sampled_from([1e-6, 1.0, 1e4]))
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float64) * scale


@SETTINGS
@given(maps(), st.floats(1e-3, 1e3))
def test_gini_shape_range_scale_and_permutation(a, c):
    g = M.gini_index(a)
    d = M.feature_map(a).shape[1]
    assert g.shape == (a.shape[0],) and bool(torch.isfinite(g).all())
    assert bool((g >= -1e-12).all()) and bool((g <= (d - 1) / d + 1e-12).all())
    torch.testing.assert_close(M.gini_index(c * a), g)
    perm = torch.randperm(d, generator=torch.Generator().manual_seed(d))
    torch.testing.assert_close(M.gini_index(M.feature_map(a)[:, perm]), g)


@SETTINGS
@given(maps(), st.floats(1e-3, 1e3))
def test_agreement_shape_self_and_scale(a, c):
    d = M.feature_map(a).shape[1]
    rho = M.spearman(a, a)
    assert rho.shape == (a.shape[0],)
    constant = M.feature_map(a).std(dim=1) == 0
    torch.testing.assert_close(rho[~constant], torch.ones(int((~constant).sum()),
                                                          dtype=torch.float64))
    b = a.flip(0)
    torch.testing.assert_close(M.spearman(c * a, b), M.spearman(a, b), equal_nan=True)
    k = max(1, d // 3)
    torch.testing.assert_close(M.top_k_intersection(a, a, k=k),
                               torch.ones(a.shape[0], dtype=torch.float64))
    overlap = M.top_k_intersection(a, b, k=k)
    assert bool(((overlap >= 0) & (overlap <= 1)).all())


@SETTINGS
@given(maps(), st.integers(0, 5))
def test_batch_composition_independence(a, extra_seed):
    others = torch.randn(3, *a.shape[1:], generator=torch.Generator().manual_seed(extra_seed),
                         dtype=torch.float64) * 1e3
    batch = torch.cat([a, others])
    for fn in (M.gini_index, lambda v: M.spearman(v, v.flip(-1)),
               lambda v: M.top_k_intersection(v, v.flip(-1), k=1)):
        torch.testing.assert_close(fn(batch)[: a.shape[0]], fn(a), atol=1e-6, rtol=0,
                                   equal_nan=True)


class _Linear(torch.nn.Module):
    def __init__(self, d, seed):
        super().__init__()
        self.w = torch.randn(3, d, generator=torch.Generator().manual_seed(seed),
                             dtype=torch.float64)

    def forward(self, x):
        return x.reshape(x.shape[0], -1) @ self.w.T


@SETTINGS
@given(st.integers(2, 30), st.integers(1, 5), st.integers(0, 1000))
def test_faithfulness_of_exact_linear_maps_is_one_for_any_shape(d, n, seed):
    model = _Linear(d, seed)
    x = torch.rand(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    t = torch.arange(n) % 3
    exact = model.w[t] * x
    fc = M.faithfulness_correlation(model, x, exact, t, n_runs=8,
                                    generator=torch.Generator().manual_seed(seed))
    defined = ~torch.isnan(fc)  # a subset sum can be constant over all runs for tiny d
    torch.testing.assert_close(fc[defined], torch.ones(int(defined.sum()), dtype=torch.float64))
    curve = M.deletion_curve(model, x, exact, t, output="logit")
    torch.testing.assert_close(curve.values[:, -1], torch.zeros(n, dtype=torch.float64))
