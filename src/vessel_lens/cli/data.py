"""``vessel-lens data check`` and ``vessel-lens data synth``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vessel_lens.cli._common import print_table


def check(
    data: Annotated[
        Path,
        typer.Option(
            help="Dataset folder (images/, labels/[, skeletons/, masks/, splits/]) or CSV "
            "manifest (image,label[,skeleton][,mask][,split])."
        ),
    ],
    preview: Annotated[
        Path | None,
        typer.Option(help="Write a PNG grid of samples and augmented crops to this .png file."),
    ] = None,
    crop_size: Annotated[
        int | None, typer.Option(help="Report images smaller than this training crop size.")
    ] = None,
    keep_channels: Annotated[
        bool, typer.Option(help="Keep RGB channels instead of converting to grey.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --preview file.")] = False,
) -> int:
    """Validate a dataset and print a summary; exit 1 if any file has an error."""
    from vessel_lens.data.check import check_dataset
    from vessel_lens.viz.preview import preview_figure
    from vessel_lens.write_errors import check_output_file, writing_file

    if preview is not None:  # before the check, which can take a while
        preview = check_output_file(preview, "--preview", overwrite=overwrite)
    report = check_dataset(data, crop_size=crop_size, keep_channels=keep_channels)
    for line in report.warnings:
        typer.echo(f"warning: {line}", err=True)
    for line in report.errors:
        typer.echo(f"error: {line}", err=True)
    print_table(report.summary_rows())
    if preview is not None:
        if not report.samples:
            typer.echo(f"error: --preview {preview}: no image could be read; not written", err=True)
            return 1
        with writing_file(preview, overwrite) as partial:
            preview_figure(report.samples, partial, crop_size=crop_size or 128)
        typer.echo(f"preview written to {preview}")
    return 0 if report.ok else 1


def synth(
    out: Annotated[Path, typer.Option(help="Folder to create (must not exist, or be empty).")],
    count: Annotated[int, typer.Option(help="Number of images.")] = 32,
    size: Annotated[int, typer.Option(help="Image side in pixels (16 to 4096).")] = 256,
    seed: Annotated[int, typer.Option(help="Random seed (zero or positive).")] = 0,
) -> int:
    """Write a synthetic vessel dataset (images, labels, skeletons as PNG)."""
    from vessel_lens.data.synthetic import write_synthetic_dataset

    stems = write_synthetic_dataset(out, count=count, size=size, seed=seed)
    typer.echo(f"wrote {len(stems)} samples to {out}")
    return 0


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Check datasets and write synthetic ones.", no_args_is_help=True)
    group.command("check")(check)
    group.command("synth")(synth)
    app.add_typer(group, name="data")
