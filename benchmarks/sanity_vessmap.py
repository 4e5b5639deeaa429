"""Model-parameter randomisation test and deletion curves of a trained checkpoint on VessMAP.

Prints, per randomisation mode and stage, the similarity between the trained model's
attributions and those of the randomised copies (mean over images and pixels), plus the
deletion/insertion areas against random orders, and writes the rows to ``--out``.

    .venv/bin/python benchmarks/sanity_vessmap.py --checkpoint /tmp/w16.pt \\
        --data ../shared/data/vessmap --out /tmp/sanity-vessmap

Pixels are chosen per image as in the report (:func:`vessel_lens.viz.report.choose_pixels`):
a confident vessel pixel, a background pixel and a confident false positive (or false
negative).
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from pathlib import Path

import numpy as np
import torch

from vessel_lens.data.source import open_dataset
from vessel_lens.interpret.attribution.methods import attribute
from vessel_lens.interpret.attribution.sanity import (
    THRESHOLDED_MASK,
    deletion_curves,
    randomisation_test,
)
from vessel_lens.interpret.attribution.targets import pixel_target
from vessel_lens.models import load_model
from vessel_lens.models.inference import vessel_probability
from vessel_lens.viz.attribution_plots import randomisation_plot
from vessel_lens.viz.report import choose_pixels, crop_sample

METHOD_OPTIONS = {
    "integrated_gradients": {"n_steps": 16, "internal_batch_size": 4},
    "smoothgrad": {"nt_samples": 8},
    "gradient_shap": {"n_samples": 8},
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--images", type=int, default=2, help="first N images of the split")
    parser.add_argument("--crop", type=int, default=0)
    parser.add_argument(
        "--methods",
        default="saliency,input_x_gradient,integrated_gradients,smoothgrad,guided_backprop,"
        "layer_gradcam",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def _mean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model, checkpoint = load_model(args.checkpoint, "cpu")
    samples = open_dataset(args.data).subset(args.split)[: args.images]
    samples = [crop_sample(s, args.crop) for s in samples]
    methods = [m for m in args.methods.split(",") if m]
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"checkpoint {checkpoint.path}: {checkpoint.model_name} {checkpoint.model_kwargs}")
    print(
        f"  epoch {checkpoint.metadata.get('epoch')}, metrics {checkpoint.metadata.get('metrics')}"
    )
    rows, deletion_rows = [], []
    for sample in samples:
        probability = vessel_probability(model, sample.image)
        pixels = choose_pixels(probability, sample.label)
        print(f"image {sample.stem} {sample.size}: pixels {pixels}")
        targets = [pixel_target(r, c, sample.size) for r, c, _ in pixels]
        runs = []
        for mode in ("cascading", "independent"):
            result = randomisation_test(
                model,
                sample.image,
                targets,
                methods,
                mode,
                seed=args.seed,
                method_options=METHOD_OPTIONS,
            )
            runs.append(result)
            rows += [{"image": sample.stem, **row} for row in result.rows]
            print(f"  {mode} done at {time.perf_counter() - started:.0f} s")
        randomisation_plot(runs, args.out / f"{sample.stem}_randomisation.png")
        for target in targets:
            maps = {
                m: attribute(model, sample.image, target, m, **METHOD_OPTIONS.get(m, {}))
                for m in ("saliency", "integrated_gradients")
            }
            for mode in ("deletion", "insertion"):
                for curve in deletion_curves(
                    model, sample.image, target, maps, mode=mode, seed=args.seed
                ):
                    deletion_rows.append(
                        {
                            "image": sample.stem,
                            "target": curve.target,
                            "curve": mode,
                            "method": curve.label,
                            "auc": curve.auc,
                            "random_auc": curve.random_auc,
                        }
                    )
    _write(args.out / "randomisation.csv", rows)
    _write(args.out / "deletion.csv", deletion_rows)
    for mode in ("cascading", "independent"):
        stages = list(dict.fromkeys(r["stage"] for r in rows if r["mode"] == mode))
        print(f"\n{mode}: mean over {len(samples)} images x their pixels")
        print("method/metric".ljust(34) + " ".join(s.rjust(9) for s in stages))
        for method in (*methods, THRESHOLDED_MASK):
            metrics = ("iou", "ssim") if method == THRESHOLDED_MASK else ("spearman", "ssim")
            for metric in metrics:
                values = [
                    _mean(
                        [
                            float(r[metric])
                            for r in rows
                            if r["mode"] == mode and r["stage"] == s and r["method"] == method
                        ]
                    )
                    for s in stages
                ]
                print(f"{method} {metric}".ljust(34) + " ".join(f"{v:9.3f}" for v in values))
    print("\ndeletion / insertion AUC (attribution order vs random order)")
    for row in deletion_rows:
        print(
            f"  {row['image']} {row['target']:<18} {row['curve']:<9} {row['method']:<21} "
            f"{row['auc']:.3f} vs {row['random_auc']:.3f}"
        )
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


def _write(path: Path, rows: list[dict]) -> None:
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


if __name__ == "__main__":
    main()
