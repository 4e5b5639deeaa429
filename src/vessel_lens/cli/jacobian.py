"""``vessel-lens jacobian``: exact Jacobians of a dataset's images, one zarr store per image."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vessel_lens.cli._common import (
    CHECKPOINT_HELP,
    CropBoxOption,
    ModelArgsOption,
    ModelOption,
    ThreadsOption,
    WeightsOption,
    command_threads,
    parse_crop_options,
    parse_pixels,
    split_values,
)


def jacobian(
    out: Annotated[Path, typer.Option(help="Folder for the stores (one <stem>.zarr per image).")],
    checkpoint: Annotated[str | None, typer.Option(help=CHECKPOINT_HELP)] = None,
    model: ModelOption = None,
    model_args: ModelArgsOption = None,
    weights: WeightsOption = None,
    data: Annotated[
        str | None,
        typer.Option(
            help="Dataset folder or CSV manifest (default: the embedded synthetic vessels)."
        ),
    ] = None,
    split: Annotated[str, typer.Option(help="Split to use: train, val, test or all.")] = "test",
    crop: Annotated[
        int | None,
        typer.Option(
            help="Side of the centred square crop taken from each image (the rows are "
            "taken with respect to the crop); 0 for whole images. [default: 64]",
            show_default=False,
        ),
    ] = None,
    images: Annotated[
        list[str] | None,
        typer.Option(help="Only these image stems (several: a b, or a,b)."),
    ] = None,
    dtype: Annotated[
        str,
        typer.Option(help="Storage type: float32, float16 or uint8 (per-block min/max scaling)."),
    ] = "float32",
    pixels: Annotated[
        list[str] | None,
        typer.Option(
            help="Output pixels ROW:COL within the crop (several: 10:12 30:5, or comma-separated)."
        ),
    ] = None,
    pixel_stride: Annotated[
        int,
        typer.Option(
            help="Every S-th output pixel in each direction (the original's sampling_rate)."
        ),
    ] = 1,
    output: Annotated[
        str, typer.Option(help="Differentiated output: probability, logit or margin.")
    ] = "probability",
    target_class: Annotated[int, typer.Option(help="Class whose output is differentiated.")] = 1,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = "auto",
    strategy: Annotated[
        str,
        typer.Option(
            help="auto, linear, vmap or loop (one backward pass per pixel, the original)."
        ),
    ] = "auto",
    chunk_rows: Annotated[
        int | None,
        typer.Option(
            help="Rows per batched backward pass (default: sized to memory). Only how this "
            "run computes: never stored, so a later run may use another value."
        ),
    ] = None,
    block_rows: Annotated[
        int | None,
        typer.Option(
            help="Rows per stored block, the unit that is saved and resumed; fixed when a "
            "store is created (default: up to 256 rows and 64 MiB)."
        ),
    ] = None,
    crop_box: CropBoxOption = None,
    threads: ThreadsOption = 0,
    yes: Annotated[
        bool,
        typer.Option("--yes", help="Write stores that would take more than 2 GiB (uncompressed)."),
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            help="Replace stores computed with other settings, and recompute finished ones. "
            "Without it, finished stores are skipped, unfinished ones resumed, and stores "
            "with other settings refused."
        ),
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar (rows/s, ETA).")] = True,
) -> int:
    """Compute exact Jacobians (d output pixel / d input pixel) and store them per image.

    Resumes interrupted runs; under torchrun the images (or blocks of rows) are shared
    among the processes.
    """
    from vessel_lens.distributed import shutdown_distributed
    from vessel_lens.interpret.jacobian.run import ExtractConfig, extract_jacobians
    from vessel_lens.models.source import parse_model_args

    config = ExtractConfig(
        checkpoint=checkpoint,
        out=out,
        model=model,
        model_args=parse_model_args(model_args),
        weights=weights,
        data=data,
        split=split,
        crop=crop,
        images=split_values(images),
        dtype=dtype,
        pixels=parse_pixels(pixels),
        pixel_stride=pixel_stride,
        output=output,
        target_class=target_class,
        device=device,
        strategy=strategy,
        chunk_rows=chunk_rows,
        block_rows=block_rows,
        crop_box=parse_crop_options(crop, crop_box),
        threads=threads,
        yes=yes,
        overwrite=overwrite,
        progress=progress,
    )
    try:
        with command_threads(threads):
            result = extract_jacobians(config)
    finally:
        shutdown_distributed()
    if result.is_main:
        typer.echo(
            f"{len(result.stores)} store(s) in {out}: computed {result.computed} block(s) "
            f"({result.rows} rows) in {result.seconds:.1f} s; {result.skipped} block(s) were "
            "already done"
        )
    return 0


def register(app: typer.Typer) -> None:
    app.command("jacobian")(jacobian)
