"""Checkpoints: one file that rebuilds its model alone.

A checkpoint is a dict saved with :func:`torch.save` holding plain values and tensors only
(so it loads with ``weights_only=True``)::

    format        "vessel-lens-checkpoint"
    version       1
    model_name    registry name (see :func:`vessel_lens.models.create_model`)
    model_kwargs  constructor arguments
    state_dict    weights (float32, or float16 for shipped checkpoints)
    metadata      free-form training metadata (epoch, metrics, data, config, ...)
    training      optional: optimiser, scheduler and RNG states for resuming

Files are written to a temporary file in the same folder and renamed over the target, so an
interrupted or failed save never leaves a half-written checkpoint in place of a good one.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vessel_lens.errors import CheckpointError, ConfigError
from vessel_lens.models._verify import meta_model, mismatch, nonfinite, not_tensors
from vessel_lens.models.registry import create_model
from vessel_lens.write_errors import atomic_file

FORMAT = "vessel-lens-checkpoint"
VERSION = 1
SHIPPED = {"vessmap-w16": "vessmap-w16.pt"}
"""Checkpoints inside the package, usable by name wherever a checkpoint path is expected."""


@dataclass
class Checkpoint:
    """A loaded checkpoint's contents (``path`` is where it was read from)."""

    model_name: str
    model_kwargs: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] | None = None
    path: Path | None = None

    def build(self, device: torch.device | str | None = None) -> nn.Module:
        """Rebuild the model in eval mode with these weights (cast to float32).

        The model is first built on the ``meta`` device and checked against the weights
        (:mod:`._verify`), so a file whose arguments ask for a huge model is refused before
        any memory is taken; weights holding NaN or inf are refused too."""
        label = f"{self.model_name}({_kwargs_text(self.model_kwargs)})"
        try:
            planned = meta_model(self.model_name, self.model_kwargs)
        except ConfigError as exc:
            raise CheckpointError(f"{self.path}: {exc}") from None
        problem = mismatch(planned, self.state_dict)
        if problem:
            raise CheckpointError(f"{self.path}: weights do not fit {label}: {problem}")
        problem = nonfinite(self.state_dict)
        if problem:
            raise CheckpointError(f"{self.path}: refused: {problem}")
        try:
            with torch.random.fork_rng():  # initial weights are overwritten: keep the caller's RNG
                model = create_model(self.model_name, **self.model_kwargs)
        except ConfigError as exc:
            raise CheckpointError(f"{self.path}: {exc}") from None
        state = {k: v.float() if v.is_floating_point() else v for k, v in self.state_dict.items()}
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()
            detail = first[1].strip() if len(first) > 1 else first[0]
            raise CheckpointError(
                f"{self.path}: weights do not fit {label}: {detail[:200]}"
            ) from None
        return model.to(device or "cpu").eval()

    @property
    def in_channels(self) -> int:
        """Channels of the images the model reads."""
        return int(self.model_kwargs.get("in_channels", 1))


def _kwargs_text(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in sorted(kwargs.items()))


def shipped_checkpoint_path(name: str) -> Path:
    return Path(str(resources.files("vessel_lens.models").joinpath("weights", SHIPPED[name])))


def resolve_checkpoint_path(spec: str | Path) -> Path:
    """A shipped checkpoint name, a run folder (its ``best.pt``) or a file path.

    Examples:
        >>> from vessel_lens.models import resolve_checkpoint_path
        >>> resolve_checkpoint_path("vessmap-w16").name
        'vessmap-w16.pt'
    """
    if str(spec) in SHIPPED:
        path = shipped_checkpoint_path(str(spec))
        if not path.exists():
            raise CheckpointError(f"shipped checkpoint {spec!r} is missing from the installation")
        return path
    path = Path(spec)
    if path.is_dir():
        for candidate in ("best.pt", "last.pt"):
            if (path / candidate).exists():
                return path / candidate
        raise CheckpointError(f"{path}: folder holds no best.pt or last.pt")
    if not path.exists():
        names = ", ".join(SHIPPED)
        raise CheckpointError(f"{path}: checkpoint not found (shipped checkpoints: {names})")
    return path


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__


def _unpickler_reason(message: str) -> str:
    """The informative part of torch's weights-only refusal (it spans many lines)."""
    lines = [line.strip() for line in message.splitlines()]
    for i, line in enumerate(lines):
        if "WeightsUnpickler error" in line:
            after = line.split("error:", 1)[-1].strip()
            following = [x for x in lines[i + 1 :] if x]
            text = after or (following[0] if following else "")
            return text.split(". Please")[0][:160] or "unpickling failed"
    return lines[0][:160] if lines and lines[0] else "unpickling failed"


def _refused_global(message: str) -> str | None:
    """The ``module.name`` torch's weights-only unpickler refused to import, if that is why
    it failed (torch words it "Unsupported global: GLOBAL x.y" or "unsupported GLOBAL x.y")."""
    found = re.search(r"\bGLOBAL\s+([\w.]+)", message, flags=re.IGNORECASE)
    return found.group(1) if found else None


def load_file(path: Path, what: str = "checkpoint") -> Any:
    """``torch.load(path, weights_only=True)``; every failure is one :class:`CheckpointError`
    calling the file a ``what``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        imported = _refused_global(str(exc))
        if imported:
            raise CheckpointError(
                f"{path}: refused to load: unsafe: the file asks to import {imported} "
                f"(a {what} holds only tensors and plain values)"
            ) from None
        raise CheckpointError(
            f"{path}: not a readable {what} (corrupt: {_unpickler_reason(str(exc))})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: not a readable {what} (corrupt or truncated: {_first_line(exc)})"
        ) from None
    except Exception as exc:  # the legacy unpickler fails on text files with anything
        raise CheckpointError(
            f"{path}: not a readable {what} (not a PyTorch file: "
            f"{type(exc).__name__} {_first_line(exc)})"
        ) from None


def read_checkpoint(spec: str | Path) -> Checkpoint:
    """Read and validate a checkpoint file; every failure is one :class:`CheckpointError`.

    Examples:
        >>> from vessel_lens.models import read_checkpoint
        >>> checkpoint = read_checkpoint("vessmap-w16")
        >>> checkpoint.model_name, sorted(checkpoint.model_kwargs)
        ('resnet_seg', ['dropout', 'in_channels', 'norm', 'width'])
    """
    from vessel_lens.models._programs import program_format

    path = resolve_checkpoint_path(spec)
    kind = program_format(path)
    if kind is not None:
        raise CheckpointError(
            f"{path}: is a {kind} file, not a vessel-lens checkpoint: the commands that "
            "analyse a model take it with --checkpoint, but it cannot be trained on"
        )
    raw = load_file(path)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: not a vessel-lens checkpoint (holds {type(raw).__name__})")
    if raw.get("format") != FORMAT:
        if raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
            raise CheckpointError(
                f"{path}: holds a bare state dict without the model name and arguments; "
                "give its model with --model module:factory --weights FILE, or wrap it "
                "with vessel_lens.models.save_checkpoint"
            )
        raise CheckpointError(f"{path}: not a vessel-lens checkpoint (no format marker)")
    if raw.get("version", 0) > VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {raw['version']} is newer than supported"
        )
    for key, kind in (("model_name", str), ("model_kwargs", dict), ("state_dict", dict)):
        if not isinstance(raw.get(key), kind):
            raise CheckpointError(f"{path}: checkpoint has no valid {key!r}")
    problem = not_tensors(raw["state_dict"])
    if problem:
        raise CheckpointError(f"{path}: not a usable checkpoint: {problem}")
    return Checkpoint(
        raw["model_name"],
        dict(raw["model_kwargs"]),
        raw["state_dict"],
        dict(raw.get("metadata") or {}),
        raw.get("training"),
        path,
    )


class _KeepingWriteErrors:
    """A file handle for ``torch.save`` that keeps the ``OSError`` of a failed write: torch
    reports it only as ``RuntimeError: ... unexpected pos``, without the reason (disk full)."""

    def __init__(self, handle):
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.handle.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.handle.flush()


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Save to a temporary file beside ``path`` and rename it over ``path``. A failed write
    raises its ``OSError`` (``errno`` ENOSPC, ...) with ``filename`` set to ``path``."""
    path = Path(path)
    with atomic_file(path) as handle:
        writer = _KeepingWriteErrors(handle)
        try:
            torch.save(obj, writer)
        except RuntimeError:
            if writer.error is None:
                raise
            error = writer.error
            raise OSError(error.errno, error.strerror, str(path)) from None


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    model_name: str,
    model_kwargs: dict[str, Any],
    metadata: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    half: bool = False,
) -> Path:
    """Write a checkpoint atomically. ``half`` stores floating weights as float16.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from vessel_lens.models import create_model, load_model, save_checkpoint
        >>> model = create_model("unet", width=4)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = save_checkpoint(Path(folder) / "unet.pt", model, "unet", {"width": 4})
        ...     again, checkpoint = load_model(path)
        >>> checkpoint.model_name, type(again).__name__
        ('unet', 'UNet')
    """
    module = getattr(model, "module", model)
    state = {
        k: (v.detach().cpu().half() if half and v.is_floating_point() else v.detach().cpu())
        for k, v in module.state_dict().items()
    }
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model_name": model_name,
        "model_kwargs": dict(model_kwargs),
        "state_dict": state,
        "metadata": dict(metadata or {}),
    }
    if training is not None:
        payload["training"] = training
    atomic_torch_save(payload, Path(path))
    return Path(path)
