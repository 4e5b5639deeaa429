"""Thresholded gradients of one output pixel: the definitions shared by the receptive-field maps,
the report and the app.

For an output pixel p with gradient g_p (C, H, W):

- magnitude m_p = |g_p| summed over channels (or per channel, ``channels="separate"``);
- threshold t: mode ``global``: t = f * (max of |g| over the whole image's Jacobian);
  ``pixel``: t = f * max m_p; ``absolute``: t = f given directly. ``f`` is always a fraction
  (0.01 means 1 %);
- count = #{input pixels with m_p > t}; bbox = smallest box holding them (inclusive
  corners); area = its height x width; fulfillment = count / area.

The original code compared against 1 % of the *signed* maximum, which is wrong whenever the
largest-magnitude gradient is negative; here thresholds always apply to magnitudes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from vessel_lens.errors import ConfigError

THRESHOLD_MODES = ("global", "pixel", "absolute")


def gradient_magnitude(gradient: torch.Tensor) -> torch.Tensor:
    """|g| summed over channels: (C, H, W) -> (H, W); (N, C, H, W) -> (N, H, W).

    Examples:
        >>> import torch
        >>> from vessel_lens.interpret import gradient_magnitude
        >>> gradient_magnitude(torch.tensor([[[1.0, -2.0]], [[-3.0, 0.5]]]))  # (C=2, H=1, W=2)
        tensor([[4.0000, 2.5000]])
    """
    if gradient.dim() not in (3, 4):
        raise ConfigError(
            f"gradient must be (C, H, W) or (N, C, H, W), not {tuple(gradient.shape)}"
        )
    return gradient.abs().sum(dim=-3)


def check_fraction(fraction: float, mode: str) -> None:
    if mode not in THRESHOLD_MODES:
        raise ConfigError(f"threshold mode {mode!r}: choose one of {', '.join(THRESHOLD_MODES)}")
    if not fraction >= 0 or (mode != "absolute" and fraction > 1):
        raise ConfigError(
            f"threshold fraction {fraction}: must be in [0, 1] for mode {mode!r} "
            "(0.01 means 1 % of the maximum)"
        )


def threshold_value(
    magnitude: torch.Tensor, fraction: float, mode: str, global_max: float | None = None
) -> float:
    """The threshold t for one pixel's magnitude map (see module docstring).

    Examples:
        >>> import torch
        >>> from vessel_lens.interpret import threshold_value
        >>> magnitude = torch.tensor([[0.0, 2.0], [4.0, 1.0]])
        >>> threshold_value(magnitude, 0.25, "pixel")  # 25 % of this pixel's maximum
        1.0
        >>> threshold_value(magnitude, 0.25, "global", global_max=10.0)  # of the image's maximum
        2.5
        >>> threshold_value(magnitude, 0.25, "absolute")
        0.25
    """
    check_fraction(fraction, mode)
    if mode == "absolute":
        return float(fraction)
    if mode == "pixel":
        return float(fraction) * float(magnitude.max())
    if global_max is None:
        raise ConfigError("mode 'global' needs the maximum over the whole Jacobian (global_max)")
    return float(fraction) * float(global_max)


@dataclass(frozen=True)
class PixelStats:
    """Thresholded-gradient statistics of one output pixel. Box corners are inclusive;
    with no pixel above the threshold, count is 0 and the box fields are -1 / 0."""

    threshold: float
    count: int
    top: int
    left: int
    bottom: int
    right: int

    @property
    def height(self) -> int:
        return self.bottom - self.top + 1 if self.count else 0

    @property
    def width(self) -> int:
        return self.right - self.left + 1 if self.count else 0

    @property
    def area(self) -> int:
        return self.height * self.width

    @property
    def fulfillment(self) -> float:
        return self.count / self.area if self.area else 0.0

    def as_dict(self) -> dict[str, float | int]:
        values = asdict(self)
        values.update(
            height=self.height, width=self.width, area=self.area, fulfillment=self.fulfillment
        )
        return values


def pixel_stats(magnitude: torch.Tensor, threshold: float) -> PixelStats:
    """Count, bounding box and fulfillment of ``magnitude`` (H, W) above ``threshold``.

    Examples:
        >>> import torch
        >>> from vessel_lens.interpret import pixel_stats
        >>> magnitude = torch.zeros(8, 8)
        >>> magnitude[2, 3] = magnitude[4, 6] = 1.0
        >>> stats = pixel_stats(magnitude, threshold=0.5)
        >>> stats.count, (stats.top, stats.left, stats.bottom, stats.right), stats.fulfillment
        (2, (2, 3, 4, 6), 0.16666666666666666)
    """
    if magnitude.dim() != 2:
        raise ConfigError(f"magnitude must be (H, W), not {tuple(magnitude.shape)}")
    above = magnitude > threshold
    count = int(above.sum())
    if count == 0:
        return PixelStats(float(threshold), 0, -1, -1, -1, -1)
    rows = torch.nonzero(above.any(dim=1)).flatten()
    cols = torch.nonzero(above.any(dim=0)).flatten()
    return PixelStats(
        float(threshold), count, int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1])
    )
