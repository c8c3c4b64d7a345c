"""Layer selection (issue 19 items 1 and 7): which weight matrices are pruned and counted.

The fix of ../shared/cases/014-prune-which-layers.md: `layers=` / `exclude=` patterns over module
names and types, in the API and the config; sparsity over the selection and over all weights; a
pattern that selects nothing lists the module names."""

import pytest
import torch
from conftest import assert_state_equal, state_snapshot
from torch import nn

import xprune
from xprune.config import PruningConfig, PruningVariant
from xprune.pruning import counted_weights, output_layer, prune, select_weights, sparsity


class Encoder(nn.Module):
    """A tiny pretrained-style encoder: two Transformer layers, an unused pooler, a 2-way head."""

    def __init__(self, d: int = 16):
        super().__init__()
        layer = nn.TransformerEncoderLayer(d, nhead=2, dim_feedforward=32, dropout=0.0,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.pooler = nn.Linear(d, d)  # never used in forward, as in case 014
        self.classifier = nn.Linear(d, 2)

    def forward(self, x):
        return self.classifier(self.encoder(x)[:, 0])


@pytest.fixture
def encoder():
    torch.manual_seed(0)
    return Encoder().eval()


IN_PROJ = 3 * 16 * 16  # query, key and value projections of one layer
OUT_PROJ, FF = 16 * 16, 2 * 16 * 32
ENCODER_WEIGHTS = 2 * (IN_PROJ + OUT_PROJ + FF)


def test_case_014_prune_only_the_encoder_and_report_both_sparsities(encoder):
    """../shared/cases/014-prune-which-layers.md: prune only the encoder's layers to 50%,
    pooler and head left dense; sparsity over the selection and over all weights."""
    snapshot = state_snapshot(encoder)
    for scope in ("global", "layer"):
        pair = prune(encoder, 0.5, layers="encoder.*", exclude=["*classifier*", "*pooler*"],
                     scope=scope)
        assert_state_equal(encoder, snapshot)
        assert all(k.startswith("encoder.") for k in pair.layers)
        assert "encoder.layers.0.self_attn.in_proj_weight" in pair.masks  # item 7: counted
        assert pair.total_weights == ENCODER_WEIGHTS
        assert abs(pair.sparsity - 0.5) * ENCODER_WEIGHTS <= 1
        assert torch.equal(pair.sparse.pooler.weight, encoder.pooler.weight)
        assert torch.equal(pair.sparse.classifier.weight, encoder.classifier.weight)
        everything = ENCODER_WEIGHTS + 16 * 16 + 2 * 16
        assert pair.sparsity_all == pytest.approx(pair.sparsity * ENCODER_WEIGHTS / everything)
        in_proj = pair.sparse.encoder.layers[1].self_attn.in_proj_weight
        assert float((in_proj == 0).double().mean()) == (0.5 if scope == "layer" else
                                                         pytest.approx(0.5, abs=0.2))
    x = torch.rand(3, 4, 16)
    assert pair.sparse(x).shape == (3, 2)
    table = pair.layer_table().set_index("parameter")
    assert not table.loc["pooler.weight", "selected"]
    assert table.loc["encoder.layers.0.linear1.weight", "selected"]


def test_default_selection_leaves_the_output_layer_dense(encoder):
    assert output_layer(encoder) == "classifier"
    keys = select_weights(encoder)
    assert "classifier.weight" not in keys and "pooler.weight" in keys
    assert "encoder.layers.0.self_attn.in_proj_weight" in keys
    assert set(counted_weights(encoder)) == set(keys) | {"classifier.weight"}
    assert "classifier.weight" in select_weights(encoder, layers="*")


def test_patterns_over_types_names_and_parameter_keys(encoder):
    linear = select_weights(encoder, layers=nn.Linear)
    assert linear == select_weights(encoder, layers="Linear")
    assert "encoder.layers.0.self_attn.out_proj.weight" in linear  # a Linear subclass
    assert not any(k.endswith("in_proj_weight") for k in linear)
    assert select_weights(encoder, layers="*.in_proj_weight") == [
        "encoder.layers.0.self_attn.in_proj_weight", "encoder.layers.1.self_attn.in_proj_weight"]
    assert select_weights(encoder, layers=["pooler", "classifier"]) == [
        "pooler.weight", "classifier.weight"]
    assert select_weights(encoder, layers="MultiheadAttention", exclude="*.1.*") == [
        "encoder.layers.0.self_attn.in_proj_weight"]


def test_a_pattern_that_selects_nothing_lists_the_modules(encoder):
    """../shared/cases/014-prune-which-layers.md: a pattern that selects nothing lists the
    module names."""
    with pytest.raises(ValueError, match=r"Pattern 'decoder\.\*' in `layers` selects no weight "
                                         r"matrix; .*'encoder.layers.0.self_attn', .*'pooler', "
                                         r"'classifier'\]"):
        prune(encoder, 0.5, layers="decoder.*")
    with pytest.raises(ValueError, match=r"Pattern 'Conv2d' in `exclude` selects no weight"):
        prune(encoder, 0.5, exclude="Conv2d")
    with pytest.raises(ValueError, match="at least one weight matrix to prune, got none"):
        prune(encoder, 0.5, layers="pooler", exclude="pooler")
    with pytest.raises(TypeError, match=r"Expected `layers` to be a glob pattern .* got 3"):
        prune(encoder, 0.5, layers=3)


def test_sparsity_over_a_selection_and_over_all_weights(encoder):
    pair = prune(encoder, 0.5, layers="*.in_proj_weight")
    zeros = sum(int((pair.sparse.get_parameter(k) == 0).sum()) for k in pair.layers)
    assert zeros == 2 * IN_PROJ // 2
    assert sparsity(pair.sparse, layers="*.in_proj_weight") == pytest.approx(0.5)
    all_weights = sum(pair.sparse.get_parameter(k).numel() for k in counted_weights(encoder))
    assert sparsity(pair.sparse) == pytest.approx(zeros / all_weights)
    assert pair.sparsity_all == pytest.approx(zeros / all_weights)


def test_attention_all_ones_mask_keeps_the_outputs(encoder):
    """torch.nn.utils.prune on a MultiheadAttention parameter: all-ones mask = dense model."""
    key = "encoder.layers.0.self_attn.in_proj_weight"
    mask = torch.ones(3 * 16, 16, dtype=torch.bool)
    pair = prune(encoder, method="custom_mask", options={"masks": {key: mask}}, layers=key)
    x = torch.rand(2, 5, 16)
    torch.testing.assert_close(pair.sparse(x), encoder(x), rtol=0, atol=0)
    half = mask.clone()
    half[:, ::2] = False
    pair = prune(encoder, method="custom_mask", options={"masks": {key: half}}, layers=key)
    assert bool((pair.sparse.get_parameter(key)[:, ::2] == 0).all())
    assert not torch.allclose(pair.sparse(x), encoder(x))


def test_masked_fine_tuning_keeps_attention_zeros(encoder):
    pair = prune(encoder, 0.6, layers="encoder.*")
    x, y = torch.rand(16, 4, 16), torch.randint(0, 2, (16,))
    tuned = xprune.fine_tune(pair, x, y, epochs=2, batch_size=8)
    key = "encoder.layers.0.self_attn.in_proj_weight"
    w = tuned.sparse.get_parameter(key)
    assert bool((w[~pair.masks[key]] == 0).all())
    assert not torch.equal(w, pair.sparse.get_parameter(key))
    assert tuned.sparsity == pytest.approx(pair.sparsity)


def test_config_keys_layers_and_exclude():
    """../shared/cases/014-prune-which-layers.md: the same patterns in the config."""
    v = PruningVariant(layers=["encoder.*"], exclude="*pooler*")
    assert v.layers == ("encoder.*",) and v.exclude == "*pooler*"
    with pytest.raises(ValueError, match=r"Expected `pruning.layers` to be a glob pattern .*"
                                         r"got \(1,\)"):
        PruningVariant(layers=[1])
    with pytest.raises(ValueError, match=r"Expected `pruning.exclude` to be a glob pattern"):
        PruningConfig(methods=({"method": "l1_unstructured", "exclude": []},))
    config = PruningConfig(layers=["conv*"], methods=({"method": "l1_unstructured"},
                                                      {"method": "random_unstructured",
                                                       "layers": "fc1"}))
    assert [v.layers for v in config.variants()] == [("conv*",), "fc1"]


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU])
def test_recurrent_gate_matrices_all_ones_mask_and_magnitude(cell):
    """Issue 19 item 6: weight_ih_l* / weight_hh_l* are pruned per gate matrix through the
    generic parameter selection; an all-ones mask leaves the outputs identical."""
    torch.manual_seed(0)
    rnn = cell(4, 6, num_layers=2, batch_first=True)
    x = torch.rand(3, 5, 4)
    keys = [f"weight_{kind}_l{layer}" for layer in range(2) for kind in ("ih", "hh")]
    assert select_weights(rnn) == keys
    ones = {k: torch.ones_like(rnn.get_parameter(k), dtype=torch.bool) for k in keys}
    pair = prune(rnn, method="custom_mask", options={"masks": ones})
    torch.testing.assert_close(pair.sparse(x)[0], rnn(x)[0], rtol=0, atol=0)
    pair = prune(rnn, 0.5, scope="layer")
    for key in keys:
        w, dense = pair.sparse.get_parameter(key), rnn.get_parameter(key).detach()
        assert int((w == 0).sum()) == w.numel() // 2
        kept = pair.masks[key]
        assert float(dense.abs()[~kept].max()) <= float(dense.abs()[kept].min())
    assert not torch.allclose(pair.sparse(x)[0], rnn(x)[0])
