"""Jacobian speed: the original per-pixel ``autograd.grad`` loop against vessel-lens.

In one process, on the same model and image, for each width: vessel-lens computes every row
of the Jacobian chunk by chunk, and between its chunks the original method (one
``torch.autograd.grad`` per output pixel through a retained graph) computes rows for a sample
of pixels spread over the image, so both see the same machine load. Prints rows/s for both,
their ratio and the agreement on the sampled rows (max |difference| / max |J|), and for a
low-precision ``--dtype`` also how far rows and thresholded receptive-field counts are from
float32.

    python benchmarks/jacobian.py --widths 64,16 --size 64
    python benchmarks/jacobian.py --widths 16 --dtype bfloat16
    python benchmarks/jacobian.py --device cuda
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from vessel_lens.data.synthetic import synthesize
from vessel_lens.devices import resolve_device
from vessel_lens.interpret import JacobianEngine
from vessel_lens.models import ResNetSeg

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}


def trained_like(width: int, size: int, device: torch.device) -> ResNetSeg:
    """The reference model with BatchNorm statistics from synthetic vessel images.

    Cost does not depend on weight values; realistic statistics keep activations and
    probabilities in a trained model's range (no saturated softmax, no denormals).
    """
    torch.manual_seed(0)
    model = ResNetSeg(width=width).to(device)
    batch = torch.stack([torch.from_numpy(synthesize(size, seed=s).image)[None] for s in range(8)])
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(batch.to(device))
    return model.eval()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class OriginalLoop:
    """The original method: one forward pass, then one backward pass per output pixel."""

    def __init__(self, model, image):
        self.input = image[None].clone().requires_grad_(True)
        self.probability = model(self.input).softmax(1)[0, 1].reshape(-1)

    def row(self, pixel: int) -> torch.Tensor:
        (grad,) = torch.autograd.grad(self.probability[pixel], self.input, retain_graph=True)
        return grad[0]


def measure(args, width: int, device: torch.device) -> dict:
    model = trained_like(width, args.size, device)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    image = torch.from_numpy(synthesize(256, seed=123).image)[None]
    top = (256 - args.size) // 2
    image = image[:, top : top + args.size, top : top + args.size].to(device)
    pixels = args.size * args.size
    sample = torch.linspace(0, pixels - 1, args.loop_rows).round().long().tolist()
    dtype = DTYPES[args.dtype]

    synchronize(device)
    start = time.perf_counter()
    loop = OriginalLoop(model, image)
    synchronize(device)
    loop_time = time.perf_counter() - start
    loop.row(sample[0])
    reference_rows, queue = {}, list(sample)

    synchronize(device)
    start = time.perf_counter()
    engine = JacobianEngine(model, image, dtype=dtype, strategy=args.strategy)
    chunk = args.chunk_size or engine.default_chunk()
    synchronize(device)
    fast_time = time.perf_counter() - start
    flat = torch.arange(pixels)
    if device.type == "cuda":  # CUDA context, cuDNN handles and kernel choice: not timed
        engine.rows(flat[:chunk])
        synchronize(device)
    rows = torch.empty((pixels, *image.shape), dtype=dtype, device=device)
    chunks = list(range(0, pixels, chunk))
    per_chunk = -(-len(sample) // len(chunks))
    for first in chunks:
        synchronize(device)
        start = time.perf_counter()
        rows[first : first + chunk] = engine.rows(flat[first : first + chunk])
        synchronize(device)
        fast_time += time.perf_counter() - start
        for _ in range(min(per_chunk, len(queue))):
            pixel = queue.pop(0)
            start = time.perf_counter()
            reference_rows[pixel] = loop.row(pixel)
            synchronize(device)
            loop_time += time.perf_counter() - start

    reference = torch.stack([reference_rows[p] for p in sample]).float()
    ours = rows[sample].float()
    scale = reference.abs().max()
    result = {
        "width": width,
        "strategy": engine.strategy,
        "chunk": chunk,
        "loop_rows": len(sample),
        "loop_rate": len(sample) / loop_time,
        "fast_rows": pixels,
        "fast_rate": pixels / fast_time,
        "agreement": float((ours - reference).abs().max() / scale),
    }
    result["ratio"] = result["fast_rate"] / result["loop_rate"]
    if dtype != torch.float32:
        result.update(low_precision_report(model, image, rows.float(), chunk))
    return result


def low_precision_report(model, image, rows, chunk) -> dict:
    """How far low-precision rows and thresholded counts are from float32 (all rows)."""
    exact = JacobianEngine(model, image)
    pixels = torch.arange(rows.shape[0])
    reference = torch.cat([exact.rows(pixels[i : i + chunk]) for i in range(0, len(pixels), chunk)])
    peak = reference.flatten(1).abs().amax(1)
    relative = ((rows - reference).flatten(1).abs().amax(1) / peak).max()
    report = {"row_max_relative_error": float(relative)}
    for threshold in (0.01, 0.1):
        limit = (threshold * peak)[:, None]
        counts = (reference.flatten(1).abs() > limit).sum(1).float()
        low = (rows.flatten(1).abs() > limit).sum(1).float()
        report[f"count@{threshold}_mean"] = float(counts.mean())
        report[f"count@{threshold}_mean_abs_diff"] = float((counts - low).abs().mean())
        report[f"count@{threshold}_max_rel_diff"] = float(
            ((counts - low).abs() / counts.clamp(min=1)).max()
        )
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", default="64,16", help="comma-separated model widths")
    parser.add_argument("--size", type=int, default=64, help="side of the square crop")
    parser.add_argument(
        "--loop-rows", type=int, default=48, help="rows sampled for the original method"
    )
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--strategy", default="auto")
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--tf32",
        action="store_true",
        help="allow TF32 on CUDA (faster, rounds to about 1e-3); default: full float32",
    )
    parser.add_argument(
        "--cudnn-benchmark", action="store_true", help="let cuDNN time its algorithms first"
    )
    parser.add_argument(
        "--no-cudnn", action="store_true", help="disable cuDNN (PyTorch's own convolutions)"
    )
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    torch.backends.cudnn.enabled = not args.no_cudnn
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        torch.backends.cudnn.allow_tf32 = args.tf32
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    print(
        f"torch {torch.__version__} on {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, device {device}"
        f"{' (' + torch.cuda.get_device_name(device) + (', TF32' if args.tf32 else ', no TF32') + ')' if device.type == 'cuda' else ''}, dtype {args.dtype}, "
        f"load average before {load[0]:.2f}"
    )
    header = (
        "width  size  strategy  chunk  original rows/s (n)  vessel-lens rows/s  ratio  agreement"
    )
    print(header)
    for width in (int(w) for w in args.widths.split(",")):
        r = measure(args, width, device)
        print(
            f"{r['width']:>5}  {args.size:>4}  {r['strategy']:>8}  {r['chunk']:>5}  "
            f"{r['loop_rate']:>12.2f} ({r['loop_rows']:>3})  {r['fast_rate']:>18.2f}  "
            f"{r['ratio']:>5.2f}  {r['agreement']:.1e}",
            flush=True,
        )
        extra = {k: v for k, v in r.items() if "count" in k or "row_max" in k}
        if extra:
            print("       " + ", ".join(f"{k}={v:.4g}" for k, v in extra.items()))
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    print(f"load average after {load[0]:.2f}")


if __name__ == "__main__":
    main()
