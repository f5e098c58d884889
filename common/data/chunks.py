"""Streamed training (stages 2 and 5): which windows each chunk holds, from the window rule alone (so the step plan
needs no LM run), and the chunks' rows loaded when training reaches them."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch
from torch import Tensor

from common.config.stages import JointConfig, NFMConfig
from common.data.activations import ActivationStream
from common.data.batches import ChunkedBatches
from common.data.text import is_validation_window
from common.errors import UserError

log = logging.getLogger(__name__)


def check_streaming_settings(cfg: NFMConfig | JointConfig) -> None:
    """The settings stages 2 and 5 share: chunks of whole windows, a positive NFM width, epochs and batch."""
    if cfg.chunk_tokens < cfg.window:
        raise UserError(f"--chunk_tokens {cfg.chunk_tokens} is less than one --window of {cfg.window} tokens")
    if cfg.nfm_embed_dim < 1 or cfg.epochs_per_chunk < 1 or cfg.batch_size < 1:
        raise UserError("--nfm_embed_dim, --epochs_per_chunk and --batch_size must be positive")


class ChunkPlan:
    """The first ``num_tokens // window`` windows of the text, split evenly into ``round(windows / chunk windows)``
    chunks.

    An even split rather than fixed-size chunks plus a remainder: the original's 5M tokens made exactly 50 chunks of
    100k, while 39,062 windows of 128 tokens cut by 781 would leave a 51st chunk of 12 windows, trained on for as
    many epochs as a whole one. Only a chunk's training windows are trained on; its held-out windows belong to the
    validation set (METHOD §0).
    """

    def __init__(self, stream: ActivationStream, num_tokens: int, chunk_tokens: int) -> None:
        window = stream.text.window
        self.stream = stream
        # Tokenizing is cheap next to the LM, and knowing where the text ends keeps the schedule's step count exact.
        self.num_windows = len(stream.text.available(0, max(1, num_tokens // window)))
        self.chunk_windows = max(1, chunk_tokens // window)  # as asked; the even split differs by at most one
        self.num_chunks = max(1, round(self.num_windows / self.chunk_windows))
        self.rows_per_window = window - int(stream.exclude_first_position)

    def windows(self, chunk: int) -> tuple[int, int]:
        """[start, stop) window indices of the chunk."""
        return chunk * self.num_windows // self.num_chunks, (chunk + 1) * self.num_windows // self.num_chunks

    def rows_in_chunk(self, chunk: int) -> int:
        start, stop = self.windows(chunk)
        return sum(not is_validation_window(i) for i in range(start, stop)) * self.rows_per_window

    def train_rows(self, chunk: int) -> Tensor | None:
        """Raw LM rows (n, d) of the chunk's training windows; ``None`` past the last chunk."""
        if chunk >= self.num_chunks:
            return None
        return self.stream.train_rows(*self.windows(chunk))


class StreamedChunks:
    """Each chunk's training rows for ``ChunkedBatches``: harvested when training reaches the chunk (or taken from
    ``prefetched``), checked against the plan, turned into the stage's tensors by ``convert(chunk, rows)``, timed."""

    def __init__(self, plan: ChunkPlan, convert: Callable[[int, Tensor], tuple[Tensor, ...]],
                 prefetched: dict[int, Tensor] | None = None) -> None:
        self.plan, self.convert, self.prefetched = plan, convert, prefetched or {}
        self.seconds = 0.0

    def load(self, chunk: int) -> tuple[Tensor, ...] | None:
        started = time.perf_counter()
        rows = self.prefetched.pop(chunk, None)
        rows = self.plan.train_rows(chunk) if rows is None else rows
        if rows is None:
            return None
        if rows.shape[0] != self.plan.rows_in_chunk(chunk):
            raise RuntimeError(f"chunk {chunk}: {rows.shape[0]} rows harvested, "
                               f"{self.plan.rows_in_chunk(chunk)} planned")
        tensors = self.convert(chunk, rows)
        self.seconds += time.perf_counter() - started
        log.info("chunk %d/%d: %d training rows", chunk + 1, self.plan.num_chunks, rows.shape[0])
        return tensors

    def batches(self, cfg: NFMConfig | JointConfig, device: torch.device) -> ChunkedBatches:
        return ChunkedBatches(self.load, self.plan.rows_in_chunk, self.plan.num_chunks, cfg.epochs_per_chunk,
                              cfg.batch_size, cfg.seed, device)

    def record(self, batches: ChunkedBatches) -> dict[str, int]:
        plan = self.plan
        return {"windows": plan.num_windows, "chunks": plan.num_chunks, "chunk_windows": plan.chunk_windows,
                "steps_from_chunks": batches.total_steps}
