"""The proof harness: exactness of the engine and the structural field checked against plain
autograd (:mod:`.check`) on models drawn from a grammar of layers (:mod:`.grammar`)."""

from vessel_lens.interpret.proof.check import check_model, directional_error, reference_jacobian

__all__ = ["check_model", "directional_error", "reference_jacobian"]
