import math

import numpy as np
import pytest
import torch

import xprune
from xprune.metrics import max_sensitivity


def max_sensitivity_literal(explain_fn, x, target, radius, n_samples, seed, relative):
    """Yeh et al. 2019 SENS_MAX by Monte Carlo, one sample and one draw at a time.

    Noise is drawn as xprune documents: sample by sample, n_samples draws each.
    """
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(x.shape[0]):
        noise = (torch.rand(n_samples, *x.shape[1:], generator=gen) * 2 - 1) * radius
        phi = explain_fn(x[i:i + 1], target[i:i + 1]).double()
        worst = 0.0
        for j in range(n_samples):
            y = x[i:i + 1] + noise[j:j + 1].to(x.dtype)
            change = float(torch.linalg.norm((explain_fn(y, target[i:i + 1]).double()
                                              - phi).reshape(-1)))
            worst = max(worst, change)
        out.append(worst / float(torch.linalg.norm(phi.reshape(-1))) if relative else worst)
    return torch.tensor(out, dtype=torch.float64)


def quadratic_explainer(x, target):
    return x ** 2 * (target.to(x.dtype) + 1).reshape(-1, *([1] * (x.dim() - 1)))


@pytest.mark.parametrize("relative", [False, True])
def test_equals_the_literal_definition(relative):
    """../shared/cases/008-max-sensitivity-denominator.md: both forms, against their formulas."""
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 3, 4, 5])
    ours = max_sensitivity(quadratic_explainer, x, t, radius=0.05, n_samples=7, relative=relative,
                           generator=torch.Generator().manual_seed(11))
    expected = max_sensitivity_literal(quadratic_explainer, x, t, 0.05, 7, 11, relative)
    torch.testing.assert_close(ours, expected)


def test_identity_explainer_measures_the_noise_norm():
    x = torch.zeros(50, 16, dtype=torch.float64)
    s = max_sensitivity(lambda v, t: v, x, 0, radius=0.1, n_samples=20, relative=False)
    assert bool((s <= 0.1 * math.sqrt(16)).all()) and bool((s > 0.1).all())


def test_plain_gradients_of_a_linear_model_are_perfectly_stable(linear_model):
    explain = xprune.explainer(linear_model, "saliency", params={"abs": False})
    x = torch.rand(20, 1, 8, 8, dtype=torch.float64)
    t = torch.arange(20) % 10
    for relative in (True, False):
        torch.testing.assert_close(max_sensitivity(explain, x, t, relative=relative),
                                   torch.zeros(20, dtype=torch.float64))


def test_reproducible_and_batch_independent(digits_cnn, digits_batch):
    """../shared/cases/001 and 004: same seed, same scores; batch-mates change nothing."""
    x, _ = digits_batch
    explain = xprune.explainer(digits_cnn, "saliency")
    t = digits_cnn(x).argmax(dim=1)
    run = lambda xs, ts: max_sensitivity(explain, xs, ts, radius=0.1, n_samples=5,  # noqa: E731
                                         generator=torch.Generator().manual_seed(3))
    first = run(x[:64], t[:64])
    assert torch.equal(first, run(x[:64], t[:64]))
    bigger = torch.cat([x[:64], 10 * x[64:]])  # other samples with much larger maps
    torch.testing.assert_close(run(bigger, t)[:64], first, atol=1e-6, rtol=1e-6)


def test_matches_quantus_and_captum_in_distribution(digits_cnn, digits_batch):
    quantus = pytest.importorskip("quantus")
    from captum.metrics import sensitivity_max

    x, _ = digits_batch
    radius, n = 0.1, 10
    explain = xprune.explainer(digits_cnn, "saliency", params={"abs": False})
    t = digits_cnn(x).argmax(dim=1)
    ours = max_sensitivity(explain, x, t, radius=radius, n_samples=n,
                           generator=torch.Generator().manual_seed(0)).numpy()

    def quantus_explain(model, inputs, targets, **kwargs):
        return explain(torch.as_tensor(inputs), torch.as_tensor(targets)).numpy()

    np.random.seed(0)  # noqa: NPY002  Quantus draws from the global NumPy RNG
    a = explain(x, t).numpy()
    metric = quantus.MaxSensitivity(nr_samples=n, lower_bound=radius, abs=False, normalise=False,
                                    return_aggregate=False, disable_warnings=True)
    theirs = np.asarray(metric(model=digits_cnn, x_batch=x.numpy().copy(), y_batch=t.numpy().copy(),
                               a_batch=a.copy(), channel_first=True, explain_func=quantus_explain,
                               device="cpu"))
    torch.manual_seed(0)
    def captum_explain(inputs, target):  # Captum passes a 1-tuple and expects one back
        return (explain(inputs[0], target),)

    captum = sensitivity_max(captum_explain, x.clone(),
                             perturb_radius=radius, n_perturb_samples=n, target=t).numpy()
    for ref in (theirs, captum):
        se = math.sqrt(ours.var(ddof=1) / ours.size + ref.var(ddof=1) / ref.size)
        assert abs(ours.mean() - ref.mean()) < 3 * se


def test_errors():
    x = torch.rand(3, 4)
    with pytest.raises(ValueError, match="Expected `radius` > 0, got 0"):
        max_sensitivity(lambda v, t: v, x, 0, radius=0)
    with pytest.raises(ValueError, match="`n_samples` to be an integer >= 1"):
        max_sensitivity(lambda v, t: v, x, 0, n_samples=0)
    with pytest.raises(ValueError, match=r"maps of the inputs' shape \(3, 4\), got \(3,\)"):
        max_sensitivity(lambda v, t: v.sum(dim=1), x, 0)
    with pytest.raises(ValueError, match=r"non-negative class indices of shape \(3,\)"):
        max_sensitivity(lambda v, t: v, x, torch.tensor([0, 1]))
    with pytest.warns(RuntimeWarning, match="all-zero map"):
        s = max_sensitivity(lambda v, t: torch.zeros_like(v), x, 0)
    assert bool(torch.isnan(s).all())
