"""common/data/chunks.py: which windows each streamed chunk holds (an even split, worked by hand, including the
original's 5M tokens in 50 chunks), how many training rows each has, and the chunks loaded, checked and converted
when training reaches them. The activation stream is a stand-in whose rows say which window they came from."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from common.config.stages import JointConfig, NFMConfig
from common.data.chunks import ChunkPlan, StreamedChunks, check_streaming_settings
from common.errors import UserError

WIDTH = 2


@dataclass
class Text:
    window: int
    total_windows: int

    def available(self, start: int, stop: int) -> list[int]:
        return list(range(start, min(stop, self.total_windows)))


@dataclass
class Stream:
    """Each training window i gives ``window - first`` rows filled with i; window i % 10 == 9 is held out."""

    text: Text
    exclude_first_position: bool = False
    asked: list[tuple[int, int]] = field(default_factory=list)

    def train_rows(self, start: int, stop: int) -> torch.Tensor | None:
        self.asked.append((start, stop))
        kept = [i for i in self.text.available(start, stop) if i % 10 != 9]
        if not kept:
            return None
        per_window = self.text.window - int(self.exclude_first_position)
        return torch.cat([torch.full((per_window, WIDTH), float(i)) for i in kept])


def plan(total_windows: int = 100, window: int = 8, num_tokens: int = 80, chunk_tokens: int = 24,
         exclude_first: bool = False) -> ChunkPlan:
    return ChunkPlan(Stream(Text(window, total_windows), exclude_first), num_tokens, chunk_tokens)


def test_ten_windows_in_chunks_of_three_make_three_even_chunks():
    chunks = plan()
    assert (chunks.num_windows, chunks.chunk_windows, chunks.num_chunks) == (10, 3, 3)
    assert [chunks.windows(c) for c in range(3)] == [(0, 3), (3, 6), (6, 10)]  # the last one takes the remainder
    # window 9 is held out: the last chunk trains on 6, 7, 8
    assert [chunks.rows_in_chunk(c) for c in range(3)] == [24, 24, 24]
    assert plan(exclude_first=True).rows_in_chunk(0) == 3 * 7


def test_the_originals_five_million_tokens_make_fifty_chunks_not_fifty_one():
    chunks = plan(total_windows=10**6, window=128, num_tokens=5_000_000, chunk_tokens=100_000)
    assert (chunks.num_windows, chunks.chunk_windows, chunks.num_chunks) == (39_062, 781, 50)
    sizes = [stop - start for start, stop in map(chunks.windows, range(50))]
    assert sum(sizes) == 39_062 and set(sizes) <= {781, 782}  # 39,062 = 50 x 781 + 12: twelve chunks take one more
    assert chunks.windows(0)[0] == 0 and chunks.windows(49)[1] == 39_062
    assert all(chunks.windows(c)[1] == chunks.windows(c + 1)[0] for c in range(49))


def test_a_shorter_text_is_used_whole_and_a_tiny_chunk_is_one_window():
    assert plan(total_windows=5).num_windows == 5
    tiny = plan(chunk_tokens=3)
    assert (tiny.chunk_windows, tiny.num_chunks) == (1, 10)
    assert plan(total_windows=0).num_chunks == 1


def test_train_rows_are_the_chunks_windows_and_none_past_the_end():
    chunks = plan()
    rows = chunks.train_rows(2)
    assert chunks.stream.asked == [(6, 10)]
    assert rows.shape == (24, WIDTH) and sorted(set(rows[:, 0].tolist())) == [6.0, 7.0, 8.0]
    assert chunks.train_rows(3) is None and chunks.stream.asked == [(6, 10)]


def test_streamed_chunks_are_loaded_checked_and_converted():
    chunks = plan()
    converted = []
    streamed = StreamedChunks(chunks, lambda c, rows: converted.append(c) or (rows * 10,),
                              prefetched={1: torch.full((24, WIDTH), -1.0)})
    (first,) = streamed.load(0)
    assert sorted(set(first[:, 0].tolist())) == [0.0, 10.0, 20.0]
    (second,) = streamed.load(1)  # the prefetched rows, not the stream's
    assert torch.equal(second, torch.full((24, WIDTH), -10.0)) and chunks.stream.asked == [(0, 3)]
    assert 1 not in streamed.prefetched and converted == [0, 1]
    assert streamed.load(3) is None
    assert streamed.seconds > 0


def test_rows_that_disagree_with_the_plan_stop_training():
    streamed = StreamedChunks(plan(), lambda c, rows: (rows,), prefetched={0: torch.zeros(23, WIDTH)})
    with pytest.raises(RuntimeError, match="chunk 0: 23 rows harvested, 24 planned"):
        streamed.load(0)


def test_the_batches_walk_the_chunks_in_order_and_the_record_counts_their_steps():
    streamed = StreamedChunks(plan(), lambda c, rows: (rows,))
    cfg = NFMConfig(epochs_per_chunk=2, batch_size=8, seed=0)
    batches = streamed.batches(cfg, torch.device("cpu"))
    assert batches.total_steps == 3 * 2 * (24 // 8)  # chunks x epochs x batches per epoch
    assert streamed.record(batches) == {"windows": 10, "chunks": 3, "chunk_windows": 3, "steps_from_chunks": 18}
    for step, windows in ((0, {0, 1, 2}), (5, {0, 1, 2}), (6, {3, 4, 5}), (17, {6, 7, 8})):
        (rows,) = batches.batch(step)
        assert rows.shape == (8, WIDTH) and set(rows[:, 0].tolist()) <= windows, step
    assert batches.batch(18) is None


@pytest.mark.parametrize("settings, named", [(dict(chunk_tokens=100, window=128), "--chunk_tokens 100"),
                                             (dict(nfm_embed_dim=0), "--nfm_embed_dim"),
                                             (dict(epochs_per_chunk=0), "--epochs_per_chunk"),
                                             (dict(batch_size=0), "--batch_size")])
def test_streaming_settings_that_cannot_work_are_refused(settings: dict, named: str):
    for cls in (NFMConfig, JointConfig):
        with pytest.raises(UserError, match=named):
            check_streaming_settings(cls(**settings))


def test_the_papers_streaming_settings_pass():
    check_streaming_settings(NFMConfig())
    check_streaming_settings(JointConfig(chunk_tokens=128, window=128))
