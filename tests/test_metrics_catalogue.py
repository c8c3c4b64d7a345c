"""The metrics added to the catalogue: each against a reference, a closed form and its errors."""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

import xprune
from xprune import metrics as M


def _maps(n=12, seed=0, shape=(1, 8, 8)):
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


# --- complexity ---------------------------------------------------------------------------

def test_entropy_complexity_closed_forms_and_scipy():
    d = 64
    one_hot = torch.zeros(1, d, dtype=torch.float64)
    one_hot[0, 5] = -3.0
    constant = torch.full((1, d), 0.7, dtype=torch.float64)
    zero = torch.zeros(1, d, dtype=torch.float64)
    # ../shared/cases/021-constant-map-nan.md: an all-zero map is undefined (it used to score
    # log d, where every other metric of such a map says undefined)
    with pytest.warns(RuntimeWarning, match=r"1 sample\(s\) have an undefined "
                                            r"entropy_complexity \(NaN; 1 of 3"):
        c = M.entropy_complexity(torch.cat([one_hot, constant, zero]))
    torch.testing.assert_close(c, torch.tensor([0.0, math.log(d), math.nan],
                                               dtype=torch.float64), equal_nan=True)
    a = _maps()
    expected = [stats.entropy(np.abs(row.reshape(-1))) for row in a.numpy()]
    np.testing.assert_allclose(M.entropy_complexity(a).numpy(), expected, rtol=1e-12)
    torch.testing.assert_close(M.entropy_complexity(42 * a), M.entropy_complexity(a))


def test_entropy_complexity_matches_quantus():
    quantus = pytest.importorskip("quantus")
    a = _maps(16, seed=1).float()
    x = torch.rand(16, 1, 8, 8)
    metric = quantus.Complexity(normalise=False, disable_warnings=True)
    theirs = metric(model=None, x_batch=x.numpy().copy(), y_batch=np.zeros(16, dtype=int),
                    a_batch=a.numpy().copy(), channel_first=True)
    np.testing.assert_allclose(M.entropy_complexity(a).numpy(), np.asarray(theirs), atol=1e-5)


def test_top_k_mass():
    a = torch.tensor([[4.0, -3.0, 2.0, 1.0, 0.0]])
    torch.testing.assert_close(M.top_k_mass(a, k=2), torch.tensor([0.7], dtype=torch.float64))
    with pytest.warns(RuntimeWarning, match="undefined top_k_mass .*all zero"):
        assert torch.isnan(M.top_k_mass(torch.zeros(1, 5), k=2)).all()
    b = _maps()
    torch.testing.assert_close(M.top_k_mass(9 * b), M.top_k_mass(b))
    with pytest.raises(ValueError, match=r"`k` to be an integer in \[1, 5\]"):
        M.top_k_mass(a, k=6)


# --- agreement ----------------------------------------------------------------------------

@pytest.mark.parametrize("ties", [False, True])
def test_kendall_matches_scipy_tau_b(ties):
    a, b = _maps(seed=2), _maps(seed=3)
    b = a + 0.8 * b
    if ties:
        a, b = a.round(), (2 * b).round()
    expected = [stats.kendalltau(x.reshape(-1), y.reshape(-1)).statistic
                for x, y in zip(a.numpy(), b.numpy(), strict=True)]
    np.testing.assert_allclose(M.kendall_tau(a, b).numpy(), expected, rtol=1e-10)
    torch.testing.assert_close(M.kendall_tau(a, a), torch.ones(12, dtype=torch.float64))
    assert torch.isnan(M.kendall_tau(torch.zeros(1, 5), torch.rand(1, 5))).all()


def test_kendall_chunks_give_the_same_scores_as_one_sample_at_a_time(monkeypatch):
    """Samples are scored in chunks (for speed); every chunking gives the same bits,
    constant maps included."""
    from xprune.metrics import agreement
    a, b = _maps(seed=4), _maps(seed=5)
    a[2] = 0.0
    b = (a + 0.8 * b).round(decimals=1)
    whole = M.kendall_tau(a, b)
    d = a[0].numel()
    for per_chunk in (1, 5):
        monkeypatch.setattr(agreement, "KENDALL_CHUNK_ELEMENTS", per_chunk * d * d)
        torch.testing.assert_close(M.kendall_tau(a, b), whole, rtol=0, atol=0, equal_nan=True)
    assert torch.isnan(whole[2]) and whole[~torch.isnan(whole)].abs().le(1).all()


def test_cosine_and_sign_agreement():
    a, b = _maps(seed=4), _maps(seed=5)
    flat_a, flat_b = a.reshape(12, -1), b.reshape(12, -1)
    expected = (flat_a * flat_b).sum(1) / (flat_a.norm(dim=1) * flat_b.norm(dim=1))
    torch.testing.assert_close(M.cosine_similarity(a, b), expected)
    torch.testing.assert_close(M.cosine_similarity(a, 3 * a), torch.ones(12, dtype=torch.float64))
    assert torch.isnan(M.cosine_similarity(torch.zeros(1, 4), torch.rand(1, 4))).all()
    x = torch.tensor([[1.0, -2.0, 0.0, 3.0]])
    y = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    # feature 2 is zero in both and not counted: 1 of the other 3 agrees
    torch.testing.assert_close(M.sign_agreement(x, y), torch.tensor([1 / 3], dtype=torch.float64))
    # top-2 of |x|: features 3 and 1, both disagree
    torch.testing.assert_close(M.sign_agreement(x, y, k=2), torch.tensor([0.0],
                                                                          dtype=torch.float64))
    torch.testing.assert_close(M.sign_agreement(a, a), torch.ones(12, dtype=torch.float64))
    # features both maps leave at zero say nothing: opposite signs everywhere else -> 0
    p = torch.tensor([[1.0, -1.0, 0.0, 0.0]])
    torch.testing.assert_close(M.sign_agreement(p, -p), torch.tensor([0.0], dtype=torch.float64))
    assert torch.isnan(M.sign_agreement(torch.zeros(1, 4), torch.zeros(1, 4))).all()


def test_top_k_ignores_tied_zeros():
    """Two sparse maps with nothing in common share nothing, whatever k is."""
    a, b = torch.zeros(1, 64), torch.zeros(1, 64)
    a[0, 5], b[0, 7] = 1.0, 1.0
    for k in (1, 3, 6):
        torch.testing.assert_close(M.top_k_intersection(a, b, k=k),
                                   torch.tensor([0.0], dtype=torch.float64))
        torch.testing.assert_close(M.top_k_intersection(a, a, k=k),
                                   torch.tensor([1.0], dtype=torch.float64))
    assert torch.isnan(M.top_k_intersection(torch.zeros(1, 4), torch.zeros(1, 4), k=2)).all()


def test_insertion_from_a_blurred_copy(digits_cnn, digits_batch):
    """Petsiuk et al. start insertion from a blurred image: per-sample baselines work."""
    x = digits_batch[0][:8]
    a = xprune.attribute(digits_cnn, x, "predicted", "saliency")
    blurred = xprune.attribution.make_baseline("blur", x, blur_sigma=1.0)
    curve = M.insertion_curve(digits_cnn, x, a, a.targets, baseline=blurred)
    expected_first = torch.softmax(digits_cnn(blurred), dim=1).gather(
        1, a.targets[:, None])[:, 0].double()
    torch.testing.assert_close(curve.values[:, 0], expected_first.detach(), atol=1e-6, rtol=0)
    alone = M.insertion_auc(digits_cnn, x[:1], a.values[:1], a.targets[:1],
                            baseline=blurred[:1])
    together = M.insertion_auc(digits_cnn, x, a, a.targets, baseline=blurred)
    torch.testing.assert_close(alone, together[:1], atol=1e-6, rtol=0)


# --- faithfulness: insertion -------------------------------------------------------------

def test_insertion_hand_computed_and_linear_ordering(linear_model):
    class TwoFeatures(torch.nn.Module):
        def forward(self, x):
            return torch.stack([x[:, 0] + 2 * x[:, 1], torch.zeros_like(x[:, 0])], dim=1)

    x, a = torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, 2.0]])  # insert feature 2, then 1
    curve = M.insertion_curve(TwoFeatures(), x, a, 0, output="logit")
    torch.testing.assert_close(curve.values, torch.tensor([[0.0, 2.0, 3.0]], dtype=torch.float64))
    torch.testing.assert_close(M.insertion_auc(TwoFeatures(), x, a, 0, output="logit"),
                               torch.tensor([1.75], dtype=torch.float64))
    gen = torch.Generator().manual_seed(0)
    xs = torch.rand(16, 1, 8, 8, generator=gen, dtype=torch.float64)
    t = torch.randint(0, 10, (16,), generator=gen)
    exact = linear_model.fc.weight.detach()[t].reshape(16, 1, 8, 8) * xs
    best = M.insertion_curve(linear_model, xs, exact, t, output="logit").values
    worst = M.insertion_curve(linear_model, xs, -exact, t, output="logit").values
    assert bool((best >= worst - 1e-9).all())  # the largest contributions enter first
    deletion = M.deletion_curve(linear_model, xs, exact, t, output="logit").values
    # inserting what deletion removed last: for a linear model the curves mirror
    torch.testing.assert_close(best[:, -1], deletion[:, 0])


# --- stability: avg-sensitivity ----------------------------------------------------------

def test_avg_sensitivity_literal_and_bounded_by_max():
    from test_metrics_stability import quadratic_explainer

    x = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.arange(5)
    avg = M.avg_sensitivity(quadratic_explainer, x, t, radius=0.05, n_samples=6,
                            generator=torch.Generator().manual_seed(2), relative=False)
    gen = torch.Generator().manual_seed(2)
    expected = []
    for i in range(5):
        noise = (torch.rand(6, 1, 4, 4, generator=gen) * 2 - 1) * 0.05
        phi = quadratic_explainer(x[i:i + 1], t[i:i + 1])
        changes = [float((quadratic_explainer(x[i:i + 1] + noise[j:j + 1].double(),
                                              t[i:i + 1]) - phi).norm()) for j in range(6)]
        expected.append(sum(changes) / 6)
    torch.testing.assert_close(avg, torch.tensor(expected, dtype=torch.float64))
    mx = M.max_sensitivity(quadratic_explainer, x, t, radius=0.05, n_samples=6,
                           generator=torch.Generator().manual_seed(2), relative=False)
    assert bool((avg <= mx).all())


def test_avg_sensitivity_matches_quantus_in_distribution(digits_cnn, digits_batch):
    quantus = pytest.importorskip("quantus")
    x, _ = digits_batch
    explain = xprune.explainer(digits_cnn, "saliency", params={"abs": False})
    t = digits_cnn(x).argmax(dim=1)
    ours = M.avg_sensitivity(explain, x, t, radius=0.1, n_samples=10,
                             generator=torch.Generator().manual_seed(0)).numpy()
    np.random.seed(0)  # noqa: NPY002  Quantus draws from the global NumPy RNG
    metric = quantus.AvgSensitivity(nr_samples=10, lower_bound=0.1, abs=False, normalise=False,
                                    return_aggregate=False, disable_warnings=True)
    theirs = np.asarray(metric(
        model=digits_cnn, x_batch=x.numpy().copy(), y_batch=t.numpy().copy(),
        a_batch=explain(x, t).numpy().copy(), channel_first=True, device="cpu",
        explain_func=lambda model, inputs, targets, **kw: explain(
            torch.as_tensor(inputs), torch.as_tensor(targets)).numpy()))
    se = math.sqrt(ours.var(ddof=1) / ours.size + theirs.var(ddof=1) / theirs.size)
    assert abs(ours.mean() - theirs.mean()) < 3 * se


def test_new_metrics_are_registered_with_metadata():
    for name, category, better in [("entropy_complexity", "complexity", False),
                                   ("top_k_mass", "complexity", True),
                                   ("kendall_tau", "agreement", True),
                                   ("cosine_similarity", "agreement", True),
                                   ("sign_agreement", "agreement", True),
                                   ("insertion_auc", "faithfulness", True),
                                   ("avg_sensitivity", "stability", False)]:
        info = M.METRICS[name]
        assert (info.category, info.higher_is_better) == (category, better) and info.reference


# --- faithfulness: infidelity (Captum) ----------------------------------------------------

def test_infidelity_closed_form_literal_and_scale(linear_model):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 8, 8, generator=gen, dtype=torch.float64)
    t = torch.randint(0, 10, (6,), generator=gen)
    grad = linear_model.fc.weight.detach()[t].reshape(6, 1, 8, 8)
    # for a linear model, I^T w = f(x) - f(x - I) exactly: the gradient map scores 0
    torch.testing.assert_close(M.infidelity(linear_model, x, grad, t),
                               torch.zeros(6, dtype=torch.float64), atol=1e-12, rtol=0)
    exact = grad * x
    one = M.infidelity(linear_model, x[:1], exact[:1], t[:1], n_samples=5, noise_std=0.2,
                       generator=torch.Generator().manual_seed(3))
    noise = torch.randn((5, 1, 8, 8), generator=torch.Generator().manual_seed(3),
                        dtype=torch.float64) * 0.2  # Captum perturbs the 5 copies in one call
    drop = (noise.reshape(5, -1) @ linear_model.fc.weight.detach()[t[0]])
    literal = (((noise * exact[:1]).reshape(5, -1).sum(1) - drop) ** 2).mean()
    torch.testing.assert_close(one, literal.reshape(1))
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    base = M.infidelity(linear_model, x, exact, t, normalize=True, generator=g())
    torch.testing.assert_close(M.infidelity(linear_model, x, 100 * exact, t, normalize=True,
                                            generator=g()), base)
    assert torch.equal(base, M.infidelity(linear_model, x, exact, t, normalize=True,
                                          generator=g()))
    with pytest.raises(ValueError, match="Expected `noise_std` > 0"):
        M.infidelity(linear_model, x, exact, t, noise_std=0)


def _infidelity_draws(x, n_samples, rows, seed, std, dtype):
    """The perturbations xprune's infidelity documents, (N * n_samples, *F): one randn of
    n_samples rows per sample, in sample order, whatever the pass size ``rows``."""
    gen, parts = torch.Generator().manual_seed(seed), []
    for _ in range(x.shape[0]):
        parts.append(torch.empty((n_samples, *x.shape[1:]), dtype=dtype).normal_(
            0.0, std, generator=gen))
    return torch.cat(parts).to(x.dtype)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("max_rows", [4096, 10, 9])  # one pass; x with x - I; x first
def test_infidelity_matches_captum_on_the_same_perturbations(normalize, max_rows):
    """xprune's own kernel against Captum's ``infidelity`` (the reference) given the same
    perturbations: per-sample targets, several draws, a zero map (beta = 0), both forms."""
    from captum.metrics import infidelity as captum_infidelity

    from xprune.models import DigitsCNN

    torch.manual_seed(0)
    model = DigitsCNN().double().eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(7, 1, 8, 8, generator=gen, dtype=torch.float64)
    a = torch.randn(7, 1, 8, 8, generator=gen, dtype=torch.float64)
    a[3] = 0.0
    t = torch.tensor([0, 3, 9, 1, 1, 7, 2])
    ours = M.infidelity(model, x, a, t, n_samples=4, noise_std=0.3, normalize=normalize,
                        max_rows=max_rows, generator=torch.Generator().manual_seed(5))
    noise = _infidelity_draws(x, 4, max_rows, 5, 0.3, torch.float64)

    def fixed(batch):  # Captum's one call sees all N * 4 rows, repeat-interleaved
        return noise, batch - noise

    theirs = captum_infidelity(model, fixed, x, a, target=t, n_perturb_samples=4,
                               normalize=normalize)
    torch.testing.assert_close(ours, theirs.double())
    assert ours.dtype == torch.float64 and bool((ours >= 0).all())


def test_infidelity_float32_draws_match_captum(digits_cnn, digits_batch):
    """A float32 model: perturbations drawn in float32 (documented), Captum within float32."""
    from captum.metrics import infidelity as captum_infidelity

    x = digits_batch[0][:16]
    a = xprune.attribute(digits_cnn, x, "predicted", "saliency", params={"abs": False})
    ours = M.infidelity(digits_cnn, x, a, a.targets, generator=torch.Generator().manual_seed(0))
    noise = _infidelity_draws(x, 10, 4096, 0, 0.1, torch.float32)
    theirs = captum_infidelity(digits_cnn, lambda b: (noise, b - noise), x, a.values,
                               target=a.targets, n_perturb_samples=10)
    torch.testing.assert_close(ours, theirs.double(), rtol=1e-4, atol=1e-6)


def test_infidelity_runs_the_floor_rows_in_bounded_passes(digits_cnn, digits_batch):
    """N unperturbed + N x n_samples perturbed rows and no more (no forward of its own to
    count the model's outputs: the first pass checks the targets), in passes of at most
    ``max_rows``."""
    x = digits_batch[0][:40]
    a = xprune.attribute(digits_cnn, x, "predicted", "saliency", params={"abs": False})
    seen = []
    handle = digits_cnn.conv1.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    try:
        chunked = M.infidelity(digits_cnn, x, a, a.targets, n_samples=10, max_rows=50,
                               generator=torch.Generator().manual_seed(0))
        bounded = list(seen)
        seen.clear()
        M.infidelity(digits_cnn, x, a, a.targets, n_samples=10)
    finally:
        handle.remove()
    # 5 samples' 50 perturbed rows a pass leave no room: the 40 unperturbed rows go first
    assert bounded == [40] + [50] * 8
    # the digits CNN's passes of 256 rows (its widest activation): 25 samples' 250 draws
    # with their 25 unperturbed rows (275 <= 256 + 64), then the other 15's
    assert seen == [25 * 11, 15 * 11]
    assert chunked.shape == (40,) and bool(torch.isfinite(chunked).all())


def test_infidelity_folds_the_unperturbed_rows_into_cache_sized_passes():
    """3x16x16 rows into a linear model (no convolution, so no activation cap): a CPU pass
    is 341 rows (CPU_FORWARD_ELEMENTS), the draws' pass 34
    samples x 10; their 34 unperturbed rows ride along (374 <= 341 + 85), so 40 samples take
    two passes, [374, 66], no pass of their own for x and no probe row; the scores equal
    Captum's given the same draws. With 2 draws, 180 samples (170 a pass: 510 rows > 341 +
    85), x goes first."""
    from captum.metrics import infidelity as captum_infidelity

    from xprune.metrics._base import CPU_FORWARD_ELEMENTS, forward_rows

    assert CPU_FORWARD_ELEMENTS // (3 * 16 * 16) == 341
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10)).double().eval()
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(180, 3, 16, 16, generator=gen, dtype=torch.float64)
    a = torch.randn(180, 3, 16, 16, generator=gen, dtype=torch.float64)
    t = torch.randint(0, 10, (180,), generator=gen)
    seen = []
    assert forward_rows(model, x, 4096) == 341
    handle = model[1].register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    try:
        ours = M.infidelity(model, x[:40], a[:40], t[:40],
                            generator=torch.Generator().manual_seed(4))
        folded = list(seen)
        seen.clear()
        few = M.infidelity(model, x, a, t, n_samples=2, noise_std=0.2,
                           generator=torch.Generator().manual_seed(4))
    finally:
        handle.remove()
    assert folded == [374, 66]
    assert seen == [180, 340, 20]      # 2 draws: x first, then 170 samples' draws a pass
    for got, k, s, std in ((ours, 40, 10, 0.1), (few, 180, 2, 0.2)):
        noise = _infidelity_draws(x[:k], s, 341, 4, std, torch.float64)
        theirs = captum_infidelity(model, lambda b, noise=noise: (noise, b - noise), x[:k],
                                   a[:k], target=t[:k], n_perturb_samples=s)
        torch.testing.assert_close(got, theirs.double())


def test_infidelity_checks_the_targets_on_its_first_pass(linear_model):
    """The targets and the logit outputs are checked on the outputs of the metric's own first
    pass: the same errors as a separate probe gave."""
    x = torch.rand(3, 64)
    a = torch.rand(3, 64)
    with pytest.raises(ValueError, match=r"Expected `target` in \[0, 10\) for a model with 10 "
                                         r"outputs, got values from 0 to 10"):
        M.infidelity(linear_model, x, a, torch.tensor([0, 10, 2]))
    with pytest.raises(ValueError, match="Expected `target` for a model with 10 outputs"):
        M.infidelity(linear_model, x, a, None)
    softmax = nn.Sequential(linear_model, nn.Softmax(dim=1)).eval()
    with pytest.raises(ValueError, match="already probabilities"):
        M.infidelity(softmax, x, a, 1)
    one = nn.Linear(64, 1).eval()     # one output: no target needed, index 0
    seeded = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(M.infidelity(one, x, a, None, generator=seeded()),
                       M.infidelity(one, x, a, 0, generator=seeded()))
