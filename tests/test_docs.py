"""The documentation: the MkDocs site builds strictly, the API reference lists every public name
with its docstring, every public function's docstring ends with an example that runs, and the
README's tour uses commands and options that exist."""

from __future__ import annotations

import doctest
import importlib
import inspect
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from vessel_lens.cli import build_app

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "docs" / "reference"
PACKAGES = {
    "vessel_lens.data": "data.md",
    "vessel_lens.models": "models.md",
    "vessel_lens.training": "training.md",
    "vessel_lens.interpret": "interpret.md",
    "vessel_lens.app": "app.md",
}
"""Packages whose ``__all__`` is the public API, and the reference page documenting each."""


def test_the_site_builds_strictly(tmp_path):
    """A broken link or anchor, a missing page or an object mkdocstrings cannot find fails."""
    mkdocs = Path(sys.executable).with_name("mkdocs")
    result = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    page = (tmp_path / "site" / "reference" / "interpret" / "index.html").read_text()
    assert "receptive_field_maps" in page and "JacobianEngine" in page
    # the function jacobian, not the package of the same name (interpret.jacobian is both)
    assert "every output pixel, row-major" in page and "Exact Jacobians: the engine" not in page
    assert not re.search(r":(func|class|meth|mod|data):<code>", page), "a Sphinx role is shown"


EXAMPLES = (
    "vessel_lens.data",
    "vessel_lens.models",
    "vessel_lens.training",
    "vessel_lens.interpret",
    "vessel_lens.app",
)
"""Packages whose public functions must show a runnable example in their docstrings."""


def public_functions():
    for package in EXAMPLES:
        module = importlib.import_module(package)
        for name in module.__all__:
            value = getattr(module, name)
            if inspect.isfunction(value):
                yield pytest.param(value, id=f"{package}.{name}")


@pytest.mark.parametrize("function", list(public_functions()))
def test_public_functions_end_with_an_example_that_runs(function):
    """The ``Examples:`` section of the docstring, run as a doctest (ellipsis allowed)."""
    name = f"{function.__module__}.{function.__qualname__}"
    found = doctest.DocTestFinder(recurse=False).find(function, name, globs={})
    examples = [test for test in found if test.examples]
    assert examples, f"{name}: its docstring has no example"
    assert "Examples:" in function.__doc__, f"{name}: the example has no 'Examples:' heading"
    report: list[str] = []
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in examples:
        runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)


def documented(page: str) -> set[str]:
    text = (REFERENCE / page).read_text()
    return {path.rsplit(".", 1)[-1] for path in re.findall(r"^::: (\S+)", text, flags=re.M)}


@pytest.mark.parametrize(("package", "page"), PACKAGES.items())
def test_every_public_class_and_function_is_in_the_reference_with_a_docstring(package, page):
    module = importlib.import_module(package)
    shown = documented(page)
    for name in module.__all__:
        value = getattr(module, name)
        if not (inspect.isclass(value) or inspect.isfunction(value)):
            text = (REFERENCE / page).read_text()
            assert f"`{name}`" in text, f"docs/reference/{page} does not mention {name}"
            continue
        assert name in shown, f"docs/reference/{page} lacks {package}.{name}"
        assert (value.__doc__ or "").strip(), f"{package}.{name} has no docstring"


def test_the_errors_page_lists_every_error():
    from vessel_lens import errors

    shown = documented("errors.md")
    for name, value in vars(errors).items():
        if (
            inspect.isclass(value)
            and issubclass(value, Exception)
            and value.__module__ == errors.__name__
        ):
            assert name in shown, f"docs/reference/errors.md lacks {name}"


def tour_commands() -> list[list[str]]:
    readme = (ROOT / "README.md").read_text()
    tour = readme.split("## A tour in 30 lines", 1)[1].split("\n## ", 1)[0]
    shell = re.findall(r"```bash\n(.*?)```", tour, flags=re.S)[0]
    commands = []
    for line in shell.splitlines():
        words = shlex.split(line, comments=True)
        if words and words[0] == "$V":
            commands.append(words[1:])
    return commands


def test_the_readme_tour_uses_commands_and_options_that_exist():
    root = typer.main.get_command(build_app())
    commands = tour_commands()
    assert len(commands) >= 8
    for words in commands:
        command, rest = root, list(words)
        while rest and hasattr(command, "commands") and rest[0] in command.commands:
            command = command.commands[rest.pop(0)]
        assert not hasattr(command, "commands"), f"`{' '.join(words)}`: no such command"
        options = {opt for param in command.params for opt in param.opts}
        for word in rest:
            if word.startswith("--"):
                assert word in options, f"`{' '.join(words)}`: {word} is not an option"


def test_the_readme_tour_python_runs(monkeypatch, tmp_path):
    readme = (ROOT / "README.md").read_text()
    tour = readme.split("## A tour in 30 lines", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"```python\n(.*?)```", tour, flags=re.S)[0]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert tuple(namespace["rows"].shape) == (1, 1, 64, 64)
    assert tuple(namespace["maps"].count.shape)[-2:] == (64, 64)
    assert list(tmp_path.iterdir()) == []


def test_architecture_names_files_that_exist():
    """Every file or folder ARCHITECTURE.md names in backquotes exists: a path with a slash
    under ``src/vessel_lens/`` or the repository, a bare ``name.py`` somewhere in the package."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    package = ROOT / "src" / "vessel_lens"
    names = set(re.findall(r"`([\w./<>-]+(?:\.py|/))`", text))
    assert len(names) > 40
    for name in sorted(names):
        if "<" in name:  # a pattern such as models/<name>.py
            continue
        if "/" in name.rstrip("/"):
            assert (package / name).exists() or (ROOT / name).exists(), name
        else:
            assert any(package.rglob(name.rstrip("/"))) or (ROOT / name).exists(), name
