"""The text analysis: the generated 'text' data set, the small BERT, Hugging Face folders
(``model = "hf:PATH"``), text files, token heat maps and the magnitude-vs-random comparison
of Bejjani et al. 2025 in the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("transformers")

from xprune.analysis import run_analysis  # noqa: E402
from xprune.config import AnalysisConfig, load_config  # noqa: E402
from xprune.data import load_dataset, load_text_file, load_text_split  # noqa: E402
from xprune.models import TextTransformer, load_hf_classifier, predict  # noqa: E402
from xprune.report import figures as F  # noqa: E402
from xprune.report import render_report  # noqa: E402
from xprune.report.text import magnitude_vs_random, token_heatmap_rows  # noqa: E402
from xprune.textdata import make_text_classification, text_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "analyses" / "smoke" / "text.toml"


def test_text_split_keeps_the_generated_ids_rationale_and_vocabulary():
    data = load_dataset("text", seed=0)
    text = make_text_classification(2000, seed=0)
    assert data.x_test.dtype == torch.int64 and data.x_test.shape[1] == 32
    assert len(data.x_train) + len(data.x_val) + len(data.x_test) == 2000
    # every test sentence is one of the generated ones, with its own rationale and label
    rows = {tuple(r.tolist()): i for i, r in enumerate(text.input_ids)}
    for k in range(0, len(data.x_test), 50):
        i = rows[tuple(data.x_test[k].tolist())]
        assert torch.equal(data.rationale_test[k], text.rationale[i])
        assert int(data.y_test[k]) == int(text.labels[i])
    words = [data.vocabulary[t] for t in data.x_test[0].tolist() if t != 0]
    assert words[0] == "[CLS]" and words[-1] == "[SEP]"
    assert data.pad_token_id == 0 and set(data.special_token_ids) == {1, 2, 3, 4}


def test_text_transformer_ignores_padding_and_wraps_a_bert():
    torch.manual_seed(0)
    model = TextTransformer(40, 3, hidden=16, layers=1, heads=2, intermediate=32,
                            max_length=12).eval()
    ids = torch.tensor([[2, 7, 8, 9, 3, 0, 0, 0, 0, 0]])
    with torch.no_grad():
        padded, trimmed = model(ids), model(ids[:, :5])
    assert padded.shape == (1, 3)
    torch.testing.assert_close(padded, trimmed)   # padding is left out of attention
    assert type(model.hf).__name__ == "BertForSequenceClassification"
    assert model.config.pad_token_id == 0
    with pytest.raises(ValueError, match="`hidden` to be a multiple of `heads`"):
        TextTransformer(40, hidden=15, heads=2)


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A small trained text model and its tokenizer, saved with save_pretrained."""
    folder = tmp_path_factory.mktemp("hf") / "tiny-bert"
    data = load_text_split(seed=0)
    torch.manual_seed(0)
    model = TextTransformer(len(data.vocabulary), 2, hidden=16, layers=1, heads=2,
                            intermediate=32, max_length=32)
    from xprune.models import train

    train(model, data.x_train[:400], data.y_train[:400], epochs=2, seed=0)
    model.hf.save_pretrained(folder)
    text_tokenizer(max_length=32).save_pretrained(folder)
    return folder, model, data


def test_hf_folder_loads_offline_with_the_same_logits(hf_folder):
    folder, model, data = hf_folder
    loaded = load_hf_classifier(str(folder), n_classes=2)
    torch.testing.assert_close(predict(loaded, data.x_test[:16]), predict(model, data.x_test[:16]))
    with pytest.raises(ValueError, match="to have 3 labels"):
        load_hf_classifier(str(folder), n_classes=3)
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        load_hf_classifier(str(folder / "missing"))


def _write_reviews(path: Path, n: int = 60) -> tuple[list[str], list[str]]:
    text = make_text_classification(n, seed=3)
    names = [text.class_names[i] for i in text.labels.tolist()]
    frame = pd.DataFrame({"review": list(text.texts), "sentiment": names})
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path)
    return list(text.texts), names


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_text_file_is_tokenized_by_the_folder_tokenizer(hf_folder, tmp_path, suffix):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    folder, _, _ = hf_folder
    path = tmp_path / f"reviews{suffix}"
    texts, names = _write_reviews(path)
    data = load_text_file(str(path), tokenizer=f"hf:{folder}", text_column="review",
                          label_column="sentiment", seed=0)
    assert data.class_names == ("negative", "positive") and data.n_classes == 2
    expected = make_text_classification(60, seed=3)
    width = int(expected.attention_mask.sum(dim=1).max())  # padded to the longest text
    rows = {tuple(r.tolist()): i for i, r in enumerate(expected.input_ids[:, :width])}
    for x, y in zip(data.x_test, data.y_test, strict=True):
        i = rows[tuple(x.tolist())]                        # the same ids as the generator's
        assert int(y) == int(expected.labels[i])
    assert len(data.x_train) + len(data.x_val) + len(data.x_test) == 60


def test_text_file_without_a_tokenizer_gets_a_word_vocabulary(tmp_path):
    path = tmp_path / "tiny.csv"
    pd.DataFrame({"text": ["Good film", "bad film", "good meal", "bad meal"] * 5,
                  "label": [1, 0, 1, 0] * 5}).to_csv(path, index=False)
    data = load_text_file(str(path), seed=0)
    assert data.vocabulary[:5] == ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
    assert set(data.vocabulary[5:]) == {"bad", "film", "good", "meal"}
    decoded = {" ".join(data.vocabulary[t] for t in row.tolist() if t > 4)
               for row in torch.cat([data.x_train, data.x_test])}
    assert "good film" in decoded                         # lower-cased
    assert data.x_train.shape[1] == 4                     # [CLS] two words [SEP]


def test_text_file_errors_name_the_file_and_columns(tmp_path):
    path = tmp_path / "bad.csv"
    pd.DataFrame({"sentence": ["a", "b"], "label": [0, 1]}).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"columns \['text'\].*data.text_column"):
        load_text_file(str(path))
    with pytest.raises(FileNotFoundError, match="Data file not found"):
        load_text_file(str(tmp_path / "none.jsonl"))


def test_config_reads_model_hf_path_and_text_file_keys(tmp_path):
    (tmp_path / "m").mkdir()
    toml = tmp_path / "a.toml"
    toml.write_text('model = "hf:m"\n[data]\ndataset = "r.csv"\ntext_column = "review"\n')
    config = load_config(toml)
    assert config.model.pretrained == f"hf:{(tmp_path / 'm').resolve()}"
    assert config.data.dataset == str((tmp_path / "r.csv").resolve())
    assert config.data.text_column == "review"
    with pytest.raises(ValueError, match="either `model.pretrained` or `model.factory`"):
        AnalysisConfig.from_dict({"model": {"pretrained": "hf:m",
                                            "factory": "xprune.models:TextTransformer"}})


def test_analysis_runs_on_a_hf_folder_and_a_csv_file(hf_folder, tmp_path):
    folder, model, _ = hf_folder
    path = tmp_path / "reviews.csv"
    _write_reviews(path, n=80)
    config = AnalysisConfig.from_dict({
        "name": "hf", "model": f"hf:{folder}",
        "data": {"dataset": str(path), "text_column": "review", "label_column": "sentiment"},
        "pruning": {"layers": "hf.bert.encoder.*", "sparsities": [0.5], "finetune_epochs": 1},
        "controls": {"other_seed": False, "finetune": False},
        "attribution": {"methods": ["integrated_gradients"], "n_samples": 8,
                        "params": {"integrated_gradients": {"n_steps": 8}}},
        "metrics": {"names": ["gini_index", "deletion_auc", "spearman"], "foreground": False,
                    "versus_random": []}})
    result = run_analysis(config, out_dir=tmp_path / "run", progress=False, render=False,
                          use_cache=False)
    models = result.models.set_index("model")
    assert list(models.index) == ["dense", "l1_unstructured@0.50"]
    # the dense model is the folder's, unchanged: its accuracy is the loaded model's
    data = load_text_file(str(path), tokenizer=str(folder), text_column="review",
                          label_column="sentiment", seed=0)
    acc = float((predict(model, data.x_test).argmax(1) == data.y_test).float().mean())
    assert models.loc["dense", "accuracy"] == pytest.approx(acc)
    layers = pd.read_csv(tmp_path / "run" / "layers.csv")
    pruned = layers[layers["model"] == "l1_unstructured@0.50"].set_index("layer")["sparsity"]
    assert pruned[[n for n in pruned.index if "encoder" in n]].min() > 0
    assert (pruned[[n for n in pruned.index if "classifier" in n or "pooler" in n]] == 0).all()
    tokens = pd.read_csv(tmp_path / "run" / "tokens.csv", keep_default_na=False)
    assert not tokens["token"].isin(["[PAD]", "[CLS]", "[SEP]"]).any()


def test_magnitude_vs_random_verdicts_on_known_differences():
    rng = np.random.default_rng(0)
    dense = rng.uniform(0.2, 0.8, 30)
    rows = []
    for model, role, pruning, shift in (("dense", "dense", "", 0.0),
                                        ("l1_unstructured@0.50", "sparse", "l1_unstructured", 0.0),
                                        ("random_unstructured@0.50", "sparse",
                                         "random_unstructured", -0.1)):
        rows.append(pd.DataFrame({"model": model, "role": role, "pruning": pruning,
                                  "sparsity": 0.0 if role == "dense" else 0.5,
                                  "attribution": "integrated_gradients",
                                  "metric": "faithfulness_correlation",
                                  "sample": np.arange(30), "value": dense + shift}))
    results = pd.concat(rows, ignore_index=True)
    row = magnitude_vs_random(results).iloc[0]
    assert row["verdict_magnitude"] == "unchanged" and row["delta_magnitude"][0] == 0
    assert row["verdict_random"] == "worse" and row["verdict_random_vs_magnitude"] == "worse"
    np.testing.assert_allclose(row["delta_random"], (-0.1, -0.1, -0.1), atol=1e-12)
    assert bool(row["agrees"])
    # random pruning that helps faithfulness does not agree
    flipped = results.assign(value=np.where(results["pruning"] == "random_unstructured",
                                            results["value"] + 0.2, results["value"]))
    assert not bool(magnitude_vs_random(flipped).iloc[0]["agrees"])
    assert magnitude_vs_random(results[results["pruning"] != "random_unstructured"]).empty


def test_token_heatmap_rows_and_figure():
    tokens = pd.DataFrame({"attribution": "ig", "model": ["dense"] * 3 + ["p"] * 3,
                           "sample": 0, "position": [1, 2, 3] * 2,
                           "token": ["good", "film", "<b>"] * 2,
                           "value": [2.0, 0.0, -1.0, 1.0, 0.5, 0.0]})
    rows = token_heatmap_rows(tokens, "ig", ["dense", "p"])
    dense = rows[0]["rows"][0]["tokens"]
    assert [t["text"] for t in dense] == ["good", "film", "<b>"]
    # one scale per sentence: |2.0| is full opacity; -1.0 is half, blue
    assert dense[0]["colour"] == "rgba(214, 38, 41, 1.0)"
    assert dense[1]["colour"].endswith(", 0.0)")
    assert dense[2]["colour"] == "rgba(31, 120, 181, 0.5)"
    ax = F.plot_token_heatmap(tokens, "ig", ["dense", "p"])
    assert [t.get_text() for t in ax.texts].count("good") == 2


def test_smoke_text_run_reports_heat_maps_and_the_bejjani_comparison(tmp_path):
    out = tmp_path / "run"
    first = run_analysis(load_config(SMOKE), out_dir=out, progress=False)
    again = run_analysis(load_config(SMOKE), out_dir=out, progress=False, render=False)
    pd.testing.assert_frame_equal(first.results, again.results)  # maps and masks from the store
    html, md = (out / "report.html").read_text(), (out / "report.md").read_text()
    assert "Magnitude vs random pruning: IG faithfulness (Bejjani et al. 2025)" in md
    assert "faithfulness_correlation of Integrated Gradients: xprune's numbers" in md
    assert (out / "figures" / "tokens_integrated_gradients.png").stat().st_size > 1000
    tokens = pd.read_csv(out / "tokens.csv", keep_default_na=False)
    assert set(tokens["model"]) == {"dense", "l1_unstructured@0.70", "random_unstructured@0.70",
                                    "control:finetune"}
    assert html.count('class="tok"') == len(tokens)
    results = pd.read_csv(out / "results.csv")
    assert {"token_f1", "rationale_auprc", "spearman"} <= set(results["metric"])
    erasure = results[results["metric"].isin(["comprehensiveness", "sufficiency", "tau_loo",
                                              "normalised_comprehensiveness",
                                              "normalised_sufficiency"])]
    assert erasure.groupby("metric")["model"].nunique().to_dict() == dict.fromkeys(
        ["comprehensiveness", "normalised_comprehensiveness", "normalised_sufficiency",
         "sufficiency", "tau_loo"], 4)  # every model, through the [PAD] baseline of the config
    sensitivity = results[results["metric"] == "max_sensitivity"]  # by token substitution
    assert sensitivity["model"].nunique() == 4 and bool((sensitivity["value"].dropna() > 0).all())
    normalised = erasure[erasure["metric"].str.startswith("normalised")]["value"].dropna()
    assert len(normalised) and normalised.between(0, 1).all()
    # a token that reads as HTML is escaped in the report
    tokens.loc[0, "token"] = "<b>x</b>"
    tokens.to_csv(out / "tokens.csv", index=False)
    html = Path(render_report(out)).read_text()
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html
    config = json.loads((out / "config.json").read_text())
    assert config["pruning"]["layers"] == "hf.bert.encoder.*"


def test_readme_text_example_builds_its_config(monkeypatch):
    """The README's five-line example on a save_pretrained folder, with the run stubbed."""
    import re

    import xprune.analysis

    block = next(b for b in re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(),
                                       re.S) if '"hf:./my-model"' in b)
    assert len(block.strip().splitlines()) == 5
    seen = []
    monkeypatch.setattr(xprune.analysis, "run_analysis", lambda config: seen.append(config))
    exec(compile(block, "README.md", "exec"), {})
    assert seen[0].model.pretrained == "hf:./my-model"
    assert seen[0].data.dataset == "reviews.csv"
    assert seen[0].pruning.layers == "hf.bert.encoder.*"
