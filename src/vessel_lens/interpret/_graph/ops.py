"""The one table of ATen operations that the structural receptive field (:mod:`.boxes`) and
the ``linear`` strategy (:mod:`vessel_lens.interpret.jacobian._linear.prepare`,
:mod:`vessel_lens.interpret.jacobian._linear.rules`) know, by kind.

Both read their sets from here, so an operation added to a kind gets a structural rule and a
linear rule at once (or neither). Membership is only a claim about *what* an operation does;
the conditions under which a rule applies (a BatchNorm's ``training`` flag, which dimension a
softmax runs over) are checked by the rules themselves.
"""

from __future__ import annotations

import torch

from vessel_lens.interpret._graph.tape import Entry

aten = torch.ops.aten

ACTIVATIONS = frozenset(
    {
        aten.relu.default,
        aten.leaky_relu.default,
        aten.hardtanh.default,
        aten.elu.default,
        aten.gelu.default,
        aten.silu.default,
        aten.sigmoid.default,
        aten.tanh.default,
        aten.clamp.default,
        aten.clamp_min.default,
        aten.clamp_max.default,
        aten.hardswish.default,
        aten.hardsigmoid.default,
        aten.softplus.default,
        aten.mish.default,
        aten._prelu_kernel.default,
    }
)
"""Element-wise functions of one tensor (further arguments are constants, such as PReLU's
weight); their derivative is read from the recorded input."""

BINARY = frozenset({aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor, aten.div.Tensor})
"""Element-wise functions of two tensors, with broadcasting."""

SCALAR = frozenset(
    {aten.mul.Scalar, aten.div.Scalar, aten.neg.default, aten.add.Scalar, aten.sub.Scalar}
)
"""Element-wise functions of one tensor and a Python number."""

IDENTITY = frozenset(
    {aten.alias.default, aten.detach.default, aten.clone.default, aten.contiguous.default}
)
"""Operations that return their input's values."""

VIEWS = frozenset(
    {
        aten.view.default,
        aten._unsafe_view.default,
        aten.reshape.default,
        aten.squeeze.dim,
        aten.squeeze.dims,
        aten.squeeze.default,
        aten.unsqueeze.default,
        aten.permute.default,
        aten.transpose.int,
        aten.expand.default,
    }
)
"""Operations that rearrange (or broadcast) elements without computing: each output element is
one input element. Whether the spatial layout survives is decided per call."""

BATCH_NORM_TRAINING_FLAG = {
    aten.native_batch_norm.default: 5,
    aten.cudnn_batch_norm.default: 5,  # what eval-mode BatchNorm dispatches to on CUDA
    aten.miopen_batch_norm.default: 5,
    aten._native_batch_norm_legit.default: 5,
    aten._native_batch_norm_legit.no_stats: 3,
    aten._native_batch_norm_legit_no_training.default: None,
}
"""BatchNorm variants (input first, then weight and bias) and the position of their
``training`` flag (None: always eval). With ``training`` set, the statistics are the input's
own (BatchNorm without running statistics, InstanceNorm): every position depends on every
other of its channel."""

GROUP_NORM = aten.native_group_norm.default
LAYER_NORM = aten.native_layer_norm.default
SOFTMAX = frozenset({aten._softmax.default, aten._log_softmax.default})
REDUCTIONS = frozenset({aten.mean.dim, aten.sum.dim_IntList, aten.amax.default, aten.amin.default})
"""Reductions over the listed dimensions (``keepdim`` or not)."""

CONSTANT_PAD = aten.constant_pad_nd.default
INDEX_PADS = frozenset({aten.reflection_pad2d.default, aten.replication_pad2d.default})
"""Pads that copy input pixels into the border: each output pixel is one input pixel."""

CONVOLUTION = aten.convolution.default
MAX_POOL = aten.max_pool2d_with_indices.default
AVG_POOL = aten.avg_pool2d.default
ADAPTIVE_MAX_POOL = aten.adaptive_max_pool2d.default
SLICE = aten.slice.Tensor
CAT = aten.cat.default

RESAMPLING = frozenset(
    {
        aten.upsample_nearest2d.default,
        aten.upsample_nearest2d.vec,
        aten._upsample_nearest_exact2d.default,
        aten._upsample_nearest_exact2d.vec,
        aten.upsample_bilinear2d.default,
        aten.upsample_bilinear2d.vec,
        aten.upsample_bicubic2d.default,
        aten.upsample_bicubic2d.vec,
        aten._upsample_bilinear2d_aa.default,
        aten._upsample_bilinear2d_aa.vec,
        aten._upsample_bicubic2d_aa.default,
        aten._upsample_bicubic2d_aa.vec,
        aten._adaptive_avg_pool2d.default,
    }
)
"""Linear resampling that acts on rows and columns separately (out = A_h · x · A_wᵀ per
channel); the matrices are read off the operation itself (:mod:`.axes`)."""

SHUFFLES = frozenset({aten.pixel_shuffle.default, aten.pixel_unshuffle.default})


def arg_of(entry: Entry, index: int, name: str, default: object = None) -> object:
    """Argument ``index`` of a recorded call, or keyword ``name``, or ``default``."""
    if len(entry.args) > index:
        return entry.args[index]
    return entry.kwargs.get(name, default)


def batch_norm_uses_input_statistics(entry: Entry) -> bool:
    """Whether a BatchNorm variant normalises with the input's own statistics."""
    flag = BATCH_NORM_TRAINING_FLAG[entry.func]
    return flag is not None and bool(arg_of(entry, flag, "training", False))
