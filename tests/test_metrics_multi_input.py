"""../shared/cases/009-multi-input-model.md: metrics take a model's inputs as attribution does.

Inputs may be a tensor, a tuple of positional tensors or a mapping of keyword tensors; one is
attributed, the others pass through unchanged. The reference for a two-input model
``forward(x, scale)`` (``scale`` one value per sample) is the same metric, sample by sample, on
a wrapper module whose forward takes ``x`` alone and closes over that sample's ``scale``:
scores are per sample, and the random metrics draw sample by sample in batch order, so a
generator shared by the per-sample calls sees the same draws as one call on the batch.
"""

import pytest
import torch
from torch import nn

import xprune
from xprune.metrics import complexity, controls, faithfulness, stability

N = 3


class TwoInput(nn.Module):
    """forward(x, scale): a small CNN's logits times a per-sample scale (N, 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Tanh(), nn.Flatten(),
                                 nn.Linear(2 * 6 * 6, 3))

    def forward(self, x, scale):
        return self.net(x) * scale


class Closed(nn.Module):
    """The reference: ``forward(x)`` of ``model`` with one sample's ``scale`` closed over."""

    def __init__(self, model: nn.Module, scale: torch.Tensor) -> None:
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x):
        return self.model(x, self.scale.expand(x.shape[0], -1))


class Keywords(nn.Module):
    """forward(*, scale, pixels): keyword inputs, the attributed one not first in the mapping."""

    def __init__(self, inner: TwoInput) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, scale, pixels):
        return self.inner(pixels, scale)


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(0)
    model = TwoInput().double().eval()
    x = torch.randn(N, 1, 6, 6, dtype=torch.float64)
    scale = torch.tensor([[0.5], [2.0], [-1.5]], dtype=torch.float64)   # one per sample
    maps = xprune.attribute(model, (x, scale), 0, method="saliency")
    return model, x, scale, maps


def gen():
    return torch.Generator().manual_seed(3)


# metric, keyword arguments; those with a generator get a fresh one per comparison
MODEL_METRICS = [
    (faithfulness.deletion_auc, {"steps": 9}),
    (faithfulness.insertion_auc, {"steps": 9}),
    (faithfulness.aopc, {"patch_size": 2, "baseline": "uniform", "generator": None}),
    (faithfulness.faithfulness_correlation, {"n_runs": 6, "generator": None, "max_rows": 7}),
    (faithfulness.sensitivity_n_curve, {"ns": [2, 5], "n_runs": 4, "generator": None}),
    (faithfulness.monotonicity_correlation, {"n_samples": 3, "generator": None, "max_rows": 5}),
    (faithfulness.road, {"percentages": (0.2, 0.5), "generator": None, "max_rows": 3}),
    (faithfulness.road_curve, {"percentages": (0.5, 0.9), "output": "accuracy",
                               "noise_std": 0.0}),
    (faithfulness.infidelity, {"n_samples": 4, "generator": None}),
    (complexity.model_effective_complexity, {"n_samples": 2, "eps": 1e-3, "generator": None}),
]


def _call(metric, model, inputs, maps, target, kw, generator):
    kw = dict(kw)
    if "generator" in kw:
        kw["generator"] = generator
    return metric(model, inputs, maps, target, **kw)


def _reference(metric, model, x, scale, maps, kw):
    """The metric sample by sample on the closed-over wrapper, one generator for all."""
    g = gen()
    return torch.cat([_call(metric, Closed(model, scale[i:i + 1]), x[i:i + 1],
                            maps.values[i:i + 1], 0, kw, g) for i in range(N)])


@pytest.mark.filterwarnings("ignore::xprune.metrics.UndefinedScoreWarning")
@pytest.mark.parametrize("metric, kw", MODEL_METRICS, ids=lambda v: getattr(v, "__name__", ""))
def test_case_009_model_metrics_take_a_tuple_as_attribution_does(case, metric, kw):
    """(x, scale) gives each sample's value on the wrapper that closes over its scale."""
    model, x, scale, maps = case
    got = _call(metric, model, (x, scale), maps, 0, kw, gen())
    torch.testing.assert_close(got, _reference(metric, model, x, scale, maps, kw),
                               equal_nan=True)


@pytest.mark.filterwarnings("ignore::xprune.metrics.UndefinedScoreWarning")
@pytest.mark.parametrize("metric, kw", MODEL_METRICS[:4] + MODEL_METRICS[6:7],
                         ids=lambda v: getattr(v, "__name__", ""))
def test_case_009_a_mapping_attributes_the_recorded_input(case, metric, kw):
    """A mapping whose first key is not the attributed one: the Attributions record names it."""
    model, x, scale, _ = case
    keywords = Keywords(model)
    inputs = {"scale": scale, "pixels": x}
    maps = xprune.attribute(keywords, inputs, 0, method="saliency", attribute_to="pixels")
    assert maps.attribute_to == "pixels"
    got = _call(metric, keywords, inputs, maps, 0, kw, gen())
    torch.testing.assert_close(got, _reference(metric, model, x, scale, maps, kw),
                               equal_nan=True)


def test_case_009_the_caller_inputs_and_model_are_unchanged(case):
    """The other inputs pass through: neither they, the attributed input nor the model change."""
    model, x, scale, maps = case
    inputs = {"x": x.clone(), "scale": scale.clone()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    faithfulness.deletion_auc(model, (inputs["x"], inputs["scale"]), maps, 0)
    stability.max_sensitivity(_saliency(model), (inputs["x"], inputs["scale"]), 0, n_samples=2)
    assert torch.equal(inputs["x"], x) and torch.equal(inputs["scale"], scale)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])


def test_case_009_versus_random_passes_the_inputs_through(case):
    model, x, scale, maps = case
    got = controls.versus_random("deletion_auc", model, (x, scale), maps, 0, steps=9,
                                 generator=gen())
    g = gen()
    random_map = controls.random_map_like(maps.values, generator=g)
    want = (faithfulness.deletion_auc(model, (x, scale), maps.values, 0, steps=9)
            - faithfulness.deletion_auc(model, (x, scale), random_map, 0, steps=9))
    torch.testing.assert_close(got, want)


def _saliency(model):
    return lambda inputs, t: xprune.attribute(model, inputs, t, method="saliency")


EXPLAINER_METRICS = [
    (stability.max_sensitivity, {"n_samples": 4, "max_rows": 5}),
    (stability.avg_sensitivity, {"n_samples": 3, "radius": 0.3}),
    (stability.sensitivity_draws, {"n_samples": 2}),
    (stability.local_lipschitz_estimate, {"n_samples": 4, "max_rows": 3}),
]


@pytest.mark.parametrize("metric, kw", EXPLAINER_METRICS, ids=lambda v: getattr(v, "__name__", ""))
@pytest.mark.parametrize("made_by", ["lambda", "xprune.explainer"])
def test_case_009_stability_metrics_take_a_tuple(case, metric, kw, made_by):
    """The explainer gets the structure back, each perturbed row with its own sample's scale."""
    model, x, scale, _ = case

    def explain(m):
        return _saliency(m) if made_by == "lambda" else xprune.explainer(m, "saliency")

    got = metric(explain(model), (x, scale), 0, generator=gen(), **kw)
    g = gen()
    want = torch.cat([metric(explain(Closed(model, scale[i:i + 1])), x[i:i + 1], 0,
                             generator=g, **kw) for i in range(N)])
    torch.testing.assert_close(got, want)


@pytest.mark.filterwarnings("ignore::xprune.metrics.UndefinedScoreWarning")
@pytest.mark.parametrize("metric", [stability.relative_input_stability,
                                    stability.relative_output_stability])
def test_case_009_relative_stability_takes_a_mapping(case, metric):
    model, x, scale, _ = case
    keywords = Keywords(model)
    inputs = {"pixels": x, "scale": scale}
    got = metric(keywords, _saliency(keywords), inputs, 0, n_samples=3, radius=0.05,
                 generator=gen())
    g = gen()
    closed = [Closed(model, scale[i:i + 1]) for i in range(N)]
    want = torch.cat([metric(closed[i], _saliency(closed[i]), x[i:i + 1], 0, n_samples=3,
                             radius=0.05, generator=g)
                      for i in range(N)])
    torch.testing.assert_close(got, want, equal_nan=True)


def test_case_009_inputs_of_different_rows_are_refused_in_the_users_terms(case):
    model, x, scale, maps = case
    with pytest.raises(ValueError, match=r"same number of rows N"):
        faithfulness.deletion_auc(model, (x, scale[:2]), maps, 0)
    with pytest.raises(TypeError, match=r"tensor with a batch axis"):
        stability.max_sensitivity(_saliency(model), (x, 2.0), 0)


def _attribute_fn(m, inputs, t):
    return xprune.attribute(m, inputs, t, method="saliency")


def test_case_009_parameter_randomisation_gives_attribute_fn_every_input(case):
    """The copies' maps come from ``attribute_fn(copy, (x, scale), t)``; reference per sample."""
    from xprune.metrics import sanity

    model, x, scale, _ = case
    got = sanity.parameter_randomisation(model, (x, scale), 0, _attribute_fn, generator=gen())
    want = [sanity.parameter_randomisation(Closed(model, scale[i:i + 1]), x[i:i + 1], 0,
                                           _attribute_fn, generator=gen()) for i in range(N)]
    assert got.layers == [name.removeprefix("model.") for name in want[0].layers]
    torch.testing.assert_close(got.values, torch.cat([w.values for w in want]))


def test_case_009_random_logit_takes_a_mapping(case):
    from xprune.metrics import sanity

    model, x, scale, _ = case
    keywords = Keywords(model)
    got = sanity.random_logit(keywords, {"pixels": x, "scale": scale}, 0, _attribute_fn,
                              generator=gen())
    g = gen()
    want = torch.cat([sanity.random_logit(Closed(model, scale[i:i + 1]), x[i:i + 1], 0,
                                          _attribute_fn, generator=g) for i in range(N)])
    torch.testing.assert_close(got, want)


class Text(nn.Module):
    """forward(input_ids, attention_mask): masked mean of embeddings -> 2 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.head = nn.Embedding(12, 4), nn.Linear(4, 2)

    def forward(self, input_ids, attention_mask):
        m = attention_mask.unsqueeze(-1).to(self.embed.weight.dtype)
        return self.head((self.embed(input_ids) * m).sum(1) / m.sum(1).clamp_min(1))


class ClosedMask(nn.Module):
    def __init__(self, model: nn.Module, mask: torch.Tensor) -> None:
        super().__init__()
        self.model, self.mask = model, mask

    def forward(self, input_ids):
        return self.model(input_ids, self.mask.expand(input_ids.shape[0], -1))


@pytest.fixture(scope="module")
def text():
    torch.manual_seed(1)
    model = Text().double().eval()
    ids = torch.randint(1, 12, (3, 6))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]])
    ids = ids * mask                                                   # padding id 0
    maps = xprune.attribute(model, {"input_ids": ids, "attention_mask": mask}, 1,
                            method="integrated_gradients", params={"n_steps": 8})
    return model, ids, mask, maps


@pytest.mark.filterwarnings("ignore::xprune.metrics.UndefinedScoreWarning")
@pytest.mark.parametrize("metric, kw", [
    (faithfulness.deletion_auc, {}),
    (faithfulness.aopc, {"steps": 4}),
    (faithfulness.faithfulness_correlation, {"n_runs": 5, "subset_size": 2, "generator": None}),
], ids=lambda v: getattr(v, "__name__", ""))
def test_case_009_token_ids_with_their_attention_mask(text, metric, kw):
    """The case's own model, forward(input_ids, attention_mask), and a tokenizer's mapping: ids
    are replaced (ReplaceTokens, id 0), the mask passes through, per sample as closed over."""
    model, ids, mask, maps = text
    got = _call(metric, model, {"input_ids": ids, "attention_mask": mask}, maps, 1, kw, gen())
    g = gen()
    want = torch.cat([_call(metric, ClosedMask(model, mask[i:i + 1]), ids[i:i + 1],
                            maps.values[i:i + 1], 1, kw, g) for i in range(3)])
    torch.testing.assert_close(got, want)


def test_case_009_drop_tokens_in_the_removal_metrics(text):
    """DropTokens sets the mask to 0 at removed tokens: deletion with every token dropped at
    the last step ends at the model's output for an all-zero mask (the head's bias)."""
    from xprune.metrics import DropTokens

    model, ids, mask, maps = text
    inputs = {"input_ids": ids, "attention_mask": mask}
    curve = faithfulness.deletion_curve(model, inputs, maps, 1, removal=DropTokens(),
                                        output="logit")
    torch.testing.assert_close(curve.values[:, 0], model(ids, mask)[:, 1])
    torch.testing.assert_close(curve.values[:, -1], model.head.bias[1].expand(3).detach())
    for j in range(1, curve.values.shape[1]):          # literal: drop the top-j tokens
        rank = maps.values.argsort(dim=1, descending=True, stable=True)[:, :j]
        kept = mask.clone().scatter_(1, rank, 0)
        torch.testing.assert_close(curve.values[:, j], model(ids, kept)[:, 1])
    with pytest.raises(ValueError, match=r"cannot take: use removal=ReplaceTokens"):
        complexity.model_effective_complexity(model, inputs, maps, 1, removal=DropTokens())
