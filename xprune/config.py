"""Analysis configuration: frozen dataclasses, read from TOML, validated, saved resolved.

An analysis config is a TOML file with the sections below; every key is
optional and defaults to the embedded digits analysis (``analyses/digits.toml``
spells the defaults out). Unknown sections or keys are errors, so a typo never
silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._io import read_toml
from ._validation import (
    check_device,
    check_fraction,
    check_own_factory,
    check_positive_int,
    closest_name,
    resolve_factory,
)
from .attribution._methods import ATTRIBUTION_METHODS, resolve_spec
from .data import DATASETS, TEXT_FILE_SUFFIXES, is_data_source
from .metrics import METRICS
from .metrics._base import resolve_metric_name as canon
from .metrics._base import unknown_metric_hint
from .metrics._removal import removal_from_spec
from .pruning import MONOTONE_METHODS, PRUNING_METHODS, SCHEDULES

__all__ = [
    "AnalysisConfig",
    "AttributionConfig",
    "ControlsConfig",
    "DataConfig",
    "ModelConfig",
    "MetricsConfig",
    "PruningConfig",
    "PruningVariant",
    "ReportConfig",
    "TrainConfig",
    "load_config",
]


@dataclass(frozen=True)
class DataConfig:
    """A bundled dataset by name (``digits``, ``digits_flat``, ``breast_cancer``, ``wine``,
    ``vowels``, ``text``) or your own: an ``.npz`` file (arrays ``x``, ``y``, optional
    ``feature_names``), a ``.pt`` dict of tensors (loaded weights-only),
    ``"package.module:function"`` returning ``(x, y)``, or a text file (``.csv``,
    ``.jsonl``, ``.parquet``) with the columns ``text_column`` and ``label_column``,
    tokenized by the ``model.pretrained`` folder's tokenizer (else a word-level one over the
    file's words) to at most ``max_length`` tokens (see :func:`xprune.data.load_text_file`),
    or a numeric ``.csv`` table: without a ``text_column`` column, every column but
    ``label_column`` is a numeric feature (:func:`xprune.data.load_table_file`); split seeded
    and stratified into train / validation / test."""

    dataset: str = "digits"
    val_size: float = 0.2
    test_size: float = 0.2
    text_column: str = "text"      # text files (.csv, .jsonl, .parquet): the text's column
    label_column: str = "label"    # and the label's (0..C-1 or names), also of a numeric .csv
    max_length: int | None = None  # tokens per text at most (text files: default 128)

    def __post_init__(self) -> None:
        for key in ("text_column", "label_column"):
            if not isinstance(getattr(self, key), str) or not getattr(self, key):
                raise ValueError(f"Expected `data.{key}` to be a column name, got "
                                 f"{getattr(self, key)!r}.")
        if self.max_length is not None:
            check_positive_int(self.max_length, "data.max_length", minimum=3)
        if not isinstance(self.dataset, str):
            raise ValueError(f"Expected `data.dataset` to be a name or a source, got "
                             f"{self.dataset!r}.")
        if not is_data_source(self.dataset):
            _check_name(self.dataset, DATASETS, "data.dataset")
        elif not self.dataset.endswith((".npz", ".pt", *TEXT_FILE_SUFFIXES)):  # "pkg.mod:fn"
            check_own_factory(self.dataset, "data.dataset")


@dataclass(frozen=True)
class ModelConfig:
    """The architecture to train: the dataset's default, or ``factory = "package.module:function"``.

    The factory string is resolved only as a module path and an attribute name
    (``importlib.import_module`` then ``getattr``); nothing in a config is ever
    evaluated as code. The function is called with ``kwargs`` and must return
    an ``nn.Module`` mapping the dataset's inputs to logits. With
    ``checkpoint`` (a ``.safetensors`` or weights-only ``.pt`` file) the dense
    model is loaded into that architecture instead of trained.

    ``pretrained = "hf:FOLDER"`` (or, at the config's top level, ``model =
    "hf:FOLDER"``) is a sequence classifier and its tokenizer saved with
    ``save_pretrained``: the dense model is loaded from the folder
    (``AutoModelForSequenceClassification``, ``local_files_only=True``),
    wrapped by :class:`xprune.models.HFTextClassifier`, and a text file's
    sentences are tokenized by the folder's tokenizer. The other-seed control
    is then that model trained further with seed + 1.
    """

    factory: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    pretrained: str | None = None  # "hf:FOLDER": a save_pretrained model and tokenizer
    onnx: str | None = None  # `model = "onnx:PATH"`: a trained model exported to ONNX

    def __post_init__(self) -> None:
        if self.pretrained is not None:
            if not isinstance(self.pretrained, str) or not self.pretrained.removeprefix("hf:"):
                raise ValueError(f"Expected `model` / `model.pretrained` to be \"hf:FOLDER\" (a "
                                 f"folder written by save_pretrained), got {self.pretrained!r}.")
            if self.factory is not None or self.checkpoint is not None or self.onnx is not None:
                raise ValueError("Expected either `model.pretrained` or `model.factory` / "
                                 "`model.checkpoint` / \"onnx:PATH\", not both: a pretrained "
                                 "folder holds its architecture and weights.")
        if self.onnx is not None:
            if not isinstance(self.onnx, str) or not self.onnx:
                raise ValueError(f"Expected `model` = \"onnx:PATH\" to name a file, got "
                                 f"{self.onnx!r}.")
            if self.factory is not None or self.checkpoint is not None or self.kwargs:
                raise ValueError("Expected either `model` = \"onnx:PATH\" or a [model] table "
                                 "with `factory`/`checkpoint`, got both.")
        if self.checkpoint is not None and not isinstance(self.checkpoint, str):
            raise ValueError(f"Expected `model.checkpoint` to be a file path, got "
                             f"{self.checkpoint!r}.")
        if self.factory is not None:
            check_own_factory(self.factory, "model.factory")
        if not isinstance(self.kwargs, dict):
            raise ValueError(f"Expected `model.kwargs` to be a table, got {self.kwargs!r}.")

    @property
    def pretrained_path(self) -> str | None:
        """The folder of ``pretrained`` without its ``"hf:"`` prefix (None if not set)."""
        return None if self.pretrained is None else self.pretrained.removeprefix("hf:")

    def resolve(self):
        """The factory function (``None`` for the dataset's default architecture); for an
        ONNX model, a function returning a copy of its architecture with every layer
        re-initialised (the run loads the trained weights itself)."""
        if self.onnx is not None:
            from .checkpoint import load_onnx

            return lambda: reinitialised(load_onnx(self.onnx))
        return None if self.factory is None else resolve_factory(self.factory, "model.factory")


def reinitialised(model):
    """A copy of ``model`` with every layer re-initialised by its own ``reset_parameters``
    (in module order, so the global seed fixes the weights)."""
    import copy

    import torch

    fresh = copy.deepcopy(model).cpu()
    with torch.no_grad():
        for module in fresh.modules():
            reset = getattr(module, "reset_parameters", None) or getattr(
                module, "_reset_parameters", None)
            if callable(reset):
                reset()
    return fresh


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    lr: float = 3e-3
    batch_size: int = 64

    def __post_init__(self) -> None:
        check_positive_int(self.epochs, "train.epochs")
        check_positive_int(self.batch_size, "train.batch_size")
        _check_positive_number(self.lr, "train.lr")


@dataclass(frozen=True)
class _VariantFields:
    """The keys that describe one pruning variant (shared by a variant and the config's top level)."""

    method: str = "l1_unstructured"
    scope: str = "global"
    schedule: str = "one_shot"
    steps: int = 5
    max_layer_sparsity: float | None = None
    options: dict[str, Any] = field(default_factory=dict)
    layers: str | tuple[str, ...] | None = None  # glob patterns / type names (prune's `layers`)
    exclude: str | tuple[str, ...] | None = None
    n_m: tuple[int, int] | None = None  # semi-structured N:M, e.g. [2, 4] (prune's `n_m`)


@dataclass(frozen=True)
class PruningVariant(_VariantFields):
    """One way of making the sparse models: a method, its scope, schedule and options.

    ``label`` names the variant in tables and figures (default: the method,
    with ``-layer`` for layer-wise scope and the schedule when not one-shot).
    """

    label: str | None = None

    def __post_init__(self) -> None:
        _check_name(self.method, PRUNING_METHODS, "pruning.method")
        if self.scope not in ("global", "layer"):
            raise ValueError(f"Expected `pruning.scope` to be 'global' or 'layer', "
                             f"got {self.scope!r}.")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"Expected `pruning.schedule` in {SCHEDULES}, got {self.schedule!r}.")
        if self.schedule != "one_shot" and self.method not in MONOTONE_METHODS:
            raise ValueError(f"Expected a method in {MONOTONE_METHODS} for schedule "
                             f"{self.schedule!r}, got {self.method!r}.")
        check_positive_int(self.steps, "pruning.steps")
        for key in ("layers", "exclude"):
            value = getattr(self, key)
            if isinstance(value, list):
                value = tuple(value)
                object.__setattr__(self, key, value)
            items = (value,) if isinstance(value, str) else value
            if value is not None and (not isinstance(items, tuple) or not items or not all(
                    isinstance(p, str) and p for p in items)):
                raise ValueError(f"Expected `pruning.{key}` to be a glob pattern over module "
                                 f"names or a module type name (e.g. \"encoder.*\", "
                                 f"\"Linear\"), or a list of them, got {value!r}.")
        if self.max_layer_sparsity is not None:
            check_fraction(self.max_layer_sparsity, "pruning.max_layer_sparsity",
                           high_inclusive=True)
        if self.n_m is not None:
            from .pruning import check_n_m

            try:
                object.__setattr__(self, "n_m", check_n_m(self.n_m))
            except ValueError as err:
                raise ValueError(str(err).replace("`n_m`", "`pruning.n_m`")) from None
            if not PRUNING_METHODS[self.method].supports_n_m or self.schedule != "one_shot":
                raise ValueError(f"Expected a one-shot weight-ranking method with `pruning.n_m`, "
                                 f"got method {self.method!r}, schedule {self.schedule!r}.")
        allowed = PRUNING_METHODS[self.method].options
        unknown = sorted(set(self.options) - set(allowed))
        if unknown:
            raise ValueError(f"Unknown option(s) {unknown} for pruning method {self.method!r}; "
                             f"expected some of {sorted(allowed)}.")
        if any(self.options.get(k) is not None for k in ("theta", "channel_ratio", "n_layers")):
            raise ValueError("A sweep over `pruning.sparsities` sets each model's sparsity: drop "
                             "the options `theta` / `channel_ratio` / `n_layers` (xprune finds "
                             "them).")

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        name = self.method + ("-layer" if self.scope == "layer" else "")
        name += f"-{self.n_m[0]}:{self.n_m[1]}" if self.n_m else ""
        return name + ("" if self.schedule == "one_shot" else f"-{self.schedule}")


_VARIANT_KEYS = tuple(f.name for f in dataclasses.fields(PruningVariant))


@dataclass(frozen=True)
class PruningConfig(_VariantFields):
    """How the sparse models are made.

    The top-level keys describe one variant. ``methods`` (``[[pruning.methods]]``
    tables in TOML) lists several variants to compare at the same sparsities;
    each table overrides the top-level keys. Every variant is pruned to every
    sparsity in ``sparsities`` and fine-tuned for ``finetune_epochs`` (split
    over the steps of a schedule). Data-driven methods use the first
    ``reference_samples`` training samples.

    ``checkpoints`` compares models pruned elsewhere instead: each entry is
    a path, or a table with ``path``, ``label`` and, for a structurally
    smaller model, its own ``factory`` and ``kwargs``. Nothing is then pruned
    or fine-tuned; sparsity is measured against the dense model.
    """

    methods: tuple[dict[str, Any], ...] = ()
    sparsities: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95)
    finetune_epochs: int = 5
    finetune_lr: float = 1e-3
    reference_samples: int = 256
    checkpoints: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        for key, example in (("sparsities", "[0.5, 0.9]"), ("checkpoints", '["sparse.pt"]'),
                             ("methods", '[{method = "random_unstructured"}]')):
            value = getattr(self, key)
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"Expected `pruning.{key}` to be a list, e.g. {key} = "
                                 f"{example}, got {value!r}"
                                 + (f"; write [{value!r}]." if key == "sparsities" else "."))
        object.__setattr__(self, "checkpoints", tuple(self.checkpoints))
        for i, entry in enumerate(self.checkpoints):
            table = {"path": entry} if isinstance(entry, str) else entry
            if not isinstance(table, dict) or not isinstance(table.get("path"), str) or \
                    set(table) - {"path", "label", "factory", "kwargs"}:
                raise ValueError(f"Expected `pruning.checkpoints[{i}]` to be a path or a table "
                                 f"with `path` (and optional `label`, `factory`, `kwargs`), "
                                 f"got {entry!r}.")
            ModelConfig(factory=table.get("factory"), kwargs=table.get("kwargs", {}))
        object.__setattr__(self, "sparsities", tuple(self.sparsities))
        object.__setattr__(self, "methods", tuple(self.methods))
        if not self.sparsities:
            raise ValueError("Expected `pruning.sparsities` to list at least one sparsity, got [].")
        for s in self.sparsities:
            check_fraction(s, "pruning.sparsities[i]")
        if len(set(self.sparsities)) != len(self.sparsities):
            raise ValueError(f"Expected distinct `pruning.sparsities`, got {list(self.sparsities)}.")
        check_positive_int(self.finetune_epochs, "pruning.finetune_epochs", minimum=0)
        check_positive_int(self.reference_samples, "pruning.reference_samples")
        _check_positive_number(self.finetune_lr, "pruning.finetune_lr")
        for v in self.variants():
            if v.n_m and any(abs(s - (1 - v.n_m[0] / v.n_m[1])) > 1e-9 for s in self.sparsities):
                raise ValueError(f"Expected `pruning.sparsities` = [{1 - v.n_m[0] / v.n_m[1]}] "
                                 f"with `n_m` = {list(v.n_m)} (N:M fixes the sparsity), got "
                                 f"{list(self.sparsities)}.")
        names = [v.name for v in self.variants()]
        if len(set(names)) != len(names):
            raise ValueError(f"Expected distinct pruning variants, got labels {names}: give "
                             "repeated ones a `label`.")

    def variants(self) -> list[PruningVariant]:
        """The pruning variants this config compares (one unless ``methods`` is given)."""
        base = {k: getattr(self, k) for k in _VARIANT_KEYS if k != "label"}
        if not self.methods:
            return [PruningVariant(**base)]
        out = []
        for i, entry in enumerate(self.methods):
            if not isinstance(entry, dict):
                raise ValueError(f"Expected `pruning.methods[{i}]` to be a table, got {entry!r}.")
            unknown = sorted(set(entry) - set(_VARIANT_KEYS))
            if unknown:
                raise ValueError(f"Unknown key(s) {unknown} in `pruning.methods[{i}]`; expected "
                                 f"some of {list(_VARIANT_KEYS)}.")
            out.append(PruningVariant(**{**base, **entry}))
        return out


@dataclass(frozen=True)
class ControlsConfig:
    """Reference levels for agreement: what two maps agree to without pruning."""

    other_seed: bool = True
    finetune: bool = True

    def __post_init__(self) -> None:
        for key in ("other_seed", "finetune"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"Expected `controls.{key}` to be true or false, got "
                                 f"{getattr(self, key)!r}.")


def _default_attribution_params() -> dict[str, dict[str, Any]]:
    return {"integrated_gradients": {"n_steps": 16}}


@dataclass(frozen=True)
class AttributionConfig:
    """Which Captum methods explain every model, and with what parameters.

    ``params`` maps a method name to its parameters (the fields of its spec,
    e.g. ``[attribution.params.integrated_gradients] n_steps = 32``); methods
    not named there use their defaults. Maps explain ``output`` ("logit" or
    "probability") of the dense model's predicted class.
    """

    methods: tuple[str, ...] = ("saliency", "integrated_gradients")
    n_samples: int = 256
    params: dict[str, dict[str, Any]] = field(default_factory=_default_attribution_params)
    output: str = "logit"
    max_rows: int = 4096

    def __post_init__(self) -> None:
        if isinstance(self.methods, str):
            raise ValueError(f"Expected `attribution.methods` to be a list of names, got "
                             f"{self.methods!r}; write [{self.methods!r}].")
        object.__setattr__(self, "methods", tuple(self.methods))
        if not self.methods:
            raise ValueError("Expected `attribution.methods` to list at least one method, got [].")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"Expected distinct `attribution.methods`, got {list(self.methods)}.")
        for method in self.methods:
            _check_name(method, ATTRIBUTION_METHODS, "attribution.methods")
        if not isinstance(self.params, dict):
            raise ValueError(f"Expected `attribution.params` to be a table of method tables, "
                             f"got {self.params!r}.")
        for method, values in self.params.items():
            _check_name(method, ATTRIBUTION_METHODS, "attribution.params")
            try:
                resolve_spec(method, values)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"In [attribution.params.{method}]: {exc}") from None
        if self.output not in ("logit", "probability"):
            raise ValueError(f"Expected `attribution.output` to be 'logit' or 'probability', "
                             f"got {self.output!r}.")
        check_positive_int(self.n_samples, "attribution.n_samples")
        check_positive_int(self.max_rows, "attribution.max_rows")

    def method_params(self, method: str) -> dict[str, Any]:
        """The configured parameters of ``method`` (empty for its defaults)."""
        return dict(self.params.get(method, {}))


def _check_name(name: str, registry, key: str) -> None:
    if name not in registry:
        raise ValueError(f"Expected `{key}` to name one of {sorted(registry)}, got {name!r}."
                         + closest_name(str(name), list(registry)))


# the default run scores every family: complexity, faithfulness, stability, agreement,
# randomisation (sanity checks)
DEFAULT_METRICS = ("gini_index", "entropy_complexity", "deletion_auc", "insertion_auc",
                   "faithfulness_correlation", "infidelity", "max_sensitivity",
                   "avg_sensitivity", "spearman", "kendall_tau", "cosine_similarity",
                   "top_k_intersection", "ssim", "model_parameter_randomisation",
                   "random_logit")

# arguments xprune supplies itself: never set through [metrics.params]
_SUPPLIED = {"model", "inputs", "attributions", "target", "explain_fn", "attribute_fn", "a",
             "b", "generator", "max_rows"}


@dataclass(frozen=True)
class MetricsConfig:
    """Which registered metrics a run computes, and their parameters.

    ``names`` lists metrics by their registry name (``xprune list``); default:
    one or more of every family (:data:`DEFAULT_METRICS`, SSIM for images
    only). Agreement metrics are computed for the models compared with the
    dense one; image-only metrics (SSIM, ROAD) named for tabular data are an
    error before any training. ``params`` maps a metric name to keyword
    arguments of its function, e.g. ``[metrics.params.local_lipschitz_estimate]
    n_samples = 20``. ``versus_random`` names model-based metrics that are also
    reported minus their score under a random ranking (metric name
    ``<name>@vs_random``, see :func:`xprune.metrics.controls.versus_random`).
    With ``foreground`` every agreement metric but SSIM is also computed over
    the features where the input is nonzero only (``<name>@foreground``, see
    :func:`xprune.metrics.on_features`). ``removal`` says what a feature is for every
    metric that removes features (deletion, insertion, faithfulness correlation,
    sensitivity-n, AOPC, ROAD, monotonicity, ...): a table naming a unit of
    :data:`xprune.metrics._removal.REMOVAL_UNITS`, e.g. ``{unit = "patch",
    frequency_bins = 8, frames = 4}`` for time-frequency patches of spectrograms
    (``{unit = "segment", samples = 160}`` for waveforms); default: each kind's
    single feature (a column, pixel, token or time-frequency bin). The other keys are
    shorthands for the most used parameters; an explicit ``params`` entry wins over them
    (``removal`` too, as a table in ``[metrics.params.<name>]``).
    """

    names: list[str] | None = None
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    versus_random: list[str] = field(default_factory=lambda: ["deletion_auc"])
    foreground: bool = True
    top_k: float = 0.1
    deletion_steps: int | None = None
    faithfulness_subset_size: int | None = None
    faithfulness_runs: int = 100
    sensitivity_radius: float = 0.1
    sensitivity_samples: int = 10
    removal: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.names is not None and (not isinstance(self.names, list) or not self.names):
            raise ValueError(f"Expected `metrics.names` to be a non-empty list of metric "
                             f"names, got {self.names!r}.")
        # names from the peer tools (pixel_flipping, Sparseness, ...) become xprune's own
        for key in ("names", "versus_random", "params"):
            value = getattr(self, key)
            if isinstance(value, (list, dict)):
                canonical = [canon(n) for n in value]
                for n, c in zip(value, canonical, strict=True):
                    if c not in METRICS:
                        raise ValueError(f"Expected `metrics.{key}` to name one of "
                                         f"{sorted(METRICS)}, got {n!r}."
                                         + unknown_metric_hint(n))
                object.__setattr__(self, key, canonical if isinstance(value, list) else
                                   dict(zip(canonical, value.values(), strict=True)))
        for name in self.names or []:
            _check_name(name, METRICS, "metrics.names")
        if self.names is not None and len(set(self.names)) != len(self.names):
            raise ValueError(f"Expected distinct `metrics.names`, got {self.names!r}.")
        if not isinstance(self.versus_random, list):
            raise ValueError(f"Expected `metrics.versus_random` to be a list of metric names, "
                             f"got {self.versus_random!r}.")
        for name in self.versus_random:
            _check_name(name, METRICS, "metrics.versus_random")
            if METRICS[name].kind != "model":
                raise ValueError(f"Expected `metrics.versus_random` to name model-based "
                                 f"metrics such as 'deletion_auc', got {name!r} (kind "
                                 f"{METRICS[name].kind!r}).")
        if not isinstance(self.params, dict):
            raise ValueError(f"Expected `metrics.params` to be a table of metric tables, "
                             f"got {self.params!r}.")
        for name, values in self.params.items():
            _check_name(name, METRICS, "metrics.params")
            if not isinstance(values, dict):
                raise ValueError(f"Expected [metrics.params.{name}] to be a table, got "
                                 f"{values!r}.")
            accepted = [p for p in inspect.signature(METRICS[name].fn).parameters
                        if p not in _SUPPLIED and
                        inspect.signature(METRICS[name].fn).parameters[p].kind
                        == inspect.Parameter.KEYWORD_ONLY]
            for key in values:
                if key not in accepted:
                    raise ValueError(f"Unknown key `{key}` in [metrics.params.{name}]; "
                                     f"expected one of {sorted(accepted)}."
                                     + closest_name(key, accepted))
        if not isinstance(self.foreground, bool):
            raise ValueError(f"Expected `metrics.foreground` to be true or false, got "
                             f"{self.foreground!r}.")
        check_fraction(self.top_k, "metrics.top_k", high_inclusive=True)
        if self.top_k == 0:
            raise ValueError("Expected `metrics.top_k` in (0, 1], got 0.")
        check_positive_int(self.faithfulness_runs, "metrics.faithfulness_runs", minimum=2)
        check_positive_int(self.sensitivity_samples, "metrics.sensitivity_samples")
        _check_positive_number(self.sensitivity_radius, "metrics.sensitivity_radius")
        for key in ("deletion_steps", "faithfulness_subset_size"):
            if getattr(self, key) is not None:
                check_positive_int(getattr(self, key), f"metrics.{key}")
        if self.removal is not None:
            removal_from_spec(self.removal, "metrics.removal")
        for name, values in self.params.items():
            if isinstance(values.get("removal"), dict):
                removal_from_spec(values["removal"], f"metrics.params.{name}.removal")

    def removal_operator(self):
        """The removal operator ``removal`` names (:func:`xprune.metrics._removal.
        removal_from_spec`), None for each kind's default."""
        return None if self.removal is None else removal_from_spec(self.removal,
                                                                   "metrics.removal")

    def resolved_names(self, images: bool, tokens: bool = False) -> list[str]:
        """The metrics to compute for image (``images=True``) or other inputs.

        Without ``names``: the default set, with the image-only metrics (SSIM)
        for images only, and for token ids (``tokens=True``: integer inputs)
        without the metrics that add continuous noise to the inputs
        (:data:`CONTINUOUS_NOISE`). Named image-only metrics for other inputs,
        and named continuous-noise metrics for token ids, are an error.

        Raises
        ------
        ValueError
            If ``names`` asks for an image-only metric and the inputs are not images,
            or for a continuous-noise metric and the inputs are token ids.
        """
        if self.names is None:
            return default_metric_names(DEFAULT_METRICS, images=images, tokens=tokens)
        if not images:
            bad = [n for n in self.names if METRICS[n].images_only]
            if bad:
                raise ValueError(f"Expected metrics defined for these inputs: {bad} need images "
                                 f"(N, C, H, W); remove them from `metrics.names`.")
        if tokens:
            bad = [n for n in self.names if n in CONTINUOUS_NOISE]
            if bad:
                raise ValueError(f"Expected metrics defined for token ids: {bad} add continuous "
                                 f"noise to the inputs, which token ids cannot take; remove them "
                                 f"from `metrics.names` (max_sensitivity and avg_sensitivity "
                                 f"substitute tokens instead).")
        return list(self.names)

    def metric_params(self, name: str, n_features: int) -> dict[str, Any]:
        """Keyword arguments for metric ``name`` on maps of ``n_features`` features."""
        shorthand = {
            "top_k_intersection": {"k": max(1, round(self.top_k * n_features))},
            "top_k_mass": {"k": max(1, round(self.top_k * n_features))},
            "token_f1": {"k": max(1, round(self.top_k * n_features))},
            "token_iou": {"k": max(1, round(self.top_k * n_features))},
            "deletion_auc": {"steps": self.deletion_steps},
            "insertion_auc": {"steps": self.deletion_steps},
            "faithfulness_correlation": {"subset_size": self.faithfulness_subset_size,
                                         "n_runs": self.faithfulness_runs},
            "infidelity": {"normalize": True},
            "max_sensitivity": {"radius": self.sensitivity_radius,
                                "n_samples": self.sensitivity_samples},
            "avg_sensitivity": {"radius": self.sensitivity_radius,
                                "n_samples": self.sensitivity_samples},
        }.get(name, {})
        if self.removal is not None and "removal" in inspect.signature(
                METRICS[name].fn).parameters:
            shorthand["removal"] = self.removal_operator()
        params = {**shorthand, **self.params.get(name, {})}
        if isinstance(params.get("removal"), dict):   # a table in [metrics.params.<name>]
            params["removal"] = removal_from_spec(params["removal"],
                                                  f"metrics.params.{name}.removal")
        return params


# metrics that perturb the inputs with continuous noise: token ids cannot take it (max- and
# avg-sensitivity substitute tokens instead, xprune.metrics.substitute_tokens). Read from the
# metrics' own flag, which is also what makes their functions refuse token ids.
CONTINUOUS_NOISE = frozenset(name for name, info in METRICS.items() if info.continuous_noise)

# the ERASER rationale metrics (DeYoung et al. 2020, 'ERASER: A benchmark to evaluate rationalized
# NLP models', ACL) and leave-one-out tau, made for token inputs: in a default set for token ids
# only (named, they score any input)
TOKEN_METRICS = frozenset({"comprehensiveness", "sufficiency", "normalised_comprehensiveness",
                           "normalised_sufficiency", "tau_loo"})


def default_metric_names(candidates: Iterable[str], *, images: bool, tokens: bool) -> list[str]:
    """The metrics of ``candidates`` a default set computes for one kind of input.

    The one rule for every default (analysis configs without ``metrics.names``,
    ``xprune score`` without ``--metrics``): image-only metrics (SSIM, ROAD)
    for images (N, C, H, W) only; the token metrics (:data:`TOKEN_METRICS`:
    comprehensiveness, sufficiency, their normalised forms, tau-LOO) for token
    ids only; the continuous-noise metrics (:data:`CONTINUOUS_NOISE`) for all
    but token ids. Order follows ``candidates``.
    """
    return [n for n in candidates
            if (images or not METRICS[n].images_only)
            and (tokens or n not in TOKEN_METRICS)
            and not (tokens and n in CONTINUOUS_NOISE)]


@dataclass(frozen=True)
class RayConfig:
    """Resources of one grid cell as a Ray task (``xprune run --executor ray``).

    ``num_cpus`` and ``num_gpus`` are Ray's per-task resource requests (a
    fraction shares a GPU between cells); ``max_retries`` how often a cell
    whose worker died or raised is run again (with the same numbers: a cell
    is seeded from the run seed and the metric names only).
    """

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    max_retries: int = 3

    def __post_init__(self) -> None:
        for key in ("num_cpus", "num_gpus"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"Expected `ray.{key}` to be a number >= 0, got {value!r}.")
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int) \
                or self.max_retries < 0:
            raise ValueError(f"Expected `ray.max_retries` to be an integer >= 0, got "
                             f"{self.max_retries!r}.")


@dataclass(frozen=True)
class ReportConfig:
    n_examples: int = 8
    latency_batch: int = 256

    def __post_init__(self) -> None:
        check_positive_int(self.n_examples, "report.n_examples")
        check_positive_int(self.latency_batch, "report.latency_batch")


def _check_positive_number(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 \
            or value != value or value == float("inf"):
        raise ValueError(f"Expected `{name}` to be a positive number, got {value!r}.")


# numpy's and scikit-learn's random states take seeds below 2**32 (a run seeds all three)
MAX_SEED = 2**32 - 1


def _is_seed(value: object) -> bool:
    """Whether ``value`` is a seed every generator of a run accepts: an int in [0, MAX_SEED].

    A run seeds torch, numpy and scikit-learn (the split's ``random_state``),
    the last two of which refuse seeds of 2**32 and above; a larger seed would
    fail with "Overflow when unpacking long long" deep inside torch.
    """
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SEED


@dataclass(frozen=True)
class AnalysisConfig:
    """A whole analysis: data, training, pruning, controls, attribution, metrics, report.

    ``seeds`` (optional) lists training seeds: ``xprune run`` then runs the
    analysis once per seed and summarises across them (see
    :func:`xprune.analysis.run_seeds`); ``seed`` is the seed of a single run.
    """

    name: str = "digits"
    seed: int = 0
    seeds: list[int] | None = None
    device: str = "cpu"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pruning: PruningConfig = field(default_factory=PruningConfig)
    controls: ControlsConfig = field(default_factory=ControlsConfig)
    attribution: AttributionConfig = field(default_factory=AttributionConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def __post_init__(self) -> None:
        if not self.name or any(c in self.name for c in "/\\") or self.name.startswith("."):
            raise ValueError(f"Expected `name` to be a plain directory name, got {self.name!r}.")
        if not _is_seed(self.seed):
            raise ValueError(f"Expected `seed` to be an integer in [0, {MAX_SEED}], got "
                             f"{self.seed!r}.")
        if self.seeds is not None and (
                not isinstance(self.seeds, list) or not self.seeds
                or len(set(self.seeds)) != len(self.seeds)
                or not all(_is_seed(s) for s in self.seeds)):
            raise ValueError(f"Expected `seeds` to be a list of distinct integers in "
                             f"[0, {MAX_SEED}], got {self.seeds!r}.")
        check_device(self.device)

    def to_dict(self) -> dict[str, Any]:
        """The resolved configuration as plain data (JSON-serialisable)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnalysisConfig:
        """Build from nested mappings; unknown sections or keys raise ``ValueError``.

        ``model = "hf:FOLDER"`` (a string instead of the ``[model]`` table) is
        short for ``[model] pretrained = "hf:FOLDER"``."""
        model = data.get("model") if isinstance(data, dict) else None
        if isinstance(model, str):  # "onnx:PATH", or "hf:FOLDER" for a pretrained folder
            if not model.startswith(("onnx:", "hf:")):
                raise ValueError(f"Expected `model` to be a [model] table, \"hf:FOLDER\" or "
                                 f"\"onnx:PATH\", got {model!r}.")
            data = {**data, "model": {"onnx": model[len("onnx:"):]} if model.startswith("onnx:")
                    else {"pretrained": model}}
        return _build(cls, data, "the config's top level")

    def replace(self, **changes: Any) -> AnalysisConfig:
        return dataclasses.replace(self, **changes)


def _build(cls, data: Any, where: str):
    if not isinstance(data, dict):
        raise ValueError(f"Expected `{where}` to be a table of keys, got {data!r}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ValueError(f"Unknown key `{key}` in {where}; expected one of "
                             f"{sorted(fields)}." + closest_name(key, fields))
        default = fields[key].default_factory if fields[key].default_factory \
            is not dataclasses.MISSING else None
        if default is not None and dataclasses.is_dataclass(default):
            kwargs[key] = _build(default, value, f"[{key}]")
        else:
            kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:  # wrong value types caught by dataclass validation
        raise ValueError(f"Invalid value in {where}: {exc}") from None


def load_config(path: str | Path | None = None) -> AnalysisConfig:
    """Read an analysis config from TOML; ``None`` gives the embedded digits default.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the TOML is malformed or names unknown keys or invalid values.
    """
    if path is None:
        return AnalysisConfig()
    path = Path(path)
    data = read_toml(path)
    for key in data:
        if key not in {f.name for f in dataclasses.fields(AnalysisConfig)} \
                and closest_name(key, ["reproduction"]):
            raise ValueError(f"Unknown key `{key}` in {path}: did you mean 'reproduction' "
                             "(a reproduction config)?")
    data.setdefault("name", path.stem)
    _resolve_paths(data, path.parent)
    return AnalysisConfig.from_dict(data)


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    """Make checkpoint paths in a config file relative to the file's folder."""
    def resolve(p: Any) -> Any:
        return str((base / p).resolve()) if isinstance(p, str) else p

    model = data.get("model")
    if isinstance(model, str) and model.startswith("onnx:"):
        data["model"] = "onnx:" + resolve(model[len("onnx:"):])
    if isinstance(model, dict) and "checkpoint" in model:
        model["checkpoint"] = resolve(model["checkpoint"])
    pretrained = model if isinstance(model, str) and not model.startswith("onnx:") else \
        model.get("pretrained") if isinstance(model, dict) else None
    if isinstance(pretrained, str) and pretrained.removeprefix("hf:"):
        folder = "hf:" + resolve(pretrained.removeprefix("hf:"))
        if isinstance(model, str):
            data["model"] = folder
        else:
            model["pretrained"] = folder
    source = data.get("data")
    if isinstance(source, dict) and isinstance(source.get("dataset"), str) \
            and source["dataset"].endswith((".npz", ".pt", *TEXT_FILE_SUFFIXES)):
        source["dataset"] = resolve(source["dataset"])
    pruning = data.get("pruning")
    if isinstance(pruning, dict) and isinstance(pruning.get("checkpoints"), list):
        pruning["checkpoints"] = [
            resolve(e) if isinstance(e, str)
            else {**e, "path": resolve(e.get("path"))} if isinstance(e, dict) else e
            for e in pruning["checkpoints"]]
