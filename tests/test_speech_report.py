"""The speech report: spectrograms with dense and pruned maps overlaid (figures), and the
side-by-side report of several architectures' runs (xprune.report.side_by_side)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from xprune.report.figures import plot_spectrogram_grid, plot_spectrogram_maps  # noqa: E402


def _frame(model, attribution, img, sample=0):
    r, c = np.indices(img.shape)
    return pd.DataFrame({"attribution": attribution, "model": model, "sample": sample,
                         "row": r.ravel(), "col": c.ravel(), "value": img.ravel()})


def _examples():
    """A 4 x 6 spectrogram; the dense map's top bins at the top left, the pruned at the
    bottom right; formant bands on row 1."""
    spec = np.arange(24.0).reshape(4, 6)
    dense = np.zeros((4, 6))
    dense[3, 0:2] = [5.0, 4.0]
    pruned = np.full((4, 6), -1.0)
    pruned[0, 4:6] = [2.0, 3.0]
    truth = np.zeros((4, 6))
    truth[1, :] = 1.0
    return pd.concat([_frame("input", "", spec), _frame("rationale", "", truth),
                      _frame("dense", "ig", dense), _frame("sparse@0.90", "ig", pruned),
                      _frame("dense", "saliency", np.zeros((4, 6)))], ignore_index=True)


def _inside(contour_set, point) -> bool:
    return any(p.contains_point(point) for p in contour_set.get_paths())


def test_spectrogram_maps_outline_each_models_top_bins_over_the_input():
    fig, ax = plt.subplots()
    out = plot_spectrogram_maps(_examples(), "ig", 0, ["dense", "sparse@0.90"], top=2 / 24,
                                ax=ax)
    assert out is ax
    image = ax.images[0]
    np.testing.assert_array_equal(image.get_array(), np.arange(24.0).reshape(4, 6))
    assert image.origin == "lower"
    truth, dense, pruned = [c for c in ax.collections if hasattr(c, "levels")]
    # (x, y) = (frame, band): the dense top-2 bins are row 3, frames 0-1; the pruned row 0,
    # frames 4-5 (its negative values never enter); the formant band row 1
    assert _inside(dense, (0.5, 3)) and not _inside(dense, (4.5, 0))
    assert _inside(pruned, (4.5, 0)) and not _inside(pruned, (0.5, 3))
    assert _inside(truth, (2, 1)) and not _inside(truth, (2, 3))
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "formant bands", "dense: top 8.33333%", "sparse@0.90: top 8.33333%"]
    assert [h.get_color() for h in ax.get_legend().legend_handles] == [
        "tab:green", "tab:blue", "tab:orange"]
    plt.close("all")


def test_spectrogram_grid_pairs_dense_with_each_model():
    fig = plot_spectrogram_grid(_examples(), "ig", ["dense", "sparse@0.90"], [0], top=0.1)
    axes = fig.axes
    assert len(axes) == 1 and axes[0].get_title() == "sparse@0.90"
    # an all-zero map has no positive bins to outline, but keeps its legend entry
    ax = plot_spectrogram_maps(_examples(), "saliency", 0, ["dense"])
    assert len([c for c in ax.collections if hasattr(c, "levels")]) == 1  # truth only
    assert ax.get_legend().get_texts()[-1].get_text() == "dense: top 10%"
    plt.close("all")


# --- the side-by-side report -----------------------------------------------------------------

def _fake_run(folder, factory, dense_auprc, pruned_delta):
    """A run folder with what the side-by-side report reads: config, data kind, models,
    summary (one method, AUPRC and Spearman), examples of one recording."""
    import json

    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"name": "speech", "model": {
        "factory": factory}}))
    (folder / "data.json").write_text(json.dumps({"dataset": "vowels", "kind": "audio"}))
    (folder / "results.csv").write_text("model\n")
    pd.DataFrame({"model": ["dense", "l1@0.90", "control:finetune"],
                  "role": ["dense", "sparse", "control"], "requested_sparsity": [0, 0.9, 0],
                  "accuracy": [0.95, 0.80, 0.94], "accuracy_ci_low": [0.9, 0.7, 0.9],
                  "accuracy_ci_high": [0.99, 0.9, 0.98]}).to_csv(folder / "models.csv",
                                                                  index=False)
    nan = float("nan")
    rows = []
    for model, role, sparsity in (("dense", "dense", 0.0), ("l1@0.90", "sparse", 0.9),
                                  ("control:finetune", "control", 0.0)):
        delta = {"dense": nan, "l1@0.90": pruned_delta, "control:finetune": -0.01}[model]
        mean = dense_auprc + (0 if model == "dense" else delta)
        rows.append({"model": model, "role": role, "pruning": "l1", "sparsity": sparsity,
                     "attribution": "ig", "metric": "rationale_auprc", "n": 8, "n_total": 8,
                     "n_undefined": 0, "mean": mean, "ci_low": mean - 0.05,
                     "ci_high": mean + 0.05, "diff_n": 8, "diff_mean": delta,
                     "diff_ci_low": delta - 0.02, "diff_ci_high": delta + 0.02,
                     "p_value": 0.01, "p_holm": 0.0005 if model == "l1@0.90" else 0.2})
        if model != "dense":
            rows.append({**rows[-1], "metric": "spearman", "mean": 0.5, "ci_low": 0.4,
                         "ci_high": 0.6, "diff_mean": nan, "diff_ci_low": nan,
                         "diff_ci_high": nan, "p_value": nan, "p_holm": nan})
    pd.DataFrame(rows).to_csv(folder / "summary.csv", index=False, na_rep="NaN")
    ex = _examples().replace({"sparse@0.90": "l1@0.90"})
    ex.loc[ex["attribution"] == "ig", "attribution"] = "ig"
    ex.to_csv(folder / "examples.csv", index=False)
    return folder


def test_side_by_side_report_puts_each_architectures_numbers_beside_the_other(tmp_path):
    from xprune.report.side_by_side import render_side_by_side

    cnn = _fake_run(tmp_path / "cnn", "xprune.models:SpectrogramCNN", 0.5, -0.06)
    gru = _fake_run(tmp_path / "gru", "xprune.models:FrameGRU", 0.3, 0.02)
    html = render_side_by_side(tmp_path / "both", {"CNN": cnn, "GRU": gru})
    md = (tmp_path / "both" / "report.md").read_text()
    # the table: per model, each architecture's mean [CI] and its change vs its own dense model
    row = next(line for line in md.splitlines()
               if line.startswith("| plausibility | rationale_auprc | l1@0.90"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3:] == ["0.440 [0.390, 0.490]", "-0.060 [-0.080, -0.040], p_Holm < 0.001",
                         "0.320 [0.270, 0.370]", "+0.020 [+0.000, +0.040], p_Holm < 0.001"]
    # the headline: dense value, change by sparsity, controls, per architecture
    assert ("GRU, ig, rationale_auprc: 0.300 [0.250, 0.350] dense; change vs dense by sparsity "
            "90%: +0.020 [+0.000, +0.040], p_Holm < 0.001; controls: finetune -0.010 "
            "[-0.030, +0.010].") in md
    assert "CNN: test accuracy 95.0% dense; pruned 90%: 80.0%." in md
    import re

    assert re.search(r"\| dense +\| 95.0 \[90.0, 99.0\] +\| 95.0 \[90.0, 99.0\] +\|", md)
    figures = sorted(p.name for p in (tmp_path / "both" / "figures").iterdir())
    assert figures == ["metrics_vs_sparsity.png", "spectrograms_ig.png"]
    assert html.read_text().count("<img ") == 2
    summary = pd.read_csv(tmp_path / "both" / "side_by_side.csv")
    assert sorted(summary["architecture"].unique()) == ["CNN", "GRU"]


def test_side_by_side_from_the_cli_labels_runs_by_their_architecture(tmp_path, capsys):
    from xprune.cli import main

    cnn = _fake_run(tmp_path / "cnn", "xprune.models:SpectrogramCNN", 0.5, -0.06)
    gru = _fake_run(tmp_path / "gru", "xprune.models:FrameGRU", 0.3, 0.02)
    assert main(["report", str(cnn), str(gru), "--out", str(tmp_path / "both")]) == 0
    md = (tmp_path / "both" / "report.md").read_text()
    assert "| SpectrogramCNN Δ vs dense " in md
    assert "FrameGRU, ig, rationale_auprc" in md
    assert main(["report", str(cnn), str(gru)]) == 2  # several runs need --out
    assert "error: Expected --out" in capsys.readouterr().err


def test_an_audio_run_records_its_kind_and_draws_the_spectrograms(tmp_path):
    """Tiny audio data through the stages: the maps carry kind "audio" (so the removal metrics
    take out audio bins), the run folder records it with the rationale, and the report
    draws the dense and pruned maps over the spectrograms."""
    import json

    import torch

    from xprune._cache import RunCache
    from xprune.analysis import (
        attribute_models,
        describe_models,
        explained_truth,
        load_data,
        prune_models,
        score_models,
        train_dense,
        write_run,
    )
    from xprune.config import AnalysisConfig
    from xprune.data import DatasetSplit
    from xprune.report import render_report

    g = torch.Generator().manual_seed(0)
    y = torch.arange(40) % 2
    x = torch.randn(40, 1, 8, 10, generator=g) + 2.0 * y[:, None, None, None] \
        * (torch.arange(8) == 3).float()[None, None, :, None]
    truth = torch.zeros(8, 8, 10, dtype=torch.bool)
    truth[:, 3] = True
    data = DatasetSplit("tiny-audio", x[:24], y[:24], x[24:32], y[24:32], x[32:], y[32:], 2,
                        ("a", "b"), rationale_test=truth, kind="audio")
    config = AnalysisConfig.from_dict({
        "model": {"factory": "xprune.models:SpectrogramCNN",
                  "kwargs": {"n_classes": 2, "n_mels": 8, "channels": [2, 2], "hidden": 4}},
        "train": {"epochs": 1}, "pruning": {"sparsities": [0.5], "finetune_epochs": 1},
        "controls": {"other_seed": False, "finetune": False},
        "attribution": {"n_samples": 4, "methods": ["saliency"]},
        "metrics": {"names": ["deletion_auc", "rationale_auprc"], "deletion_steps": 4},
        "report": {"n_examples": 2, "latency_batch": 2}})
    cache = RunCache(None, {})
    data = load_data(config, data)
    dense = train_dense(config, data, cache=cache)
    records = [dense, *prune_models(config, data, dense.model, cache=cache)]
    attrs = attribute_models(config, records, data, cache=cache)
    assert {a.kind for a in attrs.values()} == {"audio"}
    labels, rationale = explained_truth(data, attrs)
    results, curves = score_models(config, records, attrs, labels, cache=cache,
                                   rationale=rationale)
    write_run(tmp_path, config, data, records, attrs, results, curves,
              describe_models(records, data, config))
    assert json.loads((tmp_path / "data.json").read_text()) == {"dataset": "tiny-audio",
                                                                 "kind": "audio"}
    examples = pd.read_csv(tmp_path / "examples.csv")
    band = examples[(examples["model"] == "rationale") & (examples["sample"] == 0)]
    assert sorted(band.loc[band["value"] == 1, "row"].unique()) == [3]
    render_report(tmp_path)
    assert (tmp_path / "figures" / "spectrograms_saliency.png").stat().st_size > 0
    assert "Spectrograms with the dense and each model's maps" in (
        tmp_path / "report.md").read_text()
