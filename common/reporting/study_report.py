"""STUDY.md and study.json (METHOD §11): one table per question, every number read back from a stage's output file
and shown with the command that wrote it, and one sentence per question of what the numbers say."""
from __future__ import annotations

import datetime
import shlex
from pathlib import Path
from typing import Any

from common.errors import UserError
from common.paths import portable
from common.reporting.report import table_cell
from common.reporting.study_bimodality import bimodality_lines
from common.reporting.study_questions import QUESTIONS
from common.reporting.study_regime import summary_lines
from common.reporting.study_seeds import claim_lines
from common.reporting.study_tables import Runs, render
from common.store.savers import atomic_save_json, atomic_save_text

STUDY_FILE, STUDY_MD = "study.json", "STUDY.md"


def write_study(study_dir: Path, main_dir: Path, preset: str, command: str, commit: str | None) -> Path:
    """Every question's section from whatever runs exist; study.json and STUDY.md in ``study_dir``. No absolute path
    of this machine is written: paths are relative to the repository, or else to the study folder."""
    runs = Runs(study_dir, main_dir)
    if "sae1" not in runs.outputs("main"):
        raise UserError(f"{main_dir}: no finished stage 1 there: the study compares against a main run")
    study = {"preset": preset, "date": datetime.date.today().isoformat(), "git_commit": commit,
             "command": portable_command(command, study_dir), "main_run": portable(main_dir, study_dir),
             "study_dir": portable(study_dir, study_dir),
             "questions": {name: {"title": question.title, **question.build(runs)}
                           for name, question in QUESTIONS.items()}}
    atomic_save_json(study, study_dir / STUDY_FILE)
    path = study_dir / STUDY_MD
    atomic_save_text(markdown(study), path)
    return path


def portable_command(command: str, base: Path) -> str:
    """A command line with each absolute path in it made ``portable``."""
    return shlex.join(portable(part, base) if Path(part).is_absolute() else part for part in shlex.split(command))


def _table_lines(section: dict[str, Any]) -> list[str]:
    lines = ["| figure | paper | " + " | ".join(section["columns"]) + " |",
             "|---|---|" + "---|" * len(section["columns"])]
    commands: dict[str, str] = {}
    for row in section["rows"]:
        cells = []
        for cell in row["cells"]:
            cells.append(render(cell["value"], row["kind"]))
            if cell["command"]:
                commands[cell["source"].split(":", 1)[0]] = cell["command"]
        lines.append(f"| {table_cell(row['name'])} | {table_cell(row['paper'])} | " + " | ".join(cells) + " |")
    if "summary" in section:
        lines += ["", *summary_lines(section["summary"])]
    if "rule" in section:
        lines += ["", f"Rule: {section['rule']}."]
    if "note" in section:
        lines += ["", f"{section['note']}."]
    return [*lines, "", "Commands (each number's source is `variant/stage:key` in the study and main folders):", "",
            *[f"- `{source}`: `{command}`" for source, command in commands.items()]]


def _seed_lines(section: dict[str, Any]) -> list[str]:
    seeds = section["seeds"]
    lines = ["| figure | paper | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd | rule | holds on |",
             "|---|---|" + "---|" * (len(seeds) + 3)]
    for row in section["rows"]:
        spread = "" if row["mean"] is None else (f"{render(row['mean'], row['kind'])} ± "
                                                 f"{render(row['sd'], row['kind'])}")
        held = "" if row["holds_count"] is None else f"{row['holds_count']}/{len(seeds)}"
        lines.append(f"| {table_cell(row['name'])} | {table_cell(row['paper'])} | "
                     + " | ".join(render(v, row["kind"]) for v in row["values"])
                     + f" | {spread} | {table_cell(row['rule'])} | {held} |")
    lines += ["", *claim_lines(section), "", "Commands:", ""]
    lines += [f"- `{variant}/{stage}`: `{command}`" for variant, by_stage in section["commands"].items()
              for stage, command in by_stage.items() if command]
    return lines


def markdown(study: dict[str, Any]) -> str:
    lines = ["# Why the numbers differ: the study", "",
             f"- **preset**: {study['preset']}", f"- **date**: {study['date']}",
             f"- **commit**: {study['git_commit']}", f"- **command**: `{study['command']}`",
             f"- **main run (seed 0)**: `{study['main_run']}`; variants in `{study['study_dir']}`", ""]
    for number, (name, section) in enumerate(study["questions"].items(), start=1):
        lines += [f"## {number}. {section['title']}", "", f"**Finding.** {section['finding']}", ""]
        if section["finding"] != "not run":
            lines += [*section_lines(name, section), ""]
    return "\n".join(lines) + "\n"


def section_lines(name: str, section: dict[str, Any]) -> list[str]:
    """A question's tables as STUDY.md shows them (the text its finding's numbers are held to)."""
    if name == "seeds":
        return _seed_lines(section)
    if name == "bimodality":
        return bimodality_lines(section)
    return _table_lines(section)
