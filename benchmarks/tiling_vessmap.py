"""How much sliding windows change a trained model's predictions, on real images.

VessMAP images are 256x256, so the test images are put together 2x2 into 512x512 mosaics (with
their labels) and predicted once in one pass and once with ``--tile T`` for several T (overlap
0.25, Gaussian blending). Prints, per tile side, the pooled Dice against the labels of both, the
difference, the mean and largest |probability difference| and the fraction of pixels whose
predicted class changes. Accuracy only (no timing).

    python benchmarks/tiling_vessmap.py --checkpoint vessmap-w16 --data ../shared/data/vessmap
"""

from __future__ import annotations

import argparse

import torch


def mosaics(samples):
    """(image, label) pairs of 2x2 mosaics of consecutive samples."""
    for i in range(0, len(samples) - 3, 4):
        a, b, c, d = samples[i : i + 4]
        image = torch.cat([torch.cat([a.image, b.image], 2), torch.cat([c.image, d.image], 2)], 1)
        label = torch.cat([torch.cat([a.label, b.label], 1), torch.cat([c.label, d.label], 1)], 0)
        yield image, label


def main() -> None:
    from vessel_lens.data.source import open_dataset
    from vessel_lens.models import load_model
    from vessel_lens.models.inference import vessel_probability
    from vessel_lens.training.metrics import Confusion, confusion, overlap_scores

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="vessmap-w16")
    parser.add_argument("--data", default="../shared/data/vessmap")
    parser.add_argument("--split", default="test")
    parser.add_argument("--tiles", default="128,192,256,384")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, _ = load_model(args.checkpoint, "cpu")
    tiles = [int(t) for t in args.tiles.split(",")]
    pairs = list(mosaics(open_dataset(args.data, checkpoint=None).subset(args.split)))
    plain_counts = Confusion()
    counts = {t: Confusion() for t in tiles}
    changed = {t: 0 for t in tiles}
    largest = {t: 0.0 for t in tiles}
    total_abs = {t: 0.0 for t in tiles}
    pixels = 0
    for image, label in pairs:
        plain = vessel_probability(model, image)
        plain_counts = plain_counts + confusion(plain > 0.5, label)
        pixels += plain.numel()
        for t in tiles:
            tiled = vessel_probability(model, image, tile=t)
            counts[t] = counts[t] + confusion(tiled > 0.5, label)
            difference = (tiled - plain).abs()
            largest[t] = max(largest[t], float(difference.max()))
            total_abs[t] += float(difference.sum())
            changed[t] += int(((tiled > 0.5) != (plain > 0.5)).sum())
    size = tuple(pairs[0][0].shape[-2:])
    plain_dice = overlap_scores(plain_counts)["dice"]
    print(f"{len(pairs)} mosaics of {size[0]}x{size[1]} from split {args.split!r} of {args.data}")
    print(f"one pass: pooled Dice {plain_dice:.4f}")
    print("tile  Dice    |difference|  mean |dp|  max |dp|  class changed")
    for t in tiles:
        dice = overlap_scores(counts[t])["dice"]
        print(
            f"{t:>4}  {dice:.4f}  {abs(dice - plain_dice):.1e}       {total_abs[t] / pixels:.1e}"
            f"    {largest[t]:.2f}      {100 * changed[t] / pixels:.2f} %"
        )


if __name__ == "__main__":
    main()
