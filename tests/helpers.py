"""What tests share: the repository root, copying a finished stage with edits to its config, and comparing tensors
to a reference."""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import torch

from common.paths import REPO_ROOT
from common.reporting.study_report import section_lines
from common.store.reads import load_json
from common.store.savers import atomic_save_json
from common.store.stage_files import CONFIG_FILE

ROOT = REPO_ROOT
DATA = Path(__file__).resolve().parent / "data"
NUMBER = re.compile(r"(?<![\w.])[-−]?\d+(?:[.,]\d+)*%?")  # a number as a finding or a table writes it


def copy_stage(source: Path, target: Path, edit_config: dict[str, Any] | None = None, **changes: Any) -> Path:
    """A copy of a stage directory whose ``config.json`` has ``edit_config`` / ``changes`` applied at its top level."""
    shutil.copytree(source, target)
    edits = {**(edit_config or {}), **changes}
    if edits:
        config = load_json(target / CONFIG_FILE)
        config.update(edits)
        atomic_save_json(config, target / CONFIG_FILE)
    return target


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, rel: float, name: str = "") -> None:
    """Max abs error within ``rel`` of the expected tensor's largest magnitude (robust near zero entries)."""
    actual, expected = actual.double(), expected.double()
    err = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    relative = err / max(scale, 1e-300)
    assert err <= rel * scale, f"{name}: max error {err:.3g} vs scale {scale:.3g} (rel {relative:.3g} > {rel})"


def assert_findings_quote_their_tables(result: dict[str, Any]) -> None:
    """A finding quotes its own table: each number it states is a number the section's rendered tables show
    (``result``: a study.json, or a dict of its ``questions``)."""
    for name, section in result["questions"].items():
        shown = set(NUMBER.findall("\n".join(section_lines(name, section))))
        stated = NUMBER.findall(section["finding"].replace("§", " "))
        missing = [n for n in stated if n not in shown]
        assert not missing, (name, missing, section["finding"])
