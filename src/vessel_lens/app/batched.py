"""The Captum methods as the app runs them: in batches of bounded size, with progress, a
cancel, and a private copy of the model.

:func:`~vessel_lens.interpret.attribution.methods.attribute` evaluates integrated gradients' 50 steps,
SmoothGrad's and GradientSHAP's 16 samples in one batch by default: 3.2 GiB above the
server's base for integrated gradients on a 256x256 view with the width-16 model. Here each
method gets the batch size whose reservation fits :data:`BATCH_SHARE` of the memory budget
(:meth:`~vessel_lens.app.costs.Costs.batch_size`): ``internal_batch_size`` for integrated
gradients, ``batch_size`` for SmoothGrad, ``perturbations_per_eval`` for occlusion (at most
its default, 4), and GradientSHAP's samples in several calls of at most that many (each
seeded ``seed + i``: the same estimator as one call, other random draws). The model is
wrapped so that every forward pass (one batch) reports progress and calls
:meth:`~vessel_lens.app.work.Slot.pause`: waiting hovers run between batches, and a cancelled
run stops at the next batch.

A run takes a private copy of the model (``AppState.attribution``), so that it needs no lock on
the shared one, whose hooks and modes it would otherwise hold for minutes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from vessel_lens.app.costs import Costs
from vessel_lens.app.work import Slot
from vessel_lens.interpret.attribution.methods import METHOD_OPTIONS
from vessel_lens.interpret.attribution.targets import Target

BATCH_SHARE = 4
"""A batch may reserve at most 1 / BATCH_SHARE of the budget (several runs fit at once)."""


@dataclass(frozen=True)
class Plan:
    """How one method runs on one view: its options, its calls and its reservation."""

    method: str
    options: dict
    calls: list[dict]
    """Options of each call of ``attribute`` (several for GradientSHAP), merged into
    ``options``; the results are averaged with weights ``weights``."""
    weights: list[float]
    passes: int
    """Forward passes expected in all (for the progress shown)."""
    nbytes: int
    """Bytes to reserve while it runs."""


def _occlusion_passes(height: int, width: int, options: dict) -> int:
    window = int(options["window"])
    stride = int(options["stride"]) if options["stride"] is not None else max(window // 2, 1)
    shifts = [math.ceil(max(side - window, 0) / stride) + 1 for side in (height, width)]
    return 1 + math.ceil(shifts[0] * shifts[1] / int(options["perturbations_per_eval"]))


def plan(method: str, height: int, width: int, channels: int, costs: Costs, budget: int) -> Plan:
    """The batched run of ``method`` on an ``height`` x ``width`` view."""
    pixels = height * width
    defaults = dict(METHOD_OPTIONS[method])
    limit = budget // BATCH_SHARE

    def fit(most: int) -> int:
        return costs.batch_size(pixels, limit, most, channels)

    options: dict = {}
    calls: list[dict] = [{}]
    weights = [1.0]
    batch = 1
    if method == "integrated_gradients":
        batch = fit(int(defaults["n_steps"]))
        options["internal_batch_size"] = batch
        passes = math.ceil(int(defaults["n_steps"]) / batch)
    elif method == "smoothgrad":
        batch = fit(int(defaults["nt_samples"]))
        options["batch_size"] = batch
        passes = math.ceil(int(defaults["nt_samples"]) / batch)
    elif method == "gradient_shap":
        total = int(defaults["n_samples"])
        batch = fit(total)
        sizes = [min(batch, total - start) for start in range(0, total, batch)]
        seed = int(defaults["seed"])
        calls = [{"n_samples": n, "seed": seed + i} for i, n in enumerate(sizes)]
        weights = [n / total for n in sizes]
        passes = len(sizes)
    elif method == "occlusion":
        batch = fit(int(defaults["perturbations_per_eval"]))
        options["perturbations_per_eval"] = batch
        passes = _occlusion_passes(height, width, {**defaults, **options})
    elif method == "layer_gradcam":
        passes = 3  # the default layer's search, the attribution, the layer's size
    else:
        passes = 1
    return Plan(method, options, calls, weights, passes, costs.samples(pixels, batch, channels))


class _Batches(nn.Module):
    """``model`` with ``before(batch size)`` called ahead of each forward pass."""

    def __init__(self, model: nn.Module, before: Callable[[int], None]):
        super().__init__()
        self.model = model
        self.before = before

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.before(int(images.shape[0]))
        return self.model(images)


def run(
    run_plan: Plan,
    model: nn.Module,
    image: torch.Tensor,
    target: Target,
    slot: Slot,
    progress: Callable[[float], None] | None = None,
) -> torch.Tensor:
    """The attribution (C, H, W) float32 of ``target`` by the planned method, batch by batch
    inside ``slot``; ``model`` is the caller's private copy (its hooks and modes change)."""
    from vessel_lens.interpret.attribution.methods import attribute

    done = [0]

    def before(_batch: int) -> None:
        if done[0]:
            slot.pause()
        else:
            slot.check()
        done[0] += 1
        if progress is not None:
            progress(min(done[0] / max(run_plan.passes, 1), 0.99))

    wrapped = _Batches(model, before)
    total = None
    for call, weight in zip(run_plan.calls, run_plan.weights, strict=True):
        options = {**run_plan.options, **call}
        result = attribute(wrapped, image, target, method=run_plan.method, **options)
        total = result * weight if total is None else total + result * weight
    if progress is not None:
        progress(1.0)
    return total
