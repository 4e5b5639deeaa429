"""``vessel-lens app``: the interactive app in the browser (needs the ``[app]`` extra)."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Annotated

import typer

from vessel_lens.cli._common import ModelArgsOption, WeightsOption
from vessel_lens.errors import ConfigError


def app(
    checkpoint: Annotated[
        list[str] | None,
        typer.Option(
            help="Checkpoint file, run folder, shipped name, TorchScript or torch.export file; "
            "repeat to offer several (the first is shown). Default: vessmap-w16 (none when "
            "--model is given)."
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="One more model, from outside vessel-lens: package.module:factory or "
            "path/to/file.py:factory, a callable returning a torch.nn.Module; offered after "
            "the checkpoints."
        ),
    ] = None,
    model_args: ModelArgsOption = None,
    weights: WeightsOption = None,
    compare: Annotated[
        str | None,
        typer.Option(
            help="Checkpoint shown side by side from the start, or 'random' for a random "
            "initialisation of the first checkpoint's architecture."
        ),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(help="Dataset folder or CSV manifest (default: synthetic vessels)."),
    ] = None,
    erf: Annotated[
        Path | None,
        typer.Option(
            help="Folder of precomputed results for matching image, crop and checkpoint: "
            "Jacobian stores of vessel-lens jacobian (stored rows, global max, count map) "
            "and map files of vessel-lens erf (count, fulfillment, mass radius maps)."
        ),
    ] = None,
    host: Annotated[
        str, typer.Option(help="Address to bind (default: this machine only).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8050,
    debug: Annotated[
        bool, typer.Option(help="Dash debug mode: dev tools and tracebacks in the page.")
    ] = False,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = "auto",
    threads: Annotated[
        int,
        typer.Option(
            help="Torch threads each computation (a request's backward pass, image "
            "preparation, attribution) uses; up to --workers of them run at once. 1 keeps "
            "hovers fast on a busy CPU. The number is printed with the cores and the load."
        ),
    ] = 1,
    workers: Annotated[
        int,
        typer.Option(help="Computations run at the same time; more requests wait their turn."),
    ] = 2,
    queue: Annotated[
        int,
        typer.Option(
            help="Computations that may wait for a worker; more are refused at once with a "
            "message in the page."
        ),
    ] = 8,
    queue_timeout: Annotated[
        float,
        typer.Option(help="Seconds a computation may wait for a worker before it gives up."),
    ] = 60.0,
    max_side: Annotated[
        int, typer.Option(help="Largest analysed side; larger images open as a centred crop.")
    ] = 512,
    upload_mb: Annotated[float, typer.Option(help="Largest accepted upload in MiB.")] = 20.0,
    cache_mb: Annotated[
        int,
        typer.Option(
            help="Memory budget in MiB for everything the app holds and computes (prepared "
            "views, maps, uploads, running computations) beyond its base; least recently "
            "used results are dropped to make room."
        ),
    ] = 1024,
    allow_host: Annotated[
        list[str] | None,
        typer.Option(
            help="Host name to answer besides the bound address, localhost and 127.0.0.1 "
            "(others get 403); repeat for several, '*' for any."
        ),
    ] = None,
) -> int:
    """Explore any pixel's gradient live: hover a pixel to see what the network looked at."""
    if importlib.util.find_spec("dash") is None:
        raise ConfigError("the app needs Dash: pip install 'vessel-lens[app]'")
    import torch

    from vessel_lens.app import AppConfig, Server, create_app
    from vessel_lens.app.server import limit_malloc_arenas, map_large_allocations
    from vessel_lens.models.source import parse_model_args

    config = AppConfig(
        checkpoints=list(checkpoint or []),
        model=model,
        model_args=parse_model_args(model_args),
        weights=weights,
        compare=compare,
        data=data,
        erf=erf,
        host=host,
        port=port,
        debug=debug,
        device=device,
        threads=threads,
        workers=workers,
        queue=queue,
        queue_timeout=queue_timeout,
        max_side=max_side,
        upload_mb=upload_mb,
        cache_mb=cache_mb,
        allow_hosts=list(allow_host or []),
    )
    from vessel_lens.threads import choose_threads

    # for the server's whole life: set once, before any request thread starts
    torch.set_num_threads(config.threads)
    threads_line = choose_threads(config.threads).describe(" per request")
    limit_malloc_arenas(2)  # this process is the server: keep freed memory in few arenas
    map_large_allocations()  # and return large freed blocks at once
    if not config.debug:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per hover
    if not config.is_local:
        typer.echo(
            f"warning: binding {config.host} lets other machines use this app "
            "(and your CPU); there is no authentication",
            err=True,
        )
        if not config.allow_hosts:
            typer.echo(
                f"note: requests that name this machine other than {config.host}, localhost "
                "or 127.0.0.1 get 403; add --allow-host NAME for the name others use",
                err=True,
            )
    dash_app = create_app(config)
    if config.debug:
        typer.echo("warning: Dash debug mode is on; use it on your own machine only", err=True)
        typer.echo(threads_line, err=True)
        dash_app.run(host=config.host, port=config.port, debug=True, use_reloader=False)
        return 0
    try:
        server = Server(dash_app, config.host, config.port)
    except OSError as exc:
        raise ConfigError(
            f"--host {config.host} --port {config.port}: cannot listen there "
            f"({exc.strerror or exc})"
        ) from None
    typer.echo(threads_line, err=True)  # once it listens: an error stays the only line
    typer.echo(f"vessel-lens app on {server.url} (Ctrl-C to stop)")
    try:
        server.serve_forever()
    finally:
        dash_app.vessel_lens_state.shutdown(wait=5.0)
    return 0


def register(typer_app: typer.Typer) -> None:
    typer_app.command("app")(app)
