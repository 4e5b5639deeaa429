"""Are the engine's automatic choices the fast ones? ``auto`` against every explicit option.

For a zoo of models (the reference ResNet, the registry U-Net, a pooled/upsampled net, a
dilated net, a plain conv net, MONAI's UNet, a dilated conv + GroupNorm net), in one process:

- Jacobian rows of every output pixel with ``strategy="auto"``, ``"linear"`` (when the model
  has rules for it), ``"vmap"`` and ``"loop"`` (timed on the first ``--loop-rows`` rows and
  scaled, since it runs one backward pass per row);
- receptive-field maps (mode pixel) with ``colouring="auto"``, ``"never"`` and ``"always"``.

Options take turns within each round (``--repeats`` rounds). Prints the median seconds per
option and auto / best, on the wall clock and in CPU time (the process's, steadier on a shared
machine with ``--threads 1``); goal: at most 1.2 for each model.

    python benchmarks/auto_choice.py --size 64
    python benchmarks/auto_choice.py --size 64 --models reference,pooled
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings

import torch
from torch import nn

from vessel_lens.errors import ConfigError
from vessel_lens.interpret import JacobianEngine, receptive_field_maps
from vessel_lens.interpret.proof.grammar import randomise
from vessel_lens.models import ResNetSeg, UNet


def _zoo() -> dict:
    def plain():
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
            nn.ReLU(), nn.Conv2d(16, 2, 3, padding=1),
        )  # fmt: skip

    def pooled():
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.Upsample(scale_factor=2),
            nn.Conv2d(16, 2, 3, padding=1),
        )  # fmt: skip

    def dilated():
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=2, dilation=2),
            nn.ReLU(), nn.Conv2d(16, 16, 3, padding=4, dilation=4), nn.ReLU(),
            nn.Conv2d(16, 2, 1),
        )  # fmt: skip

    def group_norm():
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=2, dilation=2), nn.GroupNorm(4, 16), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=2, dilation=2), nn.GroupNorm(4, 16), nn.ReLU(),
            nn.Conv2d(16, 2, 1),
        )  # fmt: skip

    def monai_unet():
        from monai.networks.nets import UNet as MonaiUNet

        return MonaiUNet(2, 1, 2, channels=(8, 16, 32), strides=(2, 2))

    return {
        "reference": lambda: ResNetSeg(width=16),
        "unet": lambda: UNet(width=8),
        "pooled": pooled,
        "dilated": dilated,
        "plain": plain,
        "monai-unet": monai_unet,
        "groupnorm": group_norm,
    }


def _rows(model, image, strategy, count=None) -> str:
    engine = JacobianEngine(model, image, strategy=strategy)
    flat = torch.arange(image.shape[-2] * image.shape[-1])
    flat = flat[:count] if count else flat
    for _ in engine.chunks(flat):
        pass
    return engine.strategy


def _maps(model, image, colouring) -> str:
    maps = receptive_field_maps(model, image, (0.01, 0.1), "pixel", colouring=colouring)
    return maps.metadata.get("colouring_choice") or "plain (no bound)"


def _timed(function) -> tuple[float, float, object]:
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def measure(options: dict, repeats: int) -> dict[str, dict]:
    """Every option ``repeats`` times, taking turns (the order rotates each round, so that a
    burst of load on the shared machine hits every option alike); medians of wall and CPU
    seconds, each scaled by the option's factor; refused options are marked."""
    names = list(options)
    times: dict[str, dict] = {name: {"wall": [], "cpu": []} for name in names}
    for round_ in range(repeats):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            function, scale = options[name]
            if times[name].get("refused"):
                continue
            try:
                wall, cpu, result = _timed(function)
            except ConfigError:
                times[name]["refused"] = True
                continue
            times[name]["wall"].append(wall * scale)
            times[name]["cpu"].append(cpu * scale)
            times[name]["result"] = result
    for entry in times.values():
        for clock in ("wall", "cpu"):
            entry[clock] = statistics.median(entry[clock]) if entry[clock] else None
    return times


def jacobian_times(model, image, loop_rows: int, repeats: int) -> dict[str, dict]:
    total = image.shape[-2] * image.shape[-1]
    _rows(model, image, "auto", 64)  # warm-up: first calls of every kernel
    options = {
        strategy: (lambda s=strategy: _rows(model, image, s), 1.0)
        for strategy in ("auto", "linear", "vmap")
    }
    options["loop"] = (lambda: _rows(model, image, "loop", loop_rows), total / loop_rows)
    return measure(options, repeats)


def maps_times(model, image, repeats: int) -> dict[str, dict]:
    options = {
        colouring: (lambda c=colouring: _maps(model, image, c), 1.0)
        for colouring in ("auto", "never", "always")
    }
    return measure(options, repeats)


def _ratio(times: dict, clock: str) -> float:
    best = min(e[clock] for name, e in times.items() if name != "auto" and e[clock] is not None)
    return times["auto"][clock] / best


def _shown(times: dict) -> str:
    return "  ".join(
        f"{name} refused" if entry["wall"] is None else f"{name} {entry['wall']:.2f}s"
        for name, entry in times.items()
    )


def report(name: str, what: str, times: dict) -> tuple[float, float]:
    wall, cpu = _ratio(times, "wall"), _ratio(times, "cpu")
    print(
        f"{name:11s} {what:9s} auto/best {wall:.2f} (CPU {cpu:.2f})  {_shown(times)}  "
        f"auto: {times['auto']['result']}"
    )
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--models", default=",".join(_zoo()))
    parser.add_argument("--loop-rows", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="median of this many runs")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__} on {platform.machine()}, {args.threads} threads, "
        f"{args.size}x{args.size}, load average before {os.getloadavg()[0]:.2f}"
    )
    zoo = _zoo()
    image = torch.rand(1, args.size, args.size, generator=torch.Generator().manual_seed(0))
    worst = {"wall": 0.0, "cpu": 0.0}
    for name in args.models.split(","):
        model = randomise(zoo[name](), seed=0)
        for what, times in (
            ("jacobian", jacobian_times(model, image, args.loop_rows, args.repeats)),
            ("erf maps", maps_times(model, image, args.repeats)),
        ):
            wall, cpu = report(name, what, times)
            worst = {"wall": max(worst["wall"], wall), "cpu": max(worst["cpu"], cpu)}
        print(f"{'':11s} load average {os.getloadavg()[0]:.2f}", flush=True)
    print(f"worst auto/best: {worst['wall']:.2f} wall, {worst['cpu']:.2f} CPU (goal: at most 1.2)")
    print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
