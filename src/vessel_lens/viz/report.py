"""The HTML report (``vessel-lens report``): one self-contained page plus its PNGs and CSVs.

Per image: input, vessel probability (softmax, or the sigmoid of a one-channel model) and
errors; per chosen pixel the thresholded-gradient map (count and box from
:func:`~vessel_lens.interpret.thresholds.pixel_stats`) and the signed gradient; the
attribution methods side by side for every chosen pixel. Then the training curves and metrics
(from a run folder), the model-parameter randomisation test and deletion/insertion
curves on the first image(s), and the receptive-field statistics of a ``vessel-lens erf``
output folder when one is given.

**Default pixels** (when none are given), chosen on each image from the prediction
(probability > 0.5) and the label, each the one closest to the image centre among its
candidates: a *confident vessel* pixel (predicted and labelled vessel, probability in the top
10 % of those), a *background* pixel (neither predicted nor labelled, probability in the
bottom 10 %), and a *confident false positive* (top 10 % of the false positives) if there is
one, otherwise a *clear false negative* (bottom 10 % of the false negatives), if any. Without a
label: the vessel and background pixels of the prediction. With a field-of-view mask, only
pixels inside it are candidates, and the error panel greys the outside.

Methods run with cheaper settings than the library defaults so a report stays quick on a CPU
(:func:`report_method_options`): 16 integration steps, 8 noise/baseline samples, occlusion
windows of 1/8 of the image side moved by the same amount. Attribution panels are zoomed to a
window of ``ReportOptions.zoom`` pixels around each target; the PNGs keep that zoom. Each has a
colour bar with its quantity and unit (``ReportOptions.shared_scale``: one scale for all), and
a map that is zero everywhere (typically Grad-CAM: no positive evidence at its layer) says why,
on its panel and in the text.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from vessel_lens.data.crops import CropBox, crop_to_box, parse_crop_box
from vessel_lens.data.samples import Sample
from vessel_lens.errors import ConfigError
from vessel_lens.interpret.attribution.methods import attribute
from vessel_lens.interpret.attribution.targets import pixel_target
from vessel_lens.interpret.jacobian.engine import jacobian
from vessel_lens.interpret.thresholds import gradient_magnitude, pixel_stats, threshold_value
from vessel_lens.models.inference import (
    frozen_eval,
    model_device,
    vessel_probability,
)
from vessel_lens.outputs import claim_output, refuse_replacing
from vessel_lens.threads import work_starts
from vessel_lens.viz import html_page as hp
from vessel_lens.viz.attribution_plots import attribution_grid, pixel_panels
from vessel_lens.viz.report_options import (
    ReportContext,
    ReportOptions,
    report_method_options,
)
from vessel_lens.viz.report_sections import (
    attribution_intro,
    erf_section,
    images_intro,
    sanity_section,
    training_section,
    write_csv,
    zero_map_notes,
)

REPORT_FILE = "report.html"


@dataclass
class ReportOutputs:
    html: Path
    figures: list[Path]
    tables: list[Path]
    seconds: float


def _closest_to_centre(candidates: torch.Tensor, shape: tuple[int, ...]) -> tuple[int, int]:
    centre = torch.tensor([(shape[0] - 1) / 2, (shape[1] - 1) / 2])
    distance = ((candidates.float() - centre) ** 2).sum(1)
    row, col = candidates[int(torch.argmin(distance))].tolist()
    return int(row), int(col)


def choose_pixels(
    probability: torch.Tensor, label: torch.Tensor | None, mask: torch.Tensor | None = None
) -> list[tuple[int, int, str]]:
    """Default pixels (row, col, why) of one image, inside ``mask`` if given (module docs)."""
    shape = tuple(probability.shape)
    predicted = probability > 0.5
    truth = predicted if label is None else label.bool()
    inside = torch.ones(shape, dtype=torch.bool) if mask is None else mask.bool()
    chosen = []
    for why, region, top in (
        ("vessel", predicted & truth, True),
        ("background", ~predicted & ~truth, False),
        ("false positive", predicted & ~truth, True),
        ("false negative", ~predicted & truth, False),
    ):
        if why == "false negative" and chosen and chosen[-1][2] == "false positive":
            break
        region = region & inside
        values = probability[region]
        if values.numel() == 0:
            continue
        cut = float(torch.quantile(values.double(), 0.9 if top else 0.1))
        keep = region & ((probability >= cut) if top else (probability <= cut))
        chosen.append((*_closest_to_centre(torch.nonzero(keep), shape), why))
    return chosen


def crop_sample(sample: Sample, crop: int = 0, box: CropBox | None = None) -> Sample:
    """The ``box`` (top, left, height, width) part of a sample, or its centred ``crop`` x
    ``crop`` part; the sample itself for neither. The two exclude each other."""
    if box is not None:
        if crop:
            raise ConfigError("--crop and --crop-box exclude each other")
        return crop_to_box(sample, parse_crop_box(box))
    if crop == 0:
        return sample
    height, width = sample.size
    if crop < 16 or crop > height or crop > width:
        raise ConfigError(
            f"--crop {crop}: must be 0 or between 16 and the image size "
            f"({sample.stem} is {height}x{width})"
        )
    return crop_to_box(sample, ((height - crop) // 2, (width - crop) // 2, crop, crop))


def _pixels_for(
    sample: Sample, probability: torch.Tensor, given: list[tuple[int, int]] | None
) -> list[tuple[int, int, str]]:
    if given is None:
        return choose_pixels(probability, sample.label, sample.mask)
    _check_pixels(sample, given)
    return [(int(r), int(c), "given") for r, c in given]


def _check_pixels(sample: Sample, given: list[tuple[int, int]]) -> None:
    height, width = sample.size
    for row, col in given:
        if not (0 <= row < height and 0 <= col < width):
            raise ConfigError(
                f"--pixels {row},{col}: outside image {sample.stem} ({height}x{width})"
            )


@dataclass
class _ImageResult:
    sample: Sample
    pixels: list[tuple[int, int, str]]
    maps: list[dict[str, torch.Tensor]]
    html: str
    attribution_html: str
    figures: list[Path]


def _image_part(
    model: nn.Module,
    sample: Sample,
    options: ReportOptions,
    figures: Path,
    device: torch.device,
    bar: tqdm,
    table_rows: list[dict],
) -> _ImageResult:
    """Panels, pixel statistics and the attribution grid of one image."""
    image = sample.image
    height, width = sample.size
    probability = vessel_probability(
        model, image, device, tile=options.tile, overlap=options.overlap
    )
    pixels = _pixels_for(sample, probability, options.pixels)
    bar.total += len(pixels) * len(options.methods)
    bar.refresh()
    coords = torch.tensor([[r, c] for r, c, _ in pixels], dtype=torch.long).reshape(-1, 2)
    gradients = jacobian(model, image, pixels=coords, device=device)
    gradients = gradients.float().cpu()
    magnitude = gradient_magnitude(gradients)
    stats = [pixel_stats(m, threshold_value(m, options.threshold, "pixel")) for m in magnitude]
    panel = pixel_panels(
        image,
        probability,
        sample.label,
        pixels,
        gradients,
        stats,
        figures / f"{sample.stem}_pixels.png",
        zoom=options.zoom,
        mask=sample.mask,
    )
    rows = []
    for (row, col, why), stat in zip(pixels, stats, strict=True):
        entry: dict[str, Any] = {"image": sample.stem, "row": row, "col": col, "chosen as": why}
        entry["probability"] = float(probability[row, col])
        if sample.label is not None:
            entry["label"] = int(sample.label[row, col])
        values = stat.as_dict()
        entry.update({k: values[k] for k in ("count", "top", "left", "bottom", "right")})
        entry["fulfillment"] = stat.fulfillment
        rows.append(entry)
    table_rows += rows
    grid_rows, all_maps = [], []
    for row, col, why in pixels:
        target = pixel_target(row, col, (height, width))
        maps = {}
        for method in options.methods:
            bar.set_postfix_str(f"{sample.stem} ({row},{col}) {method}")
            settings = report_method_options(method, height, width, options.seed)
            maps[method] = attribute(model, image, target, method, **settings)
            bar.update(1)
        grid_rows.append((f"({row}, {col}) {why}", target.mask.numpy(), maps))
        all_maps.append(maps)
    grid = attribution_grid(
        image,
        grid_rows,
        figures / f"{sample.stem}_attributions.png",
        zoom=options.zoom,
        shared_scale=options.shared_scale,
    )
    parts = [
        f"<h3>{hp.escape(sample.stem)} ({height}x{width})</h3>",
        hp.embed_png(panel, f"{sample.stem}: input, probability, thresholded gradients"),
        hp.table(rows),
    ]
    attribution_html = (
        f"<h3>{hp.escape(sample.stem)}</h3>"
        + hp.embed_png(grid, f"{sample.stem}: attribution methods")
        + zero_map_notes(model, image, grid_rows)
    )
    return _ImageResult(sample, pixels, all_maps, "".join(parts), attribution_html, [panel, grid])


REPORT_WRITES = (REPORT_FILE, "figures", "tables")
"""What a report writes into its folder (refused there unless ``overwrite``)."""


def check_output(out: Path, overwrite: bool) -> Path:
    """Refuse a folder that already holds a report, or figures/ or tables/ a report would
    write into, unless ``overwrite``."""
    refuse_replacing(Path(out), REPORT_WRITES, overwrite)
    return Path(out)


def _deletion_maps(model: nn.Module, result: _ImageResult, options: ReportOptions) -> dict:
    """The first pixel's maps, plus those of deletion methods that ``--methods`` left out."""
    maps = dict(result.maps[0]) if result.maps else {}
    if not result.pixels:
        return maps
    row, col, _ = result.pixels[0]
    height, width = result.sample.size
    target = pixel_target(row, col, (height, width))
    for method in options.deletion_methods:
        if method not in maps:
            settings = report_method_options(method, height, width, options.seed)
            maps[method] = attribute(model, result.sample.image, target, method, **settings)
    return maps


def write_report(
    model: nn.Module,
    samples: list[Sample],
    out: Path,
    *,
    options: ReportOptions | None = None,
    description: dict[str, str] | None = None,
    run_dir: Path | None = None,
    run_note: str = "",
    recorded: dict[str, Any] | None = None,
    erf_dir: Path | None = None,
    device: torch.device | str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> ReportOutputs:
    """Compute everything and write ``out/report.html``, ``out/figures/``, ``out/tables/``.

    ``description`` (checkpoint, data, split, ...) heads the page; ``run_dir`` is a training
    run folder (``run_note`` says why there is none), and without one the Training section
    shows ``recorded``, the checkpoint's training metadata, when given; ``erf_dir`` a
    receptive-field folder.
    """
    options = options or ReportOptions()
    out = check_output(out, overwrite)
    if erf_dir is not None and not Path(erf_dir).is_dir():
        raise ConfigError(f"--erf {erf_dir}: not a folder")
    if not samples:
        raise ConfigError("report: no image to show")
    for sample in samples if options.pixels is not None else ():  # before any computing
        _check_pixels(sample, options.pixels)
    with claim_output(out, "report", replaces=REPORT_WRITES, overwrite=overwrite):
        return _write_report(
            model,
            samples,
            out,
            options,
            ReportContext(description, run_dir, run_note, recorded, erf_dir),
            device,
            progress,
        )


def _write_report(
    model: nn.Module,
    samples: list[Sample],
    out: Path,
    options: ReportOptions,
    context: ReportContext,
    device: torch.device | str | None,
    progress: bool,
) -> ReportOutputs:
    work_starts()
    started = time.perf_counter()
    figures, tables = out / "figures", out / "tables"
    figures.mkdir(parents=True, exist_ok=True)
    device = torch.device(device) if device is not None else model_device(model)
    checked = min(options.sanity_images, len(samples))
    pixel_rows: list[dict] = []
    produced: list[Path] = []
    # eval mode throughout (restored afterwards): a caller's model in train mode would otherwise
    # update its BatchNorm statistics and draw dropout masks in the forward passes below
    with (
        frozen_eval(model),
        tqdm(total=3 * checked, desc="report", unit="step", disable=not progress) as bar,
    ):
        images = [_image_part(model, s, options, figures, device, bar, pixel_rows) for s in samples]
        sanity_parts = []
        for result in images[:checked]:
            html_text, files = sanity_section(
                model,
                result.sample,
                result.pixels,
                _deletion_maps(model, result, options),
                options,
                figures,
                tables,
                bar,
            )
            sanity_parts.append(html_text)
            produced += files
    produced += [f for r in images for f in r.figures]
    produced.append(write_csv(tables / "pixels.csv", pixel_rows))
    settings = [
        {"method": m, "settings": str(report_method_options(m, *samples[0].size, options.seed))}
        for m in options.methods
    ]
    intro = [hp.table([{"item": k, "value": v} for k, v in (context.description or {}).items()])]
    sections = [
        (
            "Images and chosen pixels",
            "images",
            images_intro(options.threshold, options.zoom) + "".join(r.html for r in images),
        ),
        (
            "Training",
            "training",
            training_section(context.run_dir, context.run_note, context.recorded),
        ),
        (
            "Attribution methods",
            "attributions",
            attribution_intro(options.shared_scale)
            + hp.table(settings)
            + "".join(r.attribution_html for r in images),
        ),
        (
            "Sanity checks",
            "sanity",
            "".join(sanity_parts)
            or hp.paragraph("Sanity checks were skipped (--sanity-images 0)."),
        ),
        ("Receptive-field statistics", "erf", erf_section(context.erf_dir)),
    ]
    sections = [(t, a, hp.section(t, a, [h])) for t, a, h in sections]
    html_path = out / REPORT_FILE
    html_path.write_text(hp.page("vessel-lens report", intro, sections), encoding="utf-8")
    return ReportOutputs(
        html_path,
        sorted(p for p in produced if p.suffix == ".png"),
        sorted(p for p in produced if p.suffix == ".csv"),
        time.perf_counter() - started,
    )
