"""Screenshot of the running app for the manual (docs/app.png), and the hover latency seen in the browser.

    python benchmarks/app_screenshot.py --checkpoint runs/vessmap-w16/best.pt \
        --data ../shared/data/vessmap --image 10084 --out docs/app.png [--hovers 20]

Starts the app on a free local port, opens it in Debian's Chromium (Playwright), hovers a
pixel on a predicted vessel near the centre (or ``--pixel ROW,COL``) and saves a full-page
screenshot. With ``--hovers N`` it then hovers N more pixels and prints the time from the mouse
move until the page shows that pixel's numbers (server, network and drawing included).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np

from vessel_lens.app.testing import CHROMIUM_ARGS

PIXEL_ON_SCREEN = """([row, col]) => {
    const graph = document.querySelector('#graph-input .js-plotly-plot');
    const rect = graph.getBoundingClientRect();
    const x = graph._fullLayout.xaxis, y = graph._fullLayout.yaxis;
    return [rect.left + x._offset + x.l2p(col), rect.top + y._offset + y.l2p(row)];
}"""
"""Screen position of the centre of pixel (row, col) of the input panel, from plotly's axes."""
CHANGED = """before => {
    const cell = document.querySelector('#stats td.stat-0');
    return cell !== null && cell.innerText !== before;
}"""
"""The pixel shown in the numbers table changed (the mouse lands on whole screen pixels, so
the pixel hit may differ by one from the one aimed at on a panel drawn at about 1:1)."""


def default_pixel(state, key: str) -> tuple[int, int]:
    """The predicted vessel pixel closest to the image centre."""
    view, _ = state.view(key, "full")
    vessel = np.argwhere(state.probability("m0", view) > 0.5)
    if not len(vessel):
        return view.height // 2, view.width // 2
    centre = np.array([view.height / 2, view.width / 2])
    row, col = vessel[np.argmin(((vessel - centre) ** 2).sum(1))]
    return int(row), int(col)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="vessmap-w16")
    parser.add_argument("--data", default=None)
    parser.add_argument("--image", default=None, help="image stem (default: the first)")
    parser.add_argument("--pixel", default=None, help="ROW,COL (default: a vessel pixel)")
    parser.add_argument("--compare", default=None, help="checkpoint or 'random'")
    parser.add_argument("--overlays", default="label,field,bbox")
    parser.add_argument("--layer", default="probability", help="map panel layer")
    parser.add_argument("--out", default="docs/app.png")
    parser.add_argument("--hovers", type=int, default=0)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()

    import torch
    from playwright.sync_api import sync_playwright

    from vessel_lens.app import AppConfig, Server, create_app

    torch.set_num_threads(1)
    config = AppConfig(checkpoints=[args.checkpoint], data=args.data, compare=args.compare)
    app = create_app(config)
    state = app.vessel_lens_state
    key = f"data/{args.image}" if args.image else state.image_options()[0]["value"]
    if args.pixel:
        row, col = (int(v) for v in args.pixel.split(","))
    else:
        row, col = default_pixel(state, key)
    server = Server(app, "127.0.0.1", 0).start()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=args.chromium, args=list(CHROMIUM_ARGS)
            )
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.set_default_timeout(120_000)
            page.goto(server.url)
            page.wait_for_selector("#stats table")
            label = next(o["label"] for o in state.image_options() if o["value"] == key)
            page.locator("#image").click()
            page.locator("input.dash-dropdown-search").fill(key.split("/", 1)[1])
            page.get_by_role("option", name=label).click()
            page.wait_for_function(
                "stem => document.querySelector('#graph-input .gtitle')?.textContent.startsWith(stem)",
                arg=key.split("/", 1)[1],
            )
            page.locator("#layer").click()
            layer_label = {
                "probability": "Vessel probability",
                "errors": "Errors against the label",
            }
            page.get_by_role("option", name=layer_label.get(args.layer, args.layer)).click()
            wanted = set(args.overlays.split(","))
            for box in page.locator("#overlays input[type=checkbox]").all():
                if (box.get_attribute("value") in wanted) != box.is_checked():
                    box.click()
            view, _ = state.view(key, "full")

            def position(r: int, c: int) -> tuple[float, float]:
                return tuple(page.evaluate(PIXEL_ON_SCREEN, [r, c]))

            page.mouse.move(*position(view.height - 1 - row, view.width - 1 - col))
            page.wait_for_timeout(1000)
            before = page.locator("#stats td.stat-0").inner_text()
            page.mouse.move(*position(row, col))
            page.wait_for_function(CHANGED, arg=before)
            page.wait_for_timeout(500)
            shown = page.locator("#stats td.stat-0").inner_text().split(" in the view")[0]
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
            print(f"screenshot of pixel {shown} of {key}: {out}")
            if args.hovers:
                rng = np.random.default_rng(0)
                times = []
                for _ in range(args.hovers):
                    r, c = int(rng.integers(view.height)), int(rng.integers(view.width))
                    before = page.locator("#stats td.stat-0").inner_text()
                    x, y = position(r, c)
                    started = page.evaluate("() => performance.now()")
                    page.mouse.move(x, y)
                    page.wait_for_function(CHANGED, arg=before, polling="raf")
                    times.append(page.evaluate("() => performance.now()") - started)
                print(
                    f"browser hover-to-numbers over {len(times)} new pixels: median "
                    f"{statistics.median(times):.0f} ms, p95 {np.percentile(times, 95):.0f} ms"
                )
            browser.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
