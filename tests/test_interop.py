"""Models from elsewhere (issue 21): ONNX files through onnx2torch, Keras 3 with the torch backend.

The ONNX files are exported here by ``torch.onnx.export`` from small models the tests build;
the Keras model is built here too. Nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import os
import warnings

import pytest
import torch
from torch import nn

import xprune
from xprune.analysis import run_analysis
from xprune.config import load_config
from xprune.data import load_digits_split
from xprune.models import DigitsCNN, evaluate, train

onnx = pytest.importorskip("onnx")
if importlib.util.find_spec("onnx2torch") is None:  # not importorskip: it imports torchvision
    pytest.skip("onnx2torch is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def digits():
    return load_digits_split()


@pytest.fixture(scope="module")
def trained(digits):
    torch.manual_seed(0)
    model = DigitsCNN()
    train(model, digits.x_train, digits.y_train, epochs=2, seed=0)
    return model.eval()


def _export(model: nn.Module, path, example: torch.Tensor) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], dynamic_axes={"x": {0: "batch"}})


@pytest.fixture(scope="module")
def onnx_file(trained, digits, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "digits.onnx"
    _export(trained, path, digits.x_test[:2])
    return path


def test_onnx_model_loads_prunes_and_explains_like_the_original(trained, onnx_file, digits):
    """The converted model computes the original's logits; pruning ranks the same weights
    (same masks as pruning the PyTorch model); its maps equal the original's."""
    model = xprune.load_onnx(onnx_file)
    x = digits.x_test[:16]
    torch.testing.assert_close(model(x), trained(x), rtol=1e-5, atol=1e-5)
    kinds = {type(m).__name__ for m in model.modules()}
    assert {"Conv2d", "Linear"} <= kinds
    mine, theirs = xprune.prune(model, 0.7), xprune.prune(trained, 0.7)
    assert mine.sparsity == pytest.approx(theirs.sparsity)
    assert [m.sum().item() for m in mine.masks.values()] == \
        [m.sum().item() for m in theirs.masks.values()]
    for a, b in zip(mine.masks.values(), theirs.masks.values(), strict=True):
        assert torch.equal(a, b)
    target = trained(x).argmax(dim=1)
    for method in ("saliency", "integrated_gradients"):
        torch.testing.assert_close(xprune.attribute(model, x, target, method).values,
                                   xprune.attribute(trained, x, target, method).values,
                                   rtol=1e-4, atol=1e-5)


def test_onnx_model_in_a_config_runs_end_to_end(trained, onnx_file, digits, tmp_path):
    """`model = "onnx:PATH"` in a config (relative to the config's folder): the dense model is
    the ONNX model as trained (its accuracy is the original's), then pruned and explained."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "digits.onnx").write_bytes(onnx_file.read_bytes())
    config_path = tmp_path / "own.toml"
    config_path.write_text(
        'model = "onnx:models/digits.onnx"\n'
        "[pruning]\nsparsities = [0.5]\nfinetune_epochs = 0\n"
        "[controls]\nother_seed = false\nfinetune = false\n"
        '[attribution]\nmethods = ["saliency"]\nn_samples = 8\n'
        '[metrics]\nnames = ["gini_index", "spearman"]\nversus_random = []\n')
    config = load_config(config_path)
    assert config.model.onnx == str(tmp_path / "models" / "digits.onnx")
    result = run_analysis(config, out_dir=tmp_path / "run", progress=False, render=False)
    dense = result.models.set_index("model").loc["dense"]
    assert dense["accuracy"] == pytest.approx(evaluate(trained, digits.x_test,
                                                       digits.y_test)["accuracy"])
    assert set(result.results["model"]) == {"dense", "l1_unstructured@0.50"}


def test_onnx_operator_without_converter_is_named(tmp_path):
    """A graph with an operator onnx2torch cannot convert (Det) gets a message naming it."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Det", ["x"], ["d"])], "det",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 3])],
        [helper.make_tensor_value_info("d", TensorProto.FLOAT, [2])])
    path = tmp_path / "det.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(ValueError, match=r"Cannot convert .*det.onnx to PyTorch: onnx2torch has "
                                         r"no converter for the operator\(s\) Det \(opset "
                                         r"ai.onnx 17\)"):
        xprune.load_onnx(path)


def test_onnx_converter_refusal_names_the_operator_and_node(tmp_path):
    """A converter that refuses a node's attributes (Reshape with allowzero=1, as the dynamo
    exporter writes) is named with its node."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    shape = numpy_helper.from_array(np.array([2, 6], dtype=np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"], name="flatten", allowzero=1)],
        "reshape", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 6])], [shape])
    path = tmp_path / "reshape.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    with pytest.raises(ValueError, match=r"at operator Reshape \(node 'flatten'\).*allowzero"):
        xprune.load_onnx(path)
    (tmp_path / "junk.onnx").write_bytes(os.urandom(200))
    with pytest.raises(ValueError, match=r"Could not read .*junk.onnx as an ONNX model"):
        xprune.load_onnx(tmp_path / "junk.onnx")
    with pytest.raises(ValueError, match=r'Expected `model` to be a \[model\] table, "hf:FOLDER" or "onnx:PATH"'):
        from xprune.config import AnalysisConfig

        AnalysisConfig.from_dict({"model": "digits.onnx"})


def test_loading_onnx_leaves_no_torchvision_behind():
    """onnx2torch imports torchvision; xprune's stand-in for it is gone after the import, so
    transformers' check for torchvision is not misled."""
    import sys

    xprune.checkpoint._import_onnx2torch()
    if importlib.util.find_spec("torchvision") is None:
        assert "torchvision" not in sys.modules and "torchvision.ops" not in sys.modules


# --- Keras 3 with the torch backend ----------------------------------------------------------

@pytest.fixture(scope="module")
def keras_model():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "torch":
        pytest.skip("keras was imported with another backend")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(3)])
    return model


def test_keras_model_is_explained_and_scored_directly(keras_model):
    """A Keras 3 model with the torch backend is an nn.Module: its saliency is the gradient of
    the target logit, computed by hand from its kernels (x @ W + b, Keras's layout)."""
    assert isinstance(keras_model, nn.Module)
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([0, 1, 2, 0, 1])
    (w1, b1), (w2, b2) = [(layer.kernel.value.detach(), layer.bias.value.detach())
                          for layer in keras_model.layers]
    hidden = x @ w1 + b1
    expected = ((hidden > 0).float().unsqueeze(2) * w2.unsqueeze(0))  # (N, 8, 3)
    expected = torch.einsum("ih,nhc->nic", w1, expected)[torch.arange(5), :, target]
    a = xprune.attribute(keras_model, x, target, "saliency", params={"abs": False})
    torch.testing.assert_close(a.values, expected, rtol=1e-5, atol=1e-6)
    ig = xprune.attribute(keras_model, x, target, "integrated_gradients")
    logits = keras_model(x).detach()
    zero = keras_model(torch.zeros(1, 6)).detach()
    torch.testing.assert_close(ig.values.sum(dim=1), (logits - zero)[torch.arange(5), target],
                               rtol=1e-3, atol=1e-4)  # completeness
    gini = xprune.metrics.gini_index(a.values)
    assert gini.shape == (5,) and bool(torch.isfinite(gini).all())


def _keras_forward(weights, x):
    """The two-layer Keras model written out: relu(x @ W1 + b1) @ W2 + b2 (Keras's layout)."""
    (w1, b1), (w2, b2) = weights
    return torch.relu(x @ w1 + b1) @ w2 + b2


@pytest.mark.parametrize("method, layers", [("l1_unstructured", None), ("l1_unstructured", "*"),
                                            ("random_unstructured", "*")])
def test_keras_model_is_pruned_without_touching_the_dense_model(keras_model, method, layers):
    """prune() on a Keras model: the dense model's weights are bit-identical afterwards; the
    sparse model (a Keras model) has exactly the requested zeros among the selected kernels
    (by default every kernel but the output layer's, which stays as it was); magnitude pruning
    zeroes exactly the smallest |w| over the selected kernels (global scope); the sparse
    model computes the dense model's forward with those weights zeroed, and both are explained."""
    before = {n: p.detach().clone() for n, p in keras_model.named_parameters()}
    pair = xprune.prune(keras_model, 0.5, method=method, layers=layers, seed=3)
    assert all(torch.equal(p, before[n]) for n, p in keras_model.named_parameters())
    assert pair.dense is keras_model and type(pair.sparse) is type(keras_model)
    assert pair.sparse is not keras_model
    dense_w = [(layer.kernel.value.detach(), layer.bias.value.detach())
               for layer in keras_model.layers]
    sparse_w = [(layer.kernel.value.detach(), layer.bias.value.detach())
                for layer in pair.sparse.layers]
    selected = [0, 1] if layers == "*" else [0]
    assert len(pair.layers) == len(selected)
    kernels = [dense_w[i][0] for i in selected]
    total = sum(k.numel() for k in kernels)
    zeros = sum(int((sparse_w[i][0] == 0).sum()) for i in selected)
    assert zeros == total // 2 and pair.sparsity == pytest.approx(0.5)
    for i in range(2):
        assert torch.equal(sparse_w[i][1], dense_w[i][1])      # biases untouched
        if i not in selected:
            assert torch.equal(sparse_w[i][0], dense_w[i][0])  # the output layer stays dense
    masks = list(pair.masks.values())
    for i, mask in zip(selected, masks, strict=True):
        assert torch.equal(sparse_w[i][0], dense_w[i][0] * mask)
    if method == "l1_unstructured":  # the zeroed weights are the smallest |w| of all selected
        magnitudes = torch.cat([k.abs().flatten() for k in kernels])
        kept = torch.cat([m.flatten() for m in masks])
        assert magnitudes[~kept].max() <= magnitudes[kept].min()
    x = torch.randn(7, 6, generator=torch.Generator().manual_seed(2))
    zeroed = [(w * (masks[selected.index(i)] if i in selected else 1), b)
              for i, (w, b) in enumerate(dense_w)]
    torch.testing.assert_close(pair.sparse(x).detach(), _keras_forward(zeroed, x))
    torch.testing.assert_close(keras_model(x).detach(), _keras_forward(dense_w, x))
    target = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    a_dense, a_sparse = xprune.attribute_pair(keras_model, pair.sparse, x, target=target,
                                              method="saliency", params={"abs": False})
    for a, weights in ((a_dense, dense_w), (a_sparse, zeroed)):
        leaf = x.clone().requires_grad_()
        _keras_forward(weights, leaf)[torch.arange(7), target].sum().backward()
        torch.testing.assert_close(a.values, leaf.grad)


def test_keras_model_structured_pruning_names_the_methods_that_work(keras_model):
    for method in ("structured", "wanda", "taylor_unstructured"):
        with pytest.raises(ValueError, match=rf"Pruning method '{method}' cannot prune the Keras "
                                             r"model Sequential: .* Keras models are pruned by "
                                             r"custom_mask, l1_unstructured, random_unstructured, "
                                             r"threshold"):
            xprune.prune(keras_model, 0.5, method=method, data=torch.zeros(4, 6))
