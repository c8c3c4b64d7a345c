"""Structured pruning with physical removal (Torch-Pruning) and its masked twin."""

import math

import pytest
import torch
from torch import nn

import xprune
from xprune.models import DigitsCNN, train
from xprune.profiling import count_macs


class ResidualCNN(nn.Module):
    """A residual block with BatchNorm and a grouped convolution, then a classifier."""

    def __init__(self, track_running_stats: bool = True):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn0 = nn.BatchNorm2d(8, track_running_stats=track_running_stats)
        self.relu0 = nn.ReLU()
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.bn1 = nn.BatchNorm2d(8, track_running_stats=track_running_stats)
        self.relu1 = nn.ReLU()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8, track_running_stats=track_running_stats)
        self.relu2 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        h = self.relu0(self.bn0(self.stem(x)))
        h = self.relu2(self.bn2(self.conv(self.relu1(self.bn1(self.grouped(h))))) + h)
        return self.fc(self.pool(h).reshape(x.shape[0], -1))


@pytest.fixture
def data():
    gen = torch.Generator().manual_seed(0)
    return torch.rand(32, 1, 8, 8, generator=gen), torch.randint(0, 10, (32,), generator=gen)


def _randomise_norms(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
                if m.running_mean is not None:
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("amount", [0.5, 0.9])
def test_smaller_model_equals_the_masked_twin(data, amount):
    torch.manual_seed(0)
    model = DigitsCNN().eval()
    pair = xprune.prune(model, amount, method="structured", data=data)
    assert pair.params["structured"] and pair.twin is not None
    assert pair.sparse.fc2.out_features == 10  # class indices survive
    assert pair.sparse.conv1.out_channels < 16 and pair.sparse.fc1.out_features < 64
    assert abs(pair.sparsity - amount) <= 0.01  # matched weight sparsity, not channel ratio
    x = torch.rand(16, 1, 8, 8)
    torch.testing.assert_close(pair.sparse(x), pair.twin(x), atol=1e-5, rtol=0)
    macs = count_macs(pair.sparse, x)
    assert macs["dense"] < count_macs(model, x)["dense"]  # real, not theoretical, savings
    a, b = xprune.attribute_pair(pair.dense, pair.sparse, x, method="saliency")
    assert a.values.shape == b.values.shape == x.shape


@pytest.mark.parametrize("track", [True, False])
def test_residual_batchnorm_grouped_graph(track):
    torch.manual_seed(0)
    model = _randomise_norms(ResidualCNN(track_running_stats=track)).eval()
    x = torch.rand(16, 3, 6, 6)
    data = (x, torch.randint(0, 4, (16,)))
    pair = xprune.prune(model, method="structured", data=data, options={"channel_ratio": 0.5})
    assert pair.sparse.fc.out_features == 4
    for m in pair.sparse.modules():
        if isinstance(m, nn.Conv2d):
            assert m.out_channels >= 1
    assert pair.sparse.stem.out_channels == pair.sparse.conv.out_channels  # the residual add
    assert pair.sparse.grouped.out_channels % 2 == 0  # groups kept whole
    if track:
        pair.sparse.eval()
        pair.twin.eval()
    torch.testing.assert_close(pair.sparse(x), pair.twin(x), atol=1e-5, rtol=0)


def test_channel_ratio_is_a_fraction_of_channels_not_of_weights(data):
    torch.manual_seed(0)
    model = DigitsCNN()
    pair = xprune.prune(model, method="structured", data=data, options={"channel_ratio": 0.5})
    # half the channels of conv1 and conv2 leaves a quarter of conv2's weights
    assert pair.sparse.conv2.weight.numel() == model.conv2.weight.numel() // 4
    assert pair.sparsity > 0.6


def test_taylor_criterion_and_fine_tuning(data, digits):
    torch.manual_seed(0)
    model = DigitsCNN()
    train(model, digits.x_train, digits.y_train, epochs=3, seed=0)
    pair = xprune.prune(model, 0.8, method="structured", data=data,
                        options={"criterion": "taylor", "norm": 2})
    tuned = xprune.fine_tune(pair, digits.x_train, digits.y_train, epochs=2)
    assert tuned.twin is None and tuned.sparse.conv1.out_channels == pair.sparse.conv1.out_channels
    assert xprune.models.evaluate(tuned.sparse, digits.x_test, digits.y_test)["accuracy"] > 0.5


def test_structured_errors(data):
    model = DigitsCNN()
    with pytest.raises(ValueError, match="exactly one of `amount` .* `channel_ratio` .* `n_units`"):
        xprune.prune(model, 0.5, method="structured", data=data, options={"channel_ratio": 0.5})
    with pytest.raises(ValueError, match=r"`criterion` to be one of \['magnitude', 'taylor'"):
        xprune.prune(model, 0.5, method="structured", data=data, options={"criterion": "gain"})
    with pytest.raises(ValueError, match="needs a reference batch"):
        xprune.prune(model, 0.5, method="structured")


def test_coarse_units_warn_when_the_request_cannot_be_met():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    data = (torch.rand(8, 4), torch.randint(0, 2, (8,)))
    with pytest.warns(UserWarning, match="more than 1 point from the requested 0.2"):
        xprune.prune(model, 0.2, method="structured", data=data)


def test_multihead_attention_projection_prunes_and_fine_tunes():
    """The MHA output projection is used without calling its forward: masks still hold."""

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.attn(x, x, x)[0].mean(dim=1))

    torch.manual_seed(0)
    model = Attn()
    x, y = torch.rand(32, 5, 8), torch.randint(0, 3, (32,))
    pair = xprune.prune(model, 0.5, scope="layer")
    assert "attn.out_proj.weight" in pair.masks
    tuned = xprune.fine_tune(pair, x, y, epochs=3, batch_size=8)
    w, mask = tuned.sparse.attn.out_proj.weight, pair.masks["attn.out_proj.weight"]
    assert bool((w[~mask] == 0).all()) and not torch.equal(w, pair.sparse.attn.out_proj.weight)


def test_lstm_gate_matrices_prune_and_the_output_layer_stays_dense():
    """Issue 19 items 6-7: recurrent weights are selected and counted; the head is the output."""
    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(4, 6, batch_first=True)
            self.head = nn.Linear(6, 2)

        def forward(self, x):
            return self.head(self.lstm(x)[0][:, -1])

    torch.manual_seed(0)
    model = Seq()
    pair = xprune.prune(model, 0.5)
    assert list(pair.masks) == ["lstm.weight_ih_l0", "lstm.weight_hh_l0"]
    assert pair.total_weights == 24 * 4 + 24 * 6 and abs(pair.sparsity - 0.5) * 240 <= 1
    assert torch.equal(pair.sparse.head.weight, model.head.weight)
    tuned = xprune.fine_tune(pair, torch.rand(16, 3, 4), torch.randint(0, 2, (16,)), epochs=2,
                             batch_size=4)
    w = tuned.sparse.lstm.weight_hh_l0
    assert bool((w[~pair.masks["lstm.weight_hh_l0"]] == 0).all())
    head = xprune.prune(model, 0.5, layers="head")
    assert list(head.masks) == ["head.weight"]
    assert list(xprune.prune(nn.LSTM(4, 6), 0.5).masks) == ["weight_ih_l0", "weight_hh_l0"]


@pytest.mark.parametrize("criterion", ["integrated_gradients", "lrp"])
def test_attribution_guided_unit_pruning(digits, criterion):
    """Yeom et al. 2021: units ranked by their relevance on a reference batch."""
    import captum.attr as ca

    from xprune.pruning.methods.structured import _relevance_scores

    torch.manual_seed(0)
    model = DigitsCNN().eval()
    train(model, digits.x_train, digits.y_train, epochs=3, seed=0)
    model.eval()
    x, y = digits.x_train[:32], digits.y_train[:32]
    scores = _relevance_scores(model, {"fc1": model.fc1}, (x, y), criterion)["fc1"]
    if criterion == "integrated_gradients":
        expected = ca.LayerIntegratedGradients(model, model.fc1).attribute(
            x, target=y, n_steps=16).abs().mean(dim=0)
        torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-6)
    pair = xprune.prune(model, 0.5, method="structured", data=(x, y),
                        options={"criterion": criterion})
    assert abs(pair.sparsity - 0.5) <= 0.01 and pair.sparse.fc2.out_features == 10
    torch.testing.assert_close(pair.sparse(x), pair.twin(x), atol=1e-5, rtol=0)
    assert all(not hasattr(m, "rule") for m in model.modules())  # LRP ran on a copy


# --------------------------------------------------------------------------------------------
# Yeom et al. 2021's protocol as options: activation criteria, the z+ rule, summed relevance,
# per-layer normalisation and the global ranking of `n_units` over all layers. A tiny network
# with set weights, 2 -> 3 -> 3 -> 3 -> 2, in the authors' layout.
# --------------------------------------------------------------------------------------------

from collections import OrderedDict  # noqa: E402

from literal_units import literal_taylor_gradient, literal_zplus  # noqa: E402
from torch.testing import assert_close  # noqa: E402

from xprune.pruning import PruningContext  # noqa: E402
from xprune.pruning.methods.structured import (  # noqa: E402
    _channel_scores,
    _global_selection,
    _normalise,
)

W1 = [[1.0, -2.0], [0.5, 0.5], [-3.0, 0.25]]
W2 = [[0.5, -1.0, 2.0], [1.0, 1.0, -0.5], [-0.25, 0.75, 1.5]]
W3 = [[1.0, 0.5, -1.0], [-0.5, 2.0, 0.25], [0.75, -0.25, 1.0]]
W4 = [[1.0, -1.5, 0.5], [-0.5, 1.0, 2.0]]
B = ([0.1, -0.2, 0.3], [0.05, 0.1, -0.1], [0.2, -0.1, 0.1], [0.1, -0.05])
X = torch.tensor([[0.8, -0.3], [-0.4, 0.9], [1.2, 0.7], [0.37, 0.21]], dtype=torch.float64)
Y = torch.tensor([0, 1, 1, 0])
HIDDEN = ("linear1", "linear2", "linear3")


def toy(*, third_relu: bool = False, biases: bool = True) -> nn.Sequential:
    """linear1 - relu - dropout - linear2 - relu - linear3 - [relu] - output, float64, eval."""
    layers = [("linear1", nn.Linear(2, 3)), ("relu1", nn.ReLU()), ("dropout1", nn.Dropout(0.5)),
              ("linear2", nn.Linear(3, 3)), ("relu2", nn.ReLU()), ("linear3", nn.Linear(3, 3))]
    if third_relu:
        layers.append(("relu3", nn.ReLU()))
    model = nn.Sequential(OrderedDict([*layers, ("output", nn.Linear(3, 2))])).double()
    linears = [m for m in model if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for layer, w, b in zip(linears, (W1, W2, W3, W4), B, strict=True):
            layer.weight.copy_(torch.tensor(w, dtype=torch.float64))
            layer.bias.copy_(torch.tensor(b, dtype=torch.float64) if biases else 0.0)
    return model.eval()


def scores_of(model, x=X, y=Y, **options) -> dict:
    opts = {**xprune.PRUNING_METHODS["structured"].options, **options}
    ctx = PruningContext(scope="global", generator=torch.Generator(), max_layer_sparsity=None,
                         data=(x, y), options=opts)
    return _channel_scores(model, ctx)


@pytest.mark.parametrize("third_relu", [False, True])
def test_activation_criteria_match_a_literal_finite_difference_loop(third_relu):
    model = toy(third_relu=third_relu)
    taylor, gradient = literal_taylor_gradient(
        model, X, Y, [model.get_submodule(n) for n in HIDDEN])
    ours_t = scores_of(model, criterion="activation_taylor")
    ours_g = scores_of(model, criterion="activation_gradient")
    for name, t, g in zip(HIDDEN, taylor, gradient, strict=True):
        assert_close(ours_t[name], t.abs(), atol=1e-7, rtol=1e-6)
        assert_close(ours_g[name], g.abs(), atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("third_relu", [False, True])
def test_lrp_zplus_summed_relevance_equals_a_literal_loop(third_relu):
    model = toy(third_relu=third_relu)
    ref = literal_zplus(model, X, Y)
    summed = scores_of(model, criterion="lrp", lrp_rule="z+", aggregate="sum")
    mean_abs = scores_of(model, criterion="lrp", lrp_rule="z+")
    for name, r in zip(HIDDEN, ref, strict=True):
        assert_close(summed[name], r.sum(dim=0), atol=1e-8, rtol=1e-6)
        assert_close(mean_abs[name], r.abs().mean(dim=0), atol=1e-8, rtol=1e-6)
    # the default epsilon rule keeps the biases, so it differs on this biased network
    assert not torch.allclose(scores_of(model, criterion="lrp", aggregate="sum")["linear1"],
                              summed["linear1"])


def test_lrp_zplus_conserves_the_explained_logit_with_zero_biases():
    model = toy(third_relu=True, biases=False)
    with torch.no_grad():
        logits = model(X)
    target = logits.argmax(dim=1)
    explained = logits.gather(1, target[:, None])[:, 0]
    assert bool((explained > 0).all())  # conservation needs a positive start
    summed = scores_of(model, y=target, criterion="lrp", lrp_rule="z+", aggregate="sum")
    for name in HIDDEN:
        assert_close(summed[name].sum(), explained.sum(), atol=1e-7, rtol=1e-7)


def test_per_layer_normalisation_hand_computed():
    s = torch.tensor([2.0, -1.0, 3.0])
    assert_close(_normalise(s, "sum"), torch.tensor([0.5, -0.25, 0.75]))
    assert_close(_normalise(torch.tensor([3.0, 4.0]), "l2"), torch.tensor([0.6, 0.8]))
    assert_close(_normalise(torch.tensor([1.0, -1.0]), "sum"), torch.tensor([1.0, -1.0]))
    assert_close(_normalise(torch.zeros(2), "l2"), torch.zeros(2))  # zero scale: unscaled
    assert torch.equal(s, torch.tensor([2.0, -1.0, 3.0]))  # input untouched
    assert _normalise(s, None) is s
    # magnitude L1 of the toy's incoming weights: layer sums 7.25, 8.5, 7.25
    out = scores_of(toy(), criterion="magnitude", normalise="sum")
    assert_close(out["linear1"], torch.tensor([3.0, 1.0, 3.25], dtype=torch.float64) / 7.25)
    assert_close(out["linear2"], torch.tensor([3.5, 2.5, 2.5], dtype=torch.float64) / 8.5)


def test_global_selection_takes_the_lowest_units_and_keeps_one_per_layer():
    scores = {"a": torch.tensor([0.5, 0.1, 0.9]), "b": torch.tensor([0.2, 0.05, 0.7]),
              "c": torch.tensor([0.3])}
    assert _global_selection(scores, ["a", "b", "c"], 3) == {"a": [1], "b": [0, 1], "c": []}
    two = {"a": torch.tensor([0.5, 0.1, 0.9]), "b": torch.tensor([0.2, 0.05]),
           "c": torch.tensor([0.3])}
    # 0.05, 0.1, then b's last unit (0.2) and c's only unit (0.3) are kept: 0.5 goes
    assert _global_selection(two, ["a", "b", "c"], 3) == {"a": [0, 1], "b": [1], "c": []}
    ties = {"a": torch.ones(2), "b": torch.ones(2)}  # stable: layer, then index
    assert _global_selection(ties, ["a", "b"], 2) == {"a": [0], "b": [0]}
    with pytest.raises(ValueError, match=r"`n_units` <= 3 \(every prunable layer keeps one"):
        _global_selection(two, ["a", "b", "c"], 4)
    with pytest.raises(ValueError, match="Expected finite unit scores"):
        _global_selection({"a": torch.tensor([0.1, math.nan])}, ["a"], 1)


def test_n_units_removes_the_hand_computed_units_like_deleting_them():
    model = toy()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    # L1 of incoming weights: [3, 1, 3.25], [3.5, 2.5, 2.5], [2.5, 2.75, 2.0]; lowest three:
    # linear1 unit 1 (1.0), linear3 unit 2 (2.0), linear2 unit 1 (2.5, first of the ties)
    pair = xprune.prune(model, method="structured", data=(X, Y),
                        options={"criterion": "magnitude", "n_units": 3})
    assert [pair.sparse.get_submodule(n).out_features for n in HIDDEN] == [2, 2, 2]
    keep = {"linear1": [0, 2], "linear2": [0, 2], "linear3": [0, 1]}
    assert_close(pair.sparse.linear2.weight, model.linear2.weight[keep["linear2"]][:, [0, 2]])
    assert_close(pair.sparse.output.weight, model.output.weight[:, keep["linear3"]])
    with torch.no_grad():
        assert_close(pair.sparse(X), pair.twin(X))  # removing computes what masking computes
    assert bool((pair.twin.linear1.weight[1] == 0).all()) and float(pair.twin.linear1.bias[1].detach()) == 0
    assert pair.params["zero_score_units"] == 0
    # the output layer is not selected by default: 12 of the hidden layers' 24 weights are
    # left, and four 2 x 2 matrices of all 30 weights
    assert abs(pair.sparsity - 0.5) < 1e-12
    assert abs(pair.sparsity_all - (1 - 4 * 4 / 30)) < 1e-12
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_activation_scores_leave_model_and_inputs_untouched_and_count_zero_scores():
    model = toy()
    model.train()  # dropout on: the criteria must still use eval mode
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = X.clone()
    first = xprune.prune(model, method="structured", data=(x, Y),
                         options={"criterion": "activation_gradient", "n_units": 2})
    second = xprune.prune(model, method="structured", data=(x, Y),
                          options={"criterion": "activation_gradient", "n_units": 2})
    assert torch.equal(first.sparse.linear1.weight, second.sparse.linear1.weight)
    assert model.training and all(m.training for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    for module in model.modules():
        assert not hasattr(module, "rule")
        assert not module._forward_hooks and not module._forward_pre_hooks
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(x, X) and x.grad is None and not x.requires_grad
    # a unit whose ReLU is off on every sample has gradient exactly 0 downstream of it
    dead = toy()
    with torch.no_grad():
        dead.linear1.bias[0] = -100.0
    pair = xprune.prune(dead, method="structured", data=(X, Y),
                        options={"criterion": "activation_gradient", "n_units": 1})
    assert pair.params["zero_score_units"] == 1
    assert pair.sparse.linear1.out_features == 2 and pair.twin.linear1.bias[0] == 0


@pytest.mark.parametrize("options, message", [
    ({"normalise": "max"}, r"`normalise` to be one of \[None, 'sum', 'l2'\], got 'max'"),
    ({"lrp_rule": "z-"}, r"`lrp_rule` to be one of \['epsilon', 'z\+'\], got 'z-'"),
    ({"aggregate": "max"}, r"`aggregate` to be one of \['mean_abs', 'sum'\], got 'max'"),
    ({"n_units": True}, "`n_units` to be a non-negative integer, got True"),
    ({"n_units": 10}, r"`n_units` <= 6"),
])
def test_unit_option_errors(options, message):
    with pytest.raises(ValueError, match=message):
        xprune.prune(toy(), method="structured", data=(X, Y), options=options
                     if "n_units" in options else {**options, "n_units": 1})


class _GroupedThenDepthwise(nn.Module):
    """../shared/cases/030-grouped-conv-structured.md: a groups=2 conv, then a depthwise one."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        return self.fc(torch.relu(self.dw(x)).flatten(1))


def test_case_030_grouped_conv_that_cannot_shrink_further_gets_a_clear_error():
    """../shared/cases/030-grouped-conv-structured.md: at 0.9 the groups=2 conv would keep one
    channel (torch's "Given groups=2, expected weight to be at least 2" in xprune's own probe
    forward); now an error names the layer and the largest sparsity reached without breaking
    it, and asking for that sparsity works."""
    import re
    import warnings

    torch.manual_seed(0)
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    with pytest.raises(ValueError, match=r"Structured pruning with amount = 0.9 would leave the "
                                         r"grouped convolution 'c2' \(groups=2, weight of shape "
                                         r"\(1, 1, 3, 3\)\): its channels must stay a nonzero "
                                         r"multiple of its groups\. The largest weight sparsity "
                                         r"reached here without that is (0\.\d+)") as info:
        xprune.prune(_GroupedThenDepthwise().eval(), 0.9, method="structured", data=(x, y))
    feasible = float(re.search(r"without that is (0\.\d+)", str(info.value)).group(1))
    assert 0.5 < feasible < 0.9
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # channels come in whole units
        pair = xprune.prune(_GroupedThenDepthwise().eval(), feasible, method="structured",
                            data=(x, y))
    assert pair.sparse.c2.weight.shape[0] % 2 == 0 and pair.sparse.c2.weight.shape[0] >= 2
    assert pair.sparse(x).shape == (16, 10)
    assert abs(pair.sparsity - feasible) < 0.01

