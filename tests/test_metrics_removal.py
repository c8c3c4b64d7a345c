"""The removal operators of xprune.metrics._removal and _imputation.

What each removes (hand-built inputs), that inputs and baselines are never
modified, baselines per sample and per row, the errors (a mask of the wrong
shape names both shapes), the choice by kind, and that a new kind is one
class that the metrics' driver accepts.
"""

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import nn

from xprune.metrics._imputation import NoisyLinearImputation
from xprune.metrics._removal import (
    Removal,
    ReplaceColumns,
    ReplacePixels,
    as_baseline,
    perturbed_scores,
    prefix_masks,
    removal_for,
)


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def images():
    """Two 2-channel 2 x 2 images, every element distinct: (2, 2, 2, 2)."""
    return torch.arange(1.0, 17.0).reshape(2, 2, 2, 2)


def test_replace_pixels_removes_every_channel_of_a_pixel():
    x = images()
    removed = torch.tensor([[True, False, False, True], [False, False, False, False]])
    out = ReplacePixels().remove(x, removed, 0.5)
    expected = x.clone()
    expected[0, :, 0, 0] = 0.5          # pixel 0 = (row 0, col 0), both channels
    expected[0, :, 1, 1] = 0.5          # pixel 3 = (row 1, col 1)
    assert torch.equal(out, expected)


def test_replace_columns_removes_columns():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    removed = torch.tensor([[False, True, False], [True, False, True]])
    out = ReplaceColumns().remove(x, removed, torch.tensor([-1.0, -2.0, -3.0]))
    assert torch.equal(out, torch.tensor([[1.0, -2.0, 3.0], [-1.0, 5.0, -3.0]]))


def test_baselines_per_sample_with_rows_per_sample():
    """A (N, *F) baseline: each sample's removed features take its own values, in every row."""
    x = torch.zeros(2, 3)
    baseline = torch.tensor([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]])
    removed = torch.tensor([[[True, False, False], [True, True, True]],
                            [[False, False, True], [False, False, False]]])   # (2, R=2, 3)
    out = ReplaceColumns().remove(x, removed, baseline)
    expected = torch.tensor([[[1.0, 0.0, 0.0], [1.0, 2.0, 3.0]],
                             [[0.0, 0.0, 30.0], [0.0, 0.0, 0.0]]])
    assert torch.equal(out, expected)


def test_per_row_draws_broadcast_with_the_mask_rows():
    """Masks (N, K, 1, d) and draws (N, 1, S, *F) give K x S rows, mask-major."""
    x = images()
    removed = torch.eye(4, dtype=torch.bool)[None].expand(2, 4, 4)[:, :, None]  # (2, 4, 1, 4)
    draws = -torch.arange(1.0, 4.0).reshape(1, 1, 3, 1, 1, 1).expand(2, 1, 3, 2, 2, 2)
    out = ReplacePixels().remove(x, removed, draws)
    assert out.shape == (2, 4, 3, 2, 2, 2)
    for k in range(4):
        for s in range(3):
            expected = x.clone()
            expected[:, :, k // 2, k % 2] = -(s + 1.0)
            assert torch.equal(out[:, k, s], expected)


def test_shared_baseline_of_the_features_shape():
    x = images()
    baseline = -x[1]                                               # (C, H, W)
    out = ReplacePixels().remove(x, torch.ones(2, 4, dtype=torch.bool), baseline)
    assert torch.equal(out, baseline.expand(2, -1, -1, -1))


@pytest.mark.parametrize("removal", [ReplacePixels(), NoisyLinearImputation(noise_std=0.1)])
def test_never_mutates_the_inputs_or_the_baseline(removal):
    x = torch.rand(3, 2, 4, 4, generator=seeded(1), requires_grad=True)
    before = x.detach().clone()
    removed = torch.rand(3, 2, 16, generator=seeded(2)) < 0.5
    removed[..., 0] = False                                        # a kept pixel per row
    baseline = None if isinstance(removal, NoisyLinearImputation) else torch.rand(3, 2, 4, 4)
    kept_baseline = None if baseline is None else baseline.clone()
    out = removal.remove(x, removed, baseline)
    prefixes = removal.remove_prefixes(x, torch.arange(16).expand(3, 16), [0, 5, 15], baseline)
    assert torch.equal(x.detach(), before) and x.grad is None
    assert baseline is None or torch.equal(baseline, kept_baseline)
    assert out.shape == (3, 2, 2, 4, 4) and prefixes.shape == (3, 3, 2, 4, 4)
    assert out.data_ptr() != x.data_ptr()


def test_tabular_never_mutated():
    x = torch.rand(4, 5, generator=seeded(3))
    before = x.clone()
    ReplaceColumns().remove(x, torch.ones(4, 5, dtype=torch.bool), 0.0)
    assert torch.equal(x, before)


def test_default_prefixes_equal_the_nested_masks():
    x = torch.rand(3, 1, 3, 3, generator=seeded(4))
    order = torch.rand(3, 9, generator=seeded(5)).argsort(dim=1)
    counts = [0, 2, 9, 4]
    masks = prefix_masks(order, counts)
    assert masks.sum(dim=2).tolist() == [counts] * 3
    assert torch.equal(masks[0, 1], torch.isin(torch.arange(9), order[0, :2]))
    assert torch.equal(ReplacePixels().remove_prefixes(x, order, counts, 0.0),
                       ReplacePixels().remove(x, masks, 0.0))


def test_imputation_prefixes_equal_its_masks_to_rounding():
    x = torch.rand(4, 3, 6, 6, generator=seeded(6), dtype=torch.float64)
    order = torch.rand(4, 36, generator=seeded(7)).argsort(dim=1)
    counts = [3, 0, 20, 35]
    impute = NoisyLinearImputation(noise_std=0.0)
    torch.testing.assert_close(impute.remove_prefixes(x, order, counts),
                               impute.remove(x, prefix_masks(order, counts)),
                               atol=1e-12, rtol=0)


def test_imputation_of_one_pixel_is_the_weighted_mean_of_its_neighbours():
    """A 3 x 3 image without its centre: 1/6 of each direct, 1/12 of each diagonal neighbour."""
    x = torch.arange(9.0, dtype=torch.float64).reshape(1, 1, 3, 3) ** 2
    removed = torch.zeros(1, 9, dtype=torch.bool)
    removed[0, 4] = True
    out = NoisyLinearImputation(noise_std=0.0).remove(x, removed)
    v = x.flatten()
    expected = (v[1] + v[3] + v[5] + v[7]) / 6 + (v[0] + v[2] + v[6] + v[8]) / 12
    assert out[0, 0, 1, 1].item() == pytest.approx(expected.item(), abs=1e-12)
    assert torch.equal(out.flatten()[~removed[0]], v[~removed[0]])


def test_imputation_noise_comes_from_the_operators_generator():
    x = torch.rand(2, 1, 4, 4, generator=seeded(8), dtype=torch.float64)
    removed = torch.zeros(2, 16, dtype=torch.bool)
    removed[:, 5] = True
    a = NoisyLinearImputation(noise_std=0.5, generator=seeded(9))
    first, second = a.remove(x, removed), a.remove(x, removed)
    assert not torch.equal(first, second)                            # the generator moved on
    again = NoisyLinearImputation(noise_std=0.5, generator=seeded(9)).remove(x, removed)
    assert torch.equal(first, again)
    default = NoisyLinearImputation(noise_std=0.5).remove(x, removed)    # seed 0
    assert torch.equal(default,
                       NoisyLinearImputation(noise_std=0.5, generator=seeded(0)).remove(x, removed))


def test_a_mask_of_the_wrong_shape_names_both_shapes():
    x = images()
    with pytest.raises(ValueError, match=r"shape \(N, \.\.\., d\) = \(2, \.\.\., 4\) over the "
                                         r"features of inputs of shape \(2, 2, 2, 2\), got "
                                         r"shape \(2, 3\)"):
        ReplacePixels().remove(x, torch.ones(2, 3, dtype=torch.bool), 0.0)
    with pytest.raises(ValueError, match=r"\(3, \.\.\., 4\).*got shape \(3, 4\)"):
        ReplaceColumns().remove(torch.zeros(3, 4), torch.ones(3, 4), 0.0)       # float mask
    with pytest.raises(ValueError, match=r"\(2, \.\.\., 4\).*got shape \(1, 4\)"):
        NoisyLinearImputation().remove(x, torch.ones(1, 4, dtype=torch.bool))


def test_errors_on_baselines_and_kinds():
    x = images()
    mask = torch.zeros(2, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"broadcast with the removed inputs' shape "
                                         r"\(2, 2, 2, 2\).*got shape \(3,\)"):
        ReplacePixels().remove(x, mask, torch.zeros(3))
    with pytest.raises(ValueError, match="Expected a `baseline` for ReplacePixels"):
        ReplacePixels().remove(x, mask)
    with pytest.raises(ValueError, match="Expected no `baseline` for NoisyLinearImputation"):
        NoisyLinearImputation().remove(x, mask, 0.0)
    with pytest.raises(ValueError, match="at least one kept pixel"):
        NoisyLinearImputation().remove(x, torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"Expected every count in \[0, 4\)"):
        NoisyLinearImputation().remove_prefixes(x, torch.arange(4).expand(2, 4), [1, 4])
    with pytest.raises(ValueError, match="Expected `noise_std` >= 0"):
        NoisyLinearImputation(noise_std=-1.0)
    with pytest.raises(ValueError, match=r"tabular rows of shape \(N, F\) for removal, got "
                                         r"shape \(2, 2, 2, 2\)"):
        ReplaceColumns().remove(x, mask, 0.0)


def test_removal_for_chooses_by_kind_and_checks_a_given_operator():
    assert removal_for(torch.zeros(2, 5)) == ReplaceColumns()
    assert removal_for(torch.zeros(2, 3, 4, 4)) == ReplacePixels()
    assert removal_for(torch.zeros(2, 3, 16)) == ReplacePixels()     # 1-D signals: time steps
    impute = NoisyLinearImputation()
    assert removal_for(torch.zeros(2, 1, 4, 4), impute) is impute
    with pytest.raises(ValueError, match=r"images of shape \(N, C, H, W\) for ROAD, got shape "
                                         r"\(2, 5\).*no neighbourhood"):
        removal_for(torch.zeros(2, 5), impute, metric="ROAD")
    assert removal_for(torch.zeros(2, 3, 4, 4), kind="image") == ReplacePixels()
    with pytest.raises(ValueError, match=r"tabular rows of shape \(N, F\) for AOPC"):
        removal_for(torch.zeros(2, 3, 4, 4), kind="tabular", metric="AOPC")
    with pytest.raises(ValueError, match=r"Expected `kind` in \['audio', 'image', 'tabular', "
                                         r"'tokens'\], got 'images'. Did you mean 'image'\?"):
        removal_for(torch.zeros(2, 5), kind="images")


def test_operators_are_frozen_configuration():
    with pytest.raises(dataclasses.FrozenInstanceError):
        NoisyLinearImputation().noise_std = 1.0


@dataclass(frozen=True)
class Shift(Removal):
    """A kind made up for this test: removed columns are shifted by `offset`."""

    kind: ClassVar[str] = "shifted"
    offset: float = 100.0

    def check_inputs(self, inputs, metric):
        return inputs

    def remove(self, inputs, removed, baseline=None):
        return inputs[:, None] + self.offset * removed


def test_a_new_kind_is_one_class_that_the_metric_driver_accepts():
    """perturbed_scores scores whatever the operator returns: f(x) = sum(x) on shifted rows."""
    model = nn.Linear(3, 1, bias=False).double()
    with torch.no_grad():
        model.weight.fill_(1.0)
    x = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    steps = torch.tensor([[False, False, False], [True, False, False], [True, True, True]])
    scores = perturbed_scores(model, x, torch.zeros(2, dtype=torch.long),
                              lambda sl: steps.expand(sl.stop - sl.start, 3, 3), 3,
                              as_baseline(0.0, x), "logit", 4, removal=Shift())
    assert scores.tolist() == [[6.0, 106.0, 306.0], [0.0, 100.0, 300.0]]
