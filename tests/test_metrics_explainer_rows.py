"""Issue 23: explainer-bound metrics ask the explainer for exactly the rows their definition needs.

With the caller's unperturbed maps (``attributions=``), max- and avg-sensitivity,
the local Lipschitz estimate and relative input/output stability explain the
N x n_samples perturbed rows and nothing else; the explainer is wrapped to
count its rows. Scores equal those that explain the unperturbed inputs again.
"""

import copy

import pytest
import torch

import xprune
from xprune.metrics import stability


class CountingExplainer:
    """Wraps an explainer and records the rows of every call."""

    def __init__(self, explain_fn):
        self.explain_fn, self.calls = explain_fn, []
        self.independent_rows = getattr(explain_fn, "independent_rows", False)

    def __call__(self, x, target):
        self.calls.append(int(x.shape[0]))
        return self.explain_fn(x, target)


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def setup(digits_cnn, digits_batch):
    model = copy.deepcopy(digits_cnn).double().eval()
    x = digits_batch[0][:10].double().clone()
    a = xprune.attribute(model, x, "predicted", "integrated_gradients", params={"n_steps": 4})
    return model, x, a


STABILITY = {
    "max_sensitivity": lambda m, e, x, t, **kw: stability.max_sensitivity(e, x, t, **kw),
    "avg_sensitivity": lambda m, e, x, t, **kw: stability.avg_sensitivity(e, x, t, **kw),
    "sensitivity_draws": lambda m, e, x, t, **kw: stability.sensitivity_draws(e, x, t, **kw),
    "local_lipschitz_estimate":
        lambda m, e, x, t, **kw: stability.local_lipschitz_estimate(e, x, t, **kw),
    "relative_input_stability":
        lambda m, e, x, t, **kw: stability.relative_input_stability(m, e, x, t, **kw),
    "relative_output_stability":
        lambda m, e, x, t, **kw: stability.relative_output_stability(m, e, x, t, **kw),
}


@pytest.mark.parametrize("name", sorted(STABILITY))
@pytest.mark.parametrize("max_rows", [4096, 7])
def test_given_maps_leave_only_the_perturbed_rows(setup, name, max_rows):
    model, x, a = setup
    n, s = x.shape[0], 3
    counted = CountingExplainer(xprune.explainer(model, "integrated_gradients",
                                                 params={"n_steps": 4}))
    fn = STABILITY[name]
    ours = fn(model, counted, x, a.targets, n_samples=s, generator=seeded(4),
              max_rows=max_rows, attributions=a)
    assert sum(counted.calls) == n * s
    assert max(counted.calls) <= max_rows
    counted.calls.clear()
    again = fn(model, counted, x, a.targets, n_samples=s, generator=seeded(4),
               max_rows=max_rows)
    assert sum(counted.calls) == n * (s + 1)
    torch.testing.assert_close(ours, again, rtol=1e-9, atol=1e-12, equal_nan=True)


def test_given_maps_are_the_unperturbed_maps():
    """A deliberately different 'unperturbed' map moves the score as the formula says."""
    x = torch.rand(5, 1, 4, 4, generator=seeded(1), dtype=torch.float64)
    t = torch.zeros(5, dtype=torch.long)
    identity = CountingExplainer(lambda v, target: v)
    shifted = x + 1.0
    ours = stability.sensitivity_draws(identity, x, t, radius=0.1, n_samples=4,
                                       relative=False, generator=seeded(2), attributions=shifted)
    gen = seeded(2)
    noise = torch.stack([(torch.rand(4, 1, 4, 4, generator=gen) * 2 - 1) * 0.1
                         for _ in range(5)]).double()
    expected = ((x[:, None] + noise) - shifted[:, None]).reshape(5, 4, -1).norm(dim=2)
    torch.testing.assert_close(ours, expected)
    assert sum(identity.calls) == 5 * 4


def test_other_explainers_keep_their_perturbed_calls(setup):
    """A callable without independent rows gets the perturbed rows in the calls it always got."""
    _, x, a = setup
    counted = CountingExplainer(lambda v, target: v * 2)
    assert counted.independent_rows is False
    stability.max_sensitivity(counted, x, a.targets, n_samples=3, max_rows=7,
                              attributions=a.values * 1.0)
    assert counted.calls == [7, 7, 7, 7, 2]


def test_given_maps_are_checked(setup):
    model, x, a = setup
    explain = xprune.explainer(model, "integrated_gradients", params={"n_steps": 4})
    with pytest.raises(ValueError, match="computed on other inputs"):
        stability.max_sensitivity(explain, x + 1, a.targets, attributions=a)
    with pytest.raises(ValueError, match="other targets"):
        stability.max_sensitivity(explain, x, (a.targets + 1) % 10, attributions=a)
    with pytest.raises(ValueError, match="inputs' shape"):
        stability.local_lipschitz_estimate(explain, x, a.targets, attributions=a.values[:3])


@pytest.mark.parametrize("name", ["relative_input_stability", "relative_output_stability"])
def test_relative_stability_forwards_only_the_rows_it_reads(setup, name):
    """The model sees the N x (S + 1) rows whose logits the definition reads, once each, in
    one pass here (all fit), after the one-row probe that checks its outputs are logits (the
    explainer works on a copy here, so its own passes are not counted)."""
    model, x, a = setup
    n, s = x.shape[0], 3
    explain = xprune.explainer(copy.deepcopy(model), "integrated_gradients",
                               params={"n_steps": 4})
    seen = []
    handle = model.register_forward_hook(lambda m, inp, out: seen.append(int(inp[0].shape[0])))
    try:
        STABILITY[name](model, explain, x, a.targets, n_samples=s, generator=seeded(4),
                        attributions=a)
    finally:
        handle.remove()
    assert seen == [1, n * (s + 1)]


class CountingAttribute:
    """Wraps an ``attribute_fn(model, inputs, targets)`` and counts its rows."""

    def __init__(self):
        self.rows = 0

    def __call__(self, model, inputs, target):
        self.rows += int(inputs.shape[0])
        return xprune.attribute(model, inputs, target, "saliency", params={"abs": False}).values


@pytest.mark.parametrize("order", ["cascading", "independent"])
def test_sanity_checks_reuse_the_given_original_maps(setup, order):
    from xprune.metrics import sanity

    model, x, _ = setup
    a = xprune.attribute(model, x, "predicted", "saliency", params={"abs": False})
    n = x.shape[0]
    counted = CountingAttribute()
    curve = sanity.parameter_randomisation(model, x, a.targets, counted, order=order,
                                           generator=seeded(3), attributions=a)
    assert counted.rows == n * len(curve.layers) == n * 4
    counted.rows = 0
    again = sanity.parameter_randomisation(model, x, a.targets, counted, order=order,
                                           generator=seeded(3))
    assert counted.rows == n * (len(curve.layers) + 1)
    torch.testing.assert_close(curve.values, again.values, equal_nan=True)
    counted.rows = 0
    summary = sanity.model_parameter_randomisation(model, x, a.targets, counted, order=order,
                                                   generator=seeded(3), attributions=a)
    assert counted.rows == n * len(curve.layers)
    torch.testing.assert_close(summary, curve.values.mean(dim=1), equal_nan=True)
    counted.rows = 0
    ours = sanity.random_logit(model, x, a.targets, counted, generator=seeded(3), attributions=a)
    assert counted.rows == n
    torch.testing.assert_close(ours, sanity.random_logit(model, x, a.targets, counted,
                                                         generator=seeded(3)))
    with pytest.raises(ValueError, match="computed on other inputs"):
        sanity.random_logit(model, x + 1, a.targets, counted, attributions=a)


@pytest.mark.parametrize("name", sorted(STABILITY))
def test_explainer_calls_in_chunks_equal_one_call(setup, name):
    """The same perturbed rows sent in calls of 7 rows or in one call give the same scores
    (a map depends on its row alone, up to rounding), and every row is explained once."""
    model, x, a = setup
    n, s = x.shape[0], 3
    counted = CountingExplainer(xprune.explainer(model, "integrated_gradients",
                                                 params={"n_steps": 4}))
    fn = STABILITY[name]
    one = fn(model, counted, x, a.targets, n_samples=s, generator=seeded(2), attributions=a)
    assert counted.calls == [n * s]
    counted.calls.clear()
    chunked = fn(model, counted, x, a.targets, n_samples=s, generator=seeded(2), max_rows=7,
                 attributions=a)
    assert sum(counted.calls) == n * s and max(counted.calls) <= 7
    torch.testing.assert_close(chunked, one, rtol=1e-9, atol=1e-12, equal_nan=True)


# --- the attribution passes behind an explainer call on the CPU (issue 23) -----------------

class PassRows:
    """Records the rows of each forward pass with gradients through ``module``."""

    def __init__(self, module):
        self.rows = []
        self.handle = module.register_forward_hook(self.hook)

    def hook(self, module, inputs, output):
        if torch.is_grad_enabled():
            self.rows.append(int(inputs[0].shape[0]))


def test_cpu_passes_keep_to_the_byte_budget_with_captums_maps(setup, monkeypatch):
    """Integrated Gradients on the CPU sends its N x n_steps rows in passes of at most
    CPU_PASS_BYTES of activations (here set to 40 rows' worth), every row once, and its maps
    equal Captum's IG computed in a single pass on the same inputs."""
    from captum.attr import IntegratedGradients

    import xprune.attribution as attribution
    from xprune.attribution._inputs import activation_bytes_per_row

    model, x, a = setup
    per_row = activation_bytes_per_row(model, x[:2], (), model)
    monkeypatch.setattr(attribution, "CPU_PASS_BYTES", 40 * per_row + per_row // 2)
    explain = xprune.explainer(model, "integrated_gradients", params={"n_steps": 16})
    passes = PassRows(model.conv1)
    try:
        ours = explain(x, a.targets)
    finally:
        passes.handle.remove()
    assert passes.rows[:2] == [1, 2]      # the probes that measure a row's bytes
    assert passes.rows[2:] == [40] * 4    # 4 of the 16 steps of the 10 inputs a pass
    reference = IntegratedGradients(model).attribute(
        x.clone().requires_grad_(), baselines=0.0, target=a.targets, n_steps=16,
        method="gausslegendre", internal_batch_size=x.shape[0] * 16)
    torch.testing.assert_close(ours, reference.detach(), rtol=1e-10, atol=1e-12)


def test_cpu_passes_are_cut_to_no_fewer_than_the_minimum_rows(setup, monkeypatch):
    """A byte budget below one row still leaves CPU_MIN_PASS_ROWS (8) rows a pass, and a method
    that needs more rows per input is not refused for it; the maps are those of the uncut
    passes up to rounding. GradientSHAP, which draws per pass, takes no cut at all."""
    import xprune.attribution as attribution

    model, x, a = setup
    uncut = xprune.explainer(model, "integrated_gradients", params={"n_steps": 4})(x, a.targets)
    monkeypatch.setattr(attribution, "CPU_PASS_BYTES", 1)
    passes = PassRows(model.conv1)
    try:
        cut = xprune.explainer(model, "integrated_gradients", params={"n_steps": 4})(x, a.targets)
        # after the probes: 8 inputs x 1 step a pass, then the last 2 inputs x 4 steps
        assert passes.rows[2:] == [8] * 5
        passes.rows.clear()
        xprune.attribute(model, x, a.targets, "gradient_shap", params={"n_samples": 20})
    finally:
        passes.handle.remove()
    torch.testing.assert_close(cut, uncut, rtol=1e-10, atol=1e-12)
    assert max(passes.rows[2:]) == min(4096, 20 * x.shape[0])
