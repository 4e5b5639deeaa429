"""Attribution: the Captum methods as a registry (:mod:`.methods`), the segmentation targets
they explain (:mod:`.targets`), and the checks of an attribution (:mod:`.sanity`, with deletion
curves in :mod:`.deletion`)."""

from vessel_lens.interpret.attribution.methods import METHOD_OPTIONS, METHODS, attribute

__all__ = ["METHODS", "METHOD_OPTIONS", "attribute"]
