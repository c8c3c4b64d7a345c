"""Sanity checks: model-parameter randomisation (Adebayo et al. 2018) and random logit (Sixt et al. 2020)."""

import copy
import functools

import numpy as np
import pytest
import torch
from conftest import Linear, assert_state_equal, state_snapshot
from scipy import stats

import xprune
from xprune.metrics import METRICS, sanity
from xprune.metrics.agreement import cosine_similarity, spearman, ssim
from xprune.metrics.sanity import (
    model_parameter_randomisation,
    parameter_randomisation,
    random_logit,
)

saliency = functools.partial(xprune.attribute, method="saliency")          # |gradient|
gradient = functools.partial(xprune.attribute, method="saliency", params={"abs": False})
guided = functools.partial(xprune.attribute, method="guided_backprop")


@pytest.fixture
def batch(digits_cnn, digits_batch):
    x = digits_batch[0][:16]
    return x, digits_cnn(x).argmax(dim=1)


def _seeds(seed, n):
    """The per-layer seeds parameter_randomisation draws from Generator().manual_seed(seed)."""
    gen = torch.Generator().manual_seed(seed)
    return [int(torch.randint(0, 2**62, (1,), generator=gen)) for _ in range(n)]


def _reset(module, seed):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module.reset_parameters()


# --- model-parameter randomisation ----------------------------------------------------------

def test_linear_model_map_after_randomising_its_only_layer_is_the_new_weights():
    """f = W x + b: the gradient map of class t is row t of W, before and after re-initialising."""
    model = Linear(64, 10).eval()
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.tensor([0, 3, 9, 1, 1, 4])
    seen = []

    def record(m, inputs, targets):
        seen.append((m.fc.weight.detach().clone(), gradient(m, inputs, targets).values))
        return seen[-1][1]

    snapshot, rng = state_snapshot(model), torch.get_rng_state()
    curve = parameter_randomisation(model, x, t, record, similarity=cosine_similarity,
                                    generator=torch.Generator().manual_seed(7))
    assert_state_equal(model, snapshot)                  # the caller's model is untouched
    assert torch.equal(torch.get_rng_state(), rng)       # and so is the global RNG
    assert curve.layers == ["fc"] and curve.values.shape == (6, 1)
    (w0, before), (w1, after) = seen
    assert torch.equal(w0, model.fc.weight)
    fresh = copy.deepcopy(model.fc)
    _reset(fresh, _seeds(7, 1)[0])                        # nn.Linear's own initialisation
    assert torch.equal(w1, fresh.weight) and not torch.equal(w1, w0)
    torch.testing.assert_close(before, w0[t].reshape(6, 1, 8, 8))
    torch.testing.assert_close(after, w1[t].reshape(6, 1, 8, 8))
    expected = torch.nn.functional.cosine_similarity(w0[t], w1[t], dim=1)
    torch.testing.assert_close(curve.values[:, 0], expected)


def mprt_literal(model, x, t, attribute_fn, order, similarity, seed):
    """Adebayo et al. 2018 sec. 3, layer by layer from the top; scipy/skimage per sample."""
    names = [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear,
                                                                  torch.nn.Conv2d))][::-1]
    work = copy.deepcopy(model)
    original = attribute_fn(work, x, t).values.double()
    out = np.zeros((x.shape[0], len(names)))
    for j, (name, s) in enumerate(zip(names, _seeds(seed, len(names)), strict=True)):
        if order == "independent":
            work = copy.deepcopy(model)
        _reset(dict(work.named_modules())[name], s)
        maps = attribute_fn(work, x, t).values.double()
        for i in range(x.shape[0]):
            out[i, j] = similarity(original[i, 0].numpy(), maps[i, 0].numpy())
    return names, out


def _scipy_spearman(a, b):
    return stats.spearmanr(a.reshape(-1), b.reshape(-1)).statistic


def _scipy_spearman_abs(a, b):
    return stats.spearmanr(np.abs(a).reshape(-1), np.abs(b).reshape(-1)).statistic


def _skimage_ssim(a, b):
    from skimage.metrics import structural_similarity

    return structural_similarity(a, b, data_range=max(a.max(), b.max()) - min(a.min(), b.min()))


@pytest.mark.parametrize("order", ["cascading", "independent"])
@pytest.mark.parametrize("ours, reference", [
    (spearman, _scipy_spearman),
    (functools.partial(spearman, abs=True), _scipy_spearman_abs),
    (ssim, _skimage_ssim),
])
def test_equals_the_literal_test(digits_cnn, batch, order, ours, reference):
    if reference is _skimage_ssim:
        pytest.importorskip("skimage")
    x, t = batch[0][:6], batch[1][:6]
    curve = parameter_randomisation(digits_cnn, x, t, gradient, order=order, similarity=ours,
                                    generator=torch.Generator().manual_seed(3))
    names, expected = mprt_literal(digits_cnn, x, t, gradient, order, reference, 3)
    assert curve.layers == names == ["fc2", "fc1", "conv2", "conv1"]
    np.testing.assert_allclose(curve.values.numpy(), expected, atol=1e-6)


def test_matches_quantus_mprt_with_the_same_random_weights(digits_cnn, batch, monkeypatch):
    """Quantus seeds torch with seed + 1 before every reset_parameters(); we draw a seed per
    layer from our generator. Injecting Quantus's seed makes the random weights the same, and
    then every layer's similarity matches. Quantus's "independent" walks bottom-up (order
    does not matter there). Its return_average_correlation also averages in the original
    model's similarity with itself (its skip of the key "orig" misses "original"): that is
    (1 + L * ours) / (L + 1), not our mean over the L layers."""
    quantus = pytest.importorskip("quantus")
    from quantus.functions.similarity_func import correlation_spearman

    x, t = batch

    def explain(model, inputs, targets, **kwargs):
        return saliency(model, torch.as_tensor(inputs), torch.as_tensor(targets)).values.numpy()

    a = explain(digits_cnn, x, t)
    monkeypatch.setattr(sanity, "_draw_seed", lambda generator: 43)
    for order, layer_order in [("cascading", "top_down"), ("independent", "independent")]:
        kw = dict(similarity_func=correlation_spearman, layer_order=layer_order, seed=42,
                  abs=False, normalise=False, disable_warnings=True)
        call = dict(model=digits_cnn, x_batch=x.numpy().copy(), y_batch=t.numpy().copy(),
                    a_batch=a.copy(), channel_first=True, explain_func=explain, device="cpu")
        with torch.random.fork_rng(devices=[]):  # Quantus reseeds the global RNG
            theirs = quantus.MPRT(**kw)(**call)
        ours = parameter_randomisation(digits_cnn, x, t, saliency, order=order)
        assert sorted(theirs) == sorted(["original", *ours.layers])
        for j, name in enumerate(ours.layers):
            np.testing.assert_allclose(ours.values[:, j].numpy(), theirs[name], atol=1e-6)
        np.testing.assert_allclose(theirs["original"], 1.0)
    with torch.random.fork_rng(devices=[]):
        average = quantus.MPRT(**kw, return_average_correlation=True)(**call)
    summary = model_parameter_randomisation(digits_cnn, x, t, saliency, order=order)
    np.testing.assert_allclose((1 + 4 * summary.numpy()) / 5, average, atol=1e-6)


def test_saliency_decorrelates_and_guided_backprop_much_less(digits_cnn, batch):
    """Adebayo et al. 2018, fig. 2: gradients pass, guided backprop barely changes. On the
    digits CNN, over 2 model seeds x 2 batches x 4 generator seeds, saliency's mean Spearman
    over the cascade was 0.16-0.26 and guided backprop's 0.67-0.78, guided above saliency for
    every sample."""
    x, t = batch
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    sal = parameter_randomisation(digits_cnn, x, t, saliency, generator=gen()).values
    gbp = parameter_randomisation(digits_cnn, x, t, guided, generator=gen()).values
    assert float(sal[:, 0].mean()) < 0.5      # randomising the output layer alone suffices
    assert float(sal[:, -1].mean()) < 0.25    # against 1 for the original model
    assert float(gbp.mean()) > float(sal.mean()) + 0.3
    assert float((gbp.mean(dim=1) > sal.mean(dim=1)).double().mean()) >= 0.9
    torch.testing.assert_close(
        model_parameter_randomisation(digits_cnn, x, t, saliency, generator=gen()),
        sal.mean(dim=1))


def test_reproducible_batch_independent_and_orders_share_weights(digits_cnn, batch):
    x, t = batch[0][:8], batch[1][:8]
    run = lambda xs, ts, seed=0, order="cascading": parameter_randomisation(  # noqa: E731
        digits_cnn, xs, ts, saliency, order=order,
        generator=torch.Generator().manual_seed(seed)).values
    first = run(x, t)
    assert torch.equal(first, run(x, t))
    assert not torch.equal(first, run(x, t, seed=1))
    torch.testing.assert_close(run(x[:3], t[:3]), first[:3], atol=1e-6, rtol=0)
    # the first layer gets the same weights in both orders, with nothing else changed
    torch.testing.assert_close(run(x, t, order="independent")[:, 0], first[:, 0])
    # "predicted" is resolved once on the original model
    torch.testing.assert_close(parameter_randomisation(
        digits_cnn, x, "predicted", saliency, generator=torch.Generator().manual_seed(0)).values,
        first)


def test_layers_option_and_side_effects(digits_cnn, batch):
    x, t = batch
    snapshot, rng = state_snapshot(digits_cnn), torch.get_rng_state()
    digits_cnn.train()
    try:
        curve = parameter_randomisation(digits_cnn, x, t, saliency, layers=["conv1", "fc2"])
        assert digits_cnn.training  # the caller's mode, too, is left alone
    finally:
        digits_cnn.eval()
    assert curve.layers == ["conv1", "fc2"] and curve.values.shape == (16, 2)
    assert_state_equal(digits_cnn, snapshot)
    assert torch.equal(torch.get_rng_state(), rng)

    calls = []

    def failing(model, inputs, targets):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("explainer failed")
        return saliency(model, inputs, targets)

    with pytest.raises(RuntimeError, match="explainer failed"):
        parameter_randomisation(digits_cnn, x, t, failing)
    assert_state_equal(digits_cnn, snapshot)
    assert torch.equal(torch.get_rng_state(), rng)


def test_undefined_similarity_warns():
    model = Linear(4, 2).eval()
    x = torch.rand(3, 4, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="3 of 3 similarities are NaN"):
        values = parameter_randomisation(model, x, 0, lambda m, v, t: torch.zeros_like(v)).values
    assert values.shape == (3, 1) and bool(values.isnan().all())


def test_parameter_randomisation_errors(digits_cnn, batch):
    x, t = batch[0][:2], batch[1][:2]
    with pytest.raises(ValueError, match=r"`order` in \('cascading', 'independent'\), got "
                                         r"'cascade'. Did you mean 'cascading'\?"):
        parameter_randomisation(digits_cnn, x, t, saliency, order="cascade")
    with pytest.raises(ValueError, match="name layers with parameters .* got 'fc3'. Did you "
                                         "mean 'fc2'"):
        parameter_randomisation(digits_cnn, x, t, saliency, layers=["fc3"])
    with pytest.raises(ValueError, match="got 'relu1'"):
        parameter_randomisation(digits_cnn, x, t, saliency, layers=["relu1"])
    with pytest.raises(ValueError, match="without repeats"):
        parameter_randomisation(digits_cnn, x, t, saliency, layers=["fc2", "fc2"])
    with pytest.raises(ValueError, match="non-empty sequence of layer names, got 'fc2'"):
        parameter_randomisation(digits_cnn, x, t, saliency, layers="fc2")
    with pytest.raises(ValueError, match=r"maps of the inputs' shape \(2, 1, 8, 8\), got "
                                         r"\(2, 64\)"):
        parameter_randomisation(digits_cnn, x, t, lambda m, v, y: v.reshape(2, -1))
    with pytest.raises(ValueError, match=r"one value per sample, shape \(2,\), got \(\)"):
        parameter_randomisation(digits_cnn, x, t, saliency,
                                similarity=lambda a, b: (a - b).abs().sum())
    with pytest.raises(ValueError, match="`attribute_fn` to be callable"):
        parameter_randomisation(digits_cnn, x, t, "saliency")
    with pytest.raises(ValueError, match=r"`target` in \[0, 10\)"):
        parameter_randomisation(digits_cnn, x, 10, saliency)
    with pytest.raises(ValueError, match="at least one layer that has parameters"):
        parameter_randomisation(torch.nn.Flatten(), x, 0, lambda m, v, y: v)
    hooked = copy.deepcopy(digits_cnn)
    torch.nn.utils.prune.l1_unstructured(hooked.fc1, "weight", amount=0.5)
    with pytest.raises(ValueError, match="without pruning hooks"):
        parameter_randomisation(hooked, x, t, saliency)
    torch.nn.utils.prune.remove(hooked.fc1, "weight")  # a permanently pruned model is fine
    assert parameter_randomisation(hooked, x, t, saliency).values.shape == (2, 4)


# --- random logit ---------------------------------------------------------------------------

def test_random_logit_on_a_linear_model_compares_two_weight_rows():
    model = Linear(64, 10).eval()
    x = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.arange(20) % 10
    ours = random_logit(model, x, t, gradient, similarity=cosine_similarity,
                        generator=torch.Generator().manual_seed(4))
    other = sanity._other_classes(t, 10, torch.Generator().manual_seed(4))
    w = model.fc.weight.detach()
    torch.testing.assert_close(ours, torch.nn.functional.cosine_similarity(w[t], w[other]))


def test_random_logit_draws_are_uniform_never_the_target_and_per_sample():
    t = torch.arange(3000) % 10
    other = sanity._other_classes(t, 10, torch.Generator().manual_seed(0))
    assert not bool((other == t).any()) and int(other.min()) == 0 and int(other.max()) == 9
    counts = torch.bincount(other[t == 4], minlength=10).double()  # 300 draws over 9 classes
    assert counts[4] == 0
    chi2 = float(((counts[counts > 0] - 300 / 9) ** 2 / (300 / 9)).sum())
    assert chi2 < stats.chi2.ppf(0.999, df=8)
    prefix = sanity._other_classes(t[:7], 10, torch.Generator().manual_seed(0))
    assert torch.equal(prefix, other[:7])  # drawn in batch order: later samples change nothing


@pytest.mark.parametrize("n_classes", [2, 10, 1000])
def test_random_logit_draws_equal_one_draw_per_sample_in_order(n_classes):
    """The N draws of one randint are those of N one-element draws in sample order (the
    definition before the draws were batched), and leave the generator in the same state."""
    t = torch.randint(0, n_classes, (257,), generator=torch.Generator().manual_seed(1))
    gen = torch.Generator().manual_seed(3)
    expected = []
    for target in t.tolist():
        r = int(torch.randint(0, n_classes - 1, (1,), generator=gen))
        expected.append(r + (r >= target))
    ours_gen = torch.Generator().manual_seed(3)
    other = sanity._other_classes(t, n_classes, ours_gen)
    assert other.dtype == torch.long and other.tolist() == expected
    assert torch.equal(ours_gen.get_state(), gen.get_state())


def test_random_logit_matches_quantus_with_its_drawn_classes(digits_cnn, batch, monkeypatch):
    """Quantus draws the other class with np.random (seed 42); we inject the same classes.
    Not compared with SSIM: Quantus flattens the maps to 1-D before calling scikit-image, a
    1-D SSIM, where ours is the 2-D SSIM of the (H, W) maps."""
    quantus = pytest.importorskip("quantus")
    from quantus.functions.similarity_func import correlation_spearman

    x, t = batch

    def explain(model, inputs, targets, **kwargs):
        return saliency(model, torch.as_tensor(inputs), torch.as_tensor(targets)).values.numpy()

    a = explain(digits_cnn, x, t)
    metric = quantus.RandomLogit(num_classes=10, similarity_func=correlation_spearman, seed=42,
                                 abs=False, normalise=False, disable_warnings=True)
    state = np.random.get_state()  # noqa: NPY002
    theirs = metric(model=digits_cnn, x_batch=x.numpy().copy(), y_batch=t.numpy().copy(),
                    a_batch=a.copy(), channel_first=True, explain_func=explain, device="cpu")
    np.random.seed(42)  # noqa: NPY002  what Quantus drew: an index among the other 9 classes
    index = torch.as_tensor(np.random.randint(0, 9, len(t)))  # noqa: NPY002
    np.random.set_state(state)  # noqa: NPY002
    monkeypatch.setattr(sanity, "_other_classes", lambda targets, n, gen: index + (index >= t))
    ours = random_logit(digits_cnn, x, t, saliency)
    np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-6)


def test_random_logit_digits_reproducible_and_batch_independent(digits_cnn, batch):
    x, t = batch
    snapshot = state_snapshot(digits_cnn)
    run = lambda xs, ts, seed=0, sim=spearman: random_logit(  # noqa: E731
        digits_cnn, xs, ts, saliency, similarity=sim,
        generator=torch.Generator().manual_seed(seed))
    first = run(x, t)
    assert torch.equal(first, run(x, t))
    torch.testing.assert_close(run(x[:5], t[:5]), first[:5], atol=1e-6, rtol=0)
    assert_state_equal(digits_cnn, snapshot)
    assert float(first.mean()) < 0.6  # saliency is class-sensitive (guided backprop: ~0.75)
    structural = run(x, t, sim=ssim)
    assert structural.shape == (16,) and bool((structural <= 1).all())


def test_random_logit_errors(digits_cnn, batch):
    x, t = batch[0][:2], batch[1][:2]
    with pytest.raises(ValueError, match=r"`n_classes` to be an integer in \[2, 10\] for a "
                                         r"model with 10 outputs, got 11"):
        random_logit(digits_cnn, x, t, saliency, n_classes=11)
    with pytest.raises(ValueError, match="every target below `n_classes` = 2"):
        random_logit(digits_cnn, x, torch.tensor([0, 5]), saliency, n_classes=2)
    with pytest.raises(ValueError, match="at least 2 outputs"):
        random_logit(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 1)), x, None,
                     saliency)
    with pytest.raises(ValueError, match="`similarity` to be callable"):
        random_logit(digits_cnn, x, t, saliency, similarity=None)


def test_metadata():
    for name, ref in [("model_parameter_randomisation", "Adebayo"), ("random_logit", "Sixt")]:
        info = METRICS[name]
        assert (info.category, info.kind, info.higher_is_better, info.range) == (
            "randomisation", "randomisation", False, (-1.0, 1.0))
        assert ref in info.reference
