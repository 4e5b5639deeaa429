"""The result of :func:`~vessel_lens.interpret.receptive_field_maps`: one image's maps.

Definitions (output pixel p, gradient row g_p over the input; see the manual, docs/receptive-fields.md):

- magnitude m_p = |g_p| summed over channels (``channels="sum"``) or per channel
  (``"separate"``: every map gains a channel axis C after the fraction axis T);
- threshold t: ``global`` f * (max of m over every computed row), ``pixel`` f * max m_p,
  ``absolute`` f; count, inclusive bbox, area and fulfillment as in
  :func:`vessel_lens.interpret.thresholds.pixel_stats`;
- centroid offset: the m_p-weighted mean input position minus p, (rows, cols);
- mass radius at q: the smallest integer r such that the square of side 2r + 1 centred on p
  (clipped to the image) holds at least q of the total mass sum(m_p): Chebyshev distance,
  as RepLKNet's high-contribution area ratio uses centred squares;
- normalised: count / (largest count over the computed pixels), the original's [0, 1] map.

Pixels not computed hold -1 in integer maps and NaN in float maps. A pixel with no entry above
the threshold has count 0, box -1, area 0 and fulfillment 0 (as :class:`PixelStats`); one
whose gradient is zero everywhere has NaN centroid and mass radius.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from vessel_lens.interpret.fields._accumulate import Reduced
from vessel_lens.interpret.thresholds import PixelStats

ARRAYS = (
    "count",
    "bbox",
    "area",
    "fulfillment",
    "threshold",
    "normalised",
    "centroid_offset",
    "mass_radius",
    "peak",
    "mass",
    "probability",
    "computed",
)
"""The tensor fields, in the order they are stored."""


@dataclass
class ReceptiveFieldMaps:
    """Receptive-field maps of one image (shapes for ``channels="sum"``; with ``"separate"``
    a channel axis C follows T, or leads where there is no T).

    count (T, H, W) int32; bbox (T, H, W, 4) int32 inclusive (top, left, bottom, right);
    area (T, H, W) int32; fulfillment (T, H, W) float32; threshold (T, H, W) float64, the t
    each pixel was compared with; normalised (T, H, W) float32; centroid_offset (H, W, 2)
    float32 (d_row, d_col); mass_radius (Q, H, W) float32 for ``mass_fractions`` (Q,); peak
    (H, W) float32, max m_p; mass (H, W) float64, sum of m_p; probability (H, W) float32;
    computed (H, W) bool. ``global_max``: the largest m over every computed row (the ``global``
    mode's maximum, or the one given). ``metadata``: provenance and run details.
    """

    fractions: tuple[float, ...]
    mode: str
    channels: str
    mass_fractions: tuple[float, ...]
    global_max: float
    count: torch.Tensor
    bbox: torch.Tensor
    area: torch.Tensor
    fulfillment: torch.Tensor
    threshold: torch.Tensor
    normalised: torch.Tensor
    centroid_offset: torch.Tensor
    mass_radius: torch.Tensor
    peak: torch.Tensor
    mass: torch.Tensor
    probability: torch.Tensor
    computed: torch.Tensor
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def height(self) -> int:
        return int(self.probability.shape[-2])

    @property
    def width(self) -> int:
        return int(self.probability.shape[-1])

    @property
    def pixels(self) -> torch.Tensor:
        """Flat indices of the computed output pixels, row-major."""
        return torch.nonzero(self.computed.reshape(-1)).flatten()

    def fraction_index(self, fraction: float) -> int:
        """Index of the stored fraction nearest ``fraction`` on a log scale (fractions span
        decades: 0.03 is nearer 0.05 than 0.01). A zero is nearest only to a zero; a zero
        ``fraction`` with none stored gets the smallest stored one."""
        if fraction > 0 and any(f > 0 for f in self.fractions):
            gaps = [abs(math.log(f / fraction)) if f > 0 else math.inf for f in self.fractions]
        else:
            gaps = [abs(f - fraction) for f in self.fractions]
        return gaps.index(min(gaps))

    def stats(self, row: int, col: int, index: int = 0, channel: int = 0) -> PixelStats:
        """Pixel (row, col)'s :class:`PixelStats` at ``fractions[index]``."""
        where = (index, channel) if self.channels == "separate" else (index,)
        top, left, bottom, right = (int(v) for v in self.bbox[(*where, row, col)])
        threshold = float(self.threshold[(*where, row, col)])
        return PixelStats(threshold, int(self.count[(*where, row, col)]), top, left, bottom, right)


def _normalised(count: torch.Tensor, computed: torch.Tensor) -> torch.Tensor:
    counts = count.float()
    flat, mask = counts.flatten(-2), computed.flatten(-2)
    peak = torch.where(mask, flat, 0.0).amax(-1, keepdim=True)
    normal = torch.where(peak > 0, flat / peak.clamp_min(1), 0.0)
    return torch.where(mask, normal, float("nan")).reshape(counts.shape)


def build_maps(
    reduced: Reduced,
    *,
    fractions: tuple[float, ...],
    mode: str,
    channels: str,
    mass_fractions: tuple[float, ...],
    channels_out: int,
    probability: torch.Tensor,
    metadata: dict[str, Any],
) -> ReceptiveFieldMaps:
    """Shape the accumulator's per-slot results into maps."""
    height, width = (int(s) for s in probability.shape[-2:])
    t, q = len(fractions), len(mass_fractions)
    grid = (channels_out, height, width)
    computed_slots = reduced.computed.reshape(grid)
    count = reduced.count.reshape(t, *grid).int()
    bbox = torch.stack([reduced.top, reduced.left, reduced.bottom, reduced.right], -1)
    bbox = bbox.reshape(t, *grid, 4).int()
    empty = bbox[..., 0] < 0
    height_box = torch.where(empty, 0, bbox[..., 2] - bbox[..., 0] + 1)
    width_box = torch.where(empty, 0, bbox[..., 3] - bbox[..., 1] + 1)
    area = torch.where(computed_slots, height_box * width_box, -1).int()
    fulfillment = torch.where(area > 0, count.float() / area.clamp_min(1).float(), 0.0)
    fulfillment = torch.where(computed_slots, fulfillment, float("nan"))
    maps = {
        "count": count,
        "bbox": bbox,
        "area": area,
        "fulfillment": fulfillment,
        "threshold": reduced.threshold.reshape(t, *grid),
        "normalised": _normalised(count, computed_slots),
        "centroid_offset": reduced.centroid.reshape(*grid, 2).float(),
        "mass_radius": reduced.radius.reshape(q, *grid),
        "peak": reduced.peak.reshape(grid),
        "mass": reduced.mass.reshape(grid),
    }
    if channels == "sum":
        maps = {k: v.select(0 if k in _LEADING else 1, 0) for k, v in maps.items()}
    return ReceptiveFieldMaps(
        fractions=tuple(float(f) for f in fractions),
        mode=mode,
        channels=channels,
        mass_fractions=tuple(float(f) for f in mass_fractions),
        global_max=float(reduced.global_max),
        probability=probability.detach().float().cpu(),
        computed=computed_slots[0].clone(),
        metadata=metadata,
        **maps,
    )


_LEADING = ("centroid_offset", "peak", "mass")
"""Maps whose channel axis comes first (they have no fraction axis)."""


def _percent(fraction: float) -> str:
    return f"{100 * fraction:g}%"


def summarise(maps: ReceptiveFieldMaps) -> dict[str, Any]:
    """One image's summary statistics over its computed pixels (a row of ``summary.csv``):
    mean and median count and mean fulfillment per fraction, mean mass radii, mean centroid
    distance, mean probability and the predicted vessel fraction (channels summed or, with
    ``separate``, pooled over channels)."""
    computed = maps.computed
    row: dict[str, Any] = {
        "stem": maps.metadata.get("stem", ""),
        "height": maps.height,
        "width": maps.width,
        "pixels": int(computed.sum()),
        "mode": maps.mode,
        "global_max": maps.global_max,
    }
    for index, fraction in enumerate(maps.fractions):
        counts = maps.count[index][..., computed].float()
        row[f"count_mean_{_percent(fraction)}"] = float(counts.mean())
        # the mean of the two middle values for an even number, as numpy's median
        row[f"count_median_{_percent(fraction)}"] = float(counts.quantile(0.5))
        fulfil = maps.fulfillment[index][..., computed]
        row[f"fulfillment_mean_{_percent(fraction)}"] = float(fulfil.mean())
    for index, q in enumerate(maps.mass_fractions):
        radius = maps.mass_radius[index][..., computed]
        row[f"mass_radius_{_percent(q)}_mean"] = float(radius.nanmean())
    offsets = maps.centroid_offset[..., computed, :]
    row["centroid_distance_mean"] = float(offsets.norm(dim=-1).nanmean())
    row["probability_mean"] = float(maps.probability[computed].mean())
    # the probability is the target class's: it gives the vessel mask for class 1 only
    vessel = int(maps.metadata.get("target_class", 1)) == 1
    predicted = float((maps.probability[computed] > 0.5).float().mean())
    row["predicted_vessel_fraction"] = predicted if vessel else ""
    for key in ("strategy", "colouring", "seconds"):
        row[key] = maps.metadata.get(key, "")
    return row
