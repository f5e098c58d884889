"""Data parallelism under torchrun (METHOD §9): the refusal of a stage that does not split (which do, and how, is
``common.registry``'s), each rank's share, and the few collectives they need (gloo on the CPU, NCCL on CUDA). torchrun
starts the processes and sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; a plain ``python script.py`` is a world of
one and never touches ``torch.distributed``."""
from __future__ import annotations

import atexit
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from common.errors import UserError
from common.registry import STAGES

T = TypeVar("T")

def world_size() -> int:
    """The number of processes torchrun started for this run (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def check_stage(stage: str) -> None:
    """Refuse, before anything is loaded or written, a stage started on more than one rank that does not split."""
    size = world_size()
    if size > 1 and STAGES[stage].splits is None:
        splitting = [name for name, entry in STAGES.items() if entry.splits is not None]
        raise UserError(f"stage {stage} runs in one process, not under torchrun with {size} processes: "
                        f"{STAGES[stage].one_process}; the stages that split are {', '.join(splitting)}")


@dataclass(frozen=True)
class World:
    """This process's place among the ranks. ``device`` is where the collectives' tensors live (NCCL needs CUDA)."""

    rank: int = 0
    size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Rank 0: the one writer of every output directory."""
        return self.rank == 0

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's items: item i belongs to rank i mod N, so the shares are disjoint, cover every item, differ in
        size by at most one and depend only on N."""
        return list(items[self.rank :: self.size])

    def barrier(self) -> None:
        """Wait until every rank is here (an all-reduce: the same call on gloo and NCCL)."""
        if self.size > 1:
            dist.all_reduce(torch.zeros(1, device=self.device))

    def average_(self, tensors: Iterable[Tensor]) -> None:
        """Replace each tensor by its mean over the ranks, in place: the gradient of the mean loss over the global
        batch when every rank took an equal share of it."""
        if self.size == 1:
            return
        for tensor in tensors:
            dist.all_reduce(tensor)
            tensor.div_(self.size)

    def broadcast_(self, tensors: Iterable[Tensor]) -> None:
        """Every rank takes rank 0's values, in place."""
        if self.size == 1:
            return
        for tensor in tensors:
            dist.broadcast(tensor, src=0)

    def gather(self, counts: dict[str, int]) -> list[dict[str, Any]]:
        """Every rank's ``counts`` (the same keys on each), in rank order, each with its ``rank``: what each rank did,
        for the records."""
        if self.size == 1:
            return [{"rank": 0, **counts}]
        mine = torch.tensor(list(counts.values()), dtype=torch.int64, device=self.device)
        every = [torch.empty_like(mine) for _ in range(self.size)]
        dist.all_gather(every, mine)
        return [{"rank": r, **dict(zip(counts, values.tolist()))} for r, values in enumerate(every)]


ONE = World()


def split_record(world: World, ranks: list[dict[str, Any]]) -> dict[str, Any]:
    """What a config or metrics file records of the split: ``world_size`` and, where the work split, each rank's
    share (``ranks``), so a distributed run is told apart from N copies of one run."""
    return {"world_size": world.size, **({"ranks": ranks} if ranks else {})}


def join(device: torch.device) -> tuple[World, torch.device]:
    """This process's world, and its device: under torchrun with CUDA, GPU ``LOCAL_RANK`` of its node. The process
    group is started here (once), so a stage that fails earlier never waits for the others."""
    size = world_size()
    if size == 1:
        return ONE, device
    if device.type == "cuda":
        if device.index is not None:
            raise UserError(f"--device {device} under torchrun: each rank takes the GPU of its LOCAL_RANK, pass "
                            "--device cuda")
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(dist.destroy_process_group)
    return World(rank(), size, device), device
