"""Helpers shared by CLI commands: option parsing and printing tables."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from vessel_lens.errors import ConfigError

DEFAULT_TILE = 1024
"""``--tile`` of the commands that predict whole images."""
DEFAULT_OVERLAP = 0.25
"""``--overlap``: as ``vessel_lens.models.inference.DEFAULT_OVERLAP`` (torch-free here)."""
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
THREADS_HELP = (
    "CPU threads for torch. 0: the cores this process may use minus the current load "
    "average, rounded, at least 1 (under torchrun shared among the local processes); on a "
    "busy machine more threads than free cores wait for each other. The number used is "
    "printed, e.g. 'threads: 1 (2 cores, load 1.9)'."
)
ThreadsOption = Annotated[int, typer.Option(help=THREADS_HELP)]
CropBoxOption = Annotated[
    str | None,
    typer.Option(
        help="Crop TOP,LEFT,HEIGHT,WIDTH of each image (anywhere, e.g. away from a vessel-free "
        "centre) instead of the centred --crop; sides of at least 16, inside every image."
    ),
]


@contextmanager
def command_threads(threads: int) -> Iterator[object]:
    """Run a command's work with ``threads`` torch threads (0: chosen, see
    :mod:`vessel_lens.threads`), restoring torch's setting afterwards. The one line that says
    how many goes to stderr when the computation starts (under torchrun, from process 0), or
    at the end of a run with nothing to compute; a refused input stays the only line."""
    from vessel_lens.threads import torch_threads

    def say(choice) -> None:
        if os.environ.get("RANK", "0") == "0":
            print(choice.describe(), file=sys.stderr, flush=True)

    with torch_threads(threads, announce=say) as choice:
        yield choice


def parse_crop_options(
    crop: int | None, crop_box: str | None, full: bool = False
) -> tuple[int, int, int, int] | None:
    """The box of ``--crop-box`` (None when not given), refused with ``--crop`` or ``--full``."""
    if crop_box is None:
        return None
    from vessel_lens.data.crops import parse_crop_box

    for name, given in (("--crop", crop is not None), ("--full", full)):
        if given:
            raise ConfigError(f"{name} and --crop-box exclude each other")
    return parse_crop_box(crop_box)


CHECKPOINT_HELP = (
    "Checkpoint file, run folder (uses best.pt), shipped name (vessmap-w16), or a TorchScript "
    "or torch.export (.pt2) model file."
)
ModelOption = Annotated[
    str | None,
    typer.Option(
        help="Instead of --checkpoint, a model from outside vessel-lens: "
        "package.module:factory or path/to/file.py:factory, a callable returning a "
        "torch.nn.Module of (B, K, H, W) class logits."
    ),
]
ModelArgsOption = Annotated[
    str | None,
    typer.Option(
        help="""Keyword arguments of the --model factory as a JSON object, e.g. '{"in_channels": 1}'."""
    ),
]
WeightsOption = Annotated[
    str | None,
    typer.Option(
        help="State dict loaded into the --model (a bare state dict, one under 'state_dict' "
        "or 'model', or a vessel-lens checkpoint; read with weights_only=True)."
    ),
]


def model_source(
    checkpoint: str | None, model: str | None, model_args: str | None, weights: str | None
):
    """The model the options name (:class:`vessel_lens.models.source.ModelSource`)."""
    from vessel_lens.models.source import ModelSource, parse_model_args

    return ModelSource(checkpoint, model, parse_model_args(model_args), weights)


def print_table(rows: Iterable[tuple[str, str]]) -> None:
    rows = list(rows)
    width = max((len(k) for k, _ in rows), default=0)
    for key, value in rows:
        print(f"  {key:<{width}}  {value}")


def split_values(values: str | Iterable[str] | None) -> list[str]:
    """The items of a multi-value option: ``--images a b``, ``--images a,b`` and
    ``--images a --images b`` all give ``["a", "b"]`` (commas, semicolons or spaces)."""
    if values is None:
        return []
    texts = [values] if isinstance(values, str) else list(values)
    return [v for text in texts for v in re.split(r"[,;\s]+", text.strip()) if v]


def parse_floats(values: str | Iterable[str] | None, option: str) -> tuple[float, ...]:
    """Numbers of a multi-value option (see :func:`split_values`)."""
    items = split_values(values)
    try:
        numbers = tuple(float(v) for v in items)
    except ValueError:
        bad = next(v for v in items if not _is_float(v))
        raise ConfigError(f"{option} {bad!r}: expected numbers, e.g. 0.01,0.05") from None
    if not numbers:
        raise ConfigError(f"{option}: no values given")
    return numbers


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_pixels(
    values: str | Iterable[str] | None, option: str = "--pixels"
) -> list[tuple[int, int]] | None:
    """Pixels of a multi-value option as ``ROW:COL`` items (``--pixels 10:12 30:5`` or
    ``--pixels 10:12,30:5``). The older ``ROW,COL`` pairs (``--pixels "10,12 30,5"``) are
    read with a deprecation warning. ``None`` when no value is given."""
    if values is None or (not isinstance(values, str) and not list(values)):
        return None
    texts = [values] if isinstance(values, str) else list(values)
    pixels, deprecated = [], []
    for text in texts:
        for token in re.split(r"[;\s]+", text.strip()):
            pair = re.fullmatch(r"(\d+),(\d+)", token)
            if pair is not None:
                deprecated.append(token)
                pixels.append((int(pair[1]), int(pair[2])))
                continue
            for item in filter(None, token.split(",")):
                match = re.fullmatch(r"(\d+):(\d+)", item)
                if match is None:
                    raise ConfigError(
                        f"{option} {item!r}: expected ROW:COL with integers >= 0, e.g. 10:12 30:5"
                    )
                pixels.append((int(match[1]), int(match[2])))
    if deprecated:
        written = " ".join(t.replace(",", ":") for t in deprecated)
        print(
            f"warning: {option} {' '.join(deprecated)}: ROW,COL pairs are deprecated; "
            f"write {written}",
            file=sys.stderr,
        )
    if not pixels:
        raise ConfigError(f"{option}: no pixels given")
    return pixels
