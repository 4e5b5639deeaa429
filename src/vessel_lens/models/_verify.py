"""What a checkpoint's weights must pass before its model is built.

A checkpoint names an architecture and its constructor arguments, and building that model
allocates every parameter: a 1 KB file asking for ``width=2048`` would take tens of GB before
its weights could be found wanting. So the model is first built on the ``meta`` device (shapes
only, no memory) and compared with the state dict: the same names with the same shapes, and no
more values in the model's parameters and buffers than the file holds, give or take
:data:`EXTRA_VALUES` for buffers a model keeps out of its state dict. Only a model that passes
is materialised. Weights must also be finite: NaN or inf weights give NaN outputs that
downstream metrics turn into plausible-looking numbers (an AUC of 0.5).
"""

from __future__ import annotations

import reprlib
from typing import Any

import torch
from torch import nn

from vessel_lens.errors import ConfigError
from vessel_lens.models.registry import create_model

EXTRA_VALUES = 1 << 20
"""Values a model may hold beyond its state dict (non-persistent buffers), on top of as many
as the state dict itself holds."""


def shape_text(shape: torch.Size | tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def meta_model(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """The model ``create_model(name, **kwargs)`` would build, on the ``meta`` device.

    Raises :class:`ConfigError` for an unknown name or arguments the model refuses, and for
    arguments whose sizes cannot even be described (``ValueError`` from torch)."""
    try:
        with torch.device("meta"):
            return create_model(name, **kwargs)
    except (RuntimeError, OverflowError) as exc:  # sizes beyond int64
        text = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"model {name!r}: arguments give impossible sizes ({text})") from None


def _count(names: list[str], what: str) -> str:
    first = names[0]
    return f"{len(names)} tensor(s) {what} (first {first!r})"


def mismatch(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> str | None:
    """Why ``state_dict`` cannot be ``model``'s weights (``None`` when it fits): missing or
    unexpected names, other shapes, or a model holding far more values than the file."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    problems = []
    if missing:
        problems.append(_count(missing, "missing"))
    if unexpected:
        problems.append(_count(unexpected, "unexpected"))
    for key, wanted in expected.items():
        if key in state_dict and tuple(state_dict[key].shape) != tuple(wanted.shape):
            problems.append(
                f"{key!r} is {shape_text(state_dict[key].shape)} in the file but "
                f"{shape_text(wanted.shape)} in the model"
            )
            break
    if problems:
        return "; ".join(problems)
    held = sum(t.numel() for t in state_dict.values())
    needed = sum(t.numel() for t in (*model.parameters(), *model.buffers()))
    if needed > 2 * held + EXTRA_VALUES:
        return f"the model would hold {needed:,} values but the file holds only {held:,}"
    return None


def nonfinite(state_dict: dict[str, torch.Tensor]) -> str | None:
    """``None`` when every floating weight is finite, else which tensors are not."""
    bad: list[tuple[str, int, int]] = []
    for key, tensor in state_dict.items():
        if tensor.is_floating_point() or tensor.is_complex():
            count = int((~torch.isfinite(tensor)).sum())
            if count:
                bad.append((key, count, tensor.numel()))
    if not bad:
        return None
    key, count, total = bad[0]
    return (
        f"{len(bad)} weight tensor(s) hold NaN or inf values (first {key!r}: {count:,} of "
        f"{total:,} values); the model's outputs would be NaN"
    )


def not_tensors(state_dict: dict[Any, Any]) -> str | None:
    """``None`` when every entry maps a name to a dense tensor, else the first that does not."""
    for key, value in state_dict.items():
        if not isinstance(key, str):
            return f"its state_dict has a key {key!r} that is not a parameter name"
        if not isinstance(value, torch.Tensor):
            return (
                f"its state_dict entry {key!r} holds {type(value).__name__} "
                f"{reprlib.repr(value)}, not a tensor"
            )
        if value.layout != torch.strided or value.device.type != "cpu":
            return f"its state_dict entry {key!r} is not a dense CPU tensor"
    return None
