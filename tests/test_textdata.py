"""The generated text classification data: labels decided by the sentiment words, rationales
on exactly those words, reproducible from a seed, and a tokenizer that gives the same ids and
loads from a local folder."""

import pytest
import torch

from xprune.textdata import (
    _NEGATIVE,
    _POSITIVE,
    SPECIAL_TOKENS,
    make_text_classification,
    text_tokenizer,
    text_vocabulary,
)


@pytest.fixture(scope="module")
def data():
    return make_text_classification(400, max_length=32, seed=3)


def test_labels_follow_the_majority_polarity_and_the_rationale_marks_it(data):
    vocab = text_vocabulary()
    words_of = {i: w for w, i in vocab.items()}
    for i, text in enumerate(data.texts):
        words = text.split()
        n_pos = sum(w in _POSITIVE for w in words)
        n_neg = sum(w in _NEGATIVE for w in words)
        assert n_pos != n_neg
        assert int(data.labels[i]) == int(n_pos > n_neg)
        deciding = _POSITIVE if n_pos > n_neg else _NEGATIVE
        marked = [words_of[int(t)] for t in data.input_ids[i][data.rationale[i]]]
        assert marked == [w for w in words if w in deciding]
        length = len(words) + 2
        assert data.input_ids[i, 0] == vocab["[CLS]"] and data.input_ids[i, length - 1] == vocab["[SEP]"]
        assert data.attention_mask[i].tolist() == [1] * length + [0] * (32 - length)
        assert not bool(data.rationale[i, length - 1:].any()) and not bool(data.rationale[i, 0])


def test_balanced_reproducible_and_seeded(data):
    assert int(data.labels.sum()) == 200
    again = make_text_classification(400, max_length=32, seed=3)
    assert again.texts == data.texts and torch.equal(again.input_ids, data.input_ids)
    assert torch.equal(again.rationale, data.rationale)
    assert make_text_classification(400, max_length=32, seed=4).texts != data.texts
    assert data.input_ids.dtype == torch.long and data.input_ids.shape == (400, 32)


def test_the_words_are_learnable_well_above_chance(data):
    """A bag-of-words logistic regression on 300 sentences classifies the other 100."""
    from sklearn.linear_model import LogisticRegression

    counts = torch.zeros(400, len(text_vocabulary()))
    counts.scatter_add_(1, data.input_ids, data.attention_mask.float())
    clf = LogisticRegression(max_iter=2000).fit(counts[:300].numpy(), data.labels[:300].numpy())
    assert clf.score(counts[300:].numpy(), data.labels[300:].numpy()) >= 0.9


def test_tokenizer_gives_the_same_ids_and_loads_from_a_local_folder(data, tmp_path):
    transformers = pytest.importorskip("transformers")
    tokenizer = text_tokenizer(max_length=32)
    encoded = tokenizer(list(data.texts), padding="max_length", max_length=32,
                        return_tensors="pt")
    assert torch.equal(encoded["input_ids"], data.input_ids)
    assert torch.equal(encoded["attention_mask"], data.attention_mask)
    tokenizer.save_pretrained(tmp_path)
    loaded = transformers.AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    again = loaded(list(data.texts[:5]), padding="max_length", max_length=32, return_tensors="pt")
    assert torch.equal(again["input_ids"], data.input_ids[:5])
    assert loaded.mask_token_id == SPECIAL_TOKENS.index("[MASK]") and loaded.pad_token_id == 0
    assert loaded("the film was splendid")["input_ids"][4] == loaded.unk_token_id


def test_bad_sizes_are_named():
    with pytest.raises(ValueError, match="`n`"):
        make_text_classification(1)
    with pytest.raises(ValueError, match="`max_length`"):
        make_text_classification(10, max_length=12)
