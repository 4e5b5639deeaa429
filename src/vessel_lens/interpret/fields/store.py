"""Receptive-field maps on disk: one compressed ``<stem>.erf.npz`` per image.

The file holds every tensor of :class:`~vessel_lens.interpret.fields.maps.ReceptiveFieldMaps`
plus ``metadata_json``: the format tag, the threshold settings, the global maximum and the
provenance (model name and config hash, weights hash, checkpoint, image path, stem, crop box,
output, target class, pixels hash, strategy, seconds). It is written to a temporary file and
renamed into place, so a file with the final name is always complete: its presence marks the
image as done.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vessel_lens.errors import DataError
from vessel_lens.interpret.fields.maps import ARRAYS, ReceptiveFieldMaps
from vessel_lens.write_errors import atomic_file

FORMAT = "vessel-lens-erf"
VERSION = 1
SUFFIX = ".erf.npz"


def erf_path(folder: str | Path, stem: str) -> Path:
    """Where ``vessel-lens erf`` writes the maps of image ``stem``."""
    return Path(folder) / f"{stem}{SUFFIX}"


def find_receptive_field_maps(folder: str | Path) -> list[Path]:
    """The finished map files in ``folder`` (``*.erf.npz``), sorted by name."""
    return sorted(Path(folder).glob(f"*{SUFFIX}"))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def save_receptive_field_maps(maps: ReceptiveFieldMaps, path: str | Path) -> Path:
    """Write ``maps`` to ``path`` atomically (temporary file, then rename).

    Examples:
        >>> import torch
        >>> from vessel_lens.models import create_model
        >>> _ = torch.manual_seed(0)
        >>> model = create_model("resnet_seg", width=2).eval()  # or any (B, C, H, W) -> (B, K, H, W) net
        >>> image = torch.rand(1, 32, 32)  # (C, H, W)
        >>> import tempfile
        >>> from pathlib import Path
        >>> from vessel_lens.interpret import load_receptive_field_maps, receptive_field_maps
        >>> from vessel_lens.interpret import save_receptive_field_maps
        >>> maps = receptive_field_maps(model, image, fractions=(0.01,), pixels=[(16, 16)])
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     path = save_receptive_field_maps(maps, Path(folder) / "image.erf.npz")
        ...     again = load_receptive_field_maps(path)
        >>> path.name, bool((again.count == maps.count).all())
        ('image.erf.npz', True)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {
        **_jsonable(maps.metadata),
        "format": FORMAT,
        "version": VERSION,
        "fractions": list(maps.fractions),
        "mode": maps.mode,
        "channels": maps.channels,
        "mass_fractions": list(maps.mass_fractions),
        "global_max": maps.global_max,
    }
    arrays = {name: getattr(maps, name).detach().cpu().numpy() for name in ARRAYS}
    arrays["metadata_json"] = np.array(json.dumps(header))
    with atomic_file(path) as handle:
        np.savez_compressed(handle, **arrays)
    return path


def _open(path: Path):
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable receptive-field file ({exc})") from None


def _header(path: Path, archive) -> dict[str, Any]:
    try:
        header = json.loads(str(archive["metadata_json"]))
    except (KeyError, ValueError, OSError, zipfile.BadZipFile):
        raise DataError(f"{path}: not a vessel-lens receptive-field file") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise DataError(f"{path}: not a vessel-lens receptive-field file")
    if header.get("version") != VERSION:
        raise DataError(f"{path}: format version {header.get('version')}, expected {VERSION}")
    return header


def read_erf_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of a map file without reading its maps; :class:`DataError` if it is not one."""
    path = Path(path)
    with _open(path) as archive:
        return _header(path, archive)


def load_receptive_field_maps(path: str | Path) -> ReceptiveFieldMaps:
    """Read what ``vessel-lens erf`` (or :func:`save_receptive_field_maps`) wrote.

    ``maps.metadata`` holds the provenance: ``stem``, ``crop_box`` (top, left, height, width),
    ``weights_hash``, ``model_name``, ``output``, ``target_class``, ``image_path``, ... .

    Examples:
        >>> import tempfile
        >>> import torch
        >>> from pathlib import Path
        >>> from vessel_lens.interpret import load_receptive_field_maps, receptive_field_maps
        >>> from vessel_lens.interpret import save_receptive_field_maps
        >>> _ = torch.manual_seed(0)
        >>> net = torch.nn.Conv2d(1, 2, 5, padding=2)  # one layer: every field is 5 x 5
        >>> maps = receptive_field_maps(net, torch.rand(1, 16, 16), fractions=(0.0,), mode="pixel")
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     again = load_receptive_field_maps(save_receptive_field_maps(maps, Path(folder) / "a.erf.npz"))
        >>> again.count.shape, int(again.count[0, 8, 8])  # |g| > 0 at 25 input pixels
        (torch.Size([1, 16, 16]), 25)
    """
    path = Path(path)
    with _open(path) as archive:
        header = _header(path, archive)
        try:
            tensors = {name: torch.from_numpy(np.array(archive[name])) for name in ARRAYS}
        except (KeyError, ValueError, OSError, zipfile.BadZipFile) as exc:
            raise DataError(f"{path}: damaged receptive-field file ({exc})") from None
    settings = ("format", "version", "fractions", "mode", "channels", "mass_fractions")
    metadata = {k: v for k, v in header.items() if k not in (*settings, "global_max")}
    return ReceptiveFieldMaps(
        fractions=tuple(header["fractions"]),
        mode=header["mode"],
        channels=header["channels"],
        mass_fractions=tuple(header["mass_fractions"]),
        global_max=float(header["global_max"]),
        metadata=metadata,
        **tensors,
    )
