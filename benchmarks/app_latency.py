"""Hover-to-figure latency of the app's callback path (issue 6: median <= 150 ms for a 256x256
image with the width-16 reference model on this CPU).

    python benchmarks/app_latency.py --checkpoint runs/vessmap-w16/best.pt \
        --data ../shared/data/vessmap [--image 10084] [--hovers 60] [--threads 1] [--compare random]

What one hover costs, measured as a real session has it (the image was selected, so its engine
is prepared; every hover is a new pixel, so its gradient is not cached):

- ``callback``: :func:`vessel_lens.app.handlers.pixel_outputs` (one backward pass per model,
  thresholding, figures, table) plus the JSON encoding Dash applies to the outputs;
- ``dispatch``: the same request sent through Dash's HTTP endpoint (Flask test client), i.e.
  the server's whole share of a hover (the browser then draws the figures);
- ``threshold``: moving the threshold for the same pixel (gradient cached).

The first hover after selecting the image is reported separately, as is the preparation.
Baseline, in the same process: a naive app that runs the model forward and one autograd
backward pass per hover.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def summary(name: str, seconds: list[float]) -> str:
    ms = [1000 * s for s in seconds]
    return (
        f"{name:<10} n={len(ms):<3} median {statistics.median(ms):7.1f} ms   "
        f"p95 {percentile(ms, 95):7.1f} ms   max {max(ms):7.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="vessmap-w16")
    parser.add_argument("--data", default=None, help="dataset (default: synthetic vessels)")
    parser.add_argument("--image", default=None, help="image stem (default: the first)")
    parser.add_argument("--hovers", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compare", default="none", help="'none', 'random' or a checkpoint")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from plotly.io.json import to_json_plotly

    from vessel_lens.app import AppConfig, create_app, handlers
    from vessel_lens.app.pixel import parse_threshold

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    compare = None if args.compare == "none" else args.compare
    config = AppConfig(
        checkpoints=[args.checkpoint],
        compare=compare,
        data=args.data,
        device=args.device,
        threads=args.threads,
    )
    app = create_app(config)
    state = app.vessel_lens_state
    key = f"data/{args.image}" if args.image else state.image_options()[0]["value"]
    compare_key = state.compare_default or "none"
    threshold = parse_threshold(0.01, "pixel")

    started = time.perf_counter()
    result = handlers.handle_view(state, key, "full", None, None, None, "m0", compare_key, None)
    prepare = time.perf_counter() - started
    view = handlers.view_from_data(state, result["view"])

    rng = np.random.default_rng(args.seed)
    flat = rng.choice(view.height * view.width, size=2 * args.hovers + 1, replace=False)
    pixels = [(int(f) // view.width, int(f) % view.width) for f in flat]
    pixels, other = pixels[: args.hovers + 1], pixels[args.hovers + 1 :]

    def hover(point, fraction=threshold):
        outputs = handlers.pixel_outputs(
            state, view, point, "m0", compare_key, fraction, "gradient", "pixel", ["field", "bbox"]
        )
        payload = [*outputs.gradient, *outputs.zoom, *outputs.tables, outputs.shapes]
        return len(to_json_plotly(payload))

    started = time.perf_counter()
    size = hover(pixels[0])
    first = time.perf_counter() - started
    callback = []
    for point in pixels[1:]:
        started = time.perf_counter()
        hover(point)
        callback.append(time.perf_counter() - started)
    thresholds = []
    for fraction in np.geomspace(0.001, 0.5, 20):
        started = time.perf_counter()
        hover(pixels[1], parse_threshold(float(fraction), "pixel"))
        thresholds.append(time.perf_counter() - started)

    client = app.server.test_client()
    dependencies = client.get("/_dash-dependencies").get_json()
    spec = next(d for d in dependencies if "graph-gradient.figure" in d["output"])
    values = {
        "threshold-store.data": {"fraction": 0.01},
        "threshold-mode.value": "pixel",
        "method.value": "gradient",
        "target.value": "pixel",
        "overlays.value": ["field", "bbox"],
        "view-store.data": result,
        "model.value": "m0",
        "compare.value": compare_key,
    }
    outputs = [
        {"id": part.split(".")[0], "property": part.split(".")[1].split("@")[0]}
        for part in spec["output"].strip(".").split("...")
    ]
    dispatch = []
    for row, col in other:
        values["pixel-store.data"] = {"row": row, "col": col}
        body = {
            "output": spec["output"],
            "outputs": outputs,
            "inputs": [
                {**i, "value": values.get(f"{i['id']}.{i['property']}")} for i in spec["inputs"]
            ],
            "state": [
                {**i, "value": values.get(f"{i['id']}.{i['property']}")} for i in spec["state"]
            ],
            "changedPropIds": ["pixel-store.data"],
        }
        started = time.perf_counter()
        response = client.post("/_dash-update-component", json=body)
        dispatch.append(time.perf_counter() - started)
        if response.status_code != 200:
            raise SystemExit(f"dispatch failed: {response.status_code} {response.data[:200]}")

    model = state.model("m0").model
    image = view.crop(state.sample(view.key).image)[None]
    naive = []
    for row, col in pixels[1:21]:
        started = time.perf_counter()
        x = image.clone().requires_grad_(True)
        probability = model(x).softmax(1)[0, 1, row, col]
        torch.autograd.grad(probability, x)
        naive.append(time.perf_counter() - started)
    state.jobs.shutdown(wait=5.0)

    load_after = os.getloadavg()
    entry = state.model("m0")
    print(f"checkpoint  {args.checkpoint} ({entry.label}); compare: {compare_key}")
    print(
        f"image       {key} {view.height}x{view.width}; device {args.device}; torch threads {args.threads}"
    )
    print(
        f"engine      strategy {state.engine('m0', view).strategy}; cached engines {len(state.engines)}"
    )
    print(
        f"load avg    before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}; "
        f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f} ({os.cpu_count()} CPUs)"
    )
    print(
        f"prepare     {1000 * prepare:7.1f} ms (select image: forward pass recorded, receptive field)"
    )
    print(f"first hover {1000 * first:7.1f} ms ({size / 1024:.0f} KiB of JSON)")
    print(summary("callback", callback))
    print(summary("dispatch", dispatch))
    print(summary("threshold", thresholds))
    print(summary("naive", naive))
    ratio = statistics.median(naive) / statistics.median(callback)
    print(f"median naive forward+backward per hover / median callback: {ratio:.1f}x")


if __name__ == "__main__":
    main()
