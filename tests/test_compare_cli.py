"""Saved attribution files, `xprune compare` and `xprune score`."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

import xprune
from xprune import metrics as M
from xprune.checkpoint import save_model
from xprune.cli import main
from xprune.compare import compare_attributions, score_attributions


@pytest.fixture(scope="module")
def saved(digits_cnn, digits_batch, tmp_path_factory):
    root = tmp_path_factory.mktemp("maps")
    x = digits_batch[0][:12]
    pair = xprune.prune(digits_cnn, 0.9)
    dense, sparse = xprune.attribute_pair(pair.dense, pair.sparse, x, params={"n_steps": 16})
    xprune.save_attributions(dense, root / "dense.safetensors")
    xprune.save_attributions(sparse, root / "sparse.safetensors")
    save_model(digits_cnn, root / "model.safetensors")
    return root, dense, sparse


def test_attributions_round_trip(saved):
    root, dense, _ = saved
    back = xprune.load_attributions(root / "dense.safetensors")
    for key in ("values", "inputs", "targets", "delta", "predictions"):
        assert torch.equal(getattr(back, key), getattr(dense, key)), key
    assert (back.method, back.model_tag) == (dense.method, dense.model_tag)
    assert dict(back.params) == dict(dense.params)
    with pytest.raises(ValueError, match="Could not read .* as safetensors"):
        (root / "junk.safetensors").write_bytes(b"not a file")
        xprune.load_attributions(root / "junk.safetensors")
    with pytest.raises(FileNotFoundError, match="Attribution file not found"):
        xprune.load_attributions(root / "missing.safetensors")


def test_compare_equals_the_metrics(saved):
    _, dense, sparse = saved
    scores = compare_attributions(dense, sparse)
    wide = scores.pivot(index="sample", columns="metric", values="value")
    np.testing.assert_array_equal(wide["spearman"].to_numpy(), M.spearman(dense, sparse).numpy())
    np.testing.assert_array_equal(wide["ssim"].to_numpy(), M.ssim(dense, sparse).numpy())
    fg = M.on_features(M.kendall_tau, dense, sparse, M.foreground(dense.inputs)).numpy()
    np.testing.assert_array_equal(wide["kendall_tau@foreground"].to_numpy(), fg)
    assert "ssim@foreground" not in wide
    other = xprune.Attributions(sparse.values, sparse.inputs + 1, sparse.targets, sparse.method)
    with pytest.raises(ValueError, match="inputs that differ in 12 of 12 samples"):
        compare_attributions(dense, other)
    shifted = xprune.Attributions(sparse.values, sparse.inputs, (sparse.targets + 1) % 10,
                                  sparse.method)
    with pytest.raises(ValueError, match="targets that differ in 12 of 12 samples"):
        compare_attributions(dense, shifted)
    with pytest.raises(ValueError, match="at least one metric name"):
        compare_attributions(dense, sparse, metrics=[])
    with pytest.raises(ValueError, match="Expected metrics of kind \\('pair',\\)"):
        compare_attributions(dense, sparse, metrics=["gini_index"])


def test_score_equals_the_metrics(saved, digits_cnn):
    _, dense, _ = saved
    scores = score_attributions(digits_cnn, dense, metrics=["gini_index", "deletion_auc",
                                                             "faithfulness_correlation"], seed=3)
    wide = scores.pivot(index="sample", columns="metric", values="value")
    np.testing.assert_array_equal(wide["deletion_auc"].to_numpy(),
                                  M.deletion_auc(digits_cnn, dense.inputs, dense,
                                                 dense.targets).numpy())
    gen = torch.Generator().manual_seed(M._base.metric_seed(3, "faithfulness_correlation"))
    np.testing.assert_array_equal(
        wide["faithfulness_correlation"].to_numpy(),
        M.faithfulness_correlation(digits_cnn, dense.inputs, dense, dense.targets,
                                   generator=gen).numpy())


def test_cli_compare_and_score(saved, tmp_path, capsys):
    root, dense, sparse = saved
    out = tmp_path / "cmp"
    assert main(["compare", str(root / "dense.safetensors"), str(root / "sparse.safetensors"),
                 "--metrics", "spearman,cosine_similarity", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "spearman@foreground" in text and "higher is better" in text
    frame = pd.read_csv(out / "compare.csv")
    assert set(frame["metric"]) == {"spearman", "cosine_similarity", "spearman@foreground",
                                    "cosine_similarity@foreground"}
    assert (out / "compare.png").stat().st_size > 1000
    mean = float(frame[frame["metric"] == "spearman"]["value"].mean())
    assert f"{mean:.3f}" in text

    assert main(["score", str(root / "dense.safetensors"), "--checkpoint",
                 str(root / "model.safetensors"), "--factory", "xprune.models:DigitsCNN",
                 "--metrics", "deletion_auc,max_sensitivity", "--out", str(tmp_path / "s")]) == 0
    scores = pd.read_csv(tmp_path / "s" / "score.csv")
    assert set(scores["metric"]) == {"deletion_auc", "max_sensitivity"}
    assert "deletion_auc" in capsys.readouterr().out
    # maps of another model: a warning; a tabular model with its factory's arguments
    assert main(["score", str(root / "sparse.safetensors"), "--checkpoint",
                 str(root / "model.safetensors"), "--factory", "xprune.models:DigitsCNN",
                 "--metrics", "gini_index", "--out", str(tmp_path / "s2")]) == 0
    err = capsys.readouterr().err
    assert "predictions differ from those stored with the maps" in err or \
        bool((sparse.predictions == dense.predictions).all())
    assert main(["score", str(root / "dense.safetensors"), "--checkpoint",
                 str(root / "model.safetensors"), "--factory", "xprune.models:DigitsCNN",
                 "--kwargs", "{bad", "--metrics", "gini_index"]) == 2
    assert "Expected --kwargs as a JSON object" in capsys.readouterr().err
    # bad input: one line, exit code 2
    assert main(["compare", str(root / "dense.safetensors"), str(root / "nope.safetensors")]) == 2
    assert "Attribution file not found" in capsys.readouterr().err
    assert main(["score", str(root / "dense.safetensors"), "--checkpoint",
                 str(root / "model.safetensors"), "--factory", "xprune.models:DigitsCNN",
                 "--metrics", "spearmann"]) == 2
    assert "Did you mean 'spearman'" in capsys.readouterr().err


def test_score_defaults_follow_the_kind_of_input():
    """`xprune score` without --metrics: the ERASER token metrics (comprehensiveness,
    sufficiency, their normalised forms, tau-LOO) for token ids only, and no continuous-noise
    metric for token ids; the same rule (`default_metric_names`) as an analysis' defaults."""
    from xprune.config import CONTINUOUS_NOISE, TOKEN_METRICS
    from xprune.data import make_token_dataset
    from xprune.models import TabularMLP, TokenClassifier

    torch.manual_seed(0)
    tabular = TabularMLP(5, 2, hidden=(8,)).eval()
    x = torch.randn(4, 5)
    maps = xprune.attribute(tabular, x, tabular(x).argmax(1), "saliency")
    names = set(score_attributions(tabular, maps)["metric"])
    assert names.isdisjoint(TOKEN_METRICS), names & TOKEN_METRICS
    assert {"deletion_auc", "infidelity", "gini_index"} <= names

    tokens, _ = make_token_dataset(4, seq_len=6, vocab_size=12)
    text = TokenClassifier(12, 2, dim=4, hidden=8).eval()
    text.config = SimpleNamespace(mask_token_id=0)  # the id removal puts in, as an HF model's
    maps = xprune.attribute(text, tokens, text(tokens).argmax(1),
                            "embedding_integrated_gradients", params={"n_steps": 4})
    names = set(score_attributions(text, maps)["metric"])
    assert TOKEN_METRICS <= names
    assert names.isdisjoint(CONTINUOUS_NOISE), names & CONTINUOUS_NOISE
