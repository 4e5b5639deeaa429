"""``vessel-lens erf`` and ``erf-stats``: receptive-field maps per image, and their statistics
over a split against prediction, correctness, distance to the centreline and vessel width."""

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
    parse_floats,
    split_values,
)
from vessel_lens.errors import ConfigError


def erf(
    out: Annotated[
        Path,
        typer.Option(help="Folder for <stem>.erf.npz, <stem>_erf.png, summary.csv, erf-run.json."),
    ],
    checkpoint: Annotated[str | None, typer.Option(help=CHECKPOINT_HELP)] = None,
    model: ModelOption = None,
    model_args: ModelArgsOption = None,
    weights: WeightsOption = None,
    from_jacobian: Annotated[
        Path | None,
        typer.Option(
            help="Folder of stores written by vessel-lens jacobian: use their rows instead "
            "of a model (nothing is recomputed)."
        ),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(help="Dataset folder or CSV manifest (default: synthetic vessels)."),
    ] = None,
    split: Annotated[str, typer.Option(help="Split to use: train, val, test or all.")] = "test",
    crop: Annotated[
        int | None,
        typer.Option(help="Side of the centred square crop of each image (default 64)."),
    ] = None,
    full: Annotated[bool, typer.Option("--full", help="Whole images instead of a crop.")] = False,
    images: Annotated[
        list[str] | None,
        typer.Option(help="Only these image stems (several: a b, or a,b)."),
    ] = None,
    fractions: Annotated[
        list[str],
        typer.Option(
            help="Threshold fractions (several: 0.01 0.05, or 0.01,0.05); 0.01 means 1 % "
            "(mode absolute: the thresholds themselves)."
        ),
    ] = ["0.005", "0.01", "0.05", "0.1", "0.25", "0.5"],  # noqa: B006 (typer reads it)
    mode: Annotated[
        str,
        typer.Option(
            help="global: f x max |g| over the image's whole Jacobian; pixel: f x max |g_p|; "
            "absolute: f itself."
        ),
    ] = "global",
    channels: Annotated[
        str, typer.Option(help="sum: |g| summed over input channels; separate: maps per channel.")
    ] = "sum",
    mass_fractions: Annotated[
        list[str],
        typer.Option(help="Fractions of the gradient mass whose radius is measured."),
    ] = ["0.5", "0.9"],  # noqa: B006 (typer reads it)
    pixel_stride: Annotated[
        int, typer.Option(help="Every S-th output pixel in each direction.")
    ] = 1,
    output: Annotated[
        str, typer.Option(help="Differentiated output: probability, logit or margin.")
    ] = "probability",
    target_class: Annotated[int, typer.Option(help="Class whose output is differentiated.")] = 1,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = "auto",
    strategy: Annotated[str, typer.Option(help="auto, linear, vmap or loop.")] = "auto",
    colouring: Annotated[
        str,
        typer.Option(
            help="Share one backward pass between pixels whose receptive fields do not "
            "overlap: auto (when it pays: not for the linear strategy), always or never."
        ),
    ] = "auto",
    chunk_rows: Annotated[
        int | None,
        typer.Option(help="Rows (or coloured passes) per batch (default: sized to memory)."),
    ] = None,
    figures: Annotated[bool, typer.Option(help="Write a PNG of each image's maps.")] = True,
    crop_box: CropBoxOption = None,
    threads: ThreadsOption = 0,
    overwrite: Annotated[
        bool,
        typer.Option(
            help="Replace map files made with other settings and recompute finished images. "
            "Without it, finished images are skipped and files with other settings refused."
        ),
    ] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar (pixels/s, ETA).")] = True,
) -> int:
    """Receptive-field maps (thresholded-gradient counts, boxes, fulfillment, centroid offset,
    mass radius) of every pixel of each image, exact, computed as the Jacobian streams by.

    Resumes interrupted runs image by image; under torchrun the images are shared among the
    processes.
    """
    from vessel_lens.distributed import shutdown_distributed
    from vessel_lens.interpret.fields.run import ErfConfig, describe, run_erf
    from vessel_lens.models.source import parse_model_args

    if full and crop is not None:
        raise ConfigError("--crop and --full exclude each other")
    box = parse_crop_options(crop, crop_box, full)
    if from_jacobian is not None:
        given = [
            name
            for name, value in (
                ("--checkpoint", checkpoint),
                ("--model", model),
                ("--model-args", model_args),
                ("--weights", weights),
                ("--data", data),
                ("--crop", crop),
                ("--crop-box", crop_box),
                ("--full", full or None),
                ("--strategy", None if strategy == "auto" else strategy),
                ("--pixel-stride", None if pixel_stride == 1 else pixel_stride),
                ("--split", None if split == "test" else split),
                ("--output", None if output == "probability" else output),
                ("--target-class", None if target_class == 1 else target_class),
                ("--colouring", None if colouring == "auto" else colouring),
            )
            if value is not None
        ]
        if given:
            raise ConfigError(
                f"--from-jacobian uses the stores' own rows: {given[0]} does not apply"
            )
    config = ErfConfig(
        out=out,
        checkpoint=checkpoint,
        model=model,
        model_args=parse_model_args(model_args),
        weights=weights,
        from_jacobian=from_jacobian,
        data=data,
        split=split,
        crop=0 if full else crop,
        images=split_values(images),
        fractions=parse_floats(fractions, "--fractions"),
        mode=mode,
        channels=channels,
        mass_fractions=parse_floats(mass_fractions, "--mass-fractions"),
        pixel_stride=pixel_stride,
        output=output,
        target_class=target_class,
        device=device,
        strategy=strategy,
        colouring=colouring,
        chunk_rows=chunk_rows,
        figures=figures,
        crop_box=box,
        threads=threads,
        overwrite=overwrite,
        progress=progress,
    )
    try:
        with command_threads(threads):
            result = run_erf(config)
    finally:
        shutdown_distributed()
    if result.is_main:
        typer.echo(describe(result, out))
    return 0


def erf_stats(
    erf_dir: Annotated[Path, typer.Argument(help="Folder written by vessel-lens erf.")],
    data: Annotated[
        str | None,
        typer.Option(help="The dataset the maps were computed on (labels and skeletons)."),
    ] = None,
    split: Annotated[
        str, typer.Option(help="Only maps of images in this split: train, val, test or all.")
    ] = "all",
    out: Annotated[
        Path | None, typer.Option(help="Folder for the tables and plots (default: ERF_DIR/stats).")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace the tables and plots of an earlier run.")
    ] = False,
) -> int:
    """Tabulate and plot receptive-field size against predicted class, correctness
    (TP/FP/FN/TN), distance to the nearest vessel centreline and local vessel width."""
    from vessel_lens.interpret.fields.stats_run import StatsConfig
    from vessel_lens.interpret.fields.stats_run import erf_stats as run_stats

    result = run_stats(
        StatsConfig(erf_dir=erf_dir, data=data, split=split, out=out, overwrite=overwrite)
    )
    for line in result.lines:
        typer.echo(line)
    return 0


def register(app: typer.Typer) -> None:
    app.command("erf")(erf)
    app.command("erf-stats")(erf_stats)
