"""The app under load: simulated users hovering pixels, against a server in its own process.

The server is ``python -m vessel_lens app`` on 127.0.0.1 (a free port), so its memory is its
own: its resident set (VmRSS in /proc/<pid>/status) is sampled throughout. After a warm-up
that opens every image once, ``--users`` threads act like people at the page for
``--duration`` seconds: each waits for its answer, thinks 0 to 2 x ``--think-ms``, and then
hovers a new random pixel, or sometimes moves the threshold slider (the browser then asks
for the threshold, the pixel's panels and the map) or opens another of the ``--images``
images (the view, the input panels and the map). Meanwhile one more thread sends malformed
callback bodies (broken JSON, wrong ids, wrong types, huge numbers: each must get 400) and
well-formed ones with absurd values (each must get 200 with a message in the page, or 204).

An error is a request that fails, any status other than 200 for a valid request, or a 200
whose payload says something went wrong (an empty panel, a message, a missing view).

    python benchmarks/app_load.py                                   # 10 users, 60 s, VessMAP
    python benchmarks/app_load.py --users 3 --duration 8 --checkpoint tiny.pt --data synth/ \\
        --cache-mb 64 --json result.json

Default checkpoint: the shipped ``vessmap-w16`` if installed, else a copy of the training run's
``runs/vessmap-w16/best.pt`` (copied because training may rewrite it); default data:
``../shared/data/vessmap`` relative to the repository. Exit status 1 if any request failed,
a malformed body got anything but 400, or the server logged a traceback.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from vessel_lens.app import testing

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
MIB = 2**20


def default_checkpoint(scratch: Path) -> str:
    import vessel_lens.models

    shipped = Path(vessel_lens.models.__file__).with_name("weights") / "vessmap-w16.pt"
    if shipped.exists():
        return "vessmap-w16"
    run = REPO / "runs" / "vessmap-w16" / "best.pt"
    if not run.exists():
        raise SystemExit(f"no default checkpoint: neither {shipped} nor {run} exists")
    return str(shutil.copy2(run, scratch / "vessmap-w16.pt"))


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


class AppProcess(testing.ServerProcess):
    """``vessel-lens app`` in a child process, started with this benchmark's options."""

    def __init__(self, args: argparse.Namespace, checkpoint: str, log_path: Path):
        options = [
            *("--checkpoint", checkpoint),
            *(("--data", args.data) if args.data else ()),
            *("--device", args.device, "--cache-mb", str(args.cache_mb)),
            *("--workers", str(args.workers), "--threads", str(args.threads)),
        ]
        arenas = {"MALLOC_ARENA_MAX": str(args.malloc_arenas)} if args.malloc_arenas else {}
        try:
            super().__init__(options, log_path, arenas, args.start_timeout)
        except RuntimeError as exc:
            raise SystemExit(str(exc)) from None


@dataclass
class Tally:
    """Everything the threads record (under one lock)."""

    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    malformed: Counter = field(default_factory=Counter)
    bad_values: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, kind: str) -> int:
        with self.lock:
            return len(self.latencies.get(kind, ()))

    def record(self, kind: str, seconds: float, error: str | None) -> None:
        with self.lock:
            self.latencies.setdefault(kind, []).append(seconds)
            if error is not None:
                self.errors.append(f"{kind}: {error}")


def post(port: int, body: bytes, timeout: float) -> tuple[int, bytes, float]:
    """(status, body, seconds); a fresh connection per request, as HTTP/1.0 clients do."""
    started = time.perf_counter()
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        connection.request(
            "POST", testing.UPDATE, body=body, headers={"Content-Type": "application/json"}
        )
        response = connection.getresponse()
        data = response.read()
    finally:
        connection.close()
    return response.status, data, time.perf_counter() - started


def get_json(port: int, path: str, timeout: float) -> object:
    connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        connection.request("GET", path)
        return json.loads(connection.getresponse().read())
    finally:
        connection.close()


def answer_problem(kind: str, response: dict) -> str | None:
    """Why a 200 answer of a valid request still reports a failure (None if it does not)."""
    if kind in ("hover", "threshold-pixel"):
        message = response.get("message", {}).get("children")
        return None if message == "" else f"message {str(message)[:120]!r}"
    if kind == "view":
        return None if "view-store" in response else "no view"
    if kind == "threshold":
        return None if "threshold-store" in response else "no threshold"
    figure = response.get("graph-input" if kind == "input" else "graph-map", {}).get("figure")
    if isinstance(figure, dict) and figure.get("data") == []:
        notes = figure.get("layout", {}).get("annotations") or [{}]
        return f"empty panel: {str(notes[0].get('text'))[:120]!r}"
    return None


class User:
    """One person at the page: the browser's callback requests for what they do."""

    def __init__(self, port, dependencies, page, images, seed, tally, args):
        self.port, self.dependencies, self.images = port, dependencies, images
        self.values = {**page, "layer.value": "errors", "model.value": "m0"}
        self.values["compare.value"] = "none"
        self.rng = random.Random(seed)
        self.tally, self.args = tally, args
        self.view: dict = {}

    def call(self, kind: str, output: str, changed: str | None = None) -> dict:
        body = testing.callback_request(self.dependencies, output, self.values, changed)
        try:
            status, data, seconds = post(self.port, json.dumps(body).encode(), self.args.timeout)
        except (OSError, http.client.HTTPException) as exc:
            self.tally.record(kind, self.args.timeout, f"{type(exc).__name__}: {exc}")
            return {}
        if status != 200:
            self.tally.record(kind, seconds, f"HTTP {status}: {data[:120]!r}")
            return {}
        response = json.loads(data).get("response", {})
        self.tally.record(kind, seconds, answer_problem(kind, response))
        return response

    def open_image(self, key: str) -> None:
        self.values["image.value"] = key
        answer = self.call("view", "view-store.data", "image.value")
        view = answer.get("view-store", {}).get("data")
        if not view:
            return
        self.view = view
        self.values["view-store.data"] = view
        self.values["pixel-store.data"] = view["pixel"]
        self.call("input", "graph-input.figure", "view-store.data")
        self.call("map", "graph-map.figure", "view-store.data")

    def hover(self) -> None:
        view = self.view["view"]
        row, col = self.rng.randrange(view["height"]), self.rng.randrange(view["width"])
        self.values["pixel-store.data"] = {"row": row, "col": col, "view": view}
        self.call("hover", "graph-gradient.figure", "pixel-store.data")

    def move_threshold(self) -> None:
        self.values["threshold-slider.value"] = round(self.rng.uniform(-4.0, -1.0), 2)
        answer = self.call("threshold", "threshold-store.data", "threshold-slider.value")
        store = answer.get("threshold-store", {}).get("data")
        if store is None:
            return
        self.values["threshold-store.data"] = store
        self.values["threshold-input.value"] = answer["threshold-input"]["value"]
        self.call("threshold-pixel", "graph-gradient.figure", "threshold-store.data")
        self.call("map", "graph-map.figure", "threshold-store.data")

    def keeps_going(self, until: float) -> bool:
        """Until the load's end, and past it (at most --overtime s) while fewer than
        --min-hovers hovers were answered: a busy machine still gives the measured number."""
        now = time.monotonic()
        if now < until:
            return True
        return now < until + self.args.overtime and self.tally.count("hover") < self.args.min_hovers

    def run(self, until: float) -> None:
        self.open_image(self.rng.choice(self.images))
        while self.view and self.keeps_going(until):
            draw = self.rng.random()
            if draw < self.args.switch:
                others = [k for k in self.images if k != self.view["view"]["key"]]
                self.open_image(self.rng.choice(others or self.images))
            elif draw < self.args.switch + self.args.threshold:
                self.move_threshold()
            else:
                self.hover()
            time.sleep(self.rng.uniform(0, 2 * self.args.think_ms) / 1000)


def send_malformed(port, valid_body, bad_bodies, until, interval, tally, timeout) -> None:
    """Cycle through the malformed bodies (expect 400) and the absurd values (expect 200 with
    a message, or 204) until ``until``; every one at least once."""
    cases = [(c, b, "malformed") for c, _, b in testing.malformed_bodies(valid_body)]
    cases += [("absurd-values", b, "values") for b in bad_bodies]
    interval = min(interval, max(until - time.monotonic(), 0.0) / len(cases))
    sent = 0
    while sent < len(cases) or time.monotonic() < until:
        category, body, family = cases[sent % len(cases)]
        sent += 1
        try:
            status = post(port, body, timeout)[0]
        except (OSError, http.client.HTTPException) as exc:
            status = type(exc).__name__
        with tally.lock:
            if family == "malformed":
                tally.malformed[(category, status)] += 1
            else:
                tally.bad_values[status] += 1
        time.sleep(interval)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarise(tally: Tally, seconds: float) -> list[dict]:
    rows = []
    every = [v for values in tally.latencies.values() for v in values]
    for kind, values in [*sorted(tally.latencies.items()), ("all", every)]:
        errors = sum(1 for e in tally.errors if kind == "all" or e.startswith(f"{kind}:"))
        rows.append(
            {
                "kind": kind,
                "requests": len(values),
                "per_second": len(values) / seconds,
                "p50_ms": 1000 * percentile(values, 50),
                "p95_ms": 1000 * percentile(values, 95),
                "p99_ms": 1000 * percentile(values, 99),
                "max_ms": 1000 * max(values, default=float("nan")),
                "errors": errors,
            }
        )
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="default: vessmap-w16 (see above)")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "vessmap"))
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load")
    parser.add_argument(
        "--min-hovers",
        type=int,
        default=0,
        help="go on after --duration until this many hovers were answered",
    )
    parser.add_argument(
        "--overtime", type=float, default=300.0, help="the most seconds --min-hovers may add"
    )
    parser.add_argument("--images", type=int, default=3, help="images the users switch among")
    parser.add_argument("--think-ms", type=float, default=50.0, help="mean pause per action")
    parser.add_argument(
        "--switch", type=float, default=0.02, help="chance an action opens an image"
    )
    parser.add_argument(
        "--threshold", type=float, default=0.06, help="chance it moves the threshold"
    )
    parser.add_argument("--warm-up-hovers", type=int, default=5, help="per image, before load")
    parser.add_argument("--malformed-interval", type=float, default=0.25, help="seconds")
    parser.add_argument("--cache-mb", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--malloc-arenas",
        type=int,
        default=0,
        help="MALLOC_ARENA_MAX for the server (0: glibc's default, 8 per core)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=120.0, help="per request, seconds")
    parser.add_argument("--start-timeout", type=float, default=180.0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    return parser.parse_args(argv)


class MemorySampler:
    """The server's resident set every 0.25 s, as (seconds since start, MiB)."""

    def __init__(self, server: AppProcess):
        self.server, self.samples = server, []
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            rss = self.server.memory()
            if rss is not None:
                self.samples.append((time.monotonic() - self.started, rss))

    def since(self, moment: float) -> list[float]:
        """Samples taken after ``moment`` (a time.monotonic() value)."""
        return [rss for t, rss in self.samples if t >= moment - self.started]

    def stop(self) -> None:
        self._stop.set()


def run(args: argparse.Namespace, scratch: Path) -> dict:
    checkpoint = args.checkpoint or default_checkpoint(scratch)
    loads = {"before": load_average()}
    server = AppProcess(args, checkpoint, scratch / "server.log")
    sampler = MemorySampler(server)
    try:
        memory = {"start": server.memory()}
        port, tally = server.port, Tally()
        dependencies = get_json(port, testing.DEPENDENCIES, args.timeout)
        page = testing.layout_values(get_json(port, testing.LAYOUT, args.timeout))
        images = [o["value"] for o in page["image.options"]][: args.images]

        warm = User(port, dependencies, page, images, args.seed, Tally(), args)
        for key in images:
            warm.open_image(key)
            for _ in range(args.warm_up_hovers):
                warm.hover()
        memory["warm"], loads["warm"] = server.memory(), load_average()
        valid = testing.pixel_request(dependencies, warm.view, (0, 0))
        absurd = [
            json.dumps(testing.pixel_request(dependencies, warm.view, (0, 0), values)).encode()
            for _, values in testing.bad_pixel_values(warm.view)
        ]

        load_started = time.monotonic()
        until = load_started + args.duration
        threads = [
            threading.Thread(
                target=User(port, dependencies, page, images, args.seed + 1 + i, tally, args).run,
                args=(until,),
            )
            for i in range(args.users)
        ]
        threads.append(
            threading.Thread(
                target=send_malformed,
                args=(port, valid, absurd, until, args.malformed_interval, tally, args.timeout),
            )
        )
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.monotonic() - load_started
        memory["end"], loads["end"] = server.memory(), load_average()
        memory["peak_vmhwm"] = server.memory("VmHWM")
        memory["max_during_load"] = max(sampler.since(load_started), default=None)
        memory["halfway"] = next(iter(sampler.since(load_started + seconds / 2)), None)

        alive = User(port, dependencies, page, images, args.seed, Tally(), args)
        alive.open_image(images[0])
        alive.hover()
    finally:
        sampler.stop()
        exit_status = server.stop()
    log = server.log()
    return {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        | {"checkpoint": checkpoint, "images": images},
        "seconds": seconds,
        "rows": summarise(tally, seconds),
        "errors": tally.errors,
        "warm_up_errors": warm.tally.errors,
        "malformed": [
            {"category": c, "status": s, "count": n}
            for (c, s), n in sorted(tally.malformed.items())
        ],
        "bad_values": {str(k): v for k, v in tally.bad_values.items()},
        "memory_mib": memory,
        "memory_samples": [(round(t, 2), round(m, 1)) for t, m in sampler.samples],
        "load_average": loads,
        "still_serving": not alive.tally.errors,
        "server_exit_status": exit_status,
        "server_tracebacks": log.count("Traceback"),
        "server_log_tail": log[-2000:],
    }


def report(result: dict) -> None:
    s = result["settings"]
    print(
        f"{s['users']} users for {result['seconds']:.1f} s over {len(s['images'])} images "
        f"(think 0-{2 * s['think_ms']:.0f} ms); server --cache-mb {s['cache_mb']} "
        f"--workers {s['workers']} --threads {s['threads']} --device {s['device']}"
    )
    print(f"checkpoint {s['checkpoint']}, data {s['data']}")
    print(f"load average (1/5/15 min): {result['load_average']}")
    print()
    print("| requests | count | per s | p50 ms | p95 ms | p99 ms | max ms | errors |")
    print("|---|---|---|---|---|---|---|---|")
    for r in result["rows"]:
        print(
            f"| {r['kind']} | {r['requests']} | {r['per_second']:.1f} | {r['p50_ms']:.0f} | "
            f"{r['p95_ms']:.0f} | {r['p99_ms']:.0f} | {r['max_ms']:.0f} | {r['errors']} |"
        )
    print()
    by_category: dict[str, Counter] = {}
    for m in result["malformed"]:
        by_category.setdefault(m["category"], Counter())[m["status"]] += m["count"]
    for category, statuses in by_category.items():
        print(f"malformed {category}: {dict(statuses)}")
    print(f"absurd values in valid requests: {result['bad_values']}")
    m = result["memory_mib"]

    def mib(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.0f} MiB"

    def growth(since: str) -> str:
        return "n/a" if None in (m[since], m["end"]) else f"{m['end'] - m[since]:+.0f} MiB"

    print(
        f"server RSS: start {mib(m['start'])}, after warm-up {mib(m['warm'])}, halfway "
        f"{mib(m['halfway'])}, end {mib(m['end'])}, max during load "
        f"{mib(m['max_during_load'])}, peak (VmHWM) {mib(m['peak_vmhwm'])}"
    )
    print(
        f"growth: from start {growth('start')}, after warm-up {growth('warm')}, over the "
        f"second half of the load {growth('halfway')}"
    )
    print(
        f"errors {len(result['errors'])} (warm-up {len(result['warm_up_errors'])}); server "
        f"tracebacks {result['server_tracebacks']}; still serving: {result['still_serving']}"
    )
    for error in result["errors"][:10]:
        print(f"  {error}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="app-load-") as scratch:
        result = run(args, Path(scratch))
    report(result)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1))
    failed = (
        result["errors"]
        or result["warm_up_errors"]
        or any(m["status"] != 400 for m in result["malformed"])
        or set(result["bad_values"]) - {"200", "204"}
        or result["server_tracebacks"]
        or not result["still_serving"]
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
