"""The pieces every page of the HTML report is built from (METHOD §15): one self-contained document (its style sheet
inline, figures as data URIs, no script, no font, no address outside the file), escaped text, numbers that name the
file and key they were read from, and tables."""
from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from common.reporting.report import format_value

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 1180px; color: #1d2330; padding: 0 1em; }
h1 { font-size: 1.7em; } h2 { border-bottom: 1px solid #d5dae3; padding-bottom: .2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: .6em 0 1em; font-size: 13px; }
th, td { border: 1px solid #d5dae3; padding: .25em .5em; text-align: left; vertical-align: top; }
th { background: #f1f3f7; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
.holds { background: #d8f3dc; color: #14532d; font-weight: 600; }
.fails { background: #fde2e1; color: #8a1c1c; font-weight: 600; }
.none { color: #8a93a3; }
.source { font: 11px ui-monospace, monospace; color: #5b6474; }
figure { display: inline-block; margin: .4em .8em .8em 0; } figure img { max-width: 560px; border: 1px solid #e3e6ec; }
figcaption { font: 11px ui-monospace, monospace; color: #5b6474; }
.dashboard { border: 1px solid #c9d0dc; border-radius: 6px; padding: .4em 1em 1em; margin: 1em 0; }
.dashboard h3 { margin: .5em 0 .3em; } .stats span.stat { margin-right: 1.4em; }
.panels { display: flex; flex-wrap: wrap; gap: 1.5em; } .panels > div { flex: 1 1 300px; }
.tokens { font: 12.5px ui-monospace, monospace; white-space: pre; }
.tok { border-radius: 2px; } .tok.peak { outline: 2px solid #b45309; font-weight: 700; }
.lens td.tok-cell { font: 12px ui-monospace, monospace; white-space: pre; }
nav a { margin-right: 1em; }
#claims { width: 100%; } #claims td:first-child { min-width: 15em; } #claims tr.section th { background: #e4e8f0; }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def number_text(value: float | int | None, kind: str = "num") -> str:
    """A figure as the page shows it: a percent to two decimals, else as REPORT.md shows it; a non-finite one as is."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return format_value(value, kind, pct_digits=2)


def num(value: float | int | None, source: str, kind: str = "num") -> str:
    """A number that names its file and key (``stage:key.path``), so a test can read it back from there."""
    if value is None:
        return f'<span class="num none" data-source="{esc(source)}">—</span>'
    return (f'<span class="num" data-source="{esc(source)}" data-kind="{kind}" data-value="{esc(repr(value))}">'
            f"{esc(number_text(value, kind))}</span>")


def table(header: Iterable[str], rows: Iterable[Iterable[str]], attrs: str = "") -> str:
    """Cells are HTML already (escape text with ``esc``)."""
    head = "".join(f"<th>{cell}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table{' ' + attrs if attrs else ''}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def png_figure(path: Path, caption: str) -> str:
    """A PNG inline as a data URI, captioned with where it lies in the run folder."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{esc(caption)}" loading="eager">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def document(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")
