"""Bring your own data: .npz, .pt and module:function sources, and the bundled tables."""

import numpy as np
import pandas as pd
import pytest
import torch

from xprune.analysis import run_analysis
from xprune.config import AnalysisConfig, load_config
from xprune.data import load_dataset, load_wine_split, split_arrays


def make_blobs():
    """A module:function source: 3 separable classes in 4 named features."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 40)
    x = rng.normal(size=(120, 4)) + 3 * np.eye(3, 4)[y]
    return x, y, ["a", "b", "c", "d"]


def test_npz_pt_and_function_sources_give_the_same_split(tmp_path):
    x, y, names = make_blobs()
    np.savez(tmp_path / "blobs.npz", x=x, y=y, feature_names=np.array(names))
    torch.save({"x": torch.from_numpy(x), "y": torch.from_numpy(y)}, tmp_path / "blobs.pt")
    a = load_dataset(str(tmp_path / "blobs.npz"), seed=3)
    b = load_dataset(str(tmp_path / "blobs.pt"), seed=3)
    c = load_dataset("test_data_sources:make_blobs", seed=3)
    direct = split_arrays(x, y, seed=3)
    for split in (a, b, c):
        assert torch.equal(split.x_test, direct.x_test) and torch.equal(split.y_train,
                                                                        direct.y_train)
        assert split.n_classes == 3
    assert a.feature_names == ("a", "b", "c", "d") and b.feature_names is None
    # the same class proportions in every part (stratified)
    assert torch.bincount(a.y_test).tolist() == [8, 8, 8]


def test_bad_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="Data file not found"):
        load_dataset(str(tmp_path / "none.npz"))
    np.savez(tmp_path / "bad.npz", features=np.zeros((4, 2)))
    with pytest.raises(ValueError, match="Expected arrays 'x' and 'y'"):
        load_dataset(str(tmp_path / "bad.npz"))
    with pytest.raises(ValueError, match="labels of .data. to be integers 0..C-1"):
        split_arrays(np.zeros((10, 2)), np.linspace(0, 1, 10))
    with pytest.raises(ValueError, match="Expected finite features"):
        split_arrays(np.full((10, 2), np.nan), np.zeros(10, dtype=int))

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil(), "y": torch.zeros(3)}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights-only"):
        load_dataset(str(tmp_path / "evil.pt"))
    with pytest.raises(ValueError, match="Did you mean 'wine'"):
        AnalysisConfig.from_dict({"data": {"dataset": "wines"}})


def test_wine_and_flat_digits():
    wine = load_wine_split(seed=0)
    assert wine.x_train.shape[1] == 13 and wine.n_classes == 3
    assert wine.feature_names[0] == "alcohol"
    torch.testing.assert_close(wine.x_train.mean(0), torch.zeros(13), atol=1e-5, rtol=0)
    flat = load_dataset("digits_flat")
    digits = load_dataset("digits")
    assert torch.equal(flat.x_test, digits.x_test.reshape(-1, 64))


def test_analysis_on_an_npz_file_relative_to_its_config(tmp_path):
    x, y, names = make_blobs()
    np.savez(tmp_path / "blobs.npz", x=x, y=y, feature_names=np.array(names))
    (tmp_path / "blobs.toml").write_text(
        'name = "blobs"\n[data]\ndataset = "blobs.npz"\n[train]\nepochs = 5\n'
        '[pruning]\nsparsities = [0.5]\nfinetune_epochs = 0\n'
        '[controls]\nother_seed = false\nfinetune = false\n'
        '[attribution]\nmethods = ["saliency"]\nn_samples = 12\n'
        '[metrics]\nnames = ["gini_index", "spearman", "ssim"]\nversus_random = []\n')
    config = load_config(tmp_path / "blobs.toml")
    assert config.data.dataset == str(tmp_path / "blobs.npz")
    with pytest.raises(ValueError, match=r"\['ssim'\] need images"):  # before any training
        run_analysis(config, out_dir=tmp_path / "run", progress=False, render=False)
    assert not (tmp_path / "run" / ".cache").exists()
    config = config.replace(metrics=config.metrics.__class__(names=["gini_index", "spearman"],
                                                             versus_random=[]))
    run_analysis(config, out_dir=tmp_path / "run", progress=False)  # with the report
    results = pd.read_csv(tmp_path / "run" / "results.csv")
    assert set(results["metric"]) == {"gini_index", "spearman"}
    importance = pd.read_csv(tmp_path / "run" / "importance.csv")
    assert set(importance["feature"]) == {"a", "b", "c", "d"}
