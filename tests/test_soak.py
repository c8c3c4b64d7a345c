"""A sweep of 50 cells in one process leaves no hooks, reparametrisations, graphs or tensors behind."""

import gc

import pytest
import torch
from conftest import all_hooks

import xprune
from xprune import metrics as M
from xprune.models import DigitsCNN

METHODS = {"saliency": None, "integrated_gradients": {"n_steps": 4, "delta_tolerance": 1e9},
           "lrp": None, "guided_backprop": None, "smoothgrad": {"nt_samples": 2}}


def _live_tensors() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if torch.is_tensor(obj))


def _cell(model, x, y, i):
    pair = xprune.prune(model, (0.5, 0.8, 0.9)[i % 3],
                        method=("l1_unstructured", "random_unstructured")[i % 2], seed=i)
    pair = xprune.fine_tune(pair, x, y, epochs=1, seed=i)
    method = list(METHODS)[i % len(METHODS)]
    dense_a, sparse_a = xprune.attribute_pair(pair.dense, pair.sparse, x, method=method,
                                              params=METHODS[method])
    scores = [
        M.gini_index(sparse_a),
        M.deletion_auc(pair.sparse, x, sparse_a, sparse_a.targets, steps=8),
        M.spearman(dense_a, sparse_a),
        M.top_k_intersection(dense_a, sparse_a),
        M.faithfulness_correlation(pair.sparse, x, sparse_a, sparse_a.targets, n_runs=4),
        M.max_sensitivity(xprune.explainer(pair.sparse, method, params=METHODS[method]), x,
                          sparse_a.targets, n_samples=2),
    ]
    for tensor in [dense_a.values, sparse_a.values, *scores]:
        assert tensor.grad_fn is None and not tensor.requires_grad
    for m in (pair.dense, pair.sparse):
        assert all_hooks(m) == 0
        assert not any(k.endswith(("_orig", "_mask")) for k in m.state_dict())
    return [float(s.nanmean()) for s in scores]


@pytest.mark.filterwarnings("ignore:.*all-zero map:RuntimeWarning")
def test_fifty_cells_leave_nothing_behind():
    torch.manual_seed(0)
    model = DigitsCNN()
    x = torch.rand(16, 1, 8, 8)
    y = torch.randint(0, 10, (16,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _cell(model, x, y, 0)
    after_first = _live_tensors()
    for i in range(1, 50):
        _cell(model, x, y, i)
    after_last = _live_tensors()
    assert after_last == after_first
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all_hooks(model) == 0 and x.grad is None and not x.requires_grad
