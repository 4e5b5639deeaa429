"""The images of one ``vessel-lens erf`` run, whether each still needs computing, and the run's
``summary.csv`` and ``erf-run.json`` (see :mod:`.run`)."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from vessel_lens.errors import DataError
from vessel_lens.interpret.fields.maps import summarise
from vessel_lens.interpret.fields.store import erf_path, read_erf_metadata
from vessel_lens.interpret.provenance import (
    STORED_SETTINGS,
    crop_box,
    differences,
    image_hash,
    payload_hash,
    provenance,
)
from vessel_lens.outputs import refused
from vessel_lens.write_errors import atomic_file

COMPARED = ("source", *STORED_SETTINGS, "fractions", "mode", "channels", "mass_fractions")
"""Settings that must match for a run to skip an image's existing map file."""


@dataclass
class Job:
    """One image: its map file, provenance, and the crop and pixels (from a model) or the
    Jacobian store (from stored rows)."""

    stem: str
    path: Path
    attrs: dict[str, Any]
    image: torch.Tensor | None = None
    pixels: torch.Tensor | None = None
    store: Path | None = None


def _settings(config) -> dict[str, Any]:
    return {
        "fractions": list(config.fractions),
        "mode": config.mode,
        "channels": config.channels,
        "mass_fractions": list(config.mass_fractions),
    }


def model_jobs(config, checkpoint) -> list[Job]:
    from vessel_lens.data.source import open_dataset

    in_channels = checkpoint.in_channels
    dataset = open_dataset(config.data, keep_channels=in_channels > 1, require_labels=False)
    samples = _chosen(dataset.subset(config.split), config, f"split {config.split!r}")
    base = {
        "source": "model",
        **provenance(checkpoint, config.output, config.target_class, "float32"),
        "dataset": dataset.name,
        **_settings(config),
    }
    jobs = []
    for sample in samples:
        top, left, h, w = crop_box(*sample.size, config.crop, sample.stem, config.crop_box)
        rows = torch.arange(0, h, config.pixel_stride)
        cols = torch.arange(0, w, config.pixel_stride)
        pixels = (rows[:, None] * w + cols[None, :]).reshape(-1)
        image_path = (
            str(sample.image_path) if sample.image_path else f"{dataset.name}:{sample.stem}"
        )
        attrs = {
            **base,
            "stem": sample.stem,
            "image_path": image_path,
            "crop_box": [top, left, h, w],
            "pixel_stride": config.pixel_stride,
            "pixels_hash": payload_hash(pixels.tolist()),
        }
        image = sample.image[:, top : top + h, left : left + w].float()
        attrs["image_hash"] = image_hash(image)
        jobs.append(Job(sample.stem, erf_path(config.out, sample.stem), attrs, image, pixels))
    return jobs


def _chosen(items: list, config, where: str) -> list:
    if not config.images:
        return items
    known = {item.stem: item for item in items}
    missing = [stem for stem in config.images if stem not in known]
    if missing:
        preview = ", ".join(sorted(known)[:5])
        raise DataError(
            f"--images {missing[0]}: not in {where} (it holds {len(known)} images, e.g. {preview})"
        )
    return [known[stem] for stem in dict.fromkeys(config.images)]


@dataclass
class _Store:
    stem: str
    path: Path
    attrs: dict[str, Any]


def store_jobs(config) -> list[Job]:
    from vessel_lens.interpret.jacobian.store import JacobianStore

    stores = []
    for path in sorted(config.from_jacobian.glob("*.zarr")):
        store = JacobianStore.open(path, mode="r")
        if not store.complete:
            raise DataError(
                f"{path}: incomplete Jacobian store; finish it with vessel-lens jacobian first"
            )
        stores.append(_Store(str(store.attrs.get("stem", path.stem)), path, store.attrs))
    if not stores:
        raise DataError(f"--from-jacobian {config.from_jacobian}: holds no *.zarr store")
    first: dict[str, Path] = {}
    for store in stores:  # one map file per image stem: two stores of one image would clash
        if store.stem in first:
            raise DataError(
                f"--from-jacobian {config.from_jacobian}: {first[store.stem].name} and "
                f"{store.path.name} both hold image {store.stem!r}; move one of them to "
                "another folder"
            )
        first[store.stem] = store.path
    jobs = []
    for store in _chosen(stores, config, str(config.from_jacobian)):
        attrs = {
            key: value
            for key, value in store.attrs.items()
            if key not in ("format", "rows", "chunk_rows", "source_shape")
        }
        attrs.update(source="jacobian", jacobian_store=str(store.path), **_settings(config))
        if "image_hash" not in attrs:  # stores written before image fingerprints
            attrs["image_hash"] = image_hash(_store_image(store.path))
        jobs.append(Job(store.stem, erf_path(config.out, store.stem), attrs, store=store.path))
    return jobs


def _store_image(path: Path) -> torch.Tensor:
    import numpy as np

    from vessel_lens.interpret.jacobian.store import JacobianStore

    group = JacobianStore.open(path, mode="r").group
    return torch.from_numpy(np.asarray(group["image"][...], dtype=np.float32))


def needs_work(config, job: Job) -> bool:
    """Whether ``job`` must be computed; raises when an existing file may not be replaced."""
    if not job.path.exists():
        return True
    try:
        existing = read_erf_metadata(job.path)
    except DataError:
        if config.overwrite:
            return True
        raise refused(job.path, "exists but is not a receptive-field file", DataError) from None
    wanted = json.loads(json.dumps(job.attrs))
    different = differences(existing, wanted, COMPARED)
    if different and not config.overwrite:
        raise refused(job.path, f"holds maps computed with different {', '.join(different)}")
    return bool(different) or config.overwrite


def file_run_id(path: Path) -> str | None:
    """The id of the ``vessel-lens erf`` run that wrote a map file (None: written before ids)."""
    run_id = read_erf_metadata(path).get("run_id")
    return str(run_id) if run_id else None


def check_unreplaced(expected: dict[Path, str | None]) -> None:
    """Refuse a folder where a map file no longer holds what this run computed or accepted:
    another run replaced it meanwhile, so the folder mixes two runs' maps."""
    for path, run_id in expected.items():
        if file_run_id(path) != run_id:
            raise DataError(
                f"{path}: was replaced by another run while this one ran (two runs wrote into "
                "this folder at once); its maps may not match the others: rerun with --overwrite"
            )


def read_run_id(folder: Path) -> str | None:
    """The run id recorded in ``folder``'s erf-run.json."""
    run_id = json.loads((Path(folder) / "erf-run.json").read_text()).get("run_id")
    return str(run_id) if run_id else None


def write_run_config(config, device: torch.device, world_size: int, run_id: str) -> None:
    payload = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
    payload.update(resolved_device=str(device), world_size=world_size, run_id=run_id)
    with atomic_file(config.out / "erf-run.json", "w") as handle:
        json.dump(payload, handle, indent=2)


def write_summary(files: list[Path], path: Path) -> Path:
    """``summary.csv``: one row per map file (:func:`~.maps.summarise`)."""
    from vessel_lens.interpret.fields.store import load_receptive_field_maps

    rows = [summarise(load_receptive_field_maps(file)) for file in files]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_file(path, "w") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
            )
    return path
