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
