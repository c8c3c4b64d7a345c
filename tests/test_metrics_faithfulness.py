import math

import numpy as np
import pytest
import torch
from conftest import Linear
from torch import nn

import xprune
from xprune.metrics import deletion_auc, deletion_curve, faithfulness_correlation


class TwoFeatures(nn.Module):
    """Logits [x1 + 2 x2, 0]."""

    def forward(self, x):
        return torch.stack([x[:, 0] + 2 * x[:, 1], torch.zeros_like(x[:, 0])], dim=1)


def test_deletion_hand_computed():
    x, a = torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, 2.0]])  # remove feature 2, then 1
    curve = deletion_curve(TwoFeatures(), x, a, 0, output="logit")
    torch.testing.assert_close(curve.fractions, torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))
    torch.testing.assert_close(curve.values, torch.tensor([[3.0, 1.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(deletion_auc(TwoFeatures(), x, a, 0, output="logit"),
                               torch.tensor([1.25], dtype=torch.float64))
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731  softmax of [z, 0] = sigmoid(z)
    probs = [sig(3.0), sig(1.0), sig(0.0)]
    expected_auc = 0.25 * (probs[0] + 2 * probs[1] + probs[2])
    torch.testing.assert_close(deletion_auc(TwoFeatures(), x, a, 0),
                               torch.tensor([expected_auc], dtype=torch.float64))


def test_exact_attribution_of_a_linear_model_deletes_best(linear_model):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(32, 1, 8, 8, generator=gen, dtype=torch.float64)
    target = torch.randint(0, 10, (32,), generator=gen)
    exact = linear_model.fc.weight.detach()[target].reshape(32, 1, 8, 8) * x
    best = deletion_curve(linear_model, x, exact, target, output="logit").values
    worst = deletion_curve(linear_model, x, -exact, target, output="logit").values
    # removing the largest contributions first gives the lowest logit at every step
    assert bool((best <= worst + 1e-9).all())
    assert bool((deletion_auc(linear_model, x, exact, target, output="logit")
                 < deletion_auc(linear_model, x, -exact, target, output="logit")).all())
    assert bool((deletion_auc(linear_model, x, exact, target)
                 < deletion_auc(linear_model, x, -exact, target)).all())


def test_deletion_curve_equals_quantus_pixel_flipping(digits_cnn, digits_batch):
    """Quantus 0.6 PixelFlipping: the same curve without the unperturbed first point."""
    quantus = pytest.importorskip("quantus")
    x, _ = digits_batch
    a = xprune.attribute(digits_cnn, x, "predicted", "saliency")
    ours = deletion_curve(digits_cnn, x, a, a.targets)
    metric = quantus.PixelFlipping(features_in_step=1, perturb_baseline=0.0,
                                   disable_warnings=True)
    theirs = metric(model=digits_cnn, x_batch=x.numpy().copy(), y_batch=a.targets.numpy().copy(),
                    a_batch=a.values.numpy().copy(), channel_first=True, softmax=True,
                    device="cpu")
    np.testing.assert_allclose(ours.values[:, 1:].numpy(), np.asarray(theirs), atol=1e-5, rtol=0)
    assert ours.values.shape == (256, 65)


def test_multichannel_pixels_are_removed_together():
    class SumModel(nn.Module):
        def forward(self, x):
            return torch.stack([x.sum(dim=(1, 2, 3)), torch.zeros(x.shape[0])], dim=1)

    x = torch.ones(1, 3, 2, 2)
    a = torch.zeros(1, 3, 2, 2)
    a[0, 0, 1, 1] = 5.0  # only one channel carries relevance; the whole pixel goes first
    curve = deletion_curve(SumModel(), x, a, 0, output="logit")
    torch.testing.assert_close(curve.values, torch.tensor([[12.0, 9.0, 6.0, 3.0, 0.0]],
                                                          dtype=torch.float64))


def test_steps_group_features():
    x, a = torch.ones(1, 8), torch.arange(8.0, 0, -1)[None]
    model = Linear(8, 2, dtype=torch.float32)
    curve = deletion_curve(model, x, a, 0, steps=4, output="logit")
    assert curve.values.shape == (1, 5)
    torch.testing.assert_close(curve.fractions, torch.linspace(0, 1, 5, dtype=torch.float64))
    full = deletion_curve(model, x, a, 0, output="logit")
    torch.testing.assert_close(curve.values, full.values[:, ::2])


def test_deletion_batch_composition(digits_cnn, digits_batch):
    """A sample's score alone equals its score in a batch of 256 (within 1e-6)."""
    x, _ = digits_batch
    a = xprune.attribute(digits_cnn, x, "predicted", "saliency")
    whole = deletion_auc(digits_cnn, x, a, a.targets)
    for i in (0, 77, 255):
        alone = deletion_auc(digits_cnn, x[i:i + 1], a.values[i:i + 1], a.targets[i:i + 1])
        torch.testing.assert_close(alone, whole[i:i + 1], atol=1e-6, rtol=0)


def test_deletion_errors(digits_cnn):
    x = torch.rand(2, 1, 8, 8)
    with pytest.raises(ValueError, match=r"`steps` to be an integer in \[1, 64\]"):
        deletion_auc(digits_cnn, x, x, 0, steps=65)
    with pytest.raises(ValueError, match="same shape"):
        deletion_auc(digits_cnn, x, x[:, :, :4], 0)
    with pytest.raises(ValueError, match="Expected `output` in"):
        deletion_auc(digits_cnn, x, x, 0, output="prob")
    with pytest.raises(ValueError, match="model with 10 outputs"):
        deletion_auc(digits_cnn, x, x, None)


# --- faithfulness correlation -------------------------------------------------------------

def test_faithfulness_of_the_exact_linear_attribution_is_one(linear_model):
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(16, 1, 8, 8, generator=gen, dtype=torch.float64)
    target = torch.randint(0, 10, (16,), generator=gen)
    exact = linear_model.fc.weight.detach()[target].reshape(16, 1, 8, 8) * x
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    ones = torch.ones(16, dtype=torch.float64)
    torch.testing.assert_close(faithfulness_correlation(linear_model, x, exact, target,
                                                        generator=g()), ones)
    torch.testing.assert_close(faithfulness_correlation(linear_model, x, -exact, target,
                                                        generator=g()), -ones)
    # scale invariance (../shared/cases/002-scale-invariance.md)
    torch.testing.assert_close(faithfulness_correlation(linear_model, x, 100 * exact, target,
                                                        generator=g()), ones)


class Weighted(nn.Module):
    """Logits [x1 + 2 x2 + 3 x3 + 4 x4, 0]."""

    def forward(self, x):
        z = x @ torch.arange(1.0, 5.0, dtype=x.dtype)
        return torch.stack([z, torch.zeros_like(z)], dim=1)


def test_faithfulness_correlation_hand_computed():
    """The subsets are the top-2 of torch.rand(N, n_runs, d) keys drawn in sample order:
    seed 0 gives {0,1}, {1,3}, {0,1} for sample 0 and {2,3}, {0,1}, {1,3} for sample 1."""
    keys = torch.rand(2, 3, 4, generator=torch.Generator().manual_seed(0))
    subsets = keys.topk(2, dim=2).indices.sort(dim=2).values
    assert subsets.tolist() == [[[0, 1], [1, 3], [0, 1]], [[2, 3], [0, 1], [1, 3]]]
    x = torch.ones(2, 4)
    a = torch.tensor([[4.0, 3.0, 2.0, 1.0], [1.0, 1.0, 1.0, 2.0]])
    # sample 0: masses 7, 4, 7 and logit drops 3, 6, 3 -> r = -1
    # sample 1: masses 3, 2, 3 and drops 7, 3, 6 -> r = 21 / sqrt(6 * 78) = 7 / (2 sqrt 13)
    ours = faithfulness_correlation(Weighted(), x, a, 0, subset_size=2, n_runs=3,
                                    generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(ours, torch.tensor([-1.0, 7 / (2 * math.sqrt(13))],
                                                  dtype=torch.float64))


def test_faithfulness_matches_quantus_in_distribution(digits_cnn, digits_batch):
    quantus = pytest.importorskip("quantus")
    x, _ = digits_batch
    a = xprune.attribute(digits_cnn, x, "predicted", "saliency", params={"abs": False})
    ours = faithfulness_correlation(digits_cnn, x, a, a.targets, subset_size=16, n_runs=100,
                                    generator=torch.Generator().manual_seed(0)).numpy()
    np.random.seed(0)  # noqa: NPY002  Quantus draws from the global NumPy RNG
    metric = quantus.FaithfulnessCorrelation(subset_size=16, perturb_baseline=0.0, nr_runs=100,
                                             abs=False, normalise=False, return_aggregate=False,
                                             disable_warnings=True)
    theirs = np.asarray(metric(model=digits_cnn, x_batch=x.numpy().copy(),
                               y_batch=a.targets.numpy().copy(), a_batch=a.values.numpy().copy(),
                               channel_first=True, softmax=False, device="cpu"))
    se = math.sqrt(ours.var(ddof=1) / ours.size + theirs.var(ddof=1) / theirs.size)
    assert abs(ours.mean() - theirs.mean()) < 3 * se
    assert abs(ours.std() - theirs.std()) < 0.2 * theirs.std()


def test_faithfulness_is_reproducible_and_batch_independent(digits_cnn, digits_batch):
    """../shared/cases/004-reproducible.md and 001-batch-composition.md"""
    x, _ = digits_batch
    a = xprune.attribute(digits_cnn, x, "predicted", "saliency")
    run = lambda xs, av, t: faithfulness_correlation(  # noqa: E731
        digits_cnn, xs, av, t, generator=torch.Generator().manual_seed(5))
    first = run(x, a.values, a.targets)
    assert torch.equal(first, run(x, a.values, a.targets))
    big = a.values.clone()
    big[32:] *= 1000
    torch.testing.assert_close(run(x, big, a.targets)[:32], first[:32], atol=1e-6, rtol=0)
    torch.testing.assert_close(run(x[:32], a.values[:32], a.targets[:32]), first[:32],
                               atol=1e-6, rtol=0)


def test_few_features_get_a_fitting_default_and_a_clear_error():
    """../shared/cases/003-few-features.md: 4 tabular features, 32 samples."""
    model = Linear(4, 3, dtype=torch.float32).eval()
    x = torch.rand(32, 4, generator=torch.Generator().manual_seed(0))
    a = model.fc.weight.detach()[torch.zeros(32, dtype=torch.long)] * x
    torch.testing.assert_close(faithfulness_correlation(model, x, a, 0),
                               torch.ones(32, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"`subset_size` to be an integer in \[1, 4\) for inputs "
                                         r"with 4 features, got 224"):
        faithfulness_correlation(model, x, a, 0, subset_size=224)
    with pytest.raises(ValueError, match="`n_runs` to be an integer >= 2"):
        faithfulness_correlation(model, x, a, 0, n_runs=1)
