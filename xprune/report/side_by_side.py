"""Several architectures' runs of the same study in one report, side by side.

Each run folder (``xprune run``) holds one architecture trained, pruned and
explained on the same data with the same seed, so the same test samples, the
same sparsities and the same controls. This module reads their tables
(nothing is recomputed but the per-run summaries a run folder lacks) and
writes a report that puts, for each architecture and attribution method,
plausibility (agreement of the maps with the ground-truth rationale),
faithfulness and agreement with the dense maps beside each other, with their
95% intervals, the paired change against the dense model and the controls;
and, for audio, the same recordings' spectrograms with the dense and the
most pruned model's maps.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from .._io import atomic_write_bytes, atomic_write_text, read_table
from . import figures as F
from .render import _md_table, md_text
from .tables import fmt_cell, fmt_ci, metric_summary

__all__ = ["SIDE_BY_SIDE_METRICS", "architecture_label", "render_side_by_side",
           "side_by_side_summary"]

#: The metrics compared across architectures, by family, where the runs hold them.
SIDE_BY_SIDE_METRICS = [("plausibility", "rationale_auprc"), ("plausibility", "rationale_mass"),
                        ("plausibility", "token_iou"),
                        ("faithfulness", "deletion_auc@vs_random"),
                        ("faithfulness", "faithfulness_correlation"),
                        ("agreement", "spearman"), ("agreement", "top_k_intersection")]


def architecture_label(run: Path) -> str:
    """The architecture a run trained: its model factory's name (``FrameGRU``), else the
    analysis name."""
    config = json.loads((Path(run) / "config.json").read_text())
    factory = (config.get("model") or {}).get("factory")
    return factory.rsplit(":", 1)[-1] if factory else config.get("name", Path(run).name)


def _run_tables(run: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    for name in ("results.csv", "models.csv", "config.json"):
        if not (run / name).exists():
            raise FileNotFoundError(f"Expected {name} in the run folder {run}; is it an xprune "
                                    "run?")
    summary = (read_table(run / "summary.csv") if (run / "summary.csv").exists()
               else metric_summary(read_table(run / "results.csv")))
    return summary, read_table(run / "models.csv")


def side_by_side_summary(runs: Mapping[str, str | Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The runs' metric summaries and model tables, one ``architecture`` column added.

    Parameters
    ----------
    runs : mapping
        Architecture label -> run folder written by :func:`xprune.analysis.run_analysis`.

    Returns
    -------
    (summary, models) : DataFrames
        ``summary``: per architecture x model x attribution x metric, the mean
        with its 95% BCa interval and the paired change vs that
        architecture's dense model (:func:`xprune.report.tables.metric_summary`,
        read from ``summary.csv`` where the run has one). ``models``: each
        run's ``models.csv``.

    Raises
    ------
    ValueError
        For fewer than two runs.
    FileNotFoundError
        If a folder lacks the files a run writes.
    """
    if len(runs) < 2:
        raise ValueError(f"Expected at least two run folders to put side by side, got "
                         f"{len(runs)}.")
    summaries, models = [], []
    for label, run in runs.items():
        summary, table = _run_tables(Path(run))
        summaries.append(summary.assign(architecture=label))
        models.append(table.assign(architecture=label))
    return pd.concat(summaries, ignore_index=True), pd.concat(models, ignore_index=True)


def _row(summary: pd.DataFrame, arch: str, model: str, attribution: str, metric: str):
    hit = summary[(summary["architecture"] == arch) & (summary["model"] == model)
                  & (summary["attribution"] == attribution) & (summary["metric"] == metric)]
    return None if hit.empty else hit.iloc[0]


def _p(row) -> str:
    p = row.get("p_holm", math.nan)
    return "" if p is None or math.isnan(p) else (
        ", p_Holm < 0.001" if p < 0.001 else f", p_Holm = {p:.2g}")


def _sentences(summary: pd.DataFrame, models: pd.DataFrame, metrics: list[str]) -> list[str]:
    """Per architecture and method: each metric's dense value, its paired change at every
    sparsity and what the controls do; and each architecture's accuracy."""
    out = []
    for arch, table in models.groupby("architecture", sort=False):
        sparse = table[table["role"] == "sparse"]
        if "pruning" not in sparse:
            sparse = sparse.assign(pruning="")
        several = sparse["pruning"].nunique() > 1  # name the method beside the sparsity
        sparse = sparse.assign(rank=sparse["pruning"].map(
            {p: i for i, p in enumerate(dict.fromkeys(sparse["pruning"]))})).sort_values(
            ["rank", "requested_sparsity"], kind="stable")

        def label(m, several=several) -> str:
            return (f"{m['pruning']} " if several else "") + f"{100 * m['requested_sparsity']:g}%"

        dense = table[table["role"] == "dense"].iloc[0]
        acc = ", ".join(f"{label(m)}: {100 * m['accuracy']:.1f}%" for _, m in sparse.iterrows())
        out.append(f"{arch}: test accuracy {100 * dense['accuracy']:.1f}% dense; pruned {acc}.")
        controls = table.loc[table["role"] == "control", "model"].tolist()
        for attribution in summary.loc[summary["architecture"] == arch, "attribution"].unique():
            for metric in metrics:
                base = _row(summary, arch, "dense", attribution, metric)
                steps = [(m, _row(summary, arch, m["model"], attribution, metric))
                         for _, m in sparse.iterrows()]
                steps = [(m, r) for m, r in steps if r is not None]
                if not steps:
                    continue
                start = (f"{fmt_cell(base)} dense; " if base is not None else "")
                changes = "; ".join(f"{label(m)}: "
                                    f"{fmt_cell(r, diff=not math.isnan(r['diff_mean']))}{_p(r)}"
                                    for m, r in steps)
                ctrl = [(c, _row(summary, arch, c, attribution, metric)) for c in controls]
                ctrl_text = "; ".join(
                    f"{c.replace('control:', '')} {fmt_cell(r, diff=not math.isnan(r['diff_mean']))}"
                    for c, r in ctrl if r is not None)
                what = "change vs dense" if base is not None else "value"
                out.append(f"{arch}, {attribution.replace('_', ' ')}, {metric}: {start}"
                           f"{what} by sparsity {changes}"
                           + (f"; controls: {ctrl_text}" if ctrl_text else "") + ".")
    return out


def _tables(summary: pd.DataFrame, models: pd.DataFrame, metrics: list[str]
            ) -> dict[str, pd.DataFrame]:
    """Per attribution method: rows metric x model, per architecture the mean [CI] and Δ."""
    archs = list(dict.fromkeys(models["architecture"]))
    order = (models.assign(rank=models["role"].map({"dense": 0, "sparse": 1, "control": 2}))
             .sort_values(["rank", "requested_sparsity"], kind="stable")
             .drop_duplicates("model")["model"].tolist())
    tables = {}
    for attribution in summary["attribution"].unique():
        rows = []
        for family, metric in [(f, m) for f, m in SIDE_BY_SIDE_METRICS if m in metrics]:
            for model in order:
                row = {"family": family, "metric": metric, "model": model}
                for arch in archs:
                    r = _row(summary, arch, model, attribution, metric)
                    row[f"{arch}"] = fmt_cell(r) if r is not None else "—"
                    row[f"{arch} Δ vs dense"] = (
                        fmt_cell(r, diff=True) + _p(r) if r is not None
                        and not math.isnan(r["diff_mean"]) else "—")
                if any(v != "—" for k, v in row.items() if k not in ("family", "metric",
                                                                      "model")):
                    rows.append(row)
        tables[attribution] = pd.DataFrame(rows)
    return tables


def _accuracy_table(models: pd.DataFrame) -> pd.DataFrame:
    table = models.pivot_table(index="model", columns="architecture", values="accuracy",
                               sort=False)
    out = pd.DataFrame({"model": table.index})
    for arch in dict.fromkeys(models["architecture"]):
        rows = models[models["architecture"] == arch].set_index("model")
        out[f"{arch} accuracy [95% CI]"] = [
            fmt_ci(100 * rows.loc[m, "accuracy"], 100 * rows.loc[m, "accuracy_ci_low"],
                   100 * rows.loc[m, "accuracy_ci_high"], 1) if m in rows.index else "—"
            for m in table.index]
    return out


def _spectrogram_figure(runs: Mapping[str, Path], models: pd.DataFrame, attribution: str,
                        n: int = 3):
    """Rows of recordings, a column per architecture: dense vs its most pruned model."""
    archs = list(runs)
    fig, axes = F.plt.subplots(n, len(archs), squeeze=False,
                             figsize=(3.2 * len(archs) + 0.4, 2.1 * n + 0.5))
    for c, arch in enumerate(archs):
        examples = read_table(Path(runs[arch]) / "examples.csv")
        table = models[(models["architecture"] == arch) & (models["role"] == "sparse")]
        pruned = table.sort_values("requested_sparsity")["model"].iloc[-1]
        for r, sample in enumerate(sorted(examples["sample"].unique())[:n]):
            ax = F.plot_spectrogram_maps(examples, attribution, sample, ["dense", pruned],
                                         ax=axes[r, c])
            ax.tick_params(labelsize=6)
            ax.xaxis.label.set_fontsize(7)
            ax.yaxis.label.set_fontsize(7)
            if r == 0:
                ax.set_title(f"{arch}: dense vs {pruned}", fontsize=8)
    fig.suptitle(f"{attribution.replace('_', ' ')}: top 10% of each map over the same "
                 "recordings (formant bands dotted green)", fontsize=9)
    return fig


def _figures(out: Path, runs: Mapping[str, Path], summary: pd.DataFrame, models: pd.DataFrame,
             metrics: list[str]) -> list[tuple[str, str, bytes]]:
    figs = []
    attributions = list(summary["attribution"].unique())
    shown = [m for _, m in SIDE_BY_SIDE_METRICS if m in metrics]
    fig, axes = F.plt.subplots(len(shown), len(attributions), squeeze=False,
                             figsize=(4.0 * len(attributions), 2.6 * len(shown)))
    for r, metric in enumerate(shown):
        for c, attribution in enumerate(attributions):
            F.plot_architectures_vs_sparsity(summary, metric, attribution, ax=axes[r, c])
    fig.tight_layout()
    figs.append(("metrics_vs_sparsity.png", "Plausibility, faithfulness and agreement vs "
                 "sparsity per architecture (95% CI bands; dotted: controls)",
                 F.figure_png(fig)))
    kinds = [json.loads((Path(run) / "data.json").read_text()).get("kind")
             if (Path(run) / "data.json").exists() else None for run in runs.values()]
    if all(k == "audio" for k in kinds):
        for attribution in attributions:
            figs.append((f"spectrograms_{attribution}.png",
                         f"Spectrograms with the dense and most pruned maps, {attribution}",
                         F.figure_png(_spectrogram_figure(runs, models, attribution))))
    for name, _, png in figs:
        atomic_write_bytes(out / "figures" / name, png)
    return figs


def render_side_by_side(out_dir: str | Path, runs: Mapping[str, str | Path]) -> Path:
    """Write ``report.md``, ``report.html``, ``side_by_side.csv`` and ``figures/`` comparing
    the runs of several architectures. Returns the path of ``report.html``.

    Parameters
    ----------
    out_dir : path
        The folder to write (created).
    runs : mapping
        Architecture label -> run folder; the runs should share data, seed,
        sparsities and controls (the report says which samples it compares).

    Raises
    ------
    ValueError
        For fewer than two runs.
    FileNotFoundError
        If a folder lacks the files a run writes.
    """
    out = Path(out_dir)
    runs = {label: Path(run) for label, run in runs.items()}
    summary, models = side_by_side_summary(runs)
    metrics = [m for _, m in SIDE_BY_SIDE_METRICS if m in set(summary["metric"])]
    atomic_write_text(out / "side_by_side.csv", summary.to_csv(index=False, na_rep="NaN"))
    sentences = _sentences(summary, models, metrics)
    tables = _tables(summary, models, metrics)
    accuracy = _accuracy_table(models)
    figs = _figures(out, runs, summary, models, metrics)
    n = int(summary.loc[summary["model"] == "dense", "n_total"].max())
    intro = (f"{len(runs)} architectures ({', '.join(runs)}), each trained, pruned and "
             f"explained in its own run ({', '.join(str(r) for r in runs.values())}) on the "
             f"same {n} held-out test samples. Means with 95% BCa bootstrap intervals over "
             "samples; Δ = model minus its own dense model on the same samples (paired), "
             "p-values two-sided Wilcoxon, Holm-corrected within each run's model and "
             "method. Controls: a dense model of another seed and the dense model fine-tuned "
             "without pruning, per architecture. deletion_auc@vs_random: deletion AUC minus "
             "that of a random ranking on the same model (below 0 = better than chance).")
    lines = ["# xprune: architectures side by side", "", md_text(intro), "",
             "## What pruning changed, per architecture", ""]
    lines += [f"- {md_text(s)}" for s in sentences]
    lines += ["", "## Accuracy", "", _md_table(accuracy), ""]
    for attribution, table in tables.items():
        lines += [f"## {md_text(attribution)}", "", _md_table(table), ""]
    lines += ["## Figures", ""] + [f"![{md_text(c)}](figures/{name})" for name, c, _ in figs]
    lines += ["", "Per-architecture summaries: `side_by_side.csv`; each run's own report in its "
              "folder.", ""]
    atomic_write_text(out / "report.md", "\n".join(lines))
    esc = html.escape
    body = [f"<h1>xprune: architectures side by side</h1><p>{esc(intro)}</p>",
            "<h2>What pruning changed, per architecture</h2><ul>"
            + "".join(f"<li>{esc(s)}</li>" for s in sentences) + "</ul>",
            "<h2>Accuracy</h2>" + accuracy.to_html(index=False, escape=True)]
    body += [f"<h2>{esc(a)}</h2>" + t.to_html(index=False, escape=True)
             for a, t in tables.items()]
    body += ["<h2>Figures</h2>"] + [
        f"<figure><img alt='{esc(c)}' src='data:image/png;base64,"
        f"{base64.b64encode(png).decode('ascii')}'><figcaption>{esc(c)}</figcaption></figure>"
        for _, c, png in figs]
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>xprune: architectures "
            "side by side</title><style>body{font-family:sans-serif;max-width:1200px;margin:auto}"
            "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;"
            "padding:2px 6px}img{max-width:100%}</style></head><body>"
            + "".join(body) + "</body></html>")
    return atomic_write_text(out / "report.html", page)
