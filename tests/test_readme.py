"""What the README says runs, runs: its Python example, executed as written."""

import re
from pathlib import Path

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
