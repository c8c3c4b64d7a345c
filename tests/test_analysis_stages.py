"""Each stage of run_analysis called alone, on a tiny tabular analysis (breast cancer, MLP).

The stages are data, train (dense and controls), prune, describe, attribute,
score and write; run_analysis is their sequence (tests/test_analysis.py runs
it end to end).
"""

import copy
import json

import pandas as pd
import pytest
import torch
from conftest import TINY

import xprune
from xprune import metrics as M
from xprune._cache import RunCache
from xprune._io import read_table
from xprune.analysis import (
    RESULT_COLUMNS,
    attribute_models,
    describe_models,
    load_data,
    prune_models,
    score_models,
    train_controls,
    train_dense,
    write_run,
)
from xprune.config import AnalysisConfig, MetricsConfig
from xprune.data import load_dataset
from xprune.models import TabularMLP, evaluate, predict, train

CONFIG = AnalysisConfig.from_dict(TINY)
NO_STORE = RunCache(None, {})  # every stage computes


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_state(model, state):
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.fixture(scope="module")
def data():
    return load_data(CONFIG)


@pytest.fixture(scope="module")
def records(data):
    dense = train_dense(CONFIG, data, cache=NO_STORE)
    return [dense, *prune_models(CONFIG, data, dense.model, cache=NO_STORE),
            *train_controls(CONFIG, data, dense.model, cache=NO_STORE)]


@pytest.fixture(scope="module")
def attrs_by(records, data):
    return attribute_models(CONFIG, records, data, cache=NO_STORE)


def test_data_stage_loads_the_split_and_refuses_image_metrics_on_tables():
    said = []
    data = load_data(CONFIG, say=said.append)
    expected = load_dataset("breast_cancer", seed=0, val_size=0.2, test_size=0.2)
    assert torch.equal(data.x_train, expected.x_train) and torch.equal(data.y_test,
                                                                        expected.y_test)
    assert len(data.x_train) + len(data.x_val) + len(data.x_test) == 569  # the whole dataset
    assert said == [f"breast_cancer: {len(data.x_train)} train / {len(data.x_val)} "
                    f"validation / {len(data.x_test)} test samples"]
    image_only = next(n for n, info in M.METRICS.items() if info.images_only)
    with pytest.raises(ValueError, match=image_only):
        load_data(CONFIG.replace(metrics=MetricsConfig(names=[image_only])))


def test_train_stage_trains_the_dense_model_with_the_run_seed(data):
    record = train_dense(CONFIG, data, cache=NO_STORE)
    assert (record.tag, record.role, record.sparsity, record.info["seed"]) == (
        "dense", "dense", 0.0, 0)
    torch.manual_seed(0)  # what the stage does, spelled out
    expected = TabularMLP(30, n_classes=2)
    train(expected, data.x_train, data.y_train, epochs=2, lr=CONFIG.train.lr,
          batch_size=CONFIG.train.batch_size, seed=0)
    _assert_same_state(record.model, _state(expected))


def test_prune_stage_prunes_a_copy_to_the_requested_sparsity(data, records):
    dense = records[0].model
    before = _state(dense)
    (record,) = prune_models(CONFIG, data, dense, cache=NO_STORE)
    assert (record.tag, record.role, record.pruning, record.sparsity) == (
        "l1_unstructured@0.50", "sparse", "l1_unstructured", 0.5)
    # the output layer (layers.4) stays dense by default: 50% of the other weights are zero
    assert xprune.sparsity(record.model, exclude="layers.4") == pytest.approx(0.5, abs=1e-3)
    assert xprune.sparsity(record.model) < 0.5
    assert xprune.sparsity(dense) == 0.0
    _assert_same_state(dense, before)


def test_controls_stage_trains_another_seed_and_fine_tunes_a_copy(data, records):
    dense = records[0].model
    before = _state(dense)
    other, finetuned = train_controls(CONFIG, data, dense, cache=NO_STORE)
    assert [other.tag, finetuned.tag] == ["control:other-seed", "control:finetune"]
    assert other.info["seed"] == 1
    assert not all(torch.equal(a, b) for a, b in zip(other.model.parameters(),
                                                     dense.parameters(), strict=True))
    expected = copy.deepcopy(dense)
    train(expected, data.x_train, data.y_train, epochs=1, lr=CONFIG.pruning.finetune_lr,
          batch_size=CONFIG.train.batch_size, seed=0)
    _assert_same_state(finetuned.model, _state(expected))
    _assert_same_state(dense, before)


def test_describe_stage_measures_each_model_on_the_test_split(data, records):
    tables = describe_models(records, data, CONFIG)
    models = tables.models.set_index("model")
    assert list(models.index) == [r.tag for r in records]
    for rec in records:
        assert models.loc[rec.tag, "accuracy"] == pytest.approx(
            evaluate(rec.model, data.x_test, data.y_test)["accuracy"])
    assert models.loc["dense", "measured_sparsity"] == 0.0
    assert models.loc["l1_unstructured@0.50", "measured_sparsity"] == pytest.approx(
        xprune.sparsity(records[1].model))
    assert set(tables.layers["model"]) == set(models.index)
    assert set(tables.classes["class"]) == {0, 1}


def test_attribute_stage_explains_the_dense_prediction_in_every_model(data, records, attrs_by):
    x = data.x_test[:6]
    targets = predict(records[0].model, x).argmax(dim=1)
    assert set(attrs_by) == {("saliency", r.tag) for r in records}
    for rec in records:
        got = attrs_by["saliency", rec.tag]
        assert torch.equal(got.targets, targets)
        assert torch.equal(got.predictions, predict(rec.model, x).argmax(dim=1))
        expected = xprune.attribute(rec.model, x, targets, "saliency")
        torch.testing.assert_close(got.values, expected.values)


def test_score_stage_scores_each_cell_with_the_registered_metrics(data, records, attrs_by):
    labels = data.y_test[:6]
    results, curves = score_models(CONFIG, records, attrs_by, labels, cache=NO_STORE)
    assert list(results.columns) == RESULT_COLUMNS
    dense = attrs_by["saliency", "dense"]
    for rec in records:
        rows = results[(results["model"] == rec.tag)]
        gini = rows[rows["metric"] == "gini_index"]["value"].to_numpy()
        torch.testing.assert_close(torch.tensor(gini), M.gini_index(
            attrs_by["saliency", rec.tag]).double())
        assert rows["label"].tolist() == labels.tolist() * rows["metric"].nunique()
        spearman = rows[rows["metric"] == "spearman"]["value"].to_numpy()
        if rec.role == "dense":  # agreement only against the dense maps
            assert len(spearman) == 0
        else:
            torch.testing.assert_close(torch.tensor(spearman), M.spearman(
                dense, attrs_by["saliency", rec.tag]).double())
    assert set(curves["curve"]) == {"deletion", "insertion"}
    assert len(curves) == len(records) * 2 * 6 * curves["fraction"].nunique()


def test_write_stage_writes_the_tables_config_and_versions(tmp_path, data, records, attrs_by):
    results, curves = score_models(CONFIG, records, attrs_by, data.y_test[:6], cache=NO_STORE)
    tables = describe_models(records, data, CONFIG)
    write_run(tmp_path, CONFIG, data, records, attrs_by, results, curves, tables)
    pd.testing.assert_frame_equal(read_table(tmp_path / "results.csv"), results)
    assert json.loads((tmp_path / "config.json").read_text()) == json.loads(
        json.dumps(CONFIG.to_dict()))
    assert json.loads((tmp_path / "versions.json").read_text())["xprune"] == xprune.__version__
    importance = read_table(tmp_path / "importance.csv")
    assert set(importance["feature"]) == set(data.feature_names)
    for name in ("models.csv", "layers.csv", "classes.csv", "curves.csv", "examples.csv",
                 "timings.csv"):
        assert (tmp_path / name).is_file(), name
