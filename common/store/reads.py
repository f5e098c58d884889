"""Checked reads: a missing, truncated or corrupt file is a UserError naming the file and the fix, never a
traceback; nothing is ever unpickled but by the safe loader."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from torch import Tensor

from common.errors import UserError

REWRITE_HINT = "re-run the stage that wrote it (or restore the file)"


def load_json(path: Path) -> Any:
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise UserError(f"{path} is missing: {REWRITE_HINT}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path} is truncated or corrupt (not valid JSON: {err}): {REWRITE_HINT}") from None


def load_tensors(path: Path) -> dict[str, Tensor]:
    """A safetensors file (no unpickling), refusing a missing, truncated or corrupt one with one clear line."""
    return load_tensors_with_metadata(path)[0]


def load_tensors_with_metadata(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} is missing: {REWRITE_HINT}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {name: handle.get_tensor(name) for name in handle.keys()}, handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise UserError(f"{path} is truncated or corrupt (safetensors: {err}): {REWRITE_HINT}") from None
