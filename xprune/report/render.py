"""Render a run folder into ``report.md``, ``report.html`` and ``figures/``.

Reads only the files a run wrote (results, models, curves, examples,
timings, config), so a report can be re-rendered without recomputation.
"""

from __future__ import annotations

import base64
import json
import math
import re
from pathlib import Path

import jinja2
import pandas as pd

from .._io import atomic_write_bytes, atomic_write_text, read_table
from ..metrics import METRICS
from . import figures as F
from . import text as T
from .headline import headline, latency_noise, scale_note
from .tables import (
    all_zero_sentence,
    fmt_cell,
    metric_summary,
    model_order,
    plural,
    prediction_split,
    what_changed,
)

__all__ = ["md_cell", "md_text", "render_report"]

# the metrics drawn against sparsity: one or two per family, in report order
SUMMARY_METRICS = ["gini_index", "deletion_auc", "faithfulness_correlation", "max_sensitivity",
                   "spearman", "spearman@foreground", "model_parameter_randomisation",
                   "token_f1", "rationale_auprc"]
CATEGORY_ORDER = ["complexity", "faithfulness", "stability", "agreement", "plausibility",
                  "randomisation"]


def _base(metric: str) -> str:
    """``spearman@foreground`` -> ``spearman``."""
    return metric.split("@")[0]


def _metric_rank(metric: str) -> tuple[int, int, str]:
    info = METRICS.get(_base(metric))
    category = CATEGORY_ORDER.index(info.category) if info and info.category in \
        CATEGORY_ORDER else len(CATEGORY_ORDER)
    return category, list(METRICS).index(_base(metric)) if info else 0, metric

NOTES = {
    "changed": "Δ = pruned (or control) minus dense on the same samples, with a paired 95% "
               "bootstrap (BCa) CI; p-values are two-sided Wilcoxon signed-rank tests of the "
               "paired differences, Holm-corrected across the metrics of one model and method. "
               "Controls: a dense model trained with another seed, and the dense model "
               "fine-tuned for the same budget without pruning. They show how far any "
               "retrained model moves: agreement with the dense maps means little without them.",
    "models": "Latency is one median per model on a shared machine: compare ratios within a "
              "run, and rerun benchmarks/structured_latency.py for a controlled measurement. "
              "Sparsity and compression count each model's nonzero conv/linear weights against "
              "the dense model's, so removed channels count like zeroed weights. MACs per input "
              "sample, counting nonzero weights: real savings for a structurally smaller model, "
              "theoretical for zeroed weights (dense kernels do not skip zeros). Storage: "
              "safetensors bytes of the model as float32 vs a bitmask plus the nonzero values; "
              "the bitmask costs 1/32 of a float32 per weight, so that encoding is smaller only "
              "above about 3% sparsity.",
    "split": "Agreement of the maps on samples where the model predicts the dense model's "
             "class (agree) and where it does not (disagree): the maps explain the same target "
             "class either way. Removal scores (faithfulness, deletion) move with a model's "
             "confidence; their paired changes over the samples both models classify "
             "correctly leave out the samples one of them gets wrong.",
    "classes": "Recall of a class = the share of its test samples classified correctly (its "
               "accuracy). Δ in percentage points against the dense model; a pruned model can "
               "keep its overall accuracy while losing one class. ECE: expected calibration "
               "error, 15 equal-width confidence bins (Guo et al. 2017); NLL: mean negative "
               "log-likelihood of the true class in nats. Lower is better for both.",
    "metrics": "Deletion AUC is not normalised by the starting probability: a model that is "
               "less confident in the explained class scores lower (better) without its maps "
               "being more faithful. Read it beside the deletion curves and the accuracy. "
               "convergence_delta is |sum of the map - (f(x) - f(baseline))| in logits "
               "(completeness error of Integrated Gradients; small against the logit gap is "
               "good). name@foreground: an agreement metric over the pixels where the input "
               "is nonzero only (zero-baseline maps are 0 elsewhere for any model). "
               "name@vs_random: the score minus that of a random ranking of the features on "
               "the same model (0 = no better than chance), which takes out confidence "
               "shifts. model_parameter_randomisation: mean similarity to the original map as "
               "layers are re-initialised from the output down; random_logit: similarity to "
               "the map of a random other class (lower = the map depends on the model / "
               "class, as it should). Means with 95% BCa bootstrap intervals over samples (2,000 resamples, "
               "seeded), clipped to each metric's range. A cell that ends in (n = 250 of 256; "
               "6 undefined: constant map) is the mean of the 250 samples whose score is "
               "defined: the 6 others (e.g. a rank correlation of an all-zero map) are left out "
               "of the mean and its interval, not counted as any value.",
    "by_sparsity": "Δ = the model's score minus the dense model's on the same samples (95% "
                   "BCa interval): token F1 and AUPRC of the map against the ground-truth "
                   "evidence words (higher = more plausible); comprehensiveness and "
                   "sufficiency where the run computes them. 'vs dense': agreement of the "
                   "model's token maps with the dense model's. The controls below the pruned "
                   "models show how far retraining alone moves each number.",
    "bejjani": "Bejjani et al. 2025 ('Explain This, Pruner!', DistilBERT and RoBERTa on IMDb and "
               "Yelp) found that magnitude pruning leaves the faithfulness of Integrated "
               "Gradients explanations about unchanged while random pruning at the same "
               "sparsity degrades it. Here, on this run's own data: Δ = pruned minus dense on "
               "the same samples, and random minus magnitude, each with a 95% BCa bootstrap "
               "interval; 'unchanged' where the interval holds 0. The run agrees at a sparsity "
               "where magnitude is not worse than dense and random is worse than both.",
}


def _read(run: Path, name: str) -> pd.DataFrame:
    path = run / name
    if not path.exists():
        raise FileNotFoundError(f"Expected {name} in the run folder {run}; is it an xprune run?")
    return read_table(path)


def _model_rows(models: pd.DataFrame, timings: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    noise = latency_noise(timings)  # differences within the timer's noise are no findings
    t = models.merge(timings, on="model", how="left").set_index("model").loc[order].reset_index()
    out = pd.DataFrame({
        "model": t["model"],
        "sparsity (selected layers)": t.get("selected_sparsity", t["measured_sparsity"])
        .map("{:.4f}".format),
        "sparsity (all weights)": t["measured_sparsity"].map("{:.4f}".format),
        "test accuracy [95% CI]": [
            f"{100 * a:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"
            for a, lo, hi in zip(t["accuracy"], t["accuracy_ci_low"], t["accuracy_ci_high"],
                                 strict=True)],
        "macro recall": t["macro_recall"].map("{:.3f}".format),
        "ECE": t["ece"].map("{:.3f}".format) if "ece" in t else "n/a",
        "NLL": t["nll"].map("{:.3f}".format) if "nll" in t else "n/a",
        "nonzero / dense weights": [f"{nz:,} / {tot:,}" + (" (channels removed)" if st else "")
                                    for nz, tot, st in zip(t["nonzero_weights"],
                                                           t["total_weights"], t["structured"],
                                                           strict=True)],
        "compression ratio": t["compression_ratio"].map("{:.1f}x".format),
        "MACs nonzero / dense": [f"{n:,} / {d:,}" for d, n in
                                 zip(t["macs_dense"], t["macs_nonzero"], strict=True)],
        "storage bytes float32 / sparse encoding": [f"{d:,} / {s:,}" for d, s in
                                         zip(t["storage_dense_bytes"], t["storage_sparse_bytes"],
                                             strict=True)],
        "latency ms (median)": [f"{v:.3f}" + (" (within timer noise of dense)"
                                               if noise.get(m) else "")
                                for m, v in zip(t["model"], t["latency_ms"], strict=True)],
        "fine-tune s": t["finetune_seconds"].map(lambda v: "-" if math.isnan(v) else f"{v:.2f}"),
    })
    return out


def _class_table(classes: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Per-class recall of the dense model and each other model's change in points."""
    recall = classes.pivot(index="class", columns="model", values="recall")
    dense = order[0]
    out = pd.DataFrame({"class": recall.index,
                        "support": classes[classes["model"] == dense]
                        .set_index("class").loc[recall.index, "support"].to_numpy(),
                        f"recall {dense}": recall[dense].map("{:.3f}".format).to_numpy()})
    for model in order[1:]:
        if model in recall:
            out[f"Δ {model} (pts)"] = (100 * (recall[model] - recall[dense])).map(
                "{:+.1f}".format).to_numpy()
    return out


def _metric_tables(summary: pd.DataFrame, order: list[str]) -> dict[str, pd.DataFrame]:
    """Per attribution method: one row per metric (grouped by family), one column per model."""
    tables = {}
    per_layer = summary["metric"].str.contains(r"@\d+:", regex=True)
    for attribution, group in summary[~per_layer].groupby("attribution", sort=False):
        cells = group.assign(text=[fmt_cell(row) for _, row in group.iterrows()])
        table = cells.pivot(index="metric", columns="model", values="text")
        rows = sorted(table.index, key=_metric_rank)
        table = table.reindex(index=rows, columns=[m for m in order if m in table.columns])
        info = [METRICS.get(_base(m)) for m in rows]
        table.insert(0, "family", [i.category if i else "" for i in info])
        table.insert(1, "better", ["higher" if i and i.higher_is_better else
                                   "lower" if i else "" for i in info])
        tables[attribution] = table.fillna("—").reset_index()
    return tables


def _importance_tables(importance: pd.DataFrame, order: list[str], top: int = 10
                       ) -> dict[str, pd.DataFrame]:
    """Per method: the dense model's ``top`` features by mean |attribution|, every model beside."""
    tables = {}
    for method, group in importance.groupby("attribution", sort=False):
        table = group.pivot(index="feature", columns="model", values="mean_abs")
        table = table.reindex(columns=[m for m in order if m in table.columns])
        table = table.sort_values(order[0], ascending=False).head(top)  # the dense model
        tables[method] = table.map("{:.3f}".format).reset_index()
    return tables


def _metric_notes(metrics: set[str]) -> pd.DataFrame:
    """Definitions of the registered metrics among ``metrics`` (base names)."""
    return pd.DataFrame([{
        "metric": name, "category": info.category,
        "better": "higher" if info.higher_is_better else "lower",
        "range": f"[{info.range[0]:g}, {info.range[1]:g}]", "reference": info.reference,
    } for name, info in METRICS.items() if name in metrics])


def _figures(run: Path, results, summary, curves, examples, importance, order, models,
             layers) -> list[dict[str, str]]:
    figs: list[tuple[str, str, bytes]] = []
    methods = list(dict.fromkeys(results["attribution"]))
    focus = _focus_models(results, order)
    for method in methods:
        if not examples.empty:
            fig = F.plot_attribution_grid(
                examples, method, focus + [m for m in order if m.startswith("control")],
                title=f"{method.replace('_', ' ')}: the same inputs, dense vs each model "
                      "(one colour scale per row)")
            figs.append((f"maps_{method}.png", f"Attribution maps, {method}", F.figure_png(fig)))
            if _data_kind(run) == "audio":  # the maps over the spectrograms, dense vs each
                samples = sorted(examples["sample"].unique())[:3]
                fig = F.plot_spectrogram_grid(
                    examples, method, focus, samples,
                    title=f"{method.replace('_', ' ')}: top 10% of the dense (blue) and each "
                          "model's map (orange) over the same recordings; formant bands green")
                figs.append((f"spectrograms_{method}.png",
                             f"Spectrograms with the dense and each model's maps, {method}",
                             F.figure_png(fig)))
        if not importance.empty:
            ax = F.plot_feature_importance(importance, method, order)
            figs.append((f"importance_{method}.png", f"Feature importance, {method}",
                         F.figure_png(ax.figure)))
    variants = list(dict.fromkeys(results.loc[results["role"] == "sparse", "pruning"]))
    for metric in [m for m in SUMMARY_METRICS if m in set(summary["metric"])]:
        if len(variants) > 1:  # compare pruning methods, one figure per attribution method
            for method in methods:
                ax = F.plot_metric_vs_sparsity(summary, metric, attribution=method)
                figs.append((f"{metric}_vs_sparsity_{method}.png",
                             f"{metric} vs sparsity by pruning method, {method} (95% CI bands)",
                             F.figure_png(ax.figure)))
        else:
            ax = F.plot_metric_vs_sparsity(summary, metric)
            figs.append((f"{metric}_vs_sparsity.png", f"{metric} vs sparsity (95% CI bands)",
                         F.figure_png(ax.figure)))
    ax = F.plot_accuracy_vs_compression(models)
    figs.append(("accuracy_vs_compression.png", "Test accuracy vs compression ratio (95% CI)",
                 F.figure_png(ax.figure)))
    ax = F.plot_layer_sparsity(layers, [m for m in focus if m != "dense"])
    figs.append(("layer_sparsity.png", "Per-layer sparsity of the pruned models",
                 F.figure_png(ax.figure)))
    for method in methods:
        if summary["metric"].str.startswith("model_parameter_randomisation@").any():
            ax = F.plot_randomisation_curves(summary, method, focus)
            figs.append((f"randomisation_{method}.png",
                         f"Sanity check: cascading parameter randomisation, {method}",
                         F.figure_png(ax.figure)))
        kinds = set(curves["curve"]) if "curve" in curves else {"deletion"}
        for kind in [k for k in ("deletion", "insertion") if k in kinds]:
            ax = F.plot_deletion_curves(curves, method, focus, kind=kind)
            figs.append((f"{kind}_curves_{method}.png", f"{kind.capitalize()} curves, {method}",
                         F.figure_png(ax.figure)))
        if "spearman" in set(results["metric"]):
            ax = F.plot_agreement_distribution(results, method, order)
            figs.append((f"agreement_{method}.png", f"Per-sample Spearman agreement, {method}",
                         F.figure_png(ax.figure)))
    out = []
    for name, caption, png in figs:
        atomic_write_bytes(run / "figures" / name, png)
        out.append({"file": f"figures/{name}", "caption": caption,
                    "data": base64.b64encode(png).decode("ascii")})
    return out


def _data_kind(run: Path) -> str | None:
    """The kind of data a run recorded (``data.json``; "audio" for spectrograms), else None."""
    path = run / "data.json"
    return json.loads(path.read_text()).get("kind") if path.exists() else None


def _pruning_text(config: dict, results: pd.DataFrame) -> str:
    """What was pruned and how, from the config and the models actually present."""
    pc = config["pruning"]
    if pc.get("checkpoints"):
        return "pruned models loaded from checkpoints (pruned elsewhere; nothing pruned or " \
               "fine-tuned here)"
    variants = list(dict.fromkeys(results.loc[results["role"] == "sparse", "pruning"]))
    return (f"pruning {', '.join(f'`{v}`' for v in variants)} with "
            + plural(pc["finetune_epochs"], "fine-tuning epoch") + " each (masks held)")


def _focus_models(results: pd.DataFrame, order: list[str]) -> list[str]:
    """Models drawn in the per-model figures: dense and every sparse model of a single
    pruning variant; with several variants, dense and each variant at one shared sparsity
    (the highest at or below 0.9)."""
    sparse = results[results["role"] == "sparse"].drop_duplicates("model")
    if sparse["pruning"].nunique() <= 1:
        return [m for m in order if m == "dense" or m in set(sparse["model"])]
    levels = sorted(sparse["sparsity"].unique())
    level = max([s for s in levels if s <= 0.9 + 1e-9] or levels)
    chosen = set(sparse.loc[sparse["sparsity"] == level, "model"])
    return [m for m in order if m == "dense" or m in chosen]


_HTML_START = re.compile(r"<(?=[A-Za-z/!?])")           # where raw HTML could begin
_ENTITY = re.compile(r"&(?=#?[0-9A-Za-z]+;)")             # an entity Markdown would decode


def md_text(value: object) -> str:
    """``value`` as inert Markdown text on one line: no HTML tag, entity or line break.

    ``<`` that could open a tag (``<script>``, ``</b>``, ``<!--``) becomes
    ``&lt;`` and ``&`` that would start an entity becomes ``&amp;``; a ``<``
    before a space or a digit (``p < 0.001``) stays readable. Line breaks
    become spaces.
    """
    text = _ENTITY.sub("&amp;", str(value))
    text = _HTML_START.sub("&lt;", text)
    return re.sub(r"\s*[\r\n]+\s*", " ", text)


def md_cell(value: object) -> str:
    """``value`` escaped for a cell of a Markdown (GFM pipe) table.

    As :func:`md_text`, and ``\\`` and ``|`` are backslash-escaped so that a
    ``|`` in a feature, class or model name stays inside its cell (GFM
    applies this escape inside code spans too). Line breaks become ``<br>``.
    """
    text = _HTML_START.sub("&lt;", _ENTITY.sub("&amp;", str(value)))
    text = text.replace("\\", "\\\\").replace("|", "\\|")
    return re.sub(r"\r\n|\r|\n", "<br>", text)


def _md_table(frame: pd.DataFrame) -> str:
    """A GFM pipe table of ``frame``, every cell and header escaped (:func:`md_cell`)."""
    safe = frame.map(md_cell)
    safe.columns = [md_cell(c) for c in frame.columns]
    return safe.to_markdown(index=False, disable_numparse=True)


def render_report(run_dir: str | Path) -> Path:
    """Write ``report.md``, ``report.html``, ``summary.csv`` and ``figures/`` for a run folder.

    Returns the path of ``report.html``.

    Raises
    ------
    FileNotFoundError
        If the folder lacks the files a run writes.
    """
    run = Path(run_dir)
    results, models = _read(run, "results.csv"), _read(run, "models.csv")
    curves, examples = _read(run, "curves.csv"), _read(run, "examples.csv")
    timings = _read(run, "timings.csv")
    config = json.loads((run / "config.json").read_text())
    order = model_order(models)
    summary = metric_summary(results)
    atomic_write_text(run / "summary.csv", summary.to_csv(index=False, na_rep="NaN"))
    changed, sentences = what_changed(models, summary)
    seed = config.get("seed", 0)
    if (flag := all_zero_sentence(results)) is not None:
        sentences.append(flag)
    sentences.append(
        f"All intervals and tests are over the {int(results['sample'].nunique())} evaluated "
        f"test samples of models trained with one seed ({seed}): they do not include the "
        "variance between training runs. Rerun with other seeds before generalising.")
    metric_names = {_base(m) for m in results["metric"].unique()}
    model_rows = _model_rows(models, timings, order)
    split = prediction_split(results)
    classes = _read(run, "classes.csv") if (run / "classes.csv").exists() else None
    class_rows = _class_table(classes, order) if classes is not None else None
    tables = _metric_tables(summary, order)
    importance = _read(run, "importance.csv") if (run / "importance.csv").exists() \
        else pd.DataFrame()
    layers = _read(run, "layers.csv")
    figs = _figures(run, results, summary, curves, examples, importance, order, models, layers)
    token_maps, bejjani = _text_parts(run, results, order, figs)
    by_sparsity = T.sparsity_table(summary, models)
    answer, key_figure = _answer(run, models, summary)
    scale = _scale_notes(config, metric_names)
    tables = {k: _flag_scale(v, scale) for k, v in tables.items()}
    n_samples = int(results["sample"].nunique())
    lat = timings.iloc[0]
    context = {
        "name": config["name"], "config": config, "sentences": sentences,
        "metric_names": metric_names,
        "n_samples": n_samples,
        "pruning_text": _pruning_text(config, results),
        "answer": answer, "key_figure": key_figure,
        "scale_notes": [f"{name} †: {note}" for name, note in scale.items() if note],
        "scale_text": _scale_text(metric_names, scale),
        "latency_note": f"median of torch.utils.benchmark runs after warm-up, batch size "
                        f"{int(lat['batch_size'])}, {int(lat['threads'])} threads, "
                        f"{lat['dtype']}, {lat['device']}",
    }
    features = _importance_tables(importance, order) if not importance.empty else {}
    md = _markdown(context, changed, model_rows, tables, figs, features, class_rows, split)
    md = md.replace("\n## Figures\n", _text_markdown(*bejjani, by_sparsity) + "\n## Figures\n",
                    1)
    atomic_write_text(run / "report.md", md)
    env = jinja2.Environment(loader=jinja2.PackageLoader("xprune.report", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]),
                             undefined=jinja2.StrictUndefined)
    html = env.get_template("report.html.j2").render(
        **context, notes_text=NOTES, changed=_records(changed), model_rows=_records(model_rows),
        tables={k: _records(v) for k, v in tables.items()}, figures=figs,
        features={k: _records(v) for k, v in features.items()},
        notes=_records(_metric_notes(metric_names)),
        class_rows=_records(class_rows) if class_rows is not None else None,
        split=_records(split), token_maps=token_maps, bejjani_sentences=bejjani[1],
        bejjani=_records(bejjani[0]) if not bejjani[0].empty else None,
        by_sparsity=_records(by_sparsity) if not by_sparsity.empty else None)
    return atomic_write_text(run / "report.html", html)


def _text_parts(run: Path, results: pd.DataFrame, order: list[str], figs: list[dict]
                ) -> tuple[dict, tuple[pd.DataFrame, list[str]]]:
    """Token heat maps (PNG added to ``figs``, rows for the HTML) where the run has
    ``tokens.csv``, and the magnitude-vs-random comparison of IG faithfulness."""
    token_maps = {}
    if (run / "tokens.csv").exists():
        tokens = _read(run, "tokens.csv")
        shown = _focus_models(results, order) + [m for m in order if m.startswith("control")]
        for method in dict.fromkeys(tokens["attribution"]):
            ax = F.plot_token_heatmap(tokens, method, shown)
            png = F.figure_png(ax.figure)
            atomic_write_bytes(run / "figures" / f"tokens_{method}.png", png)
            figs.insert(len(token_maps), {"file": f"figures/tokens_{method}.png",
                            "caption": f"Token heat maps, {method}: the same sentences, dense "
                                       "above the pruned models and the controls",
                            "data": base64.b64encode(png).decode("ascii")})
            token_maps[method] = T.token_heatmap_rows(tokens, method, shown)
    return token_maps, T.magnitude_vs_random_text(T.magnitude_vs_random(results))


def _text_markdown(table: pd.DataFrame, sentences: list[str], by_sparsity: pd.DataFrame
                   ) -> str:
    lines = []
    if not by_sparsity.empty:
        lines += ["", "## Plausibility and agreement by sparsity (Integrated Gradients)", "",
                  NOTES["by_sparsity"], "", _md_table(by_sparsity), ""]
    if not table.empty:
        lines += ["", "## Magnitude vs random pruning: IG faithfulness (Bejjani et al. 2025)",
                  "", NOTES["bejjani"], ""]
        lines += [f"- {md_text(s)}" for s in sentences]
        lines += ["", _md_table(table), ""]
    return "\n".join(lines)


def _records(frame: pd.DataFrame) -> dict:
    return {"columns": [str(c) for c in frame.columns],
            "rows": [[str(v) for v in row] for row in frame.itertuples(index=False)]}


def _markdown(ctx, changed, model_rows, tables, figs, features, class_rows, split) -> str:
    cfg = ctx["config"]
    lines = [f"# xprune report: {md_text(ctx['name'])}", "",
             f"Dataset `{md_text(cfg['data']['dataset'])}`, seed {cfg['seed']}, "
             f"{md_text(ctx['pruning_text'])}; "
             "attributions on "
             f"{ctx['n_samples']} held-out test inputs, target = the dense model's prediction "
             "for every model. Intervals are 95% confidence intervals over test samples of one "
             "trained model each (they do not include training variance across seeds).", "",
             "## The answer", ""]
    lines += [f"- {md_text(s)}" for s in ctx["answer"]]
    lines += ["", f"![{md_text(ctx['key_figure']['caption'])}]({ctx['key_figure']['file']})",
              "", md_text(ctx["key_figure"]["caption"]), "", "## What pruning changed", ""]
    lines += [f"- {md_text(s)}" for s in ctx["sentences"]]
    lines += ["", _md_table(changed), "",
              NOTES["changed"], "",
              "### Split by prediction", "", _md_table(split), "", NOTES["split"], "",
              "## Models", "", _md_table(model_rows), "",
              f"Latency: {ctx['latency_note']}. " + NOTES["models"], ""]
    if class_rows is not None:
        lines += ["### Per-class recall", "", _md_table(class_rows), "", NOTES["classes"], ""]
    lines += ["## Metrics (mean [95% CI] over samples)", ""]
    for method, table in tables.items():
        lines += [f"### {md_text(method)}", "", _md_table(table), ""]
    lines += [NOTES["metrics"], ""]
    lines += [md_text(ctx["scale_text"]), ""] if ctx["scale_text"] else []
    lines += [f"- {md_text(n)}" for n in ctx["scale_notes"]]
    lines += ["", "### Metric definitions", "",
              _md_table(_metric_notes(ctx["metric_names"])), ""]
    if features:
        lines += ["## Feature importance (mean |attribution|, top features of the dense model)",
                  ""]
        for method, table in features.items():
            lines += [f"### {md_text(method)}", "", _md_table(table), ""]
    lines += ["## Figures", ""]
    lines += [f"![{md_text(f['caption'])}]({f['file']})" for f in figs]
    lines += ["", "Per-layer sparsity: `layers.csv`; per-sample scores: `results.csv`; "
              "resolved config: `config.json`; package versions: `versions.json`.", ""]
    return "\n".join(lines)


KEY_FIGURE_CAPTION = (
    "Accuracy, agreement with the dense model's maps and faithfulness against sparsity: points "
    "with 95% CIs as error bars (Wilson for accuracy, BCa bootstrap over samples for the "
    "metrics); each control is a band (its 95% CI) around a line (its mean): dashed the dense "
    "model fine-tuned without pruning, dotted a dense model trained from another seed.")


def _answer(run: Path, models: pd.DataFrame, summary: pd.DataFrame
            ) -> tuple[list[str], dict[str, str]]:
    """The first screen: the headline sentences and the key figure (``figures/key_figure.png``)."""
    axes = F.plot_key_figure(models, summary)
    png = F.figure_png(axes[0].figure)
    atomic_write_bytes(run / "figures" / "key_figure.png", png)
    return headline(models, summary), {"file": "figures/key_figure.png",
                                       "caption": KEY_FIGURE_CAPTION,
                                       "data": base64.b64encode(png).decode("ascii")}


SCALE_CHECKED = ("infidelity", "max_sensitivity", "avg_sensitivity", "effective_complexity")


def _scale_notes(config: dict, metric_names: set[str]) -> dict[str, str | None]:
    """For each scale-sensitive metric of the run: why its value depends on the maps' size with
    the run's parameters (:func:`xprune.report.headline.scale_note`), or None where the
    variant computed is scale-invariant."""
    params = config.get("metrics", {}).get("params", {}) or {}
    return {name: scale_note(name, params.get(name, {})) for name in SCALE_CHECKED
            if name in metric_names}


def _scale_text(metric_names: set[str], scale: dict[str, str | None]) -> str:
    """One line on the scale-invariant variants used, or ""."""
    invariant = [name for name, note in scale.items() if note is None]
    if not invariant:
        return ""
    return ("Scale: " + ", ".join(invariant) + " are computed in scale-invariant form "
            "(infidelity with the optimal rescaling of the map, normalize=true; the "
            "sensitivities relative to the map's norm; effective complexity against each "
            "map's largest value), so a model whose maps are uniformly smaller does not score "
            "better for that alone.")


def _flag_scale(table: pd.DataFrame, scale: dict[str, str | None]) -> pd.DataFrame:
    """Mark (†) the rows of a metric table whose metric depends on the maps' scale."""
    flagged = {name for name, note in scale.items() if note}
    if not flagged:
        return table
    out = table.copy()
    out["metric"] = [f"{m} †" if _base(m) in flagged else m for m in out["metric"]]
    return out
