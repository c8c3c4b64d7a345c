"""The fast paths of issue 8 against the slower code they replace.

Each fast path (batched ROAD imputation, chunked faithfulness correlation and
model effective complexity, one-root gradients in the explainer, merged and
chunked stability calls) is compared on real values with a literal copy of
the implementation it replaced, or with the path it falls back to. No timings.
"""

import copy

import numpy as np
import pytest
import torch
from torch import nn

import xprune
from xprune.attribution import _methods
from xprune.metrics import _imputation, complexity, faithfulness, stability
from xprune.metrics._base import feature_map, pearson, target_scores
from xprune.metrics._imputation import (
    _impute,
    _impute_prefixes,
    _impute_rows,
    _impute_sparse,
    _neighbour_matrix,
    _solve_spd,
)
from xprune.metrics._removal import ReplacePixels, as_baseline, expand_feature_mask
from xprune.metrics._removal import perturbed_scores as _perturbed_scores


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def batch(digits_cnn, digits_batch):
    """24 digits, their signed saliency maps and the predicted classes."""
    x = digits_batch[0][:24].clone()
    a = xprune.attribute(digits_cnn, x, "predicted", "saliency", params={"abs": False})
    return x, a.values.clone(), a.targets.clone()


@pytest.fixture(scope="module")
def cnn64(digits_cnn):
    return copy.deepcopy(digits_cnn).double().eval()


def random_masks(m, d, generator):
    """(m, d) bool masks with 0 .. d-1 removed pixels (at least one kept per row)."""
    keys = torch.rand(m, d, generator=generator)
    counts = torch.randint(0, d, (m,), generator=generator)
    ranks = keys.argsort(dim=1).argsort(dim=1)
    return ranks < counts[:, None]


# --- ROAD: batched imputation against the scipy path ----------------------------------------

def scipy_rows(images, removed, height, width):
    """The imputation as it was: one sparse scipy solve per image."""
    weights = _neighbour_matrix(height, width)
    return torch.stack([torch.from_numpy(_impute(images[i].numpy(), removed[i].numpy(), weights))
                        for i in range(images.shape[0])])


@pytest.mark.parametrize("shape", [(8, 8), (5, 7), (1, 9), (3, 1), (16, 16)])
def test_batched_imputation_equals_the_scipy_path(shape):
    h, w = shape
    d = h * w
    gen = seeded(sum(shape))
    images = torch.rand(40, 3, d, generator=gen, dtype=torch.float64)
    removed = random_masks(40, d, gen)
    ours = _impute_rows(images, removed, h, w)
    expected = scipy_rows(images, removed, h, w)
    torch.testing.assert_close(ours, expected, atol=1e-10, rtol=0)
    kept = ~removed[:, None, :].expand_as(images)
    assert torch.equal(ours[kept], images[kept])       # kept pixels copied bit for bit


def test_dense_and_sparse_imputation_paths_agree(monkeypatch):
    """16 x 16 images with up to 255 unknowns, all dense, then all sparse, then mixed."""
    gen = seeded(3)
    images = torch.rand(12, 2, 256, generator=gen, dtype=torch.float64)
    removed = random_masks(12, 256, gen)
    monkeypatch.setattr(_imputation, "_DENSE_MAX_UNKNOWNS", 10 ** 6)
    dense = _impute_rows(images, removed, 16, 16)
    monkeypatch.setattr(_imputation, "_DENSE_MAX_UNKNOWNS", 0)
    sparse = _impute_rows(images, removed, 16, 16)
    torch.testing.assert_close(dense, sparse, atol=1e-10, rtol=0)
    monkeypatch.setattr(_imputation, "_DENSE_MAX_UNKNOWNS", 100)
    torch.testing.assert_close(_impute_rows(images, removed, 16, 16), sparse, atol=1e-10,
                               rtol=0)


def test_chunked_dense_solves_equal_one_call(monkeypatch):
    gen = seeded(4)
    images = torch.rand(30, 3, 64, generator=gen, dtype=torch.float64)
    removed = torch.rand(30, 64, generator=gen).argsort(dim=1) < 40     # 40 unknowns each
    whole = _impute_rows(images, removed, 8, 8)
    monkeypatch.setattr(_imputation, "_DENSE_MAX_ELEMENTS", 40 * 40 * 7)   # 7 images a call
    torch.testing.assert_close(_impute_rows(images, removed, 8, 8), whole, atol=1e-14, rtol=0)
    order = torch.rand(30, 64, generator=gen).argsort(dim=1)
    counts = [6, 25, 57]
    monkeypatch.setattr(_imputation, "_DENSE_MAX_ELEMENTS", 57 * 57 * 4)
    chunked = _impute_prefixes(images, order, counts, 8, 8)
    monkeypatch.setattr(_imputation, "_DENSE_MAX_ELEMENTS", 2 ** 22)
    torch.testing.assert_close(chunked, _impute_prefixes(images, order, counts, 8, 8),
                               atol=1e-14, rtol=0)


@pytest.mark.parametrize("counts", [[6, 12, 19, 25, 32, 38, 44, 51, 57], [40, 0, 3, 40, 63]])
def test_prefix_imputation_equals_the_scipy_path(counts, monkeypatch):
    """One Cholesky factor per image for all nested removed sets, in any order of counts."""
    gen = seeded(5)
    images = torch.rand(10, 3, 64, generator=gen, dtype=torch.float64)
    order = torch.rand(10, 64, generator=gen).argsort(dim=1)
    masks = torch.zeros(10, len(counts), 64, dtype=torch.bool)
    for j, k in enumerate(counts):
        masks[:, j].scatter_(1, order[:, :k], True)
    expected = scipy_rows(images.repeat_interleave(len(counts), dim=0), masks.reshape(-1, 64),
                          8, 8).reshape(10, len(counts), 3, 64)
    torch.testing.assert_close(_impute_prefixes(images, order, counts, 8, 8), expected,
                               atol=1e-10, rtol=0)
    monkeypatch.setattr(_imputation, "_DENSE_MAX_UNKNOWNS", 20)     # the fallback, per row
    torch.testing.assert_close(_impute_prefixes(images, order, counts, 8, 8), expected,
                               atol=1e-10, rtol=0)


def literal_imputation(image, removed, height, width):
    """ROAD's linear imputation written out pixel by pixel (Rong, Leemann et al. 2022):
    each removed pixel is the mean of its in-image 8 neighbours weighted 1/6 (direct) and
    1/12 (diagonal), removed neighbours being unknowns; one dense numpy solve per image."""
    idx = [p for p in range(height * width) if removed[p]]
    where = {p: i for i, p in enumerate(idx)}
    system = np.zeros((len(idx), len(idx)))
    rhs = np.zeros((len(idx), image.shape[0]))
    for i, p in enumerate(idx):
        r, c = divmod(p, width)
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                rr, cc = r + dr, c + dc
                if (dr, dc) == (0, 0) or not (0 <= rr < height and 0 <= cc < width):
                    continue
                w = 1 / 6 if dr == 0 or dc == 0 else 1 / 12
                q = rr * width + cc
                system[i, i] += w
                if q in where:
                    system[i, where[q]] -= w
                else:
                    rhs[i] += w * image[:, q]
    out = image.copy()
    if idx:
        out[:, idx] = np.linalg.solve(system, rhs).T
    return out


@pytest.mark.parametrize("dense_max", [0, 6, 10 ** 6])    # all sparse, mixed, all dense
def test_vectorised_prefix_imputation_equals_the_literal_solve_4x4(dense_max, monkeypatch):
    """4 x 4 images, 3 removal fractions (10%, 50%, 90%: 1, 8 and 14 of 16 pixels): the
    batched prefix solves and the block-diagonal sparse solve equal the literal one."""
    monkeypatch.setattr(_imputation, "_DENSE_MAX_UNKNOWNS", dense_max)
    gen = seeded(7)
    images = torch.rand(3, 2, 16, generator=gen, dtype=torch.float64)
    order = torch.rand(3, 16, generator=gen).argsort(dim=1)
    counts = [1, 8, 14]
    ours = _impute_prefixes(images, order, counts, 4, 4)
    for i in range(3):
        for j, k in enumerate(counts):
            removed = np.zeros(16, dtype=bool)
            removed[order[i, :k].numpy()] = True
            expected = literal_imputation(images[i].numpy(), removed, 4, 4)
            torch.testing.assert_close(ours[i, j], torch.from_numpy(expected), atol=1e-12,
                                       rtol=0)


def test_block_diagonal_sparse_solve_in_chunks_equals_one_solve(monkeypatch):
    gen = seeded(8)
    images = torch.rand(9, 2, 36, generator=gen, dtype=torch.float64)
    removed = random_masks(9, 36, gen)
    whole = _impute_sparse(images, removed, 6, 6)
    monkeypatch.setattr(_imputation, "_SPARSE_MAX_UNKNOWNS", 40)   # a few rows per solve
    torch.testing.assert_close(_impute_sparse(images, removed, 6, 6), whole, atol=1e-13,
                               rtol=0)
    torch.testing.assert_close(whole, scipy_rows(images, removed, 6, 6), atol=1e-12, rtol=0)


class Calls:
    """Wraps a function of ``_imputation`` and counts the rows it is called on."""

    def __init__(self, monkeypatch, name):
        self.rows = 0
        wrapped = getattr(_imputation, name)

        def counted(images, *args, **kwargs):
            self.rows += images.shape[0]
            return wrapped(images, *args, **kwargs)
        monkeypatch.setattr(_imputation, name, counted)


@pytest.mark.parametrize("shape", [(12, 12), (9, 14)])
def test_banded_sparse_and_nested_dense_imputation_paths_agree(shape, monkeypatch):
    """ROAD's nested prefixes solved three ways on the same inputs: one dense Cholesky
    factor per image for all counts, banded LAPACK solves per system, and the
    block-diagonal sparse solve of wide images; each path is seen to run."""
    h, w = shape
    d = h * w
    gen = seeded(9)
    images = torch.rand(6, 3, d, generator=gen, dtype=torch.float64)
    order = torch.rand(6, d, generator=gen).argsort(dim=1)
    counts = [d // 10, d // 2, 0, d - 1, d // 2 + 1]
    banded, sparse = Calls(monkeypatch, "_impute_banded"), Calls(monkeypatch, "_impute_sparse")
    monkeypatch.setattr(_imputation, "_DENSE_MAX_UNKNOWNS", 10 ** 6)
    nested = _impute_prefixes(images, order, counts, h, w)
    assert banded.rows == sparse.rows == 0
    monkeypatch.setattr(_imputation, "_DENSE_MAX_UNKNOWNS", 0)
    by_band = _impute_prefixes(images, order, counts, h, w)
    assert banded.rows == 6 * 4 and sparse.rows == 0          # 4 nonzero counts
    monkeypatch.setattr(_imputation, "_BANDED_MAX_WIDTH", w - 1)
    by_sparse = _impute_prefixes(images, order, counts, h, w)
    assert banded.rows == 6 * 4 and sparse.rows == 6 * 4
    torch.testing.assert_close(by_band, nested, atol=1e-10, rtol=0)
    torch.testing.assert_close(by_sparse, nested, atol=1e-10, rtol=0)
    masks = torch.zeros(6, len(counts), d, dtype=torch.bool)
    for j, k in enumerate(counts):
        masks[:, j].scatter_(1, order[:, :k], True)
    expected = scipy_rows(images.repeat_interleave(len(counts), dim=0), masks.reshape(-1, d),
                          h, w).reshape(6, len(counts), 3, d)
    torch.testing.assert_close(by_band, expected, atol=1e-10, rtol=0)
    monkeypatch.setattr(_imputation, "_BANDED_MAX_WIDTH", w)      # masks of any counts
    removed = random_masks(20, d, gen)
    rows = _impute_rows(images.repeat(4, 1, 1)[:20], removed, h, w)
    assert banded.rows > 6 * 4
    torch.testing.assert_close(rows, scipy_rows(images.repeat(4, 1, 1)[:20], removed, h, w),
                               atol=1e-10, rtol=0)


def test_banded_solve_in_chunks_and_its_fallback_equal_one_call(monkeypatch):
    """Bands built a few rows at a time, and the rows of a LAPACK call that reports failure
    (forced: the systems are positive definite) solved by the sparse path instead."""
    from scipy.linalg import lapack

    gen = seeded(10)
    images = torch.rand(7, 2, 100, generator=gen, dtype=torch.float64)
    removed = torch.rand(7, 100, generator=gen).argsort(dim=1) < 70
    whole = _imputation._impute_banded(images, removed, 10, 10)
    torch.testing.assert_close(whole, scipy_rows(images, removed, 10, 10), atol=1e-12, rtol=0)
    monkeypatch.setattr(_imputation, "_BANDED_CHUNK_ELEMENTS", 3 * 144)     # 3 rows a chunk
    torch.testing.assert_close(_imputation._impute_banded(images, removed, 10, 10), whole,
                               atol=1e-14, rtol=0)
    monkeypatch.setattr(_imputation, "_DENSE_MAX_ELEMENTS", 71 * 12 * 2)    # 2 rows a chunk
    torch.testing.assert_close(_imputation._impute_banded(images, removed, 10, 10), whole,
                               atol=1e-14, rtol=0)
    calls, sizes = [], []
    dpbsv = lapack.dpbsv

    def failing_second(ab, b, **kwargs):
        calls.append(1)
        out = dpbsv(ab, b, **kwargs)
        if len(calls) == 2:
            sizes.append(ab.shape[1] // 71)    # rows of the call: 71 columns each
            return (*out[:2], 1)
        return out
    monkeypatch.setattr(lapack, "dpbsv", failing_second)
    sparse = Calls(monkeypatch, "_impute_sparse")
    torch.testing.assert_close(_imputation._impute_banded(images, removed, 10, 10), whole,
                               atol=1e-12, rtol=0)
    assert sparse.rows == sizes[0] >= 1 and len(calls) >= 4       # 2-row chunks: 4 at least


def test_stacked_banded_solves_equal_the_literal_solve_per_row(monkeypatch):
    """Rows of many removed counts (none, one, all but one pixel, and between), in one
    image 1 pixel wide and others, solved together by :func:`_impute_banded` (rows of one
    half-bandwidth stacked into one LAPACK call): each equals its own dense solve."""
    from scipy.linalg import lapack

    gen = seeded(11)
    halves = []
    dpbsv = lapack.dpbsv

    def recorded(ab, b, **kwargs):
        halves.append(ab.shape[0] - 1)
        return dpbsv(ab, b, **kwargs)
    monkeypatch.setattr(lapack, "dpbsv", recorded)
    for h, w in [(7, 9), (6, 1), (1, 5)]:
        d = h * w
        images = torch.rand(12, 3, d, generator=gen, dtype=torch.float64)
        counts = torch.tensor([0, 1, d - 1, d // 2] + torch.randint(0, d, (8,),
                                                                     generator=gen).tolist())
        removed = torch.rand(12, d, generator=gen).argsort(dim=1) < counts[:, None]
        halves.clear()
        ours = _imputation._impute_banded(images, removed, h, w)
        assert len(halves) == len(set(halves))            # one call per half-bandwidth
        assert max(halves) <= w + 1
        for i in range(12):
            expected = literal_imputation(images[i].numpy(), removed[i].numpy(), h, w)
            torch.testing.assert_close(ours[i], torch.from_numpy(expected), atol=1e-12, rtol=0)



def test_imputation_runs_on_one_thread_and_restores_the_count():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with _imputation._one_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError, match="inside"), _imputation._one_thread():
            raise RuntimeError("inside")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_cholesky_failure_falls_back_to_lu():
    system = torch.tensor([[[2.0, 1.0], [1.0, 2.0]], [[-2.0, 1.0], [1.0, 3.0]]],
                          dtype=torch.float64)             # the second is indefinite
    rhs = torch.tensor([[[1.0], [2.0]], [[3.0], [4.0]]], dtype=torch.float64)
    factor, solution = _solve_spd(system, rhs)
    torch.testing.assert_close(solution, torch.linalg.solve(system, rhs))
    assert bool(factor[1].isnan().all()) and not bool(factor[0].isnan().any())


def road_as_it_was(model, x, a, t, percentages, order, noise_std, seed, output, max_rows):
    """road_curve before issue 8: one scipy solve per image and percentage, noise per row."""
    gen = seeded(seed)
    scores = feature_map(a).double()
    n, d = scores.shape
    c, h, w = x.shape[1:]
    counts = [min(d - 1, int(np.floor(p * d + 1e-9))) for p in percentages]
    rank = torch.empty(n, d, dtype=torch.long).scatter_(
        1, scores.argsort(dim=1, descending=True, stable=True), torch.arange(d).expand(n, d))
    weights = _neighbour_matrix(h, w)
    rows = []
    for i in range(n):
        for k in counts:
            removed = rank[i] < k if order == "morf" else rank[i] >= d - k
            flat = x[i].reshape(c, -1).double().numpy()
            filled = torch.from_numpy(_impute(flat, removed.numpy(), weights))
            if int(removed.sum()):
                filled[:, removed] += torch.randn(c, int(removed.sum()), generator=gen,
                                                  dtype=torch.float64) * noise_std
            rows.append(filled.reshape(c, h, w).to(x.dtype))
    batch = torch.stack(rows)
    values = target_scores(model, batch, t.repeat_interleave(len(counts)), output=output,
                           max_rows=max_rows)
    return values.reshape(n, len(counts))


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_road_equals_the_scipy_implementation(cnn64, batch, order):
    x, a, t = (v[:10] for v in batch)
    x, a = x.double(), a.double()
    pct = (0.1, 0.5, 0.05, 0.9)
    for max_rows in (4096, 9):          # one chunk, and two samples' rows per chunk
        ours = faithfulness.road_curve(cnn64, x, a, t, percentages=pct, order=order,
                                       output="logit", generator=seeded(2), max_rows=max_rows)
        expected = road_as_it_was(cnn64, x, a, t, pct, order, 0.01, 2, "logit", 4096)
        torch.testing.assert_close(ours, expected, atol=1e-10, rtol=0)


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_road_on_banded_systems_equals_the_scipy_implementation(order):
    """3 x 16 x 16 images: 90% removal is 230 unknowns, solved as banded systems."""
    torch.manual_seed(0)
    model = xprune.models.DigitsCNN(in_channels=3, image_shape=(16, 16)).double().eval()
    gen = seeded(11)
    x = torch.rand(3, 3, 16, 16, generator=gen, dtype=torch.float64)
    a = torch.randn(3, 3, 16, 16, generator=gen, dtype=torch.float64)
    t = torch.tensor([0, 3, 7])
    pct = (0.1, 0.9, 0.5)
    ours = faithfulness.road_curve(model, x, a, t, percentages=pct, order=order,
                                   output="logit", generator=seeded(2))
    expected = road_as_it_was(model, x, a, t, pct, order, 0.01, 2, "logit", 4096)
    torch.testing.assert_close(ours, expected, atol=1e-10, rtol=0)


def test_road_on_one_pixel_wide_images_equals_the_scipy_implementation():
    """1 x 400 x 1 images (a column: no diagonal or horizontal neighbours): banded systems of
    bandwidth 1 (a review found the banded path crashing there)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(400, 3)).double().eval()
    gen = seeded(12)
    x = torch.rand(2, 1, 400, 1, generator=gen, dtype=torch.float64)
    a = torch.randn(2, 1, 400, 1, generator=gen, dtype=torch.float64)
    t = torch.tensor([0, 2])
    pct = (0.1, 0.75)
    ours = faithfulness.road_curve(model, x, a, t, percentages=pct, output="logit",
                                   generator=seeded(2))
    expected = road_as_it_was(model, x, a, t, pct, "morf", 0.01, 2, "logit", 4096)
    torch.testing.assert_close(ours, expected, atol=1e-10, rtol=0)


def test_noisy_imputation_equals_the_scipy_path_with_the_same_noise():
    gen = seeded(6)
    x = torch.rand(7, 2, 6, 5, generator=gen, dtype=torch.float64)
    removed = random_masks(7, 30, gen).reshape(7, 6, 5)
    ours = _imputation.noisy_linear_imputation(x, removed, noise_std=0.3, generator=seeded(1))
    noise = seeded(1)
    weights = _neighbour_matrix(6, 5)
    for i in range(7):
        r = removed[i].reshape(-1)
        filled = torch.from_numpy(_impute(x[i].reshape(2, -1).numpy(), r.numpy(), weights))
        if int(r.sum()):
            filled[:, r] += torch.randn(2, int(r.sum()), generator=noise,
                                        dtype=torch.float64) * 0.3
        torch.testing.assert_close(ours[i], filled.reshape(2, 6, 5), atol=1e-10, rtol=0)


# --- faithfulness correlation and model effective complexity: per-chunk reductions ---------

def faithfulness_correlation_as_it_was(model, x, a, t, *, subset_size, n_runs, seed, max_rows):
    """Every subset mask of the batch kept, the attribution masses computed at the end."""
    gen = seeded(seed)
    scores = feature_map(a).double()
    n, d = scores.shape
    subsets = []

    def masks_for(sl):
        mask = torch.zeros(sl.stop - sl.start, n_runs, d, dtype=torch.bool)
        for i in range(sl.stop - sl.start):
            keys = torch.rand(n_runs, d, generator=gen)
            mask[i].scatter_(1, keys.topk(subset_size, dim=1).indices, True)
        subsets.append(mask)
        return mask

    perturbed = _perturbed_scores(model, x, t, masks_for, n_runs, as_baseline(0.0, x), "logit",
                                  max_rows, removal=ReplacePixels())
    original = target_scores(model, x, t, output="logit", max_rows=max_rows)
    mass = (torch.cat(subsets).double() * scores[:, None, :]).sum(dim=2)
    return pearson(mass, original[:, None] - perturbed)


@pytest.mark.parametrize("max_rows", [4096, 50, 7])
def test_faithfulness_correlation_equals_the_whole_batch_version(digits_cnn, batch, max_rows):
    x, a, t = batch
    ours = faithfulness.faithfulness_correlation(digits_cnn, x, a, t, subset_size=16,
                                                 n_runs=20, generator=seeded(3),
                                                 max_rows=max_rows)
    expected = faithfulness_correlation_as_it_was(digits_cnn, x, a, t, subset_size=16,
                                                  n_runs=20, seed=3, max_rows=max_rows)
    assert torch.equal(ours, expected)


def test_faithfulness_correlation_chunks_agree(cnn64, batch):
    x, a, t = batch
    x, a = x.double(), a.double()
    run = lambda rows: faithfulness.faithfulness_correlation(  # noqa: E731
        cnn64, x, a, t, n_runs=10, generator=seeded(4), max_rows=rows)
    torch.testing.assert_close(run(35), run(4096), atol=1e-12, rtol=0)


def topk_set(keys, size):
    """The set torch.topk selects, as a mask: what the subsets were before _top_sets."""
    return torch.zeros(keys.shape, dtype=torch.bool).scatter_(
        -1, keys.topk(size, dim=-1, sorted=False).indices, True)


@pytest.mark.parametrize(("d", "sizes"), [(2, [1]), (64, [1, 16, 63]), (3072, [768, 5])])
def test_top_sets_are_the_topk_sets_of_uniform_keys(d, sizes):
    keys = torch.rand(3, 70, d, generator=seeded(11))
    for size in sizes:
        got = faithfulness._top_sets(keys, size)
        assert torch.equal(got, topk_set(keys, size))
        assert (got.sum(-1) == size).all()


def test_top_sets_with_ties_at_the_cut_take_the_topk_set():
    """A key below the size-th largest equal to it leaves the set ambiguous: those rows take
    torch.topk's choice (the subsets drawn before), the others are unique."""
    keys = torch.tensor([[0.5, 0.5, 0.5, 0.1, 0.9],      # 3 tied for 2 places (size 3)
                         [0.2, 0.7, 0.3, 0.7, 0.7],      # 3 tied for 3 places: unique
                         [0.25, 0.75, 0.5, 0.0, 1.0],    # no tie
                         [0.4, 0.4, 0.4, 0.4, 0.4]])     # all tied
    got = faithfulness._top_sets(keys, 3)
    assert torch.equal(got, topk_set(keys, 3))
    assert torch.equal(got[1:3], torch.tensor([[False, True, False, True, True],
                                               [False, True, True, False, True]]))
    assert got[0, 4] and got[0, :3].sum() == 2 and not got[0, 3]
    assert (got.sum(1) == 3).all()


def test_subset_draws_in_blocks_are_the_draws_of_the_whole_chunk(digits_cnn, batch,
                                                                 monkeypatch):
    """Keys drawn, selected and summed a few samples at a time (SUBSET_BLOCK_ELEMENTS) give the
    scores, bit for bit, of the subsets drawn for the whole batch at once with topk."""
    x, a, t = batch
    sizes, runs = [3, 16, 40], 6
    scores = feature_map(a).double()
    gen = seeded(8)
    keys = torch.rand(x.shape[0], len(sizes), runs, 64, generator=gen)
    mask = torch.cat([topk_set(keys[:, j], size) for j, size in enumerate(sizes)], dim=1)
    mass = (mask.double() * scores[:, None, :]).sum(dim=2)
    perturbed = _perturbed_scores(digits_cnn, x, t, lambda sl: mask[sl], len(sizes) * runs,
                                  as_baseline(0.0, x), "logit", 4096, removal=ReplacePixels())
    original = target_scores(digits_cnn, x, t, output="logit")
    expected = pearson(mass.reshape(-1, runs), (original[:, None] - perturbed).reshape(-1, runs))
    for block in (1, 3 * 18 * 64, 2 ** 18):
        monkeypatch.setattr(faithfulness, "SUBSET_BLOCK_ELEMENTS", block)
        got = faithfulness._subset_correlations(
            digits_cnn, x, scores, t, sizes, n_runs=runs, baseline=0.0, output="logit",
            generator=seeded(8), max_rows=4096)
        assert torch.equal(got, expected.reshape(-1, len(sizes)))


def complexity_as_it_was(model, x, a, t, *, eps, n_samples, noise, output, seed, max_rows):
    """model_effective_complexity before issue 8: its own chunked perturb-and-score loop."""
    gen = seeded(seed)
    low, high = noise
    scores = feature_map(a).double()
    n, d = scores.shape
    order = scores.abs().argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(d).expand(n, d))
    keep = rank[:, None, :] < torch.arange(d + 1)[None, :, None]
    original = target_scores(model, x, t, output=output, max_rows=max_rows)
    rows = (d + 1) * n_samples
    chunk = max(1, max_rows // rows)
    losses = []
    for start in range(0, n, chunk):
        idx = range(start, min(n, start + chunk))
        z = torch.stack([low + (high - low) * torch.rand(n_samples, *x.shape[1:], generator=gen,
                                                         dtype=torch.float64)
                         for _ in idx]).to(dtype=x.dtype)
        mask = expand_feature_mask(keep[idx.start:idx.stop], x.shape[1:])
        perturbed = torch.where(mask[:, :, None], x[idx.start:idx.stop, None, None], z[:, None])
        f = target_scores(model, perturbed.reshape(-1, *x.shape[1:]),
                          t[idx.start:idx.stop].repeat_interleave(rows), output=output,
                          max_rows=max_rows).reshape(len(idx), d + 1, n_samples)
        losses.append(((f - original[idx.start:idx.stop, None, None]) ** 2).mean(dim=2))
    return (torch.cat(losses) < eps).double().argmax(dim=1).double()


@pytest.mark.parametrize(("noise", "output", "eps", "max_rows"),
                         [((0.0, 1.0), "probability", 0.01, 4096),
                          ((0.0, 1.0), "probability", 0.01, 700),
                          ((0.5, 0.5), "logit", 0.3, 4096)])
def test_model_effective_complexity_equals_its_former_loop(digits_cnn, batch, noise, output,
                                                          eps, max_rows):
    x, a, t = (v[:8] for v in batch)
    ours = complexity.model_effective_complexity(digits_cnn, x, a, t, eps=eps, n_samples=6,
                                                 noise=noise, output=output,
                                                 generator=seeded(7), max_rows=max_rows)
    expected = complexity_as_it_was(digits_cnn, x, a, t, eps=eps, n_samples=6, noise=noise,
                                    output=output, seed=7, max_rows=max_rows)
    assert torch.equal(ours, expected)
    assert 0 < float(ours.min()) and float(ours.max()) <= 64   # not a trivial answer


def test_perturbed_scores_reduce_is_the_reduction_of_the_scores(digits_cnn, batch):
    x, _, t = batch
    masks = torch.rand(24, 5, 64, generator=seeded(8)) < 0.3

    def masks_for(sl):
        return masks[sl]

    def reduce(sl, scores):
        return scores.amax(dim=1, keepdim=True) - sl.start

    b = as_baseline(0.0, x)
    full = _perturbed_scores(digits_cnn, x, t, masks_for, 5, b, "logit", 15,
                             removal=ReplacePixels())
    reduced = _perturbed_scores(digits_cnn, x, t, masks_for, 5, b, "logit", 15, reduce=reduce,
                                removal=ReplacePixels())
    starts = torch.arange(24).div(3, rounding_mode="floor") * 3        # 3 samples a chunk
    assert torch.equal(reduced[:, 0], full.amax(dim=1) - starts)


# --- the explainer: one backward root, the number of outputs found once -----------------

@pytest.mark.parametrize(("method", "params"), [
    ("saliency", {"abs": False}), ("saliency", {"abs": True}), ("input_x_gradient", None),
    ("integrated_gradients", {"n_steps": 8}), ("guided_backprop", None),
    ("smoothgrad", {"nt_samples": 4}), ("vargrad", {"nt_samples": 4})])
def test_one_root_gradients_are_bit_identical_to_captums(digits_cnn, batch, method, params,
                                                          monkeypatch):
    x, _, t = batch
    ours = xprune.attribute(digits_cnn, x, t, method, params=params, max_rows=50)
    monkeypatch.setattr(_methods, "_one_root", lambda m: m)    # Captum's compute_gradients
    captums = xprune.attribute(digits_cnn, x, t, method, params=params, max_rows=50)
    assert torch.equal(ours.values, captums.values)
    if ours.delta is not None:
        assert torch.equal(ours.delta, captums.delta)


def test_one_root_gradients_need_a_target(digits_cnn, batch):
    x = batch[0][:2].clone().requires_grad_()
    with pytest.raises(ValueError, match="Expected a target for a model with several outputs"):
        _methods._summed_gradients(digits_cnn, (x,), None)


class Counting(nn.Module):
    """Counts the forward passes of a wrapped model, by their number of rows."""

    def __init__(self, model):
        super().__init__()
        self.model, self.rows = model, []

    def forward(self, x):
        self.rows.append(x.shape[0])
        return self.model(x)


def test_explainer_finds_the_number_of_outputs_once(digits_cnn, batch):
    x, _, t = batch
    model = Counting(digits_cnn)
    explain = xprune.explainer(model, "saliency", params={"abs": False})
    first, second = explain(x, t), explain(x[:5], t[:5])
    # one 1-row probe of the outputs, a 1-row and a 2-row probe of the bytes a row keeps for
    # the backward pass (the memory budget), then the two batches
    assert model.rows == [1, 1, 2, 24, 5]
    expected = xprune.attribute(digits_cnn, x, t, "saliency", params={"abs": False}).values
    assert torch.equal(first, expected)             # the same 24-row computation repeated
    # A 5-row batch splits the kernels' work differently across threads: equal up to rounding
    # (shared/cases/001-batch-composition.md), not bit for bit.
    torch.testing.assert_close(second, expected[:5])
    with pytest.raises(ValueError, match=r"Expected `target` in \[0, 10\)"):
        explain(x[:2], torch.tensor([0, 10]))       # the cached count still checks targets


@pytest.mark.parametrize(("method", "params", "independent"), [
    ("saliency", None, True), ("integrated_gradients", None, True),
    ("integrated_gradients", {"baseline": "blur"}, True),
    ("integrated_gradients", {"baseline": "uniform"}, False), ("occlusion", None, True),
    ("smoothgrad", None, False), ("vargrad", None, False), ("gradient_shap", None, False),
    ("deeplift", {"baseline": "uniform"}, False)])
def test_explainer_says_whether_rows_are_independent(digits_cnn, method, params, independent):
    assert xprune.explainer(digits_cnn, method, params=params).independent_rows is independent


# --- stability: merged calls and chunks -------------------------------------------------------

def sensitivity_as_it_was(explain_fn, x, t, *, radius, n_samples, seed, max_rows):
    """_sensitivity before issue 8: all noise, one base call, one perturbed call (N, S)."""
    gen = seeded(seed)
    n = x.shape[0]
    noise = torch.stack([(torch.rand(n_samples, *x.shape[1:], generator=gen) * 2 - 1) * radius
                         for _ in range(n)]).to(x.dtype)

    def explain(rows, targets):
        return torch.cat([explain_fn(rows[i:i + max_rows], targets[i:i + max_rows])
                          .double().reshape(min(max_rows, rows.shape[0] - i), -1)
                          for i in range(0, rows.shape[0], max_rows)])

    base = explain(x, t)
    maps = explain((x[:, None] + noise).reshape(n * n_samples, *x.shape[1:]),
                   t.repeat_interleave(n_samples))
    diff = (maps.reshape(n, n_samples, -1) - base[:, None]).norm(dim=2)
    return diff / base.norm(dim=1, keepdim=True)


@pytest.mark.parametrize("max_rows", [4096, 13])
def test_sensitivity_with_merged_calls_equals_the_two_call_version(cnn64, batch, max_rows):
    x, _, t = batch
    x = x.double()
    explain = xprune.explainer(cnn64, "saliency", params={"abs": False})
    assert explain.independent_rows
    ours = stability.sensitivity_draws(explain, x, t, n_samples=4, generator=seeded(9),
                                       max_rows=max_rows)
    expected = sensitivity_as_it_was(explain, x, t, radius=0.1, n_samples=4, seed=9,
                                     max_rows=4096)
    torch.testing.assert_close(ours, expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(stability.max_sensitivity(explain, x, t, n_samples=4,
                                                         generator=seeded(9)),
                               expected.amax(dim=1), atol=1e-12, rtol=0)
    torch.testing.assert_close(stability.avg_sensitivity(explain, x, t, n_samples=4,
                                                         generator=seeded(9)),
                               expected.mean(dim=1), atol=1e-12, rtol=0)


def test_float32_integrated_gradients_stability_moves_by_rounding_only(digits_cnn, batch):
    """In float32 the merged call rounds the unperturbed maps as a bigger batch would."""
    x, _, t = (v[:12] for v in batch)
    explain = xprune.explainer(digits_cnn, "integrated_gradients", params={"n_steps": 8})
    ours = stability.sensitivity_draws(explain, x, t, n_samples=3, generator=seeded(1))
    expected = sensitivity_as_it_was(explain, x, t, radius=0.1, n_samples=3, seed=1,
                                     max_rows=4096)
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-9)


def call_seeded_explainer(x, target):
    """A map whose noise is seeded per call by the call's size: the call structure matters."""
    gen = seeded(x.shape[0])
    return x * (1 + 0.1 * torch.randn(x.shape, generator=gen, dtype=x.dtype))


@pytest.mark.parametrize("max_rows", [4096, 10, 7])
def test_sensitivity_keeps_the_calls_of_other_explainers(batch, max_rows):
    """A callable without ``independent_rows`` sees the calls it always saw, also in chunks
    of max_rows samples, so its scores do not change."""
    x, _, t = batch
    ours = stability.sensitivity_draws(call_seeded_explainer, x, t, n_samples=3,
                                       generator=seeded(2), max_rows=max_rows)
    expected = sensitivity_as_it_was(call_seeded_explainer, x, t, radius=0.1, n_samples=3,
                                     seed=2, max_rows=max_rows)
    assert torch.equal(ours, expected)
    smooth = xprune.explainer(xprune.models.DigitsCNN().eval(), "smoothgrad",
                              params={"nt_samples": 3})
    ours = stability.sensitivity_draws(smooth, x[:6], t[:6], n_samples=2, generator=seeded(2),
                                       max_rows=max_rows)
    expected = sensitivity_as_it_was(smooth, x[:6], t[:6], radius=0.1, n_samples=2, seed=2,
                                     max_rows=max_rows)
    assert torch.equal(ours, expected)


def lipschitz_as_it_was(explain_fn, x, t, *, noise_std, n_samples, seed):
    gen = seeded(seed)
    n = x.shape[0]
    noise = torch.stack([torch.randn(n_samples, *x.shape[1:], generator=gen) * noise_std
                         for _ in range(n)]).to(x.dtype)
    perturbed = x[:, None] + noise
    base = explain_fn(x, t).double().reshape(n, -1)
    maps = explain_fn(perturbed.reshape(n * n_samples, *x.shape[1:]),
                      t.repeat_interleave(n_samples)).double().reshape(n, n_samples, -1)
    step = (perturbed.double() - x.double()[:, None]).reshape(n, n_samples, -1).norm(dim=2)
    return ((maps - base[:, None]).norm(dim=2) / step).amax(dim=1)


def test_lipschitz_with_merged_calls_equals_the_two_call_version(cnn64, batch):
    x, _, t = batch
    x = x.double()
    explain = xprune.explainer(cnn64, "input_x_gradient")
    expected = lipschitz_as_it_was(explain, x, t, noise_std=0.1, n_samples=3, seed=5)
    for max_rows in (4096, 9):
        ours = stability.local_lipschitz_estimate(explain, x, t, n_samples=3,
                                                  generator=seeded(5), max_rows=max_rows)
        torch.testing.assert_close(ours, expected, atol=1e-12, rtol=0)
    assert torch.equal(stability.local_lipschitz_estimate(call_seeded_explainer, x, t,
                                                          n_samples=3, generator=seeded(5)),
                       lipschitz_as_it_was(call_seeded_explainer, x, t, noise_std=0.1,
                                           n_samples=3, seed=5))


# --- forward passes of cache-sized batches on CPU ------------------------------------------

def test_cpu_forwards_take_cache_sized_batches_with_the_same_scores():
    """3x32x32 images into the CNN on CPU: passes of 64 rows (its widest activation, 32 x 32
    x 32 = 32,768 elements a row, would allow 2**19 // 32,768 = 16, raised to the 64-row
    minimum, under the 2**18 // 3,072 = 85 of the input rule; max_rows still caps them),
    and the scores are those of the rows sent one at a time (literal loop)."""
    from xprune.metrics._base import (
        CPU_FORWARD_ELEMENTS,
        CPU_FORWARD_MIN_ROWS,
        conv_activation_elements,
        forward_rows,
    )
    from xprune.models import DigitsCNN

    torch.manual_seed(0)
    model = DigitsCNN(in_channels=3, image_shape=(32, 32)).eval()
    x = torch.rand(200, 3, 32, 32, generator=seeded(1))
    t = torch.arange(200) % 10
    seen = []
    hook = model.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    try:
        ours = target_scores(model, x, t, output="probability")
        assert conv_activation_elements(model, x[0]) == 32 * 32 * 32
        assert CPU_FORWARD_ELEMENTS // 3072 == 85
        assert CPU_FORWARD_MIN_ROWS == 64 == forward_rows(model, x, 4096)
        # the first pass of a shape is checked on 4 rows, eager and channels last, both
        # through the model itself (its hooks fire: tests/test_metrics_forward.py)
        assert seen == [4, 4, 64, 64, 64, 8]
        seen.clear()
        target_scores(model, x, t, output="probability", max_rows=16)
        assert seen == [16] * 12 + [8]
    finally:
        hook.remove()
    with torch.no_grad():
        literal = torch.stack([model(x[i:i + 1]).softmax(dim=1)[0, t[i]] for i in range(200)])
    torch.testing.assert_close(ours, literal.double(), atol=1e-6, rtol=1e-5)
    assert forward_rows(model, x[:, :1, :2, :2], 4096) == 4096      # small rows: max_rows
    assert forward_rows(model, x[:, :, :8, :8], 4096) == 256         # 32 x 8 x 8 = 2,048


def test_conv_passes_are_sized_by_the_widest_activation(digits_cnn, digits_batch):
    """The 8x8 digits CNN widens its 64 input elements to 32 x 8 x 8 = 2,048 in its second
    convolution: passes of 2**19 // 2,048 = 256 rows (not the input rule's 4,096), with the
    scores of the rows sent one at a time. Models without a convolution keep the input rule
    (a tabular MLP: max_rows), and a conv model's huge rows the input rule's few rows."""
    from xprune.metrics._base import CPU_FORWARD_ACTIVATIONS, conv_activation_elements, forward_rows
    from xprune.models import TabularMLP

    model = copy.deepcopy(digits_cnn).eval()
    x = digits_batch[0][:50].repeat(12, 1, 1, 1)                 # 600 rows
    t = torch.arange(600) % 10
    assert conv_activation_elements(model, x[0]) == 2048
    assert forward_rows(model, x, 4096) == CPU_FORWARD_ACTIVATIONS // 2048 == 256
    assert forward_rows(model, x, 100) == 100                          # max_rows caps
    seen = []
    hook = model.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    try:
        ours = target_scores(model, x, t, output="logit")
        assert seen == [4, 4, 256, 256, 88]           # the channels-last check, then passes
    finally:
        hook.remove()
    with torch.no_grad():
        literal = torch.stack([model(x[i:i + 1])[0, t[i]] for i in range(600)])
    torch.testing.assert_close(ours, literal.double(), atol=1e-5, rtol=1e-5)
    mlp = TabularMLP(30).eval()
    assert conv_activation_elements(mlp, torch.zeros(30)) == 0
    assert forward_rows(mlp, torch.zeros(5, 30), 4096) == 4096            # 2**18 // 30 > 4096
    wide = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten())          # 224 x 224 images:
    assert forward_rows(wide, torch.zeros(2, 3, 224, 224), 4096) == 1  # input rule, 1 row


def test_cpu_forwards_of_token_ids_take_about_8192_tokens_a_pass():
    """Token ids into a model with an embedding: passes of 2**13 // T sequences (64 of 128
    tokens; max_rows still caps them), the scores those of one sequence at a time."""
    from xprune.metrics._base import CPU_FORWARD_TOKENS, forward_rows

    class Bag(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.out = nn.Embedding(50, 4), nn.Linear(4, 3)

        def forward(self, ids):
            return self.out(self.emb(ids).mean(dim=1))

    torch.manual_seed(0)
    model = Bag().eval()
    ids = torch.randint(0, 50, (150, 128), generator=seeded(2))
    t = torch.arange(150) % 3
    seen = []
    hook = model.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    try:
        ours = target_scores(model, ids, t, output="logit")
        assert CPU_FORWARD_TOKENS // 128 == 64 == forward_rows(model, ids, 4096)
        assert seen == [64, 64, 22]
    finally:
        hook.remove()
    assert forward_rows(model, ids, 32) == 32                      # max_rows caps them
    assert forward_rows(model, ids[:, :8], 4096) == 1024
    # float rows of the same shape into a model without an embedding: elements as before
    assert forward_rows(nn.Linear(128, 2), ids.float(), 4096) == 2048
    with torch.no_grad():
        literal = torch.stack([model(ids[i:i + 1])[0, t[i]] for i in range(150)])
    torch.testing.assert_close(ours, literal.double(), atol=1e-6, rtol=1e-5)


# --- the curves forward a repeated row once ------------------------------------------------

CURVES = {"deletion": faithfulness.deletion_curve, "insertion": faithfulness.insertion_curve,
          "region": faithfulness.region_perturbation_curve}


@pytest.mark.parametrize("curve, steps", [("deletion", None), ("insertion", None),
                                          ("region", None), ("deletion", 16)])
def test_curves_forward_each_distinct_row_once(digits_cnn, batch, curve, steps, monkeypatch):
    """Digits with the zero baseline: a step that removes (inserts) only black pixels leaves
    the row as it was, so its score is the previous step's, unforwarded. A forward hook
    counts the rows: N x (steps + 1) less the steps whose pixels are all 0 (literal count
    from the ranking), plus the one row model_targets looks at. The curve equals the path
    that forwards every row (assert_close: a pass's other rows may change float rounding)
    and repeats bit for bit."""
    x, a, t = batch
    model = copy.deepcopy(digits_cnn).eval()
    fn = CURVES[curve]
    n, d = x.shape[0], 64
    seen = []
    hook = model.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    try:
        fn(model, x, a, t, steps=steps)              # a first call: the view's checking probes
        seen.clear()
        got = fn(model, x, a, t, steps=steps).values
        forwarded = sum(seen)
        assert torch.equal(fn(model, x, a, t, steps=steps).values, got)
        k = steps or d                                # pixels d / k per step, by rank
        order = feature_map(a).argsort(dim=1, descending=True, stable=True)
        black = (x.reshape(n, d) == 0).gather(1, order).reshape(n, k, d // k).all(dim=2)
        assert 0 < int(black.sum()) < n * k
        assert forwarded == 1 + n * (k + 1) - int(black.sum())
        original = faithfulness.perturbed_scores
        monkeypatch.setattr(faithfulness, "perturbed_scores", lambda *args, **kw: original(
            *args, **{**kw, "reuse_repeats": False}))
        seen.clear()
        every = fn(model, x, a, t, steps=steps).values
        assert sum(seen) == 1 + n * (k + 1)
    finally:
        hook.remove()
    torch.testing.assert_close(got, every)


def test_repeated_rows_compare_bits():
    """-0.0 and 0.0 are different rows (a model may tell them apart), a NaN row equals itself;
    a sample's first row never repeats, nor does a row repeat another sample's."""
    from xprune.metrics._removal import repeated_rows

    rows = torch.tensor([[0.0, 1.0], [0.0, 1.0], [-0.0, 1.0],       # sample 0
                         [-0.0, 1.0], [float("nan"), 2.0], [float("nan"), 2.0]])  # sample 1
    assert repeated_rows([rows], 3).tolist() == [False, True, False, False, False, True]
    ids = torch.tensor([[3, 4], [3, 4], [3, 4], [3, 4]])
    mask = torch.tensor([[1, 1], [1, 1], [1, 0], [1, 0]])
    assert repeated_rows([ids], 2).tolist() == [False, True, False, True]
    assert repeated_rows([ids, mask], 4).tolist() == [False, True, False, True]
    assert repeated_rows([ids, mask], 2).tolist() == [False, True, False, True]
    assert repeated_rows([ids[:2], mask[1:3]], 2).tolist() == [False, False]


# --- review fixes of session 8 -----------------------------------------------------------------

def test_infidelity_keeps_to_max_rows_when_one_samples_draws_exceed_it():
    """More draws than ``max_rows``: the passes still hold at most ``max_rows`` rows, and the
    noise, drawn per sample, is the same whatever the pass size (scores assert_close)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()
    x, a = torch.randn(2, 4), torch.randn(2, 4)
    t = torch.tensor([0, 1])
    seen = []
    handle = model.register_forward_hook(lambda m, i, o: seen.append(o.shape[0]))
    try:
        small = faithfulness.infidelity(model, x, a, t, n_samples=50, max_rows=8)
        passes = list(seen)
    finally:
        handle.remove()
    whole = faithfulness.infidelity(model, x, a, t, n_samples=50, max_rows=4096)
    assert max(passes) <= 8 and sum(passes) == 2 + 2 * 50
    torch.testing.assert_close(small, whole)


def test_seeded_random_methods_take_no_cpu_pass_cut(monkeypatch):
    """The CPU's 16 MiB pass cut applies to deterministic methods only: SmoothGrad's draws
    follow its passes, so with the cut made tiny its maps stay bit-identical to the uncut
    ones (and its passes whole), while Saliency's passes are cut and its maps unchanged
    beyond rounding."""
    import xprune.attribution as attribution

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 8 * 8, 3)).eval()
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    params = {"nt_samples": 4, "seed": 3}
    before = {m: xprune.attribute(model, x, "predicted", m, params=p).values
              for m, p in (("smoothgrad", params), ("saliency", None))}
    seen = []
    handle = model[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    monkeypatch.setattr(attribution, "CPU_PASS_BYTES", 1)
    try:
        smooth = xprune.attribute(model, x, "predicted", "smoothgrad", params=params).values
        smooth_passes = list(seen)
        seen.clear()
        plain = xprune.attribute(model, x, "predicted", "saliency").values
        plain_passes = list(seen)
    finally:
        handle.remove()
    assert torch.equal(smooth, before["smoothgrad"])
    assert max(smooth_passes) == 16 * 4
    assert max(plain_passes) == attribution.CPU_MIN_PASS_ROWS
    torch.testing.assert_close(plain, before["saliency"])


def test_transposed_convolutions_widen_the_activation_bound():
    """A stride-4 transposed convolution makes 16x the positions of its 8x8 input: the bound
    is 32 channels x 32 x 32 = 32,768 elements a row, not 32 x 8 x 8."""
    from xprune.metrics._base import conv_activation_elements

    model = nn.Sequential(nn.ConvTranspose2d(1, 32, 4, stride=4))
    assert model(torch.zeros(1, 1, 8, 8))[0].numel() == 32 * 32 * 32
    assert conv_activation_elements(model, torch.zeros(1, 8, 8)) == 32 * 32 * 32
    assert conv_activation_elements(nn.Conv2d(1, 32, 3), torch.zeros(1, 8, 8)) == 32 * 8 * 8
