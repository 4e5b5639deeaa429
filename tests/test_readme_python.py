"""The manual's Python API example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

PAGE = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"


def python_api_example() -> str:
    section = PAGE.read_text()
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the Python API section holds one example"
    return blocks[0]


def test_python_api_example_runs(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # the example writes nothing; any file would show up here
    exec(compile(python_api_example(), "docs/python-api.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("48 ['synth0000', 'synth0001']")
    assert 0.0 <= float(printed[-1].split()[0]) <= 1.0
    assert list(tmp_path.iterdir()) == []
