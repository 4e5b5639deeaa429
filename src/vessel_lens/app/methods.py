"""Registry of the maps the app can show for a selected pixel ("attribution methods").

``gradient`` — the exact Jacobian row of the pixel's vessel probability, from the prepared
engine (one backward pass, cached) — is always there and fast enough to follow the mouse.
The Captum methods of :mod:`vessel_lens.interpret.attribution.methods` are added by
:func:`discover_methods` when that module and Captum import; they cost from one to hundreds
of passes, so they run on click only, in the background: until its map is in the cache, such a
method raises :class:`Pending`, whose ``run`` computes it (batched and cancellable, see
:mod:`vessel_lens.app.batched`). Other code may add a method with :func:`register_method`.

Targets: the gradient explains one pixel; the Captum methods may also explain the vessel
segment around the pixel (in the prediction or the label) or the false-positive /
false-negative region of the view, as defined in :mod:`vessel_lens.interpret.attribution.targets`.
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch

from vessel_lens.errors import ConfigError

TARGETS = {
    "pixel": "the pixel",
    "segment": "vessel segment around it (prediction)",
    "segment_label": "vessel segment around it (label)",
    "false_positive": "false-positive region of the view",
    "false_negative": "false-negative region of the view",
}


@dataclass(frozen=True)
class Method:
    """``compute(state, model_key, view, row, col, target)`` → ((C, H, W) map, description),
    or :class:`Pending` when the map still has to be computed."""

    name: str
    label: str
    live: bool
    compute: Callable[..., tuple[torch.Tensor, str]]
    targets: tuple[str, ...] = ("pixel",)


class Pending(Exception):
    """A slow map is not computed yet: ``run(cancel, progress)`` computes it into the cache."""

    def __init__(self, key: tuple, label: str, run: Callable[..., None]):
        super().__init__(label)
        self.key, self.label, self.run = key, label, run


_METHODS: dict[str, Method] = {}
_LOCK = threading.Lock()


def register_method(method: Method) -> None:
    with _LOCK:
        _METHODS[method.name] = method


def methods() -> dict[str, Method]:
    with _LOCK:
        return dict(_METHODS)


def get_method(name: object) -> Method:
    found = methods().get(name) if isinstance(name, str) else None
    if found is None:
        raise ConfigError(f"unknown method {str(name)[:40]!r}; available: {', '.join(methods())}")
    return found


def _gradient(state, model_key, view, row, col, target) -> tuple[torch.Tensor, str]:
    gradient, source = state.gradient(model_key, view, row, col)
    return gradient, f"d p({row}, {col}) / d input, {source}"


def _target(state, model_key, view, row, col, kind):
    from vessel_lens.interpret.attribution import targets

    shape = (view.height, view.width)
    if kind == "pixel":
        return targets.pixel_target(row, col, shape)
    prediction = torch.from_numpy(state.probability(model_key, view) > 0.5)
    label = view.crop(state.sample(view.key).label)
    if kind in ("segment_label", "false_positive", "false_negative") and label is None:
        raise ConfigError("this image has no label; choose another target")
    if kind == "segment":
        return targets.segment_target(prediction, row, col, source="prediction")
    if kind == "segment_label":
        return targets.segment_target(label, row, col, source="label")
    if kind in ("false_positive", "false_negative"):
        return targets.error_target(prediction, label, kind)
    raise ConfigError(f"unknown target {str(kind)[:40]!r}; choose one of {', '.join(TARGETS)}")


def _captum(name: str) -> Callable[..., tuple[torch.Tensor, str]]:
    def compute(state, model_key, view, row, col, target):
        chosen = _target(state, model_key, view, row, col, target)
        key = ("attribution", name, model_key, view, target, chosen.name)
        cached = state.gradients.get(key)
        if cached is not None:
            return cached, f"{name} of {chosen.name}"

        def run(cancel, progress):
            values = state.attribution(name, model_key, view, chosen, cancel, progress)
            state.gradients.put(key, values.float())

        raise Pending(key, name.replace("_", " "), run)

    return compute


def discover_methods() -> list[str]:
    """Register the gradient, and the Captum methods when they can run; returns the names."""
    register_method(Method("gradient", "Gradient (exact Jacobian row)", True, _gradient))
    if importlib.util.find_spec("captum") is not None:
        try:
            from vessel_lens.interpret.attribution.methods import METHODS
        except ImportError:
            METHODS = ()
        for name in METHODS:
            label = name.replace("_", " ").capitalize() + " (Captum, on click)"
            register_method(Method(name, label, False, _captum(name), tuple(TARGETS)))
    return list(methods())
