"""Semi-structured N:M sparsity (issue 19 item 4) for any weight-ranking score."""

import itertools

import pytest
import torch
from torch import nn

from xprune.pruning import n_m_mask, prune


def _literal_n_m(scores, n, m):
    """Slow reference: for each row and each group of m input weights, keep the n largest."""
    keep = torch.zeros_like(scores, dtype=torch.bool)
    rows, cols = scores.shape
    for r, start in itertools.product(range(rows), range(0, cols, m)):
        group = scores[r, start:start + m].tolist()
        order = sorted(range(m), key=lambda j: (-group[j], j))[:n]
        for j in order:
            keep[r, start + j] = True
    return keep


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_every_group_keeps_exactly_n_of_m_and_the_largest(n, m):
    torch.manual_seed(0)
    scores = torch.rand(6, 16)
    mask = n_m_mask(scores, n, m)
    assert (mask.reshape(6, 16 // m, m).sum(dim=2) == n).all()
    assert torch.equal(mask, _literal_n_m(scores, n, m))


def test_convolutions_group_input_channels_at_each_kernel_position():
    torch.manual_seed(0)
    scores = torch.rand(3, 8, 2, 2)  # (out, in, kh, kw)
    mask = n_m_mask(scores, 2, 4)
    for o, i, j in itertools.product(range(3), range(2), range(2)):
        for g in range(2):
            group = scores[o, 4 * g:4 * g + 4, i, j]
            kept = mask[o, 4 * g:4 * g + 4, i, j]
            assert int(kept.sum()) == 2
            assert float(group[kept].min()) >= float(group[~kept].max())


@pytest.mark.parametrize("method", ["l1_unstructured", "random_unstructured"])
def test_prune_with_n_m_checks_every_group(method):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(),
                          nn.Linear(12, 3))
    pair = prune(model, method=method, n_m=(2, 4))
    assert pair.amount == 0.5 and pair.sparsity == 0.5 and pair.params["n_m"] == [2, 4]
    assert list(pair.masks) == ["0.weight", "2.weight"]  # the output layer stays dense
    for key, mask in pair.masks.items():
        groups = mask.reshape(mask.shape[0], -1, 4)
        assert (groups.sum(dim=2) == 2).all()
        w = pair.sparse.get_parameter(key).reshape(mask.shape[0], -1, 4)
        assert ((w != 0).sum(dim=2) == 2).all()
        if method == "l1_unstructured":
            torch.testing.assert_close(mask, _literal_n_m(model.get_parameter(key).abs(), 2, 4),
                                       rtol=0, atol=0)
    assert torch.equal(pair.sparse[4].weight, model[4].weight)


def test_n_m_errors():
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match=r"Cannot prune '0.weight' to 2:4: .*multiple of M = 4"):
        prune(model, n_m=(2, 4))
    with pytest.raises(ValueError, match=r"Expected `n_m` to be a pair of integers \(N, M\)"):
        prune(model, n_m=(4, 2), layers="2")
    with pytest.raises(ValueError, match=r"Expected `amount` None or 0.5 with `n_m`"):
        prune(model, 0.7, n_m=(2, 4), layers="2")
    with pytest.raises(ValueError, match="does not rank weights: `n_m` applies only to"):
        prune(model, method="threshold", n_m=(2, 4), layers="2")
    assert prune(model, 0.5, n_m=(2, 4), layers="2").sparsity == 0.5


def test_ties_keep_the_lower_index():
    mask = n_m_mask(torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0, 2.0, 2.0, 2.0]]), 2, 4)
    assert mask.tolist() == [[True, True, False, False, False, True, True, False]]


def test_config_key_n_m_reaches_prune(digits):
    from xprune import analysis
    from xprune.config import AnalysisConfig, PruningConfig, PruningVariant
    from xprune.models import DigitsCNN

    config = AnalysisConfig.from_dict({"pruning": {
        "sparsities": [0.5], "finetune_epochs": 1,
        "methods": [{"method": "l1_unstructured", "n_m": [2, 4], "exclude": "conv1"},
                    {"method": "wanda"}]}})
    variant = config.pruning.variants()[0]
    assert variant.n_m == (2, 4) and variant.name == "l1_unstructured-2:4"
    torch.manual_seed(0)
    dense = DigitsCNN()
    reference = (digits.x_train[:64], digits.y_train[:64])
    for v in config.pruning.variants():
        model, _ = analysis._sparse_compute(dense, v, 0.5, digits, reference, config)()
        assert model.fc2.weight.count_nonzero() == model.fc2.weight.numel()
        if v.n_m:
            w = model.conv2.weight.detach().movedim(1, -1).reshape(-1, 4)
            assert ((w != 0).sum(dim=1) == 2).all()  # masked fine-tuning kept the pattern
    with pytest.raises(ValueError, match=r"Expected `pruning.sparsities` = \[0.5\] with `n_m`"):
        PruningConfig(n_m=[2, 4])
    with pytest.raises(ValueError, match=r"Expected `pruning.n_m` to be a pair of integers"):
        PruningVariant(n_m=[4, 4])
    with pytest.raises(ValueError, match="one-shot weight-ranking method with `pruning.n_m`"):
        PruningVariant(method="threshold", n_m=[2, 4])
