"""The metrics' forward passes (xprune.metrics._forward): the channels-last view of conv models.

The view must give the model's outputs up to float rounding, fall back to the
model itself wherever it cannot be trusted (a ``.view`` after a convolution,
hooks, float64, gradients), follow changes of the model, never change the
caller's model, and keep the metrics' numbers reproducible bit for bit.
"""

import copy

import pytest
import torch
from torch import nn

from xprune.metrics import faithfulness, fast_forwards, stability
from xprune.metrics._base import target_scores
from xprune.metrics._forward import inference_forward, view_status
from xprune.models import DigitsCNN


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


class FlattenByView(nn.Module):
    """A user model that flattens with ``.view`` after a convolution (fails on channels last)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 6 * 6, 4)

    def forward(self, x):
        z = torch.relu(self.conv(x))
        return self.fc(z.view(z.size(0), -1))


class Conv3dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(2, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


class NoisyCNN(nn.Module):
    """Draws from the global generator in forward (as a stochastic model would)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        z = self.conv(x)
        return self.fc((z + 0.1 * torch.randn_like(z)).flatten(1))


@pytest.fixture
def images():
    torch.manual_seed(0)
    model = DigitsCNN(in_channels=3, image_shape=(12, 12), n_classes=5).eval()
    x = torch.rand(6, 3, 12, 12, generator=seeded(1))
    a = torch.randn(6, 3, 12, 12, generator=seeded(2))
    return model, x, a, torch.tensor([0, 1, 2, 3, 4, 0])


def test_view_gives_the_models_logits(digits_cnn, digits_batch, images):
    """Digits 1x8x8 and 3x12x12 CNNs, a Conv3d net on 5-D inputs: the view's outputs are the
    eager model's up to float rounding, and the view (not the model) ran."""
    torch.manual_seed(0)
    cases = [(digits_cnn, digits_batch[0][:40]), (images[0], images[1]),
             (Conv3dNet().eval(), torch.rand(5, 2, 4, 4, 4, generator=seeded(3)))]
    for model, x in cases:
        with torch.no_grad():
            got = inference_forward(model, x)(x)
            expected = model(x)
        torch.testing.assert_close(got, expected)
        assert list(view_status(model).values()) == ["view"], view_status(model)


def test_one_input_channel_runs_every_convolution_channels_last(digits_cnn, digits_batch):
    """A 1x8x8 digit: the first convolution's weight (16, 1, 3, 3) is channels-last contiguous
    in the default layout too, so a copy keeping its strides (``contiguous``) ran that
    convolution in the default layout and reordered its output for the second; the view's
    copies have the canonical strides, so both convolutions put out channels last."""
    model = copy.deepcopy(digits_cnn).eval()
    x = digits_batch[0][:32]
    seen = {}
    hooks = [m.register_forward_hook(
        lambda mod, args, out, name=name: seen.__setitem__(
            name, out.is_contiguous(memory_format=torch.channels_last)
            and not out.is_contiguous()))
        for name, m in (("conv1", model.conv1), ("conv2", model.conv2))]
    try:
        with torch.no_grad():
            forward = inference_forward(model, x)
            forward(x)                                  # the first pass: checked, then viewed
            seen.clear()
            got = forward(x)
    finally:
        for h in hooks:
            h.remove()
    assert seen == {"conv1": True, "conv2": True}
    with torch.no_grad():
        torch.testing.assert_close(got, model(x))


def test_metrics_with_the_view_equal_the_eager_metrics(images):
    """Deletion, faithfulness correlation, ROAD accuracy, infidelity and the stability logits
    agree with the same metrics run through the model itself (fast_forwards(False))."""
    model, x, a, t = images

    def run():
        return [faithfulness.deletion_auc(model, x, a, t),
                faithfulness.faithfulness_correlation(model, x, a, t, n_runs=20,
                                                      generator=seeded()),
                faithfulness.road(model, x, a, t, output="accuracy", generator=seeded()),
                faithfulness.infidelity(model, x, a, t, generator=seeded()),
                stability._logits(model, x, 4)]

    fast = run()
    assert view_status(model) == {"(3, 12, 12) float32 cpu": "view"}
    with fast_forwards(False):
        eager = run()
    for f, e in zip(fast, eager, strict=True):
        torch.testing.assert_close(f, e)


def test_view_after_conv_falls_back_with_the_same_values():
    """A model doing ``x.view(x.size(0), -1)`` after a conv fails on channels-last tensors:
    the metrics fall back to the model itself, record why, and give its exact values."""
    torch.manual_seed(0)
    model = FlattenByView().eval()
    x = torch.rand(5, 3, 6, 6, generator=seeded(1))
    a = torch.randn(5, 3, 6, 6, generator=seeded(2))
    t = torch.tensor([0, 1, 2, 3, 0])
    with torch.no_grad(), pytest.raises(RuntimeError, match="view"):
        model(x.contiguous(memory_format=torch.channels_last))   # the failure being guarded
    fast = (faithfulness.deletion_auc(model, x, a, t),
            faithfulness.faithfulness_correlation(model, x, a, t, n_runs=10,
                                                  generator=seeded()))
    (status,) = view_status(model).values()
    assert status.startswith("the channels-last view failed or differed (RuntimeError")
    with fast_forwards(False):
        eager = (faithfulness.deletion_auc(model, x, a, t),
                 faithfulness.faithfulness_correlation(model, x, a, t, n_runs=10,
                                                       generator=seeded()))
    for f, e in zip(fast, eager, strict=True):
        assert torch.equal(f, e)
    # one row per pass still falls back (the check runs on two rows)
    one = target_scores(model, x[:1], t[:1], output="logit")
    with fast_forwards(False):
        assert torch.equal(one, target_scores(model, x[:1], t[:1], output="logit"))


def test_the_callers_model_is_unchanged(images):
    """Parameters (bits and memory format), .grad, requires_grad and training mode survive."""
    model, x, a, t = images
    model.train()
    model.conv1.weight.grad = torch.ones_like(model.conv1.weight)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    faithfulness.deletion_auc(model, x, a, t)
    faithfulness.faithfulness_correlation(model, x, a, t, n_runs=10, generator=seeded())
    assert view_status(model) == {"(3, 12, 12) float32 cpu": "view"}
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
        assert v.is_contiguous(), k                 # not channels last
    assert torch.equal(model.conv1.weight.grad, torch.ones_like(model.conv1.weight))
    assert all(p.requires_grad for p in model.parameters())
    assert all(m.training for m in model.modules())


def test_same_seed_same_bits(images):
    """The view keeps reruns bit-identical: same seed, same numbers."""
    model, x, a, t = images
    first = faithfulness.faithfulness_correlation(model, x, a, t, n_runs=20, generator=seeded())
    again = faithfulness.faithfulness_correlation(copy.deepcopy(model), x, a, t, n_runs=20,
                                                  generator=seeded())
    assert torch.equal(first, again)
    assert torch.equal(faithfulness.deletion_auc(model, x, a, t),
                       faithfulness.deletion_auc(model, x, a, t))


def test_a_changed_model_is_seen(images):
    """Weights changed in place, a replaced layer or a changed attribute after a metric ran:
    the next call scores the changed model (the view is rebuilt), as the model itself does."""
    model, x, _, t = images
    target_scores(model, x, t, output="logit")
    changes = [lambda: model.fc2.weight.data.mul_(2.0),
               lambda: setattr(model, "conv2", nn.Conv2d(16, 32, 3, padding=1)),
               lambda: setattr(model, "relu1", nn.LeakyReLU(0.1)),
               lambda: setattr(model.relu1, "negative_slope", 0.5)]
    for change in changes:
        change()
        got = target_scores(model, x, t, output="logit")
        with fast_forwards(False):
            expected = target_scores(model, x, t, output="logit")
        torch.testing.assert_close(got, expected)
        assert view_status(model) == {"(3, 12, 12) float32 cpu": "view"}


def test_models_the_view_skips(images):
    """float64 and models without a conv run as they are, bit for bit, the reason recorded;
    a model with forward hooks runs channels last and its hooks fire."""
    model, x, _, t = images
    double = copy.deepcopy(model).double()
    scores = target_scores(double, x, t, output="logit")
    assert view_status(double) == {"model": "weights of dtype torch.float64 on cpu"}
    with fast_forwards(False):
        assert torch.equal(scores, target_scores(double, x, t, output="logit"))

    hooked = copy.deepcopy(model)
    calls = []
    hooked.conv1.register_forward_hook(lambda *args: calls.append(1))
    with fast_forwards(False):
        eager = target_scores(hooked, x, t, output="logit")
    calls.clear()
    torch.testing.assert_close(target_scores(hooked, x, t, output="logit"), eager)
    # the caller's model itself runs (its weights swapped for channels-last copies): its
    # hooks fire, on the check's two probes and on the pass
    assert len(calls) == 3 and view_status(hooked) == {"(3, 12, 12) float32 cpu": "view"}

    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 12 * 12, 5)).eval()
    target_scores(mlp, x, t, output="logit")
    assert view_status(mlp) == {"model": "no 2-D or 3-D convolution"}


def test_gradients_on_run_the_model_itself(images):
    """With gradients enabled the output depends on the caller's parameters (never a copy's)."""
    model, x, _, _ = images
    forward = inference_forward(model, x)
    out = forward(x)
    out.sum().backward()
    assert model.conv1.weight.grad is not None


def test_the_check_does_not_consume_random_numbers():
    """A model drawing from the global generator gives the same numbers with and without the
    view (the first-pass comparison runs under fork_rng)."""
    torch.manual_seed(0)
    model = NoisyCNN().eval()
    x = torch.rand(7, 3, 6, 6, generator=seeded(1))
    t = torch.zeros(7, dtype=torch.long)
    torch.manual_seed(5)
    fast = target_scores(model, x, t, output="logit")
    after_fast = torch.rand(3)
    torch.manual_seed(5)
    with fast_forwards(False):
        eager = target_scores(model, x, t, output="logit")
    torch.testing.assert_close(fast, eager)
    torch.manual_seed(5)
    with fast_forwards(False):
        target_scores(model, x, t, output="logit")
    assert torch.equal(torch.rand(3), after_fast)


def test_fast_forwards_switch():
    with pytest.raises(TypeError, match="Expected `enabled` to be True or False, got 0"):
        with fast_forwards(0):
            pass
    model = DigitsCNN().eval()
    x = torch.rand(8, 1, 8, 8, generator=seeded())
    with pytest.raises(KeyError), fast_forwards(False):
        raise KeyError("inside")
    target_scores(model, x, torch.zeros(8, dtype=torch.long), output="logit")
    assert view_status(model) == {"(1, 8, 8) float32 cpu": "view"}   # restored after the error


def test_pruned_model_and_inference_mode(images):
    """A model pruned by torch.nn.utils.prune (its pre-hooks recompute the weight) runs the
    view with the model's scores, also after its mask changed through ``.data``; a first
    call inside ``torch.inference_mode`` leaves a view usable outside it."""
    model, x, _, t = images
    pruned = copy.deepcopy(model)
    torch.nn.utils.prune.l1_unstructured(pruned.conv2, "weight", amount=0.5)
    with fast_forwards(False):
        expected_before = target_scores(pruned, x, t, output="logit")
    with torch.inference_mode():
        before = target_scores(pruned, x, t, output="logit")
    assert view_status(pruned) == {"(3, 12, 12) float32 cpu": "view"}
    torch.testing.assert_close(before, expected_before)
    pruned.conv2.weight_mask.data[:, :8] = 0.0
    after = target_scores(pruned, x, t, output="logit")
    with fast_forwards(False):
        expected_after = target_scores(pruned, x, t, output="logit")
    torch.testing.assert_close(after, expected_after)
    assert not torch.allclose(after, before)


class SharedBlur(nn.Module):
    """A 4-D buffer also held as a plain attribute of another module, and a plain dict of
    settings read in forward (a review's cases: the caller's model must not change, and its
    live state must be what runs)."""

    def __init__(self):
        super().__init__()
        self.b1 = nn.Module()
        self.b1.register_buffer("kernel", torch.rand(3, 1, 3, 3, generator=seeded(4)))
        self.b2 = nn.Module()
        self.b2.shared = self.b1.kernel
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6, 3)
        self.cfg = {"temperature": 1.0}

    def forward(self, x):
        z = torch.nn.functional.conv2d(x, self.b2.shared, padding=1, groups=3)
        return self.fc(torch.relu(self.conv(z)).flatten(1)) / self.cfg["temperature"]


def test_shared_buffers_stay_the_callers_and_live_state_is_what_runs():
    model = SharedBlur().eval()
    x = torch.rand(8, 3, 6, 6, generator=seeded(5))
    t = torch.zeros(8, dtype=torch.long)
    kernel = model.b1.kernel.clone()
    fast = target_scores(model, x, t, output="logit")
    assert view_status(model) == {"(3, 6, 6) float32 cpu": "view"}
    assert torch.equal(model.b1.kernel, kernel) and model.b2.shared is model.b1.kernel
    assert model.b1.kernel.is_contiguous()
    with fast_forwards(False):
        torch.testing.assert_close(fast, target_scores(model, x, t, output="logit"))
    model.cfg["temperature"] = 10.0          # changed in place: the next call sees it
    with fast_forwards(False):
        eager = target_scores(model, x, t, output="logit")
    torch.testing.assert_close(target_scores(model, x, t, output="logit"), eager)
    torch.testing.assert_close(eager, fast / 10.0)
