"""A self-contained HTML page: inline CSS, images embedded as base64 PNG, no external resource,
so the file opens offline and can be mailed or archived alone."""

from __future__ import annotations

import base64
import csv
import html
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

_CSS = """
body { font-family: sans-serif; margin: 1.5em auto; max-width: 1400px; color: #222;
       line-height: 1.4; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
h3 { margin-top: 1.4em; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; margin: 0.4em 0; }
.scroll { max-width: 100%; overflow-x: auto; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; }
th { background: #f2f2f2; } td.text, th.text { text-align: left; }
.note { color: #555; font-size: 0.9em; } .missing { color: #a33; }
nav ul { columns: 2; }
"""


def escape(text: object) -> str:
    return html.escape(str(text), quote=True)


def embed_png(path: str | Path, alt: str) -> str:
    """An ``<img>`` holding the PNG file's bytes."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{escape(alt)}">'


def _cell(value: object) -> tuple[str, bool]:
    if isinstance(value, float):
        return ("nan" if math.isnan(value) else f"{value:.4g}"), False
    if isinstance(value, int):
        return str(value), False
    return escape(value), True


def table(rows: Sequence[dict], columns: Sequence[str] | None = None) -> str:
    """An HTML table of dict rows (floats shown with 4 significant digits), in a box that
    scrolls sideways when the table is wider than the page."""
    if not rows:
        return '<p class="note">(no rows)</p>'
    columns = list(columns or rows[0])
    head = "".join(f'<th class="text">{escape(c)}</th>' for c in columns)
    body = []
    for row in rows:
        cells = []
        for column in columns:
            text, is_text = _cell(row.get(column, ""))
            cells.append(f'<td class="text">{text}</td>' if is_text else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="scroll"><table><tr>{head}</tr>{"".join(body)}</table></div>'


def csv_table(path: Path, max_rows: int = 40) -> str:
    """A CSV file as an HTML table (first ``max_rows`` rows)."""
    with Path(path).open(newline="") as handle:
        reader = csv.DictReader(handle)
        every = [{k: v for k, v in row.items() if k is not None} for row in reader]
        columns = reader.fieldnames or []
    note = (
        f'<p class="note">first {max_rows} rows of {len(every)}</p>'
        if len(every) > max_rows
        else ""
    )
    return table(every[:max_rows], columns) + note


def details(summary: str, content: str) -> str:
    """A folded block (HTML ``<details>``, no script) that opens on a click."""
    return f"<details><summary>{escape(summary)}</summary>{content}</details>"


def paragraph(text: str, css: str = "note") -> str:
    return f'<p class="{css}">{escape(text)}</p>'


def section(title: str, anchor: str, parts: Iterable[str]) -> str:
    return f'<section id="{escape(anchor)}"><h2>{escape(title)}</h2>{"".join(parts)}</section>'


def page(title: str, intro: Iterable[str], sections: Sequence[tuple[str, str, str]]) -> str:
    """The whole document; ``sections`` are (title, anchor, html)."""
    nav = "".join(f'<li><a href="#{escape(a)}">{escape(t)}</a></li>' for t, a, _ in sections)
    body = "".join(html_text for _, _, html_text in sections)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{escape(title)}</h1>{''.join(intro)}<nav><ul>{nav}</ul></nav>{body}"
        "</body></html>\n"
    )
