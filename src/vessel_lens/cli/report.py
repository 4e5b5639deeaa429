"""``vessel-lens report``: one self-contained HTML page explaining a checkpoint's predictions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vessel_lens.cli._common import (
    CHECKPOINT_HELP,
    DEFAULT_OVERLAP,
    DEFAULT_TILE,
    CropBoxOption,
    ModelArgsOption,
    ModelOption,
    OverlapOption,
    ThreadsOption,
    TileOption,
    WeightsOption,
    command_threads,
    model_source,
    parse_crop_options,
    parse_pixels,
    split_values,
)


def report(
    out: Annotated[Path, typer.Option(help="Folder for report.html, figures/ and tables/.")],
    checkpoint: Annotated[str | None, typer.Option(help=CHECKPOINT_HELP)] = None,
    model: ModelOption = None,
    model_args: ModelArgsOption = None,
    weights: WeightsOption = None,
    data: Annotated[
        str | None, typer.Option(help="Dataset folder or CSV manifest (default: synthetic).")
    ] = None,
    split: Annotated[str, typer.Option(help="train, val, test or all.")] = "test",
    images: Annotated[
        list[str] | None,
        typer.Option(help="Image stems to show (several: a b, or a,b)."),
    ] = None,
    max_images: Annotated[
        int, typer.Option(help="Show at most this many images (when --images is not given).")
    ] = 2,
    crop: Annotated[
        int, typer.Option(help="Use the centred CROP x CROP part of each image (0: whole).")
    ] = 0,
    pixels: Annotated[
        list[str] | None,
        typer.Option(
            help="Output pixels ROW:COL in the (cropped) image (several: 10:12 30:5, or "
            "comma-separated). Default: a confident vessel, a background pixel and a false "
            "positive."
        ),
    ] = None,
    methods: Annotated[
        list[str] | None,
        typer.Option(help="Attribution methods (several: a b, or a,b; default: all)."),
    ] = None,
    threshold: Annotated[
        float, typer.Option(help="Thresholded-gradient fraction of each pixel's own max.")
    ] = 0.01,
    sanity_images: Annotated[
        int, typer.Option(help="First images that get the sanity checks (0: none).")
    ] = 1,
    sanity_methods: Annotated[
        list[str] | None,
        typer.Option(
            help="Methods of the randomisation test (default: saliency, guided_backprop)."
        ),
    ] = None,
    deletion_methods: Annotated[
        list[str] | None,
        typer.Option(
            help="Methods of the deletion curves (default: saliency, integrated_gradients)."
        ),
    ] = None,
    erf: Annotated[
        Path | None, typer.Option(help="Receptive-field output folder to include.")
    ] = None,
    run: Annotated[
        Path | None,
        typer.Option(help="Training run folder (default: the checkpoint's folder if it is one)."),
    ] = None,
    zoom: Annotated[
        int, typer.Option(help="Side of the window attribution panels show (0: whole image).")
    ] = 96,
    shared_scale: Annotated[
        bool,
        typer.Option(
            help="One colour scale for every attribution panel (default: each panel its own)."
        ),
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of the random parts.")] = 0,
    tile: TileOption = DEFAULT_TILE,
    overlap: OverlapOption = DEFAULT_OVERLAP,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = "auto",
    threads: ThreadsOption = 0,
    crop_box: CropBoxOption = None,
    overwrite: Annotated[bool, typer.Option(help="Replace a report already in --out.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> int:
    """Write an offline HTML report: panels, attributions, sanity checks, training curves."""

    from vessel_lens.data.source import open_dataset
    from vessel_lens.devices import resolve_device
    from vessel_lens.errors import ConfigError, DataError
    from vessel_lens.models.foreign import ForeignCheckpoint
    from vessel_lens.threads import check_threads
    from vessel_lens.viz.report import check_output, crop_sample, write_report
    from vessel_lens.viz.report_options import DELETION_METHODS, SANITY_METHODS, ReportOptions
    from vessel_lens.viz.report_sections import find_run_folder

    source = model_source(checkpoint, model, model_args, weights)
    if max_images < 1:
        raise ConfigError(f"--max-images {max_images}: must be at least 1")
    box = parse_crop_options(crop or None, crop_box)
    check_threads(threads)
    check_output(out, overwrite)
    options = ReportOptions(
        pixels=parse_pixels(pixels),
        threshold=threshold,
        sanity_images=sanity_images,
        seed=seed,
        zoom=zoom,
        shared_scale=shared_scale,
        tile=tile,
        overlap=overlap,
        **({"methods": split_values(methods)} if methods else {}),
        sanity_methods=split_values(sanity_methods) if sanity_methods else list(SANITY_METHODS),
        deletion_methods=(
            split_values(deletion_methods) if deletion_methods else list(DELETION_METHODS)
        ),
    )
    dev = resolve_device(device)
    net, ckpt = source.load(dev)
    given = {
        "--methods": methods,
        "--sanity-methods": sanity_methods,
        "--deletion-methods": deletion_methods,
    }
    left_out = _without_layer_methods(options, net, ckpt, given)
    # a model from outside vessel-lens lies in no vessel-lens training run
    foreign = isinstance(ckpt, ForeignCheckpoint)
    run_dir, run_note = find_run_folder(run, None if foreign else ckpt.path)
    channels = ckpt.in_channels
    dataset = open_dataset(data, keep_channels=channels > 1, checkpoint=ckpt)
    samples = dataset.subset(split)
    wanted = split_values(images)
    if wanted:
        by_stem = {s.stem: s for s in samples}
        missing = [stem for stem in wanted if stem not in by_stem]
        if missing:
            raise DataError(f"image {missing[0]!r} is not in split {split!r} of {dataset.name}")
        samples = [by_stem[stem] for stem in wanted]
    else:
        samples = samples[:max_images]
    samples = [crop_sample(s, crop, box) for s in samples]
    description = {
        "checkpoint": str(ckpt.path) if ckpt.path is not None else "none (--model)",
        "model": f"{ckpt.model_name}({', '.join(f'{k}={v}' for k, v in ckpt.model_kwargs.items())})",
        "data": dataset.name,
        "split": split,
        "images": ", ".join(s.stem for s in samples),
        "crop": _described_crop(crop, box),
        "probability": f"sliding {tile}x{tile} windows, overlap {overlap:g}, beyond {tile} px"
        if tile
        else "whole images in one pass",
        "device": str(dev),
    }
    if left_out:
        description["methods left out"] = left_out
    if all(s.mask is not None for s in samples):
        description["field of view"] = "masks: pixels outside are not chosen, grey in the errors"
    with command_threads(threads):
        outputs = write_report(
            net,
            samples,
            out,
            options=options,
            description=description,
            run_dir=run_dir,
            run_note=run_note,
            recorded=ckpt.metadata,
            erf_dir=erf,
            device=dev,
            overwrite=overwrite,
            progress=progress,
        )
    typer.echo(
        f"wrote {outputs.html} ({len(outputs.figures)} figures, {len(outputs.tables)} tables) "
        f"in {outputs.seconds:.0f} s"
    )
    return 0


def _without_layer_methods(options, net, checkpoint, given: dict) -> str:
    """Leave out the methods that need the model's layers when a TorchScript or exported
    program hides them (refuse them when asked for by name); what was left out and why."""
    from vessel_lens.errors import ConfigError
    from vessel_lens.interpret.attribution.methods import LAYER_METHODS, hides_layers

    if not hides_layers(net):
        return ""
    reason = f"the {getattr(checkpoint, 'kind', 'TorchScript')} program runs its layers inside it"
    for option, values in given.items():
        asked = [m for m in split_values(values) if m in LAYER_METHODS]
        if asked:
            raise ConfigError(
                f"{option} {asked[0]}: needs the model's layers, but {reason}; leave it out, "
                "or give the model as --model module:factory --weights FILE"
            )
    options.methods = [m for m in options.methods if m not in LAYER_METHODS]
    options.sanity_methods = [m for m in options.sanity_methods if m not in LAYER_METHODS]
    options.deletion_methods = [m for m in options.deletion_methods if m not in LAYER_METHODS]
    return f"{', '.join(LAYER_METHODS)} ({reason})"


def _described_crop(crop: int, box: tuple[int, int, int, int] | None) -> str:
    if box is not None:
        top, left, height, width = box
        return (
            f"{height}x{width} at rows {top}-{top + height - 1}, columns {left}-{left + width - 1}"
        )
    return f"centred {crop}x{crop}" if crop else "whole images"


def register(app: typer.Typer) -> None:
    app.command("report")(report)
