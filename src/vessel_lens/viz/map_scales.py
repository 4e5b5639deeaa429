"""Colour scales of gradient and attribution maps, and the words on their colour bars.

Signed maps are drawn with a diverging colour map centred on zero (``RdBu_r``: red positive,
blue negative) and symmetric limits at the 99.5th percentile of |map|, so a few extreme pixels
do not wash out the rest; non-negative maps (Grad-CAM) use ``magma`` from zero. Colour bars say
when those limits clip the map (pointed ends).

Units: the explained output P (the vessel probability, summed over the target's pixels; or
its logit) is dimensionless, and so is the input intensity x, read into [0, 1]. Gradient-type
maps are in P per unit of intensity; maps that split the output among the inputs (input x
gradient, integrated gradients, gradient SHAP, occlusion, Grad-CAM) are in units of P.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from matplotlib.axes import Axes

from vessel_lens.viz.figures import add_colorbar

SIGNED_CMAP = "RdBu_r"
CLIP_PERCENTILE = 99.5
"""Percentile of |map| at which colour limits are set."""

OUTPUT_SYMBOLS = {"probability": "P", "logit": "logit", "margin": "margin"}
"""Symbol of the explained output in colour-bar labels, by target output kind."""
GRADIENT_METHODS = ("saliency", "smoothgrad", "guided_backprop")
"""Methods whose maps are gradients (output per unit of input intensity)."""
_QUANTITIES = {
    "saliency": "∂{y}/∂x",
    "smoothgrad": "mean ∂{y}/∂x over noisy copies",
    "guided_backprop": "guided ∂{y}/∂x",
    "input_x_gradient": "x · ∂{y}/∂x",
    "integrated_gradients": "integrated gradients",
    "gradient_shap": "gradient SHAP",
    "occlusion": "drop of {y} when occluded",
    "layer_gradcam": "Grad-CAM",
}


def output_symbol(output: str = "probability") -> str:
    return OUTPUT_SYMBOLS.get(output, output)


def unit(method: str, output: str = "probability") -> str:
    """The unit of ``method``'s map: ``P / intensity`` for gradients, ``P`` otherwise."""
    y = output_symbol(output)
    return f"{y} / intensity" if method in GRADIENT_METHODS else y


def attribution_label(method: str, output: str = "probability") -> str:
    """Colour-bar label of one method's map: its quantity and [unit]."""
    quantity = _QUANTITIES.get(method, method.replace("_", " ")).format(y=output_symbol(output))
    return f"{quantity} [{unit(method, output)}]"


def gradient_label(output: str = "probability") -> str:
    return attribution_label("saliency", output)


def shared_label(methods: Iterable[str], output: str = "probability") -> str:
    """Label of one colour bar shared by the maps of ``methods``."""
    units = list(dict.fromkeys(unit(m, output) for m in methods))
    return "attribution, one scale for every panel [" + " or ".join(units) + "]"


def zero_map_reason(method: str) -> str:
    """Why a map of ``method`` can be zero at every input pixel."""
    if method == "layer_gradcam":
        return (
            "no positive evidence at this layer: the gradient-weighted sum of its channels is "
            "<= 0 everywhere, and Grad-CAM keeps only its positive part (ReLU)"
        )
    if method == "occlusion":
        return "no occluded window changed the output"
    if method == "guided_backprop":
        return "no gradient passes the guided ReLUs back to the input"
    return "the output does not change with any input pixel here"


def is_zero(values: np.ndarray) -> bool:
    return bool(values.size) and not np.any(values)


def signed_limit(values: np.ndarray, percentile: float = CLIP_PERCENTILE) -> float:
    """Symmetric colour limit of a signed map: the ``percentile`` of |map| (its maximum when
    that is 0, and 1 for an all-zero map)."""
    if not values.size:
        return 1.0
    limit = float(np.percentile(np.abs(values), percentile))
    return limit if limit > 0 else float(np.abs(values).max()) or 1.0


def positive_limit(values: np.ndarray, percentile: float = CLIP_PERCENTILE) -> float:
    if not values.size:
        return 1.0
    return float(np.percentile(values, percentile)) or float(values.max()) or 1.0


def extend(values: np.ndarray, low: float, high: float) -> str:
    """Colour-bar ``extend`` argument: which ends of the map the limits clip."""
    below = bool(values.size) and float(values.min()) < low
    above = bool(values.size) and float(values.max()) > high
    return {(True, True): "both", (True, False): "min", (False, True): "max"}.get(
        (below, above), "neither"
    )


def show_signed(ax: Axes, values: np.ndarray, limit: float | None = None):
    """Draw a signed map centred on zero; returns the image artist."""
    limit = signed_limit(values) if limit is None else limit
    return ax.imshow(values, cmap=SIGNED_CMAP, vmin=-limit, vmax=limit, interpolation="nearest")


def show_map(ax: Axes, values: np.ndarray):
    """Signed colours when the map has negative values, else ``magma`` from zero."""
    if values.size and values.min() < 0:
        return show_signed(ax, values)
    top = positive_limit(values)
    return ax.imshow(values, cmap="magma", vmin=0, vmax=top, interpolation="nearest")


def add_map_colorbar(figure, artist, ax, values: np.ndarray, label: str, **kwargs):
    """A colour bar naming ``label`` whose ends show where the limits clip ``values``."""
    low, high = artist.norm.vmin, artist.norm.vmax
    return add_colorbar(figure, artist, ax, label, extend=extend(values, low, high), **kwargs)
