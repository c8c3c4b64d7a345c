"""Region perturbation / AOPC, sensitivity-n, monotonicity correlation and ROAD.

Each metric is checked against a slow, literal implementation of its paper's
definition, against Quantus 0.6 where Quantus has it, on closed forms for
linear models, and for batch composition, seeds and errors.
"""

import copy
import math
import warnings

import numpy as np
import pytest
import torch
from conftest import Linear
from scipy import stats
from torch import nn

import xprune
from xprune.metrics import noisy_linear_imputation
from xprune.metrics._base import METRICS
from xprune.metrics.faithfulness import (
    aopc,
    faithfulness_correlation,
    monotonicity_correlation,
    region_perturbation_curve,
    road,
    road_curve,
    sensitivity_n,
    sensitivity_n_curve,
)
from xprune.models import DigitsCNN


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def batch(digits_cnn, digits_batch):
    """16 digits, their signed saliency maps (no ties) and predicted classes."""
    x = digits_batch[0][:16].clone()
    a = xprune.attribute(digits_cnn, x, "predicted", "saliency", params={"abs": False})
    return x, a.values.clone(), a.targets.clone()


@pytest.fixture(scope="module")
def cnn64(digits_cnn):
    """The digits CNN in float64, so that literal one-at-a-time references agree to 1e-10."""
    return copy.deepcopy(digits_cnn).double().eval()


def score(model, x, t, output):
    """The target's logit or probability for one input (C, H, W) or (F,); both for output=None."""
    with torch.no_grad():
        logits = model(x[None])[0]
    both = {"logit": float(logits[t]), "probability": float(logits.softmax(0)[t])}
    return both if output is None else both[output]


class TwoFeatures(nn.Module):
    """Logits [x1 + 2 x2, 0]."""

    def forward(self, x):
        return torch.stack([x[:, 0] + 2 * x[:, 1], torch.zeros_like(x[:, 0])], dim=1)


def quantus_or_skip():
    quantus = pytest.importorskip("quantus")
    warnings.filterwarnings("ignore", module="quantus")
    return quantus


# --- region perturbation / AOPC (Samek et al. 2017) ---------------------------------------

def region_curve_literal(model, x, a, t, patch, baseline, steps=None):
    """Samek et al.'s MoRF process with a centred grid of patch x patch regions, step by step.

    Returns the curves of the logit and of the probability.
    """
    out = []
    for i in range(x.shape[0]):
        c, h, w = x.shape[1:]
        top, left = ((-h) % patch) // 2, ((-w) % patch) // 2
        regions = []
        for bi in range(math.ceil(h / patch + ((-h) % patch) / patch)):
            for bj in range(math.ceil(w / patch + ((-w) % patch) / patch)):
                regions.append([(r, s) for r in range(bi * patch - top, (bi + 1) * patch - top)
                                for s in range(bj * patch - left, (bj + 1) * patch - left)
                                if 0 <= r < h and 0 <= s < w])
        relevance = [sum(float(a[i, :, r, s].sum()) for r, s in reg) for reg in regions]
        order = sorted(range(len(regions)), key=lambda j: (-relevance[j], j))
        xk = x[i].clone()
        curve = [score(model, xk, int(t[i]), None)]
        for j in order[:steps or len(regions)]:
            for r, s in regions[j]:
                xk[:, r, s] = baseline
            curve.append(score(model, xk, int(t[i]), None))
        out.append(curve)
    return {key: torch.tensor([[p[key] for p in c] for c in out], dtype=torch.float64)
            for key in ("logit", "probability")}


def test_aopc_hand_computed():
    x, a = torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, 2.0]])  # feature 2 goes first
    curve = region_perturbation_curve(TwoFeatures(), x, a, 0)
    torch.testing.assert_close(curve.values, torch.tensor([[3.0, 1.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(curve.fractions, torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))
    # (0 + 2 + 3) / 3
    torch.testing.assert_close(aopc(TwoFeatures(), x, a, 0),
                               torch.tensor([5 / 3], dtype=torch.float64))
    torch.testing.assert_close(aopc(TwoFeatures(), x, a, 0, steps=1),
                               torch.tensor([1.0], dtype=torch.float64))


@pytest.mark.parametrize(("shape", "patch"), [((1, 8, 8), 1), ((1, 8, 8), 3), ((3, 8, 6), 5)])
def test_region_perturbation_equals_the_literal_process(shape, patch):
    """Non-square, multi-channel images and a grid that does not divide them (centred)."""
    torch.manual_seed(0)
    model = DigitsCNN(in_channels=shape[0], image_shape=shape[1:]).double().eval()
    x = torch.rand(2, *shape, generator=seeded(1), dtype=torch.float64)
    a = torch.randn(2, *shape, generator=seeded(2), dtype=torch.float64)
    t = torch.tensor([3, 7])
    expected = region_curve_literal(model, x, a, t, patch, 0.25)
    for output in ("logit", "probability"):
        ours = region_perturbation_curve(model, x, a, t, patch_size=patch, baseline=0.25,
                                         output=output)
        torch.testing.assert_close(ours.values, expected[output], atol=1e-10, rtol=0)
    logit = expected["logit"][:, :3]
    torch.testing.assert_close(aopc(model, x, a, t, patch_size=patch, baseline=0.25, steps=2),
                               (logit[:, :1] - logit).mean(dim=1), atol=1e-10, rtol=0)


@pytest.mark.parametrize(("patch", "softmax"), [(1, True), (3, False)])
def test_region_perturbation_equals_quantus(digits_cnn, batch, patch, softmax):
    """Quantus 0.6 RegionPerturbation returns the drops f(x) - f(x^(k)) for k = 1..L.

    Same regions (its padding centres the grid), same order (by the signed map
    summed over a region), baseline 0, no normalisation. AOPC is their sum / (L + 1).
    """
    quantus = quantus_or_skip()
    x, a, t = batch
    metric = quantus.RegionPerturbation(patch_size=patch, regions_evaluation=100,
                                        perturb_baseline=0.0, normalise=False, abs=False,
                                        disable_warnings=True)
    theirs = np.asarray(metric(model=digits_cnn, x_batch=x.numpy().copy(),
                               y_batch=t.numpy().copy(), a_batch=a.numpy().copy(),
                               channel_first=True, softmax=softmax, device="cpu"))
    output = "probability" if softmax else "logit"
    curve = region_perturbation_curve(digits_cnn, x, a, t, patch_size=patch, output=output)
    drops = (curve.values[:, :1] - curve.values[:, 1:]).numpy()
    np.testing.assert_allclose(drops, theirs, atol=1e-5, rtol=0)
    np.testing.assert_allclose(aopc(digits_cnn, x, a, t, patch_size=patch, output=output).numpy(),
                               theirs.sum(axis=1) / (theirs.shape[1] + 1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("patch", [1, 2])
def test_exact_linear_attribution_has_the_largest_aopc(linear_model, patch):
    """For f = w.x and baseline b, removing a region lowers the logit by its exact
    attribution sum(w * (x - b)); MoRF on the exact map removes the k largest
    region contributions at every step, so AOPC is the closed form below and no
    other ranking beats it."""
    gen = seeded(0)
    x = torch.rand(12, 1, 8, 8, generator=gen, dtype=torch.float64)
    t = torch.randint(0, 10, (12,), generator=gen)
    exact = linear_model.fc.weight.detach()[t].reshape(12, 1, 8, 8) * (x - 0.2)
    best = aopc(linear_model, x, exact, t, patch_size=patch, baseline=0.2)
    contrib = exact.reshape(12, 8 // patch, patch, 8 // patch, patch).sum(dim=(2, 4))
    top = contrib.reshape(12, -1).sort(dim=1, descending=True).values.cumsum(dim=1)
    closed = torch.cat([torch.zeros(12, 1, dtype=torch.float64), top], dim=1).mean(dim=1)
    torch.testing.assert_close(best, closed)
    shuffled = exact.reshape(12, -1)[:, torch.randperm(64, generator=gen)].reshape(exact.shape)
    for other in (-exact, shuffled, torch.rand(exact.shape, generator=gen, dtype=torch.float64)):
        assert bool((best >= aopc(linear_model, x, other, t, patch_size=patch,
                                  baseline=0.2) - 1e-12).all())


def test_aopc_uniform_baseline_is_seeded_and_batch_independent(digits_cnn, batch):
    """Samek et al.'s uniform noise: one per-sample draw over the input's range."""
    x, a, t = batch
    x0, a0 = x.clone(), a.clone()
    run = lambda xs, av, tt: aopc(digits_cnn, xs, av, tt, baseline="uniform",  # noqa: E731
                                  generator=seeded(4))
    first = run(x, a, t)
    assert torch.equal(first, run(x, a, t))
    assert torch.equal(x, x0) and torch.equal(a, a0)
    torch.testing.assert_close(run(x[:6], a[:6], t[:6]), first[:6], atol=1e-6, rtol=0)
    noise = xprune.attribution.make_baseline("uniform", x, generator=seeded(4))
    torch.testing.assert_close(aopc(digits_cnn, x, a, t, baseline=noise), first)
    assert not torch.allclose(first, aopc(digits_cnn, x, a, t))  # differs from the 0 baseline
    # the deterministic default: alone equals in a batch, whatever the batch-mates' scale
    whole = aopc(digits_cnn, x, a * torch.logspace(0, 3, 16)[:, None, None, None], t)
    for i in (0, 9):
        torch.testing.assert_close(aopc(digits_cnn, x[i:i + 1], a[i:i + 1], t[i:i + 1]),
                                   whole[i:i + 1], atol=1e-6, rtol=0)


def test_region_perturbation_errors(digits_cnn):
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"`patch_size` = 1 for tabular inputs"):
        aopc(TwoFeatures(), torch.rand(2, 2), torch.rand(2, 2), 0, patch_size=2)
    with pytest.raises(ValueError, match=r"`patch_size` to be an integer in \[1, 8\] for images "
                                         r"of spatial shape \(8, 8\), got 9"):
        aopc(digits_cnn, x, x, 0, patch_size=9)
    with pytest.raises(ValueError, match=r"`steps` to be an integer in \[1, 16\] \(the number of "
                                         r"regions of side 2\), got 17"):
        aopc(digits_cnn, x, x, 0, patch_size=2, steps=17)
    with pytest.raises(ValueError, match="Expected `baseline` to be a number, a tensor or one of"):
        aopc(digits_cnn, x, x, 0, baseline="gaussian")
    with pytest.raises(ValueError, match="Expected `output` in"):
        aopc(digits_cnn, x, x, 0, output="softmax")


# --- sensitivity-n (Ancona et al. 2018) ---------------------------------------------------

def sensitivity_n_literal(model, x, a, t, ns, n_runs, seed, baseline=0.0):
    """Per sample and n: corr over random subsets of n pixels of sum(a_S) and f(x) - f(x_S := b).

    Subsets are drawn as xprune documents: sample by sample, n by n, each run
    the n largest of d uniform keys.
    """
    gen = seeded(seed)
    feat = a.sum(dim=1).reshape(a.shape[0], -1)
    d = feat.shape[1]
    out = []
    for i in range(x.shape[0]):
        row = []
        for n in ns:
            keys = torch.rand(n_runs, d, generator=gen)
            mass, drop = [], []
            f0 = score(model, x[i], int(t[i]), "logit")
            for r in range(n_runs):
                subset = keys[r].topk(n).indices
                xr = x[i].clone().reshape(x.shape[1], -1)
                xr[:, subset] = baseline
                mass.append(float(feat[i, subset].sum()))
                drop.append(f0 - score(model, xr.reshape(x.shape[1:]), int(t[i]), "logit"))
            row.append(np.corrcoef(mass, drop)[0, 1])
        out.append(row)
    return torch.tensor(out, dtype=torch.float64)


def test_sensitivity_n_equals_the_literal_definition(cnn64, batch):
    x, a, t = (v[:2] for v in batch)
    x, a = x.double(), a.double()
    ours = sensitivity_n_curve(cnn64, x, a, t, ns=[1, 5, 40], n_runs=6, generator=seeded(7))
    torch.testing.assert_close(ours, sensitivity_n_literal(cnn64, x, a, t, [1, 5, 40], 6, 7),
                               atol=1e-10, rtol=0)


def test_sensitivity_n_is_faithfulness_correlation_for_one_n(digits_cnn, batch):
    x, a, t = batch
    for n in (None, 5):
        ours = sensitivity_n(digits_cnn, x, a, t, n=n, n_runs=20, generator=seeded(3))
        same = faithfulness_correlation(digits_cnn, x, a, t, subset_size=n, n_runs=20,
                                        generator=seeded(3))
        assert torch.equal(ours, same)
    # the default n is a quarter of the 64 pixels
    curve = sensitivity_n_curve(digits_cnn, x, a, t, ns=[16], n_runs=20, generator=seeded(3))
    assert torch.equal(curve[:, 0], sensitivity_n(digits_cnn, x, a, t, n_runs=20,
                                                  generator=seeded(3)))


def test_sensitivity_n_of_the_exact_linear_attribution_is_one(linear_model):
    """Ancona et al.: w * (x - b) of a linear model satisfies sensitivity-n for every n."""
    gen = seeded(1)
    x = torch.rand(8, 1, 8, 8, generator=gen, dtype=torch.float64)
    t = torch.randint(0, 10, (8,), generator=gen)
    b = torch.rand(1, 8, 8, generator=gen, dtype=torch.float64)  # one baseline image
    exact = linear_model.fc.weight.detach()[t].reshape(8, 1, 8, 8) * (x - b)
    curve = sensitivity_n_curve(linear_model, x, exact, t, baseline=b, n_runs=10)
    assert curve.shape == (8, 6)  # default n = 1, 2, 4, 8, 16, 32 (up to 80% of 64)
    torch.testing.assert_close(curve, torch.ones(8, 6, dtype=torch.float64))
    torch.testing.assert_close(sensitivity_n_curve(linear_model, x, -3 * exact, t, baseline=b,
                                                   ns=[3, 60], n_runs=10),
                               -torch.ones(8, 2, dtype=torch.float64))


def test_quantus_sensitivity_n_correlates_across_the_batch(digits_cnn, batch):
    """Quantus 0.6 SensitivityN is not per sample: it removes pixels cumulatively in
    descending order of the map and, for step k, correlates over the *batch* the
    k-th removed pixel's attribution with the output drop after k removals. We
    reproduce that aggregation literally from our deletion curve to document it;
    xprune's sensitivity-n is Ancona et al.'s per-sample correlation over random subsets.
    """
    quantus = quantus_or_skip()
    x, a, t = batch
    metric = quantus.SensitivityN(n_max_percentage=0.8, features_in_step=1,
                                  perturb_baseline=0.0, normalise=False, abs=False,
                                  return_aggregate=False, disable_warnings=True)
    theirs = np.asarray(metric(model=digits_cnn, x_batch=x.numpy().copy(),
                               y_batch=t.numpy().copy(), a_batch=a.numpy().copy(),
                               channel_first=True, softmax=False, device="cpu"))
    curve = xprune.metrics.deletion_curve(digits_cnn, x, a, t, output="logit").values.numpy()
    drops = curve[:, :1] - curve[:, 1:]                          # after k + 1 removals
    removed = np.sort(a.reshape(16, -1).numpy(), axis=1)[:, ::-1]  # the pixel removed at step k
    literal = [stats.pearsonr(drops[:, k], removed[:, k])[0] for k in range(int(0.8 * 64))]
    np.testing.assert_allclose(theirs, literal, atol=1e-5)
    assert theirs.shape == (51,)  # one value per step for the whole batch, not per sample


def test_sensitivity_n_batch_seed_and_degenerate_maps(digits_cnn, batch):
    x, a, t = batch
    run = lambda xs, av, tt: sensitivity_n_curve(digits_cnn, xs, av, tt, ns=[2, 30],  # noqa: E731
                                                 n_runs=10, generator=seeded(5))
    first = run(x, a, t)
    assert torch.equal(first, run(x, a, t))
    torch.testing.assert_close(run(x[:5], a[:5], t[:5]), first[:5], atol=1e-6, rtol=0)
    big = a.clone()
    big[5:] *= 1000
    torch.testing.assert_close(run(x, big, t)[:5], first[:5], atol=1e-6, rtol=0)
    zero = a.clone()
    zero[2] = 0
    with pytest.warns(RuntimeWarning, match=r"1 sample\(s\) have an undefined sensitivity-n"):
        out = run(x, zero, t)
    assert torch.isnan(out[2]).all() and not torch.isnan(out[[0, 1, 3]]).any()


def test_sensitivity_n_errors(digits_cnn):
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"`ns` to be an integer in \[1, 64\) for inputs with "
                                         r"64 features, got 64"):
        sensitivity_n_curve(digits_cnn, x, x, 0, ns=[4, 64])
    with pytest.raises(ValueError, match="at least one subset size"):
        sensitivity_n_curve(digits_cnn, x, x, 0, ns=[])
    with pytest.raises(ValueError, match="needs at least 2 features, got 1"):
        sensitivity_n(Linear(1, 2, dtype=torch.float32), torch.rand(3, 1), torch.rand(3, 1), 0)
    with pytest.raises(ValueError, match="`n_runs` to be an integer >= 2"):
        sensitivity_n(digits_cnn, x, x, 0, n_runs=1)


# --- monotonicity correlation (Nguyen & Martinez 2020) ------------------------------------

def monotonicity_literal(model, x, a, t, n_samples, seed):
    """Spearman(|a_i|, mean_s (f(x) - f(x with pixel i := v_s))^2), v_s uniform on [min x, max x].

    Draws as xprune documents: per sample, n_samples values per channel shared
    by all pixels (common random numbers).
    """
    gen = seeded(seed)
    out = []
    for i in range(x.shape[0]):
        c, h, w = x.shape[1:]
        u = torch.rand(n_samples, c, 1, 1, generator=gen, dtype=torch.float64)
        v = x[i].min() + (x[i].max() - x[i].min()) * u
        f0 = score(model, x[i], int(t[i]), None)
        loss = {"logit": [], "probability": []}
        for r in range(h):
            for s in range(w):
                changes = {"logit": [], "probability": []}
                for k in range(n_samples):
                    xr = x[i].clone()
                    xr[:, r, s] = v[k, :, 0, 0]
                    fk = score(model, xr, int(t[i]), None)
                    for key in changes:
                        changes[key].append((f0[key] - fk[key]) ** 2)
                for key in changes:
                    loss[key].append(np.mean(changes[key]))
        out.append({key: stats.spearmanr(a[i].sum(dim=0).abs().reshape(-1), loss[key]).statistic
                    for key in loss})
    return {key: torch.tensor([o[key] for o in out], dtype=torch.float64)
            for key in ("logit", "probability")}


def test_monotonicity_equals_the_literal_definition(cnn64, batch):
    x, a, t = (v[:2] for v in batch)
    x, a = x.double(), a.double()
    expected = monotonicity_literal(cnn64, x, a, t, 3, 2)
    for output in ("probability", "logit"):
        ours = monotonicity_correlation(cnn64, x, a, t, n_samples=3, output=output,
                                        generator=seeded(2))
        torch.testing.assert_close(ours, expected[output], atol=1e-10, rtol=0)


def test_monotonicity_equals_quantus_with_its_draws(digits_cnn, batch):
    """Quantus 0.6 MonotonicityCorrelation, exactly: its uniform [0, 1] values are
    replayed from the same NumPy seed and passed as explicit replacement values.
    It walks pixels in ascending order of |a| and, for each, draws one value per
    sample per run. Its division by f(x)^2 leaves the ranks unchanged, hence
    Spearman's rho too: the unnormalised e of the paper gives the same scores.
    """
    quantus = quantus_or_skip()
    x, a, t = batch
    n, s, d = 16, 3, 64
    np.random.seed(0)  # noqa: NPY002  Quantus draws from the global NumPy RNG
    metric = quantus.MonotonicityCorrelation(nr_samples=s, normalise=False, abs=True,
                                             disable_warnings=True)
    theirs = np.asarray(metric(model=digits_cnn, x_batch=x.numpy().copy(),
                               y_batch=t.numpy().copy(), a_batch=a.numpy().copy(),
                               channel_first=True, softmax=True, device="cpu"))
    np.random.seed(0)  # noqa: NPY002
    draws = np.random.uniform(0.0, 1.0, size=(d, s, n))  # noqa: NPY002  (pixel step, run, sample)
    walk = np.argsort(np.abs(a.numpy()).reshape(n, -1), axis=1)
    values = np.zeros((n, s, d))
    for j in range(d):
        values[np.arange(n)[:, None], np.arange(s)[None, :], walk[:, j, None]] = draws[j].T
    values = torch.from_numpy(values).float().reshape(n, s, 1, 8, 8)
    ours = monotonicity_correlation(digits_cnn, x, a, t, perturbation=values)
    # float32 forwards in other batch shapes can swap two nearly equal e_i (1e-4 per swap)
    np.testing.assert_allclose(ours.numpy(), theirs, atol=2e-4, rtol=0)


def test_monotonicity_closed_forms_on_a_linear_model(linear_model):
    """f = w.x (logits). Gaussian noise: e_i = w_i^2 * mean(eps^2) exactly (common
    random numbers), so |gradient| scores 1. Replacing by a constant c:
    e_i = (w_i (x_i - c))^2, so the exact attribution w * (x - c) scores 1."""
    gen = seeded(0)
    x = torch.rand(6, 1, 8, 8, generator=gen, dtype=torch.float64)
    t = torch.randint(0, 10, (6,), generator=gen)
    w = linear_model.fc.weight.detach()[t].reshape(6, 1, 8, 8)
    ones = torch.ones(6, dtype=torch.float64)
    torch.testing.assert_close(monotonicity_correlation(linear_model, x, w, t, perturbation="normal",
                                                        n_samples=2, output="logit"), ones)
    constant = torch.full((6, 2, 1, 8, 8), 0.3, dtype=torch.float64)
    exact = w * (x - 0.3)
    torch.testing.assert_close(monotonicity_correlation(linear_model, x, exact, t,
                                                        perturbation=constant, output="logit"),
                               ones)
    torch.testing.assert_close(monotonicity_correlation(linear_model, x, -50 * exact, t,
                                                        perturbation=constant, output="logit"),
                               ones)  # |a| and scale invariance
    reversed_rank = 1 / (exact.abs() + 1)
    assert bool((monotonicity_correlation(linear_model, x, reversed_rank, t, perturbation=constant,
                                          output="logit") < -0.99).all())


def test_monotonicity_batch_seed_multichannel_and_degenerate():
    torch.manual_seed(0)
    model = DigitsCNN(in_channels=3, image_shape=(6, 4)).eval()
    x = torch.rand(5, 3, 6, 4, generator=seeded(1))
    a = torch.randn(5, 3, 6, 4, generator=seeded(2))
    x0, a0 = x.clone(), a.clone()
    run = lambda xs, av: monotonicity_correlation(model, xs, av, 1, n_samples=4,  # noqa: E731
                                                  generator=seeded(3))
    first = run(x, a)
    assert torch.equal(first, run(x, a)) and torch.equal(x, x0) and torch.equal(a, a0)
    torch.testing.assert_close(run(x[:2], a[:2]), first[:2], atol=1e-6, rtol=0)
    torch.testing.assert_close(run(x, a * torch.logspace(0, 4, 5)[:, None, None, None]), first,
                               atol=1e-6, rtol=0)
    # channels of a pixel are perturbed together: one channel's relevance stands for the pixel
    one_channel = torch.zeros_like(a)
    one_channel[:, 1] = a.sum(dim=1)
    torch.testing.assert_close(run(x, one_channel), first)
    a[3] = 0
    with pytest.warns(RuntimeWarning, match=r"1 sample\(s\) have an undefined monotonicity"):
        out = run(x, a)
    assert torch.isnan(out[3]) and not torch.isnan(out[:3]).any()


def test_monotonicity_errors(digits_cnn):
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match="`perturbation` to be 'uniform', 'normal' or a tensor"):
        monotonicity_correlation(digits_cnn, x, x, 0, perturbation="gaussian")
    with pytest.raises(ValueError, match=r"`perturbation` of shape \(N, n_samples, \*F\) = "
                                         r"\(2, n_samples, 1, 8, 8\), got \(2, 1, 8, 8\)"):
        monotonicity_correlation(digits_cnn, x, x, 0, perturbation=x)
    with pytest.raises(ValueError, match="Expected `noise_std` > 0, got 0"):
        monotonicity_correlation(digits_cnn, x, x, 0, perturbation="normal", noise_std=0)
    with pytest.raises(ValueError, match="`n_samples` to be an integer >= 1"):
        monotonicity_correlation(digits_cnn, x, x, 0, n_samples=0)


# --- ROAD (Rong, Leemann et al. 2022) -----------------------------------------------------

def impute_literal(image, removed):
    """Dense linear system, written pixel by pixel: a removed pixel equals the
    weighted mean (1/6 direct, 1/12 diagonal) of its in-image neighbours."""
    c, h, w = image.shape
    pixels = [(r, s) for r in range(h) for s in range(w) if removed[r, s]]
    index = {p: k for k, p in enumerate(pixels)}
    lhs = np.zeros((len(pixels), len(pixels)))
    rhs = np.zeros((len(pixels), c))
    for k, (r, s) in enumerate(pixels):
        for dr in (-1, 0, 1):
            for ds in (-1, 0, 1):
                rr, ss = r + dr, s + ds
                if (dr, ds) == (0, 0) or not (0 <= rr < h and 0 <= ss < w):
                    continue
                weight = 1 / 6 if dr == 0 or ds == 0 else 1 / 12
                lhs[k, k] += weight
                if removed[rr, ss]:
                    lhs[k, index[(rr, ss)]] -= weight
                else:
                    rhs[k] += weight * image[:, rr, ss]
    out = image.copy()
    for k, z in enumerate(np.linalg.solve(lhs, rhs)):
        out[:, pixels[k][0], pixels[k][1]] = z
    return out


def test_imputation_hand_cases():
    x = torch.tensor([[[[0.0, 0, 0], [0, 9, 0], [0, 0, 6]]]])
    centre = torch.zeros(1, 3, 3, dtype=torch.bool)
    centre[0, 1, 1] = True
    out = noisy_linear_imputation(x, centre, noise_std=0)
    assert float(out[0, 0, 1, 1]) == pytest.approx(6 / 12)      # a diagonal neighbour, 1/12
    corner = torch.zeros(1, 3, 3, dtype=torch.bool)
    corner[0, 2, 2] = True                                      # in-image weights 1/6+1/6+1/12
    out = noisy_linear_imputation(x, corner, noise_std=0)
    assert float(out[0, 0, 2, 2]) == pytest.approx((9 / 12) / (5 / 12))
    row = torch.tensor([[[[1.0, 0.0, 0.0, 4.0]]]])             # z1 = (1 + z2)/2, z2 = (z1 + 4)/2
    gap = torch.tensor([[[False, True, True, False]]])
    torch.testing.assert_close(noisy_linear_imputation(row, gap, noise_std=0),
                               torch.tensor([[[[1.0, 2.0, 3.0, 4.0]]]]))
    # a linear ramp is reproduced exactly wherever all 8 neighbours exist
    r, s = torch.meshgrid(torch.arange(6.0), torch.arange(7.0), indexing="ij")
    ramp = torch.stack([0.5 + 0.1 * r - 0.2 * s, 2 * r + s])[None].double()
    inner = torch.zeros(1, 6, 7, dtype=torch.bool)
    inner[0, 1:5, 1:6] = torch.rand(4, 5, generator=seeded(0)) < 0.7
    torch.testing.assert_close(noisy_linear_imputation(ramp, inner, noise_std=0), ramp)


def test_imputation_literal_quantus_noise_and_no_mutation():
    x = torch.rand(3, 2, 5, 7, generator=seeded(0), dtype=torch.float64)
    removed = torch.rand(3, 5, 7, generator=seeded(1)) < 0.6
    x0 = x.clone()
    out = noisy_linear_imputation(x, removed, noise_std=0)
    assert torch.equal(x, x0)
    for i in range(3):
        np.testing.assert_allclose(out[i].numpy(), impute_literal(x[i].numpy(), removed[i].numpy()),
                                   atol=1e-12)
    quantus = pytest.importorskip("quantus")
    from quantus.functions.perturb_func import noisy_linear_imputation as theirs

    for i in range(3):
        flat = np.flatnonzero(removed[i].numpy())
        np.testing.assert_allclose(out[i].numpy(), theirs(arr=x[i].numpy().copy(), indices=flat,
                                                          noise=0.0), atol=1e-12)
    assert quantus  # noise: std 0.5 per channel and imputed pixel, row-major, image by image
    noisy = noisy_linear_imputation(x, removed, noise_std=0.5, generator=seeded(9))
    gen = seeded(9)
    for i in range(3):
        expected = torch.randn(2, int(removed[i].sum()), generator=gen, dtype=torch.float64) * 0.5
        torch.testing.assert_close((noisy - out)[i].reshape(2, -1)[:, removed[i].reshape(-1)],
                                   expected)
        assert torch.equal(noisy[i][:, ~removed[i]], x[i][:, ~removed[i]])


def road_literal(model, x, a, t, percentages, order, noise_std, seed, output):
    gen = seeded(seed)
    out = []
    for i in range(x.shape[0]):
        c, h, w = x.shape[1:]
        feat = a[i].sum(dim=0).reshape(-1)
        ranked = sorted(range(h * w), key=lambda j: (-float(feat[j]), j))
        if order == "lerf":
            ranked = ranked[::-1]
        row = []
        for p in percentages:
            removed = np.zeros(h * w, dtype=bool)
            removed[ranked[:int(p * h * w + 1e-9)]] = True
            filled = impute_literal(x[i].numpy(), removed.reshape(h, w)).reshape(c, -1)
            noise = torch.randn(c, int(removed.sum()), generator=gen, dtype=torch.float64)
            filled[:, removed] += noise_std * noise.numpy()
            row.append(score(model, torch.from_numpy(filled).reshape(c, h, w), int(t[i]), output))
        out.append(row)
    return torch.tensor(out, dtype=torch.float64)


def test_road_equals_the_literal_process(cnn64, batch):
    x, a, t = (v[:3] for v in batch)
    x, a = x.double(), a.double()
    percentages = (0.05, 0.3, 0.5, 0.95)
    for order, output in (("morf", "probability"), ("lerf", "logit")):
        ours = road_curve(cnn64, x, a, t, percentages=percentages, order=order, output=output,
                          generator=seeded(6))
        expected = road_literal(cnn64, x, a, t, percentages, order, 0.01, 6, output)
        torch.testing.assert_close(ours, expected, atol=1e-10, rtol=0)
    torch.testing.assert_close(road(cnn64, x, a, t, percentages=percentages, generator=seeded(6)),
                               road_literal(cnn64, x, a, t, percentages, "morf", 0.01, 6,
                                            "probability").mean(dim=1), atol=1e-10, rtol=0)


def test_road_equals_quantus_without_noise(digits_cnn, batch):
    """Quantus 0.6 ROAD returns, per percentage, the batch's accuracy (argmax == y)
    after imputation; with noise 0 it is the batch mean of our per-sample curve."""
    quantus = quantus_or_skip()
    x, a, t = batch
    metric = quantus.ROAD(noise=0.0, percentages=list(range(10, 100, 10)), normalise=False,
                          abs=False, return_aggregate=False, disable_warnings=True)
    theirs = metric(model=digits_cnn, x_batch=x.numpy().copy(), y_batch=t.numpy().copy(),
                    a_batch=a.numpy().copy(), channel_first=True, device="cpu")
    ours = road_curve(digits_cnn, x, a, t, noise_std=0.0, output="accuracy")
    np.testing.assert_allclose(ours.mean(dim=0).numpy(), list(theirs.values()), atol=1e-12)
    # their per-sample hits are ours: the same first percentage keeps the same samples right
    assert ours.shape == (16, 9) and set(ours.unique().tolist()) <= {0.0, 1.0}


def test_road_morf_of_the_negated_map_is_lerf(digits_cnn, batch):
    x, a, t = batch
    morf = road_curve(digits_cnn, x, -a, t, generator=seeded(2))
    lerf = road_curve(digits_cnn, x, a, t, order="lerf", generator=seeded(2))
    assert torch.equal(morf, lerf)


def test_road_removes_whole_pixels_batch_and_seed():
    seen = []

    class Recorder(nn.Module):
        def forward(self, x):
            seen.append(x.detach().clone())
            return torch.zeros(x.shape[0], 2)

    x = torch.rand(4, 3, 5, 6, generator=seeded(0))
    a = torch.zeros(4, 3, 5, 6)
    a[:, 2, 1, 4] = 1.0                       # one channel of one pixel carries all relevance
    road_curve(Recorder(), x, a, 0, percentages=(1 / 30,), noise_std=0.0)
    imputed = seen[-1]                            # the last call scores the imputed images
    changed = (imputed != x).any(dim=1)           # (4, 5, 6): which pixels changed
    expected = torch.zeros(4, 5, 6, dtype=torch.bool)
    expected[:, 1, 4] = True
    assert torch.equal(changed, expected)
    assert bool((imputed[:, :, 1, 4] != x[:, :, 1, 4]).all())  # every channel

    torch.manual_seed(0)
    model = DigitsCNN(in_channels=3, image_shape=(6, 4)).eval()
    x = torch.rand(6, 3, 6, 4, generator=seeded(1))
    a = torch.randn(6, 3, 6, 4, generator=seeded(2))
    run = lambda xs, av, **kw: road_curve(model, xs, av, 0, generator=seeded(3), **kw)  # noqa: E731
    first = run(x, a)
    assert torch.equal(first, run(x, a))
    torch.testing.assert_close(run(x[:2], a[:2]), first[:2], atol=1e-6, rtol=0)
    exact = run(x, a, noise_std=0.0)      # without noise, any position in any batch
    torch.testing.assert_close(run(x[4:], a[4:], noise_std=0.0), exact[4:], atol=1e-6, rtol=0)
    torch.testing.assert_close(run(x, a, max_rows=5), first, atol=1e-6, rtol=0)


def test_road_errors(digits_cnn, cancer_mlp):
    x = torch.rand(2, 1, 8, 8)
    tab = torch.rand(2, 30)
    with pytest.raises(ValueError, match=r"images of shape \(N, C, H, W\) for ROAD, got shape "
                                         r"\(2, 30\).*tabular features have no neighbourhood"):
        road(cancer_mlp, tab, tab, 0)
    with pytest.raises(ValueError, match=r"Expected `percentages` in \[0.0, 1.0\), got 1.0"):
        road(digits_cnn, x, x, 0, percentages=(0.5, 1.0))
    with pytest.raises(ValueError, match="Expected `order` in"):
        road(digits_cnn, x, x, 0, order="random")
    with pytest.raises(ValueError, match="Expected `output` in"):
        road(digits_cnn, x, x, 0, output="prob")
    with pytest.raises(ValueError, match="Expected `noise_std` >= 0"):
        road(digits_cnn, x, x, 0, noise_std=-0.1)
    with pytest.raises(ValueError, match="at least one kept pixel"):
        noisy_linear_imputation(x, torch.ones(2, 8, 8, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"`removed` to be a bool tensor of shape \(2, 8, 8\)"):
        noisy_linear_imputation(x, torch.ones(2, 8, 7, dtype=torch.bool))


def test_registered_with_metadata():
    for name, better, low in [("aopc", True, -math.inf), ("sensitivity_n", True, -1.0),
                              ("monotonicity_correlation", True, -1.0), ("road", False, 0.0)]:
        info = METRICS[name]
        assert (info.category, info.kind, info.higher_is_better) == ("faithfulness", "model",
                                                                     better)
        assert info.range[0] == low and info.reference


def test_case_025_default_steps_are_bounded_and_equal_the_exact_curve_at_their_points():
    """../shared/cases/025-deletion-default-steps.md: on 3x32x32 images (1,024 pixels) the
    default curve has 64 steps of 16 pixels, whose points are the exact one-pixel-per-step
    curve's every 16th point; AOPC's default perturbs the 64 most relevant regions."""
    from xprune.metrics.faithfulness import DEFAULT_MAX_STEPS, deletion_curve, insertion_curve

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                          nn.Flatten(), nn.Linear(16, 5)).eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 32, 32, generator=gen)
    a = torch.randn(2, 3, 32, 32, generator=gen)
    assert DEFAULT_MAX_STEPS == 64
    for fn in (deletion_curve, insertion_curve):
        default = fn(model, x, a, 0)
        exact = fn(model, x, a, 0, steps=1024)
        assert default.values.shape == (2, 65)
        torch.testing.assert_close(default.fractions, torch.arange(65, dtype=torch.float64) / 64)
        torch.testing.assert_close(default.values, exact.values[:, ::16])
    full = region_perturbation_curve(model, x, a, 0, steps=1024)
    default = region_perturbation_curve(model, x, a, 0)
    assert default.values.shape == (2, 65)
    torch.testing.assert_close(default.values, full.values[:, :65])
    # 64 features or fewer (digits): one feature per step, as before
    small = torch.rand(2, 1, 8, 8, generator=gen)
    curve = deletion_curve(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)).eval(), small,
                           torch.randn(2, 1, 8, 8, generator=gen), 0)
    assert curve.values.shape == (2, 65)
