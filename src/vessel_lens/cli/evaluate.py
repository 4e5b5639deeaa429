"""``vessel-lens evaluate`` and ``vessel-lens predict``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vessel_lens.cli._common import (
    CHECKPOINT_HELP,
    DEFAULT_OVERLAP,
    DEFAULT_TILE,
    ModelArgsOption,
    ModelOption,
    OverlapOption,
    ThreadsOption,
    TileOption,
    WeightsOption,
    command_threads,
    model_source,
)


def evaluate(
    checkpoint: Annotated[str | None, typer.Option(help=CHECKPOINT_HELP)] = None,
    model: ModelOption = None,
    model_args: ModelArgsOption = None,
    weights: WeightsOption = None,
    data: Annotated[
        str | None, typer.Option(help="Dataset folder or CSV manifest (default: synthetic).")
    ] = None,
    split: Annotated[str, typer.Option(help="train, val, test or all.")] = "test",
    out: Annotated[
        Path | None, typer.Option(help="Folder for metrics.json, per_image.csv and panels/.")
    ] = None,
    panels: Annotated[bool, typer.Option(help="Write a PNG panel per image.")] = True,
    flip_average: Annotated[
        bool, typer.Option(help="Average predictions over the four flips.")
    ] = False,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = "auto",
    tile: TileOption = DEFAULT_TILE,
    overlap: OverlapOption = DEFAULT_OVERLAP,
    threads: ThreadsOption = 0,
    overwrite: Annotated[
        bool, typer.Option(help="Replace an earlier evaluation in --out.")
    ] = False,
) -> int:
    """Evaluate a model on whole images: table on stdout, JSON, CSV and PNG panels."""
    from vessel_lens.data.source import open_dataset
    from vessel_lens.data.statistics import data_statistics, distribution_warnings
    from vessel_lens.devices import resolve_device
    from vessel_lens.errors import ConfigError
    from vessel_lens.models.inference import check_tiling
    from vessel_lens.outputs import claim_output
    from vessel_lens.training.evaluate import evaluate_model, format_table, write_evaluation

    source = model_source(checkpoint, model, model_args, weights)
    check_tiling(tile, overlap)
    dev = resolve_device(device)
    net, ckpt = source.load(dev)
    channels = ckpt.in_channels
    dataset = open_dataset(data, keep_channels=channels > 1, checkpoint=ckpt)
    samples = dataset.subset(split)
    if samples and samples[0].image.shape[0] != channels:
        raise ConfigError(
            f"{dataset.name}: images have {samples[0].image.shape[0]} channel(s), but "
            f"{ckpt.path or ckpt.model_name} expects {channels}"
        )
    if out is None:
        out = Path("evaluations") / f"{model_stem(ckpt)}-{split}"
    written = ("metrics.json", "per_image.csv", *(("panels",) if panels else ()))
    masked = all(s.mask is not None for s in samples)
    # held, and shown to be writable, before anything is computed
    with (
        claim_output(out, "evaluate", replaces=written, overwrite=overwrite),
        command_threads(threads),
    ):
        result = evaluate_model(
            net,
            samples,
            dev,
            out / "panels" if panels else None,
            flip_average,
            tile=tile,
            overlap=overlap,
        )
        recorded = ckpt.metadata.get("training_data")
        warnings = distribution_warnings(
            recorded, data_statistics(samples), result.predicted_fraction
        )
        files = write_evaluation(
            result,
            out,
            {
                "checkpoint": None if ckpt.path is None else str(ckpt.path),
                **(
                    {"model": source.model, "model_args": ckpt.model_kwargs} if source.model else {}
                ),
                "data": dataset.name,
                "split": split,
                "flip_average": flip_average,
                "tile": tile,
                "overlap": overlap,
                "masks": masked,
                "training_data": recorded,
                "warnings": warnings,
            },
        )
    for line in warnings:
        typer.echo(f"warning: {line}", err=True)
    inside = " (pixels inside the field-of-view masks)" if masked else ""
    typer.echo(f"{len(samples)} images of split {split!r} in {dataset.name}{inside}")
    for line in format_table(result):
        typer.echo(line)
    typer.echo(
        f"wrote {files['metrics']}, {files['per_image']}"
        + (f" and {out / 'panels'}/" if panels else "")
    )
    return 0


def model_stem(checkpoint) -> str:
    """A name for outputs of this model: its file's stem, else its factory's name."""
    if checkpoint.path is not None:
        return Path(str(checkpoint.path)).stem
    return str(checkpoint.model_name).rpartition(":")[2] or "model"


def predict(
    images: Annotated[Path, typer.Option(help="An image file or a folder of images.")],
    out: Annotated[
        Path, typer.Option(help="Folder for <stem>_probability.png and <stem>_mask.png.")
    ],
    checkpoint: Annotated[str | None, typer.Option(help=CHECKPOINT_HELP)] = None,
    model: ModelOption = None,
    model_args: ModelArgsOption = None,
    weights: WeightsOption = None,
    threshold: Annotated[
        float, typer.Option(help="Probability above which a pixel is vessel.")
    ] = 0.5,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = "auto",
    tile: TileOption = DEFAULT_TILE,
    overlap: OverlapOption = DEFAULT_OVERLAP,
    threads: ThreadsOption = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace existing outputs.")] = False,
) -> int:
    """Predict vessel probability and mask PNGs for new images."""
    from vessel_lens.devices import resolve_device
    from vessel_lens.models.inference import check_tiling
    from vessel_lens.training.predict import predict_folder

    source = model_source(checkpoint, model, model_args, weights)
    check_tiling(tile, overlap)
    dev = resolve_device(device)
    net, ckpt = source.load(dev)
    with command_threads(threads):
        written = predict_folder(
            net,
            images,
            out,
            ckpt.in_channels,
            dev,
            threshold,
            overwrite,
            tile=tile,
            overlap=overlap,
        )
    typer.echo(f"wrote {len(written)} files to {out}")
    return 0


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
    app.command("predict")(predict)
