"""The random-ranking control of removal scores."""

import pytest
import torch
from torch import nn

from xprune.metrics import deletion_auc, insertion_auc
from xprune.metrics.controls import random_map_like, versus_random


class Shifted(nn.Module):
    """``model`` with ``shift`` added to every logit of class 0: a confidence change only."""

    def __init__(self, model, shift):
        super().__init__()
        self.model, self.shift = model, shift

    def forward(self, x):
        out = self.model(x).clone()
        out[:, 0] = out[:, 0] + self.shift
        return out


def _linear_case(linear_model, n=12):
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(n, 1, 8, 8, generator=gen, dtype=torch.float64)
    target = torch.zeros(n, dtype=torch.long)
    exact = linear_model.fc.weight.detach()[target].reshape(n, 1, 8, 8) * x
    return x, target, exact


def test_a_confidence_shift_cancels(linear_model):
    """Shifting the target logit moves the deletion AUC (in logits) by the shift for any map;
    the score against a random ranking does not move at all."""
    x, t, exact = _linear_case(linear_model)
    shifted = Shifted(linear_model, 5.0).eval()
    raw = deletion_auc(linear_model, x, exact, t, output="logit")
    torch.testing.assert_close(deletion_auc(shifted, x, exact, t, output="logit"), raw + 5.0)
    plain = versus_random("deletion_auc", linear_model, x, exact, t, output="logit",
                          generator=torch.Generator().manual_seed(1))
    moved = versus_random("deletion_auc", shifted, x, exact, t, output="logit",
                          generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(moved, plain)


def test_exact_map_beats_chance_and_its_negation_loses(linear_model):
    x, t, exact = _linear_case(linear_model)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    best = versus_random(deletion_auc, linear_model, x, exact, t, output="logit", generator=gen())
    worst = versus_random(deletion_auc, linear_model, x, -exact, t, output="logit",
                          generator=gen())
    assert bool((best < 0).all()) and bool((worst > 0).all())  # lower deletion AUC is better
    ins = versus_random("insertion_auc", linear_model, x, exact, t, output="logit",
                        generator=gen())
    assert bool((ins > 0).all())  # higher insertion AUC is better
    # the random map against itself scores exactly 0
    rnd = random_map_like(exact, generator=gen())
    zero = versus_random(insertion_auc, linear_model, x, rnd, t, output="logit", generator=gen())
    torch.testing.assert_close(zero, torch.zeros(12, dtype=torch.float64))


def test_random_map_keeps_pixels_together_and_is_per_sample():
    a = torch.zeros(4, 3, 5, 7)
    m = random_map_like(a, generator=torch.Generator().manual_seed(2))
    assert m.shape == a.shape and m.dtype == a.dtype
    assert torch.equal(m[:, 0], m[:, 1]) and torch.equal(m[:, 0], m[:, 2])
    alone = random_map_like(a[:1], generator=torch.Generator().manual_seed(2))
    assert torch.equal(alone, m[:1])
    # every sample gets its own ranking
    assert not torch.equal(m[0], m[1])
    tab = random_map_like(torch.zeros(3, 5), generator=torch.Generator().manual_seed(2))
    assert tab.shape == (3, 5) and len({tuple(r.argsort().tolist()) for r in tab}) == 3


def test_versus_random_errors(linear_model):
    x, t, exact = _linear_case(linear_model, 2)
    with pytest.raises(ValueError, match="Expected a model-based metric.*'spearman'"):
        versus_random("spearman", linear_model, x, exact, t)
    with pytest.raises(ValueError, match="Did you mean 'deletion_auc'"):
        versus_random("deletion_au", linear_model, x, exact, t)
