"""One training epoch with the chosen thread count (``--threads 0``) against torch's default.

Torch starts one thread per core; every vessel-lens command now defaults to
``vessel_lens.threads.choose_threads()``: the free cores (cores minus the load average),
at least 1. This times, in one process and under the load the machine has while it runs, one
epoch of ``vessel-lens train`` (``train()`` with ``epochs=1``: the training steps and the
validation) with each count in turn (chosen, default, default, chosen, ... so both see the
same load), and prints the seconds of each, the load average around each, and the ratio
(torch's default / chosen; above 1: the chosen default is faster).

    python benchmarks/threads_default.py --data ../shared/data/vessmap --repeats 2
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
from pathlib import Path

import torch

from vessel_lens.data.synthetic import write_synthetic_dataset
from vessel_lens.threads import choose_threads
from vessel_lens.training.config import TrainConfig
from vessel_lens.training.trainer import train


def one_epoch(config: TrainConfig, threads: int, out: Path) -> float:
    """Seconds of one epoch (training steps and validation, as ``metrics.csv`` counts them;
    not the loading of the data) with ``threads`` torch threads."""
    run = TrainConfig(**{**config.to_dict(), "threads": threads})
    return train(run, out, overwrite=True, progress=False).seconds


def main() -> None:
    default = torch.get_num_threads()  # before anything sets it: torch's own default
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="dataset (default: synthetic vessels)")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--crop-size", type=int, default=128)
    parser.add_argument("--crops-per-image", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="epochs timed per count")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        data = args.data
        if data is None:
            data = str(Path(folder) / "data")
            write_synthetic_dataset(data, count=40, size=256, seed=0, progress=False)
        config = TrainConfig(
            data=data,
            width=args.width,
            crop_size=args.crop_size,
            crops_per_image=args.crops_per_image,
            epochs=1,
            device="cpu",
        )
        print(
            f"torch {torch.__version__} on {platform.machine()}; torch's default {default} "
            f"threads; {choose_threads().describe()}"
        )
        print(
            f"one epoch: {data}, width {args.width}, {args.crops_per_image} crops of "
            f"{args.crop_size} per training image, batch {config.batch_size}, with validation"
        )
        times: dict[str, list[float]] = {"chosen": [], "default": []}
        loads = []
        for repeat in range(args.repeats):
            order = ("chosen", "default") if repeat % 2 == 0 else ("default", "chosen")
            for name in order:
                choice = choose_threads()
                threads = choice.threads if name == "chosen" else default
                before = os.getloadavg()[0]
                seconds = one_epoch(config, threads, Path(folder) / f"run-{name}")
                after = os.getloadavg()[0]
                loads += [before, after]
                times[name].append(seconds)
                print(
                    f"  {name:<8} {threads} thread(s): {seconds:6.1f} s  "
                    f"(load {before:.2f} before, {after:.2f} after)"
                )
    chosen, torch_default = statistics.median(times["chosen"]), statistics.median(times["default"])
    print(
        f"median epoch: chosen {chosen:.1f} s, torch's default {torch_default:.1f} s; ratio "
        f"default / chosen {torch_default / chosen:.2f} (load average {min(loads):.2f} to "
        f"{max(loads):.2f})"
    )


if __name__ == "__main__":
    main()
