"""Hover-to-painted-gradient latency of the app in Chromium, this tree against an earlier commit
(issue 14 part 3: median <= 80 ms, p95 <= 150 ms).

    python benchmarks/app_browser_latency.py --data ../shared/data/vessmap --image 5740 \
        [--baseline-ref 91c9c4c] [--hovers 60] [--block 10] [--checkpoint vessmap-w16]

Starts two app servers in child processes on free local ports: one from this working tree, one
from the source of ``--baseline-ref`` (``git archive`` into a temporary folder, run with the same
Python and packages). One headless Debian Chromium (Playwright) opens both in two tabs, selects
the image and the *errors* map in each, and hovers the same random pixels of the input panel in
both, alternating blocks of ``--block`` hovers so that both meet the same machine load.

Every time is read from the page's own clock (``performance.now()``, the timeline of
``Event.timeStamp``), not the server's: from the ``mousemove`` event's timestamp to the first
task after the frame that paints the gradient panel of the new pixel. The page watches the
panel with ``requestAnimationFrame``: in the old app its title (drawn by Plotly with the map),
in the new app the pixel recorded on the canvas that ``app/assets/paint.js`` paints the map on
(``data-pixel``) before Dash's callback redraws the panel. The frame whose callback first sees
the change is the one that paints it, and a message posted from that callback runs after the
frame's paint. Also reported: the request (the
resource timing of the callback that carries the gradient), and the time until the numbers
table shows the pixel, and the synchronous time of each panel's ``Plotly.react`` per hover (0
for a hover that did not redraw that panel).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from vessel_lens.app.testing import CHROMIUM_ARGS, ServerProcess

INSTRUMENT = """() => {
    const vl = window.__vl = {move: null, painted: null, numbers: null, token: 0};
    document.addEventListener('mousemove', e => { vl.move = e.timeStamp; }, true);
    // time each panel's Plotly.react (its synchronous part: data, axes, drawing)
    vl.reacts = [];
    const react = window.Plotly.react;
    window.Plotly.react = function (gd, ...rest) {
        const start = performance.now();
        const result = react.call(this, gd, ...rest);
        const id = (gd.closest('[id^=graph]') || {}).id;
        vl.reacts.push([id, start, performance.now() - start]);
        return result;
    };
    const title = () => document.querySelector('#graph-gradient .gtitle')?.textContent || '';
    const numbers = () => document.querySelector('#stats td.stat-0')?.innerText || '';
    // the canvas the new app paints the map on (none in the old app): the pixel it painted
    const canvas = () => document.querySelector('#graph-gradient canvas.vl-painted')
        ?.dataset.pixel ?? null;
    vl.arm = () => {
        const token = ++vl.token;
        const before = [title(), numbers(), canvas()];
        vl.painted = vl.numbers = null;
        vl.reacts = [];
        let seen = false;
        const frame = () => {
            if (token !== vl.token) { return; }
            if (vl.numbers === null && numbers() !== before[1]) { vl.numbers = performance.now(); }
            // the new app: the canvas shows another pixel; the old: Plotly's title changed
            const painted = canvas();
            if (!seen && (painted !== null ? painted !== before[2] : title() !== before[0])) {
                seen = true;
                const channel = new MessageChannel();
                channel.port1.onmessage = () => { vl.painted = performance.now(); };
                channel.port2.postMessage(0);
            }
            if (!seen || vl.numbers === null) { requestAnimationFrame(frame); }
        };
        requestAnimationFrame(frame);
    };
}"""
"""Page-side timing: ``__vl.arm()`` before a hover, then ``__vl.painted`` / ``__vl.numbers``."""

PIXEL_ON_SCREEN = """([row, col]) => {
    const graph = document.querySelector('#graph-input .js-plotly-plot');
    const rect = graph.getBoundingClientRect();
    const x = graph._fullLayout.xaxis, y = graph._fullLayout.yaxis;
    return [rect.left + x._offset + x.l2p(col), rect.top + y._offset + y.l2p(row)];
}"""

REQUEST = """since => {
    const entries = performance.getEntriesByType('resource')
        .filter(e => e.name.includes('_dash-update-component') && e.startTime >= since);
    if (!entries.length) { return null; }
    const big = entries.reduce((a, b) => (b.encodedBodySize > a.encodedBodySize ? b : a));
    performance.clearResourceTimings();
    return [big.startTime - since, big.responseEnd - since, big.encodedBodySize];
}"""
"""(start, end, bytes) of the largest callback response after ``since`` (the pixel's panels)."""


def baseline_source(ref: str, folder: Path) -> Path:
    """The ``src`` folder of commit ``ref`` of this repository, unpacked under ``folder``."""
    root = Path(__file__).resolve().parents[1]
    archive = folder / "src.tar"
    with archive.open("wb") as out:
        subprocess.run(["git", "archive", ref, "src"], cwd=root, stdout=out, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    return folder / "src"


def open_image(page, url: str, stem: str, layer: str) -> None:
    page.goto(url)
    page.wait_for_selector("#stats table")
    page.locator("#image").click()
    page.locator("input.dash-dropdown-search").fill(stem)
    page.get_by_role("option", name=stem).first.click()
    page.wait_for_function(
        "stem => document.querySelector('#graph-input .gtitle')?.textContent.startsWith(stem)",
        arg=stem,
    )
    page.locator("#layer").click()
    page.get_by_role("option", name=layer).click()
    page.evaluate(INSTRUMENT)


def hover(page, row: int, col: int) -> dict:
    """Hover pixel (row, col) of the input panel; the page's timings of that hover."""
    x, y = page.evaluate(PIXEL_ON_SCREEN, [row, col])
    page.evaluate("() => { performance.clearResourceTimings(); window.__vl.arm(); }")
    page.mouse.move(x, y)
    page.wait_for_function("() => window.__vl.painted !== null", polling=20)
    page.wait_for_function("() => window.__vl.numbers !== null", polling=20)
    move, painted, numbers, reacts = page.evaluate(
        "() => [window.__vl.move, window.__vl.painted, window.__vl.numbers, window.__vl.reacts]"
    )
    request = page.evaluate(REQUEST, move)
    title = page.locator("#graph-gradient .gtitle").text_content()
    return {
        "painted": painted - move,
        "numbers": numbers - move,
        "request": request,
        "title": title,
        "reacts": {graph: duration for graph, _, duration in reacts},
        "first_react": min((start - move for _, start, _ in reacts), default=None),
    }


def summary(name: str, values: list[float]) -> str:
    return (
        f"{name:<28} median {statistics.median(values):6.1f} ms   "
        f"p95 {np.percentile(values, 95):6.1f} ms   max {max(values):6.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="vessmap-w16")
    parser.add_argument("--data", required=True)
    parser.add_argument("--image", default="5740", help="image stem")
    parser.add_argument("--baseline-ref", default="91c9c4c", help="commit of the old app")
    parser.add_argument("--hovers", type=int, default=60, help="hovers per app")
    parser.add_argument("--block", type=int, default=10, help="hovers in a row per app")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trace", default=None, help="write a Chrome trace of the new app here")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    server_args = ["--checkpoint", args.checkpoint, "--data", args.data]
    with tempfile.TemporaryDirectory(prefix="vl-browser-") as tmp:
        tmp = Path(tmp)
        old_src = baseline_source(args.baseline_ref, tmp)
        env = {"PYTHONPATH": str(old_src)}
        servers = {
            "new": ServerProcess(server_args, tmp / "new.log"),
            f"old ({args.baseline_ref})": ServerProcess(server_args, tmp / "old.log", env=env),
        }
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=args.chromium, args=list(CHROMIUM_ARGS)
                )
                pages = {}
                for name, server in servers.items():
                    page = browser.new_page(viewport={"width": 1500, "height": 1000})
                    page.set_default_timeout(30_000)
                    open_image(
                        page,
                        f"http://127.0.0.1:{server.port}/",
                        args.image,
                        "Errors against the label",
                    )
                    pages[name] = page
                rng = np.random.default_rng(args.seed)
                size = pages["new"].evaluate(
                    "() => document.querySelector('#graph-input .js-plotly-plot')"
                    "._fullLayout.xaxis.range[1] + 0.5"
                )
                pixels = [
                    tuple(int(v) for v in rng.integers(size, size=2)) for _ in range(args.hovers)
                ]
                results = {name: [] for name in pages}
                loads = [os.getloadavg()[0]]
                for page in pages.values():  # warm-up: first hover of each page
                    page.bring_to_front()
                    hover(page, int(size) // 4, int(size) // 3)  # the view opens at the centre
                for start in range(0, args.hovers, args.block):
                    for name, page in pages.items():
                        page.bring_to_front()
                        for row, col in pixels[start : start + args.block]:
                            results[name].append(hover(page, row, col))
                    loads.append(os.getloadavg()[0])
                if args.trace:
                    page = pages["new"]
                    page.bring_to_front()
                    browser.start_tracing(page=page, path=args.trace, screenshots=False)
                    for row, col in pixels[:5]:
                        hover(page, size - 1 - row, size - 1 - col)
                    browser.stop_tracing()
                browser.close()
        finally:
            for server in servers.values():
                server.stop()

    print(
        f"{args.hovers} new pixels of image {args.image} per app, blocks of {args.block}; "
        f"load average {min(loads):.2f}-{max(loads):.2f} on {os.cpu_count()} CPUs"
    )
    medians = {}
    for name, rows in results.items():
        painted = [r["painted"] for r in rows]
        medians[name] = statistics.median(painted)
        requests = [r["request"] for r in rows if r["request"] is not None]
        print(f"{name}:")
        print("  " + summary("mouse move -> gradient painted", painted))
        print("  " + summary("mouse move -> numbers shown", [r["numbers"] for r in rows]))
        if requests:
            print("  " + summary("mouse move -> request sent", [q[0] for q in requests]))
            print("  " + summary("mouse move -> response in", [q[1] for q in requests]))
            kib = statistics.median(q[2] for q in requests) / 1024
            print(f"  {'pixel response':<28} median {kib:6.0f} KiB")
        firsts = [r["first_react"] for r in rows if r["first_react"] is not None]
        if firsts:
            print("  " + summary("mouse move -> first redraw", firsts))
        for graph in sorted({g for r in rows for g in r["reacts"]}):
            spent = [r["reacts"].get(graph, 0.0) for r in rows]
            print("  " + summary(f"Plotly.react {graph}", spent))
    old, new = list(medians.values())[1], medians["new"]
    print(f"median painted: old / new = {old / new:.2f}x")


if __name__ == "__main__":
    main()
