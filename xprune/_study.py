"""Study your own model in one call: ``xprune.study(model, data)`` from Python or a notebook.

:func:`study` runs the pipeline of ``xprune run`` (the stages of
:mod:`xprune.analysis`) on a model and data you hold, and returns a
:class:`Study`: the tidy results and their summary as DataFrames, the run
folder, the same report (:meth:`Study.report`), and an inline view in Jupyter
(the headline sentences and the key figure).
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from ._cache import RunCache
from ._io import atomic_write_text
from ._state import as_logits
from .analysis import STAGES, _silent, check_writable, run_stages
from .config import AnalysisConfig, load_config, reinitialised
from .data import LABEL_KEYS, DatasetSplit, collect_batches, is_batches
from .models import check_model
from .report import metric_summary, render_report
from .report.figures import figure_png, plot_key_figure
from .report.headline import headline

__all__ = ["STAGES", "Study", "study"]


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
        """The report's first lines (:func:`xprune.report.headline.headline`): a lead
        sentence per attribution method, then one sentence per pruning level with its
        verdict, accuracy, and where its maps stand against the controls."""
        return headline(self.models, self.summary)

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
        """The report's key figure (accuracy, agreement with the dense maps and faithfulness
        vs sparsity, controls as bands) as a matplotlib Figure."""
        axes = plot_key_figure(self.models, self.summary)
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
                f"alt=\"accuracy, agreement with the dense maps and faithfulness vs "
                f"sparsity\">"
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
    data : (x, y), DataLoader, iterable of batches, tokenizer output, dict of splits, DatasetSplit
        Tensors or arrays ``(x, y)``: inputs (n, *F) of any dtype (images,
        table rows, token ids) and integer labels (n,), split seeded and
        stratified (``config.seed``, ``config.data`` fractions). A DataLoader
        or any iterable of batches (``(x, y)``, or mappings with ``"labels"``
        as Hugging Face collators give them) is collected into memory and split
        the same way. A tokenizer's output ``(encoding, labels)`` (or with
        ``encoding["labels"]``): ``input_ids`` (n, T) with ``attention_mask``
        and ``token_type_ids`` that follow from the ids (mask = ids != pad id,
        types 0, checked on every sample): the model is called with the ids
        alone (:class:`TokenIds`), so every stage varies one tensor of ids. A
        dict ``{"train": ..., "test": ...}`` (``"val"`` optional) of any of
        these is used as given; or a :class:`xprune.data.DatasetSplit`. Pruned
        models are fine-tuned on the train split; everything is measured on
        test.
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
        If ``model`` is neither a module nor a function, or ``data`` is of
        another kind.
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
    if user_model is not None:
        template = user_model
    else:
        with torch.random.fork_rng(devices=[]):  # the run's random stream stays untouched
            template = factory()
    data = _collected(data, _model_pad_id(template))
    tokens = _token_pairs(data)
    if tokens is not None:  # a tokenizer's output: the model takes the ids alone
        data, pad, keys = _token_ids(tokens, template)
        template = TokenIds(template, pad, keys)
        if user_model is not None:
            user_model = template
        factory = _reinitialised(template) if user_model is not None else _wrapped(
            factory, pad, keys)
    bar = tqdm(total=len(STAGES), desc="xprune.study", unit="stage", disable=not progress,
               file=sys.stderr, delay=2)  # shown once the study has run for 2 s
    say = (lambda msg: tqdm.write(f"[xprune] {msg}", file=sys.stderr)) if progress else _silent

    def stage(name: str) -> None:
        if bar.n or name != STAGES[0]:
            bar.update()
        bar.set_postfix_str(name)

    def check(split: DatasetSplit) -> None:
        # a function builds fresh models itself; only a module must re-initialise a copy
        # (tests/cases_s6/013-study-factory-reset-parameters.md)
        if user_model is not None and (train or config.controls.other_seed):
            _check_resettable(template)
        _check_model(template, split)

    try:
        run = run_stages(config, out, cache=RunCache(None, {}), data=data,
                         dense=None if train else user_model, factory=factory, check=check,
                         stage=stage, say=say, progress=progress)
        _record_source(out, run.data, getattr(template, "model", template)
                       if isinstance(template, TokenIds) else template, train)
        summary = metric_summary(run.results)
        run.clock.mark("summary")
        run.clock.write(out / "stages.json")
        bar.update()
    finally:
        bar.close()
    results, tables = run.results, run.tables
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
            base.model.pretrained is not None or \
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


# ---------------------------------------------------------------- token inputs (tokenizer output)

def _collected(data: object, pad_token_id: int | None) -> object:
    """DataLoaders and other iterables of batches (also as splits) collected into pairs."""
    if is_batches(data):
        return collect_batches(data, pad_token_id=pad_token_id)
    if isinstance(data, dict) and data and set(data) <= {"train", "val", "test"}:
        return {k: collect_batches(v, name=f"data[{k!r}]", pad_token_id=pad_token_id)
                if is_batches(v) else v for k, v in data.items()}
    return data


def _wrapped(factory: Callable[[], nn.Module], pad: int | None, keys: Sequence[str]
             ) -> Callable[[], nn.Module]:
    return lambda: TokenIds(factory(), pad, keys)


TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids")


class TokenIds(nn.Module):
    """A text model that takes a tokenizer's output, called with its token ids (N, T) only.

    ``forward(input_ids)`` calls the wrapped ``model`` with ``input_ids`` and
    the inputs a tokenizer derives from them for one sequence per sample:
    ``attention_mask = input_ids != pad_token_id`` and ``token_type_ids = 0``
    (each only if the data had it), and returns the logits (N, C) (the
    ``logits`` of a Hugging Face ``ModelOutput``). :func:`study` checks on the
    whole data set that the derived inputs equal the given ones before it uses
    this, so the pipeline (which varies one tensor of ids: removal metrics put
    the pad id in place of removed tokens, which the mask then hides) sees the
    model as it is called on the data. ``get_input_embeddings`` and
    ``config`` are the wrapped model's, so attribution finds the embedding
    layer and the pad id.
    """

    def __init__(self, model: nn.Module, pad_token_id: int | None, keys: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.pad_token_id = pad_token_id
        self.keys = tuple(keys)
        config = getattr(model, "config", None)
        if getattr(config, "pad_token_id", None) is None and pad_token_id is not None:
            config = SimpleNamespace(pad_token_id=pad_token_id)
        self.config = config

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        kwargs = {"input_ids": input_ids}
        if "attention_mask" in self.keys:
            kwargs["attention_mask"] = (input_ids != self.pad_token_id).long() \
                if self.pad_token_id is not None else torch.ones_like(input_ids)
        if "token_type_ids" in self.keys:
            kwargs["token_type_ids"] = torch.zeros_like(input_ids)
        return as_logits(self.model(**kwargs), self.model)

    def get_input_embeddings(self) -> nn.Module:
        getter = getattr(self.model, "get_input_embeddings", None)
        layer = getter() if callable(getter) else None
        if layer is None:
            layer = next((m for m in self.model.modules() if isinstance(m, nn.Embedding)), None)
        return layer


def _model_pad_id(model: object) -> int | None:
    pad = getattr(getattr(model, "config", None), "pad_token_id", None)
    return pad if isinstance(pad, int) and not isinstance(pad, bool) else None


def _token_pairs(data: object) -> dict[str, tuple[dict, torch.Tensor]] | None:
    """The splits of ``data`` whose inputs are a mapping (a tokenizer's output), as
    ``{split: (mapping, labels)}`` (split "all" for data to be split), else None."""
    def pair(value: object, name: str):
        if hasattr(value, "keys") and not isinstance(value, torch.Tensor):
            value = dict(value)
            label = next((k for k in LABEL_KEYS if k in value), None)
            if label is None:
                raise ValueError(f"Expected `{name}` (a tokenizer output) to come with its "
                                 f"labels: pass (encoding, labels) or add 'labels'.")
            labels = value.pop(label)
            return value, labels
        if isinstance(value, (tuple, list)) and len(value) == 2 and hasattr(value[0], "keys") \
                and not isinstance(value[0], torch.Tensor):
            return dict(value[0]), value[1]
        return None

    if isinstance(data, dict) and set(data) <= {"train", "val", "test"} and data:
        parts = {k: pair(v, f"data[{k!r}]") for k, v in data.items()}
        if all(p is None for p in parts.values()):
            return None
        missing = [k for k, p in parts.items() if p is None]
        if missing:
            raise ValueError(f"Expected every split of `data` to be a tokenizer output when one "
                             f"is, got other inputs in {missing}.")
        return parts
    found = pair(data, "data")
    return None if found is None else {"all": found}


def _token_ids(parts: dict[str, tuple[dict, torch.Tensor]], model: object
               ) -> tuple[object, int | None, tuple[str, ...]]:
    """The ids of every split in place of its tokenizer output, the pad id, and the keys the
    model is called with; ValueError unless the other inputs follow from the ids."""
    keys = None
    pad = _model_pad_id(model)
    for split, (enc, _) in parts.items():
        unknown = sorted(set(enc) - set(TOKEN_KEYS))
        if "input_ids" not in enc:  # tests/cases_s6/009-study-keyword-inputs.md
            raise ValueError(
                f"Expected the inputs of `data` to be one tensor (n, ...) or a tokenizer's "
                f"output (input_ids, optionally attention_mask and token_type_ids), got a "
                f"mapping of the inputs {sorted(enc)} ({split}): xprune.study runs models "
                f"with one input. For a model with several inputs, study a wrapper whose "
                f"forward takes one tensor; xprune.prune, attribute and the agreement "
                f"metrics take the mapping as it is.")
        if unknown:
            raise ValueError(f"Expected the tokenizer output of `data` to hold input_ids and "
                             f"optionally attention_mask and token_type_ids, got the keys "
                             f"{sorted(enc)} ({split}); drop {unknown or 'nothing'} "
                             f"(e.g. return_offsets_mapping=False).")
        if keys is not None and set(enc) != set(keys):
            raise ValueError(f"Expected every split of `data` to hold the same inputs, got "
                             f"{sorted(keys)} and {sorted(enc)}.")
        keys = tuple(k for k in TOKEN_KEYS if k in enc)
        if "attention_mask" in enc and pad is None:  # learn the pad id from the padding
            ids, mask = (torch.as_tensor(enc[k]) for k in ("input_ids", "attention_mask"))
            padded = ids[mask == 0].unique()
            if len(padded) > 1:
                raise ValueError(f"Expected one pad id where the attention_mask of `data` is 0, "
                                 f"got {padded[:5].tolist()}.")
            pad = int(padded[0]) if len(padded) else None
    out = {}
    for split, (enc, labels) in parts.items():
        ids = torch.as_tensor(enc["input_ids"])
        if "attention_mask" in enc:
            mask = torch.as_tensor(enc["attention_mask"])
            derived = ids != pad if pad is not None else torch.ones_like(ids, dtype=torch.bool)
            if mask.shape != ids.shape or not torch.equal(mask.bool(), derived):
                bad = int((mask.bool() != derived).sum()) if mask.shape == ids.shape else "all"
                raise ValueError(
                    f"Expected the attention_mask of `data` to be input_ids != pad id ({pad}): "
                    f"the study gives the model the ids alone and rebuilds the mask from them, "
                    f"but {bad} positions differ ({split}). Pad with the tokenizer's pad token "
                    f"only where the mask is 0.")
        if "token_type_ids" in enc and bool(torch.as_tensor(enc["token_type_ids"]).any()):
            raise ValueError("Expected the token_type_ids of `data` to be all 0 (one sequence "
                             "per sample): the study rebuilds them from the ids; sentence "
                             "pairs are not supported.")
        out[split] = (ids, labels)
    return (out["all"] if "all" in out else out), pad, keys
