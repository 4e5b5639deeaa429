"""Are the engine's automatic choices the fast ones? ``auto`` against every explicit option.

For a zoo of models (the reference ResNet, the registry U-Net, a pooled/upsampled net, a
dilated net, a plain conv net, MONAI's UNet, a dilated conv + GroupNorm net), in one process:

- Jacobian rows of every output pixel with ``strategy="auto"``, ``"linear"`` (when the model
  has rules for it), ``"vmap"`` and ``"loop"`` (timed on the first ``--loop-rows`` rows and
  scaled, since it runs one backward pass per row);
- receptive-field maps (mode pixel) with ``colouring="auto"``, ``"never"`` and ``"always"``.

Prints seconds per option and auto / best (goal: at most 1.2 for each model).

    python benchmarks/auto_choice.py --size 64
    python benchmarks/auto_choice.py --size 64 --models reference,pooled
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings

import torch
from torch import nn

from vessel_lens.errors import ConfigError
from vessel_lens.interpret import JacobianEngine, receptive_field_maps
from vessel_lens.interpret._grammar import randomise
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


def _rows(model, image, strategy, count=None) -> float:
    engine = JacobianEngine(model, image, strategy=strategy)
    flat = torch.arange(image.shape[-2] * image.shape[-1])
    flat = flat[:count] if count else flat
    for _ in engine.chunks(flat):
        pass
    return engine.strategy


def _median_seconds(function, repeats: int) -> tuple[float, object]:
    seconds, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        seconds.append(time.perf_counter() - started)
    return sorted(seconds)[len(seconds) // 2], result


def jacobian_times(model, image, loop_rows: int, repeats: int) -> dict[str, float | str]:
    times: dict[str, float | str] = {}
    total = image.shape[-2] * image.shape[-1]
    _rows(model, image, "auto", 64)  # warm-up: first calls of every kernel
    for strategy in ("auto", "linear", "vmap", "loop"):
        count = loop_rows if strategy == "loop" else None
        try:
            seconds, used = _median_seconds(
                lambda s=strategy, c=count: _rows(model, image, s, c), 1 if count else repeats
            )
        except ConfigError:
            times[strategy] = "refused"
            continue
        times[strategy] = seconds * (total / loop_rows if count else 1.0)
        if strategy == "auto":
            times["auto is"] = used
    return times


def maps_times(model, image, repeats: int) -> dict[str, float | str]:
    times: dict[str, float | str] = {}
    for colouring in ("auto", "never", "always"):
        try:
            seconds, maps = _median_seconds(
                lambda c=colouring: receptive_field_maps(
                    model, image, (0.01, 0.1), "pixel", colouring=c
                ),
                repeats,
            )
        except ConfigError:
            times[colouring] = "refused"
            continue
        times[colouring] = seconds
        if colouring == "auto":
            times["auto chose"] = maps.metadata.get("colouring_choice") or "plain (no bound)"
    return times


def _ratio(times: dict, auto: str, options: tuple[str, ...]) -> float:
    best = min(v for k, v in times.items() if k in options and isinstance(v, float))
    return times[auto] / best


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
    for name in args.models.split(","):
        model = randomise(zoo[name](), seed=0)
        rows = jacobian_times(model, image, args.loop_rows, args.repeats)
        ratio = _ratio(rows, "auto", ("linear", "vmap", "loop"))
        shown = {k: (f"{v:.2f}s" if isinstance(v, float) else v) for k, v in rows.items()}
        print(f"{name:11s} jacobian  auto/best {ratio:.2f}  {shown}")
        maps = maps_times(model, image, args.repeats)
        ratio = _ratio(maps, "auto", ("never", "always"))
        shown = {k: (f"{v:.2f}s" if isinstance(v, float) else v) for k, v in maps.items()}
        print(f"{name:11s} erf maps  auto/best {ratio:.2f}  {shown}")
    print(f"load average after {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
