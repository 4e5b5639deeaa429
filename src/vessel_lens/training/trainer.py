"""The training loop: seeded, resumable, distributed under torchrun, safe with its files.

A run folder holds ``config.yaml`` (resolved configuration), ``last.pt`` (model and full
training state after the last finished epoch), ``best.pt`` (best validation Dice),
``metrics.csv`` (one row per epoch), ``curves.png`` and, when the dataset ships no split,
``splits/`` with the seeded split that was used.

Resuming restores model, optimiser, scheduler, RNG states, epoch and history from
``last.pt``; crops are drawn from generators seeded by (seed, epoch, item), so a resumed
run continues exactly as an uninterrupted one would (bit-exact on CPU).

The folder is held with :func:`vessel_lens.outputs.claim_output` for the whole run. A run id,
recorded in ``config.yaml`` and in every checkpoint, lets ``resume`` refuse a folder whose files
come from two runs (two processes writing into it at once where it could not be locked).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from vessel_lens.data.datasets import CropDataset
from vessel_lens.data.samples import Sample
from vessel_lens.data.source import open_dataset
from vessel_lens.data.splits import write_splits
from vessel_lens.data.statistics import data_statistics
from vessel_lens.devices import resolve_device
from vessel_lens.distributed import DistContext, init_distributed
from vessel_lens.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    OutputError,
    TrainingError,
    WriteError,
)
from vessel_lens.interrupts import Terminated, interrupts_deferred, sigterm_as_interrupt
from vessel_lens.models.checkpoint import Checkpoint, read_checkpoint, save_checkpoint
from vessel_lens.models.heads import predicted_vessel
from vessel_lens.models.registry import create_model
from vessel_lens.outputs import (
    OVERWRITE_HINT,
    claim_output,
    holds,
    note,
    other_entries,
    remove_temporaries,
)
from vessel_lens.threads import torch_threads, work_starts
from vessel_lens.training.config import TrainConfig, read_config, write_config
from vessel_lens.training.losses import make_loss, regularisation
from vessel_lens.training.metrics import Confusion, confusion, overlap_scores
from vessel_lens.training.schedule import make_scheduler
from vessel_lens.viz.curves import learning_curves
from vessel_lens.write_errors import atomic_file, write_reason

CSV_COLUMNS = ("epoch", "train_loss", "val_loss", "val_dice", "val_iou", "lr", "seconds")


@dataclass
class TrainSummary:
    """What a finished (or stopped) run reached."""

    out: Path
    epochs_done: int
    best_epoch: int
    best_dice: float
    stop_reason: str
    seconds: float


def _write_metrics_csv(history: list[dict], path: Path) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    with atomic_file(path, "w") as handle:
        handle.write(buffer.getvalue())


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


class Trainer:
    """Owns one run: model, optimiser, scheduler, data and the run folder."""

    def __init__(
        self,
        config: TrainConfig,
        out: Path,
        ctx: DistContext,
        progress: bool = True,
        resuming: Checkpoint | None = None,
        run_id: str | None = None,
    ):
        self.config = config
        self.out = Path(out)
        self.run_id = run_id
        self.ctx = ctx
        self.progress = progress and ctx.is_main
        dataset = open_dataset(
            config.data,
            keep_channels=config.keep_channels,
            split_fractions=config.split_fractions,
            checkpoint=resuming,
        )
        if resuming is not None:
            _check_same_split(dataset, resuming)
        if config.mask_loss and not dataset.has_masks:
            raise ConfigError(f"--mask-loss: {dataset.name} has no field-of-view masks")
        # resolved here, where the data is known, so that config.yaml records the value used
        config = self.config = dataclasses.replace(
            config, mask_loss=dataset.has_masks if config.mask_loss is None else config.mask_loss
        )
        self.dataset = dataset
        self.train_samples = dataset.subset("train")
        self.val_samples = dataset.subset("val")
        self.data_statistics = data_statistics(self.train_samples)  # for evaluate's check
        in_channels = int(self.train_samples[0].image.shape[0])
        self.model_kwargs = {**config.model_kwargs, "in_channels": in_channels}
        torch.manual_seed(config.seed)
        self.model = create_model(config.model, **self.model_kwargs).to(ctx.device)
        self.train_model: nn.Module = self.model
        if ctx.distributed:
            self.train_model = DistributedDataParallel(
                self.model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
            )
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.crops = CropDataset(
            self.train_samples,
            config.crop_size,
            config.crops_per_image,
            seed=config.seed,
            flips=config.flips,
            rotations=config.rotations,
        )
        self.steps_per_epoch = max(len(self.crops) // (config.batch_size * ctx.world_size), 1)
        self.scheduler = make_scheduler(self.optimizer, config, self.steps_per_epoch)
        self.loss_fn = make_loss(config.loss)
        self.epoch = 0
        self.best_dice = -1.0
        self.best_epoch = 0
        self.bad_validations = 0
        self.history: list[dict] = []
        self.elapsed = 0.0
        self.saved_epoch = 0

    # ----------------------------------------------------------------- state
    def training_state(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": _rng_state(self.ctx.device),
            "epoch": self.epoch,
            "best_dice": self.best_dice,
            "best_epoch": self.best_epoch,
            "bad_validations": self.bad_validations,
            "history": self.history,
            "elapsed": self.elapsed,
        }

    def load_training_state(self, path: Path) -> None:
        checkpoint = read_checkpoint(path)
        if checkpoint.model_name != self.config.model or any(
            checkpoint.model_kwargs.get(k) != v for k, v in self.model_kwargs.items()
        ):
            raise CheckpointError(
                f"{path}: checkpoint is {checkpoint.model_name}({checkpoint.model_kwargs}), "
                f"but the run's config.yaml asks for {self.config.model}({self.model_kwargs})"
            )
        if not checkpoint.training:
            raise CheckpointError(f"{path}: holds no training state to resume from")
        self.model.load_state_dict(checkpoint.build("cpu").state_dict())
        state = checkpoint.training
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"], self.ctx.device)
        self.epoch = int(state["epoch"])
        self.best_dice = float(state["best_dice"])
        self.best_epoch = int(state["best_epoch"])
        self.bad_validations = int(state["bad_validations"])
        self.history = list(state["history"])
        self.elapsed = float(state["elapsed"])
        self.saved_epoch = self.epoch

    def _metadata(self, metrics: dict | None = None) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "metrics": metrics or {},
            "config": self.config.to_dict(),
            "data": self.dataset.name,
            "split_source": self.dataset.split_source,
            "masks": {"dataset": self.dataset.has_masks, "loss": bool(self.config.mask_loss)},
            "training_data": self.data_statistics,
            "splits": self.dataset.splits if self.dataset.split_source != "dataset" else {},
            "train_seconds": round(self.elapsed, 1),
            "torch": str(torch.__version__),
            **({"run_id": self.run_id} if self.run_id else {}),
        }

    def _save(self, name: str, with_state: bool, metrics: dict | None = None) -> None:
        if not self.ctx.is_main:
            return
        path = self.out / name
        try:
            with interrupts_deferred():  # Ctrl-C or SIGTERM: after the save, not during it
                save_checkpoint(
                    path,
                    self.model,
                    self.config.model,
                    self.model_kwargs,
                    metadata=self._metadata(metrics),
                    training=self.training_state() if with_state else None,
                )
            if with_state:
                self.saved_epoch = self.epoch
        except OSError as exc:
            reason = write_reason(exc)
            if reason is None:
                raise
            kept = f"; the previous {name} is intact" if path.exists() else ""
            raise WriteError(f"{path}: cannot write ({reason}){kept}") from None

    # ------------------------------------------------------------ one epoch
    def _epoch_batches(self) -> list[list[int]]:
        order = torch.randperm(
            len(self.crops),
            generator=torch.Generator().manual_seed(self.config.seed * 7919 + self.epoch),
        ).tolist()
        usable = self.steps_per_epoch * self.config.batch_size * self.ctx.world_size
        if self.ctx.distributed and len(order) < usable:
            # fewer crops than one step of every process: repeat them, so that every process
            # runs the same number of steps (DDP waits for all of them at each one)
            order = (order * -(-usable // len(order)))[:usable]
        mine = self.ctx.shard(order[:usable])
        size = self.config.batch_size
        return [mine[i : i + size] for i in range(0, len(mine), size)]

    def _train_epoch(self, bar: tqdm) -> float:
        self.train_model.train()
        self.crops.set_epoch(self.epoch)
        total, count = 0.0, 0
        for step, batch_indices in enumerate(self._epoch_batches()):
            items = [self.crops[i] for i in batch_indices]
            images = torch.stack([it["image"] for it in items]).to(self.ctx.device)
            labels = torch.stack([it["label"] for it in items]).to(self.ctx.device)
            valid = None
            if self.config.mask_loss:
                valid = torch.stack([it["mask"] for it in items]).to(self.ctx.device)
            logits = self.train_model(images)
            loss = self.loss_fn(logits, labels, valid)
            penalty = regularisation(self.model, self.config.regularisation, self.config.alpha)
            objective = loss if penalty is None else loss + penalty
            # agreed by every process, so that none is left waiting in the backward pass
            if self.ctx.any(not bool(torch.isfinite(objective))):
                raise TrainingError(
                    f"loss became {float(objective.detach())} at epoch {self.epoch + 1}, "
                    f"step {step + 1} (on at least one process); stopped; the last good "
                    f"checkpoint is {self.out / 'last.pt'}"
                )
            self.optimizer.zero_grad(set_to_none=True)
            objective.backward()
            self.optimizer.step()
            if self.config.schedule != "plateau":
                self.scheduler.step()
            total += float(loss.detach())
            count += 1
            bar.update(len(batch_indices) * self.ctx.world_size)
            bar.set_postfix(
                epoch=self.epoch + 1, loss=f"{total / count:.4f}", best=f"{self.best_dice:.4f}"
            )
        mean = torch.tensor([total, count], dtype=torch.float64)
        if self.ctx.distributed:
            dist.all_reduce(mean)
        return float(mean[0] / mean[1])

    @torch.no_grad()
    def validate(self, samples: list[Sample]) -> dict[str, float]:
        """Whole-image loss, Dice and IoU over ``samples`` (shared between ranks); inside the
        field-of-view masks where samples have them (the loss only with ``mask_loss``)."""
        if self.ctx.distributed:  # rank 0's BatchNorm statistics: those of the saved model
            for buffer in self.model.buffers():
                dist.broadcast(buffer, src=0)
        self.model.eval()
        sums = torch.zeros(6, dtype=torch.float64)  # loss, images, tp, fp, fn, tn
        for sample in self.ctx.shard(samples):
            image = sample.image[None].to(self.ctx.device)
            label = sample.label[None].long().to(self.ctx.device)
            logits = self.model(image)
            predicted, truth = predicted_vessel(logits)[0].cpu(), sample.label
            valid = None
            if sample.mask is not None:
                predicted, truth = predicted[sample.mask], truth[sample.mask]
                if self.config.mask_loss:
                    valid = sample.mask[None].to(self.ctx.device)
            counts = confusion(predicted, truth)
            loss = float(self.loss_fn(logits, label, valid))
            sums += torch.tensor(
                [loss, 1, counts.tp, counts.fp, counts.fn, counts.tn], dtype=torch.float64
            )
        if self.ctx.distributed:
            dist.all_reduce(sums)
        scores = overlap_scores(Confusion.from_tensor(sums[2:]))
        return {
            "val_loss": float(sums[0] / sums[1]),
            "val_dice": scores["dice"],
            "val_iou": scores["iou"],
        }

    # ------------------------------------------------------------- the run
    def run(self) -> TrainSummary:
        """Train until the configured end with ``config.threads`` torch threads (0: chosen by
        :func:`vessel_lens.threads.torch_threads`), restored afterwards. SIGTERM stops the run
        as Ctrl-C does (see :mod:`vessel_lens.interrupts`)."""
        with torch_threads(self.config.threads), sigterm_as_interrupt():
            work_starts()
            return self._run()

    def _run(self) -> TrainSummary:
        config = self.config
        total = config.epochs * self.steps_per_epoch * config.batch_size * self.ctx.world_size
        done = self.epoch * self.steps_per_epoch * config.batch_size * self.ctx.world_size
        bar = tqdm(
            total=total,
            initial=done,
            unit="crop",
            desc="training",
            disable=not self.progress,
            dynamic_ncols=True,
        )
        if self.epoch == 0 and not self.history:
            self._save("last.pt", with_state=True)
        stop_reason = "epochs"
        if config.patience and self.bad_validations >= config.patience:
            # a resumed run that had stopped early: its stop is part of the saved state
            stop_reason = "early stopping"
        try:
            while self.epoch < config.epochs and stop_reason == "epochs":
                started = time.perf_counter()
                torch.manual_seed(config.seed * 104_729 + self.epoch)
                train_loss = self._train_epoch(bar)
                self.epoch += 1
                row = {
                    "epoch": self.epoch,
                    "train_loss": train_loss,
                    "val_loss": math.nan,
                    "val_dice": math.nan,
                    "val_iou": math.nan,
                    "lr": self.optimizer.param_groups[0]["lr"],
                }
                stop, improved = False, False
                spent = self.elapsed + time.perf_counter() - started
                # every process must agree (their clocks differ): one stopping alone would
                # leave the others waiting for it
                time_up = self.ctx.any(
                    bool(config.max_minutes) and spent >= 60 * config.max_minutes
                )
                last = self.epoch == config.epochs or time_up  # the last epoch is validated
                if self.epoch % config.val_every == 0 or last:
                    scores = self.validate(self.val_samples)
                    row.update(scores)
                    if config.schedule == "plateau":
                        self.scheduler.step(scores["val_loss"])
                    improved = scores["val_dice"] > self.best_dice
                    if improved:
                        self.best_dice, self.best_epoch = scores["val_dice"], self.epoch
                        self.bad_validations = 0
                    else:
                        self.bad_validations += 1
                        if config.patience and self.bad_validations >= config.patience:
                            stop, stop_reason = True, "early stopping"
                self.elapsed += time.perf_counter() - started
                row["seconds"] = round(self.elapsed, 1)
                self.history.append(row)
                if time_up and not stop:
                    stop, stop_reason = True, "time limit"
                if improved:
                    self._save("best.pt", with_state=False, metrics=scores)
                self._save("last.pt", with_state=True)
                if self.ctx.is_main:
                    _write_metrics_csv(self.history, self.out / "metrics.csv")
                    learning_curves(self.history, self.out / "curves.png")
                if stop:
                    break
        except KeyboardInterrupt as exc:
            bar.close()
            if self.ctx.is_main:
                how = "terminated" if isinstance(exc, Terminated) else "interrupted"
                print(
                    f"{how}: {self.out / 'last.pt'} holds epoch {self.saved_epoch}; continue "
                    f"with: vessel-lens train --resume {self.out}",
                    flush=True,
                )
            raise
        bar.close()
        recorded = _recorded_run_id(self.out / "config.yaml") if self.ctx.is_main else None
        if self.run_id and recorded not in (None, self.run_id):
            raise TrainingError(
                f"{self.out}: config.yaml was replaced by another run while this one trained; "
                "the folder mixes two runs' files: start it again with --overwrite"
            )
        return TrainSummary(
            self.out, self.epoch, self.best_epoch, self.best_dice, stop_reason, self.elapsed
        )


RUN_FILES = ("config.yaml", "last.pt", "best.pt", "metrics.csv", "curves.png", "splits")
"""What a run writes into its folder."""


def _check_same_split(dataset, checkpoint: Checkpoint) -> None:
    """A resumed run must train and validate on the images it started with."""
    recorded = checkpoint.metadata.get("splits") or {}
    for name in ("train", "val"):
        if name in recorded and sorted(recorded[name]) != sorted(dataset.splits.get(name, [])):
            raise DataError(
                f"{dataset.name}: its {name} split differs from the one this run started with "
                f"({len(recorded[name])} images recorded in {checkpoint.path}); resuming would "
                "mix images between splits: restore the data or start a new run"
            )


CHECKPOINTS = ("last.pt", "best.pt")


def _check_run_folder(out: Path, overwrite: bool) -> None:
    """Refuse a folder that holds a run or files a run would replace, unless ``overwrite``,
    and one that holds anything else unless it is a run (runs hold what users add to them)."""
    is_run = (out / "config.yaml").is_file()
    if is_run and not overwrite and any((out / name).exists() for name in CHECKPOINTS):
        raise OutputError(
            f"{out}: already holds a run; continue it with --resume {out}, or pass --overwrite "
            "to replace it"
        )
    if not is_run:
        others = other_entries(out, RUN_FILES)
        if others:
            raise OutputError(
                f"{out}: is not empty and holds no run (holds {others[0]!r}); choose a new or "
                "empty folder for --out"
            )
        present = [name for name in RUN_FILES if holds(out / name)]
        if present and not overwrite:
            raise OutputError(f"{out}: already holds {present[0]}; {OVERWRITE_HINT}")


def _stopped_before_first_save(out: Path) -> bool:
    """A run folder with its config.yaml but no checkpoint: killed before its first save."""
    return (out / "config.yaml").is_file() and not any((out / n).exists() for n in CHECKPOINTS)


def _clear_run_folder(out: Path, replace: bool) -> None:
    """Remove the temporaries of a killed run, and with ``replace`` the files of a run."""
    remove_temporaries(out)
    if replace:
        for name in RUN_FILES:
            path = out / name
            if path.is_dir():
                for item in path.glob("*.txt"):
                    item.unlink()
            else:
                path.unlink(missing_ok=True)


def _start(config: TrainConfig, out: Path, ctx: DistContext, progress: bool, replace: bool):
    """Open the data, write config.yaml under a new run id, and train (``out`` is held)."""
    trainer = Trainer(config, out, ctx, progress, run_id=uuid.uuid4().hex)  # bad input fails here
    if ctx.is_main:
        _clear_run_folder(out, replace)
    ctx.barrier()
    if ctx.is_main:
        _write_run_config(trainer)
        if trainer.dataset.split_source == "seeded":
            write_splits(trainer.dataset.splits, out / "splits")
    return trainer.run()


def _write_run_config(trainer: Trainer) -> None:
    write_config(
        trainer.config,
        trainer.out / "config.yaml",
        {
            "world_size": trainer.ctx.world_size,
            "device": str(trainer.ctx.device),
            "run_id": trainer.run_id,
        },
    )


def train(
    config: TrainConfig, out: str | Path, overwrite: bool = False, progress: bool = True
) -> TrainSummary:
    """Start a new run in ``out`` (refused if ``out`` holds a run, unless ``overwrite``, or
    files that are not a run's). A folder left by a run killed before its first checkpoint
    is started again, with a note.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from vessel_lens.data import write_synthetic_dataset
        >>> from vessel_lens.training import TrainConfig, train
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = write_synthetic_dataset(folder / "data", count=6, size=32, progress=False)
        >>> config = TrainConfig(data=str(folder / "data"), width=2, epochs=2, crop_size=32,
        ...                      crops_per_image=1, batch_size=4, threads=1)
        >>> summary = train(config, folder / "run", progress=False)
        >>> summary.epochs_done, sorted(p.name for p in (folder / "run").glob("*.pt"))
        (2, ['best.pt', 'last.pt'])
        >>> import shutil
        >>> shutil.rmtree(folder)
    """
    out = Path(out)
    ctx = init_distributed(resolve_device(config.device))
    with claim_output(out, "train", check=lambda o: _check_run_folder(o, overwrite), group=ctx):
        stuck = ctx.is_main and _stopped_before_first_save(out)
        if stuck:
            note(f"{out}: holds a run stopped before its first checkpoint; starting again")
        return _start(config, out, ctx, progress, replace=overwrite or stuck)


def _recorded_run_id(path: Path) -> str | None:
    import yaml

    try:
        values = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    resolved = values.get("resolved_by") if isinstance(values, dict) else None
    run_id = resolved.get("run_id") if isinstance(resolved, dict) else None
    return str(run_id) if run_id else None


def _check_one_run(out: Path, run_id: str | None, last: Checkpoint) -> None:
    """Refuse a folder whose config.yaml and checkpoints come from different runs."""
    if run_id is None:  # written before run ids
        return
    checkpoints = {"last.pt": last}
    if (out / "best.pt").is_file():
        checkpoints["best.pt"] = read_checkpoint(out / "best.pt")
    for name, checkpoint in checkpoints.items():
        recorded = checkpoint.metadata.get("run_id")
        if recorded is not None and recorded != run_id:
            raise CheckpointError(
                f"{out}: {name} belongs to another run (id {str(recorded)[:8]}) than config.yaml "
                f"(id {run_id[:8]}); the folder mixes two runs' files (two processes wrote into "
                "it at once, or a file was copied in): start it again with --overwrite"
            )


def resume(
    out: str | Path, progress: bool = True, epochs: int | None = None, threads: int | None = None
) -> TrainSummary:
    """Continue the run in ``out`` from its ``last.pt`` (optionally with more ``epochs``, or
    another number of ``threads`` than recorded). A run killed before its first checkpoint is
    started again from its config.yaml, with a note.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from vessel_lens.data import write_synthetic_dataset
        >>> from vessel_lens.training import TrainConfig, resume, train
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = write_synthetic_dataset(folder / "data", count=6, size=32, progress=False)
        >>> config = TrainConfig(data=str(folder / "data"), width=2, epochs=1, crop_size=32,
        ...                      crops_per_image=1, batch_size=4, threads=1)
        >>> _ = train(config, folder / "run", progress=False)
        >>> resume(folder / "run", progress=False, epochs=2).epochs_done  # one more epoch
        2
        >>> import shutil
        >>> shutil.rmtree(folder)
    """
    out = Path(out)
    if not (out / "config.yaml").is_file():
        raise ConfigError(f"{out}: no config.yaml; not a vessel-lens run folder")
    values = read_config(out / "config.yaml")
    if epochs is not None:
        values["epochs"] = epochs
    if threads is not None:
        values["threads"] = threads
    config = TrainConfig.from_dict(values, str(out / "config.yaml"))
    ctx = init_distributed(resolve_device(config.device))
    with claim_output(out, "train --resume", group=ctx):
        # decided by rank 0 for all: the others could look after it has written a checkpoint
        if ctx.any(ctx.is_main and _stopped_before_first_save(out)):
            if ctx.is_main:
                note(f"{out}: the run stopped before its first checkpoint; starting it again")
            return _start(config, out, ctx, progress, replace=True)
        if not (out / "last.pt").is_file():
            raise CheckpointError(f"{out / 'last.pt'}: not found; nothing to resume")
        if ctx.is_main:
            remove_temporaries(out)
        run_id = _recorded_run_id(out / "config.yaml")
        last = read_checkpoint(out / "last.pt")
        _check_one_run(out, run_id, last)
        trainer = Trainer(config, out, ctx, progress, resuming=last, run_id=run_id)
        trainer.load_training_state(out / "last.pt")
        if epochs is not None and epochs < trainer.epoch:
            raise ConfigError(
                f"--epochs {epochs}: {out} has already trained {trainer.epoch} epochs; give at "
                f"least {trainer.epoch}"
            )
        if trainer.run_id is None:  # a run from before run ids gets one from here on
            trainer.run_id = uuid.uuid4().hex
        if ctx.is_main:  # the epochs and the number of processes of this continuation
            _write_run_config(trainer)
        return trainer.run()
