"""The ``linear`` Jacobian strategy: the model's recorded ops prepared as linear maps
(:mod:`.prepare`), their backward rules (:mod:`.rules`, :mod:`.rules_norm`,
:mod:`.rules_resample`) over windowed cotangents (:mod:`.window`, :mod:`.tiles`), cached
derived constants (:mod:`.constants`) and the allocator setting that keeps freed buffers
(:mod:`.allocator`); :mod:`.strategy` puts them together. Private to
:mod:`vessel_lens.interpret.jacobian`."""
