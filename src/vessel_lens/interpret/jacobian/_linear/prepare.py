"""Preparing a recorded tape for the ``linear`` strategy: which entries carry cotangents, what
each needs (ReLU masks, BatchNorm scales folded into convolution weights, derivatives of
element-wise activations, normalisation statistics, resampling matrices), and which
convolutions share a backward call.

Every tensor on the path is handled in its *canonical* (1, C, H, W) form: a tensor whose
dimensions were permuted (a LayerNorm over channels written as permute → layer_norm → permute)
is read through the permutation that brings it back, so its windows are ordinary NCHW windows.
Operations without a rule raise :class:`Unsupported` here, before any work is done.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vessel_lens.interpret._graph import ops
from vessel_lens.interpret._graph.axes import NotSeparable, separable_maps
from vessel_lens.interpret._graph.boxes import layouts
from vessel_lens.interpret._graph.tape import Entry, Ref, Tape, needed_entries, refs_in
from vessel_lens.interpret.jacobian._linear.constants import derived

aten = ops.aten
arg_of = ops.arg_of
IDENTITY = ops.IDENTITY
BATCH_NORM = frozenset(ops.BATCH_NORM_TRAINING_FLAG)
POINTWISE = ops.ACTIVATIONS
SCALAR = ops.SCALAR
LINEAR_PER_SAMPLE = frozenset({aten.pixel_shuffle.default, aten.pixel_unshuffle.default})
"""Linear operations whose backward runs densely through autograd (exact, not windowed)."""
SEPARABLE = ops.RESAMPLING | ops.INDEX_PADS
PERMUTATION_AWARE = (
    ops.VIEWS | POINTWISE | ops.BINARY | SCALAR | IDENTITY | ops.SOFTMAX | ops.REDUCTIONS
) | {ops.LAYER_NORM}
"""Operations whose rules accept permuted tensors (through their canonical form)."""


class Unsupported(Exception):
    """The tape holds an operation the linear strategy has no rule for."""


@dataclass
class Prepared:
    """A tape made ready for repeated backward passes in ``dtype``."""

    tape: Tape
    dtype: torch.dtype
    needed: list[bool]
    consts: dict[object, object] = field(default_factory=dict)
    skip: set[int] = field(default_factory=set)
    leader: dict[int, int] = field(default_factory=dict)
    members: dict[int, list[int]] = field(default_factory=dict)
    canon: dict[Ref, tuple[int, int, int, int]] = field(default_factory=dict)
    """Per needed tensor, the permutation giving its (1, C, H, W) form."""
    dry: bool = False
    """Convolutions return zeros of their windows' size: a pass that only traces windows."""

    def is_active(self, ref: object) -> bool:
        return isinstance(ref, Ref) and self.needed[ref.node]

    def constant(self, arg: object) -> object:
        """An argument that does not depend on the input, as a value (parameters that the
        model computes, such as InstanceNorm's repeated weight, are recorded tensors)."""
        return self.tape.value(arg) if isinstance(arg, Ref) else arg

    def value(self, ref: Ref) -> torch.Tensor:
        """A recorded tensor in its canonical (1, C, H, W) form."""
        value = self.tape.value(ref)
        perm = self.canon.get(ref)
        return value if perm is None or perm == (0, 1, 2, 3) else value.permute(perm)


def spatial(tensor: torch.Tensor) -> tuple[int, int]:
    return int(tensor.shape[-2]), int(tensor.shape[-1])


def _is_4d(value: object) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() == 4 and value.shape[0] == 1


def _canonical(value: torch.Tensor, layout) -> tuple[int, int, int, int] | None:
    """The permutation that brings a 4-D batch-1 tensor with spatial ``layout`` to NCHW."""
    if not _is_4d(value) or layout is None:
        return None
    rest = [d for d in range(4) if d not in layout]
    ones = [d for d in rest if value.shape[d] == 1]
    if not ones:
        return None
    batch = ones[0]
    channel = next(d for d in rest if d != batch)
    return batch, channel, layout[0], layout[1]


def _key(i: int, entry: Entry) -> Ref:
    return Ref(i, 0) if isinstance(entry.value, (tuple, list)) else Ref(i)


def prepare(tape: Tape, dtype: torch.dtype) -> Prepared:
    """Check every operation between source and output has a rule; precompute coefficients."""
    if tape.output is None or tape.source < 0:
        raise Unsupported("the output is not computed from the input by recorded operations")
    if tape.unsupported:
        raise Unsupported(tape.unsupported)
    needed = needed_entries(tape)
    if not needed[tape.output.node]:
        raise Unsupported(
            "the output does not depend on the input through recorded operations "
            "(the model computes part of it outside torch)"
        )
    prepared = Prepared(tape, dtype, needed)
    for ref, layout in layouts(tape, needed).items():
        perm = _canonical(tape.value(ref), layout)
        if perm is not None:
            prepared.canon[ref] = perm
    users = tape.users()
    for i, entry in enumerate(tape.entries):
        if needed[i] and i != tape.source:
            _prepare_entry(prepared, i, entry, users)
    _group_siblings(prepared)
    return prepared


def _group_siblings(prep: Prepared) -> None:
    """Convolutions reading the same tensor with the same geometry (a residual block's first
    convolution and its projection shortcut) share one backward call: their cotangents are
    stacked along channels and pushed through the stacked weights, a larger and more efficient
    ``conv_transpose2d`` that also saves adding the two results."""
    groups: dict[tuple, list[int]] = {}
    for i, entry in enumerate(prep.tape.entries):
        if not prep.needed[i] or entry.func is not aten.convolution.default or entry.args[6]:
            continue
        if int(entry.args[8]) != 1:
            continue
        weight = prep.consts[i]
        key = (
            entry.args[0],
            tuple(entry.args[3]),
            tuple(entry.args[4]),
            tuple(entry.args[5]),
            tuple(weight.shape[1:]),
        )
        groups.setdefault(key, []).append(i)
    for members in groups.values():
        if len(members) > 1:
            leader = members[0]
            prep.members[leader] = members
            for member in members:
                prep.leader[member] = leader
            weights = [prep.consts[m] for m in members]
            prep.consts[("stacked", leader)] = derived(
                ("stacked", len(weights)), weights, lambda w=weights: torch.cat(w)
            )


def _check_shapes(prep: Prepared, i: int, entry: Entry) -> None:
    value = entry.value[0] if isinstance(entry.value, (tuple, list)) else entry.value
    key = _key(i, entry)
    out_perm = prep.canon.get(key)
    if out_perm is None and entry.func not in IDENTITY:
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise Unsupported(f"{entry.name} produces a {shape} tensor (not 1xCxHxW)")
    for ref in refs_in(entry):
        if not prep.needed[ref.node]:
            continue
        if ref not in prep.canon:
            raise Unsupported(f"{entry.name} reads a tensor that is not 1xCxHxW")
        permuted = prep.canon[ref] != (0, 1, 2, 3) or out_perm not in (None, (0, 1, 2, 3))
        if permuted and entry.func not in PERMUTATION_AWARE:
            raise Unsupported(f"{entry.name} on a tensor with permuted dimensions")


def _prepare_entry(prep: Prepared, i: int, entry: Entry, users: list[list[int]]) -> None:
    func, dtype = entry.func, prep.dtype
    if not entry.grad_enabled:
        raise Unsupported(
            f"{entry.name} runs without gradient tracking inside the model "
            "(torch.no_grad or a custom autograd.Function)"
        )
    if func is aten.detach.default:
        raise Unsupported("the model detaches a tensor on the path to its output")
    _check_shapes(prep, i, entry)
    if func is aten.convolution.default:
        weight = entry.args[1]
        if prep.is_active(weight) or len(entry.args[3]) != 2:
            raise Unsupported("only 2-D convolutions with constant weights are supported")
        weight = prep.constant(weight)
        prep.consts[i] = derived(("weight", dtype), (weight,), lambda: weight.detach().to(dtype))
    elif func in BATCH_NORM:
        if any(prep.is_active(a) for a in entry.args[1:5]):
            raise Unsupported(f"{entry.name} with input-dependent parameters")
        if ops.batch_norm_uses_input_statistics(entry):
            _prepare_statistics(prep, i, entry, (2, 3), groups=None)
        else:
            _prepare_batch_norm(prep, i, entry, users)
    elif func is ops.GROUP_NORM:
        if any(prep.is_active(a) for a in entry.args[1:3]):
            raise Unsupported(f"{entry.name} with input-dependent parameters")
        _prepare_statistics(prep, i, entry, (1, 2, 3), groups=int(entry.args[6]))
    elif func is ops.LAYER_NORM:
        _prepare_layer_norm(prep, i, entry)
    elif func in ops.SOFTMAX:
        _prepare_softmax(prep, i, entry)
    elif func in ops.REDUCTIONS:
        _prepare_reduction(prep, i, entry)
    elif func is aten.relu.default:
        prep.consts[i] = _channels_last((prep.value(_key(i, entry)) > 0).to(dtype))
    elif func in POINTWISE:
        derivative = _pointwise_derivative(prep, entry)
        perm = prep.canon.get(entry.args[0])
        if perm is not None and perm != (0, 1, 2, 3):
            derivative = derivative.permute(perm)
        prep.consts[i] = _channels_last(derivative.to(dtype))
    elif func in ops.BINARY:
        _prepare_binary(prep, i, entry)
    elif func in SCALAR:
        pass
    elif func is aten.constant_pad_nd.default:
        if len(entry.args[1]) > 4:
            raise Unsupported("padding of dimensions other than height and width")
    elif func is aten.slice.Tensor:
        dim = int(arg_of(entry, 1, "dim", 0)) % 4
        if dim == 0:
            raise Unsupported("slicing the batch dimension")
    elif func is aten.cat.default:
        if int(arg_of(entry, 1, "dim", 0)) % 4 == 0:
            raise Unsupported("concatenation along the batch dimension")
    elif func in (aten.max_pool2d_with_indices.default, ops.ADAPTIVE_MAX_POOL):
        pass
    elif func is ops.AVG_POOL or func in SEPARABLE:
        _prepare_separable(prep, i, entry)
    elif func in LINEAR_PER_SAMPLE:
        pass
    elif func in IDENTITY or func in ops.VIEWS:
        source = entry.args[0]
        out = prep.value(_key(i, entry)) if _key(i, entry) in prep.canon else None
        if out is None or prep.value(source).shape != out.shape:
            raise Unsupported(f"{entry.name} changes the shape")
    else:
        raise Unsupported(f"no linearised rule for {entry.name}")


def _prepare_batch_norm(prep: Prepared, i: int, entry: Entry, users: list[list[int]]) -> None:
    weight, var = prep.constant(entry.args[1]), prep.constant(entry.args[4])
    eps = float(entry.args[-1])

    def scale() -> torch.Tensor:
        factor = torch.rsqrt(var.double() + eps)
        return factor if weight is None else factor * weight.double()

    source = entry.args[0]
    producer = prep.tape.entries[source.node]
    foldable = (
        producer.func is aten.convolution.default
        and len(users[source.node]) == 1
        and source.node in prep.consts
        and (not producer.args[6] or int(producer.args[8]) == 1)
    )
    if foldable:
        base = prep.constant(producer.args[1])
        shape = (1, -1, 1, 1) if producer.args[6] else (-1, 1, 1, 1)

        def folded() -> torch.Tensor:
            return (base.detach().double() * scale().reshape(shape)).to(prep.dtype)

        kind = ("batch-norm folded", eps, shape, prep.dtype)
        prep.consts[source.node] = derived(kind, (base, var, weight), folded)
        prep.skip.add(i)
    else:
        kind = ("batch-norm scale", eps, prep.dtype)
        prep.consts[i] = derived(
            kind, (var, weight), lambda: scale().reshape(1, -1, 1, 1).to(prep.dtype)
        )


def _prepare_statistics(prep: Prepared, i: int, entry: Entry, dims, groups) -> None:
    """Normalisation with the input's own statistics (BatchNorm without running statistics,
    InstanceNorm, GroupNorm; ``groups`` None means one group per channel): the normalised
    input x̂ (1, C, H, W), and per channel 1/σ of its group and the affine weight (1, C, 1, 1)
    (see :func:`._rules_norm.statistics_rule`)."""
    x = prep.value(entry.args[0]).double()
    eps = _eps(entry)
    channels = int(x.shape[1])
    groups = groups or channels
    grouped = x.reshape(1, groups, -1)
    mean = grouped.mean(2, keepdim=True)
    var = grouped.var(2, keepdim=True, unbiased=False)
    rstd = torch.rsqrt(var + eps)
    normalised = ((grouped - mean) * rstd).reshape(x.shape)
    per_channel = rstd.expand(1, groups, channels // groups).reshape(1, channels, 1, 1)
    weight = prep.constant(entry.args[1])
    weight = (
        torch.ones(channels, dtype=torch.float64)
        if weight is None
        else weight.detach().double().reshape(-1)
    )
    prep.consts[i] = {
        "normalised": _channels_last(normalised.to(prep.dtype)),
        "rstd": per_channel.to(prep.dtype),
        "weight": weight.reshape(1, -1, 1, 1).to(prep.dtype),
        "groups": groups,
        "count": grouped.shape[2],
    }


def _eps(entry: Entry) -> float:
    if entry.func is ops.GROUP_NORM:
        return float(entry.args[7])
    return float(entry.args[-1])


def _prepare_layer_norm(prep: Prepared, i: int, entry: Entry) -> None:
    source = entry.args[0]
    raw = prep.tape.value(source)
    count = len(entry.args[1])
    normalised_dims = set(range(raw.dim() - count, raw.dim()))
    perm = prep.canon[source]
    canonical = tuple(sorted(perm.index(d) for d in normalised_dims))
    if 0 in canonical:
        raise Unsupported("LayerNorm over the batch dimension")
    weight, bias = (entry.args[2] if len(entry.args) > 2 else None), None
    del bias
    if prep.is_active(weight):
        raise Unsupported(f"{entry.name} with input-dependent parameters")
    weight = prep.constant(weight)
    x = prep.value(source).double()
    mean = x.mean(canonical, keepdim=True)
    var = x.var(canonical, keepdim=True, unbiased=False)
    rstd = torch.rsqrt(var + float(entry.args[4]))
    if weight is None:
        scale = torch.ones((1,) * 4, dtype=torch.float64)
    else:  # the weight has the normalised dims' shape, in the tensor's own order
        shaped = (
            weight.detach()
            .double()
            .reshape([raw.shape[d] if d in normalised_dims else 1 for d in range(raw.dim())])
        )
        scale = shaped.permute(perm)
    prep.consts[i] = {
        "normalised": ((x - mean) * rstd).to(prep.dtype),
        "rstd": rstd.expand_as(x).to(prep.dtype),
        "weight": scale.to(prep.dtype),
        "dims": canonical,
    }


def _prepare_softmax(prep: Prepared, i: int, entry: Entry) -> None:
    source = entry.args[0]
    dim = prep.canon[source].index(int(entry.args[1]) % 4)
    if dim == 0:
        raise Unsupported("softmax over the batch dimension")
    out = prep.value(_key(i, entry)).double()
    probabilities = out if entry.func is aten._softmax.default else out.exp()
    prep.consts[i] = {"dim": dim, "p": probabilities.to(prep.dtype)}


def _prepare_reduction(prep: Prepared, i: int, entry: Entry) -> None:
    if not bool(arg_of(entry, 2, "keepdim", False)):
        raise Unsupported(f"{entry.name} without keepdim")
    source = entry.args[0]
    perm = prep.canon[source]
    dims = arg_of(entry, 1, "dim", None) or range(4)
    dims = tuple(sorted(perm.index(int(d) % 4) for d in dims))
    if 0 in dims:
        raise Unsupported(f"{entry.name} over the batch dimension")
    x = prep.value(source)
    if entry.func in (aten.amax.default, aten.amin.default):
        # the gradient goes to the extreme values, shared equally between ties (as autograd)
        chosen = (x == prep.value(_key(i, entry))).to(prep.dtype)
        share = chosen / chosen.sum(dims, keepdim=True)
        prep.consts[i] = {"dims": dims, "scale": _channels_last(share)}
        return
    count = 1
    for d in dims:
        count *= int(x.shape[d])
    prep.consts[i] = {"dims": dims, "scale": 1.0 / count if entry.func is aten.mean.dim else 1.0}


def _prepare_separable(prep: Prepared, i: int, entry: Entry) -> None:
    in_size = spatial(prep.value(entry.args[0]))
    out_size = spatial(prep.value(_key(i, entry)))
    if entry.func is ops.AVG_POOL:
        if arg_of(entry, 6, "divisor_override") is not None:
            return  # dense backward through autograd
        try:
            maps = _avg_pool_maps(entry, in_size, out_size)
        except NotSeparable:
            return
    else:
        try:
            maps = separable_maps(entry, in_size, out_size)
        except NotSeparable as exc:
            raise Unsupported(str(exc)) from None
    prep.consts[i] = maps


def _avg_pool_maps(entry: Entry, in_size, out_size):
    """Average pooling as two 1-D poolings: the divisor is a product of one count per axis
    (with or without the padding), so the operation factors; checked on small maps."""
    from vessel_lens.interpret._graph.axes import from_matrix_columns

    kernel = arg_of(entry, 1, "kernel_size")
    stride = arg_of(entry, 2, "stride") or kernel
    padding = arg_of(entry, 3, "padding", 0)
    ceil, include = (
        bool(arg_of(entry, 4, "ceil_mode", False)),
        bool(arg_of(entry, 5, "count_include_pad", True)),
    )

    def pair(value):
        value = [value] if isinstance(value, int) else list(value)
        return value * 2 if len(value) == 1 else value

    kernel, stride, padding = pair(kernel), pair(stride), pair(padding)
    maps = []
    for axis in (0, 1):
        length = in_size[axis]
        probe = torch.eye(length, dtype=torch.float64).reshape(1, length, 1, length)
        out = torch.nn.functional.avg_pool2d(
            probe, (1, kernel[axis]), (1, stride[axis]), (0, padding[axis]), ceil, include
        )
        if out.shape[-1] != out_size[axis]:
            raise NotSeparable("average pooling whose axes do not factor")
        maps.append(
            from_matrix_columns([(0, out[0, :, 0, :].T.contiguous())], out_size[axis], length)
        )
    x = torch.rand((1, 1, *in_size), dtype=torch.float64)
    expected = entry.func(x, *entry.args[1:], **entry.kwargs)[0, 0]
    a_h, a_w = maps[0].submatrix(0, out_size[0])[1], maps[1].submatrix(0, out_size[1])[1]
    lo_h, lo_w = maps[0].submatrix(0, out_size[0])[0], maps[1].submatrix(0, out_size[1])[0]
    got = a_h @ x[0, 0, lo_h : lo_h + a_h.shape[1], lo_w : lo_w + a_w.shape[1]] @ a_w.T
    if got.shape != expected.shape or not torch.allclose(got, expected, atol=1e-9):
        raise NotSeparable("average pooling whose axes do not factor")
    return tuple(maps)


def _prepare_binary(prep: Prepared, i: int, entry: Entry) -> None:
    a, b = entry.args[0], entry.args[1]
    out = prep.value(_key(i, entry))
    out_shape = out.shape
    broadcast = {}
    for position, ref in enumerate((a, b)):
        if not prep.is_active(ref):
            continue
        shape = prep.value(ref).shape
        if shape == out_shape:
            continue
        if any(s not in (1, o) for s, o in zip(shape, out_shape, strict=True)):
            raise Unsupported(f"{entry.name} broadcasts an input-dependent tensor")
        broadcast[position] = tuple(d for d in range(4) if shape[d] == 1 and out_shape[d] != 1)
    if entry.func is aten.div.Tensor and prep.is_active(b):
        raise Unsupported("division by an input-dependent tensor")
    factors = []
    for ref in (b, a) if entry.func is aten.mul.Tensor else (b,):
        if isinstance(ref, Ref):
            value = prep.value(ref) if ref in prep.canon else prep.tape.value(ref)
        else:
            value = ref
        if isinstance(value, torch.Tensor):
            if value.dim() < 4 and value.numel() > 1:  # (H, W), (C, 1, 1), ...: as 4-D
                value = value.reshape((1,) * (4 - value.dim()) + tuple(value.shape))
                perm = prep.canon.get(_key(i, entry))
                if perm is not None and perm != (0, 1, 2, 3):
                    value = value.permute(perm)
            if value.dim() != 4 and value.numel() > 1:
                raise Unsupported(f"{entry.name} with a factor of {value.dim()} dimensions")
            if value.dim() == 4 and spatial(value) not in ((1, 1), spatial(out)):
                raise Unsupported(f"{entry.name} with an unusual broadcast")
            value = value.detach().to(prep.dtype)
        factors.append(value)
    prep.consts[i] = factors
    if broadcast:
        prep.consts[("broadcast", i)] = broadcast


def _channels_last(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous(memory_format=torch.channels_last)


def _pointwise_derivative(prep: Prepared, entry: Entry) -> torch.Tensor:
    """Diagonal of an element-wise op's Jacobian: its VJP with a cotangent of ones."""
    tape = prep.tape
    x = tape.value(entry.args[0])
    rest = [tape.value(a) if isinstance(a, Ref) else a for a in entry.args[1:]]
    with torch.enable_grad():
        leaf = x.detach().clone().requires_grad_(True)
        y = entry.func(leaf, *rest, **entry.kwargs)
        (derivative,) = torch.autograd.grad(y, leaf, torch.ones_like(y))
    return derivative
