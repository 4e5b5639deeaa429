"""``vessel-lens models``: list registered architectures and shipped checkpoints."""

from __future__ import annotations

import typer


def models() -> int:
    """List the registered architectures and shipped checkpoints."""
    from vessel_lens.models import create_model, list_models
    from vessel_lens.models.checkpoint import SHIPPED

    for name in list_models():
        params = sum(p.numel() for p in create_model(name, width=16).parameters())
        typer.echo(f"{name:<20} {params / 1e6:6.2f} M parameters at width 16")
    for name in SHIPPED:
        typer.echo(f"shipped checkpoint: {name}")
    return 0


def register(app: typer.Typer) -> None:
    app.command("models")(models)
