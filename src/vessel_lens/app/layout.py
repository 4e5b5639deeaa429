"""The page: controls on the left, the panels on the right (component ids are the API of the
callbacks and the browser tests)."""

from __future__ import annotations

from dash import dcc, html

from vessel_lens.app import figures
from vessel_lens.app.config import RANDOM_INIT
from vessel_lens.app.methods import TARGETS
from vessel_lens.app.pixel import SLIDER_RANGE, fraction_to_slider
from vessel_lens.interpret.thresholds import THRESHOLD_MODES

DEFAULT_FRACTION = 0.01
DEFAULT_MODE = "pixel"
OVERLAYS = {
    "label": "label",
    "skeleton": "skeleton",
    "prediction": "predicted mask",
    "field": "receptive field of the pixel",
    "bbox": "thresholded box",
}
MODE_HELP = {
    "global": "global: f × max |g| over the whole Jacobian of the view",
    "pixel": "pixel: f × max |g| of this pixel's map",
    "absolute": "absolute: |g| > f itself",
}


def _field(label: str, *children, help: str | None = None) -> html.Div:
    parts = [html.Label(label, className="field-label"), *children]
    if help:
        parts.append(html.Div(help, className="field-help"))
    return html.Div(parts, className="field")


def _graph(id: str, height: int = 330) -> dcc.Graph:
    return dcc.Graph(
        id=id,
        figure=figures.empty_figure("loading ..."),
        config=figures.CONFIG,
        clear_on_unhover=False,
        style={"height": f"{height}px"},
    )


def stats_table(rows: list[tuple[str, str]]) -> html.Table:
    return html.Table(
        [
            html.Tr([html.Th(name), html.Td(value, className=f"stat-{i}")])
            for i, (name, value) in enumerate(rows)
        ],
        className="stats",
    )


TASK_POLL_MS = 500
PANELS_CURRENT = "pixel-panels"
PANELS_STALE = "pixel-panels stale"
"""The pixel's panels, and the same greyed while they show an older result."""
TASK_IDLE, TASK_RUNNING, TASK_PROBLEM = "task-bar", "task-bar running", "task-bar problem"
CANCEL_SHOWN, CANCEL_HIDDEN = {"display": "inline-block"}, {"display": "none"}


def task_bar() -> html.Div:
    """The line above the pixel's panels that says what a slow method is doing: a spinner,
    "computing <method> … <seconds>" and a cancel button while it runs; why it stopped and
    a button to try again when it was cancelled, refused or failed (shown by the style
    sheet for the bar's state)."""
    return html.Div(
        [
            html.Span(className="spinner"),
            html.Span(id="task-status"),
            html.Button("cancel", id="task-cancel", n_clicks=0, style=CANCEL_HIDDEN),
            html.Button("try again", id="task-retry", n_clicks=0),
        ],
        id="task-bar",
        className=TASK_IDLE,
    )


def map_bar() -> html.Div:
    """The line under the map menu: what an on-demand map is doing (a spinner, progress and
    a cancel button), why it stopped (with a button to compute it again), or how it was
    made; the same states as :func:`task_bar`."""
    return html.Div(
        [
            html.Span(className="spinner"),
            html.Span(id="map-status", className="field-help"),
            html.Button("cancel", id="map-cancel", n_clicks=0, style=CANCEL_HIDDEN),
            html.Button("compute again", id="map-retry", n_clicks=0),
        ],
        id="map-bar",
        className=MAP_IDLE,
    )


MAP_IDLE, MAP_RUNNING, MAP_PROBLEM = "map-bar", "map-bar running", "map-bar problem"


def _marks() -> dict[float, str]:
    low, high = SLIDER_RANGE
    labels = {-5: "1e-5", -4: "1e-4", -3: "0.001", -2: "0.01", -1: "0.1", 0: "1"}
    return {v: labels[v] for v in range(int(low), int(high) + 1) if v in labels}


def build_layout(state, methods: dict, layers: dict) -> html.Div:
    models = [{"label": e.label, "value": k} for k, e in state.models.items()]
    compare = [{"label": "no comparison", "value": "none"}, *models]
    images = state.image_options()
    first_image = images[0]["value"] if images else None
    live_methods = [{"label": m.label, "value": name} for name, m in methods.items()]
    controls = html.Div(
        [
            html.H2("vessel-lens"),
            html.Div("why does the network label this pixel as it does?", className="subtitle"),
            _field("Model", dcc.Dropdown(id="model", options=models, value="m0", clearable=False)),
            _field(
                "Compare with",
                dcc.Dropdown(
                    id="compare",
                    options=compare,
                    value=state.compare_default or "none",
                    clearable=False,
                ),
                help=f"'{RANDOM_INIT}': the same architecture, randomly initialised",
            ),
            _field(
                "Image",
                dcc.Dropdown(id="image", options=images, value=first_image, clearable=False),
                dcc.Upload(
                    id="upload",
                    children=html.Div(
                        f"drop a PNG/TIFF (at most {state.config.upload_mb:g} MiB) here or "
                        "click to upload"
                    ),
                    className="upload",
                    accept="image/png,image/tiff,.png,.tif,.tiff,.jpg,.jpeg,.gif,.bmp",
                    max_size=state.config.upload_bytes,
                    multiple=False,
                ),
                html.Div(id="upload-message", className="field-help"),
            ),
            _field(
                "View",
                dcc.RadioItems(
                    id="view-mode",
                    options=[
                        {"label": "full", "value": "full"},
                        {"label": "crop", "value": "crop"},
                        {"label": "stored crop", "value": "store", "disabled": True},
                    ],
                    value="full",
                    inline=True,
                ),
                html.Div(
                    [
                        dcc.Input(
                            id="crop-size", type="number", placeholder="size", min=16, debounce=True
                        ),
                        dcc.Input(
                            id="crop-top", type="number", placeholder="top", min=0, debounce=True
                        ),
                        dcc.Input(
                            id="crop-left", type="number", placeholder="left", min=0, debounce=True
                        ),
                    ],
                    className="crop-inputs",
                ),
                html.Div(id="view-note", className="field-help"),
            ),
            _field(
                "Threshold (fraction of the max; 0.01 = 1 %)",
                dcc.Slider(
                    id="threshold-slider",
                    min=SLIDER_RANGE[0],
                    max=SLIDER_RANGE[1],
                    step=0.01,
                    value=fraction_to_slider(DEFAULT_FRACTION),
                    marks=_marks(),
                    updatemode="mouseup",
                ),
                dcc.Input(
                    id="threshold-input",
                    type="number",
                    value=DEFAULT_FRACTION,
                    min=0,
                    step="any",
                    debounce=True,
                ),
                dcc.RadioItems(
                    id="threshold-mode",
                    options=[{"label": m, "value": m} for m in THRESHOLD_MODES],
                    value=DEFAULT_MODE,
                    inline=True,
                ),
                html.Div(id="threshold-help", className="field-help"),
                html.Div(
                    [
                        html.Button("compute global max", id="global-compute", n_clicks=0),
                        html.Span(id="global-status", className="field-help"),
                    ]
                ),
            ),
            _field(
                "Overlays on the input",
                dcc.Checklist(
                    id="overlays",
                    options=[{"label": v, "value": k} for k, v in OVERLAYS.items()],
                    value=["field", "bbox"],
                ),
            ),
            _field(
                "Map panel",
                dcc.Dropdown(
                    id="layer",
                    options=[
                        {"label": layer.label, "value": name} for name, layer in layers.items()
                    ],
                    value=next(iter(layers), None),
                    clearable=False,
                ),
                map_bar(),
            ),
            _field(
                "Attribution",
                dcc.Dropdown(id="method", options=live_methods, value="gradient", clearable=False),
                dcc.Dropdown(
                    id="target",
                    options=[{"label": v, "value": k} for k, v in TARGETS.items()],
                    value="pixel",
                    clearable=False,
                ),
                dcc.Checklist(
                    id="clip",
                    options=[
                        {"label": "clip colours at the 99.5th percentile of |g|", "value": "clip"}
                    ],
                    value=["clip"],
                ),
                help="the gradient follows the mouse; Captum methods run on click",
            ),
            _field(
                "Select pixels by",
                dcc.RadioItems(
                    id="follow",
                    options=[
                        {"label": "hover", "value": "hover"},
                        {"label": "click", "value": "click"},
                    ],
                    value="hover",
                    inline=True,
                ),
            ),
            _field(
                "Export",
                html.Div(
                    [
                        html.Button("PNG", id="export-png", n_clicks=0),
                        html.Button("CSV", id="export-csv", n_clicks=0),
                        html.Button("JSON", id="export-json", n_clicks=0),
                    ],
                    className="buttons",
                ),
                dcc.Download(id="download"),
            ),
        ],
        className="controls",
    )
    panels = html.Div(
        [
            html.Div(id="message", className="message"),
            html.Div(
                [_graph("graph-input"), _graph("graph-map"), _graph("graph-mask")],
                className="row three",
            ),
            task_bar(),
            html.Div(
                [
                    html.Div(
                        [
                            _graph("graph-gradient"),
                            _graph("graph-zoom"),
                            html.Div(id="stats", className="stats-box"),
                        ],
                        className="row three",
                    ),
                    html.Div(
                        [
                            _graph("graph-gradient-b"),
                            _graph("graph-zoom-b"),
                            html.Div(id="stats-b", className="stats-box"),
                        ],
                        id="compare-row",
                        className="row three",
                        style={"display": "none"},
                    ),
                ],
                id="pixel-panels",
                className=PANELS_CURRENT,
            ),
        ],
        className="panels",
    )
    stores = [
        dcc.Store(id="view-store"),
        dcc.Store(id="pixel-store"),
        dcc.Store(id="paint-settings"),
        dcc.Store(id="threshold-store", data={"fraction": DEFAULT_FRACTION}),
        dcc.Store(id="global-store"),
        dcc.Interval(id="global-poll", interval=1000, disabled=True),
        dcc.Store(id="task-store"),
        dcc.Store(id="task-done"),
        dcc.Interval(id="task-poll", interval=TASK_POLL_MS, disabled=True),
        dcc.Store(id="map-task"),
        dcc.Interval(id="map-poll", interval=TASK_POLL_MS, disabled=True),
    ]
    return html.Div([controls, panels, *stores], className="page")
