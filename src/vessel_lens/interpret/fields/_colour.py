"""Colouring: one backward pass for several output pixels whose receptive fields do not overlap.

Output pixel (r, c) gets colour ``(r mod P_r, c mod P_c)`` with periods ``P_r = up + down + 1``
and ``P_c = left + right + 1``, the diameters of the model's structural receptive field
(:func:`vessel_lens.interpret.fields.structural.receptive_field`). Two pixels of one colour differ by a
non-zero multiple of a period along at least one axis, so their fields' boxes are disjoint.
The gradient of the *sum* of a colour's outputs is then, inside pixel p's box, p's own
gradient: no other pixel of the colour reaches that box (gradients outside a field are
exactly zero for any weights and input). Cropping the combined gradient to each box, and
zeroing the rest of the crop, recovers every row.

This pays off when a row costs a whole-image backward pass (strategies ``vmap`` and
``loop``): each pass then serves about H·W / (P_r·P_c) pixels. The ``linear`` strategy already
restricts every row to its window; whether colouring still pays depends on the network (it
does for shallow ones, whose combined windows stay cheap), so ``colouring="auto"`` measures
both on the image at hand (see ``benchmarks/RESULTS.md`` for the measured costs).
"""

from __future__ import annotations

import torch

from vessel_lens.interpret.fields.structural import ReceptiveField
from vessel_lens.interpret.pixels import output_seeds


def periods(field: ReceptiveField) -> tuple[int, int]:
    """Colour periods (rows, columns): the field's diameters."""
    return field.up + field.down + 1, field.left + field.right + 1


def colour_groups(flat: torch.Tensor, width: int, period: tuple[int, int]) -> list[torch.Tensor]:
    """Flat output pixels split by colour; each group's fields are pairwise disjoint."""
    if len(flat) == 0:
        return []
    rows, cols = flat // width, flat % width
    colour = (rows % period[0]) * period[1] + cols % period[1]
    order = torch.argsort(colour, stable=True)
    _, sizes = torch.unique_consecutive(colour[order], return_counts=True)
    return list(torch.split(flat[order], sizes.tolist()))


def mean_group_size(flat: torch.Tensor, width: int, period: tuple[int, int]) -> float:
    """Output pixels per backward pass under colouring."""
    groups = len(colour_groups(flat, width, period))
    return len(flat) / groups if groups else 0.0


def combined_gradients(engine, groups: list[torch.Tensor]) -> torch.Tensor:
    """Gradient of the sum of each group's outputs: (B, *source shape), one pass per group.

    Uses the engine's recorded forward pass and strategy (``linear``: windowed batched
    backward passes over cotangents with several non-zero entries; ``vmap``: the same cotangents
    through ``torch.func``; ``loop``: one ``autograd.grad`` of the group's sum).
    """
    impl = engine.strategy_impl
    flat = torch.cat(groups)
    owner = torch.repeat_interleave(
        torch.arange(len(groups)), torch.tensor([len(g) for g in groups])
    )
    if engine.strategy == "loop":
        grads = []
        with torch.enable_grad():
            for group in groups:
                total = impl.values[group.to(impl.values.device)].sum()
                (grad,) = torch.autograd.grad(total, impl.source, retain_graph=True)
                grads.append(grad[0])
        return torch.stack(grads).to(engine.dtype)
    seeds = output_seeds(engine.logits, flat, engine.target_class, engine.output)
    if engine.strategy == "linear":
        return impl.combined(engine, groups, flat, owner, seeds)
    classes = int(engine.logits.shape[1])
    seeds = seeds.to(engine.device, engine.dtype)
    cotangents = seeds.new_zeros((len(groups), 1, classes, engine.height * engine.width))
    cotangents[owner, 0, :, flat.to(engine.device)] = seeds
    cotangents = cotangents.reshape(len(groups), *impl.shape)
    with torch.enable_grad():
        (grads,) = impl.batched(cotangents)
    return grads[:, 0]


def split_rows(
    combined: torch.Tensor,
    groups: list[torch.Tensor],
    field: ReceptiveField,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each pixel's row cropped from its group's combined gradient.

    Returns flat pixels (n,), rows (n, C, h, w) with h, w the field's diameters (clipped to
    the image), and each crop's (top, left); the crop is zero outside the pixel's own box.
    """
    height, width = field.size
    period = periods(field)
    crop_h, crop_w = min(period[0], height), min(period[1], width)
    flat = torch.cat(groups)
    owner = torch.repeat_interleave(
        torch.arange(len(groups)), torch.tensor([len(g) for g in groups])
    )
    rows, cols = flat // width, flat % width
    top = (rows - field.up).clamp(0, height - crop_h)
    left = (cols - field.left).clamp(0, width - crop_w)
    ys = top[:, None] + torch.arange(crop_h)
    xs = left[:, None] + torch.arange(crop_w)
    boxes = field.boxes[flat]
    inside_y = (ys >= boxes[:, 0:1]) & (ys < boxes[:, 1:2])
    inside_x = (xs >= boxes[:, 2:3]) & (xs < boxes[:, 3:4])
    device = combined.device
    crops = combined[
        owner.to(device)[:, None, None], :, ys.to(device)[:, :, None], xs.to(device)[:, None, :]
    ]
    inside = (inside_y[:, :, None] & inside_x[:, None, :]).to(device)
    crops = crops * inside[..., None]
    return flat, crops.permute(0, 3, 1, 2), top, left
