"""Nothing lost, nothing run from a config string, nothing unescaped."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from xprune import metrics as M
from xprune.analysis import run_analysis
from xprune.config import AnalysisConfig
from xprune.report import render_report

TINY = {
    "train": {"epochs": 3},
    "pruning": {"sparsities": [0.5, 0.9], "finetune_epochs": 1},
    "attribution": {"n_samples": 32, "params": {"integrated_gradients": {"n_steps": 8,
                                                                         "delta_tolerance": 1.0}}},
    "metrics": {"faithfulness_runs": 10, "sensitivity_samples": 3},
    "report": {"n_examples": 2, "latency_batch": 8},
}


def _toml(d: dict, prefix: str = "") -> str:
    lines, tables = [], []
    for key, value in d.items():
        if isinstance(value, dict):
            tables.append((f"{prefix}{key}", value))
        else:
            lines.append(f"{key} = {value!r}".replace("'", '"').replace("True", "true"))
    out = "\n".join(lines) + "\n"
    for name, table in tables:
        out += f"[{name}]\n" + _toml(table, f"{name}.")
    return out


def test_killed_run_resumes_to_byte_identical_results(tmp_path):
    """SIGKILL once 3 metric cells are stored; the rerun reuses them and matches a clean run."""
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(_toml(TINY))
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "xprune.cli", "run", str(cfg), "--out",
                             str(out), "--quiet"], env=env)
    deadline = time.time() + 300
    while time.time() < deadline and len(list(out.glob(".cache/*/cell-*.csv"))) < 3:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    stored = sorted(p.name for p in out.glob(".cache/*/cell-*.csv"))
    assert 3 <= len(stored) < 10 and not (out / "results.csv").exists()
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.glob(".cache/*/*")}
    config = AnalysisConfig.from_dict({**TINY, "name": "tiny"})
    run_analysis(config, out_dir=out, progress=False, render=False)
    # finished cells were reused, not recomputed
    assert all(p.stat().st_mtime_ns == mtimes[p.name] for p in out.glob(".cache/*/*")
               if p.name in mtimes)
    clean = tmp_path / "clean"
    run_analysis(config, out_dir=clean, progress=False, use_cache=False, render=False)
    assert (out / "results.csv").read_bytes() == (clean / "results.csv").read_bytes()


def test_two_processes_give_byte_identical_results(tmp_path):
    """--jobs 2 scores cells in two spawned processes; the results are the same bytes."""
    config = AnalysisConfig.from_dict({**TINY, "name": "tiny",
                                       "attribution": {**TINY["attribution"],
                                                       "methods": ["saliency"]}})
    one, two = tmp_path / "one", tmp_path / "two"
    run_analysis(config, out_dir=one, progress=False, render=False, use_cache=False)
    run_analysis(config, out_dir=two, progress=False, render=False, jobs=2)
    for name in ("results.csv", "curves.csv"):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    assert len(list(two.glob(".cache/*/cell-*.csv"))) == 5  # the driver stored every cell
    with pytest.raises(ValueError, match="Expected `jobs` to be an integer >= 1"):
        run_analysis(config, out_dir=one, jobs=0)


def test_unwritable_output_fails_before_any_work(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    start = time.perf_counter()
    with pytest.raises(OSError, match="Cannot write to the output directory"):
        run_analysis(AnalysisConfig.from_dict(TINY), out_dir=blocker / "run", progress=False)
    assert time.perf_counter() - start < 5


def test_model_factory_is_resolved_never_evaluated(tmp_path):
    marker = tmp_path / "pwned"
    for bad in (f"__import__('os').system('touch {marker}')", "os.system('x')",
                "xprune.models:DigitsCNN()", "xprune.models"):
        with pytest.raises(ValueError, match="Expected `model.factory` of the form"):
            AnalysisConfig.from_dict({"model": {"factory": bad}})
    assert not marker.exists()
    with pytest.raises(ValueError, match="has no callable 'Nope'"):
        AnalysisConfig.from_dict({"model": {"factory": "xprune.models:Nope"}}).model.resolve()
    config = AnalysisConfig.from_dict({**TINY, "model": {"factory": "xprune.models:DigitsCNN",
                                                         "kwargs": {"hidden": 16}},
                                       "controls": {"other_seed": False, "finetune": False},
                                       "attribution": {"n_samples": 4, "methods": ["saliency"]}})
    run_analysis(config, out_dir=tmp_path / "run", progress=False, render=False)
    layers = pd.read_csv(tmp_path / "run" / "layers.csv")
    assert layers.loc[layers["layer"] == "fc1", "numel"].iloc[0] == 512 * 16
    with pytest.raises(ValueError, match="got the standard-library 'os:system'"):
        AnalysisConfig.from_dict({"model": {"factory": "os:system"}}).model.resolve()
    bad = AnalysisConfig.from_dict({**TINY, "model": {"factory": "xprune.data:make_token_dataset",
                                                      "kwargs": {"n": 4}}})
    with pytest.raises(ValueError, match="to return an nn.Module, got tuple"):
        run_analysis(bad, out_dir=tmp_path / "bad", progress=False)


def test_case_023_every_user_string_is_escaped_in_html_and_markdown(tmp_path):
    """../shared/cases/023-markdown-cells.md: HTML stays autoescaped in report.html; in
    report.md a `|`, a tag or a line break in a model or feature name stays inert in its cell."""
    config = AnalysisConfig.from_dict({**TINY, "controls": {"other_seed": False,
                                                            "finetune": False}})
    run = tmp_path / "run"
    run_analysis(config, out_dir=run, progress=False, render=False)
    evil = "<script>alert(1)</script>|x"
    for name in ("results.csv", "models.csv", "timings.csv", "curves.csv", "examples.csv",
                 "classes.csv", "importance.csv"):
        if not (run / name).exists():
            continue
        frame = pd.read_csv(run / name, keep_default_na=False)
        if "model" in frame:
            frame["model"] = frame["model"].replace("dense", f"dense{evil}")
        if "feature" in frame:  # ../shared/cases/023-markdown-cells.md: a name with | and HTML
            frame["feature"] = frame["feature"].astype(str) + "|<b>\nx"
        frame.to_csv(run / name, index=False)
    html = render_report(run).read_text()
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;|x" in html
    md = (run / "report.md").read_text()
    assert "<script>" not in md and "<b>" not in md
    assert "dense&lt;script>alert(1)&lt;/script>\\|x" in md
    table: list[int] = []  # unescaped pipes per row: the same in every row of a table
    for line in [*md.splitlines(), ""]:
        if line.startswith("|"):
            table.append(sum(c == "|" and (i == 0 or line[i - 1] != "\\")
                             for i, c in enumerate(line)))
        elif table:
            assert len(set(table)) == 1, table
            table = []


def test_areas_integrate_without_numpy_trapz():
    """../shared/cases/007-numpy2.md: AUCs work on NumPy 2 (torch.trapezoid)."""
    assert not hasattr(np, "trapz") or np.__version__.startswith("1.")

    class Sum(torch.nn.Module):
        def forward(self, x):
            return torch.stack([x.sum(dim=1), torch.zeros(x.shape[0])], dim=1)

    x, a = torch.ones(1, 4), torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    auc = M.deletion_auc(Sum(), x, a, 0, output="logit")
    assert float(auc[0]) == pytest.approx(np.trapezoid([4, 3, 2, 1, 0], dx=0.25))


def test_seeds_are_summarised_across_training_runs(tmp_path):
    """Two training seeds: each keeps its own run folder; the summary is the spread of the
    per-seed means, computed here by hand from the two results files."""
    from xprune.analysis import run_seeds

    config = AnalysisConfig.from_dict({**TINY, "name": "tiny",
                                       "pruning": {"sparsities": [0.9], "finetune_epochs": 1},
                                       "controls": {"other_seed": False, "finetune": False},
                                       "attribution": {**TINY["attribution"],
                                                       "methods": ["saliency"]}})
    report = run_seeds(config, [0, 1], out_dir=tmp_path, progress=False)
    assert report == tmp_path / "report.html"
    means = []
    for seed in (0, 1):
        r = pd.read_csv(tmp_path / f"seed-{seed}" / "results.csv")
        assert (tmp_path / f"seed-{seed}" / "report.html").is_file()
        means.append(r[(r["model"] == "l1_unstructured@0.90") & (r["metric"] == "spearman")]
                     ["value"].mean())
    summary = pd.read_csv(tmp_path / "seeds_metrics.csv")
    row = summary[(summary["model"] == "l1_unstructured@0.90")
                  & (summary["metric"] == "spearman")].iloc[0]
    assert row["mean"] == pytest.approx(np.mean(means))
    assert row["std"] == pytest.approx(np.std(means, ddof=1))
    assert row["seeds"] == 2
    models = pd.read_csv(tmp_path / "seeds_models.csv").set_index("model")
    acc = [pd.read_csv(tmp_path / f"seed-{s}" / "models.csv").set_index("model")
           .loc["dense", "accuracy"] for s in (0, 1)]
    assert models.loc["dense", "accuracy_mean"] == pytest.approx(np.mean(acc))
    md = (tmp_path / "report.md").read_text()
    assert "across 2 training seeds" in md and "rest on 2 training seed(s)" in md
    with pytest.raises(ValueError, match="Expected distinct integer seeds"):
        run_seeds(config, [1, 1], out_dir=tmp_path)
