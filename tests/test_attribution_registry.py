"""Every registered method, on both halves of a digits pair and a breast-cancer MLP pair."""

import pytest
import torch
from conftest import Linear, all_hooks, assert_state_equal, state_snapshot
from scipy import ndimage
from torch import nn

import xprune
from xprune.attribution import ATTRIBUTION_METHODS, attribute, attribute_pair
from xprune.data import make_token_dataset
from xprune.models import DigitsCNN, TokenClassifier, train

FAST = {"integrated_gradients": {"n_steps": 8}, "smoothgrad": {"nt_samples": 4},
        "vargrad": {"nt_samples": 4}, "gradient_shap": {"n_samples": 4},
        "lime": {"n_samples": 8}, "kernel_shap": {"n_samples": 8}}
TABULAR = {**FAST, "occlusion": {"window": 1}}
IMAGE_METHODS = sorted(m for m, info in ATTRIBUTION_METHODS.items() if not info.integer_inputs)


@pytest.fixture(scope="module")
def pairs(digits_cnn, cancer_mlp, digits_batch, cancer):
    return {
        "digits": (xprune.prune(digits_cnn, 0.9), digits_batch[0][:12], FAST),
        "tabular": (xprune.prune(cancer_mlp, 0.9), cancer.x_test[:12], TABULAR),
    }


@pytest.mark.parametrize("kind", ["digits", "tabular"])
@pytest.mark.parametrize("method", IMAGE_METHODS)
def test_every_method_on_both_halves_of_a_pair(pairs, kind, method):
    pair, x, params = pairs[kind]
    if method == "grad_cam" and kind == "tabular":
        with pytest.raises(ValueError, match="Grad-CAM needs a 2-D convolutional layer"):
            attribute(pair.dense, x, "predicted", method)
        return
    x_before = x.clone()
    snapshots = [state_snapshot(m) for m in (pair.dense, pair.sparse)]
    pair.sparse.train()
    try:
        dense_a, sparse_a = attribute_pair(pair.dense, pair.sparse, x, method=method,
                                           params=params.get(method))
        again = attribute(pair.sparse, x, dense_a.targets, method, params=params.get(method))
        assert pair.sparse.training and all(m.training for m in pair.sparse.modules())
    finally:
        pair.sparse.eval()
    for a in (dense_a, sparse_a):
        assert a.values.shape == x.shape and a.values.dtype == x.dtype
        assert bool(torch.isfinite(a.values).all())
        assert torch.equal(a.targets, dense_a.targets)
        assert a.predictions.shape == (12,)
    assert torch.equal(again.values, sparse_a.values)  # deterministic (seeded where random)
    assert torch.equal(x, x_before) and x.grad is None and not x.requires_grad
    for model, snap in zip((pair.dense, pair.sparse), snapshots, strict=True):
        assert_state_equal(model, snap)
        assert all_hooks(model) == 0
        assert not any(hasattr(m, "activations") or hasattr(m, "rule") for m in model.modules())


@pytest.mark.parametrize("method", IMAGE_METHODS)
def test_no_hook_survives_an_exception(method):
    class FailsOnSecondCall(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = DigitsCNN()
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("boom")
            return self.net(x)

    model = FailsOnSecondCall().train()
    with pytest.raises((RuntimeError, ValueError)):
        attribute(model, torch.rand(3, 1, 8, 8), 1, method, params=FAST.get(method))
    assert all_hooks(model) == 0 and model.training and model.net.conv1.training


@pytest.mark.parametrize("method", IMAGE_METHODS)
def test_rgb_non_square_images(method):
    torch.manual_seed(0)
    model = DigitsCNN(n_classes=3, in_channels=3, image_shape=(6, 10)).eval()
    x = torch.rand(4, 3, 6, 10)
    a = attribute(model, x, "predicted", method, params=FAST.get(method))
    assert a.values.shape == (4, 3, 6, 10) and bool(torch.isfinite(a.values).all())


@pytest.mark.parametrize("method", IMAGE_METHODS)
def test_no_forward_pass_exceeds_max_rows_for_any_method(method):
    model = DigitsCNN().eval()
    seen = []
    handle = model.conv1.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    try:
        attribute(model, torch.rand(100, 1, 8, 8), 2, method,
                  params={**FAST, "gradient_shap": {"n_samples": 8}}.get(method), max_rows=40)
    finally:
        handle.remove()
    assert 0 < max(seen) <= 40


# --- reference cases with known answers ---------------------------------------------------

@pytest.fixture
def linear_and_inputs():
    model = Linear(64, 10).eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 8, 8, generator=gen, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 3, 4, 5])
    w = model.fc.weight.detach()[target].reshape(6, 1, 8, 8)
    return model, x, target, w


@pytest.mark.parametrize("method, params", [
    ("input_x_gradient", None),
    ("deeplift", {"baseline": 0.3}),
    ("gradient_shap", {"baseline": 0.3, "n_samples": 5}),
    ("occlusion", {"window": 1, "baseline": 0.3}),
    ("integrated_gradients", {"baseline": 0.3, "n_steps": 3}),
])
def test_linear_model_gets_w_times_x_minus_baseline(linear_and_inputs, method, params):
    model, x, target, w = linear_and_inputs
    b = 0.3 if params and "baseline" in params else 0.0
    a = attribute(model, x, target, method, params=params)
    torch.testing.assert_close(a.values, w * (x - b))


def test_gradient_methods_on_a_linear_model(linear_and_inputs):
    model, x, target, w = linear_and_inputs
    torch.testing.assert_close(attribute(model, x, target, "guided_backprop").values, w)
    bias_free = Linear(64, 10)
    with torch.no_grad():
        bias_free.fc.bias.zero_()
    lrp = attribute(bias_free, x, target, "lrp").values
    exact = bias_free.fc.weight.detach()[target].reshape(6, 1, 8, 8) * x
    torch.testing.assert_close(lrp, exact, rtol=1e-6, atol=1e-8)


def test_ig_with_one_step_is_the_midpoint_gradient_times_the_path(digits_cnn):
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([0, 3, 5, 7])
    base = 0.2
    a = attribute(digits_cnn, x, target, params={"n_steps": 1, "baseline": base,
                                                 "delta_tolerance": float("inf")})
    mid = (base + (x - base) / 2).requires_grad_()
    digits_cnn(mid).gather(1, target[:, None]).sum().backward()
    torch.testing.assert_close(a.values, mid.grad * (x - base))


def test_smoothgrad_without_noise_is_saliency_and_vargrad_is_zero(digits_cnn):
    x = torch.rand(5, 1, 8, 8)
    sal = attribute(digits_cnn, x, 1, "saliency").values
    sg = attribute(digits_cnn, x, 1, "smoothgrad", params={"stdevs": 0.0, "nt_samples": 3})
    torch.testing.assert_close(sg.values, sal)
    vg = attribute(digits_cnn, x, 1, "vargrad", params={"stdevs": 0.0, "nt_samples": 3})
    torch.testing.assert_close(vg.values, torch.zeros_like(sal))


def test_stochastic_methods_follow_their_seed_and_leave_the_global_rng_alone(digits_cnn):
    x = torch.rand(5, 1, 8, 8)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = attribute(digits_cnn, x, 1, "smoothgrad", params={"seed": 1, "nt_samples": 3}).values
    assert torch.equal(torch.get_rng_state(), state)
    b = attribute(digits_cnn, x, 1, "smoothgrad", params={"seed": 1, "nt_samples": 3}).values
    c = attribute(digits_cnn, x, 1, "smoothgrad", params={"seed": 2, "nt_samples": 3}).values
    assert torch.equal(a, b) and not torch.equal(a, c)


# --- baselines, output space, targets ----------------------------------------------------

def test_baselines(digits_cnn, digits, linear_and_inputs):
    model, x, target, w = linear_and_inputs
    mean = torch.rand(1, 8, 8, dtype=torch.float64)
    a = attribute(model, x, target, params={"baseline": mean, "n_steps": 2})
    torch.testing.assert_close(a.values, w * (x - mean))
    blurred = torch.from_numpy(ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, 1.5, 1.5),
                                                       mode="nearest"))
    a = attribute(model, x, target, params={"baseline": "blur", "blur_sigma": 1.5})
    torch.testing.assert_close(a.values, w * (x - blurred))
    u1 = attribute(model, x, target, params={"baseline": "uniform", "seed": 4}).values
    u2 = attribute(model, x, target, params={"baseline": "uniform", "seed": 4}).values
    assert torch.equal(u1, u2)
    noise = x - u1 / w  # recover the baseline: it lies in each input's own range
    for i in range(6):
        assert x[i].min() - 1e-9 <= noise[i].min() and noise[i].max() <= x[i].max() + 1e-9
    with pytest.raises(ValueError, match="image inputs .* for a 'blur' baseline"):
        attribute(model, x.reshape(6, 64), target, params={"baseline": "blur"})
    with pytest.raises(ValueError, match="one of \\('zero', 'blur', 'uniform'\\)"):
        attribute(model, x, target, params={"baseline": "black"})


def test_probability_output_is_explained_when_asked(linear_and_inputs):
    model, x, target, _ = linear_and_inputs
    a = attribute(model, x, target, params={"n_steps": 300}, output="probability")
    p = torch.softmax(model(x), dim=1).gather(1, target[:, None])[:, 0]
    p0 = torch.softmax(model(torch.zeros_like(x)), dim=1).gather(1, target[:, None])[:, 0]
    torch.testing.assert_close(a.values.sum(dim=(1, 2, 3)), (p - p0).detach(), atol=1e-4,
                               rtol=0)
    assert a.params["output"] == "probability"
    with pytest.raises(ValueError, match="LRP explains logits only"):
        attribute(model, x, target, "lrp", output="probability")


def test_label_target_and_disagreement_flags(digits_cnn, digits_batch):
    x, y = digits_batch[0][:64], digits_batch[1][:64]
    a = attribute(digits_cnn, x, "label", "saliency", labels=y)
    assert torch.equal(a.targets, y)
    pair = xprune.prune(digits_cnn, 0.95)
    d, s = attribute_pair(pair.dense, pair.sparse, x, method="saliency")
    torch.testing.assert_close(d.predictions, digits_cnn(x).argmax(dim=1))
    torch.testing.assert_close(s.predictions, pair.sparse(x).argmax(dim=1))
    with pytest.raises(ValueError, match="target='label' needs the true labels"):
        attribute(digits_cnn, x, "label", "saliency")


def test_ig_warns_when_the_integral_is_coarse(digits_cnn, digits_batch, recwarn):
    x = digits_batch[0][:16]
    with pytest.warns(UserWarning, match="raise n_steps \\(now 2\\)"):
        attribute(digits_cnn, x, "predicted", params={"n_steps": 2, "delta_tolerance": 1e-3})
    attribute(digits_cnn, x, "predicted", params={"n_steps": 128})
    assert not [w for w in recwarn if "completeness" in str(w.message)]


def test_unsupported_layers_get_a_clear_error():
    model = nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="LRP has no rule for layer '1' \\(GELU\\)"):
        attribute(model, torch.rand(3, 4), 0, "lrp")
    with pytest.raises(ValueError, match="`layer` to name a submodule"):
        attribute(DigitsCNN(), torch.rand(2, 1, 8, 8), 0, "grad_cam", params={"layer": "conv9"})


# --- token inputs --------------------------------------------------------------------------

def test_embedding_integrated_gradients_on_a_text_classifier():
    tokens, labels = make_token_dataset(400, seed=0)
    torch.manual_seed(0)
    model = TokenClassifier(30)
    train(model, tokens[:300], labels[:300], epochs=40, lr=1e-2, seed=0)
    model.eval()
    x = tokens[300:]
    a = attribute(model, x, 1, "embedding_integrated_gradients", params={"n_steps": 64})
    assert a.values.shape == x.shape and a.values.is_floating_point()
    gap = a.values.sum(dim=1) - a.delta  # f(x) - f(baseline), by completeness
    assert float((a.delta.abs() / gap.abs()).median()) < 0.01
    positive = (x >= 1) & (x <= 5)
    negative = (x >= 6) & (x <= 10)
    # evidence for class 1 sits on the positive words, against it on the negative ones
    assert float(a.values[positive].mean()) > 0 > float(a.values[negative].mean())
    with pytest.raises(ValueError, match="token ids, an integer tensor of shape \\(N, T\\)"):
        attribute(model, x.float(), 1, "embedding_integrated_gradients")
