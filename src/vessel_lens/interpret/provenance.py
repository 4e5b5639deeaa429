"""What identifies a stored result, and how a difference is named to the user.

A Jacobian store or a receptive-field map file records the settings it was computed with: the
model and its weights (:func:`provenance`, :func:`weights_hash`), the image (:func:`image_hash`)
and its crop (:func:`crop_box`); a later run compares them before it resumes, skips or refuses
the file. A refusal names the settings that differ as the options the user types, not as the
attribute names.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from vessel_lens.data.crops import CropBox, resolve_crop

if TYPE_CHECKING:
    import torch

OPTION_NAMES = {
    "source": "--checkpoint/--from-jacobian",
    "model_name": "--checkpoint (model)",
    "model_config_hash": "--checkpoint (model settings)",
    "weights_hash": "--checkpoint (weights)",
    "image_path": "--data (image file)",
    "crop_box": "--crop/--crop-box",
    "output": "--output",
    "target_class": "--target-class",
    "dtype": "--dtype",
    "pixels_hash": "--pixels/--pixel-stride",
    "fractions": "--fractions",
    "mode": "--mode",
    "channels": "--channels",
    "mass_fractions": "--mass-fractions",
}
"""The option behind each recorded setting."""
STORED_SETTINGS = (
    "model_config_hash",
    "weights_hash",
    "image_path",
    "crop_box",
    "output",
    "target_class",
    "dtype",
    "pixels_hash",
)
"""Settings that both dataset runs (``jacobian`` and ``erf``) compare before they resume, skip
or refuse an existing file; each run adds its own."""


def differences(
    existing: Mapping[str, Any], wanted: Mapping[str, Any], compared: Iterable[str]
) -> list[str]:
    """The options (as typed) whose recorded settings in ``existing`` differ from ``wanted``."""
    return list(
        dict.fromkeys(
            OPTION_NAMES.get(key, key) for key in compared if existing.get(key) != wanted.get(key)
        )
    )


def payload_hash(payload: Any) -> str:
    """Short fingerprint of a JSON-serialisable ``payload`` (a model's settings, a pixel list)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def provenance(checkpoint, output: str, target_class: int, dtype: str) -> dict[str, Any]:
    """What identifies the numbers computed from ``checkpoint``: model, weights, output."""
    return {
        "model_name": checkpoint.model_name,
        "model_kwargs": checkpoint.model_kwargs,
        "model_config_hash": payload_hash(
            {"name": checkpoint.model_name, "kwargs": checkpoint.model_kwargs}
        ),
        "weights_hash": weights_hash(checkpoint.state_dict),
        "checkpoint": str(checkpoint.path),
        "output": output,
        "target_class": target_class,
        "dtype": dtype,
    }


def image_hash(image: torch.Tensor) -> str:
    """Fingerprint of the (C, H, W) input a file was computed from (float32 values), so that a
    file is never taken for another image that happens to share its name."""
    data = image.detach().float().cpu().contiguous().numpy().tobytes()
    return hashlib.sha256(data).hexdigest()[:16]


def weights_hash(state_dict: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        digest.update(name.encode())
        digest.update(state_dict[name].detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def crop_box(
    height: int, width: int, crop: int | None, stem: str, box: CropBox | None = None
) -> CropBox:
    """(top, left, height, width) of an image: ``box`` when given (it must lie inside),
    otherwise the centred ``crop`` square; the whole image for ``crop`` 0."""
    return resolve_crop(height, width, stem, crop, box)
