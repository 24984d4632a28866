"""Data-parallel training under torchrun: one process per device, rank 0 writes."""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist

from training.config import ConfigError

CPU = torch.device("cpu")


@dataclasses.dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    device: torch.device = CPU

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(requested: str, local_rank: int = 0) -> torch.device:
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("device 'cuda' was requested but CUDA is not available")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def setup(requested_device: str) -> Distributed:
    """Join the process group when started by torchrun (WORLD_SIZE > 1)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed(device=pick_device(requested_device))
    rank = int(os.environ["RANK"])
    device = pick_device(requested_device, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank=rank, world_size=world_size, device=device)


def teardown(run: Distributed) -> None:
    if run.enabled and dist.is_initialized():
        dist.destroy_process_group()
