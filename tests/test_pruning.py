import copy
import math
import pickle

import pytest
import torch
from conftest import assert_state_equal, state_snapshot
from torch import nn

import xprune
from xprune.models import DigitsCNN
from xprune.pruning import PRUNING_METHODS, fine_tune, layer_table, prune


@pytest.fixture
def cnn():
    torch.manual_seed(0)
    return DigitsCNN()


@pytest.mark.parametrize("method", sorted(PRUNING_METHODS))
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_dense_model_is_never_mutated(cnn, method, scope):
    snapshot = state_snapshot(cnn)
    pair = prune(cnn, 0.9, method=method, scope=scope)
    assert pair.dense is cnn
    assert_state_equal(cnn, snapshot)
    assert not any(k.endswith(("_orig", "_mask")) for k in cnn.state_dict())


@pytest.mark.parametrize("amount", [0.0, 0.5, 0.8, 0.9, 0.95, 0.333])
def test_global_measured_sparsity_equals_request_within_one_weight(cnn, amount):
    pair = prune(cnn, amount)
    total = pair.total_weights
    assert total == 144 + 4608 + 32768 + 640
    assert abs(pair.sparsity * total - amount * total) <= 1
    assert pair.compression_ratio == pytest.approx(total / pair.nonzero_weights)


def test_layer_scope_prunes_each_layer_to_the_request(cnn):
    table = layer_table(prune(cnn, 0.5, scope="layer").sparse)
    assert (table["numel"] - table["nonzeros"]).tolist() == [72, 2304, 16384, 320]


def test_l1_removes_the_smallest_magnitudes(cnn):
    pair = prune(cnn, 0.9)
    dense_w = torch.cat([m.weight.detach().abs().reshape(-1) for _, m in
                         xprune.pruning.prunable_weights(cnn)])
    kept = torch.cat([mask.reshape(-1) for mask in pair.masks.values()])
    assert dense_w[~kept].max() <= dense_w[kept].min()


def test_pruning_is_permanent_and_pair_can_be_copied_and_pickled(cnn):
    pair = prune(cnn, 0.8)
    keys = pair.sparse.state_dict().keys()
    assert not any(k.endswith(("_orig", "_mask")) for k in keys)
    fresh = DigitsCNN()
    fresh.load_state_dict(pair.sparse.state_dict())  # loads into a plain dense model
    copy.deepcopy(pair.sparse)
    pickle.dumps(pair.sparse)
    for name, mask in pair.masks.items():
        layer = dict(pair.sparse.named_modules())[name.rsplit(".", 1)[0]]
        assert bool((layer.weight[~mask] == 0).all())


def test_random_control_is_seeded_and_differs_from_magnitude(cnn):
    a = prune(cnn, 0.9, method="random_unstructured", seed=1)
    b = prune(cnn, 0.9, method="random_unstructured", seed=1)
    c = prune(cnn, 0.9, method="random_unstructured", seed=2)
    l1 = prune(cnn, 0.9)
    assert all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)
    assert not all(torch.equal(a.masks[k], c.masks[k]) for k in a.masks)
    assert not all(torch.equal(a.masks[k], l1.masks[k]) for k in a.masks)
    assert abs(a.sparsity - 0.9) * a.total_weights <= 1


def test_masked_fine_tuning_keeps_pruned_weights_zero(cnn, digits):
    pair = prune(cnn, 0.9)
    before = state_snapshot(pair.sparse)
    tuned = fine_tune(pair, digits.x_train[:256], digits.y_train[:256], epochs=2)
    assert_state_equal(pair.sparse, before)  # the input pair is untouched
    for name, mask in tuned.masks.items():
        w = tuned.sparse.get_parameter(name)
        assert bool((w[~mask] == 0).all())
        assert bool((w[mask] != 0).all())
    assert not torch.equal(tuned.sparse.fc1.weight, pair.sparse.fc1.weight)
    assert tuned.sparsity == pytest.approx(pair.sparsity)
    assert tuned.params["finetune_epochs"] == 2 and tuned.params["finetune_seconds"] > 0


def test_zero_amount_keeps_outputs(cnn):
    pair = prune(cnn, 0.0)
    x = torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(pair.sparse(x), cnn(x), rtol=0, atol=0)


@pytest.mark.parametrize("amount", [-0.1, 1.0, 1.5, math.nan, "0.5"])
def test_amount_out_of_range(cnn, amount):
    with pytest.raises(ValueError, match=r"Expected `amount` in \[0.0, 1.0\)"):
        prune(cnn, amount)


def test_unknown_method_and_scope(cnn):
    with pytest.raises(ValueError, match="Did you mean 'l1_unstructured'"):
        prune(cnn, 0.5, method="l1_unstructure")
    with pytest.raises(ValueError, match="Expected `scope` to be 'global' or 'layer'"):
        prune(cnn, 0.5, scope="module")


def test_model_with_nothing_to_prune():
    with pytest.raises(ValueError, match="at least one prunable layer.*found none in Sequential"):
        prune(nn.Sequential(nn.ReLU()), 0.5)
