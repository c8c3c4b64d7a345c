"""Issue 19 must-show: on a tiny causal language model with outlier input features, Wanda's and
SparseGPT's loss after 50% pruning per layer (no fine-tuning) is below magnitude pruning's, as
Sun et al. 2023 (Wanda, table 3) and Frantar and Alistarh 2023 (SparseGPT, figure 1) report.

The model, the generated text and the outlier features are those of
``benchmarks/llm_pruning.py`` (which prints the README's table), trained for fewer steps here.
"""

import math
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import llm_pruning  # noqa: E402

import xprune  # noqa: E402


@pytest.fixture(scope="module")
def lm():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        source = llm_pruning.markov_source(0)
        train_ids = llm_pruning.generate_text(source, 2048, 1)
        model = llm_pruning.build_lm(0)
        llm_pruning.train_lm(model, train_ids, steps=150, seed=0)
        return model, source
    finally:
        torch.set_num_threads(threads)


def test_wanda_and_sparsegpt_lose_less_than_magnitude_at_half_sparsity(lm):
    import copy

    model, source = lm
    test_ids = llm_pruning.generate_text(source, 256, 3)
    calibration = torch.utils.data.DataLoader(
        llm_pruning.TokenizedText(llm_pruning.generate_text(source, 64, 2)), batch_size=16)
    dense = llm_pruning.lm_loss(model, test_ids)
    assert dense < math.log(16) - 1  # it learned the text: 1 nat below chance (16 tokens)
    outliers = copy.deepcopy(model)
    llm_pruning.add_outlier_features(outliers, 20.0)
    # the reparametrisation keeps the function: outlier inputs, the same loss
    torch.testing.assert_close(llm_pruning.lm_loss(outliers, test_ids), dense)
    losses = llm_pruning.prune_all(outliers, calibration, test_ids)
    for pattern in ("unstructured", "2:4"):
        magnitude = losses["l1_unstructured", pattern][0]
        assert losses["wanda", pattern][0] < magnitude, (pattern, losses)
        assert losses["sparsegpt", pattern][0] < magnitude, (pattern, losses)
        assert magnitude > dense
        for method in llm_pruning.METHODS:  # 50% of the selected (linear) weights, measured
            assert losses[method, pattern][1] == 0.5
    # Wanda's score |W_ij| ||X_j|| does not change when a column is scaled down and its input
    # up: its masks on the reparametrised model are those on the original one
    a = xprune.prune(model, 0.5, method="wanda", data=calibration)
    b = xprune.prune(outliers, 0.5, method="wanda", data=calibration)
    assert all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)
    # while magnitude pruning's do
    c = xprune.prune(model, 0.5, scope="layer")
    d = xprune.prune(outliers, 0.5, scope="layer")
    assert not all(torch.equal(c.masks[k], d.masks[k]) for k in c.masks)
