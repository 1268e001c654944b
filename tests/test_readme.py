"""The README stays true: its example runs and its parameter table matches the code."""

import re
from pathlib import Path

from isletfit.model import param_info

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_starts_with_the_two_commands():
    text = README.read_text()
    first_block = text.split("```sh", 1)[1].split("```", 1)[0]
    assert "make demo" in first_block and "make test" in first_block


def test_python_example_runs(capsys):
    text = README.read_text()
    code = text.split("```python", 1)[1].split("```", 1)[0]
    assert len(code.strip().splitlines()) <= 20
    exec(compile(code, "README.md", "exec"), {})
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and "B=0.00" in lines[0]


def test_parameter_table_matches_the_code():
    text = README.read_text()
    rows = dict(re.findall(r"^\| `(\w+)` \| ([^|]+) \|", text, flags=re.MULTILINE))
    for info in param_info():
        assert info["name"] in rows, info["name"]
        assert float(rows[info["name"]]) == float(f"{info['default']:g}"), info["name"]


def test_every_python_block_is_valid_python():
    text = README.read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```python")[1:]]
    assert len(blocks) >= 2
    for k, code in enumerate(blocks):
        compile(code, f"README.md block {k}", "exec")
