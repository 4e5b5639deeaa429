"""Panel titles that fit their panel: plotly draws a title on one line and lets the panel cut
it, so long titles (a comparison's "A: ..." prefix, an attribution's target, a note) are broken
into lines here, and the panel's top margin grows with them."""

from __future__ import annotations

import textwrap

TITLE_CHARS = 48
"""Characters per title line: a third of a 1280-pixel-wide page at the 13 px title font."""
LINE_PX = 16
"""Height of one title line at the 13 px title font."""


def title_lines(text: str, width: int = TITLE_CHARS) -> list[str]:
    """``text`` broken at spaces into lines of at most ``width`` characters (a longer word
    stays whole on its own line); no characters are dropped."""
    return textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False) or [""]


def wrapped_title(text: str, width: int = TITLE_CHARS) -> str:
    """The title as plotly writes several lines."""
    return "<br>".join(title_lines(text, width))


def title_margin(text: str, width: int = TITLE_CHARS) -> int:
    """Top margin (px) that holds the wrapped title above the plot."""
    return 18 + LINE_PX * len(title_lines(text, width))
