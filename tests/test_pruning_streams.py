"""Data from streams (issue 19 item 2): DataLoaders and iterables of batches for everything in
pruning that reads data, with memory for one batch at a time; methods that need data say so."""

import weakref

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from xprune._batches import batches
from xprune.models import evaluate, predict, train
from xprune.pruning import PRUNING_METHODS, fine_tune, prune
from xprune.pruning._core import _weight_gradients
from xprune.pruning.methods.calibrated import input_hessians, input_norms


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(),
                         nn.Linear(8, 3)).double()


def _data(n=96, seed=1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 12, generator=gen, dtype=torch.float64) * torch.linspace(0.2, 3, 12)
    return x, torch.randint(0, 3, (n,), generator=gen)


class LiveBatches:
    """An iterable of ``n_batches`` (x, y) batches, made on demand, that counts how many of its
    batches are alive at once (a batch dies when no one holds its tensor any more)."""

    def __init__(self, n_batches, batch_size=32, seed=2):
        self.n_batches, self.batch_size, self.seed = n_batches, batch_size, seed
        self.live = self.peak = self.made = 0

    def _died(self):
        self.live -= 1

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed)
        for _ in range(self.n_batches):
            x = torch.randn(self.batch_size, 12, generator=gen, dtype=torch.float64)
            y = torch.randint(0, 3, (self.batch_size,), generator=gen)
            self.live += 1
            self.made += 1
            self.peak = max(self.peak, self.live)
            weakref.finalize(x, self._died)
            yield x, y
            del x, y

    def whole(self):
        """The same samples in memory, for the reference result."""
        parts = [b for b in LiveBatches(self.n_batches, self.batch_size, self.seed)]
        return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])


def _forms(x, y):
    """The same 96 samples in every accepted form."""
    pairs = list(zip(x.split(32), y.split(32), strict=True))
    return {
        "tensor": x,
        "(x, y)": (x, y),
        "DataLoader": DataLoader(TensorDataset(x, y), batch_size=40),
        "list of tensors": list(x.split(25)),
        "list of (x, y)": pairs,
        "generator": (b for b in pairs),
    }


@pytest.mark.parametrize("form", ["tensor", "(x, y)", "DataLoader", "list of tensors",
                                  "list of (x, y)", "generator"])
def test_calibration_statistics_are_the_same_from_every_form(form):
    model = _mlp()
    x, y = _data()
    chosen = [("0.weight", model[0], "weight"), ("2.weight", model[2], "weight")]
    data = _forms(x, y)[form]
    norms = input_norms(model, chosen, data)
    torch.testing.assert_close(norms["0.weight"][0], x.pow(2).sum(0).sqrt())
    data = _forms(x, y)[form]  # a generator is read once
    hessian = input_hessians(model, chosen, data)["0.weight"][0]
    torch.testing.assert_close(hessian, 2 * x.T @ x / x.shape[0])


@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "taylor_unstructured"])
def test_streamed_pruning_equals_in_memory(method):
    model = _mlp()
    x, y = _data()
    whole = prune(model, 0.5, method=method, data=(x, y))
    loader = DataLoader(TensorDataset(x, y), batch_size=16)
    streamed = prune(model, 0.5, method=method, data=loader)
    assert whole.masks.keys() == streamed.masks.keys()
    for key, mask in whole.masks.items():
        assert torch.equal(mask, streamed.masks[key]), key
        torch.testing.assert_close(streamed.sparse.get_parameter(key),
                                   whole.sparse.get_parameter(key))


def test_taylor_gradient_of_a_stream_is_the_gradient_of_the_mean_loss():
    model = _mlp()
    x, y = _data(n=100)
    keys = ["0.weight", "2.weight"]
    whole = _weight_gradients(model, (x, y), keys)
    uneven = [(x[:7], y[:7]), (x[7:60], y[7:60]), (x[60:], y[60:])]  # 7, 53 and 40 samples
    streamed = _weight_gradients(model, uneven, keys)
    for key in keys:
        torch.testing.assert_close(streamed[key][0], whole[key][0])


def test_memory_holds_one_batch_while_ten_times_more_streams_through():
    """The bound: two batches alive (the one in use and the next being made). Twenty batches
    stream through each data-reading path, ten times what the bound holds; with any path that
    kept its batches (a list(data), a torch.cat of the stream) the peak would be 20."""
    model = _mlp()
    bound = 2
    paths = {
        "wanda": lambda d: prune(model, 0.5, method="wanda", data=d),
        "sparsegpt": lambda d: prune(model, 0.5, method="sparsegpt", data=d),
        "taylor": lambda d: prune(model, 0.5, method="taylor_unstructured", data=d),
        "fine_tune": lambda d: fine_tune(prune(model, 0.5), d, epochs=2),
        "evaluate": lambda d: evaluate(model, d),
    }
    for name, run in paths.items():
        stream = LiveBatches(n_batches=10 * bound)
        run(stream)
        assert stream.made >= 10 * bound, name
        assert stream.peak <= bound, (name, stream.peak)
    # the statistics are those of all 640 samples, not of the last batch
    stream = LiveBatches(n_batches=20)
    x, _ = stream.whole()
    norms = input_norms(model, [("0.weight", model[0], "weight")], stream)["0.weight"][0]
    torch.testing.assert_close(norms, x.pow(2).sum(0).sqrt())


def test_tokenizer_mappings_stream_to_a_model_with_keyword_inputs():
    """A tokenizer's output (a mapping, here a batch of ``input_ids`` and ``attention_mask``) is
    passed as keyword arguments; the mask reaches the model."""

    class Bag(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(20, 6)
            self.fc = nn.Linear(6, 5)
            self.out = nn.Linear(5, 2)

        def forward(self, input_ids, attention_mask):
            h = self.emb(input_ids) * attention_mask.unsqueeze(-1)
            return self.out(self.fc(h).sum(dim=1))

    torch.manual_seed(0)
    model = Bag()
    ids = torch.randint(0, 20, (24, 7))
    mask = (torch.rand(24, 7) > 0.3).long()
    stream = [{"input_ids": ids[i:i + 8], "attention_mask": mask[i:i + 8]} for i in (0, 8, 16)]
    seen = model.emb(ids) * mask.unsqueeze(-1)
    norms = input_norms(model, [("fc.weight", model.fc, "weight")], stream)["fc.weight"][0]
    torch.testing.assert_close(norms, seen.detach().double().pow(2).sum(dim=(0, 1)).sqrt())
    whole = {"input_ids": ids, "attention_mask": mask}  # the same, in memory
    torch.testing.assert_close(
        input_norms(model, [("fc.weight", model.fc, "weight")], whole)["fc.weight"][0], norms)
    pair = prune(model, 0.5, method="wanda", data=stream)
    assert pair.masks["fc.weight"].sum(dim=1).tolist() == [3] * 5
    logits = predict(model, stream)
    assert logits.shape == (24, 2)
    # Bag.forward takes no `labels`: the entry is the batch's labels only, never a keyword
    # (tests/cases_s6/001-dict-batches-with-labels.md)
    labelled = [{**b, "labels": torch.randint(0, 2, (8,))} for b in stream]
    assert torch.equal(predict(model, labelled), logits)


def test_train_and_evaluate_on_a_dataloader_equal_in_memory():
    x, y = _data(n=64)
    a, b = _mlp(), _mlp()
    train(a, x, y, epochs=1, batch_size=64, lr=1e-2)  # one batch: order does not matter
    train(b, DataLoader(TensorDataset(x, y), batch_size=64), epochs=1, lr=1e-2)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q)
    loader = DataLoader(TensorDataset(x, y), batch_size=10)
    assert evaluate(a, loader) == pytest.approx(evaluate(a, x, y))
    torch.testing.assert_close(predict(a, loader), predict(a, x))


# --- methods that need data say so and fail clearly without it ------------------------------

NEEDS_DATA = sorted(k for k, v in PRUNING_METHODS.items() if v.needs_data)


def test_the_registry_says_which_methods_need_data():
    assert {"wanda", "sparsegpt", "taylor_unstructured", "l1_regularised",
            "structured"} <= set(NEEDS_DATA)
    assert not {"l1_unstructured", "random_unstructured", "threshold"} & set(NEEDS_DATA)
    for name in ("l1_unstructured", "random_unstructured"):  # run without data
        assert prune(_mlp(), 0.5, method=name).sparsity == 0.5


@pytest.mark.parametrize("method", NEEDS_DATA)
def test_methods_that_need_data_fail_clearly_without_it(method):
    with pytest.raises(ValueError, match=rf"Pruning method '{method}' needs a reference batch: "
                                         r"pass `data=\(inputs, labels\)`, a tensor of inputs, "
                                         r"or a DataLoader .*\(the methods that need data: "
                                         + ", ".join(NEEDS_DATA)):
        prune(_mlp(), 0.5, method=method)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "taylor_unstructured"])
def test_bad_or_empty_data_is_a_clear_error(method):
    model = _mlp()
    with pytest.raises(TypeError, match=r"Expected `data` to be a tensor of inputs, a pair "
                                        r"\(inputs, labels\), .* got int"):
        prune(model, 0.5, method=method, data=3)
    with pytest.raises(ValueError, match="Expected `data` to yield at least one batch, got "
                                         "none"):
        prune(model, 0.5, method=method, data=DataLoader(TensorDataset(torch.rand(0, 12))))
    used = (b for b in [torch.rand(4, 12).double()])
    list(used)
    with pytest.raises(ValueError, match="a generator can be read only once"):
        prune(model, 0.5, method=method, data=used)
    with pytest.raises(TypeError, match=r"Expected `data` as a tuple to be \(inputs, labels\)"):
        prune(model, 0.5, method=method, data=(torch.rand(4, 12), torch.rand(4, 12), 1))
    with pytest.raises(TypeError, match="Expected each batch in `data` to be a tensor"):
        prune(model, 0.5, method=method, data=["not a batch"])


def test_loss_based_criteria_need_labels_and_say_so():
    x, _ = _data()
    with pytest.raises(ValueError, match="Expected labels with the data for a loss-based"):
        prune(_mlp(), 0.5, method="taylor_unstructured", data=[x[:10], x[10:]])
    with pytest.raises(ValueError, match="Expected labels with the data"):
        fine_tune(prune(_mlp(), 0.5), x, epochs=1)


def test_training_more_than_one_epoch_needs_data_that_can_be_read_again():
    x, y = _data()
    with pytest.raises(ValueError, match=r"Expected data that can be read again for 2 epochs "
                                         r"\(a DataLoader or a list\), got a one-pass generator"):
        fine_tune(prune(_mlp(), 0.5), ((x[i:i + 8], y[i:i + 8]) for i in range(0, 96, 8)),
                  epochs=2)


def test_in_memory_batches_are_views():
    x, y = _data()
    for xb, yb in batches((x, y), batch_size=40):
        assert xb.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
        assert yb.untyped_storage().data_ptr() == y.untyped_storage().data_ptr()


@pytest.mark.parametrize("criterion", ["taylor", "activation_taylor", "integrated_gradients",
                                       "lrp"])
def test_structured_data_criteria_stream_to_the_in_memory_scores(criterion):
    """Taylor, activation-Taylor and attribution-guided (IG, LRP) unit scores from a DataLoader
    of uneven batches equal those of the whole batch: the sums are reweighted per batch."""
    from xprune.pruning._core import PruningContext
    from xprune.pruning.methods.structured import _channel_scores

    model = _mlp()
    x, y = _data(n=50)
    options = {"criterion": criterion, "norm": 1, "normalise": None, "lrp_rule": "epsilon",
               "aggregate": "mean_abs"}

    def scores(data):
        ctx = PruningContext(scope="global", generator=torch.Generator(),
                             max_layer_sparsity=None, data=data, options=options)
        return _channel_scores(model, ctx)

    whole = scores((x, y))
    streamed = scores(DataLoader(TensorDataset(x, y), batch_size=16))  # 16, 16, 16, 2
    assert whole.keys() == streamed.keys()
    for name in whole:
        torch.testing.assert_close(streamed[name], whole[name])
    pair = prune(model, method="structured", data=DataLoader(TensorDataset(x, y), batch_size=16),
                 options={"criterion": criterion, "channel_ratio": 0.5})
    reference = prune(model, method="structured", data=(x, y),
                      options={"criterion": criterion, "channel_ratio": 0.5})
    for p, q in zip(pair.sparse.parameters(), reference.sparse.parameters(), strict=True):
        assert p.shape == q.shape


def test_layers_reading_one_input_share_its_hessian_but_not_after_an_in_place_change():
    """SparseGPT's X^T X is computed once for layers that read the same tensor in a row; a
    tensor changed in place between two readers gets its own product."""

    class Two(nn.Module):
        def __init__(self, in_place):
            super().__init__()
            self.a, self.b, self.in_place = nn.Linear(5, 5), nn.Linear(5, 5), in_place

        def forward(self, x):
            h = x.clone()
            out = self.a(h)
            if self.in_place:
                h.mul_(3.0)
            return out + self.b(h)

    x = torch.randn(40, 5)
    for in_place, factor in ((False, 1.0), (True, 9.0)):
        model = Two(in_place)
        chosen = [("a.weight", model.a, "weight"), ("b.weight", model.b, "weight")]
        h = input_hessians(model, chosen, x)
        expected = 2 * (x.T @ x).double() / 40
        torch.testing.assert_close(h["a.weight"][0], expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(h["b.weight"][0], factor * expected, rtol=1e-5, atol=1e-5)


def test_first_rows_of_a_stream_reads_no_batch_beyond_them():
    """first_rows(loader, 10) over batches of 4: three batches read per pass (the last cut to 2
    rows), never a fourth; an earlier version pulled one more batch before stopping."""
    from xprune._batches import first_rows

    class Counted:
        def __init__(self):
            self.reads = 0

        def __iter__(self):
            for i in range(0, 20, 4):
                self.reads += 1
                yield torch.arange(i, i + 4).float()[:, None], torch.zeros(4, dtype=torch.long)

    source = Counted()
    stream = first_rows(source, 10)
    for _ in range(2):
        rows = torch.cat([x for x, _ in stream])
        assert torch.equal(rows[:, 0], torch.arange(10).float())
    assert source.reads == 6
