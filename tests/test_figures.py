"""Plot functions of xprune.report.figures: they draw what the DataFrame holds, on the given Axes."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from xprune.report.figures import plot_decision_regions, plot_group_distributions  # noqa: E402


def test_group_distributions_draw_each_group_and_the_reference_marks():
    fig, ax = plt.subplots()
    values = [np.array([1.0, 2.0, 3.0]), np.array([5.0, 6.0])]
    out = plot_group_distributions(values, ["a", "b"], reference=[(0, 2.5), (1, 7.0)], ax=ax)
    assert out is ax
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]
    points = [c.get_offsets() for c in ax.collections]
    assert [len(p) for p in points] == [3, 2, 2]  # group a, group b, the reference diamonds
    np.testing.assert_array_equal(np.sort(points[0][:, 1]), [1.0, 2.0, 3.0])
    assert np.all(np.abs(points[1][:, 0] - 1) <= 0.18)  # jitter around the group's position
    np.testing.assert_array_equal(points[2], [[0, 2.5], [1, 7.0]])
    assert ax.get_legend().get_texts()[0].get_text() == "paper (mean)"
    ax2 = plot_group_distributions(values, ["a", "b"])
    assert ax2.get_legend() is None and len(ax2.collections) == 2
    plt.close("all")


def test_decision_regions_follow_the_grid_and_draw_the_samples():
    xs, ys = np.meshgrid(np.linspace(0, 1, 4), np.linspace(0, 2, 3), indexing="xy")
    grid = pd.DataFrame({"x": xs.ravel(), "y": ys.ravel(),
                         "predicted": (xs.ravel() > 0.5).astype(int)})
    samples = pd.DataFrame({"x": [0.1, 0.9, 0.5], "y": [0.2, 1.8, 1.0], "label": [0, 1, 1],
                            "kind": ["train", "train", "reference"]})
    ax = plot_decision_regions(grid.sample(frac=1, random_state=0), samples)  # any row order
    contour = next(c for c in ax.collections if hasattr(c, "levels"))
    np.testing.assert_array_equal(contour.levels, [-0.5, 0.5, 1.5])
    scatters = [c.get_offsets() for c in ax.collections if not hasattr(c, "levels")]
    assert [len(s) for s in scatters] == [2, 1]  # training samples, then the reference ones
    np.testing.assert_array_equal(scatters[1], [[0.5, 1.0]])
    assert list(ax.get_xticks()) == [] and list(ax.get_yticks()) == []
    plt.close("all")
