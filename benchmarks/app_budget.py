"""The app's memory budget under heavy work: peak RSS against ``--cache-mb`` plus its base.

The server is ``python -m vessel_lens app`` in its own process (127.0.0.1, a free port). Its
*base* is its resident set once it listens: code, models, the dataset's images, and the probes
that measure each architecture's memory (the app runs them at start-up). Its resident set is
then sampled every 0.1 s while one of two scenarios runs, and its peak (VmHWM, the kernel's
high-water mark) is compared with base + budget.

``heavy`` (default)   ``--clients`` clients at once (20), each opening one of the first
                      ``--images`` images (full view, with the random initialisation as the
                      comparison: two prepared views) and clicking a pixel with
                      ``--method`` (integrated gradients) for both models, then polling
                      the task until it ends: done, refused (queue full) or timed out.
``session``           one person: opens an image with the random comparison, hovers 20
                      pixels, clicks one with integrated gradients and waits for it,
                      uploads a 1024x1024 PNG (the dataset's first image scaled up), opens it
                      (the budget decides how much of it is prepared) and hovers 20 pixels.
``batches``           no server: ``--method`` on the first image's 256x256 view in this
                      process with the app's allocator settings, timed ``--repeats`` times
                      as the library runs it (one batch) and as the app plans it (batches
                      that fit a quarter of ``--cache-mb``); prints both and their ratio
                      (``--allocator glibc``: without the app's fixed mmap threshold).

    python benchmarks/app_budget.py                       # heavy, --cache-mb 1024, VessMAP
    python benchmarks/app_budget.py --scenario session
    python benchmarks/app_budget.py --scenario batches
    python benchmarks/app_budget.py --checkpoint tiny.pt --data synth/ --cache-mb 64 --json r.json

Exit status 1 when the peak exceeds base + budget, a request failed (HTTP status other than
200, an internal error in the page) or the server logged a traceback.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

from vessel_lens.app import testing

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"


def default_checkpoint(scratch: Path) -> str:
    import vessel_lens.models

    shipped = Path(vessel_lens.models.__file__).with_name("weights") / "vessmap-w16.pt"
    if shipped.exists():
        return "vessmap-w16"
    run = REPO / "runs" / "vessmap-w16" / "best.pt"
    if not run.exists():
        raise SystemExit(f"no default checkpoint: neither {shipped} nor {run} exists")
    return str(shutil.copy2(run, scratch / "vessmap-w16.pt"))


class Client:
    """One page: the browser's callback requests, with the page's values."""

    def __init__(self, port: int, dependencies: list, page: dict, timeout: float):
        self.port, self.dependencies, self.timeout = port, dependencies, timeout
        self.values = dict(page)
        self.values["compare.value"] = "random"
        self.problems: list[str] = []
        self.latencies: list[float] = []

    def call(self, output: str, changed: str) -> dict:
        body = json.dumps(testing.callback_request(self.dependencies, output, self.values, changed))
        started = time.perf_counter()
        connection = http.client.HTTPConnection(HOST, self.port, timeout=self.timeout)
        try:
            connection.request(
                "POST", testing.UPDATE, body=body, headers={"Content-Type": "application/json"}
            )
            response = connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.problems.append(f"{output}: {type(exc).__name__}: {exc}")
            return {}
        finally:
            connection.close()
        self.latencies.append(time.perf_counter() - started)
        if response.status == 204:
            return {}
        if response.status != 200:
            self.problems.append(f"{output}: HTTP {response.status} {data[:200]!r}")
            return {}
        answer = json.loads(data).get("response", {})
        if "internal error" in json.dumps(answer):
            self.problems.append(f"{output}: {json.dumps(answer)[:300]}")
        return answer

    def open_image(self, key: str) -> str:
        self.values["image.value"] = key
        answer = self.call("view-store.data", "image.value")
        view = answer.get("view-store", {}).get("data")
        note = str(answer.get("view-note", {}).get("children", ""))
        if not view:
            self.problems.append(f"view of {key}: {note[:200]}")
            return note
        self.values["view-store.data"] = view
        self.values["pixel-store.data"] = view["pixel"]
        return note

    def pixel(self, row: int, col: int, method: str = "gradient", clicked: bool = False) -> dict:
        view = self.values["view-store.data"]["view"]
        self.values["method.value"] = method
        self.values["pixel-store.data"] = {"row": row, "col": col, "view": view, "clicked": clicked}
        return self.call("graph-gradient.figure", "pixel-store.data")

    def random_pixel(self, rng: random.Random) -> tuple[int, int]:
        view = self.values["view-store.data"]["view"]
        return rng.randrange(view["height"]), rng.randrange(view["width"])

    def run_task(self, row: int, col: int, method: str) -> tuple[str, str, float]:
        """Click the pixel with a slow method and poll until the task ends:
        (outcome, its last status line, seconds from the click)."""
        started = time.monotonic()
        answer = self.pixel(row, col, method, clicked=True)
        task = answer.get("task-store", {}).get("data")
        status = str(answer.get("task-status", {}).get("children", ""))
        if method in json.dumps(answer.get("graph-gradient", {})):  # answered at once
            return "done", status, time.monotonic() - started
        if not task:
            return ("refused" if "busy" in status else "failed"), status, 0.0
        self.values["task-store.data"] = task
        ticks = 0
        while True:
            time.sleep(1.0)
            ticks += 1
            self.values["task-poll.n_intervals"] = ticks
            answer = self.call("task-done.data", "task-poll.n_intervals")
            text = str(answer.get("task-status", {}).get("children", status))
            status = text or status
            if "task-done" in answer:
                self.values["task-done.data"] = answer["task-done"]["data"]
                shown = self.call("graph-gradient.figure", "task-done.data")
                title = json.dumps(shown.get("graph-gradient", {}))
                outcome = "done" if method in title else "done, not shown"
                return outcome, status, time.monotonic() - started
            if answer.get("task-bar", {}).get("className", "").endswith("problem"):
                kind = "timed out" if "waited" in text else "failed"
                return kind, text, time.monotonic() - started


def upload(client: Client, path: Path) -> str:
    """Upload ``path`` as the page does; returns the message under the upload area."""
    data = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    client.values["upload.contents"] = data
    client.values["upload.filename"] = path.name
    answer = client.call("image.options", "upload.contents")
    key = answer.get("image", {}).get("value")
    if key:
        client.values["image.value"] = key
    return str(answer.get("upload-message", {}).get("children", ""))


def big_png(data_folder: str | None, scratch: Path, side: int = 1024) -> Path:
    """The dataset's first image scaled up to ``side`` x ``side`` (or a ramp without data)."""
    from PIL import Image

    image = None
    if data_folder:
        from vessel_lens.data.source import open_dataset

        dataset = open_dataset(data_folder, require_labels=False)
        sample = next(iter(dataset.samples.values()))
        small = sample.image[0].numpy()
        reps = -(-side // min(small.shape))
        image = np.kron(small, np.ones((reps, reps), dtype=np.float32))[:side, :side]
    if image is None:
        image = np.tile(np.linspace(0, 1, side, dtype=np.float32), (side, 1))
    path = scratch / f"upload-{side}.png"
    buffer = io.BytesIO()
    Image.fromarray((image * 255).astype(np.uint8)).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    return path


def heavy(args, port, dependencies, page, images) -> dict:
    outcomes: list[tuple[str, str, float]] = []
    clients: list[Client] = []
    lock = threading.Lock()
    start = threading.Barrier(args.clients)

    def one(i: int) -> None:
        rng = random.Random(args.seed + i)
        client = Client(port, dependencies, page, args.timeout)
        with lock:
            clients.append(client)
        start.wait()
        client.open_image(images[i % len(images)])
        if "view-store.data" not in client.values:
            with lock:
                outcomes.append(("no view", client.problems[-1:][0], 0.0))
            return
        result = client.run_task(*client.random_pixel(rng), args.method)
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(args.clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    latencies = [s for c in clients for s in c.latencies]
    return {
        "seconds": time.monotonic() - started,
        "outcomes": dict(Counter(o for o, _, _ in outcomes)),
        "statuses": sorted({f"{o}: {s[:160]}" for o, s, _ in outcomes if o != "done"}),
        "last_task_s": max((s for _, _, s in outcomes), default=0.0),
        "max_request_s": max(latencies, default=0.0),
        "problems": [p for c in clients for p in c.problems],
    }


def session(args, port, dependencies, page, images, scratch) -> dict:
    rng = random.Random(args.seed)
    client = Client(port, dependencies, page, args.timeout)
    steps: dict[str, object] = {}
    started = time.monotonic()
    client.open_image(images[0])
    for _ in range(args.hovers):
        client.pixel(*client.random_pixel(rng))
    steps["task"] = client.run_task(*client.random_pixel(rng), args.method)
    steps["upload"] = upload(client, big_png(args.data, scratch))
    steps["upload_view"] = client.open_image(client.values.get("image.value", images[0]))
    for _ in range(args.hovers):
        client.pixel(*client.random_pixel(rng))
    steps["upload_view_size"] = client.values.get("view-store.data", {}).get("view")
    return {
        "seconds": time.monotonic() - started,
        "steps": steps,
        "max_request_s": max(client.latencies, default=0.0),
        "problems": client.problems,
    }


class Sampler:
    """The server's VmRSS every 0.1 s (MiB)."""

    def __init__(self, server: testing.ServerProcess):
        self.server, self.samples = server, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            rss = self.server.memory()
            if rss is not None:
                self.samples.append(rss)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def batches(args) -> int:
    """Time the method as the library runs it and as the app plans it (same process)."""
    import statistics

    import torch

    from vessel_lens.app import batched
    from vessel_lens.app.costs import measure_costs
    from vessel_lens.app.server import limit_malloc_arenas, map_large_allocations
    from vessel_lens.app.work import WorkQueue
    from vessel_lens.data.source import open_dataset
    from vessel_lens.interpret.attribution.methods import attribute
    from vessel_lens.models import load_model

    limit_malloc_arenas(2)
    mapped = args.allocator == "app" and map_large_allocations()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="app-budget-") as scratch:
        model, _ = load_model(args.checkpoint or default_checkpoint(Path(scratch)), "cpu")
    image = next(iter(open_dataset(args.data, require_labels=False).samples.values())).image
    image = image[:, :256, :256]
    side = int(image.shape[-1])
    costs = measure_costs(model, int(image.shape[0]), torch.device("cpu"))
    plan = batched.plan(args.method, side, side, 1, costs, args.cache_mb * 2**20)
    queue = WorkQueue(1, args.cache_mb * 2**20)
    target = (side // 2, side // 2)
    times: dict[str, list[float]] = {"library": [], "app": []}
    for _ in range(args.repeats):
        started = time.perf_counter()
        attribute(model, image, target, method=args.method)
        times["library"].append(time.perf_counter() - started)
        started = time.perf_counter()
        with queue.slot(plan.nbytes, args.method) as slot:
            batched.run(plan, model, image, target, slot)
        times["app"].append(time.perf_counter() - started)
    library, app = (statistics.median(times[k]) for k in ("library", "app"))
    print(
        f"{args.method} on a {side}x{side} view, one torch thread, large allocations mapped: "
        f"{mapped}; app plan {plan.options or plan.calls} ({plan.passes} passes, reserves "
        f"{plan.nbytes / 2**20:.0f} MiB of --cache-mb {args.cache_mb})"
    )
    print(
        f"median of {args.repeats}: library (one batch) {library:.1f} s, app (batches) "
        f"{app:.1f} s, app / library {app / library:.2f}"
    )
    return 0


def run(args, scratch: Path) -> dict:
    checkpoint = args.checkpoint or default_checkpoint(scratch)
    options = [
        *("--checkpoint", checkpoint, "--device", "cpu"),
        *(("--data", args.data) if args.data else ()),
        *("--cache-mb", str(args.cache_mb), "--workers", str(args.workers)),
        *("--max-side", str(args.max_side)),
    ]
    if args.before is None:
        options += ["--queue", str(args.queue), "--queue-timeout", str(args.queue_timeout)]
    env = {"PYTHONPATH": str(args.before)} if args.before else {}
    server = testing.ServerProcess(options, scratch / "server.log", env)
    try:
        dependencies = get_json(server.port, testing.DEPENDENCIES)
        page = testing.layout_values(get_json(server.port, testing.LAYOUT))
        time.sleep(1.0)  # let the allocator settle before reading the base
        base = server.memory()
        sampler = Sampler(server)
        images = [o["value"] for o in page["image.options"]][: args.images]
        if args.scenario == "heavy":
            result = heavy(args, server.port, dependencies, page, images)
        else:
            result = session(args, server.port, dependencies, page, images, scratch)
        sampler.stop()
        result["base_mib"] = base
        result["peak_mib"] = server.memory("VmHWM")
        result["max_sampled_mib"] = max(sampler.samples, default=None)
        result["end_mib"] = server.memory()
    finally:
        exit_status = server.stop()
    log = server.log()
    result.update(
        scenario=args.scenario,
        budget_mib=args.cache_mb,
        checkpoint=checkpoint,
        settings={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        server_exit_status=exit_status,
        server_tracebacks=log.count("Traceback"),
        server_log_tail=log[-2000:],
    )
    return result


def get_json(port: int, path: str) -> object:
    connection = http.client.HTTPConnection(HOST, port, timeout=60)
    try:
        connection.request("GET", path)
        return json.loads(connection.getresponse().read())
    finally:
        connection.close()


def report(result: dict) -> bool:
    """Print the result; True when the peak stayed within base + budget."""
    s = result["settings"]
    base, peak, budget = result["base_mib"], result["peak_mib"], result["budget_mib"]
    print(
        f"scenario {result['scenario']}: --cache-mb {budget} --workers {s['workers']} "
        f"--queue {s['queue']} --queue-timeout {s['queue_timeout']} --max-side {s['max_side']}"
        f" --device cpu; checkpoint {result['checkpoint']}, data {s['data']}"
    )
    if result["scenario"] == "heavy":
        print(
            f"{s['clients']} clients, {s['method']} with the random comparison: outcomes "
            f"{result['outcomes']}; last task ended after {result['last_task_s']:.0f} s; "
            f"slowest request {result['max_request_s']:.1f} s"
        )
        for line in result["statuses"][:6]:
            print(f"  {line}")
    else:
        for name, value in result["steps"].items():
            print(f"  {name}: {value}")
        print(f"slowest request {result['max_request_s']:.1f} s")
    within = peak is not None and base is not None and peak <= base + budget
    print(
        f"budget {budget} MiB, base {base:.0f} MiB, peak {peak:.0f} MiB (VmHWM; "
        f"max sampled {result['max_sampled_mib']:.0f} MiB), peak - base "
        f"{peak - base:.0f} MiB = {(peak - base) / budget:.2f} of the budget: "
        f"{'within' if within else 'OVER'} base + budget"
    )
    print(f"problems {len(result['problems'])}; server tracebacks {result['server_tracebacks']}")
    for problem in result["problems"][:5]:
        print(f"  {problem}")
    return within


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=("heavy", "session", "batches"), default="heavy")
    parser.add_argument("--checkpoint", help="default: vessmap-w16")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "vessmap"))
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--method", default="integrated_gradients")
    parser.add_argument("--hovers", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3, help="timings (batches)")
    parser.add_argument(
        "--allocator",
        choices=("app", "glibc"),
        default="app",
        help="batches: the app's allocator settings, or glibc's dynamic mmap threshold",
    )
    parser.add_argument("--cache-mb", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--queue", type=int, default=8)
    parser.add_argument("--queue-timeout", type=float, default=60.0)
    parser.add_argument("--max-side", type=int, default=1024, help="the command's default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=600.0, help="per request, seconds")
    parser.add_argument(
        "--before",
        type=Path,
        help="the src/ folder of an earlier tree (git archive): serve that app instead, "
        "without the options it did not have, for a measurement before the budget",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.scenario == "batches":
        return batches(args)
    with tempfile.TemporaryDirectory(prefix="app-budget-") as scratch:
        result = run(args, Path(scratch))
    within = report(result)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    failed = not within or result["problems"] or result["server_tracebacks"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
