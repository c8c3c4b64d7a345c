"""xprune.study: the run's pipeline on the caller's model and data, and its Study result.

A tiny tabular analysis (breast cancer, an MLP, 2 epochs, one sparsity, saliency, two
metrics): the same configuration through ``run_analysis`` and through ``study`` gives the
same tables.
"""

import base64
import io
import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import xprune
from xprune._cache import RunCache
from xprune.analysis import ModelRecord, describe_models, run_analysis, train_dense
from xprune.config import AnalysisConfig
from xprune.data import as_split, load_dataset, make_token_dataset, split_arrays
from xprune.models import TabularMLP, TokenClassifier
from xprune.profiling import count_macs, measure_latency
from xprune.report import metric_summary

CONFIG = AnalysisConfig.from_dict({"name": "tiny", **TINY})


def _mlp() -> nn.Module:
    return TabularMLP(30, n_classes=2)


@pytest.fixture(scope="module")
def data():
    return load_dataset("breast_cancer", seed=0)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return run_analysis(CONFIG, out_dir=tmp_path_factory.mktemp("run"), progress=False,
                        use_cache=False, render=False)


@pytest.fixture(scope="module")
def dense(data):
    """The run's dense model, trained as the run trains it: the user's trained model."""
    return train_dense(CONFIG, data, cache=RunCache(None, {})).model


@pytest.fixture(scope="module")
def result(dense, data, tmp_path_factory):
    return xprune.study(dense, data, config=CONFIG, out=tmp_path_factory.mktemp("study"),
                        progress=False)


def test_study_of_a_trained_model_equals_the_run(run, result):
    """The run's dense model handed to study: every model and score of the run, the
    other-seed control included (a re-initialised copy trained with seed + 1)."""
    pd.testing.assert_frame_equal(result.results, run.results)
    pd.testing.assert_frame_equal(result.models, run.models)
    assert set(result.results["model"]) == {"dense", "l1_unstructured@0.50",
                                           "control:other-seed", "control:finetune"}


def test_study_of_a_factory_trains_it_as_the_run_does(run, data):
    study = xprune.study(_mlp, data, config=CONFIG, progress=False)
    pd.testing.assert_frame_equal(study.results, run.results)


def test_study_holds_the_run_folder_and_its_tables(result):
    assert result.config.attribution.methods == ("saliency",)
    assert result.config.pruning.sparsities == (0.5,)
    for name in ("results.csv", "models.csv", "layers.csv", "config.json", "versions.json",
                 "stages.json"):
        assert (result.out / name).is_file(), name
    on_disk = pd.read_csv(result.out / "results.csv")
    # 6 samples x (gini x 4 models + spearman x 3 + deletion AUC vs random x 4)
    assert len(on_disk) == len(result.results) == 6 * (4 + 3 + 4)
    pd.testing.assert_frame_equal(result.summary, metric_summary(result.results))
    cfg = json.loads((result.out / "config.json").read_text())
    assert cfg["data"]["dataset"].startswith("breast_cancer passed to xprune.study: 341/114/114")
    assert cfg["model"]["factory"] == "TabularMLP passed to xprune.study (trained)"
    assert repr(result).startswith("Study(4 models, 66 result rows")


def test_study_never_mutates_the_model_or_the_data(data):
    model = _mlp().double()
    model.train()
    x, y = data.x_train[:120].double(), data.y_train[:120]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x_before, y_before = x.clone(), y.clone()
    xprune.study(model, (x, y), config=CONFIG, progress=False,
                 metrics=["gini_index"])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert model.training and all(p.grad is None for p in model.parameters())
    assert torch.equal(x, x_before) and torch.equal(y, y_before)


def test_repr_html_holds_the_headline_and_a_decodable_png(result):
    page = result._repr_html_()
    from xprune.report.headline import headline

    assert result.headline == headline(result.models, result.summary)
    assert len(result.headline) == 1  # one pruning level: no lead sentence
    assert result.headline[0].startswith("At 50% sparsity ")
    assert "accuracy " in result.headline[0] and "Spearman with the dense maps: " \
        "saliency" in result.headline[0]
    assert result.headline[0].replace("'", "&#x27;") in page  # escaped as HTML text
    png = re.search(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    image = Image.open(io.BytesIO(base64.b64decode(png.group(1))))
    image.load()
    assert image.format == "PNG" and image.width > 400 and image.height > 200


def test_report_renders_the_run_report(result, tmp_path):
    page = result.report()
    assert page == result.out / "report.html" and (result.out / "report.md").is_file()
    assert result.headline[0] in (result.out / "report.md").read_text()
    assert result.report(result.out) == page  # its own folder: nothing to copy
    copy = result.report(tmp_path / "mine.html")
    assert copy.read_bytes() == page.read_bytes()
    folder = result.report(tmp_path / "folder")
    assert folder == tmp_path / "folder" / "report.html"
    assert (tmp_path / "folder" / "results.csv").is_file()


def test_progress_goes_to_stderr(data, capsys):
    """Messages at once; the stage bar once the study has run for over 2 s (tqdm's delay;
    a message written through tqdm may draw it earlier)."""
    import time

    start = time.perf_counter()
    xprune.study(_mlp, data, config=CONFIG.replace(controls=CONFIG.controls.__class__(
        other_seed=False, finetune=False)), metrics=["gini_index"], progress=True)
    seconds = time.perf_counter() - start
    err = capsys.readouterr().err
    assert "[xprune] training the dense model" in err
    if seconds > 3:
        assert "xprune.study" in err and "8/8" in err


def test_options_override_the_config(data, capsys):
    """Options over the config; data as a dict of splits, used as given."""
    splits = {"train": (data.x_train, data.y_train), "test": (data.x_test, data.y_test)}
    study = xprune.study(_mlp, splits, sparsities=0.7, attributions="saliency",
                         metrics="gini_index", progress=False,
                         config={"train": {"epochs": 1}, "pruning": {"finetune_epochs": 0},
                                 "controls": {"other_seed": False, "finetune": False},
                                 "attribution": {"n_samples": 3}})
    assert study.config.name == "study" and study.config.train.epochs == 1
    assert set(study.results["model"]) == {"dense", "l1_unstructured@0.70"}
    assert set(study.results["metric"]) == {"gini_index", "deletion_auc@vs_random"}
    assert len(study.results) == 2 * 2 * 3
    assert study.results["label"].tolist() == data.y_test[:3].tolist() * 4
    assert capsys.readouterr().err == ""  # progress=False: silent
    sparse = study.models.set_index("model").loc["l1_unstructured@0.70"]
    assert sparse["selected_sparsity"] == pytest.approx(0.7, abs=1e-3)  # output layer dense
    assert sparse["measured_sparsity"] < 0.7


# ---------------------------------------------------------------- data in memory

def test_as_split_partitions_tensors_as_split_arrays_does():
    x, y = torch.randn(200, 5), torch.arange(200) % 3
    mine, theirs = as_split((x, y), seed=3), split_arrays(x, y, seed=3)
    for part in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        assert torch.equal(getattr(mine, part), getattr(theirs, part)), part
    assert mine.n_classes == 3


def test_as_split_keeps_token_ids_integers_and_uses_given_splits():
    tokens, labels = make_token_dataset(100, seed=0)
    split = as_split((tokens, labels))
    assert split.x_train.dtype == torch.int64 and split.x_test.shape == (20, 12)
    given = as_split({"train": (tokens[:80], labels[:80]), "test": (tokens[80:], labels[80:])})
    assert torch.equal(given.x_test, tokens[80:]) and given.x_val.shape == (0, 12)
    arrays = as_split((np.ones((30, 4)), np.arange(30) % 2))
    assert arrays.x_train.dtype == torch.float64


@pytest.mark.parametrize(("data", "error", "match"), [
    (DataLoader(TensorDataset(torch.randn(8, 3))), ValueError,
     r"batch 0 of `data` to be \(inputs, labels\) or a mapping with 'labels', got list of "
     "length 1"),
    ({"input_ids": torch.zeros(4, 3).long(), "attention_mask": torch.ones(4, 3)}, TypeError,
     "tokenizer output .* pass it to xprune.study with its model"),
    ("digits", TypeError, "Expected `data` to be tensors .* got str"),
    ({"train": (torch.randn(8, 3), torch.zeros(8).long())}, ValueError,
     "keys 'train' and 'test'"),
    ((torch.randn(8, 3), torch.zeros(7).long()), ValueError,
     r"inputs \(n, ...\) and labels \(n,\), got shapes \(8, 3\) and \(7,\)"),
    ((torch.randn(8, 3), torch.rand(8)), ValueError, "labels of `data` to be integers"),
    ((torch.full((8, 3), float("nan")), torch.zeros(8).long()), ValueError,
     "finite, got 24 NaN"),
])
def test_bad_data_is_named(data, error, match):
    with pytest.raises(error, match=match):
        as_split(data)


def test_bad_arguments_are_named(data):
    with pytest.raises(TypeError, match="Expected `model` to be an nn.Module .* got str"):
        xprune.study("resnet", data, progress=False)
    with pytest.raises(ValueError, match=r"logits \(N, 2\), .* got 1 output per sample"):
        xprune.study(nn.Linear(30, 1), data, config=CONFIG, progress=False)
    with pytest.raises(ValueError, match=r"take the inputs of `data` \(inputs of shape \(30,\)"):
        xprune.study(nn.Linear(7, 2), data, config=CONFIG, progress=False)
    with pytest.raises(ValueError, match="one seed for a study"):
        xprune.study(_mlp, data, config={"seeds": [0, 1]}, progress=False)
    with pytest.raises(ValueError, match="pruning.sparsities"):
        xprune.study(_mlp, data, sparsities=[1.5], progress=False)
    with pytest.raises(ValueError, match="attribution.methods"):
        xprune.study(_mlp, data, attributions=["saliancy"], progress=False)


class _Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(30, 2)
        self.scale = nn.Parameter(torch.ones(2))

    def forward(self, x):
        return self.fc(x) * self.scale


def test_a_model_that_cannot_be_reinitialised_is_refused_for_the_other_seed_control(data):
    with pytest.raises(ValueError, match=r"reset_parameters.*\['_Scaled'\].*other_seed"):
        xprune.study(_Scaled(), data, config=CONFIG, progress=False)


# ---------------------------------------------------------------- real inputs, not floats

def test_case_015_profiling_takes_token_ids():
    """cases/015-own-text-model-run.md: the model table of a token classifier is measured on
    its real inputs (ids (N, T), int64), not on a float example."""
    tokens, labels = make_token_dataset(60, seed=0)
    split = as_split((tokens, labels))
    model = TokenClassifier(vocab_size=30, n_classes=2)
    # per sample: fc1 16 x 32 + fc2 32 x 2 multiply-accumulates (the embedding is a lookup)
    assert count_macs(model, tokens[:5]) == {"dense": 16 * 32 + 32 * 2,
                                             "nonzero": 16 * 32 + 32 * 2}
    lat = measure_latency(model, tokens[:4], min_run_time=0.01)
    assert lat["dtype"] == "int64" and lat["batch_size"] == 4
    records = [ModelRecord("dense", "dense", "", 0.0, model)]
    tables = describe_models(records, split, CONFIG)
    assert tables.models.loc[0, "macs_dense"] == 576
    assert tables.timings.loc[0, "dtype"] == "int64"


def test_data_with_a_rationale_are_scored_for_plausibility():
    """Data that know their evidence (the vowels' formant masks) get the plausibility metrics in
    a study as in `xprune run`: the dense model's AUPRC equals the metric on its own maps."""
    from xprune.data import load_vowels_split
    from xprune.models import SpectrogramCNN

    split = load_vowels_split(seed=0, n=100)
    torch.manual_seed(0)
    model = SpectrogramCNN().eval()
    study = xprune.study(model, split, sparsities=0.5, attributions="saliency",
                         metrics="rationale_auprc", progress=False,
                         config={"pruning": {"finetune_epochs": 0},
                                 "controls": {"other_seed": False, "finetune": False},
                                 "attribution": {"n_samples": 4},
                                 "metrics": {"versus_random": []}})
    dense = study.results.query("model == 'dense' and metric == 'rationale_auprc'")
    x = split.x_test[:4]
    attrs = xprune.attribute(model, x, model(x).argmax(dim=1), "saliency")
    expected = xprune.metrics.rationale_auprc(attrs, split.rationale_test[:4])
    torch.testing.assert_close(torch.tensor(dense["value"].to_numpy()), expected)


# ---------------------------------------------------------------- DataLoaders, tokenizer output

LIGHT = {"train": {"epochs": 1}, "pruning": {"finetune_epochs": 0},
         "controls": {"other_seed": False, "finetune": False},
         "attribution": {"n_samples": 4, "methods": ["saliency"]},
         "metrics": {"names": ["gini_index"], "versus_random": []},
         "report": {"latency_batch": 4}}


def test_a_dataloader_or_any_iterable_of_batches_is_the_data_it_yields(data):
    """A DataLoader is split as its tensors are (the same partition), kept in the loader's
    order; a generator of batches (read once) is collected and gives the tensors' numbers."""
    from xprune.data import _split_indices

    x, y = data.x_train[:150], data.y_train[:150]
    loader = DataLoader(TensorDataset(x, y), batch_size=150)  # one batch: full-batch training
    kw = dict(sparsities=0.5, progress=False, config={**LIGHT, "train": {
        "epochs": 1, "batch_size": 150}})
    parts = dict(zip(("train", "val", "test"), (i.sort().values for i in _split_indices(
        y.numpy(), seed=0, val_size=0.2, test_size=0.2)), strict=True))
    in_order = xprune.study(_mlp, {k: (x[i], y[i]) for k, i in parts.items()}, **kw)
    _assert_same_results(xprune.study(_mlp, loader, **kw), in_order)
    kw["config"] = LIGHT
    expected = xprune.study(_mlp, (x, y), **kw).results
    batches = ((x[i:i + 50], y[i:i + 50]) for i in range(0, 150, 50))
    pd.testing.assert_frame_equal(xprune.study(_mlp, batches, **kw).results, expected)
    shuffled = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    with pytest.raises(ValueError, match="same order on every pass .* shuffle=False"):
        xprune.study(_mlp, shuffled, **kw)


class _Counted(torch.utils.data.Dataset):
    """A data set that counts its reads, batched by a collate function that follows every
    batch's storage: ``max_live`` is the most batches alive at once."""

    def __init__(self, x, y):
        self.x, self.y, self.reads, self.alive, self.max_live = x, y, 0, [], 0

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        self.reads += 1
        return self.x[i].clone(), self.y[i]

    def collate(self, items):
        from torch.multiprocessing.reductions import StorageWeakRef

        x = torch.stack([a for a, _ in items])
        self.alive = [r for r in self.alive if not r.expired()]
        self.alive.append(StorageWeakRef(x.untyped_storage()))
        self.max_live = max(self.max_live, len(self.alive))
        return x, torch.stack([b for _, b in items])


STREAMED = {"train": {"epochs": 2, "batch_size": 16}, "pruning": {
    "method": "wanda", "sparsities": [0.5], "finetune_epochs": 1, "reference_samples": 40},
    "controls": {"other_seed": True, "finetune": True},
    "attribution": {"n_samples": 6, "methods": ["saliency"]},
    "metrics": {"names": ["gini_index", "deletion_auc"], "versus_random": []},
    "report": {"latency_batch": 4}}


def test_a_dataloader_is_streamed_batch_by_batch_never_held_whole(data):
    """Training, fine-tuning, Wanda's calibration and the evaluation read a DataLoader one
    batch at a time: at most a few batches are alive at once (of 19 per pass), and only the
    explained test rows are held."""
    train_set = _Counted(data.x_train[:300], data.y_train[:300])
    test_set = _Counted(data.x_test, data.y_test)
    loaders = {k: DataLoader(d, batch_size=16, collate_fn=d.collate)
               for k, d in (("train", train_set), ("test", test_set))}
    study = xprune.study(_mlp, loaders, progress=False, config=STREAMED)
    assert train_set.reads >= 300 * 5  # dense, other seed (2 epochs each), 2 fine-tunings
    assert train_set.max_live <= 3 and test_set.max_live <= 3
    assert study.models["accuracy"].notna().all()
    assert study.results["sample"].nunique() == 6


def test_a_dataloader_gives_the_numbers_of_its_tensors(data):
    """The same data as DataLoaders (not shuffled, full-batch training so that the order of a
    batch's rows is all that differs) or as tensors: the same results, seed for seed."""
    x, y = data.x_train[:200], data.y_train[:200]
    config = {**STREAMED, "train": {"epochs": 2, "batch_size": 200}}
    tensors = xprune.study(_mlp, {"train": (x, y), "test": (data.x_test, data.y_test)},
                           progress=False, config=config)
    loaders = {"train": DataLoader(TensorDataset(x, y), batch_size=200),
               "test": DataLoader(TensorDataset(data.x_test, data.y_test), batch_size=16)}
    _assert_same_results(xprune.study(_mlp, loaders, progress=False, config=config), tensors)


def _assert_same_results(study, expected):
    """The same rows, and values equal up to the order of float sums."""
    pd.testing.assert_frame_equal(study.results.drop(columns="value"),
                                  expected.results.drop(columns="value"))
    torch.testing.assert_close(torch.tensor(study.results["value"].to_numpy()),
                               torch.tensor(expected.results["value"].to_numpy()))
    for column in ("accuracy", "ece", "nll", "measured_sparsity"):
        torch.testing.assert_close(torch.tensor(study.models[column].to_numpy()),
                                   torch.tensor(expected.models[column].to_numpy()))


def test_collect_batches_pads_token_batches_to_one_length():
    from xprune.data import collect_batches

    batches = [{"input_ids": torch.tensor([[5, 6, 0]]), "attention_mask": torch.tensor([[1, 1, 0]]),
                "labels": torch.tensor([1])},
               {"input_ids": torch.tensor([[7, 8, 9, 4, 3]]),
                "attention_mask": torch.tensor([[1, 1, 1, 1, 1]]), "labels": torch.tensor([0])}]
    x, y = collect_batches(batches, pad_token_id=0)
    assert torch.equal(x["input_ids"], torch.tensor([[5, 6, 0, 0, 0], [7, 8, 9, 4, 3]]))
    assert torch.equal(x["attention_mask"], torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]))
    assert torch.equal(y, torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="pad id to pad the batches"):
        collect_batches(batches)
    with pytest.raises(ValueError, match="labels under 'labels'"):
        collect_batches([{"input_ids": torch.zeros(1, 3).long()}])
    with pytest.raises(ValueError, match="at least one batch"):
        collect_batches(iter([]))


def _tokens(n: int, seed: int):
    """Token ids (n, 10), pad id 0 after each sentence's length, [CLS]=1 first; label: an id
    below 10 occurs."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 30, (n, 10), generator=g)
    mask = (torch.arange(10)[None] < torch.randint(4, 11, (n,), generator=g)[:, None]).long()
    ids = ids * mask
    ids[:, 0] = 1
    return ids, mask, ((ids >= 5) & (ids < 10)).any(dim=1).long()


@pytest.fixture(scope="module")
def bert():
    """A tiny Hugging Face BERT classifier built from a config (nothing downloaded), trained
    briefly on the tokens of :func:`_tokens`."""
    from transformers import BertConfig, BertForSequenceClassification

    from xprune._study import TokenIds
    from xprune.models import train

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16, num_labels=2, pad_token_id=0))
    ids, _, labels = _tokens(200, seed=1)
    train(TokenIds(model, 0, ("input_ids", "attention_mask")), ids, labels, epochs=3)
    return model.eval()


def test_tokenizer_output_and_a_hugging_face_model(bert):
    """A BatchEncoding (input_ids, attention_mask, token_type_ids) and a BERT classifier: the
    study calls the model with the ids and the mask rebuilt from them; the dense model's Gini
    index is that of its saliency maps computed on the tokenizer output as given (padding
    masked), and MACs and latency take the token ids."""
    from transformers import BatchEncoding

    ids, mask, labels = _tokens(60, seed=2)
    ids[40:50, 9], mask[40:50, 9] = 0, 0  # the first test batch is shorter than the second
    ids[50, 1:], mask[50] = torch.arange(10, 19), 1
    enc = BatchEncoding({"input_ids": ids, "attention_mask": mask,
                         "token_type_ids": torch.zeros_like(ids)})
    test = BatchEncoding({k: v[40:] for k, v in enc.items()})
    splits = {"train": (BatchEncoding({k: v[:40] for k, v in enc.items()}), labels[:40]),
              "test": (test, labels[40:])}
    before = {k: v.clone() for k, v in bert.state_dict().items()}
    study = xprune.study(bert, splits, sparsities=0.5, progress=False, config=LIGHT)
    assert all(torch.equal(v, before[k]) for k, v in bert.state_dict().items())
    inputs = {k: v[:4] for k, v in test.items()}
    target = bert(**inputs).logits.argmax(dim=1)
    attrs = xprune.attribute(bert, inputs, target, "saliency")
    assert attrs.feature_mask is not None and not bool(attrs.feature_mask.all())
    dense = study.results.query("model == 'dense' and metric == 'gini_index'")
    torch.testing.assert_close(torch.tensor(dense["value"].to_numpy()),
                               xprune.metrics.gini_index(attrs))
    assert dense["target"].tolist() == target.tolist()
    timings = pd.read_csv(study.out / "timings.csv")
    assert set(timings["dtype"]) == {"int64"}
    cfg = json.loads((study.out / "config.json").read_text())
    assert cfg["model"]["factory"] == "BertForSequenceClassification passed to xprune.study " \
                                      "(trained)"
    # a collator's batches (mappings with "labels", each padded to its own length): the same
    own = [int(mask[i:i + 10].sum(1).max()) for i in (40, 50)]
    assert max(own) == 10 and min(own) < 10  # one batch is shorter: padded on collection
    loader = [{"input_ids": ids[i:i + 10, :t], "attention_mask": mask[i:i + 10, :t],
               "labels": labels[i:i + 10]} for i, t in zip((40, 50), own, strict=True)]
    batches = {"train": [{"input_ids": ids[:40], "attention_mask": mask[:40],
                          "labels": labels[:40]}], "test": loader}
    again = xprune.study(bert, batches, sparsities=0.5, progress=False, config=LIGHT)
    pd.testing.assert_frame_equal(again.results, study.results)


def test_tokenizer_output_whose_mask_does_not_follow_from_the_ids_is_refused(bert):
    ids, mask, labels = _tokens(40, seed=3)
    mask[0, 0] = 0  # attends to padding elsewhere: the ids alone cannot say so
    with pytest.raises(ValueError, match=r"attention_mask of `data` to be input_ids != pad id"):
        xprune.study(bert, ({"input_ids": ids, "attention_mask": mask}, labels),
                     progress=False, config=LIGHT)
    with pytest.raises(ValueError, match="token_type_ids of `data` to be 0 on the first "
                                         "sequence .* got 1 from the first token"):
        xprune.study(bert, ({"input_ids": ids, "token_type_ids": torch.ones_like(ids)}, labels),
                     progress=False, config=LIGHT)
    types = (torch.arange(10) >= 3).long().expand_as(ids).clone()  # a second segment, no [SEP]
    types[0, 5] = 0
    with pytest.raises(ValueError, match=r"sentence pairs in `data` to be separated by one id"):
        xprune.study(bert, ({"input_ids": ids, "token_type_ids": types}, labels),
                     progress=False, config=LIGHT)


def test_run_analysis_and_study_run_the_one_stage_sequence(monkeypatch, data, tmp_path):
    """`xprune run` (run_analysis) and study both go through analysis.run_stages."""
    import xprune._study as study_module
    import xprune.analysis as analysis

    calls = []
    real = analysis.run_stages

    def spy(*args, **kwargs):
        calls.append(kwargs.get("data") is not None)
        return real(*args, **kwargs)

    monkeypatch.setattr(analysis, "run_stages", spy)
    monkeypatch.setattr(study_module, "run_stages", spy)
    config = CONFIG.replace(metrics=CONFIG.metrics.__class__(names=["gini_index"],
                                                             versus_random=[]))
    run_analysis(config, out_dir=tmp_path / "run", progress=False, use_cache=False,
                 render=False)
    xprune.study(_mlp, data, config=config, progress=False)
    assert calls == [False, True]


# ---------------------------------------------------------------- sentence pairs

PAIR_WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "film", "plot", "a",
              "the", "was", "is", "fine", "dull", "long"]


@pytest.fixture(scope="module")
def pairs():
    """Sentence pairs (text, text_pair) through a BERT WordPiece tokenizer built from a local
    vocabulary (nothing downloaded), labelled 1 where "good" is in the second sentence, and a
    tiny BERT trained on them with the token types the tokenizer gives."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    from xprune._study import TokenIds
    from xprune.models import train

    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(PAIR_WORDS)})
    g = torch.Generator().manual_seed(0)
    words = PAIR_WORDS[5:]

    def sentence():
        n = int(torch.randint(2, 6, (1,), generator=g))
        return " ".join(words[int(i)] for i in torch.randint(0, len(words), (n,), generator=g))

    first, second = [sentence() for _ in range(120)], [sentence() for _ in range(120)]
    labels = torch.tensor([int("good" in s.split()) for s in second])
    enc = tokenizer(first, second, padding=True, return_tensors="pt")
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=len(PAIR_WORDS), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32, num_labels=2, pad_token_id=0))
    train(TokenIds(model, 0, ("input_ids", "attention_mask", "token_type_ids"),
                   sep_token_id=tokenizer.sep_token_id), enc["input_ids"], labels, epochs=3)
    return tokenizer, dict(enc), labels, model.eval()


def test_segment_ids_are_the_token_types_a_tokenizer_gives_pairs(pairs):
    from xprune._study import segment_ids

    tokenizer, enc, _, _ = pairs
    assert bool(enc["token_type_ids"].any())  # pairs: a second segment
    torch.testing.assert_close(segment_ids(enc["input_ids"], tokenizer.sep_token_id, 0),
                               enc["token_type_ids"], rtol=0, atol=0)


def test_sentence_pairs_are_studied_with_their_token_types(pairs):
    """A tokenizer's output of pairs (token_type_ids 1 on the second sentence): the study calls
    the model with the token types rebuilt from the ids, masks [CLS] and [SEP] (found from the
    segments), and its dense maps are those of the tokenizer output as given."""
    tokenizer, enc, labels, model = pairs
    cut = 80
    splits = {"train": ({k: v[:cut] for k, v in enc.items()}, labels[:cut]),
              "test": ({k: v[cut:] for k, v in enc.items()}, labels[cut:])}
    config = {**LIGHT, "metrics": {"names": ["gini_index", "comprehensiveness"],
                                   "versus_random": [], "params": {"comprehensiveness": {
                                       "baseline": tokenizer.mask_token_id}}}}
    study = xprune.study(model, splits, sparsities=0.5, progress=False, config=config)
    inputs = {k: v[cut:cut + 4] for k, v in enc.items()}
    target = model(**inputs).logits.argmax(dim=1)
    attrs = xprune.attribute(model, inputs, target, "saliency", tokens={
        "special_token_ids": (tokenizer.cls_token_id, tokenizer.sep_token_id)})
    dense = study.results.query("model == 'dense' and metric == 'gini_index'")
    assert dense["target"].tolist() == target.tolist()
    torch.testing.assert_close(torch.tensor(dense["value"].to_numpy()),
                               xprune.metrics.gini_index(attrs))
    assert study.results.query("metric == 'comprehensiveness'")["value"].notna().all()
    # the token types as given are what the model sees: without them the maps differ
    plain = xprune.attribute(model, {k: v for k, v in inputs.items() if k != "token_type_ids"},
                             target, "saliency", tokens={"special_token_ids": (2, 3)})
    assert not torch.allclose(xprune.metrics.gini_index(plain), xprune.metrics.gini_index(attrs))


def test_deleted_tokens_take_their_token_types_and_never_a_separator(pairs):
    """comprehensiveness with tokens deleted (removal='delete') on pairs: every row the model
    sees keeps [CLS], both [SEP] and the token type of each kept token (the types of the kept
    tokens are those their segment gives), whatever was deleted."""
    from xprune._study import segment_ids

    tokenizer, enc, _, model = pairs
    inputs = {k: v[:6] for k, v in enc.items()}
    target = model(**inputs).logits.argmax(dim=1)
    attrs = xprune.attribute(model, inputs, target, "saliency", tokens={
        "special_token_ids": (tokenizer.cls_token_id, tokenizer.sep_token_id)})
    seen = []

    class Recorder(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            seen.append((input_ids, attention_mask, token_type_ids))
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).logits

    xprune.metrics.comprehensiveness(Recorder(), inputs, attrs, target, removal="delete",
                                     fractions=(0.2, 0.5, 1.0))
    rows = 0
    for ids, mask, types in seen:
        for i in range(len(ids)):
            kept = mask[i].bool()
            row, row_types = ids[i][kept], types[i][kept]
            assert row[0] == tokenizer.cls_token_id
            assert int((row == tokenizer.sep_token_id).sum()) == 2
            assert torch.equal(row_types, segment_ids(row[None], tokenizer.sep_token_id, 0)[0])
            rows += 1
    assert rows > len(inputs["input_ids"])  # rows with tokens deleted were seen


def test_a_dict_of_loaders_with_a_validation_split_is_streamed(data):
    """{'train', 'val', 'test'} of DataLoaders gives the numbers of the same splits in memory
    (the validation split was scanned for no rows and failed in torch.cat)."""
    x, y = data.x_train[:150], data.y_train[:150]
    splits = {"train": (x[:90], y[:90]), "val": (x[90:120], y[90:120]), "test": (x[120:], y[120:])}
    kw = dict(sparsities=0.5, progress=False, config={**LIGHT, "train": {
        "epochs": 1, "batch_size": 150}})
    loaders = {k: DataLoader(TensorDataset(*v), batch_size=150) for k, v in splits.items()}
    _assert_same_results(xprune.study(_mlp, loaders, **kw), xprune.study(_mlp, splits, **kw))


def test_one_iterable_of_tokenizer_batches_is_split_like_its_tensors(bert):
    """One list of collator batches (mappings with "labels") is split by position and gives
    the numbers of the same partition given as tokenizer outputs (the labels pass read the
    mappings without converting them and was refused)."""
    from transformers import BatchEncoding

    from xprune.data import _split_indices

    ids, mask, labels = _tokens(60, seed=2)
    batches = [{"input_ids": ids[i:i + 10], "attention_mask": mask[i:i + 10],
                "labels": labels[i:i + 10]} for i in range(0, 60, 10)]
    parts = dict(zip(("train", "val", "test"), (i.sort().values for i in _split_indices(
        labels.numpy(), seed=0, val_size=0.2, test_size=0.2)), strict=True))
    splits = {k: (BatchEncoding({"input_ids": ids[i], "attention_mask": mask[i]}), labels[i])
              for k, i in parts.items()}
    kw = dict(sparsities=0.5, progress=False, config={**LIGHT, "train": {
        "epochs": 1, "batch_size": 60}})
    _assert_same_results(xprune.study(bert, batches, **kw), xprune.study(bert, splits, **kw))


class _MaskedBag(nn.Module):
    """forward(input_ids, attention_mask): the masked mean of the embeddings weighted by
    position, a hidden layer, logits; no config, so no pad id but the data's."""

    def __init__(self) -> None:
        super().__init__()
        self.emb, self.hidden, self.fc = nn.Embedding(30, 8), nn.Linear(8, 8), nn.Linear(8, 2)
        self.register_buffer("position", torch.linspace(0.5, 2.0, 8)[:, None])

    def forward(self, input_ids, attention_mask):
        m = attention_mask.unsqueeze(-1).float() * self.position[:input_ids.shape[1]]
        mean = (self.emb(input_ids) * m).sum(1) / m.sum(1).clamp_min(1)
        return self.fc(torch.relu(self.hidden(mean)))


def test_streamed_token_batches_learn_the_pad_id_from_any_batch_not_the_first_only():
    """The first batch of every split has no padding, a later one has (pad id 0): the layout is
    read from every batch, so the study runs, with the numbers of the same data in memory
    (it failed with "attention_mask ... input_ids != pad id (None)" on the later batch)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 30, (56, 8), generator=g)
    mask = torch.ones_like(ids)
    mask[44:, 5:] = 0                                   # padding in the test split's 2nd batch
    ids = ids * mask
    labels = (ids[:, 0] < 17).long()
    torch.manual_seed(0)
    model = _MaskedBag().eval()

    def enc(lo, hi):
        return {"input_ids": ids[lo:hi], "attention_mask": mask[lo:hi]}

    streamed = {"train": [{**enc(0, 40), "labels": labels[:40]}],
                "test": [{**enc(40, 44), "labels": labels[40:44]},
                         {**enc(44, 56), "labels": labels[44:]}]}
    study = xprune.study(model, streamed, sparsities=0.5, progress=False, config=LIGHT)
    in_memory = {"train": (enc(0, 40), labels[:40]), "test": (enc(40, 56), labels[40:])}
    again = xprune.study(model, in_memory, sparsities=0.5, progress=False, config=LIGHT)
    pd.testing.assert_frame_equal(study.results, again.results)
    assert bool((study.results["value"] > 0).all())  # Gini of maps that are not constant
