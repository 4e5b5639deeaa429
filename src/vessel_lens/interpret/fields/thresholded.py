"""Receptive-field maps: every output pixel's thresholded gradient reduced to a few numbers.

:func:`receptive_field_maps` computes Jacobian rows chunk by chunk (one recorded forward pass,
:class:`~vessel_lens.interpret.JacobianEngine`) and reduces each chunk at once
(:mod:`._accumulate`); the Jacobian is never held. Mode ``global``, whose maximum is
known only at the end, keeps per row just the entries that can still pass the smallest
fraction's threshold and finishes the counts exactly once the maximum is known; rows on a
coarse grid are computed first so the running maximum is near its final value early (they are
part of the result, not recomputed). :func:`receptive_field_maps_from_jacobian` does the same
over stored or in-memory rows. Definitions: :mod:`.maps` and the manual (docs/receptive-fields.md).
"""

from __future__ import annotations

import gc
import math
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vessel_lens.errors import ConfigError
from vessel_lens.interpret.fields._accumulate import Accumulator
from vessel_lens.interpret.fields._colour import (
    colour_groups,
    combined_gradients,
    mean_group_size,
    periods,
    split_rows,
)
from vessel_lens.interpret.fields.maps import ReceptiveFieldMaps, build_maps
from vessel_lens.interpret.fields.structural import receptive_field, tape_field
from vessel_lens.interpret.jacobian.engine import JacobianEngine, check_chunk
from vessel_lens.interpret.jacobian.local import LOCAL_PIXELS, CropJacobian, plan_crops
from vessel_lens.interpret.pixels import check_image, flat_pixels
from vessel_lens.interpret.thresholds import check_fraction, gradient_magnitude

DEFAULT_FRACTIONS = (0.005, 0.01, 0.05, 0.1, 0.25, 0.5)
MASS_FRACTIONS = (0.5, 0.9)
CHANNEL_MODES = ("sum", "separate")
COLOURING = ("auto", "always", "never")
CROPS = ("auto", "always", "never")
COARSE_STEP = 8
"""Mode ``global`` first computes every COARSE_STEP-th pixel in each direction."""
MIN_PIXELS_PER_PASS = 2.0
"""``colouring="auto"`` considers colouring when each backward pass would serve at least this
many pixels on average (an image about twice the field's area)."""

Progress = Callable[[int], None] | None


def check_options(
    fractions: Sequence[float],
    mode: str,
    channels: str,
    mass_fractions: Sequence[float],
    global_max: float | None,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Validate the threshold options; return (fractions, mass_fractions) as float tuples."""
    if isinstance(fractions, (int, float)):
        fractions = (fractions,)
    try:
        fractions = tuple(float(f) for f in fractions)
        mass_fractions = tuple(float(q) for q in mass_fractions)
    except (TypeError, ValueError):
        raise ConfigError("fractions and mass_fractions must be sequences of numbers") from None
    if not fractions:
        raise ConfigError("fractions: give at least one (0.01 means 1 %)")
    if len(set(fractions)) != len(fractions):
        raise ConfigError(f"fractions {list(fractions)}: each may appear only once")
    for fraction in fractions:
        check_fraction(fraction, mode)
    if channels not in CHANNEL_MODES:
        raise ConfigError(f"channels {channels!r}: choose one of {', '.join(CHANNEL_MODES)}")
    if not mass_fractions or not all(0 < q <= 1 for q in mass_fractions):
        raise ConfigError(f"mass fractions {list(mass_fractions)}: each must be in (0, 1]")
    if global_max is not None:
        if mode != "global":
            raise ConfigError(f"global_max applies to mode 'global' only, not {mode!r}")
        if not (math.isfinite(global_max) and global_max >= 0):
            raise ConfigError(f"global_max {global_max}: must be a finite number >= 0")
    return fractions, mass_fractions


@dataclass(frozen=True)
class _Reduction:
    """The checked threshold options of one image's maps, and where its rows reduce to."""

    fractions: tuple[float, ...]
    mode: str
    channels: str
    mass_fractions: tuple[float, ...]
    global_max: float | None
    height: int
    width: int
    in_channels: int

    @property
    def channels_out(self) -> int:
        return 1 if self.channels == "sum" else self.in_channels

    def accumulator(self) -> Accumulator:
        return Accumulator(
            self.height, self.width, self.channels_out, self.fractions, self.mode,
            self.mass_fractions, self.global_max,
        )  # fmt: skip

    def maps(self, reduced, probability, metadata) -> ReceptiveFieldMaps:
        return build_maps(
            reduced,
            fractions=self.fractions,
            mode=self.mode,
            channels=self.channels,
            mass_fractions=self.mass_fractions,
            channels_out=self.channels_out,
            probability=probability,
            metadata={**metadata, "kept_entries_peak": reduced.kept_peak},
        )


def coarse_first(flat: torch.Tensor, width: int, step: int = COARSE_STEP) -> torch.Tensor:
    """``flat`` reordered: pixels on the grid of every ``step``-th row and column first."""
    coarse = ((flat // width) % step == 0) & ((flat % width) % step == 0)
    return torch.cat([flat[coarse], flat[~coarse]])


def magnitudes(rows: torch.Tensor, channels: str) -> torch.Tensor:
    """|rows| (n, C, h, w) summed over channels (n, 1, h, w), or per channel (n, C, h, w)."""
    if channels == "sum":
        return gradient_magnitude(rows.float().contiguous())[:, None]
    return rows.float().abs()


def _trimmed(magnitude: torch.Tensor):
    """The smallest window holding every non-zero of the chunk, with its (top, left)."""
    support = (magnitude > 0).flatten(0, 1).any(0)
    rows = torch.nonzero(support.any(1)).flatten()
    cols = torch.nonzero(support.any(0)).flatten()
    if len(rows) == 0:
        return magnitude[..., :1, :1], 0, 0
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    return magnitude[..., top:bottom, left:right], top, left


def _add_dense(accumulator: Accumulator, flat: torch.Tensor, rows: torch.Tensor, channels: str):
    magnitude, top, left = _trimmed(magnitudes(rows, channels))
    n = len(flat)
    accumulator.add(
        flat, magnitude, torch.full((n,), top, dtype=torch.long), torch.full((n,), left)
    )


def _plan_colouring(colouring: str, engine, model: nn.Module, flat: torch.Tensor):
    if colouring == "never":
        return None
    if engine.strategy == "linear" and engine.tape is not None:
        field = tape_field(engine.tape)  # the engine's own recording of this image
    else:
        field = receptive_field(
            model,
            (engine.height, engine.width),
            in_channels=int(engine.source_shape[0]),
            device=engine.device,
        )
    if not field.tight:
        if colouring == "always":
            raise ConfigError(
                "colouring needs a bounded structural receptive field, but "
                f"{'; '.join(field.reasons) or 'an operation'} makes it the whole image"
            )
        return None
    if colouring == "auto" and mean_group_size(flat, engine.width, periods(field)) < (
        MIN_PIXELS_PER_PASS
    ):
        return None
    return field


def _coloured_groups(flat, width, field, coarse: bool) -> list[torch.Tensor]:
    groups = colour_groups(flat, width, periods(field))
    if not coarse or not groups:
        return groups
    first = torch.stack([g[0] for g in groups])
    period = periods(field)
    colour_row, colour_col = (first // width) % period[0], (first % width) % period[1]
    on_grid = (colour_row % COARSE_STEP == 0) & (colour_col % COARSE_STEP == 0)
    order = torch.cat([torch.nonzero(on_grid).flatten(), torch.nonzero(~on_grid).flatten()])
    return [groups[i] for i in order.tolist()]


PILOT_GROUPS = 32
"""Colour groups in the trial batch of ``colouring="auto"`` for ``vmap`` and ``loop`` (enough
for batching to pay as it does in the full run; small batches overstate colouring's cost)."""
PLAIN_TRIAL = 32
"""Rows of the plain trial chunk of ``colouring="auto"`` (at most one chunk): where colouring
wins, each trial row costs several coloured ones, so the trial is kept short."""


class _Run:
    """Rows of one image computed plainly or coloured, fed to the accumulator.

    ``cheaper`` decides by measuring: a first plain chunk and a small coloured batch (both kept
    as part of the result) give the seconds per pixel of each; the rest goes the faster way.
    Colouring can win even for the windowed ``linear`` strategy (a shallow network's windows
    are small, so one pass serving many pixels costs little more than one serving a single
    pixel) and lose for deep ones, so no fixed rule is right for every model.
    """

    def __init__(self, engine, accumulator, channels, progress):
        self.engine, self.accumulator, self.channels = engine, accumulator, channels
        self.progress = progress
        self.passes = 0
        self.coloured_rows = 0
        self.choice = ""

    def plain(self, flat: torch.Tensor, chunk: int) -> None:
        for part, rows in self.engine.chunks(flat, chunk):
            _add_dense(self.accumulator, part, rows, self.channels)
            self.passes += len(part)
            if self.progress is not None:
                self.progress(len(part))

    def coloured(self, groups: list[torch.Tensor], chunk: int, field) -> None:
        for start in range(0, len(groups), chunk):
            batch = groups[start : start + chunk]
            part, rows, top, left = split_rows(combined_gradients(self.engine, batch), batch, field)
            self.accumulator.add(part, magnitudes(rows, self.channels), top, left)
            self.passes += len(batch)
            self.coloured_rows += len(part)
            if self.progress is not None:
                self.progress(len(part))

    def pilot_groups(self, chunk: int) -> int:
        """Colour groups of the trial batch: one whole pass of the coloured run where the
        ``linear`` strategy bounds its passes on the CPU (a smaller first pass costs more
        per group than the run's own), else :data:`PILOT_GROUPS`."""
        engine = self.engine
        if engine.strategy != "linear" or engine.device.type != "cpu":
            return PILOT_GROUPS
        whole = engine.strategy_impl.largest_batch(engine.height - 1, engine.width - 1)
        return max(1, min(chunk, whole))

    def cheaper(self, flat: torch.Tensor, field, coarse: bool, chunk: int) -> None:
        order = coarse_first(flat, self.engine.width) if coarse else flat
        trial = order[: min(chunk, PLAIN_TRIAL)]
        started = time.perf_counter()
        self.plain(trial, chunk)
        plain_rate = (time.perf_counter() - started) / max(len(trial), 1)
        rest = order[len(trial) :]
        if len(rest) == 0:
            self.choice = "plain (one chunk held every pixel)"
            return
        groups = _coloured_groups(rest, self.engine.width, field, coarse)
        pilot = self.pilot_groups(chunk)
        started = time.perf_counter()
        self.coloured(groups[:pilot], pilot, field)
        tried = sum(len(g) for g in groups[:pilot])
        coloured_rate = (time.perf_counter() - started) / max(tried, 1)
        if coloured_rate < plain_rate:
            self.choice = f"coloured ({coloured_rate * 1e3:.2f} vs {plain_rate * 1e3:.2f} ms/pixel)"
            self.coloured(groups[pilot:], chunk, field)
        else:
            self.choice = f"plain ({plain_rate * 1e3:.2f} vs {coloured_rate * 1e3:.2f} ms/pixel)"
            left = torch.cat(groups[pilot:]) if len(groups) > pilot else rest[:0]
            left = torch.sort(left).values
            self.plain(coarse_first(left, self.engine.width) if coarse else left, chunk)


def receptive_field_maps(
    model: nn.Module,
    image: torch.Tensor,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    mode: str = "global",
    *,
    pixels: object = None,
    chunk_size: int | None = None,
    channels: str = "sum",
    device: torch.device | str | None = None,
    target_class: int = 1,
    output: str = "probability",
    strategy: str = "auto",
    colouring: str = "auto",
    global_max: float | None = None,
    mass_fractions: Sequence[float] = MASS_FRACTIONS,
    progress: Progress = None,
    dtype: torch.dtype = torch.float32,
    crops: str = "auto",
) -> ReceptiveFieldMaps:
    """Receptive-field maps of ``image`` (C, H, W) under ``model`` (see :mod:`.maps`).

    Args:
        fractions: threshold fractions (0.01 means 1 %; for ``absolute``, the thresholds).
        mode: ``global``, ``pixel`` or ``absolute`` (:mod:`.thresholds`).
        pixels: output pixels to compute (None: all; flat indices or (row, col) pairs).
            ``global`` then uses the maximum over these pixels' rows unless ``global_max``.
        chunk_size: rows (or, when colouring, backward passes) per batch.
        channels: ``sum`` (magnitude summed over input channels) or ``separate``.
        target_class: as for :func:`~vessel_lens.interpret.jacobian`.
        output: as for :func:`~vessel_lens.interpret.jacobian`.
        strategy: as for :func:`~vessel_lens.interpret.jacobian`.
        device: as for :func:`~vessel_lens.interpret.jacobian`.
        colouring: ``auto``, ``always`` or ``never`` (:mod:`._colour`); ``auto`` measures
            a plain chunk and a small coloured batch (both part of the result) and finishes
            the faster way, when the field is bounded and a pass serves >= 2 pixels on
            average; ``metadata["colouring_choice"]`` says what it measured.
        global_max: the maximum for mode ``global``, when known (e.g. from a full run).
        mass_fractions: the q of the mass radii.
        progress: called with the number of pixels finished after each batch.
        dtype: precision of the gradients (float32, or float64 for ill-conditioned models);
            the maps are reduced in float32 either way.
        crops: ``auto`` (images over 1024x1024 pixels), ``always`` or ``never``: compute
            each cell of pixels on a crop holding their receptive fields (:mod:`.local`), so a
            3000x3000 image needs no whole-image forward pass; ``probability`` is then known
            at the computed pixels only (NaN elsewhere).

    Examples:
        >>> import torch
        >>> from vessel_lens.models import create_model
        >>> _ = torch.manual_seed(0)
        >>> model = create_model("resnet_seg", width=2).eval()  # or any (B, C, H, W) -> (B, K, H, W) net
        >>> image = torch.rand(1, 32, 32)  # (C, H, W)
        >>> from vessel_lens.interpret import receptive_field_maps
        >>> maps = receptive_field_maps(model, image, fractions=(0.01, 0.1), mode="pixel")
        >>> maps.count.shape  # per fraction, per output pixel: input pixels above the threshold
        torch.Size([2, 32, 32])
        >>> bool((maps.count[1] <= maps.count[0]).all())  # a higher threshold keeps fewer
        True
    """
    fractions, mass_fractions = check_options(fractions, mode, channels, mass_fractions, global_max)
    if colouring not in COLOURING:
        raise ConfigError(f"colouring {colouring!r}: choose one of {', '.join(COLOURING)}")
    check_chunk(chunk_size)
    started = time.perf_counter()
    if dtype not in (torch.float32, torch.float64):
        raise ConfigError(f"dtype {dtype}: receptive-field maps use float32 or float64")
    if crops not in CROPS:
        raise ConfigError(f"crops {crops!r}: choose one of {', '.join(CROPS)}")
    check_image(image)
    if image.dim() == 2:
        image = image[None]
    reduction = _Reduction(fractions, mode, channels, mass_fractions, global_max,
                           int(image.shape[-2]), int(image.shape[-1]), int(image.shape[0]))  # fmt: skip
    if crops == "always" or (crops == "auto" and image.shape[-2] * image.shape[-1] > LOCAL_PIXELS):
        options = dict(target_class=target_class, output=output, device=device,
                       strategy=strategy, dtype=dtype)  # fmt: skip
        return _maps_on_crops(model, image, pixels, chunk_size, reduction, progress, options,
                              started)  # fmt: skip
    engine = JacobianEngine(
        model,
        image,
        target_class=target_class,
        output=output,
        device=device,
        strategy=strategy,
        dtype=dtype,
    )
    if tuple(engine.source_shape[1:]) != (engine.height, engine.width):
        raise ConfigError("receptive-field maps need an output the size of the input")
    flat = torch.unique(flat_pixels(pixels, engine.height, engine.width))
    accumulator = reduction.accumulator()
    coarse = accumulator.pending
    field = _plan_colouring(colouring, engine, model, flat)
    chunk = chunk_size or engine.default_chunk()
    run = _Run(engine, accumulator, channels, progress)
    if field is None:
        run.plain(coarse_first(flat, engine.width) if coarse else flat, chunk)
    elif colouring == "always":
        run.coloured(_coloured_groups(flat, engine.width, field, coarse), chunk, field)
    else:
        run.cheaper(flat, field, coarse, chunk)
    passes = run.passes
    reduced = accumulator.finish()
    strategy_used = engine.strategy
    probability = engine.probability.cpu()
    _release(engine)
    del engine
    metadata = {
        "strategy": strategy_used,
        "colouring": run.coloured_rows > 0,
        "colour_period": list(periods(field)) if run.coloured_rows else None,
        "colouring_choice": run.choice,
        "backward_passes": passes,
        "rows": len(flat),
        "output": output,
        "target_class": target_class,
        "seconds": time.perf_counter() - started,
    }
    return reduction.maps(reduced, probability, metadata)


def _release(engine: JacobianEngine) -> None:
    """Free the engine's recorded forward pass now: drop what the engine holds and collect
    garbage only if its strategy or tape outlives that (a reference cycle); a full
    ``gc.collect()`` costs about 0.1 s in a process with many objects, more than a small
    model's whole map."""
    parts = (engine.strategy_impl, getattr(engine, "tape", None))
    survivors = [weakref.ref(part) for part in parts if part is not None]
    engine.__dict__.clear()
    del parts
    if any(survivor() is not None for survivor in survivors):
        gc.collect()


def _maps_on_crops(model, image, pixels, chunk_size, reduction, progress, options, started):
    """:func:`receptive_field_maps` cell by cell on crops (see :mod:`.local`)."""
    plan = plan_crops(model, reduction.in_channels, options["device"])
    engine = CropJacobian(model, image.float(), plan, **options)
    flat = torch.unique(flat_pixels(pixels, reduction.height, reduction.width))
    accumulator = reduction.accumulator()
    for part, rows, top, left in engine.chunks(flat, chunk_size):
        magnitude, inner_top, inner_left = _trimmed(magnitudes(rows, reduction.channels))
        n = len(part)
        accumulator.add(
            part,
            magnitude,
            torch.full((n,), top + inner_top, dtype=torch.long),
            torch.full((n,), left + inner_left, dtype=torch.long),
        )
        if progress is not None:
            progress(n)
    metadata = {
        "strategy": engine.strategy,
        "colouring": False,
        "colour_period": None,
        "backward_passes": len(flat),
        "rows": len(flat),
        "output": options["output"],
        "target_class": options["target_class"],
        "crops": engine.crops,
        "crop_plan": {
            "radius": plan.radius,
            "period": plan.period,
            "margin": plan.margin,
            "cell": plan.cell,
        },
        "seconds": time.perf_counter() - started,
    }
    return reduction.maps(accumulator.finish(), engine.probability, metadata)


def _resolve_rows(source, pixels, probability):
    """(rows, flat pixels or None, probability or None, metadata) from what the caller gave."""
    from vessel_lens.interpret.jacobian.store import LazyRows, load_jacobian

    metadata: dict = {}
    if isinstance(source, (str, Path)):
        metadata["jacobian_store"] = str(source)
        source = load_jacobian(source, lazy=True)
    if isinstance(source, tuple) and len(source) == 2 and isinstance(source[1], dict):
        rows, meta = source
        if pixels is None:
            pixels = meta.get("pixels")
        if probability is None:
            probability = meta.get("probability")
        skip = ("pixels", "probability", "image")
        metadata.update({k: v for k, v in meta.items() if k not in skip})
    else:
        rows = source
    if not isinstance(rows, (torch.Tensor, LazyRows)) or len(rows.shape) != 4:
        raise ConfigError(
            "J_or_store must be a (N, C, H, W) tensor, a Jacobian store path, or what "
            "load_jacobian returned"
        )
    return rows, pixels, probability, metadata


def receptive_field_maps_from_jacobian(
    source: object,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    mode: str = "global",
    *,
    pixels: object = None,
    probability: torch.Tensor | None = None,
    channels: str = "sum",
    global_max: float | None = None,
    mass_fractions: Sequence[float] = MASS_FRACTIONS,
    chunk_size: int | None = None,
    progress: Progress = None,
) -> ReceptiveFieldMaps:
    """Receptive-field maps from rows already computed: no model, no recomputation.

    ``source``: a (N, C, H, W) tensor (row n is output pixel ``pixels[n]``; default all,
    row-major), a :class:`~vessel_lens.interpret.LazyRows`, the ``(rows, metadata)`` pair of
    :func:`~vessel_lens.interpret.load_jacobian`, or the path of a store written by
    ``vessel-lens jacobian`` (its pixels, probability and provenance are used). Rows are read
    ``chunk_size`` (default 256) at a time. Other arguments as for :func:`receptive_field_maps`.

    Examples:
        >>> import torch
        >>> from vessel_lens.models import create_model
        >>> _ = torch.manual_seed(0)
        >>> model = create_model("resnet_seg", width=2).eval()  # or any (B, C, H, W) -> (B, K, H, W) net
        >>> image = torch.rand(1, 32, 32)  # (C, H, W)
        >>> from vessel_lens.interpret import jacobian, receptive_field_maps
        >>> from vessel_lens.interpret import receptive_field_maps_from_jacobian
        >>> rows = jacobian(model, image)
        >>> maps = receptive_field_maps_from_jacobian(rows, fractions=(0.01,), mode="pixel")
        >>> direct = receptive_field_maps(model, image, fractions=(0.01,), mode="pixel")
        >>> maps.count.shape, bool((maps.count == direct.count).all())
        (torch.Size([1, 32, 32]), True)
    """
    fractions, mass_fractions = check_options(fractions, mode, channels, mass_fractions, global_max)
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ConfigError(f"chunk_size {chunk_size!r}: must be a positive integer")
    started = time.perf_counter()
    rows, pixels, probability, metadata = _resolve_rows(source, pixels, probability)
    n, in_channels, height, width = (int(s) for s in rows.shape)
    if probability is not None and tuple(probability.shape[-2:]) != (height, width):
        raise ConfigError(
            f"probability {tuple(probability.shape)} does not match the rows' {height}x{width}"
        )
    flat = flat_pixels(pixels, height, width)
    if len(flat) != n:
        raise ConfigError(f"{n} rows but {len(flat)} pixels: give one pixel per row")
    if len(torch.unique(flat)) != len(flat):
        raise ConfigError("pixels repeat: each output pixel may have only one row")
    reduction = _Reduction(fractions, mode, channels, mass_fractions, global_max, height, width,
                           in_channels)  # fmt: skip
    accumulator = reduction.accumulator()
    step = chunk_size or 256
    for start in range(0, n, step):
        block = rows[start : start + step]
        _add_dense(accumulator, flat[start : start + step], block, channels)
        if progress is not None:
            progress(len(block))
    reduced = accumulator.finish()
    if probability is None:
        probability = torch.full((height, width), float("nan"))
    metadata.update(rows=n, seconds=time.perf_counter() - started)
    return reduction.maps(reduced, probability, metadata)
