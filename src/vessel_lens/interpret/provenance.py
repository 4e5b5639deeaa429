"""What identifies a stored result, and how a difference is named to the user.

A Jacobian store or a receptive-field map file records the settings it was computed with; a
later run compares them before it resumes, skips or refuses the file. A refusal names the
settings that differ as the options the user types, not as the attribute names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

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


def differences(
    existing: Mapping[str, Any], wanted: Mapping[str, Any], compared: Iterable[str]
) -> list[str]:
    """The options (as typed) whose recorded settings in ``existing`` differ from ``wanted``."""
    return list(
        dict.fromkeys(
            OPTION_NAMES.get(key, key) for key in compared if existing.get(key) != wanted.get(key)
        )
    )
