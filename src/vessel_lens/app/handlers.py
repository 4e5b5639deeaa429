"""What each callback does, as plain functions of the state and the browser's values.

Every value from the browser is untrusted: it is validated here and a bad one raises
:class:`~vessel_lens.errors.VesselLensError` with a message for the page (the callbacks turn
it into that message, never a traceback or an HTTP 500).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from vessel_lens.app import figures
from vessel_lens.app.images import View, as_int
from vessel_lens.app.layers import LayerContext, layers
from vessel_lens.app.layout import MODE_HELP, stats_table
from vessel_lens.app.methods import Pending, get_method
from vessel_lens.app.pixel import (
    PixelAnalysis,
    Threshold,
    analyse_pixel,
    fraction_to_slider,
    gradient_panel,
    parse_threshold,
    slider_to_fraction,
    stats_rows,
    zoom_panel,
)
from vessel_lens.app.tasks import Task
from vessel_lens.errors import ConfigError, VesselLensError

NO_COMPARE = "none"


def parse_point(event: object) -> tuple[int, int] | None:
    """(row, col) from a dcc.Graph hoverData/clickData payload, or None if it holds none."""
    if not isinstance(event, dict):
        return None
    points = event.get("points")
    if not isinstance(points, list) or not points or not isinstance(points[0], dict):
        return None
    x, y = points[0].get("x"), points[0].get("y")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (x, y)):
        return None
    if any(isinstance(v, float) and not math.isfinite(v) for v in (x, y)):
        return None  # ints are exact (math.isfinite would overflow on huge ones)
    return round(y), round(x)


def stored_point(pixel: object) -> tuple[int, int] | None:
    """(row, col) from the page's pixel store ({"row": r, "col": c, ...}), or None."""
    if not isinstance(pixel, dict):
        return None
    return parse_point({"points": [{"x": pixel.get("col"), "y": pixel.get("row")}]})


def _in_new_view(point, pixel: object, view: View) -> tuple[int, int] | None:
    """The chosen pixel in ``view``'s coordinates: the same image pixel when the page says
    which view it was chosen in (same image, another crop), else as given."""
    if point is None or not isinstance(pixel, dict) or not isinstance(pixel.get("view"), dict):
        return point
    old = pixel["view"]
    if old.get("key") != view.key:
        return point
    top, left = old.get("top"), old.get("left")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (top, left)):
        return point
    if abs(top) > 10**6 or abs(left) > 10**6:
        return point
    return point[0] + top - view.top, point[1] + left - view.left


def chosen_overlays(overlays: object) -> set[str]:
    """The overlay names ticked in the page (anything else the browser sends is ignored)."""
    return {o for o in overlays if isinstance(o, str)} if isinstance(overlays, list) else set()


def view_from_data(state, data: object) -> View:
    """Re-validate a view sent back by the browser against the server's images."""
    if not isinstance(data, dict):
        raise ConfigError("choose an image first")
    key = data.get("key")
    sample = state.sample(key)
    height, width = sample.size
    try:
        top, left, h, w = (as_int(data.get(k), k) for k in ("top", "left", "height", "width"))
    except ConfigError:
        raise ConfigError(
            "the view sent by the page is malformed; choose the image again"
        ) from None
    limit = state.config.max_side
    if top < 0 or left < 0 or not (1 <= h <= limit and 1 <= w <= limit):
        raise ConfigError("the view sent by the page is out of range; choose the image again")
    if top + h > height or left + w > width:
        raise ConfigError("the view sent by the page lies outside the image")
    return View(str(key), top, left, h, w)


def handle_upload(state, contents: object, filename: object) -> tuple[list, str, str]:
    """Decode and remember an upload: (image options, its key, message)."""
    sample = state.decode_upload(contents, filename)
    key = state.add_upload(sample)
    height, width = sample.size
    return state.image_options(), key, f"uploaded {sample.stem}: {height}x{width}"


def handle_view(state, image, mode, size, top, left, model, compare, pixel) -> dict:
    """Resolve the view, prepare the engines (so the first hover is fast) and place the pixel."""
    shown = [model, compare] if isinstance(compare, str) and compare != NO_COMPARE else [model]
    models = tuple(k for k in shown if isinstance(k, str) and k in state.models) or ("m0",)
    view, note = state.view(image, mode, size, top, left, models)
    state.engine(model, view)
    problem = state.receptive_field_problem(model, view)
    if problem is not None:
        note = f"{note} {problem}".strip()
    if isinstance(compare, str) and compare != NO_COMPARE:
        try:
            state.engine(compare, view)
        except VesselLensError as exc:
            note = f"{note} comparison: {exc}".strip()
    point = _in_new_view(stored_point(pixel), pixel, view)
    if point is None or not (0 <= point[0] < view.height and 0 <= point[1] < view.width):
        point = (view.height // 2, view.width // 2)
    full = state.sample(view.key).size
    description = view.describe(full)
    stored = state.stored_box(view.key) is not None
    return {
        "view": view.as_dict(),
        "pixel": {"row": point[0], "col": point[1], "view": view.as_dict()},
        "note": f"{description}. {note}".strip(),
        "stored": stored,
        "crop": (view.height, view.top, view.left),
    }


def input_panels(
    state, view: View, overlays: object, model: str, pixel: object
) -> tuple[dict, dict]:
    """The input with its overlays (and the pixel marker) and the model mask."""
    sample = state.sample(view.key)
    chosen = chosen_overlays(overlays)
    probability = state.probability(model, view)
    masks = {}
    for name, mask in (
        ("label", view.crop(sample.label)),
        ("skeleton", view.crop(sample.skeleton)),
    ):
        if name in chosen and mask is not None:
            masks[name] = mask.numpy()
    if "prediction" in chosen:
        masks["prediction"] = probability > 0.5
    title = f"{view.key.split('/', 1)[-1]}: {view.describe(sample.size)}"
    image = view.crop(sample.image).numpy()
    input_figure = figures.input_figure(image, masks, title)
    point = stored_point(pixel)
    if point is not None and 0 <= point[0] < view.height and 0 <= point[1] < view.width:
        field_box = state.receptive_box(model, view, *point) if "field" in chosen else None
        input_figure["layout"]["shapes"] = figures.marker_shapes(*point, field_box)
    mask_figure = figures.heatmap_figure(
        probability,
        "Model mask (p > 0.5; hover: p)",
        colorscale=figures.MASK_SCALE,
        zmin=0.0,
        zmax=1.0,
        hover="p = %{z:.3f}",
        colorbar=False,
    )
    return input_figure, mask_figure


def map_panel(state, view: View, layer: object, threshold: Threshold, model: str) -> dict:
    """The map panel: the chosen layer, or a note saying why it is not available."""
    return map_outputs(state, view, layer, threshold, model)[0]


def map_outputs(
    state, view: View, layer: object, threshold: Threshold, model: str, restart: bool = False
):
    """(the map panel's figure, the layer's result: its task while it is computed, and its
    status line). ``restart``: start again a computation that was cancelled or failed."""
    chosen = layers().get(layer) if isinstance(layer, str) else None
    if chosen is None:
        raise ConfigError(f"unknown map {str(layer)[:40]!r}")
    global_max = state.global_max(model, view)[0] if threshold.mode == "global" else None
    context = LayerContext(
        state, model, view, threshold.fraction, threshold.mode, global_max, restart
    )
    result = chosen.compute(context)
    return _map_figure(result), result


def _map_figure(result) -> dict:
    if result.values is None:
        return figures.empty_figure(result.note, result.title)
    style = dict(result.style)
    title = result.title + (f" ({result.note})" if result.note else "")
    figure = figures.heatmap_figure(
        result.values,
        title,
        colorscale=style.get("colorscale", "Viridis"),
        zmin=style.get("zmin"),
        zmax=style.get("zmax"),
        hover=style.get("hover", "%{z:.4g}"),
        colorbar=style.get("bar", True),
    )
    if style.get("unit"):
        figure["data"][0]["colorbar"]["title"] = {"text": style["unit"], "side": "right"}
    return figure


def handle_threshold(trigger: object, slider: object, value: object, mode: object) -> dict:
    """Keep the slider (log scale) and the number in step; returns both and the help line."""
    if trigger == "threshold-slider":
        fraction = slider_to_fraction(slider)
        fraction = float(f"{fraction:.4g}")
    else:
        fraction = parse_threshold(value, mode if isinstance(mode, str) else "pixel").fraction
    threshold = parse_threshold(fraction, mode)
    return {
        "slider": fraction_to_slider(threshold.fraction),
        "value": threshold.fraction,
        "store": {"fraction": threshold.fraction},
        "help": MODE_HELP[threshold.mode],
    }


@dataclass
class PixelOutputs:
    """What a hover/click changes in the page (one analysis per shown model)."""

    analyses: list[PixelAnalysis]
    gradient: list[dict] = field(default_factory=list)
    zoom: list[dict] = field(default_factory=list)
    tables: list[object] = field(default_factory=list)
    shapes: list[dict] = field(default_factory=list)
    pixel: dict | None = None
    message: str = ""
    task: Task | None = None
    """The background task computing the maps, when they are not ready yet."""


def pixel_outputs(
    state,
    view: View,
    point: tuple[int, int],
    model: str,
    compare: object,
    threshold: Threshold,
    method: object,
    target: object,
    overlays: object,
    clip: bool = True,
    wait: bool = True,
) -> PixelOutputs:
    """Analyse the pixel for the model (and the comparison model) and build the panels.

    A slow method's maps that are not cached yet are computed here when ``wait``; otherwise
    one background task computes them and the result holds that task and no analyses."""
    row, col = point
    if not (0 <= row < view.height and 0 <= col < view.width):
        raise ConfigError(f"pixel ({row}, {col}) lies outside the {view.height}x{view.width} view")
    method = method if isinstance(method, str) else "gradient"
    target = target if isinstance(target, str) else "pixel"
    if target != "pixel" and get_method(method).targets == ("pixel",):
        target = "pixel"
    keys = [model]
    if isinstance(compare, str) and compare not in (NO_COMPARE, model):
        state.model(compare)
        keys.append(compare)
    analyses, pending = [], []
    for key in keys:
        try:
            analyses.append(
                analyse_pixel(state, key, view, row, col, threshold, method, target, wait)
            )
        except Pending as missing:
            pending.append(missing)
    chosen = chosen_overlays(overlays)
    if pending:
        task = submit_pending(state, pending)
        if task.state == "done":  # finished already (a small view): show it
            args = (model, compare, threshold, method, target, overlays, clip)
            return pixel_outputs(state, view, point, *args, wait=True)
        field_box = state.receptive_box(model, view, row, col) if "field" in chosen else None
        return PixelOutputs(
            [],
            shapes=figures.marker_shapes(row, col, field_box),
            pixel={"row": row, "col": col, "view": view.as_dict()},
            task=task,
        )
    outputs = PixelOutputs(analyses, pixel={"row": row, "col": col, "view": view.as_dict()})
    for i, analysis in enumerate(analyses):
        prefix = "" if len(analyses) == 1 else ("A: ", "B: ")[i]
        outputs.gradient.append(gradient_panel(analysis, prefix, clip))
        outputs.zoom.append(zoom_panel(analysis, prefix, clip))
        caption = f"{prefix}{analysis.model_label}"
        outputs.tables.append([caption, stats_table(stats_rows(analysis))])
    first = analyses[0]
    outputs.shapes = figures.marker_shapes(
        row,
        col,
        first.field_box if "field" in chosen else None,
        first.bbox if "bbox" in chosen else None,
    )
    return outputs


def submit_pending(state, pending: list[Pending]) -> Task:
    """One background task computing every missing map (one per shown model) in turn."""
    label = pending[0].label + (f" for {len(pending)} models" if len(pending) > 1 else "")

    def run(task: Task) -> None:
        for i, missing in enumerate(pending):
            missing.run(task.cancel, lambda f, i=i: task.progress((i + f) / len(pending)))

    return state.tasks.submit(tuple(m.key for m in pending), label, run)


def task_status(state, task_id: object, cancel: bool = False) -> tuple[str, str]:
    """(the task's state, its status line) for the page; ``cancel`` cancels it first."""
    task = state.tasks.cancel(task_id) if cancel else state.tasks.get(task_id)
    if task is None:
        return "gone", "that computation is no longer known; click the pixel again"
    return task.state, task.status()


def global_status(
    state, view: View, model: str, start: bool, threshold: Threshold | None = None
) -> tuple[str, bool, float | None]:
    """(status line, whether polling should stop, the value when known); with the page's
    ``threshold`` in mode ``global``, the line also states the threshold value it gives."""
    state.model(model)  # an unknown (or unhashable) key is refused before any lookup by it
    if start:
        job = state.request_global_max(model, view)
        if job.state == "refused":
            return f"global max: {job.error}", True, None
    value, note = state.global_max(model, view)
    if value is not None:
        text = f"global max {value:.4g} ({note})"
        if threshold is not None and threshold.mode == "global":
            share = f"{100 * threshold.fraction:.4g} %"
            text += f"; threshold t = {share} of it = {threshold.fraction * value:.4g}"
        return text, True, value
    job = state.jobs.get((model, view))
    running = job is not None and job.state in ("queued", "running")
    return f"global max {note}", not running, None


def export_map(result) -> object:
    """The map panel's layer result as the PNG export draws it (the page's colours)."""
    from matplotlib.colors import ListedColormap

    from vessel_lens.app.export import MapPanel
    from vessel_lens.app.layers import ERROR_COLOURS

    style = result.style
    scale = style.get("colorscale", "Viridis")
    if isinstance(scale, str):
        cmap = scale.lower()
    elif len(scale) == 2 * len(ERROR_COLOURS):
        cmap = ListedColormap(list(ERROR_COLOURS)).with_extremes(bad="#d9d9d9")
    else:
        cmap = "gray"
    unit = style.get("unit", "" if not style.get("bar", True) else "value")
    return MapPanel(result.values, result.title, result.note, cmap, style.get("zmin"),
                    style.get("zmax"), unit)  # fmt: skip


def export_payload(
    kind: str,
    analyses: list[PixelAnalysis],
    state,
    view: View,
    map_result=None,
    overlays: object = (),
    clip: bool = True,
):
    """The dcc.Download payload for 'png', 'csv' or 'json'; the PNG holds the page's panels
    (``map_result``: the map panel's layer result, when shown)."""
    from vessel_lens.app import export

    stem = view.key.split("/", 1)[-1]
    pixel = f"{analyses[0].row}-{analyses[0].col}"
    name = f"vessel-lens_{stem}_{pixel}"
    if kind == "csv":
        return {"content": export.numbers_csv(analyses), "filename": f"{name}.csv"}
    if kind == "json":
        return {"content": export.numbers_json(analyses), "filename": f"{name}.json"}
    if kind != "png":
        raise ConfigError(f"unknown export {str(kind)[:20]!r}")
    import base64

    sample = state.sample(view.key)
    chosen = chosen_overlays(overlays)
    masks = {}
    for overlay, mask in (
        ("label", view.crop(sample.label)),
        ("skeleton", view.crop(sample.skeleton)),
    ):
        if overlay in chosen and mask is not None:
            masks[overlay] = mask.numpy()
    probability = state.probability(analyses[0].model_key, view)
    if "prediction" in chosen:
        masks["prediction"] = probability > 0.5
    rgb = figures.rgb_composite(view.crop(sample.image).numpy(), masks)
    numbers = [(a.model_label, stats_rows(a)) for a in analyses]
    data = export.panels_png(
        rgb,
        probability,
        analyses,
        None if map_result is None else export_map(map_result),
        input_title=f"{stem}: {view.describe(sample.size)}",
        overlays=chosen,
        clip=clip,
        numbers=numbers,
    )
    return {
        "content": base64.b64encode(data).decode("ascii"),
        "filename": f"{name}.png",
        "base64": True,
    }
