import pytest
import torch
from conftest import Linear
from torch import nn

import xprune
from xprune.attribution import attribute, attribute_pair


def test_ig_of_a_linear_model_is_w_times_x_minus_baseline(linear_model):
    x = torch.rand(5, 1, 8, 8, dtype=torch.float64)
    target = torch.tensor([0, 3, 9, 1, 1])
    for baseline in (0.0, 0.25):
        a = attribute(linear_model, x, target, "integrated_gradients",
                      params={"n_steps": 8, "baseline": baseline})
        w = linear_model.fc.weight.detach()[target].reshape(5, 1, 8, 8)
        torch.testing.assert_close(a.values, w * (x - baseline))
        # Captum's quadrature weights are float32: completeness holds to ~1e-7
        torch.testing.assert_close(a.delta, torch.zeros(5, dtype=torch.float64), atol=1e-6,
                                   rtol=0)


def test_saliency_of_a_linear_model_is_the_weight(linear_model):
    x = torch.rand(3, 64, dtype=torch.float64)
    target = torch.tensor([2, 4, 6])
    w = linear_model.fc.weight.detach()[target]
    torch.testing.assert_close(attribute(linear_model, x, target, "saliency",
                                         params={"abs": False}).values, w)
    torch.testing.assert_close(attribute(linear_model, x, target, "saliency").values, w.abs())


def test_eval_mode_is_restored_after_an_error():
    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            if self.calls > 1:
                raise RuntimeError("boom")
            return self.fc(x)

    model = Boom().train()
    with pytest.raises(RuntimeError, match="boom"):
        attribute(model, torch.rand(2, 4), torch.tensor([0, 1]), "saliency")
    assert model.training
    assert not model._forward_hooks and not model.fc._forward_hooks
    assert not model._backward_hooks and not model.fc._backward_hooks


def test_missing_target_for_a_multiclass_model_names_the_outputs(digits_cnn):
    """../shared/cases/005-missing-target.md"""
    with pytest.raises(ValueError, match="for a model with 10 outputs: pass one class index"):
        attribute(digits_cnn, torch.rand(4, 1, 8, 8), None, "saliency")


def test_single_output_model_needs_no_target():
    model = nn.Linear(3, 1).double()
    a = attribute(model, torch.rand(4, 3, dtype=torch.float64), None, "saliency",
                  params={"abs": False})
    torch.testing.assert_close(a.values, model.weight.detach().expand(4, 3))


@pytest.mark.parametrize("target, message", [
    (torch.tensor([0, 10]), r"in \[0, 10\) for a model with 10 outputs, got values from 0 to 10"),
    (torch.tensor([0, 1, 2]), r"of shape \(2,\), got shape \(3,\)"),
    (torch.tensor([0.0, 1.0]), "integer class indices"),
    (-1, r"in \[0, 10\)"),
    ("largest", "Expected `target` to be 'predicted'"),
])
def test_bad_targets(digits_cnn, target, message):
    with pytest.raises(ValueError, match=message):
        attribute(digits_cnn, torch.rand(2, 1, 8, 8), target, "saliency")


def test_bad_inputs_and_params(digits_cnn):
    x = torch.rand(2, 1, 8, 8)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="Expected `inputs` to be finite, got 1 NaN or Inf"):
        attribute(digits_cnn, x, 0, "saliency")
    with pytest.raises(ValueError, match="at least one sample"):
        attribute(digits_cnn, torch.rand(0, 1, 8, 8), 0, "saliency")
    with pytest.raises(ValueError, match=r"Unknown parameter\(s\) \['steps'\]"):
        attribute(digits_cnn, torch.rand(2, 1, 8, 8), 0, params={"steps": 3})
    with pytest.raises(ValueError, match="Expected `n_steps` to be an integer >= 1, got 0"):
        attribute(digits_cnn, torch.rand(2, 1, 8, 8), 0, params={"n_steps": 0})
    with pytest.raises(ValueError, match="Did you mean 'saliency'"):
        attribute(digits_cnn, torch.rand(2, 1, 8, 8), 0, "salency")


@pytest.mark.parametrize("n_steps", [50, 1000])
def test_no_forward_pass_exceeds_max_rows(n_steps):
    """../shared/cases/006-ig-memory.md: the bound holds whatever N and n_steps are."""
    model = Linear(64, 10, dtype=torch.float32).eval()
    largest = []
    handle = model.fc.register_forward_hook(lambda m, i, o: largest.append(i[0].shape[0]))
    try:
        a = attribute(model, torch.rand(1024, 1, 8, 8), 3, "integrated_gradients",
                      params={"n_steps": n_steps}, max_rows=512)
    finally:
        handle.remove()
    assert max(largest) <= 512
    assert sum(largest) >= 1024 * n_steps  # every path point was evaluated
    assert a.values.shape == (1024, 1, 8, 8)


def test_chunking_does_not_change_values(digits_cnn):
    x = torch.rand(40, 1, 8, 8)
    whole = attribute(digits_cnn, x, "predicted", params={"n_steps": 16})
    chunked = attribute(digits_cnn, x, "predicted", params={"n_steps": 16}, max_rows=7)
    torch.testing.assert_close(chunked.values, whole.values, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(chunked.delta, whole.delta, rtol=1e-4, atol=1e-5)


def test_ig_completeness_on_the_digits_cnn(digits_cnn, digits_batch):
    # ReLU kinks make the integrand piecewise smooth: Gauss-Legendre needs many steps
    x = digits_batch[0][:16]
    coarse = attribute(digits_cnn, x, "predicted", params={"n_steps": 256})
    fine = attribute(digits_cnn, x, "predicted", params={"n_steps": 1024})  # the rule's limit
    assert float(fine.delta.abs().max()) < 1e-3 < float(coarse.delta.abs().max())


def test_pair_uses_the_dense_prediction_for_both(digits_cnn, digits_batch):
    x = digits_batch[0][:64]
    pair = xprune.prune(digits_cnn, 0.95)
    dense_attr, sparse_attr = attribute_pair(pair.dense, pair.sparse, x, method="saliency")
    expected = digits_cnn(x).argmax(dim=1)
    assert torch.equal(dense_attr.targets, expected)
    assert torch.equal(sparse_attr.targets, expected)
    assert (dense_attr.model_tag, sparse_attr.model_tag) == ("dense", "sparse")


def test_explainer_matches_attribute(digits_cnn):
    x = torch.rand(5, 1, 8, 8)
    t = torch.tensor([1, 2, 3, 4, 5])
    fn = xprune.explainer(digits_cnn, "saliency")
    torch.testing.assert_close(fn(x, t), attribute(digits_cnn, x, t, "saliency").values)


def test_completeness_error_hand_computed_and_refused_without_delta():
    from xprune.attribution import Attributions, completeness_error

    values = torch.tensor([[1.0, 2.0], [3.0, -1.0]])
    inputs = torch.zeros(2, 2)
    a = Attributions(values=values, inputs=inputs, targets=torch.zeros(2, dtype=torch.long),
                     method="integrated_gradients", delta=torch.tensor([0.3, -0.02]))
    relative, gap = completeness_error(a)
    # sum(a) = 3 and 2; f(x) - f(x') = sum(a) - delta = 2.7 and 2.02
    torch.testing.assert_close(gap, torch.tensor([2.7, 2.02], dtype=torch.float64))
    torch.testing.assert_close(relative, torch.tensor([0.3 / 2.7, 0.02 / 2.02],
                                                      dtype=torch.float64))
    with pytest.raises(ValueError, match="Expected attributions with a completeness delta"):
        completeness_error(Attributions(values=values, inputs=inputs,
                                        targets=torch.zeros(2, dtype=torch.long),
                                        method="saliency"))
