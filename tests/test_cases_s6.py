"""Cases found by trying xprune as a new user with models of one's own (tests/cases_s6/)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import xprune
from xprune.models import train


class TwoInput(nn.Module):
    """forward(num, cat): two float inputs, no `labels` keyword."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 8), nn.Linear(3, 8)
        self.relu, self.fc = nn.ReLU(), nn.Linear(8, 2)

    def forward(self, num, cat):
        return self.fc(self.relu(self.a(num) + self.b(cat)))


class _Items(torch.utils.data.Dataset):
    def __init__(self, num, cat, labels):
        self.num, self.cat, self.labels = num, cat, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"num": self.num[i], "cat": self.cat[i], "labels": self.labels[i]}


def _two_input_data(n=48):
    g = torch.Generator().manual_seed(0)
    num, cat = torch.randn(n, 6, generator=g), torch.randn(n, 3, generator=g)
    return num, cat, (num[:, 0] + cat[:, 0] > 0).long()


def test_dict_batches_with_labels_for_a_model_without_labels():
    """tests/cases_s6/001-dict-batches-with-labels.md: the "labels" entry is the labels only.

    Taylor importance from the loader equals Taylor importance from the same samples in
    memory, and training from the loader runs the same loss as from tensors."""
    num, cat, y = _two_input_data()
    torch.manual_seed(0)
    model = TwoInput()
    loader = torch.utils.data.DataLoader(_Items(num, cat, y), batch_size=len(y))
    streamed = xprune.prune(model, 0.5, method="taylor_unstructured", data=loader)
    in_memory = xprune.prune(model, 0.5, method="taylor_unstructured",
                             data=({"num": num, "cat": cat}, y))
    assert streamed.masks.keys() == in_memory.masks.keys()
    for key in streamed.masks:
        assert torch.equal(streamed.masks[key], in_memory.masks[key])
    a, b = TwoInput(), TwoInput()
    b.load_state_dict(a.state_dict())
    from_loader = train(a, loader, epochs=1)
    from_tensors = train(b, ({"num": num, "cat": cat}, y), epochs=1, batch_size=len(y))
    torch.testing.assert_close(from_loader.final_loss, from_tensors.final_loss)


def test_model_that_takes_labels_still_gets_them():
    """A forward with `labels` (as Hugging Face models have) still receives them."""
    seen = {}

    class OwnLoss(TwoInput):
        def forward(self, num, cat, labels=None):
            seen["labels"] = labels
            return super().forward(num, cat)

    num, cat, y = _two_input_data(8)
    loader = [{"num": num, "cat": cat, "labels": y}]
    xprune.prune(OwnLoss(), 0.5, method="taylor_unstructured", data=loader)
    assert torch.equal(seen["labels"], y)


@pytest.fixture
def regression():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 5, generator=g)
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 1)), x, x.sum(dim=1)


def test_regression_target_is_refused_before_the_loss(regression):
    """tests/cases_s6/002-float-labels-loss.md"""
    model, x, y = regression
    with pytest.raises(ValueError, match=r"labels of `data`.*dtype float32.*regression target"):
        xprune.prune(model, 0.5, method="taylor_unstructured", data=(x, y))
    with pytest.raises(ValueError, match=r"regression target is not supported"):
        xprune.fine_tune(xprune.prune(model, 0.5), x, y, epochs=1)


def test_labels_beyond_the_outputs_are_refused():
    """tests/cases_s6/002-float-labels-loss.md: labels 0..3 for a 2-output model."""
    num, cat, _ = _two_input_data(8)
    with pytest.raises(ValueError, match=r"0\.\.1 \(the model has 2 output\(s\)\), got labels "
                                         r"from 0 to 3"):
        train(TwoInput(), ({"num": num, "cat": cat}, torch.arange(8) % 4), epochs=1)


def test_one_output_probability_is_refused(regression):
    """tests/cases_s6/003-one-output-probability.md: no constant 1.0 scores."""
    model, x, _ = regression
    maps = xprune.attribute(model, x[:6], 0, "saliency")
    with pytest.raises(ValueError, match=r"one output.*output='logit'"):
        xprune.metrics.deletion_auc(model, x[:6], maps, maps.targets)
    with pytest.raises(ValueError, match=r"one output.*output='logit'"):
        xprune.metrics.insertion_auc(model, x[:6], maps, maps.targets)
    logit = xprune.metrics.deletion_curve(model, x[:6], maps, maps.targets, output="logit",
                                          steps=5)
    with torch.no_grad():
        assert torch.equal(logit.values[:, 0], model(x[:6])[:, 0].double())


def test_structured_magnitude_with_keyword_inputs():
    """tests/cases_s6/004-structured-keyword-inputs.md: the example rows are every input's."""
    num, cat, y = _two_input_data()
    torch.manual_seed(0)
    model = TwoInput()
    pair = xprune.prune(model, 0.3, method="structured", data=({"num": num, "cat": cat}, y))
    # the hidden units a and b share (their sum) are removed together: 8 -> fewer, in both
    kept = pair.sparse.a.out_features
    assert kept < 8 and pair.sparse.b.out_features == kept == pair.sparse.fc.in_features
    with torch.no_grad():  # the masked twin computes what the smaller model computes
        torch.testing.assert_close(pair.sparse(num, cat), pair.twin(num, cat))
    with pytest.raises(ValueError, match=r"criterion 'taylor'.*criterion='magnitude'"):
        xprune.prune(model, 0.3, method="structured", data=({"num": num, "cat": cat}, y),
                     options={"criterion": "taylor"})


def test_structured_refuses_distilbert_attention():
    """tests/cases_s6/005-structured-distilbert.md"""
    transformers = pytest.importorskip("transformers")
    config = transformers.DistilBertConfig(vocab_size=40, dim=16, n_layers=1, n_heads=2,
                                           hidden_dim=32, max_position_embeddings=16,
                                           pad_token_id=0)
    torch.manual_seed(0)
    model = transformers.DistilBertForSequenceClassification(config)
    ids = torch.randint(5, 40, (8, 6))
    data = (ids, ids[:, 0] % 2)
    with pytest.raises(ValueError, match=r"attention module\(s\) "
                                         r"\['distilbert\.transformer\.layer\.0\.attention'\]"):
        xprune.prune(model, 0.5, method="structured", data=data)
    pair = xprune.prune(model, 0.3, method="structured", data=data, layers="*ffn.lin1")
    assert pair.sparse.distilbert.transformer.layer[0].ffn.lin1.out_features < 32
    assert pair.sparse(ids).logits.shape == (8, 2)


def test_structured_with_nothing_removable_is_refused():
    """tests/cases_s6/006-structured-nothing-removable.md: no silent sparsity 0."""

    class LSTMText(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(20, 8, padding_idx=0)
            self.lstm = nn.LSTM(8, 8, batch_first=True)
            self.fc = nn.Linear(8, 2)

        def forward(self, ids):
            return self.fc(self.lstm(self.emb(ids))[0][:, -1])

    ids = torch.randint(1, 20, (16, 5))
    with pytest.raises(ValueError, match=r"no layer whose channels it can remove.*"
                                         r"\['lstm'\] use method='rnn_units'"):
        xprune.prune(LSTMText(), 0.5, method="structured", data=(ids, ids[:, 0] % 2))


def test_study_labels_float_integer_valued_or_continuous():
    """tests/cases_s6/007-float-labels-study.md"""
    from xprune.data import _pair

    x = torch.randn(6, 3)
    labels = torch.tensor([0.0, 1.0, 2.0, 1.0, 0.0, 2.0])
    _, y = _pair((x, labels), "data")
    assert y.dtype == torch.long and y.tolist() == [0, 1, 2, 1, 0, 2]
    with pytest.raises(ValueError, match=r"continuous values.*regression target is not supported"):
        _pair((x, labels + 0.5), "data")
    with pytest.raises(ValueError, match=r"integers 0\.\.C-1, got dtype int64 with minimum -1"):
        _pair((x, labels - 1), "data")


def test_numeric_csv_names_the_ways_to_bring_a_table(tmp_path):
    """tests/cases_s6/008-tabular-csv.md"""
    from xprune.data import load_text_file

    path = tmp_path / "wine.csv"
    path.write_text("alcohol,ash,target\n14.2,2.4,0\n13.2,2.1,1\n")
    with pytest.raises(ValueError, match=r"read as text classification data.*\.npz.*"
                                         r"'mypackage\.data:load'"):
        load_text_file(str(path))


def test_study_with_keyword_inputs_says_one_input():
    """tests/cases_s6/009-study-keyword-inputs.md: refused before any training."""
    num, cat, y = _two_input_data()
    with pytest.raises(ValueError, match=r"mapping of the inputs \['cat', 'num'\].*one input"):
        xprune.study(TwoInput, ({"num": num, "cat": cat}, y), progress=False)


def test_removal_metrics_take_keyword_inputs():
    """tests/cases_s6/010-metrics-keyword-inputs.md, closed by ../shared/cases/009: the removal
    metrics take the mapping attribution took; ``cat`` passes through, each sample its own, as
    in the wrapper that closes over it (the reference, sample by sample)."""
    num, cat, _ = _two_input_data(6)
    torch.manual_seed(0)
    model = TwoInput()
    maps = xprune.attribute(model, {"num": num, "cat": cat}, "predicted", "saliency")

    class Closed(nn.Module):
        def __init__(self, row):
            super().__init__()
            self.model, self.row = model, row

        def forward(self, x):
            return self.model(x, self.row.expand(x.shape[0], -1))

    for metric in (xprune.metrics.deletion_auc, xprune.metrics.insertion_auc,
                   xprune.metrics.aopc):
        got = metric(model, {"num": num, "cat": cat}, maps, maps.targets)
        want = torch.cat([metric(Closed(cat[i:i + 1]), num[i:i + 1], maps.values[i:i + 1],
                                 maps.targets[i:i + 1]) for i in range(6)])
        torch.testing.assert_close(got, want)


def test_factory_kwargs_that_do_not_fit_name_the_config_key():
    """tests/cases_s6/011-factory-kwargs.md: refused when the factory is resolved, before
    any training, naming `model.kwargs` and the factory's signature."""
    from xprune.analysis import _model_factory
    from xprune.config import AnalysisConfig

    config = AnalysisConfig.from_dict({"model": {"factory": "torch.nn:Linear",
                                                 "kwargs": {"in_featurs": 3, "out_features": 2}}})
    with pytest.raises(ValueError, match=r"`model\.kwargs` \{'in_featurs': 3, 'out_features': 2\}"
                                         r" to fit `model\.factory` 'torch\.nn:Linear'\(in_features"
                                         r".*missing a required argument: 'in_features'"):
        _model_factory(None, config)
    typo = AnalysisConfig.from_dict({"model": {"factory": "torch.nn:Linear", "kwargs": {
        "in_features": 3, "out_features": 2, "bais": False}}})
    with pytest.raises(ValueError, match=r"unexpected keyword argument 'bais'"):
        _model_factory(None, typo)
    good = AnalysisConfig.from_dict({"model": {"factory": "torch.nn:Linear",
                                               "kwargs": {"in_features": 3, "out_features": 2}}})
    assert _model_factory(None, good)().weight.shape == (2, 3)


def test_float_labels_in_a_data_file_say_what_they_are():
    """tests/cases_s6/007-float-labels-study.md (data files)."""
    import numpy as np

    from xprune.data import split_arrays

    x = np.zeros((12, 2), dtype=np.float32)
    with pytest.raises(ValueError, match=r"whole numbers stored as floats.*astype\(int\)"):
        split_arrays(x, np.arange(12) % 3 * 1.0)
    with pytest.raises(ValueError, match=r"regression target"):
        split_arrays(x, np.linspace(0, 1, 12))


def test_a_metric_given_to_the_wrong_command_names_the_right_one():
    """tests/cases_s6/012-score-agreement-metric.md"""
    from xprune.compare import _names

    with pytest.raises(ValueError, match=r"got 'ssim' of kind 'pair': it compares two maps: "
                                         r"`xprune compare A\.safetensors B\.safetensors "
                                         r"--metrics ssim`\. Valid here: .*deletion_auc"):
        _names(["deletion_auc", "ssim"], ("map", "model", "explainer"), 4)
    with pytest.raises(ValueError, match=r"'deletion_auc' of kind 'model': it scores one "
                                         r"model's maps: `xprune score .*Valid here: "
                                         r"cosine_similarity, kendall_tau"):
        _names(["deletion_auc"], ("pair",), 4)


class _Scale(nn.Module):
    """A layer with a parameter and no reset_parameters (as Hugging Face's Conv1D)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * self.gain


def _scaled_mlp() -> nn.Module:
    return nn.Sequential(_Scale(4), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def test_study_of_a_function_needs_no_reset_parameters(tmp_path):
    """tests/cases_s6/013-study-factory-reset-parameters.md: a function builds the fresh models;
    a module instance still needs reset_parameters for its re-initialised copies."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 4, generator=g)
    y = (x[:, 0] > 0).long()
    config = {"train": {"epochs": 1}, "pruning": {"finetune_epochs": 1},
              "attribution": {"n_samples": 8}}
    study = xprune.study(_scaled_mlp, (x, y), sparsities=[0.5], attributions="saliency",
                         metrics=["gini_index"], progress=False, config=config,
                         out=tmp_path / "fn")
    assert set(study.models["model"]) >= {"dense", "control:other-seed"}
    with pytest.raises(ValueError, match=r"reset_parameters.*\['0'\]"):
        xprune.study(_scaled_mlp(), (x, y), train=True, progress=False, config=config,
                     out=tmp_path / "module")


def _case_folders() -> list:
    """tests/cases_s6/, and ../shared/cases/ where a checkout has it beside (not in CI)."""
    from pathlib import Path

    tests = Path(__file__).resolve().parent
    shared = [p / "shared" / "cases" for p in tests.parents if (p / "shared" / "cases").is_dir()]
    return [tests / "cases_s6", *shared[:1]]


@pytest.mark.parametrize("folder", _case_folders(), ids=lambda p: p.parent.name + "/" + p.name)
def test_every_case_file_is_named_by_the_test_that_fixes_it(folder):
    """Each case file's name appears in a test module (its fixing test's name or docstring)."""
    from pathlib import Path

    sources = "\n".join(p.read_text() for p in Path(__file__).resolve().parent.rglob("*.py"))
    unnamed = sorted(p.name for p in folder.glob("*.md") if p.name not in sources)
    assert not unnamed, f"no test names {unnamed} ({folder})"
