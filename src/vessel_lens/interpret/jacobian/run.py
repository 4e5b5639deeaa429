"""Compute and store the Jacobians of a dataset's images (``vessel-lens jacobian``).

One zarr store per image (:mod:`.store`), resumable block by block. Under ``torchrun`` the work
is shared: rank 0 creates (or checks) every store and then all ranks compute blocks, whole
images per rank when there are at least as many images as ranks, otherwise blocks of every
image in turn. The folder is held for the run (:func:`vessel_lens.outputs.claim_output`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from vessel_lens.data.crops import parse_crop_box
from vessel_lens.data.io import MIN_SIDE
from vessel_lens.errors import ConfigError, DataError, VesselLensError
from vessel_lens.interpret.jacobian import budget as _budget
from vessel_lens.interpret.jacobian._blocks import by_store, fill
from vessel_lens.interpret.jacobian.engine import OUTPUTS, STRATEGIES, JacobianEngine
from vessel_lens.interpret.jacobian.store import STORAGE_DTYPES, JacobianStore, UnfinishedCreation
from vessel_lens.interpret.provenance import (
    STORED_SETTINGS,
    crop_box,
    differences,
    image_hash,
    payload_hash,
    provenance,
)
from vessel_lens.models.source import ModelSource, check_model_options
from vessel_lens.outputs import claim_output, note, refused, remove_temporaries
from vessel_lens.threads import check_threads, torch_threads, work_starts
from vessel_lens.write_errors import atomic_file

COMPARED = ("model_name", *STORED_SETTINGS)
"""Attributes that must match for a run to resume (or skip) an existing store."""
DEFAULT_CROP = 64
"""``--crop`` of ``vessel-lens jacobian`` and ``erf`` when neither it nor a box is given."""


@dataclass(kw_only=True)
class RowRunOptions:
    """The settings ``vessel-lens jacobian`` (:class:`ExtractConfig`) and ``erf``
    (:class:`~vessel_lens.interpret.fields.run.ErfConfig`) share: where the rows come from
    and how they are computed. Keyword-only, after each run's own settings."""

    output: str = "probability"
    """Differentiated output: probability, logit or margin."""
    target_class: int = 1
    """Class whose output is differentiated."""
    device: str = "auto"
    """cpu, cuda, cuda:N or auto."""
    strategy: str = "auto"
    """Jacobian strategy: auto, linear, vmap or loop."""
    chunk_rows: int | None = None
    """Rows (or coloured passes) per batched backward pass (default: sized to memory); how
    rows are computed, never part of a stored result: a later run may use another value."""
    crop_box: tuple[int, int, int, int] | None = None
    """Crop (top, left, height, width) taken from each image instead of the centred square
    (``--crop-box TOP,LEFT,H,W``); it must lie inside every image."""
    threads: int = 0
    """CPU threads for torch; 0 chooses (:func:`vessel_lens.threads.choose_threads`)."""
    overwrite: bool = False
    """Replace files that hold different settings, and recompute finished images."""
    progress: bool = True
    """Show a progress bar (rate, ETA)."""
    model: str | None = None
    """Instead of a checkpoint: package.module:factory or path/to/file.py:factory."""
    model_args: dict[str, Any] | None = None
    """Keyword arguments of the ``model`` factory."""
    weights: str | None = None
    """State dict file loaded into the ``model`` factory's model."""

    def check_out_and_model(self, required: bool) -> None:
        """Refuse an ``out`` that is a file, and a wrong combination of model options."""
        self.out = Path(self.out)
        if self.out.exists() and not self.out.is_dir():
            raise ConfigError(f"--out {self.out}: exists and is not a folder")
        check_model_options(
            self.checkpoint, self.model, self.model_args, self.weights, required=required
        )


@dataclass
class ExtractConfig(RowRunOptions):
    """Settings of one ``vessel-lens jacobian`` run (field docs double as ``--help``)."""

    checkpoint: str | None
    """Checkpoint file, run folder, shipped checkpoint name, or a TorchScript or torch.export
    model file (None with ``model``)."""
    out: Path
    """Folder for the stores (one <stem>.zarr per image)."""
    data: str | None = None
    """Dataset folder or CSV manifest; the embedded synthetic vessels when omitted."""
    split: str = "test"
    """Split whose images to use (train, val, test or all)."""
    crop: int | None = None
    """Side of the centred square crop taken from each image; 0 for the whole image (default
    64 unless ``crop_box`` is given)."""
    images: list[str] = field(default_factory=list)
    """Only these image stems (default: every image of the split)."""
    dtype: str = "float32"
    """Storage type of the rows: float32, float16 or uint8 (per-block min/max scaling)."""
    pixels: list[tuple[int, int]] | None = None
    """Output pixels (row, col) within the crop; default: all (see pixel_stride)."""
    pixel_stride: int = 1
    """Every S-th output pixel in each direction (the original's sampling_rate)."""
    block_rows: int | None = None
    """Rows per stored block, the unit that is saved and resumed, fixed when a store is
    created (default: up to 256 rows and 64 MiB)."""
    yes: bool = False
    """Write stores that would take more than 2 GiB (uncompressed)."""

    def __post_init__(self) -> None:
        self.check_out_and_model(required=True)
        if self.dtype not in STORAGE_DTYPES:
            raise ConfigError(f"--dtype {self.dtype!r}: choose one of {', '.join(STORAGE_DTYPES)}")
        check_row_options(self, "0 for whole images")
        if self.block_rows is not None and self.block_rows < 1:
            raise ConfigError(f"--block-rows {self.block_rows}: must be at least 1")
        if self.pixels is not None and self.pixel_stride != 1:
            raise ConfigError("--pixels and --pixel-stride exclude each other")

    @property
    def model_source(self) -> ModelSource:
        return ModelSource(self.checkpoint, self.model, self.model_args, self.weights)


def check_row_options(config, whole_images: str) -> None:
    """The options ``vessel-lens jacobian`` and ``erf`` share: output, strategy, crop or crop
    box (with ``whole_images`` saying how to ask for whole images), pixel stride, rows per
    chunk, threads. Leaves ``config.crop`` None when a crop box is given, else its side."""
    if config.output not in OUTPUTS:
        raise ConfigError(f"--output {config.output!r}: choose one of {', '.join(OUTPUTS)}")
    if config.strategy not in STRATEGIES:
        raise ConfigError(f"--strategy {config.strategy!r}: choose one of {', '.join(STRATEGIES)}")
    check_threads(config.threads)
    if config.crop_box is not None:
        if config.crop is not None:
            raise ConfigError("--crop and --crop-box exclude each other")
        config.crop_box = parse_crop_box(config.crop_box)
    elif config.crop is None:
        config.crop = DEFAULT_CROP
    if config.crop is not None:
        _check_crop(config.crop, whole_images)
    if config.pixel_stride < 1:
        raise ConfigError(f"--pixel-stride {config.pixel_stride}: must be at least 1")
    if config.chunk_rows is not None and config.chunk_rows < 1:
        raise ConfigError(f"--chunk-rows {config.chunk_rows}: must be at least 1")


def _check_crop(crop: int, whole_images: str) -> None:
    if crop < 0:
        raise ConfigError(f"--crop {crop}: must be positive (or {whole_images})")
    if 0 < crop < MIN_SIDE:
        raise ConfigError(
            f"--crop {crop}: crops must be at least {MIN_SIDE} pixels a side, like the "
            f"images the models accept (or {whole_images})"
        )


@dataclass
class ExtractResult:
    """What a run did: stores touched, blocks computed here and blocks found finished."""

    stores: list[Path] = field(default_factory=list)
    computed: int = 0
    skipped: int = 0
    rows: int = 0
    seconds: float = 0.0
    is_main: bool = True
    generations: dict[Path, int] = field(default_factory=dict)
    """Per store, the generation its blocks were written with."""


def select_pixels(config: ExtractConfig, height: int, width: int) -> torch.Tensor:
    """Flat output-pixel indices of the rows to compute, row-major."""
    if config.pixels is not None:
        pairs = torch.tensor(config.pixels, dtype=torch.long).reshape(-1, 2)
        bad = (pairs[:, 0] >= height) | (pairs[:, 1] >= width) | (pairs < 0).any(1)
        if bool(bad.any()):
            r, c = pairs[bad][0].tolist()
            raise ConfigError(f"--pixels {r}:{c} lies outside the {height}x{width} crop")
        return pairs[:, 0] * width + pairs[:, 1]
    rows = torch.arange(0, height, config.pixel_stride)
    cols = torch.arange(0, width, config.pixel_stride)
    return (rows[:, None] * width + cols[None, :]).reshape(-1)


@dataclass
class _Job:
    stem: str
    path: Path
    image: torch.Tensor
    pixels: torch.Tensor
    attrs: dict[str, Any]


def _jobs(config: ExtractConfig, checkpoint, model_in_channels: int) -> list[_Job]:
    from vessel_lens.data.source import open_dataset

    dataset = open_dataset(
        config.data,
        keep_channels=model_in_channels > 1,
        require_labels=False,
        checkpoint=checkpoint,
    )
    samples = dataset.subset(config.split)
    if config.images:
        known = {s.stem: s for s in samples}
        missing = [stem for stem in config.images if stem not in known]
        if missing:
            preview = ", ".join(sorted(known)[:5])
            raise DataError(
                f"--images {missing[0]}: not in split {config.split!r} of {dataset.name} "
                f"(it holds {len(known)} images, e.g. {preview})"
            )
        samples = [known[stem] for stem in dict.fromkeys(config.images)]
    base = provenance(checkpoint, config.output, config.target_class, config.dtype)
    jobs = []
    for sample in samples:
        height, width = sample.size
        top, left, h, w = crop_box(height, width, config.crop, sample.stem, config.crop_box)
        image = sample.image[:, top : top + h, left : left + w].float()
        pixels = select_pixels(config, h, w)
        image_path = (
            str(sample.image_path) if sample.image_path else f"{dataset.name}:{sample.stem}"
        )
        attrs = {
            **base,
            "image_path": image_path,
            "stem": sample.stem,
            "crop_box": [top, left, h, w],
            "image_hash": image_hash(image),
            "pixel_stride": config.pixel_stride,
            "pixels_hash": payload_hash(pixels.tolist()),
        }
        jobs.append(_Job(sample.stem, config.out / f"{sample.stem}.zarr", image, pixels, attrs))
    return jobs


def _differences(existing: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    return differences(existing, wanted, COMPARED)


def _existing(config: ExtractConfig, job: _Job) -> JacobianStore | None:
    """The store at ``job.path`` to resume or skip, or ``None`` when one must be created;
    refuses to replace a user's results."""
    if not job.path.exists():
        return None
    try:
        store = JacobianStore.open(job.path)
    except UnfinishedCreation:
        return None
    except DataError:
        if not config.overwrite:
            raise refused(
                job.path, "exists but is not a readable Jacobian store", DataError
            ) from None
        return None
    different = _differences(store.attrs, job.attrs)
    if not different and not store.complete and store.chunk_rows > store.rows:
        # One block larger than the store (older versions stored --chunk-rows as the block
        # size): it cannot be written without allocating the whole block, and holds nothing.
        return None
    if not different and not (config.overwrite and store.complete):
        foreign = int(store.foreign().sum())
        if foreign:
            note(
                f"{job.path}: {foreign} blocks were written by another run than the one "
                "that created the store; computing them again"
            )
        return store
    if not config.overwrite:
        state = "a finished" if store.complete else "an unfinished"
        raise refused(
            job.path, f"holds {state} Jacobian computed with different {', '.join(different)}"
        )
    return None


def _block_rows(config: ExtractConfig, job: _Job) -> int:
    shape = tuple(job.image.shape)
    if config.block_rows is None:
        return _budget.default_block_rows(len(job.pixels), shape)
    return max(1, min(config.block_rows, len(job.pixels)))


def _check_budget(
    config: ExtractConfig,
    jobs: list[_Job],
    created: list[_Job],
    resumed: list[JacobianStore],
    model,
    device,
):
    """Refuse, before anything is written, options whose memory does not fit the device,
    unfinished stores whose blocks do not, and new stores over the size that needs ``--yes``."""
    for store in resumed:
        shape = tuple(store.attrs["source_shape"])
        _budget.check_memory(
            f"{store.path}",
            _budget.block_write_bytes(store.chunk_rows, shape),
            "cpu",
            f"writing one of its blocks of {store.chunk_rows} rows (fixed when it was created)",
            "pass --overwrite to recreate it with smaller blocks",
        )
    for job in created:
        block = _block_rows(config, job)
        _budget.check_memory(
            f"--block-rows {config.block_rows}" if config.block_rows else "a stored block",
            _budget.block_write_bytes(block, tuple(job.image.shape)),
            "cpu",
            f"writing a block of {block} rows of {job.stem}",
            "choose fewer --block-rows",
        )
    if config.chunk_rows is not None and jobs:
        job = max(jobs, key=lambda j: (j.image[0].numel(), len(j.pixels)))
        rows = min(config.chunk_rows, len(job.pixels))
        engine = _engine(config, model, job, device)
        _budget.check_memory(
            f"--chunk-rows {config.chunk_rows}",
            engine.pass_bytes(rows),
            device,
            f"a backward pass over {rows} rows of {job.stem}",
            "choose fewer rows, or leave the option out to size passes to memory",
        )
        del engine
    total = sum(
        _budget.store_bytes(len(job.pixels), tuple(job.image.shape), config.dtype)
        for job in created
    )
    _budget.confirm_size(
        total,
        config.yes,
        f"{len(created)} new store(s)",
        "make them smaller with --crop, --pixel-stride, --pixels or --dtype",
    )


def _create_store(config: ExtractConfig, job: _Job, model, device) -> JacobianStore:
    engine = _engine(config, model, job, device)
    return JacobianStore.create(
        job.path,
        pixels=job.pixels,
        image=job.image,
        probability=engine.probability.cpu(),
        source_shape=tuple(job.image.shape),
        chunk_rows=_block_rows(config, job),
        dtype=config.dtype,
        attrs={**job.attrs, "strategy": engine.strategy},
        replace=True,
    )


def _prepare_stores(config: ExtractConfig, jobs: list[_Job], model, device) -> None:
    """Check every job's store and the run's budget first, then create the missing stores."""
    existing = [(job, _existing(config, job)) for job in jobs]
    created = [job for job, store in existing if store is None]
    resumed = [store for _, store in existing if store is not None and not store.complete]
    _check_budget(config, jobs, created, resumed, model, device)
    for job in created:
        _create_store(config, job, model, device)


def _engine(config: ExtractConfig, model, job: _Job, device) -> JacobianEngine:
    return JacobianEngine(
        model,
        job.image,
        target_class=config.target_class,
        output=config.output,
        device=device,
        strategy=config.strategy,
    )


def _write_run_config(config: ExtractConfig) -> None:
    payload = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()}
    with atomic_file(config.out / "jacobian-run.json", "w") as handle:
        json.dump(payload, handle, indent=2)


def _share(ctx, stores: list[JacobianStore]) -> list[tuple[JacobianStore, int]]:
    """This rank's (store, block) pairs among the unfinished blocks."""
    pending = [(s, int(b)) for s in stores for b in (~s.done()).nonzero()[0]]
    if len(stores) >= ctx.world_size:
        mine = set(id(s) for s in ctx.shard(stores))
        return [(s, b) for s, b in pending if id(s) in mine]
    return ctx.shard(pending)


def extract_jacobians(config: ExtractConfig) -> ExtractResult:
    """Run the extraction described by ``config`` (see the module docs)."""
    from vessel_lens.devices import resolve_device
    from vessel_lens.distributed import init_distributed

    ctx = init_distributed(resolve_device(config.device))
    with torch_threads(config.threads), claim_output(config.out, "jacobian", group=ctx):
        result = _extract(config, ctx)
        _check_generations(result.stores, result.generations)
    return result


def _check_generations(paths: list[Path], generations: dict[Path, int]) -> None:
    """Refuse stores re-created by another run while this one wrote into them (possible only
    where the lock could not be taken): the blocks written here are not theirs."""
    for path in paths:
        if path in generations and JacobianStore.open(path, "r").generation != generations[path]:
            raise DataError(
                f"{path}: was created again by another run while this one wrote into it; the "
                "blocks written here are marked as another run's: rerun to compute them again"
            )


def _extract(config: ExtractConfig, ctx) -> ExtractResult:
    from tqdm import tqdm

    model, checkpoint = config.model_source.load(ctx.device)
    jobs = _jobs(config, checkpoint, checkpoint.in_channels)
    result = ExtractResult(stores=[job.path for job in jobs])
    error = None
    if ctx.is_main:
        try:
            remove_temporaries(config.out)  # of a killed run: no other writer holds the folder
            _prepare_stores(config, jobs, model, ctx.device)
            _write_run_config(config)  # only once every store was accepted
        except VesselLensError as exc:
            error = exc
    ctx.agree(error)
    work_starts()
    stores = [JacobianStore.open(job.path) for job in jobs]
    result.generations = {s.path: s.generation for s in stores}
    result.skipped = sum(int(s.done().sum()) for s in stores)
    work = _share(ctx, stores)
    ctx.barrier()  # every rank has read the done flags before any rank writes a block
    images = {id(s): job for s, job in zip(stores, jobs, strict=True)}
    start = time.perf_counter()
    total = sum(len(range(*s.bounds(b))) for s, b in work)
    bar = tqdm(
        total=total, unit="row", disable=not (config.progress and ctx.is_main), smoothing=0.1
    )
    runs = by_store(work)
    for number, (store, blocks) in enumerate(runs, 1):
        job = images[id(store)]
        bar.set_description(f"image {number}/{len(runs)} {job.stem}")
        engine = _engine(config, model, job, ctx.device)
        pass_rows = config.chunk_rows or engine.default_chunk()
        result.rows += fill(store, blocks, job.pixels, engine.rows, pass_rows, bar.update)
        result.computed += len(blocks)
        del engine
    bar.close()
    result.seconds = time.perf_counter() - start
    result.is_main = ctx.is_main
    if ctx.distributed:
        import torch.distributed as dist

        counts = torch.tensor([result.computed, result.rows], dtype=torch.long)
        dist.all_reduce(counts)
        result.computed, result.rows = (int(v) for v in counts)
    return result
