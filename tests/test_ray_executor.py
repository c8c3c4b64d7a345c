"""Grid cells as Ray tasks: the same bytes as a local run, retries that change nothing.

A local Ray instance (2 CPUs, 127.0.0.1) starts once for the module and stops in the
fixture's teardown. Marked ``ray``: ``pytest -m "not ray"`` skips them; CI runs them.
Without Ray installed they skip locally and fail under ``CI=true``.
"""

import os
import sys
from pathlib import Path

import pytest
from torch import nn

from xprune.analysis import run_analysis
from xprune.cli import main
from xprune.config import AnalysisConfig
from xprune.models import DigitsCNN

pytestmark = pytest.mark.ray
HERE = Path(__file__).resolve().parent

SWEEP = {
    "name": "ray",
    "train": {"epochs": 3},
    "pruning": {"sparsities": [0.5, 0.9], "finetune_epochs": 1},
    "controls": {"other_seed": False, "finetune": False},
    "attribution": {"methods": ["saliency", "integrated_gradients"], "n_samples": 16,
                    "params": {"integrated_gradients": {"n_steps": 8, "delta_tolerance": 1.0}}},
    "metrics": {"faithfulness_runs": 10, "sensitivity_samples": 3},
    "report": {"n_examples": 2, "latency_batch": 8},
}


class FailsOnceInAWorker(DigitsCNN):
    """A digits CNN whose forward raises once in a Ray worker: the first call that finds the
    marker file named by FAIL_ONCE_MARKER (set only in the workers' environment) deletes it
    and raises, so exactly one attempt of one cell fails."""

    def forward(self, x):
        marker = os.environ.get("FAIL_ONCE_MARKER")
        if marker:
            try:
                os.remove(marker)
            except FileNotFoundError:
                pass
            else:
                raise RuntimeError("injected failure (first attempt)")
        return super().forward(x)


def fails_once() -> nn.Module:
    return FailsOnceInAWorker()


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    try:
        import ray
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("CI must run the Ray tests: install the ray extra.")
        pytest.skip("ray is not installed (pip install 'xprune[ray]')")
    marker = tmp_path_factory.mktemp("marker") / "fail-once"
    pythonpath = os.pathsep.join([str(HERE), *sys.path])
    ray.init(num_cpus=2, address="local", include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": pythonpath,
                                       "FAIL_ONCE_MARKER": str(marker)}})
    yield ray, marker
    ray.shutdown()


def test_ray_run_is_byte_identical_to_a_local_run(ray_local, tmp_path):
    config = AnalysisConfig.from_dict(SWEEP)
    run_analysis(config, out_dir=tmp_path / "local", progress=False, render=False)
    run_analysis(config, out_dir=tmp_path / "ray", progress=False, render=False,
                 executor="ray")
    for name in ("results.csv", "curves.csv"):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
    # the driver stored every cell; a rerun asks the cluster for nothing
    cells = sorted((tmp_path / "ray").glob(".cache/*/cell-*.csv"))
    assert len(cells) == 6
    mtimes = [p.stat().st_mtime_ns for p in cells]
    run_analysis(config, out_dir=tmp_path / "ray", progress=False, render=False, executor="ray")
    assert [p.stat().st_mtime_ns for p in cells] == mtimes


def test_a_failed_attempt_is_retried_with_the_same_numbers(ray_local, tmp_path):
    _, marker = ray_local
    config = AnalysisConfig.from_dict({**SWEEP, "model": {"factory":
                                                          "test_ray_executor:fails_once"}})
    run_analysis(config, out_dir=tmp_path / "local", progress=False, render=False)
    marker.write_text("fail the next attempt")
    run_analysis(config, out_dir=tmp_path / "ray", progress=False, render=False,
                 executor="ray")
    assert not marker.exists()  # one attempt failed, and Ray retried it
    assert (tmp_path / "ray" / "results.csv").read_bytes() == \
        (tmp_path / "local" / "results.csv").read_bytes()


def test_without_ray_the_cli_gives_the_install_hint(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    assert main(["run", "--executor", "ray", "--out", str(tmp_path), "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == (
        "xprune: error: The Ray executor needs Ray: pip install 'xprune[ray]'")
    assert not (tmp_path / ".cache").exists()  # refused before any work
