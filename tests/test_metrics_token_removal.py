"""Removal metrics on token ids: tokens are removed by replacing their id (ReplaceTokens, the
tokens kind of the removal operator), never by writing floats into the ids
(../shared/cases/010-token-ids-to-float-method.md, for the metrics)."""

import pytest
import torch
from torch import nn

import xprune
from xprune.metrics import deletion_curve, faithfulness_correlation, insertion_curve
from xprune.metrics._removal import ReplaceTokens, kind_of, removal_for


class BagOfWords(nn.Module):
    """logit_c = sum_t w_c[id_t]: a token's contribution is its own weight, so removal is exact."""

    def __init__(self, weights: torch.Tensor):
        super().__init__()
        self.embedding = nn.Embedding(weights.shape[1], weights.shape[0])
        with torch.no_grad():
            self.embedding.weight.copy_(weights.T)

    def forward(self, ids):
        return self.embedding(ids).sum(dim=1)


@pytest.fixture
def model():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(3, 12, generator=gen, dtype=torch.float64)
    w[:, 0] = 0.0  # [PAD] = id 0 contributes nothing
    return BagOfWords(w).double().eval(), w


def test_token_ids_are_their_own_kind_and_replaced_by_an_id():
    ids = torch.tensor([[5, 6, 7], [8, 9, 0]])
    assert kind_of(ids) == "tokens" and kind_of(ids.float()) == "tabular"
    op = removal_for(ids)
    assert isinstance(op, ReplaceTokens)
    removed = torch.tensor([[[True, False, True]], [[False, True, False]]])
    out = op.remove(ids, removed, 4)  # [MASK] = 4
    assert out.dtype == torch.long and out.tolist() == [[[4, 6, 4]], [[8, 4, 0]]]
    assert ids.tolist() == [[5, 6, 7], [8, 9, 0]]  # never modified
    with pytest.raises(ValueError, match="to be a token id"):
        op.remove(ids, removed, 0.5)
    with pytest.raises(ValueError, match=r"token ids, an integer tensor of shape \(N, T\)"):
        ReplaceTokens().remove(ids.float(), removed, 0)


def test_deletion_and_insertion_on_tokens_equal_the_hand_computed_curve(model):
    net, w = model
    ids = torch.tensor([[3, 7, 1, 9], [2, 2, 5, 0]])
    target = torch.tensor([0, 2])
    a = w[target][:, None, :].expand(2, 4, 12).gather(2, ids[:, :, None])[..., 0]  # exact map
    curve = deletion_curve(net, ids, a, target, output="logit")  # baseline id 0: [PAD]
    for i in range(2):
        order = torch.argsort(a[i], descending=True, stable=True)
        left = a[i].sum()
        expected = [float(left)]
        for j in order.tolist():
            left = left - a[i, j]
            expected.append(float(left))
        torch.testing.assert_close(curve.values[i], torch.tensor(expected, dtype=torch.float64))
    inserted = insertion_curve(net, ids, a, target, output="logit")
    torch.testing.assert_close(inserted.values[:, -1], curve.values[:, 0])
    torch.testing.assert_close(inserted.values[:, 0], torch.zeros(2, dtype=torch.float64))
    # faithfulness correlation of the exact map of a model additive in its tokens is 1
    torch.testing.assert_close(
        faithfulness_correlation(net, ids, a, target, subset_size=2, n_runs=10,
                                 generator=torch.Generator().manual_seed(1)),
        torch.ones(2, dtype=torch.float64))


def test_attributions_of_token_ids_score_through_the_metrics(model):
    """The attribution layer's token maps go straight into a removal metric."""
    net, _ = model
    ids = torch.tensor([[3, 7, 1, 9], [2, 2, 5, 4]])
    attrs = xprune.attribute(net, ids, 0, "integrated_gradients")
    assert attrs.values.shape == (2, 4)
    curve = deletion_curve(net, ids, attrs, 0, baseline=4)
    assert curve.values.shape == (2, 5)


def test_drop_tokens_through_the_attention_mask_or_by_deleting_them():
    """DropTokens works on the model's inputs as a structure: 'attention' zeroes the mask at the
    removed positions; 'delete' moves the kept tokens left (every (N, T) input follows) and
    masks the freed positions, as ferret's deletion; a replacing operator changes the ids only."""
    from xprune.attribution._inputs import structure_inputs
    from xprune.metrics._removal import DropTokens

    ids = torch.tensor([[2, 7, 8, 9, 3, 0], [2, 5, 6, 3, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]])
    types = torch.tensor([[0, 0, 0, 1, 1, 0], [0, 0, 1, 1, 0, 0]])
    structure = structure_inputs({"input_ids": ids, "attention_mask": mask,
                                  "token_type_ids": types})
    removed = torch.zeros(2, 2, 6, dtype=torch.bool)
    removed[0, 0, 2] = True            # sample 0, row 0: drop "8"
    removed[0, 1, [1, 3]] = True       # sample 0, row 1: drop "7" and "9"
    removed[1, 1, 1] = True            # sample 1, row 1: drop "5"; row 0 drops nothing
    out = DropTokens("attention").remove_inputs(structure, removed)
    assert out.kind == "mapping" and out.tensors[0].tolist() == ids.repeat_interleave(2, 0).tolist()
    assert out.tensors[1].tolist() == [[1, 1, 0, 1, 1, 0], [1, 0, 1, 0, 1, 0],
                                       [1, 1, 1, 1, 0, 0], [1, 0, 1, 1, 0, 0]]
    out = DropTokens("delete").remove_inputs(structure, removed)
    assert out.tensors[0].tolist() == [[2, 7, 9, 3, 0, 8], [2, 8, 3, 0, 7, 9],
                                       [2, 5, 6, 3, 0, 0], [2, 6, 3, 0, 0, 5]]
    assert out.tensors[1].tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0],
                                       [1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]]
    assert out.tensors[2].tolist() == [[0, 0, 1, 1, 0, 0], [0, 0, 1, 0, 0, 1],
                                       [0, 0, 1, 1, 0, 0], [0, 1, 1, 0, 0, 0]]
    out = ReplaceTokens().remove_inputs(structure, removed, 4)
    assert out.tensors[0][1].tolist() == [2, 4, 8, 4, 3, 0] and torch.equal(
        out.tensors[1], mask.repeat_interleave(2, 0))
    assert ids.tolist()[0] == [2, 7, 8, 9, 3, 0] and mask.tolist()[0] == [1, 1, 1, 1, 1, 0]
    with pytest.raises(ValueError, match=r"Expected an `attention_mask` among the model's inputs"):
        DropTokens().remove_inputs(structure_inputs(ids), removed)
    with pytest.raises(ValueError, match=r"changes the attention mask, not the ids alone"):
        DropTokens().remove(ids, removed)
