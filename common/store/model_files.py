"""A model's files in a stage directory: its fp32 weights (safetensors) and its shape record under ``model`` in
``config.json``, which is all a model class needs to rebuild itself (``common.models.saves_itself``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from common.errors import UserError
from common.store.formats import FORMAT_VERSION, MODEL_KEY, upgrade_config
from common.store.reads import load_json, load_tensors
from common.store.savers import atomic_save_json, atomic_save_safetensors
from common.store.stage_files import CONFIG_FILE, WEIGHTS_FILE


def write_model(folder: Path, record: dict[str, Any], tensors: dict[str, Tensor], step: int | None = None) -> None:
    """A model's weights (fp32) and, in ``config.json``, its shape ``record`` (``{"class": ..., ...}``).

    A stage writes its ``config.json`` before training, with the record in it, so the best-model saves during training
    rewrite only the weights; a model saved into a fresh folder gets a ``config.json`` holding just its record.
    """
    folder = Path(folder)
    metadata = None if step is None else {"step": str(step)}
    atomic_save_safetensors({name: t.float() for name, t in tensors.items()}, folder / WEIGHTS_FILE, metadata)
    path = folder / CONFIG_FILE
    config = load_json(path) if path.is_file() else {"format_version": FORMAT_VERSION}
    if config.get(MODEL_KEY) != record:
        atomic_save_json({**config, MODEL_KEY: record}, path)


def read_model(folder: Path, kind: str, part: str = "") -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The shape record and the weights of the model of class ``kind`` in ``folder``; ``part`` ("sae") selects a
    sub-model of a composite one, its record and its tensors (whose names lose the ``part.`` prefix)."""
    config = upgrade_config(load_json(Path(folder) / CONFIG_FILE))
    record = config.get(MODEL_KEY)
    if record is None:
        raise UserError(f"{folder}: its {CONFIG_FILE} records no model")
    if part:
        record = record.get(part)
    if record is None or record.get("class") != kind:
        found = config[MODEL_KEY].get("class")
        raise UserError(f"{folder}: holds a {found} model, not a {kind}{f' (as its {part!r} part)' if part else ''}")
    return record, load_weights(folder, f"{part}." if part else "")


def load_weights(folder: Path, prefix: str = "") -> dict[str, Tensor]:
    """Weights of a stage (safetensors: no unpickling); ``prefix`` selects one part, stripped from the names."""
    tensors = load_tensors(Path(folder) / WEIGHTS_FILE)
    if not prefix:
        return tensors
    return {name[len(prefix) :]: t for name, t in tensors.items() if name.startswith(prefix)}
