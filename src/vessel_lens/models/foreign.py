"""Models from outside vessel-lens: a factory and a state dict, or a TorchScript or
``torch.export`` file.

``--model package.module:factory`` (or ``path/to/file.py:factory``) names a callable that
returns a ``torch.nn.Module``; it is called with the ``--model-args`` JSON object as keyword
arguments, and the state dict in ``--weights`` is loaded into what it returns. The weights file
is read with ``torch.load(weights_only=True)`` and may hold a bare state dict, one under
``state_dict``/``model``/``model_state_dict``/``net``/``network``/``weights`` (Lightning and
most training scripts), or a vessel-lens checkpoint; a prefix shared by every name
(``module.`` of DataParallel, ``model.`` of Lightning) is dropped when the model's names lack
it. The names and shapes are compared with the model's before anything is loaded, and weights
holding NaN or inf are refused, as for checkpoints (:mod:`._verify`). The model itself comes
from the user's own code and arguments, not from the file, so it is built directly (a file
cannot make it large).

Every such model is wrapped in :class:`~._wrapper.ForeignModule` and described by a
:class:`ForeignCheckpoint`: ``model_name`` the factory spec (or ``TorchScript:<class>`` /
``torch.export``), ``model_kwargs`` its arguments, ``state_dict`` the weights (for the hashes
that identify results), empty ``metadata`` (no training record, no recorded split) and
``path`` the weights or model file.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vessel_lens.errors import CheckpointError, ConfigError
from vessel_lens.models._programs import (
    EXPORTED,
    TORCHSCRIPT,
    load_exported,
    load_torchscript,
    program_format,
)
from vessel_lens.models._verify import mismatch, nonfinite, not_tensors
from vessel_lens.models._wrapper import ForeignModule
from vessel_lens.models.checkpoint import FORMAT, Checkpoint, load_file

WRAPPERS = ("state_dict", "model_state_dict", "model", "net", "network", "weights")
"""Keys under which training scripts commonly save the state dict beside other things."""


@dataclass
class ForeignCheckpoint(Checkpoint):
    """What :func:`load_factory_model` and :func:`load_program` return beside the model."""

    kind: str = "factory"
    """``factory``, ``TorchScript`` or ``torch.export``."""
    input_channels: int = 1
    factory: Callable[..., nn.Module] | None = field(default=None, repr=False, compare=False)

    @property
    def in_channels(self) -> int:
        return self.input_channels

    def build(self, device: torch.device | str | None = None) -> nn.Module:
        """The model again, with these weights."""
        if self.factory is None:
            return load_program(Path(str(self.path)), self.kind, device)[0]
        model = _call(self.factory, self.model_name, self.model_kwargs)
        model.load_state_dict(self.state_dict, strict=True)
        return _wrapped(model, self.model_name, device)

    def random_init(self, seed: int, device: torch.device | str | None = None):
        """The same architecture freshly initialised (``None``: a model file has no
        constructor to initialise it with)."""
        if self.factory is None:
            return None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _call(self.factory, self.model_name, self.model_kwargs)
        return _wrapped(model, self.model_name, device)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:160]}" if text else type(exc).__name__


def _import_file(path: Path, spec: str):
    if not path.is_file():
        raise ConfigError(f"--model {spec}: file {path} not found")
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    name = f"vessel_lens_user_model_{digest}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"--model {spec}: {path} is not a Python file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # classes defined there must find their module (pickling, jit)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ConfigError(f"--model {spec}: importing {path} failed: {_first_line(exc)}") from None
    return module


def _import_module(where: str, spec: str, name: str):
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as exc:
        if exc.name and (where == exc.name or where.startswith(exc.name + ".")):
            raise ConfigError(
                f"--model {spec}: no module named {where!r} (is it installed? for a file, "
                f"write path/to/file.py:{name})"
            ) from None
        raise ConfigError(f"--model {spec}: importing {where} failed: {_first_line(exc)}") from None
    except Exception as exc:
        raise ConfigError(f"--model {spec}: importing {where} failed: {_first_line(exc)}") from None


def import_factory(spec: str) -> Callable[..., nn.Module]:
    """The callable ``package.module:factory`` or ``path/to/file.py:factory`` names."""
    where, colon, name = spec.rpartition(":")
    if not colon or not where or not name:
        raise ConfigError(
            f"--model {spec!r}: expected package.module:factory or path/to/file.py:factory"
        )
    if where.endswith(".py") or "/" in where or os.sep in where:
        target = _import_file(Path(where), spec)
    else:
        target = _import_module(where, spec, name)
    for part in name.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"--model {spec}: {where} has no attribute {name!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(f"--model {spec}: {name} is a {type(target).__name__}, not callable")
    return target


def _call(factory: Callable[..., Any], spec: str, kwargs: dict[str, Any]) -> nn.Module:
    try:
        with torch.random.fork_rng(devices=[]):  # initial weights: keep the caller's RNG
            model = factory(**kwargs)
    except Exception as exc:
        given = f"with {kwargs}" if kwargs else "without arguments"
        raise ConfigError(
            f"--model {spec}: calling it {given} failed: {_first_line(exc)}"
        ) from None
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"--model {spec}: returned a {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in a weights file (see the module docs for the layouts accepted)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found")
    kind = program_format(path)
    if kind is not None:
        raise CheckpointError(
            f"{path}: is a {kind} file, which holds its own model: give it to --checkpoint, "
            "without --model"
        )
    raw = load_file(path, "weights file")
    state = None
    if isinstance(raw, dict) and raw.get("format") == FORMAT:
        state = raw.get("state_dict")
    elif isinstance(raw, dict) and raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
        state = raw
    elif isinstance(raw, dict):
        state = next((raw[k] for k in WRAPPERS if isinstance(raw.get(k), dict)), None)
    if not isinstance(state, dict) or not state:
        what = (
            f"a dict with keys {', '.join(map(str, list(raw)[:5]))}"
            if isinstance(raw, dict)
            else type(raw).__name__
        )
        raise CheckpointError(
            f"{path}: holds no state dict ({what}); expected a dict of tensors, or one under "
            f"{' / '.join(repr(k) for k in WRAPPERS[:2])}"
        )
    problem = not_tensors(state)
    if problem:
        raise CheckpointError(f"{path}: not usable weights: {problem}")
    return state


def _without_prefix(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """``state`` with a first name part shared by every key dropped, when that makes the names
    the model's (``module.`` of DataParallel, ``model.`` of Lightning)."""
    if set(state) == expected:
        return state
    heads = {key.split(".", 1)[0] for key in state}
    if len(heads) == 1 and all("." in key for key in state):
        stripped = {key.split(".", 1)[1]: value for key, value in state.items()}
        if set(stripped) == expected:
            return stripped
    return state


def input_channels(model: nn.Module, state: dict[str, torch.Tensor]) -> int:
    """Channels of the images a model reads: its first ``Conv2d``, else the first 4-D weight
    of its state dict (TorchScript and exported models have no ``Conv2d`` modules), else 1."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if first is not None:
        return int(first.in_channels)
    weight = next((v for v in state.values() if v.dim() == 4 and v.is_floating_point()), None)
    return int(weight.shape[1]) if weight is not None else 1


def _wrapped(model: nn.Module, label: str, device, **options) -> ForeignModule:
    return ForeignModule(model, label, **options).to(device or "cpu").eval()


def load_factory_model(
    spec: str,
    model_args: dict[str, Any] | None,
    weights: str | Path | None,
    device: torch.device | str | None = None,
) -> tuple[nn.Module, ForeignCheckpoint]:
    """The model ``spec`` builds with ``model_args``, with the weights in ``weights`` (without
    them, the weights the factory gave it; a warning says so)."""
    kwargs = dict(model_args or {})
    factory = import_factory(spec)
    model = _call(factory, spec, kwargs)
    if weights is None:
        warnings.warn(
            f"--model {spec} without --weights: the model keeps the weights its factory gave it",
            UserWarning,
            stacklevel=2,
        )
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        path = None
    else:
        path = Path(weights)
        state = _without_prefix(read_weights(path), set(model.state_dict()))
        problem = mismatch(model, state)
        if problem:
            raise CheckpointError(f"{path}: weights do not fit {spec}: {problem}")
        problem = nonfinite(state)
        if problem:
            raise CheckpointError(f"{path}: refused: {problem}")
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            lines = str(exc).strip().splitlines()
            detail = lines[1].strip() if len(lines) > 1 else lines[0]
            raise CheckpointError(f"{path}: weights do not fit {spec}: {detail[:200]}") from None
    channels = kwargs.get("in_channels")
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
        channels = input_channels(model, state)
    record = ForeignCheckpoint(spec, kwargs, state, {}, None, path, "factory", channels, factory)
    return _wrapped(model, spec, device), record


def load_program(
    path: Path, kind: str, device: torch.device | str | None = None
) -> tuple[nn.Module, ForeignCheckpoint]:
    """A TorchScript or exported-program file's model (``kind`` from
    :func:`~._programs.program_format`)."""
    path = Path(path)
    shape = None
    if kind == TORCHSCRIPT:
        model = load_torchscript(path)
        name = f"{TORCHSCRIPT}:{getattr(model, 'original_name', 'module')}"
    elif kind == EXPORTED:
        model, shape = load_exported(path)
        name = EXPORTED
    else:
        raise CheckpointError(f"{path}: not a TorchScript or torch.export file")
    # weights of a program are constants here; converting ones that require grad (.double())
    # would make them non-leaf tensors in TorchScript
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    problem = nonfinite(state)
    if problem:
        raise CheckpointError(f"{path}: refused: {problem}")
    channels = shape[1] if shape is not None and shape[1] is not None else None
    channels = channels or input_channels(model, state)
    record = ForeignCheckpoint(name, {}, state, {}, None, path, kind, channels)
    wrapped = _wrapped(
        model,
        path.name,
        device,
        input_shape=shape,
        fixed_mode=kind == EXPORTED,
        hides_layers=True,
    )
    return wrapped, record
