"""Batches that are a pure function of the step, so a resumed run sees exactly what an uninterrupted one saw."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from common.errors import UserError
from common.runtime.distributed import ONE, World


def epoch_permutation(num_rows: int, seed: int, epoch: int, chunk: int = 0) -> Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + chunk * 10_007 + epoch)
    return torch.randperm(num_rows, generator=generator)


class RowBatches:
    """Random batches over one fixed set of rows: a fresh permutation every epoch, the last partial batch dropped.

    Under torchrun each rank gets its contiguous ``batch / N`` rows of the same step's batch, so the ranks together
    train on exactly the batches of one process.
    """

    def __init__(self, tensors: tuple[Tensor, ...], batch_size: int, seed: int, device: torch.device,
                 chunk: int = 0, world: World = ONE) -> None:
        self.tensors, self.seed, self.device, self.chunk = tensors, seed, device, chunk
        self.num_rows = tensors[0].shape[0]
        self.batch_size = min(batch_size, self.num_rows)
        self.steps_per_epoch = self.num_rows // self.batch_size
        if self.batch_size % world.size:
            raise UserError(f"a batch of {self.batch_size} rows does not split evenly over {world.size} ranks: pass "
                            f"a --batch_size that is a multiple of {world.size}")
        self.rows_per_rank = self.batch_size // world.size
        self.first_row = world.rank * self.rows_per_rank
        self._perm: tuple[int, Tensor] | None = None

    def batch(self, step: int) -> tuple[Tensor, ...]:
        epoch, position = divmod(step, self.steps_per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, epoch_permutation(self.num_rows, self.seed, epoch, self.chunk))
        start = position * self.batch_size + self.first_row
        rows = self._perm[1][start : start + self.rows_per_rank]
        return tuple(t[rows].to(self.device, non_blocking=True) for t in self.tensors)


class ChunkedBatches:
    """Streamed training (stages 2 and 5): each chunk of text is loaded, trained on for some epochs, then dropped.

    ``load_chunk(c)`` returns the chunk's tensors (rows first) or ``None`` once the text has ended;
    ``steps_in_chunk(c)`` is known in advance from the window rule, so step → (chunk, epoch, batch) needs no data.
    """

    def __init__(
        self,
        load_chunk: Callable[[int], tuple[Tensor, ...] | None],
        rows_in_chunk: Callable[[int], int],
        num_chunks: int,
        epochs: int,
        batch_size: int,
        seed: int,
        device: torch.device,
    ) -> None:
        self.load_chunk, self.epochs, self.batch_size = load_chunk, epochs, batch_size
        self.seed, self.device = seed, device
        self.chunk_steps = [epochs * max(1, rows_in_chunk(c) // batch_size) for c in range(num_chunks)]
        self.total_steps = sum(self.chunk_steps)
        self._current: tuple[int, RowBatches] | None = None

    def locate(self, step: int) -> tuple[int, int]:
        """(chunk, step within the chunk)."""
        for chunk, steps in enumerate(self.chunk_steps):
            if step < steps:
                return chunk, step
            step -= steps
        return len(self.chunk_steps), 0

    def batch(self, step: int) -> tuple[Tensor, ...] | None:
        chunk, local_step = self.locate(step)
        if chunk >= len(self.chunk_steps):
            return None
        if self._current is None or self._current[0] != chunk:
            self._current = None  # drop the previous chunk before loading the next one
            tensors = self.load_chunk(chunk)
            if tensors is None:
                return None
            self._current = (chunk, RowBatches(tensors, self.batch_size, self.seed, self.device, chunk))
        return self._current[1].batch(local_step)
