"""End to end: a small digits analysis through the API and the CLI."""

import base64
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import SMALL

import xprune.analysis as analysis
from xprune.analysis import RESULT_COLUMNS, run_analysis
from xprune.cli import main
from xprune.config import AnalysisConfig, load_config

ROOT = Path(__file__).resolve().parents[1]

def test_run_folder_contents(small_run):
    out, result = small_run
    for name in ("results.csv", "models.csv", "layers.csv", "curves.csv", "timings.csv",
                 "summary.csv", "config.json", "versions.json", "report.md", "report.html"):
        assert (out / name).is_file(), name
    assert result.report == out / "report.html"
    results = pd.read_csv(out / "results.csv")
    assert list(results.columns) == RESULT_COLUMNS
    models = ["dense", "l1_unstructured@0.50", "l1_unstructured@0.90", "control:other-seed",
              "control:finetune"]
    assert sorted(results["model"].unique()) == sorted(models)
    # one row per sample x model x method x metric
    assert not results.duplicated(["model", "attribution", "metric", "sample"]).any()
    counts = results.groupby(["model", "attribution", "metric"]).size()
    assert (counts == 24).all()
    dense = results[results["model"] == "dense"]
    # every family of the default metrics; agreement only against the dense maps
    assert {m for m in dense["metric"] if ":" not in m} == {"gini_index", "entropy_complexity", "deletion_auc",
                                    "insertion_auc", "faithfulness_correlation", "infidelity",
                                    "max_sensitivity", "avg_sensitivity", "convergence_delta",
                                    "deletion_auc@vs_random", "model_parameter_randomisation",
                                    "random_logit"}
    agreement = {"spearman", "kendall_tau", "cosine_similarity", "top_k_intersection"}
    sparse = set(results[results["model"] == "l1_unstructured@0.90"]["metric"])
    assert agreement | {f"{m}@foreground" for m in agreement} | {"ssim"} <= sparse
    assert {"model_parameter_randomisation", "random_logit"} <= sparse
    sparse = {m for m in sparse if "@" not in m or "@foreground" in m}
    # the randomisation curve is kept layer by layer; its mean is the registered score
    mprt = results[results["model"] == "l1_unstructured@0.90"].pivot_table(
        index=["attribution", "sample"], columns="metric", values="value")
    layer_cols = [c for c in mprt if c.startswith("model_parameter_randomisation@")]
    assert layer_cols == ["model_parameter_randomisation@1:fc2",
                          "model_parameter_randomisation@2:fc1",
                          "model_parameter_randomisation@3:conv2",
                          "model_parameter_randomisation@4:conv1"]
    pd.testing.assert_series_equal(mprt[layer_cols].mean(axis=1),
                                   mprt["model_parameter_randomisation"], check_names=False)
    # the stored mean curves integrate to the mean AUCs (the trapezoidal rule is linear)
    curves = pd.read_csv(out / "curves.csv")
    for kind in ("deletion", "insertion"):
        c = curves[(curves["curve"] == kind) & (curves["model"] == "l1_unstructured@0.90")
                   & (curves["attribution"] == "saliency")].sort_values("fraction")
        auc = results[(results["metric"] == f"{kind}_auc") & (results["attribution"] == "saliency")
                      & (results["model"] == "l1_unstructured@0.90")]["value"].mean()
        assert np.trapezoid(c["mean"], c["fraction"]) == pytest.approx(auc, rel=1e-9)
    for fig in ("randomisation_saliency.png", "accuracy_vs_compression.png",
                "layer_sparsity.png", "insertion_curves_saliency.png"):
        assert (out / "figures" / fig).stat().st_size > 5000, fig
    control = set(results[results["model"] == "control:finetune"]["metric"])
    assert "random_logit" not in control and "spearman" in control  # sanity checks: not controls
    # max- and avg-sensitivity come from the same noise draws: avg <= max per sample
    wide = results.pivot_table(index=["model", "attribution", "sample"], columns="metric",
                               values="value")
    assert bool((wide["avg_sensitivity"] <= wide["max_sensitivity"] + 1e-12).all())
    # targets are the dense model's predictions, the same for every model
    assert (results.groupby("sample")["target"].nunique() == 1).all()
    assert not any(c for c in results.columns if "second" in c or "latency" in c)


def test_model_table_facts(small_run):
    out, _ = small_run
    models = pd.read_csv(out / "models.csv").set_index("model")
    total = 144 + 4608 + 32768 + 640
    assert (models["total_weights"] == total).all()
    selected = total - 640  # the output layer fc2 stays dense by default
    for tag, s in (("l1_unstructured@0.50", 0.5), ("l1_unstructured@0.90", 0.9)):
        assert abs(models.loc[tag, "selected_sparsity"] - s) * selected <= 1
        assert abs(models.loc[tag, "measured_sparsity"] * total - s * selected) <= 1
        assert models.loc[tag, "compression_ratio"] == pytest.approx(
            total / models.loc[tag, "nonzero_weights"])
        assert models.loc[tag, "storage_sparse_bytes"] < models.loc[tag, "storage_dense_bytes"]
    assert models.loc["dense", "macs_dense"] == 144 * 64 + 4608 * 64 + 32768 + 640
    assert models.loc["dense", "accuracy"] > 0.8
    layers = pd.read_csv(out / "layers.csv")
    assert set(layers["layer"]) == {"conv1", "conv2", "fc1", "fc2"}
    # calibration and per-class figures of every model
    assert ((models["ece"] >= 0) & (models["ece"] <= 1) & (models["nll"] > 0)).all()
    classes = pd.read_csv(out / "classes.csv")
    assert set(classes["class"]) == set(range(10))
    dense = classes[classes["model"] == "dense"]
    # support-weighted mean recall is the accuracy
    assert (dense["recall"] * dense["support"]).sum() / dense["support"].sum() == pytest.approx(
        models.loc["dense", "accuracy"])
    assert "Per-class recall" in (out / "report.md").read_text()


def test_report_is_self_contained_and_escaped(small_run):
    out, _ = small_run
    html = (out / "report.html").read_text()
    assert "small&lt;b&gt;" in html and "small<b>" not in html
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) >= 8
    for data in images:
        assert base64.b64decode(data).startswith(b"\x89PNG\r\n\x1a\n")
    md = (out / "report.md").read_text()
    assert "## What pruning changed" in md and "## Models" in md
    assert "At 90% sparsity" in md
    for line in re.findall(r"!\[[^]]*\]\(([^)]+)\)", md):
        assert (out / line).is_file()


def test_same_seed_gives_byte_identical_results(small_run, tmp_path):
    out, _ = small_run
    again = tmp_path / "again"
    run_analysis(AnalysisConfig.from_dict(SMALL), out_dir=again, progress=False, use_cache=False,
                 render=False)
    assert (again / "results.csv").read_bytes() == (out / "results.csv").read_bytes()
    assert (again / "models.csv").read_bytes() == (out / "models.csv").read_bytes()


def test_rerun_reuses_finished_work(small_run, monkeypatch):
    out, _ = small_run
    before = (out / "results.csv").read_bytes()
    calls = []
    monkeypatch.setattr(analysis, "_score_cell", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(analysis, "train", lambda *a, **k: calls.append(a))
    (out / "results.csv").unlink()
    run_analysis(AnalysisConfig.from_dict(SMALL), out_dir=out, progress=False, render=False)
    assert calls == []
    assert (out / "results.csv").read_bytes() == before


def test_shipped_default_config_is_the_embedded_default():
    assert load_config(ROOT / "analyses" / "digits.toml") == AnalysisConfig()


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="Did you mean 'sparsities'"):
        AnalysisConfig.from_dict({"pruning": {"sparsity": [0.5]}})
    with pytest.raises(ValueError, match=r"Expected `pruning.sparsities\[i\]` in \[0.0, 1.0\)"):
        AnalysisConfig.from_dict({"pruning": {"sparsities": [0.5, 1.2]}})
    with pytest.raises(FileNotFoundError, match="Config file not found"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ValueError, match="Expected a TOML config file, got the directory"):
        load_config(tmp_path)  # the one TOML reader of analyses and reproductions
    (tmp_path / "bad.toml").write_text("[pruning\n")
    with pytest.raises(ValueError, match="Could not parse .*bad.toml as TOML"):
        load_config(tmp_path / "bad.toml")
    with pytest.raises(ValueError, match="Did you mean 'gini_index'"):
        AnalysisConfig.from_dict({"metrics": {"names": ["gini_indx"]}})
    with pytest.raises(ValueError, match=r"Unknown key `runs` in \[metrics.params."
                                         r"faithfulness_correlation\].*'n_runs'"):
        AnalysisConfig.from_dict({"metrics": {"params": {"faithfulness_correlation":
                                                         {"runs": 5}}}})
    with pytest.raises(ValueError, match="Unknown key `generator`"):  # xprune supplies it
        AnalysisConfig.from_dict({"metrics": {"params": {"infidelity": {"generator": 1}}}})
    with pytest.raises(ValueError, match="distinct `metrics.names`"):
        AnalysisConfig.from_dict({"metrics": {"names": ["spearman", "spearman"]}})


def test_metrics_chosen_by_name_with_params(tmp_path, monkeypatch):
    """Only the named metrics are computed, called with the configured parameters."""
    import dataclasses
    import functools

    import torch

    from xprune import metrics as M

    calls = []
    info = M.METRICS["faithfulness_correlation"]

    @functools.wraps(info.fn)
    def spy(*args, **kwargs):
        calls.append({**kwargs, "state": kwargs["generator"].get_state().clone()})
        return info.fn(*args, **kwargs)

    monkeypatch.setitem(M.METRICS, "faithfulness_correlation", dataclasses.replace(info, fn=spy))
    cfg = {**SMALL, "name": "chosen", "controls": {"other_seed": False, "finetune": False},
           "pruning": {"sparsities": [0.9], "finetune_epochs": 0},
           "attribution": {"methods": ["saliency"], "n_samples": 6},
           "metrics": {"names": ["gini_index", "faithfulness_correlation", "spearman"],
                       "versus_random": [], "foreground": False,
                       "params": {"faithfulness_correlation": {"n_runs": 7,
                                                               "output": "probability"}}}}
    result = run_analysis(AnalysisConfig.from_dict(cfg), out_dir=tmp_path, progress=False,
                          render=False, use_cache=False)
    sparse = result.results[result.results["role"] == "sparse"]
    assert set(sparse["metric"]) == {"gini_index", "faithfulness_correlation", "spearman"}
    assert "spearman" not in set(result.results[result.results["role"] == "dense"]["metric"])
    assert len(calls) == 2  # dense and sparse
    for kwargs in calls:
        assert kwargs["n_runs"] == 7 and kwargs["output"] == "probability"
        assert kwargs["subset_size"] is None and kwargs["max_rows"] == 4096
        # the same noise for both models: a generator seeded from the run seed and the name
        expected = torch.Generator().manual_seed(analysis._metric_seed(0, info.name))
        assert torch.equal(kwargs["state"], expected.get_state())


def test_cli(tmp_path, capsys):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text('[train]\nepochs = 2\n[pruning]\nsparsities = [0.8]\nfinetune_epochs = 1\n'
                   '[controls]\nother_seed = false\nfinetune = false\n'
                   '[attribution]\nn_samples = 8\nmethods = ["saliency"]\n'
                   '[metrics]\nfaithfulness_runs = 5\nsensitivity_samples = 2\n'
                   '[report]\nlatency_batch = 8\n')
    out = tmp_path / "out"
    assert main(["run", str(cfg), "--out", str(out), "--quiet"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == \
        f"Report written to {out / 'report.html'}"
    assert json.loads((out / "config.json").read_text())["name"] == "tiny"
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0 and (out / "report.html").is_file()
    assert main(["list"]) == 0
    assert "faithfulness_correlation" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text("[pruning]\nsparsities = [1.5]\n")
    assert main(["run", str(bad), "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("xprune: error: Expected `pruning.sparsities[i]`")
    assert "Traceback" not in err


def test_tabular_analysis_carries_feature_names(tmp_path):
    config = load_config(ROOT / "analyses" / "breast-cancer.toml")
    small = AnalysisConfig.from_dict({
        **{k: v for k, v in config.to_dict().items() if k in ("name", "seed", "data")},
        "train": {"epochs": 5},
        "pruning": {"sparsities": [0.9], "finetune_epochs": 1},
        "attribution": {"n_samples": 16, "params": {"integrated_gradients": {"n_steps": 8}}},
        "metrics": {"faithfulness_runs": 5, "sensitivity_samples": 2},
        "report": {"latency_batch": 8},
    })
    run_analysis(small, out_dir=tmp_path, progress=False)
    importance = pd.read_csv(tmp_path / "importance.csv")
    assert "worst concave points" in set(importance["feature"])
    assert len(importance) == 30 * 4 * 2  # features x models x methods
    assert (tmp_path / "figures" / "importance_saliency.png").is_file()
    results = pd.read_csv(tmp_path / "results.csv")
    assert results["sample"].nunique() == 16
    assert "worst concave points" in (tmp_path / "report.html").read_text()


def test_pruning_methods_compared_at_matched_sparsity(tmp_path):
    config = load_config(ROOT / "analyses" / "digits-methods.toml")
    assert [v.name for v in config.pruning.variants()] == [
        "l1_unstructured", "l1_unstructured-layer", "random_unstructured", "threshold",
        "structured", "l1_unstructured-gradual"]
    small = AnalysisConfig.from_dict({
        "name": "methods", "train": {"epochs": 3},
        "pruning": {"sparsities": [0.8], "finetune_epochs": 2, "reference_samples": 64,
                    "methods": [{"method": "l1_unstructured"}, {"method": "structured"},
                                {"method": "l1_unstructured", "schedule": "gradual",
                                 "steps": 2}]},
        "controls": {"other_seed": False},
        "attribution": {"n_samples": 8, "methods": ["saliency"]},
        "metrics": {"faithfulness_runs": 4, "sensitivity_samples": 2},
        "report": {"latency_batch": 8},
    })
    first = run_analysis(small, out_dir=tmp_path, progress=False)
    models = first.models.set_index("model")
    for tag in ("l1_unstructured@0.80", "structured@0.80", "l1_unstructured-gradual@0.80"):
        assert abs(models.loc[tag, "selected_sparsity"] - 0.8) <= 0.01
    assert bool(models.loc["structured@0.80", "structured"])
    assert models.loc["structured@0.80", "macs_nonzero"] < models.loc["dense", "macs_dense"] / 3
    before = (tmp_path / "results.csv").read_bytes()
    (tmp_path / "results.csv").unlink()
    run_analysis(small, out_dir=tmp_path, progress=False, render=False)  # reloads the stored
    assert (tmp_path / "results.csv").read_bytes() == before              # smaller model
    assert (tmp_path / "figures" / "spearman_vs_sparsity_saliency.png").is_file()


def test_pruning_variant_errors():
    with pytest.raises(ValueError, match="Expected a method in .* for schedule 'gradual'"):
        AnalysisConfig.from_dict({"pruning": {"method": "random_unstructured",
                                              "schedule": "gradual"}})
    with pytest.raises(ValueError, match="drop the options `theta`"):
        AnalysisConfig.from_dict({"pruning": {"method": "threshold", "options": {"theta": 0.1}}})
    with pytest.raises(ValueError, match="Expected distinct pruning variants"):
        AnalysisConfig.from_dict({"pruning": {"methods": [{"method": "threshold"},
                                                          {"method": "threshold"}]}})
    with pytest.raises(ValueError, match=r"Unknown key\(s\) \['sparsity'\] in `pruning.methods\[0\]`"):
        AnalysisConfig.from_dict({"pruning": {"methods": [{"sparsity": 0.5}]}})


def test_pair_pruned_elsewhere_from_two_checkpoints(tmp_path, capsys, monkeypatch):
    import torch

    import xprune
    from xprune.checkpoint import save_model
    from xprune.data import load_digits_split
    from xprune.models import DigitsCNN, train

    data = load_digits_split(seed=0)
    torch.manual_seed(0)
    dense = DigitsCNN()
    train(dense, data.x_train, data.y_train, epochs=3, seed=0)
    save_model(dense, tmp_path / "dense.safetensors")
    save_model(xprune.prune(dense, 0.7, layers="*").sparse, tmp_path / "magnitude70.safetensors")
    small = xprune.prune(dense, 0.6, method="structured",
                         data=(data.x_train[:64], data.y_train[:64])).sparse
    save_model(small, tmp_path / "channels.safetensors")
    cfg = tmp_path / "pair.toml"
    cfg.write_text(
        '[model]\nfactory = "xprune.models:DigitsCNN"\ncheckpoint = "dense.safetensors"\n'
        '[pruning]\ncheckpoints = ["magnitude70.safetensors", {path = "channels.safetensors", '
        f'label = "channels", factory = "xprune.models:DigitsCNN", kwargs = {{channels = '
        f'[{small.conv1.out_channels}, {small.conv2.out_channels}], hidden = '
        f'{small.fc1.out_features}}}}}]\n'
        '[controls]\nother_seed = false\nfinetune = false\n'
        '[attribution]\nn_samples = 8\nmethods = ["saliency"]\n'
        '[metrics]\nfaithfulness_runs = 4\nsensitivity_samples = 2\n[report]\nlatency_batch = 8\n')
    monkeypatch.setattr(analysis, "train", lambda *a, **k: pytest.fail("nothing is trained"))
    monkeypatch.setattr(analysis, "prune", lambda *a, **k: pytest.fail("nothing is pruned"))
    assert main(["run", str(cfg), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    models = pd.read_csv(tmp_path / "out" / "models.csv").set_index("model")
    assert list(models.index) == ["dense", "magnitude70", "channels"]
    assert abs(models.loc["magnitude70", "measured_sparsity"] - 0.7) * 38160 <= 1
    assert abs(models.loc["channels", "measured_sparsity"] - 0.6) <= 0.01
    assert bool(models.loc["channels", "structured"])
    # the same comparison from the command line alone
    assert main(["run", "--dense", str(tmp_path / "dense.safetensors"), "--sparse",
                 str(tmp_path / "magnitude70.safetensors"), "--factory",
                 "xprune.models:DigitsCNN", "--out", str(tmp_path / "cli"), "--quiet",
                 str(cfg)]) == 0
    assert list(pd.read_csv(tmp_path / "cli" / "models.csv")["model"]) == ["dense",
                                                                            "magnitude70"]
