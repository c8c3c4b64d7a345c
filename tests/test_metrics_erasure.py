"""Comprehensiveness, sufficiency, normalised AOPC and tau-LOO (xprune.metrics.erasure), against
a slow, literal implementation of the papers' equations (one forward per sample, bin and
ordering), closed forms on a model additive in its tokens, the token mask, and ferret 0.4.2."""

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from xprune.metrics import (
    METRICS,
    comprehensiveness,
    erasure_curves,
    normalised_comprehensiveness,
    normalised_sufficiency,
    sufficiency,
    tau_loo,
)
from xprune.metrics._removal import DropTokens, ReplaceTokens
from xprune.textdata import make_text_classification

transformers = pytest.importorskip("transformers")
FIXTURES = Path(__file__).parent / "fixtures"
MASK_ID = 4
FRACTIONS = (0.1, 0.25, 0.5)


def tiny_bert(seed=0, width=8):
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=80, hidden_size=width, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=16,
                                     max_position_embeddings=40, num_labels=2, pad_token_id=0)
    return transformers.BertForSequenceClassification(config).double().eval()


@pytest.fixture(scope="module")
def bert():
    return tiny_bert()


@pytest.fixture(scope="module")
def sentences():
    data = make_text_classification(6, max_length=24, seed=5)
    gen = torch.Generator().manual_seed(1)
    scores = torch.randn(6, 24, generator=gen, dtype=torch.float64)
    counted = data.attention_mask.bool().clone()
    counted[:, 0] = False                                   # [CLS]
    counted[torch.arange(6), data.attention_mask.sum(1) - 1] = False   # [SEP]
    return data.inputs(), scores, counted


# --- the literal implementation ------------------------------------------------------------

def literal_score(model, ids, mask, target, removed, removal):
    """p(target) of one sentence (1-D ids and mask) with the positions in `removed` taken out."""
    ids, mask = ids.clone(), mask.clone()
    if removal == "replace":
        ids[list(removed)] = MASK_ID
    elif removal == "attention":
        mask[list(removed)] = 0
    else:  # delete: the sentence without those tokens, no padding at all
        keep = [j for j in range(len(ids)) if mask[j] and j not in removed]
        ids, mask = ids[keep], torch.ones(len(keep), dtype=mask.dtype)
    with torch.no_grad():
        logits = model(input_ids=ids[None], attention_mask=mask[None]).logits
    return float(logits.softmax(-1)[0, target])


def literal_aopc(model, ids, mask, scores, counted, target, fractions, removal, which):
    """DeYoung et al. 2020: 1/|B| sum_b p(x) - p(x \\ r_b) (or p(r_b)), r_b the top
    floor(b L) counted tokens, one forward per bin."""
    positions = [j for j in range(len(ids)) if counted[j]]
    ranked = sorted(positions, key=lambda j: (-float(scores[j]), j))
    full = literal_score(model, ids, mask, target, set(), removal)
    drops = []
    for b in fractions:
        top = set(ranked[:math.floor(b * len(positions) + 1e-9)])
        removed = top if which == "comprehensiveness" else set(positions) - top
        drops.append(full - literal_score(model, ids, mask, target, removed, removal))
    return sum(drops) / len(drops)


@pytest.mark.parametrize("removal", ["replace", "attention", "delete"])
def test_comprehensiveness_and_sufficiency_equal_the_literal_equations(bert, sentences, removal):
    inputs, scores, counted = sentences
    target = torch.tensor([0, 1, 1, 0, 1, 0])
    got_c = comprehensiveness(bert, inputs, scores, target, fractions=FRACTIONS,
                              removal=removal, baseline=MASK_ID, feature_mask=counted)
    got_s = sufficiency(bert, inputs, scores, target, fractions=FRACTIONS, removal=removal,
                        baseline=MASK_ID, feature_mask=counted)
    for i in range(6):
        args = (bert, inputs["input_ids"][i], inputs["attention_mask"][i], scores[i],
                counted[i], int(target[i]), FRACTIONS, removal)
        torch.testing.assert_close(float(got_c[i]), literal_aopc(*args, "comprehensiveness"),
                                   rtol=0, atol=1e-12)
        torch.testing.assert_close(float(got_s[i]), literal_aopc(*args, "sufficiency"),
                                   rtol=0, atol=1e-12)


def test_tau_loo_equals_kendall_tau_of_the_literal_leave_one_out_drop(bert, sentences):
    from scipy.stats import kendalltau

    inputs, scores, counted = sentences
    got = tau_loo(bert, inputs, scores, 1, removal="delete", feature_mask=counted)
    for i in range(6):
        ids, mask = inputs["input_ids"][i], inputs["attention_mask"][i]
        positions = counted[i].nonzero()[:, 0].tolist()
        full = literal_score(bert, ids, mask, 1, set(), "delete")
        drop = [full - literal_score(bert, ids, mask, 1, {j}, "delete") for j in positions]
        expected = kendalltau(scores[i, positions].numpy(), drop).statistic
        torch.testing.assert_close(float(got[i]), float(expected), rtol=0, atol=1e-12)


def _passes(model, fn, monkeypatch, tokens):
    """``fn()`` with a CPU pass of ``tokens`` tokens, and the (rows, width) of every pass."""
    from xprune.metrics import _base

    monkeypatch.setattr(_base, "CPU_FORWARD_TOKENS", tokens)
    seen = []
    handle = model.bert.embeddings.register_forward_hook(
        lambda m, i, o: seen.append(tuple(o.shape[:2])))
    try:
        return fn(), seen
    finally:
        handle.remove()


def test_tau_loo_rows_go_in_token_sized_passes_with_equal_scores(bert, sentences, monkeypatch):
    """The N + N x L leave-one-out rows go through the model in passes of CPU_FORWARD_TOKENS
    tokens (memory bounded by the pass, not by L: the benchmark's 516 rows of 128 tokens took
    1 GiB in one pass), and score as in one pass; with an attention mask, each length-sorted
    group is cut to its longest row and holds the rows that fit at that width."""
    ids = torch.randint(5, 80, (3, 20), generator=torch.Generator().manual_seed(3))
    scores = torch.randn(3, 20, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    run = lambda: tau_loo(bert, ids, scores, 1, baseline=MASK_ID)  # noqa: E731
    one, whole = _passes(bert, run, monkeypatch, 10 ** 6)
    chunked, passes = _passes(bert, run, monkeypatch, 200)
    # one row counts the model's outputs, then 3 unperturbed + 3 x 20 left out
    assert whole == [(1, 20), (63, 20)]
    assert passes == [(1, 20)] + [(10, 20)] * 6 + [(3, 20)]   # 200 tokens: 10 rows of 20
    torch.testing.assert_close(chunked, one, rtol=0, atol=1e-12)

    inputs, scores, counted = sentences
    run = lambda: tau_loo(bert, inputs, scores, 1, removal="delete",  # noqa: E731
                          feature_mask=counted)
    one, groups = _passes(bert, run, monkeypatch, 10 ** 6)
    chunked, passes = _passes(bert, run, monkeypatch, 100)
    rows = 6 + int(counted.sum())
    assert groups[0][0] == passes[0][0] == 1          # the row that counts the outputs
    groups, passes = groups[1:], passes[1:]
    assert sum(r for r, _ in groups) == sum(r for r, _ in passes) == rows
    assert len(groups) == math.ceil(rows / 256)
    assert len(passes) > 1 and all(r * w <= 100 for r, w in passes)
    torch.testing.assert_close(chunked, one, rtol=0, atol=1e-12)


def test_normalised_aopc_equals_min_max_over_every_ordering(bert):
    """Edin et al.: (AOPC - min over orderings) / (max - min); here by enumerating all 5! orders
    of a 5-word sentence, one forward per prefix, against the exact and the beam bounds."""
    ids = torch.tensor([[2, 10, 20, 30, 40, 50, 3, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0]])
    counted = torch.tensor([[False, True, True, True, True, True, False, False]])
    scores = torch.tensor([[0.0, 0.3, -1.0, 2.0, 0.1, 0.7, 0.0, 0.0]], dtype=torch.float64)
    fractions = (0.2, 0.4, 0.6)
    inputs = {"input_ids": ids, "attention_mask": mask}
    full = literal_score(bert, ids[0], mask[0], 1, set(), "delete")
    for which, fn in (("comprehensiveness", normalised_comprehensiveness),
                      ("sufficiency", normalised_sufficiency)):
        cache = {}

        def aopc_of(order, which=which, cache=cache):
            total = 0.0
            for b in fractions:
                top = frozenset(order[:math.floor(b * 5 + 1e-9)])
                removed = top if which == "comprehensiveness" else frozenset(range(1, 6)) - top
                if removed not in cache:
                    cache[removed] = literal_score(bert, ids[0], mask[0], 1, removed, "delete")
                total += full - cache[removed]
            return total / len(fractions)

        values = [aopc_of(p) for p in itertools.permutations(range(1, 6))]
        own = aopc_of(sorted(range(1, 6), key=lambda j: -float(scores[0, j])))
        expected = (own - min(values)) / (max(values) - min(values))
        exact = fn(bert, inputs, scores, 1, fractions=fractions, removal="delete",
                   feature_mask=counted)
        torch.testing.assert_close(float(exact[0]), expected, rtol=0, atol=1e-12)
        # the beam search with a beam as wide as the orderings finds the same bounds
        beam = fn(bert, inputs, scores, 1, fractions=fractions, removal="delete",
                  feature_mask=counted, exact_up_to=0, beam_size=120)
        torch.testing.assert_close(float(beam[0]), expected, rtol=0, atol=1e-12)


# --- closed forms: a model additive in its tokens ---------------------------------------------

class BagOfWords(nn.Module):
    """logit_c = sum_t mask_t * w_c[id_t]: removing a token removes exactly its weight."""

    def __init__(self, weights):
        super().__init__()
        self.embedding = nn.Embedding(weights.shape[1], weights.shape[0])
        with torch.no_grad():
            self.embedding.weight.copy_(weights.T)

    def forward(self, input_ids, attention_mask):
        return (self.embedding(input_ids) * attention_mask[..., None]).sum(dim=1)


@pytest.fixture
def additive():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(2, 30, generator=gen, dtype=torch.float64)
    ids = torch.randint(5, 30, (3, 12), generator=gen)
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 9:] = 0
    mask[2, 6:] = 0
    contribution = w[1][ids] * mask                    # the exact map of the target's logit
    return BagOfWords(w).double().eval(), {"input_ids": ids, "attention_mask": mask}, contribution


@pytest.mark.parametrize("removal", ["attention", "delete"])
def test_closed_forms_on_an_additive_model(additive, removal):
    model, inputs, a = additive
    lengths = inputs["attention_mask"].sum(1)
    comp = comprehensiveness(model, inputs, a, 1, removal=removal, output="logit",
                             fractions=FRACTIONS)
    suff = sufficiency(model, inputs, a, 1, removal=removal, output="logit", fractions=FRACTIONS)
    for i in range(3):
        v = a[i, :int(lengths[i])].sort(descending=True).values
        ks = [math.floor(b * int(lengths[i]) + 1e-9) for b in FRACTIONS]
        torch.testing.assert_close(float(comp[i]), sum(float(v[:k].sum()) for k in ks) / 3)
        torch.testing.assert_close(float(suff[i]), sum(float(v[k:].sum()) for k in ks) / 3)
    # the exact map orders the drops exactly: tau-LOO 1, the best ordering for both scores
    torch.testing.assert_close(tau_loo(model, inputs, a, 1, removal=removal, output="logit"),
                               torch.ones(3, dtype=torch.float64))
    for exact_up_to in (12, 0):                       # exact bounds, then the beam search
        kw = {"removal": removal, "output": "logit", "fractions": FRACTIONS,
              "exact_up_to": exact_up_to, "beam_size": 2}
        torch.testing.assert_close(normalised_comprehensiveness(model, inputs, a, 1, **kw),
                                   torch.ones(3, dtype=torch.float64))
        torch.testing.assert_close(normalised_sufficiency(model, inputs, a, 1, **kw),
                                   torch.zeros(3, dtype=torch.float64))
        # the reversed map is the worst ordering
        torch.testing.assert_close(normalised_comprehensiveness(model, inputs, -a, 1, **kw),
                                   torch.zeros(3, dtype=torch.float64))


# --- the token mask --------------------------------------------------------------------------

@pytest.mark.parametrize("removal", ["replace", "attention", "delete"])
def test_padding_changes_nothing(bert, sentences, removal):
    """More padding (ids, mask 0, any score) changes no score: padding is never ranked,
    removed or counted in the fractions."""
    inputs, scores, counted = sentences
    t = inputs["input_ids"].shape[1]
    wide = {"input_ids": torch.cat([inputs["input_ids"], torch.zeros(6, 8, dtype=torch.long)], 1),
            "attention_mask": torch.cat([inputs["attention_mask"],
                                         torch.zeros(6, 8, dtype=torch.long)], 1)}
    wide_scores = torch.cat([scores, torch.full((6, 8), 9.0, dtype=torch.float64)], 1)
    wide_counted = torch.cat([counted, torch.zeros(6, 8, dtype=torch.bool)], 1)
    for fn in (comprehensiveness, sufficiency, tau_loo):
        kw = {"removal": removal, "baseline": MASK_ID}
        narrow = fn(bert, inputs, scores, 1, feature_mask=counted, **kw)
        torch.testing.assert_close(fn(bert, wide, wide_scores, 1, feature_mask=wide_counted, **kw),
                                   narrow, rtol=0, atol=1e-12)
        # the default mask comes from the attention mask (and pad id): high scores on padding
        # are never ranked
        default = fn(bert, wide, wide_scores, 1, **kw)
        assert torch.isfinite(default).all() and default.shape == (6,)
    assert t == 24


def test_fractions_are_of_the_real_tokens(additive):
    model, inputs, a = additive
    curves = erasure_curves(model, inputs, a, 1, removal="attention", fractions=(0.5, 1.0))
    assert curves["sizes"].tolist() == [[6, 12], [4, 9], [3, 6]]
    assert curves["params"] == {"removal": "attention"}
    assert erasure_curves(model, inputs, a, 1, baseline=MASK_ID)["params"] == {
        "removal": "replace", "baseline": MASK_ID}


def test_images_and_tabular_rows_go_through_their_removal_operator(linear_model):
    """Any kind of data: pixels take the baseline; for a linear model and its exact map
    w * (x - 0), comprehensiveness on logits is the mean over bins of the top-n_b mass."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 8, 8, generator=gen, dtype=torch.float64)
    a = linear_model.fc.weight[2].reshape(1, 1, 8, 8) * x
    comp = comprehensiveness(linear_model, x, a, 2, output="logit")
    v = a.reshape(3, -1).sort(dim=1, descending=True).values
    ks = [math.floor(b * 64 + 1e-9) for b in (0.01, 0.05, 0.1, 0.2, 0.5)]
    torch.testing.assert_close(comp, torch.stack([v[:, :k].sum(1) for k in ks], 1).mean(1))
    rows = x.reshape(3, 64)
    suff = sufficiency(linear_model, rows, a.reshape(3, 64), 2, output="logit")
    torch.testing.assert_close(suff, torch.stack([v[:, k:].sum(1) for k in ks], 1).mean(1))


def test_errors_name_the_argument(bert, sentences, additive):
    inputs, scores, counted = sentences
    with pytest.raises(ValueError, match=r"Expected every entry of `fractions` in \(0, 1\]"):
        comprehensiveness(bert, inputs, scores, 1, fractions=(0.0, 0.5), baseline=MASK_ID)
    with pytest.raises(ValueError, match=r"Expected `removal` in \('replace', 'attention', "
                                         r"'delete'\)"):
        comprehensiveness(bert, inputs, scores, 1, removal="mask")
    with pytest.raises(ValueError, match=r"Expected `baseline`, the id that replaces removed "
                                         r"tokens \(tokenizer.mask_token_id"):
        comprehensiveness(bert, inputs, scores, 1)
    with pytest.raises(ValueError, match=r"Expected an `attention_mask` among the model's "
                                         r"inputs to drop tokens"):
        sufficiency(nn.Sequential(nn.Embedding(80, 2)).eval(), inputs["input_ids"], scores, 0,
                    removal="attention")
    with pytest.raises(ValueError, match=r"Expected removal='replace' for image inputs"):
        comprehensiveness(nn.Flatten(), torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4), 0,
                          removal="delete")
    with pytest.raises(ValueError, match=r"Expected `mode` in \('attention', 'delete'\)"):
        DropTokens("drop")
    assert isinstance(DropTokens(), DropTokens) and isinstance(ReplaceTokens(), ReplaceTokens)


def test_registered_with_their_direction():
    assert METRICS["comprehensiveness"].higher_is_better
    assert not METRICS["sufficiency"].higher_is_better
    assert METRICS["normalised_comprehensiveness"].range == (0.0, 1.0)
    assert not METRICS["normalised_sufficiency"].higher_is_better
    assert METRICS["tau_loo"].category == "faithfulness"


# --- ferret 0.4.2 ----------------------------------------------------------------------------

def test_equal_to_ferret_on_the_same_weights_and_sentences(ferret_reference):
    """ferret's values (benchmarks/ferret/reference.py --faithfulness --write-fixture) on a tiny
    trained BERT, 24 sentences of 10+ words, ferret's ten percentages 10%..100%, [CLS]/[SEP]
    not counted (its remove_first_last). Where ferret departs from the papers, the fixture
    avoids the difference rather than hiding it:

    - ferret deletes tokens and tokenizes the decoded text again (`removal="delete"` here);
      with `remove_tokens=False` it writes [MASK] (`removal="replace"`, baseline 4);
    - it skips a bin whose rationale is empty (floor(b L) = 0) or equal to the previous bin's
      and averages over the others; with 10+ words all ten bins are distinct and non-empty,
      where xprune's average over every bin is the same number (with ERASER's 1% and 5% bins
      on short sentences the two differ);
    - with only_pos=True (its default; only_pos=False raises inside ferret 0.4.2) it keeps only
      positive scores in a rationale; the scores here are all positive;
    - its top-k uses numpy's unstable argsort; the scores here have no ties;
    - tau-LOO: ferret always deletes the left-out token; so does `removal="delete"`.
    """
    from safetensors.torch import load_file

    fixture = json.loads((FIXTURES / "ferret_faithfulness.json").read_text())
    inputs = fixture["inputs"]
    model = transformers.BertForSequenceClassification(
        transformers.BertConfig(**inputs["config"]))
    model.load_state_dict(load_file(str(FIXTURES / "ferret_faithfulness_model.safetensors")))
    model = model.double().eval()
    batch, scores, counted = ferret_reference.token_batch(inputs)
    target = torch.tensor(inputs["target"])
    for key, theirs in fixture["ferret"].items():
        name, removal = key.split("|")
        fn = {"comprehensiveness": comprehensiveness, "sufficiency": sufficiency,
              "tau_loo": tau_loo}[name]
        kw = {} if name == "tau_loo" else {"fractions": inputs["thresholds"]}
        ours = fn(model, batch, scores, target, removal=removal, baseline=MASK_ID,
                  feature_mask=counted, **kw)
        torch.testing.assert_close(ours, torch.tensor(theirs, dtype=torch.float64), rtol=0,
                                   atol=1e-9, msg=key)
    assert set(fixture["ferret"]) == {"comprehensiveness|delete", "comprehensiveness|replace",
                                      "sufficiency|delete", "sufficiency|replace",
                                      "tau_loo|delete"}
    # the model is not trivial: removing the evidence moves the prediction
    assert max(fixture["ferret"]["comprehensiveness|delete"]) > 0.1
