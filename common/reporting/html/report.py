"""REPORT.html (METHOD §15): the run at a glance in one self-contained file beside REPORT.md, built from report.json,
the SAEBench core files and the behavioral scripts' results: the study's findings, the claims table with coloured
verdicts, time and memory per stage, SAEBench's core metrics, the feature dashboards, and every stage's figures
inline."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from common.reporting.html.dashboards import dashboards, read_sources
from common.reporting.html.page import document, esc, png_figure
from common.reporting.html.sections import (
    claims_section,
    glance_section,
    header_section,
    saebench_section,
    study_section,
    timing_section,
)
from common.store.savers import atomic_save_text

REPORT_HTML = "REPORT.html"
NAV = (("glance", "At a glance"), ("run", "The run"), ("study", "Why the numbers differ"), ("claims-section", "Claims"),
       ("time", "Time"), ("saebench", "SAEBench"), ("dashboards", "Feature dashboards"), ("figures", "Figures"))


def dashboards_section(out_dir: Path) -> str:
    src = read_sources(out_dir)
    if src is None:
        return ('<section id="dashboards"><h2>Feature dashboards</h2><p class="none">None: part12 (the meaning stage) '
                "did not run.</p></section>")
    shown = dashboards(src)
    if not shown:
        return ('<section id="dashboards"><h2>Feature dashboards</h2><p class="none">None: meaning/results.json was '
                "written by a part12 without dashboards; delete meaning/ and re-run to write them.</p></section>")
    index = ", ".join(f'<a href="#feature-{kind}-{feature}">{kind} {feature}</a>' for kind, feature, _ in shown)
    intro = ("<p>One per selected secondary feature (part11's target, part13's clamp target, and the exploratory "
             "ones) and per primary feature part9b found: the top held-out examples with the max-activating token "
             "outlined and its neighbours shaded by their code, the activation density, and the logit lens (primary) "
             f"or the primary features that drive it and its cell means (secondary). Index: {index}.</p>")
    return (f'<section id="dashboards"><h2>Feature dashboards</h2>{intro}'
            + "".join(body for _, _, body in shown) + "</section>")


def figures_section(out_dir: Path) -> str:
    """Every PNG of every stage folder, inline, under its folder's name."""
    parts = []
    for folder in sorted(path for path in out_dir.iterdir() if path.is_dir()):
        pngs = sorted(folder.glob("*.png"))
        if pngs:
            parts.append(f"<h3>{esc(folder.name)}</h3>" + "".join(
                png_figure(png, png.relative_to(out_dir).as_posix()) for png in pngs))
    return f'<section id="figures"><h2>Figures</h2>{"".join(parts) or "<p class=none>None.</p>"}</section>'


def write_html(out_dir: Path, report: dict[str, Any]) -> Path:
    """REPORT.html from report.json's content (``report``) and the files beside it; returns its path."""
    out_dir = Path(out_dir)
    header = report["header"]
    nav = "<nav>" + "".join(f'<a href="#{anchor}">{title}</a>' for anchor, title in NAV) + "</nav>"
    body = "".join([
        f"<h1>Reproduction report: {esc(header.get('preset'))} preset</h1>", nav, glance_section(report["rows"]),
        study_section(header.get("study"), header.get("preset")),
        header_section(header), claims_section(report["rows"]), timing_section(header), saebench_section(out_dir),
        dashboards_section(out_dir), figures_section(out_dir),
    ])
    path = out_dir / REPORT_HTML
    atomic_save_text(document(f"Reproduction report ({header.get('preset')})", body), path)
    return path
