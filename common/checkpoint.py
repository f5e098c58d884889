"""Checkpoint directories: atomic writes, a JSON config beside safetensors weights, and checks on load (SPEC §0).

Every stage's files are read and written only here. A stage directory holds
``config.json``, ``best_model.safetensors``, ``norm_stats.safetensors``, ``metrics.json`` and ``resume.pt``.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from common.errors import UserError
from common.paths import REPO_ROOT

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "best_model.safetensors"
METRICS_FILE = "metrics.json"
RESUME_FILE = "resume.pt"
FORMAT_VERSION = 1


def _atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Write through a temp file in the same folder, then rename: a kill never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_save_safetensors(tensors: dict[str, Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    contiguous = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    _atomic_write(path, lambda tmp: save_file(contiguous, tmp, metadata=metadata))


def atomic_save_json(obj: Any, path: Path) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(obj, handle, indent=2, sort_keys=False)
            handle.write("\n")

    _atomic_write(path, write)


def atomic_torch_save(obj: Any, path: Path) -> None:
    _atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_save_npz(columns: Iterable[tuple[str, np.ndarray]], path: Path) -> None:
    """A plain ``.npz`` (``np.load`` reads it) written one array at a time: a generator of columns keeps one in memory."""

    def write(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w", allowZip64=True) as archive:
            for name, array in columns:
                with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)

    _atomic_write(path, write)


def load_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def stage_dir(path: str | Path, flag: str) -> Path:
    """Accept a stage directory or a file inside it (e.g. ``.../best_model.safetensors``)."""
    path = Path(path)
    folder = path.parent if path.suffix else path
    needed = (CONFIG_FILE, WEIGHTS_FILE, METRICS_FILE)
    if not folder.is_dir() or not all((folder / name).is_file() for name in needed):
        raise UserError(f"{flag} {path}: not a finished checkpoint directory (needs {', '.join(needed)})")
    return folder


def read_stage(path: str | Path, flag: str, stages: tuple[str, ...]) -> tuple[Path, dict]:
    """A stage directory and its config, refusing a directory written by another stage."""
    folder = stage_dir(path, flag)
    config = load_json(folder / CONFIG_FILE)
    if config.get("stage") not in stages:
        raise UserError(f"{flag} {path}: holds a '{config.get('stage')}' checkpoint, expected {' or '.join(stages)}")
    return folder, config


def load_weights(folder: Path, prefix: str = "") -> dict[str, Tensor]:
    """Weights of a stage (safetensors: no unpickling); ``prefix`` selects one part, stripped from the names."""
    tensors = load_file(str(folder / WEIGHTS_FILE))
    if not prefix:
        return tensors
    return {name[len(prefix) :]: t for name, t in tensors.items() if name.startswith(prefix)}


def weights_sha256(folder: Path) -> str:
    """Fingerprint of a stage's weights file: a later stage records it and refuses a checkpoint built on another."""
    digest = hashlib.sha256()
    with open(Path(folder) / WEIGHTS_FILE, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def require_match(what: str, mine: dict, theirs: dict, keys: tuple[str, ...]) -> None:
    """Refuse to combine checkpoints that disagree on model, layer or shapes, naming the first difference."""
    for key in keys:
        if mine.get(key) != theirs.get(key):
            raise UserError(f"{what}: {key} is {theirs.get(key)!r} there but {mine.get(key)!r} here")


def load_resume_state(folder: Path) -> dict | None:
    """Resume state written by this project (``weights_only=True``: the safe unpickler, tensors and plain types)."""
    path = Path(folder) / RESUME_FILE
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)
