"""Process groups under ``torchrun``: one helper for training and extraction alike.

Outside ``torchrun`` (no ``WORLD_SIZE`` in the environment) everything runs as rank 0 of 1
and no process group is created.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size``; ``device`` to compute on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share of ``items`` (round-robin, so shares differ by at most one)."""
        return list(items[self.rank :: self.world_size])

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def agree(self, error: Exception | None) -> None:
        """Raise rank 0's user error (or None) on every rank, so none waits at a barrier."""
        from vessel_lens import errors

        if not self.distributed:
            if error is not None:
                raise error
            return
        message = [None if error is None else (type(error).__name__, str(error))]
        dist.broadcast_object_list(message, src=0)
        if message[0] is not None:
            kind = getattr(errors, message[0][0], None)
            if not (isinstance(kind, type) and issubclass(kind, errors.VesselLensError)):
                kind = errors.VesselLensError
            raise kind(message[0][1])

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank (the same answer on every rank)."""
        if not self.distributed:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.device)  # nccl: on the GPU
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item() > 0)


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: torch.device) -> DistContext:
    """Join the process group started by ``torchrun`` (gloo on CPU, nccl on CUDA).

    On CUDA each process uses ``cuda:LOCAL_RANK``. Without ``torchrun`` this returns a
    single-process context on ``device``.
    """
    if not launched_by_torchrun():
        return DistContext(device=device)
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank, world_size, local_rank, device)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
