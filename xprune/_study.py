"""Study your own model in one call: ``xprune.study(model, data)`` from Python or a notebook.

:func:`study` runs the pipeline of ``xprune run`` (the stages of
:mod:`xprune.analysis`) on a model and data you hold, and returns a
:class:`Study`: the tidy results and their summary as DataFrames, the run
folder, the same report (:meth:`Study.report`), and an inline view in Jupyter
(the headline sentences and the key figure).
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import html
import json
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from ._cache import RunCache
from ._io import atomic_write_text
from .analysis import (
    ModelRecord,
    _silent,
    _StageClock,
    attribute_models,
    check_writable,
    describe_models,
    explained_truth,
    load_data,
    prune_models,
    score_models,
    train_controls,
    train_dense,
    write_run,
)
from .config import AnalysisConfig, load_config, reinitialised
from .data import DatasetSplit
from .models import check_model
from .report import metric_summary, render_report, what_changed
from .report.figures import figure_png, plot_accuracy_and_agreement

__all__ = ["STAGES", "Study", "study"]

STAGES = ("data", "train", "prune", "controls", "describe", "attribute", "score", "write")


@dataclass(frozen=True, eq=False)
class Study:
    """What :func:`study` found: the run's tables, its folder and its report.

    Attributes
    ----------
    results : DataFrame
        The tidy per-sample scores (``results.csv``): one row per sample x
        model x attribution method x metric.
    summary : DataFrame
        Mean and 95% CI per model x method x metric with the paired change
        versus the dense model (:func:`xprune.report.metric_summary`).
    models : DataFrame
        One row per model: accuracy, sparsity, MACs, storage (``models.csv``).
    config : AnalysisConfig
        The resolved configuration (data and model came from the call).
    out : Path
        The run folder (a temporary one when ``out=None``).
    """

    results: pd.DataFrame
    summary: pd.DataFrame
    models: pd.DataFrame
    config: AnalysisConfig
    out: Path

    @property
    def headline(self) -> list[str]:
        """One sentence per pruned model: accuracy, size, and how its maps changed."""
        return what_changed(self.models, self.summary)[1]

    def report(self, path: str | Path | None = None) -> Path:
        """Render ``report.html`` and ``report.md`` (as ``xprune run`` does) and return the
        HTML's path.

        ``path``: where to put it besides the run folder: a ``.html`` file
        (the HTML is self-contained), or a folder that receives a copy of the
        whole run folder with its report.
        """
        page = render_report(self.out)
        if path is None:
            return page
        path = Path(path)
        if path.resolve() in (self.out.resolve(), page.resolve()):
            return page
        if path.suffix.lower() in (".html", ".htm"):
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(page, path)
            return path
        shutil.copytree(self.out, path, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(".cache"))
        return path / page.name

    def figure(self):
        """The key figure (accuracy and agreement vs sparsity) as a matplotlib Figure."""
        axes = plot_accuracy_and_agreement(self.models, self.summary)
        return axes[0].figure

    def _repr_html_(self) -> str:
        png = base64.b64encode(figure_png(self.figure())).decode("ascii")
        items = "".join(f"<li>{html.escape(s)}</li>" for s in self.headline)
        methods = ", ".join(self.config.attribution.methods)
        return (f"<div class=\"xprune-study\"><strong>xprune study</strong>: "
                f"{len(self.models)} models, {html.escape(methods)}, "
                f"{int(self.results['sample'].nunique())} test samples"
                f"<ul>{items}</ul>"
                f"<img src=\"data:image/png;base64,{png}\" "
                f"alt=\"accuracy and agreement with the dense maps vs sparsity\">"
                f"<p>Full report: <code>.report()</code>; run folder "
                f"<code>{html.escape(str(self.out))}</code></p></div>")

    def __repr__(self) -> str:
        return (f"Study({len(self.models)} models, {len(self.results)} result rows, "
                f"out={str(self.out)!r})")


def study(model: nn.Module | Callable[[], nn.Module], data: object, *,
          sparsities: float | Sequence[float] | None = None,
          attributions: str | Sequence[str] | None = None,
          metrics: str | Sequence[str] | None = None,
          train: bool = False,
          out: str | Path | None = None,
          progress: bool = True,
          config: AnalysisConfig | Mapping | str | Path | None = None) -> Study:
    """Prune your model, explain every model, score the maps, and return the findings.

    The same pipeline as ``xprune run`` (the stages of
    :mod:`xprune.analysis`, so the numbers are those of a run with the same
    configuration): the dense model is pruned to every sparsity and
    fine-tuned, the controls (a dense model from another seed, the dense model
    fine-tuned without pruning) are trained, every model explains the first
    ``config.attribution.n_samples`` test inputs by every attribution method,
    and every metric scores the maps.

    Parameters
    ----------
    model : nn.Module, or a function returning one
        Your trained model, mapping inputs (N, *F) to logits (N, C); it is the
        dense model and is never modified (the pipeline works on a copy). A
        function, or ``train=True``, trains the model first, as the run does
        (``config.train``). The other-seed control is a copy of ``model``
        with every layer re-initialised (``reset_parameters``) and trained
        with ``config.train``.
    data : (x, y), dict of splits, or DatasetSplit
        Tensors or arrays ``(x, y)``: inputs (n, *F) of any dtype (images,
        table rows, token ids) and integer labels (n,), split seeded and
        stratified (``config.seed``, ``config.data`` fractions); a dict
        ``{"train": (x, y), "test": (x, y)}`` (``"val"`` optional) used as
        given; or a :class:`xprune.data.DatasetSplit`. Pruned models are
        fine-tuned on the train split; everything is measured on test.
        (DataLoaders and Hugging Face inputs are not supported yet.)
    sparsities : float or list of float in [0, 1), optional
        Overrides ``config.pruning.sparsities``.
    attributions : str or list of str, optional
        Attribution methods (``xprune.ATTRIBUTION_METHODS``); overrides
        ``config.attribution.methods``.
    metrics : str or list of str, optional
        Metric names (``xprune list``); overrides ``config.metrics.names``.
    train : bool
        Train ``model`` (a fresh copy, re-initialised) instead of using its weights.
    out : path, optional
        The run folder; default: a new temporary folder (kept, see ``Study.out``).
    progress : bool
        A progress bar over the stages (and the attribution and scoring
        cells) on stderr.
    config : AnalysisConfig, dict, or path to a TOML config, optional
        Everything else: pruning method, controls, training and fine-tuning
        budget, number of explained samples, seed, device (see
        :class:`xprune.config.AnalysisConfig`; a dict is read like a TOML
        file). ``[model]`` and ``[data]`` come from the call instead.

    Returns
    -------
    Study

    Raises
    ------
    TypeError
        If ``model`` is neither a module nor a function, or ``data`` is of a
        kind not supported (yet), such as a DataLoader.
    ValueError
        On invalid options, data the model cannot take, a model whose output
        is not (N, C) logits with a column per class, or (for ``train`` and the
        other-seed control) a model that cannot be re-initialised.
    OSError
        If ``out`` cannot be written.
    """
    config = _resolve_config(config, sparsities, attributions, metrics)
    if isinstance(model, nn.Module):
        user_model = model
        factory = _reinitialised(model)
    elif callable(model):
        user_model = None
        factory = _built(model)
        train = True
    else:
        raise TypeError(f"Expected `model` to be an nn.Module or a function returning one, "
                        f"got {type(model).__name__}.")
    if not isinstance(train, bool):
        raise ValueError(f"Expected `train` to be True or False, got {train!r}.")
    out = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="xprune-study-"))
    check_writable(out)
    bar = tqdm(total=len(STAGES), desc="xprune.study", unit="stage", disable=not progress,
               file=sys.stderr)
    say = (lambda msg: tqdm.write(f"[xprune] {msg}", file=sys.stderr)) if progress else _silent
    cache = RunCache(None, {})  # the models and data are not in the config: nothing is reused
    clock = _StageClock()
    torch.manual_seed(config.seed)

    def stage(name: str) -> None:
        if bar.n or name != STAGES[0]:
            bar.update()
        bar.set_postfix_str(name)

    try:
        stage("data")
        split = load_data(config, data, say=say)
        if user_model is not None:
            template = user_model
        else:
            with torch.random.fork_rng(devices=[]):  # the run's random stream stays untouched
                template = factory()
        if train or config.controls.other_seed:
            _check_resettable(template)
        _check_model(template, split)
        stage("train")
        if train:
            dense = train_dense(config, split, cache=cache, say=say, factory=factory)
        else:
            dense = ModelRecord("dense", "dense", "", 0.0,
                                copy.deepcopy(user_model).to(config.device), {})
        stage("prune")
        records = [dense, *prune_models(config, split, dense.model, cache=cache, say=say,
                                        factory=factory)]
        stage("controls")
        records += train_controls(config, split, dense.model, cache=cache, say=say,
                                  factory=factory)
        clock.mark("train_and_prune")
        stage("describe")
        tables = describe_models(records, split, config)
        clock.mark("model_table")
        stage("attribute")
        attrs_by = attribute_models(config, records, split, cache=cache, progress=progress)
        clock.mark("attribute")
        stage("score")
        labels, rationale = explained_truth(split, attrs_by)
        results, curves = score_models(config, records, attrs_by, labels, cache=cache,
                                       progress=progress, rationale=rationale)
        clock.mark("metrics")
        stage("write")
        write_run(out, config, split, records, attrs_by, results, curves, tables)
        _record_source(out, split, user_model if user_model is not None else template, train)
        summary = metric_summary(results)
        clock.mark("summary")
        clock.write(out / "stages.json")
        bar.update()
    finally:
        bar.close()
    return Study(results=results, summary=summary, models=tables.models, config=config,
                 out=out)


def _resolve_config(config, sparsities, attributions, metrics) -> AnalysisConfig:
    """The base config with the call's overrides (validated by the config's dataclasses)."""
    if config is None:
        base = AnalysisConfig(name="study")
    elif isinstance(config, AnalysisConfig):
        base = config
    elif isinstance(config, Mapping):
        base = AnalysisConfig.from_dict({"name": "study", **config})
    elif isinstance(config, (str, Path)):
        base = load_config(config)
    else:
        raise TypeError(f"Expected `config` to be an AnalysisConfig, a dict or a TOML path, "
                        f"got {type(config).__name__}.")
    if base.seeds is not None:
        raise ValueError(f"Expected one seed for a study (`config.seed`), got `config.seeds` "
                         f"{base.seeds!r}: call study once per seed.")
    if base.model.factory is not None or base.model.checkpoint is not None or \
            base.model.onnx is not None:
        raise ValueError("Expected no [model] section in the config of a study: the model "
                         "comes from the `model` argument.")
    changes = {}
    if sparsities is not None:
        values = (sparsities,) if isinstance(sparsities, (int, float)) else tuple(sparsities)
        changes["pruning"] = dataclasses.replace(base.pruning, sparsities=values)
    if attributions is not None:
        names = (attributions,) if isinstance(attributions, str) else tuple(attributions)
        changes["attribution"] = dataclasses.replace(base.attribution, methods=names)
    if metrics is not None:
        names = [metrics] if isinstance(metrics, str) else list(metrics)
        changes["metrics"] = dataclasses.replace(base.metrics, names=names)
    return base.replace(**changes) if changes else base


def _built(fn: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        model = fn()
        if not isinstance(model, nn.Module):
            raise ValueError(f"Expected `model` to return an nn.Module, got "
                             f"{type(model).__name__}.")
        return model
    return build


def _reinitialised(model: nn.Module) -> Callable[[], nn.Module]:
    """A factory of fresh copies of ``model``'s architecture: every layer re-initialised by its
    own ``reset_parameters`` (in module order, so the global seed fixes the weights)."""
    return lambda: reinitialised(model)


def _check_resettable(model: nn.Module) -> None:
    """Raise unless every module holding parameters can re-initialise them."""
    stuck = [name or type(model).__name__ for name, m in model.named_modules()
             if any(True for _ in m.parameters(recurse=False))
             and not callable(getattr(m, "reset_parameters", None))
             and not callable(getattr(m, "_reset_parameters", None))]
    if stuck:
        raise ValueError(f"Expected every module with parameters to have `reset_parameters` "
                         f"(to train a fresh copy: `train=True` or the other-seed control), "
                         f"got {stuck[:5]} without; pass a function that builds the model, "
                         f"or config={{'controls': {{'other_seed': False}}}}.")


def _check_model(model: nn.Module, data: DatasetSplit) -> None:
    """Raise a clear error unless ``model`` takes a batch of the data and returns logits with
    one column per class (:func:`xprune.models.check_model`)."""
    check_model(model, data.x_train[:2], data.n_classes, what="`model`", data="`data`")


def _record_source(out: Path, data: DatasetSplit, model: nn.Module, trained: bool) -> None:
    """Name the call's data and model in ``config.json`` (the report quotes it)."""
    path = out / "config.json"
    cfg = json.loads(path.read_text())
    cfg["data"]["dataset"] = (f"{data.name} passed to xprune.study: "
                              f"{len(data.x_train)}/{len(data.x_val)}/{len(data.x_test)} "
                              f"train/validation/test samples of shape "
                              f"{tuple(data.x_test.shape[1:])}, "
                              f"{str(data.x_test.dtype).replace('torch.', '')}")
    cfg["model"]["factory"] = (f"{type(model).__name__} passed to xprune.study"
                               + (" (trained by the study)" if trained else " (trained)"))
    atomic_write_text(path, json.dumps(cfg, indent=2) + "\n")
