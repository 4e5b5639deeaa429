"""The end-to-end demo on the embedded synthetic data (``vessel-lens demo``).

Steps, each writing files a person can open: write a synthetic dataset and preview it; train a
small reference model for about a minute; evaluate it on the test split; store the exact
Jacobian of a 64x64 crop and draw the original notebook's panels from it; reduce the stored rows
to receptive-field maps (no recomputation); write the HTML report.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vessel_lens.data.samples import Sample
from vessel_lens.data.source import open_dataset
from vessel_lens.data.synthetic import write_synthetic_dataset
from vessel_lens.errors import OutputError
from vessel_lens.interpret.fields.maps import summarise
from vessel_lens.interpret.fields.run import ErfConfig, run_erf
from vessel_lens.interpret.fields.store import load_receptive_field_maps
from vessel_lens.interpret.jacobian.run import ExtractConfig, extract_jacobians
from vessel_lens.interpret.jacobian.store import load_jacobian
from vessel_lens.interpret.thresholds import gradient_magnitude, pixel_stats, threshold_value
from vessel_lens.models import load_model
from vessel_lens.outputs import claim_output, other_entries, require_empty
from vessel_lens.threads import torch_threads, work_starts
from vessel_lens.training.config import TrainConfig
from vessel_lens.training.evaluate import evaluate_model, format_table, write_evaluation
from vessel_lens.training.trainer import train
from vessel_lens.viz.attribution_plots import pixel_panels
from vessel_lens.viz.preview import preview_figure
from vessel_lens.viz.report import ReportOptions, crop_sample, write_report

DEMO_TRAINING = TrainConfig(
    width=8,
    epochs=30,
    crop_size=64,
    crops_per_image=4,
    batch_size=8,
    loss="ce+dice",
    schedule="cosine",
    warmup_epochs=1,
    lr=2e-3,
    val_every=3,
    max_minutes=1.5,
)
"""A small run that fits the demo's time budget on a 2-core CPU."""


@dataclass
class DemoOutputs:
    folder: Path
    files: dict[str, Path] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)


MARKER = "demo.json"
"""Written first into a demo's folder: what makes the folder the demo's own to replace."""
DEMO_ENTRIES = (
    MARKER,
    "data",
    "data_preview.png",
    "run",
    "evaluation",
    "jacobian",
    "erf",
    "report",
)
"""Everything a demo writes at the top of its folder."""


def run_demo(
    out: Path,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
    threads: int = 0,
) -> DemoOutputs:
    """Run every demo step into ``out``, which must be new or empty, or (with ``overwrite``)
    hold an earlier demo and nothing else; that earlier demo is replaced. ``threads``: CPU
    threads for torch (0: chosen, :func:`vessel_lens.threads.choose_threads`)."""
    out = Path(out)
    with (
        torch_threads(threads),
        claim_output(out, "demo", check=lambda folder: _replace_earlier_demo(folder, overwrite)),
    ):
        (out / MARKER).write_text(
            json.dumps({"written_by": "vessel-lens demo", "started": time.time(), "seed": seed})
        )
        return _run_demo(out, device, seed, progress)


def _replace_earlier_demo(folder: Path, overwrite: bool) -> None:
    """Refuse a folder that holds anything but an earlier demo; remove an earlier demo only
    with ``overwrite`` (a folder holding a file the demo never writes is never touched)."""
    if not (folder / MARKER).is_file():
        require_empty(folder)
        return
    others = other_entries(folder, DEMO_ENTRIES)
    if others:
        raise OutputError(
            f"{folder}: holds an earlier demo and {others[0]!r}, which is not the demo's; "
            "choose a new or empty folder for --out"
        )
    if not overwrite:
        raise OutputError(
            f"{folder}: holds an earlier demo; pass --overwrite to replace it (make demo does) "
            "or choose another --out"
        )
    for name in DEMO_ENTRIES:
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def _run_demo(out: Path, device: str, seed: int, progress: bool) -> DemoOutputs:
    work_starts()
    outputs = DemoOutputs(out)
    data = out / "data"
    if not (data / "images").exists():
        write_synthetic_dataset(data, count=48, size=256, seed=seed, progress=progress)
    outputs.files["data"] = data
    dataset = open_dataset(data)
    outputs.files["data-preview"] = preview_figure(
        dataset.subset("train"), out / "data_preview.png"
    )

    config = TrainConfig(
        **{**DEMO_TRAINING.to_dict(), "data": str(data), "seed": seed, "device": device}
    )
    summary = train(config, out / "run", progress=progress)
    outputs.files["checkpoint"] = out / "run" / "best.pt"
    outputs.files["curves"] = out / "run" / "curves.png"
    outputs.lines.append(
        f"trained {summary.epochs_done} epochs in {summary.seconds:.0f} s; best validation "
        f"Dice {summary.best_dice:.3f}"
    )

    model, checkpoint = load_model(out / "run" / "best.pt", device)
    dataset = open_dataset(data, checkpoint=checkpoint)
    evaluation = evaluate_model(
        model, dataset.subset("test"), device, out / "evaluation" / "panels", progress=progress
    )
    files = write_evaluation(evaluation, out / "evaluation", {"data": "synthetic", "split": "test"})
    outputs.files["test-metrics"] = files["metrics"]
    outputs.files["test-panels"] = out / "evaluation" / "panels"
    outputs.lines.extend(format_table(evaluation))

    sample = dataset.subset("test")[0]
    outputs.files.update(_jacobian_step(out, data, sample, device, progress))
    outputs.files.update(_receptive_field_step(out, outputs.lines, progress))
    report = write_report(
        model,
        [crop_sample(s, 128) for s in dataset.subset("test")[:2]],
        out / "report",
        options=ReportOptions(sanity_images=1),
        description={
            "checkpoint": str(out / "run" / "best.pt"),
            "data": str(data),
            "split": "test",
            "crop": "128",
        },
        run_dir=out / "run",
        erf_dir=out / "erf",
        device=device,
        overwrite=True,
        progress=progress,
    )
    outputs.files["report"] = report.html
    return outputs


def _jacobian_step(out: Path, data: Path, sample: Sample, device: str, progress: bool) -> dict:
    """``vessel-lens jacobian`` on the centred 64x64 crop of one test image, then the original
    notebook's panels at the vessel pixel nearest the crop's centre (or the centre itself)."""
    extract_jacobians(
        ExtractConfig(
            checkpoint=str(out / "run" / "best.pt"),
            out=out / "jacobian",
            data=str(data),
            split="test",
            images=[sample.stem],
            crop=64,
            device=device,
            progress=progress,
        )
    )
    store = out / "jacobian" / f"{sample.stem}.zarr"
    rows, meta = load_jacobian(store)
    top, left, height, width = meta["crop_box"]
    probability = torch.as_tensor(meta["probability"])
    rr, cc = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    distance = (rr - height // 2) ** 2 + (cc - width // 2) ** 2 + 1e9 * (probability <= 0.5)
    row, col = divmod(int(distance.argmin()), width)
    gradient = rows[row * width + col][None]
    magnitude = gradient_magnitude(gradient[0])
    stats = pixel_stats(magnitude, threshold_value(magnitude, 0.01, "pixel"))
    figure = pixel_panels(
        torch.as_tensor(meta["image"]),
        probability,
        sample.label[top : top + height, left : left + width],
        [(row, col, "vessel" if probability[row, col] > 0.5 else "centre")],
        gradient,
        [stats],
        out / "jacobian" / f"{sample.stem}_pixel_{row}_{col}.png",
        output=str(meta.get("output", "probability")),
    )
    return {"jacobian-store": store, "jacobian-panels": figure}


DEMO_FRACTIONS = (0.01, 0.05, 0.1, 0.25)
"""Threshold fractions of the demo's receptive-field maps (of the crop's global maximum)."""


def _receptive_field_step(out: Path, lines: list[str], progress: bool) -> dict:
    """``vessel-lens erf --from-jacobian`` on the stored crop: maps of every pixel, a PNG and
    ``summary.csv``, from the rows already computed."""
    result = run_erf(
        ErfConfig(
            out=out / "erf",
            from_jacobian=out / "jacobian",
            fractions=DEMO_FRACTIONS,
            mode="global",
            device="cpu",
            progress=progress,
        )
    )
    path = result.files[0]
    row = summarise(load_receptive_field_maps(path))
    lines.append(
        f"receptive-field maps of {row['pixels']} pixels: mean count above 1% of the global "
        f"max {row['count_mean_1%']:.1f} inputs, mean 90% mass radius "
        f"{row['mass_radius_90%_mean']:.1f} px"
    )
    figure = path.with_name(path.name.replace(".erf.npz", "_erf.png"))
    return {"erf-maps": path, "erf-figure": figure, "erf-summary": result.summary}
