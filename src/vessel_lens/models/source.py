"""Where a command's model comes from: a checkpoint, or a model from outside vessel-lens.

Every command that analyses a model takes either ``--checkpoint`` (a vessel-lens checkpoint, a
run folder, a shipped name, or a TorchScript or ``torch.export`` file) or ``--model
module:factory`` with optional ``--model-args`` and ``--weights`` (:mod:`.foreign`). This module
checks the combination without importing torch, so a wrong combination fails before any work.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vessel_lens.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from vessel_lens.models.checkpoint import Checkpoint


@dataclass(frozen=True)
class ModelSource:
    """A checkpoint spec, or a factory spec with its keyword arguments and weights file."""

    checkpoint: str | None = None
    model: str | None = None
    model_args: dict[str, Any] | None = None
    weights: str | None = None

    def __post_init__(self) -> None:
        check_model_options(
            self.checkpoint, self.model, self.model_args, self.weights, required=True
        )

    @property
    def options(self) -> str:
        """The command-line options that name this model (for hints in messages)."""
        if self.model is None:
            return f"--checkpoint {shlex.quote(str(self.checkpoint))}"
        parts = ["--model", shlex.quote(self.model)]
        if self.model_args:
            parts += ["--model-args", shlex.quote(json.dumps(self.model_args))]
        if self.weights is not None:
            parts += ["--weights", shlex.quote(str(self.weights))]
        return " ".join(parts)

    def load(self, device=None):
        """``(model in eval mode, Checkpoint-like record)``; see :func:`load_model`."""
        return load_model(
            self.checkpoint,
            device,
            model=self.model,
            model_args=self.model_args,
            weights=self.weights,
        )


def check_model_options(
    checkpoint: object, model: object, model_args: object, weights: object, required: bool
) -> None:
    """Refuse combinations that cannot name one model, and none at all when ``required``."""
    if model is not None and not str(model).strip():
        raise ConfigError("--model: empty value")
    if model is not None and checkpoint is not None:
        raise ConfigError(
            "--model and --checkpoint exclude each other: give a checkpoint (or TorchScript / "
            "torch.export file), or a model factory with --weights"
        )
    if weights is not None and model is None:
        raise ConfigError(
            f"--weights {weights}: needs --model module:factory to build the model it fits "
            "(a vessel-lens checkpoint, TorchScript or .pt2 file goes to --checkpoint)"
        )
    if model_args is not None and model is None:
        raise ConfigError("--model-args: needs --model (the arguments of its factory)")
    if model_args is not None and not isinstance(model_args, dict):
        raise ConfigError(
            f"--model-args: expected a JSON object of keyword arguments, not "
            f"{type(model_args).__name__}"
        )
    if required and checkpoint is None and model is None:
        raise ConfigError(
            "give --checkpoint (a checkpoint, TorchScript or torch.export file) or --model"
        )


def parse_model_args(text: str | None) -> dict[str, Any] | None:
    """``--model-args`` as given on the command line: a JSON object (``None`` when absent)."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"--model-args {text[:60]!r}: not valid JSON ({exc.msg} at character {exc.pos}); "
            """write e.g. '{"in_channels": 1, "channels": [8, 16, 32]}'"""
        ) from None
    if not isinstance(value, dict):
        raise ConfigError(
            f"--model-args {text[:60]!r}: expected a JSON object of keyword arguments, "
            f"not {type(value).__name__}"
        )
    return value


def load_model(
    spec: str | Path | None = None,
    device: torch.device | str | None = None,
    *,
    model: str | None = None,
    model_args: dict[str, Any] | None = None,
    weights: str | Path | None = None,
) -> tuple[nn.Module, Checkpoint]:
    """A model in eval mode and the checkpoint (or a record like one) it came from.

    ``spec``: a checkpoint path, run folder or shipped name, or a TorchScript or
    ``torch.export`` file. Or, instead, ``model``: ``package.module:factory`` or
    ``path/to/file.py:factory`` called with ``model_args``, given the state dict in
    ``weights`` (see :mod:`vessel_lens.models.foreign`).

    Examples:
        >>> from vessel_lens.models import load_model
        >>> model, checkpoint = load_model("vessmap-w16")  # the shipped checkpoint
        >>> checkpoint.model_name, checkpoint.model_kwargs["width"], model.training
        ('resnet_seg', 16, False)
    """
    from vessel_lens.models import foreign
    from vessel_lens.models._programs import program_format
    from vessel_lens.models.checkpoint import read_checkpoint, resolve_checkpoint_path

    source = ModelSource(
        None if spec is None else str(spec),
        model,
        model_args,
        None if weights is None else str(weights),
    )
    if source.model is not None:
        return foreign.load_factory_model(source.model, source.model_args, weights, device)
    path = resolve_checkpoint_path(spec)
    kind = program_format(path)
    if kind is not None:
        return foreign.load_program(path, kind, device)
    checkpoint = read_checkpoint(path)
    return checkpoint.build(device), checkpoint
