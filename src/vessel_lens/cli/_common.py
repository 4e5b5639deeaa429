"""Helpers shared by CLI commands: option parsing and printing tables."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated

import typer

from vessel_lens.errors import ConfigError

DEFAULT_TILE = 1024
"""``--tile`` of the commands that predict whole images."""
DEFAULT_OVERLAP = 0.25
"""``--overlap``: as ``vessel_lens.training.inference.DEFAULT_OVERLAP`` (torch-free here)."""
TileOption = Annotated[
    int,
    typer.Option(
        help="Predict an image with a side longer than this in overlapping TILE x TILE "
        "windows blended with Gaussian weights (MONAI's sliding_window_inference), so memory "
        "grows with the tile, not the image; 0: always the whole image in one pass."
    ),
]
OverlapOption = Annotated[
    float, typer.Option(help="Fraction of each --tile window shared with its neighbours.")
]


def print_table(rows: Iterable[tuple[str, str]]) -> None:
    rows = list(rows)
    width = max((len(k) for k, _ in rows), default=0)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")


def parse_floats(text: str, option: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{option} {text!r}: expected comma-separated numbers") from None
    if not values:
        raise ConfigError(f"{option}: no values given")
    return values
