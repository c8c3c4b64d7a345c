"""Every registered metric, called as the analysis calls it: shape, dtype, metadata, no side
effects, a sample's score independent of its batch-mates, and the same seed the same scores."""

import copy
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
    if info.kind == "rationale":  # the drawn strokes of each digit stand in for a rationale
        return info.fn(a, x[:, 0] > 0.5, **kwargs)
    assert info.kind == "randomisation"
    return info.fn(model, x, t, attribute_fn, **kwargs)


@pytest.fixture(scope="module")
def setup(digits_cnn, digits_batch):
    x = digits_batch[0][:16].clone()
    t = digits_cnn(x).argmax(dim=1)
    a = xprune.attribute(digits_cnn, x, t, "saliency", params={"abs": False}).values
    return digits_cnn, x, a, t


@pytest.fixture(scope="module")
def setup64(setup):
    """The same model, inputs and maps in float64, for the batch-independence check."""
    model, x, a, t = setup
    return copy.deepcopy(model).double(), x.double(), a.double(), t


@pytest.mark.parametrize("name", sorted(M.METRICS))
def test_registered_metric_contract(setup, setup64, name):
    model, x, a, t = setup
    info = M.METRICS[name]
    assert info.category in ("complexity", "faithfulness", "agreement", "stability",
                             "plausibility", "randomisation")
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
    if info.kind in ("map", "rationale"):
        torch.testing.assert_close(alone, batch[:2], rtol=1e-6, atol=1e-6, equal_nan=True)
    elif info.kind != "pair":  # a pair metric here compares with a flipped batch
        # A sample's score does not depend on its batch-mates (shared/cases/001), but a batch of
        # 2 and one of 16 split float32 kernels differently, and some formulas magnify that
        # rounding (relative output stability divides by logit differences of ~1e-3). In
        # float64 that rounding is ~1e-13 after magnification, so 1e-6 tests the dependence.
        model64, x64, a64, t64 = setup64
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            batch64 = _call(name, model64, x64, a64, t64)
            alone64 = _call(name, model64, x64[:2], a64[:2], t64[:2])
        torch.testing.assert_close(alone64, batch64[:2], rtol=1e-6, atol=1e-6, equal_nan=True)
    finite = batch[torch.isfinite(batch)]
    assert finite.numel() > 0
    assert bool((finite >= low - 1e-9).all()) and bool((finite <= high + 1e-9).all())
    if not math.isinf(high) and info.category == "agreement":  # a map against itself
        self_score = _call_self(name, a)
        torch.testing.assert_close(self_score, torch.ones_like(self_score), equal_nan=True)


def _call_self(name, a):
    info = M.METRICS[name]
    return info.fn(a, a, **PARAMS.get(name, {}))

