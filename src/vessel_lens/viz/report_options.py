"""The settings of ``vessel-lens report`` (:mod:`.report`): what it shows and how much it
computes (:class:`ReportOptions`), what surrounds the computed sections (:class:`ReportContext`),
and the cheaper method settings it runs with (:func:`report_method_options`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vessel_lens.errors import ConfigError
from vessel_lens.interpret.attribution.methods import METHODS
from vessel_lens.models.inference import DEFAULT_OVERLAP, check_tiling

SANITY_METHODS = ("saliency", "guided_backprop")
DELETION_METHODS = ("saliency", "integrated_gradients")


@dataclass
class ReportOptions:
    """What the report shows and how much it computes."""

    pixels: list[tuple[int, int]] | None = None
    """Output pixels (row, col) of every image (after cropping); default: chosen per image."""
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    """Attribution methods compared at the chosen pixels."""
    threshold: float = 0.01
    """Fraction of each pixel's own maximum |gradient| for the thresholded-gradient maps."""
    sanity_images: int = 1
    """Images (the first ones) that get the randomisation test and deletion curves; 0: none."""
    sanity_methods: list[str] = field(default_factory=lambda: list(SANITY_METHODS))
    """Methods of the randomisation test (receptive-field maps are always included)."""
    deletion_methods: list[str] = field(default_factory=lambda: list(DELETION_METHODS))
    """Methods whose order drives the deletion/insertion curves of the first pixel."""
    seed: int = 0
    """Seed of the stochastic methods, the random weights and the random orders."""
    zoom: int = 96
    """Side of the window around each target that attribution panels show (0: whole image)."""
    tile: int = 0
    """Sliding-window side for the probability of images with a longer side (0: never)."""
    overlap: float = DEFAULT_OVERLAP
    """Fraction of each sliding window shared with its neighbours."""
    shared_scale: bool = False
    """One colour scale for every attribution panel (default: each panel its own)."""

    def __post_init__(self) -> None:
        for name in (*self.methods, *self.sanity_methods, *self.deletion_methods):
            if name not in METHODS:
                raise ConfigError(f"method {name!r}: choose from {', '.join(METHODS)}")
        if not self.methods:
            raise ConfigError("--methods: give at least one attribution method")
        if not 0 < self.threshold <= 1:
            raise ConfigError(f"--threshold {self.threshold}: must be in (0, 1]")
        if self.sanity_images < 0:
            raise ConfigError("--sanity-images must be >= 0")
        if self.zoom < 0:
            raise ConfigError("--zoom must be >= 0")
        check_tiling(self.tile, self.overlap)


@dataclass
class ReportContext:
    """What heads and surrounds the computed sections: ``description`` (checkpoint, data,
    split, ...) heads the page; ``run_dir`` is a training run folder (``run_note`` says why
    there is none), and without one the Training section shows ``recorded``, the checkpoint's
    training metadata, when given; ``erf_dir`` is a receptive-field folder."""

    description: dict[str, str] | None = None
    run_dir: Path | None = None
    run_note: str = ""
    recorded: dict[str, Any] | None = None
    erf_dir: Path | None = None


def report_method_options(method: str, height: int, width: int, seed: int = 0) -> dict[str, Any]:
    """The report's (cheaper) settings of ``method`` for an image of this size."""
    if method == "integrated_gradients":
        return {"n_steps": 16, "internal_batch_size": 4}
    if method == "smoothgrad":
        return {"nt_samples": 8, "seed": seed}
    if method == "gradient_shap":
        return {"n_samples": 8, "seed": seed}
    if method == "occlusion":
        window = max(4, min(height, width) // 8)
        return {"window": window, "stride": window}
    return {}
