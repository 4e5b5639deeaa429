"""Dash callbacks: thin wrappers that validate, call :mod:`.handlers` and place the results.

A problem with the user's input becomes a message in the page; an unexpected error is logged
with its traceback on the server and shown as one line. No callback raises into Dash, so a
bad value from the browser never turns into an HTTP 500.
"""

from __future__ import annotations

import logging

from dash import Input, Output, Patch, State, ctx, html, no_update
from dash.exceptions import PreventUpdate

from vessel_lens.app import figures, handlers
from vessel_lens.app.layout import (
    CANCEL_HIDDEN,
    CANCEL_SHOWN,
    MAP_IDLE,
    MAP_PROBLEM,
    MAP_RUNNING,
    PANELS_CURRENT,
    PANELS_STALE,
    TASK_IDLE,
    TASK_PROBLEM,
    TASK_RUNNING,
)
from vessel_lens.app.methods import get_method
from vessel_lens.app.pixel import parse_threshold
from vessel_lens.errors import VesselLensError

log = logging.getLogger(__name__)

HOVER_TO_PIXEL = """
function(h1, h2, h3, c1, c2, c3, view, follow, current) {
    const NU = window.dash_clientside.no_update;
    const triggered = window.dash_clientside.callback_context.triggered;
    // a click arrives with the hover of the same mouse position: the click decides
    const click = triggered.find(t => t.prop_id.endsWith(".clickData"));
    const prop = click ? click.prop_id : (triggered.length ? triggered[0].prop_id : "");
    if (prop.startsWith("view-store")) {
        return (view && view.pixel) ? view.pixel : NU;
    }
    const events = {
        "graph-input.hoverData": h1, "graph-map.hoverData": h2, "graph-mask.hoverData": h3,
        "graph-input.clickData": c1, "graph-map.clickData": c2, "graph-mask.clickData": c3
    };
    const hover = prop.endsWith(".hoverData");
    if (hover && follow !== "hover") { return NU; }
    const data = events[prop];
    if (!data || !Array.isArray(data.points) || !data.points.length) { return NU; }
    const x = data.points[0].x, y = data.points[0].y;
    if (typeof x !== "number" || typeof y !== "number") { return NU; }
    const row = Math.round(y), col = Math.round(x);
    if (hover && current && current.row === row && current.col === col) { return NU; }
    return {row: row, col: col, view: view ? view.view : null, clicked: !hover};
}
"""


def _message(exc: Exception) -> str:
    if isinstance(exc, VesselLensError):
        return str(exc)
    log.exception("callback failed")
    return f"internal error ({type(exc).__name__}); the server log has the details"


PAINT_SETTINGS = """
function(view, model, compare, method, target, clip, follow) {
    // what app/assets/paint.js needs to fetch and paint the hovered pixel's gradient
    window.vesselLensPaint = {
        view: view ? view.view : null, model: model, compare: compare, method: method,
        target: target, clip: Array.isArray(clip) && clip.includes("clip"), follow: follow
    };
    return window.dash_clientside.no_update;
}
"""


def register_callbacks(app, state) -> None:
    graphs = ("graph-input", "graph-map", "graph-mask")
    app.clientside_callback(
        PAINT_SETTINGS,
        Output("paint-settings", "data"),
        Input("view-store", "data"),
        Input("model", "value"),
        Input("compare", "value"),
        Input("method", "value"),
        Input("target", "value"),
        Input("clip", "value"),
        Input("follow", "value"),
    )
    app.clientside_callback(
        HOVER_TO_PIXEL,
        Output("pixel-store", "data"),
        *[Input(g, "hoverData") for g in graphs],
        *[Input(g, "clickData") for g in graphs],
        Input("view-store", "data"),
        State("follow", "value"),
        State("pixel-store", "data"),
    )

    @app.callback(
        Output("image", "options"),
        Output("image", "value"),
        Output("upload-message", "children"),
        Input("upload", "contents"),
        State("upload", "filename"),
        prevent_initial_call=True,
    )
    def on_upload(contents, filename):
        try:
            return handlers.handle_upload(state, contents, filename)
        except Exception as exc:
            return no_update, no_update, html.Span(_message(exc), className="error")

    @app.callback(
        Output("view-store", "data"),
        Output("view-note", "children"),
        Output("view-mode", "options"),
        Input("image", "value"),
        Input("view-mode", "value"),
        Input("crop-size", "value"),
        Input("crop-top", "value"),
        Input("crop-left", "value"),
        Input("model", "value"),
        Input("compare", "value"),
        State("pixel-store", "data"),
        State("view-mode", "options"),
    )
    def on_view(image, mode, size, top, left, model, compare, pixel, mode_options):
        try:
            result = handlers.handle_view(
                state, image, mode, size, top, left, model, compare, pixel
            )
        except Exception as exc:
            return no_update, _message(exc), no_update
        options = [dict(o) for o in mode_options or []]
        for option in options:
            if option.get("value") == "store":
                option["disabled"] = not result["stored"]
        return {"view": result["view"], "pixel": result["pixel"]}, result["note"], options

    @app.callback(
        Output("graph-input", "figure"),
        Output("graph-mask", "figure"),
        Input("view-store", "data"),
        Input("overlays", "value"),
        State("model", "value"),
        State("pixel-store", "data"),
    )
    def on_input(view_data, overlays, model, pixel):
        if not isinstance(view_data, dict):
            raise PreventUpdate
        try:
            view = handlers.view_from_data(state, view_data.get("view"))
            figure, mask = handlers.input_panels(state, view, overlays, model, pixel)
        except Exception as exc:
            return figures.empty_figure(_message(exc)), no_update
        patch = Patch()
        patch["data"] = figure["data"]
        for key in ("title", "xaxis", "yaxis", "margin", "plot_bgcolor", "hovermode"):
            patch["layout"][key] = figure["layout"][key]
        patch["layout"]["annotations"] = []
        return patch, mask

    @app.callback(
        Output("graph-map", "figure"),
        Output("map-status", "children"),
        Output("map-bar", "className"),
        Output("map-cancel", "style"),
        Output("map-poll", "disabled"),
        Output("map-task", "data"),
        Input("view-store", "data"),
        Input("layer", "value"),
        Input("threshold-store", "data"),
        Input("threshold-mode", "value"),
        Input("global-store", "data"),
        Input("map-poll", "n_intervals"),
        Input("map-cancel", "n_clicks"),
        Input("map-retry", "n_clicks"),
        State("model", "value"),
        State("map-task", "data"),
    )
    def on_map(view_data, layer, threshold_data, mode, _global, _tick, _stop, _again, model, task):
        if not isinstance(view_data, dict):
            raise PreventUpdate
        previous = task.get("id") if isinstance(task, dict) else None
        try:
            if ctx.triggered_id == "map-cancel":
                state.tasks.cancel(previous)
            view = handlers.view_from_data(state, view_data.get("view"))
            threshold = parse_threshold(_fraction(threshold_data), mode)
            restart = ctx.triggered_id == "map-retry"
            figure, result = handlers.map_outputs(state, view, layer, threshold, model, restart)
        except Exception as exc:
            return (
                figures.empty_figure(_message(exc), "Map"),
                "",
                MAP_IDLE,
                CANCEL_HIDDEN,
                True,
                None,
            )
        running = result.task
        moved = ctx.triggered_id == "view-store" if running is None else running.id != previous
        if previous is not None and moved:
            state.tasks.cancel(previous)  # the page has moved on to another view
        if running is None:
            return figure, result.status, MAP_IDLE, CANCEL_HIDDEN, True, None
        marker = {"id": running.id}
        if running.state in ("waiting", "running"):
            return figure, running.status(), MAP_RUNNING, CANCEL_SHOWN, False, marker
        return figure, running.status(), MAP_PROBLEM, CANCEL_HIDDEN, True, marker

    @app.callback(
        Output("threshold-slider", "value"),
        Output("threshold-input", "value"),
        Output("threshold-store", "data"),
        Output("threshold-help", "children"),
        Input("threshold-slider", "value"),
        Input("threshold-input", "value"),
        Input("threshold-mode", "value"),
    )
    def on_threshold(slider, value, mode):
        try:
            result = handlers.handle_threshold(ctx.triggered_id, slider, value, mode)
        except Exception as exc:
            return no_update, no_update, no_update, _message(exc)
        return result["slider"], result["value"], result["store"], result["help"]

    @app.callback(
        Output("global-status", "children"),
        Output("global-poll", "disabled"),
        Output("global-store", "data"),
        Input("global-compute", "n_clicks"),
        Input("global-poll", "n_intervals"),
        Input("view-store", "data"),
        Input("model", "value"),
        Input("compare", "value"),
        Input("threshold-store", "data"),
        Input("threshold-mode", "value"),
        State("global-store", "data"),
    )
    def on_global(_clicks, _ticks, view_data, model, compare, threshold_data, mode, known):
        if not isinstance(view_data, dict):
            raise PreventUpdate
        try:
            view = handlers.view_from_data(state, view_data.get("view"))
            start = ctx.triggered_id == "global-compute"
            try:  # the threshold only adds its value to the line
                threshold = parse_threshold(_fraction(threshold_data), mode)
            except VesselLensError:
                threshold = None
            text, stop, value = handlers.global_status(state, view, model, start, threshold)
            value_b = None
            if isinstance(compare, str) and compare not in (handlers.NO_COMPARE, model):
                # the comparison model's thresholds need its own maximum
                text_b, stop_b, value_b = handlers.global_status(
                    state, view, compare, start, threshold
                )
                text, stop = f"A: {text}; B: {text_b}", stop and stop_b
        except Exception as exc:
            return _message(exc), True, no_update
        marker = {"value": value, "value_b": value_b, "view": view.as_dict(), "model": model}
        return text, stop, (no_update if marker == known else marker)

    pixel_outputs = [
        Output("graph-gradient", "figure"),
        Output("graph-zoom", "figure"),
        Output("stats", "children"),
        Output("graph-gradient-b", "figure"),
        Output("graph-zoom-b", "figure"),
        Output("stats-b", "children"),
        Output("compare-row", "style"),
        Output("graph-input", "figure", allow_duplicate=True),
        Output("message", "children"),
        Output("pixel-panels", "className"),
        Output("task-store", "data"),
        Output("task-poll", "disabled"),
        Output("task-status", "children"),
        Output("task-bar", "className"),
        Output("task-cancel", "style"),
    ]
    task_outputs = 5  # the last five: which task, its polling, its line, bar and button

    @app.callback(
        *pixel_outputs,
        Input("pixel-store", "data"),
        Input("threshold-store", "data"),
        Input("threshold-mode", "value"),
        Input("method", "value"),
        Input("target", "value"),
        Input("global-store", "data"),
        Input("overlays", "value"),
        Input("clip", "value"),
        Input("task-done", "data"),
        State("view-store", "data"),
        State("model", "value"),
        State("compare", "value"),
        State("task-store", "data"),
        prevent_initial_call=True,
    )
    def on_pixel(
        pixel,
        threshold_data,
        mode,
        method,
        target,
        _global,
        overlays,
        clip,
        _done,
        view_data,
        model,
        compare,
        task_data,
    ):
        skip = [no_update] * (len(pixel_outputs) - 2 - task_outputs)
        previous = task_data.get("id") if isinstance(task_data, dict) else None
        keep_task = [no_update] * task_outputs
        try:
            point = handlers.stored_point(pixel)
            if point is None or not isinstance(view_data, dict):
                raise PreventUpdate
            view = handlers.view_from_data(state, view_data.get("view"))
            if not get_method(method).live and not pixel.get("clicked"):
                return *skip, f"click a pixel to compute {method}", PANELS_STALE, *keep_task
            threshold = parse_threshold(_fraction(threshold_data), mode)
            result = handlers.pixel_outputs(
                state,
                view,
                point,
                model,
                compare,
                threshold,
                method,
                target,
                overlays,
                clip=isinstance(clip, list) and "clip" in clip,
                wait=False,
            )
        except PreventUpdate:
            raise
        except Exception as exc:
            return *skip, _message(exc), no_update, *keep_task
        shapes = Patch()
        shapes["layout"]["shapes"] = result.shapes
        task = result.task
        if previous is not None and (task is None or task.id != previous):
            state.tasks.cancel(previous)  # this page has moved on from it
        if task is not None:
            running = task.state in ("waiting", "running")
            skip_shapes = [no_update] * (len(pixel_outputs) - 3 - task_outputs)
            return (
                *skip_shapes,
                shapes,
                "",
                PANELS_STALE,
                {"id": task.id} if running else None,
                not running,
                task.status(),
                TASK_RUNNING if running else TASK_PROBLEM,
                CANCEL_SHOWN if running else CANCEL_HIDDEN,
            )
        second = len(result.analyses) > 1
        return (
            result.gradient[0],
            result.zoom[0],
            result.tables[0],
            result.gradient[1] if second else no_update,
            result.zoom[1] if second else no_update,
            result.tables[1] if second else no_update,
            {"display": "grid"} if second else {"display": "none"},
            shapes,
            "",
            PANELS_CURRENT,
            None,
            True,
            "",
            TASK_IDLE,
            CANCEL_HIDDEN,
        )

    @app.callback(
        Output("task-status", "children", allow_duplicate=True),
        Output("task-bar", "className", allow_duplicate=True),
        Output("task-cancel", "style", allow_duplicate=True),
        Output("task-poll", "disabled", allow_duplicate=True),
        Output("task-done", "data"),
        Input("task-poll", "n_intervals"),
        Input("task-cancel", "n_clicks"),
        Input("task-retry", "n_clicks"),
        State("task-store", "data"),
        prevent_initial_call=True,
    )
    def on_task(_ticks, _cancel, retries, task_data):
        if ctx.triggered_id == "task-retry":  # the pixel callback runs the method again
            return "", TASK_IDLE, CANCEL_HIDDEN, True, {"retry": retries}
        task_id = task_data.get("id") if isinstance(task_data, dict) else None
        if task_id is None:
            return no_update, TASK_IDLE, CANCEL_HIDDEN, True, no_update
        try:
            cancel = ctx.triggered_id == "task-cancel"
            status, text = handlers.task_status(state, task_id, cancel)
        except Exception as exc:
            return _message(exc), TASK_PROBLEM, CANCEL_HIDDEN, True, no_update
        if status in ("waiting", "running"):
            return text, TASK_RUNNING, CANCEL_SHOWN, False, no_update
        if status == "done":  # the pixel callback now finds the maps in the cache
            return "", TASK_IDLE, CANCEL_HIDDEN, True, {"id": task_id}
        return text, TASK_PROBLEM, CANCEL_HIDDEN, True, no_update

    @app.callback(
        Output("download", "data"),
        Output("message", "children", allow_duplicate=True),
        Input("export-png", "n_clicks"),
        Input("export-csv", "n_clicks"),
        Input("export-json", "n_clicks"),
        State("pixel-store", "data"),
        State("view-store", "data"),
        State("model", "value"),
        State("compare", "value"),
        State("threshold-store", "data"),
        State("threshold-mode", "value"),
        State("method", "value"),
        State("target", "value"),
        State("layer", "value"),
        State("overlays", "value"),
        State("clip", "value"),
        prevent_initial_call=True,
    )
    def on_export(
        _png,
        _csv,
        _json,
        pixel,
        view_data,
        model,
        compare,
        threshold_data,
        mode,
        method,
        target,
        layer,
        overlays,
        clip,
    ):
        kind = {"export-png": "png", "export-csv": "csv", "export-json": "json"}.get(
            ctx.triggered_id
        )
        try:
            point = handlers.stored_point(pixel)
            if kind is None or point is None or not isinstance(view_data, dict):
                return no_update, "hover or click a pixel first"
            view = handlers.view_from_data(state, view_data.get("view"))
            threshold = parse_threshold(_fraction(threshold_data), mode)
            result = handlers.pixel_outputs(
                state, view, point, model, compare, threshold, method, target, [], wait=False
            )
            if result.task is not None:
                return (
                    no_update,
                    f"{result.task.label} is not computed yet: export when it is shown",
                )
            clip = isinstance(clip, list) and "clip" in clip
            shown = None
            if kind == "png":  # the map panel as the page shows it
                shown = handlers.map_outputs(state, view, layer, threshold, model)[1]
            payload = handlers.export_payload(
                kind, result.analyses, state, view, shown, overlays, clip
            )
            return payload, ""
        except Exception as exc:
            return no_update, _message(exc)


def _fraction(data: object) -> object:
    return data.get("fraction") if isinstance(data, dict) else None


__all__ = ["register_callbacks"]
