"""Cases found by trying xprune as a new user with models of one's own (tests/cases_s6/)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import xprune
from xprune.models import train


class TwoInput(nn.Module):
    """forward(num, cat): two float inputs, no `labels` keyword."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 8), nn.Linear(3, 8)
        self.relu, self.fc = nn.ReLU(), nn.Linear(8, 2)

    def forward(self, num, cat):
        return self.fc(self.relu(self.a(num) + self.b(cat)))


class _Items(torch.utils.data.Dataset):
    def __init__(self, num, cat, labels):
        self.num, self.cat, self.labels = num, cat, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"num": self.num[i], "cat": self.cat[i], "labels": self.labels[i]}


def _two_input_data(n=48):
    g = torch.Generator().manual_seed(0)
    num, cat = torch.randn(n, 6, generator=g), torch.randn(n, 3, generator=g)
    return num, cat, (num[:, 0] + cat[:, 0] > 0).long()


def test_dict_batches_with_labels_for_a_model_without_labels():
    """tests/cases_s6/001-dict-batches-with-labels.md: the "labels" entry is the labels only.

    Taylor importance from the loader equals Taylor importance from the same samples in
    memory, and training from the loader runs the same loss as from tensors."""
    num, cat, y = _two_input_data()
    torch.manual_seed(0)
    model = TwoInput()
    loader = torch.utils.data.DataLoader(_Items(num, cat, y), batch_size=len(y))
    streamed = xprune.prune(model, 0.5, method="taylor_unstructured", data=loader)
    in_memory = xprune.prune(model, 0.5, method="taylor_unstructured",
                             data=({"num": num, "cat": cat}, y))
    assert streamed.masks.keys() == in_memory.masks.keys()
    for key in streamed.masks:
        assert torch.equal(streamed.masks[key], in_memory.masks[key])
    a, b = TwoInput(), TwoInput()
    b.load_state_dict(a.state_dict())
    from_loader = train(a, loader, epochs=1)
    from_tensors = train(b, ({"num": num, "cat": cat}, y), epochs=1, batch_size=len(y))
    torch.testing.assert_close(from_loader.final_loss, from_tensors.final_loss)


def test_model_that_takes_labels_still_gets_them():
    """A forward with `labels` (as Hugging Face models have) still receives them."""
    seen = {}

    class OwnLoss(TwoInput):
        def forward(self, num, cat, labels=None):
            seen["labels"] = labels
            return super().forward(num, cat)

    num, cat, y = _two_input_data(8)
    loader = [{"num": num, "cat": cat, "labels": y}]
    xprune.prune(OwnLoss(), 0.5, method="taylor_unstructured", data=loader)
    assert torch.equal(seen["labels"], y)


@pytest.fixture
def regression():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 5, generator=g)
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 1)), x, x.sum(dim=1)


def test_regression_target_is_refused_before_the_loss(regression):
    """tests/cases_s6/002-float-labels-loss.md"""
    model, x, y = regression
    with pytest.raises(ValueError, match=r"labels of `data`.*dtype float32.*regression target"):
        xprune.prune(model, 0.5, method="taylor_unstructured", data=(x, y))
    with pytest.raises(ValueError, match=r"regression target is not supported"):
        xprune.fine_tune(xprune.prune(model, 0.5), x, y, epochs=1)


def test_labels_beyond_the_outputs_are_refused():
    """tests/cases_s6/002-float-labels-loss.md: labels 0..3 for a 2-output model."""
    num, cat, _ = _two_input_data(8)
    with pytest.raises(ValueError, match=r"0\.\.1 \(the model has 2 output\(s\)\), got labels "
                                         r"from 0 to 3"):
        train(TwoInput(), ({"num": num, "cat": cat}, torch.arange(8) % 4), epochs=1)


def test_one_output_probability_is_refused(regression):
    """tests/cases_s6/003-one-output-probability.md: no constant 1.0 scores."""
    model, x, _ = regression
    maps = xprune.attribute(model, x[:6], 0, "saliency")
    with pytest.raises(ValueError, match=r"one output.*output='logit'"):
        xprune.metrics.deletion_auc(model, x[:6], maps, maps.targets)
    with pytest.raises(ValueError, match=r"one output.*output='logit'"):
        xprune.metrics.insertion_auc(model, x[:6], maps, maps.targets)
    logit = xprune.metrics.deletion_curve(model, x[:6], maps, maps.targets, output="logit",
                                          steps=5)
    with torch.no_grad():
        assert torch.equal(logit.values[:, 0], model(x[:6])[:, 0].double())
