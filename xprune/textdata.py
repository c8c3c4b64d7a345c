"""Generated text classification with a known rationale, and its word-level tokenizer.

Sentences come from a small English grammar (reviews of a film, a meal, a
hotel...). The label (negative / positive) is decided by the sentiment words
alone: every sentence holds one to three words of its label's polarity and at
most one of the other, so the majority polarity decides. Those label-polarity
words are the sentence's ground-truth rationale, which makes the plausibility
of a token attribution measurable (:mod:`xprune.metrics.plausibility`).
Everything is generated from a seed; nothing is downloaded.

Token ids follow the BERT convention: ``[PAD]`` 0, ``[UNK]`` 1, ``[CLS]`` 2,
``[SEP]`` 3, ``[MASK]`` 4, then the words in a fixed order. Sequences are
``[CLS] w1 ... wk [SEP] [PAD] ...``; the rationale and the attention mask are
False on the special and padding tokens.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import Tensor

from ._validation import check_positive_int

__all__ = ["SPECIAL_TOKENS", "TextData", "make_text_classification", "text_tokenizer",
           "text_vocabulary"]

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

_SUBJECTS = ("film", "meal", "hotel", "book", "concert", "service", "plot", "room", "staff",
             "song", "game", "show")
_DETERMINERS = ("the", "this", "that", "our")
_LINKS = ("was", "seemed", "felt", "looked", "is")
_INTENSIFIERS = ("really", "quite", "very", "rather", "truly")
_CONNECTORS = ("and", "but", "although", "while")
_NEUTRAL = ("long", "new", "loud", "small", "late", "early", "red", "quiet", "local", "busy",
            "old", "modern")
_OPENERS = ("honestly", "overall", "frankly", "today", "again", "still")
_POSITIVE = ("good", "great", "excellent", "wonderful", "superb", "pleasant", "lovely",
             "brilliant")
_NEGATIVE = ("bad", "awful", "terrible", "poor", "dreadful", "boring", "horrible", "dull")
CLASS_NAMES = ("negative", "positive")


def text_vocabulary() -> dict[str, int]:
    """The id of every token: the special tokens first, then the grammar's words."""
    words = (*SPECIAL_TOKENS, *_SUBJECTS, *_DETERMINERS, *_LINKS, *_INTENSIFIERS, *_CONNECTORS,
             *_NEUTRAL, *_OPENERS, *_POSITIVE, *_NEGATIVE)
    return {w: i for i, w in enumerate(words)}


@dataclass(frozen=True)
class TextData:
    """Generated sentences, their token ids and their ground-truth rationales.

    Attributes
    ----------
    texts : tuple of str
        The sentences, lower-case words separated by spaces.
    input_ids : Tensor of shape (n, max_length), int64
        ``[CLS] words [SEP]`` then ``[PAD]`` (id 0).
    attention_mask : Tensor of shape (n, max_length), int64
        1 on ``[CLS]``, the words and ``[SEP]``; 0 on padding.
    labels : Tensor of shape (n,), int64
        0 = negative, 1 = positive.
    rationale : Tensor of shape (n, max_length), bool
        True on the words of the label's polarity, the evidence that decides it.
    vocabulary : dict of str to int
    class_names : tuple of str
    """

    texts: tuple[str, ...]
    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor
    rationale: Tensor
    vocabulary: dict[str, int]
    class_names: tuple[str, ...] = CLASS_NAMES

    def __len__(self) -> int:
        return len(self.texts)

    def inputs(self) -> dict[str, Tensor]:
        """The model inputs as keyword tensors, as a tokenizer returns them."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}


def _pick(words: tuple[str, ...], gen: random.Random) -> str:
    return words[gen.randrange(len(words))]


def _clause(gen: random.Random, adjective: str) -> list[str]:
    """``[det] subject link [intensifier] adjective``."""
    words = [_pick(_DETERMINERS, gen), _pick(_SUBJECTS, gen), _pick(_LINKS, gen)]
    if gen.random() < 0.4:
        words.append(_pick(_INTENSIFIERS, gen))
    return [*words, adjective]


def _sentence(label: int, gen: random.Random) -> tuple[list[str], list[bool]]:
    """One sentence of ``label`` and the rationale flag of each word."""
    same, other = (_POSITIVE, _NEGATIVE) if label == 1 else (_NEGATIVE, _POSITIVE)
    n_same = 1 + gen.randrange(3)          # 1 to 3 evidence words
    n_other = int(n_same >= 2 and gen.random() < 0.5)
    adjectives = ([(_pick(same, gen), True) for _ in range(n_same)]
                  + [(_pick(other, gen), False) for _ in range(n_other)]
                  + [(_pick(_NEUTRAL, gen), False)
                     for _ in range(1 + gen.randrange(2))])
    order = list(range(len(adjectives)))
    gen.shuffle(order)
    words: list[str] = []
    flags: list[bool] = []
    if gen.random() < 0.3:
        words.append(_pick(_OPENERS, gen))
        flags.append(False)
    for j, i in enumerate(order):
        if j:
            words.append(_pick(_CONNECTORS, gen))
            flags.append(False)
        adjective, evidence = adjectives[i]
        clause = _clause(gen, adjective)
        words += clause
        flags += [False] * (len(clause) - 1) + [evidence]
    return words, flags


def make_text_classification(n: int = 2000, *, max_length: int = 32, seed: int = 0
                             ) -> TextData:
    """Generate ``n`` labelled sentences with their rationales, balanced over the two classes.

    Parameters
    ----------
    n : int
        Number of sentences (>= 2); labels alternate 0, 1, 0, ... before a
        seeded shuffle, so the classes differ in size by at most one.
    max_length : int
        Sequence length in tokens (>= 16) including ``[CLS]`` and ``[SEP]``;
        a sentence that would not fit is drawn again, so no evidence is cut.
    seed : int
        The same seed gives the same sentences, ids, labels and rationales.

    Returns
    -------
    TextData

    Raises
    ------
    ValueError
        If ``n`` < 2 or ``max_length`` < 16.
    """
    check_positive_int(n, "n", minimum=2)
    check_positive_int(max_length, "max_length", minimum=16)
    gen = random.Random(seed)
    vocab = text_vocabulary()
    order = list(range(n))
    gen.shuffle(order)
    labels = torch.tensor(order) % 2
    ids = torch.zeros(n, max_length, dtype=torch.long)
    mask = torch.zeros(n, max_length, dtype=torch.long)
    rationale = torch.zeros(n, max_length, dtype=torch.bool)
    texts = []
    for i, label in enumerate(labels.tolist()):
        words, flags = _sentence(label, gen)
        while len(words) > max_length - 2:  # redraw until it fits: no evidence is cut
            words, flags = _sentence(label, gen)
        row = [vocab["[CLS]"], *(vocab[w] for w in words), vocab["[SEP]"]]
        ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
        rationale[i, 1:1 + len(words)] = torch.tensor(flags, dtype=torch.bool)
        texts.append(" ".join(words))
    return TextData(tuple(texts), ids, mask, labels, rationale, vocab)


def text_tokenizer(vocabulary: dict[str, int] | None = None, *, max_length: int = 32):
    """A Hugging Face fast tokenizer for the generated sentences (word level, BERT specials).

    It splits on whitespace, maps unknown words to ``[UNK]``, adds ``[CLS]`` and
    ``[SEP]``, and pads to ``max_length``; ``tokenizer(texts)`` gives the same
    ids as :func:`make_text_classification`. ``save_pretrained(folder)`` writes
    it for ``AutoTokenizer.from_pretrained(folder, local_files_only=True)``.

    Raises
    ------
    ImportError
        If ``transformers`` / ``tokenizers`` are not installed (``pip install xprune[text]``).
    """
    try:
        from tokenizers import Tokenizer, models, pre_tokenizers, processors
        from transformers import PreTrainedTokenizerFast
    except ImportError as err:  # pragma: no cover - exercised only without the text extra
        raise ImportError("The text tokenizer needs `transformers` and `tokenizers`: "
                          "pip install 'xprune[text]'.") from err
    vocab = dict(vocabulary or text_vocabulary())
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]),
                                                 ("[SEP]", vocab["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                   model_max_length=max_length)
