"""What every stage records of its resources, and the allocator setting every stage runs under (METHOD §9)."""
from __future__ import annotations

import ctypes
import platform
import sys

import pytest
import torch

from common.runtime.resources import keep_freed_memory, peak_rss_bytes, usage

GLIBC = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_a_large_block_comes_from_the_heap_not_its_own_mapping() -> None:
    """glibc's own count of bytes in mmap-ed blocks does not grow for a 64 MB tensor: the block is heap memory,
    which a freed block of the same size serves again without new page faults."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _Mallinfo2
    keep_freed_memory()
    mapped = libc.mallinfo2().hblkhd
    block = torch.empty(2**24)  # 64 MB, twice glibc's largest default mmap threshold
    assert libc.mallinfo2().hblkhd == mapped
    assert libc.mallinfo2().uordblks >= block.numel() * 4


def test_usage_reports_this_process_peak() -> None:
    record = usage()
    if sys.platform == "win32":
        assert record["peak_rss_bytes"] is None
        return
    # the peak resident set holds at least what this process has touched: the interpreter and torch (> 50 MB)
    assert 50 * 2**20 < record["peak_rss_bytes"] <= peak_rss_bytes() and record["wall_seconds"] > 0
