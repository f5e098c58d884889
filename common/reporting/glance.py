"""The README's "Results at a glance", generated from a committed run's report.json and one figure, so that it never
drifts from them: each section's lead claim (its first row with a written rule and a figure of the paper's) with the
paper's figure, the run's value and CI, and the verdict; the count of rules that hold; and the figure.

    python -m common.reporting.glance --report docs/results/cpu/report.json \\
        --figure docs/results/cpu/squared_norms.png --readme README.md

rewrites the part of README.md between the two ``glance`` markers (or prints it without ``--readme``). Paths are
written as given, so give them relative to the README. Any run's report.json works (tests use the tiny run's)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from common.errors import UserError
from common.reporting.report import format_ci, format_value, table_cell
from common.stages.cli import run_cli
from common.store.reads import load_json
from common.store.savers import atomic_save_text

START, END = "<!-- glance: start (python -m common.reporting.glance) -->", "<!-- glance: end -->"


def _verdict(row: dict[str, Any]) -> str:
    text = "holds" if row["holds"] else "**fails**"
    if "holds_original" in row:
        text += f" / {'holds' if row['holds_original'] else '**fails**'}"
    return text


def lead_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each section's lead claim, in the report's order: its first row with a rule and a figure of the paper's, else
    its first row with a rule."""
    leads: dict[str, dict[str, Any]] = {}
    for row in rows:
        if "holds" not in row:
            continue
        has_paper = not str(row.get("paper", "—")).startswith("—") and row.get("paper")
        current = leads.get(row["section"])
        if current is None or (has_paper and not current["has_paper"]):
            leads[row["section"]] = {**row, "has_paper": has_paper}
    return list(leads.values())


def glance(report: dict[str, Any], report_path: str, figure: str | None) -> str:
    """The section's Markdown (paths as the README links them)."""
    rows = report["rows"]
    ruled = [row for row in rows if "holds" in row]
    header = report["header"]
    lines = [START, "", f"The {header.get('preset')} preset's lead claim of each section, from "
             f"[`{report_path}`]({report_path}) (every row is in the run's REPORT.md and REPORT.html). "
             f"**{sum(row['holds'] for row in ruled)} of {len(ruled)} written rules hold** as trained; a verdict "
             "after a slash is the original evaluation's (`--original_eval`).", "",
             "| section | claim | paper | this run [CI] | rule | verdict |", "|---|---|---|---|---|---|"]
    for row in lead_rows(rows):
        value = format_value(row["value"], row["kind"])
        if row.get("ci"):
            value += f" {format_ci(row['ci'], row['kind'], level=True)}"
        cells = (row["section"], row["name"], row.get("paper", ""), value, row.get("rule", ""), _verdict(row))
        lines.append("| " + " | ".join(table_cell(str(cell)) for cell in cells) + " |")
    seconds = header.get("stage_seconds", {})
    if seconds:
        lines += ["", f"The run's {len(seconds)} stages took {sum(seconds.values()) / 60:.0f} minutes "
                      f"({header.get('hardware')}); each stage's time and peak memory are in its REPORT.md."]
    if figure:
        lines += ["", f"![{Path(figure).name}]({figure})"]
    return "\n".join([*lines, "", END])


def replace_section(readme: str, section: str) -> str:
    if readme.count(START) != 1 or readme.count(END) != 1:
        raise UserError(f"the README needs exactly one {START!r} and one {END!r} line")
    before, rest = readme.split(START, 1)
    return before + section + rest.split(END, 1)[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", required=True, help="a run's report.json (as the README links it)")
    parser.add_argument("--figure", default=None, help="one PNG shown under the table (as the README links it)")
    parser.add_argument("--readme", default=None, help="rewrite this file's glance section (default: print it)")
    args = parser.parse_args(argv)
    if args.figure and not Path(args.figure).is_file():
        raise UserError(f"--figure {args.figure}: no such file")
    linked = [path for path in (args.report, args.figure) if path]
    if args.readme is not None and any(Path(path).is_absolute() for path in linked):
        raise UserError("--report and --figure are linked from the README as given: give them relative to it")
    section = glance(load_json(Path(args.report)), args.report, args.figure)
    if args.readme is None:
        sys.stdout.write(section + "\n")
        return
    readme = Path(args.readme)
    atomic_save_text(replace_section(readme.read_text(encoding="utf-8"), section), readme)


if __name__ == "__main__":
    run_cli(main)
