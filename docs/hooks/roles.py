"""MkDocs hook: the Sphinx roles of the docstrings (``:func:`~pkg.name```) shown as code.

The docstrings name other objects as Sphinx does; mkdocstrings renders the role's text as
is. This shows ``:func:`~vessel_lens.interpret.jacobian``` as ``jacobian`` (the ``~`` form:
the last part) and ``:class:`PixelStats``` as ``PixelStats``, without the role.
"""

from __future__ import annotations

import re

ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|exc|obj):<code>(~?)([^<]*)</code>")


def _shown(match: re.Match) -> str:
    short, target = match.group(1), match.group(2)
    return f"<code>{target.rsplit('.', 1)[-1] if short else target}</code>"


def on_page_content(html: str, **kwargs) -> str:
    return ROLE.sub(_shown, html)
