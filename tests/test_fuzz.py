"""Fuzzing the public API (issue 21): every outcome is a result or xprune's own error.

Hypothesis draws shapes, dtypes, NaN/Inf entries, empty and one-element batches, wrong
target lengths and config values for ``attribute``, the metrics, ``prune`` and ``study``.
Every call must either return, or raise a ``ValueError``/``TypeError`` raised by xprune
(the innermost frame of the traceback is in the xprune package, so the message is
xprune's, not torch's, numpy's or scikit-learn's). After every call the caller's model
(parameters, buffers, their ``.grad``, mode), inputs (bytes, ``.grad``) are unchanged and
no hook stays registered. Bounded to about a minute: a few dozen examples per function.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import nn

import xprune
from xprune import metrics as M

PACKAGE = str(Path(xprune.__file__).resolve().parent)
FAST = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    for p in model.parameters():  # a .grad the calls must leave as it is
        p.grad = torch.full_like(p, 0.5)
    return model


def _snapshot(model: nn.Module) -> dict:
    return {"state": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "grads": {k: None if p.grad is None else p.grad.clone()
                      for k, p in model.named_parameters()},
            "modes": [m.training for m in model.modules()],
            "requires_grad": [p.requires_grad for p in model.parameters()]}


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(getattr(m, "_backward_pre_hooks", {})) for m in model.modules())


def _bytes(t):
    return None if not isinstance(t, torch.Tensor) else (t.dtype, tuple(t.shape),
                                                         t.detach().cpu().numpy().tobytes())


def _same_state(model: nn.Module, before: dict) -> None:
    after = _snapshot(model)
    for k, v in before["state"].items():
        assert _bytes(v) == _bytes(after["state"][k]), f"{k} changed"
    for k, g in before["grads"].items():
        assert _bytes(g) == _bytes(after["grads"][k]), f"{k}.grad changed"
    assert before["modes"] == after["modes"] and before["requires_grad"] == after["requires_grad"]
    assert _hooks(model) == 0, "a hook stayed registered"


def _xprune_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a ValueError/TypeError raised by a frame of the xprune package."""
    if not isinstance(exc, (ValueError, TypeError)):
        return False
    tb = exc.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    return str(Path(tb.tb_frame.f_code.co_filename).resolve()).startswith(PACKAGE)


def _call(fn, model: nn.Module, *tensors) -> object:
    """Run ``fn``; assert the outcome is a result or xprune's error, and that nothing of the
    caller's changed."""
    before = _snapshot(model)
    kept = [(t, _bytes(t), None if not isinstance(t, torch.Tensor) else t.grad)
            for t in tensors]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = fn()
    except Exception as exc:  # noqa: BLE001 - the property under test
        assert _xprune_error(exc), f"raw {type(exc).__name__} escaped: {exc}"
        out = exc
    event("xprune error" if isinstance(out, Exception) else "result")
    _same_state(model, before)
    for t, data, grad in kept:
        assert _bytes(t) == data, "an input changed"
        if isinstance(t, torch.Tensor):
            assert t.grad is grad
    return out


# valid values repeated, so that about half the draws reach a result
DTYPES = st.sampled_from([torch.float32] * 4 + [torch.float64, torch.float16, torch.int64,
                                                torch.bool])
SPECIAL = st.sampled_from([None] * 6 + [math.nan, math.inf, -math.inf])
SHAPES = st.sampled_from([(1, 4, 4)] * 4 + [(16,)] * 2 + [(4, 4), (2, 4, 4), (1, 16), (1, 3, 3)])


@st.composite
def batches(draw):
    n = draw(st.sampled_from([0, 1, 2, 3, 3, 3]))
    shape = (n, *draw(SHAPES))
    dtype = draw(DTYPES)
    gen = torch.Generator().manual_seed(draw(st.integers(0, 100)))
    x = torch.rand(shape, generator=gen)
    special = draw(SPECIAL)
    if special is not None and x.numel():
        x.view(-1)[draw(st.integers(0, x.numel() - 1))] = special
    if dtype == torch.bool:
        x = x > 0.5
    elif not dtype.is_floating_point:
        x = (x.nan_to_num(0, 0, 0) * 5).to(dtype)
    else:
        x = x.to(dtype)
    return x


TARGETS = st.one_of(
    st.none(), st.integers(-2, 4),
    st.sampled_from(["predicted", "cat", 1.5, True]),
    st.lists(st.integers(-1, 3), min_size=0, max_size=4),
    st.lists(st.integers(0, 2), min_size=0, max_size=4).map(torch.tensor),
    st.lists(st.floats(0, 2), min_size=1, max_size=3).map(torch.tensor))


@FAST
@given(x=batches(), target=st.one_of(st.just("per sample"), TARGETS),
       method=st.sampled_from(["saliency", "integrated_gradients", "input_x_gradient",
                               "occlusion", "gradient_shap", "saliancy"]))
def test_attribute_gives_a_result_or_an_xprune_error(x, target, method):
    model = _model()
    if target == "per sample":
        target = torch.arange(x.shape[0]) % 3
    params = {"integrated_gradients": {"n_steps": 4},
              "gradient_shap": {"n_samples": 2}}.get(method)
    out = _call(lambda: xprune.attribute(model, x, target, method, params=params), model, x,
                target)
    if isinstance(out, xprune.Attributions):
        assert out.values.shape == x.shape


def _maps(draw_x):
    return draw_x


METRIC_CALLS = {
    "gini_index": lambda m, x, a, b, t: M.gini_index(a),
    "entropy_complexity": lambda m, x, a, b, t: M.entropy_complexity(a),
    "spearman": lambda m, x, a, b, t: M.spearman(a, b),
    "top_k_intersection": lambda m, x, a, b, t: M.top_k_intersection(a, b, k=3),
    "cosine_similarity": lambda m, x, a, b, t: M.cosine_similarity(a, b),
    "deletion_auc": lambda m, x, a, b, t: M.deletion_auc(m, x, a, t, steps=4),
    "faithfulness_correlation": lambda m, x, a, b, t: M.faithfulness_correlation(
        m, x, a, t, n_runs=4, generator=torch.Generator().manual_seed(0)),
}


@FAST
@given(x=batches(), a=batches(), b=batches(), target=st.one_of(st.just("per sample"), TARGETS),
       same=st.booleans(), name=st.sampled_from(sorted(METRIC_CALLS)))
def test_metrics_give_a_result_or_an_xprune_error(x, a, b, target, same, name):
    model = _model()
    if target == "per sample":
        target = torch.arange(x.shape[0]) % 3
    if same:  # maps of the inputs' shape
        a = torch.rand(x.shape, generator=torch.Generator().manual_seed(1))
        b = torch.rand(x.shape, generator=torch.Generator().manual_seed(2))
    out = _call(lambda: METRIC_CALLS[name](model, x, a, b, target), model, x, a, b, target)
    if isinstance(out, torch.Tensor):
        assert out.shape == (a.shape[0],)


@FAST
@given(amount=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.none(),
                        st.sampled_from(["0.5", 0, 1, True, [0.5]])),
       method=st.sampled_from(["l1_unstructured", "random_unstructured", "wanda",
                               "structured", "l1", "snip"]),
       scope=st.sampled_from(["global", "layer", "Global"]),
       layers=st.sampled_from([None, "*", "1", "Linear", "nothing*", ["1", 3]]),
       data=st.one_of(st.none(), st.tuples(batches(), TARGETS)))
def test_prune_gives_a_result_or_an_xprune_error(amount, method, scope, layers, data):
    model = _model()
    out = _call(lambda: xprune.prune(model, amount, method=method, scope=scope, layers=layers,
                                     data=data), model,
                *(data if data is not None else ()))
    if isinstance(out, xprune.ModelPair):
        assert 0 <= out.sparsity <= 1


STUDY = settings(max_examples=8, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture,
                                        HealthCheck.too_slow])


@STUDY
@given(sparsities=st.sampled_from([[0.5]] * 3 + [0.5, [1.5], "half", [], None]),
       n_samples=st.sampled_from([3] * 4 + [0, 1, 10**6, -1, 2.5]),
       seed=st.sampled_from([0] * 4 + [-1, 2**40, 7]),
       metrics=st.sampled_from([["gini_index"]] * 3 + ["gini_index", ["pixel_flipping"],
                                                       ["nope"]]))
def test_study_gives_a_result_or_an_xprune_error(tmp_path_factory, sparsities, n_samples, seed,
                                                 metrics):
    model = _model()
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(36, 1, 4, 4, generator=gen), torch.arange(36) % 3
    config = {"seed": seed, "attribution": {"n_samples": n_samples, "methods": ["saliency"]},
              "pruning": {"finetune_epochs": 0}, "report": {"latency_batch": 4},
              "controls": {"other_seed": False, "finetune": False},
              "metrics": {"versus_random": []}}
    out = _call(lambda: xprune.study(model, (x, y), sparsities=sparsities, metrics=metrics,
                                     config=config, progress=False,
                                     out=tmp_path_factory.mktemp("study")), model, x, y)
    if not isinstance(out, Exception):
        assert set(out.results["model"]) >= {"dense"}


@pytest.mark.parametrize("name", sorted(METRIC_CALLS))
def test_a_raw_error_would_be_caught(name):
    """The criterion itself: an error raised by torch is not mistaken for xprune's."""
    try:
        torch.zeros(2) @ torch.zeros(3)
    except RuntimeError as exc:
        assert not _xprune_error(exc)
    try:
        xprune.prune(_model(), 2.0)
    except ValueError as exc:
        assert _xprune_error(exc)
