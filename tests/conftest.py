"""Shared fixtures: small deterministic models and data."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xprune.data import load_digits_split
from xprune.models import DigitsCNN, train


class Linear(nn.Module):
    """f(x) = W flatten(x) + b, whose exact attribution w_t * (x - baseline) is known."""

    def __init__(self, in_features: int, n_classes: int, *, seed: int = 0,
                 dtype=torch.float64) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(in_features, n_classes).to(dtype)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(n_classes, in_features, generator=gen))
            self.fc.bias.copy_(torch.randn(n_classes, generator=gen))

    def forward(self, x):
        return self.fc(x.reshape(x.shape[0], -1))


@pytest.fixture
def linear_model() -> Linear:
    return Linear(64, 10).eval()


@pytest.fixture(scope="session")
def digits():
    return load_digits_split(seed=0)


@pytest.fixture(scope="session")
def digits_cnn(digits) -> DigitsCNN:
    """A digits CNN trained for a few epochs (about a second), in eval mode."""
    torch.manual_seed(0)
    model = DigitsCNN()
    train(model, digits.x_train, digits.y_train, epochs=8, seed=0)
    return model.eval()


@pytest.fixture(scope="session")
def digits_batch(digits):
    """The first 256 test images (Tensor (256, 1, 8, 8)) and labels."""
    return digits.x_test[:256].clone(), digits.y_test[:256].clone()


def state_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_state_equal(model: nn.Module, snapshot: dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert state.keys() == snapshot.keys()
    for key, value in snapshot.items():
        assert torch.equal(state[key], value), key


@pytest.fixture(scope="session")
def cancer():
    from xprune.data import load_breast_cancer_split

    return load_breast_cancer_split(seed=0)


@pytest.fixture(scope="session")
def cancer_mlp(cancer):
    """A breast-cancer MLP (30 features, 2 classes) trained for a few epochs, in eval mode."""
    from xprune.models import TabularMLP

    torch.manual_seed(0)
    model = TabularMLP(30)
    train(model, cancer.x_train, cancer.y_train, epochs=10, seed=0)
    return model.eval()


def all_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(getattr(m, "_backward_pre_hooks", {})) for m in model.modules())


# A small digits analysis shared by the end-to-end tests: (run folder, RunResult).
# the smallest full pipeline: a tabular MLP, one sparsity, 6 explained samples (the stage and
# study tests)
TINY = {
    "data": {"dataset": "breast_cancer"},
    "train": {"epochs": 2},
    "pruning": {"sparsities": [0.5], "finetune_epochs": 1},
    "attribution": {"n_samples": 6, "methods": ["saliency"]},
    "metrics": {"names": ["gini_index", "spearman"]},
    "report": {"n_examples": 2, "latency_batch": 4},
}

SMALL = {
    "name": "small<b>",
    "train": {"epochs": 4},
    "pruning": {"sparsities": [0.5, 0.9], "finetune_epochs": 1},
    "attribution": {"n_samples": 24, "params": {"integrated_gradients": {"n_steps": 8}}},
    "metrics": {"faithfulness_runs": 10, "sensitivity_samples": 3,
                "versus_random": ["deletion_auc"]},
    "report": {"n_examples": 3, "latency_batch": 16},
}


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
    from xprune.analysis import run_analysis
    from xprune.config import AnalysisConfig

    out = tmp_path_factory.mktemp("run")
    result = run_analysis(AnalysisConfig.from_dict(SMALL), out_dir=out, progress=False)
    return out, result


@pytest.fixture(scope="session")
def ferret_reference():
    """benchmarks/ferret/reference.py as a module: the script that writes the ferret fixtures
    also reads them back into batches (``token_batch``, ``plausibility_batch``), one reader
    for the benchmark and the tests. Its module-level imports are torch, numpy and xprune."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "ferret" / "reference.py"
    spec = importlib.util.spec_from_file_location("ferret_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
