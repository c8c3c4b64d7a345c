"""xprune: measure how pruning a neural network changes its interpretability."""

from . import metrics
from ._version import __version__  # noqa: F401  (xprune.__version__)
from .attribution import (
    ATTRIBUTION_METHODS,
    Attributions,
    attribute,
    attribute_pair,
    explainer,
)
from .checkpoint import load_attributions, load_onnx, save_attributions
from .pruning import PRUNING_METHODS, ModelPair, fine_tune, prune, sparsity

__all__ = [
    "ATTRIBUTION_METHODS",
    "PRUNING_METHODS",
    "Attributions",
    "ModelPair",
    "Study",
    "attribute",
    "attribute_pair",
    "explainer",
    "fine_tune",
    "load_attributions",
    "load_onnx",
    "metrics",
    "prune",
    "save_attributions",
    "sparsity",
    "study",
]


def __getattr__(name: str):
    # the study API loads the whole pipeline (pandas, reports, figures): only when asked for
    if name in ("study", "Study"):
        from . import _study

        return getattr(_study, name)
    raise AttributeError(f"module 'xprune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
