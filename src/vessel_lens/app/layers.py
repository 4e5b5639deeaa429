"""Registry of the per-pixel maps shown in the "map" panel.

``significant`` is the original app's "most significant pixels" map: for every output pixel
p, count(p) = the number of input pixels whose |gradient| exceeds the threshold (the
definitions of :mod:`vessel_lens.interpret.thresholds`, at the threshold chosen in the page).
It needs every pixel's gradient, so it is read from a matching precomputed Jacobian store
(``--erf``) and otherwise omitted with a note saying how to make one. ``probability`` and
``errors`` come from the model's forward pass.

The ``erf_*`` layers show the receptive-field maps written by ``vessel-lens erf``
(``<stem>.erf.npz`` in the ``--erf`` folder): the count and the fulfillment at the stored
fraction nearest the page's threshold, and the radius holding 90 % of the gradient mass. A map
file is used when it was made for the view's image and crop box with the selected model's
weights (``weights_hash``), for the vessel probability of class 1 (``AppState.maps_for``). The
note says when the stored fraction or the file's threshold mode differs from the page's (the
map is not recomputed); pixels the file did not compute (``--pixel-stride``) are blank. Without
a matching file the layer shows how to make one.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from vessel_lens.errors import VesselLensError

ERROR_COLOURS = ("#111111", "#f2f2f2", "#ff3030", "#3070ff")
"""Colours of the error map's values 0 (TN), 1 (TP), 2 (FP), 3 (FN)."""


@dataclass(frozen=True)
class LayerContext:
    state: object
    model_key: str
    view: object
    fraction: float
    mode: str
    global_max: float | None
    restart: bool = False
    """Start again a computation that was cancelled or failed (the page's button)."""


@dataclass
class LayerResult:
    values: np.ndarray | None
    title: str
    note: str = ""
    style: dict = field(default_factory=dict)
    task: object = None
    """The background task computing the map, while it is not ready (or why it stopped)."""
    status: str = ""
    """A line for the page beside the map's menu (how the map was made, how to get more)."""


@dataclass(frozen=True)
class MapLayer:
    name: str
    label: str
    compute: Callable[[LayerContext], LayerResult]


_LAYERS: dict[str, MapLayer] = {}
_LOCK = threading.Lock()


def register_layer(layer: MapLayer) -> None:
    with _LOCK:
        _LAYERS[layer.name] = layer


def layers() -> dict[str, MapLayer]:
    with _LOCK:
        return dict(_LAYERS)


def _significant(ctx: LayerContext) -> LayerResult:
    state, view = ctx.state, ctx.view
    title = "Most significant pixels: count(p) above the threshold"
    store = state.store_for(ctx.model_key, view)
    if store is None:
        return _computed_counts(ctx)
    if ctx.mode == "global" and ctx.global_max is None:
        return LayerResult(None, title, "mode global: the global maximum is not known yet")
    try:
        counts = state.stores.count_map(store, ctx.fraction, ctx.mode, ctx.global_max)
    except VesselLensError as exc:
        return LayerResult(None, title, str(exc))
    if counts is None:
        return LayerResult(None, title, f"store {store.name} is too large to count in memory")
    note = "" if store.full else "pixels not in the store are blank"
    style = {"colorscale": "Viridis", "hover": "count %{z:.0f}", "unit": "count (input px)"}
    return LayerResult(counts, title, note, style)


def _threshold_words(ctx: LayerContext) -> str:
    """The threshold as the map's title states it, with its value when it is one number."""
    if ctx.mode == "pixel":
        return f"{_amount(ctx.fraction, 'pixel')} of each pixel's max |g|"
    if ctx.mode == "global":
        value = ctx.fraction * ctx.global_max
        return f"t = {_amount(ctx.fraction, 'global')} of the global max = {value:.3g}"
    return f"t = {ctx.fraction:g}"


def _computed_counts(ctx: LayerContext) -> LayerResult:
    """The count map computed by the app (every S-th pixel, :mod:`.countmap`), or the task
    computing it."""
    from vessel_lens.app.countmap import store_size_words
    from vessel_lens.interpret.jacobian.budget import store_bytes

    state, view = ctx.state, ctx.view
    title = "Receptive-field count: |g| above the threshold"
    rows, task = state.count_rows(ctx.model_key, view, ctx.restart)
    if rows is None:
        return LayerResult(None, title, task.status(), task=task)
    pixels = rows.shape[0] * rows.shape[1]
    done = f"{pixels} pixels computed in {rows.seconds:.1f} s"
    if rows.stride > 1:
        done = f"{done} (one per {rows.stride} x {rows.stride} cell)"
    status = f"{done}. For every pixel at full resolution: {_erf_command(ctx)}"
    if view.key.startswith("data/"):
        channels = int(state.sample(view.key).image.shape[0])
        size = store_bytes(view.height * view.width, (channels, view.height, view.width), "float32")
        status += (
            f" (a Jacobian store of this view from vessel-lens jacobian would take about "
            f"{store_size_words(size)})"
        )
    if ctx.mode == "global" and ctx.global_max is None:
        return LayerResult(None, title, "mode global: the global maximum is not known yet",
                           status=status)  # fmt: skip
    counts = rows.counts(ctx.fraction, ctx.mode, ctx.global_max)
    title = f"Receptive-field count: |g| > {_threshold_words(ctx)}"
    if rows.stride > 1:
        title += f"; one pixel per {rows.stride} x {rows.stride} cell (stride {rows.stride})"
    style = {
        "colorscale": "Viridis",
        "hover": "count %{z:.0f} input px",
        "unit": "count (input px)",
    }
    return LayerResult(counts, title, "", style, status=status)


def _probability(ctx: LayerContext) -> LayerResult:
    values = ctx.state.probability(ctx.model_key, ctx.view)
    greys = [[0.0, "#000000"], [1.0, "#ffffff"]]
    style = {"colorscale": greys, "zmin": 0.0, "zmax": 1.0, "hover": "p = %{z:.3f}",
             "unit": "vessel probability p"}  # fmt: skip
    return LayerResult(values, "Vessel probability", "", style)


def _errors(ctx: LayerContext) -> LayerResult:
    sample = ctx.state.sample(ctx.view.key)
    label = ctx.view.crop(sample.label)
    title = "Errors against the label (TP white, FP red, FN blue)"
    if label is None:
        return LayerResult(None, title, "this image has no label")
    predicted = ctx.state.probability(ctx.model_key, ctx.view) > 0.5
    truth = label.numpy().astype(bool)
    values = np.zeros(truth.shape, dtype=np.float32)
    values[predicted & truth] = 1
    values[predicted & ~truth] = 2
    values[~predicted & truth] = 3
    note = ""
    mask = ctx.view.crop(sample.mask)
    if mask is not None:  # not scored, as in vessel-lens evaluate
        values[~mask.numpy()] = np.nan
        note = "pixels outside the field-of-view mask are blank"
    scale = []
    for i, colour in enumerate(ERROR_COLOURS):
        scale += [[i / 4, colour], [(i + 1) / 4, colour]]
    style = {"colorscale": scale, "zmin": -0.5, "zmax": 3.5, "hover": "%{z:.0f}", "bar": False}
    return LayerResult(values, title, note, style)


MASS_FRACTION = 0.9
"""The mass fraction whose radius the ``erf_mass_radius`` layer shows (nearest stored)."""


def _amount(value: float, mode: str) -> str:
    """A threshold as the page writes it: a percentage, or the value itself for absolute."""
    return f"{value:g}" if mode == "absolute" else f"{100 * value:g} %"


def _erf_howto(ctx: LayerContext) -> str:
    """How to make the map file this view lacks."""
    return (
        f"no receptive-field map of this image, crop and checkpoint in --erf: {_erf_command(ctx)}"
    )


def _erf_command(ctx: LayerContext) -> str:
    """The ``vessel-lens erf`` run that makes the view's map file, or why there is none."""
    state, view = ctx.state, ctx.view
    source = state.view_source(view)
    if source is None:
        return "receptive-field maps exist for dataset images only (not for uploads)"
    entry = state.model(ctx.model_key)
    if entry.weights_hash is None:
        return "the random initialisation has no receptive-field map files; choose a checkpoint"
    stem = source[0]
    folder = state.config.erf or "DIR"
    return (
        f"run vessel-lens erf {entry.options or '--checkpoint ...'}{_data_option(state)} "
        f"--split all --images {stem} {_crop_option(state, view, '--full')} --out {folder} "
        "and start the app with --erf on that folder"
    )


def _crop_option(state, view, whole: str) -> str:
    """The option that makes a command compute on this view's pixels: ``whole`` for the whole
    image, ``--crop N`` for its centred square, else ``--crop-box TOP,LEFT,H,W``."""
    source = state.view_source(view)
    box = source[1] if source else (view.top, view.left, view.height, view.width)
    top, left, height, width = box
    if view.key.startswith("data/"):
        full_h, full_w = state.sample(view.key).size
        if tuple(box) == (0, 0, full_h, full_w):
            return whole
        if height == width and (top, left) == ((full_h - height) // 2, (full_w - width) // 2):
            return f"--crop {height}"
    return f"--crop-box {top},{left},{height},{width}"


def _data_option(state) -> str:
    """`` --data X`` for the app's dataset (nothing for the default synthetic vessels)."""
    data = getattr(state.config, "data", None)
    return f" --data {data}" if data else ""


def _erf_maps(ctx: LayerContext, title: str):
    """(maps, None) for the view's matching map file, or (None, the result explaining why)."""
    stored = ctx.state.maps_for(ctx.model_key, ctx.view)
    if stored is None:
        return None, LayerResult(None, title, _erf_howto(ctx))
    try:
        maps = ctx.state.erf_maps.load(stored)
    except VesselLensError as exc:
        return None, LayerResult(None, title, str(exc))
    if (maps.height, maps.width) != (ctx.view.height, ctx.view.width):
        note = f"{stored.name}: maps are {maps.height}x{maps.width}, not the view's size"
        return None, LayerResult(None, title, note)
    return maps, None


def _plane(maps, values, title: str) -> tuple[np.ndarray | None, str]:
    """One (H, W) float map with the pixels not computed blank; per-channel maps
    (``--channels separate``) are used only when there is one channel."""
    array = values.detach().cpu().float().numpy()
    if maps.channels == "separate":
        if array.shape[0] != 1:
            return None, (
                f"{title}: the map file holds one map per input channel (--channels separate); "
                "the app shows channel-summed maps: run vessel-lens erf with --channels sum"
            )
        array = array[0]
    computed = maps.computed.numpy().astype(bool)
    return np.where(computed, array, np.nan).astype(np.float32), ""


def _erf_thresholded(ctx: LayerContext, name: str, label: str, style: dict) -> LayerResult:
    """``name`` (count or fulfillment) at the stored fraction nearest the page's threshold."""
    maps, failed = _erf_maps(ctx, label)
    if failed is not None:
        return failed
    index = maps.fraction_index(ctx.fraction)
    shown = maps.fractions[index]
    title = f"{label} at {_amount(shown, maps.mode)} (mode {maps.mode})"
    values, problem = _plane(maps, getattr(maps, name)[index], label)
    if values is None:
        return LayerResult(None, title, problem)
    notes = []
    if not math.isclose(shown, ctx.fraction, rel_tol=1e-6, abs_tol=1e-12):
        stored = ", ".join(_amount(f, maps.mode) for f in maps.fractions)
        notes.append(f"stored fractions: {stored}; showing {_amount(shown, maps.mode)}")
    if maps.mode != ctx.mode:
        notes.append(f"the map used threshold mode {maps.mode}, not the page's {ctx.mode}")
    if not bool(maps.computed.all()):
        notes.append("pixels not computed are blank")
    return LayerResult(values, title, "; ".join(notes), style)


def _erf_count(ctx: LayerContext) -> LayerResult:
    style = {"colorscale": "Viridis", "hover": "count %{z:.0f}", "unit": "count (input px)"}
    return _erf_thresholded(ctx, "count", "Receptive-field count", style)


def _erf_fulfillment(ctx: LayerContext) -> LayerResult:
    style = {"colorscale": "Viridis", "zmin": 0.0, "zmax": 1.0, "hover": "fulfillment %{z:.3f}",
             "unit": "fulfillment (count / box area)"}  # fmt: skip
    return _erf_thresholded(ctx, "fulfillment", "Fulfillment (count / bbox area)", style)


def _erf_mass_radius(ctx: LayerContext) -> LayerResult:
    label = f"{_amount(MASS_FRACTION, 'pixel')} mass radius"
    maps, failed = _erf_maps(ctx, label)
    if failed is not None:
        return failed
    if not maps.mass_fractions:
        return LayerResult(None, label, "the map file holds no mass radius")
    gaps = [abs(q - MASS_FRACTION) for q in maps.mass_fractions]
    index = gaps.index(min(gaps))
    shown = maps.mass_fractions[index]
    title = f"{_amount(shown, 'pixel')} mass radius (half side of the centred square, px)"
    values, problem = _plane(maps, maps.mass_radius[index], label)
    if values is None:
        return LayerResult(None, title, problem)
    notes = []
    if not math.isclose(shown, MASS_FRACTION):
        stored = ", ".join(_amount(q, "pixel") for q in maps.mass_fractions)
        notes.append(f"stored mass fractions: {stored}; showing {_amount(shown, 'pixel')}")
    if not bool(maps.computed.all()):
        notes.append("pixels not computed are blank")
    style = {"colorscale": "Viridis", "hover": "r = %{z:.0f} px", "unit": "radius (px)"}
    return LayerResult(values, title, "; ".join(notes), style)


def discover_layers() -> list[str]:
    """Register the built-in layers, then the receptive-field layers of ``vessel-lens erf``."""
    register_layer(MapLayer("significant", "Most significant pixels (count)", _significant))
    register_layer(MapLayer("probability", "Vessel probability", _probability))
    register_layer(MapLayer("errors", "Errors against the label", _errors))
    register_layer(MapLayer("erf_count", "Receptive-field count (erf)", _erf_count))
    register_layer(MapLayer("erf_fulfillment", "Fulfillment (erf)", _erf_fulfillment))
    register_layer(MapLayer("erf_mass_radius", "90 % mass radius (erf)", _erf_mass_radius))
    return list(layers())
