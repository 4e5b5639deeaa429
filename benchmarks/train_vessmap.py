"""Reproduce the shipped checkpoint `vessmap-w16`: train on the VessMAP authors' split, select on
their validation split, evaluate on their test split, compare with their published U-Net.

    python benchmarks/train_vessmap.py [--data ../shared/data/vessmap] [--out runs/vessmap-w16]
                                       [--resume] [--export]

`--export` writes the best model as float16 into the package
(`src/vessel_lens/models/weights/vessmap-w16.pt`), which is how the shipped file was made.
Prints wall time and the test metrics of the float32 run and of the float16 export.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from vessel_lens.data.source import open_dataset
from vessel_lens.models import load_model, read_checkpoint, save_checkpoint
from vessel_lens.training import TrainConfig, evaluate_model, read_config, resume, train
from vessel_lens.training.evaluate import format_table

ROOT = Path(__file__).resolve().parents[1]
AUTHORS_UNET = {"dice": 0.900, "auc": 0.986, "accuracy": 0.949, "mcc": 0.866}
"""Published U-Net on the 50 test images (Viana da Silva et al. 2025, PLOS ONE 20(5): e0322048)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/vessmap"))
    parser.add_argument("--config", default=str(ROOT / "configs/vessmap_w16.yaml"))
    parser.add_argument("--out", default=str(ROOT / "runs/vessmap-w16"))
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run")
    parser.add_argument("--skip-training", action="store_true", help="only evaluate --out")
    parser.add_argument("--export", action="store_true", help="write the float16 package file")
    args = parser.parse_args()

    out = Path(args.out)
    started = time.perf_counter()
    if args.resume:
        summary = resume(out)
    elif not args.skip_training:
        values = read_config(args.config)
        values["data"] = args.data
        summary = train(TrainConfig.from_dict(values, args.config), out)
    if not args.skip_training:
        print(
            f"training wall time {(time.perf_counter() - started) / 60:.1f} min "
            f"({summary.epochs_done} epochs, best validation Dice {summary.best_dice:.4f} "
            f"at epoch {summary.best_epoch})"
        )

    dataset = open_dataset(args.data)
    test = dataset.subset("test")
    model, checkpoint = load_model(out / "best.pt")
    result = evaluate_model(model, test)
    print(f"float32 best.pt (epoch {checkpoint.metadata.get('epoch')}) on {len(test)} test images:")
    for line in format_table(result):
        print("  " + line)
    print("authors' U-Net: " + ", ".join(f"{k} {v:.3f}" for k, v in AUTHORS_UNET.items()))

    if args.export:
        target = ROOT / "src/vessel_lens/models/weights/vessmap-w16.pt"
        metadata = dict(checkpoint.metadata)
        metadata["test_metrics_float32"] = result.mean
        save_checkpoint(
            target,
            model,
            checkpoint.model_name,
            checkpoint.model_kwargs,
            metadata=metadata,
            half=True,
        )
        shipped, _ = load_model(target)
        shipped_result = evaluate_model(shipped, test)
        metadata["test_metrics"] = {
            "mean_over_images": shipped_result.mean,
            "pooled_over_pixels": shipped_result.pooled,
        }
        save_checkpoint(
            target,
            model,
            checkpoint.model_name,
            checkpoint.model_kwargs,
            metadata=metadata,
            half=True,
        )
        size = target.stat().st_size / 2**20
        print(f"exported {target} ({size:.1f} MiB, float16); its test metrics:")
        for line in format_table(shipped_result):
            print("  " + line)
        print(json.dumps(read_checkpoint(target).metadata["test_metrics"]["mean_over_images"]))


if __name__ == "__main__":
    main()
