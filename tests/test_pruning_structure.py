"""Transformer heads and blocks, residual CNNs, recurrent networks (issue 19, items 5 and 6).

Every reference here is built by hand from the dense model: a head removed is
its output-projection columns set to zero; a block removed is a model built
without it; a hidden unit removed is its outgoing columns set to zero.
"""

import copy
import logging

import pytest
import torch
from conftest import assert_state_equal, state_snapshot
from torch import nn

from xprune.pruning import prune
from xprune.pruning.methods.recurrent import gate_magnitude_mask

transformers = pytest.importorskip("transformers")
logging.getLogger("transformers").setLevel(logging.ERROR)


def _bert(layers=2, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=layers,
                                  num_attention_heads=4, intermediate_size=48, num_labels=3,
                                  max_position_embeddings=16, hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0)
    return transformers.BertForSequenceClassification(cfg).eval()


def _gpt2(layers=2, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=40, n_embd=32, n_layer=layers, n_head=4,
                                  n_positions=16, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def _tokens(n=6, t=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 40, (n, t), generator=g), torch.randint(0, 3, (n,), generator=g)


def _logits(model, x):
    with torch.no_grad():
        return model(x).logits


# --- attention heads --------------------------------------------------------------------------

def _zero_bert_head_outputs(model, removed):
    """The hand-built reference: each removed head's columns of the output projection zeroed."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for name, heads in removed.items():
            dense = ref.get_submodule(name).output.dense
            for h in heads:
                dense.weight[:, h * 8:(h + 1) * 8] = 0
    return ref


@pytest.mark.parametrize("criterion", ["magnitude", "taylor"])
def test_bert_heads_are_removed_physically_and_equal_the_dense_model_without_them(criterion):
    model, (x, y) = _bert(), _tokens()
    snapshot = state_snapshot(model)
    pair = prune(model, 0.5, method="attention_heads", data=(x, y),
                 options={"criterion": criterion})
    assert_state_equal(model, snapshot)
    removed = pair.params["heads_removed"]
    assert sum(map(len, removed.values())) == 4  # half of 2 x 4 heads
    for name, heads in removed.items():
        attn = pair.sparse.get_submodule(name)
        kept = 4 - len(heads)
        assert attn.self.query.weight.shape == (kept * 8, 32)
        assert attn.self.num_attention_heads == kept
        assert attn.output.dense.weight.shape == (32, kept * 8)
    torch.testing.assert_close(_logits(pair.sparse, x),
                               _logits(_zero_bert_head_outputs(model, removed), x))
    torch.testing.assert_close(_logits(pair.twin, x), _logits(pair.sparse, x))
    # measured: each removed head takes 4 x 32 x 8 weights of the 2 x 4 x 32 x 32 attention weights
    attn_weights, selected = 2 * 4 * 32 * 32, pair.total_weights
    assert pair.sparsity == pytest.approx(4 * 4 * 32 * 8 / selected)
    assert selected == attn_weights + 2 * 2 * 32 * 48 + 32 * 32  # attention, FFN, pooler


def test_head_magnitude_is_the_norm_of_the_heads_qkvo_weights_and_layer_scope_takes_the_lowest():
    model = _bert()
    pair = prune(model, 0.25, method="attention_heads", scope="layer")
    for i in range(2):
        attn = model.bert.encoder.layer[i].attention
        literal = []
        for h in range(4):
            rows = slice(h * 8, (h + 1) * 8)
            parts = [attn.self.query.weight[rows], attn.self.key.weight[rows],
                     attn.self.value.weight[rows], attn.output.dense.weight[:, rows]]
            literal.append(float(torch.sqrt(sum(p.detach().double().pow(2).sum() for p in parts))))
        name = f"bert.encoder.layer.{i}.attention"
        assert pair.params["head_scores"][name] == pytest.approx(literal, rel=1e-12)
        assert pair.params["heads_removed"][name] == [min(range(4), key=literal.__getitem__)]


def test_taylor_head_importance_is_michel_et_al_gate_derivative():
    """Michel et al. 2019, eq. 2, literally: a gate xi_h = 1 multiplies head h's context
    vectors; I_h = mean over samples of |dL/dxi_h|."""
    model, (x, y) = _bert(), _tokens()
    pair = prune(model, 0.25, method="attention_heads", data=(x, y),
                 options={"criterion": "taylor"})
    for i in range(2):
        dense = model.bert.encoder.layer[i].attention.output.dense
        literal = torch.zeros(4, dtype=torch.float64)
        for n in range(x.shape[0]):
            gate = torch.ones(4, requires_grad=True)
            hook = dense.register_forward_pre_hook(
                lambda m, args, gate=gate: (args[0] * gate.repeat_interleave(8),))
            try:
                loss = nn.functional.cross_entropy(model(x[n:n + 1]).logits, y[n:n + 1])
                literal += torch.autograd.grad(loss, gate)[0].abs().double()
            finally:
                hook.remove()
        scores = pair.params["head_scores"][f"bert.encoder.layer.{i}.attention"]
        torch.testing.assert_close(torch.tensor(scores, dtype=torch.float64),
                                   literal / x.shape[0], rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("criterion", ["taylor", "integrated_gradients"])
def test_head_importance_from_a_dataloader_equals_that_of_its_tensors(criterion):
    """Taylor and IG head scores read a DataLoader of uneven batches (of token mappings, as a
    collator gives them, or of tensors) one batch at a time: the scores of the tensors."""
    from torch.utils.data import DataLoader, TensorDataset

    model, (x, y) = _bert(), _tokens(n=5)
    options = {"criterion": criterion}
    whole = prune(model, 0.25, method="attention_heads", data=(x, y), options=options)
    loader = DataLoader(TensorDataset(x, y), batch_size=2)  # 2, 2, 1
    mappings = [{"input_ids": x[i:i + 2], "attention_mask": torch.ones_like(x[i:i + 2]),
                 "labels": y[i:i + 2]} for i in range(0, 5, 2)]
    for data in (loader, mappings):
        streamed = prune(model, 0.25, method="attention_heads", data=data, options=options)
        assert streamed.params["heads_removed"] == whole.params["heads_removed"]
        for name, scores in whole.params["head_scores"].items():
            torch.testing.assert_close(torch.tensor(streamed.params["head_scores"][name]),
                                       torch.tensor(scores))
    with pytest.raises(ValueError, match="Expected labels with the data for head importance"):
        prune(model, 0.25, method="attention_heads", data=[x[:2], x[2:]], options=options)


def test_head_integrated_gradients_are_complete_and_rank_the_heads():
    """Completeness (Sundararajan et al. 2017): per sample, the heads' attributions sum to the
    loss with every head on minus the loss with every head of the model off."""
    from xprune.pruning.methods._attention import _head_sites
    from xprune.pruning.methods.transformer import head_integrated_gradients

    model, (x, y) = _bert(), _tokens(n=2)
    snapshot = state_snapshot(model)
    sites = _head_sites(model)
    attr = head_integrated_gradients(model, sites, x, y, steps=16)
    assert_state_equal(model, snapshot)
    off = copy.deepcopy(model)
    with torch.no_grad():
        for layer in off.bert.encoder.layer:
            layer.attention.output.dense.weight.zero_()
        for i in range(2):
            on_loss = nn.functional.cross_entropy(model(x[i:i + 1]).logits, y[i:i + 1])
            off_loss = nn.functional.cross_entropy(off(x[i:i + 1]).logits, y[i:i + 1])
            total = sum(float(a[i].sum()) for a in attr.values())
            assert total == pytest.approx(float(on_loss - off_loss), rel=2e-2, abs=1e-5)
    pair = prune(model, 0.25, method="attention_heads", data=(x, y), scope="layer",
                 options={"criterion": "integrated_gradients"})
    for name, scores in pair.params["head_scores"].items():
        mean_abs = attr[name].abs().mean(0)
        torch.testing.assert_close(torch.tensor(scores, dtype=torch.float64), mean_abs)
        assert pair.params["heads_removed"][name] == [int(mean_abs.argmin())]


def test_gpt2_heads_are_removed_from_the_fused_projection():
    model, (x, _) = _gpt2(), _tokens()
    pair = prune(model, 0.5, method="attention_heads", scope="layer")
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for name, heads in pair.params["heads_removed"].items():
            assert len(heads) == 2
            attn = pair.sparse.get_submodule(name)
            assert attn.c_attn.weight.shape == (32, 3 * 16) and attn.c_proj.weight.shape == (16, 32)
            for h in heads:  # GPT-2's Conv1D: the head's context rows of c_proj
                ref.get_submodule(name).c_proj.weight[h * 8:(h + 1) * 8] = 0
    torch.testing.assert_close(_logits(pair.sparse, x), _logits(ref, x))


class _Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc(self.enc(x).mean(1))


def test_multihead_attention_heads_are_masked_exactly():
    model = _Encoder().eval()
    x = torch.randn(5, 7, 16, generator=torch.Generator().manual_seed(0))
    pair = prune(model, 0.5, method="attention_heads", scope="layer")
    assert not pair.params["structured"]
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for name, heads in pair.params["heads_removed"].items():
            assert len(heads) == 2
            for h in heads:
                ref.get_submodule(name).out_proj.weight[:, h * 4:(h + 1) * 4] = 0
        torch.testing.assert_close(pair.sparse(x), ref(x))
    key = "enc.layers.0.self_attn.in_proj_weight"
    assert pair.masks[key].float().mean() == 0.5  # the heads' query, key and value rows
    assert pair.sparse.get_parameter(key).shape == (48, 16)
    zero = prune(model, 0.0, method="attention_heads")
    with torch.no_grad():
        assert torch.equal(zero.sparse(x), model(x))


def test_only_the_selected_attention_modules_lose_heads():
    model = _bert()
    pair = prune(model, 0.5, method="attention_heads", layers="bert.encoder.layer.1.*")
    scores = pair.params["head_scores"]["bert.encoder.layer.1.attention"]
    assert pair.params["heads_removed"] == {
        "bert.encoder.layer.1.attention": sorted(sorted(range(4), key=scores.__getitem__)[:2])}
    assert pair.sparse.bert.encoder.layer[0].attention.self.query.out_features == 32
    assert pair.sparsity == pytest.approx(0.5 * 4 * 32 * 32 / pair.total_weights)
    assert pair.params["head_scores"]["bert.encoder.layer.1.attention"] == pytest.approx(
        prune(model, 0.5, method="attention_heads").params["head_scores"][
            "bert.encoder.layer.1.attention"])


def test_attention_heads_errors():
    with pytest.raises(ValueError, match="found no attention module.*method='structured'"):
        prune(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), 0.5,
              method="attention_heads")
    for criterion in ("taylor", "integrated_gradients"):
        with pytest.raises(ValueError, match=f"'{criterion}' needs a reference batch"):
            prune(_bert(), 0.5, method="attention_heads", options={"criterion": criterion})
    with pytest.raises(ValueError, match="`criterion` to be one of"):
        prune(_bert(), 0.5, method="attention_heads", options={"criterion": "norm"})


def test_case_016_structured_transformer():
    """../shared/cases/016-structured-transformer.md: structured pruning of a BERT encoder
    fails inside Torch-Pruning naming no module. Now: an xprune error naming the attention
    modules and the alternatives, and the alternatives work (heads, blocks, FFN neurons)."""
    model, data = _bert(), _tokens(n=4)
    with pytest.raises(ValueError, match=r"attention module\(s\) \['bert.encoder.layer.0."
                                         r"attention'.*method='attention_heads'.*"
                                         r"'layer_removal'.*intermediate.dense"):
        prune(model, 0.3, method="structured", data=data)
    ffn = prune(model, method="structured", data=data, layers="*intermediate.dense",
                options={"channel_ratio": 0.5})
    assert ffn.sparse.bert.encoder.layer[0].intermediate.dense.out_features == 24
    assert ffn.sparse.bert.encoder.layer[0].output.dense.in_features == 24
    assert ffn.sparsity == 0.5  # of the selected FFN matrices
    torch.testing.assert_close(_logits(ffn.sparse, data[0]), _logits(ffn.twin, data[0]))
    assert prune(model, 0.5, method="attention_heads").sparsity > 0
    assert prune(model, 0.5, method="layer_removal", data=data).params["layers_removed"]


# --- whole blocks -----------------------------------------------------------------------------

def test_block_influence_is_one_minus_the_cosine_of_each_blocks_input_and_output():
    model, (x, y) = _bert(layers=3), _tokens()
    pair = prune(model, None, method="layer_removal", data=(x, y), options={"n_layers": 1})
    with torch.no_grad():
        hidden = model(x, output_hidden_states=True).hidden_states  # embeddings, then blocks
    literal = {f"bert.encoder.layer.{i}": float(1 - nn.functional.cosine_similarity(
        hidden[i].double(), hidden[i + 1].double(), dim=-1).mean()) for i in range(3)}
    assert pair.params["block_influence"] == pytest.approx(literal, rel=1e-6)
    assert pair.params["layers_removed"] == [min(literal, key=literal.get)]


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_removed_block_equals_a_model_built_without_it(arch):
    model, (x, y) = (_bert(layers=3), _tokens()) if arch == "bert" else (_gpt2(layers=3),
                                                                         _tokens())
    snapshot = state_snapshot(model)
    data = (x, y if arch == "bert" else x)
    pair = prune(model, 1 / 3, method="layer_removal", data=data)
    assert_state_equal(model, snapshot)
    (removed,) = pair.params["layers_removed"]
    prefix, _, idx = removed.rpartition(".")
    cfg = copy.deepcopy(model.config)
    cfg.num_hidden_layers = 2
    reference = type(model)(cfg).eval()
    state = {}
    for k, v in model.state_dict().items():  # renumber the blocks after the removed one
        if k.startswith(prefix + "."):
            i, rest = k[len(prefix) + 1:].split(".", 1)
            if int(i) == int(idx):
                continue
            k = f"{prefix}.{int(i) - (int(i) > int(idx))}.{rest}"
        state[k] = v
    reference.load_state_dict(state)
    torch.testing.assert_close(_logits(pair.sparse, x), _logits(reference, x))
    assert pair.sparse.config.num_hidden_layers == 2 and model.config.num_hidden_layers == 3
    block = sum(p.numel() for n, p in model.named_parameters()
                if n.startswith(removed + ".") and p.dim() == 2)
    assert pair.sparsity == pytest.approx(block / pair.total_weights)
    if arch == "gpt2":  # the key-value cache is indexed by the renumbered layer_idx
        out = pair.sparse.generate(x[:1], max_new_tokens=3, do_sample=False)
        assert out.shape == (1, 12)


def _bert_by_hand(model, x, skip):
    """BERT's forward written out block by block; block ``skip`` passes its attention input on
    unchanged. Returns the logits and each attention sublayer's (input, output)."""
    h, pairs = model.bert.embeddings(x), []
    for i, layer in enumerate(model.bert.encoder.layer):
        a = layer.attention(h)[0]
        pairs.append((h, a))
        a = h if i == skip else a
        h = layer.output(layer.intermediate(a), a)
    return model.classifier(model.bert.pooler(h)), pairs


def _gpt2_by_hand(model, x, skip):
    """GPT-2's forward written out; block ``skip`` adds nothing from its attention."""
    t = model.transformer
    h, pairs = t.wte(x) + t.wpe(torch.arange(x.shape[1])), []
    for i, block in enumerate(t.h):
        a = h + block.attn(block.ln_1(h))[0]
        pairs.append((h, a))
        a = h if i == skip else a
        h = a + block.mlp(block.ln_2(a))
    return model.lm_head(t.ln_f(h)), pairs


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_removed_attention_sublayer_equals_the_forward_written_without_it(arch):
    model = _bert(layers=3) if arch == "bert" else _gpt2(layers=3)
    x, y = _tokens()
    by_hand = _bert_by_hand if arch == "bert" else _gpt2_by_hand
    pair = prune(model, None, method="layer_removal", data=(x, y if arch == "bert" else x),
                 options={"unit": "attention", "n_layers": 1})
    with torch.no_grad():
        _, pairs = by_hand(model, x, skip=None)
        literal = [float(1 - nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)
                         .mean()) for a, b in pairs]
        influence = list(pair.params["attention_influence"].values())
        assert influence == pytest.approx(literal, rel=1e-6)
        (removed,) = pair.params["layers_removed"]
        skip = min(range(3), key=literal.__getitem__)
        assert f".{skip}." in removed
        torch.testing.assert_close(_logits(pair.sparse, x), by_hand(model, x, skip)[0])
    assert len(list(pair.sparse.get_submodule(removed).parameters())) == 0
    attn = sum(p.numel() for n, p in model.named_parameters()
               if n.startswith(removed + ".") and p.dim() == 2)
    assert pair.sparsity == pytest.approx(attn / pair.total_weights)


def test_layer_removal_errors():
    with pytest.raises(ValueError, match="no list of identical blocks"):
        prune(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), 0.5,
              method="layer_removal", data=(torch.rand(2, 3), torch.tensor([0, 1])))
    with pytest.raises(ValueError, match="exactly one of `amount`"):
        prune(_bert(), 0.5, method="layer_removal", data=_tokens(), options={"n_layers": 1})
    with pytest.raises(ValueError, match="`unit` to be 'block' or 'attention'"):
        prune(_bert(), 0.5, method="layer_removal", data=_tokens(), options={"unit": "head"})
    with pytest.raises(ValueError, match="at most 1 blocks"):
        prune(_bert(), None, method="layer_removal", data=_tokens(), options={"n_layers": 2})


# --- residual CNN with BatchNorm --------------------------------------------------------------

class _Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        skip = x if self.down is None else self.down(x)
        return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))) + skip)


class _ResNet(nn.Module):
    """A small ResNet (He et al. 2016): stem, two stages of two basic blocks, classifier."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(1, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(_Block(8, 8, 1), _Block(8, 8, 1))
        self.layer2 = nn.Sequential(_Block(8, 16, 2), _Block(16, 16, 1))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.layer2(self.layer1(torch.relu(self.bn(self.stem(x)))))
        return self.fc(x.mean((2, 3)))


def _resnet(bn_statistics=True):
    torch.manual_seed(0)
    model = _ResNet()
    if not bn_statistics:
        return model.eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    return model.eval()


def _conv_channels(model):
    return sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d))


def _matrix_weights(model):
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def test_residual_cnn_with_batchnorm_is_pruned_through_the_dependency_graph():
    model = _resnet()
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(1))
    pair = prune(model, 0.5, method="structured", data=(x, y))
    assert pair.sparse.fc.out_features == 10  # the classifier's outputs are never removed
    assert abs(pair.sparsity - 0.5) <= 0.01  # measured over the selected (all but fc) weights
    assert pair.sparsity == 1 - (_matrix_weights(pair.sparse) - pair.sparse.fc.weight.numel()) / (
        _matrix_weights(model) - model.fc.weight.numel())
    blocks = [pair.sparse.layer1[0], pair.sparse.layer1[1]]  # residual: one channel set
    assert len({pair.sparse.stem.out_channels, *(b.conv2.out_channels for b in blocks),
                 *(b.bn2.num_features for b in blocks)}) == 1
    with torch.no_grad():
        torch.testing.assert_close(pair.sparse(x), pair.twin(x))


@pytest.mark.parametrize("ratio", [0.2, 0.3, 0.4, 0.5])
def test_torch_pruning_global_mode_under_prunes_channels(ratio):
    """What Torch-Pruning 1.6.1's own pruner does on this ResNet (classifier ignored, L1
    magnitude, default initialisation). Observed: local mode rounds every layer's channels
    up, so it removes at least the ratio (0.25, 0.333, 0.458, 0.5 of the conv channels at 0.2,
    0.3, 0.4, 0.5); global mode (``global_pruning=True``) removes fewer than the ratio asks
    (0.175, 0.283, 0.375, 0.467), within 0.05 of it. The shortfall depends on the weights:
    with the BatchNorm statistics of :func:`_resnet` it vanishes at 0.3 and 0.5 (0.3, 0.5) and
    at 0.6 global mode removes more (0.633 > 0.6). In both modes the ratio counts channels,
    not weights: the weight sparsity reached is far above it (0.31 to 0.76 here), since a
    removed channel takes weights on both sides. xprune's structured method therefore takes a
    weight sparsity, matches it by bisection and reports the measured value (test above)."""
    tp = pytest.importorskip("torch_pruning")
    model = _resnet(bn_statistics=False)
    channels, weights = {}, {}
    for global_pruning in (False, True):
        pruned = copy.deepcopy(model)
        tp.pruner.MagnitudePruner(
            pruned, torch.rand(1, 1, 8, 8), importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=ratio, global_pruning=global_pruning,
            ignored_layers=[pruned.fc]).step()
        channels[global_pruning] = 1 - _conv_channels(pruned) / _conv_channels(model)
        weights[global_pruning] = 1 - _matrix_weights(pruned) / _matrix_weights(model)
        assert pruned.fc.out_features == 10
    assert ratio - 0.05 < channels[True] < ratio <= channels[False]
    assert min(weights.values()) > ratio + 0.1


# --- recurrent networks -----------------------------------------------------------------------

class _Recurrent(nn.Module):
    def __init__(self, cls, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Embedding(20, 6)
        self.rnn = cls(6, 8, num_layers=2, batch_first=True)
        self.rnn2 = cls(8, 5, batch_first=True)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        out, _ = self.rnn(self.emb(x))
        out, _ = self.rnn2(out)
        return self.fc(out[:, -1])


def _sequences():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 20, (6, 7), generator=g), torch.randint(0, 3, (6,), generator=g)


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_rnn_units_equal_the_dense_model_without_the_units_contributions(cls):
    model = _Recurrent(cls).eval()
    snapshot = state_snapshot(model)
    x, y = _sequences()
    pair = prune(model, 0.5, method="rnn_units", data=(x, y))
    assert_state_equal(model, snapshot)
    removed = pair.params["units_removed"]
    assert [len(u) for u in removed["rnn"]] == [4, 4] and len(removed["rnn2"][0]) == 2
    g = 4 if cls is nn.LSTM else 3
    assert pair.sparse.rnn.weight_ih_l0.shape == (g * 4, 6)
    assert pair.sparse.rnn.weight_ih_l1.shape == (g * 4, 4)
    assert pair.sparse.rnn2.weight_ih_l0.shape == (g * 3, 4)
    assert pair.sparse.fc.weight.shape == (3, 3)
    # hand-built reference: the removed units' outgoing columns zeroed in the dense model
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for layer, units in enumerate(removed["rnn"]):
            getattr(ref.rnn, f"weight_hh_l{layer}")[:, units] = 0
            reader = ref.rnn.weight_ih_l1 if layer == 0 else ref.rnn2.weight_ih_l0
            reader[:, units] = 0
        ref.rnn2.weight_hh_l0[:, removed["rnn2"][0]] = 0
        ref.fc.weight[:, removed["rnn2"][0]] = 0
        torch.testing.assert_close(pair.sparse(x), ref(x))
        torch.testing.assert_close(pair.twin(x), ref(x))
    # the lowest-norm units of each layer went (rows of every gate and the recurrent column)
    w_ih, w_hh = model.rnn.weight_ih_l0.detach(), model.rnn.weight_hh_l0.detach()
    norms = [float(torch.sqrt(sum(w_ih[b * 8 + k].pow(2).sum() + w_hh[b * 8 + k].pow(2).sum()
                                  for b in range(g)) + w_hh[:, k].pow(2).sum()))
             for k in range(8)]
    assert removed["rnn"][0] == sorted(sorted(range(8), key=norms.__getitem__)[:4])
    frozen = copy.deepcopy(model).requires_grad_(False)  # the reader is still found
    torch.testing.assert_close(prune(frozen, 0.5, method="rnn_units", data=(x, y)).sparse(x),
                               pair.sparse(x))
    assert not any(p.requires_grad for p in frozen.parameters())
    zero = prune(model, 0.0, method="rnn_units", data=(x, y))
    with torch.no_grad():
        assert torch.equal(zero.sparse(x), model(x))


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_gate_magnitude_prunes_every_gate_block_separately(cls):
    model = _Recurrent(cls)
    pair = prune(model, 0.5, method="gate_magnitude")
    g = 4 if cls is nn.LSTM else 3
    for key in ("rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.weight_hh_l1", "rnn2.weight_ih_l0"):
        dense, mask = model.get_parameter(key).detach(), pair.masks[key]
        for w, keep in zip(dense.chunk(g), mask.chunk(g), strict=True):
            assert int((~keep).sum()) == round(0.5 * w.numel())
            assert w.abs()[~keep].max() <= w.abs()[keep].min()
        assert torch.equal(pair.sparse.get_parameter(key), dense * mask)
    assert torch.equal(gate_magnitude_mask(torch.tensor([[3.0], [1.0], [2.0], [4.0]]), 2, 0.5),
                       torch.tensor([[True], [False], [False], [True]]))


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_all_ones_mask_on_recurrent_weights_keeps_the_outputs(cls):
    model = _Recurrent(cls).eval()
    x, _ = _sequences()
    masks = {k: torch.ones_like(p, dtype=torch.bool) for k, p in model.named_parameters()
             if k.startswith("rnn") and p.dim() == 2}
    pair = prune(model, method="custom_mask", options={"masks": masks})
    gate = prune(model, 0.0, method="gate_magnitude")
    with torch.no_grad():
        assert torch.equal(pair.sparse(x), model(x))
        assert torch.equal(gate.sparse(x), model(x))


def test_rnn_units_errors():
    x, y = _sequences()
    bi = nn.Sequential(nn.Embedding(20, 4), nn.LSTM(4, 6, bidirectional=True, batch_first=True))
    with pytest.raises(ValueError, match="'1' is bidirectional.*gate_magnitude"):
        prune(bi, 0.5, method="rnn_units", data=(x, y), layers="*")

    class Normed(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.rnn = nn.Embedding(20, 4), nn.GRU(4, 6, batch_first=True)
            self.norm, self.fc = nn.LayerNorm(6), nn.Linear(6, 3)

        def forward(self, x):
            return self.fc(self.norm(self.rnn(self.emb(x))[0][:, -1]))

    with pytest.raises(ValueError, match="'rnn' is read by 'norm' \\(LayerNorm\\)"):
        prune(Normed(), 0.5, method="rnn_units", data=(x, y))
    with pytest.raises(ValueError, match="found no nn.LSTM"):
        prune(nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)), 0.5, method="rnn_units",
              data=(torch.rand(2, 3), y[:2]))


def test_case_016_a_layer_the_dependency_graph_cannot_trace_is_named():
    """../shared/cases/016: Torch-Pruning's "Module Linear(...) is not in the dependency graph"
    named no module; xprune names the layer's path and the alternatives."""

    class Detached(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.fc1, self.fc2, self.fc3 = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 3)

        def forward(self, x):  # fc1's output leaves the autograd graph Torch-Pruning traces
            return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)).detach())))

    data = (torch.rand(4, 4), torch.tensor([0, 1, 2, 0]))
    with pytest.raises(ValueError, match=r"cannot trace layer\(s\) \['fc1'\] of Detached.*"
                                         r"`exclude=`.*'attention_heads'"):
        prune(Detached(), 0.3, method="structured", data=data)
    pair = prune(Detached(), None, method="structured", data=data, exclude="fc1",
                 options={"channel_ratio": 0.5})
    assert pair.sparse.fc2.out_features == 4 and pair.sparse.fc1.out_features == 8


def test_config_pruning_table_takes_the_new_methods_and_their_options():
    from xprune.config import PruningVariant

    assert PruningVariant(method="attention_heads",
                          options={"criterion": "taylor"}).options == {"criterion": "taylor"}
    assert PruningVariant(method="layer_removal", options={"unit": "attention"}).method
    assert PruningVariant(method="rnn_units").method == "rnn_units"
    with pytest.raises(ValueError, match="drop the options .*`n_layers`"):
        PruningVariant(method="layer_removal", options={"n_layers": 1})
    with pytest.raises(ValueError, match=r"Unknown option\(s\) \['heads'\]"):
        PruningVariant(method="attention_heads", options={"heads": 2})
