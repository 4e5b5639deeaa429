"""The command line, its configuration dataclasses and the manual's option tables agree."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import typer

from vessel_lens.cli import build_app

DOCS = Path(__file__).resolve().parents[2] / "docs"
TABLES = {"app.md": "app"}
"""Manual pages holding an ``| option | default | |`` table, and the command it documents."""


def command_defaults(name: str) -> dict[str, object]:
    command = typer.main.get_command(build_app()).commands[name]
    return {
        option: param.default
        for param in command.params
        for option in param.opts
        if option.startswith("--")
    }


def page_rows(page: str) -> list[tuple[str, str]]:
    text = (DOCS / page).read_text()
    rows = []
    for line in text.splitlines():
        match = re.match(r"\| (`--[^|]+) \| ([^|]+) \|", line)
        if match:
            options = re.findall(r"`(--[a-z-]+)", match.group(1))
            values = [v.strip().strip("`") for v in match.group(2).split(",")]
            if len(values) != len(options):
                values = values[:1] * len(options)
            rows += zip(options, values, strict=True)
    return rows


def as_written(value: object) -> str:
    if value is None or value == []:
        return "none"
    if value is False:
        return "off"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


@pytest.mark.parametrize(("page", "command"), TABLES.items())
def test_manual_option_tables_show_the_command_line_defaults(page, command):
    defaults = command_defaults(command)
    rows = page_rows(page)
    assert rows, f"no option table found in docs/{page}"
    for option, written in rows:
        assert option in defaults, f"docs/{page} documents {option}, which `{command}` lacks"
        actual = defaults[option]
        if written in ("none", "synthetic vessels", "vessmap-w16") and actual is None:
            continue  # documented default applied after parsing
        assert written == as_written(actual), (
            f"{command} {option}: docs/{page} {written!r}, CLI {actual!r}"
        )


def test_app_command_defaults_are_the_configuration_defaults():
    from vessel_lens.app.config import AppConfig

    defaults = command_defaults("app")
    for item in dataclasses.fields(AppConfig):
        option = "--" + item.name.replace("_", "-")
        if option in defaults and item.default is not dataclasses.MISSING:
            assert defaults[option] == item.default, (
                f"{option}: CLI {defaults[option]!r}, AppConfig {item.default!r}"
            )
