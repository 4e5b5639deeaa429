"""Time of the app's on-demand receptive-field count map (the default map panel), issue 15.

    python benchmarks/app_countmap.py --data ../shared/data/vessmap --image 5740 [--hovers 20]

Builds the app's state as ``vessel-lens app`` does (its glibc settings included), opens the
full view of the image and times, in one process:

- the map as the app computes it: a background task in the work queue, from the request to
  the finished result (the view's prepared engine is reused);
- the same grid of rows computed directly (:func:`vessel_lens.app.countmap.compute_count_rows`
  on the same engine, no queue): the baseline, printed as the app's time over it;
- with ``--hovers N``, N hovers of new pixels while the map is computed, against N hovers
  with nothing else running (the map's task yields the worker between passes).

Prints the grid, the time of each and the kept bytes.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="vessmap-w16")
    parser.add_argument("--data", required=True)
    parser.add_argument("--image", default="5740")
    parser.add_argument("--hovers", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import torch

    from vessel_lens.app import countmap
    from vessel_lens.app.config import AppConfig
    from vessel_lens.app.layers import discover_layers
    from vessel_lens.app.methods import discover_methods
    from vessel_lens.app.server import limit_malloc_arenas, map_large_allocations
    from vessel_lens.app.state import AppState

    limit_malloc_arenas()
    map_large_allocations()
    torch.set_num_threads(1)
    discover_methods()
    discover_layers()
    state = AppState(AppConfig(checkpoints=[args.checkpoint], data=args.data, workers=2))
    state.warm_up()
    view, _ = state.view(f"data/{args.image}", "full")
    engine = state.engine("m0", view)
    state.receptive_field("m0", view)
    rng = np.random.default_rng(0)

    def hover_times(count: int) -> list[float]:
        times = []
        for _ in range(count):
            row, col = (int(v) for v in rng.integers(0, view.height, 2))
            started = time.perf_counter()
            state.gradient("m0", view, row, col)
            times.append(time.perf_counter() - started)
        return times

    quiet = hover_times(args.hovers) if args.hovers else []
    for repeat in range(args.repeats):
        state.count_maps.clear()
        started = time.perf_counter()
        rows, task = state.count_rows("m0", view, restart=True)
        busy = hover_times(args.hovers) if args.hovers else []
        while task.state in ("waiting", "running"):
            time.sleep(0.01)
        in_app = time.perf_counter() - started
        rows, _ = state.count_rows("m0", view)
        started = time.perf_counter()
        direct = countmap.compute_count_rows(engine, rows.stride, lambda: None, lambda f: None)
        baseline = time.perf_counter() - started
        assert np.array_equal(direct.values, rows.values)
        grid = rows.shape
        print(
            f"[{repeat}] {view.height}x{view.width} view, stride {rows.stride} "
            f"({grid[0]}x{grid[1]} = {grid[0] * grid[1]} pixels): in the app {in_app:.2f} s, "
            f"direct {baseline:.2f} s, ratio {in_app / baseline:.2f}; kept "
            f"{rows.nbytes / 2**20:.1f} MiB"
        )
        if busy:
            print(
                f"    hovers while it ran: median {1e3 * statistics.median(busy):.1f} ms, "
                f"p95 {1e3 * np.percentile(busy, 95):.1f} ms (quiet: median "
                f"{1e3 * statistics.median(quiet):.1f} ms, p95 "
                f"{1e3 * np.percentile(quiet, 95):.1f} ms)"
            )
    state.shutdown(wait=10)


if __name__ == "__main__":
    main()
