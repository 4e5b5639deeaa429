"""Trust checks for attributions of segmentation targets.

**Model-parameter randomisation** (Adebayo et al., "Sanity checks for saliency maps", 2018): an
explanation that depends on what the model learned must change when the learned weights are
replaced by random ones. The model's *stages* (:func:`parameter_stages`) are re-initialised on
copies (the model passed in is never modified):

``cascading``    from the head towards the stem, cumulatively: step k has the last k stages
                 random;
``independent``  one stage at a time, every other stage trained.

Re-initialisation is what a fresh model gets: He-normal weights (fan-in, ReLU gain, as the
reference model's constructor), zero biases, BatchNorm γ = 1, β = 0 and running mean 0 /
variance 1. Each stage's random weights come from a generator seeded by ``seed`` and the stage's
name, so a stage gets the same weights in both modes.

Similarity between the trained model's map a and the randomised model's map b, both reduced
to (H, W) as |map| summed over channels and cropped to the bounding box of the pixels where
either is non-zero (grown to at least 7x7 for SSIM's window). Outside that box both maps are
exactly zero whatever the weights (it is outside the receptive field of a pixel target), and
counting those pixels would make any two maps of a large image look alike (on VessMAP, full
256x256 maps gave Spearman > 0.99 even for a fully random model):

- Spearman rank correlation of the two maps' pixels (NaN when one map is constant);
- SSIM (scikit-image ``structural_similarity``, default 7x7 window) of the maps each divided by
  its own maximum (data range 1);
- for thresholded-gradient (receptive-field) maps, the masks {|g| summed over channels > t} of
  the target's gradient g with t = ``rf_fraction`` x the map's own maximum (mode ``pixel`` of
  :mod:`~vessel_lens.interpret.thresholds`): their IoU and the SSIM of the two 0/1 masks.

Deletion and insertion curves live in :mod:`vessel_lens.interpret.attribution.deletion` and are exported
here.
"""

from __future__ import annotations

import copy
import math
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import stats
from skimage.metrics import structural_similarity
from torch import nn
from tqdm import tqdm

from vessel_lens.errors import ConfigError
from vessel_lens.interpret.attribution.deletion import (
    CURVE_MODES,
    ORDERS,
    REPLACEMENTS,
    DeletionResult,
    deletion_curve,
    deletion_curves,
    replacement_image,
)
from vessel_lens.interpret.attribution.methods import (
    as_image_batch,
    as_target,
    attribute,
    hides_layers,
)
from vessel_lens.interpret.attribution.targets import Target
from vessel_lens.interpret.thresholds import gradient_magnitude, threshold_value
from vessel_lens.models.inference import frozen_eval, model_device

RANDOMISATION_MODES = ("cascading", "independent")
THRESHOLDED_MASK = "receptive_field"
"""Method name of the thresholded-gradient mask rows of a :class:`RandomisationResult` (the
1 % mask of :func:`thresholded_gradient_mask`, not the structural receptive field of
:mod:`vessel_lens.interpret.fields.structural`); the value is what tables and files have
always called these rows."""


@torch.no_grad()
def parameter_stages(model: nn.Module, image: torch.Tensor) -> list[str]:
    """Names of the model's stages in execution order.

    A stage is a top-level child module holding parameters, with ``nn.ModuleList`` children
    split into their items (``stem``, ``encoder.0`` ... ``encoder.3``, ``decoder.0`` ...,
    ``head`` in ``resnet_seg``); a model whose parameters all lie in one child (a wrapper,
    MONAI's ``UNet``) is looked into. The order is that of the first call in one forward pass;
    stages never called are left out. Where no stage can be seen being called (TorchScript
    and exported programs run their layers inside them), the order is the definition order.
    """
    candidates = _candidates(model, "")
    order: list[str] = []
    handles = []
    try:
        for name, module in candidates:
            handles.append(
                module.register_forward_pre_hook(
                    lambda _m, _i, name=name: order.append(name) if name not in order else None
                )
            )
    except RuntimeError:  # ScriptModules take no hooks
        pass
    try:
        with frozen_eval(model):
            model(as_image_batch(image).to(model_device(model)))
    finally:
        for handle in handles:
            handle.remove()
    if not order and hides_layers(model):
        order = [name for name, _ in candidates]
    if not order:
        raise ConfigError(f"{type(model).__name__}: found no stage with parameters")
    return order


def _candidates(model: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
    candidates: list[tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        if isinstance(child, nn.ModuleList):
            candidates += [(f"{prefix}{name}.{i}", item) for i, item in enumerate(child)]
        else:
            candidates.append((f"{prefix}{name}", child))
    candidates = [(n, m) for n, m in candidates if any(True for _ in m.parameters())]
    own = any(True for _ in model.parameters(recurse=False))
    if len(candidates) == 1 and not own and any(True for _ in candidates[0][1].children()):
        name, child = candidates[0]
        return _candidates(child, f"{name}.")
    return candidates


def _stage_seed(seed: int, name: str) -> int:
    return (int(seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


@torch.no_grad()
def reinitialise(module: nn.Module, seed: int) -> None:
    """Re-initialise ``module`` in place as a fresh model would be (see module docs)."""
    generator = torch.Generator().manual_seed(int(seed))
    for sub in module.modules():
        if isinstance(sub, nn.modules.batchnorm._BatchNorm):
            sub.reset_parameters()
            continue
        for name, parameter in sub.named_parameters(recurse=False):
            if parameter.dim() >= 2:
                fan_in = parameter.shape[1] * math.prod(parameter.shape[2:])
                values = torch.randn(parameter.shape, generator=generator)
                parameter.copy_(values * math.sqrt(2.0 / fan_in))
            elif name == "bias":
                parameter.zero_()
            else:
                parameter.fill_(1.0)


def randomised_copy(model: nn.Module, stages: Sequence[str], seed: int = 0) -> nn.Module:
    """A deep copy of ``model`` with the named stages re-initialised."""
    clone = copy.deepcopy(model)
    modules = dict(clone.named_modules())
    for name in stages:
        if name not in modules:
            raise ConfigError(f"stage {name!r} is not a module of {type(model).__name__}")
        reinitialise(modules[name], _stage_seed(seed, name))
    return clone


def _reduce(attribution: torch.Tensor) -> np.ndarray:
    return attribution.detach().abs().sum(0).double().cpu().numpy()


def support_box(a: np.ndarray, b: np.ndarray, minimum: int = 7) -> tuple[slice, slice]:
    """Bounding box of the pixels where ``a`` or ``b`` is non-zero, grown to ``minimum``."""
    support = (a != 0) | (b != 0)
    if not support.any():
        return slice(None), slice(None)
    box = []
    for axis in (1, 0):
        hits = np.nonzero(support.any(axis=axis))[0]
        low, high, size = int(hits[0]), int(hits[-1]) + 1, support.shape[1 - axis]
        grow = max(minimum - (high - low), 0)
        low = max(min(low - grow // 2, size - max(minimum, high - low)), 0)
        high = min(max(high, low + minimum), size)
        box.append(slice(low, high))
    return box[0], box[1]


def similarity(reference: torch.Tensor, other: torch.Tensor) -> dict[str, float]:
    """Spearman and SSIM of |reference| vs |other|, both (C, H, W) (see module docs)."""
    a, b = _reduce(reference), _reduce(other)
    box = support_box(a, b)
    a, b = a[box], b[box]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        rho = float(stats.spearmanr(a.ravel(), b.ravel()).statistic)
    a = a / a.max() if a.max() > 0 else a
    b = b / b.max() if b.max() > 0 else b
    return {"spearman": rho, "ssim": float(structural_similarity(a, b, data_range=1.0))}


def thresholded_gradient_mask(gradient: torch.Tensor, fraction: float = 0.01) -> torch.Tensor:
    """{|gradient| summed over channels > fraction x its maximum}: (C, H, W) -> bool (H, W)."""
    magnitude = gradient_magnitude(gradient.detach().cpu())
    return magnitude > threshold_value(magnitude, fraction, "pixel")


def mask_similarity(reference: torch.Tensor, other: torch.Tensor) -> dict[str, float]:
    """IoU and SSIM of two bool (H, W) masks (SSIM on the box of their union)."""
    union = int((reference | other).sum())
    iou = int((reference & other).sum()) / union if union else 1.0
    a, b = reference.double().numpy(), other.double().numpy()
    box = support_box(a, b)
    a, b = a[box], b[box]
    return {"iou": iou, "ssim": float(structural_similarity(a, b, data_range=1.0))}


@dataclass
class RandomisationResult:
    """Similarities per randomisation step, method and target.

    ``steps[k]`` names what step k randomised (cascading: the stage added at that step).
    Each row: ``mode``, ``step``, ``stage``, ``method``, ``target``, then ``spearman`` and
    ``ssim`` (attribution methods) or ``iou``, ``ssim``, ``count_trained``,
    ``count_random`` (method :data:`THRESHOLDED_MASK`).
    """

    mode: str
    steps: list[str]
    methods: list[str]
    targets: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)

    def series(self, method: str, metric: str) -> list[float]:
        """Mean of ``metric`` over targets at each step (NaN values skipped)."""
        values = []
        for step in range(len(self.steps)):
            picked = [
                float(r[metric])
                for r in self.rows
                if r["step"] == step and r["method"] == method and metric in r
            ]
            finite = [v for v in picked if not math.isnan(v)]
            values.append(float(np.mean(finite)) if finite else float("nan"))
        return values


def randomisation_test(
    model: nn.Module,
    image: torch.Tensor,
    targets: Sequence[Target | tuple[int, int]],
    methods: Sequence[str] = ("saliency",),
    mode: str = "cascading",
    stages: Sequence[str] | None = None,
    seed: int = 0,
    rf_fraction: float | None = 0.01,
    method_options: dict[str, dict[str, Any]] | None = None,
    progress: bool = False,
) -> RandomisationResult:
    """Compare attributions of the trained ``model`` with those of randomised copies.

    Args:
        image: (C, H, W) or (H, W).
        targets: what to explain (targets or (row, col) pixels).
        methods: attribution methods (:data:`~vessel_lens.interpret.attribution.methods.METHODS`).
        mode: ``cascading`` or ``independent``.
        stages: stage names in execution order (default :func:`parameter_stages`); both modes
            walk them from the last (the head) to the first.
        seed: seed of the random weights.
        rf_fraction: threshold fraction of the receptive-field maps; ``None`` skips them.
        method_options: options per method, passed to ``attribute``.

    Examples:
        >>> import torch
        >>> from vessel_lens.models import create_model
        >>> _ = torch.manual_seed(0)
        >>> model = create_model("resnet_seg", width=2).eval()  # or any (B, C, H, W) -> (B, K, H, W) net
        >>> image = torch.rand(1, 32, 32)  # (C, H, W)
        >>> from vessel_lens.interpret import randomisation_test
        >>> result = randomisation_test(model, image, [(16, 16)], methods=["saliency"])
        >>> result.methods, len(result.steps) > 1  # one row per method, target and stage
        (['saliency'], True)
    """
    if mode not in RANDOMISATION_MODES:
        raise ConfigError(f"randomisation mode {mode!r}: choose {' or '.join(RANDOMISATION_MODES)}")
    if not methods and rf_fraction is None:
        raise ConfigError("randomisation test: give at least one method or rf_fraction")
    options = method_options or {}
    shape = (int(image.shape[-2]), int(image.shape[-1]))
    chosen = [as_target(t, shape) for t in targets]
    if not chosen:
        raise ConfigError("randomisation test: give at least one target")
    order = list(stages) if stages is not None else parameter_stages(model, image)
    walk = order[::-1]

    signed_saliency = "saliency" in methods and not options.get("saliency", {}).get("abs", False)

    def maps(net: nn.Module) -> dict[tuple[str, int], torch.Tensor]:
        out = {}
        for i, target in enumerate(chosen):
            for method in methods:
                out[method, i] = attribute(net, image, target, method, **options.get(method, {}))
            if rf_fraction is not None:
                gradient = (
                    out["saliency", i]
                    if signed_saliency
                    else attribute(net, image, target, "saliency", abs=False)
                )
                out[THRESHOLDED_MASK, i] = thresholded_gradient_mask(gradient, rf_fraction)
        return out

    reference = maps(model)
    result = RandomisationResult(mode, walk, list(methods), [t.name for t in chosen])
    for step in tqdm(range(len(walk)), desc=f"{mode} randomisation", disable=not progress):
        randomised = walk[: step + 1] if mode == "cascading" else [walk[step]]
        current = maps(randomised_copy(model, randomised, seed))
        for (method, i), value in current.items():
            row = {"mode": mode, "step": step, "stage": walk[step], "method": method}
            row["target"] = chosen[i].name
            if method == THRESHOLDED_MASK:
                row.update(mask_similarity(reference[method, i], value))
                row["count_trained"] = int(reference[method, i].sum())
                row["count_random"] = int(value.sum())
            else:
                row.update(similarity(reference[method, i], value))
            result.rows.append(row)
    return result


__all__ = [
    "CURVE_MODES",
    "ORDERS",
    "RANDOMISATION_MODES",
    "REPLACEMENTS",
    "THRESHOLDED_MASK",
    "DeletionResult",
    "RandomisationResult",
    "deletion_curve",
    "deletion_curves",
    "mask_similarity",
    "parameter_stages",
    "randomisation_test",
    "randomised_copy",
    "reinitialise",
    "replacement_image",
    "similarity",
    "support_box",
    "thresholded_gradient_mask",
]
