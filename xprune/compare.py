"""Score saved attribution maps: two maps of the same inputs against each other, or one
model's maps for faithfulness, complexity and stability. The engines of ``xprune compare``
and ``xprune score``; the numbers come from :mod:`xprune.metrics`.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import pandas as pd
import torch
from torch import nn

from . import metrics as M
from ._validation import is_token_ids
from .attribution import Attributions, attribute, explainer
from .config import default_metric_names
from .metrics._base import metric_seed
from .stats import bootstrap_ci

__all__ = ["compare_attributions", "score_attributions", "summarise"]


def _names(metrics: Sequence[str] | None, kinds: tuple[str, ...], x: torch.Tensor
           ) -> list[str]:
    """The metrics named (aliases resolved), or by default every metric of ``kinds`` that
    applies to inputs ``x`` (:func:`xprune.config.default_metric_names`)."""
    if metrics is None:
        return default_metric_names((n for n, i in M.METRICS.items() if i.kind in kinds),
                                    images=x.dim() == 4, tokens=is_token_ids(x))
    out = []
    for name in metrics:
        info = M.get_metric(name)
        if info.kind not in kinds:
            # tests/cases_s6/012-score-agreement-metric.md: say which command scores it
            where = ("it compares two maps: `xprune compare A.safetensors B.safetensors "
                     f"--metrics {info.name}`" if info.kind == "pair" else
                     "it scores one model's maps: `xprune score MAPS.safetensors --checkpoint "
                     f"MODEL --factory pkg.module:build --metrics {info.name}`")
            valid = sorted(n for n, i in M.METRICS.items() if i.kind in kinds)
            raise ValueError(f"Expected metrics of kind {kinds}, got {name!r} of kind "
                             f"{info.kind!r}: {where}. Valid here: {', '.join(valid)}.")
        out.append(info.name)  # an alias (pixel_flipping) becomes xprune's name
    return out


def names_given(metrics: Sequence[str] | None) -> bool:
    """False for an explicitly empty list of metric names."""
    return metrics is None or len(metrics) > 0


def _long(scores: dict[str, torch.Tensor]) -> pd.DataFrame:
    return pd.concat([pd.DataFrame({"metric": name, "sample": range(len(v)),
                                    "value": v.double().cpu().numpy()})
                      for name, v in scores.items()], ignore_index=True)


def compare_attributions(a: Attributions, b: Attributions, *,
                         metrics: Sequence[str] | None = None,
                         foreground: bool = True) -> pd.DataFrame:
    """Agreement of two attribution records of the same inputs, per sample.

    Parameters
    ----------
    a, b : Attributions
        Maps of the same inputs (checked equal), e.g. a dense and a pruned
        model's, with ``a`` the reference.
    metrics : sequence of str, optional
        Registered agreement ("pair") metrics; default all that apply
        (SSIM only for images).
    foreground : bool
        Also score each metric but SSIM over the features where the input is
        nonzero (``<name>@foreground``, :func:`xprune.metrics.on_features`).

    Returns
    -------
    DataFrame with columns metric, sample, value (long format).

    Raises
    ------
    ValueError
        If the records explain different inputs or maps of different shapes,
        or a metric is unknown or not an agreement metric.
    """
    xa, xb = a.attributed, b.attributed  # the explained inputs (one of several, for text)
    if xa.shape != xb.shape:
        raise ValueError("Expected two attribution records of the same inputs, got inputs of "
                         f"shapes {tuple(xa.shape)} and {tuple(xb.shape)}.")
    if not torch.equal(xa, xb):
        n = int((xa != xb).reshape(len(a), -1).any(dim=1).sum())
        raise ValueError(f"Expected two attribution records of the same inputs, got inputs "
                         f"that differ in {n} of {len(a)} samples.")
    if not torch.equal(a.targets, b.targets):
        n = int((a.targets != b.targets).sum())
        raise ValueError(f"Expected maps of the same target classes, got targets that differ "
                         f"in {n} of {len(a)} samples: compare maps of the same class (for a "
                         "pruned model, the dense model's prediction).")
    if not names_given(metrics):
        raise ValueError("Expected at least one metric name.")
    names = _names(metrics, ("pair",), xa)
    fg = M.foreground(xa) if foreground else None
    scores = {}
    for name in names:
        info = M.METRICS[name]
        scores[name] = info.fn(a, b)
        if fg is not None and name != "ssim" and not bool(fg.all()):
            scores[f"{name}@foreground"] = M.on_features(info.fn, a, b, fg)
    return _long(scores)


def score_attributions(model: nn.Module, a: Attributions, *,
                       metrics: Sequence[str] | None = None, seed: int = 0,
                       method_params: dict | None = None) -> pd.DataFrame:
    """Complexity, faithfulness, stability and sanity scores of one model's saved maps.

    The maps are scored against ``model`` on the inputs and targets stored in
    ``a``. Stability and randomisation metrics re-run the attribution method
    recorded in ``a`` (``a.method`` with ``a.params`` unless
    ``method_params`` is given).

    Parameters
    ----------
    model : nn.Module
        The model the maps explain.
    a : Attributions
    metrics : sequence of str, optional
        Registered metric names of any kind but "pair"; default: every
        complexity and faithfulness metric that applies to the inputs
        (:func:`xprune.config.default_metric_names`: the ERASER metrics for
        token ids only, no continuous noise for token ids).
    seed : int
        Seeds each metric's random draws (one generator per metric name).

    Returns
    -------
    DataFrame with columns metric, sample, value (long format).

    Raises
    ------
    ValueError
        On an unknown metric or an agreement metric, or the metrics' own errors.
    """
    kinds = ("map", "model", "explainer", "model_explainer", "randomisation")
    if not names_given(metrics):
        raise ValueError("Expected at least one metric name.")
    default = metrics is None
    names = _names(metrics, kinds, a.attributed)
    if default:
        names = [n for n in names if M.METRICS[n].kind in ("map", "model")]
    params = dict(a.params) if method_params is None else dict(method_params)
    output = params.pop("output", "logit")
    explain = explainer(model, a.method, params=params, output=output)

    def attribute_fn(m, inputs, target):
        return attribute(m, inputs, target, a.method, params=params, output=output).values

    scores = {}
    x, t = a.inputs, a.targets
    for name in names:
        info = M.METRICS[name]
        kwargs = {}
        if "generator" in inspect.signature(info.fn).parameters:
            kwargs["generator"] = torch.Generator().manual_seed(metric_seed(seed, name))
        args = {"map": (a,), "model": (model, x, a, t), "explainer": (explain, x, t),
                "model_explainer": (model, explain, x, t),
                "randomisation": (model, x, t, attribute_fn)}[info.kind]
        scores[name] = info.fn(*args, **kwargs)
    return _long(scores)


def summarise(scores: pd.DataFrame) -> pd.DataFrame:
    """Mean and 95% BCa bootstrap interval per metric of a long score table."""
    rows = []
    for metric, group in scores.groupby("metric", sort=False):
        mean, low, high, n = bootstrap_ci(group["value"].to_numpy())
        info = M.METRICS.get(metric.split("@")[0])
        rows.append({"metric": metric, "n": n, "mean": mean, "ci_low": low, "ci_high": high,
                     "better": "" if info is None else
                     "higher" if info.higher_is_better else "lower"})
    return pd.DataFrame(rows)
