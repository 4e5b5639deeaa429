"""Receptive-field maps of a dataset's images (``vessel-lens erf``).

Per image, ``<stem>.erf.npz`` (:mod:`.store`) and ``<stem>_erf.png``; per run,
``summary.csv`` (one row per image of the run) and ``erf-run.json`` (the resolved settings).
The maps come from the model, or from stores written by ``vessel-lens jacobian``
(``from_jacobian``; nothing is recomputed). A map file appears, by rename, only once complete,
so a run resumes by skipping the images whose file exists with the same settings; a file made
with other settings is refused unless ``overwrite`` (which also recomputes finished images).
Under ``torchrun`` the images are shared among the processes.

The folder is held for the run (:func:`vessel_lens.outputs.claim_output`). Each run draws a run
id, recorded in ``erf-run.json`` and in every map file it writes; before summarising, a run
checks that no map file was replaced by another run while it ran (possible only where the lock
could not be taken), and refuses to summarise a mixed folder.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vessel_lens.errors import ConfigError, VesselLensError
from vessel_lens.interpret.fields._jobs import (
    Job,
    check_unreplaced,
    file_run_id,
    model_jobs,
    needs_work,
    read_run_id,
    store_jobs,
    write_run_config,
    write_summary,
)
from vessel_lens.interpret.fields.thresholded import (
    COLOURING,
    DEFAULT_FRACTIONS,
    MASS_FRACTIONS,
    check_options,
    receptive_field_maps,
    receptive_field_maps_from_jacobian,
)
from vessel_lens.interpret.jacobian import budget as _budget
from vessel_lens.interpret.jacobian.engine import JacobianEngine
from vessel_lens.interpret.jacobian.local import LOCAL_PIXELS
from vessel_lens.interpret.jacobian.run import RowRunOptions, check_row_options
from vessel_lens.models.source import ModelSource
from vessel_lens.threads import torch_threads, work_starts


@dataclass
class ErfConfig(RowRunOptions):
    """Settings of one ``vessel-lens erf`` run (field docs double as ``--help``)."""

    out: Path
    """Folder for the maps (<stem>.erf.npz, <stem>_erf.png, summary.csv, erf-run.json)."""
    checkpoint: str | None = None
    """Checkpoint file, run folder, shipped checkpoint name, or a TorchScript or torch.export
    model file."""
    from_jacobian: Path | None = None
    """Folder of stores written by vessel-lens jacobian, used instead of a model."""
    data: str | None = None
    """Dataset folder or CSV manifest; the embedded synthetic vessels when omitted."""
    split: str = "test"
    """Split whose images to use (train, val, test or all)."""
    crop: int | None = None
    """Side of the centred square crop of each image; 0 for whole images (default 64 unless
    ``crop_box`` is given)."""
    images: list[str] = field(default_factory=list)
    """Only these image stems (default: every image of the split, or every store)."""
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS
    """Threshold fractions (0.01 means 1 %); for mode absolute, the thresholds themselves."""
    mode: str = "global"
    """Threshold mode: global, pixel or absolute."""
    channels: str = "sum"
    """Input channels: sum (one magnitude) or separate (maps per channel)."""
    mass_fractions: tuple[float, ...] = MASS_FRACTIONS
    """Fractions of the gradient mass whose radius is measured."""
    pixel_stride: int = 1
    """Every S-th output pixel in each direction."""
    colouring: str = "auto"
    """Share backward passes between pixels with disjoint fields: auto, always or never."""
    figures: bool = True
    """Write a PNG of each image's maps."""

    def __post_init__(self) -> None:
        self.check_out_and_model(required=False)
        from_model = self.checkpoint is not None or self.model is not None
        if from_model == (self.from_jacobian is not None):
            raise ConfigError(
                "give either --checkpoint (or --model) or --from-jacobian (exactly one)"
            )
        if self.from_jacobian is not None:
            self.from_jacobian = Path(self.from_jacobian)
            if not self.from_jacobian.is_dir():
                raise ConfigError(f"--from-jacobian {self.from_jacobian}: not a folder")
            if self.crop_box is not None:
                raise ConfigError(
                    "--from-jacobian uses the stores' own rows: --crop-box does not apply"
                )
        self.fractions, self.mass_fractions = check_options(
            self.fractions, self.mode, self.channels, self.mass_fractions, None
        )
        if self.colouring not in COLOURING:
            raise ConfigError(
                f"--colouring {self.colouring!r}: choose one of {', '.join(COLOURING)}"
            )
        check_row_options(self, "use --full")

    @property
    def model_source(self) -> ModelSource | None:
        """The model the maps are computed from (None for ``from_jacobian``)."""
        if self.from_jacobian is not None:
            return None
        return ModelSource(self.checkpoint, self.model, self.model_args, self.weights)


@dataclass
class ErfResult:
    """What a run did: map files of the run, images computed here and images found done."""

    files: list[Path] = field(default_factory=list)
    computed: int = 0
    skipped: int = 0
    pixels: int = 0
    seconds: float = 0.0
    summary: Path | None = None
    is_main: bool = True


def _compute(config: ErfConfig, job: Job, model, device, bar):
    options = dict(
        fractions=config.fractions,
        mode=config.mode,
        channels=config.channels,
        mass_fractions=config.mass_fractions,
        chunk_size=config.chunk_rows,
        progress=bar.update,
    )
    if job.store is not None:
        maps = receptive_field_maps_from_jacobian(job.store, **options)
    else:
        maps = receptive_field_maps(
            model,
            job.image,
            pixels=job.pixels,
            device=device,
            target_class=config.target_class,
            output=config.output,
            strategy=config.strategy,
            colouring=config.colouring,
            **options,
        )
    maps.metadata.update(job.attrs)
    return maps


def run_erf(config: ErfConfig) -> ErfResult:
    """Run ``vessel-lens erf`` as described by ``config`` (see the module docs)."""
    from vessel_lens.devices import resolve_device
    from vessel_lens.distributed import init_distributed
    from vessel_lens.outputs import claim_output

    ctx = init_distributed(resolve_device(config.device))
    with torch_threads(config.threads), claim_output(config.out, "erf", group=ctx):
        return _run(config, ctx)


def _run(config: ErfConfig, ctx) -> ErfResult:
    from tqdm import tqdm

    from vessel_lens.interpret.fields.store import save_receptive_field_maps
    from vessel_lens.interpret.jacobian.store import JacobianStore
    from vessel_lens.outputs import remove_temporaries
    from vessel_lens.viz.field_figures import erf_figure

    model = None
    source = config.model_source
    if source is not None:
        model, checkpoint = source.load(ctx.device)
        jobs = model_jobs(config, checkpoint)
    else:
        jobs = store_jobs(config)
    result = ErfResult(files=[job.path for job in jobs], is_main=ctx.is_main)
    error = None
    if ctx.is_main:
        try:
            remove_temporaries(config.out)  # of a killed run: no other writer holds the folder
            for job in jobs:
                needs_work(config, job)
            _check_memory(config, jobs, model, ctx.device)
            # once every file is accepted; the run id is read back by every rank
            write_run_config(config, ctx.device, ctx.world_size, uuid.uuid4().hex)
        except VesselLensError as exc:
            error = exc
    ctx.agree(error)
    work_starts()
    ctx.barrier()
    run_id = read_run_id(config.out)
    pending = [job for job in jobs if needs_work(config, job)]
    waiting = {id(job) for job in pending}
    found = {job.path: file_run_id(job.path) for job in jobs if id(job) not in waiting}
    result.skipped = len(jobs) - len(pending)
    ctx.barrier()  # every rank has decided what is pending before any rank writes a file
    mine = ctx.shard(pending)
    total = 0
    for job in mine:
        total += len(job.pixels) if job.pixels is not None else JacobianStore.open(job.store).rows
    bar = tqdm(total=total, unit="px", disable=not (config.progress and ctx.is_main), smoothing=0.1)
    start = time.perf_counter()
    for number, job in enumerate(mine, 1):
        bar.set_description(f"image {number}/{len(mine)} {job.stem}")
        maps = _compute(config, job, model, ctx.device, bar)
        maps.metadata["run_id"] = run_id
        if config.figures:
            image = job.image
            if image is None:
                group = JacobianStore.open(job.store, mode="r").group
                image = torch.from_numpy(np.asarray(group["image"][...]))
            erf_figure(maps, image, config.out / f"{job.stem}_erf.png", _title(maps))
        save_receptive_field_maps(maps, job.path)
        result.computed += 1
        result.pixels += int(maps.computed.sum())
    bar.close()
    result.seconds = time.perf_counter() - start
    ctx.barrier()  # every image is written before rank 0 summarises
    if ctx.distributed:
        import torch.distributed as dist

        counts = torch.tensor([result.computed, result.pixels], dtype=torch.long)
        dist.all_reduce(counts)
        result.computed, result.pixels = (int(v) for v in counts)
    if ctx.is_main and jobs:
        check_unreplaced({**found, **{job.path: run_id for job in pending}})
        result.summary = write_summary(result.files, config.out / "summary.csv")
    return result


READ_BYTES_PER_VALUE = 24
"""Memory per stored value while rows are read back: the raw values, float64 while uint8 is
dequantised, float32 rows and their magnitudes."""


def _check_memory(config: ErfConfig, jobs: list[Job], model, device) -> None:
    """Refuse ``--chunk-rows`` in one line when one batch would not fit in memory."""
    if config.chunk_rows is None or not jobs:
        return
    option = f"--chunk-rows {config.chunk_rows}"
    advice = "choose fewer rows, or leave the option out to size batches to memory"
    if config.from_jacobian is not None:
        from vessel_lens.interpret.jacobian.store import JacobianStore

        for job in jobs:
            store = JacobianStore.open(job.store, mode="r")
            rows = min(config.chunk_rows, store.rows)
            values = rows * _budget.row_values(tuple(store.attrs["source_shape"]))
            _budget.check_memory(
                option,
                READ_BYTES_PER_VALUE * values,
                "cpu",
                f"reading {rows} rows of {job.stem}",
                advice,
            )
        return
    job = max(jobs, key=lambda j: (j.image[0].numel(), len(j.pixels)))
    if job.image[0].numel() > LOCAL_PIXELS:
        return  # computed cell by cell on crops (interpret.jacobian.local): a batch is one cell's rows
    engine = JacobianEngine(
        model,
        job.image,
        target_class=config.target_class,
        output=config.output,
        device=device,
        strategy=config.strategy,
    )
    rows = min(config.chunk_rows, len(job.pixels))
    _budget.check_memory(
        option,
        engine.pass_bytes(rows),
        device,
        f"a backward pass over {rows} rows of {job.stem}",
        advice,
    )


def _title(maps) -> str:
    meta = maps.metadata
    top, left, height, width = meta.get("crop_box", [0, 0, maps.height, maps.width])
    return (
        f"{meta.get('stem', '')}: rows {top}-{top + height - 1}, cols {left}-{left + width - 1}"
        f"; mode {maps.mode}, max |g| {maps.global_max:.3g}"
    )


def describe(result: ErfResult, out: Path) -> str:
    return (
        f"{len(result.files)} image(s) in {out}: computed {result.computed} "
        f"({result.pixels} pixels) in {result.seconds:.1f} s; {result.skipped} were already done"
        + (f"; summary in {result.summary}" if result.summary else "")
    )
