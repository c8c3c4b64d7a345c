"""Structured pruning with physical removal (Torch-Pruning) and its masked twin."""

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
    with pytest.raises(ValueError, match="either `amount` .* or the option `channel_ratio`"):
        xprune.prune(model, 0.5, method="structured", data=data, options={"channel_ratio": 0.5})
    with pytest.raises(ValueError, match="`criterion` to be 'magnitude', 'taylor'"):
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
