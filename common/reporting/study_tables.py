"""The study's tables (METHOD §11): each figure read back from a variant's stage output, beside the command that
wrote it."""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.paper import text as paper_text
from common.reporting.report import STAGE_FILES, lookup
from common.reporting.study_plan import variant_dir
from common.stages.run_records import RUN_RECORDS
from common.store.reads import load_json
from common.store.stage_files import CONFIG_FILE


@dataclass(frozen=True)
class Column:
    label: str
    variant: str
    rename: tuple[tuple[str, str], ...] = ()  # (stage, stage it reads instead): e.g. kl14 → kl14_original


@dataclass(frozen=True)
class Figure:
    name: str
    paper: str  # a key of common.paper.PAPER ("" for none)
    source: str  # "stage:key.path"
    kind: str = "pct"


class Runs:
    """The study's run folders and what their stages wrote."""

    def __init__(self, study_dir: Path, main_dir: Path) -> None:
        self.study_dir, self.main_dir = study_dir, main_dir
        self._outputs: dict[str, dict[str, Any]] = {}

    def folder(self, variant: str) -> Path:
        return variant_dir(self.study_dir, self.main_dir, variant)

    def outputs(self, variant: str) -> dict[str, Any]:
        if variant not in self._outputs:
            folder = self.folder(variant)
            self._outputs[variant] = {stage: load_json(folder / path) for stage, path in STAGE_FILES.items()
                                      if (folder / path).is_file()}
        return self._outputs[variant]

    def command(self, variant: str, stage: str) -> str | None:
        record = self.folder(variant) / RUN_RECORDS / f"{stage}.json"
        if not record.is_file():
            return None
        written = load_json(record)
        return shlex.join(["python", written["script"], *written["argv"]])

    def value(self, variant: str, source: str) -> Any:
        """The value at ``stage:key.path`` in the variant's output, or None where that stage has not run."""
        if source.split(":", 1)[0] not in self.outputs(variant):
            return None
        return lookup(self.outputs(variant), source)

    def stage_config(self, variant: str, stage: str) -> dict[str, Any]:
        path = self.folder(variant) / stage / CONFIG_FILE
        return load_json(path)["config"] if path.is_file() else {}


def renamed(source: str, column: Column) -> str:
    stage, key = source.split(":", 1)
    return f"{dict(column.rename).get(stage, stage)}:{key}"


def table(runs: Runs, columns: list[Column], figures: list[Figure]) -> dict[str, Any]:
    """Each figure in each column, with the variant folder's source and the command of the stage that wrote it."""
    out = []
    for figure in figures:
        cells = []
        for column in columns:
            source = renamed(figure.source, column)
            stage = source.split(":", 1)[0]
            cells.append({"column": column.label, "variant": column.variant, "source": f"{column.variant}/{source}",
                          "value": runs.value(column.variant, source), "command": runs.command(column.variant, stage)})
        out.append({"name": figure.name, "paper": paper_text(figure.paper), "kind": figure.kind, "cells": cells})
    return {"columns": [column.label for column in columns], "rows": out}


def cell(section: dict[str, Any], name: str, column: int) -> Any:
    return next(row for row in section["rows"] if row["name"] == name)["cells"][column]["value"]


def pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def closer(value: float | None, reference: float | None, paper: float) -> str:
    if value is None or reference is None:
        return "not comparable"
    return "closer to" if abs(value - paper) < abs(reference - paper) else "no closer to"


