"""The app's configuration: one dataclass with defaults and validation (``vessel-lens app``)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from vessel_lens.errors import ConfigError
from vessel_lens.models.source import check_model_options

RANDOM_INIT = "random"
"""``--compare random``: a randomly initialised model of the first checkpoint's architecture."""


@dataclass
class AppConfig:
    """Everything ``create_app`` needs. Paths come from the command line, never the browser."""

    checkpoints: list[str] = field(default_factory=list)
    """Checkpoint files, run folders, shipped names, TorchScript or torch.export files; the
    first is shown by default (empty: vessmap-w16, unless ``model`` is given)."""
    model: str | None = None
    """One more model, from outside vessel-lens: package.module:factory or
    path/to/file.py:factory (offered after the checkpoints)."""
    model_args: dict | None = None
    """Keyword arguments of the ``model`` factory."""
    weights: str | None = None
    """State dict file loaded into the ``model`` factory's model."""
    compare: str | None = None
    """Checkpoint shown side by side by default, or 'random' for a random init."""
    data: str | None = None
    """Dataset folder or CSV manifest (default: synthetic vessels)."""
    erf: Path | None = None
    """Folder of precomputed stores (vessel-lens jacobian / erf) to use when they match."""
    host: str = "127.0.0.1"
    """Address to bind; the default accepts local connections only."""
    port: int = 8050
    """TCP port (0 picks a free one)."""
    debug: bool = False
    """Dash debug mode (dev tools, tracebacks in the page). Local use only."""
    device: str = "auto"
    """cpu, cuda, cuda:N or auto."""
    threads: int = 1
    """Torch threads per request (1 keeps hovers fast on a shared CPU)."""
    workers: int = 2
    """Computations (backward passes, engine builds, attributions) run at the same time;
    further requests wait. Bounds CPU and transient memory under many users."""
    queue: int = 8
    """Computations that may wait for a worker; more are refused at once with a message."""
    queue_timeout: float = 60.0
    """Seconds a computation may wait for a worker before it gives up with a message."""
    max_side: int = 512
    """Largest side of the analysed view; larger images start as a crop."""
    upload_mb: float = 20.0
    """Largest accepted upload in MiB."""
    engines: int = 6
    """Prepared (checkpoint, view) pairs kept in memory (each holds one recorded forward
    pass: about 115 MB for a 256x256 image and the width-16 model)."""
    cache_mb: int = 1024
    """Memory budget in MiB for everything the app holds (prepared views, gradient and
    attribution maps, uploads, receptive fields, loaded stores) and computes (reserved while
    it runs), on top of its base (code, models, dataset)."""
    uploads: int = 8
    """Uploaded images kept in memory (within a quarter of the memory budget, at most 256 MiB)."""
    seed: int = 0
    """Seed of the 'random init' comparison model."""
    allow_hosts: list[str] = field(default_factory=list)
    """Host names the app answers besides the bound address, localhost and 127.0.0.1 (a
    Host header naming anything else gets 403: DNS rebinding); '*' answers any."""

    def __post_init__(self) -> None:
        check_model_options(None, self.model, self.model_args, self.weights, required=False)
        self.checkpoints = list(self.checkpoints or ([] if self.model else ["vessmap-w16"]))
        if any(not str(c).strip() for c in self.checkpoints):
            raise ConfigError("--checkpoint: empty value")
        if self.compare == RANDOM_INIT and RANDOM_INIT in self.checkpoints:
            raise ConfigError("'random' names the random-init comparison, not a checkpoint")
        if self.erf is not None:
            self.erf = Path(self.erf)
            if not self.erf.is_dir():
                raise ConfigError(f"--erf {self.erf}: not a folder")
        if not 0 <= int(self.port) <= 65535:
            raise ConfigError(f"--port {self.port}: must be between 0 and 65535")
        if not self.host.strip():
            raise ConfigError("--host: empty value")
        for name, low in (
            ("threads", 1),
            ("workers", 1),
            ("engines", 1),
            ("cache_mb", 64),
            ("uploads", 1),
            ("queue", 1),
        ):
            if int(getattr(self, name)) < low:
                raise ConfigError(
                    f"--{name.replace('_', '-')} {getattr(self, name)}: at least {low}"
                )
        if not 16 <= self.max_side <= 4096:
            raise ConfigError(f"--max-side {self.max_side}: must be between 16 and 4096")
        if not 0 < self.upload_mb <= 256:
            raise ConfigError(f"--upload-mb {self.upload_mb}: must be in (0, 256]")
        if not 0 < self.queue_timeout <= 3600:
            raise ConfigError(f"--queue-timeout {self.queue_timeout}: must be in (0, 3600] s")
        self.allow_hosts = [str(h).strip().lower() for h in self.allow_hosts or []]
        if any(not h or "/" in h or " " in h for h in self.allow_hosts):
            raise ConfigError("--allow-host: give a host name such as lab-pc.local, or '*'")

    @property
    def upload_bytes(self) -> int:
        return int(self.upload_mb * 2**20)

    @property
    def allowed_hosts(self) -> set[str]:
        """Host names (without port) the app answers; contains '*' when any is allowed."""
        return {"localhost", "127.0.0.1", "::1", self.host.strip("[]").lower(), *self.allow_hosts}

    @property
    def is_local(self) -> bool:
        """Whether the bound address accepts connections from this machine only."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False
