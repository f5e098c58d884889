"""A stage's directory on disk (METHOD §0): its file names, its ``config.json``, its resume state, and the checks
that a directory given as an input is a finished stage of the expected kind.

A trained stage's directory holds ``config.json`` (the stage's settings and provenance, with the model's own shape
under ``model``), ``best_model.safetensors``, ``norm_stats.safetensors``, ``metrics.json`` and ``resume.pt``; an
evaluation's holds ``config.json`` or its run record and ``results.json``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from common.errors import UserError
from common.store.fingerprints import file_sha256
from common.store.formats import upgrade_config
from common.store.reads import REWRITE_HINT, load_json, load_tensors_with_metadata
from common.store.savers import atomic_save_json, atomic_save_safetensors, atomic_torch_save

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "best_model.safetensors"
METRICS_FILE = "metrics.json"
RESULTS_FILE = "results.json"
RESUME_FILE = "resume.pt"
# Each feature's firing count on the held-out rows at the stage's trained K (stages 1, 3 and 5; METHOD §13).
FIRING_FILE = "feature_firing.safetensors"


def write_config(folder: Path, config: dict[str, Any]) -> None:
    atomic_save_json(config, Path(folder) / CONFIG_FILE)


def write_resume_state(folder: Path, state: dict[str, Any]) -> None:
    atomic_torch_save(state, Path(folder) / RESUME_FILE)


def load_resume_state(folder: Path) -> dict | None:
    """Resume state written by this project (``weights_only=True``: the safe unpickler, tensors and plain types)."""
    path = Path(folder) / RESUME_FILE
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # zipfile, pickle and torch raise many types for a damaged file; all mean the same
        raise UserError(f"{path} is truncated or corrupt ({type(err).__name__}): this run cannot be resumed; start it "
                        "again with --overwrite") from None


def write_firing_counts(folder: Path, counts: torch.Tensor, held_out_rows: int) -> None:
    """``firing_counts`` (F,) int64: on how many held-out rows each feature's code was above the dead threshold;
    metadata ``held_out_rows``. A feature with count 0 is dead, one with count / rows > 0.1 dense."""
    atomic_save_safetensors({"firing_counts": counts.to(torch.int64)}, Path(folder) / FIRING_FILE,
                            metadata={"held_out_rows": str(int(held_out_rows))})


def read_firing_counts(folder: Path) -> tuple[torch.Tensor, int] | None:
    """The counts and the held-out row count of ``write_firing_counts``, or None where the stage wrote none (a
    directory from before the file existed, an imported SAE)."""
    path = Path(folder) / FIRING_FILE
    if not path.is_file():
        return None
    tensors, metadata = load_tensors_with_metadata(path)
    counts, rows = tensors.get("firing_counts"), metadata.get("held_out_rows", "")
    if counts is None or counts.ndim != 1 or counts.dtype != torch.int64 or not rows.isdigit():
        raise UserError(f"{path} does not hold firing counts (an int64 vector and its held-out rows): {REWRITE_HINT}")
    return counts, int(rows)


def weights_sha256(folder: Path, name: str = WEIGHTS_FILE) -> str:
    """Fingerprint of a stage's weights file (or of an imported SAE's, ``name``): a later stage records it and refuses
    a checkpoint built on another."""
    return file_sha256(Path(folder) / name)


def stage_dir(path: str | Path, flag: str) -> Path:
    """Accept a stage directory or a file inside it (e.g. ``.../best_model.safetensors``)."""
    path = Path(path)
    folder = path.parent if path.suffix else path
    needed = (CONFIG_FILE, WEIGHTS_FILE, METRICS_FILE)
    if not folder.is_dir() or not all((folder / name).is_file() for name in needed):
        raise UserError(f"{flag} {path}: not a finished checkpoint directory (needs {', '.join(needed)})")
    return folder


def read_stage(path: str | Path, flag: str, stages: tuple[str, ...]) -> tuple[Path, dict]:
    """A stage directory and its config (upgraded to this format), refusing a directory written by another stage."""
    folder = stage_dir(path, flag)
    config = upgrade_config(load_json(folder / CONFIG_FILE))
    if config.get("stage") not in stages:
        raise UserError(f"{flag} {path}: holds a '{config.get('stage')}' checkpoint, expected {' or '.join(stages)}")
    return folder, config


def require_match(what: str, mine: dict, theirs: dict, keys: tuple[str, ...]) -> None:
    """Refuse to combine checkpoints that disagree on model, layer or shapes, naming the first difference."""
    for key in keys:
        if mine.get(key) != theirs.get(key):
            raise UserError(f"{what}: {key} is {theirs.get(key)!r} there but {mine.get(key)!r} here")
