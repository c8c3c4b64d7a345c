"""Every registered metric, called as the analysis calls it: shape, dtype, metadata, no side
effects, a sample's score independent of its batch-mates, and the same seed the same scores."""

import functools
import inspect
import math
import warnings

import pytest
import torch

import xprune
from xprune import metrics as M

# keep the expensive ones small; each entry: keyword arguments for a 16-sample digits batch
PARAMS = {
    "faithfulness_correlation": {"n_runs": 10},
    "sensitivity_n": {"n_runs": 10},
    "infidelity": {"n_samples": 4},
    "monotonicity_correlation": {"n_samples": 2},
    "model_effective_complexity": {"n_samples": 2},
    "max_sensitivity": {"n_samples": 3},
    "avg_sensitivity": {"n_samples": 3},
    "local_lipschitz_estimate": {"n_samples": 3},
    "relative_input_stability": {"n_samples": 3},
    "relative_output_stability": {"n_samples": 3},
    "road": {"percentages": (0.2, 0.5)},
}


def _call(name, model, x, a, t, seed=0):
    info = M.METRICS[name]
    kwargs = dict(PARAMS.get(name, {}))
    if "generator" in inspect.signature(info.fn).parameters:
        kwargs["generator"] = torch.Generator().manual_seed(seed)
    explain = xprune.explainer(model, "saliency", params={"abs": False})
    attribute_fn = functools.partial(xprune.attribute, method="saliency", params={"abs": False})
    if info.kind == "map":
        return info.fn(a, **kwargs)
    if info.kind == "pair":
        return info.fn(a, a.flip(0), **kwargs)
    if info.kind == "model":
        return info.fn(model, x, a, t, **kwargs)
    if info.kind == "explainer":
        return info.fn(explain, x, t, **kwargs)
    if info.kind == "model_explainer":
        return info.fn(model, explain, x, t, **kwargs)
    assert info.kind == "randomisation"
    return info.fn(model, x, t, attribute_fn, **kwargs)


@pytest.fixture(scope="module")
def setup(digits_cnn, digits_batch):
    x = digits_batch[0][:16].clone()
    t = digits_cnn(x).argmax(dim=1)
    a = xprune.attribute(digits_cnn, x, t, "saliency", params={"abs": False}).values
    return digits_cnn, x, a, t


@pytest.mark.parametrize("name", sorted(M.METRICS))
def test_registered_metric_contract(setup, name):
    model, x, a, t = setup
    info = M.METRICS[name]
    assert info.category in ("complexity", "faithfulness", "agreement", "stability",
                             "randomisation")
    assert info.reference and isinstance(info.higher_is_better, bool)
    low, high = info.range
    x0, a0 = x.clone(), a.clone()
    params0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings():  # undefined samples warn; their NaN is checked below
        warnings.simplefilter("ignore")
        batch = _call(name, model, x, a, t)
        again = _call(name, model, x, a, t)
        alone = _call(name, model, x[:2], a[:2], t[:2])
    assert batch.shape == (16,) and batch.dtype == torch.float64
    # inputs, maps and weights untouched
    assert torch.equal(x, x0) and torch.equal(a, a0)
    assert all(torch.equal(v, params0[k]) for k, v in model.state_dict().items())
    torch.testing.assert_close(again, batch, rtol=0, atol=0, equal_nan=True)  # seeded
    if info.kind != "pair":  # a pair metric here compares with a flipped batch
        torch.testing.assert_close(alone, batch[:2], rtol=1e-6, atol=1e-6, equal_nan=True)
    finite = batch[torch.isfinite(batch)]
    assert finite.numel() > 0
    assert bool((finite >= low - 1e-9).all()) and bool((finite <= high + 1e-9).all())
    if not math.isinf(high) and info.category == "agreement":  # a map against itself
        self_score = _call_self(name, a)
        torch.testing.assert_close(self_score, torch.ones_like(self_score), equal_nan=True)


def _call_self(name, a):
    info = M.METRICS[name]
    return info.fn(a, a, **PARAMS.get(name, {}))

