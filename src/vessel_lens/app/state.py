"""Server-side state shared by every browser session: models, images and bounded caches.

Each (model, view) pair gets one :class:`~vessel_lens.interpret.JacobianEngine`: its forward
pass is recorded once, after which one output pixel's gradient map costs one windowed backward
pass. Engines, gradient maps, attribution maps, uploads, receptive fields and loaded stores
live in :class:`LRUCache` objects bounded by count and memory, and every computation runs in a
slot of the app's :class:`~vessel_lens.app.work.WorkQueue`, which keeps the bytes those caches
hold plus the bytes the running computations reserve within ``--cache-mb`` (estimates from
:mod:`vessel_lens.app.costs`). A view whose preparation would need more than half of that
budget is not prepared: the page offers the largest crop that fits instead.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vessel_lens.app.cache import LRUCache, held_bytes
from vessel_lens.app.config import RANDOM_INIT, AppConfig
from vessel_lens.app.costs import Costs, measure_costs
from vessel_lens.app.images import View, resolve_view
from vessel_lens.app.jobs import GlobalMaxJobs, Job, engine_global_max
from vessel_lens.app.stores import MapIndex, StoredJacobian, StoredMaps, StoreIndex
from vessel_lens.app.tasks import ACTIVE, Tasks
from vessel_lens.app.work import OverBudget, WorkQueue, mib
from vessel_lens.data.samples import Sample
from vessel_lens.errors import ConfigError, DataError

MIB = 2**20
JOB_CHUNK = 16
"""Rows per backward pass of the global-maximum job: short, so hovers interleave."""
SPLIT_ORDER = ("test", "val", "train")
"""The order of the dataset's splits in the image menu (then images in no split)."""
VIEW_SHARE = 2
"""Preparing one view may reserve at most 1 / VIEW_SHARE of the memory budget, so that a
comparison model's view and the hovers' work fit beside it."""


@dataclass
class ModelEntry:
    """A model the page can select. ``checkpoint`` is None for the random initialisation."""

    key: str
    label: str
    model: nn.Module
    name: str
    kwargs: dict
    weights_hash: str | None
    in_channels: int
    spec: str | None = None
    """What ``--checkpoint`` named (None for the random initialisation and ``--model``)."""
    options: str | None = None
    """The command-line options naming the model (for hints), None for the random init."""


def _describe(spec: str, checkpoint) -> str:
    kwargs = checkpoint.model_kwargs
    width = f" w{kwargs['width']}" if "width" in kwargs else ""
    parts = [f"{spec} ({checkpoint.model_name}{width}"]
    meta = checkpoint.metadata
    if "epoch" in meta:
        parts.append(f", epoch {meta['epoch']}")
    dice = (meta.get("metrics") or {}).get("val_dice")
    if isinstance(dice, (int, float)):
        parts.append(f", val Dice {dice:.3f}")
    return "".join(parts) + ")"


def random_model(name: str, kwargs: dict, seed: int, device: torch.device) -> nn.Module:
    """A freshly initialised model of the same architecture; the global RNG is left as found."""
    from vessel_lens.models import create_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_model(name, **kwargs)
    return model.to(device).eval()


def _sources(config: AppConfig) -> list:
    """The checkpoints, then ``--model``, then ``--compare`` when it names another file."""
    from vessel_lens.models.source import ModelSource

    specs = list(dict.fromkeys(config.checkpoints))
    sources = [ModelSource(spec) for spec in specs]
    if config.model is not None:
        sources.append(ModelSource(None, config.model, config.model_args, config.weights))
    if config.compare not in (None, RANDOM_INIT) and config.compare not in specs:
        sources.append(ModelSource(config.compare))
    return sources


def _random_init(checkpoint, seed: int, device: torch.device) -> nn.Module | None:
    from vessel_lens.models.foreign import ForeignCheckpoint

    if isinstance(checkpoint, ForeignCheckpoint):
        return checkpoint.random_init(seed, device)
    return random_model(checkpoint.model_name, checkpoint.model_kwargs, seed, device)


def load_models(config: AppConfig, device: torch.device) -> dict[str, ModelEntry]:
    """``m0``, ``m1``, ... for the checkpoints, ``--model`` and ``--compare`` when it is a
    file, plus ``random``: a random initialisation of the first model's architecture (none
    when that is a TorchScript or torch.export file, which has no constructor)."""
    from vessel_lens.interpret.provenance import weights_hash

    entries: dict[str, ModelEntry] = {}
    first = None
    for i, source in enumerate(_sources(config)):
        with torch.random.fork_rng(devices=[]):  # building the model draws initial weights
            model, checkpoint = source.load(device)
        first = first or checkpoint
        label = (
            _describe(source.checkpoint, checkpoint)
            if source.model is None
            else f"{source.model} ({Path(source.weights).name if source.weights else 'no --weights'})"
        )
        entries[f"m{i}"] = ModelEntry(
            f"m{i}",
            label,
            model,
            checkpoint.model_name,
            dict(checkpoint.model_kwargs),
            weights_hash(checkpoint.state_dict),
            checkpoint.in_channels,
            source.checkpoint,
            source.options,
        )
    model = _random_init(first, config.seed, device)
    if model is None and config.compare == RANDOM_INIT:
        raise ConfigError(
            f"--compare {RANDOM_INIT}: {first.path} is a {first.kind} file, which cannot be "
            "initialised afresh; compare with another checkpoint"
        )
    if model is not None:
        entries[RANDOM_INIT] = ModelEntry(
            RANDOM_INIT,
            f"random init of {first.model_name} (seed {config.seed})",
            model,
            first.model_name,
            dict(first.model_kwargs),
            None,
            first.in_channels,
        )
    return entries


def engine_bytes(engine) -> int:
    """Memory held by an engine: its recorded forward pass and prepared coefficients."""
    return held_bytes(engine)


class AppState:
    """Everything the callbacks read. Built once by ``create_app``; thread-safe."""

    def __init__(self, config: AppConfig, dataset=None, models=None):
        from vessel_lens.data.source import open_dataset
        from vessel_lens.devices import resolve_device

        self.config = config
        self.device = resolve_device(config.device)
        self.models = models if models is not None else load_models(config, self.device)
        in_channels = self.models["m0"].in_channels
        self.dataset = dataset or open_dataset(
            config.data, keep_channels=in_channels > 1, require_labels=False
        )
        self.compare_default = None
        if config.compare == RANDOM_INIT:
            self.compare_default = RANDOM_INIT
        elif config.compare is not None:
            self.compare_default = next(
                (k for k, e in self.models.items() if e.spec == config.compare), None
            )
        budget = config.cache_mb * MIB
        self.work = WorkQueue(config.workers, budget, config.queue, config.queue_timeout)
        self.stores = StoreIndex(config.erf, budget // VIEW_SHARE, admit=self.work.slot)
        self.erf_maps = MapIndex(config.erf, budget // 4)
        self.uploads = LRUCache(config.uploads, min(256 * MIB, budget // 4))
        self.engines = LRUCache(config.engines, budget, size_of=engine_bytes)
        self.gradients = LRUCache(100_000, budget // 4)
        self.fields = LRUCache(16, budget // 4, size_of=held_bytes)
        self.count_maps = LRUCache(8, budget // 4)
        self.view_hashes = LRUCache(256)  # a fingerprint per view, not one per hover
        self.work.account(
            self.uploads,
            self.engines,
            self.gradients,
            self.fields,
            self.count_maps,
            *self.stores.caches,
            *self.erf_maps.caches,
        )
        self.jobs = GlobalMaxJobs()
        self.tasks = Tasks(config.workers + config.queue)
        self._costs: dict[tuple, Costs] = {}
        self._engine_locks: dict[tuple, threading.Lock] = {}
        self._model_locks = {key: threading.Lock() for key in self.models}
        self._lock = threading.Lock()

    def warm_up(self) -> None:
        """Load what the computations need before serving: each architecture's costs (its
        probes also run the Jacobian code once) and Captum, so that the server's base memory
        is reached at start-up and the budget covers what comes after."""
        import importlib.util

        for key in self.models:
            self.costs(key)
        if importlib.util.find_spec("captum") is not None:
            import captum.attr  # noqa: F401

    def shutdown(self, wait: float = 0.0) -> None:
        """Stop the background work: cancel tasks, stop the queue and the global-max jobs."""
        self.tasks.shutdown()
        self.work.stop()
        self.jobs.shutdown(wait=wait)
        self.tasks.shutdown(wait=wait)

    def model_lock(self, model_key: str) -> threading.Lock:
        """Held while a model's mode or hooks may change (engine builds, receptive fields,
        copies for attributions); taken inside a work slot, never while waiting for one."""
        self.model(model_key)
        return self._model_locks[model_key]

    def costs(self, model_key: str) -> Costs:
        """The model's memory per view size (measured once per architecture)."""
        entry = self.model(model_key)
        key = (entry.name, repr(sorted(entry.kwargs.items())), entry.in_channels)
        with self._lock:
            known = self._costs.get(key)
        if known is not None:
            return known
        probe = self.work.slot(self.work.budget // 4, "measuring the model's memory use")
        with probe, self.model_lock(model_key):
            costs = measure_costs(entry.model, entry.in_channels, self.device)
        with self._lock:
            return self._costs.setdefault(key, costs)

    def largest_side(self, model_keys) -> int:
        """The largest square view side that every one of these models may prepare."""
        limit = self.work.budget // VIEW_SHARE
        return min(self.costs(key).largest_side(limit) for key in model_keys)

    def _check_view_fits(self, model_key: str, view: View) -> int:
        """Bytes to reserve for preparing ``view`` with the model; ConfigError when that is
        more than a view may take."""
        pixels = view.height * view.width
        needed = self.costs(model_key).build(pixels)
        limit = self.work.budget // VIEW_SHARE
        if needed > limit:
            side = self.costs(model_key).largest_side(limit)
            raise ConfigError(
                f"a {view.height}x{view.width} view needs about {mib(needed)} to prepare with "
                f"{self.model(model_key).label}; --cache-mb {self.config.cache_mb} allows "
                f"{mib(limit)} per view: choose a crop of at most {side}x{side} or start the "
                "app with a larger --cache-mb"
            )
        return needed

    def model(self, key: object) -> ModelEntry:
        if not isinstance(key, str) or key not in self.models:
            raise ConfigError(f"unknown model {str(key)[:40]!r}")
        return self.models[key]

    def image_options(self) -> list[dict[str, str]]:
        """Dropdown options: dataset images (with their split; the test split first, so the
        page opens on an image the model was not trained on), stored crops, uploads."""
        split_of = {stem: split for split, stems in self.dataset.splits.items() for stem in stems}
        order = {split: i for i, split in enumerate(SPLIT_ORDER)}
        stems = sorted(
            self.dataset.samples, key=lambda stem: order.get(split_of.get(stem), len(order))
        )
        options = [
            {"label": f"{stem} · {split_of.get(stem, 'unsplit')}", "value": f"data/{stem}"}
            for stem in stems
        ]
        for store in self.stores.stores:
            if store.stem not in self.dataset.samples:
                options.append({"label": f"{store.name} · stored", "value": f"store/{store.name}"})
        for key, sample in self.uploads.snapshot():
            options.append({"label": f"{sample.stem} · uploaded", "value": key})
        return options

    def sample(self, key: object) -> Sample:
        """The sample behind an image key (keys are never paths)."""
        if isinstance(key, str) and key.startswith("data/"):
            sample = self.dataset.samples.get(key[5:])
            if sample is not None:
                return sample
        elif isinstance(key, str) and key.startswith("upload/"):
            sample = self.uploads.get(key)
            if sample is not None:
                return sample
            raise DataError("that upload is no longer in memory; upload it again")
        elif isinstance(key, str) and key.startswith("store/"):
            store = self._store_by_name(key[6:])
            if store is not None:
                image = self.fields.get_or_create(("image", key), lambda: self.stores.image(store))
                return Sample(store.stem, image)
        raise DataError(f"unknown image {str(key)[:60]!r}")

    def _store_by_name(self, name: str) -> StoredJacobian | None:
        return next((s for s in self.stores.stores if s.name == name), None)

    def decode_upload(self, contents: object, filename: object) -> Sample:
        """An upload decoded in a work slot sized from its header (see ``decode_upload``)."""
        from vessel_lens.app.images import decode_upload

        in_channels = self.models["m0"].in_channels
        return decode_upload(
            contents, filename, self.config.upload_bytes, in_channels > 1, admit=self.work.slot
        )

    def add_upload(self, sample: Sample) -> str:
        key = f"upload/{sample.stem}"
        self.uploads.put(key, sample)
        return key

    def stored_box(self, key: str) -> tuple[int, int, int, int] | None:
        """The crop box of a precomputed file for this image: the first finished store, else
        the first map file."""
        if key.startswith("store/"):
            store = self._store_by_name(key[6:])
            return None if store is None else (0, 0, store.crop_box[2], store.crop_box[3])
        if key.startswith("data/"):
            finished = [s for s in self.stores.for_stem(key[5:]) if s.complete]
            stored = finished or self.erf_maps.for_stem(key[5:])
            return stored[0].crop_box if stored else None
        return None

    def view(
        self, key: object, mode: object, size=None, top=None, left=None, models=("m0",)
    ) -> tuple[View, str]:
        """The view the page asked for, no larger than ``--max-side`` nor than the memory
        budget lets the ``models`` prepare."""
        sample = self.sample(key)
        limit, why = self.config.max_side, f"--max-side {self.config.max_side}"
        fits = self.largest_side(models)
        if fits < limit:
            limit = max(fits, 1)
            why = f"the {limit}x{limit} that --cache-mb {self.config.cache_mb} allows this model"
        return resolve_view(
            str(key), sample.size, mode, size, top, left, limit, self.stored_box(key), why
        )

    def view_source(self, view: View) -> tuple[str, tuple[int, int, int, int]] | None:
        """(image stem, crop box in that image) of a view, as precomputed files record them;
        None for uploads (and unknown stored images)."""
        if view.key.startswith("store/"):
            store = self._store_by_name(view.key[6:])
            if store is None or (view.height, view.width) != tuple(store.crop_box[2:]):
                return None
            return store.stem, store.crop_box
        if view.key.startswith("data/"):
            return view.key[5:], (view.top, view.left, view.height, view.width)
        return None

    def view_hash(self, view: View) -> str:
        """Fingerprint of the view's pixels, as precomputed files record theirs (cached)."""
        from vessel_lens.interpret.provenance import image_hash

        return self.view_hashes.get_or_create(
            view, lambda: image_hash(view.crop(self.sample(view.key).image))
        )

    def store_for(self, model_key: str, view: View) -> StoredJacobian | None:
        entry = self.model(model_key)
        source = self.view_source(view)
        if source is None or not self.stores.for_stem(source[0]):
            return None
        return self.stores.match(*source, entry.weights_hash, self.view_hash(view))

    def maps_for(self, model_key: str, view: View) -> StoredMaps | None:
        """The receptive-field map file (``vessel-lens erf``) of this view and model, if any."""
        entry = self.model(model_key)
        source = self.view_source(view)
        if source is None or not self.erf_maps.for_stem(source[0]):
            return None
        return self.erf_maps.match(*source, entry.weights_hash, self.view_hash(view))

    def engine(self, model_key: str, view: View):
        return self.engines.get_or_create((model_key, view), self._engine_builder(model_key, view))

    def pinned_engine(self, model_key: str, view: View):
        """A context holding the view's engine in the cache (see :meth:`LRUCache.pinned`)."""
        return self.engines.pinned((model_key, view), self._engine_builder(model_key, view))

    def _engine_builder(self, model_key: str, view: View):
        from vessel_lens.interpret import JacobianEngine

        entry = self.model(model_key)
        image = view.crop(self.sample(view.key).image)
        if int(image.shape[0]) != entry.in_channels:
            raise DataError(
                f"image has {int(image.shape[0])} channel(s) but {entry.label} expects "
                f"{entry.in_channels}"
            )

        def build():
            needed = self._check_view_fits(model_key, view)
            slot = self.work.slot(needed, f"preparing the {view.height}x{view.width} view")
            with slot, self.model_lock(model_key):
                return JacobianEngine(entry.model, image.contiguous(), device=self.device)

        return build

    def probability(self, model_key: str, view: View) -> np.ndarray:
        """Vessel probability (H, W) of the view, from the engine's forward pass."""
        return self.engine(model_key, view).probability.cpu().numpy()

    def _engine_lock(self, model_key: str, view: View, engine) -> threading.Lock | None:
        if engine.strategy == "linear":
            return None
        with self._lock:
            return self._engine_locks.setdefault((model_key, view), threading.Lock())

    def gradient(self, model_key: str, view: View, row: int, col: int) -> tuple[torch.Tensor, str]:
        """d probability(row, col) / d input: (C, H, W) float32 on the CPU, and its source."""
        if not (0 <= row < view.height and 0 <= col < view.width):
            raise ConfigError(
                f"pixel ({row}, {col}) lies outside the {view.height}x{view.width} view"
            )
        key = ("gradient", model_key, view, row, col)
        # one computation per pixel: the page's paint route and the pixel callback ask at once
        return self.gradients.get_or_create(
            key, lambda: self._compute_gradient(model_key, view, row, col)
        )

    def _compute_gradient(self, model_key: str, view: View, row: int, col: int):
        store = self.store_for(model_key, view)
        if store is not None:
            stored = self.stores.row(store, row, col)
            if stored is not None:
                return stored.cpu().clone(), "stored"
        flat = torch.tensor([row * view.width + col])
        with self.pinned_engine(model_key, view) as engine:
            lock = self._engine_lock(model_key, view, engine)
            needed = self.costs(model_key).rows(view.height * view.width, 1)
            with self.work.slot(needed, "the pixel's gradient"), lock or contextlib.nullcontext():
                rows = engine.rows(flat)
        return rows[0].float().cpu().clone(), "computed"

    def _field(self, model_key: str, view: View):
        """The receptive field at the view's size, or why there is none (a string): the
        model has none the library can bound, or computing it needs more than the budget."""
        from vessel_lens.interpret.fields.structural import receptive_field

        entry = self.model(model_key)
        key = ("field", model_key, view.height, view.width)

        def build():
            needed = self.costs(model_key).receptive_field(view.height * view.width)
            what = f"the receptive field of a {view.height}x{view.width} view"
            try:
                with self.work.slot(needed, what), self.model_lock(model_key):
                    return receptive_field(
                        entry.model, (view.height, view.width), in_channels=entry.in_channels
                    )
            except (ConfigError, OverBudget) as exc:
                return f"receptive field not shown: {exc}"

        return self.fields.get_or_create(key, build)

    def receptive_field(self, model_key: str, view: View):
        """The model's structural receptive field at the view's size (None if unknown)."""
        field = self._field(model_key, view)
        return None if isinstance(field, str) else field

    def receptive_field_problem(self, model_key: str, view: View) -> str | None:
        """Why the view has no receptive field (None when it has one)."""
        field = self._field(model_key, view)
        return field if isinstance(field, str) else None

    def receptive_box(self, model_key: str, view: View, row: int, col: int):
        """Half-open (top, bottom, left, right) input box that can influence (row, col)."""
        field = self.receptive_field(model_key, view)
        if field is None or field.boxes is None:
            return None
        return tuple(int(v) for v in field.boxes[row * view.width + col])

    def global_max(self, model_key: str, view: View) -> tuple[float | None, str]:
        """(max |g| over the view's whole Jacobian or None, a status line for the page)."""
        key = (model_key, view)
        job = self.jobs.get(key)
        if job is not None and job.state == "done":
            return job.value, job.note
        store = self.store_for(model_key, view)
        if store is not None and store.full and self.stores.in_memory(store):
            value = self.stores.global_max(store)
            self.jobs.set_value(key, value, f"from store {store.name}")
            return value, f"from store {store.name}"
        if job is None:
            return None, "not computed yet: press 'compute global max'"
        if job.state in ("queued", "running"):
            return None, f"computing: {100 * job.fraction:.0f} % of {job.total} rows"
        return None, f"not available ({job.error})"

    def request_global_max(self, model_key: str, view: View) -> Job:
        store = self.store_for(model_key, view)
        if store is not None and store.full:
            total = store.rows
            return self.jobs.submit(
                (model_key, view), total, lambda progress: self.stores.global_max(store)
            )
        self.engine(model_key, view)  # a view too large is refused now, not in the job

        def compute(progress):
            with self.pinned_engine(model_key, view) as engine:
                lock = self._engine_lock(model_key, view, engine)
                needed = self.costs(model_key).rows(view.height * view.width, JOB_CHUNK)

                def chunk_guards():
                    yield self.work.slot(
                        needed, "a chunk of the global maximum", background=True, patient=True
                    )
                    if lock is not None:
                        yield lock

                return engine_global_max(engine, progress, JOB_CHUNK, chunk_guards)

        return self.jobs.submit((model_key, view), view.height * view.width, compute)

    def count_rows(self, model_key: str, view: View, restart: bool = False):
        """(the view's computed count rows or None, the task computing them or None): the
        map panel's on-demand receptive-field count (:mod:`vessel_lens.app.countmap`). A
        missing result starts a background task unless the last one for this view was
        cancelled or failed and ``restart`` is false (the page then says so)."""
        from vessel_lens.app import countmap

        key = ("countmap", model_key, view)
        cached = self.count_maps.get(key)
        if cached is not None:
            return cached, None
        task = self.tasks.find(key)
        if task is not None and task.state != "done" and (task.state in ACTIVE or not restart):
            return None, task
        field = self.receptive_field(model_key, view)
        area = field.largest_area if field is not None else None
        limit = self.count_maps.max_bytes // 2  # the parts and their concatenation
        stride = countmap.map_stride(view.height, view.width, area, limit)
        full_area = area or view.height * view.width
        result = countmap.result_bytes(view.height, view.width, stride, full_area)
        needed = self.costs(model_key).rows(view.height * view.width, countmap.CHUNK) + 2 * result
        what = f"the receptive-field count of the {view.height}x{view.width} view"
        pixels = countmap.grid_pixels(view.height, view.width, stride)
        label = f"receptive-field counts ({pixels} pixels, stride {stride})"

        def run(task) -> None:
            with self.pinned_engine(model_key, view) as engine:
                lock = self._engine_lock(model_key, view, engine)
                with self.work.slot(needed, what, task.cancel, background=True) as slot:
                    task.progress(0.0)
                    rows = countmap.compute_count_rows(
                        engine, stride, slot.pause, task.progress, lock
                    )
            self.count_maps.put(key, rows)

        return None, self.tasks.submit(key, label, run)

    def attribution(self, method: str, model_key: str, view: View, target, cancel, progress):
        """Run a Captum method for ``target`` in the work queue (batched; stops when the
        ``cancel`` event is set; ``progress(fraction)`` after each batch); returns the
        (C, H, W) map."""
        import copy

        from vessel_lens.app import batched

        entry = self.model(model_key)
        image = view.crop(self.sample(view.key).image)
        channels = int(image.shape[0])
        run_plan = batched.plan(
            method, view.height, view.width, channels, self.costs(model_key), self.work.budget
        )
        what = f"{method.replace('_', ' ')} on the {view.height}x{view.width} view"
        with self.work.slot(run_plan.nbytes, what, cancel, background=True) as slot:
            progress(0.0)
            with self.model_lock(model_key):
                model = copy.deepcopy(entry.model)
            return batched.run(run_plan, model, image, target, slot, progress)
