"""Every registered metric, called as the analysis calls it: shape, dtype, metadata, no side
effects, a sample's score independent of its batch-mates, and the same seed the same scores."""

import copy
import functools
import inspect
import math
import warnings

import pytest
import torch

import xprune
from xprune import metrics as M

# keep the expensive ones small; each entry: keyword arguments for a 16-sample digits batch
PARAMS = {
    "faithfulness_correlation": {"n_runs": 10},
    "sensitivity_n": {"n_runs": 10},
    "infidelity": {"n_samples": 4},
    "monotonicity_correlation": {"n_samples": 2},
    "model_effective_complexity": {"n_samples": 2},
    "max_sensitivity": {"n_samples": 3},
    "avg_sensitivity": {"n_samples": 3},
    "local_lipschitz_estimate": {"n_samples": 3},
    "relative_input_stability": {"n_samples": 3},
    "relative_output_stability": {"n_samples": 3},
    "road": {"percentages": (0.2, 0.5)},
    # beam search over 64 pixels: two small bins and a beam of one keep it to ~1,000 rows a sample
    "normalised_comprehensiveness": {"fractions": (0.05, 0.1), "beam_size": 1},
    "normalised_sufficiency": {"fractions": (0.05, 0.1), "beam_size": 1},
}


def _call(name, model, x, a, t, seed=0):
    info = M.METRICS[name]
    kwargs = dict(PARAMS.get(name, {}))
    if "generator" in inspect.signature(info.fn).parameters:
        kwargs["generator"] = torch.Generator().manual_seed(seed)
    explain = xprune.explainer(model, "saliency", params={"abs": False})
    attribute_fn = functools.partial(xprune.attribute, method="saliency", params={"abs": False})
    if info.kind == "map":
        return info.fn(a, **kwargs)
    if info.kind == "pair":
        return info.fn(a, a.flip(0), **kwargs)
    if info.kind == "model":
        return info.fn(model, x, a, t, **kwargs)
    if info.kind == "explainer":
        return info.fn(explain, x, t, **kwargs)
    if info.kind == "model_explainer":
        return info.fn(model, explain, x, t, **kwargs)
    if info.kind == "rationale":  # the drawn strokes of each digit stand in for a rationale
        return info.fn(a, x[:, 0] > 0.5, **kwargs)
    assert info.kind == "randomisation"
    return info.fn(model, x, t, attribute_fn, **kwargs)


@pytest.fixture(scope="module")
def setup(digits_cnn, digits_batch):
    x = digits_batch[0][:16].clone()
    t = digits_cnn(x).argmax(dim=1)
    a = xprune.attribute(digits_cnn, x, t, "saliency", params={"abs": False}).values
    return digits_cnn, x, a, t


@pytest.fixture(scope="module")
def setup64(setup):
    """The same model, inputs and maps in float64, for the batch-independence check."""
    model, x, a, t = setup
    return copy.deepcopy(model).double(), x.double(), a.double(), t


@pytest.mark.parametrize("name", sorted(M.METRICS))
def test_registered_metric_contract(setup, setup64, name):
    model, x, a, t = setup
    info = M.METRICS[name]
    assert info.category in ("complexity", "faithfulness", "agreement", "stability",
                             "plausibility", "randomisation")
    assert info.reference and isinstance(info.higher_is_better, bool)
    low, high = info.range
    x0, a0 = x.clone(), a.clone()
    params0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings():  # undefined samples warn; their NaN is checked below
        warnings.simplefilter("ignore")
        batch = _call(name, model, x, a, t)
        again = _call(name, model, x, a, t)
        alone = _call(name, model, x[:2], a[:2], t[:2])
    assert batch.shape == (16,) and batch.dtype == torch.float64
    # inputs, maps and weights untouched
    assert torch.equal(x, x0) and torch.equal(a, a0)
    assert all(torch.equal(v, params0[k]) for k, v in model.state_dict().items())
    torch.testing.assert_close(again, batch, rtol=0, atol=0, equal_nan=True)  # seeded
    if info.kind in ("map", "rationale"):
        torch.testing.assert_close(alone, batch[:2], rtol=1e-6, atol=1e-6, equal_nan=True)
    elif info.kind != "pair":  # a pair metric here compares with a flipped batch
        # A sample's score does not depend on its batch-mates (shared/cases/001), but a batch of
        # 2 and one of 16 split float32 kernels differently, and some formulas magnify that
        # rounding (relative output stability divides by logit differences of ~1e-3). In
        # float64 that rounding is ~1e-13 after magnification, so 1e-6 tests the dependence.
        model64, x64, a64, t64 = setup64
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            batch64 = _call(name, model64, x64, a64, t64)
            alone64 = _call(name, model64, x64[:2], a64[:2], t64[:2])
        torch.testing.assert_close(alone64, batch64[:2], rtol=1e-6, atol=1e-6, equal_nan=True)
    finite = batch[torch.isfinite(batch)]
    assert finite.numel() > 0
    assert bool((finite >= low - 1e-9).all()) and bool((finite <= high + 1e-9).all())
    if not math.isinf(high) and info.category == "agreement":  # a map against itself
        self_score = _call_self(name, a)
        torch.testing.assert_close(self_score, torch.ones_like(self_score), equal_nan=True)


def _call_self(name, a):
    info = M.METRICS[name]
    return info.fn(a, a, **PARAMS.get(name, {}))



# --- names from the peer tools (issue 21, item 6) -------------------------------------------

@pytest.mark.parametrize("alias,name", [
    ("pixel_flipping", "deletion_auc"),            # Bach et al. 2015; Quantus PixelFlipping
    ("PixelFlipping", "deletion_auc"),
    ("region_perturbation", "aopc"),               # Samek et al. 2017; Quantus
    ("selectivity", "deletion_auc"),               # Montavon et al. 2018; Quantus
    ("sparseness", "gini_index"),                  # Quantus Sparseness
    ("Complexity", "entropy_complexity"),          # Quantus Complexity
    ("sensitivity_max", "max_sensitivity"),        # Captum
    ("MaxSensitivity", "max_sensitivity"),         # Quantus, a registered name already
    ("FaithfulnessCorrelation", "faithfulness_correlation"),
    ("MonotonicityCorrelation", "monotonicity_correlation"),
    ("LocalLipschitzEstimate", "local_lipschitz_estimate"),
    ("ROAD", "road"),
    ("Infidelity", "infidelity"),                  # Quantus; Captum's infidelity
    ("RandomLogit", "random_logit"),
    ("ModelParameterRandomisation", "model_parameter_randomisation"),
    ("MPRT", "model_parameter_randomisation"),
    ("model-parameter-randomization", "model_parameter_randomisation"),
])
def test_peer_tool_names_resolve_to_xprunes_metric(alias, name):
    assert M.get_metric(alias) is M.METRICS[name]
    assert M.resolve_metric_name(alias) == name
    assert all(target in M.METRICS for target in M.ALIASES.values())
    assert not set(M.ALIASES) & set(M.METRICS)  # an alias never hides a metric


def test_unknown_names_say_what_they_meant():
    with pytest.raises(ValueError, match=r"got 'pixel_flip'\. Did you mean 'pixel_flipping' "
                                         r"\(xprune's 'deletion_auc'\)\?"):
        M.get_metric("pixel_flip")
    with pytest.raises(ValueError, match=r"got 'spearmann'\. Did you mean 'spearman'\?"):
        M.get_metric("spearmann")
    with pytest.raises(ValueError, match=r"xprune has no 'faithfulness_estimate' \(a metric of "
                                         r"the peer tools\); the nearest it computes is "
                                         r"'faithfulness_correlation'"):
        M.get_metric("FaithfulnessEstimate")


def test_configs_and_the_cli_list_accept_aliases(capsys):
    from xprune.cli import main
    from xprune.config import MetricsConfig

    config = MetricsConfig(names=["pixel_flipping", "Sparseness", "spearman"],
                           versus_random=["selectivity"],
                           params={"sensitivity_max": {"n_samples": 3}})
    assert config.names == ["deletion_auc", "gini_index", "spearman"]
    assert config.versus_random == ["deletion_auc"]
    assert config.params == {"max_sensitivity": {"n_samples": 3}}
    with pytest.raises(ValueError, match=r"Expected `metrics.names` to name one of .* got "
                                         r"'sparsenes'\. Did you mean 'sparseness' \(xprune's "
                                         r"'gini_index'\)\?"):
        MetricsConfig(names=["sparsenes"])
    with pytest.raises(ValueError, match="Expected distinct `metrics.names`"):
        MetricsConfig(names=["pixel_flipping", "deletion_auc"])
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "pixel_flipping                   -> deletion_auc" in out
    assert "sensitivity_max                  -> max_sensitivity" in out


# --- undefined scores (issue 21, item 3) ----------------------------------------------------

def test_case_021_constant_maps_are_nan_with_one_warning_naming_metric_count_reason():
    """../shared/cases/021-constant-map-nan.md: spearman(a, a) and top_k_intersection(a, a, k=3)
    of all-zero maps are NaN with one warning per call giving the metric, count and reason."""
    a = torch.rand(4, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    a[1] = 0.0
    a[3] = 0.5  # constant but not zero: ranks undefined, top-k defined
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rho = M.spearman(a, a)
        top = M.top_k_intersection(a, a, k=3)
    assert [str(w.message) for w in caught] == [
        "2 sample(s) have an undefined spearman (NaN; 2 of 4 in this call): a map is constant "
        "(e.g. all zero), so its ranks are all tied.",
        "1 sample(s) have an undefined top_k_intersection (NaN; 1 of 4 in this call): both "
        "maps are all zero, so both top-k sets are empty."]
    assert all(issubclass(w.category, M.UndefinedScoreWarning) for w in caught)
    assert caught[0].message.count == 2 and caught[0].message.metric == "spearman"
    torch.testing.assert_close(rho, torch.tensor([1.0, math.nan, 1.0, math.nan],
                                                 dtype=torch.float64), equal_nan=True)
    torch.testing.assert_close(top, torch.tensor([1.0, math.nan, 1.0, 1.0],
                                                 dtype=torch.float64), equal_nan=True)
    # a metric built from several inner calls still warns once, with its own count
    fg = torch.ones(4, 9, dtype=torch.bool)
    fg[2] = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        M.on_features(M.spearman, a, a, fg)
    assert len(caught) == 1 and caught[0].message.count == 3
    assert "a map is constant" in caught[0].message.reason
    assert "no feature selected" in caught[0].message.reason
    # every defined score: no warning at all
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        M.spearman(a[[0, 2]], a[[0, 2]].flip(0))


@pytest.mark.parametrize("name", sorted(n for n, i in M.METRICS.items() if i.kind == "map"))
def test_all_zero_maps_are_undefined_for_every_map_metric_but_counts(name):
    """An all-zero map (a dead or saturated model) has no sparsity or complexity: every map
    metric but the counts (effective complexity: 0 features used) says so the same way."""
    a = torch.zeros(2, 1, 4, 4)
    a[0, 0, 0, 0] = 1.0
    info = M.METRICS[name]
    if name == "effective_complexity":
        torch.testing.assert_close(info.fn(a), torch.tensor([1.0, 0.0], dtype=torch.float64))
        return
    with pytest.warns(M.UndefinedScoreWarning, match=f"undefined {name} .*all zero"):
        out = info.fn(a)
    assert bool(torch.isfinite(out[0])) and bool(torch.isnan(out[1]))
    assert info.undefined == "all-zero map"
