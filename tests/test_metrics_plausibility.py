"""Plausibility against a ground-truth rationale: token F1, token IOU and AUPRC (DeYoung et al.
2020, ERASER), checked by hand, against a slow literal implementation per sample with
scikit-learn's precision-recall curve (as ERASER and ferret compute AUPRC), and for padding;
the mass on the rationale (relevance mass accuracy, Arras et al. 2022) by hand and against
Quantus; audio spectrogram maps with formant-band masks."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import auc, precision_recall_curve

from xprune.metrics import (
    UndefinedScoreWarning,
    rationale_auprc,
    rationale_mass,
    rationale_top_k,
    token_f1,
    token_iou,
)


def literal_scores(scores, truth, k, only_positive):
    """One sample, written out from the definitions: top-k by score (distinct scores), then
    precision, recall, F1, IOU against the rationale; AUPRC = auc(recall, precision)."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])[:k]
    chosen = {i for i in order if scores[i] > 0 or not only_positive}
    gold = {i for i, g in enumerate(truth) if g}
    tp = len(chosen & gold)
    precision = tp / len(chosen) if chosen else 0.0
    recall = tp / len(gold)
    f1 = 0.0 if precision == 0 or recall == 0 else 2 * precision * recall / (precision + recall)
    iou = tp / len(chosen | gold)
    p, r, _ = precision_recall_curve(np.array(truth, dtype=int), np.array(scores))
    return f1, iou, auc(r, p)


def test_hand_computed_cases():
    a = torch.tensor([[0.9, 0.1, 0.5, -0.2], [0.9, 0.1, 0.5, -0.2]])
    truth = torch.tensor([[True, False, True, False], [False, True, False, False]])
    torch.testing.assert_close(token_f1(a, truth, k=2), torch.tensor([1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(token_iou(a, truth, k=2), torch.tensor([1.0, 0.0], dtype=torch.float64))
    # second sample: thresholds 0.9, 0.5 give precision 0 at recall 0; 0.1 gives (1, 1/3);
    # the trapezoid from (0, 0) to (1, 1/3) is 1/6
    torch.testing.assert_close(rationale_auprc(a, truth),
                               torch.tensor([1.0, 1 / 6], dtype=torch.float64))
    # one rationale token of two selected: P = 1/2, R = 1, F1 = 2/3, IOU = 1/2
    one = torch.tensor([[True, False, False, False]])
    torch.testing.assert_close(token_f1(a[:1], one, k=2), torch.tensor([2 / 3], dtype=torch.float64))
    torch.testing.assert_close(token_iou(a[:1], one, k=2), torch.tensor([0.5], dtype=torch.float64))


def test_only_positive_scores_enter_the_hard_rationale():
    a = torch.tensor([[0.4, -0.1, -0.3, -0.2]])
    assert rationale_top_k(a, 3).tolist() == [[True, False, False, False]]
    assert rationale_top_k(a, 3, only_positive=False).tolist() == [[True, True, False, True]]
    truth = torch.tensor([[True, True, False, False]])
    # P = 1, R = 1/2 -> F1 = 2/3 with only positives; P = 2/3, R = 1 -> F1 = 0.8 without
    torch.testing.assert_close(token_f1(a, truth, k=3), torch.tensor([2 / 3], dtype=torch.float64))
    torch.testing.assert_close(token_f1(a, truth, k=3, only_positive=False),
                               torch.tensor([0.8], dtype=torch.float64))


@pytest.mark.parametrize("only_positive", [True, False])
def test_equal_to_the_literal_definitions(only_positive):
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(40, 17, generator=gen, dtype=torch.float64)
    truth = torch.rand(40, 17, generator=gen) < 0.3
    truth[:, 0] = True  # every sample has a rationale
    f1, iou, area = (token_f1(a, truth, k=4, only_positive=only_positive),
                     token_iou(a, truth, k=4, only_positive=only_positive),
                     rationale_auprc(a, truth))
    for i in range(40):
        ref = literal_scores(a[i].tolist(), truth[i].tolist(), 4, only_positive)
        assert f1[i].item() == pytest.approx(ref[0], abs=1e-12)
        assert iou[i].item() == pytest.approx(ref[1], abs=1e-12)
        assert area[i].item() == pytest.approx(ref[2], abs=1e-12)


def test_auprc_with_tied_scores_equals_scikit_learn():
    """Ties form one threshold, as in scikit-learn's curve (a zero-baseline map is 0 on many
    tokens)."""
    gen = torch.Generator().manual_seed(1)
    a = torch.randint(0, 4, (30, 12), generator=gen).double()
    truth = torch.rand(30, 12, generator=gen) < 0.4
    truth[:, 3] = True
    ours = rationale_auprc(a, truth)
    for i in range(30):
        p, r, _ = precision_recall_curve(truth[i].int().numpy(), a[i].numpy())
        assert ours[i].item() == pytest.approx(auc(r, p), abs=1e-12)


def test_padding_never_counts():
    """Scores on a sentence padded with high-scoring PAD positions equal the scores of the
    unpadded sentence (../shared/cases/012-padding-counted.md, for plausibility)."""
    gen = torch.Generator().manual_seed(2)
    a = torch.randn(8, 10, generator=gen)
    truth = torch.rand(8, 10, generator=gen) < 0.3
    truth[:, 1] = True
    padded = torch.cat([a, torch.full((8, 6), 5.0)], dim=1)
    padded_truth = torch.cat([truth, torch.ones(8, 6, dtype=torch.bool)], dim=1)
    kept = torch.cat([torch.ones(8, 10, dtype=torch.bool), torch.zeros(8, 6, dtype=torch.bool)],
                     dim=1)
    for fn in (token_f1, token_iou):
        torch.testing.assert_close(fn(padded, padded_truth, k=3, feature_mask=kept),
                                   fn(a, truth, k=3))
    torch.testing.assert_close(rationale_auprc(padded, padded_truth, feature_mask=kept),
                               rationale_auprc(a, truth))


def test_image_maps_use_pixels_and_accept_a_channel_mask():
    gen = torch.Generator().manual_seed(3)
    a = torch.rand(4, 3, 5, 5, generator=gen)
    truth = torch.rand(4, 5, 5, generator=gen) < 0.3
    truth[:, 0, 0] = True
    flat = a.sum(dim=1).reshape(4, 25)
    torch.testing.assert_close(rationale_auprc(a, truth), rationale_auprc(flat, truth.reshape(4, 25)))
    per_channel = truth[:, None].expand(4, 3, 5, 5).clone()
    per_channel[:, 1:] = False  # any channel marks the pixel
    torch.testing.assert_close(token_f1(a, per_channel, k=5), token_f1(a, truth, k=5))


def test_empty_rationale_is_undefined_with_a_warning():
    a = torch.tensor([[0.3, 0.2], [0.1, 0.4]])
    truth = torch.tensor([[True, False], [False, False]])
    for fn in (token_f1, token_iou, rationale_auprc):
        with pytest.warns(UndefinedScoreWarning, match="empty rationale"):
            out = fn(a, truth) if fn is rationale_auprc else fn(a, truth, k=1)
        assert out[0].item() == 1.0 and torch.isnan(out[1])


def test_bad_masks_and_k_are_named():
    a = torch.rand(2, 6)
    with pytest.raises(ValueError, match=r"Expected `rationale` of shape \(2, 6\) \(one entry "
                                         r"per feature of the maps\), got \(2, 5\)"):
        token_f1(a, torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="Expected `rationale` to be a boolean mask"):
        rationale_auprc(a, torch.rand(2, 6))
    with pytest.raises(TypeError, match="Expected `feature_mask` to be a boolean torch.Tensor"):
        token_iou(a, torch.ones(2, 6, dtype=torch.bool), feature_mask=[1, 0])
    with pytest.raises(ValueError, match="`k`"):
        token_f1(a, torch.ones(2, 6, dtype=torch.bool), k=7)
    images = torch.rand(2, 3, 4, 4)
    with pytest.raises(ValueError, match=r"of shape \(2, 4, 4\) or \(2, 3, 4, 4\)"):
        token_f1(images, torch.ones(2, 16, dtype=torch.bool))
    # 0/1 integers are accepted as a mask
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(token_f1(a, torch.ones(2, 6, dtype=torch.long), k=2),
                                   token_f1(a, torch.ones(2, 6, dtype=torch.bool), k=2))


def test_equal_to_ferret_on_the_same_sentences_and_scores(ferret_reference):
    """ferret 0.4.2's AUPRC, token F1 and token IOU on 48 generated sentences (its own venv,
    benchmarks/ferret/reference.py --write-fixture): [CLS] and [SEP] left out as ferret's
    remove_first_last does, padding masked. ferret's only_pos=False top-k crashes in 0.4.2
    (it compares a numpy array with []), which the fixture records."""
    import json
    from pathlib import Path

    fixture = json.loads((Path(__file__).parent / "fixtures" / "ferret_plausibility.json")
                         .read_text())
    scores, truth, kept = ferret_reference.plausibility_batch(fixture["inputs"])
    assert len(fixture["ferret"]) == 6 and len(fixture["ferret_errors"]) == 4
    for key, theirs in fixture["ferret"].items():
        name, only_pos, k = key.split("|")
        only_pos, k = only_pos.endswith("True"), int(k.split("=")[1])
        if name == "auprc":
            ours = rationale_auprc(scores, truth, only_positive=only_pos, feature_mask=kept)
        else:
            fn = token_f1 if name == "token_f1" else token_iou
            ours = fn(scores, truth, k=k, only_positive=only_pos, feature_mask=kept)
        torch.testing.assert_close(ours, torch.tensor(theirs, dtype=torch.float64), rtol=0,
                                   atol=1e-9, msg=key)


def formant_masks(n, gen):
    """(n, 40, 63) masks shaped like the vowels' ground truth: two bands of 2 mel bins (F1
    and F2, at a per-sample height) while the vowel sounds (a per-sample span of frames)."""
    mask = torch.zeros(n, 40, 63, dtype=torch.bool)
    for i in range(n):
        f1 = int(torch.randint(4, 14, (1,), generator=gen))
        f2 = int(torch.randint(20, 34, (1,), generator=gen))
        start = int(torch.randint(0, 30, (1,), generator=gen))
        mask[i, f1:f1 + 2, start:start + 25] = True
        mask[i, f2:f2 + 2, start:start + 25] = True
    return mask


def test_audio_maps_with_formant_masks_score_as_their_bins():
    # spectrogram maps (N, 1, F, T) against (N, F, T) masks: every plausibility score equals
    # the literal computation over the F * T bins, and the same with a (N, 1, F, T) mask
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(3, 1, 40, 63, generator=gen, dtype=torch.float64)
    truth = formant_masks(3, gen)
    a[:, 0] += 2.0 * truth  # maps that lean towards the bands, not perfectly
    flat, flat_truth = a.reshape(3, -1), truth.reshape(3, -1)
    for i in range(3):
        f1, iou, auprc = literal_scores(flat[i].tolist(), flat_truth[i].tolist(), 252, True)
        torch.testing.assert_close(token_f1(a, truth, k=252)[i].item(), f1)
        torch.testing.assert_close(token_iou(a, truth, k=252)[i].item(), iou)
        torch.testing.assert_close(rationale_auprc(a, truth)[i].item(), auprc)
        mass = flat[i].abs()
        torch.testing.assert_close(rationale_mass(a, truth)[i].item(),
                                   (mass[flat_truth[i]].sum() / mass.sum()).item())
    for fn in (rationale_auprc, rationale_mass):
        torch.testing.assert_close(fn(a, truth[:, None]), fn(a, truth))
    torch.testing.assert_close(token_f1(a, truth[:, None], k=252), token_f1(a, truth, k=252))


def test_rationale_mass_closed_forms():
    truth = torch.tensor([[True, True, False, False, False]])
    torch.testing.assert_close(rationale_mass(truth.double(), truth),
                               torch.ones(1, dtype=torch.float64))
    torch.testing.assert_close(rationale_mass((~truth).double(), truth),
                               torch.zeros(1, dtype=torch.float64))
    torch.testing.assert_close(rationale_mass(torch.full((1, 5), -3.0), truth),
                               torch.tensor([0.4], dtype=torch.float64))   # |R| / d
    a = torch.tensor([[2.0, -1.0, 0.5, -4.0, 0.5]])
    torch.testing.assert_close(rationale_mass(a, truth), torch.tensor([3.0 / 8.0],
                                                                      dtype=torch.float64))
    torch.testing.assert_close(rationale_mass(a, truth, only_positive=True),
                               torch.tensor([2.0 / 3.0], dtype=torch.float64))
    torch.testing.assert_close(rationale_mass(7.0 * a, truth), rationale_mass(a, truth))
    kept = torch.tensor([[True, True, True, False, True]])   # the -4 is padding
    torch.testing.assert_close(rationale_mass(a, truth, feature_mask=kept),
                               torch.tensor([3.0 / 4.0], dtype=torch.float64))


def test_rationale_mass_equals_quantus_relevance_mass_accuracy():
    import quantus

    gen = torch.Generator().manual_seed(6)
    a = torch.randn(4, 1, 40, 63, generator=gen, dtype=torch.float64)
    truth = formant_masks(4, gen)
    metric = quantus.RelevanceMassAccuracy(abs=True, normalise=False, disable_warnings=True)
    expected = metric(model=None, x_batch=np.zeros((4, 1, 40, 63)), y_batch=np.zeros(4, int),
                      a_batch=a.numpy().copy(), s_batch=truth[:, None].numpy().astype(float))
    torch.testing.assert_close(rationale_mass(a, truth),
                               torch.tensor(expected, dtype=torch.float64))


def test_rationale_mass_is_undefined_without_mass_or_rationale():
    a = torch.tensor([[0.0, 0.0], [0.3, 0.1], [0.2, 0.2]])
    truth = torch.tensor([[True, False], [False, False], [False, True]])
    with pytest.warns(UndefinedScoreWarning) as record:
        out = rationale_mass(a, truth)
    assert torch.isnan(out[:2]).all() and out[2].item() == 0.5
    reasons = " ".join(str(w.message) for w in record)
    assert "no mass" in reasons and "empty rationale" in reasons
    with pytest.warns(UndefinedScoreWarning) as record:  # an all-zero map, rationales given
        rationale_mass(a, torch.tensor([[True, False], [True, False], [False, True]]))
    assert [str(w.message) for w in record if "empty rationale" in str(w.message)] == []
