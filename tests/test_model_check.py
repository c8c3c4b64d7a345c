"""The user's model, checkpoint and data are checked at the door, before any training or scoring.

Each test names its case in ../shared/cases/ (017 to 020), or, for the inputs of issue 21 that
have no case file there, describes the input and what was seen in its docstring.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

import xprune
from xprune._cache import RunCache
from xprune.analysis import explained_count, load_data, train_dense
from xprune.checkpoint import save_model
from xprune.cli import main
from xprune.config import AnalysisConfig
from xprune.data import as_split, check_labels, load_digits_split, split_arrays
from xprune.models import DigitsCNN, TabularMLP, check_model, train

NO_CACHE = RunCache(None, {})


def _config(**sections) -> AnalysisConfig:
    base = {"train": {"epochs": 1}, "pruning": {"sparsities": [0.5], "finetune_epochs": 0},
            "controls": {"other_seed": False, "finetune": False},
            "attribution": {"methods": ["saliency"], "n_samples": 4}}
    return AnalysisConfig.from_dict({**base, **sections})


@pytest.fixture(scope="module")
def digits():
    return load_digits_split()


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# --- case 017: fewer outputs than classes -------------------------------------------------

def test_case_017_one_output_model_is_named_before_training(digits):
    """../shared/cases/017-one-output-model.md: a factory's 1-output CNN on 10-class digits."""
    config = _config(model={"factory": "xprune.models:DigitsCNN", "kwargs": {"n_classes": 1}})
    with pytest.raises(ValueError, match=r"Expected `model.factory` 'xprune.models:DigitsCNN' to "
                                         r"return logits \(N, 10\), one column per class of the "
                                         r"labels \(0..9\), got 1 output per sample"):
        train_dense(config, digits, cache=NO_CACHE)


def test_case_017_the_check_runs_before_training_and_leaves_the_random_stream(digits):
    """The check of a factory's model builds one under a forked random stream: the dense model
    trained after it has the weights of a run without the check."""
    config = _config(model={"factory": "xprune.models:DigitsCNN"})
    torch.manual_seed(0)
    checked = train_dense(config, digits, cache=NO_CACHE).model
    torch.manual_seed(0)
    factory = lambda: DigitsCNN()  # noqa: E731 - the same architecture, no check on this path
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        plain = factory()
    train(plain, digits.x_train, digits.y_train, epochs=1, lr=config.train.lr,
          batch_size=config.train.batch_size, seed=config.seed)
    for (k, a), (_, b) in zip(checked.state_dict().items(), plain.state_dict().items(),
                              strict=True):
        assert torch.equal(a, b), k


# --- case 018: labels with gaps -------------------------------------------------------------

def test_case_018_label_gaps_are_refused_listing_the_missing_classes(tmp_path):
    """../shared/cases/018-label-gaps.md: digits labelled {0, 100, ..., 900}."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    path = tmp_path / "gaps.npz"
    np.savez(path, x=bunch.data.reshape(-1, 1, 8, 8) / 16, y=bunch.target * 100)
    with pytest.raises(ValueError, match=r"labels of 'gaps' to be 0..C-1 with every class "
                                         r"present, got 10 classes from 0 to 900: 891 missing "
                                         r"\(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, ...\)\. Map the "
                                         r"labels to 0..9"):
        load_data(_config(data={"dataset": str(path)}))
    y = torch.tensor([0, 2, 3] * 10)
    for data in ((torch.randn(30, 4), y), {"train": (torch.randn(30, 4), y),
                                           "test": (torch.randn(30, 4), y)}):
        with pytest.raises(ValueError, match=r"labels of `data` .* 1 missing \(1\)"):
            as_split(data)


def test_case_018_every_class_must_be_in_the_training_split():
    """A class only in the test split of a dict of splits has no training sample."""
    train_y, test_y = torch.tensor([0, 1] * 10), torch.tensor([0, 1, 2] * 4)
    split = as_split({"train": (torch.randn(20, 3), train_y), "test": (torch.randn(12, 3), test_y)})
    with pytest.raises(ValueError, match=r"every class of 'data' \(0..2\) in the training split, "
                                         r"got none of class 2"):
        load_data(_config(), split)
    assert check_labels(np.array([1, 0, 2, 2]), "y") == 3


# --- case 019: NaN or Inf weights ------------------------------------------------------------

def test_case_019_non_finite_weights_name_the_file_and_the_tensor(tmp_path, digits):
    """../shared/cases/019-nan-weights.md: one NaN in conv1.weight (safetensors) or one Inf in
    fc2.weight (a torch.save state dict), given as the dense checkpoint."""
    nan_model, inf_model = DigitsCNN(), DigitsCNN()
    with torch.no_grad():
        nan_model.conv1.weight[3, 0, 1, 2] = float("nan")
        inf_model.fc2.weight[0, 5] = float("inf")
    save_model(nan_model, tmp_path / "nan.safetensors")
    torch.save(inf_model.state_dict(), tmp_path / "inf.pt")
    for name, tensor, index in (("nan.safetensors", "conv1.weight", r"\(3, 0, 1, 2\)"),
                                ("inf.pt", "fc2.weight", r"\(0, 5\)")):
        config = _config(model={"checkpoint": str(tmp_path / name)})
        with pytest.raises(ValueError, match=rf"finite weights in checkpoint .*{name}, got 1 NaN "
                                             rf"or Inf entries in tensor '{tensor}' .* index "
                                             rf"{index}"):
            train_dense(config, digits, cache=NO_CACHE)
    with pytest.raises(ValueError, match=r"finite weights in `model`, .* tensor 'conv1.weight'"):
        xprune.study(nan_model, digits, progress=False, out=tmp_path / "study")


# --- case 020: a checkpoint that does not fit the data ---------------------------------------

def test_case_020a_input_shape_names_both_shapes_and_the_layer(tmp_path):
    """../shared/cases/020-checkpoint-input-mismatch.md (a): 10x10 images, a checkpoint of the
    8x8 digits CNN: torch said `mat1 and mat2 shapes cannot be multiplied`."""
    path = tmp_path / "dense.safetensors"
    save_model(DigitsCNN(), path)
    rng = np.random.default_rng(0)
    data_path = tmp_path / "big.npz"
    np.savez(data_path, x=rng.random((100, 1, 10, 10)), y=np.arange(100) % 10)
    config = _config(data={"dataset": str(data_path)},
                     model={"factory": "xprune.models:DigitsCNN", "checkpoint": str(path)})
    data = load_data(config)
    with pytest.raises(ValueError, match=rf"Expected the checkpoint {path} to take the inputs of "
                                         r"the data \(inputs of shape \(1, 10, 10\) per sample, "
                                         r"dtype float32\); its forward failed in layer 'fc1' "
                                         r"\(Linear expecting 512 input features \(last "
                                         r"dimension\)\), which got inputs of shape \(2, 800\)"):
        train_dense(config, data, cache=NO_CACHE)


def test_case_020b_output_count_is_compared_with_the_classes(tmp_path):
    """../shared/cases/020-checkpoint-input-mismatch.md (b): 11-class labels, a 10-class
    checkpoint: scikit-learn said `y_true contains values {10} ...`."""
    path = tmp_path / "dense.pt"
    torch.save(DigitsCNN().state_dict(), path)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    y = bunch.target.copy()
    y[:40] = 10
    data_path = tmp_path / "eleven.npz"
    np.savez(data_path, x=bunch.data.reshape(-1, 1, 8, 8) / 16, y=y)
    config = _config(data={"dataset": str(data_path)},
                     model={"factory": "xprune.models:DigitsCNN", "checkpoint": str(path)})
    data = load_data(config)
    with pytest.raises(ValueError, match=r"checkpoint .*dense.pt to return logits \(N, 11\), one "
                                         r"column per class of the labels \(0..10\), got 10 "
                                         r"outputs per sample"):
        train_dense(config, data, cache=NO_CACHE)


def test_the_check_names_other_layers_and_leaves_the_model_as_it_was():
    """Convolution channels, embedding ids; mode, weights and hooks restored after a failure."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"inputs of shape \(1, 8, 8\) per sample.*layer '0' "
                                         r"\(Conv2d expecting 3 input channels"):
        check_model(model, torch.rand(2, 1, 8, 8), 2)
    assert model.training and _hooks(model) == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    tokens = nn.Sequential(nn.Embedding(5, 3), nn.Flatten(), nn.Linear(6, 2))
    with pytest.raises(ValueError, match=r"layer '0' \(Embedding expecting integer ids in "
                                         r"\[0, 5\)\), which got inputs of shape \(2, 2\)"):
        check_model(tokens, torch.tensor([[1, 7], [0, 2]]), 2)
    check_model(nn.Sequential(nn.Flatten(), nn.Linear(64, 2)), torch.rand(2, 1, 8, 8), 2)


# --- a forward returning a tuple (issue 21: torch's cross_entropy message) -----------------

class _Pair(nn.Module):
    """Returns (features (N, 20), logits (N, 10)) or (logits, features)."""

    def __init__(self, logits_first: bool):
        super().__init__()
        self.net, self.logits_first = DigitsCNN(), logits_first

    def forward(self, x):
        logits = self.net(x)
        features = torch.cat([logits, logits], dim=1)
        return (logits, features) if self.logits_first else (features, logits)


def test_forward_returning_a_tuple_names_the_element_to_pick(digits, tmp_path):
    """Issue 21: a model whose forward returns a tuple failed in training with torch's
    `cross_entropy_loss(): argument 'input' must be Tensor, not tuple`. A tuple whose first
    element is the logits is read as (logits, ...) everywhere, training included; any other
    tuple is refused naming the element with a column per class."""
    with pytest.raises(ValueError, match=r"got a tuple of 2: \[0\] Tensor \(2, 20\), \[1\] "
                                         r"Tensor \(2, 10\); element 1 has a column per class: "
                                         r"wrap the model so that forward returns output\[1\]"):
        xprune.study(_Pair(logits_first=False), digits, progress=False, out=tmp_path / "a")
    model = _Pair(logits_first=True)
    check_model(model, digits.x_train[:2], 10)
    train(model, digits.x_train[:64], digits.y_train[:64], epochs=1)  # no torch error
    with pytest.raises(ValueError, match=r"to return logits \(N, 3\).*got a tuple of 2: .* no "
                                         r"element has shape \(2, 3\)"):
        check_model(model, digits.x_train[:2], 3)


# --- zero samples, a single class, strings as features -------------------------------------

def test_zero_samples_a_single_class_and_strings_get_xprune_messages(tmp_path):
    """Issue 21 (no case file): an .npz data source with zero rows gave numpy's `zero-size
    array to reduction operation minimum`; labels of one class gave scikit-learn's `The labels
    array needs to contain at least two labels` after training; string features gave numpy's
    `could not convert string to float`."""
    sources = {
        "empty": (np.zeros((0, 4)), np.zeros(0, dtype=int),
                  r"labels of 'empty' to hold at least one sample per class, got 0 samples"),
        "single": (np.random.default_rng(0).random((40, 4)), np.zeros(40, dtype=int),
                   r"labels of 'single' to hold at least two classes, got only class 0 "
                   r"\(40 samples\)"),
        "words": (np.array([["red", "big"]] * 40), np.arange(40) % 2,
                  r"features of 'words' to be numbers, got dtype <U3 \(e.g. 'red'\): encode "
                  r"text or categories as numbers first"),
    }
    for name, (x, y, message) in sources.items():
        np.savez(tmp_path / f"{name}.npz", x=x, y=y)
        with pytest.raises(ValueError, match=message):
            load_data(_config(data={"dataset": str(tmp_path / f"{name}.npz")}))
    with pytest.raises(ValueError, match=r"inputs of `data` to be numbers, got dtype <U3"):
        as_split((np.array([["red", "big"]] * 40), np.arange(40) % 2))
    with pytest.raises(ValueError, match=r"labels of `data` to hold at least two classes"):
        xprune.study(TabularMLP(4), (torch.randn(40, 4), torch.zeros(40).long()),
                     progress=False, out=tmp_path / "s")
    with pytest.raises(ValueError, match="at least one sample per class, got 0"):
        split_arrays(np.zeros((0, 3)), np.zeros(0, dtype=int))


# --- config values -----------------------------------------------------------------------------

@pytest.mark.parametrize(("values", "message"), [
    ({"seed": 99999999999999999999},
     r"`seed` to be an integer in \[0, 4294967295\], got 99999999999999999999"),
    ({"seed": 2**32}, r"`seed` to be an integer in \[0, 4294967295\]"),
    ({"seeds": [0, 2**40]}, r"`seeds` to be a list of distinct integers in \[0, 4294967295\]"),
    ({"pruning": {"sparsities": 0.5}},
     r"`pruning.sparsities` to be a list, e.g. sparsities = \[0.5, 0.9\], got 0.5; write \[0.5\]"),
    ({"pruning": {"checkpoints": "sparse.pt"}}, r"`pruning.checkpoints` to be a list"),
    ({"data": {"dataset": "os:system"}},
     r"Expected `data.dataset` to name a function of your own package, got the "
     r"standard-library 'os:system'"),
])
def test_config_values_from_issue_21_are_named(values, message):
    """Issue 21 (no case file): `seed = 99999999999999999999` failed with torch's `Overflow when
    unpacking long long`; `sparsities = 0.5` with `'float' object is not iterable`;
    `data.dataset = "os:system"` was refused with a message about `model.factory`."""
    with pytest.raises(ValueError, match=message):
        AnalysisConfig.from_dict(values)


def test_largest_seed_runs_every_generator():
    """The largest accepted seed is accepted by torch, numpy and scikit-learn's split."""
    config = AnalysisConfig.from_dict({"seed": 2**32 - 1})
    torch.manual_seed(config.seed)
    np.random.RandomState(config.seed)
    split_arrays(np.random.default_rng(0).random((40, 2)), np.arange(40) % 2, seed=config.seed)


def test_cli_seed_override_is_checked_before_any_work(capsys):
    """`xprune run --seed 99999999999999999999`: the same message, exit code 2."""
    assert main(["run", "--seed", "99999999999999999999", "--quiet"]) == 2
    assert "`seed` to be an integer in [0, 4294967295]" in capsys.readouterr().err


# --- n_samples larger than the test split ------------------------------------------------------

def test_n_samples_larger_than_the_test_split_warns_and_is_recorded(tmp_path):
    """Issue 21 (no case file): `attribution.n_samples` = 1000 on wine (36 test samples) was
    clamped without a word and config.json kept 1000."""
    config = _config(data={"dataset": "wine"},
                     attribution={"methods": ["saliency"], "n_samples": 1000},
                     metrics={"names": ["gini_index"], "versus_random": []})
    data = load_data(config)
    assert len(data.x_test) == 36
    with pytest.warns(UserWarning, match=r"`attribution.n_samples` = 1000 is more than the 36 "
                                         r"samples of the test split of 'wine': explaining all "
                                         r"36 \(config.json records 36\)"):
        assert explained_count(config, data) == 36
    from xprune.analysis import run_analysis

    with pytest.warns(UserWarning, match="explaining all 36"):
        run_analysis(config, out_dir=tmp_path / "run", progress=False, render=False)
    import json

    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    assert recorded["attribution"]["n_samples"] == 36
    assert explained_count(config.replace(attribution=config.attribution.__class__(
        methods=("saliency",), n_samples=36)), data) == 36


# --- `xprune report` on a read-only run folder ---------------------------------------------------

def test_report_on_a_read_only_run_folder_names_the_folder(tmp_path, monkeypatch, capsys):
    """Issue 21 (no case file): `xprune report` on a read-only run folder failed naming a
    temporary file (`.summary.csv.x1y2.tmp`) instead of the folder."""
    from xprune.analysis import run_analysis

    run = tmp_path / "run"
    run_analysis(_config(metrics={"names": ["gini_index"], "versus_random": []}),
                 out_dir=run, progress=False, render=False, use_cache=False)
    os.chmod(run, 0o555)
    try:
        if os.access(run, os.W_OK):  # root writes anyway: refuse the write as the kernel would
            import tempfile

            def refuse(*args, dir=None, **kwargs):
                name = os.path.join(dir, ".summary.csv.abc123.tmp")
                raise PermissionError(13, "Permission denied", name)

            monkeypatch.setattr(tempfile, "mkstemp", refuse)
        assert main(["report", str(run)]) == 2
    finally:
        os.chmod(run, 0o755)
    err = capsys.readouterr().err
    assert f"Cannot write summary.csv in the folder {run}: Permission denied" in err
    assert ".tmp" not in err


def test_a_text_model_imports_torchao_without_its_import_time_logs():
    """transformers' modeling code imports torchao where installed, which logged on stderr
    "Failed to load ..._C_mxfp8...so" and torch's "Enum subclass ... register_constant()"
    deprecation: silenced for that import only (the loggers' levels are restored)."""
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("torchao")
    code = ("import logging, sys\n"
            "from xprune.models import TextTransformer\n"
            "TextTransformer(30, 2, max_length=8)\n"
            "assert 'torchao' in sys.modules\n"
            "print(logging.getLogger('torchao').level, "
            "logging.getLogger('torch.utils._pytree').level)\n")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
                         check=False, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "0"]   # NOTSET, as before the import
    for noise in ("Failed to load", "register_constant", "triton"):
        assert noise not in out.stderr, out.stderr
