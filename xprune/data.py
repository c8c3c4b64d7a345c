"""Bundled datasets, split reproducibly into train / validation / test tensors.

Nothing here downloads: the datasets ship with scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import Tensor

from ._validation import check_fraction, closest_name, resolve_factory

__all__ = ["DATASETS", "DatasetSplit", "as_split", "load_breast_cancer_split", "load_dataset",
           "load_digits_split", "load_vowels_split", "load_wine_split", "make_token_dataset",
           "split_arrays"]


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
        (the formant bands of the generated vowels), for the plausibility metrics.
    kind : str or None
        The kind of data where the shape does not tell it: ``"audio"`` for
        spectrograms, recorded in the maps so that the removal metrics take
        out time-frequency bins or patches (:class:`xprune.metrics.ReplaceAudio`).
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
    kind: str | None = None

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
    x = np.asarray(x.detach().cpu() if isinstance(x, Tensor) else x, dtype=np.float64)
    y_raw = np.asarray(y.detach().cpu() if isinstance(y, Tensor) else y)
    if x.ndim < 2 or len(x) != len(y_raw) or y_raw.ndim != 1:
        raise ValueError(f"Expected features (n, ...) and labels (n,), got shapes {x.shape} "
                         f"and {y_raw.shape}.")
    if not np.isfinite(x).all():
        raise ValueError("Expected finite features, got NaN or Inf.")
    if not np.issubdtype(y_raw.dtype, np.integer) or y_raw.min() < 0:
        raise ValueError(f"Expected integer class labels 0..C-1, got dtype {y_raw.dtype} with "
                         f"minimum {y_raw.min()!r}.")
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
    data : DatasetSplit, (x, y), or dict of splits
        A ``DatasetSplit`` is returned as it is. ``(x, y)``: inputs (n, *F) of
        any dtype (images, table rows, token ids) and integer labels (n,),
        split seeded and stratified by ``seed`` as :func:`split_arrays` splits
        (the same partition, but nothing is converted to float). A dict
        ``{"train": (x, y), "test": (x, y)}`` (``"val"`` optional) is used as
        given.

    Raises
    ------
    TypeError
        For a DataLoader or a Hugging Face tokenizer output (not supported yet:
        pass the tensors) or anything else.
    ValueError
        On mismatched lengths, labels that are not integers 0..C-1, NaN/Inf
        floating inputs, inputs of different shapes across splits, or a class
        too small to stratify.
    """
    if isinstance(data, DatasetSplit):
        return data
    kind = type(data).__name__
    if kind == "DataLoader" or hasattr(data, "dataset") and hasattr(data, "batch_size"):
        raise TypeError("Expected `data` to be tensors (x, y), a DatasetSplit or a dict of "
                        "splits, got a DataLoader, which is not supported yet: collect its "
                        "batches, e.g. x = torch.cat([b[0] for b in loader]), and pass (x, y).")
    if isinstance(data, dict) and "input_ids" in data:
        raise TypeError("Expected `data` to be tensors (x, y), a DatasetSplit or a dict of "
                        "splits, got a tokenizer output (input_ids, ...), which is not "
                        "supported yet: pass (input_ids, labels).")
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
        n_classes = max(int(y.max()) for _, y in parts.values() if len(y)) + 1
        return DatasetSplit("data", parts["train"][0], parts["train"][1], parts["val"][0],
                            parts["val"][1], parts["test"][0], parts["test"][1], n_classes,
                            tuple(str(c) for c in range(n_classes)))
    if isinstance(data, (tuple, list)):
        x, y = _pair(data, "data")
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


def _pair(value: object, name: str) -> tuple[Tensor, Tensor]:
    """``(x, y)`` as tensors (arrays converted, dtypes kept), checked."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"Expected `{name}` to be a pair (x, y), got {type(value).__name__}"
                         + (f" of length {len(value)}" if isinstance(value, (tuple, list))
                            else "") + ".")
    x, y = (v if isinstance(v, Tensor) else torch.as_tensor(np.asarray(v)) for v in value)
    x, y = x.detach().cpu(), y.detach().cpu()
    if x.dim() < 2 or y.dim() != 1 or len(x) != len(y):
        raise ValueError(f"Expected `{name}` to be inputs (n, ...) and labels (n,), got shapes "
                         f"{tuple(x.shape)} and {tuple(y.shape)}.")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"Expected the inputs of `{name}` to be finite, got "
                         f"{int((~torch.isfinite(x)).sum())} NaN or Inf entries.")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool or \
            (len(y) and int(y.min()) < 0):
        raise ValueError(f"Expected the labels of `{name}` to be integers 0..C-1, got dtype "
                         f"{str(y.dtype).replace('torch.', '')}"
                         + (f" with minimum {y.min().item()!r}" if len(y) else "") + ".")
    return x, y.long()


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
                     test_size: float = 0.2) -> DatasetSplit:
    """Data from a file or a function, split by :func:`split_arrays`.

    ``source`` is an ``.npz`` file with arrays ``x`` and ``y`` (and optionally
    ``feature_names``), a ``.pt`` file holding a dict of tensors ``x`` and ``y``
    (read with ``torch.load(weights_only=True)``: no code is unpickled), or
    ``"package.module:function"`` returning ``(x, y)`` or ``(x, y, feature_names)``.

    Raises
    ------
    FileNotFoundError
        If a file source does not exist.
    ValueError
        If the file lacks ``x``/``y`` or the function returns something else.
    """
    from pathlib import Path

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
        fn = resolve_factory(source, "source")
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
            "vowels": load_vowels_split}


def is_data_source(name: str) -> bool:
    """Whether ``name`` is a file or function source rather than a registered dataset."""
    return name.endswith((".npz", ".pt")) or ":" in name


def load_dataset(name: str, **kwargs) -> DatasetSplit:
    """Load a registered dataset by name (see ``DATASETS``), or a file / function source
    (see :func:`load_data_source`)."""
    if is_data_source(name):
        return load_data_source(name, **kwargs)
    if name not in DATASETS:
        raise ValueError(
            f"Expected `dataset` to be one of {sorted(DATASETS)}, got {name!r}."
            + closest_name(name, DATASETS)
        )
    return DATASETS[name](**kwargs)
