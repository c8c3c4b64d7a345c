"""Bundled datasets, split reproducibly into train / validation / test tensors.

Nothing here downloads: the datasets ship with scikit-learn.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import Tensor

from ._validation import check_fraction, check_positive_int, closest_name, resolve_factory

__all__ = ["DATASETS", "DatasetSplit", "as_split", "check_labels", "check_split",
           "collect_batches", "is_batches", "load_breast_cancer_split", "load_dataset",
           "load_digits_split", "load_table_file", "load_text_file", "load_text_split",
           "load_vowels_split",
           "load_wine_split", "make_token_dataset",
           "split_arrays"]

TEXT_FILE_SUFFIXES = (".csv", ".jsonl", ".parquet")


@dataclass(frozen=True)
class DatasetSplit:
    """A seeded, stratified train / validation / test split.

    Attributes
    ----------
    name : str
        Dataset name, e.g. ``"digits"``.
    x_train, x_val, x_test : Tensor of shape (n, *feature_shape), float32
    y_train, y_val, y_test : Tensor of shape (n,), int64 class labels
    n_classes : int
    class_names : tuple of str
    feature_names : tuple of str or None
        Column names for tabular data; ``None`` for images.
    rationale_test : bool Tensor of shape (n_test, *feature_shape without channels) or None
        The ground-truth evidence of each test sample where the data know it
        (the formant bands of the generated vowels, the evidence words of the
        generated sentences), for the plausibility metrics.
    vocabulary : tuple of str or None
        For token inputs: the token of each id (``vocabulary[i]`` is id i), for
        the token heat maps of reports. None for other inputs.
    pad_token_id : int or None
        For token inputs: the padding id (masked in maps and scores).
    special_token_ids : tuple of int
        For token inputs: ids of special tokens ([CLS], [SEP], ...), masked in
        maps and scores like padding.
    kind : str or None
        The kind of data where the shape does not tell it: ``"audio"`` for
        spectrograms, recorded in the maps so that the removal metrics take
        out time-frequency bins or patches (:class:`xprune.metrics.ReplaceAudio`).
    train_batches, test_batches : re-iterable of (inputs, labels) batches, or None
        Streamed splits (:func:`xprune.study` given a DataLoader): training,
        fine-tuning and pruning calibration read ``train_batches`` and the
        model tables evaluate on ``test_batches``, one batch at a time. Then
        ``x_train`` and ``x_test`` hold only the first rows of their split
        (those explained, timed and checked), while the labels ``y_*`` are whole.
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    n_classes: int
    class_names: tuple[str, ...]
    feature_names: tuple[str, ...] | None = None
    rationale_test: Tensor | None = None
    vocabulary: tuple[str, ...] | None = None
    pad_token_id: int | None = None
    special_token_ids: tuple[int, ...] = ()
    kind: str | None = None
    train_batches: object = None
    test_batches: object = None

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def _split(x: np.ndarray, y: np.ndarray, *, seed: int, val_size: float, test_size: float):
    """Stratified train / validation / test arrays as float32 inputs and int64 labels."""
    y = np.asarray(y)
    train, val, test = (i.numpy() for i in _split_indices(y, seed=seed, val_size=val_size,
                                                         test_size=test_size))
    as_x = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    as_y = lambda a: torch.from_numpy(np.asarray(a, dtype=np.int64))  # noqa: E731
    return (as_x(x[train]), as_y(y[train]), as_x(x[val]), as_y(y[val]), as_x(x[test]),
            as_y(y[test]))


def load_digits_split(*, seed: int = 0, val_size: float = 0.2, test_size: float = 0.2
                      ) -> DatasetSplit:
    """scikit-learn's handwritten digits: 1,797 grey 8x8 images of the digits 0-9.

    Pixel intensities (0-16 in the source) are scaled to [0, 1]; images have
    shape (1, 8, 8). The split is stratified by class and fixed by ``seed``.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (bunch.data / 16.0).reshape(-1, 1, 8, 8)
    parts = _split(x, bunch.target, seed=seed, val_size=val_size, test_size=test_size)
    return DatasetSplit("digits", *parts, n_classes=10,
                        class_names=tuple(str(c) for c in bunch.target_names))


def _standardised_table(name: str, bunch, *, seed: int, val_size: float, test_size: float
                        ) -> DatasetSplit:
    parts = list(_split(bunch.data, bunch.target, seed=seed, val_size=val_size,
                        test_size=test_size))
    mean, std = parts[0].mean(dim=0), parts[0].std(dim=0).clamp_min(1e-12)
    for i in (0, 2, 4):
        parts[i] = (parts[i] - mean) / std
    return DatasetSplit(name, *parts, n_classes=len(bunch.target_names),
                        class_names=tuple(str(c) for c in bunch.target_names),
                        feature_names=tuple(str(f) for f in bunch.feature_names))


def load_breast_cancer_split(*, seed: int = 0, val_size: float = 0.2, test_size: float = 0.2
                             ) -> DatasetSplit:
    """scikit-learn's Wisconsin breast-cancer data: 569 samples, 30 features, 2 classes.

    Features are standardised with the training split's mean and standard
    deviation (no information from validation or test leaks in); feature names
    are carried for reports.
    """
    from sklearn.datasets import load_breast_cancer

    return _standardised_table("breast_cancer", load_breast_cancer(), seed=seed,
                               val_size=val_size, test_size=test_size)


def load_wine_split(*, seed: int = 0, val_size: float = 0.2, test_size: float = 0.2
                    ) -> DatasetSplit:
    """scikit-learn's wine data: 178 samples, 13 named chemical features, 3 cultivars.

    Standardised with the training split's statistics, as breast cancer.
    """
    from sklearn.datasets import load_wine

    return _standardised_table("wine", load_wine(), seed=seed, val_size=val_size,
                               test_size=test_size)


def load_vowels_split(*, seed: int = 0, val_size: float = 0.2, test_size: float = 0.2,
                      n: int = 2000) -> DatasetSplit:
    """Synthesised vowels (:mod:`xprune.speechdata`): log-mel spectrograms (1, 40, 63) of 10 vowels.

    The ``n`` recordings are always generated from seed 0 (the same data set
    for every run); ``seed`` fixes the stratified split, as for digits. The
    spectrograms are standardised with the training split's mean and standard
    deviation; ``rationale_test`` holds the test recordings' formant masks
    (40, 63).
    """
    from .speechdata import make_vowel_dataset

    speech = make_vowel_dataset(n, seed=0)
    train, val, test = _split_indices(speech.labels.numpy(), seed=seed, val_size=val_size,
                                      test_size=test_size)
    x = speech.spectrograms
    mean, std = x[train].mean(), x[train].std()
    pick = lambda ix: ((x[ix] - mean) / std, speech.labels[ix])  # noqa: E731
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = pick(train), pick(val), pick(test)
    return DatasetSplit("vowels", x_train, y_train, x_val, y_val, x_test, y_test,
                        len(speech.class_names), speech.class_names,
                        rationale_test=speech.mask[test], kind="audio")


def load_text_split(*, seed: int = 0, val_size: float = 0.2, test_size: float = 0.2,
                    n: int = 2000, max_length: int = 32) -> DatasetSplit:
    """Generated sentences (:mod:`xprune.textdata`): token ids (n, max_length), 2 classes.

    The ``n`` sentences are always generated from seed 0 (the same data set
    for every run); ``seed`` fixes the stratified split, as for digits.
    Inputs are the int64 ids ``[CLS] words [SEP] [PAD]...`` (pad id 0);
    ``rationale_test`` holds the test sentences' evidence words (n_test,
    max_length), the words of the label's polarity.
    """
    from .textdata import SPECIAL_TOKENS, make_text_classification

    text = make_text_classification(n, max_length=max_length, seed=0)
    train, val, test = _split_indices(text.labels.numpy(), seed=seed, val_size=val_size,
                                      test_size=test_size)
    ids, y = text.input_ids, text.labels
    vocab = tuple(sorted(text.vocabulary, key=text.vocabulary.get))
    return DatasetSplit("text", ids[train], y[train], ids[val], y[val], ids[test], y[test], 2,
                        text.class_names, rationale_test=text.rationale[test],
                        vocabulary=vocab, pad_token_id=text.vocabulary["[PAD]"],
                        special_token_ids=tuple(text.vocabulary[t] for t in SPECIAL_TOKENS
                                                if t != "[PAD]"))


def _read_table(path: str, *, header_only: bool = False):
    """A CSV, JSON-lines or Parquet file as a pandas DataFrame (a CSV's header alone with
    ``header_only``)."""
    import pandas as pd

    if not Path(path).is_file():
        raise FileNotFoundError(f"Data file not found: {path}")
    try:
        if path.endswith(".csv"):
            return pd.read_csv(path, nrows=0 if header_only else None)
        if path.endswith(".jsonl"):
            return pd.read_json(path, lines=True)
        return pd.read_parquet(path)
    except ImportError as exc:
        raise ImportError(f"Reading {path} needs a Parquet engine: pip install pyarrow "
                          f"({exc})") from None
    except ValueError as exc:
        raise ValueError(f"Could not read {path} as a table: {str(exc).splitlines()[0]}"
                         ) from None


def _read_text_table(path: str, text_column: str, label_column: str):
    """(texts, labels) read from a CSV, JSON-lines or Parquet file with pandas."""
    frame = _read_table(path)
    missing = [c for c in (text_column, label_column) if c not in frame.columns]
    if missing:  # tests/cases_s6/008-tabular-csv.md: a numeric table is not a text file
        raise ValueError(f"Expected the columns {missing} (`data.text_column`, "
                         f"`data.label_column`) in {path}, got {list(frame.columns)}. A "
                         f"{Path(path).suffix} file is read as text classification data (a "
                         "text and a label column); for a table of numeric features save "
                         "arrays x, y to an .npz file or name a loader function "
                         "'mypackage.data:load' returning (x, y), or give the .csv as "
                         "`data.dataset` without a text column (`load_table_file`).")
    frame = frame[[text_column, label_column]]
    if frame.isna().any().any():
        rows = frame.index[frame.isna().any(axis=1)].tolist()[:5]
        raise ValueError(f"Expected a text and a label in every row of {path}, got empty cells "
                         f"in rows {rows}.")
    return frame[text_column].astype(str).tolist(), frame[label_column]


def load_text_file(path: str, *, tokenizer: object = None, text_column: str = "text",
                   label_column: str = "label", max_length: int | None = None, seed: int = 0,
                   val_size: float = 0.2, test_size: float = 0.2) -> DatasetSplit:
    """Your own text classification data: a ``.csv``, ``.jsonl`` or ``.parquet`` file.

    Each row holds a text (column ``text_column``) and a label
    (``label_column``): integers 0..C-1, or names, numbered in sorted order.
    The texts are tokenized into ids (n, T), padded to the longest text (at
    most ``max_length`` tokens, default 128, longer texts truncated), then
    split seeded and stratified as :func:`split_arrays` splits.

    Parameters
    ----------
    tokenizer : str, tokenizer or None
        A folder written by ``save_pretrained`` (loaded with
        ``AutoTokenizer.from_pretrained(folder, local_files_only=True)``; a
        ``"hf:"`` prefix is allowed), a Hugging Face tokenizer, or None: a
        word-level tokenizer over the file's lower-cased words
        (:func:`xprune.textdata.text_tokenizer`, BERT special tokens).

    Raises
    ------
    FileNotFoundError
        If the file or the tokenizer folder does not exist.
    ValueError
        On another suffix, missing columns or cells, labels that are neither
        integers 0..C-1 nor names, or a class too small to stratify.
    ImportError
        For Parquet without ``pyarrow``, or without ``transformers``.
    """
    from .textdata import SPECIAL_TOKENS, text_tokenizer

    if not path.endswith(TEXT_FILE_SUFFIXES):
        raise ValueError(f"Expected a text data file ending in {TEXT_FILE_SUFFIXES}, got {path!r}.")
    if max_length is not None:
        check_positive_int(max_length, "data.max_length", minimum=3)
    texts, raw = _read_text_table(path, text_column, label_column)
    y, names = _label_column(raw, label_column, path)
    if isinstance(tokenizer, str):
        folder = tokenizer.removeprefix("hf:")
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"Tokenizer folder not found: {folder}")
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    elif tokenizer is None:
        words = sorted({w for t in texts for w in t.lower().split()} - set(SPECIAL_TOKENS))
        tokenizer = text_tokenizer({w: i for i, w in enumerate((*SPECIAL_TOKENS, *words))},
                                   max_length=max_length or 128)
        texts = [t.lower() for t in texts]
    limit = max_length or 128
    enc = tokenizer(texts, padding="longest", truncation=True, max_length=limit,
                    return_tensors="pt")
    ids = enc["input_ids"].long()
    try:
        train, val, test = _split_indices(y, seed=seed, val_size=val_size, test_size=test_size)
    except ValueError as exc:
        raise ValueError(f"Could not split {path} into train / validation / test: {exc}"
                         ) from None
    y_t = torch.tensor(y, dtype=torch.long)
    size = len(tokenizer)
    vocab = tokenizer.convert_ids_to_tokens(list(range(size)))
    pad = tokenizer.pad_token_id
    special = tuple(i for i in tokenizer.all_special_ids if i != pad)
    return DatasetSplit(Path(path).stem, ids[train], y_t[train], ids[val], y_t[val], ids[test],
                        y_t[test], len(names), names,
                        vocabulary=tuple(str(v) for v in vocab), pad_token_id=pad,
                        special_token_ids=special)


def _label_column(raw, label_column: str, path: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """Labels (n,) 0..C-1 and the class names from a column of integers 0..C-1 or of names
    (numbered in sorted order)."""
    if _is_integer_column(raw):
        y = np.asarray(raw, dtype=np.int64)
        names = tuple(str(c) for c in range(int(y.max()) + 1)) if len(y) else ()
        if len(y) and y.min() < 0:
            raise ValueError(f"Expected integer labels 0..C-1 in column {label_column!r} of "
                             f"{path}, got minimum {y.min()}.")
        return y, names
    names = tuple(sorted(raw.astype(str).unique()))
    return raw.astype(str).map({c: i for i, c in enumerate(names)}).to_numpy(np.int64), names


def is_numeric_table(path: str, text_column: str = "text") -> bool:
    """Whether ``path`` is read as a numeric table: a ``.csv`` whose header has no column
    ``text_column`` (with one, it is text classification data, :func:`load_text_file`)."""
    return path.endswith(".csv") and text_column not in _read_table(path, header_only=True)


def load_table_file(path: str, *, label_column: str = "label", text_column: str = "text",
                    seed: int = 0, val_size: float = 0.2, test_size: float = 0.2
                    ) -> DatasetSplit:
    """Your own numeric table: a ``.csv`` file of feature columns and a label column.

    Every column but ``label_column`` is a feature (numbers, used as they are:
    nothing is scaled), named by its header; the labels are integers 0..C-1
    or names (numbered in sorted order, which become the class names). The
    rows (n, F) are split seeded and stratified as :func:`split_arrays`
    splits. ``text_column`` is only named in errors: a ``.csv`` with that
    column is text data (:func:`load_text_file`).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the label column is missing, no feature column is left, a feature
        column is not numeric, a cell is empty, or the labels are neither
        integers 0..C-1 nor names.
    """
    import pandas as pd

    frame = _read_table(path)
    if label_column not in frame.columns:
        raise ValueError(f"Expected a label column {label_column!r} (`data.label_column`) in "
                         f"{path}, got the columns {list(frame.columns)}. A .csv without a "
                         f"text column ({text_column!r}, `data.text_column`) is read as a "
                         "numeric table: feature columns and a label column.")
    features = frame.drop(columns=[label_column])
    index = [c for c in features.columns if str(c).startswith("Unnamed: ")]
    if index:
        raise ValueError(f"Expected every column of {path} to have a name, got unnamed "
                         f"columns {index[:5]}: pandas' `to_csv` writes the row index as an "
                         "unnamed first column, which would become a feature (the row number, "
                         "a leak where rows are sorted by class). Write the file with "
                         "`to_csv(path, index=False)` or drop that column.")
    if features.shape[1] == 0:
        raise ValueError(f"Expected feature columns besides the label column {label_column!r} "
                         f"in {path}, got none.")
    text = [c for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])
            or pd.api.types.is_bool_dtype(features[c])]
    if text:
        raise ValueError(f"Expected numeric feature columns in {path}, got non-numeric "
                         f"columns {text[:5]}: a .csv without a text column ({text_column!r}, "
                         "`data.text_column`) is read as a numeric table (every column but "
                         f"the label column {label_column!r}, `data.label_column`, a number); "
                         "for text data name the text's column with `data.text_column`.")
    if frame.isna().any().any():
        rows = frame.index[frame.isna().any(axis=1)].tolist()[:5]
        raise ValueError(f"Expected a number in every cell of {path}, got empty cells in rows "
                         f"{rows}.")
    y, names = _label_column(frame[label_column], label_column, path)
    split = split_arrays(features.to_numpy(np.float64), y, name=Path(path).stem, seed=seed,
                         val_size=val_size, test_size=test_size,
                         feature_names=[str(c) for c in features.columns])
    return dataclasses.replace(split, class_names=names)


def _is_integer_column(column) -> bool:
    """Whether a pandas column holds integers (not names)."""
    import pandas as pd

    return pd.api.types.is_integer_dtype(column)


def load_digits_flat_split(*, seed: int = 0, val_size: float = 0.2, test_size: float = 0.2
                           ) -> DatasetSplit:
    """The digits as 64-feature vectors (for an MLP): the same split as :func:`load_digits_split`."""
    d = load_digits_split(seed=seed, val_size=val_size, test_size=test_size)
    flat = {k: getattr(d, k).reshape(len(getattr(d, k)), -1)
            for k in ("x_train", "x_val", "x_test")}
    return DatasetSplit("digits_flat", flat["x_train"], d.y_train, flat["x_val"], d.y_val,
                        flat["x_test"], d.y_test, d.n_classes, d.class_names,
                        tuple(f"pixel_{r}_{c}" for r in range(8) for c in range(8)))


def split_arrays(x, y, *, name: str = "data", seed: int = 0, val_size: float = 0.2,
                 test_size: float = 0.2, feature_names=None) -> DatasetSplit:
    """Your own data as a seeded, stratified train / validation / test split.

    Parameters
    ----------
    x : array or Tensor of shape (n, *feature_shape)
        Features as the model takes them (already preprocessed: nothing is scaled here).
    y : array or Tensor of shape (n,)
        Integer class labels 0..C-1.
    feature_names : sequence of str, optional
        One per column of 2-D ``x``, for reports.

    Raises
    ------
    ValueError
        On NaN/Inf features, labels that are not integers 0..C-1, mismatched
        lengths, or a class too small to stratify.
    """
    x = check_numeric(np.asarray(x.detach().cpu() if isinstance(x, Tensor) else x),
                      f"the features of {name!r}").astype(np.float64)
    y_raw = np.asarray(y.detach().cpu() if isinstance(y, Tensor) else y)
    if x.ndim < 2 or len(x) != len(y_raw) or y_raw.ndim != 1:
        raise ValueError(f"Expected features (n, ...) and labels (n,), got shapes {x.shape} "
                         f"and {y_raw.shape}.")
    if not np.isfinite(x).all():
        raise ValueError("Expected finite features, got NaN or Inf.")
    check_labels(y_raw, f"the labels of {name!r}")
    names = None if feature_names is None else tuple(str(f) for f in feature_names)
    if names is not None and (x.ndim != 2 or len(names) != x.shape[1]):
        raise ValueError(f"Expected one feature name per column ({x.shape[1:]}), got "
                         f"{len(names)}.")
    try:
        parts = _split(x, y_raw, seed=seed, val_size=val_size, test_size=test_size)
    except ValueError as exc:
        raise ValueError(f"Could not split the data into train / validation / test: {exc}"
                         ) from None
    n_classes = int(y_raw.max()) + 1
    return DatasetSplit(name, *parts, n_classes=n_classes,
                        class_names=tuple(str(c) for c in range(n_classes)),
                        feature_names=names)


_SPLITS = ("train", "val", "test")


def as_split(data: object, *, seed: int = 0, val_size: float = 0.2, test_size: float = 0.2
             ) -> DatasetSplit:
    """Data held in memory as a :class:`DatasetSplit`, keeping the inputs' dtype.

    Parameters
    ----------
    data : DatasetSplit, (x, y), DataLoader, iterable of batches, or dict of splits
        A ``DatasetSplit`` is returned as it is. ``(x, y)``: inputs (n, *F) of
        any dtype (images, table rows, token ids) and integer labels (n,),
        split seeded and stratified by ``seed`` as :func:`split_arrays` splits
        (the same partition, but nothing is converted to float). A DataLoader
        or any iterable of ``(x, y)`` batches is collected first
        (:func:`collect_batches`) and split the same way. A dict
        ``{"train": ..., "test": ...}`` (``"val"`` optional) of pairs or
        loaders is used as given.

    Raises
    ------
    TypeError
        For a Hugging Face tokenizer output (a mapping of inputs: the study takes
        it with its model, :func:`xprune.study`) or anything else.
    ValueError
        On mismatched lengths, labels that are not integers 0..C-1, NaN/Inf
        floating inputs, inputs of different shapes across splits, or a class
        too small to stratify.
    """
    if isinstance(data, DatasetSplit):
        return data
    kind = type(data).__name__
    if is_batches(data):  # a DataLoader or another iterable of batches
        data = collect_batches(data)
    elif isinstance(data, dict) and "input_ids" not in data:
        data = {k: collect_batches(v, name=f"data[{k!r}]") if is_batches(v) else v
                for k, v in data.items()}
    if _holds_mapping_inputs(data):
        raise TypeError("Expected `data` to be tensors (x, y), a DatasetSplit or a dict of "
                        "splits, got a tokenizer output (input_ids, ...): pass it to "
                        "xprune.study with its model, which takes the ids as the model's "
                        "input, or pass (input_ids, labels).")
    if isinstance(data, dict):
        unknown = sorted(set(data) - set(_SPLITS))
        if unknown or not {"train", "test"} <= set(data):
            raise ValueError(f"Expected `data` as a dict to have the keys 'train' and 'test' "
                             f"(and optionally 'val'), got {sorted(data, key=str)}.")
        parts = {k: _pair(v, f"data[{k!r}]") for k, v in data.items()}
        if "val" not in parts:  # no validation split: an empty one
            parts["val"] = (parts["train"][0][:0], parts["train"][1][:0])
        shapes = {k: tuple(x.shape[1:]) for k, (x, _) in parts.items() if len(x)}
        if len(set(shapes.values())) > 1:
            raise ValueError(f"Expected the same input shape in every split, got {shapes}.")
        n_classes = max((int(y.max()) for _, y in parts.values() if len(y)), default=-1) + 1
        check_labels(torch.cat([y for _, y in parts.values()]).numpy(), "the labels of `data`")
        return DatasetSplit("data", parts["train"][0], parts["train"][1], parts["val"][0],
                            parts["val"][1], parts["test"][0], parts["test"][1], n_classes,
                            tuple(str(c) for c in range(n_classes)))
    if isinstance(data, (tuple, list)):
        x, y = _pair(data, "data")
        check_labels(y.numpy(), "the labels of `data`")
        try:
            train_idx, val_idx, test_idx = _split_indices(y.numpy(), seed=seed,
                                                          val_size=val_size, test_size=test_size)
        except ValueError as exc:
            raise ValueError(f"Could not split `data` into train / validation / test: {exc}"
                             ) from None
        n_classes = int(y.max()) + 1
        return DatasetSplit("data", x[train_idx], y[train_idx], x[val_idx], y[val_idx],
                            x[test_idx], y[test_idx], n_classes,
                            tuple(str(c) for c in range(n_classes)))
    raise TypeError(f"Expected `data` to be tensors (x, y), a DatasetSplit or a dict of splits, "
                    f"got {kind}.")


def _is_mapping(value: object) -> bool:
    return hasattr(value, "keys") and not isinstance(value, Tensor)


def _holds_mapping_inputs(data: object) -> bool:
    """A tokenizer output as the inputs: a mapping of tensors, ``(mapping, labels)``, or a dict
    of splits of those."""
    if isinstance(data, dict) and set(data) <= set(_SPLITS):
        return any(_holds_mapping_inputs(v) for v in data.values())
    if isinstance(data, (tuple, list)) and data:
        return _is_mapping(data[0])
    return _is_mapping(data) and not isinstance(data, dict) or (
        isinstance(data, dict) and "input_ids" in data)


def _pair(value: object, name: str) -> tuple[Tensor, Tensor]:
    """``(x, y)`` as tensors (arrays converted, dtypes kept), checked."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"Expected `{name}` to be a pair (x, y), got {type(value).__name__}"
                         + (f" of length {len(value)}" if isinstance(value, (tuple, list))
                            else "") + ".")
    x, y = (v if isinstance(v, Tensor) else torch.as_tensor(
        check_numeric(np.asarray(v), f"the {part} of `{name}`"))
        for v, part in zip(value, ("inputs", "labels"), strict=True))
    x, y = x.detach().cpu(), y.detach().cpu()
    if x.dim() < 2 or y.dim() != 1 or len(x) != len(y):
        raise ValueError(f"Expected `{name}` to be inputs (n, ...) and labels (n,), got shapes "
                         f"{tuple(x.shape)} and {tuple(y.shape)}.")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"Expected the inputs of `{name}` to be finite, got "
                         f"{int((~torch.isfinite(x)).sum())} NaN or Inf entries.")
    # tests/cases_s6/007-float-labels-study.md: integer-valued floats (pandas, sklearn) are
    # class labels; continuous values are a regression target, which is not supported
    if y.is_floating_point() and len(y) and bool(torch.isfinite(y).all()) \
            and bool((y == y.round()).all()):
        y = y.long()
    if y.is_floating_point():
        raise ValueError(
            f"Expected the labels of `{name}` to be integers 0..C-1 (class indices), got "
            f"continuous values (dtype {str(y.dtype).replace('torch.', '')}, e.g. "
            f"{y[0].item()!r}): xprune explains and scores classifiers; a regression target "
            "is not supported.")
    if y.is_complex() or y.dtype == torch.bool or \
            (len(y) and int(y.min()) < 0):
        raise ValueError(f"Expected the labels of `{name}` to be integers 0..C-1, got dtype "
                         f"{str(y.dtype).replace('torch.', '')}"
                         + (f" with minimum {y.min().item()!r}" if len(y) else "") + ".")
    return x, y.long()


def check_numeric(a: np.ndarray, name: str) -> np.ndarray:
    """Return ``a`` if it holds numbers (bool, integer or floating point), else raise
    ``ValueError`` naming ``name`` and the dtype (strings, objects)."""
    if a.dtype.kind not in "biuf":
        example = a.reshape(-1)[0] if a.size else None
        raise ValueError(f"Expected {name} to be numbers, got dtype {a.dtype}"
                         + (f" (e.g. {str(example)[:40]!r})" if a.size else "")
                         + ": encode text or categories as numbers first (token ids for "
                           "text, one column per category for tables).")
    return a


def check_labels(y: np.ndarray, name: str) -> int:
    """Return the number of classes C if ``y`` holds integer labels 0..C-1 with every class
    present and at least two classes, else raise ``ValueError`` naming ``name``.

    Labels with gaps (such as {0, 100, ..., 900}) are refused with the missing classes
    listed, rather than training a model with empty classes (case 018-label-gaps).
    """
    y = np.asarray(y)
    if y.size == 0:
        raise ValueError(f"Expected {name} to hold at least one sample per class, got 0 "
                         "samples.")
    if y.dtype.kind not in "iu" or y.min() < 0:
        whole = y.dtype.kind == "f" and bool(np.isfinite(y).all()) and bool((y == np.round(y)).all())
        raise ValueError(f"Expected {name} to be integers 0..C-1, got dtype {y.dtype}"
                         + (f" with minimum {y.min().item()!r}" if y.dtype.kind in "iuf"
                            else "")
                         + (": whole numbers stored as floats; save them as integers "
                            "(y.astype(int))." if whole and y.min() >= 0 else
                            ": continuous values are a regression target, which xprune does "
                            "not support (it scores classifiers)." if y.dtype.kind == "f"
                            else "."))
    present = np.unique(y)
    if len(present) < 2:
        raise ValueError(f"Expected {name} to hold at least two classes, got only class "
                         f"{present[0].item()} ({len(y)} samples): a classifier of one class "
                         "has nothing to explain.")
    n_classes = int(present[-1]) + 1
    if len(present) != n_classes:
        missing = sorted(set(range(n_classes)) - set(present.tolist()))
        shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
        raise ValueError(f"Expected {name} to be 0..C-1 with every class present, got "
                         f"{len(present)} classes from 0 to {n_classes - 1}: {len(missing)} "
                         f"missing ({shown}). Map the labels to 0..{len(present) - 1} first, "
                         "e.g. np.unique(y, return_inverse=True)[1].")
    return n_classes


def check_split(data: DatasetSplit) -> DatasetSplit:
    """Return ``data`` if it can be trained and explained, else raise ``ValueError``.

    The training and test splits hold samples; the labels of every split are
    0..C-1 (C = ``data.n_classes``, at least 2) with every class present in
    training.
    """
    for split in ("train", "test"):
        if len(getattr(data, f"y_{split}")) == 0:
            raise ValueError(f"Expected the {split} split of {data.name!r} to hold samples, "
                             "got 0.")
    if data.n_classes < 2:
        raise ValueError(f"Expected at least two classes in {data.name!r}, got "
                         f"{data.n_classes}.")
    for split in ("train", "val", "test"):
        y = getattr(data, f"y_{split}")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= data.n_classes):
            raise ValueError(f"Expected the {split} labels of {data.name!r} in "
                             f"0..{data.n_classes - 1}, got values from {int(y.min())} to "
                             f"{int(y.max())}.")
    missing = sorted(set(range(data.n_classes)) - set(data.y_train.unique().tolist()))
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (", ..." if len(missing) > 10 else "")
        raise ValueError(f"Expected every class of {data.name!r} (0..{data.n_classes - 1}) in "
                         f"the training split, got none of class {shown}.")
    return data


def _split_indices(y: np.ndarray, *, seed: int, val_size: float, test_size: float):
    """Train / validation / test indices: the partition :func:`_split` makes of the same labels."""
    check_fraction(val_size, "val_size", low=0.0)
    check_fraction(test_size, "test_size", low=0.0)
    if not (0 < val_size and 0 < test_size and val_size + test_size < 1):
        raise ValueError(
            "Expected `val_size` and `test_size` in (0, 1) with a sum below 1, "
            f"got {val_size} and {test_size}."
        )
    idx = np.arange(len(y))
    rest, test, y_rest, _ = train_test_split(idx, y, test_size=test_size, stratify=y,
                                             random_state=seed)
    train, val = train_test_split(rest, test_size=val_size / (1 - test_size), stratify=y_rest,
                                  random_state=seed)
    return torch.from_numpy(train), torch.from_numpy(val), torch.from_numpy(test)


def load_data_source(source: str, *, seed: int = 0, val_size: float = 0.2,
                     test_size: float = 0.2, key: str = "data.dataset") -> DatasetSplit:
    """Data from a file or a function, split by :func:`split_arrays`.

    ``source`` is an ``.npz`` file with arrays ``x`` and ``y`` (and optionally
    ``feature_names``), a ``.pt`` file holding a dict of tensors ``x`` and ``y``
    (read with ``torch.load(weights_only=True)``: no code is unpickled), or
    ``"package.module:function"`` returning ``(x, y)`` or ``(x, y, feature_names)``.
    ``key`` names where the source came from in error messages (the config key).

    Raises
    ------
    FileNotFoundError
        If a file source does not exist.
    ValueError
        If the file lacks ``x``/``y`` or the function returns something else.
    """
    if source.endswith(".npz"):
        if not Path(source).is_file():
            raise FileNotFoundError(f"Data file not found: {source}")
        with np.load(source, allow_pickle=False) as npz:
            if not {"x", "y"} <= set(npz.files):
                raise ValueError(f"Expected arrays 'x' and 'y' in {source}, got {npz.files}.")
            names = npz["feature_names"].tolist() if "feature_names" in npz.files else None
            x, y = npz["x"], npz["y"]
    elif source.endswith(".pt"):
        if not Path(source).is_file():
            raise FileNotFoundError(f"Data file not found: {source}")
        try:
            blob = torch.load(source, weights_only=True, map_location="cpu")
        except Exception as exc:  # pickled code or a corrupt file
            raise ValueError(f"Could not read {source} as a weights-only torch file: "
                             f"{str(exc).splitlines()[0]}") from None
        if not isinstance(blob, dict) or not {"x", "y"} <= set(blob):
            raise ValueError(f"Expected {source} to hold a dict with tensors 'x' and 'y'.")
        x, y, names = blob["x"], blob["y"], blob.get("feature_names")
    else:
        fn = resolve_factory(source, key)
        out = fn()
        if not isinstance(out, tuple) or len(out) not in (2, 3):
            raise ValueError(f"Expected {source} to return (x, y) or (x, y, feature_names), "
                             f"got {type(out).__name__}.")
        x, y, names = (*out, None) if len(out) == 2 else out
    name = Path(source).stem if source.endswith((".npz", ".pt")) else source.split(":")[-1]
    return split_arrays(x, y, name=name, seed=seed, val_size=val_size, test_size=test_size,
                        feature_names=names)


def make_token_dataset(n: int = 600, *, seq_len: int = 12, vocab_size: int = 30, seed: int = 0
                       ) -> tuple[Tensor, Tensor]:
    """Generated text: token ids (n, seq_len) and labels (n,).

    Token 0 is padding; tokens 1-5 are "positive" and 6-10 "negative" words,
    the rest neutral. The label is 1 when positive words outnumber negative
    ones (ties broken towards 0), so a faithful token map points at those words.
    """
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, vocab_size, (n, seq_len), generator=gen)
    positive = ((tokens >= 1) & (tokens <= 5)).sum(dim=1)
    negative = ((tokens >= 6) & (tokens <= 10)).sum(dim=1)
    return tokens, (positive > negative).long()


DATASETS = {"digits": load_digits_split, "digits_flat": load_digits_flat_split,
            "breast_cancer": load_breast_cancer_split, "wine": load_wine_split,
            "vowels": load_vowels_split, "text": load_text_split}


def is_data_source(name: str) -> bool:
    """Whether ``name`` is a file or function source rather than a registered dataset."""
    return name.endswith((".npz", ".pt", *TEXT_FILE_SUFFIXES)) or ":" in name


def load_dataset(name: str, *, text: dict | None = None, **kwargs) -> DatasetSplit:
    """Load a registered dataset by name (see ``DATASETS``), a text file (``.csv``,
    ``.jsonl``, ``.parquet``: see :func:`load_text_file`, with the keyword arguments in
    ``text``), a numeric ``.csv`` table (no ``text["text_column"]`` column: see
    :func:`load_table_file`, the label column ``text["label_column"]``) or another file /
    function source (see :func:`load_data_source`)."""
    if name.endswith(TEXT_FILE_SUFFIXES):
        options = text or {}
        if is_numeric_table(name, options.get("text_column", "text")):
            return load_table_file(name, label_column=options.get("label_column", "label"),
                                   text_column=options.get("text_column", "text"), **kwargs)
        return load_text_file(name, **options, **kwargs)
    if is_data_source(name):
        return load_data_source(name, **kwargs)
    if name not in DATASETS:
        raise ValueError(
            f"Expected `dataset` to be one of {sorted(DATASETS)}, got {name!r}."
            + closest_name(name, DATASETS)
        )
    return DATASETS[name](**kwargs)


LABEL_KEYS = ("labels", "label")


def is_batches(data: object) -> bool:
    """Whether ``data`` is a DataLoader or another iterable of batches (not one pair ``(x, y)``,
    a dict of splits, a tensor or an array)."""
    if isinstance(data, (Tensor, np.ndarray, str, bytes, dict, DatasetSplit)) or \
            hasattr(data, "keys"):  # a mapping, e.g. a tokenizer's BatchEncoding
        return False
    if isinstance(data, (tuple, list)):  # a list of batches, not one (x, y) pair
        return bool(data) and all(isinstance(b, (tuple, list, dict)) or hasattr(b, "keys")
                                  for b in data) and not (
            len(data) == 2 and all(isinstance(v, (Tensor, np.ndarray)) for v in data))
    return hasattr(data, "__iter__")


def _batch_parts(batch: object, name: str, index: int) -> tuple[Tensor | dict, Tensor]:
    """One batch as (inputs: a tensor or a dict of tensors, labels (n,))."""
    where = f"batch {index} of `{name}`"
    if hasattr(batch, "keys") and not isinstance(batch, Tensor):  # a mapping (tokenizer output)
        keys = [k for k in LABEL_KEYS if k in batch]
        if not keys:
            raise ValueError(f"Expected {where}, a mapping, to hold the labels under 'labels' or "
                             f"'label', got the keys {sorted(batch.keys())}.")
        inputs = {k: v for k, v in batch.items() if k not in LABEL_KEYS}
        return inputs, batch[keys[0]]
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise ValueError(f"Expected {where} to be (inputs, labels) or a mapping with 'labels', got "
                     f"{type(batch).__name__}" + (f" of length {len(batch)}" if isinstance(
                         batch, (tuple, list)) else "") + ".")


def _as_tensor(value: object, what: str) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach().cpu()
    try:
        return torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError):
        raise TypeError(f"Expected {what} to be a tensor or an array, got "
                        f"{type(value).__name__}.") from None


def _pad_cat(parts: list[Tensor], key: str, pad: int) -> Tensor:
    """Concatenate (n_i, T_i) token tensors, right-padding shorter ones with ``pad``."""
    length = max(p.shape[1] for p in parts)
    return torch.cat([torch.nn.functional.pad(p, (0, length - p.shape[1]), value=pad)
                      for p in parts])


def collect_batches(batches: object, *, name: str = "data", pad_token_id: int | None = None
                    ) -> tuple[Tensor | dict[str, Tensor], Tensor]:
    """Every batch of a DataLoader (or any iterable of batches) in one ``(inputs, labels)`` pair.

    A batch is ``(x, y)`` with x a tensor (n, *F) of any dtype or a mapping of
    tensors (a tokenizer's output), or a mapping holding the model's inputs and
    the labels under ``"labels"`` (or ``"label"``), as Hugging Face collators
    return it. Mappings of token tensors (n, T) padded to each batch's own
    length are right-padded to the longest: ``input_ids`` with
    ``pad_token_id``, every other key with 0. The whole data set is held in
    memory (the pipeline measures every model on the same tensors).

    Returns
    -------
    inputs : Tensor of shape (n, *F) or dict of Tensors of shape (n, T)
    labels : Tensor of shape (n,)

    Raises
    ------
    ValueError
        If there is no batch, a batch is of another form, the batches mix
        forms, keys or feature shapes, or padding is needed without a pad id.
    TypeError
        If a batch holds something other than tensors or arrays.
    """
    xs, ys = [], []
    for i, batch in enumerate(batches):
        x, y = _batch_parts(batch, name, i)
        if hasattr(x, "keys") and not isinstance(x, Tensor):
            x = {k: _as_tensor(v, f"`{name}`[{k!r}] in batch {i}") for k, v in x.items()}
        else:
            x = _as_tensor(x, f"the inputs of batch {i} of `{name}`")
        xs.append(x)
        ys.append(_as_tensor(y, f"the labels of batch {i} of `{name}`").reshape(-1))
    if not xs:
        raise ValueError(f"Expected `{name}` to yield at least one batch, got none.")
    y = torch.cat(ys)
    if all(isinstance(x, Tensor) for x in xs):
        shapes = {tuple(x.shape[1:]) for x in xs}
        if len(shapes) > 1:
            raise ValueError(f"Expected every batch of `{name}` to have the same input shape per "
                             f"sample, got {sorted(shapes)}.")
        return torch.cat(xs), y
    if not all(isinstance(x, dict) for x in xs) or len({tuple(x) for x in xs}) > 1:
        raise ValueError(f"Expected every batch of `{name}` to hold the same inputs (all tensors, "
                         f"or mappings with the same keys).")
    out = {}
    for key in xs[0]:
        parts = [x[key] for x in xs]
        if len({p.shape[1:] for p in parts}) > 1:
            if any(p.dim() != 2 for p in parts):
                raise ValueError(f"Expected `{name}`[{key!r}] to have the same shape per sample "
                                 f"in every batch, got {sorted({tuple(p.shape[1:]) for p in parts})}.")
            if key == "input_ids" and pad_token_id is None:
                raise ValueError(f"Expected a pad id to pad the batches of `{name}` to one "
                                 f"length (they differ); the model's config has no "
                                 f"pad_token_id: pad in the collator (padding='max_length').")
            out[key] = _pad_cat(parts, key, pad_token_id if key == "input_ids" else 0)
        else:
            out[key] = torch.cat(parts)
    return out, y
