"""Receptive-field maps: the original scheme against vessel-lens, memory of a full image, and
what colouring saves.

1. On one stored 64x64 Jacobian (computed once here): the original scheme — a process pool
   that receives the whole Jacobian once per output pixel and recomputes its maximum there
   before counting that pixel's entries above 1 % of it — measured on a sample of pixels and
   extrapolated to all of them (stated as such), interleaved with vessel-lens computing the
   maps of every pixel from the same rows. Checks the counts are identical (same threshold
   definition: |g| summed over channels against 1 % of the maximum over the whole Jacobian)
   and prints the ratio.
2. A whole image (256x256 for VessMAP): time and peak resident memory of
   ``receptive_field_maps`` in a fresh process, default fractions, mode ``global``.
3. Colouring on that image (or on it tiled ``--colour-tile`` times in each direction, for
   larger images): seconds per output pixel of plain rows against coloured passes
   (split by field box), for the ``linear`` and ``vmap`` strategies, on the same pixels, with
   the largest difference between the two.

    python benchmarks/receptive_field.py --checkpoint vessmap-w16 --data ../shared/data/vessmap
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import resource
import statistics
import time

import numpy as np
import torch


def load(args):
    from vessel_lens.data.source import open_dataset
    from vessel_lens.models import load_model

    model, checkpoint = load_model(args.checkpoint, "cpu")
    sample = open_dataset(args.data, require_labels=False).subset(args.split)[0]
    return model, checkpoint, sample


def centre_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    top, left = (image.shape[-2] - size) // 2, (image.shape[-1] - size) // 2
    return image[:, top : top + size, left : left + size].contiguous()


def original_count(jacobian: np.ndarray, pixel: int, fraction: float) -> int:
    """The original's per-pixel task: it gets the whole Jacobian and recomputes the maximum."""
    magnitude = np.abs(jacobian).sum(axis=1)
    limit = fraction * float(magnitude.max())
    return int((magnitude[pixel] > limit).sum())


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def load_text() -> str:
    return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def compare_original(args, model, sample) -> None:
    from vessel_lens.interpret import jacobian
    from vessel_lens.interpret.fields.thresholded import (
        receptive_field_maps,
        receptive_field_maps_from_jacobian,
    )

    crop = centre_crop(sample.image, args.size)
    start = time.perf_counter()
    rows = jacobian(model, crop)
    print(
        f"stored Jacobian {tuple(rows.shape)} computed once in {time.perf_counter() - start:.1f} s"
    )
    stored = rows.numpy()
    pixels = rows.shape[0]
    sample_pixels = np.linspace(0, pixels - 1, args.sample).round().astype(int).tolist()
    rounds = 3
    parts = [sample_pixels[i::rounds] for i in range(rounds)]
    ours, ours_cpu, theirs, counts = [], [], [], {}
    parent_cpu = 0.0
    children_before = _children_cpu()
    print(f"interleaving {rounds} rounds ({load_text()})")
    with mp.get_context("fork").Pool(args.workers) as pool:
        for part in parts:
            start, cpu = time.perf_counter(), time.process_time()
            maps = receptive_field_maps_from_jacobian(rows, (args.fraction,), "global")
            ours.append(time.perf_counter() - start)
            ours_cpu.append(time.process_time() - cpu)
            start, cpu = time.perf_counter(), time.process_time()
            tasks = [(stored, p, args.fraction) for p in part]
            counts.update(zip(part, pool.starmap(original_count, tasks, chunksize=1), strict=True))
            theirs.append((time.perf_counter() - start) / len(part))
            parent_cpu += time.process_time() - cpu
    their_cpu = (_children_cpu() - children_before + parent_cpu) / len(sample_pixels)
    flat = maps.count[0].reshape(-1)
    same = all(int(flat[p]) == c for p, c in counts.items())
    per_pixel = statistics.median(theirs)
    extrapolated = per_pixel * pixels
    vessel_lens = statistics.median(ours)
    start = time.perf_counter()
    end_to_end = receptive_field_maps(model, crop, (args.fraction,), "global")
    end_to_end_s = time.perf_counter() - start
    same_end = torch.equal(end_to_end.count, maps.count)
    print(f"original scheme: {1000 * per_pixel:.1f} ms per pixel over {len(counts)} sampled pixels")
    print(f"  ({args.workers} workers), extrapolated to {pixels} pixels: {extrapolated:.1f} s")
    print(f"vessel-lens from the stored Jacobian, all {pixels} pixels: {vessel_lens:.3f} s")
    print(f"ratio: {extrapolated / vessel_lens:.0f}x   counts identical on the sample: {same}")
    cpu_ratio = their_cpu * pixels / statistics.median(ours_cpu)
    print(
        f"CPU time (all processes, less sensitive to the load): original {1000 * their_cpu:.1f} "
        f"ms per pixel, {their_cpu * pixels:.0f} s extrapolated; vessel-lens "
        f"{statistics.median(ours_cpu):.3f} s; ratio {cpu_ratio:.0f}x"
    )
    print(
        f"vessel-lens end to end from the model (Jacobian included): {end_to_end_s:.1f} s, "
        f"counts identical to the stored-Jacobian maps: {same_end}  ({load_text()})"
    )


def _full_child(checkpoint: str, image: torch.Tensor, threads: int, queue) -> None:
    from vessel_lens.interpret.fields.thresholded import receptive_field_maps
    from vessel_lens.models import load_model

    torch.set_num_threads(threads)
    model, _ = load_model(checkpoint, "cpu")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    maps = receptive_field_maps(model, image)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put(
        {
            "seconds": seconds,
            "peak_mib": peak / 1024,
            "before_mib": before / 1024,
            "kept": maps.metadata["kept_entries_peak"],
            "strategy": maps.metadata["strategy"],
            "colouring": maps.metadata["colouring"],
            "pixels": int(maps.computed.sum()),
            "mean_count_1%": float(maps.count[1].float().mean()),
        }
    )


def full_image(args, sample) -> None:
    context = mp.get_context("spawn")
    queue = context.Queue()
    size = tuple(sample.image.shape[-2:])
    print(f"whole image {size[0]}x{size[1]}, default fractions, mode global ({load_text()})")
    child = context.Process(
        target=_full_child, args=(args.checkpoint, sample.image, args.threads, queue)
    )
    child.start()
    result = queue.get()
    child.join()
    print(
        f"  {result['seconds']:.0f} s for {result['pixels']} pixels "
        f"({1000 * result['seconds'] / result['pixels']:.1f} ms/pixel, strategy "
        f"{result['strategy']}, colouring {result['colouring']}); peak RSS "
        f"{result['peak_mib']:.0f} MiB ({result['before_mib']:.0f} MiB after loading the model); "
        f"kept entries at most {result['kept']} ({12 * result['kept'] / 2**20:.0f} MiB); "
        f"mean count at 1 %: {result['mean_count_1%']:.1f}  ({load_text()})"
    )


def colouring(args, model, sample) -> None:
    from vessel_lens.interpret import JacobianEngine, receptive_field
    from vessel_lens.interpret.fields._colour import (
        colour_groups,
        combined_gradients,
        periods,
        split_rows,
    )

    image = sample.image.repeat(1, args.colour_tile, args.colour_tile)
    height, width = image.shape[-2:]
    field = receptive_field(model, (height, width))
    period = periods(field)
    groups = colour_groups(torch.arange(height * width), width, period)
    print(
        f"colouring on {height}x{width}: field offsets up {field.up} down {field.down} left "
        f"{field.left} right {field.right}, period {period}, {len(groups)} colours, "
        f"{height * width / len(groups):.1f} pixels per pass ({load_text()})"
    )
    middle = len(groups) // 2
    centre = (height // 2) * width + width // 2
    for strategy, count, chunk in (
        ("linear", args.colour_groups, args.chunk),
        ("vmap", args.vmap_groups, args.vmap_chunk),
    ):
        engine = JacobianEngine(model, image, strategy=strategy)
        chosen = groups[middle : middle + count]
        coloured_pixels = torch.cat(chosen)
        contiguous = torch.arange(centre, centre + 2 * chunk)
        engine.rows(contiguous[:2])
        combined_gradients(engine, chosen[:1])
        plain_s, coloured_s = [], []
        for _ in range(2):
            start = time.perf_counter()
            for part in contiguous.split(chunk):
                engine.rows(part)
            plain_s.append((time.perf_counter() - start) / len(contiguous))
            start = time.perf_counter()
            _, crops, top, left = split_rows(combined_gradients(engine, chosen), chosen, field)
            coloured_s.append((time.perf_counter() - start) / len(coloured_pixels))
        plain = torch.cat([engine.rows(part) for part in coloured_pixels.split(chunk)])
        scale = float(plain.abs().max())
        h, w = crops.shape[-2:]
        worst = max(
            float((crops[n] - plain[n][:, top[n] : top[n] + h, left[n] : left[n] + w]).abs().max())
            for n in range(len(coloured_pixels))
        )
        per_plain, per_coloured = min(plain_s), min(coloured_s)
        print(
            f"  {strategy}: plain rows in chunks of {chunk} consecutive pixels "
            f"{1000 * per_plain:.1f} ms/pixel; {len(chosen)} coloured passes "
            f"({len(coloured_pixels)} pixels) {1000 * per_coloured:.1f} ms/pixel: colouring is "
            f"{per_plain / per_coloured:.2f}x as fast; coloured rows vs plain rows: max "
            f"|difference| / max |J| {worst / scale:.1e}  ({load_text()})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="vessmap-w16")
    parser.add_argument("--data", default=None, help="dataset (default: synthetic vessels)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--size", type=int, default=64, help="crop side for part 1")
    parser.add_argument("--fraction", type=float, default=0.01)
    parser.add_argument("--sample", type=int, default=24, help="pixels the original computes")
    parser.add_argument("--workers", type=int, default=2, help="the original's pool size")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--chunk", type=int, default=42, help="plain rows per batch in part 3")
    parser.add_argument("--vmap-chunk", type=int, default=8, help="vmap rows per batch")
    parser.add_argument(
        "--colour-tile", type=int, default=1, help="part 3 on the image tiled N x N times"
    )
    parser.add_argument("--colour-groups", type=int, default=16)
    parser.add_argument("--vmap-groups", type=int, default=4)
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: 1,2,3")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, {args.threads} torch thread(s); {load_text()}"
    )
    model, checkpoint, sample = load(args)
    kwargs = checkpoint.model_kwargs
    print(f"model {checkpoint.model_name} {kwargs} from {args.checkpoint}; image {sample.stem}")
    if "1" not in skip:
        compare_original(args, model, sample)
    if "2" not in skip:
        full_image(args, sample)
    if "3" not in skip:
        colouring(args, model, sample)


if __name__ == "__main__":
    main()
