"""``vessel-lens train``: options are generated from :class:`TrainConfig`'s fields, so the
dataclass's help text is the ``--help`` text and a config file and the command line can set
exactly the same things."""

from __future__ import annotations

import dataclasses
import inspect
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from vessel_lens.training.config import TrainConfig

_OPTION_TYPES = {
    "str | None": str,
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "bool | None": bool,
}


def _config_parameters() -> list[inspect.Parameter]:
    params = []
    for f in dataclasses.fields(TrainConfig):
        kind = str if f.name in ("norm", "split_fractions") else _OPTION_TYPES[str(f.type)]
        option = f"--{f.name.replace('_', '-')}"
        decls = [f"{option}/--no-{f.name.replace('_', '-')}"] if kind is bool else [option]
        default = f.default
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        help_text = f"{f.metadata['help']} [default: {shown}]"
        params.append(
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[
                    kind | None, typer.Option(*decls, help=help_text, show_default=False)
                ],
            )
        )
    return params


def _train(
    out: Path | None,
    resume: Path | None,
    config: Path | None,
    overwrite: bool,
    progress: bool,
    options: dict[str, Any],
) -> int:
    from vessel_lens.cli._common import command_threads, parse_floats
    from vessel_lens.errors import ConfigError
    from vessel_lens.training.config import read_config
    from vessel_lens.training.trainer import resume as resume_run
    from vessel_lens.training.trainer import train as train_run

    given = {k: v for k, v in options.items() if v is not None}
    if "split_fractions" in given:
        given["split_fractions"] = parse_floats(given["split_fractions"], "--split-fractions")
    if resume is not None:
        extra = sorted(set(given) - {"epochs", "threads"})
        if out is not None or config is not None or extra:
            names = ", ".join("--" + k.replace("_", "-") for k in extra) or "--out/--config"
            raise ConfigError(f"--resume continues a run as configured; drop {names}")
        with command_threads(given.get("threads", _recorded_threads(resume))):
            summary = resume_run(
                resume, progress=progress, epochs=given.get("epochs"), threads=given.get("threads")
            )
    else:
        if out is None:
            raise ConfigError("--out is required (the run folder to create)")
        values = read_config(config) if config is not None else {}
        values.update(given)
        run_config = TrainConfig.from_dict(values, "options")
        with command_threads(run_config.threads):
            summary = train_run(run_config, out, overwrite=overwrite, progress=progress)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, process 0 reports
        return 0
    typer.echo(
        f"stopped after {summary.epochs_done} epochs ({summary.stop_reason}, "
        f"{summary.seconds / 60:.1f} min); best validation Dice {summary.best_dice:.4f} at epoch "
        f"{summary.best_epoch}; checkpoints in {summary.out}"
    )
    return 0


def _recorded_threads(run: Path) -> int:
    """The threads a run was configured with (0 when its config.yaml is missing or says
    nothing: resuming then reports the missing file itself)."""
    from vessel_lens.training.config import read_config

    if not (run / "config.yaml").is_file():
        return 0
    threads = read_config(run / "config.yaml").get("threads", 0)
    return threads if isinstance(threads, int) and not isinstance(threads, bool) else 0


def make_train_command():
    def train(**kwargs: Any) -> int:
        """Train a segmentation model; writes checkpoints, metrics.csv and curves.png."""
        fixed = {k: kwargs.pop(k) for k in ("out", "resume", "config", "overwrite", "progress")}
        return _train(options=kwargs, **fixed)

    fixed_params = [
        inspect.Parameter(
            "out",
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[Path | None, typer.Option(help="Run folder to create.")],
        ),
        inspect.Parameter(
            "resume",
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                Path | None, typer.Option(help="Continue the run in this folder from its last.pt.")
            ],
        ),
        inspect.Parameter(
            "config",
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                Path | None,
                typer.Option(help="YAML file of options; command-line options override it."),
            ],
        ),
        inspect.Parameter(
            "overwrite",
            inspect.Parameter.KEYWORD_ONLY,
            default=False,
            annotation=Annotated[bool, typer.Option(help="Replace a run already in --out.")],
        ),
        inspect.Parameter(
            "progress",
            inspect.Parameter.KEYWORD_ONLY,
            default=True,
            annotation=Annotated[bool, typer.Option(help="Show a progress bar.")],
        ),
    ]
    train.__signature__ = inspect.Signature([*fixed_params, *_config_parameters()])
    return train


def register(app: typer.Typer) -> None:
    app.command("train")(make_train_command())
