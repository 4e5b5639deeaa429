"""Registry of the per-pixel maps shown in the "map" panel.

``significant`` is the original app's "most significant pixels" map: for every output pixel
p, count(p) = the number of input pixels whose |gradient| exceeds the threshold (the
definitions of :mod:`vessel_lens.interpret.thresholds`, at the threshold chosen in the page).
It needs every pixel's gradient, so it is read from a matching precomputed Jacobian store
(``--erf``) and otherwise omitted with a note saying how to make one. ``probability`` and
``errors`` come from the model's forward pass.

Receptive-field maps of ``vessel-lens erf`` (issue 5: count and fulfillment at stored
fractions, centroid offset, mass radius) plug in here once that command's reader exists: a
``MapLayer`` whose ``compute`` finds the map of ``ctx.view`` (stem, crop box, weights hash) in
``ctx.state.config.erf``, picks the stored fraction nearest ``ctx.fraction`` (saying so in
``note`` when it differs) and returns it; :func:`discover_layers` registers it when the reader
imports. Until then those maps are not offered.
"""

from __future__ import annotations

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


@dataclass
class LayerResult:
    values: np.ndarray | None
    title: str
    note: str = ""
    style: dict = field(default_factory=dict)


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
        stem = view.key.split("/", 1)[-1]
        return LayerResult(
            None,
            title,
            "needs every pixel's gradient: precompute them for this image, crop and "
            f"checkpoint (vessel-lens jacobian --images {stem} --crop {view.height} ...) and "
            "start the app with --erf on that folder",
        )
    if ctx.mode == "global" and ctx.global_max is None:
        return LayerResult(None, title, "mode global: the global maximum is not known yet")
    try:
        counts = state.stores.count_map(store, ctx.fraction, ctx.mode, ctx.global_max)
    except VesselLensError as exc:
        return LayerResult(None, title, str(exc))
    if counts is None:
        return LayerResult(None, title, f"store {store.name} is too large to count in memory")
    note = "" if store.full else "pixels not in the store are blank"
    return LayerResult(counts, title, note, {"colorscale": "Viridis", "hover": "count %{z:.0f}"})


def _probability(ctx: LayerContext) -> LayerResult:
    values = ctx.state.probability(ctx.model_key, ctx.view)
    greys = [[0.0, "#000000"], [1.0, "#ffffff"]]
    style = {"colorscale": greys, "zmin": 0.0, "zmax": 1.0, "hover": "p = %{z:.3f}"}
    return LayerResult(values, "Vessel probability", "", style)


def _errors(ctx: LayerContext) -> LayerResult:
    label = ctx.view.crop(ctx.state.sample(ctx.view.key).label)
    title = "Errors against the label (TP white, FP red, FN blue)"
    if label is None:
        return LayerResult(None, title, "this image has no label")
    predicted = ctx.state.probability(ctx.model_key, ctx.view) > 0.5
    truth = label.numpy().astype(bool)
    values = np.zeros(truth.shape, dtype=np.float32)
    values[predicted & truth] = 1
    values[predicted & ~truth] = 2
    values[~predicted & truth] = 3
    scale = []
    for i, colour in enumerate(ERROR_COLOURS):
        scale += [[i / 4, colour], [(i + 1) / 4, colour]]
    style = {"colorscale": scale, "zmin": -0.5, "zmax": 3.5, "hover": "%{z:.0f}", "bar": False}
    return LayerResult(values, title, "", style)


def discover_layers() -> list[str]:
    """Register the built-in layers (and the ERF layers once their reader exists)."""
    register_layer(MapLayer("significant", "Most significant pixels (count)", _significant))
    register_layer(MapLayer("probability", "Vessel probability", _probability))
    register_layer(MapLayer("errors", "Errors against the label", _errors))
    return list(layers())
