"""Peak memory of predicting one large image: sliding windows against the whole-image pass.

Writes one ``--size`` x ``--size`` 8-bit LZW TIFF (a synthetic vessel sample repeated over the
image), then runs ``vessel-lens predict`` on it in fresh processes, once with ``--tile`` and
once with ``--tile 0`` (one forward pass over the whole image), and prints each process's
peak resident memory (``ru_maxrss``) next to its resident memory after the imports and the
model load, the model's size, and the ratio of the two peaks. Memory only (no timing), so it
may run on a busy machine.

    python benchmarks/predict_large.py --checkpoint vessmap-w16 --size 3000 --tile 1024
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD = """
import json, resource, sys
import torch
torch.set_num_threads(int(sys.argv[4]))
from vessel_lens.cli import main
from vessel_lens.models import load_model
model, _ = load_model(sys.argv[1], "cpu")
params = sum(p.numel() * p.element_size() for p in model.parameters())
del model
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
status = main(["predict", "--checkpoint", sys.argv[1], "--images", sys.argv[2], "--out",
               sys.argv[3], "--tile", sys.argv[5], "--device", "cpu", "--overwrite"])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"status": status, "before_kib": before, "peak_kib": peak, "params": params}))
"""


def write_image(path: Path, size: int) -> None:
    import tifffile

    from vessel_lens.data.synthetic import synthesize

    sample = synthesize(512, seed=0)
    tile = np.round(sample.image * 255).astype(np.uint8)
    reps = -(-size // tile.shape[0])
    image = np.tile(tile, (reps, reps))[:size, :size]
    tifffile.imwrite(path, image, compression="lzw")


def run(checkpoint: str, image: Path, out: Path, threads: int, tile: int) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", CHILD, checkpoint, str(image), str(out), str(threads), str(tile)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"tile {tile}: predict failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="vessmap-w16")
    parser.add_argument("--size", type=int, default=3000)
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--skip-whole", action="store_true", help="Measure the sliding windows only."
    )
    args = parser.parse_args()
    print(f"python {platform.python_version()}, {platform.machine()}, threads {args.threads}")
    with tempfile.TemporaryDirectory() as folder:
        image = Path(folder) / "large.tif"
        write_image(image, args.size)
        print(f"image {args.size}x{args.size} grey, {image.stat().st_size / 2**20:.1f} MiB LZW")
        runs = {f"sliding windows, --tile {args.tile}": args.tile}
        if not args.skip_whole:
            runs["whole image, --tile 0"] = 0
        peaks = {}
        for name, tile in runs.items():
            measured = run(args.checkpoint, image, Path(folder) / "out", args.threads, tile)
            peaks[name] = measured["peak_kib"] / 2**20
            print(
                f"{name:<32} peak RSS {peaks[name]:6.2f} GiB (after imports and model load "
                f"{measured['before_kib'] / 2**20:.2f} GiB; model {measured['params'] / 2**20:.1f}"
                " MiB float32)"
            )
    if len(peaks) == 2:
        tiled, whole = peaks.values()
        print(f"ratio whole / sliding windows: {whole / tiled:.2f}")


if __name__ == "__main__":
    main()
