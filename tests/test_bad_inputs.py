"""Bad input gets a clear error naming the argument, or a documented, correct result.

One matrix over the public functions that take a model, inputs, attributions
and targets. Each row is a kind of bad input; each column a function.
"""

import pytest
import torch
from torch import nn

import xprune
from xprune import metrics as M
from xprune.models import DigitsCNN

N = 4


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = DigitsCNN().eval()
    x = torch.rand(N, 1, 8, 8)
    t = torch.tensor([0, 1, 2, 3])
    a = xprune.attribute(model, x, t, "saliency").values
    return model, x, t, a


def g():
    return torch.Generator().manual_seed(0)


# name -> f(model, x, a, t) calling the function with those arguments
FUNCTIONS = {
    "attribute": lambda m, x, a, t: xprune.attribute(m, x, t, "saliency").values,
    "integrated_gradients": lambda m, x, a, t: xprune.attribute(
        m, x, t, params={"n_steps": 4, "delta_tolerance": float("inf")}).values,
    "gini_index": lambda m, x, a, t: M.gini_index(a),
    "deletion_auc": lambda m, x, a, t: M.deletion_auc(m, x, a, t),
    "faithfulness_correlation": lambda m, x, a, t: M.faithfulness_correlation(
        m, x, a, t, n_runs=10, generator=g()),
    "spearman": lambda m, x, a, t: M.spearman(a, a.flip(-1)),
    "top_k_intersection": lambda m, x, a, t: M.top_k_intersection(a, a.flip(-1)),
    "max_sensitivity": lambda m, x, a, t: M.max_sensitivity(
        xprune.explainer(m, "saliency"), x, t, n_samples=3, generator=g()),
}
TAKES_INPUTS = ["attribute", "integrated_gradients", "deletion_auc", "faithfulness_correlation",
                "max_sensitivity"]
TAKES_MAPS = ["gini_index", "deletion_auc", "faithfulness_correlation", "spearman",
              "top_k_intersection"]
TAKES_MODEL = ["attribute", "integrated_gradients", "deletion_auc", "faithfulness_correlation",
               "max_sensitivity"]


def _with(x, value):
    x = x.clone()
    x.view(-1)[5] = value
    return x


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("name", TAKES_INPUTS)
def test_non_finite_inputs(setup, name, bad):
    model, x, t, a = setup
    with pytest.raises(ValueError, match="Expected `inputs` to be finite, got 1 NaN or Inf"):
        FUNCTIONS[name](model, _with(x, bad), a, t)


@pytest.mark.parametrize("name", TAKES_MAPS)
def test_non_finite_attributions(setup, name):
    model, x, t, a = setup
    with pytest.raises(ValueError, match=r"Expected `(attributions|a)` to be finite"):
        FUNCTIONS[name](model, x, _with(a, float("nan")), t)


@pytest.mark.parametrize("name", TAKES_INPUTS)
def test_wrong_dimensions_and_empty_batches(setup, name):
    model, x, t, a = setup
    with pytest.raises(ValueError, match=r"at least 2 dimensions \(N, ...\), got shape \(64,\)"):
        FUNCTIONS[name](model, x[0].reshape(-1), a, t)
    with pytest.raises(ValueError, match="at least one sample, got an empty batch"):
        FUNCTIONS[name](model, x[:0], a[:0], t[:0])


@pytest.mark.parametrize("name", ["deletion_auc", "faithfulness_correlation"])
def test_attributions_of_another_shape(setup, name):
    model, x, t, a = setup
    with pytest.raises(ValueError, match=r"`inputs` and `attributions` to have the same shape, "
                                         r"got \(4, 1, 8, 8\) and \(4, 1, 8, 7\)"):
        FUNCTIONS[name](model, x, a[..., :7], t)


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_batch_of_one(setup, name):
    model, x, t, a = setup
    out = FUNCTIONS[name](model, x[:1], a[:1], t[:1])
    assert out.shape[0] == 1


@pytest.mark.parametrize("name", TAKES_MODEL)
def test_integer_and_float64_inputs_are_cast_to_the_model_dtype(setup, name):
    model, x, t, a = setup
    pixels = (x * 16).round()
    expected = FUNCTIONS[name](model, pixels, a, t)
    as_int = FUNCTIONS[name](model, pixels.long(), a, t)
    as_double = FUNCTIONS[name](model, pixels.double(), a.double(), t)
    torch.testing.assert_close(as_int.double(), expected.double(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(as_double.double(), expected.double(), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", ["attribute", "deletion_auc", "faithfulness_correlation"])
@pytest.mark.parametrize("target, message", [
    (torch.tensor([0, 1, 2, 10]), r"in \[0, 10\) for a model with 10 outputs, got values "
                                  r"from 0 to 10"),
    (torch.tensor([0, 1]), r"of shape \(4,\), got shape \(2,\)"),
    (None, "for a model with 10 outputs: pass one class index"),
    (torch.tensor([0.0, 1.0, 2.0, 3.0]), "integer class indices"),
])
def test_bad_targets(setup, name, target, message):
    model, x, _, a = setup
    with pytest.raises(ValueError, match=message):
        FUNCTIONS[name](model, x, a, target)


def test_bad_targets_for_the_explainer(setup):
    model, x, _, a = setup
    with pytest.raises(ValueError, match=r"class indices of shape \(4,\) for the explainer"):
        FUNCTIONS["max_sensitivity"](model, x, a, None)


@pytest.mark.parametrize("name", TAKES_MODEL)
def test_model_returning_a_tuple_is_explained_by_its_first_element(setup, name):
    """A tuple output (as many Hugging Face models return) is read as (logits, ...)."""
    _, x, t, a = setup

    class TupleModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = DigitsCNN()

        def forward(self, inputs):
            return self.net(inputs), None

    model = TupleModel().eval()
    torch.testing.assert_close(FUNCTIONS[name](model, x, a, t), FUNCTIONS[name](model.net, x, a, t))


@pytest.mark.parametrize("name", TAKES_MODEL)
def test_model_returning_something_else_names_what_it_returned(setup, name):
    _, x, t, a = setup

    class ListModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = DigitsCNN()

        def forward(self, inputs):
            return [self.net(inputs)]

    with pytest.raises(ValueError, match="ListModel.forward to return a tensor of logits "
                                         r"\(N, C\), a ModelOutput .* got list"):
        FUNCTIONS[name](ListModel(), x, a, t)


@pytest.mark.parametrize("name", TAKES_MODEL)
def test_train_mode_model_gives_eval_results_and_keeps_its_mode(setup, name):
    _, x, t, a = setup
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Dropout(0.5), nn.Flatten(), nn.Linear(256, 10))
    model(torch.rand(32, 1, 8, 8))  # give BatchNorm running statistics
    model.eval()
    expected = FUNCTIONS[name](model, x, a, t)
    model.train()
    got = FUNCTIONS[name](model, x, a, t)
    torch.testing.assert_close(got, expected)
    assert all(m.training for m in model.modules())


@pytest.mark.parametrize("call, message", [
    (lambda m, x, a, t: xprune.prune(m, 1.0), r"`amount` in \[0.0, 1.0\), got 1.0"),
    (lambda m, x, a, t: xprune.attribute(m, x, t, params={"n_steps": -1}),
     "`n_steps` to be an integer >= 1, got -1"),
    (lambda m, x, a, t: M.max_sensitivity(xprune.explainer(m, "saliency"), x, t, radius=-0.1),
     "`radius` > 0, got -0.1"),
    (lambda m, x, a, t: M.top_k_intersection(a, a, k=0), r"`k` to be an integer in \[1, 64\]"),
    (lambda m, x, a, t: M.deletion_auc(m, x, a, t, steps=0), r"`steps` to be an integer in"),
    (lambda m, x, a, t: M.faithfulness_correlation(m, x, a, t, subset_size=64),
     r"`subset_size` to be an integer in \[1, 64\) for inputs with 64 features, got 64"),
    (lambda m, x, a, t: xprune.attribute(m, x, t, max_rows=0), "`max_rows` to be an integer"),
    (lambda m, x, a, t: xprune.attribute(m, x, t, output="softmax"), "`output` in"),
])
def test_parameters_out_of_range(setup, call, message):
    model, x, t, a = setup
    with pytest.raises(ValueError, match=message):
        call(model, x, a, t)


def test_more_bad_inputs_found_by_a_new_user(setup):
    model, x, t, a = setup
    one_output = nn.Linear(3, 1)
    with pytest.raises(ValueError, match="softmax of a single output is constant"):
        xprune.attribute(one_output, torch.rand(2, 3), None, "saliency", output="probability")
    half = xprune.attribute(model, x.half(), t, "saliency")
    assert half.values.dtype == torch.float32  # computed in float32, never squeezed to float16
    record = xprune.attribute(model, x, t, "saliency")
    with pytest.raises(ValueError, match="record was computed on other inputs"):
        M.deletion_auc(model, torch.rand_like(x), record, t)
    with pytest.raises(TypeError, match="`model` to be a torch.nn.Module, got str"):
        xprune.prune("model", 0.5)
    with pytest.raises(ValueError, match="sees no CUDA device"):
        if not torch.cuda.is_available():
            xprune.attribute(model, x, t, "saliency", device="cuda")
        else:
            raise ValueError("sees no CUDA device")  # nothing to test with a GPU present


@pytest.mark.parametrize("section, values, message", [
    ("pruning", {"sparsities": [0.5, 0.5]}, "distinct `pruning.sparsities`"),
    ("attribution", {"methods": ["saliency", "saliency"]}, "distinct `attribution.methods`"),
    ("attribution", {"methods": "saliency"}, "a list of names"),
    ("train", {"lr": "fast"}, "`train.lr` to be a positive number"),
    ("controls", {"other_seed": "no"}, "`controls.other_seed` to be true or false"),
    ("metrics", {"top_k": 0.0}, r"`metrics.top_k` in \(0, 1\]"),
    ("metrics", {"sensitivity_radius": -1}, "`metrics.sensitivity_radius` to be a positive"),
    ("report", {"latency_batch": 0}, "`report.latency_batch` to be an integer >= 1"),
])
def test_config_values_are_checked_before_any_work(section, values, message):
    from xprune.config import AnalysisConfig

    with pytest.raises(ValueError, match=message):
        AnalysisConfig.from_dict({section: values})


def test_case_026_ig_steps_whose_nodes_would_hang_are_refused_at_once(setup):
    """../shared/cases/026-ig-steps-hang.md: n_steps = 20000 with Captum's default
    Gauss-Legendre rule used to run for minutes; it is refused in well under a second with the
    limit and the alternative, from the API and from a config."""
    import time

    from xprune.attribution._methods import MAX_GAUSS_LEGENDRE_STEPS
    from xprune.config import AnalysisConfig

    model, x, t, _ = setup
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"Expected `n_steps` <= 1024 with integration = "
                                         r"'gausslegendre', got 20000: .*leggauss.*Set "
                                         r"`integration` = 'riemann_trapezoid'"):
        xprune.attribute(model, x[:2], t[:2], "integrated_gradients",
                         params={"n_steps": 20000})
    assert time.perf_counter() - start < 1.0
    with pytest.raises(ValueError, match=r"In \[attribution.params.integrated_gradients\]: "
                                         r"Expected `n_steps` <= 1024"):
        AnalysisConfig.from_dict({"attribution": {"params": {
            "integrated_gradients": {"n_steps": 20000}}}})
    # the limit itself, and any count with a Riemann rule (its nodes cost nothing), are fine
    AnalysisConfig.from_dict({"attribution": {"params": {"integrated_gradients": {
        "n_steps": MAX_GAUSS_LEGENDRE_STEPS}}}})
    riemann = xprune.attribute(model, x[:1], t[:1], "integrated_gradients", params={
        "n_steps": 2000, "integration": "riemann_trapezoid", "delta_tolerance": float("inf")})
    assert riemann.values.shape == (1, 1, 8, 8)
    with pytest.raises(ValueError, match=r"Expected `n_steps` <= 1024"):
        xprune.attribute(model, x[:2], t[:2], "integrated_gradients",
                         params={"n_steps": 1025})


@pytest.mark.parametrize("sigma", [0, 0.0, -1.0, float("nan"), True, "1"])
def test_blur_sigma_must_be_positive(setup, sigma):
    """A width of 0 "blurs" an input into itself: the baseline is the input and every IG map
    was silently 0 (issue 21)."""
    from xprune.attribution._baselines import make_baseline

    model, x, t, _ = setup
    for method in ("integrated_gradients", "deeplift", "occlusion"):
        with pytest.raises(ValueError, match=r"Expected `blur_sigma` to be a finite number > 0 "
                                             r"\(pixels\), got"):
            xprune.attribute(model, x, t, method, params={"baseline": "blur",
                                                          "blur_sigma": sigma})
    with pytest.raises(ValueError, match="Expected `blur_sigma` to be a finite number > 0"):
        make_baseline("blur", x, blur_sigma=sigma)


def _mlp(last=None):
    torch.manual_seed(0)
    layers = [nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)]
    return nn.Sequential(*layers, *([last] if last is not None else [])).eval()


class _FunctionalSoftmax(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = _mlp()

    def forward(self, x):
        return torch.softmax(self.body(x), dim=1)


class _SoftmaxInside(nn.Module):
    """A softmax registered last but used inside (attention-like): the outputs are logits."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Linear(6, 3)
        self.attn = nn.Softmax(dim=1)

    def forward(self, x):
        return self.head(x * self.attn(x))


def test_case_027_a_model_that_ends_in_softmax_is_refused_naming_it():
    """../shared/cases/027-softmax-output.md: probabilities are not explained as logits, nor
    squashed a second time by output='probability' or deletion; the error names the module."""
    x = torch.rand(5, 6, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 1, 2, 0, 1])
    softmax = _mlp(nn.Softmax(dim=1))
    module = r"its last module '3' is nn.Softmax"
    calls = {
        "saliency": lambda m: xprune.attribute(m, x, t, "saliency"),
        "probability": lambda m: xprune.attribute(m, x, t, "saliency", output="probability"),
        "deletion_auc": lambda m: M.deletion_auc(m, x, torch.rand(5, 6), t),
    }
    for call in calls.values():
        with pytest.raises(ValueError, match=r"Expected `model` to return logits, but "
                                             r"Sequential's outputs are already probabilities "
                                             rf"\({module}\).*a second time"):
            call(softmax)
        with pytest.raises(ValueError, match=r"already probabilities \(every row is "
                                             r"non-negative and sums to 1\)"):
            call(_FunctionalSoftmax())
        call(_mlp())  # logits
        call(_mlp(nn.LogSoftmax(dim=1)))  # log-probabilities are logits up to a constant
        call(_SoftmaxInside())
    logits = _mlp()(x)
    with pytest.raises(ValueError, match="already probabilities"):
        xprune.attribution.check_logit_outputs(_mlp(), logits.softmax(dim=1))
    xprune.attribution.check_logit_outputs(_mlp(), logits)


def test_case_029_saturated_outputs_give_all_zero_maps_with_a_warning():
    """../shared/cases/029-saturated-all-zero-maps.md: a saturated sigmoid makes every map of
    IG, DeepLIFT, Saliency and InputXGradient exactly zero; each call warns with the count."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Sigmoid(), nn.Linear(3, 2)).eval()
    with torch.no_grad():
        model[0].weight.mul_(0.01)
        model[0].bias.fill_(60.0)  # sigmoid(60 + tiny) == 1.0 in float32: saturated
    x = torch.rand(8, 4, generator=torch.Generator().manual_seed(2))
    for method in ("integrated_gradients", "deeplift", "saliency", "input_x_gradient"):
        with pytest.warns(xprune.attribution.ConstantMapWarning,
                          match=rf"8 of 8 {method} maps of model 'dense' are constant \(8 all "
                                r"zero\).*saturated output"):
            a = xprune.attribute(model, x, 0, method, model_tag="dense")
        assert bool((a.values == 0).all())
    healthy = _mlp()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", xprune.attribution.ConstantMapWarning)
        xprune.attribute(healthy, torch.rand(4, 6), 0, "saliency")


def test_case_029_the_report_counts_all_zero_maps_per_model_and_method():
    """../shared/cases/029-saturated-all-zero-maps.md: the report flags them."""
    import math

    import pandas as pd

    from xprune.report.tables import all_zero_maps, all_zero_sentence

    rows = []
    for model, zero in (("dense", set()), ("l1@0.9", {0, 2, 3})):
        for method in ("saliency", "integrated_gradients"):
            for i in range(4):
                dead = i in zero and method == "saliency"
                for metric in ("gini_index", "entropy_complexity", "spearman"):
                    rows.append({"model": model, "attribution": method, "metric": metric,
                                 "sample": i, "value": math.nan if dead else 0.5})
    results = pd.DataFrame(rows)
    zero = all_zero_maps(results)
    assert zero.to_dict("records") == [{"model": "l1@0.9", "attribution": "saliency",
                                        "n_zero": 3, "n": 4}]
    assert all_zero_sentence(results).endswith(": saliency of l1@0.9: 3 of 4.")
    # a NaN of a rank correlation alone (a constant but nonzero map) is not an all-zero map
    only_rank = results[results["metric"] == "spearman"]
    assert all_zero_maps(only_rank).empty and all_zero_sentence(only_rank) is None
