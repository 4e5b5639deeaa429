"""Prediction on a folder of images: probability and mask PNGs per image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from vessel_lens.data.io import is_image_file, read_image
from vessel_lens.errors import ConfigError, DataError
from vessel_lens.training.inference import vessel_probability


def list_images(source: Path) -> list[Path]:
    """Image files in a folder (sorted), or the single file given."""
    source = Path(source)
    if source.is_file():
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
) -> list[Path]:
    """Write ``<stem>_probability.png`` (8-bit, 255 = 1.0) and ``<stem>_mask.png`` (0/255)
    for every image; existing outputs are refused unless ``overwrite``."""
    if not 0.0 < threshold < 1.0:
        raise ConfigError(f"--threshold {threshold}: must be between 0 and 1")
    files = list_images(source)
    out = Path(out)
    targets = [(out / f"{f.stem}_probability.png", out / f"{f.stem}_mask.png") for f in files]
    if not overwrite:
        existing = [p for pair in targets for p in pair if p.exists()]
        if existing:
            raise ConfigError(f"{existing[0]}: already exists; pass --overwrite to replace")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    model.eval()
    for path, (prob_path, mask_path) in tqdm(
        list(zip(files, targets, strict=True)), desc="predicting", unit="img", disable=not progress
    ):
        image = torch.from_numpy(read_image(path, keep_channels=in_channels > 1))
        if image.shape[0] != in_channels:
            raise DataError(
                f"{path}: image has {image.shape[0]} channel(s); the model expects {in_channels}"
            )
        probability = vessel_probability(model, image, device).numpy()
        Image.fromarray(np.round(probability * 255).astype(np.uint8)).save(prob_path)
        Image.fromarray(((probability > threshold) * 255).astype(np.uint8)).save(mask_path)
        written += [prob_path, mask_path]
    return written
