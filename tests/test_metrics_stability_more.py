"""Local Lipschitz estimate, relative input stability (RIS) and relative output stability (ROS).

Each against a literal, loop-by-loop reading of its paper's equation on the same
noise draws, against Quantus 0.6 on the same perturbations (injected through its
``perturb_func``), on models whose maps are known in closed form, and for its errors.

Deliberate differences from Quantus 0.6, each checked below:
- RIS/ROS noise: Quantus's default is uniform in [0.02, 0.2], a one-sided shift of
  every element; we draw the box [-radius, radius] centred on x. The exact
  comparisons inject our perturbations, so the formulas are compared, not the noise.
- Changed predictions: Quantus scores a sample NaN as soon as one perturbation
  changes the predicted class (``np.max`` over NaN); we leave those perturbations
  out of the maximum, as the paper's constraint says, and score NaN (with a
  warning) only when none is left.
- ROS: the paper divides by the *relative* change of the logits; Quantus by the
  absolute change ``||h(x) - h(x')||``. Ours defaults to the paper and offers
  Quantus's with ``relative_logits=False``, which is what is compared.
- The RIS/ROS denominator is floored at eps_min (the paper's max(., eps_min));
  Quantus adds eps_min only to an exact 0. Equal unless the norm is in (0, eps_min).
"""

import copy
import math

import numpy as np
import pytest
import torch
from conftest import Linear, assert_state_equal, state_snapshot
from torch import nn

import xprune
from xprune.metrics import METRICS
from xprune.metrics.stability import (
    local_lipschitz_estimate,
    max_sensitivity,
    relative_input_stability,
    relative_output_stability,
)

# --- small models with known maps ---------------------------------------------------------

class Quadratic(nn.Module):
    """Logits h_k(x) = (k + 1) ||x||^2 / 2, so the gradient map for class t is (t + 1) x.

    Every logit grows with ||x||, so the prediction is always the last class.
    """

    def __init__(self, n_classes: int = 4) -> None:
        super().__init__()
        self.register_buffer("scale", torch.arange(1, n_classes + 1, dtype=torch.float64) / 2)

    def forward(self, x):
        return (x.reshape(x.shape[0], -1) ** 2).sum(dim=1, keepdim=True) * self.scale


class Identity(nn.Module):
    """Logits equal to the flattened input (one class per feature)."""

    def forward(self, x):
        return x.reshape(x.shape[0], -1)


class Scaled(nn.Module):
    def __init__(self, model: nn.Module, factor: float) -> None:
        super().__init__()
        self.model, self.factor = model, factor

    def forward(self, x):
        return self.factor * self.model(x)


class Flipper(nn.Module):
    """Logits (-||x||^2, 0): class 0 at x = 0 (a tie), class 1 at every other input."""

    def forward(self, x):
        s = (x.reshape(x.shape[0], -1) ** 2).sum(dim=1, keepdim=True)
        return torch.cat([-s, torch.zeros_like(s)], dim=1)


def quadratic_explainer(x, target):
    return x ** 2 * (target.to(x.dtype) + 1).reshape(-1, *([1] * (x.dim() - 1)))


def small_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3)).double().eval()


# --- literal references -------------------------------------------------------------------

def lipschitz_literal(explain_fn, x, target, noise_std, n_samples, seed):
    """max_j ||Phi(x) - Phi(x_j)||_2 / ||x - x_j||_2, one sample and one neighbour at a time.

    Noise as documented: N(0, noise_std^2) per element, n_samples draws per
    sample, drawn sample by sample in batch order.
    """
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(x.shape[0]):
        noise = torch.randn(n_samples, *x.shape[1:], generator=gen) * noise_std
        xi, ti = x[i:i + 1], target[i:i + 1]
        phi = explain_fn(xi, ti).double()
        best = -math.inf
        for j in range(n_samples):
            xj = xi + noise[j:j + 1].to(x.dtype)
            num = float(torch.linalg.norm((explain_fn(xj, ti).double() - phi).reshape(-1)))
            den = float(torch.linalg.norm((xj.double() - xi.double()).reshape(-1)))
            best = max(best, num / den)
        out.append(best)
    return torch.tensor(out, dtype=torch.float64)


def _relative_norm(ref, other, eps_min):
    """||(ref - other) / ref||_2 element by element, eps_min standing in for a zero ref."""
    total = 0.0
    for r, o in zip(ref.reshape(-1).tolist(), other.reshape(-1).tolist(), strict=True):
        total += ((r - o) / (r if r != 0 else eps_min)) ** 2
    return math.sqrt(total)


def relative_literal(model, explain_fn, x, target, radius, n_samples, eps_min, seed, denominator):
    """Agarwal et al. 2022 RIS / ROS: max over same-prediction x' of the ratio of relative changes.

    Noise uniform in [-radius, radius] per element, n_samples draws per sample,
    drawn sample by sample in batch order; NaN when no perturbation keeps the class.
    """
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(x.shape[0]):
        noise = (torch.rand(n_samples, *x.shape[1:], generator=gen) * 2 - 1) * radius
        xi, ti = x[i:i + 1], target[i:i + 1]
        with torch.no_grad():
            h = model(xi).double()[0]
        phi = explain_fn(xi, ti).double()
        best = math.nan
        for j in range(n_samples):
            xj = xi + noise[j:j + 1].to(x.dtype)
            with torch.no_grad():
                hj = model(xj).double()[0]
            if int(hj.argmax()) != int(h.argmax()):
                continue  # x' must keep the predicted class
            num = _relative_norm(phi, explain_fn(xj, ti).double(), eps_min)
            if denominator == "input":
                den = _relative_norm(xi.double(), xj.double(), eps_min)
            elif denominator == "relative_logits":
                den = _relative_norm(h, hj, eps_min)
            else:
                den = float(torch.linalg.norm(h - hj))
            ratio = num / max(den, eps_min)
            best = ratio if math.isnan(best) else max(best, ratio)
        out.append(best)
    return torch.tensor(out, dtype=torch.float64)


def test_lipschitz_equals_the_literal_definition():
    x = torch.rand(6, 1, 4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 3, 4, 5])
    ours = local_lipschitz_estimate(quadratic_explainer, x, t, noise_std=0.05, n_samples=7,
                                    generator=torch.Generator().manual_seed(11), max_rows=9)
    torch.testing.assert_close(ours, lipschitz_literal(quadratic_explainer, x, t, 0.05, 7, 11))


@pytest.mark.parametrize("denominator", ["input", "relative_logits", "logits"])
def test_relative_stability_equals_the_literal_definition(denominator):
    """A tanh MLP whose class flips under some perturbations; zeros in inputs exercise eps_min."""
    model = small_mlp()
    x = torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x[:, :, :2, :] = 0.0  # zero inputs: the eps_min convention
    t = model(x).argmax(dim=1)
    explain = xprune.explainer(model, "saliency", params={"abs": False})
    kw = dict(radius=1.5, n_samples=9, eps_min=1e-6, max_rows=10)
    if denominator == "input":
        ours = relative_input_stability(model, explain, x, t, **kw,
                                        generator=torch.Generator().manual_seed(4))
    else:
        ours = relative_output_stability(model, explain, x, t, **kw,
                                         relative_logits=denominator == "relative_logits",
                                         generator=torch.Generator().manual_seed(4))
    expected = relative_literal(model, explain, x, t, 1.5, 9, 1e-6, 4, denominator)
    torch.testing.assert_close(ours, expected, equal_nan=True)
    if denominator == "input":  # maps that are 0 where x is: eps_min in the numerator too
        ours = relative_input_stability(model, quadratic_explainer, x, t, **kw,
                                        generator=torch.Generator().manual_seed(4))
        expected = relative_literal(model, quadratic_explainer, x, t, 1.5, 9, 1e-6, 4, "input")
        torch.testing.assert_close(ours, expected, equal_nan=True)
    # the case is not vacuous: some perturbations change the class, and some samples keep it
    noise = torch.stack([(torch.rand(9, 1, 4, 4, generator=g) * 2 - 1) * 1.5
                         for g in [torch.Generator().manual_seed(4)] for _ in range(8)])
    flips = model((x[:, None] + noise.double()).reshape(-1, 1, 4, 4)).argmax(1).reshape(8, 9)
    kept = flips == t[:, None]
    assert 0 < int(kept.sum()) < kept.numel()


# --- Quantus 0.6 on the same perturbations ------------------------------------------------

class InjectedPerturbation:
    """A Quantus ``perturb_func`` returning pre-drawn perturbed inputs, one draw per call."""

    def __init__(self, x: np.ndarray, perturbed: np.ndarray) -> None:
        self.x, self.perturbed, self.calls = x, perturbed, 0

    def __call__(self, arr, indices=None, **kwargs):
        np.testing.assert_array_equal(arr, self.x.reshape(arr.shape))  # one batch, in order
        out = self.perturbed[:, self.calls].reshape(arr.shape).copy()
        self.calls += 1
        return out


def _quantus_setup(digits_cnn, digits_batch, n=32):
    x = digits_batch[0][:n].clone()
    explain = xprune.explainer(digits_cnn, "saliency", params={"abs": False})
    t = digits_cnn(x).argmax(dim=1)

    def quantus_explain(model, inputs, targets, **kwargs):
        return explain(torch.as_tensor(inputs), torch.as_tensor(targets)).numpy()

    return x, t, explain, quantus_explain


def _call_quantus(metric, model, x, t, explain, quantus_explain):
    return np.asarray(metric(model=model, x_batch=x.numpy().copy(), y_batch=t.numpy().copy(),
                             a_batch=explain(x, t).numpy().copy(), channel_first=True,
                             explain_func=quantus_explain, device="cpu"), dtype=np.float64)


def test_lipschitz_matches_quantus_on_the_same_perturbations(digits_cnn, digits_batch):
    quantus = pytest.importorskip("quantus")
    x, t, explain, q_explain = _quantus_setup(digits_cnn, digits_batch)
    n_samples, std = 8, 0.1
    ours = local_lipschitz_estimate(explain, x, t, noise_std=std, n_samples=n_samples,
                                    generator=torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)  # the draws, as documented
    perturbed = torch.stack([x[i] + torch.randn(n_samples, *x.shape[1:], generator=gen) * std
                             for i in range(x.shape[0])])
    inject = InjectedPerturbation(x.numpy(), perturbed.numpy())
    metric = quantus.LocalLipschitzEstimate(nr_samples=n_samples, perturb_func=inject,
                                            normalise=False, abs=False, return_aggregate=False,
                                            disable_warnings=True)
    theirs = _call_quantus(metric, digits_cnn, x, t, explain, q_explain)
    assert inject.calls == n_samples
    # Quantus adds 1e-10 to ||x - x'|| (about 2.6 here) and works in float32
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-5)


def test_lipschitz_matches_quantus_sampling_in_distribution(digits_cnn, digits_batch):
    """Quantus's own Gaussian draws (sigma 0.1) against ours: the noise convention agrees."""
    quantus = pytest.importorskip("quantus")
    x, t, explain, q_explain = _quantus_setup(digits_cnn, digits_batch)
    ours = local_lipschitz_estimate(explain, x, t, noise_std=0.1, n_samples=10).numpy()
    np.random.seed(0)  # noqa: NPY002  Quantus draws from the global NumPy RNG
    metric = quantus.LocalLipschitzEstimate(nr_samples=10, perturb_std=0.1, normalise=False,
                                            abs=False, return_aggregate=False,
                                            disable_warnings=True)
    theirs = _call_quantus(metric, digits_cnn, x, t, explain, q_explain)
    se = math.sqrt(ours.var(ddof=1) / ours.size + theirs.var(ddof=1) / theirs.size)
    assert abs(ours.mean() - theirs.mean()) < 3 * se


@pytest.mark.parametrize("which", ["ris", "ros"])
def test_relative_stability_matches_quantus_on_the_same_perturbations(which, digits_cnn,
                                                                      digits_batch):
    quantus = pytest.importorskip("quantus")
    x, t, explain, q_explain = _quantus_setup(digits_cnn, digits_batch)
    n_samples, radius = 8, 0.2
    seed = torch.Generator().manual_seed(6)
    if which == "ris":
        ours = relative_input_stability(digits_cnn, explain, x, t, radius=radius,
                                        n_samples=n_samples, generator=seed)
        cls = quantus.RelativeInputStability
    else:  # Quantus divides by the absolute change of the logits
        ours = relative_output_stability(digits_cnn, explain, x, t, radius=radius,
                                         n_samples=n_samples, relative_logits=False,
                                         generator=seed)
        cls = quantus.RelativeOutputStability
    gen = torch.Generator().manual_seed(6)  # the draws, as documented
    perturbed = torch.stack([
        x[i] + (torch.rand(n_samples, *x.shape[1:], generator=gen) * 2 - 1) * radius
        for i in range(x.shape[0])])
    inject = InjectedPerturbation(x.numpy(), perturbed.numpy())
    metric = cls(nr_samples=n_samples, perturb_func=inject, return_aggregate=False,
                 disable_warnings=True)
    theirs = _call_quantus(metric, digits_cnn, x, t, explain, q_explain)
    assert inject.calls == n_samples
    # Where Quantus is NaN a perturbation changed the class; we take the max over the others
    changed = (digits_cnn(perturbed.reshape(-1, *x.shape[1:])).argmax(1).reshape(len(x), -1)
               != t[:, None]).any(dim=1).numpy()
    np.testing.assert_array_equal(np.isnan(theirs), changed)
    assert bool(torch.isfinite(ours).all())
    assert (~changed).sum() >= 16
    np.testing.assert_allclose(ours.numpy()[~changed], theirs[~changed], rtol=1e-5)


# --- closed forms and properties ----------------------------------------------------------

def test_linear_model_gradients_are_perfectly_stable(linear_model):
    explain = xprune.explainer(linear_model, "saliency", params={"abs": False})
    x = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    t = linear_model(x).argmax(dim=1)
    zeros = torch.zeros(12, dtype=torch.float64)
    torch.testing.assert_close(local_lipschitz_estimate(explain, x, t), zeros)
    torch.testing.assert_close(relative_input_stability(linear_model, explain, x, t), zeros)
    for relative_logits in (True, False):
        torch.testing.assert_close(relative_output_stability(
            linear_model, explain, x, t, relative_logits=relative_logits), zeros)


def test_proportional_maps_give_known_values():
    """Phi(x) = c x: Lipschitz |c|, RIS 1; logits = x with Phi(x) = x: ROS 1 (non-square inputs)."""
    model = Quadratic(4)
    explain = xprune.explainer(model, "saliency", params={"abs": False})  # (t + 1) x
    x = 0.5 + torch.rand(5, 2, 3, 4, generator=torch.Generator().manual_seed(3),
                         dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 3, 1])
    torch.testing.assert_close(local_lipschitz_estimate(explain, x, t, n_samples=4),
                               (t + 1).double())
    torch.testing.assert_close(relative_input_stability(model, explain, x, t, radius=0.3),
                               torch.ones(5, dtype=torch.float64))
    x_id = x.clone()
    x_id[:, 0, 0, 0] = 5.0  # a clear winner: the class never changes
    ros = relative_output_stability(Identity(), lambda v, _: v, x_id, 0, radius=0.3)
    torch.testing.assert_close(ros, torch.ones(5, dtype=torch.float64))


def test_squared_maps_give_their_exponent():
    """Phi(x) = c x^2 changes by r (2 - r) relative to x's change r: RIS in [2 - rho, 2 + rho].

    rho bounds |x - x'| / |x| elementwise (radius / min x); the Lipschitz
    estimate of c x^2 at x = a with tiny noise is 2 a c.
    """
    x = 1 + torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    t = torch.arange(6)
    radius = 0.05
    rho = radius / float(x.min())
    ris = relative_input_stability(Quadratic(6), quadratic_explainer, x, t, radius=radius)
    assert bool((ris >= 2 - rho).all()) and bool((ris <= 2 + rho).all())
    small = relative_input_stability(Quadratic(6), quadratic_explainer, x, t, radius=1e-4)
    torch.testing.assert_close(small, torch.full((6,), 2.0, dtype=torch.float64), rtol=1e-4,
                               atol=0)
    a = torch.full((6, 1, 4, 4), 1.5, dtype=torch.float64)
    lip = local_lipschitz_estimate(quadratic_explainer, a, t, noise_std=1e-4)
    torch.testing.assert_close(lip, 2 * 1.5 * (t + 1).double(), rtol=1e-3, atol=0)


def test_relative_scores_do_not_depend_on_the_scale_of_maps_or_logits(digits_cnn, digits_batch):
    """The point of relative stability: a model whose logits are 3x larger (and so are its
    gradients) gets the same RIS and ROS; the absolute-logit ROS shrinks 3x."""
    base = copy.deepcopy(digits_cnn).double()  # float64: the identity holds to rounding
    x = digits_batch[0][:4].double()
    t = base(x).argmax(dim=1)
    scores = {}
    for name, model in (("base", base), ("big", Scaled(base, 3.0))):
        explain = xprune.explainer(model, "saliency", params={"abs": False})
        kw = dict(n_samples=3, generator=torch.Generator().manual_seed(1))
        scores[name] = (relative_input_stability(model, explain, x, t, **kw),
                        relative_output_stability(model, explain, x, t, **kw),
                        relative_output_stability(model, explain, x, t, relative_logits=False,
                                                  generator=torch.Generator().manual_seed(1),
                                                  n_samples=3))
    torch.testing.assert_close(scores["big"][0], scores["base"][0], rtol=1e-9, atol=0)
    torch.testing.assert_close(scores["big"][1], scores["base"][1], rtol=1e-9, atol=0)
    torch.testing.assert_close(scores["big"][2], scores["base"][2] / 3, rtol=1e-9, atol=0)


def test_reproducible_and_batch_independent(digits_cnn, digits_batch):
    """../shared/cases/001 and 004: same seed, same scores; batch-mates change nothing.

    In float64: batches of 1, 6 and 12 split float32 kernels differently across threads, and
    ROS divides by logit differences, which magnifies that rounding to ~1e-5 in float32; in
    float64 it stays far below the 1e-6 tolerance, which then tests batch independence alone.
    """
    model = copy.deepcopy(digits_cnn).double()
    x = digits_batch[0][:12].double()
    t = model(x).argmax(dim=1)
    explain = xprune.explainer(model, "saliency", params={"abs": False})
    runs = {
        "lle": lambda xs, ts, **kw: local_lipschitz_estimate(explain, xs, ts, n_samples=3, **kw),
        "ris": lambda xs, ts, **kw: relative_input_stability(model, explain, xs, ts,
                                                             n_samples=3, **kw),
        "ros": lambda xs, ts, **kw: relative_output_stability(model, explain, xs, ts,
                                                              n_samples=3, **kw),
    }
    bigger = torch.cat([x[:6], 10 * x[6:]])  # later samples with much larger maps
    for name, run in runs.items():
        first = run(x[:6], t[:6], generator=torch.Generator().manual_seed(3))
        again = run(x[:6], t[:6], generator=torch.Generator().manual_seed(3))
        assert torch.equal(first, again), name
        other = run(x[:6], t[:6], generator=torch.Generator().manual_seed(4))
        assert not torch.equal(first, other), name
        in_batch = run(bigger, t, generator=torch.Generator().manual_seed(3))[:6]
        torch.testing.assert_close(in_batch, first, atol=1e-6, rtol=1e-6, msg=name)
        alone = run(x[:1], t[:1], generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(alone, first[:1], atol=1e-6, rtol=1e-6, msg=name)


def test_max_rows_changes_nothing_but_rounding(digits_cnn, digits_batch):
    """Chunking is exact in float64. (In float32 an explainer rounds differently for other
    chunk sizes, and the element-wise ratios of RIS/ROS magnify that to about 1e-5.)"""
    model = copy.deepcopy(digits_cnn).double()
    x = digits_batch[0][:4].double()
    t = model(x).argmax(dim=1)
    explain = xprune.explainer(model, "saliency", params={"abs": False})
    for fn, args in ((local_lipschitz_estimate, (explain,)),
                     (relative_input_stability, (model, explain)),
                     (relative_output_stability, (model, explain))):
        scores = [fn(*args, x, t, n_samples=3, max_rows=rows,
                     generator=torch.Generator().manual_seed(2)) for rows in (1, 5, 4096)]
        torch.testing.assert_close(scores[0], scores[2], rtol=1e-9, atol=0)
        torch.testing.assert_close(scores[1], scores[2], rtol=1e-9, atol=0)


def test_all_perturbations_go_through_two_explainer_calls_with_max_sensitivity_noise():
    """Batched: one call for x, one for every perturbation; RIS sees max-sensitivity's noise."""
    model = Quadratic(3)
    x = 0.5 + torch.rand(5, 1, 3, 3, dtype=torch.float64)
    seen = {}

    def recorder(key):
        def explain(v, t):
            seen.setdefault(key, []).append(v.clone())
            return quadratic_explainer(v, t)
        return explain

    relative_input_stability(model, recorder("ris"), x, 1, n_samples=6, radius=0.1,
                             generator=torch.Generator().manual_seed(8))
    max_sensitivity(recorder("sens"), x, 1, n_samples=6, radius=0.1,
                    generator=torch.Generator().manual_seed(8))
    assert [v.shape[0] for v in seen["ris"]] == [5, 30]
    assert torch.equal(seen["ris"][1], seen["sens"][1])


def test_inputs_model_and_mode_untouched(digits_cnn, digits_batch):
    x = digits_batch[0][:4].clone()
    before = x.clone()
    model = copy.deepcopy(digits_cnn).train()
    snap = state_snapshot(model)
    explain = xprune.explainer(model, "saliency", params={"abs": False})
    relative_output_stability(model, explain, x, 0, n_samples=2)
    relative_input_stability(model, explain, x, 0, n_samples=2)
    local_lipschitz_estimate(explain, x, 0, n_samples=2)
    assert torch.equal(x, before) and x.grad is None
    assert all(m.training for m in model.modules())  # train mode restored
    assert_state_equal(model, snap)


def test_registered_with_metadata():
    for name, kind in [("local_lipschitz_estimate", "explainer"),
                       ("relative_input_stability", "model_explainer"),
                       ("relative_output_stability", "model_explainer")]:
        info = METRICS[name]
        assert (info.category, info.kind, info.higher_is_better) == ("stability", kind, False)
        assert info.range == (0.0, math.inf) and info.reference


# --- errors and undefined cases -----------------------------------------------------------

def test_errors():
    x = torch.rand(3, 4)
    ident = lambda v, t: v  # noqa: E731
    model = Linear(4, 10)
    with pytest.raises(ValueError, match="Expected `noise_std` to be a finite number > 0, got 0"):
        local_lipschitz_estimate(ident, x, 0, noise_std=0)
    with pytest.raises(ValueError, match="Expected `noise_std` to be a finite number > 0, got inf"):
        local_lipschitz_estimate(ident, x, 0, noise_std=math.inf)
    with pytest.raises(ValueError, match="Expected `radius` to be a finite number > 0, got -0.1"):
        relative_input_stability(model, ident, x, 0, radius=-0.1)
    with pytest.raises(ValueError, match="Expected `eps_min` to be a finite number > 0, got 0"):
        relative_output_stability(model, ident, x, 0, eps_min=0.0)
    for fn, args in ((local_lipschitz_estimate, (ident, x, 0)),
                     (relative_input_stability, (model, ident, x, 0)),
                     (relative_output_stability, (model, ident, x, 0))):
        with pytest.raises(ValueError, match="`n_samples` to be an integer >= 1, got 0"):
            fn(*args, n_samples=0)
        with pytest.raises(ValueError, match="`max_rows` to be an integer >= 1, got 0"):
            fn(*args, max_rows=0)
        with pytest.raises(ValueError, match=r"maps of the inputs' shape \(3, 4\), got \(3,\)"):
            fn(*args[:-3], lambda v, t: v.sum(dim=1), *args[-2:])
        with pytest.raises(ValueError, match="`inputs` to be finite, got 1 NaN"):
            fn(*args[:-2], torch.tensor([[0.0, math.nan], [1.0, 2.0]]), args[-1])
    with pytest.raises(ValueError, match=r"non-negative class indices of shape \(3,\)"):
        local_lipschitz_estimate(ident, x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="Expected `target` to be an int or class indices"):
        local_lipschitz_estimate(ident, x, None)
    with pytest.raises(ValueError, match=r"`target` in \[0, 10\) for a model with 10 outputs"):
        relative_input_stability(model, ident, x, torch.tensor([0, 1, 10]))
    with pytest.raises(ValueError, match=r"`target` of shape \(3,\), got shape \(2,\)"):
        relative_output_stability(model, ident, x, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="for a model with 10 outputs: pass one class index"):
        relative_input_stability(model, ident, x, None)


def test_no_valid_perturbation_is_nan_with_a_warning():
    x = torch.zeros(2, 1, 2, 2, dtype=torch.float64)
    explain = lambda v, t: v + 1  # noqa: E731
    for fn in (relative_input_stability, relative_output_stability):
        with pytest.warns(RuntimeWarning, match="2 sample.* no perturbation that keeps the "
                                                "predicted class"):
            s = fn(Flipper(), explain, x, 0, n_samples=3)
        assert bool(torch.isnan(s).all())
    with pytest.warns(RuntimeWarning, match="1 sample.* no neighbour that differs"):
        s = local_lipschitz_estimate(lambda v, t: v, torch.full((1, 4), 1e10), 0, noise_std=1e-3)
    assert bool(torch.isnan(s).all())


def test_one_output_model_predicts_by_the_sign_of_its_logit():
    model = Linear(6, 1).eval()
    explain = xprune.explainer(model, "saliency", params={"abs": False})
    x = torch.rand(4, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(relative_input_stability(model, explain, x, None),
                               torch.zeros(4, dtype=torch.float64))


# --- which metrics cannot take token ids: one flag, read by the functions and the config -------

class _TokenBag(nn.Module):
    """forward(ids): mean of the embeddings, then a linear layer (float64)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embedding = nn.Embedding(20, 4).double()
        self.fc = nn.Linear(4, 3).double()

    def forward(self, ids):
        return self.fc(self.embedding(ids).mean(dim=1))


def test_config_leaves_out_for_token_ids_exactly_the_metrics_whose_functions_refuse_them():
    """Every metric that sees the inputs is called on token ids; those whose function refuses
    them for continuous noise are exactly config.CONTINUOUS_NOISE (read from the registry's
    ``continuous_noise`` flag), which the config drops from its default set for token inputs
    and refuses by name."""
    import warnings

    from xprune.config import CONTINUOUS_NOISE, DEFAULT_METRICS, MetricsConfig

    model = _TokenBag().eval()
    ids = torch.tensor([[3, 7, 1, 9, 2, 5], [5, 2, 8, 4, 6, 11], [13, 4, 2, 7, 9, 1]])
    target = torch.tensor([0, 1, 2])
    explain = xprune.explainer(model, "input_x_gradient")
    a = xprune.attribute(model, ids, target, "input_x_gradient")
    calls = {"model": lambda fn: fn(model, ids, a, target),
             "explainer": lambda fn: fn(explain, ids, target),
             "model_explainer": lambda fn: fn(model, explain, ids, target)}
    refused, called = set(), set()
    for name, info in METRICS.items():
        if info.kind not in calls:
            continue
        called.add(name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                calls[info.kind](info.fn)
            except ValueError as exc:
                if "perturbs its inputs with continuous noise" in str(exc):
                    refused.add(name)
            except Exception:  # noqa: BLE001  other refusals are not this test's subject
                pass
    assert {"infidelity", "local_lipschitz_estimate", "relative_input_stability",
            "max_sensitivity", "deletion_auc"} <= called
    assert refused == set(CONTINUOUS_NOISE) == {
        "infidelity", "local_lipschitz_estimate", "relative_input_stability",
        "relative_output_stability"}
    default = MetricsConfig().resolved_names(images=False, tokens=True)
    assert set(DEFAULT_METRICS) - set(default) - {"ssim"} == refused & set(DEFAULT_METRICS)
    for name in sorted(refused):
        with pytest.raises(ValueError, match=rf"\['{name}'\] add continuous noise to the "
                                             r"inputs, which token ids cannot take"):
            MetricsConfig(names=[name]).resolved_names(images=False, tokens=True)
        assert MetricsConfig(names=[name]).resolved_names(images=False) == [name]
