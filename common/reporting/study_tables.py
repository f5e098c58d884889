"""The study's tables (METHOD §11): each figure read back from a variant's stage output, beside the command that
wrote it."""
from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import UserError
from common.paper import text as paper_text
from common.paths import portable
from common.reporting.report import STAGE_FILES, format_value, lookup, original_source, paper_figure
from common.reporting.rows import Row
from common.reporting.study_plan import variant_dir
from common.stages.run_records import RUN_RECORDS
from common.store.reads import load_json
from common.store.stage_files import CONFIG_FILE


@dataclass(frozen=True)
class Column:
    label: str
    variant: str
    rename: tuple[tuple[str, str], ...] = ()  # (stage, stage it reads instead): e.g. kl14 → kl14_original
    elsewhere: tuple[tuple[str, str], ...] = ()  # (stage, variant it is read from instead): e.g. sae2 → long_sae2

    @property
    def original(self) -> bool:
        """Does the column read the --original_eval runs?"""
        return any(target.endswith("_original") for _, target in self.rename)


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
        """The command that wrote the stage, its absolute paths made ``portable`` (relative to the repository or
        to the study folder)."""
        record = self.folder(variant) / RUN_RECORDS / f"{stage}.json"
        if not record.is_file():
            return None
        written = load_json(record)
        argv = [portable(arg, self.study_dir) if Path(arg).is_absolute() else arg for arg in written["argv"]]
        return shlex.join(["python", written["script"], *argv])

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


def placed(source: str, column: Column) -> tuple[str, str]:
    """The variant and the source a column reads a figure from."""
    source = renamed(source, column)
    return dict(column.elsewhere).get(source.split(":", 1)[0], column.variant), source


def table(runs: Runs, columns: list[Column], figures: list[Figure]) -> dict[str, Any]:
    """Each figure in each column, with the variant folder's source and the command of the stage that wrote it."""
    out = []
    for figure in figures:
        cells = []
        for column in columns:
            variant, source = placed(figure.source, column)
            stage = source.split(":", 1)[0]
            cells.append({"column": column.label, "variant": variant, "source": f"{variant}/{source}",
                          "value": runs.value(variant, source), "command": runs.command(variant, stage)})
        out.append({"name": figure.name, "paper": paper_text(figure.paper), "kind": figure.kind, "cells": cells})
    return {"columns": [column.label for column in columns], "rows": out}


def rule_row(runs: Runs, columns: list[Column], row: Row, name: str) -> dict[str, Any]:
    """A derived row: whether REPORT.md's rule of ``row`` holds in each column (the --original_eval runs' files
    where the column reads them), None where the column lacks a stage the rule reads."""
    cells = []
    for column in columns:
        variant, source = placed(row.source, column)
        cells.append({"column": column.label, "variant": variant, "source": f"{variant}/{source}", "derived": "rule",
                      "value": rule_holds(row, runs.outputs(variant), column.original), "command": None})
    return {"name": name, "paper": paper_figure(row), "kind": "bool", "cells": cells}


def derived_row(name: str, kind: str, columns: list[str], values: list[Any], paper: str = "—") -> dict[str, Any]:
    """A row computed from the table's other rows (its rule says how), one value per column."""
    return {"name": name, "paper": paper, "kind": kind,
            "cells": [{"column": column, "variant": "", "source": "", "derived": "computed", "value": value,
                       "command": None} for column, value in zip(columns, values)]}


def rule_holds(row: Row, outputs: dict[str, Any], original: bool = False) -> bool | None:
    """REPORT.md's rule of ``row`` on one run's outputs (its --original_eval runs' with ``original``), None where
    the run lacks a stage or key the rule reads."""
    if row.rule is None:
        return None

    def read(source: str) -> Any:
        return lookup(outputs, original_source(source) if original else source)

    try:
        return bool(row.rule.check(read(row.source), read))
    except (KeyError, TypeError, UserError):
        return None


def cell(section: dict[str, Any], name: str, column: int) -> Any:
    return next(row for row in section["rows"] if row["name"] == name)["cells"][column]["value"]


def render(value: Any, kind: str) -> str:
    """A value as the study's tables show it (and as its findings quote it)."""
    if value is None:
        return "—"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return format_value(value, kind)


def quote(section: dict[str, Any], name: str, column: int) -> str:
    """A cell exactly as the section's table shows it: a finding quotes its numbers only this way."""
    row = next(row for row in section["rows"] if row["name"] == name)
    return render(row["cells"][column]["value"], row["kind"])


def pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def closer(value: float | None, reference: float | None, paper: float) -> str:
    if value is None or reference is None:
        return "not comparable"
    return "closer to" if abs(value - paper) < abs(reference - paper) else "no closer to"


