"""Across training seeds: the same analysis run with several seeds, summarised.

Intervals over test samples describe one trained model. Training variance
needs several training runs: each seed's run folder holds its own full
report, and this module writes the spread of the per-seed means beside them.
"""

from __future__ import annotations

import math
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd

from .._io import atomic_write_text, read_table
from ..metrics import METRICS
from .render import _md_table, md_text
from .tables import model_order

__all__ = ["render_seeds_report", "seed_summary"]


def seed_summary(run_dirs: dict[int, Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean ± standard deviation across seeds of each seed's means.

    Parameters
    ----------
    run_dirs : dict
        Seed -> run folder written by :func:`xprune.analysis.run_analysis`.

    Returns
    -------
    (models, metrics) : DataFrames
        ``models``: per model, accuracy, macro recall, ECE and measured
        sparsity as mean, std (ddof=1) and seeds. ``metrics``: per model x
        attribution x metric, the mean over samples of each seed, then its
        mean and std across seeds, and the paired change vs dense (the
        per-seed difference of means) with its mean and std.
    """
    model_rows, metric_rows = [], []
    for seed, run in run_dirs.items():
        models = read_table(Path(run) / "models.csv").assign(seed=seed)
        model_rows.append(models)
        results = read_table(Path(run) / "results.csv")
        means = results.groupby(["model", "attribution", "metric"], sort=False)["value"].mean()
        frame = means.rename("mean").reset_index().assign(seed=seed)
        dense = frame[frame["model"] == "dense"].set_index(["attribution", "metric"])["mean"]
        key = pd.MultiIndex.from_frame(frame[["attribution", "metric"]])
        frame["diff"] = frame["mean"].to_numpy() - dense.reindex(key).to_numpy()
        frame.loc[frame["model"] == "dense", "diff"] = np.nan
        metric_rows.append(frame)
    models = pd.concat(model_rows, ignore_index=True)
    per_seed = pd.concat(metric_rows, ignore_index=True)

    def spread(group: pd.Series) -> pd.Series:
        v = group.dropna().to_numpy()
        return pd.Series({"mean": v.mean() if v.size else math.nan,
                          "std": v.std(ddof=1) if v.size > 1 else math.nan,
                          "seeds": int(v.size)})

    cols = ["accuracy", "macro_recall", "ece", "measured_sparsity"]
    model_table = (models.groupby("model", sort=False)[[c for c in cols if c in models]]
                   .agg(["mean", "std"]))
    model_table.columns = [f"{a}_{b}" for a, b in model_table.columns]
    model_table["seeds"] = models.groupby("model", sort=False).size()
    model_table = model_table.reset_index()
    model_table["role"] = model_table["model"].map(
        models.drop_duplicates("model").set_index("model")["role"])
    model_table["requested_sparsity"] = model_table["model"].map(
        models.drop_duplicates("model").set_index("model")["requested_sparsity"])
    metric_table = per_seed.groupby(["model", "attribution", "metric"], sort=False).apply(
        lambda g: pd.concat([spread(g["mean"]), spread(g["diff"]).add_prefix("diff_")]),
        include_groups=False).reset_index()
    return model_table, metric_table


def _pm(mean: float, std: float, digits: int = 3, scale: float = 1.0) -> str:
    if mean is None or math.isnan(mean):
        return "n/a"
    text = f"{scale * mean:.{digits}f}"
    return text + (f" ± {scale * std:.{digits}f}" if not math.isnan(std) else "")


def _sentences(models: pd.DataFrame, metrics: pd.DataFrame, n_seeds: int) -> list[str]:
    dense = models[models["model"] == "dense"].iloc[0]
    out = []
    sparse = models[models["role"] == "sparse"].sort_values("requested_sparsity", kind="stable")
    for _, m in sparse.iterrows():
        text = (f"At {100 * m['requested_sparsity']:g}% sparsity ({m['model']}), across "
                f"{n_seeds} training seeds, test accuracy is "
                f"{_pm(m['accuracy_mean'], m['accuracy_std'], 1, 100)}% vs "
                f"{_pm(dense['accuracy_mean'], dense['accuracy_std'], 1, 100)}% dense (mean ± "
                "std across seeds).")
        for attribution in metrics["attribution"].unique():
            sel = metrics[(metrics["model"] == m["model"]) & (metrics["attribution"]
                                                               == attribution)]
            agree = sel[sel["metric"] == "spearman"]
            if not agree.empty:
                a = agree.iloc[0]
                text += (f" {attribution.replace('_', ' ').capitalize()} maps keep a Spearman "
                         f"agreement of {_pm(a['mean'], a['std'], 2)} with the dense maps")
                faith = sel[sel["metric"] == "faithfulness_correlation"]
                if not faith.empty:
                    f = faith.iloc[0]
                    text += (f"; Δ faithfulness correlation "
                             f"{_pm(f['diff_mean'], f['diff_std'], 3)}")
                text += "."
        out.append(text)
    if n_seeds < 3:
        out.append(f"These rest on {n_seeds} training seed(s): use at least 3 before "
                   "generalising.")
    return out


def render_seeds_report(out_dir: str | Path, run_dirs: dict[int, Path]) -> Path:
    """Write ``seeds_models.csv``, ``seeds_metrics.csv``, ``report.md`` and ``report.html``.

    ``out_dir`` holds one run folder per seed (``run_dirs``); each keeps its
    own full report. Returns the path of the summary ``report.html``.
    """
    out = Path(out_dir)
    models, metrics = seed_summary(run_dirs)
    atomic_write_text(out / "seeds_models.csv", models.to_csv(index=False, na_rep="NaN"))
    atomic_write_text(out / "seeds_metrics.csv", metrics.to_csv(index=False, na_rep="NaN"))
    n_seeds = len(run_dirs)
    order = model_order(models.assign(requested_sparsity=models["requested_sparsity"]))
    sentences = _sentences(models, metrics, n_seeds)
    model_rows = pd.DataFrame({
        "model": order,
        "accuracy % (mean ± std)": [_pm(*models.set_index("model").loc[m, ["accuracy_mean",
                                                                          "accuracy_std"]],
                                        1, 100) for m in order],
        "ECE": [_pm(*models.set_index("model").loc[m, ["ece_mean", "ece_std"]])
                if "ece_mean" in models else "n/a" for m in order],
        "seeds": [int(models.set_index("model").loc[m, "seeds"]) for m in order]})
    tables = {}
    per_layer = metrics["metric"].str.contains(r"@\d+:", regex=True)  # curve points
    for attribution, group in metrics[~per_layer].groupby("attribution", sort=False):
        cells = group.assign(text=[_pm(m, s) for m, s in zip(group["mean"], group["std"],
                                                               strict=True)])
        table = cells.pivot(index="metric", columns="model", values="text")
        table = table.reindex(columns=[m for m in order if m in table.columns])
        table.insert(0, "better", ["higher" if (i := METRICS.get(k.split("@")[0])) and
                                   i.higher_is_better else "lower" if i else ""
                                   for k in table.index])
        tables[attribution] = table.fillna("—").reset_index()
    links = [(seed, f"{Path(run).name}/report.html") for seed, run in run_dirs.items()]
    md = [f"# xprune report across {n_seeds} training seeds", "",
          "Mean ± standard deviation across seeds of each seed's mean over test samples. "
          "Each seed's full report (intervals over samples, figures): "
          + ", ".join(f"[seed {s}]({link})" for s, link in links) + ".", "",
          "## What pruning changed", ""]
    md += [f"- {md_text(s)}" for s in sentences]
    md += ["", "## Models", "", _md_table(model_rows), ""]
    for attribution, table in tables.items():
        md += [f"## {md_text(attribution)}", "", _md_table(table), ""]
    atomic_write_text(out / "report.md", "\n".join(md))
    env = jinja2.Environment(loader=jinja2.PackageLoader("xprune.report", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]),
                             undefined=jinja2.StrictUndefined)

    def records(frame):
        return {"columns": [str(c) for c in frame.columns],
                "rows": [[str(v) for v in row] for row in frame.itertuples(index=False)]}

    html = env.get_template("seeds.html.j2").render(
        n_seeds=n_seeds, sentences=sentences, links=links, model_rows=records(model_rows),
        tables={k: records(v) for k, v in tables.items()})
    return atomic_write_text(out / "report.html", html)
