"""Shared fixtures: the real VessMAP location and writers for tiny image files and datasets."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from tests.helpers import hold

VESSMAP = Path(
    os.environ.get("VESSEL_LENS_VESSMAP")
    or Path(__file__).resolve().parents[1].parent / "shared/data/vessmap"
)
"""The real VessMAP copy, ``../shared/data/vessmap`` relative to the repository root, or
``$VESSEL_LENS_VESSMAP`` (e.g. for a git worktree elsewhere)."""


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Run torch on one thread: the tests' tensors are tiny, and on a busy two-core machine
    OpenMP threads waiting for each other make tiny convolutions a hundred times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def held(tmp_path_factory):
    """A folder whose lock another process holds for the whole module, and that process."""
    folder = tmp_path_factory.mktemp("held") / "out"
    process = hold(folder)
    yield folder, process
    process.kill()
    process.wait()


@pytest.fixture
def tiny_checkpoint(tmp_path) -> Path:
    """``tmp_path/model.pt``: a width-4 ``resnet_seg`` with the weights of seed 0."""
    from vessel_lens.models import create_model, save_checkpoint

    torch.manual_seed(0)
    return save_checkpoint(
        tmp_path / "model.pt", create_model("resnet_seg", width=4), "resnet_seg", {"width": 4}
    )


@pytest.fixture(scope="session")
def vessmap_root() -> Path:
    """The real VessMAP folder; skipped when absent, except under CI where it must exist."""
    if not (VESSMAP / "images").is_dir():
        reason = f"real VessMAP data not found at {VESSMAP}"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set, so the integration tests must run)")
        pytest.skip(reason)
    return VESSMAP


@pytest.fixture
def core_dependencies() -> list[str]:
    """Names of the packages pyproject.toml lists as core dependencies."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    return [
        re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0] for d in pyproject["project"]["dependencies"]
    ]


def _write_image(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` to ``path``; TIFF through tifffile, everything else through PIL."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".tif", ".tiff"):
        tifffile.imwrite(path, array)
    elif path.suffix.lower() in (".jpg", ".jpeg"):
        Image.fromarray(array).save(path, quality=95)
    else:
        Image.fromarray(array).save(path)
    return path


def _write_palette_gif(
    path: Path, indices: np.ndarray, palette: list[tuple[int, int, int]]
) -> Path:
    """Write a palette ("P" mode) GIF whose pixel ``i`` shows ``palette[indices[i]]``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = indices.shape
    img = Image.frombytes("P", (width, height), indices.astype(np.uint8).tobytes())
    flat = [channel for colour in palette for channel in colour]
    img.putpalette(flat + [0] * (768 - len(flat)))
    img.save(path)
    return path


def _sample_arrays(height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A tiny vessel-like sample: a bright horizontal band, its binary label and centre line.

    Returns ``image`` uint8 (H, W), ``label`` uint8 in {0, 255}, ``skeleton`` uint8 in {0, 255}.
    """
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 80, (height, width), dtype=np.uint8)
    top = 2 + seed % max(height - 8, 1)
    label = np.zeros((height, width), dtype=np.uint8)
    label[top : top + 5] = 255
    skeleton = np.zeros_like(label)
    skeleton[top + 2] = 255
    image[label > 0] += 150
    return image, label, skeleton


def _fov_mask(height: int, width: int) -> np.ndarray:
    """A field-of-view mask like a fundus camera's: the inscribed ellipse, uint8 in {0, 255}."""
    y, x = np.mgrid[0:height, 0:width]
    inside = ((y - (height - 1) / 2) / (height / 2)) ** 2 + (
        (x - (width - 1) / 2) / (width / 2)
    ) ** 2 <= 1
    return (inside * 255).astype(np.uint8)


@pytest.fixture(scope="session")
def fov_mask() -> Callable[[int, int], np.ndarray]:
    """``fov_mask(height, width)``: the inscribed ellipse as a uint8 {0, 255} mask."""
    return _fov_mask


@pytest.fixture(scope="session")
def write_image() -> Callable[[Path, np.ndarray], Path]:
    """Writer of one image file, the format taken from the suffix."""
    return _write_image


@pytest.fixture(scope="session")
def write_palette_gif() -> Callable[..., Path]:
    """Writer of one palette GIF: ``write_palette_gif(path, indices, palette)``."""
    return _write_palette_gif


@pytest.fixture(scope="session")
def sample_arrays() -> Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``sample_arrays(height, width, seed)``: image, label and skeleton of one tiny sample."""
    return _sample_arrays


@pytest.fixture
def make_dataset(tmp_path: Path) -> Callable[..., Path]:
    """Factory writing a VessMAP-like folder into ``tmp_path``; returns the folder.

    ``splits`` maps split names to stems and is written to ``splits/<name>.txt``; ``masks``
    writes field-of-view masks (:func:`_fov_mask`) to ``masks/``.
    """

    def make(
        name: str = "dataset",
        count: int = 3,
        size: tuple[int, int] = (32, 32),
        image_suffix: str = ".png",
        label_suffix: str = ".png",
        skeletons: bool = True,
        splits: dict[str, list[str]] | None = None,
        masks: bool = False,
    ) -> Path:
        root = tmp_path / name
        for i in range(count):
            stem = f"s{i:02d}"
            image, label, skeleton = _sample_arrays(*size, seed=i)
            _write_image(root / "images" / f"{stem}{image_suffix}", image)
            _write_image(root / "labels" / f"{stem}{label_suffix}", label)
            if skeletons:
                _write_image(root / "skeletons" / f"{stem}.png", skeleton)
            if masks:
                _write_image(root / "masks" / f"{stem}.png", _fov_mask(*size))
        for split, stems in (splits or {}).items():
            (root / "splits").mkdir(parents=True, exist_ok=True)
            (root / "splits" / f"{split}.txt").write_text("".join(f"{s}\n" for s in stems))
        return root

    return make
