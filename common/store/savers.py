"""Each file format the project writes, saved through the one atomic write (``common.atomic``)."""
from __future__ import annotations

import json
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor

from common.atomic import atomic_write


def atomic_save_safetensors(tensors: dict[str, Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    contiguous = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    atomic_write(path, lambda tmp: save_file(contiguous, tmp, metadata=metadata))


def atomic_save_json(obj: Any, path: Path) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(obj, handle, indent=2, sort_keys=False)
            handle.write("\n")

    atomic_write(path, write)


def atomic_torch_save(obj: Any, path: Path) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:  # a Python file, so that a failed write keeps its OSError (common.atomic)
            torch.save(obj, handle)

    atomic_write(path, write)


def atomic_save_npz(columns: Iterable[tuple[str, np.ndarray]], path: Path) -> None:
    """A plain ``.npz`` (``np.load`` reads it) written one array at a time: a generator of columns keeps one in
    memory."""

    def write(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w", allowZip64=True) as archive:
            for name, array in columns:
                with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)

    atomic_write(path, write)


def atomic_save_text(text: str, path: Path) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)

    atomic_write(path, write)
