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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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
from .data import (
    LABEL_KEYS,
    DatasetSplit,
    _as_tensor,
    _batch_parts,
    _split_indices,
    as_split,
    check_labels,
    collect_batches,
    is_batches,
)
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
    streams = _streams(data)
    if streams is not None:  # DataLoaders: read batch by batch, never held whole
        data, layout = _stream_data(streams, config, template)
    else:
        data, layout = _collected(data, _model_pad_id(template)), None
        tokens = _token_pairs(data)
        if tokens is not None:
            data, layout = _token_ids(tokens, template)
            if layout.special:  # [CLS], [SEP]: masked in the maps, never removed
                data = dataclasses.replace(as_split(data, **_split_args(config)),
                                           pad_token_id=layout.pad,
                                           special_token_ids=layout.special)
    if layout is not None:  # a tokenizer's output: the model takes the ids alone
        template = TokenIds(template, layout.pad, layout.keys, sep_token_id=layout.sep)
        if user_model is not None:
            user_model = template
        factory = _reinitialised(template) if user_model is not None else _wrapped(
            factory, layout)
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
                              f"{len(data.y_train)}/{len(data.y_val)}/{len(data.y_test)} "
                              f"train/validation/test samples of shape "
                              f"{tuple(data.x_test.shape[1:])}, "
                              f"{str(data.x_test.dtype).replace('torch.', '')}")
    cfg["model"]["factory"] = (f"{type(model).__name__} passed to xprune.study"
                               + (" (trained by the study)" if trained else " (trained)"))
    atomic_write_text(path, json.dumps(cfg, indent=2) + "\n")


# ---------------------------------------------------------------- streamed data (DataLoaders)

def _streams(data: object) -> dict[str, object] | None:
    """The DataLoaders (re-iterable iterables of batches) of ``data``: ``{"all": loader}`` for
    data to be split, ``{split: loader or in-memory pair}`` for a dict of splits with at least
    one loader, None when nothing is streamed. A one-pass iterable (a generator) is not
    streamed: it cannot be read once per epoch (:func:`_collected` holds it)."""
    def streamable(value: object) -> bool:  # re-iterable, asked of its type: calling iter()
        return is_batches(value) and not isinstance(value, Iterator)  # starts loader workers

    if streamable(data):
        return {"all": data}
    if isinstance(data, dict) and data and set(data) <= {"train", "val", "test"} and any(
            streamable(v) for v in data.values()):
        return {k: v if streamable(v) else [_as_batch(v)] for k, v in data.items()}
    return None


def _as_batch(value: object) -> object:
    """An in-memory split among streamed ones, as one batch of its own."""
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return value
    if hasattr(value, "keys"):
        return value
    raise TypeError(f"Expected every split of `data` to be a DataLoader, (inputs, labels) or a "
                    f"tokenizer output, got {type(value).__name__}.")


class _Stream:
    """One split of a DataLoader as a re-iterable stream of ``(inputs, labels)`` batches.

    ``positions`` (sorted, optional): the positions in the stream of the
    split's samples, the others left out of each batch; the loader must then
    yield its samples in the same order on every pass, which each pass
    checks against ``order`` (the labels of the whole stream). ``convert``
    maps each batch's inputs (a tokenizer output to token ids). Batches are
    read one at a time and never stored.
    """

    def __init__(self, source: object, name: str, *, positions: torch.Tensor | None = None,
                 order: torch.Tensor | None = None,
                 convert: Callable[[object, str], torch.Tensor] | None = None) -> None:
        self.source, self.name, self.positions, self.order = source, name, positions, order
        self.convert = convert

    def __iter__(self):
        offset = 0
        for i, batch in enumerate(self.source):
            x, y = _batch_parts(batch, self.name, i)
            where = f"batch {i} of `{self.name}`"
            x = {k: _as_tensor(v, f"`{self.name}`[{k!r}] in {where}") for k, v in x.items()} \
                if hasattr(x, "keys") and not isinstance(x, torch.Tensor) \
                else _as_tensor(x, f"the inputs of {where}")
            y = _as_tensor(y, f"the labels of {where}").reshape(-1)
            if y.is_floating_point() or y.dtype == torch.bool:
                raise ValueError(f"Expected the labels of {where} to be integers 0..C-1, got "
                                 f"dtype {str(y.dtype).replace('torch.', '')}.")
            y = y.long()
            n = len(y)
            if self.positions is not None:
                if not torch.equal(y, self.order[offset:offset + n]):
                    raise ValueError(f"Expected `{self.name}` to yield its samples in the same "
                                     f"order on every pass (the study splits it by position), "
                                     f"got other labels in {where}: pass shuffle=False, or a "
                                     f"dict {{'train': loader, 'test': loader}}.")
                lo, hi = (int(torch.searchsorted(self.positions, v)) for v in (offset, offset + n))
                rows = self.positions[lo:hi] - offset
                offset += n
                if not len(rows):
                    continue
                x = {k: v[rows] for k, v in x.items()} if isinstance(x, dict) else x[rows]
                y = y[rows]
            else:
                offset += n
            if self.convert is not None:
                x = self.convert(x, where)
            elif isinstance(x, dict):
                raise ValueError(f"Expected the inputs of every batch of `{self.name}` to be of "
                                 f"one kind (tensors, or a tokenizer's output when the first "
                                 f"batch is one), got a mapping in {where}.")
            elif x.is_floating_point() and not bool(torch.isfinite(x).all()):
                raise ValueError(f"Expected the inputs of {where} to be finite, got "
                                 f"{int((~torch.isfinite(x)).sum())} NaN or Inf entries.")
            yield x, y


def _scan(stream: _Stream, rows: int, pad: int | None, *, whole: bool = True
          ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One pass over ``stream``: its first ``rows`` inputs (copies, token ids right-padded with
    ``pad`` to the longest sequence of the split), all its labels, and that longest length
    (``whole=False``: stop after the first rows; labels and length are then those read)."""
    head, labels, length, held = [], [], 0, 0
    for x, y in stream:
        if held < rows:
            head.append(x[:rows - held].clone())
            held += len(head[-1])
        labels.append(y)
        length = max(length, x.shape[1] if x.dim() > 1 else 0)
        if not whole and held >= rows:
            break
    if not labels:
        raise ValueError(f"Expected `{stream.name}` to yield at least one batch, got none.")
    if not head:  # no rows asked for (a validation split): its labels only
        return torch.empty(0), torch.cat(labels), length
    shapes = {tuple(h.shape[1:]) for h in head}
    if len(shapes) > 1 and not all(h.dim() == 2 and not h.is_floating_point() for h in head):
        raise ValueError(f"Expected every batch of `{stream.name}` to have the same input shape "
                         f"per sample, got {sorted(shapes)}.")
    if any(h.shape[1:] != (length,) for h in head) and head[0].dim() == 2 and \
            not head[0].is_floating_point():  # token ids of batches padded to their own length
        if pad is None:
            raise ValueError(f"Expected a pad id to pad the batches of `{stream.name}` to one "
                             f"length (they differ); the model's config has no pad_token_id: "
                             f"pad in the collator (padding='max_length').")
        head = [torch.nn.functional.pad(h, (0, length - h.shape[1]), value=pad) for h in head]
    return torch.cat(head), torch.cat(labels), length


def _streamed_split(streams: dict[str, object], config: AnalysisConfig,
                    convert: Callable | None, pad: int | None) -> DatasetSplit:
    """A :class:`DatasetSplit` over DataLoaders: training and test read as streams
    (``train_batches``, ``test_batches``); in memory only the labels, the first two training
    inputs (to check the model) and the first test inputs (explained, timed: the larger of
    ``attribution.n_samples`` and ``report.latency_batch``)."""
    n_test_rows = max(config.attribution.n_samples, config.report.latency_batch, 1)
    if "all" in streams:  # split by position, as tensors of the same labels are split
        source = streams["all"]
        labels = torch.cat([y for _, y in _Stream(source, "data", convert=convert)])
        check_labels(labels.numpy(), "the labels of `data`")
        try:
            idx = _split_indices(labels.numpy(), seed=config.seed, val_size=config.data.val_size,
                                 test_size=config.data.test_size)
        except ValueError as exc:
            raise ValueError(f"Could not split `data` into train / validation / test: {exc}"
                             ) from None
        parts = {k: _Stream(source, "data", positions=i.sort().values, order=labels,
                            convert=convert) for k, i in zip(("train", "val", "test"), idx,
                                                             strict=True)}
        longest = max(x.shape[1] if x.dim() > 1 else 0
                      for x, _ in _Stream(source, "data", convert=convert)) \
            if convert is not None else 0
        scans = {"train": _scan(parts["train"], 2, pad, whole=False),
                 "test": _scan(parts["test"], n_test_rows, pad, whole=False)}
        heads = {k: v[0] for k, v in scans.items()}
        if convert is not None and longest:  # padded as the collected data would be
            heads = {k: torch.nn.functional.pad(h, (0, longest - h.shape[1]), value=pad)
                     for k, h in heads.items()}
        ys = {k: labels[i.sort().values] for k, i in zip(("train", "val", "test"), idx,
                                                         strict=True)}
    else:
        unknown = sorted(set(streams) - {"train", "val", "test"})
        if unknown or not {"train", "test"} <= set(streams):
            raise ValueError(f"Expected `data` as a dict to have the keys 'train' and 'test' "
                             f"(and optionally 'val'), got {sorted(streams, key=str)}.")
        parts = {k: _Stream(v, f"data[{k!r}]", convert=convert) for k, v in streams.items()}
        scans = {k: _scan(p, {"train": 2, "test": n_test_rows}.get(k, 0), pad)
                 for k, p in parts.items()}
        heads = {k: scans[k][0] for k in ("train", "test")}
        ys = {k: v[1] for k, v in scans.items()}
        ys.setdefault("val", ys["train"][:0])
        check_labels(torch.cat(list(ys.values())).numpy(), "the labels of `data`")
    n_classes = int(torch.cat(list(ys.values())).max()) + 1
    return DatasetSplit("data", heads["train"], ys["train"], heads["train"][:0], ys["val"],
                        heads["test"], ys["test"], n_classes,
                        tuple(str(c) for c in range(n_classes)),
                        train_batches=parts["train"], test_batches=parts["test"])


def _split_args(config: AnalysisConfig) -> dict:
    return dict(seed=config.seed, val_size=config.data.val_size,
                test_size=config.data.test_size)


def _stream_data(streams: dict[str, object], config: AnalysisConfig, model: object
                 ) -> tuple[DatasetSplit, TokenLayout | None]:
    """The streamed split of DataLoaders (:func:`_streamed_split`) and, for batches of a
    tokenizer's output, their layout, read from every batch of every split in one pass (a
    batch at a time: the pad id where some batch pads, the separator where some batch holds
    pairs, though the first may have neither); each batch becomes its token ids as it is
    read."""
    firsts = []
    for split, source in streams.items():
        name = "data" if split == "all" else f"data[{split!r}]"
        for batch in source:
            x, _ = _batch_parts(batch, name, 0)
            firsts.append((name, x))
            break
        else:
            raise ValueError(f"Expected `{name}` to yield at least one batch, got none.")
    mapping = [hasattr(x, "keys") and not isinstance(x, torch.Tensor) for _, x in firsts]
    if any(mapping) and not all(mapping):
        raise ValueError("Expected every split of `data` to be a tokenizer output when one is, "
                         "got tensors in others.")
    if not any(mapping):
        return _streamed_split(streams, config, None, _model_pad_id(model)), None
    layout = _token_layout(_encodings(streams), model)
    split = _streamed_split(streams, config, lambda x, where: _ids_of(x, layout, where),
                            layout.pad)
    if layout.special:
        split = dataclasses.replace(split, pad_token_id=layout.pad,
                                    special_token_ids=layout.special)
    return split, layout


def _encodings(streams: dict[str, object]) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
    """Every batch's tokenizer output, one batch at a time: ``(where, encoding)``."""
    for split, source in streams.items():
        name = "data" if split == "all" else f"data[{split!r}]"
        for i, batch in enumerate(source):
            x, _ = _batch_parts(batch, name, i)
            where = f"batch {i} of `{name}`"
            if not hasattr(x, "keys") or isinstance(x, torch.Tensor):
                raise ValueError(f"Expected every batch of `{name}` to be a tokenizer output "
                                 f"when the first is, got {type(x).__name__} in {where}.")
            yield where, {k: _as_tensor(v, f"`{name}`[{k!r}] in {where}") for k, v in x.items()}


def _collected(data: object, pad_token_id: int | None) -> object:
    """One-pass iterables of batches (generators; also as splits) collected into pairs."""
    if is_batches(data):
        return collect_batches(data, pad_token_id=pad_token_id)
    if isinstance(data, dict) and data and set(data) <= {"train", "val", "test"}:
        return {k: collect_batches(v, name=f"data[{k!r}]", pad_token_id=pad_token_id)
                if is_batches(v) else v for k, v in data.items()}
    return data


# ---------------------------------------------------------------- token inputs (tokenizer output)

TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids")
_ACCEPTED_KEYS = (*TOKEN_KEYS, "special_tokens_mask")


@dataclass(frozen=True)
class TokenLayout:
    """How a tokenizer's output follows from its ids: what :class:`TokenIds` rebuilds.

    Attributes
    ----------
    pad : int or None
        The pad id: ``attention_mask = input_ids != pad``.
    keys : tuple of str
        The inputs the model is called with (``input_ids`` and those of
        ``attention_mask``, ``token_type_ids`` the data had).
    sep : int or None
        For sentence pairs: the id that ends the first segment ([SEP]);
        ``token_type_ids`` are 1 after the first ``sep`` up to the padding.
        None for one sequence per sample (types 0).
    special : tuple of int
        Ids never attributed nor removed ([CLS], [SEP]): those the data's
        ``special_tokens_mask`` marks, and for pairs the separator and the
        first token.
    """

    pad: int | None
    keys: tuple[str, ...]
    sep: int | None = None
    special: tuple[int, ...] = ()


def segment_ids(input_ids: torch.Tensor, sep: int | None, pad: int | None) -> torch.Tensor:
    """The ``token_type_ids`` (N, T) of ``input_ids`` (N, T) as a BERT tokenizer gives them for
    ``tokenizer(text, text_pair)``: 0 up to and including the first ``sep``, 1 after it, 0 at
    padding (``pad``); all 0 when ``sep`` is None (one sequence per sample). Deleting or
    replacing a token other than [SEP] leaves the segments of the others as they were."""
    if sep is None:
        return torch.zeros_like(input_ids)
    is_sep = (input_ids == sep).long()
    second = (is_sep.cumsum(dim=1) - is_sep) >= 1  # a separator strictly before
    if pad is not None:
        second &= input_ids != pad
    return second.long()


def _wrapped(factory: Callable[[], nn.Module], layout: TokenLayout) -> Callable[[], nn.Module]:
    return lambda: TokenIds(factory(), layout.pad, layout.keys, sep_token_id=layout.sep)


class TokenIds(nn.Module):
    """A text model that takes a tokenizer's output, called with its token ids (N, T) only.

    ``forward(input_ids)`` calls the wrapped ``model`` with ``input_ids`` and
    the inputs a tokenizer derives from them: ``attention_mask = input_ids !=
    pad_token_id`` and ``token_type_ids`` by :func:`segment_ids` (0 for one
    sequence per sample; for sentence pairs, 1 after the first
    ``sep_token_id``), each only if the data had it, and returns the logits
    (N, C) (the ``logits`` of a Hugging Face ``ModelOutput``). :func:`study`
    checks on every sample that the derived inputs equal the given ones
    before it uses this, so the pipeline (which varies one tensor of ids:
    removal metrics put the pad id in place of removed tokens, which the mask
    then hides, and never remove [SEP]) sees the model as it is called on the
    data. ``get_input_embeddings`` and ``config`` are the wrapped model's, so
    attribution finds the embedding layer and the pad id.
    """

    def __init__(self, model: nn.Module, pad_token_id: int | None, keys: Sequence[str], *,
                 sep_token_id: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.pad_token_id = pad_token_id
        self.sep_token_id = sep_token_id
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
            kwargs["token_type_ids"] = segment_ids(input_ids, self.sep_token_id,
                                                   self.pad_token_id)
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


def _token_layout(encodings: Iterable[tuple[str, Mapping]], model: object) -> TokenLayout:
    """The :class:`TokenLayout` of tokenizer outputs ``[(where, encoding), ...]`` (every split
    in memory, or every batch of the streamed ones, read once): their keys, the pad id (the
    model's, else the one id under ``attention_mask == 0``), and for sentence pairs the
    separator."""
    keys, pad, seps, special = None, _model_pad_id(model), set(), set()
    firsts = set()
    for where, enc in encodings:
        unknown = sorted(set(enc) - set(_ACCEPTED_KEYS))
        if "input_ids" not in enc:  # tests/cases_s6/009-study-keyword-inputs.md
            raise ValueError(
                f"Expected the inputs of `data` to be one tensor (n, ...) or a tokenizer's "
                f"output (input_ids, optionally attention_mask and token_type_ids), got a "
                f"mapping of the inputs {sorted(enc)} ({where}): xprune.study runs models "
                f"with one input. For a model with several inputs, study a wrapper whose "
                f"forward takes one tensor; xprune.prune, attribute and the agreement "
                f"metrics take the mapping as it is.")
        if unknown:
            raise ValueError(f"Expected the tokenizer output of `data` to hold input_ids and "
                             f"optionally attention_mask, token_type_ids and "
                             f"special_tokens_mask, got the keys {sorted(enc)} ({where}); drop "
                             f"{unknown or 'nothing'} (e.g. return_offsets_mapping=False).")
        these = tuple(k for k in TOKEN_KEYS if k in enc)
        if keys is not None and these != keys:
            raise ValueError(f"Expected every split of `data` to hold the same inputs, got "
                             f"{list(keys)} and {list(these)}.")
        keys = these
        ids = torch.as_tensor(enc["input_ids"])
        if "attention_mask" in enc and pad is None:  # learn the pad id from the padding
            padded = ids[torch.as_tensor(enc["attention_mask"]) == 0].unique()
            if len(padded) > 1:
                raise ValueError(f"Expected one pad id where the attention_mask of `data` is 0, "
                                 f"got {padded[:5].tolist()}.")
            pad = int(padded[0]) if len(padded) else None
        if "special_tokens_mask" in enc:
            special |= set(ids[torch.as_tensor(enc["special_tokens_mask"]).bool()].tolist())
        if "token_type_ids" in enc:
            types = torch.as_tensor(enc["token_type_ids"])
            if types.shape != ids.shape:
                raise ValueError(f"Expected the token_type_ids of `data` of the shape of its "
                                 f"input_ids {tuple(ids.shape)}, got {tuple(types.shape)} "
                                 f"({where}).")
            paired = types.bool().any(dim=1)
            if bool(paired.any()):  # sentence pairs: the token before the second segment
                start = types[paired].bool().long().argmax(dim=1)
                if bool((start == 0).any()):
                    raise ValueError(f"Expected the token_type_ids of `data` to be 0 on the "
                                     f"first sequence and 1 on the second of a pair, got 1 "
                                     f"from the first token ({where}).")
                seps |= set(ids[paired][torch.arange(len(start)), (start - 1).clamp(min=0)]
                            .tolist())
                firsts |= set(ids[paired][:, 0].tolist())
    if len(seps) > 1:
        raise ValueError(f"Expected sentence pairs in `data` to be separated by one id (the "
                         f"tokenizer's [SEP]), got the ids {sorted(seps)[:5]} before the "
                         f"second segments.")
    sep = next(iter(seps), None)
    if sep is not None:
        special.add(sep)
        if len(firsts) == 1:  # [CLS]
            special |= firsts
    return TokenLayout(pad, keys, sep, tuple(sorted(special)))


def _ids_of(enc: Mapping, layout: TokenLayout, where: str) -> torch.Tensor:
    """The ``input_ids`` of a tokenizer output, after checking that its other inputs follow
    from them as :class:`TokenIds` rebuilds them (ValueError naming the difference)."""
    ids = torch.as_tensor(enc["input_ids"])
    keys = tuple(k for k in TOKEN_KEYS if k in enc)
    if keys != layout.keys:
        raise ValueError(f"Expected every batch of `data` to hold the inputs {list(layout.keys)}, "
                         f"got {list(keys)} ({where}).")
    pad = layout.pad
    if "attention_mask" in enc:
        derived = ids != pad if pad is not None else torch.ones_like(ids, dtype=torch.bool)
        _check_rebuilt("attention_mask", torch.as_tensor(enc["attention_mask"]).bool(), derived,
                       f"input_ids != pad id ({pad})", where,
                       " Pad with the tokenizer's pad token only where the mask is 0.")
    if "token_type_ids" in enc:
        _check_rebuilt("token_type_ids", torch.as_tensor(enc["token_type_ids"]).long(),
                       segment_ids(ids, layout.sep, pad),
                       f"0 up to the first separator (id {layout.sep}) and 1 after it up to the "
                       f"padding, as a tokenizer gives them for one sequence or a pair (text, "
                       f"text_pair) per sample", where)
    return ids


def _check_rebuilt(key: str, given: torch.Tensor, derived: torch.Tensor, expected: str,
                   where: str, hint: str = "") -> None:
    """ValueError unless the tokenizer output's ``key`` (``given``) equals ``derived``, what the
    study rebuilds from the ids, naming how many positions differ ("all": another shape)."""
    bad = "all" if given.shape != derived.shape else int((given != derived).sum())
    if bad:
        raise ValueError(f"Expected the {key} of `data` to be {expected}: the study gives the "
                         f"model the ids alone and rebuilds the {key} from them, but {bad} "
                         f"positions differ ({where}).{hint}")


def _token_ids(parts: dict[str, tuple[dict, torch.Tensor]], model: object
               ) -> tuple[object, TokenLayout]:
    """The ids of every split in place of its tokenizer output, and the layout the model is
    called with; ValueError unless the other inputs follow from the ids."""
    layout = _token_layout([(split, enc) for split, (enc, _) in parts.items()], model)
    out = {split: (_ids_of(enc, layout, split), labels) for split, (enc, labels) in parts.items()}
    return (out["all"] if "all" in out else out), layout
