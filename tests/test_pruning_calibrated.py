"""Wanda and SparseGPT (issue 19 item 3): calibration-data pruning, against references."""

import math

import pytest
import torch
from conftest import assert_state_equal, state_snapshot
from torch import nn

from xprune.pruning import PRUNING_METHODS, prune
from xprune.pruning.methods.calibrated import input_norms, sparsegpt_layer


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(),
                         nn.Linear(8, 10)).double()


def _literal_wanda_mask(weight, inputs, amount):
    """Sun et al. 2023, eq. 1, written out: S_ij = |W_ij| * sqrt(sum_n x_nj^2); each row drops
    its round(amount * columns) lowest scores (ties: lower column first)."""
    rows, cols = weight.shape
    norms = [math.sqrt(sum(float(inputs[n, j]) ** 2 for n in range(inputs.shape[0])))
             for j in range(cols)]
    mask = torch.ones(rows, cols, dtype=torch.bool)
    for i in range(rows):
        scores = [(abs(float(weight[i, j])) * norms[j], j) for j in range(cols)]
        for _, j in sorted(scores)[:round(amount * cols)]:
            mask[i, j] = False
    return mask


def test_wanda_is_the_papers_equation_per_output_row(digits):
    model = _mlp()
    x = digits.x_train[:40].double()
    snapshot = state_snapshot(model)
    pair = prune(model, 0.5, method="wanda", data=(x, digits.y_train[:40]))
    assert_state_equal(model, snapshot)
    assert list(pair.masks) == ["1.weight", "3.weight"]  # the output layer stays dense
    with torch.no_grad():
        inputs = {"1.weight": x.flatten(1), "3.weight": model[2](model[1](x.flatten(1)))}
    for key, layer_in in inputs.items():
        expected = _literal_wanda_mask(model.get_parameter(key).detach(), layer_in, 0.5)
        assert torch.equal(pair.masks[key], expected)
    assert (pair.masks["1.weight"].sum(dim=1) == 32).all()  # every row keeps half
    assert pair.sparsity == 0.5


def test_wanda_statistics_equal_torchaos_observer():
    """torchao's WandaSparsifier observes sum_n x_nj^2 (the squared norm) per input feature and
    compares over the whole layer; ours is the paper's ||X_j||_2 per row. Same data path."""
    sparsity = pytest.importorskip("torchao.sparsity")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    x = torch.randn(40, 8) * torch.linspace(0.1, 4, 8)
    chosen = [("0.weight", model[0], "weight")]
    ours = input_norms(model, chosen, (x, None))["0.weight"]
    reference = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))
    reference.load_state_dict(model.state_dict())
    sparsifier = sparsity.WandaSparsifier(sparsity_level=0.5)
    sparsifier.prepare(reference, config=[{"tensor_fqn": "0.weight"}])
    for start in (0, 16, 32):  # streamed in batches, as our calibration is
        reference(x[start:start + 16])
    observed = reference[0].activation_post_process.norm
    torch.testing.assert_close(ours[0].float() ** 2, observed)
    assert ours.shape == (6, 8) and bool((ours == ours[0]).all())
    # with the layer-wide comparison and scores |W| * ||X||^2, torchao's mask is ours
    sparsifier.step()
    theirs = reference[0].parametrizations.weight[0].mask.bool()
    scores = model[0].weight.detach().abs().double() * ours ** 2
    from xprune.pruning.methods.calibrated import wanda_mask

    assert torch.equal(wanda_mask(scores, 0.5, "layer").bool(), theirs)


def test_wanda_on_attention_uses_the_query_key_value_inputs():
    torch.manual_seed(0)
    attn = nn.MultiheadAttention(8, 2, batch_first=True)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn, self.head = attn, nn.Linear(8, 2)

        def forward(self, q):
            k = q * 3.0  # key and value inputs differ from the query
            return self.head(self.attn(q, k, q.flip(1), need_weights=False)[0][:, 0])

    model = Model().eval()
    x = torch.randn(5, 4, 8)
    norms = input_norms(model, [("attn.in_proj_weight", attn, "in_proj_weight")], (x, None))
    norms = norms["attn.in_proj_weight"]
    q = x.reshape(-1, 8).double().pow(2).sum(0).sqrt()
    torch.testing.assert_close(norms[:8], q.expand(8, 8))
    torch.testing.assert_close(norms[8:16], 3 * q.expand(8, 8))
    torch.testing.assert_close(norms[16:], q.expand(8, 8))
    pair = prune(model, 0.25, method="wanda", data=(x, None), layers="*.in_proj_weight")
    assert (pair.masks["attn.in_proj_weight"].sum(dim=1) == 6).all()


def test_wanda_and_sparsegpt_n_m(digits):
    x = digits.x_train[:64].double()
    for method in ("wanda", "sparsegpt"):
        pair = prune(_mlp(), method=method, data=(x, None), n_m=(2, 4))
        for key, mask in pair.masks.items():
            assert (mask.reshape(mask.shape[0], -1, 4).sum(dim=2) == 2).all(), (method, key)
            w = pair.sparse.get_parameter(key)
            assert bool((w[~mask] == 0).all())


def test_sparsegpt_hand_checked_case():
    """W = [1, 2], H = [[2, 1], [1, 2]], no dampening, prune 1 of 2.

    H^-1 = [[2, -1], [-1, 2]] / 3; its upper Cholesky factor U has U_00^2 = 2/3 and
    U_11^2 = 1/2, so the saliencies w^2 / U_cc^2 are 1.5 and 8: w_0 goes. The OBS update
    delta = -w_0 / [H^-1]_00 * H^-1[:, 0] = -(3/2) * [2, -1] / 3 = [-1, 0.5] gives W' = [0, 2.5],
    the minimiser of (W - W') H (W - W')^T with w'_0 = 0 (d/dw': 2 + 4 (2 - w') = 0).
    """
    w = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    h = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    out = sparsegpt_layer(w, h, 0.5, dampening=0.0)
    torch.testing.assert_close(out, torch.tensor([[0.0, 2.5]], dtype=torch.float64))
    # with uncorrelated inputs there is nothing to compensate: magnitude * input scale
    out = sparsegpt_layer(w, torch.diag(torch.tensor([8.0, 1.0], dtype=torch.float64)), 0.5,
                          dampening=0.0)
    torch.testing.assert_close(out, torch.tensor([[1.0, 0.0]], dtype=torch.float64))


@pytest.mark.parametrize("amount,blocksize", [(0.5, 128), (0.5, 16), (0.7, 24)])
def test_sparsegpt_reconstructs_better_than_magnitude(digits, amount, blocksize):
    """Frantar and Alistarh 2023: the layer reconstruction error ||WX - W'X||^2 of SparseGPT is
    below magnitude pruning's at the same sparsity, here on digit images as inputs."""
    torch.manual_seed(0)
    x = digits.x_train[:512].flatten(1).double()  # correlated pixels
    w = torch.randn(32, 64, dtype=torch.float64)
    h = 2 * x.T @ x / x.shape[0]
    pruned = sparsegpt_layer(w, h, amount, blocksize=blocksize)
    k = round(amount * blocksize * 32) if 64 % blocksize == 0 else None
    zeros = int((pruned == 0).sum())
    assert zeros == (k * (64 // blocksize) if k else zeros)
    magnitude = w.clone()
    magnitude.view(-1)[w.abs().reshape(-1).argsort()[:zeros]] = 0
    err_sparsegpt = float(((w - pruned) @ x.T).pow(2).sum())
    err_magnitude = float(((w - magnitude) @ x.T).pow(2).sum())
    assert err_sparsegpt < 0.5 * err_magnitude
    # 2:4 too
    semi = sparsegpt_layer(w, h, n_m=(2, 4))
    mag24 = w * (w.abs().reshape(32, 16, 4).argsort(2).argsort(2) >= 2).reshape(32, 64)
    assert float(((w - semi) @ x.T).pow(2).sum()) < float(((w - mag24) @ x.T).pow(2).sum())


def test_sparsegpt_through_prune_updates_kept_weights(digits):
    model = _mlp()
    x = digits.x_train[:128].double()
    pair = prune(model, 0.5, method="sparsegpt", data=(x, None))
    assert pair.sparsity == 0.5
    kept = pair.masks["1.weight"]
    assert not torch.equal(pair.sparse[1].weight[kept], model[1].weight[kept])  # compensated
    with torch.no_grad():
        dense_out, sparse_out = model[1](x.flatten(1)), pair.sparse[1](x.flatten(1))
        magnitude = prune(model, 0.5, layers="1")
        mag_out = magnitude.sparse[1](x.flatten(1))
    assert float((dense_out - sparse_out).pow(2).sum()) < float((dense_out - mag_out).pow(2).sum())


def test_calibrated_methods_need_data_and_supported_layers():
    for name in ("wanda", "sparsegpt"):
        assert PRUNING_METHODS[name].needs_data and PRUNING_METHODS[name].supports_n_m
        with pytest.raises(ValueError, match=f"Pruning method '{name}' needs a reference batch"):
            prune(_mlp(), 0.5, method=name)
    model = nn.Sequential(nn.LSTM(4, 8, batch_first=True))
    with pytest.raises(ValueError, match=r"prunes nn.Linear and nn.Conv2d weights .* "
                                         r"\['0.weight_ih_l0', '0.weight_hh_l0'\]"):
        prune(model, 0.5, method="wanda", data=(torch.rand(2, 3, 4), None))
    with pytest.raises(ValueError, match="Expected the option `blocksize` to be an integer"):
        prune(_mlp(), 0.5, method="sparsegpt", data=(torch.rand(4, 64).double(), None),
              options={"blocksize": 0})


def test_conv_layers_as_matrices_on_unfolded_patches(digits):
    from xprune.models import DigitsCNN

    torch.manual_seed(0)
    cnn = DigitsCNN().eval()
    x = digits.x_train[:64]
    for method in ("wanda", "sparsegpt"):
        pair = prune(cnn, 0.5, method=method, data=(x, None))
        assert set(pair.masks) == {"conv1.weight", "conv2.weight", "fc1.weight"}
        assert abs(pair.sparsity - 0.5) < 0.01
    patches = nn.functional.unfold(x, 3, padding=1).transpose(1, 2).reshape(-1, 9)
    norms = input_norms(cnn, [("conv1.weight", cnn.conv1, "weight")], (x, None))["conv1.weight"]
    torch.testing.assert_close(norms[0].reshape(9), patches.double().pow(2).sum(0).sqrt())


def test_xprune_list_shows_the_new_methods_and_their_data_needs(capsys):
    from xprune.cli import main

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert lines["wanda"].endswith("[needs data]") and lines["sparsegpt"].endswith("[needs data]")
    assert not lines["l1_unstructured"].endswith("[needs data]")
