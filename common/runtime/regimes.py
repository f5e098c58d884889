"""Per-device choices (METHOD §9): which decode path and which numerical regime run by default."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import get_args

import torch

from common.config.modes import Decode, Precision
from common.errors import UserError
from common.runtime.fp16_emulation import fp16_products

# What ``auto`` means on (CUDA, the CPU); the allowed values are the Literals of common.config.modes.
AUTO = {
    # Gather the K active rows on the CPU; a dense tensor-core matmul on CUDA is faster at K = 1,024 of 50,000.
    "decode": ("dense", "sparse"),
    # bf16 matmuls over fp32 master weights on CUDA; plain fp32 on the CPU, where bf16 autocast did not pay.
    "precision": ("bf16", "fp32"),
}
DECODE_MODES, PRECISIONS = get_args(Decode), get_args(Precision)


def resolve_device(name: str | None) -> torch.device:
    """``None``/``auto`` picks CUDA when present, else the CPU; an unavailable CUDA request is a user error."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} requested but CUDA is not available on this machine")
    return device


def _resolve(choice: str, value: str, device: torch.device) -> str:
    on_cuda, on_cpu = AUTO[choice]
    if value == "auto":
        return on_cuda if device.type == "cuda" else on_cpu
    return value


def resolve_decode(mode: str, device: torch.device) -> str:
    return _resolve("decode", mode, device)


def resolve_precision(precision: str, device: torch.device) -> str:
    return _resolve("precision", precision, device)


def param_dtype(precision: str) -> torch.dtype:
    """Master-weight dtype: only the original's regime keeps parameters (and so Adam state) in fp16."""
    return torch.float16 if precision == "faithful-fp16" else torch.float32


@contextlib.contextmanager
def autocast(precision: str, device: torch.device) -> Iterator[None]:
    """bf16 autocast for ``bf16``; for ``faithful-fp16`` (weights already fp16) the CPU's emulation of fp16 products;
    nothing for ``fp32``."""
    if precision == "bf16":
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        with fp16_products(precision, device):
            yield
