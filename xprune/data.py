"""Bundled datasets, split reproducibly into train / validation / test tensors.

Nothing here downloads: the datasets ship with scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch import Tensor

from ._validation import check_fraction, closest_name

__all__ = ["DATASETS", "DatasetSplit", "load_breast_cancer_split", "load_dataset",
           "load_digits_split", "make_token_dataset"]


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

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def _split(x: np.ndarray, y: np.ndarray, *, seed: int, val_size: float, test_size: float):
    check_fraction(val_size, "val_size", low=0.0)
    check_fraction(test_size, "test_size", low=0.0)
    if not (0 < val_size and 0 < test_size and val_size + test_size < 1):
        raise ValueError(
            "Expected `val_size` and `test_size` in (0, 1) with a sum below 1, "
            f"got {val_size} and {test_size}."
        )
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=test_size, stratify=y, random_state=seed
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=val_size / (1 - test_size), stratify=y_rest,
        random_state=seed,
    )
    as_x = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    as_y = lambda a: torch.from_numpy(np.asarray(a, dtype=np.int64))  # noqa: E731
    return as_x(x_train), as_y(y_train), as_x(x_val), as_y(y_val), as_x(x_test), as_y(y_test)


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


def load_breast_cancer_split(*, seed: int = 0, val_size: float = 0.2, test_size: float = 0.2
                             ) -> DatasetSplit:
    """scikit-learn's Wisconsin breast-cancer data: 569 samples, 30 features, 2 classes.

    Features are standardised with the training split's mean and standard
    deviation (no information from validation or test leaks in); feature names
    are carried for reports.
    """
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    parts = list(_split(bunch.data, bunch.target, seed=seed, val_size=val_size,
                        test_size=test_size))
    mean, std = parts[0].mean(dim=0), parts[0].std(dim=0).clamp_min(1e-12)
    for i in (0, 2, 4):
        parts[i] = (parts[i] - mean) / std
    return DatasetSplit("breast_cancer", *parts, n_classes=2,
                        class_names=tuple(str(c) for c in bunch.target_names),
                        feature_names=tuple(str(f) for f in bunch.feature_names))


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


DATASETS = {"digits": load_digits_split, "breast_cancer": load_breast_cancer_split}


def load_dataset(name: str, **kwargs) -> DatasetSplit:
    """Load a registered dataset by name (see ``DATASETS``)."""
    if name not in DATASETS:
        raise ValueError(
            f"Expected `dataset` to be one of {sorted(DATASETS)}, got {name!r}."
            + closest_name(name, DATASETS)
        )
    return DATASETS[name](**kwargs)
