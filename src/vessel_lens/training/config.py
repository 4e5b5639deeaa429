"""Training configuration: one dataclass with defaults, validation and help text.

A run writes its resolved configuration as ``config.yaml`` in the run folder; ``--config``
reads the same format, and command-line options override it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from vessel_lens.errors import ConfigError

SCHEDULES = ("plateau", "cosine", "constant")


def _f(default: Any, help: str, **kwargs: Any) -> Any:
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass
class TrainConfig:
    """Everything that defines a training run."""

    data: str | None = _f(None, "Dataset folder or CSV manifest; empty means synthetic vessels.")
    model: str = _f("resnet_seg", "Architecture name from the model registry.")
    width: int = _f(16, "Channels of the first layer (the original used 64).")
    norm: str | None = _f("batch", "Normalisation: 'batch' or none.")
    dropout: float = _f(0.5, "Dropout probability at the bottleneck.")
    num_classes: int = _f(
        2,
        "Output channels: 2 (softmax over background and vessel) or 1 (one vessel logit with "
        "a sigmoid; the ce loss is then binary cross-entropy).",
    )
    keep_channels: bool = _f(False, "Keep RGB channels instead of converting to grey.")
    mask_loss: bool | None = _f(
        None,
        "Ignore pixels outside the field-of-view masks in the loss (default: on when the "
        "dataset has masks; config.yaml records the value used).",
    )
    epochs: int = _f(100, "Maximum number of epochs.")
    crops_per_image: int = _f(8, "Random crops drawn from each training image per epoch.")
    batch_size: int = _f(8, "Crops per optimisation step (per process under torchrun).")
    crop_size: int = _f(128, "Side of the square training crops.")
    flips: bool = _f(True, "Random horizontal and vertical flips.")
    rotations: bool = _f(True, "Random rotations by multiples of 90 degrees.")
    lr: float = _f(1e-3, "Adam learning rate.")
    weight_decay: float = _f(0.0, "Adam weight decay.")
    regularisation: str = _f("none", "Extra weight penalty: none, l1 or l2.")
    alpha: float = _f(0.0, "Strength of the l1/l2 penalty.")
    loss: str = _f("ce", "Loss: ce, dice or ce+dice.")
    schedule: str = _f(
        "plateau", "Learning-rate schedule: plateau (on validation loss), cosine, constant."
    )
    plateau_factor: float = _f(0.5, "ReduceLROnPlateau factor.")
    plateau_patience: int = _f(5, "ReduceLROnPlateau patience in validations.")
    warmup_epochs: int = _f(0, "Linear warm-up epochs for the cosine schedule.")
    min_lr: float = _f(1e-5, "Final learning rate of the cosine schedule.")
    val_every: int = _f(1, "Validate on whole images every N epochs.")
    patience: int = _f(0, "Early stopping: validations without Dice gain (0 = off).")
    max_minutes: float = _f(0.0, "Stop after this much training time (0 = no limit).")
    seed: int = _f(0, "Random seed for weights, crops and dropout.")
    device: str = _f("auto", "cpu, cuda, cuda:N or auto.")
    threads: int = _f(
        0,
        "CPU threads for torch (0: the cores this process may use minus the current load "
        "average, rounded, at least 1; under torchrun shared among the local processes). The "
        "number used is printed, e.g. 'threads: 1 (2 cores, load 1.9)'.",
    )
    split_fractions: tuple[float, float, float] = _f(
        (0.6, 0.2, 0.2), "Train/val/test fractions when the dataset ships no split."
    )

    def __post_init__(self) -> None:
        from vessel_lens.models.registry import list_models  # torch: only when a config is built
        from vessel_lens.training.losses import LOSSES, REGULARISATIONS

        for item in fields(self):
            setattr(self, item.name, _typed(item.name, item.type, getattr(self, item.name)))
        if isinstance(self.split_fractions, list):
            self.split_fractions = tuple(self.split_fractions)
        if self.norm in ("none", "None", ""):
            self.norm = None
        checks = [
            (self.model in list_models(), f"model {self.model!r}: choose one of {list_models()}"),
            (self.width >= 1, f"width {self.width}: must be at least 1"),
            (self.norm in ("batch", None), f"norm {self.norm!r}: use batch or none"),
            (0 <= self.dropout < 1, f"dropout {self.dropout}: must be in [0, 1)"),
            (
                self.num_classes in (1, 2),
                f"num_classes {self.num_classes}: use 2 (softmax) or 1 (sigmoid)",
            ),
            (self.epochs >= 1, f"epochs {self.epochs}: must be at least 1"),
            (self.crops_per_image >= 1, "crops_per_image must be at least 1"),
            (self.batch_size >= 1, f"batch_size {self.batch_size}: must be at least 1"),
            (self.crop_size >= 16, f"crop_size {self.crop_size}: must be at least 16"),
            (self.lr > 0, f"lr {self.lr}: must be positive"),
            (self.min_lr >= 0, f"min_lr {self.min_lr}: must be non-negative"),
            (
                self.schedule != "cosine" or self.min_lr <= self.lr,
                f"min_lr {self.min_lr}: must not exceed lr {self.lr}",
            ),
            (self.warmup_epochs >= 0, "warmup_epochs must be non-negative"),
            (self.plateau_patience >= 0, "plateau_patience must be non-negative"),
            (0 <= self.seed < 2**32, f"seed {self.seed}: must be in [0, 2**32)"),
            (self.weight_decay >= 0, "weight_decay must be non-negative"),
            (
                self.regularisation in REGULARISATIONS,
                f"regularisation {self.regularisation!r}: choose one of {', '.join(REGULARISATIONS)}",
            ),
            (self.alpha >= 0, "alpha must be non-negative"),
            (self.loss in LOSSES, f"loss {self.loss!r}: choose one of {', '.join(LOSSES)}"),
            (
                self.schedule in SCHEDULES,
                f"schedule {self.schedule!r}: choose one of {', '.join(SCHEDULES)}",
            ),
            (0 < self.plateau_factor < 1, "plateau_factor must be in (0, 1)"),
            (self.val_every >= 1, "val_every must be at least 1"),
            (self.patience >= 0, "patience must be non-negative"),
            (self.max_minutes >= 0, "max_minutes must be non-negative"),
            (self.threads >= 0, f"threads {self.threads}: must be 0 (chosen) or positive"),
            (len(self.split_fractions) == 3, "split_fractions needs three values"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def model_kwargs(self) -> dict[str, Any]:
        kwargs = {"width": self.width, "norm": self.norm, "dropout": self.dropout}
        if self.num_classes != 2:  # the models' default: runs from before the option resume
            kwargs["num_classes"] = self.num_classes
        return kwargs

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["split_fractions"] = list(self.split_fractions)
        return values

    @classmethod
    def help(cls, name: str) -> str:
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}[name]

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}")
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigError(f"{source}: {exc}") from None


def _typed(name: str, annotation: object, value: Any) -> Any:
    """``value`` as the field's type (YAML reads ``1e-6`` as text; ``2.5`` is no batch size)."""
    kind = str(annotation).removesuffix(" | None")
    if value is None or kind not in ("int", "float", "bool"):
        return value
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{name} {value!r}: expected true or false")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{name} {value!r}: expected a number") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} {value!r}: expected a number")
    if kind == "float":
        return float(value)
    if not float(value).is_integer():
        raise ConfigError(f"{name} {value!r}: expected a whole number")
    return int(value)


def read_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict of :class:`TrainConfig` fields.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from vessel_lens.training import TrainConfig, read_config
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     _ = (Path(folder) / "cfg.yaml").write_text("width: 8\\nepochs: 3\\n")
        ...     fields = read_config(Path(folder) / "cfg.yaml")
        >>> fields, TrainConfig(**fields).epochs
        ({'width': 8, 'epochs': 3}, 3)
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of option names to values")
    values.pop("resolved_by", None)
    TrainConfig.from_dict(values, str(path))
    return values


def write_config(config: TrainConfig, path: Path, extra: dict[str, Any] | None = None) -> None:
    values = config.to_dict()
    if extra:
        values["resolved_by"] = extra
    path.write_text(yaml.safe_dump(values, sort_keys=False))
