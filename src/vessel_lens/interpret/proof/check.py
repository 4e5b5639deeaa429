"""Checking the engine's claims on one model: the proof harness.

:func:`check_model` computes a float64 reference Jacobian with plain ``torch.autograd.grad``
(one backward pass per output pixel) and checks, against it, every claim vessel-lens makes:

- **sound field**: the structural receptive field contains every input pixel whose gradient
  is non-zero, for every output pixel;
- **tight field**: a field claimed tight is attained (checked on a twin of the model with
  smooth activations and no routing, where generic weights reach every path);
- **exact strategies**: every strategy that accepts the model gives rows within ``tolerance``
  of max |J| (a refusal must be a one-line :class:`~vessel_lens.errors.ConfigError`);
- **colouring**: receptive-field maps with ``colouring="auto"`` and ``"always"`` equal those
  with ``"never"`` (integer maps bit for bit, float maps to rounding), or ``"always"`` is
  refused with one line.

The tests run it on models drawn from :mod:`.grammar`; ``benchmarks/proof_soak.py`` runs it
on many. It is usable on any model: ``check_model(model, image).failures`` lists what failed.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from vessel_lens.errors import ConfigError
from vessel_lens.interpret.fields.maps import ARRAYS
from vessel_lens.interpret.fields.structural import receptive_field
from vessel_lens.interpret.fields.thresholded import receptive_field_maps
from vessel_lens.interpret.jacobian.engine import JacobianEngine
from vessel_lens.interpret.pixels import output_map

PROOF_STRATEGIES = ("auto", "linear", "vmap", "loop")
COLOURINGS = ("auto", "always")


@dataclass
class Report:
    """What :func:`check_model` found; ``failures`` is empty when every claim held."""

    tight: bool
    reasons: tuple[str, ...]
    errors: dict[str, float | str] = field(default_factory=dict)
    """Per strategy: max |row - reference| / max |reference|, or the refusal message."""
    colouring: dict[str, str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """Findings that are not the engine's failures (a PyTorch autograd bug, found by finite
    differences)."""


def reference_jacobian(
    model: nn.Module,
    image: torch.Tensor,
    target_class: int,
    output: str,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """(H·W, C, H, W) rows by one ``autograd.grad`` per output pixel, in ``dtype``."""
    work = copy.deepcopy(model).to(dtype).eval()
    for parameter in work.parameters():
        parameter.requires_grad_(False)
    x = image.to(dtype)[None].clone().requires_grad_(True)
    with torch.enable_grad():
        values = output_map(work(x), target_class, output).reshape(-1)
        rows = [torch.autograd.grad(v, x, retain_graph=True)[0][0] for v in values]
    return torch.stack(rows)


def support_boxes(rows: torch.Tensor) -> torch.Tensor:
    """Per row, the half-open bounding box (top, bottom, left, right) of its non-zeros; rows
    that are zero everywhere get an empty box (top = bottom = 0)."""
    support = rows.abs().sum(1) > 0
    height, width = support.shape[-2:]
    any_rows, any_cols = support.any(2), support.any(1)
    index_h, index_w = torch.arange(height), torch.arange(width)
    big = height + width + 1
    top = torch.where(any_rows, index_h, big).amin(1)
    bottom = torch.where(any_rows, index_h, -1).amax(1) + 1
    left = torch.where(any_cols, index_w, big).amin(1)
    right = torch.where(any_cols, index_w, -1).amax(1) + 1
    empty = ~support.flatten(1).any(1)
    boxes = torch.stack([top, bottom, left, right], 1)
    boxes[empty] = 0
    return boxes


def _outside(rows: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Per row, the largest |gradient| outside its structural box."""
    height, width = rows.shape[-2:]
    ys, xs = torch.arange(height), torch.arange(width)
    inside_y = (ys[None] >= boxes[:, 0:1]) & (ys[None] < boxes[:, 1:2])
    inside_x = (xs[None] >= boxes[:, 2:3]) & (xs[None] < boxes[:, 3:4])
    inside = inside_y[:, :, None] & inside_x[:, None, :]
    return (rows.abs().sum(1) * ~inside).flatten(1).amax(1)


def _contains(outer: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    empty = inner[:, 0] >= inner[:, 1]
    ok = (outer[:, 0] <= inner[:, 0]) & (inner[:, 1] <= outer[:, 1])
    ok &= (outer[:, 2] <= inner[:, 2]) & (inner[:, 3] <= outer[:, 3])
    return ok | empty


def _check_field(report: Report, model, image, reference, smooth, target_class, output) -> None:
    size = tuple(image.shape[-2:])
    field_ = receptive_field(model, size, in_channels=int(image.shape[0]))
    report.tight, report.reasons = field_.tight, field_.reasons
    leak = _outside(reference, field_.boxes)
    scale = float(reference.abs().max()) or 1.0
    bad = torch.nonzero(leak > 0).flatten()
    if len(bad):
        n = int(bad[0])
        report.failures.append(
            f"unsound field: {len(bad)} output pixels have gradient outside their structural "
            f"box (pixel {divmod(n, size[1])}: |g| {float(leak[n]) / scale:.2e} of max)"
        )
    if not field_.tight or smooth is None:
        return
    smooth_field = receptive_field(smooth, size, in_channels=int(image.shape[0]))
    if not torch.equal(smooth_field.boxes, field_.boxes):
        report.failures.append("the smooth twin's structural field differs from the model's")
        return
    attained = None
    for seed in (0, 1):
        generator = torch.Generator().manual_seed(seed)
        probe = torch.rand(image.shape, generator=generator, dtype=torch.float64) * 2 - 1
        rows = reference_jacobian(smooth, probe, target_class, output)
        boxes = support_boxes(rows)
        attained = boxes if attained is None else _hull(attained, boxes)
    short = ~_box_equal(attained, field_.boxes)
    if bool(short.any()):
        n = int(torch.nonzero(short)[0])
        report.failures.append(
            f"field claimed tight but {int(short.sum())} boxes are larger than any gradient "
            f"(pixel {divmod(n, size[1])}: box {field_.boxes[n].tolist()}, reached "
            f"{attained[n].tolist()})"
        )


def _hull(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a_empty, b_empty = a[:, 0] >= a[:, 1], b[:, 0] >= b[:, 1]
    hull = torch.stack(
        [
            torch.minimum(a[:, 0], b[:, 0]),
            torch.maximum(a[:, 1], b[:, 1]),
            torch.minimum(a[:, 2], b[:, 2]),
            torch.maximum(a[:, 3], b[:, 3]),
        ],
        1,
    )
    hull[a_empty] = b[a_empty]
    hull[b_empty & ~a_empty] = a[b_empty & ~a_empty]
    return hull


def _box_equal(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a_empty, b_empty = a[:, 0] >= a[:, 1], b[:, 0] >= b[:, 1]
    return (a_empty & b_empty) | (~a_empty & ~b_empty & (a == b).all(1))


def _check_strategies(report, model, image, reference, target_class, output, tolerance):
    """Each strategy against plain autograd in float32 (the ``loop`` strategy's method): the
    rows of the float32 model, whose own distance from the float64 reference measures how
    much float32 rounding the model amplifies; a strategy may differ from autograd by
    ``tolerance`` of max |J| plus ten times that amount."""
    scale = float(reference.abs().max()) or 1.0
    autograd32 = reference_jacobian(model, image, target_class, output, torch.float32).double()
    inherent = float((autograd32 - reference).abs().max()) / scale
    report.errors["float32 autograd"] = inherent
    allowed = tolerance + 10 * inherent
    checks = [(strategy, torch.float32, autograd32, allowed) for strategy in PROOF_STRATEGIES]
    if inherent > 1e-6:  # ill-conditioned: the float32 comparison says little, so also
        checks += [(s, torch.float64, reference, 1e-9) for s in PROOF_STRATEGIES]  # float64
    for strategy, dtype, expected, limit in checks:
        name = strategy if dtype == torch.float32 else f"{strategy}/float64"
        try:
            engine = JacobianEngine(
                model,
                image,
                target_class=target_class,
                output=output,
                strategy=strategy,
                dtype=dtype,
            )
            rows = torch.cat([r for _, r in engine.chunks(torch.arange(reference.shape[0]))])
        except ConfigError as exc:
            report.errors[name] = f"refused: {exc}"
            if "\n" in str(exc):
                report.failures.append(f"{name}: refusal is not one line")
            continue
        error = float((rows.double() - expected).abs().max()) / scale
        report.errors[name] = error
        if error <= limit:
            continue
        verdict = _arbitrate(model, image, rows, reference, target_class, output)
        if verdict is not None:
            if verdict not in report.notes:
                report.notes.append(verdict)
            continue
        report.failures.append(
            f"{name} ({engine.strategy}): differs from autograd by {error:.2e} of max "
            f"|J| (allowed {limit:.1e}; float32 autograd itself is {inherent:.1e} off)"
        )


def directional_error(model, image, rows, target_class, output, directions=3) -> float:
    """How far ``rows`` are from central finite differences of the float64 model: the largest,
    over random directions v, of max |rows · v - (F(x + hv) - F(x - hv)) / 2h| / max |FD|."""
    work = copy.deepcopy(model).double().eval()
    x = image.double()
    generator = torch.Generator().manual_seed(0)
    step = 1e-4 * max(float(x.abs().max()), 1.0)
    worst = 0.0
    with torch.no_grad():
        for _ in range(directions):
            v = torch.rand(x.shape, generator=generator, dtype=torch.float64) * 2 - 1
            plus = output_map(work((x + step * v)[None]), target_class, output).reshape(-1)
            minus = output_map(work((x - step * v)[None]), target_class, output).reshape(-1)
            differences = (plus - minus) / (2 * step)
            predicted = (rows.double() * v).flatten(1).sum(1)
            scale = float(differences.abs().max()) or 1.0
            worst = max(worst, float((predicted - differences).abs().max()) / scale)
    return worst


def _arbitrate(model, image, rows, reference, target_class, output) -> str | None:
    """When a strategy and autograd disagree, ask finite differences. A note (no failure)
    when the strategy agrees with them and float64 autograd clearly does not: PyTorch's own
    backward is then wrong (seen: InstanceNorm's backward with a channels-last incoming
    gradient in torch 2.13 on CPU), and so are ``loop`` and every autograd-based method."""
    strategy_error = directional_error(model, image, rows, target_class, output)
    autograd_error = directional_error(model, image, reference, target_class, output)
    if strategy_error <= 1e-4 and autograd_error >= 100 * max(strategy_error, 1e-8):
        return (
            f"PyTorch autograd disagrees with finite differences ({autograd_error:.1e} of max) "
            f"where the engine agrees ({strategy_error:.1e}): plain autograd (strategy loop, "
            "attributions) is wrong for this model"
        )
    return None


def _check_colouring(report, model, image, target_class, output):
    """Maps with and without colouring, in float32 when the model is well conditioned (float32
    autograd within 1e-6 of the float64 reference), else in float64: colouring changes which
    rows share a backward pass, and an ill-conditioned model amplifies the rounding of any
    change past a threshold, whatever the method."""
    fractions = (0.01, 0.1, 0.5)
    inherent = report.errors.get("float32 autograd", 0.0)
    dtype = torch.float32 if inherent <= 1e-6 else torch.float64
    report.colouring["dtype"] = str(dtype).removeprefix("torch.")
    for mode in ("global", "pixel"):
        options = dict(target_class=target_class, output=output, dtype=dtype)
        plain = receptive_field_maps(model, image, fractions, mode, colouring="never", **options)
        for colouring in COLOURINGS:
            try:
                maps = receptive_field_maps(
                    model, image, fractions, mode, colouring=colouring, **options
                )
            except ConfigError as exc:
                if colouring == "auto" or report.tight:
                    report.failures.append(f"colouring={colouring} refused: {exc}")
                report.colouring[f"{mode}/{colouring}"] = f"refused: {exc}"
                continue
            different = _different_arrays(plain, maps)
            used = "coloured" if maps.metadata["colouring"] else "plain"
            report.colouring[f"{mode}/{colouring}"] = (
                f"{used}, equal" if not different else f"{used}, differs in {different}"
            )
            if different:
                report.failures.append(
                    f"colouring={colouring} ({mode}, {used}) differs from never in {different}"
                )


def _different_arrays(a, b) -> list[str]:
    names = []
    for name in ARRAYS:
        x, y = getattr(a, name), getattr(b, name)
        if x.is_floating_point():
            scale = float(x.nan_to_num(0).abs().max()) or 1.0
            same = bool((x - y).nan_to_num(0).abs().max() <= 1e-5 * scale) and torch.equal(
                x.isnan(), y.isnan()
            )
        else:
            same = torch.equal(x, y)
        if not same:
            names.append(name)
    return names


def check_model(
    model: nn.Module,
    image: torch.Tensor,
    *,
    smooth: nn.Module | None = None,
    target_class: int = 1,
    output: str = "probability",
    tolerance: float = 1e-5,
    colouring: bool = True,
) -> Report:
    """Check the engine's claims on ``model`` at ``image`` (C, H, W); see the module docs.

    ``smooth``: a twin of ``model`` with the same structure but activations whose derivative
    is never zero and no routing (max pooling): when given, a tight field is checked to be
    attained on it.
    """
    reference = reference_jacobian(model, image, target_class, output)
    report = Report(True, ())
    _check_field(report, model, image, reference, smooth, target_class, output)
    _check_strategies(report, model, image, reference, target_class, output, tolerance)
    if colouring:
        _check_colouring(report, model, image, target_class, output)
    return report
