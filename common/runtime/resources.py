"""What a stage cost: its wall time since the process started and its peak memory (resident set on the CPU, the
allocator's peak on CUDA), recorded in every metrics.json and results.json so a user sees where a run spends and
whether a stage fits a 24 GB card."""
from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys
import time
from typing import Any

import torch

IMPORTED = time.monotonic()
log = logging.getLogger(__name__)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> None:
    """Let glibc keep freed memory for the next allocation instead of handing it back to the kernel.

    By default glibc serves every block over 32 MB by its own ``mmap`` and unmaps it when it is freed, so the next
    block of that size faults in and zeroes fresh pages. A KL pass allocates its (B, T, vocabulary) logits and their
    log-softmax, 200 MB each at the cpu preset, seventeen times per batch: that was 25% of the KL stages' CPU time,
    all of it in the kernel (25.6 → 20.8 s per batch, the same bits). Serving large blocks from the heap and never
    trimming it makes a freed block the next one. The resident set then stays at its peak, which the stages record
    anyway. Set once per process, before the large allocations; forked stages inherit it. Not glibc: nothing to do.
    """
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        done = libc.mallopt(_M_MMAP_MAX, 0) and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    except (OSError, AttributeError):
        done = False
    if not done:
        log.debug("mallopt unavailable: freed memory goes back to the kernel")


def process_seconds() -> float:
    """Seconds since this process started (its imports included), from /proc on Linux; elsewhere since this module
    was imported."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            start_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
            return float(uptime.read().split()[0]) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.monotonic() - IMPORTED


def peak_rss_bytes() -> int | None:
    """The process's peak resident set; None where the ``resource`` module is missing (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    # ru_maxrss is in kilobytes on Linux, in bytes on macOS.
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024))


def usage() -> dict[str, Any]:
    record: dict[str, Any] = {"wall_seconds": process_seconds(), "peak_rss_bytes": peak_rss_bytes()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        record["cuda_max_memory_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
    return record
