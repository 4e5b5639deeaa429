"""Exact Jacobians: the engine (:mod:`.engine`), its strategies (:mod:`.strategies`; the
``linear`` strategy's internals live in the private :mod:`._linear`), BatchNorm folding
(:mod:`.fold`), local crops (:mod:`.local`), the on-disk store (:mod:`.store`) and the dataset
run behind ``vessel-lens jacobian`` (:mod:`.run`, with its memory budget in :mod:`.budget`)."""

from vessel_lens.interpret.jacobian.engine import (
    OUTPUTS,
    STRATEGIES,
    JacobianEngine,
    iter_jacobian,
    jacobian,
)

__all__ = ["OUTPUTS", "STRATEGIES", "JacobianEngine", "iter_jacobian", "jacobian"]
