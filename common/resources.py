"""What a stage cost: its wall time since the process started and its peak memory (resident set on the CPU, the
allocator's peak on CUDA), recorded in every metrics.json and results.json so a user sees where a run spends and
whether a stage fits a 24 GB card."""
from __future__ import annotations

import os
import resource
import sys
import time
from typing import Any

import torch

IMPORTED = time.monotonic()


def process_seconds() -> float:
    """Seconds since this process started (its imports included), from /proc on Linux; elsewhere since this module
    was imported."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            start_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
            return float(uptime.read().split()[0]) - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.monotonic() - IMPORTED


def usage() -> dict[str, Any]:
    # ru_maxrss is in kilobytes on Linux, in bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    record = {"wall_seconds": process_seconds(), "peak_rss_bytes": int(peak)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        record["cuda_max_memory_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
    return record
