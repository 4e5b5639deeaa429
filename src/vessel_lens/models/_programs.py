"""Model files that carry their own program: TorchScript (``torch.jit.save``) and
``torch.export`` (``torch.export.save``, usually ``.pt2``).

The format is read from the file, not its name: both are zip archives, TorchScript with a
``constants.pkl`` record, an exported program with an ``archive_format`` record saying ``pt2``.

Loading an exported program unpickles some of its records with Python's full unpickler
(``torch.load(weights_only=False)``, ``pickle.loads``), which can run any code. So before
:func:`torch.export.load` sees the file, every record it would unpickle is checked with the
weights-only unpickler (:func:`check_exported_archive`), and records holding pickled Python
objects are refused. TorchScript files are loaded by TorchScript's own unpickler, which builds
TorchScript values only; their code runs in the TorchScript interpreter when the model runs.
"""

from __future__ import annotations

import io
import json
import pickle
import posixpath
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from vessel_lens.errors import CheckpointError

TORCHSCRIPT = "TorchScript"
EXPORTED = "torch.export"
_META = ("archive_format", "archive_version", "byteorder", "version")
_FOLDERS = (
    ".data/",
    "models/",
    "extra/",
    "data/weights/",
    "data/constants/",
    "data/sample_inputs/",
)
"""What a ``torch.export.save`` archive holds (below its root folder)."""


def program_format(path: Path) -> str | None:
    """:data:`TORCHSCRIPT`, :data:`EXPORTED` or ``None`` (anything else) for a file."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = {_relative(name): name for name in archive.namelist()}
            if "archive_format" in names:
                marker = archive.read(names["archive_format"]).strip()
                return EXPORTED if marker == b"pt2" else None
            if "constants.pkl" in names and "data.pkl" in names:
                return TORCHSCRIPT
    except (zipfile.BadZipFile, OSError, ValueError, KeyError):
        return None
    return None


def _relative(name: str) -> str:
    """A record's name below the archive's root folder (``model/data.pkl`` → ``data.pkl``)."""
    return name.split("/", 1)[1] if "/" in name else name


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__


def load_torchscript(path: Path) -> nn.Module:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:  # torch reports every kind of damage as some RuntimeError
        raise CheckpointError(
            f"{path}: not a loadable TorchScript file ({_first_line(exc)})"
        ) from None


def _pickled_records(archive: zipfile.ZipFile, names: dict[str, str], path: Path) -> list[str]:
    """Records of the exported program that torch would unpickle; refuses those holding
    pickled Python objects (custom or opaque constants)."""
    pickled = [
        n
        for n in names
        if n.startswith("data/sample_inputs/")
        or (n.startswith(("data/weights/", "data/constants/")) and n.endswith(".pt"))
    ]
    configs = [
        n
        for n in names
        if n.startswith(("data/weights/", "data/constants/")) and n.endswith("_config.json")
    ]
    for config_name in configs:
        try:
            config = json.loads(archive.read(names[config_name]))["config"]
            entries = [(str(v["path_name"]), bool(v.get("use_pickle"))) for v in config.values()]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise CheckpointError(
                f"{path}: not a readable torch.export file ({config_name} is damaged)"
            ) from None
        folder = posixpath.dirname(config_name)
        for name, use_pickle in entries:
            if name.startswith(("custom_obj_", "opaque_obj_")):
                raise CheckpointError(
                    f"{path}: refused to load: its constant {name!r} is a pickled Python "
                    "object, which could run code (vessel-lens loads tensors only)"
                )
            if use_pickle:
                pickled.append(posixpath.join(folder, name))
    for name in names:
        if name not in _META and not name.startswith(_FOLDERS):
            raise CheckpointError(
                f"{path}: holds {name!r}, which is not part of a torch.export.save file"
            )
    return pickled


def check_exported_archive(path: Path) -> None:
    """Refuse an exported program if anything :func:`torch.export.load` would unpickle is
    more than tensors and plain values."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = {_relative(n): n for n in archive.namelist() if not n.endswith("/")}
            for name in _pickled_records(archive, names, path):
                if name not in names:
                    raise CheckpointError(f"{path}: not a readable torch.export file (no {name})")
                data = archive.read(names[name])
                try:
                    torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
                except pickle.UnpicklingError as exc:
                    raise CheckpointError(
                        f"{path}: refused to load: unsafe: its record {name} is not plain "
                        f"tensors ({_first_line(exc).split('. ')[0]})"
                    ) from None
                except Exception as exc:
                    raise CheckpointError(
                        f"{path}: not a readable torch.export file ({name}: {_first_line(exc)})"
                    ) from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable torch.export file ({exc})") from None


def load_exported(path: Path) -> tuple[nn.Module, tuple[int | None, ...]]:
    """The exported program's module and the input shape it accepts (``None``: any size)."""
    check_exported_archive(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.load(str(path))
    except Exception as exc:  # torch raises many kinds for damaged or newer archives
        raise CheckpointError(
            f"{path}: not a loadable torch.export file ({_first_line(exc)})"
        ) from None
    user_inputs = [
        spec.arg.name
        for spec in program.graph_signature.input_specs
        if spec.kind == torch.export.graph_signature.InputKind.USER_INPUT
    ]
    if len(user_inputs) != 1:
        raise CheckpointError(
            f"{path}: the exported program takes {len(user_inputs)} inputs; vessel-lens "
            "calls a model with one (B, C, H, W) image batch"
        )
    node = next(
        n for n in program.graph.nodes if n.op == "placeholder" and n.name == user_inputs[0]
    )
    value = node.meta.get("val")
    if not isinstance(value, torch.Tensor) or value.dim() != 4:
        raise CheckpointError(f"{path}: the exported program's input is not a (B, C, H, W) tensor")
    shape = tuple(int(s) if isinstance(s, int) else None for s in value.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = program.module()
    return module, shape
