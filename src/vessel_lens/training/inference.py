"""Vessel probabilities from a model: moved to :mod:`vessel_lens.models.inference`; the public
names are re-exported here so that existing imports keep working."""

from vessel_lens.models.inference import DEFAULT_OVERLAP, check_tiling, vessel_probability

__all__ = ["DEFAULT_OVERLAP", "check_tiling", "vessel_probability"]
