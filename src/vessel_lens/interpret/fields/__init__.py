"""Receptive fields, in two senses kept apart by name.

The *structural* receptive field (:mod:`.structural`) bounds which input pixels can matter for
each output pixel, from the model's wiring alone. The *thresholded* receptive-field maps
(:mod:`.thresholded`, held in :class:`.maps.ReceptiveFieldMaps`) measure where each pixel's
gradient is large, with their accumulation (:mod:`._accumulate`), colouring (:mod:`._colour`),
file format (:mod:`.store`), the dataset run behind ``vessel-lens erf`` (:mod:`.run`,
:mod:`._jobs`) and their statistics over a dataset (:mod:`.stats`)."""
