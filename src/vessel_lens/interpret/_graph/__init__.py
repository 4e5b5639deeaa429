"""The recorded graph of a model, shared by the structural receptive field and the ``linear``
Jacobian strategy: the tape of ATen calls (:mod:`.tape`), the one table of operations both read
(:mod:`.ops`), per-axis index maps (:mod:`.axes`) and the structural boxes propagated backwards
through the tape (:mod:`.boxes`). Private to :mod:`vessel_lens.interpret`."""
