"""Run an analysis: train, prune, attribute, score, and write the run folder.

This module orchestrates; the numbers come from :mod:`xprune.pruning`,
:mod:`xprune.attribution` and :mod:`xprune.metrics`. :func:`run_analysis` is
a sequence of stages, each a function that can be called alone: data
(:func:`load_data`), train (:func:`train_dense`, :func:`train_controls`),
prune (:func:`prune_models`), :func:`describe_models`, attribute
(:func:`attribute_models`), score (:func:`score_models`) and write
(:func:`write_run`). A run folder holds the
tidy ``results.csv`` (one row per sample x model x attribution method x
metric), the model and layer tables, curves, example maps, timings, the
resolved config and package versions; :func:`xprune.report.render_report`
turns it into the report.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import math
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from . import metrics as M
from ._batches import first_rows
from ._cache import RunCache, code_digest
from ._io import atomic_write_text
from ._validation import check_positive_int, closest_name, is_token_ids
from ._version import __version__
from .attribution import Attributions, attribute, explainer
from .checkpoint import load_model, load_onnx
from .config import MAX_SEED, AnalysisConfig, ModelConfig, _is_seed
from .data import DatasetSplit, as_split, check_split, load_dataset
from .metrics._base import metric_seed
from .metrics._removal import check_removal_spec
from .metrics.controls import versus_random
from .models import (
    DigitsCNN,
    TabularMLP,
    TextTransformer,
    check_model,
    evaluate,
    load_hf_classifier,
    per_class,
    predict,
    train,
)
from .profiling import count_macs, measure_latency, storage_bytes
from .pruning import (
    ModelPair,
    fine_tune,
    layer_table,
    prune,
    prune_and_fine_tune,
    select_weights,
)
from .report import render_report
from .report.headline import chance_warning
from .report.seeds import render_seeds_report
from .report.tables import plural
from .stats import mean_ci, proportion_ci

__all__ = ["ModelRecord", "ModelTables", "RunResult", "attribute_models", "describe_models",
           "explained_count", "explained_truth",
           "load_data", "prune_models", "run_analysis", "run_seeds", "run_stages", "score_models",
           "train_controls", "train_dense", "write_run"]

RESULT_COLUMNS = ["model", "role", "pruning", "sparsity", "attribution", "metric", "sample",
                  "label", "target", "prediction", "value"]


@dataclass
class ModelRecord:
    """A model of the run: the dense original, a pruned twin, or a control."""

    tag: str
    role: str            # "dense", "sparse" or "control"
    pruning: str         # pruning method, or the control's kind
    sparsity: float      # requested sparsity (0 for dense and controls)
    model: nn.Module
    info: dict = field(default_factory=dict)


@dataclass
class RunResult:
    """What :func:`run_analysis` produced: the run folder and its main tables."""

    out_dir: Path
    results: pd.DataFrame
    models: pd.DataFrame
    report: Path | None = None


def _model_factory(data: DatasetSplit, config: AnalysisConfig) -> Callable[[], nn.Module]:
    """The configured architecture (a factory, or a ``pretrained`` Hugging Face folder), else
    the default: a small CNN for images, an MLP for tables, a small BERT for token ids."""
    if config.model.pretrained is not None:
        return lambda: load_hf_classifier(config.model.pretrained_path, n_classes=data.n_classes)
    factory = config.model.resolve()
    if factory is not None:
        try:  # tests/cases_s6/011-factory-kwargs.md: a misspelt key names the config table
            inspect.signature(factory).bind(**config.model.kwargs)
        except TypeError as exc:
            raise ValueError(f"Expected `model.kwargs` {dict(config.model.kwargs)} to fit "
                             f"`model.factory` {config.model.factory!r}"
                             f"{inspect.signature(factory)}: {exc}.") from None
        except ValueError:  # no signature to read (a builtin): the call itself will tell
            pass

        def build() -> nn.Module:
            model = factory(**config.model.kwargs)
            if not isinstance(model, nn.Module):
                raise ValueError(f"Expected `model.factory` {config.model.factory!r} to return an "
                                 f"nn.Module, got {type(model).__name__}.")
            return model
        return build
    shape = data.feature_shape
    if data.vocabulary is not None:  # token ids (N, T)
        return lambda: TextTransformer(len(data.vocabulary), data.n_classes, max_length=shape[0],
                                       pad_token_id=data.pad_token_id or 0)
    if len(shape) == 3:
        return lambda: DigitsCNN(n_classes=data.n_classes, in_channels=shape[0],
                                 image_shape=(shape[1], shape[2]))
    if len(shape) == 1:
        return lambda: TabularMLP(shape[0], n_classes=data.n_classes)
    raise ValueError(f"No default model for inputs of shape {shape} ({data.name!r}).")


def _train_set(data: DatasetSplit) -> tuple:
    """``(x, y)`` of the training split for :func:`xprune.models.train`: the tensors, or the
    split's stream of batches and None (read one batch at a time)."""
    return (data.x_train, data.y_train) if data.train_batches is None else (
        data.train_batches, None)


def _test_set(data: DatasetSplit) -> tuple:
    """``(x, y)`` of the test split for evaluation: the tensors, or its stream and None."""
    return (data.x_test, data.y_test) if data.test_batches is None else (data.test_batches,
                                                                           None)


def _seeded(factory: Callable[[], nn.Module], seed: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


def check_writable(out: Path) -> None:
    """Fail before any computation if the output directory cannot be written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise OSError(f"Cannot write to the output directory {out}: {exc.strerror or exc}") \
            from None


def _versions() -> dict[str, str]:
    # imported here only for their version numbers: no run needs them loaded earlier
    import captum
    import matplotlib
    import sklearn

    return {"xprune": __version__, "python": sys.version.split()[0],
            "platform": platform.platform(), "torch": torch.__version__,
            "captum": captum.__version__, "numpy": np.__version__, "pandas": pd.__version__,
            "scikit-learn": sklearn.__version__, "matplotlib": matplotlib.__version__,
            "code": code_digest()}


_metric_seed = metric_seed  # one seed per metric, shared by all models of a run


def _silent(msg: str) -> None:
    """A ``say`` that prints nothing."""


def _status(cache: RunCache, say: Callable[[str], None], key: str, what: str) -> None:
    say(f"{what} (stored, reused)" if cache.has(key) else what)


def _trainer(factory: Callable[[], nn.Module], config: AnalysisConfig, data: DatasetSplit,
             seed: int) -> Callable[[], tuple[nn.Module, dict]]:
    """A fresh model of ``factory`` trained with ``seed``: (model, info), for the store."""
    tc = config.train

    def compute():
        model = _seeded(factory, seed).to(config.device)
        res = train(model, *_train_set(data), epochs=tc.epochs, lr=tc.lr,
                    batch_size=tc.batch_size, seed=seed)
        return model, {"train_seconds": res.seconds, "seed": seed}
    return compute


def load_data(config: AnalysisConfig, data: object = None, *,
              say: Callable[[str], None] = _silent) -> DatasetSplit:
    """Stage "data": the configured dataset, split by the run's seed.

    ``data`` (optional) replaces ``config.data.dataset`` with data held in
    memory: a ``DatasetSplit``, tensors ``(x, y)`` (split by ``config.seed``
    and ``config.data``'s fractions) or a dict of splits (see
    :func:`xprune.data.as_split`). Refuses, before any training, metrics that
    the inputs cannot take (an image-only metric on tabular rows, a
    plausibility metric on data without a ground-truth rationale).

    Raises
    ------
    ValueError
        On an unknown dataset or a metric the inputs cannot take.
    TypeError
        For ``data`` of a kind not supported (yet), such as a DataLoader.
    FileNotFoundError
        If a data file does not exist.
    """
    split = dict(seed=config.seed, val_size=config.data.val_size,
                 test_size=config.data.test_size)
    dc = config.data
    text = {"tokenizer": config.model.pretrained_path, "text_column": dc.text_column,
            "label_column": dc.label_column, "max_length": dc.max_length}
    data = check_split(load_dataset(dc.dataset, text=text, **split) if data is None
                       else as_split(data, **split))
    say(f"{data.name}: {len(data.y_train)} train / {len(data.y_val)} validation / "
        f"{len(data.y_test)} test samples")
    names = config.metrics.resolved_names(images=data.x_test.dim() == 4,  # before training
                                          tokens=is_token_ids(data.x_test))
    need = [n for n in names if M.METRICS[n].kind == "rationale"]
    if need and data.rationale_test is None:
        raise ValueError(f"Expected `metrics.names` to name metrics the data {data.name!r} can "
                         f"score: {need} compare maps with a ground-truth rationale, which "
                         f"these data do not have (the generated 'vowels' and 'text' data do).")
    if config.metrics.removal is not None:  # before training: the unit fits the data
        check_removal_spec(config.metrics.removal, data.x_test[:1], data.kind, data.name)
    return data


def train_dense(config: AnalysisConfig, data: DatasetSplit, *, cache: RunCache,
                say: Callable[[str], None] = _silent,
                factory: Callable[[], nn.Module] | None = None) -> ModelRecord:
    """Stage "train": the dense model, trained with ``config.seed`` (or loaded from
    ``config.model.checkpoint``), on ``config.device``; reused from ``cache`` when stored.

    ``factory`` (optional) builds the architecture instead of ``config.model``.

    Before any training, the model is checked against the data
    (:func:`xprune.models.check_model`: finite weights, a forward of a batch,
    logits with a column per class), so a model that does not fit the data
    fails with a message naming the factory or checkpoint, the layer and the
    shapes."""
    own = factory is None
    factory = factory or _model_factory(data, config)
    what = (f"the checkpoint {config.model.checkpoint}" if config.model.checkpoint
            else f"the ONNX model {config.model.onnx}" if own and config.model.onnx
            else f"the pretrained folder {config.model.pretrained_path}"
            if own and config.model.pretrained
            else f"`model.factory` {config.model.factory!r}"
            if own and config.model.factory else "the model")
    if own and config.model.pretrained:  # a save_pretrained folder: used as it is
        say(f"loading the dense model from {config.model.pretrained}")
        dense, info = factory(), {}
        check_model(dense, data.x_train[:2], data.n_classes, what=what)
    elif own and config.model.onnx:  # trained elsewhere: used as it is
        say(f"loading the dense model from {config.model.onnx}")
        dense, info = load_onnx(config.model.onnx), {}
        check_model(dense, data.x_train[:2], data.n_classes, what=what)
    elif config.model.checkpoint:
        say(f"loading the dense model from {config.model.checkpoint}")
        dense, info = load_model(config.model.checkpoint, factory), {}
        check_model(dense, data.x_train[:2], data.n_classes, what=what)
    else:
        with torch.random.fork_rng(devices=[]):  # the run's random stream stays untouched
            check_model(factory(), data.x_train[:2], data.n_classes, what=what)
        _status(cache, say, "dense",
                f"training the dense model ({plural(config.train.epochs, 'epoch')})")
        dense, info = cache.model("dense", lambda info: factory(),
                                  _trainer(factory, config, data, config.seed))
    dense.to(config.device)
    return ModelRecord("dense", "dense", "", 0.0, dense, info)


def prune_models(config: AnalysisConfig, data: DatasetSplit, dense: nn.Module, *,
                 cache: RunCache, say: Callable[[str], None] = _silent,
                 factory: Callable[[], nn.Module] | None = None) -> list[ModelRecord]:
    """Stage "prune": the sparse twins of ``dense`` (not modified), one per pruning variant
    and sparsity, fine-tuned; or, with ``config.pruning.checkpoints``, the models pruned
    elsewhere, loaded and nothing pruned. Reused from ``cache`` when stored.

    ``factory`` (optional) builds the architecture instead of ``config.model``."""
    factory = factory or _model_factory(data, config)
    pc, dev = config.pruning, config.device
    records = []
    reference = (data.x_train[:pc.reference_samples], data.y_train[:pc.reference_samples]) \
        if data.train_batches is None else first_rows(data.train_batches, pc.reference_samples)
    for entry in pc.checkpoints:  # pruned elsewhere: compare only
        table = {"path": entry} if isinstance(entry, str) else entry
        own = ModelConfig(factory=table.get("factory"), kwargs=table.get("kwargs", {}))
        build = factory if own.factory is None else _model_factory(
            data, config.replace(model=own))
        say(f"loading a pruned model from {table['path']}")
        model = load_model(table["path"], build)
        check_model(model, data.x_train[:2], data.n_classes,
                    what=f"the pruned checkpoint {table['path']}")
        pair = ModelPair.from_models(dense, model)
        tag = table.get("label") or Path(table["path"]).stem
        records.append(ModelRecord(tag, "sparse", "external", round(pair.sparsity, 6),
                                   model.to(dev), {}))
    for variant in (pc.variants() if not pc.checkpoints else []):
        for s in pc.sparsities:
            tag = f"{variant.name}@{s:.2f}" if round(s, 2) == s else f"{variant.name}@{s:g}"
            _status(cache, say, tag,
                    f"pruning {tag} + {plural(pc.finetune_epochs, 'fine-tuning epoch')}")
            model, info = cache.model(
                tag, _sparse_template(dense, variant, float(s), reference, factory, config.seed),
                _sparse_compute(dense, variant, float(s), data, reference, config))
            records.append(ModelRecord(tag, "sparse", variant.name, float(s), model.to(dev),
                                       info))
    return records


def train_controls(config: AnalysisConfig, data: DatasetSplit, dense: nn.Module, *,
                   cache: RunCache, say: Callable[[str], None] = _silent,
                   factory: Callable[[], nn.Module] | None = None) -> list[ModelRecord]:
    """Part of stage "train": the controls of ``config.controls``: a dense model trained
    with seed ``config.seed + 1``, and ``dense`` (not modified) fine-tuned without pruning
    for as long as the pruned models. Reused from ``cache`` when stored.

    ``factory`` (optional) builds the architecture instead of ``config.model``."""
    factory = factory or _model_factory(data, config)
    tc, pc, dev = config.train, config.pruning, config.device
    records = []
    if config.controls.other_seed:
        _status(cache, say, "control-seed",
                "training the control: a dense model with another seed")
        model, info = cache.model("control-seed", lambda info: factory(),
                                  _trainer(factory, config, data, config.seed + 1))
        records.append(ModelRecord("control:other-seed", "control", "other-seed", 0.0,
                                   model.to(dev), info))
    if config.controls.finetune:
        def compute_ft():
            model = copy.deepcopy(dense)
            res = train(model, *_train_set(data), epochs=pc.finetune_epochs,
                        lr=pc.finetune_lr, batch_size=tc.batch_size, seed=config.seed)
            return model, {"finetune_seconds": res.seconds}

        _status(cache, say, "control-finetune",
                "training the control: the dense model fine-tuned without pruning")
        model, info = cache.model("control-finetune", lambda info: factory(), compute_ft)
        records.append(ModelRecord("control:finetune", "control", "finetune", 0.0,
                                   model.to(dev), info))
    return records


def _sparse_compute(dense, variant, amount, data, reference, config):
    """Prune ``dense`` to ``amount`` with ``variant`` and fine-tune; returns (model, info)."""
    pc, tc = config.pruning, config.train

    def compute():
        kwargs = _prune_kwargs(variant, reference, config.seed)
        if variant.schedule == "one_shot":
            pair = prune(dense, amount, **kwargs)
            pair = fine_tune(pair, *_train_set(data), epochs=pc.finetune_epochs,
                             lr=pc.finetune_lr, batch_size=tc.batch_size, seed=config.seed)
        else:
            pair = prune_and_fine_tune(dense, amount, *_train_set(data),
                                       schedule=variant.schedule, steps=variant.steps,
                                       epochs=pc.finetune_epochs, lr=pc.finetune_lr, **kwargs)
        info = {"finetune_seconds": pair.params["finetune_seconds"]}
        if pair.params.get("structured"):  # a smaller architecture: the store must rebuild it
            info["structured"] = True
            if "channel_ratio" in pair.params:
                info["channel_ratio"] = pair.params["channel_ratio"]
        return pair.sparse, info

    return compute


def _prune_kwargs(variant, reference, seed: int) -> dict:
    """The keyword arguments of :func:`xprune.prune` for a pruning ``variant``."""
    return dict(method=variant.method, scope=variant.scope, seed=seed,
                max_layer_sparsity=variant.max_layer_sparsity, data=reference,
                options=variant.options or None, layers=variant.layers,
                exclude=variant.exclude, **({"n_m": variant.n_m} if variant.n_m else {}))


def _sparse_template(dense, variant, amount, reference, factory, seed):
    """The architecture a stored sparse model loads into (smaller for structured pruning:
    channels, attention heads, blocks or recurrent units removed)."""

    def template(info):
        if not info.get("structured") and "channel_ratio" not in info:
            return factory()
        if "channel_ratio" not in info:  # heads, blocks, units: the same pruning, rerun
            return prune(dense, amount, **_prune_kwargs(variant, reference, seed)).sparse
        options = {**variant.options, "channel_ratio": info["channel_ratio"]}
        return prune(dense, method="structured", data=reference, seed=seed,
                     options=options, layers=variant.layers, exclude=variant.exclude).sparse

    return template


class ModelTables(NamedTuple):
    """The tables about the run's models (one row per model, layer or class)."""

    models: pd.DataFrame   # accuracy, calibration, sparsity, MACs, storage
    timings: pd.DataFrame  # training, fine-tuning and latency seconds
    layers: pd.DataFrame   # per layer: weights, nonzeros, sparsity
    classes: pd.DataFrame  # per class: support, recall, precision


def describe_models(records: list[ModelRecord], data: DatasetSplit, config: AnalysisConfig
                    ) -> ModelTables:
    """Per model: accuracy, calibration, weights, MACs and storage, counted against the dense model
    (``records[0]``), measured on the test split.

    Sparsity and compression compare each model's nonzero conv/linear weights
    with the dense model's total, so physically removed weights (structured
    pruning) count like zeroed ones. ``macs_dense`` is the dense model's MACs
    per sample; ``macs_nonzero`` this model's MACs counting nonzero weights only
    (real for a structurally smaller model, theoretical for zeroed weights).
    """
    rows, timing_rows, layer_frames, class_frames = [], [], [], []
    example = data.x_test[:1]
    dense_total = int(layer_table(records[0].model)["numel"].sum())
    selections = {v.name: select_weights(records[0].model, v.layers, v.exclude)
                  for v in config.pruning.variants()} if not config.pruning.checkpoints else {}
    dense_macs = count_macs(records[0].model, example)["dense"]
    labels = torch.as_tensor(data.y_test).long()   # chance: always the most frequent class
    chance = max(1 / data.n_classes, float(torch.bincount(labels).max()) / len(labels))
    for rec in records:
        ev = evaluate(rec.model, *_test_set(data))
        n = len(data.y_test)
        acc, lo, hi = proportion_ci(round(ev["accuracy"] * n), n)
        table = layer_table(rec.model)
        nnz = int(table["nonzeros"].sum())
        size = storage_bytes(rec.model)
        rows.append({
            "model": rec.tag, "role": rec.role, "pruning": rec.pruning,
            "requested_sparsity": rec.sparsity, "measured_sparsity": 1 - nnz / dense_total,
            "selected_sparsity": _selected_sparsity(records[0].model, rec.model,
                                                    selections.get(rec.pruning)),
            "structured": int(table["numel"].sum()) < dense_total,
            "accuracy": acc, "accuracy_ci_low": lo, "accuracy_ci_high": hi,
            "chance_accuracy": chance, "macro_recall": ev["macro_recall"], "ece": ev["ece"], "nll": ev["nll"],
            "total_weights": dense_total,
            "nonzero_weights": nnz, "compression_ratio": dense_total / nnz if nnz else math.inf,
            "macs_dense": dense_macs, "macs_nonzero": count_macs(rec.model, example)["nonzero"],
            "storage_dense_bytes": size["dense"], "storage_sparse_bytes": size["sparse"],
        })
        lat = measure_latency(rec.model, data.x_test[:config.report.latency_batch])
        timing_rows.append({"model": rec.tag,
                            "train_seconds": rec.info.get("train_seconds", math.nan),
                            "finetune_seconds": rec.info.get("finetune_seconds", math.nan),
                            **lat})
        layer_frames.append(table.assign(model=rec.tag))
        class_frames.append(pd.DataFrame(per_class(rec.model, *_test_set(data)))
                            .assign(model=rec.tag))
    layers = pd.concat(layer_frames, ignore_index=True)[
        ["model", "layer", "parameter", "numel", "nonzeros", "sparsity"]]
    classes = pd.concat(class_frames, ignore_index=True)[
        ["model", "class", "support", "recall", "precision"]]
    return ModelTables(pd.DataFrame(rows), pd.DataFrame(timing_rows), layers, classes)


def _selected_sparsity(dense, model, keys) -> float:
    """Sparsity over the weights a variant selected for pruning (all weights if none given)."""
    table = layer_table(model, keys)
    return 1 - int(table["nonzeros"].sum()) / int(layer_table(dense, keys)["numel"].sum())


def _call_metric(info: M.MetricInfo, args: tuple, params: dict, seed: int, max_rows: int
                 ) -> torch.Tensor:
    """Call a registered metric with its params, a per-metric generator and the row bound."""
    accepted = inspect.signature(info.fn).parameters
    kwargs = dict(params)
    if "generator" in accepted:
        kwargs["generator"] = torch.Generator().manual_seed(_metric_seed(seed, info.name))
    if "max_rows" in accepted:
        kwargs["max_rows"] = max_rows
    return info.fn(*args, **kwargs)


def _score_cell(rec: ModelRecord, method: str, attrs: Attributions, dense_attrs: Attributions,
                x: torch.Tensor, targets: torch.Tensor, config: AnalysisConfig,
                rationale: torch.Tensor | None = None
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every configured metric of one model's maps: {name: (N,) scores}, and its deletion and
    insertion curves ({"deletion": DeletionCurve, "insertion": DeletionCurve}).

    Metrics are called through the registry by their kind (see
    :class:`xprune.metrics.MetricInfo`); agreement metrics compare with the
    dense model's maps and are skipped for the dense model itself. Max- and
    avg-sensitivity with the same parameters share one set of noise draws.
    """
    mc, seed = config.metrics, config.seed
    model, max_rows = rec.model, config.attribution.max_rows
    d = M.feature_map(attrs.values).shape[1]
    ac = config.attribution
    explain = explainer(model, method, params=ac.method_params(method), output=ac.output,
                        max_rows=max_rows)

    def attribute_fn(m: nn.Module, inputs: torch.Tensor, target) -> torch.Tensor:
        return attribute(m, inputs, target, method, params=ac.method_params(method),
                         output=ac.output, max_rows=max_rows).values

    removal = mc.removal_operator()
    curves = {kind: fn(model, x, attrs, targets, steps=mc.deletion_steps, max_rows=max_rows,
                       removal=removal)
              for kind, fn in (("deletion", M.deletion_curve), ("insertion", M.insertion_curve))}
    scores: dict[str, torch.Tensor] = {}
    draws_memo: dict[str, torch.Tensor] = {}
    fg = M.foreground(x) if mc.foreground else None
    fg = None if fg is None or bool(fg.all()) else fg  # nothing at the baseline: no subset
    for name in mc.resolved_names(images=x.dim() == 4, tokens=is_token_ids(x)):
        info = M.METRICS[name]
        params = mc.metric_params(name, d)
        if info.kind == "pair":
            if rec.role == "dense":
                continue
            scores[name] = _call_metric(info, (dense_attrs, attrs), params, seed, max_rows)
            if fg is not None and name != "ssim":
                scores[f"{name}@foreground"] = M.on_features(info.fn, dense_attrs, attrs, fg,
                                                             **params)
        elif info.kind == "map":
            scores[name] = _call_metric(info, (attrs,), params, seed, max_rows)
        elif info.kind == "rationale":  # load_data checked that the data have one
            scores[name] = _call_metric(info, (attrs, rationale), params, seed, max_rows)
        elif name in ("deletion_auc", "insertion_auc") and set(params) - {"removal"} == {
                "steps"} and params["steps"] == mc.deletion_steps \
                and params.get("removal") == removal:  # the area under the stored curve
            curve = curves[name.split("_")[0]]
            scores[name] = torch.trapezoid(curve.values, curve.fractions, dim=1)
        elif info.kind == "model":
            scores[name] = _call_metric(info, (model, x, attrs, targets), params, seed,
                                        max_rows)
        elif name in ("max_sensitivity", "avg_sensitivity"):
            key = json.dumps(params, sort_keys=True)
            if key not in draws_memo:  # one set of draws for both
                draws_memo[key] = M.sensitivity_draws(
                    explain, x, targets, **params, max_rows=max_rows, attributions=attrs,
                    generator=torch.Generator().manual_seed(_metric_seed(seed, "sensitivity")))
            draws = draws_memo[key]
            scores[name] = draws.amax(dim=1) if name == "max_sensitivity" else draws.mean(dim=1)
        elif info.kind in ("explainer", "model_explainer"):  # the maps of x are attrs
            args = (explain, x, targets) if info.kind == "explainer" else (model, explain, x,
                                                                           targets)
            given = ({"attributions": attrs}
                     if "attributions" in inspect.signature(info.fn).parameters else {})
            scores[name] = _call_metric(info, args, {**params, **given}, seed, max_rows)
        elif info.kind == "randomisation":
            if rec.role == "control":  # a sanity check of the dense and pruned models only
                continue
            if name == "model_parameter_randomisation" and set(params) <= {"order"}:
                # keep the curve: one row per layer, "<name>@<k>:<layer>" (k re-initialised)
                layers = M.parameter_randomisation(
                    model, x, targets, attribute_fn, **params, attributions=attrs,
                    generator=torch.Generator().manual_seed(_metric_seed(seed, name)))
                scores[name] = layers.values.mean(dim=1)
                for k, layer in enumerate(layers.layers):
                    scores[f"{name}@{k + 1}:{layer}"] = layers.values[:, k]
                continue
            given = ({"attributions": attrs}
                     if "attributions" in inspect.signature(info.fn).parameters else {})
            scores[name] = _call_metric(info, (model, x, targets, attribute_fn),
                                        {**params, **given}, seed, max_rows)
        else:  # pragma: no cover - a registry entry of an unknown kind
            raise ValueError(f"Metric {name!r} has an unknown kind {info.kind!r}.")
    for name in mc.versus_random:
        params = mc.metric_params(name, d)
        if "max_rows" in inspect.signature(M.METRICS[name].fn).parameters:
            params["max_rows"] = max_rows
        scores[f"{name}@vs_random"] = versus_random(
            name, model, x, attrs, targets, **params,
            generator=torch.Generator().manual_seed(_metric_seed(seed, f"{name}@vs_random")))
    if attrs.delta is not None:
        scores["convergence_delta"] = attrs.delta.double().abs()
    return scores, curves


def _examples(records, attrs_by, methods, x, n_examples, rationale=None) -> pd.DataFrame:
    """Long table of the first ``n_examples`` maps (channels summed) and inputs, for figures;
    with the data's ground-truth rationale (N, *S), as model "rationale", where there is one."""
    if x.dim() < 3:
        return pd.DataFrame(columns=["attribution", "model", "sample", "row", "col", "value"])
    frames = []

    def add(values, attribution, model):
        maps = values[:n_examples].sum(dim=1).reshape(min(n_examples, len(values)), -1,
                                                       values.shape[-1])
        s, r, c = np.indices(maps.shape)
        frames.append(pd.DataFrame({"attribution": attribution, "model": model,
                                    "sample": s.ravel(), "row": r.ravel(), "col": c.ravel(),
                                    "value": maps.double().numpy().ravel()}))

    add(x, "", "input")
    if rationale is not None:
        add(rationale[:len(x)].unsqueeze(1).float(), "", "rationale")
    for method in methods:
        for rec in records:
            add(attrs_by[method, rec.tag].values, method, rec.tag)
    return pd.concat(frames, ignore_index=True)


def _token_examples(records, attrs_by, methods, x, vocabulary, n_examples) -> pd.DataFrame:
    """Long table of the first ``n_examples`` token maps, for the heat maps: one row per
    attribution method, model, sample and counted token (padding and special tokens left out),
    with the token's text and its value."""
    frames = []
    n = min(n_examples, len(x))
    for method in methods:
        for rec in records:
            a = attrs_by[method, rec.tag]
            keep = (torch.ones_like(x[:n], dtype=torch.bool) if a.feature_mask is None
                    else a.feature_mask[:n].bool())
            sample, position = keep.nonzero(as_tuple=True)
            ids = x[:n][sample, position]
            frames.append(pd.DataFrame({
                "attribution": method, "model": rec.tag, "sample": sample.numpy(),
                "position": position.numpy(),
                "token": [vocabulary[i] if 0 <= i < len(vocabulary) else f"[{i}]"
                          for i in ids.tolist()],
                "value": a.values[:n][sample, position].double().numpy()}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["attribution", "model", "sample", "position", "token", "value"])


def _importance(records, attrs_by, methods, feature_names) -> pd.DataFrame:
    """Mean |attribution| per feature with a 95% CI, per model and method, for tabular data."""
    rows = []
    for method in methods:
        for rec in records:
            values = attrs_by[method, rec.tag].values
            if values.dim() != 2:
                continue
            names = feature_names or [f"x{i}" for i in range(values.shape[1])]
            for j, name in enumerate(names):
                mean, lo, hi, _ = mean_ci(values[:, j].abs().double().numpy())
                rows.append({"attribution": method, "model": rec.tag, "feature": name,
                             "mean_abs": mean, "ci_low": lo, "ci_high": hi})
    return pd.DataFrame(rows, columns=["attribution", "model", "feature", "mean_abs", "ci_low",
                                       "ci_high"])


@dataclass
class _CellJob:
    """Everything one grid cell (a model's maps of one method) needs to be scored."""

    rec: ModelRecord
    method: str
    attrs: Attributions
    dense_attrs: Attributions
    labels: torch.Tensor
    config: AnalysisConfig
    rationale: torch.Tensor | None = None  # (N, *S) ground truth for plausibility metrics

    def __call__(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(per-sample scores in RESULT_COLUMNS, per-sample deletion and insertion curves)."""
        rec, attrs, x = self.rec, self.attrs, self.attrs.inputs
        scores, curves = _score_cell(rec, self.method, attrs, self.dense_attrs, x,
                                    attrs.targets, self.config, self.rationale)
        n = x.shape[0]
        table = pd.concat([pd.DataFrame({
            "model": rec.tag, "role": rec.role, "pruning": rec.pruning,
            "sparsity": rec.sparsity, "attribution": self.method, "metric": name,
            "sample": np.arange(n), "label": self.labels.numpy(),
            "target": attrs.targets.numpy(), "prediction": attrs.predictions.numpy(),
            "value": v.double().cpu().numpy()}) for name, v in scores.items()],
            ignore_index=True)[RESULT_COLUMNS]
        frames = []
        for kind, curve in curves.items():
            steps = curve.fractions.numel()
            frames.append(pd.DataFrame({
                "model": rec.tag, "attribution": self.method, "curve": kind,
                "sample": np.repeat(np.arange(n), steps),
                "fraction": np.tile(curve.fractions.numpy(), n),
                "value": curve.values.reshape(-1).numpy()}))
        return table, pd.concat(frames, ignore_index=True)


def _run_job(job: _CellJob, threads: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score one cell in a worker process with ``threads`` intra-op threads."""
    torch.set_num_threads(threads)
    return job()


EXECUTORS = ("local", "ray")


def _run_cells(jobs: list[_CellJob], keys: list[str], n_jobs: int, executor: str = "local",
               address: str | None = None):
    """Yield ``(key, frames)`` for every job as it finishes, for the caller to store.

    ``executor="local"``: in this process (``n_jobs == 1``) or in ``n_jobs``
    spawned processes; ``"ray"``: one Ray task per cell. Each cell is seeded
    from the run seed and metric names only, so its numbers do not depend on
    which process runs it, in what order, or on which attempt.
    """
    if executor == "ray":
        yield from _run_cells_ray(jobs, keys, address)
        return
    if n_jobs == 1 or len(jobs) <= 1:
        for key, job in zip(keys, jobs, strict=True):
            yield key, job()
        return
    import concurrent.futures
    import multiprocessing

    threads = max(1, torch.get_num_threads() // n_jobs)
    ctx = multiprocessing.get_context("spawn")  # no forked torch thread pools
    with concurrent.futures.ProcessPoolExecutor(max_workers=n_jobs, mp_context=ctx) as pool:
        futures = {pool.submit(_run_job, job, threads): key
                   for key, job in zip(keys, jobs, strict=True)}
        for fut in concurrent.futures.as_completed(futures):
            yield futures[fut], fut.result()


def import_ray():
    """The ``ray`` module, or a ValueError with the install hint."""
    try:
        import ray
    except ImportError:
        raise ValueError("The Ray executor needs Ray: pip install 'xprune[ray]'") from None
    return ray


def _ray_cell(job: _CellJob, inputs: torch.Tensor, dense_values: torch.Tensor,
              labels: torch.Tensor) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One cell in a Ray worker; the shared tensors arrive from the object store."""
    attrs = dataclasses.replace(job.attrs, inputs=inputs)
    dense = dataclasses.replace(job.dense_attrs, inputs=inputs, values=dense_values)
    return dataclasses.replace(job, attrs=attrs, dense_attrs=dense, labels=labels)()


def _run_cells_ray(jobs: list[_CellJob], keys: list[str], address: str | None):
    if not jobs:
        return
    ray = import_ray()
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    rc = jobs[0].config.ray
    task = ray.remote(_ray_cell).options(num_cpus=rc.num_cpus, num_gpus=rc.num_gpus,
                                         max_retries=rc.max_retries, retry_exceptions=True)
    # the evaluation inputs, labels and each method's dense maps go to the object store once
    inputs = ray.put(jobs[0].attrs.inputs)
    labels = ray.put(jobs[0].labels)
    dense = {}
    pending = {}
    for key, job in zip(keys, jobs, strict=True):
        if job.method not in dense:
            dense[job.method] = ray.put(job.dense_attrs.values)
        light = dataclasses.replace(
            job, attrs=dataclasses.replace(job.attrs, inputs=torch.empty(0)),
            dense_attrs=dataclasses.replace(job.dense_attrs, inputs=torch.empty(0),
                                            values=torch.empty(0)),
            labels=torch.empty(0, dtype=torch.long))
        pending[task.remote(light, inputs, dense[job.method], labels)] = key
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        key = pending.pop(done[0])
        try:
            yield key, ray.get(done[0])
        except Exception as exc:  # Ray wraps the worker's error; name the cell
            raise RuntimeError(f"Grid cell {key!r} failed on Ray after "
                               f"{rc.max_retries} retries: {exc}") from None


def attribute_models(config: AnalysisConfig, records: list[ModelRecord], data: DatasetSplit,
                     *, cache: RunCache, progress: bool = False
                     ) -> dict[tuple[str, str], Attributions]:
    """Stage "attribute": every model's maps of the first ``config.attribution.n_samples``
    test inputs, by every configured method; reused from ``cache`` when stored.

    All models explain the same class: the dense model's (``records[0]``)
    prediction. Returns ``{(method, model tag): Attributions}`` with values of
    the inputs' shape (N, *F) and each model's own predictions.
    """
    ac = config.attribution
    n_eval = explained_count(config, data)
    x = data.x_test[:n_eval]
    tokens = None if data.vocabulary is None and not data.special_token_ids else {  # masked:
        "pad_token_id": data.pad_token_id, "special_token_ids": data.special_token_ids}
    targets = predict(records[0].model, x).argmax(dim=1)  # the dense model's prediction, for all
    predictions = {rec.tag: predict(rec.model, x).argmax(dim=1) for rec in records}
    attrs_by: dict[tuple[str, str], Attributions] = {}
    cells = [(m, rec) for m in ac.methods for rec in records]
    bar = tqdm(cells, desc="attribute", unit="map", disable=not progress, file=sys.stderr,
               delay=2)  # shown for a stage that lasts over 2 s
    for method, rec in bar:  # dense first: every other cell compares with its maps
        bar.set_postfix_str(f"{method} / {rec.tag}")

        def compute_attr(rec=rec, method=method):
            a = attribute(rec.model, x, targets, method, params=ac.method_params(method),
                          output=ac.output, model_tag=rec.tag, max_rows=ac.max_rows,
                          device=config.device, tokens=tokens)
            out_t = {"values": a.values}
            if a.delta is not None:
                out_t["delta"] = a.delta
            if a.feature_mask is not None:  # token inputs: padding and special tokens
                out_t["feature_mask"] = a.feature_mask
            return out_t

        stored, _ = cache.tensors(f"attr-{method}-{rec.tag}", compute_attr)
        attrs_by[method, rec.tag] = Attributions(
            stored["values"], x, targets, method,
            {**ac.method_params(method), "output": ac.output}, rec.tag, stored.get("delta"),
            predictions[rec.tag], feature_mask=stored.get("feature_mask"), kind=data.kind)
    bar.close()
    return attrs_by


def explained_count(config: AnalysisConfig, data: DatasetSplit) -> int:
    """How many test inputs the run explains: ``config.attribution.n_samples``, or every
    test input where the test split is smaller (with a warning naming both counts; the
    run folder's ``config.json`` records the count used)."""
    n_test = len(data.y_test)
    if config.attribution.n_samples > n_test:
        warnings.warn(f"`attribution.n_samples` = {config.attribution.n_samples} is more than "
                      f"the {n_test} samples of the test split of {data.name!r}: explaining "
                      f"all {n_test} (config.json records {n_test}).", UserWarning,
                      stacklevel=2)
        return n_test
    return config.attribution.n_samples


def explained_truth(data: DatasetSplit, attrs_by: dict[tuple[str, str], Attributions]
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The true labels (N,) of the explained test inputs, and their ground-truth rationale
    (N, *S) where the data have one (else None): the truth :func:`score_models` scores against."""
    n = next(iter(attrs_by.values())).inputs.shape[0]
    rationale = None if data.rationale_test is None else data.rationale_test[:n]
    return data.y_test[:n], rationale


def score_models(config: AnalysisConfig, records: list[ModelRecord],
                 attrs_by: dict[tuple[str, str], Attributions], labels: torch.Tensor, *,
                 cache: RunCache, jobs: int = 1, executor: str = "local",
                 address: str | None = None, progress: bool = False,
                 rationale: torch.Tensor | None = None
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stage "score": every configured metric of every model's maps.

    ``labels`` (N,) are the true classes of the explained inputs and
    ``rationale`` (N, *S), where the data have one, their ground-truth evidence
    for the plausibility metrics. Returns the
    tidy results (one row per sample x model x method x metric, columns
    ``RESULT_COLUMNS``) and the per-sample deletion and insertion curves.
    Finished cells are reused from ``cache``; the rest run in ``jobs``
    processes or on Ray (see :func:`run_analysis`), with the same numbers.
    """
    cells = [(m, rec) for m in config.attribution.methods for rec in records]
    jobs_of = {f"{method}-{rec.tag}": _CellJob(rec, method, attrs_by[method, rec.tag],
                                               attrs_by[method, "dense"], labels, config,
                                               rationale)
               for method, rec in cells}
    done = {key: (cache.load_frame(f"cell-{key}"), cache.load_frame(f"curve-{key}"))
            for key in jobs_of}
    pending = [key for key, frames in done.items() if frames[0] is None or frames[1] is None]
    bar = tqdm(total=len(jobs_of), initial=len(jobs_of) - len(pending), desc="score",
               unit="cell", disable=not progress, file=sys.stderr, delay=2)
    for key, frames in _run_cells([jobs_of[k] for k in pending], pending, jobs, executor,
                                  address):
        stored = done[key]
        for part, old, new in (("curve", stored[1], frames[1]), ("cell", stored[0], frames[0])):
            if old is None:  # the driver is the only writer; a stored file is never rewritten
                cache.store_frame(f"{part}-{key}", new)
        done[key] = (stored[0] if stored[0] is not None else frames[0],
                     stored[1] if stored[1] is not None else frames[1])
        bar.update()
    bar.close()
    return (pd.concat([done[key][0] for key in jobs_of], ignore_index=True),
            pd.concat([done[key][1] for key in jobs_of], ignore_index=True))


def write_run(out: Path, config: AnalysisConfig, data: DatasetSplit, records: list[ModelRecord],
              attrs_by: dict[tuple[str, str], Attributions], results: pd.DataFrame,
              curves: pd.DataFrame, tables: ModelTables) -> None:
    """Stage "write": the run folder's tables (CSV), resolved config and versions.

    ``curves`` are the per-sample curves of :func:`score_models`; the folder
    gets their mean with a 95% CI, the example maps and, for tabular inputs,
    the feature importance. Every file is written atomically.
    """
    methods = config.attribution.methods
    x = next(iter(attrs_by.values())).inputs
    files = {"results.csv": results, "models.csv": tables.models, "layers.csv": tables.layers,
             "classes.csv": tables.classes, "curves.csv": _curve_summary(curves),
             "examples.csv": _examples(records, attrs_by, methods, x, config.report.n_examples,
                                       data.rationale_test),
             "importance.csv": _importance(records, attrs_by, methods, data.feature_names)
             if data.vocabulary is None else _importance([], {}, [], None),  # not per position
             "timings.csv": tables.timings}
    if data.vocabulary is not None:  # token inputs: the example sentences' maps, per token
        files["tokens.csv"] = _token_examples(records, attrs_by, methods, x, data.vocabulary,
                                              config.report.n_examples)
    for name, frame in files.items():
        atomic_write_text(out / name, frame.to_csv(index=False, na_rep="NaN"))
    n_eval = x.shape[0]  # the count explained, where the test split had fewer than asked
    if n_eval != config.attribution.n_samples:
        config = config.replace(attribution=dataclasses.replace(config.attribution,
                                                                n_samples=n_eval))
    atomic_write_text(out / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")
    atomic_write_text(out / "data.json", json.dumps({"dataset": data.name, "kind": data.kind},
                                                    indent=2) + "\n")
    atomic_write_text(out / "versions.json", json.dumps(_versions(), indent=2) + "\n")


def store_key(config: AnalysisConfig) -> dict:
    """What determines a run's numbers, for its store: the config without its name, report
    layout, executor resources and seed list, plus the digests of the files it reads."""
    key = {k: v for k, v in config.to_dict().items()
           if k not in ("name", "report", "ray", "seeds")}
    key["checkpoint_digests"] = _digests(config)  # a replaced checkpoint invalidates the store
    return key


def run_analysis(config: AnalysisConfig | None = None, *, out_dir: str | Path | None = None,
                 progress: bool = True, use_cache: bool = True, render: bool = True,
                 jobs: int = 1, executor: str = "local", address: str | None = None
                 ) -> RunResult:
    """Run an analysis end to end and write its run folder (and report).

    The stages, each a function of this module that can be called alone:
    :func:`load_data`, :func:`train_dense`, :func:`prune_models`,
    :func:`train_controls`, :func:`describe_models`, :func:`attribute_models`,
    :func:`score_models`, :func:`write_run`, then
    :func:`xprune.report.render_report`.

    Parameters
    ----------
    config : AnalysisConfig, optional
        Defaults to the embedded digits analysis.
    out_dir : path, optional
        Run folder; default ``reports/<config.name>``.
    progress : bool
        Show stage messages and a progress bar on stderr.
    use_cache : bool
        Keep finished models, maps and metric cells under ``<run>/.cache`` and
        reuse them when the same config runs again (a killed run resumes).
    render : bool
        Render ``report.md`` / ``report.html`` and figures.
    jobs : int
        Processes that score grid cells in parallel (1: in this process).
        Results are byte-identical whatever the number.
    executor : {"local", "ray"}
        ``"ray"`` runs each unfinished cell as a Ray task (resources from
        ``config.ray``) on the cluster at ``address`` (default: the running
        Ray instance, else a new local one); results come back to this
        process, the only writer of the run folder, and are identical to a
        local run.

    Raises
    ------
    OSError
        If the run folder is not writable (checked before any computation).
    ValueError
        On invalid configuration values.
    """
    config = config or AnalysisConfig()
    check_positive_int(jobs, "jobs")
    if executor not in EXECUTORS:
        raise ValueError(f"Expected `executor` in {EXECUTORS}, got {executor!r}."
                         + closest_name(str(executor), EXECUTORS))
    if executor == "ray":
        import_ray()  # fail before any work
    out = Path(out_dir) if out_dir is not None else Path("reports") / config.name
    check_writable(out)
    say = (lambda msg: tqdm.write(f"[xprune] {msg}", file=sys.stderr)) if progress else _silent
    cache = RunCache(out if use_cache else None, store_key(config))
    run = run_stages(config, out, cache=cache, say=say, progress=progress, jobs=jobs,
                     executor=executor, address=address)
    report = None
    if render:
        say("rendering the report")
        report = render_report(out)
    run.clock.mark("report")
    run.clock.write(out / "stages.json")
    return RunResult(out_dir=out, results=run.results, models=run.tables.models, report=report)


STAGES = ("data", "train", "prune", "controls", "describe", "attribute", "score", "write")


class Pipeline(NamedTuple):
    """What :func:`run_stages` produced (the run folder holds it as files too)."""

    data: DatasetSplit
    records: list[ModelRecord]
    tables: ModelTables
    results: pd.DataFrame
    clock: _StageClock


def run_stages(config: AnalysisConfig, out: Path, *, cache: RunCache,
               data: object = None, dense: nn.Module | None = None,
               factory: Callable[[], nn.Module] | None = None,
               check: Callable[[DatasetSplit], None] | None = None,
               stage: Callable[[str], None] | None = None,
               say: Callable[[str], None] = _silent, progress: bool = False, jobs: int = 1,
               executor: str = "local", address: str | None = None) -> Pipeline:
    """The stage sequence of a run, the one implementation that :func:`run_analysis` (and so
    ``xprune run``) and :func:`xprune.study` call: :data:`STAGES` in order, then the
    run folder written (:func:`write_run`), the report not rendered.

    Seeds torch's global generator with ``config.seed`` first, so the same
    config and inputs give the same files whoever calls.

    Parameters
    ----------
    config, out, cache
        The run's configuration, folder and store (``RunCache(None, {})`` keeps nothing).
    data : optional
        Data held in memory instead of ``config.data`` (see :func:`load_data`).
    dense : nn.Module, optional
        The trained dense model (a copy is used; it is never modified); default:
        trained, or loaded from ``config.model.checkpoint``.
    factory : callable, optional
        Builds the architecture instead of ``config.model`` (pruned models load into it,
        the other-seed control is trained from it).
    check : callable, optional
        ``check(data)`` after the data stage, before any training (to refuse a
        model the data do not fit).
    stage : callable, optional
        ``stage(name)`` as each of :data:`STAGES` starts (a progress bar).
    say, progress, jobs, executor, address
        As for :func:`run_analysis`.
    """
    stage = stage or _silent
    clock = _StageClock()
    torch.manual_seed(config.seed)
    stage("data")
    split = load_data(config, data, say=say)
    if check is not None:
        check(split)
    stage("train")
    if dense is None:
        dense_rec = train_dense(config, split, cache=cache, say=say, factory=factory)
    else:
        dense_rec = ModelRecord("dense", "dense", "", 0.0,
                                copy.deepcopy(dense).to(config.device), {})
    stage("prune")
    records = [dense_rec, *prune_models(config, split, dense_rec.model, cache=cache, say=say,
                                        factory=factory)]
    stage("controls")
    records += train_controls(config, split, dense_rec.model, cache=cache, say=say,
                              factory=factory)
    clock.mark("train_and_prune")
    stage("describe")
    tables = describe_models(records, split, config)
    barely = chance_warning(tables.models)
    if barely:
        warnings.warn(barely, UserWarning, stacklevel=2)
    clock.mark("model_table")
    stage("attribute")
    attrs_by = attribute_models(config, records, split, cache=cache, progress=progress)
    clock.mark("attribute")
    stage("score")
    labels, rationale = explained_truth(split, attrs_by)
    results, curves = score_models(config, records, attrs_by, labels, cache=cache, jobs=jobs,
                                   executor=executor, address=address, progress=progress,
                                   rationale=rationale)
    clock.mark("metrics")
    stage("write")
    write_run(out, config, split, records, attrs_by, results, curves, tables)
    clock.mark(None)
    return Pipeline(split, records, tables, results, clock)


class _StageClock:
    """Wall seconds per stage since the run started, for ``stages.json``."""

    def __init__(self) -> None:
        self.started = self.last = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def mark(self, stage: str | None) -> None:
        """Count the time since the last mark towards ``stage`` (None: towards none)."""
        now = time.perf_counter()
        if stage is not None:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self.last
        self.last = now

    def write(self, path: Path) -> None:
        seconds = {**self.seconds, "total": time.perf_counter() - self.started}
        atomic_write_text(path, json.dumps({k: round(v, 3) for k, v in seconds.items()},
                                           indent=2) + "\n")


def run_seeds(config: AnalysisConfig | None, seeds: list[int] | None = None, *,
              out_dir: str | Path | None = None, progress: bool = True, use_cache: bool = True,
              jobs: int = 1, executor: str = "local", address: str | None = None) -> Path:
    """Run the same analysis once per training seed and summarise across seeds.

    Each seed's run goes to ``<out>/seed-<seed>`` with its full report (and
    resumes like any run); ``<out>/report.html`` gives every figure as mean ±
    standard deviation across seeds, so that a headline rests on training
    variance, not only on test-sample variance. Returns that report's path.

    Raises
    ------
    ValueError
        If ``seeds`` is empty or repeats a seed.
    """
    config = config or AnalysisConfig()
    seeds = config.seeds if seeds is None else seeds
    if not seeds or len(set(seeds)) != len(seeds) or not all(_is_seed(s) for s in seeds):
        raise ValueError(f"Expected distinct integer seeds in [0, {MAX_SEED}], got {seeds!r}.")
    out = Path(out_dir) if out_dir is not None else Path("reports") / f"{config.name}-seeds"
    check_writable(out)
    runs = {}
    for seed in seeds:
        result = run_analysis(config.replace(seed=seed, seeds=None),
                              out_dir=out / f"seed-{seed}",
                              progress=progress, use_cache=use_cache, jobs=jobs,
                              executor=executor, address=address)
        runs[seed] = result.out_dir
    return render_seeds_report(out, runs)


def _digests(config: AnalysisConfig) -> dict[str, str]:
    import hashlib

    paths = [p for p in (config.model.checkpoint, config.model.onnx) if p]
    if config.model.pretrained:  # a replaced pretrained folder starts afresh
        folder = Path(config.model.pretrained_path)
        if not folder.is_dir():
            raise FileNotFoundError(f"Hugging Face model folder not found: {folder}")
        paths += sorted(str(p) for p in folder.rglob("*") if p.is_file())
    if config.data.dataset.endswith((".npz", ".pt", ".csv", ".jsonl", ".parquet")):
        # a changed data file starts afresh
        paths.append(config.data.dataset)
    paths += [e if isinstance(e, str) else e["path"] for e in config.pruning.checkpoints]
    out = {}
    for p in paths:
        if not Path(p).is_file():
            kind = "Data file" if p == config.data.dataset else "Checkpoint"
            raise FileNotFoundError(f"{kind} not found: {p}")
        out[p] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


def _curve_summary(per_sample: pd.DataFrame) -> pd.DataFrame:
    """Mean deletion and insertion curves with a 95% CI per model, attribution method and
    fraction of features removed (inserted)."""
    rows = []
    for (model, method, kind, fraction), group in per_sample.groupby(
            ["model", "attribution", "curve", "fraction"], sort=False):
        mean, lo, hi, n = mean_ci(group["value"].to_numpy())
        rows.append({"model": model, "attribution": method, "curve": kind,
                     "fraction": fraction, "mean": mean, "ci_low": lo, "ci_high": hi, "n": n})
    return pd.DataFrame(rows)
