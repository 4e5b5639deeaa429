"""``vessel-lens demo``: the main job end to end on the embedded synthetic data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vessel_lens.cli._common import ThreadsOption, command_threads


def demo(
    out: Annotated[Path, typer.Option(help="Folder for the demo's outputs.")] = Path("demo_out"),
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = "auto",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    threads: ThreadsOption = 0,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    overwrite: Annotated[
        bool,
        typer.Option(help="Replace an earlier demo in --out (only a folder holding nothing else)."),
    ] = False,
) -> int:
    """Run the demo on synthetic vessels and print where its outputs are."""
    from vessel_lens.demo import run_demo
    from vessel_lens.devices import resolve_device

    device = str(resolve_device(device))
    with command_threads(threads):
        outputs = run_demo(
            out,
            device=device,
            seed=seed,
            progress=progress,
            overwrite=overwrite,
        )
    for line in outputs.lines:
        typer.echo(line)
    typer.echo(f"demo outputs in {outputs.folder}:")
    for name, path in outputs.files.items():
        typer.echo(f"  {name:<16} {path}")
    return 0


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
