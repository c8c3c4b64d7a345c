import copy
import math
import pickle

import pytest
import torch
from conftest import assert_state_equal, state_snapshot
from torch import nn

import xprune
from xprune.models import DigitsCNN
from xprune.pruning import PRUNING_METHODS, fine_tune, layer_table, prune


@pytest.fixture
def cnn():
    torch.manual_seed(0)
    return DigitsCNN()


def _kwargs(method, model):
    data = (torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,)))
    if method == "custom_mask":
        masks = {f"{n}.weight": torch.rand(m.weight.shape) > 0.5
                 for n, m in xprune.pruning.prunable_weights(model)}
        return {"amount": None, "options": {"masks": masks}, "data": data, "layers": "*"}
    return {"amount": 0.9, "data": data}


class _Sequence(nn.Module):
    """Methods that prune an architecture's own units (heads, blocks, hidden units) get one."""

    def __init__(self, kind):
        super().__init__()
        torch.manual_seed(0)
        self.kind = kind
        if kind == "attention":
            layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
            self.body = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        else:
            self.body = nn.LSTM(16, 8, num_layers=2, batch_first=True)
        self.fc = nn.Linear(16 if kind == "attention" else 8, 10)

    def forward(self, x):
        out = self.body(x)
        return self.fc(out.mean(1) if self.kind == "attention" else out[0][:, -1])


_ARCHITECTURE = {"attention_heads": "attention", "layer_removal": "attention",
                 "rnn_units": "recurrent"}


@pytest.mark.parametrize("method", sorted(PRUNING_METHODS))
@pytest.mark.parametrize("scope", ["global", "layer"])
def test_dense_model_is_never_mutated(cnn, method, scope):
    kwargs = _kwargs(method, cnn)
    if method in _ARCHITECTURE:
        cnn = _Sequence(_ARCHITECTURE[method])
        kwargs["data"] = (torch.rand(8, 5, 16), torch.randint(0, 10, (8,)))
        kwargs["amount"] = 0.5
    snapshot = state_snapshot(cnn)
    if scope == "layer" and not PRUNING_METHODS[method].ranks_weights:
        with pytest.raises(ValueError, match="does not rank weights per layer"):
            prune(cnn, method=method, scope=scope, **kwargs)
        return
    pair = prune(cnn, method=method, scope=scope, **kwargs)
    assert pair.dense is cnn
    assert_state_equal(cnn, snapshot)
    assert not any(k.endswith(("_orig", "_mask")) for k in cnn.state_dict())
    assert 0 < pair.sparsity < 1


@pytest.mark.filterwarnings("ignore:Pruning removed every weight")  # untrained fc1 at 0.95
@pytest.mark.parametrize("amount", [0.0, 0.5, 0.8, 0.9, 0.95, 0.333])
def test_global_measured_sparsity_equals_request_within_one_weight(cnn, amount):
    """By default the output layer (fc2) stays dense; sparsity is over the selected layers."""
    pair = prune(cnn, amount)
    total = pair.total_weights
    assert total == 144 + 4608 + 32768
    assert abs(pair.sparsity * total - amount * total) <= 1
    assert pair.compression_ratio == pytest.approx(total / pair.nonzero_weights)
    assert torch.equal(pair.sparse.fc2.weight, cnn.fc2.weight) and "fc2.weight" not in pair.masks
    zeros = pair.sparsity * total
    assert pair.sparsity_all == pytest.approx(zeros / (total + 640))
    everything = prune(cnn, amount, layers="*")  # the old default: every layer
    assert everything.total_weights == total + 640
    assert abs(everything.sparsity - amount) * (total + 640) <= 1


def test_layer_scope_prunes_each_layer_to_the_request(cnn):
    table = layer_table(prune(cnn, 0.5, scope="layer").sparse)
    assert (table["numel"] - table["nonzeros"]).tolist() == [72, 2304, 16384, 0]
    table = layer_table(prune(cnn, 0.5, scope="layer", layers="*").sparse)
    assert (table["numel"] - table["nonzeros"]).tolist() == [72, 2304, 16384, 320]


def test_l1_removes_the_smallest_magnitudes(cnn):
    pair = prune(cnn, 0.9, layers="*")
    dense_w = torch.cat([m.weight.detach().abs().reshape(-1) for _, m in
                         xprune.pruning.prunable_weights(cnn)])
    kept = torch.cat([mask.reshape(-1) for mask in pair.masks.values()])
    assert dense_w[~kept].max() <= dense_w[kept].min()


def test_pruning_is_permanent_and_pair_can_be_copied_and_pickled(cnn):
    pair = prune(cnn, 0.8)
    keys = pair.sparse.state_dict().keys()
    assert not any(k.endswith(("_orig", "_mask")) for k in keys)
    fresh = DigitsCNN()
    fresh.load_state_dict(pair.sparse.state_dict())  # loads into a plain dense model
    copy.deepcopy(pair.sparse)
    pickle.dumps(pair.sparse)
    for name, mask in pair.masks.items():
        layer = dict(pair.sparse.named_modules())[name.rsplit(".", 1)[0]]
        assert bool((layer.weight[~mask] == 0).all())


def test_random_control_is_seeded_and_differs_from_magnitude(cnn):
    a = prune(cnn, 0.9, method="random_unstructured", seed=1)
    b = prune(cnn, 0.9, method="random_unstructured", seed=1)
    c = prune(cnn, 0.9, method="random_unstructured", seed=2)
    l1 = prune(cnn, 0.9)
    assert all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)
    assert not all(torch.equal(a.masks[k], c.masks[k]) for k in a.masks)
    assert not all(torch.equal(a.masks[k], l1.masks[k]) for k in a.masks)
    assert abs(a.sparsity - 0.9) * a.total_weights <= 1


def test_masked_fine_tuning_keeps_pruned_weights_zero(cnn, digits):
    pair = prune(cnn, 0.9)
    before = state_snapshot(pair.sparse)
    tuned = fine_tune(pair, digits.x_train[:256], digits.y_train[:256], epochs=2)
    assert_state_equal(pair.sparse, before)  # the input pair is untouched
    for name, mask in tuned.masks.items():
        w = tuned.sparse.get_parameter(name)
        assert bool((w[~mask] == 0).all())
        assert bool((w[mask] != 0).all())
    assert not torch.equal(tuned.sparse.fc1.weight, pair.sparse.fc1.weight)
    assert tuned.sparsity == pytest.approx(pair.sparsity)
    assert tuned.params["finetune_epochs"] == 2 and tuned.params["finetune_seconds"] > 0


def test_zero_amount_keeps_outputs(cnn):
    pair = prune(cnn, 0.0)
    x = torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(pair.sparse(x), cnn(x), rtol=0, atol=0)


@pytest.mark.parametrize("amount", [-0.1, 1.0, 1.5, math.nan, "0.5"])
def test_amount_out_of_range(cnn, amount):
    with pytest.raises(ValueError, match=r"Expected `amount` in \[0.0, 1.0\)"):
        prune(cnn, amount)


def test_unknown_method_and_scope(cnn):
    with pytest.raises(ValueError, match="Did you mean 'l1_unstructured'"):
        prune(cnn, 0.5, method="l1_unstructure")
    with pytest.raises(ValueError, match="Expected `scope` to be 'global' or 'layer'"):
        prune(cnn, 0.5, scope="module")


def test_model_with_nothing_to_prune():
    with pytest.raises(ValueError, match=r"at least one weight matrix to prune, got none.*"
                                         r"modules with weight matrices are \[\]"):
        prune(nn.Sequential(nn.ReLU()), 0.5)
    with pytest.raises(ValueError, match=r"default leaves the output layer dense.*\['0'\]"):
        prune(nn.Sequential(nn.Linear(3, 2)), 0.5)


# --- threshold, caps, data-driven criteria, custom masks -----------------------------------

def test_threshold_by_theta_and_by_bisection(cnn):
    theta = 0.05
    pair = prune(cnn, method="threshold", options={"theta": theta}, layers="*")
    weights = torch.cat([m.weight.detach().abs().reshape(-1)
                         for _, m in xprune.pruning.prunable_weights(cnn)])
    assert pair.sparsity == pytest.approx(float((weights < theta).double().mean()))
    assert pair.amount == pair.sparsity
    for amount in (0.5, 0.9):
        matched = prune(cnn, amount, method="threshold", layers="*")
        assert round(abs(matched.sparsity - amount) * matched.total_weights) <= 1
        l1 = prune(cnn, amount, layers="*")  # global magnitude: the same weights, up to ties at theta
        kept_t = torch.cat([matched.masks[k].reshape(-1) for k in l1.masks])
        kept_l1 = torch.cat([l1.masks[k].reshape(-1) for k in l1.masks])
        differ = weights[kept_t != kept_l1]
        assert differ.numel() <= 2 and (differ.numel() == 0 or bool((differ == differ[0]).all()))
    assert xprune.pruning.find_threshold(cnn, 0.5) == pytest.approx(
        float(weights.median()), rel=1e-3)
    with pytest.raises(ValueError, match="either `amount` or the option `theta`"):
        prune(cnn, 0.5, method="threshold", options={"theta": 0.1})
    with pytest.raises(ValueError, match="Expected `theta` >= 0, got -1"):
        prune(cnn, method="threshold", options={"theta": -1})
    with pytest.raises(ValueError, match="does not rank weights per layer"):
        prune(cnn, 0.5, method="threshold", max_layer_sparsity=0.3)


def test_threshold_matches_the_request_exactly_without_ties():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))  # 40 distinct weights
    for amount in (0.25, 0.5, 0.75):
        assert prune(model, amount, method="threshold").sparsity == amount


def test_global_pruning_that_empties_a_layer_warns_and_the_cap_prevents_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 20), nn.ReLU(), nn.Linear(20, 3))
    with torch.no_grad():
        model[2].weight.mul_(1e-3)  # the small layer goes first under global magnitude
    with pytest.warns(UserWarning, match=r"removed every weight of layer\(s\) \['2'\]"):
        prune(model, 0.6, layers="*")
    capped = prune(model, 0.6, max_layer_sparsity=0.9, layers="*")
    table = capped.layer_table().set_index("layer")
    assert table.loc["2", "sparsity"] == pytest.approx(0.9, abs=1 / 60)
    assert abs(capped.sparsity - 0.6) * capped.total_weights <= 1
    with pytest.raises(ValueError, match="Cannot reach sparsity 0.95 with `max_layer_sparsity`"):
        prune(model, 0.95, max_layer_sparsity=0.5, layers="*")


def test_taylor_scores_are_g_times_w_squared(cnn, digits):
    data = (digits.x_train[:64], digits.y_train[:64])
    pair = prune(cnn, 0.5, method="taylor_unstructured", data=data, scope="layer", layers="*")
    x, y = data
    loss = nn.functional.cross_entropy(cnn(x), y)
    grad = torch.autograd.grad(loss, cnn.fc2.weight)[0]
    score = (grad * cnn.fc2.weight.detach()) ** 2
    kept = pair.masks["fc2.weight"]
    assert score[~kept].max() <= score[kept].min()
    with pytest.raises(ValueError, match="needs a reference batch: pass `data="):
        prune(cnn, 0.5, method="taylor_unstructured")


def test_l1_regularised_then_threshold(cnn, digits):
    data = (digits.x_train[:128], digits.y_train[:128])
    pair = prune(cnn, 0.8, method="l1_regularised", data=data,
                 options={"lam": 1e-3, "epochs": 2})
    assert round(abs(pair.sparsity - 0.8) * pair.total_weights) <= 1
    plain = prune(cnn, 0.8)
    assert not all(torch.equal(pair.masks[k], plain.masks[k]) for k in plain.masks)
    # the penalty shrank the weights before the cut
    assert float(pair.sparse.fc1.weight.abs().sum()) < float(plain.sparse.fc1.weight.abs().sum())


def test_custom_mask_and_user_criterion(cnn):
    mask = torch.zeros_like(cnn.fc2.weight, dtype=torch.bool)
    mask[:, :5] = True
    pair = prune(cnn, method="custom_mask", options={"masks": {"fc2.weight": mask}}, layers="*")
    assert torch.equal(pair.masks["fc2.weight"], mask) and list(pair.masks) == ["fc2.weight"]
    assert pair.sparsity == pytest.approx((640 - 50) / 38160)
    with pytest.raises(ValueError, match="mask for 'fc2.weight' of shape \\(10, 64\\)"):
        prune(cnn, method="custom_mask", options={"masks": {"fc2.weight": mask[:, :3]}},
              layers="*")
    with pytest.raises(ValueError, match="Expected mask names among"):
        prune(cnn, method="custom_mask", options={"masks": {"fc9.weight": mask}}, layers="*")
    with pytest.raises(ValueError, match=r"names weight\(s\) \['fc2.weight'\] outside the "
                                         r"selected layers"):
        prune(cnn, method="custom_mask", options={"masks": {"fc2.weight": mask}})

    @xprune.pruning.register_importance("largest_first_test", "prunes the largest weights")
    def largest(model, ctx):
        return {f"{n}.weight": -m.weight.detach().abs()
                for n, m in xprune.pruning.prunable_weights(model)}

    try:
        inverse = prune(cnn, 0.5, method="largest_first_test")
        l1 = prune(cnn, 0.5)
        kept_inverse = torch.cat([m.reshape(-1) for m in inverse.masks.values()])
        kept_l1 = torch.cat([m.reshape(-1) for m in l1.masks.values()])
        assert not bool((kept_inverse & kept_l1).any())
    finally:
        del PRUNING_METHODS["largest_first_test"]


def test_unknown_options_are_errors(cnn):
    with pytest.raises(ValueError, match="Unknown option\\(s\\) \\['thetta'\\] for pruning method"):
        prune(cnn, method="threshold", options={"thetta": 0.1})


# --- torch.nn.utils.prune invariants, in the style of PyTorch's own tests -------------------

def test_reparametrisation_invariants_during_masked_training(cnn, digits):
    from torch.nn.utils import prune as torch_prune

    pair = prune(cnn, 0.7)
    model = copy.deepcopy(pair.sparse)
    for name, mask in pair.masks.items():
        module = model.get_submodule(name.rsplit(".", 1)[0])
        torch_prune.custom_from_mask(module, "weight", mask.float())
        assert torch.equal(module.weight, module.weight_orig * module.weight_mask)
    x = digits.x_train[:16]
    model(x).sum().backward()
    for name, mask in pair.masks.items():
        module = model.get_submodule(name.rsplit(".", 1)[0])
        assert bool((module.weight_orig.grad[~mask] == 0).all())  # masked weights get no grad
        out = model(x)
        torch_prune.remove(module, "weight")
        torch.testing.assert_close(model(x), out)  # remove keeps the output


def test_all_ones_mask_changes_neither_forward_nor_backward(cnn, digits):
    x = digits.x_train[:8]
    masks = {f"{n}.weight": torch.ones_like(m.weight, dtype=torch.bool)
             for n, m in xprune.pruning.prunable_weights(cnn)}
    pair = prune(cnn, method="custom_mask", options={"masks": masks}, layers="*")
    torch.testing.assert_close(pair.sparse(x), cnn(x), rtol=0, atol=0)
    a = torch.autograd.grad(pair.sparse(x).sum(), pair.sparse.fc1.weight)[0]
    b = torch.autograd.grad(cnn(x).sum(), cnn.fc1.weight)[0]
    torch.testing.assert_close(a, b, rtol=0, atol=0)


# --- schedules ----------------------------------------------------------------------------

def test_schedule_sparsities():
    from xprune.pruning import schedule_sparsities

    assert schedule_sparsities(0.9, "one_shot", 5) == [0.9]
    assert schedule_sparsities(0.8, "iterative", 4) == pytest.approx([0.2, 0.4, 0.6, 0.8])
    # Zhu & Gupta 2017, eq. 1 with s_i = 0, s_f = 0.9, n = 3: 0.9 * (1 - (1 - k/3)^3)
    assert schedule_sparsities(0.9, "gradual", 3) == pytest.approx(
        [0.9 * (1 - (2 / 3) ** 3), 0.9 * (1 - (1 / 3) ** 3), 0.9])
    with pytest.raises(ValueError, match="Expected `schedule` in"):
        schedule_sparsities(0.9, "cosine", 3)


@pytest.mark.parametrize("schedule", ["one_shot", "iterative", "gradual"])
def test_schedules_share_one_budget_and_keep_earlier_zeros(cnn, digits, schedule):
    from xprune.pruning import prune_and_fine_tune

    x, y = digits.x_train[:256], digits.y_train[:256]
    snapshot = state_snapshot(cnn)
    pair = prune_and_fine_tune(cnn, 0.9, x, y, schedule=schedule, steps=3, epochs=4)
    assert_state_equal(cnn, snapshot)
    assert abs(pair.sparsity - 0.9) * pair.total_weights <= 1
    assert pair.params["finetune_epochs"] == 4 and pair.params["schedule"] == schedule
    assert pair.params["steps"] == (1 if schedule == "one_shot" else 3)
    for name, mask in pair.masks.items():
        assert bool((pair.sparse.get_parameter(name)[~mask] == 0).all())
    with pytest.raises(ValueError, match="earlier zeros must stay pruned"):
        prune_and_fine_tune(cnn, 0.9, x, y, method="random_unstructured")


def test_pruning_package_imports_point_one_way():
    """No late import between pruning modules, and the core never imports a method or the API.

    Methods register through the explicit ``xprune.pruning.methods`` package that
    ``_api`` imports (issue 17 item 1), not by a module importing its own plugin.
    """
    import ast
    from pathlib import Path

    root = Path(xprune.pruning.__file__).parent
    late, core_imports = [], []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        top = set(map(id, tree.body))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.level or "xprune" in (node.module or "")):
                if id(node) not in top:
                    late.append(f"{path.relative_to(root)}:{node.lineno}")
                if path.name == "_core.py":
                    core_imports.append(node.module)
    assert late == []
    assert not [m for m in core_imports if m and ("methods" in m or "_api" in m)]
    assert [m for m in core_imports if m] == ["_batches", "_state", "_validation"]
