"""Prediction on a folder of images: probability and mask PNGs per image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from vessel_lens.data.io import IMAGE_SUFFIXES, is_image_file, read_image
from vessel_lens.errors import ConfigError, DataError, WriteError
from vessel_lens.models.inference import DEFAULT_OVERLAP, check_tiling, vessel_probability
from vessel_lens.outputs import claim_output, refused
from vessel_lens.threads import work_starts
from vessel_lens.write_errors import write_reason


def list_images(source: Path) -> list[Path]:
    """Image files in a folder (sorted), or the single file given."""
    source = Path(source)
    if source.is_file():
        if source.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(
                f"{source}: unsupported file type {source.suffix or '(none)'}; use one of "
                + ", ".join(IMAGE_SUFFIXES)
            )
        return [source]
    if not source.is_dir():
        raise DataError(f"{source}: no such file or folder")
    files = sorted(p for p in source.iterdir() if p.is_file() and is_image_file(p))
    if not files:
        raise DataError(f"{source}: folder holds no images")
    return files


def predict_folder(
    model: nn.Module,
    source: Path,
    out: Path,
    in_channels: int = 1,
    device: torch.device | str | None = None,
    threshold: float = 0.5,
    overwrite: bool = False,
    progress: bool = True,
    tile: int = 0,
    overlap: float = DEFAULT_OVERLAP,
) -> list[Path]:
    """Write ``<stem>_probability.png`` (8-bit, 255 = 1.0) and ``<stem>_mask.png`` (0/255)
    for every image; existing outputs are refused unless ``overwrite``. ``tile``/``overlap``:
    sliding windows for images with a longer side (see :func:`vessel_probability`).

    Everything that can be checked without decoding (file types, two inputs with one stem,
    ``out`` being a file, existing outputs) is checked before ``out`` is created; a run that
    fails later removes the files and folders it created, so it can simply be run again."""
    if not 0.0 < threshold < 1.0:
        raise ConfigError(f"--threshold {threshold}: must be between 0 and 1")
    check_tiling(tile, overlap)
    files = list_images(source)
    by_stem: dict[str, Path] = {}
    for f in files:
        if f.stem in by_stem:
            raise DataError(
                f"{by_stem[f.stem]} and {f}: both would be written as {f.stem}_probability.png "
                f"and {f.stem}_mask.png; rename one or predict them separately"
            )
        by_stem[f.stem] = f
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a folder; choose another --out")
    targets = [(out / f"{f.stem}_probability.png", out / f"{f.stem}_mask.png") for f in files]
    inputs = {f.resolve() for f in files}
    for pair in targets:
        for target in pair:
            if target.resolve() in inputs:
                raise ConfigError(
                    f"{target}: is one of the input images and would be overwritten; "
                    "choose another --out"
                )

    def refuse_existing(folder: Path) -> None:
        existing = [p for pair in targets for p in pair if p.exists()]
        if existing and not overwrite:
            raise refused(existing[0], "already exists")

    with claim_output(out, "predict", check=refuse_existing):
        return _predict(
            model, files, targets, in_channels, device, threshold, progress, tile, overlap
        )


def _predict(model, files, targets, in_channels, device, threshold, progress, tile, overlap):
    work_starts()
    created: list[Path] = []  # what a failed run removes again (claim_output: the folder)
    written = []
    model.eval()
    try:
        for path, (prob_path, mask_path) in tqdm(
            list(zip(files, targets, strict=True)),
            desc="predicting",
            unit="img",
            disable=not progress,
        ):
            image = torch.from_numpy(read_image(path, keep_channels=in_channels > 1))
            if image.shape[0] != in_channels:
                raise DataError(
                    f"{path}: image has {image.shape[0]} channel(s); "
                    f"the model expects {in_channels}"
                )
            probability = vessel_probability(
                model, image, device, tile=tile, overlap=overlap
            ).numpy()
            arrays = {
                prob_path: np.round(probability * 255).astype(np.uint8),
                mask_path: ((probability > threshold) * 255).astype(np.uint8),
            }
            for target, array in arrays.items():
                if not target.exists():
                    created.append(target)
                try:
                    Image.fromarray(array).save(target)
                except OSError as exc:
                    reason = write_reason(exc)
                    if reason is None:
                        raise
                    raise WriteError(f"{target}: cannot write ({reason})") from None
                written.append(target)
    except BaseException:
        _remove_created(created)
        raise
    return written


def _remove_created(created: list[Path]) -> None:
    """Remove, newest first, the files and (then empty) folders a failed run made; files it
    replaced (with ``overwrite``) and anything that was there before are kept."""
    for path in reversed(created):
        try:
            if path.is_dir() and not path.is_symlink():
                path.rmdir()  # only if empty
            else:
                path.unlink(missing_ok=True)
        except OSError:
            pass
