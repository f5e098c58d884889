"""Per-device choices (METHOD §9): which decode path and which numerical regime run by default."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from common.errors import UserError

DECODE_MODES = ("auto", "dense", "sparse")
PRECISIONS = ("auto", "fp32", "bf16", "faithful-fp16")


def resolve_device(name: str | None) -> torch.device:
    """``None``/``auto`` picks CUDA when present, else the CPU; an unavailable CUDA request is a user error."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} requested but CUDA is not available on this machine")
    return device


def resolve_decode(mode: str, device: torch.device) -> str:
    """``auto``: gather the K active rows on the CPU, dense tensor-core matmul on CUDA (faster at K=1,024 of 50,000)."""
    if mode not in DECODE_MODES:
        raise UserError(f"--decode must be one of {', '.join(DECODE_MODES)}, got {mode!r}")
    if mode == "auto":
        return "dense" if device.type == "cuda" else "sparse"
    return mode


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 matmuls over fp32 master weights on CUDA, plain fp32 on the CPU (bf16 autocast did not pay there)."""
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def param_dtype(precision: str) -> torch.dtype:
    """Master-weight dtype: only the original's regime keeps parameters (and so Adam state) in fp16."""
    return torch.float16 if precision == "faithful-fp16" else torch.float32


@contextlib.contextmanager
def autocast(precision: str, device: torch.device) -> Iterator[None]:
    """bf16 autocast for ``bf16``; nothing for ``fp32`` and ``faithful-fp16`` (whose weights are already fp16)."""
    if precision == "bf16":
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield
