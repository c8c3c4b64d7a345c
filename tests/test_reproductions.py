"""The reproduction framework: configs, the report writer, the CLI, and the attribution-drift
analysis (issue 10, item 4)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from xprune.cli import main
from xprune.reproductions import (
    REPRODUCTIONS,
    ReproductionReport,
    Section,
    is_reproduction,
    load_reproduction,
    run_reproduction,
)
from xprune.reproductions.drift import Params, drift_summary

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "analyses" / "smoke" / "repro-attribution-drift.toml"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "repro.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_every_reproduction_has_a_full_and_a_smoke_config():
    load_reproduction(SMOKE)  # registers every module
    full = {load_reproduction(p).reproduction for p in (ROOT / "analyses").glob("repro-*.toml")}
    smoke = {load_reproduction(p).reproduction
             for p in (ROOT / "analyses" / "smoke").glob("repro-*.toml")}
    assert full == smoke == set(REPRODUCTIONS)


def test_config_errors_name_what_was_wrong(tmp_path):
    with pytest.raises(ValueError, match="Unknown reproduction 'attribution_drfit'.*"
                                         "attribution_drift"):
        load_reproduction(_write(tmp_path, 'reproduction = "attribution_drfit"\n'))
    with pytest.raises(ValueError, match=r"Unknown key `n_seed` in \[params\].*n_seeds"):
        load_reproduction(_write(tmp_path, 'reproduction = "attribution_drift"\n'
                                           '[params]\nn_seed = 3\n'))
    with pytest.raises(ValueError, match=r"Expected every `params.sparsities` entry in \(0, 1\)"
                                         r", got 1.5"):
        load_reproduction(_write(tmp_path, 'reproduction = "attribution_drift"\n'
                                           '[params]\nsparsities = [0.5, 1.5]\n'))
    with pytest.raises(ValueError, match="Expected `params.n_seeds` >= 2"):
        Params(n_seeds=1)
    with pytest.raises(ValueError, match="increasing without repeats"):
        Params(sparsities=[0.9, 0.5])
    with pytest.raises(ValueError, match="Expected `seed` to be a non-negative integer"):
        load_reproduction(_write(tmp_path, 'reproduction = "attribution_drift"\nseed = -1\n'))
    assert not is_reproduction(ROOT / "analyses" / "digits.toml")
    assert is_reproduction(SMOKE)
    assert load_reproduction(SMOKE).name == "repro-attribution-drift-smoke"


def test_cli_refuses_options_a_reproduction_does_not_take(capsys):
    assert main(["run", str(SMOKE), "--jobs", "2"]) == 2
    assert "reproduction config: it takes --out, --seed, --device, --no-cache and --quiet, " \
           "not --jobs" in capsys.readouterr().err
    assert main(["list"]) == 0
    assert "attribution_drift" in capsys.readouterr().out


def test_report_writer_writes_tables_figures_and_escapes_html(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    table = pd.DataFrame({"criterion": ["<script>alert(1)</script>"], "ours": [0.5]})
    report = ReproductionReport(
        title="T", citation="A & B 2020", findings=["f <b>1</b>"], setup=["s"],
        differences=["d"], sections=[Section("Side by side", ["p"], [("the table", table)],
                                             [("the figure", fig)])],
        data={"raw": pd.DataFrame({"x": [1.0, math.nan]})})
    path = report.write(tmp_path, config={"seed": 0})
    html = path.read_text()
    assert "&lt;script&gt;" in html and "<script>" not in html
    assert "f &lt;b&gt;1&lt;/b&gt;" in html and "data:image/png;base64," in html
    md = (tmp_path / "report.md").read_text()
    # ../shared/cases/023-markdown-cells.md: a tag in a Markdown cell is inert
    assert "| &lt;script>alert(1)&lt;/script> | 0.5 " in md and "<script>" not in md
    assert (tmp_path / "figures" / "01-1-the-figure.png").read_bytes()[:4] == b"\x89PNG"
    assert pd.read_csv(tmp_path / "tables" / "01-1-the-table.csv")["ours"].tolist() == [0.5]
    assert (tmp_path / "raw.csv").read_text() == "x\n1.0\nNaN\n"


def _per_seed(acc: dict[str, list[float]], rho: dict[str, list[float]]) -> pd.DataFrame:
    rows = []
    for model, accuracies in acc.items():
        role = "dense" if model == "dense" else "control" if model.startswith("control") \
            else "sparse"
        sparsity = float(model.split("@")[1]) if "@" in model else 0.0
        for seed, a in enumerate(accuracies):
            rows.append({"seed": seed, "model": model, "role": role, "sparsity": sparsity,
                         "accuracy": a, "attribution": "ig",
                         "spearman": rho.get(model, [math.nan] * 3)[seed],
                         "spearman_foreground": math.nan, "gini_index": 0.5 + 0.1 * seed})
    return pd.DataFrame(rows)


def test_drift_summary_hand_computed():
    acc = {"dense": [0.96, 0.97, 0.98], "p@0.5": [0.96, 0.97, 0.97],
           "p@0.8": [0.94, 0.97, 0.98], "p@0.9": [0.96, 0.97, 0.98],
           "control:finetune": [0.97, 0.97, 0.98]}
    rho = {"p@0.5": [0.9, 0.8, 0.7], "p@0.8": [0.6, 0.6, 0.9], "p@0.9": [0.5, 0.5, 0.5],
           "control:finetune": [0.95, 0.95, 0.95]}
    per_seed = _per_seed(acc, rho)
    table, highest = drift_summary(per_seed, tolerance=0.02)
    rows = table.set_index("model")
    # drops (dense - pruned) per seed: 0.5 -> (0, 0, .01), 0.8 -> (.02, 0, 0), 0.9 -> 0
    t975 = stats.t.ppf(0.975, 2)
    upper_05 = 0.01 / 3 + t975 * stats.sem([0, 0, 0.01])
    upper_08 = 0.02 / 3 + t975 * stats.sem([0.02, 0, 0])
    assert rows.loc["p@0.5", "accuracy_drop_high"] == pytest.approx(upper_05)  # 0.0177
    assert rows.loc["p@0.8", "accuracy_drop_high"] == pytest.approx(upper_08)  # 0.0354
    # non-inferiority within 2 points: 0.5 holds, 0.8 does not; 0.9 (no drop) comes after a
    # sparsity that failed, so the highest sparsity before accuracy drops is 0.5
    assert highest == 0.5
    assert drift_summary(per_seed, tolerance=0.04)[1] == 0.9
    assert drift_summary(per_seed, tolerance=0.01)[1] is None
    row = rows.loc["p@0.5"]
    assert row["accuracy_drop"] == pytest.approx(0.01 / 3)
    assert row["spearman"] == pytest.approx(0.8)
    assert row["spearman_low"] == pytest.approx(0.8 - t975 * stats.sem([0.9, 0.8, 0.7]))
    assert row["gini_change"] == pytest.approx(0.0)
    # intervals of bounded quantities are clipped to their range
    assert rows.loc["p@0.8", "spearman_high"] == 1.0 and rows.loc["dense", "accuracy_high"] <= 1


def test_drift_smoke_run_resumes_and_reproduces(tmp_path):
    report = run_reproduction(SMOKE, out_dir=tmp_path / "a", progress=False)
    md = (tmp_path / "a" / "report.md").read_text()
    assert "the highest sparsity at which accuracy is non-inferior to dense" in md \
        or "not shown non-inferior to dense (within 1 point)" in md
    assert "Only 2 training seeds: intervals across seeds are too wide" in md
    assert "control:finetune (fine-tuned, unpruned)" in md and report.name == "report.html"
    summary = pd.read_csv(tmp_path / "a" / "summary.csv")
    assert set(summary["model"]) == {"dense", "l1_unstructured@0.50", "l1_unstructured@0.90",
                                     "control:other-seed", "control:finetune"}
    per_seed = pd.read_csv(tmp_path / "a" / "per_seed.csv")
    # the summary is the mean over the seeds of each seed's run
    for model, g in per_seed.groupby("model"):
        assert summary.set_index("model").loc[model, "accuracy"] == pytest.approx(
            g["accuracy"].mean())
    first = (tmp_path / "a" / "per_seed.csv").read_bytes()
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "a").rglob(".cache/*/*")}
    run_reproduction(SMOKE, out_dir=tmp_path / "a", progress=False)  # resumes: nothing new
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "a").rglob(".cache/*/*")} == stamps
    assert (tmp_path / "a" / "per_seed.csv").read_bytes() == first
    run_reproduction(SMOKE, out_dir=tmp_path / "b", progress=False, use_cache=False)
    assert (tmp_path / "b" / "per_seed.csv").read_bytes() == first  # same seed, same numbers
    assert not list((tmp_path / "b").rglob(".cache"))
    assert np.isfinite(per_seed["spearman"].dropna()).all()


def test_threads_are_set_for_the_run_and_restored_also_after_an_error(tmp_path):
    import torch

    from xprune.reproductions import torch_threads

    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="boom"), torch_threads(1):
        assert torch.get_num_threads() == 1
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="Expected `threads` to be"):
        load_reproduction(_write(tmp_path, 'reproduction = "attribution_drift"\nthreads = 0\n'))
    # the thread count does not change the numbers, so it is not part of the store's key
    config = load_reproduction(SMOKE)
    assert "threads" in config.to_dict() and config.threads == 1


def test_a_smoke_config_never_writes_into_the_full_run_folder():
    load_reproduction(SMOKE)
    full = {load_reproduction(p).name for p in (ROOT / "analyses").glob("repro-*.toml")}
    smoke = {load_reproduction(p).name
             for p in (ROOT / "analyses" / "smoke").glob("repro-*.toml")}
    assert not full & smoke and all(name.endswith("-smoke") for name in smoke)


def test_store_key_covers_threads_and_the_source_code(tmp_path, monkeypatch):
    import xprune._cache as cache_module
    from xprune._cache import RunCache

    config = load_reproduction(SMOKE)
    key = config.store_key()
    assert key["threads"] == 1 and "name" not in key
    assert config.replace(threads=2).store_key() != key
    before = RunCache(tmp_path, key).dir
    monkeypatch.setattr(cache_module, "code_digest", lambda: "another implementation")
    assert RunCache(tmp_path, key).dir != before  # changed code: a fresh store
