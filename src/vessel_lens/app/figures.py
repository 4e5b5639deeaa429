"""Plotly figures as plain dicts, built by pure functions (no Dash, no state).

Arrays travel as plotly.js typed arrays (base64 float32 with a shape), not JSON lists: a
256x256 map is about 350 kB and encodes in about a millisecond instead of tens. The input
image travels as a PNG data URL inside an ``image`` trace. Every panel uses the view's pixel
coordinates: column x, row y, pixel centres on integers, row 0 at the top.
"""

from __future__ import annotations

import base64
import io
import textwrap

import numpy as np
from PIL import Image

from vessel_lens.app.titles import title_margin, wrapped_title

DIVERGING = [
    [0.0, "#053061"],
    [0.1, "#2166ac"],
    [0.2, "#4393c3"],
    [0.3, "#92c5de"],
    [0.4, "#d1e5f0"],
    [0.5, "#f7f7f7"],
    [0.6, "#fddbc7"],
    [0.7, "#f4a582"],
    [0.8, "#d6604d"],
    [0.9, "#b2182b"],
    [1.0, "#67001f"],
]
"""Blue (negative) - white (zero) - red (positive): RdBu reversed."""
MASK_SCALE = [[0.0, "#111111"], [0.5, "#111111"], [0.5, "#f2f2f2"], [1.0, "#f2f2f2"]]
"""Probability shown as the mask it gives (> 0.5 white); hovering still shows p."""
OVERLAY_COLOURS = {
    "label": (0.1, 0.85, 0.2),
    "skeleton": (1.0, 0.85, 0.0),
    "prediction": (0.95, 0.2, 0.85),
}
CONFIG = {
    "displaylogo": False,
    "scrollZoom": False,
    "toImageButtonOptions": {"format": "png", "scale": 2, "filename": "vessel-lens"},
    "modeBarButtonsToRemove": ["lasso2d", "select2d", "autoScale2d"],
}
"""``dcc.Graph(config=...)``: the camera button exports the panel as PNG in the browser."""


def typed_array(values: np.ndarray) -> dict[str, str]:
    """A float32 array as a plotly.js typed-array spec (base64, shape)."""
    array = np.ascontiguousarray(values, dtype=np.float32)
    spec = {"dtype": "f4", "bdata": base64.b64encode(array.tobytes()).decode("ascii")}
    if array.ndim > 1:
        spec["shape"] = ", ".join(str(s) for s in array.shape)
    return spec


def decode_typed_array(spec: dict[str, str]) -> np.ndarray:
    """The inverse of :func:`typed_array` (for tests and exports)."""
    array = np.frombuffer(base64.b64decode(spec["bdata"]), dtype=np.float32)
    if "shape" in spec:
        array = array.reshape([int(s) for s in spec["shape"].split(",")])
    return array


def _layout(title: str, height: int, width: int, top: int = 0, left: int = 0, **extra):
    layout = {
        "title": {"text": wrapped_title(title), "font": {"size": 13}, "x": 0.02, "xanchor": "left"},
        "margin": {"l": 36, "r": 8, "t": title_margin(title), "b": 26},
        "xaxis": {
            "range": [left - 0.5, left + width - 0.5],
            "constrain": "domain",
            "showgrid": False,
            "zeroline": False,
        },
        "yaxis": {
            "range": [top + height - 0.5, top - 0.5],
            "scaleanchor": "x",
            "constrain": "domain",
            "showgrid": False,
            "zeroline": False,
        },
        "hovermode": "closest",
        "plot_bgcolor": "#d9d9d9",
        "paper_bgcolor": "white",
        "shapes": [],
    }
    layout.update(extra)
    return layout


def empty_figure(message: str, title: str = "") -> dict:
    """A blank panel carrying a message (used when a panel has nothing to show)."""
    return {
        "data": [],
        "layout": {
            "title": {
                "text": wrapped_title(title),
                "font": {"size": 13},
                "x": 0.02,
                "xanchor": "left",
            },
            "margin": {"l": 8, "r": 8, "t": title_margin(title), "b": 8},
            "xaxis": {"visible": False},
            "yaxis": {"visible": False},
            "annotations": [
                {
                    "text": "<br>".join(textwrap.wrap(message, 48)) or " ",
                    "showarrow": False,
                    "xref": "paper",
                    "yref": "paper",
                    "x": 0.5,
                    "y": 0.5,
                    "font": {"size": 12, "color": "#555"},
                }
            ],
        },
    }


def rgb_composite(image: np.ndarray, overlays: dict[str, np.ndarray]) -> np.ndarray:
    """Grey or RGB image (C, H, W) in [0, 1] with coloured masks blended in: (H, W, 3) uint8."""
    image = np.asarray(image, dtype=np.float32)
    base = (
        np.repeat(image[0][..., None], 3, -1)
        if image.shape[0] == 1
        else image[:3].transpose(1, 2, 0)
    )
    rgb = np.clip(base, 0.0, 1.0).copy()
    for name, mask in overlays.items():
        mask = np.asarray(mask, dtype=bool)
        colour = np.asarray(OVERLAY_COLOURS.get(name, (1.0, 0.0, 0.0)), dtype=np.float32)
        alpha = 0.7 if name == "skeleton" else 0.35
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * colour
    return np.round(rgb * 255).astype(np.uint8)


def png_data_url(rgb: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def input_figure(
    image: np.ndarray, overlays: dict[str, np.ndarray], title: str, top: int = 0, left: int = 0
) -> dict:
    """The input (C, H, W) with overlays, as an image trace; hover/click gives (x=col, y=row)."""
    height, width = image.shape[-2:]
    trace = {
        "type": "image",
        "source": png_data_url(rgb_composite(image, overlays)),
        "x0": left,
        "y0": top,
        "dx": 1,
        "dy": 1,
        "hovertemplate": "row %{y}, col %{x}<extra></extra>",
        "hoverlabel": {"bgcolor": "#222", "font": {"color": "white"}},
    }
    return {"data": [trace], "layout": _layout(title, height, width, top, left)}


def heatmap_figure(
    values: np.ndarray,
    title: str,
    *,
    colorscale: object = "Viridis",
    zmin: float | None = None,
    zmax: float | None = None,
    zmid: float | None = None,
    top: int = 0,
    left: int = 0,
    hover: str = "%{z:.4g}",
    colorbar: bool = True,
    revision: object = None,
) -> dict:
    """A (H, W) map; NaN pixels are left blank."""
    height, width = values.shape
    trace = {
        "type": "heatmap",
        "z": typed_array(values),
        "x0": left,
        "y0": top,
        "dx": 1,
        "dy": 1,
        "colorscale": colorscale,
        "hovertemplate": f"row %{{y}}, col %{{x}}: {hover}<extra></extra>",
        "showscale": colorbar,
        "colorbar": {"thickness": 10, "len": 0.9, "tickfont": {"size": 10}},
    }
    for key, value in (("zmin", zmin), ("zmax", zmax), ("zmid", zmid)):
        if value is not None:
            trace[key] = float(value)
    extra = {"uirevision": revision} if revision is not None else {}
    return {"data": [trace], "layout": _layout(title, height, width, top, left, **extra)}


def symmetric_limit(values: np.ndarray, clip: float | None = None) -> float:
    """The colour range ±limit centring a diverging scale on zero: max |value|, or with
    ``clip`` that percentile of |value| (so a sharp peak does not wash out the rest); 1 for an
    all-zero map."""
    finite = np.abs(values[np.isfinite(values)])
    if not finite.size:
        return 1.0
    peak = float(finite.max())
    if clip is not None and peak > 0:
        clipped = float(np.percentile(finite, clip))
        peak = clipped if clipped > 0 else peak
    return peak if peak > 0 else 1.0


def gradient_figure(
    gradient: np.ndarray, title: str, revision: object = None, clip: float | None = None
) -> dict:
    """A signed gradient map (H, W) on the diverging scale, centred on zero."""
    limit = symmetric_limit(gradient, clip)
    return heatmap_figure(
        gradient,
        title,
        colorscale=DIVERGING,
        zmin=-limit,
        zmax=limit,
        zmid=0.0,
        hover="g = %{z:.3e}",
        revision=revision,
    )


def rectangle(
    top: float, left: float, bottom: float, right: float, colour: str, dash: str = "solid"
):
    """A rectangle around the pixels rows top..bottom, cols left..right (inclusive)."""
    return {
        "type": "rect",
        "x0": left - 0.5,
        "x1": right + 0.5,
        "y0": top - 0.5,
        "y1": bottom + 0.5,
        "line": {"color": colour, "width": 1.5, "dash": dash},
        "fillcolor": "rgba(0,0,0,0)",
        "layer": "above",
    }


def pixel_marker(row: int, col: int, colour: str = "#00e5ff") -> dict:
    return rectangle(row, col, row, col, colour)


def marker_shapes(
    row: int | None,
    col: int | None,
    field_box: tuple[int, int, int, int] | None = None,
    bbox: tuple[int, int, int, int] | None = None,
    top: int = 0,
    left: int = 0,
) -> list[dict]:
    """Shapes on the input: the pixel, its receptive-field box (half-open top, bottom, left,
    right; dashed) and the thresholded gradient's bounding box (inclusive; orange). Box
    coordinates are relative to the view and shifted by its ``top``/``left``."""
    if row is None or col is None:
        return []
    shapes = []
    if field_box is not None:
        t, b, le, r = field_box
        shapes.append(rectangle(top + t, left + le, top + b - 1, left + r - 1, "#00e5ff", "dash"))
    if bbox is not None:
        t, le, b, r = bbox
        shapes.append(rectangle(top + t, left + le, top + b, left + r, "#ff9900"))
    shapes.append(pixel_marker(top + row, left + col))
    return shapes


def zoom_window(
    bbox: tuple[int, int, int, int] | None, row: int, col: int, shape: tuple[int, int]
) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) inclusive: the box and the pixel plus a margin, clipped."""
    height, width = shape
    if bbox is None:
        t, le, b, r = row - 8, col - 8, row + 8, col + 8
    else:
        t, le = min(bbox[0], row), min(bbox[1], col)
        b, r = max(bbox[2], row), max(bbox[3], col)
        margin = max(3, round(0.12 * max(b - t + 1, r - le + 1)))
        t, le, b, r = t - margin, le - margin, b + margin, r + margin
    return max(t, 0), max(le, 0), min(b, height - 1), min(r, width - 1)


def zoom_figure(
    magnitude: np.ndarray,
    threshold: float | None,
    bbox: tuple[int, int, int, int] | None,
    row: int,
    col: int,
    title: str,
    clip: float | None = None,
) -> dict:
    """|g| around its bounding box: pixels above the threshold coloured from the threshold
    up (sequential scale), the others blank; the box in orange, the pixel in cyan."""
    t, le, b, r = zoom_window(bbox, row, col, magnitude.shape)
    window = magnitude[t : b + 1, le : r + 1].astype(np.float32, copy=True)
    if threshold is not None:
        window[window <= threshold] = np.nan
    top = symmetric_limit(window, clip)
    low = float(threshold) if threshold is not None and threshold < top else 0.0
    figure = heatmap_figure(
        window,
        title,
        colorscale="Viridis",
        zmin=low,
        zmax=top,
        top=t,
        left=le,
        hover="|g| = %{z:.3e}",
    )
    shapes = [pixel_marker(row, col)]
    if bbox is not None:
        shapes.insert(0, rectangle(*bbox, colour="#ff9900"))
    figure["layout"]["shapes"] = shapes
    return figure
