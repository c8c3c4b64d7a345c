"""The up-front model check: a reused activation stops DeepLIFT and LRP with a message that
names the module and the fix; LRP refuses residual additions it has no rule for; models
without either run as before (../shared/cases/024-deeplift-inplace-relu.md)."""

import pytest
import torch
from torch import nn

import xprune
from xprune.attribution._model_check import check_model_for_method


class Block(nn.Module):
    """A torchvision-style basic block: one ReLU(inplace=True) called twice, `out += x`."""

    def __init__(self, *, reuse=True, residual=True):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.relu2 = self.relu if reuse else nn.ReLU(inplace=True)
        self.residual = residual

    def forward(self, x):
        out = self.conv2(self.relu(self.conv1(x)))
        if self.residual:
            out += x
        return self.relu2(out)


class Net(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.layer1 = nn.Sequential(Block(**kw))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.layer1(self.stem(x))), 1))


@pytest.fixture
def x():
    return torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("method", ["deeplift", "lrp"])
def test_case_024_reused_inplace_relu_is_named_before_attribution(x, method):
    torch.manual_seed(0)
    model = Net().eval()
    with pytest.raises(ValueError, match=r"but `layer1\.0\.relu` \(ReLU\(inplace=True\)\) is "
                                         r"used twice.*Replace `layer1\.0\.relu` with a separate "
                                         r"ReLU for each use, or choose integrated_gradients"):
        xprune.attribute(model, x, 0, method)


def test_lrp_refuses_a_residual_addition_and_deeplift_runs_through_it(x):
    torch.manual_seed(0)
    model = Net(reuse=False).eval()
    with pytest.raises(ValueError, match=r"the forward of `layer1\.0` adds two tensors \(a "
                                         r"residual connection\)"):
        xprune.attribute(model, x, 0, "lrp")
    a = xprune.attribute(model, x, 0, "deeplift")  # separate ReLUs: DeepLIFT's rules hold
    # DeepLIFT's summation-to-delta: the map sums to f(x) - f(baseline)
    assert float(a.delta.abs().max()) < 1e-5


def test_models_without_either_pass_and_other_methods_are_not_checked(x):
    torch.manual_seed(0)
    plain = Net(reuse=False, residual=False).eval()
    a = xprune.attribute(plain, x, 0, "lrp")
    assert a.values.shape == x.shape and bool(torch.isfinite(a.values).all())
    reused = Net().eval()
    # gradient methods do not keep per-module state: a reused ReLU changes nothing for them
    for method in ("saliency", "integrated_gradients", "guided_backprop"):
        xprune.attribute(reused, x, 0, method)
    check_model_for_method(reused, "saliency", x[:1])  # returns at once


def test_the_check_leaves_no_hook_and_changes_nothing(x):
    model = Net().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError):
        check_model_for_method(model, "deeplift", x[:1])
    assert all(not m._forward_hooks for m in model.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
