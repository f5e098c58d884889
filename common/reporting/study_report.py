"""STUDY.md and study.json (METHOD §11): one table per question, every number read back from a stage's output file
and shown with the command that wrote it, and one sentence per question of what the numbers say."""
from __future__ import annotations

import datetime
import math
from pathlib import Path
from typing import Any

from common.errors import UserError
from common.reporting.report import format_value
from common.reporting.study_questions import QUESTIONS
from common.reporting.study_tables import Runs
from common.store.savers import atomic_save_json, atomic_save_text

STUDY_FILE, STUDY_MD = "study.json", "STUDY.md"


def write_study(study_dir: Path, main_dir: Path, preset: str, command: str, commit: str | None) -> Path:
    """Every question's section from whatever runs exist; study.json and STUDY.md in ``study_dir``."""
    runs = Runs(study_dir, main_dir)
    if "sae1" not in runs.outputs("main"):
        raise UserError(f"{main_dir}: no finished stage 1 there: the study compares against a main run")
    study = {"preset": preset, "date": datetime.date.today().isoformat(), "git_commit": commit, "command": command,
             "main_run": str(main_dir), "study_dir": str(study_dir),
             "questions": {name: {"title": question.title, **question.build(runs)}
                           for name, question in QUESTIONS.items()}}
    atomic_save_json(study, study_dir / STUDY_FILE)
    path = study_dir / STUDY_MD
    atomic_save_text(markdown(study), path)
    return path


def _value(value: Any, kind: str) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return format_value(value, kind)


def _table_lines(section: dict[str, Any]) -> list[str]:
    lines = ["| figure | paper | " + " | ".join(section["columns"]) + " |",
             "|---|---|" + "---|" * len(section["columns"])]
    commands: dict[str, str] = {}
    for row in section["rows"]:
        cells = []
        for cell in row["cells"]:
            cells.append(_value(cell["value"], row["kind"]))
            if cell["command"]:
                commands[cell["source"].split(":", 1)[0]] = cell["command"]
        lines.append(f"| {row['name']} | {row['paper']} | " + " | ".join(cells) + " |")
    return [*lines, "", "Commands (each number's source is `variant/stage:key` in the study and main folders):", "",
            *[f"- `{source}`: `{command}`" for source, command in commands.items()]]


def _seed_lines(section: dict[str, Any]) -> list[str]:
    seeds = section["seeds"]
    lines = ["| figure | paper | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd | rule | holds on |",
             "|---|---|" + "---|" * (len(seeds) + 3)]
    for row in section["rows"]:
        spread = "" if row["mean"] is None else (f"{_value(row['mean'], row['kind'])} ± "
                                                 f"{_value(row['sd'], row['kind'])}")
        held = "" if row["holds_count"] is None else f"{row['holds_count']}/{len(seeds)}"
        lines.append(f"| {row['name']} | {row['paper']} | " + " | ".join(_value(v, row["kind"]) for v in row["values"])
                     + f" | {spread} | {row['rule']} | {held} |")
    lines += ["", "Commands:", ""]
    lines += [f"- `{variant}/{stage}`: `{command}`" for variant, by_stage in section["commands"].items()
              for stage, command in by_stage.items() if command]
    return lines


def _bimodality_lines(section: dict[str, Any]) -> list[str]:
    lines = ["| decoder | n | mixture rule | dip (p) | valley ratio | study verdict | initial: dip p / mixture | "
             "moved: n, mixture, dip p |", "|---|---|---|---|---|---|---|---|"]
    for e in section["entries"]:
        t, i, m = e["trained"], e["initial"], e["moved"]
        moved = (f"{m['n']}, {'yes' if m['mixture']['bimodal'] else 'no'}, {m['dip']['p']:.3g}" if "dip" in m
                 else f"{m['n']}")
        lines.append(f"| {e['folder']} | {t['n']} | {'yes' if t['mixture']['bimodal'] else 'no'} "
                     f"| {t['dip']['dip']:.4f} ({t['dip']['p']:.3g}) | {t['valley']['ratio']:.2f} "
                     f"| {'bimodal' if e['verdict'] else 'not bimodal'} "
                     f"| {i['dip']['p']:.3g} / {'yes' if i['mixture']['bimodal'] else 'no'} | {moved} |")
    return [*lines, "", f"The report uses {section['report_uses']}; the study's verdict: {section['study_verdict']}."]


def markdown(study: dict[str, Any]) -> str:
    lines = ["# Why the numbers differ: the study", "",
             f"- **preset**: {study['preset']}", f"- **date**: {study['date']}",
             f"- **commit**: {study['git_commit']}", f"- **command**: `{study['command']}`",
             f"- **main run (seed 0)**: `{study['main_run']}`; variants in `{study['study_dir']}`", ""]
    for number, (name, section) in enumerate(study["questions"].items(), start=1):
        lines += [f"## {number}. {section['title']}", "", f"**Finding.** {section['finding']}", ""]
        if section["finding"] == "not run":
            continue
        if name == "seeds":
            lines += _seed_lines(section)
        elif name == "bimodality":
            lines += _bimodality_lines(section)
        else:
            lines += _table_lines(section)
        lines.append("")
    return "\n".join(lines) + "\n"
