/* vessel-lens app: the hovered pixel's gradient painted at once (issue 14, part 3).
 *
 * On a mouse move to a new pixel of the input, map or mask panel (and on plotly_click when
 * the page follows clicks), read from the panel's axes at the event itself, this fetches the
 * pixel's signed gradient map from the server (GET _vessel_lens/gradient: float32 bytes, the
 * colour limit and the panel's title in headers; app/fastpaint.py) and paints it on a canvas
 * laid exactly over the gradient panel's plot area, with the trace's own colour scale and
 * symmetric limits, the title written into the panel and the colour bar's limits in a label
 * over its ticks. Dash's pixel callback still runs and redraws every panel (the figure under
 * the canvas, the numbers, the zoom, the boxes); the overlay hides at the panel's next
 * redraw, which is the same pixel or a newer one. A paint is dropped when a newer hover was
 * made or the view, model or settings changed while it was fetched. Mouse events pass
 * through (pointer-events: none), so Plotly's hover labels keep working. The canvas records the painted pixel in
 * data-pixel and data-title (benchmarks/app_browser_latency.py and the browser test read them).
 */
(function () {
    "use strict";
    const LEVELS = 1024;
    const SOURCES = ["graph-input", "graph-map", "graph-mask"];
    const tables = new Map();
    let latest = 0;      // number of the newest hover sent
    const hooked = new WeakSet();  // Plotly's event emitters listened to (a purge makes anew)

    function route() {
        let prefix = "/";
        const config = document.getElementById("_dash-config");
        if (config) {
            try { prefix = JSON.parse(config.textContent).requests_pathname_prefix || "/"; }
            catch (e) { prefix = "/"; }
        }
        return prefix + "_vessel_lens/gradient";
    }

    function parseColour(text) {
        const value = String(text).trim();
        if (value.startsWith("#")) {
            const hex = value.slice(1);
            return [0, 2, 4].map(i => parseInt(hex.slice(i, i + 2), 16));
        }
        const match = value.match(/rgba?\(([^)]*)\)/);
        return match ? match[1].split(",").slice(0, 3).map(Number) : [0, 0, 0];
    }

    function lookupTable(colorscale) {
        // linear in RGB between the stops, as Plotly colours a heatmap
        const stops = colorscale.map(([f, c]) => [Number(f), parseColour(c)]);
        const table = new Uint8ClampedArray(LEVELS * 4);
        for (let k = 0; k < LEVELS; k++) {
            const f = k / (LEVELS - 1);
            let i = 1;
            while (i < stops.length - 1 && stops[i][0] < f) { i++; }
            const [f0, c0] = stops[i - 1], [f1, c1] = stops[i];
            const t = f1 > f0 ? Math.min(Math.max((f - f0) / (f1 - f0), 0), 1) : 0;
            for (let ch = 0; ch < 3; ch++) {
                table[4 * k + ch] = Math.round(c0[ch] + t * (c1[ch] - c0[ch]));
            }
            table[4 * k + 3] = 255;
        }
        return table;
    }

    function colourScale(gd) {
        const trace = (gd.data || [])[0];
        const scale = trace && Array.isArray(trace.colorscale) ? trace.colorscale : null;
        if (!scale) { return null; }
        const key = JSON.stringify(scale);
        if (!tables.has(key)) { tables.set(key, lookupTable(scale)); }
        return tables.get(key);
    }

    function overlay(gd) {
        if (!gd.__vlOverlay) {
            const canvas = document.createElement("canvas");
            canvas.className = "vl-painted";
            Object.assign(canvas.style, {
                position: "absolute", imageRendering: "pixelated", pointerEvents: "none",
                display: "none",
            });
            const bar = document.createElement("div");
            bar.className = "vl-painted-bar";
            Object.assign(bar.style, {
                position: "absolute", pointerEvents: "none", display: "none",
                background: "white", font: "10px sans-serif", color: "#444",
            });
            gd.__vlOverlay = {canvas, bar};
        }
        if (gd._ev && !hooked.has(gd._ev)) {
            hooked.add(gd._ev);
            const {canvas, bar} = gd.__vlOverlay;
            gd.on("plotly_afterplot", () => {
                canvas.style.display = "none";
                bar.style.display = "none";
            });
        }
        const {canvas, bar} = gd.__vlOverlay;
        const container = gd.querySelector(".svg-container");
        const svgs = container ? container.querySelectorAll(":scope > .main-svg") : [];
        if (svgs.length < 2) { return null; }
        // between Plotly's layers: the axes under it, the hover labels over it
        if (canvas.nextSibling !== svgs[1]) { container.insertBefore(canvas, svgs[1]); }
        if (bar.parentNode !== container) { container.appendChild(bar); }
        return gd.__vlOverlay;
    }

    function label(value) {
        return value === 0 ? "0" : Number(value.toPrecision(3)).toString();
    }

    function placeBar(gd, bar, limit) {
        const fills = gd.querySelector(".colorbar .cbfills");
        const axis = gd.querySelector(".colorbar .cbaxis");
        if (!fills || !axis) { bar.style.display = "none"; return; }
        const box = gd.querySelector(".svg-container").getBoundingClientRect();
        const f = fills.getBoundingClientRect(), a = axis.getBoundingClientRect();
        const left = Math.max(f.right, a.left) - box.left;
        Object.assign(bar.style, {
            display: "block", left: `${left}px`, top: `${f.top - box.top - 8}px`,
            width: `${Math.max(a.right - box.left - left, 30) + 4}px`,
            height: `${f.height + 16}px`,
        });
        bar.innerHTML = "";
        [[limit, 0], [0, 0.5], [-limit, 1]].forEach(([value, at]) => {
            const tick = document.createElement("span");
            tick.textContent = label(value);
            Object.assign(tick.style, {
                position: "absolute", left: "3px", top: `${8 + at * f.height - 6}px`,
            });
            bar.appendChild(tick);
        });
    }

    function paint(gd, values, height, width, limit, title, row, col) {
        const table = colourScale(gd);
        const layout = gd._fullLayout;
        const parts = overlay(gd);
        if (!table || !parts || !layout || !layout.xaxis || !layout.yaxis) { return; }
        const {canvas, bar} = parts;
        const rgba = new Uint8ClampedArray(width * height * 4);
        const scale = (LEVELS - 1) / (2 * limit);
        for (let p = 0; p < values.length; p++) {
            const v = values[p];
            if (v !== v) { continue; }  // NaN stays transparent, as Plotly leaves it blank
            let k = Math.round((v + limit) * scale);
            k = k < 0 ? 0 : (k >= LEVELS ? LEVELS - 1 : k);
            rgba[4 * p] = table[4 * k];
            rgba[4 * p + 1] = table[4 * k + 1];
            rgba[4 * p + 2] = table[4 * k + 2];
            rgba[4 * p + 3] = 255;
        }
        if (canvas.width !== width || canvas.height !== height) {
            canvas.width = width;
            canvas.height = height;
        }
        canvas.getContext("2d").putImageData(new ImageData(rgba, width, height), 0, 0);
        const xa = layout.xaxis, ya = layout.yaxis;
        const x0 = xa._offset + xa.l2p(-0.5), x1 = xa._offset + xa.l2p(width - 0.5);
        const y0 = ya._offset + ya.l2p(-0.5), y1 = ya._offset + ya.l2p(height - 0.5);
        Object.assign(canvas.style, {
            display: "block",
            left: `${Math.min(x0, x1)}px`, top: `${Math.min(y0, y1)}px`,
            width: `${Math.abs(x1 - x0)}px`, height: `${Math.abs(y1 - y0)}px`,
        });
        const lines = title.split("\n"), text = gd.querySelector(".gtitle");
        const spans = text ? text.querySelectorAll("tspan.line") : [];
        if (spans.length === lines.length) {
            spans.forEach((span, i) => { span.textContent = lines[i]; });
        } else if (text) {
            text.textContent = lines.join(" ");
        }
        placeBar(gd, bar, limit);
        canvas.dataset.pixel = `${row},${col}`;
        canvas.dataset.title = lines.join(" ");
        performance.mark("vl-painted", {detail: {row, col}});
    }

    async function fetchAndPaint(row, col) {
        const s = window.vesselLensPaint;
        const view = s && s.view;
        if (!view || s.method !== "gradient" || s.target !== "pixel") { return; }
        if (!(row >= 0 && col >= 0 && row < view.height && col < view.width)) { return; }
        const number = ++latest, asked = JSON.stringify(s);
        const query = new URLSearchParams({
            model: s.model, key: view.key, top: view.top, left: view.left,
            height: view.height, width: view.width, row, col, clip: s.clip ? "1" : "0",
        });
        if (typeof s.compare === "string") { query.set("compare", s.compare); }
        let response, buffer;
        try {
            response = await fetch(`${route()}?${query}`, {cache: "no-store"});
            if (!response.ok) { return; }
            buffer = await response.arrayBuffer();
        } catch (e) {
            return;  // the pixel callback still draws the panel
        }
        // a newer hover, or another view, model or setting since: this map is stale
        if (number !== latest || JSON.stringify(window.vesselLensPaint) !== asked) { return; }
        const gd = document.querySelector("#graph-gradient .js-plotly-plot");
        const height = Number(response.headers.get("X-Height"));
        const width = Number(response.headers.get("X-Width"));
        const limit = Number(response.headers.get("X-Limit"));
        const title = decodeURIComponent(response.headers.get("X-Title") || "");
        if (!gd || !(limit > 0) || buffer.byteLength !== 4 * height * width) { return; }
        paint(gd, new Float32Array(buffer), height, width, limit, title, row, col);
    }

    function onClick() {
        return data => {
            const s = window.vesselLensPaint;
            if (!s) { return; }
            const point = data && data.points && data.points[0];
            if (!point || typeof point.x !== "number" || typeof point.y !== "number") { return; }
            last = `${Math.round(point.y)},${Math.round(point.x)}`;
            fetchAndPaint(Math.round(point.y), Math.round(point.x));
        };
    }

    let last = "";  // the pixel under the mouse, as last fetched

    function onMove(event) {
        // the pixel under the mouse, read from the panel's axes as Plotly's hover will find
        // it, but at the mouse event itself rather than after Plotly's hover handling
        const s = window.vesselLensPaint;
        if (!s || s.follow !== "hover" || !event.target.closest) { return; }
        const graph = event.target.closest(SOURCES.map(id => `#${id}`).join(","));
        const gd = graph && graph.querySelector(".js-plotly-plot");
        const layout = gd && gd._fullLayout;
        if (!layout || !layout.xaxis || !layout.yaxis) { return; }
        if (!event.target.classList || !event.target.classList.contains("nsewdrag")) { return; }
        const box = gd.getBoundingClientRect(), xa = layout.xaxis, ya = layout.yaxis;
        const col = Math.round(xa.p2l(event.clientX - box.left - xa._offset));
        const row = Math.round(ya.p2l(event.clientY - box.top - ya._offset));
        const here = `${row},${col}`;
        if (here === last) { return; }
        last = here;
        fetchAndPaint(row, col);
    }

    function hook() {
        SOURCES.forEach(id => {
            const gd = document.querySelector(`#${id} .js-plotly-plot`);
            if (gd && gd._ev && typeof gd.on === "function" && !hooked.has(gd._ev)) {
                hooked.add(gd._ev);
                gd.on("plotly_click", onClick());
            }
        });
        const panel = document.querySelector("#graph-gradient .js-plotly-plot");
        if (panel && panel._ev && typeof panel.on === "function") { overlay(panel); }
    }

    document.addEventListener("mousemove", onMove, true);
    setInterval(hook, 250);
})();
