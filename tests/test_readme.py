"""What the README says runs, runs: its Python example, executed as written."""

import re
from pathlib import Path

from markupsafe import escape

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(capsys):
    block = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    exec(compile(block, "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "0.9 10.0"
    assert out[1].startswith("gini (dense): mean 0.") and out[1].endswith("over 256 samples")
    assert len(out) == 7


def test_readme_quick_start_commands_are_the_ci_commands():
    text = README.read_text()
    assert "pip install -e . -c constraints.txt && xprune run" in text
    ci = (README.parent / ".ci" / "run").read_text()
    assert 'pip install -e ".[test,ray]" -c constraints.txt && pytest' in text
    assert 'pip install -e ".[test,ray]" -c constraints.txt && ruff check . && pytest' in ci


def test_readme_config_example_is_a_valid_config():
    import tomllib

    from xprune.config import AnalysisConfig

    block = re.findall(r"```toml\n(.*?)```", README.read_text(), re.S)[0]
    config = AnalysisConfig.from_dict(tomllib.loads(block))  # every key and name is known
    assert config.seeds == [0, 1, 2] and "road" in config.metrics.names


def test_readme_study_example_runs_with_small_settings(tmp_path, monkeypatch):
    """The "Your own model from Python" block, executed as written but with a small budget
    (the block's own sparsities and options are kept; progress off)."""
    import xprune

    small = {"train": {"epochs": 2}, "pruning": {"finetune_epochs": 1},
             "attribution": {"n_samples": 8, "methods": ["saliency"]},
             "metrics": {"names": ["gini_index", "spearman"]},
             "report": {"n_examples": 2, "latency_batch": 8}}
    namespace, calls = _run_study_block(0, small, tmp_path, monkeypatch)
    result = namespace["result"]
    assert calls == [{"train": True, "sparsities": [0.5, 0.9]}]
    assert isinstance(result, xprune.Study) and namespace["model"][0].weight.grad is None
    assert len(result.models) == 5  # 2 sparsities, 2 controls
    page = (tmp_path / "digits-study.html").read_text()
    assert "<html" in page and 'id="key-figure"' in page
    assert all(str(escape(s)) in page for s in result.headline)
    assert len(result.headline) == 3  # a lead sentence (1 method), one per level (2)
    assert "xprune study" in result._repr_html_()


def _study_blocks() -> list[str]:
    return [b for b in re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
            if "xprune.study(" in b]


def _run_study_block(index: int, small: dict, tmp_path, monkeypatch) -> tuple[dict, list]:
    """Execute the README's study block ``index`` (under ten lines) in ``tmp_path`` with
    ``xprune.study`` given a small ``config`` and no progress; its namespace and the calls'
    keyword arguments."""
    import xprune

    block = _study_blocks()[index]
    assert len([line for line in block.splitlines() if line.strip()]) < 10
    real = xprune.study
    calls = []

    def study(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs, config=small, progress=False)

    monkeypatch.setattr(xprune, "study", study, raising=False)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    return namespace, calls


def test_readme_transformer_study_runs_with_small_settings(tmp_path, monkeypatch):
    """The transformer block (a Hugging Face BERT built from a config, a tokenizer's output):
    executed as written, with a small budget; it produces the full report."""

    block = _study_blocks()[1]
    assert "BertForSequenceClassification" in block and "BatchEncoding" in block
    small = {"train": {"epochs": 2}, "pruning": {"finetune_epochs": 1},
             "attribution": {"n_samples": 4, "params": {"integrated_gradients": {"n_steps": 4}}},
             "metrics": {"names": ["gini_index", "spearman", "faithfulness_correlation"],
                         "faithfulness_runs": 5, "versus_random": []},
             "report": {"latency_batch": 4}}
    namespace, calls = _run_study_block(1, small, tmp_path, monkeypatch)
    text = namespace["text"]
    assert calls == [{"sparsities": [0.5, 0.9], "attributions": "integrated_gradients"}]
    assert len(text.models) == 5 and set(text.results["attribution"]) == {
        "integrated_gradients"}
    assert set(text.results["metric"]) >= {"gini_index", "spearman", "faithfulness_correlation"}
    page = (tmp_path / "bert-study.html").read_text()
    assert 'id="key-figure"' in page and all(str(escape(s)) in page for s in text.headline)
    assert (text.out / "report.md").is_file() and (text.out / "figures" / "key_figure.png")\
        .is_file()
