"""torch.distributed helpers: torchrun set-up, global sums, and sharded per-task sample streams.

Launch with `torchrun --nproc_per_node N -m training.train ...`: torchrun sets RANK / WORLD_SIZE /
LOCAL_RANK; we join the default group (gloo on CPU, nccl on GPU). Without those variables every
helper degrades to the single-process answer, so the same code runs in both cases.
"""
from __future__ import annotations

import sys

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device_type: str) -> DistInfo:
    """Join the process group when started by torchrun (no-op otherwise)."""
    if dist.is_available() and dist.is_initialized():
        return info()
    if not launched_by_torchrun():
        return DistInfo()
    backend = "nccl" if device_type == "cuda" else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    return info()


def info() -> DistInfo:
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        if sys.exc_info()[0] is None:
            dist.barrier()  # gloo aborts a rank torn down while another is still in a collective
        dist.destroy_process_group()


def barrier() -> None:
    if info().distributed:
        dist.barrier()


def global_sum(value: float, device: torch.device) -> float:
    """Sum of a per-rank number over all ranks (the number itself in one process)."""
    if not info().distributed:
        return float(value)
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item())


def global_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean over ranks of a tensor (for logging losses that each rank computed)."""
    if not info().distributed:
        return values
    values = values.detach().clone()
    dist.all_reduce(values)
    return values / dist.get_world_size()


class ShardedStream:
    """An endless, resumable stream of dataset indices for one rank, epoch after epoch.

    Each epoch is torch's DistributedSampler order (a seeded permutation padded to a multiple of
    the world size, rank r taking every world_size-th index from r). So the k-th batch of every rank
    together holds exactly the indices a single process with the global batch would draw at step k
    (when the dataset length is a multiple of the world size; otherwise padding repeats a few).
    The state is two integers, saved with the checkpoint.
    """

    def __init__(self, length: int, dist_info: DistInfo, seed: int):
        if length < 1:
            raise ValueError("cannot stream an empty dataset")
        self.length = length
        self.sampler = DistributedSampler(range(length), num_replicas=dist_info.world_size, rank=dist_info.rank,
                                          shuffle=True, seed=seed, drop_last=False)
        self.epoch = 0
        self.position = 0
        self._order: list[int] | None = None

    def _current(self) -> list[int]:
        if self._order is None:
            self.sampler.set_epoch(self.epoch)
            self._order = list(self.sampler)
        return self._order

    def take(self, count: int) -> list[int]:
        """The next `count` indices of this rank (crossing into the next epoch when needed)."""
        out: list[int] = []
        while len(out) < count:
            order = self._current()
            if self.position >= len(order):
                self.epoch, self.position, self._order = self.epoch + 1, 0, None
                continue
            grab = order[self.position:self.position + count - len(out)]
            out.extend(grab)
            self.position += len(grab)
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position, self._order = int(state["epoch"]), int(state["position"]), None
