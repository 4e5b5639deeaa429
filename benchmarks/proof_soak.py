"""Soak run of the proof harness: many random models, every claim of the engine checked.

Each seed draws a model from the grammar (``vessel_lens.interpret.proof.grammar``) and an input of
random size, then runs :func:`vessel_lens.interpret.proof.check.check_model`: the structural field
holds every non-zero gradient, a tight field is attained, every strategy that accepts the model
matches autograd, and colouring leaves the receptive-field maps unchanged. The tests run a
dozen fixed examples; this runs as many as asked and prints one line per model, then a summary
(models, failures, how often each strategy was chosen, seconds). Exit status 1 on any failure.

    python benchmarks/proof_soak.py --seeds 500
    python benchmarks/proof_soak.py --start 1000 --seeds 200 --max-side 24
"""

from __future__ import annotations

import argparse
import collections
import platform
import sys
import time
import warnings

import torch

from vessel_lens.interpret.proof.check import check_model
from vessel_lens.interpret.proof.grammar import RandomChooser, random_model, runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", type=int, default=0, help="first seed")
    parser.add_argument("--seeds", type=int, default=200, help="number of models")
    parser.add_argument("--min-side", type=int, default=8)
    parser.add_argument("--max-side", type=int, default=20)
    parser.add_argument("--quiet", action="store_true", help="print failures only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}")
    failures, chosen, tight, skipped = 0, collections.Counter(), 0, 0
    started = time.perf_counter()
    for seed in range(args.start, args.start + args.seeds):
        chooser = RandomChooser(seed)
        drawn = random_model(chooser, seed)
        size = (
            chooser.integer(args.min_side, args.max_side),
            chooser.integer(args.min_side, args.max_side),
        )
        generator = torch.Generator().manual_seed(seed)
        image = torch.rand(drawn.in_channels, *size, generator=generator)
        if not runs(drawn.model, image):
            skipped += 1
            continue
        clock = time.perf_counter()
        try:
            report = check_model(drawn.model, image, smooth=None if drawn.routes else drawn.smooth)
            problems = report.failures
        except Exception as exc:  # a crash is a failure of the harness's subject too
            report, problems = None, [f"crashed: {type(exc).__name__}: {exc}"]
        failures += bool(problems)
        if report is not None:
            tight += report.tight
            auto = report.errors.get("auto")
            chosen["refused" if isinstance(auto, str) else _strategy(report)] += 1
        if problems or not args.quiet:
            state = "FAIL" if problems else "ok"
            print(f"seed {seed} {size[0]}x{size[1]} {state} {time.perf_counter() - clock:.1f}s "
                  f"{' '.join(drawn.description)}")  # fmt: skip
            for problem in problems:
                print(f"    {problem}")
        if report is not None:
            for note in report.notes:
                print(f"    note: {note}")
    seconds = time.perf_counter() - started
    print(
        f"{args.seeds} models (seeds {args.start}..{args.start + args.seeds - 1}), "
        f"{skipped} skipped (PyTorch refuses the input size), {failures} failed, {tight} with a tight field, auto chose {dict(chosen)}, "
        f"{seconds:.0f} s"
    )
    return 1 if failures else 0


def _strategy(report) -> str:
    for name in ("linear", "vmap"):
        if not isinstance(report.errors.get(name), str):
            return name
    return "loop"


if __name__ == "__main__":
    sys.exit(main())
