"""Inputs of any structure and token attributions, on a plain token model and a tiny BERT.

The plain model is linear in its embeddings (masked mean pool, then a linear
layer), so every method with a baseline has the same exact answer per token:
``w_c . (E[id] - E[pad]) / n`` for each of the n real tokens, 0 at padding.
"""

import pytest
import scipy.stats
import torch
from conftest import all_hooks, assert_state_equal, state_snapshot
from torch import nn

from xprune.attribution import ATTRIBUTION_METHODS, TokenOptions, attribute, explainer
from xprune.attribution._inputs import activation_bytes_per_row
from xprune.checkpoint import load_attributions, save_attributions
from xprune.metrics import gini_index, spearman

transformers = pytest.importorskip("transformers")


class BagOfEmbeddings(nn.Module):
    """forward(input_ids, attention_mask): masked mean of the embeddings, then a linear layer."""

    def __init__(self, vocab: int = 20, dim: int = 4, classes: int = 3) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.embedding = nn.Embedding(vocab, dim).double()
        self.fc = nn.Linear(dim, classes).double()
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64))

    def forward(self, input_ids, attention_mask):
        m = attention_mask.unsqueeze(-1).to(torch.float64)
        return self.fc((self.embedding(input_ids) * m).sum(dim=1) / m.sum(dim=1))


@pytest.fixture
def bag():
    return BagOfEmbeddings().eval()


@pytest.fixture
def tokens():
    ids = torch.tensor([[3, 7, 1, 9, 0, 0], [5, 2, 8, 4, 6, 11], [13, 4, 0, 0, 0, 0]])
    return ids, (ids != 0).long()


def exact(model, ids, mask, target):
    """w_c . (E[id] - E[0]) / n per real token, 0 at padding: shape (N, T)."""
    w = model.fc.weight.detach()[target]                       # (N, H)
    e = model.embedding.weight.detach()
    diff = e[ids] - e[0]                                        # (N, T, H)
    n = mask.sum(dim=1, keepdim=True).double()
    return (diff * w[:, None]).sum(dim=-1) * mask / n


TARGET = torch.tensor([0, 2, 1])
EXACT_PARAMS = {"integrated_gradients": {"n_steps": 4}, "gradient_shap": {"n_samples": 6},
                "deeplift": None, "occlusion": {"window": 1},
                "kernel_shap": {"n_samples": 200}, "embedding_integrated_gradients":
                {"n_steps": 4}}


@pytest.mark.parametrize("method", sorted(EXACT_PARAMS))
def test_case_009_multi_input_model_gets_the_exact_per_token_answer(bag, tokens, method):
    """../shared/cases/009-multi-input-model.md: forward(input_ids, attention_mask), no wrapper."""
    ids, mask = tokens
    a = attribute(bag, (ids, mask), TARGET, method, params=EXACT_PARAMS[method])
    assert a.values.shape == ids.shape
    # Captum fits KernelSHAP and averages occlusion windows in float32
    tol = {"kernel_shap": 1e-5, "occlusion": 1e-7}.get(method, 1e-9)
    torch.testing.assert_close(a.values, exact(bag, ids, mask, TARGET), rtol=tol, atol=tol)
    assert torch.equal(a.feature_mask, mask.bool())
    assert a.params["baseline_token"] == 0
    assert isinstance(a.inputs, tuple) and a.inputs[0] is not ids and torch.equal(a.inputs[0], ids)


def test_case_009_tuple_and_mapping_inputs_give_the_same_maps(bag, tokens):
    ids, mask = tokens
    by_position = attribute(bag, (ids, mask), TARGET, "saliency")
    by_name = attribute(bag, {"input_ids": ids, "attention_mask": mask}, TARGET, "saliency")
    torch.testing.assert_close(by_position.values, by_name.values, rtol=0, atol=0)
    assert by_name.attribute_to == "input_ids" and by_position.attribute_to == 0
    assert set(by_name.inputs) == {"input_ids", "attention_mask"}
    assert torch.equal(by_name.attributed, ids)
    # the gradient of the pooled embedding is w_c / n: its L2 norm per real token
    n = mask.sum(dim=1, keepdim=True).double()
    norm = bag.fc.weight.detach()[TARGET].norm(dim=1, keepdim=True)
    torch.testing.assert_close(by_name.values, norm / n * mask)


def test_saliency_gradient_x_embedding_equals_input_x_gradient(bag, tokens):
    ids, mask = tokens
    gxe = attribute(bag, (ids, mask), TARGET, "saliency",
                    params={"token_score": "gradient_x_embedding"})
    ixg = attribute(bag, (ids, mask), TARGET, "input_x_gradient")
    w = bag.fc.weight.detach()[TARGET]
    e = bag.embedding.weight.detach()[ids]
    expected = (e * w[:, None]).sum(dim=-1) * mask / mask.sum(dim=1, keepdim=True)
    torch.testing.assert_close(gxe.values, expected)
    torch.testing.assert_close(ixg.values, expected)


def test_the_attention_mask_passes_through_unchanged(bag, tokens):
    """A different mask on the same ids changes n, hence the maps: the mask reaches forward."""
    ids, mask = tokens
    fewer = mask.clone()
    fewer[1, 3:] = 0
    a = attribute(bag, (ids, fewer), TARGET, "integrated_gradients", params={"n_steps": 4})
    torch.testing.assert_close(a.values, exact(bag, ids, fewer, TARGET))
    assert not bool(a.feature_mask[1, 3:].any())


def test_inputs_model_and_hooks_are_untouched(bag, tokens):
    ids, mask = tokens
    before, snap = (ids.clone(), mask.clone()), state_snapshot(bag)
    bag.train()
    for method in ("integrated_gradients", "saliency", "occlusion", "lime"):
        attribute(bag, {"input_ids": ids, "attention_mask": mask}, TARGET, method,
                  params={"lime": {"n_samples": 16}}.get(method))
    assert bag.training and torch.equal(ids, before[0]) and torch.equal(mask, before[1])
    assert_state_equal(bag, snap)
    assert all_hooks(bag) == 0


TOKEN_METHODS = sorted(n for n, m in ATTRIBUTION_METHODS.items() if m.tokens is not None)
FAST = {"integrated_gradients": {"n_steps": 8}, "embedding_integrated_gradients": {"n_steps": 8},
        "smoothgrad": {"nt_samples": 3}, "vargrad": {"nt_samples": 3},
        "gradient_shap": {"n_samples": 3}, "lime": {"n_samples": 12},
        "kernel_shap": {"n_samples": 12}}


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, num_labels=3)
    return transformers.BertForSequenceClassification(config).double().eval()


@pytest.fixture
def encoding():
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 100, (3, 7), generator=gen)
    ids[:, 0] = 2  # a [CLS]-like special id
    ids[0, 5:] = 0
    ids[2, 3:] = 0
    return {"input_ids": ids, "attention_mask": (ids != 0).long(),
            "token_type_ids": torch.zeros_like(ids)}


@pytest.mark.parametrize("method", TOKEN_METHODS)
def test_every_token_method_on_a_hugging_face_model(bert, encoding, method):
    """A ModelOutput model and a BatchEncoding-like dict: one finite value per token, 0 at PAD."""
    a = attribute(bert, encoding, "predicted", method, params=FAST.get(method),
                  tokens={"special_token_ids": (2,)})
    ids = encoding["input_ids"]
    assert a.values.shape == ids.shape and a.values.dtype == torch.float64
    assert bool(torch.isfinite(a.values).all())
    expected_mask = (ids != 0) & (ids != 2)
    assert torch.equal(a.feature_mask, expected_mask)
    assert bool((a.values[~expected_mask] == 0).all())
    assert bool((a.values[expected_mask] != 0).any())
    assert all_hooks(bert) == 0


def test_bert_ig_equals_captum_layer_integrated_gradients(bert, encoding):
    """Reference: Captum's LayerIntegratedGradients on the word embeddings, pad-token baseline."""
    import captum.attr as ca

    ids, mask, types = encoding["input_ids"], encoding["attention_mask"], encoding["token_type_ids"]
    a = attribute(bert, encoding, 1, "integrated_gradients", params={"n_steps": 16})
    assert a.params["baseline_token"] == bert.config.pad_token_id == 0

    def forward(i, m, t):
        return bert(input_ids=i, attention_mask=m, token_type_ids=t).logits

    ref, delta = ca.LayerIntegratedGradients(forward, bert.bert.embeddings.word_embeddings) \
        .attribute(ids, baselines=torch.zeros_like(ids), target=1, n_steps=16,
                   additional_forward_args=(mask, types), return_convergence_delta=True)
    torch.testing.assert_close(a.values, ref.sum(dim=-1) * mask, rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(a.delta, delta, rtol=1e-6, atol=1e-9)


def test_tuple_inputs_to_bert_find_the_attention_mask_by_parameter_name(bert, encoding):
    ids, mask = encoding["input_ids"], encoding["attention_mask"]
    a = attribute(bert, (ids, mask), 0, "saliency")
    assert torch.equal(a.feature_mask, mask.bool())


def test_case_010_float_only_methods_name_the_token_alternatives(bag, tokens):
    """../shared/cases/010-token-ids-to-float-method.md"""
    ids, mask = tokens
    for method in ("grad_cam", "lrp"):
        with pytest.raises(ValueError, match=rf"Method '{method}' cannot explain token ids .*"
                                             r"Methods that explain tokens: .*integrated_grad"):
            attribute(bag, (ids, mask), TARGET, method)
    # the original failure: saliency on ids cast them to float; now one value per token
    assert attribute(bag, (ids, mask), TARGET, "saliency").values.shape == ids.shape


def test_baseline_token_and_pad_id_are_honoured_and_recorded(bag, tokens):
    ids, mask = tokens
    a = attribute(bag, (ids, mask), TARGET, "integrated_gradients",
                  params={"n_steps": 4, "baseline_token": 5})
    assert a.params["baseline_token"] == 5
    e, w = bag.embedding.weight.detach(), bag.fc.weight.detach()[TARGET]
    expected = ((e[ids] - e[5]) * w[:, None]).sum(-1) * mask / mask.sum(1, keepdim=True)
    torch.testing.assert_close(a.values, expected)
    b = attribute(bag, (ids, torch.ones_like(ids)), TARGET, "saliency",
                  tokens=TokenOptions(pad_token_id=0, special_token_ids=(13,)))
    assert torch.equal(b.feature_mask, (ids != 0) & (ids != 13))


def test_structured_input_errors_name_the_argument(bag, tokens):
    ids, mask = tokens
    with pytest.raises(ValueError, match=r"`attribute_to` to be one of \['input_ids', "
                                         r"'attention_mask'\].*got 'ids'"):
        attribute(bag, {"input_ids": ids, "attention_mask": mask}, TARGET, "saliency",
                  attribute_to="ids")
    with pytest.raises(ValueError, match="same number of rows N"):
        attribute(bag, (ids, mask[:2]), TARGET, "saliency")
    with pytest.raises(TypeError, match="a tuple of tensors .* or a mapping of tensors"):
        attribute(bag, "some text", TARGET, "saliency")
    with pytest.raises(ValueError, match="`tokens.embedding` to name a submodule"):
        attribute(bag, (ids, mask), TARGET, "saliency", tokens={"embedding": "emb"})


def test_explainer_takes_structured_inputs(bag, tokens):
    ids, mask = tokens
    explain = explainer(bag, "integrated_gradients", params={"n_steps": 4})
    torch.testing.assert_close(explain((ids, mask), TARGET), exact(bag, ids, mask, TARGET))


def test_structured_attributions_round_trip_through_a_file(bag, tokens, tmp_path):
    ids, mask = tokens
    a = attribute(bag, {"input_ids": ids, "attention_mask": mask}, TARGET, "saliency")
    back = load_attributions(save_attributions(a, tmp_path / "a.safetensors"))
    assert set(back.inputs) == {"input_ids", "attention_mask"}
    assert torch.equal(back.inputs["attention_mask"], mask)
    assert torch.equal(back.feature_mask, a.feature_mask) and back.attribute_to == "input_ids"
    assert torch.equal(back.values, a.values)
    t = attribute(bag, (ids, mask), TARGET, "saliency")
    back = load_attributions(save_attributions(t, tmp_path / "t.safetensors"))
    assert isinstance(back.inputs, tuple) and back.attribute_to == 0


# --- padding never counts (case 012) ---------------------------------------------------------

def test_case_012_agreement_and_complexity_ignore_padding(bag, tokens):
    """../shared/cases/012-padding-counted.md: scores over the real tokens only, per sample."""
    ids, mask = tokens
    a = attribute(bag, (ids, mask), TARGET, "integrated_gradients", params={"n_steps": 4})
    b = attribute(bag, (ids, mask), torch.tensor([1, 0, 2]), "integrated_gradients",
                  params={"n_steps": 4})
    rho = spearman(a, b)
    gini = gini_index(a)
    for i in range(3):
        keep = mask[i].bool()
        x, y = a.values[i, keep].numpy(), b.values[i, keep].numpy()
        assert float(rho[i]) == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
        torch.testing.assert_close(gini[i], gini_index(a.values[i:i + 1, keep])[0])
        # per sample: the same score alone as in the batch
        alone = spearman(a.values[i:i + 1, keep], b.values[i:i + 1, keep])
        torch.testing.assert_close(rho[i], alone[0])
    # counting the padding (zeros in both maps) changes the score of the padded samples
    assert float((spearman(a.values, b.values) - rho).abs()[0]) > 1e-3


# --- memory bounded in bytes (case 013) ------------------------------------------------------

def test_activation_bytes_grow_with_tokens(bert):
    from xprune.attribution._inputs import EmbeddingForward, ModelForward, structure_inputs

    layer = bert.get_input_embeddings()
    sizes = []
    for t in (8, 32):
        ids = torch.full((1, t), 7)
        s = structure_inputs({"input_ids": ids})
        forward = EmbeddingForward(ModelForward(bert, s), layer)
        sizes.append(activation_bytes_per_row(forward, layer(ids).detach(), (ids,), bert))
    # activations per row: at least tokens x hidden x 8 bytes, growing at least as fast as T
    assert sizes[0] >= 8 * 32 * 8 and sizes[1] >= 3.9 * sizes[0]


def test_activation_bytes_of_an_mlp_are_counted_exactly():
    """Linear(5, 7) - ReLU - Linear(7, 3) in float64 keeps the input (5), the ReLU output (7,
    shared with the second layer's input) and the output (3) per row: 8 * 15 bytes."""
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)).double()
    assert activation_bytes_per_row(model, torch.rand(4, 5, dtype=torch.float64), (),
                                    model) == 8 * (5 + 7 + 3)


def test_case_013_memory_budget_bounds_rows_and_keeps_the_numbers(bert, encoding):
    """../shared/cases/013-embedding-ig-memory.md: chunks from bytes, same maps as unchunked."""
    seen = []
    layer = bert.bert.embeddings.word_embeddings
    full = attribute(bert, encoding, 1, "integrated_gradients", params={"n_steps": 10})
    handle = layer.register_forward_hook(lambda m, i, o: seen.append(o.shape[0]))
    try:
        from xprune.attribution._inputs import EmbeddingForward, ModelForward, structure_inputs

        ids = encoding["input_ids"]
        s = structure_inputs(encoding)
        per_row = activation_bytes_per_row(EmbeddingForward(ModelForward(bert, s), layer),
                                           layer(ids[:1]).detach(),
                                           (ids[:1], *(t[:1] for t in s.others)), bert)
        seen.clear()
        budget = 4 * per_row + per_row // 2  # four rows a pass
        small = attribute(bert, encoding, 1, "integrated_gradients", params={"n_steps": 10},
                          max_bytes=budget)
    finally:
        handle.remove()
    assert max(seen) <= 4
    torch.testing.assert_close(small.values, full.values, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(small.delta, full.delta, rtol=1e-8, atol=1e-10)
    with pytest.raises(ValueError, match="more than the 4 rows that `max_bytes`"):
        attribute(bert, encoding, 1, "gradient_shap", params={"n_samples": 5}, max_bytes=budget)


def test_float_ids_into_an_embedding_get_a_clear_error(bag, tokens):
    ids, mask = tokens
    with pytest.raises(ValueError, match=r"Expected `inputs` to be token ids \(an integer tensor\)"
                                         r" .* got dtype torch.float32"):
        attribute(bag, (ids.float(), mask), TARGET, "saliency")


class _Ids(nn.Module):
    """A one-input token model: the bag of embeddings with padding (id 0) masked."""

    def __init__(self, bag):
        super().__init__()
        self.inner = bag

    def forward(self, input_ids):
        return self.inner(input_ids, (input_ids != 0).long())


def test_case_011_sensitivity_substitutes_tokens_and_equals_the_literal_definition(bag, tokens):
    """../shared/cases/011-token-stability.md: max- and avg-sensitivity on token ids substitute
    tokens (no noise on ids); per draw, ||Phi(x') - Phi(x)|| / ||Phi(x)|| with Phi the exact
    IG map of the linear bag of embeddings (w . (E[id] - E[0]) / n per real token)."""
    from xprune.metrics import avg_sensitivity, max_sensitivity, substitute_tokens

    ids = tokens[0]
    model = _Ids(bag)
    pad = {"pad_token_id": 0}
    explain = explainer(model, "integrated_gradients", params={"n_steps": 4}, tokens=pad)
    assert explain.embeds_integer_inputs and explain.token_vocabulary == 20
    maps = attribute(model, ids, TARGET, "integrated_gradients", params={"n_steps": 4},
                     tokens=pad)
    got = max_sensitivity(explain, ids, TARGET, radius=0.25, n_samples=5, attributions=maps,
                          generator=torch.Generator().manual_seed(3))
    mean = avg_sensitivity(explain, ids, TARGET, radius=0.25, n_samples=5, attributions=maps,
                           generator=torch.Generator().manual_seed(3))
    counted = ids != 0
    draws = substitute_tokens(ids, counted, 5, 0.25, torch.Generator().manual_seed(3),
                              vocab_size=20, excluded=torch.tensor([0]))
    base = exact(bag, ids, counted.long(), TARGET)
    ratios = torch.stack([(exact(bag, draws[:, j], counted.long(), TARGET) - base).norm(dim=1)
                          for j in range(5)], dim=1) / base.norm(dim=1, keepdim=True)
    torch.testing.assert_close(got, ratios.amax(dim=1))
    torch.testing.assert_close(mean, ratios.mean(dim=1))
    assert bool((got > 0).all())
    # without the maps, the explainer's own pad id tells the counted tokens: the same draws
    again = max_sensitivity(explain, ids, TARGET, radius=0.25, n_samples=5,
                            generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(again, got)


def test_substitute_tokens_changes_a_fraction_of_the_counted_tokens_and_nothing_else(tokens):
    from xprune.metrics import substitute_tokens

    ids = tokens[0]
    counted = (ids != 0) & (ids != 3)  # padding and a special id at [0, 0]
    excluded = torch.tensor([0, 3])
    draws = substitute_tokens(ids, counted, 50, 0.3, torch.Generator().manual_seed(0),
                              vocab_size=20, excluded=excluded)
    assert draws.shape == (3, 50, 6) and draws.dtype == ids.dtype
    changed = draws != ids[:, None]
    assert not bool((changed & ~counted[:, None]).any())       # only counted positions
    per_draw = changed.sum(dim=2)                               # ceil(0.3 L): L = 3, 6, 2
    assert per_draw.tolist() == [[1] * 50, [2] * 50, [1] * 50]
    assert not bool(torch.isin(draws[changed], excluded).any())  # never padding or special
    assert int(draws.max()) < 20
    # a sample's draws do not depend on the samples after it; the same seed, the same draws
    first = substitute_tokens(ids[:1], counted[:1], 50, 0.3, torch.Generator().manual_seed(0),
                              vocab_size=20, excluded=excluded)
    assert torch.equal(first[0], draws[0])


def test_stability_metrics_that_need_continuous_noise_refuse_token_ids_naming_the_kind(bag,
                                                                                     tokens):
    from xprune.metrics import local_lipschitz_estimate, max_sensitivity

    ids = tokens[0]
    explain = explainer(_Ids(bag), "integrated_gradients", params={"n_steps": 4})
    with pytest.raises(ValueError, match=r"local_lipschitz_estimate perturbs its inputs with "
                                         r"continuous noise, which token ids \(an integer "
                                         r"tensor of shape \(3, 6\)\) cannot take; for token "
                                         r"ids use max_sensitivity or avg_sensitivity"):
        local_lipschitz_estimate(explain, ids, TARGET)
    with pytest.raises(ValueError, match=r"Expected `radius` in \(0, 1\] for token ids"):
        max_sensitivity(explain, ids, TARGET, radius=2.0)

    def plain(x, t):  # an explain_fn that does not know the vocabulary
        return explain(x, t)

    plain.embeds_integer_inputs = True
    with pytest.raises(ValueError, match=r"max_sensitivity on token ids substitutes tokens, "
                                         r"which needs the size of the model's vocabulary"):
        max_sensitivity(plain, ids, TARGET)


def test_readme_text_example_runs_on_a_model_saved_in_a_local_folder(tmp_path):
    """The README's "Text models" example, on a tiny BERT and tokenizer saved with save_pretrained."""
    import re
    from pathlib import Path

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "fine", "film", "dull"]
    tokenizer = transformers.BertTokenizerFast(vocab={w: i for i, w in enumerate(words)})
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32, num_labels=2)
    transformers.BertForSequenceClassification(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S)
                 if "AutoTokenizer" in b)
    namespace = {}
    exec(compile(block.replace('"my-model"', repr(str(tmp_path))), "README.md", "exec"),
         namespace)
    maps, batch = namespace["maps"], namespace["batch"]
    assert maps.values.shape == (2, 5) and maps.attribute_to == "input_ids"
    # [CLS] a fine film [SEP] / [CLS] dull [SEP] [PAD] [PAD]: the words count, nothing else
    assert maps.feature_mask.tolist() == [[False, True, True, True, False],
                                          [False, True, False, False, False]]
    assert bool((maps.values[~maps.feature_mask] == 0).all())
    assert bool((maps.values[maps.feature_mask] != 0).all())
    assert torch.equal(maps.inputs["attention_mask"], batch["attention_mask"])


def test_saved_text_maps_of_two_models_compare_over_the_real_tokens(bag, tokens):
    """compare_attributions on records of keyword inputs: scores equal the masked metrics."""
    from xprune.compare import compare_attributions

    ids, mask = tokens
    other = BagOfEmbeddings().eval()
    with torch.no_grad():
        other.fc.weight.mul_(-0.5).add_(0.3)
    inputs = {"input_ids": ids, "attention_mask": mask}
    a = attribute(bag, inputs, TARGET, "integrated_gradients", params={"n_steps": 4})
    b = attribute(other, inputs, TARGET, "integrated_gradients", params={"n_steps": 4})
    table = compare_attributions(a, b, metrics=["spearman"])
    rows = table[table["metric"] == "spearman"].sort_values("sample")
    torch.testing.assert_close(torch.tensor(rows["value"].to_numpy()), spearman(a, b))


MASKED = ["spearman", "top_k_intersection", "kendall_tau", "cosine_similarity",
          "sign_agreement", "gini_index", "entropy_complexity", "top_k_mass",
          "effective_complexity"]


@pytest.mark.parametrize("name", MASKED)
def test_case_012_every_map_and_pair_metric_scores_each_sample_over_its_real_tokens(name):
    """Reference: the same metric on each sample's unmasked features alone, one call each."""
    from xprune.attribution import Attributions
    from xprune.metrics import METRICS

    gen = torch.Generator().manual_seed(3)
    values = torch.randn(5, 9, generator=gen, dtype=torch.float64)
    other = values + 0.8 * torch.randn(5, 9, generator=gen, dtype=torch.float64)
    lengths = torch.tensor([9, 4, 6, 4, 2])
    mask = torch.arange(9)[None] < lengths[:, None]
    ids = torch.ones(5, 9, dtype=torch.long)

    def record(v):
        return Attributions(v * mask, ids, torch.zeros(5, dtype=torch.long), "saliency",
                            feature_mask=mask)

    info = METRICS[name]
    params = {"k": 3} if name in ("top_k_intersection", "top_k_mass") else {}
    maps = (record(values), record(other)) if info.kind == "pair" else (record(values),)
    scores = info.fn(*maps, **params)
    for i in range(5):
        keep = mask[i]
        alone = [m.values[i:i + 1, keep] for m in maps]
        kw = {"k": min(3, int(keep.sum()))} if params else {}
        torch.testing.assert_close(scores[i], info.fn(*alone, **kw)[0].double(), equal_nan=True)
    if name in ("spearman", "kendall_tau", "gini_index"):
        # zeros at the padding change ranks and the Gini denominator d: the padded samples
        # score differently when the padding is counted (the others ignore zeros by design)
        unmasked = info.fn(*(m.values for m in maps), **params)
        assert not torch.allclose(unmasked[1:], scores[1:], equal_nan=True)


def test_a_trained_text_model_puts_its_attribution_on_the_rationale():
    """End to end on the generated text data: keyword inputs, token IG, masked plausibility."""
    from xprune.metrics.plausibility import rationale_auprc
    from xprune.textdata import SPECIAL_TOKENS, make_text_classification

    data = make_text_classification(300, max_length=16, seed=0)
    torch.manual_seed(0)
    model = BagOfEmbeddings(vocab=len(data.vocabulary), dim=8, classes=2)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(60):
        optimiser.zero_grad()
        loss = nn.functional.cross_entropy(model(**data.inputs()), data.labels)
        loss.backward()
        optimiser.step()
    model.eval()
    test = make_text_classification(40, max_length=16, seed=1)
    special = tuple(data.vocabulary[t] for t in SPECIAL_TOKENS)
    a = attribute(model, test.inputs(), test.labels, "integrated_gradients",
                  params={"n_steps": 8}, tokens={"special_token_ids": special})
    words = test.attention_mask.bool() & ~torch.isin(test.input_ids, torch.tensor(special))
    assert torch.equal(a.feature_mask, words)
    # the label's evidence words carry more attribution than the other words of the sentence
    on = a.values[test.rationale & words].mean()
    off = a.values[~test.rationale & words].mean()
    assert float(on) > 10 * abs(float(off))           # measured: 2.21 against -0.086
    assert float(rationale_auprc(a, test.rationale).mean()) > 0.9  # measured: 0.96
