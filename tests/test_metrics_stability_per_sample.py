"""../shared/cases/028-per-sample-explainer-args.md: per-sample explainer arguments follow their rows.

A baseline of shape (N, *F), one per input, must reach every row a metric
builds from that input: the noisy copies of max-sensitivity and the local
Lipschitz estimate, the chunks of ``attribute`` and of the metrics' explainer
calls. The references are literal: each sample alone, with its own baseline,
explained by Captum's IntegratedGradients directly.
"""

import pytest
import torch
from captum.attr import DeepLift, IntegratedGradients, Occlusion
from torch import nn

import xprune
from xprune.metrics import stability

N_STEPS = 8
S = 6
pytestmark = pytest.mark.filterwarnings("ignore:Integrated Gradients' median",
                                        "ignore:Input Tensor 0 did not", "ignore:Setting forward",
                                        "ignore:You are providing multiple inputs")


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(3 * 6 * 6, 3)).double().eval()
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    baselines = torch.randn(4, 1, 8, 8, dtype=torch.float64)     # one baseline per input
    target = torch.tensor([0, 2, 1, 2])
    return model, x, baselines, target


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def ig_explainer(model, baselines, **kw):
    return xprune.explainer(model, "integrated_gradients",
                            params={"baseline": baselines, "n_steps": N_STEPS}, **kw)


def captum_ig(model, rows, baseline, target):
    """Captum's IG of ``rows`` (M, *F), all with the one ``baseline`` (*F), for class ``target``."""
    return IntegratedGradients(model).attribute(
        rows, baselines=baseline.expand_as(rows).contiguous(), target=target, n_steps=N_STEPS)


def literal_scores(model, x, baselines, target, *, metric):
    """Sample by sample: noise drawn as the metrics draw it (sample by sample from one
    generator), every map of sample i against baseline i, the paper's formula."""
    gen, out = seeded(0), []
    for i in range(x.shape[0]):
        if metric == "max_sensitivity":
            noise = (torch.rand(S, *x.shape[1:], generator=gen) * 2 - 1) * 0.1
        else:
            noise = torch.randn(S, *x.shape[1:], generator=gen) * 0.1
        noise = noise.double()
        phi = captum_ig(model, x[i:i + 1], baselines[i], int(target[i])).flatten()
        phis = captum_ig(model, x[i] + noise, baselines[i], int(target[i])).reshape(S, -1)
        change = (phis - phi).norm(dim=1)
        if metric == "max_sensitivity":
            out.append((change / phi.norm()).max())
        else:
            out.append((change / noise.reshape(S, -1).norm(dim=1)).max())
    return torch.stack(out)


METRICS = {
    "max_sensitivity": lambda e, x, t, **kw: stability.max_sensitivity(
        e, x, t, radius=0.1, n_samples=S, generator=seeded(0), **kw),
    "local_lipschitz_estimate": lambda e, x, t, **kw: stability.local_lipschitz_estimate(
        e, x, t, noise_std=0.1, n_samples=S, generator=seeded(0), **kw),
}


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_case_028_per_sample_baseline_equals_the_literal_per_sample_computation(case, metric):
    model, x, baselines, target = case
    got = METRICS[metric](ig_explainer(model, baselines), x, target)
    assert got.shape == (4,)
    torch.testing.assert_close(got, literal_scores(model, x, baselines, target, metric=metric))


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_case_028_chunked_calls_equal_one_call(case, metric):
    """Chunks that split a sample's noisy copies (metric: 5 rows per call; explainer: 3 rows
    per pass) give the scores of one call; so do the caller's maps (``attributions=``)."""
    model, x, baselines, target = case
    whole = METRICS[metric](ig_explainer(model, baselines), x, target)
    chunked = METRICS[metric](ig_explainer(model, baselines, max_rows=3), x, target,
                              max_rows=5)
    torch.testing.assert_close(chunked, whole)
    given = xprune.attribute(model, x, target, "integrated_gradients",
                             params={"baseline": baselines, "n_steps": N_STEPS})
    torch.testing.assert_close(METRICS[metric](ig_explainer(model, baselines), x, target,
                                               attributions=given, max_rows=5), whole)


def test_case_028_relative_stability_carries_the_baseline(case):
    """Relative input stability repeats the inputs as well: the batch's score equals each
    sample's alone with its own baseline (one generator, drawn sample by sample)."""
    model, x, baselines, target = case
    kw = dict(radius=0.05, n_samples=S)
    whole = stability.relative_input_stability(model, ig_explainer(model, baselines), x, target,
                                               generator=seeded(0), max_rows=5, **kw)
    gen = seeded(0)
    alone = torch.cat([stability.relative_input_stability(
        model, ig_explainer(model, baselines[i]), x[i:i + 1], target[i:i + 1], generator=gen,
        **kw) for i in range(4)])
    torch.testing.assert_close(whole, alone)


@pytest.mark.parametrize("method, reference", [
    ("integrated_gradients", lambda m, r, b, t: IntegratedGradients(m).attribute(
        r, baselines=b, target=t, n_steps=N_STEPS)),
    ("deeplift", lambda m, r, b, t: DeepLift(m).attribute(r, baselines=b, target=t)),
    ("occlusion", lambda m, r, b, t: Occlusion(m).attribute(
        r, sliding_window_shapes=(1, 2, 2), strides=(1, 1, 1), baselines=b, target=t)),
])
@pytest.mark.parametrize("max_rows", [4096, 2])
def test_case_028_attribute_gives_each_chunk_its_samples_baselines(case, method, reference,
                                                                   max_rows):
    model, x, baselines, target = case
    params = {"baseline": baselines}
    if method == "integrated_gradients":
        params["n_steps"] = N_STEPS
    rows = 2 if method == "deeplift" else 1
    got = xprune.attribute(model, x, target, method, params=params, max_rows=max_rows * rows)
    want = torch.cat([reference(model, x[i:i + 1], baselines[i:i + 1], int(target[i]))
                      for i in range(4)])
    torch.testing.assert_close(got.values, want.to(got.values.dtype))  # Captum's occlusion: float32


def test_case_028_explainer_rows_pick_the_samples_baselines(case):
    """``explain_fn(x_rows, t, rows=r)`` explains row j against the baseline of sample r[j]."""
    model, x, baselines, target = case
    rows = torch.tensor([3, 3, 0, 1, 3])
    got = ig_explainer(model, baselines)(x[rows], target[rows], rows=rows)
    want = torch.cat([captum_ig(model, x[i:i + 1], baselines[i], int(target[i]))
                      for i in rows.tolist()])
    torch.testing.assert_close(got, want)


def test_one_baseline_for_all_as_1_by_f_equals_f(case):
    """A per-batch baseline (1, *F) is one for every input, as (*F) is, repeats included."""
    model, x, baselines, target = case
    one = baselines[:1]
    a = stability.max_sensitivity(ig_explainer(model, one), x, target, n_samples=3,
                                  generator=seeded(0))
    b = stability.max_sensitivity(ig_explainer(model, one[0]), x, target, n_samples=3,
                                  generator=seeded(0))
    assert torch.equal(a, b)


def test_case_028_counts_that_fit_nothing_are_named(case):
    model, x, baselines, target = case
    with pytest.raises(ValueError, match=r"\(1, 8, 8\).*\(1, 1, 8, 8\).*\(4, 1, 8, 8\) \(one "
                                         r"per input\), got \(3, 1, 8, 8\)"):
        xprune.attribute(model, x, target, "integrated_gradients",
                         params={"baseline": baselines[:3], "n_steps": 2})
    e = ig_explainer(model, baselines[:3])
    with pytest.raises(ValueError, match=r"index the 3 samples .* got sample index 3"):
        stability.max_sensitivity(e, x, target, n_samples=2)
    with pytest.raises(ValueError, match=r"Expected `rows` to be the sample index"):
        ig_explainer(model, baselines)(x, target, rows=torch.tensor([0.0, 1.0, 2.0, 3.0]))


class _MaskedBag(nn.Module):
    """forward(input_ids, attention_mask): masked mean of the embeddings, then a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.embedding = nn.Embedding(20, 4).double()
        self.fc = nn.Linear(4, 3).double()

    def forward(self, input_ids, attention_mask):
        m = attention_mask.unsqueeze(-1).double()
        return self.fc((self.embedding(input_ids) * m).sum(dim=1) / m.sum(dim=1))


@pytest.mark.parametrize("as_mapping", [True, False])
def test_case_028_attention_mask_follows_the_substituted_token_rows(as_mapping):
    """Token ids with an attention mask (N, T) bound to the explainer (``forward_args``):
    max-sensitivity's substituted copies of sample i are explained with mask i; the scores
    equal each sample alone with its own mask (one generator, drawn sample by sample), and
    chunked calls equal one call."""
    model = _MaskedBag().eval()
    ids = torch.tensor([[3, 7, 1, 9, 0, 0], [5, 2, 8, 4, 6, 11], [13, 4, 0, 0, 0, 0]])
    mask = (ids != 0).long()
    target = torch.tensor([0, 1, 2])

    def make(m, **kw):
        args = {"forward_args": {"attention_mask": m}, "attribute_to": "input_ids"} \
            if as_mapping else {"forward_args": (m,)}
        return xprune.explainer(model, "integrated_gradients", params={"n_steps": 8},
                                tokens={"pad_token_id": 0}, **args, **kw)

    kw = dict(radius=0.5, n_samples=4)
    whole = stability.max_sensitivity(make(mask), ids, target, generator=seeded(0), **kw)
    gen = seeded(0)
    alone = torch.cat([stability.max_sensitivity(make(mask[i:i + 1]), ids[i:i + 1],
                                                 target[i:i + 1], generator=gen, **kw)
                       for i in range(3)])
    torch.testing.assert_close(whole, alone)
    chunked = stability.max_sensitivity(make(mask, max_rows=3), ids, target,
                                        generator=seeded(0), max_rows=5, **kw)
    torch.testing.assert_close(chunked, whole)
    assert bool(torch.isfinite(whole).all()) and bool((whole > 0).all())


def test_forward_args_errors_name_the_argument(case):
    model, x, baselines, target = case
    with pytest.raises(ValueError, match=r"Expected `attribute_to` to name the attributed "
                                         r"keyword argument"):
        xprune.explainer(model, forward_args={"attention_mask": torch.ones(4, 6)})
    e = xprune.explainer(model, "saliency", forward_args=(torch.ones(4, 2),))
    with pytest.raises(ValueError, match=r"Expected `inputs` with the 4 rows of `forward_args`, "
                                         r"got 2; pass `rows`"):
        e(x[:2], target[:2])


def _groupings():
    """Four different groupings of an 8x8 image, one per input: 2x2 patches, rows, columns,
    quadrants. A LIME map is constant over each group of the mask it was computed with."""
    r, c = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    masks = [(r // 2) * 4 + c // 2, r, c, (r // 4) * 2 + c // 4]
    return torch.stack(masks)[:, None]                                       # (4, 1, 8, 8)


def _constant_on_groups(maps: torch.Tensor, masks: torch.Tensor) -> bool:
    """Whether each map is constant within each group of its own mask (ties allowed)."""
    for a, m in zip(maps, masks, strict=True):
        for g in m.unique():
            vals = a[m == g]
            if not bool((vals == vals[0]).all()):
                return False
    return True


class RecordingExplainer:
    """Passes ``rows`` through to an xprune explainer and keeps every call's maps and rows."""

    per_sample_rows = True

    def __init__(self, explain_fn):
        self.explain_fn, self.calls = explain_fn, []

    def __call__(self, x, target, *, rows):
        out = self.explain_fn(x, target, rows=rows)
        self.calls.append((out.detach(), rows.clone()))
        return out


@pytest.mark.parametrize("method", ["lime", "kernel_shap"])
def test_case_028_per_sample_feature_mask_follows_its_rows(case, method):
    """A feature mask (N, *F) for LIME and KernelSHAP: ``attribute`` equals Captum's class on
    the same inputs, mask and seed; every map, the perturbed rows of max-sensitivity included
    (chunked: 5 rows per call), is constant over the groups of its own sample's mask, which
    fails when a row gets another sample's grouping (the masks differ per sample)."""
    import numpy as np
    from captum._utils.models.linear_model import SkLearnRidge
    from captum.attr import KernelShap, Lime

    model, x, _, target = case
    masks = _groupings()
    assert not _constant_on_groups(torch.randn(4, 1, 8, 8, dtype=torch.float64), masks)
    params = {"feature_mask": masks, "n_samples": 40, "seed": 3}
    got = xprune.attribute(model, x, target, method, params=params)
    assert _constant_on_groups(got.values, masks)
    chunk_seed = 3 * 1_000_003 + 0  # xprune seeds torch's and NumPy's RNGs per chunk (here 0)
    torch.manual_seed(chunk_seed)
    np.random.seed(chunk_seed)  # noqa: NPY002
    ref = (KernelShap(model) if method == "kernel_shap"
           else Lime(model, interpretable_model=SkLearnRidge(alpha=1.0))).attribute(
        x, baselines=0.0, target=target, feature_mask=masks, n_samples=40,
        perturbations_per_eval=40)
    torch.testing.assert_close(got.values, ref.to(got.values.dtype))
    recorder = RecordingExplainer(xprune.explainer(model, method, params=params))
    stability.max_sensitivity(recorder, x, target, n_samples=3, max_rows=5,
                              generator=seeded(0))
    rows_seen = torch.cat([rows for _, rows in recorder.calls])
    assert sorted(rows_seen.tolist()) == sorted([0, 1, 2, 3] * 4)   # 4 unperturbed + 4 x 3
    for maps, rows in recorder.calls:
        assert _constant_on_groups(maps, masks[rows])
