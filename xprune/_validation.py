"""Argument checks shared by every public function.

Each check raises with a message of the form
"Expected `name` to be <what was expected>, got <what came>." so that a user
sees which argument was wrong and what would have been right.
"""

from __future__ import annotations

import importlib
import math
import re
import sys
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = [
    "FACTORY_PATTERN",
    "check_count",
    "check_device",
    "check_factory",
    "check_own_factory",
    "check_fraction",
    "check_positive_int",
    "check_same_shape",
    "check_targets",
    "check_tensor",
    "check_sparsity_list",
    "closest_name",
    "is_token_ids",
    "resolve_factory",
]


def is_token_ids(x: object) -> bool:
    """Integer inputs of shape (N, T): token ids (the default metric sets and the CPU pass
    sizes read them so)."""
    return (isinstance(x, Tensor) and x.dim() == 2 and not x.is_floating_point()
            and x.dtype != torch.bool)


def check_tensor(x: object, name: str, *, min_dim: int = 1, finite: bool = True) -> Tensor:
    """Return ``x`` as a floating tensor, or raise if it is not a usable batch.

    Raises
    ------
    TypeError
        If ``x`` is not a tensor.
    ValueError
        If it has fewer than ``min_dim`` dimensions, an empty batch, or NaN/Inf
        entries (when ``finite``).
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"Expected `{name}` to be a torch.Tensor, got {type(x).__name__}.")
    if x.dim() < min_dim:
        raise ValueError(
            f"Expected `{name}` to have at least {min_dim} dimensions (N, ...), "
            f"got shape {tuple(x.shape)}."
        )
    if x.shape[0] == 0:
        raise ValueError(f"Expected `{name}` to hold at least one sample, got an empty batch.")
    if not x.is_floating_point():
        x = x.float()
    if finite and not bool(torch.isfinite(x).all()):
        n_bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"Expected `{name}` to be finite, got {n_bad} NaN or Inf entries.")
    return x


def check_same_shape(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    """Raise ``ValueError`` unless ``a`` and ``b`` have the same shape."""
    if a.shape != b.shape:
        raise ValueError(
            f"Expected `{name_a}` and `{name_b}` to have the same shape, "
            f"got {tuple(a.shape)} and {tuple(b.shape)}."
        )


def check_fraction(value: float, name: str, *, low: float = 0.0, high: float = 1.0,
                   high_inclusive: bool = False) -> float:
    """Return ``value`` as a float in ``[low, high)`` (or ``[low, high]``), else raise."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    upper_ok = ok and (value <= high if high_inclusive else value < high)
    if not (ok and value >= low and upper_ok):
        bracket = "]" if high_inclusive else ")"
        raise ValueError(f"Expected `{name}` in [{low}, {high}{bracket}, got {value!r}.")
    return float(value)


def check_count(value: object, name: str, d: int, *, inclusive: bool = True) -> int:
    """Return ``value`` if it is an int in [1, d] (or [1, d) when not ``inclusive``), else raise.

    ``d`` is the number of features, named in the message.
    """
    upper_ok = isinstance(value, int) and (value <= d if inclusive else value < d)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or not upper_ok:
        bracket = "]" if inclusive else ")"
        raise ValueError(f"Expected `{name}` to be an integer in [1, {d}{bracket} for inputs with "
                         f"{d} features, got {value!r}.")
    return value


def check_positive_int(value: object, name: str, *, minimum: int = 1) -> int:
    """Return ``value`` if it is an int >= ``minimum``, else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"Expected `{name}` to be an integer >= {minimum}, got {value!r}.")
    return value


def check_targets(target: object, n: int, n_outputs: int, *, name: str = "target") -> Tensor | None:
    """Normalise a target specification to a long tensor of shape ``(n,)``.

    Parameters
    ----------
    target : int, sequence of int, Tensor of shape (n,), or None
        The output index to explain for each sample. ``None`` is allowed only
        for a model with a single output.
    n : int
        Number of samples.
    n_outputs : int
        Number of model outputs (classes).

    Raises
    ------
    ValueError
        If ``target`` is missing for a multi-output model, has the wrong length,
        or holds an index outside ``[0, n_outputs)``.
    """
    if target is None:
        if n_outputs == 1:
            return None
        raise ValueError(
            f"Expected `{name}` for a model with {n_outputs} outputs: pass one class index "
            f"per sample (a tensor of shape ({n},)) or a single int; got None."
        )
    if isinstance(target, (bool, str)):
        raise ValueError(f"Expected `{name}` to be an int, a sequence of ints or a tensor of "
                         f"class indices, got {target!r}.")
    if isinstance(target, int):
        t = torch.full((n,), target, dtype=torch.long)
    elif isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex():
            raise ValueError(
                f"Expected `{name}` to hold integer class indices, got dtype {target.dtype}."
            )
        t = target.detach().reshape(-1).to(torch.long)
        if target.dim() > 1 or t.numel() != n:
            raise ValueError(
                f"Expected `{name}` of shape ({n},), got shape {tuple(target.shape)}."
            )
    elif isinstance(target, Sequence):
        t = torch.as_tensor(list(target), dtype=torch.long)
        if t.numel() != n:
            raise ValueError(f"Expected `{name}` to have {n} entries, got {t.numel()}.")
    else:
        raise ValueError(
            f"Expected `{name}` to be an int, a sequence of ints or a tensor, "
            f"got {type(target).__name__}."
        )
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= n_outputs):
        raise ValueError(
            f"Expected `{name}` in [0, {n_outputs}) for a model with {n_outputs} outputs, "
            f"got values from {int(t.min())} to {int(t.max())}."
        )
    return t


def closest_name(name: str, valid: Sequence[str]) -> str:
    """A hint naming the closest valid name, for unknown-name errors."""
    import difflib

    match = difflib.get_close_matches(name, list(valid), n=1)
    return f" Did you mean {match[0]!r}?" if match else ""


def check_sparsity_list(values: object, name: str) -> list[float]:
    """Return ``values`` if it is a non-empty, increasing list of numbers in (0, 1), else raise
    ``ValueError`` naming ``name``."""
    if not isinstance(values, list) or not values:
        raise ValueError(f"Expected `{name}` to be a non-empty list, got {values!r}.")
    for s in values:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s < 1:
            raise ValueError(f"Expected every `{name}` entry in (0, 1), got {s!r}.")
    if sorted(set(values)) != list(values):
        raise ValueError(f"Expected `{name}` increasing without repeats, got {values!r}.")
    return values


def check_device(device: str) -> None:
    """Raise ``ValueError`` unless ``device`` names a device this torch build can use."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"Expected `device` to be a torch device such as 'cpu' or 'cuda', "
                         f"got {device!r}.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"Expected an available `device`, got {device!r}: this torch build "
                         "sees no CUDA device (use 'cpu').")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"Expected an available `device`, got {device!r}: MPS is not available.")


FACTORY_PATTERN = r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*"


def check_factory(spec: object, name: str) -> str:
    """Return ``spec`` if it reads ``"package.module:function"``, else raise ``ValueError``
    naming ``name``. Nothing is imported or evaluated."""
    if not isinstance(spec, str) or not re.fullmatch(FACTORY_PATTERN, spec):
        raise ValueError(f"Expected `{name}` of the form 'package.module:function', "
                         f"got {spec!r}.")
    return spec


def check_own_factory(spec: object, name: str) -> str:
    """Return ``spec`` if it reads ``"package.module:function"`` outside the standard library,
    else raise ``ValueError`` naming ``name``. Nothing is imported or evaluated."""
    module_name = check_factory(spec, name).partition(":")[0]
    if module_name.split(".")[0] in getattr(sys, "stdlib_module_names", ()):
        raise ValueError(f"Expected `{name}` to name a function of "
                         f"your own package, got the standard-library {spec!r}.")
    return spec


def resolve_factory(spec: object, name: str) -> Callable:
    """The function that ``spec`` (``"package.module:function"``) names.

    The string is resolved only as a module path and an attribute name
    (``importlib.import_module`` then ``getattr``); it is never evaluated as
    code, and standard-library modules are refused.

    Raises
    ------
    ValueError
        Naming ``name``: a malformed string, a standard-library module, a
        module that cannot be imported, or no callable of that name.
    """
    module_name, _, attr = check_own_factory(spec, name).partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"Could not import module {module_name!r} named by "
                         f"`{name}`: {exc}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"Expected `{name}` to name a callable, but "
                         f"{module_name!r} has no callable {attr!r}.")
    return fn
