"""Receptive fields: which input pixels can influence each output pixel.

:func:`receptive_field` runs the model once on an input of the given size, recording its
operations (:mod:`vessel_lens.interpret._graph.tape`), and propagates, for every output pixel at once, the rectangle of
each feature map its gradient can reach (``method="structural"``): a convolution's output
rows ``[a, b)`` read input rows ``[a*s - p, (b-1)*s - p + d*(k-1)]``, element-wise operations
keep the rectangle, additions take the union, and so on. Gradients outside the rectangle are
exactly zero for any weights and any input, so the bound is guaranteed; operations without a
rule widen it to the whole map (``tight=False``).

``method="empirical"`` measures the same thing with gradients: a float64 copy of the model
with every parameter positive (and BatchNorm statistics 0/1), evaluated on an all-ones input,
has all ReLUs open and no cancellations, so its Jacobian is non-zero exactly on the
theoretical field. It needs no rules but costs a full Jacobian, and models with data-dependent
routing (max-pooling) make it a lower bound. The tests check both agree on the reference
model.

The reference model pads its input to a multiple of 16, so an output pixel's field depends on
its position modulo 16 (and is clipped at the borders); :class:`ReceptiveField` holds the
offsets that bound every pixel's field at the measured size.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from vessel_lens.errors import ConfigError
from vessel_lens.interpret._graph.boxes import EMPTY, structural_boxes
from vessel_lens.interpret._graph.tape import custom_functions, record
from vessel_lens.models.heads import VESSEL_CLASS


@dataclass(frozen=True)
class ReceptiveField:
    """Input offsets bounding every output pixel's field at ``size`` (output H, W).

    Output pixel (r, c) depends only on input rows ``r - up .. r + down`` and columns
    ``c - left .. c + right`` (clipped to the image). ``boxes`` (H·W, 4) holds each pixel's own
    half-open box (top, bottom, left, right); ``tight`` is False when an operation without a
    rule forced a whole-map bound.
    """

    up: int
    down: int
    left: int
    right: int
    size: tuple[int, int]
    method: str
    tight: bool = True
    boxes: torch.Tensor | None = field(default=None, repr=False, compare=False)
    reasons: tuple[str, ...] = ()
    """Why the field is not tight: the operations that forced whole-map bounds."""

    @property
    def radius(self) -> int:
        """Largest offset in any direction (a square bound)."""
        return max(self.up, self.down, self.left, self.right)

    @property
    def largest_area(self) -> int | None:
        """The most input pixels any output pixel's box holds (None without ``boxes``)."""
        if self.boxes is None:
            return None
        boxes = self.boxes.long()
        return int(((boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2])).max())

    def box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """Half-open (top, bottom, left, right) input box of pixel (row, col), clipped."""
        height, width = self.size
        return (
            max(0, row - self.up),
            min(height, row + self.down + 1),
            max(0, col - self.left),
            min(width, col + self.right + 1),
        )

    def overlaps(self, a: tuple[int, int], b: tuple[int, int]) -> bool:
        """Whether two output pixels' bounding fields share an input pixel."""
        ta, ba, la, ra = self.box(*a)
        tb, bb, lb, rb = self.box(*b)
        return ta < bb and tb < ba and la < rb and lb < ra


def _surrogate(model: nn.Module) -> nn.Module:
    positive = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for parameter in positive.parameters():
            fan = parameter[0].numel() if parameter.dim() > 1 else 1
            parameter.fill_(1.0 / fan)
        for name, buffer in positive.named_buffers():
            if name.endswith("running_mean"):
                buffer.zero_()
            elif name.endswith("running_var"):
                buffer.fill_(1.0)
    return positive


def empirical_boxes(
    model: nn.Module, size: tuple[int, int], in_channels: int, device
) -> torch.Tensor:
    """Per output pixel, the bounding box of the positive surrogate's non-zero gradient."""
    from vessel_lens.interpret.jacobian.engine import jacobian

    surrogate = _surrogate(model)
    image = torch.ones((in_channels, *size), dtype=torch.float64)
    with torch.no_grad():
        logits = surrogate.to(device)(image[None].to(device))
    # the first channel: class 0, or the vessel logit of a one-channel (sigmoid) head
    one_channel = isinstance(logits, torch.Tensor) and logits.dim() == 4 and logits.shape[1] == 1
    target = VESSEL_CLASS if one_channel else 0
    rows = jacobian(
        surrogate, image, output="logit", target_class=target, dtype=torch.float64, device=device
    )
    support = rows.abs().sum(1) > 0
    any_rows, any_cols = support.any(2), support.any(1)
    index_h = torch.arange(size[0], device=support.device)
    index_w = torch.arange(size[1], device=support.device)
    top = torch.where(any_rows, index_h, EMPTY).amin(1)
    bottom = torch.where(any_rows, index_h, -EMPTY).amax(1) + 1
    left = torch.where(any_cols, index_w, EMPTY).amin(1)
    right = torch.where(any_cols, index_w, -EMPTY).amax(1) + 1
    return torch.stack([top, bottom, left, right], 1).cpu()


def _first_convolution_channels(model: nn.Module) -> int:
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is not None:
        return first.in_channels
    # TorchScript and exported models hold no Conv2d modules: read the first 4-D weight
    weights = model.state_dict().values()
    weight = next((w for w in weights if w.dim() == 4 and w.is_floating_point()), None)
    if weight is None:
        raise ConfigError("in_channels is needed: the model has no convolution to read it from")
    return int(weight.shape[1])


def receptive_field(
    model: nn.Module,
    size: int | tuple[int, int],
    *,
    in_channels: int | None = None,
    method: str = "structural",
    device: torch.device | str | None = None,
) -> ReceptiveField:
    """Measure the receptive field of every output pixel of an input of ``size``.

    ``in_channels`` defaults to the first convolution's (or the first 4-D weight's).
    ``method``: ``"structural"`` (guaranteed, cheap) or ``"empirical"`` (gradients of a
    positive surrogate; see the module docs). The model is left as found.

    Examples:
        >>> import torch
        >>> from vessel_lens.models import create_model
        >>> _ = torch.manual_seed(0)
        >>> model = create_model("resnet_seg", width=2).eval()  # or any (B, C, H, W) -> (B, K, H, W) net
        >>> image = torch.rand(1, 32, 32)  # (C, H, W)
        >>> from vessel_lens.interpret import receptive_field
        >>> field = receptive_field(model, 32)  # which input pixels can reach each output pixel
        >>> field.boxes.shape  # (H*W, 4) half-open boxes (top, bottom, left, right)
        torch.Size([1024, 4])
    """
    from vessel_lens.models.inference import frozen_eval, model_device

    size = (size, size) if isinstance(size, int) else tuple(size)
    if method not in ("structural", "empirical"):
        raise ConfigError(f"method {method!r}: choose 'structural' or 'empirical'")
    if in_channels is None:
        in_channels = _first_convolution_channels(model)
    device = torch.device(device) if device else model_device(model)
    tight, reasons = True, ()
    if method == "structural":
        with frozen_eval(model):
            tape = record(model, torch.zeros((in_channels, *size), device=device), track_graph=True)
        if tape.output is None or tuple(tape.value(tape.output).shape[-2:]) != size:
            raise ConfigError("the model output must be (B, K, H, W) at the input's size")
        custom = custom_functions(tape.result)
        if custom:  # their backward is the user's code: nothing bounds it
            boxes = torch.tensor([[0, size[0], 0, size[1]]]).expand(size[0] * size[1], 4)
            boxes, tight = boxes.clone(), False
            reasons = (f"custom autograd.Function {', '.join(custom)}",)
        else:
            structural = structural_boxes(tape)
            boxes, tight = structural.boxes, structural.tight
            reasons = tuple(structural.reasons)
        del tape
    else:
        with frozen_eval(model):
            boxes = empirical_boxes(model, size, in_channels, device)
    return _from_boxes(boxes, size, method, tight, reasons)


def tape_field(tape) -> ReceptiveField:
    """The structural field of a recorded forward pass (:mod:`vessel_lens.interpret._graph.tape`) whose operations all
    ran with gradients (so no custom ``autograd.Function`` lies on the path: a tape the
    ``linear`` strategy accepted), at its output's size: no second recording."""
    size = tuple(int(s) for s in tape.value(tape.output).shape[-2:])
    structural = structural_boxes(tape)
    return _from_boxes(
        structural.boxes, size, "structural", structural.tight, tuple(structural.reasons)
    )


def _from_boxes(boxes, size, method, tight, reasons) -> ReceptiveField:
    height, width = size
    rows = torch.arange(height).repeat_interleave(width)
    cols = torch.arange(width).repeat(height)
    valid = boxes[:, 0] < boxes[:, 1]
    if not bool(valid.any()):
        raise ConfigError("no output pixel depends on the input")
    up = int((rows - boxes[:, 0])[valid].max())
    down = int((boxes[:, 1] - 1 - rows)[valid].max())
    left = int((cols - boxes[:, 2])[valid].max())
    right = int((boxes[:, 3] - 1 - cols)[valid].max())
    return ReceptiveField(up, down, left, right, size, method, tight, boxes, reasons)
