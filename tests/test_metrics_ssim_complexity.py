"""SSIM (agreement) and effective complexity: literal references, scikit-image, Quantus, errors."""

import math

import numpy as np
import pytest
import torch
from conftest import Linear

import xprune
from xprune.metrics import METRICS
from xprune.metrics.agreement import ssim
from xprune.metrics.complexity import effective_complexity, model_effective_complexity


def _maps(n=6, shape=(1, 9, 12), seed=0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, *shape, generator=gen, dtype=torch.float64)
    return a, a + 0.7 * torch.randn(n, *shape, generator=gen, dtype=torch.float64)


# --- SSIM ---------------------------------------------------------------------------------

def ssim_literal(x: np.ndarray, y: np.ndarray, data_range: float, window: int = 7,
                 gaussian: bool = False) -> float:
    """Wang et al. 2004 eq. 13, patch by patch, with sample (co)variances, mean over patches."""
    if gaussian:
        r = np.arange(window) - (window - 1) / 2
        g = np.exp(-0.5 * (r / 1.5) ** 2)
        w = np.outer(g, g) / np.outer(g, g).sum()
    else:
        w = np.full((window, window), 1.0 / window**2)
    p = window * window
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for i in range(x.shape[0] - window + 1):
        for j in range(x.shape[1] - window + 1):
            px, py = x[i:i + window, j:j + window], y[i:i + window, j:j + window]
            mx, my = (w * px).sum(), (w * py).sum()
            vx = p / (p - 1) * ((w * px * px).sum() - mx * mx)
            vy = p / (p - 1) * ((w * py * py).sum() - my * my)
            cxy = p / (p - 1) * ((w * px * py).sum() - mx * my)
            values.append((2 * mx * my + c1) * (2 * cxy + c2)
                          / ((mx * mx + my * my + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def _joint_range(x, y):
    return float(max(x.max(), y.max()) - min(x.min(), y.min()))


@pytest.mark.parametrize("absolute", [False, True])
def test_ssim_equals_the_literal_definition_on_non_square_multichannel_maps(absolute):
    a, b = _maps(shape=(3, 9, 12))  # channels are summed first, as feature_map does
    x, y = a.sum(dim=1).numpy(), b.sum(dim=1).numpy()
    if absolute:
        x, y = np.abs(x), np.abs(y)
    expected = [ssim_literal(u, v, _joint_range(u, v)) for u, v in zip(x, y, strict=True)]
    np.testing.assert_allclose(ssim(a, b, absolute=absolute).numpy(), expected, atol=1e-12)
    fixed = [ssim_literal(u, v, 5.0, window=5, gaussian=True) for u, v in zip(x, y, strict=True)]
    np.testing.assert_allclose(
        ssim(a, b, absolute=absolute, data_range=5.0, window=5, gaussian=True).numpy(), fixed,
        atol=1e-12)


def test_ssim_matches_scikit_image(digits_cnn, digits_batch):
    skimage = pytest.importorskip("skimage")
    from skimage.metrics import structural_similarity

    assert skimage.__version__
    a, b = _maps(shape=(1, 10, 13))
    x, y = a[:, 0].numpy(), b[:, 0].numpy()
    expected = [structural_similarity(u, v, data_range=_joint_range(u, v))
                for u, v in zip(x, y, strict=True)]
    np.testing.assert_allclose(ssim(a, b).numpy(), expected, atol=1e-6)
    # Wang et al.'s 11 x 11 Gaussian window = scikit-image's gaussian_weights=True
    a, b = _maps(shape=(1, 14, 12), seed=1)
    expected = [structural_similarity(u, v, data_range=2.0, gaussian_weights=True)
                for u, v in zip(a[:, 0].numpy(), b[:, 0].numpy(), strict=True)]
    np.testing.assert_allclose(ssim(a, b, data_range=2.0, window=11, gaussian=True).numpy(),
                               expected, atol=1e-6)
    # the digits CNN: saliency (|gradient|) against signed gradients of another class
    x = digits_batch[0][:16]
    t = digits_cnn(x).argmax(dim=1)
    sal = xprune.attribute(digits_cnn, x, t, "saliency").values
    grad = xprune.attribute(digits_cnn, x, (t + 1) % 10, "saliency",
                            params={"abs": False}).values
    u, v = sal[:, 0].double().numpy(), grad[:, 0].double().numpy()
    expected = [structural_similarity(p, q, data_range=_joint_range(p, q))
                for p, q in zip(u, v, strict=True)]
    np.testing.assert_allclose(ssim(sal, grad).numpy(), expected, atol=1e-6)


def test_ssim_matches_quantus_similarity_func(digits_cnn, digits_batch):
    """Quantus's ssim passes data_range = max - min over both maps together, as our default."""
    pytest.importorskip("quantus")
    from quantus.functions.similarity_func import ssim as quantus_ssim

    x = digits_batch[0][:16]
    t = digits_cnn(x).argmax(dim=1)
    a = xprune.attribute(digits_cnn, x, t, "saliency").values.double()
    b = xprune.attribute(digits_cnn, x, (t + 3) % 10, "saliency").values.double()
    theirs = quantus_ssim(a[:, 0].numpy().copy(), b[:, 0].numpy().copy(), batched=True)
    np.testing.assert_allclose(ssim(a, b).numpy(), theirs, atol=1e-6)


def test_ssim_properties():
    a, b = _maps(n=8)
    torch.testing.assert_close(ssim(a, a), torch.ones(8, dtype=torch.float64))
    torch.testing.assert_close(ssim(a, b), ssim(b, a))
    # positive scaling of both maps scales R, C1 and C2 with them: unchanged
    torch.testing.assert_close(ssim(4.0 * a, 4.0 * b), ssim(a, b))
    # a sample's score does not depend on its batch-mates (the data range is per sample)
    bigger = torch.cat([a[:3], 100 * a[3:]]), torch.cat([b[:3], -50 * b[3:]])
    torch.testing.assert_close(ssim(*bigger)[:3], ssim(a[:3], b[:3]), atol=1e-12, rtol=0)
    # identical constant maps have no data range: documented 1 (scikit-image gives NaN)
    zero, const = torch.zeros(2, 1, 8, 8), torch.full((2, 1, 8, 8), 0.3)
    torch.testing.assert_close(ssim(zero, zero), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(ssim(const, const), torch.ones(2, dtype=torch.float64))
    # a constant map against a varying one is defined: only the C1, C2 terms remain
    c, v = torch.zeros(1, 1, 7, 7, dtype=torch.float64), a[:1, :, :7, :7]
    expected = ssim_literal(c[0, 0].numpy(), v[0, 0].numpy(), _joint_range(c, v))
    np.testing.assert_allclose(ssim(c, v).numpy(), [expected], atol=1e-12)


def test_ssim_errors():
    a = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"image maps of shape \(N, C, H, W\) for SSIM, got "
                                         r"shape \(2, 30\)"):
        ssim(torch.rand(2, 30), torch.rand(2, 30))
    with pytest.raises(ValueError, match="`window` to be an odd integer >= 3, got 4"):
        ssim(a, a, window=4)
    with pytest.raises(ValueError, match=r"at least 7 x 7 pixels .* got 5 x 8; pass a smaller"):
        ssim(torch.rand(2, 1, 5, 8), torch.rand(2, 1, 5, 8))
    torch.testing.assert_close(ssim(torch.rand(2, 1, 5, 8), torch.rand(2, 1, 5, 8), window=5)
                               .isfinite(), torch.ones(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="`data_range` > 0 or None, got 0"):
        ssim(a, a, data_range=0)
    with pytest.raises(ValueError, match="same shape"):
        ssim(a, torch.rand(2, 1, 8, 9))
    with pytest.raises(ValueError, match="finite"):
        ssim(a, torch.full((2, 1, 8, 8), float("nan")))


# --- effective complexity: the thresholded count ------------------------------------------

def test_effective_complexity_literal_and_closed_forms():
    a = 1e-5 * torch.randn(10, 1, 8, 8, generator=torch.Generator().manual_seed(0),
                           dtype=torch.float64)
    expected = [sum(abs(v) > 1e-5 for v in row.reshape(-1).tolist()) for row in a]
    torch.testing.assert_close(effective_complexity(a), torch.tensor(expected,
                                                                     dtype=torch.float64))
    one_hot = torch.zeros(1, 64, dtype=torch.float64)
    one_hot[0, 9] = -2.0
    torch.testing.assert_close(effective_complexity(torch.cat([one_hot, torch.zeros(1, 64),
                                                               torch.ones(1, 64)])),
                               torch.tensor([1.0, 0.0, 64.0], dtype=torch.float64))
    # channels are summed (with signs) before counting: a pixel of +1, -1 carries nothing
    rgb = torch.tensor([[[[1.0, 2.0]], [[-1.0, 0.0]]]])  # (1, 2, 1, 2)
    torch.testing.assert_close(effective_complexity(rgb), torch.tensor([1.0],
                                                                       dtype=torch.float64))


def test_effective_complexity_relative_is_per_sample_and_scale_free():
    a = torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    rel = effective_complexity(a, eps=0.3, relative=True)
    expected = [(row.abs() > 0.3 * row.abs().max()).sum() for row in a.reshape(8, -1)]
    torch.testing.assert_close(rel, torch.stack(expected).double())
    scaled = a * torch.logspace(-6, 3, 8, dtype=torch.float64)[:, None, None, None]
    torch.testing.assert_close(effective_complexity(scaled, eps=0.3, relative=True), rel)
    # the absolute count moves with the scale, but never with the batch-mates
    torch.testing.assert_close(effective_complexity(scaled)[:3], effective_complexity(scaled[:3]))
    assert float(effective_complexity(a, eps=1.0, relative=True).max()) == 0.0
    assert float(effective_complexity(a, eps=0.0, relative=True).min()) == 64.0


def test_effective_complexity_matches_quantus():
    """Quantus counts |a| > eps per element; with one channel and normalise=False the same."""
    quantus = pytest.importorskip("quantus")
    a = (1e-5 * torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(2))).float()
    metric = quantus.EffectiveComplexity(eps=1e-5, abs=True, normalise=False,
                                         disable_warnings=True)
    theirs = metric(model=None, x_batch=torch.rand(16, 1, 8, 8).numpy(),
                    y_batch=np.zeros(16, dtype=int), a_batch=a.numpy().copy(),
                    channel_first=True)
    np.testing.assert_array_equal(effective_complexity(a).numpy(), np.asarray(theirs))


def test_effective_complexity_errors_and_metadata():
    with pytest.raises(ValueError, match="Expected `eps` >= 0, got -1"):
        effective_complexity(torch.rand(2, 4), eps=-1)
    with pytest.raises(ValueError, match="finite"):
        effective_complexity(torch.full((2, 4), float("inf")))
    info = METRICS["effective_complexity"]
    assert (info.category, info.kind, info.higher_is_better) == ("complexity", "map", False)
    info = METRICS["model_effective_complexity"]
    assert (info.category, info.kind, info.higher_is_better) == ("complexity", "model", False)
    assert "Nguyen" in info.reference


# --- effective complexity with the model (Nguyen & Martinez 2020) --------------------------

def model_effective_complexity_literal(model, x, a, t, eps, n_samples, noise, output, seed):
    """k* = min{k : mean_s (f_t(x_{M_k}, z_s) - f_t(x))^2 < eps}, one k and one draw at a time."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(x.shape[0]):
        z = noise[0] + (noise[1] - noise[0]) * torch.rand(n_samples, *x.shape[1:],
                                                          generator=gen, dtype=torch.float64)
        scores = a[i].sum(dim=0).reshape(-1).double().abs()
        order = sorted(range(scores.numel()), key=lambda j: (-float(scores[j]), j))

        def f(v, i=i):
            logits = model(v[None].to(x.dtype))[0]
            return float((logits.softmax(0) if output == "probability" else logits)[t[i]])

        base = f(x[i])
        for k in range(scores.numel() + 1):
            kept = torch.zeros(scores.numel(), dtype=torch.bool)
            kept[order[:k]] = True
            kept = kept.reshape(1, *x.shape[2:])
            loss = sum((f(torch.where(kept, x[i], z[s])) - base) ** 2
                       for s in range(n_samples)) / n_samples
            if loss < eps:
                out.append(k)
                break
    return torch.tensor(out, dtype=torch.float64)


def test_model_effective_complexity_equals_the_literal_definition(digits_cnn, digits_batch):
    x = digits_batch[0][:2]
    t = digits_cnn(x).argmax(dim=1)
    a = xprune.attribute(digits_cnn, x, t, "saliency").values
    with torch.no_grad():
        for output, eps in [("probability", 0.01), ("logit", 1.0)]:
            ours = model_effective_complexity(digits_cnn, x, a, t, eps=eps, n_samples=3,
                                              output=output,
                                              generator=torch.Generator().manual_seed(5))
            expected = model_effective_complexity_literal(digits_cnn, x, a, t, eps, 3,
                                                          (0.0, 1.0), output, 5)
            torch.testing.assert_close(ours, expected)


def test_model_effective_complexity_closed_form_on_a_linear_model():
    """noise=(0, 0) replaces unkept features by 0: L(k) = (sum of the unkept w_i x_i)^2."""
    model = Linear(16, 3).double().eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(12, 16, generator=gen, dtype=torch.float64)
    t = torch.arange(12) % 3
    exact = model.fc.weight.detach()[t] * x
    eps = 0.05
    ours = model_effective_complexity(model, x, exact, t, eps=eps, noise=(0.0, 0.0),
                                      output="logit", n_samples=1)
    for i in range(12):
        c = exact[i][exact[i].abs().argsort(descending=True, stable=True)]
        rest = [float(c[k:].sum()) ** 2 for k in range(17)]
        assert ours[i] == next(k for k, loss in enumerate(rest) if loss < eps)
    # a model that reads 3 features: the exact map needs at most 3, the reversed ranking all 16
    with torch.no_grad():
        model.fc.weight[:, 3:] = 0.0
    exact = model.fc.weight.detach()[t] * x
    kept = model_effective_complexity(model, x, exact, t, eps=1e-8, output="logit")
    assert int(kept.max()) <= 3
    reversed_map = 1.0 / (exact.abs() + 1e-3)
    assert bool((model_effective_complexity(model, x, reversed_map, t, eps=1e-8,
                                            output="logit") == 16).all())
    # only the ranking of |a| matters
    torch.testing.assert_close(model_effective_complexity(model, x, -7.0 * exact, t, eps=1e-8,
                                                          output="logit"), kept)


def test_model_effective_complexity_reproducible_and_batch_independent(digits_cnn,
                                                                       digits_batch):
    x = digits_batch[0][:4]
    t = digits_cnn(x).argmax(dim=1)
    a = xprune.attribute(digits_cnn, x, t, "saliency").values
    run = lambda xs, as_, ts, rows=4096: model_effective_complexity(  # noqa: E731
        digits_cnn, xs, as_, ts, n_samples=2, generator=torch.Generator().manual_seed(1),
        max_rows=rows)
    first = run(x, a, t)
    # chunks of 100 rows vs one pass: other batch compositions, equal up to rounding (case 001)
    torch.testing.assert_close(first, run(x, a, t, rows=100))
    torch.testing.assert_close(run(x[:2], a[:2], t[:2]), first[:2])
    assert bool(((first >= 0) & (first <= 64)).all())


def test_model_effective_complexity_errors(linear_model):
    x = torch.rand(2, 1, 8, 8)
    a = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match="Expected `eps` > 0, got 0"):
        model_effective_complexity(linear_model, x, a, 0, eps=0)
    with pytest.raises(ValueError, match=r"`noise` to be a pair \(low, high\)"):
        model_effective_complexity(linear_model, x, a, 0, noise=(1.0, 0.0))
    with pytest.raises(ValueError, match="`n_samples` to be an integer >= 1"):
        model_effective_complexity(linear_model, x, a, 0, n_samples=0)
    with pytest.raises(ValueError, match="`output` in"):
        model_effective_complexity(linear_model, x, a, 0, output="loss")
    with pytest.raises(ValueError, match="same shape"):
        model_effective_complexity(linear_model, x, torch.rand(2, 64), 0)
    assert math.isfinite(float(model_effective_complexity(linear_model, x, a, 0).sum()))
