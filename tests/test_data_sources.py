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


def test_a_numeric_csv_is_a_table_of_features_and_a_label_column(tmp_path):
    """tests/cases_s6/008-tabular-csv.md, now supported: `[data] dataset = "wine.csv"` with
    `label_column = "target"` reads the 13 numeric columns as they are (not scaled) and splits
    them as split_arrays splits the same arrays; label names become the class names."""
    from sklearn.datasets import load_wine

    from xprune.analysis import load_data

    frame = load_wine(as_frame=True).frame                  # 13 features and "target" 0..2
    frame.to_csv(tmp_path / "wine.csv", index=False)
    (tmp_path / "wine.toml").write_text('[data]\ndataset = "wine.csv"\nlabel_column = "target"\n')
    split = load_data(load_config(tmp_path / "wine.toml"))
    x, y = frame.drop(columns="target").to_numpy(), frame["target"].to_numpy()
    direct = split_arrays(x, y, seed=0)
    assert torch.equal(split.x_test, direct.x_test) and torch.equal(split.y_train,
                                                                    direct.y_train)
    assert split.feature_names == tuple(frame.columns[:-1]) and split.n_classes == 3
    assert split.x_train[:, 12].max() > 100                  # proline as given, not scaled
    # names as labels: numbered in sorted order, the class names
    frame.assign(target=frame["target"].map({0: "c", 1: "a", 2: "b"})).to_csv(
        tmp_path / "named.csv", index=False)
    named = load_dataset(str(tmp_path / "named.csv"), text={"label_column": "target"})
    assert named.class_names == ("a", "b", "c")
    row = {tuple(r): {0: "c", 1: "a", 2: "b"}[int(t)]   # features stored as float32
           for r, t in zip(x.astype(np.float32), y, strict=True)}
    assert [named.class_names[int(t)] for t in named.y_test] == [
        row[tuple(r)] for r in named.x_test.numpy()]


def test_a_numeric_csv_that_does_not_fit_says_what_is_expected(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b,target\n1.0,2.0,0\n3.0,4.0,1\n")
    with pytest.raises(ValueError, match=r"Expected a label column 'label' "
                                         r"\(`data.label_column`\) in .*t.csv, got the columns "
                                         r"\['a', 'b', 'target'\].*numeric table"):
        load_dataset(str(path))
    path.write_text("a,colour,label\n1.0,red,0\n3.0,blue,1\n")
    with pytest.raises(ValueError, match=r"numeric feature columns in .*t.csv, got non-numeric "
                                         r"columns \['colour'\].*`data.text_column`"):
        load_dataset(str(path))
    path.write_text("a,b,label\n1.0,,0\n3.0,4.0,1\n")
    with pytest.raises(ValueError, match=r"empty cells in rows \[0\]"):
        load_dataset(str(path))
    path.write_text(",a,b,label\n0,1.0,2.0,0\n1,3.0,4.0,1\n")   # pandas' to_csv with its index
    with pytest.raises(ValueError, match=r"unnamed columns \['Unnamed: 0'\].*index=False"):
        load_dataset(str(path))
    path.write_text("label\n0\n1\n")
    with pytest.raises(ValueError, match=r"feature columns besides the label column 'label'"):
        load_dataset(str(path))
    path.write_text("text,label\n" + "good film,1\nbad film,0\n" * 5)  # a text column: text
    assert load_dataset(str(path), text={}).vocabulary is not None
