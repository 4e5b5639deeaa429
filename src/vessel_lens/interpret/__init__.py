"""Interpretation: exact Jacobians of segmentation models, receptive fields, stored results.

``jacobian(model, image)`` gives d output[pixel] / d input for every output pixel;
``iter_jacobian`` streams it chunk by chunk; ``receptive_field`` bounds which input pixels
can matter for each output pixel; ``load_jacobian`` reads what ``vessel-lens jacobian`` wrote;
``receptive_field_maps`` reduces every pixel's gradient to thresholded-gradient statistics; ``attribute`` runs Captum
attribution methods on segmentation targets; ``randomisation_test`` and ``deletion_curves``
check attributions; ``thresholds`` holds the thresholded-gradient definitions.
"""

from vessel_lens.interpret.attribution.methods import METHOD_OPTIONS, METHODS, attribute
from vessel_lens.interpret.attribution.sanity import deletion_curves, randomisation_test
from vessel_lens.interpret.attribution.targets import (
    Target,
    error_target,
    mask_target,
    pixel_target,
    predicted_vessels,
    segment_target,
)
from vessel_lens.interpret.fields.maps import ReceptiveFieldMaps
from vessel_lens.interpret.fields.store import load_receptive_field_maps, save_receptive_field_maps
from vessel_lens.interpret.fields.structural import ReceptiveField, receptive_field
from vessel_lens.interpret.fields.thresholded import (
    receptive_field_maps,
    receptive_field_maps_from_jacobian,
)
from vessel_lens.interpret.jacobian.engine import (
    OUTPUTS,
    STRATEGIES,
    JacobianEngine,
    iter_jacobian,
    jacobian,
)
from vessel_lens.interpret.jacobian.fold import fold_batch_norm
from vessel_lens.interpret.jacobian.store import LazyRows, load_jacobian
from vessel_lens.interpret.thresholds import (
    THRESHOLD_MODES,
    PixelStats,
    gradient_magnitude,
    pixel_stats,
    threshold_value,
)

__all__ = [
    "METHODS",
    "METHOD_OPTIONS",
    "OUTPUTS",
    "STRATEGIES",
    "THRESHOLD_MODES",
    "JacobianEngine",
    "LazyRows",
    "PixelStats",
    "ReceptiveField",
    "ReceptiveFieldMaps",
    "Target",
    "attribute",
    "deletion_curves",
    "error_target",
    "fold_batch_norm",
    "gradient_magnitude",
    "iter_jacobian",
    "jacobian",
    "load_jacobian",
    "load_receptive_field_maps",
    "mask_target",
    "pixel_stats",
    "pixel_target",
    "predicted_vessels",
    "randomisation_test",
    "receptive_field",
    "receptive_field_maps",
    "receptive_field_maps_from_jacobian",
    "save_receptive_field_maps",
    "segment_target",
    "threshold_value",
]
