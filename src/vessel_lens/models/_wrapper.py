"""The module every model from outside vessel-lens is wrapped in.

Built-in models accept any image size and return (B, K, H, W) logits at the input's size;
every command relies on that. A model built by a user's factory, a TorchScript file or an
exported program promises nothing of the kind, so :class:`ForeignModule` checks each call:
the input against the shape a program was exported for, and the output for being one
(B, K, H, W) tensor at the input's size. A model that fails on an input (a U-Net whose
skip connections need sides divisible by 16) raises :class:`ModelError` naming the model
and the input, instead of a traceback from deep inside the model.

Exported programs run in the mode they were exported in and refuse ``train()``/``eval()``;
the wrapper's mode switches do not reach them (``fixed_mode``). A program exported with a
batch size of one is called once per image of a larger batch.
"""

from __future__ import annotations

import copy
import warnings

import torch
from torch import nn

from vessel_lens.errors import ModelError


def shape_text(shape) -> str:
    return "(" + ", ".join("*" if s is None else str(int(s)) for s in shape) + ")"


def _first_line(exc: BaseException) -> str:
    """The message's first line; for TorchScript, whose first lines are its traceback, the
    error at the end."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    line = lines[-1] if "TorchScript interpreter" in lines[0] else lines[0]
    return line[:200]


def _transformed(batch: torch.Tensor) -> bool:
    """Whether the model runs under a torch.func transform, whose own errors (a model
    ``vmap`` cannot handle) the caller interprets and must see unchanged."""
    return torch._C._functorch.is_functorch_wrapped_tensor(batch)


def _described(output: object) -> str:
    if isinstance(output, torch.Tensor):
        return f"a {shape_text(output.shape)} tensor"
    if isinstance(output, dict):
        return f"a dict with keys {', '.join(map(str, list(output)[:4]))}"
    if isinstance(output, (tuple, list)):
        return f"a {type(output).__name__} of {len(output)}"
    return f"a {type(output).__name__}"


class ForeignModule(nn.Module):
    """``model`` with the checks above; ``label`` names it in messages, ``input_shape``
    (exported programs) holds the sizes it accepts (``None`` where a size may vary).
    ``hides_layers``: a program (TorchScript, exported) whose layers run inside it, out of
    reach of module hooks and of Python-level ReLU replacements."""

    def __init__(
        self,
        model: nn.Module,
        label: str,
        input_shape: tuple[int | None, ...] | None = None,
        fixed_mode: bool = False,
        hides_layers: bool = False,
    ):
        super().__init__()
        self.model = model
        self.label = label
        self.input_shape = input_shape
        self.fixed_mode = fixed_mode
        self.hides_layers = hides_layers

    def train(self, mode: bool = True) -> ForeignModule:
        if not self.fixed_mode:
            return super().train(mode)
        self.training = bool(mode)  # the program keeps the mode it was exported in
        return self

    def __deepcopy__(self, memo):
        # copying an exported program warns about torch's own deprecated internals
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            new.__setstate__(copy.deepcopy(self.__dict__, memo))
        return new

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        if self.input_shape is not None:
            fixed_batch = self._check_input(batch)
            if fixed_batch == 1 and batch.shape[0] != 1:
                return torch.cat([self._run(batch[i : i + 1]) for i in range(batch.shape[0])])
        return self._run(batch)

    def _check_input(self, batch: torch.Tensor) -> int | None:
        wanted = self.input_shape
        shape = tuple(batch.shape)
        if len(shape) != len(wanted) or any(
            w is not None and s != w for s, w in zip(shape[1:], wanted[1:], strict=False)
        ):
            raise ModelError(
                f"{self.label}: exported for inputs of shape {shape_text(wanted)}, given "
                f"{shape_text(shape)}; choose a crop of that size, or export with "
                "torch.export.Dim for variable sizes"
            )
        fixed = wanted[0]
        if fixed is not None and fixed != 1 and shape[0] != fixed:
            raise ModelError(
                f"{self.label}: exported for batches of {fixed} images, given {shape[0]}; "
                "export with a batch of 1 or a torch.export.Dim batch size"
            )
        return fixed

    def _run(self, batch: torch.Tensor) -> torch.Tensor:
        try:
            output = self.model(batch)
        except torch.OutOfMemoryError:
            raise
        except (RuntimeError, AssertionError) as exc:
            if _transformed(batch):
                raise
            raise ModelError(
                f"{self.label}: failed on a {shape_text(batch.shape)} input: {_first_line(exc)}"
            ) from None
        fits = (
            isinstance(output, torch.Tensor)
            and output.dim() == 4
            and output.shape[0] == batch.shape[0]
            and tuple(output.shape[-2:]) == tuple(batch.shape[-2:])
            and output.shape[1] >= 1
        )
        if not fits:
            raise ModelError(
                f"{self.label}: returned {_described(output)} for a {shape_text(batch.shape)} "
                "input; vessel-lens needs (B, K, H, W) class logits at the input's size"
            )
        return output
