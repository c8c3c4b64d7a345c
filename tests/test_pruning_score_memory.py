"""Issue 23: data-driven structured criteria go over the reference data chunk by chunk.

With a byte budget that forces several chunks, every criterion's scores equal
those of one pass over all the data (to rounding), and no forward pass holds
more rows than the budget allows (a forward hook counts them).
"""

import pytest
import torch

from xprune.models import DigitsCNN
from xprune.pruning import PruningContext
from xprune.pruning.methods import structured

CRITERIA = ["taylor", "activation_taylor", "activation_gradient", "integrated_gradients", "lrp"]


def context(x, y, criterion):
    options = {"criterion": criterion, "norm": 1, "lrp_rule": "epsilon", "aggregate": "mean_abs",
               "normalise": None}
    return PruningContext(scope="global", generator=torch.Generator(), max_layer_sparsity=None,
                          data=(x, y), options=options)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = DigitsCNN().double().eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(40, 1, 8, 8, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (40,), generator=gen)
    return model, x, y


@pytest.mark.parametrize("criterion", CRITERIA)
def test_chunked_scores_equal_one_pass(setup, criterion, monkeypatch):
    model, x, y = setup
    whole = structured._channel_scores(model, context(x, y, criterion))
    per_row = structured._samples_per_pass(model, x[:1], 1, 1)  # 1 byte: one sample a pass
    assert per_row == 1
    rows = []
    hook = model.register_forward_hook(lambda m, i, o: rows.append(int(i[0].shape[0])))
    budget = 7 * (16 if criterion == "integrated_gradients" else 1)
    monkeypatch.setattr(structured, "_samples_per_pass", lambda *args, **kwargs: 7)
    try:
        chunked = structured._channel_scores(model, context(x, y, criterion))
    finally:
        hook.remove()
    assert max(rows) <= budget
    assert sum(r for r in rows if r > 2) >= x.shape[0]  # every sample went through
    for name, scores in whole.items():
        torch.testing.assert_close(chunked[name], scores, rtol=1e-9, atol=1e-12)
