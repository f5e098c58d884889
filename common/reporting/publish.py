"""Everything ``reproduce.py`` writes once its stages are done: REPORT.md and report.json, SAEBench's core files,
and REPORT.html, in that order (each later one reads the earlier ones)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from common.reporting.html.report import write_html
from common.reporting.report import write_report
from common.reporting.saebench import write_saebench
from common.store.reads import load_json


def publish(out_dir: Path, args: dict[str, Any], timings: dict[str, dict], study_file: Path | None) -> list[Path]:
    """Returns the paths of REPORT.md and REPORT.html."""
    markdown = write_report(out_dir, args, timings, study_file)
    write_saebench(Path(out_dir))
    return [markdown, write_html(out_dir, load_json(Path(out_dir) / "report.json"))]
