"""The hovered pixel's gradient as raw float32 bytes, for the page to paint at once.

``GET /_vessel_lens/gradient?model=&key=&top=&left=&height=&width=&row=&col=[&clip=1][&compare=]``
answers the signed gradient map of the gradient panel (the Jacobian row summed over input
channels, row-major, little-endian float32) from the same cache as the pixel callback
(``AppState.gradient``: it shares the memory budget and the work queue). Headers give what
the panel draws around it: ``X-Limit`` (the symmetric colour limit), ``X-Height`` /
``X-Width`` / ``X-Top`` / ``X-Left`` (the view) and ``X-Title`` (the panel's title,
its lines as the panel wraps them, percent-encoded). ``app/assets/paint.js`` paints it on a canvas over the gradient panel before
Dash's callback has even been sent; the callback still redraws every panel.

Bad parameters get 400 with one line of text; the server's Host guard and headers apply.
"""

from __future__ import annotations

from urllib.parse import quote

import numpy as np

from vessel_lens.app import figures
from vessel_lens.app.handlers import NO_COMPARE, view_from_data
from vessel_lens.app.images import as_int
from vessel_lens.app.methods import get_method
from vessel_lens.app.pixel import CLIP, gradient_title
from vessel_lens.app.titles import title_lines
from vessel_lens.errors import VesselLensError

ROUTE = "/_vessel_lens/gradient"


def gradient_map(state, args) -> tuple[np.ndarray, dict[str, str]]:
    """(H, W) float32 map and response headers for request arguments ``args`` (a mapping);
    raises VesselLensError for bad ones."""
    model = args.get("model")
    state.model(model)
    view = view_from_data(
        state, {k: args.get(k) for k in ("key", "top", "left", "height", "width")}
    )
    row, col = as_int(args.get("row"), "row"), as_int(args.get("col"), "col")
    compare = args.get("compare")
    prefix = ""
    if compare and compare not in (NO_COMPARE, model):
        state.model(compare)
        prefix = "A: "
    clip = args.get("clip") == "1"
    values, description = get_method("gradient").compute(state, model, view, row, col, "pixel")
    signed = values.float().sum(0).numpy().astype("<f4", copy=False)
    limit = figures.symmetric_limit(signed, CLIP if clip else None)
    title = gradient_title(description, prefix, clip)
    headers = {
        "X-Limit": repr(float(limit)),
        "X-Height": str(view.height),
        "X-Width": str(view.width),
        "X-Top": str(view.top),
        "X-Left": str(view.left),
        "X-Title": quote("\n".join(title_lines(title))),
        "Cache-Control": "no-store",
    }
    return np.ascontiguousarray(signed), headers


def register_route(app, state) -> None:
    """Serve :data:`ROUTE` on ``app``'s Flask server."""
    from flask import Response, request

    def gradient():
        try:
            values, headers = gradient_map(state, request.args)
        except VesselLensError as exc:
            return Response(f"{exc}\n", status=400, mimetype="text/plain")
        return Response(values.tobytes(), mimetype="application/octet-stream", headers=headers)

    rule = app.config.routes_pathname_prefix.rstrip("/") + ROUTE
    app.server.add_url_rule(rule, "vessel_lens_gradient", gradient, methods=["GET"])
