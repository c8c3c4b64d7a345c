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

__all__ = ["DATASETS", "DatasetSplit", "load_dataset", "load_digits_split"]


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


DATASETS = {"digits": load_digits_split}


def load_dataset(name: str, **kwargs) -> DatasetSplit:
    """Load a registered dataset by name (see ``DATASETS``)."""
    if name not in DATASETS:
        raise ValueError(
            f"Expected `dataset` to be one of {sorted(DATASETS)}, got {name!r}."
            + closest_name(name, DATASETS)
        )
    return DATASETS[name](**kwargs)
