"""Feature dashboards (METHOD §15), as SAEDashboard and Neuronpedia draw them, from the behavioral scripts' files:
for every selected secondary feature (part11's target and exploratory ones, the target being part13's clamp target)
and every primary feature part9b found, the top held-out examples with the max-activating token outlined and its
neighbours shaded by their code, the activation density and histogram of the non-zero codes; for a primary feature the
tokens its decoder direction promotes and suppresses (the logit lens), for a secondary feature the primary features
that drive it (by ablation), its activation cell means (part11) and its Δlogit cell means (part13).

Every number names the file and key it was read from (``stage:key.path`` in ``data-source``); "—" where the file
lacks it."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.reporting.html.page import document, esc, num, table
from common.store.reads import load_json
from common.store.savers import atomic_save_text

CELLS = ("formal_high", "formal_low", "casual_high", "casual_low")
DRIVERS = 8  # primary features listed under a secondary one
PAGES_DIR = "features"
Link = Callable[[str, int], str]  # (kind, feature) -> href of its dashboard


@dataclass
class Sources:
    """The behavioral files the dashboards read, by run folder name; ``None`` where a stage did not run."""

    meaning: dict[str, Any]
    selection: dict[str, Any] | None = None
    clamp: dict[str, Any] | None = None
    discovery: dict[str, Any] | None = None


def read_sources(out_dir: Path) -> Sources | None:
    def read(name: str) -> dict[str, Any] | None:
        path = out_dir / name / "results.json"
        return load_json(path) if path.is_file() else None

    meaning = read("meaning")
    return None if meaning is None else Sources(meaning, read("selection"), read("clamp"), read("discovery"))


def anchor(kind: str, feature: int) -> str:
    return f"feature-{kind}-{feature}"


def in_report(kind: str, feature: int) -> str:
    return f"#{anchor(kind, feature)}"


def on_pages(kind: str, feature: int) -> str:
    return f"{kind}_{feature}.html"


def _examples(dash: dict[str, Any], source: str) -> str:
    peak = dash["max_code"] or 1.0
    rows = []
    for i, example in enumerate(dash["examples"]):
        spans = []
        for j, (token, code) in enumerate(zip(example["tokens"], example["codes"])):
            shade = f"background: rgba(234, 88, 12, {max(code, 0.0) / peak:.3f})" if code > 0 else ""
            spans.append(f'<span class="tok{" peak" if j == example["peak"] else ""}" style="{shade}" '
                         f'data-code="{code!r}" title="code {code:.4g}">{esc(token)}</span>')
        rows.append((num(example["code"], f"{source}.examples.{i}.code"),
                     num(example["window"], f"{source}.examples.{i}.window", "int"),
                     f'<span class="tokens" data-source="{esc(source)}.examples.{i}">{"".join(spans)}</span>'))
    if not rows:
        return '<p class="none">No held-out token activates it in the scanned windows.</p>'
    return table(("code", "window", "context (max-activating token outlined)"), rows, 'class="examples"')


def _histogram(dash: dict[str, Any], source: str) -> str:
    counts, edges = dash["histogram"]["counts"], dash["histogram"]["edges"]
    if not counts:
        return '<p class="none">No non-zero code to draw.</p>'
    width, height, tallest = 300, 90, max(counts) or 1
    bar = width / len(counts)
    bars = "".join(f'<rect x="{i * bar:.1f}" y="{height - height * c / tallest:.1f}" width="{bar - 1:.1f}" '
                   f'height="{height * c / tallest:.1f}" fill="#ea580c"><title>{c} codes in [{edges[i]:.3g}, '
                   f'{edges[i + 1]:.3g})</title></rect>' for i, c in enumerate(counts))
    return (f'<svg class="histogram" data-source="{esc(source)}.histogram" width="{width}" height="{height + 16}" '
            f'role="img" aria-label="histogram of non-zero codes">{bars}'
            f'<text x="0" y="{height + 13}" font-size="10">0</text>'
            f'<text x="{width}" y="{height + 13}" font-size="10" text-anchor="end">{edges[-1]:.3g}</text></svg>')


def _stats(dash: dict[str, Any], source: str) -> str:
    return ('<p class="stats">'
            f'<span class="stat">density {num(dash["density"], f"{source}.density", "pct")}</span>'
            f'<span class="stat">active on {num(dash["active_positions"], f"{source}.active_positions", "int")} of '
            f'{num(dash["positions"], f"{source}.positions", "int")} held-out tokens</span>'
            f'<span class="stat">max code {num(dash["max_code"], f"{source}.max_code")}</span></p>')


def _lens(lens: dict[str, Any], source: str) -> str:
    rows = []
    for i, (top, bottom) in enumerate(zip(lens["top"], lens["bottom"])):
        rows.append((f'<span class="tok-cell">{esc(top["token"])}</span>', num(top["logit"], f"{source}.top.{i}.logit"),
                     f'<span class="tok-cell">{esc(bottom["token"])}</span>',
                     num(bottom["logit"], f"{source}.bottom.{i}.logit")))
    how = ("× σ, × the final norm's weight" if lens.get("final_norm_weight") else "× σ (no final-norm record)")
    return (f"<p>Logit lens of its decoder direction ({esc(how)}, through the unembedding):</p>"
            + table(("promotes", "logit", "suppresses", "logit"), rows, 'class="lens"'))


def _drivers(rows: list[dict[str, Any]], source: str, link: Link) -> str:
    if not rows:
        return '<p class="none">Driving primary features: —</p>'
    shown = [(f'<a href="{link("primary", row["primary"])}">{row["primary"]}</a>',
              num(row["mean_code_drop"], f"{source}.{i}.mean_code_drop"),
              num(row["active_share"], f"{source}.{i}.active_share", "pct")) for i, row in enumerate(rows[:DRIVERS])]
    return ("<p>Primary features that drive it (its code's mean drop when one is taken out of the NFM's input):</p>"
            + table(("primary", "mean code drop", "active on"), shown))


def _cell_means(src: Sources, feature: int) -> str:
    selection = src.selection or {}
    rows = []
    if selection.get("target") == feature and "target_cell_means" in selection:
        rows.append(("activation (part11)", *(num(selection["target_cell_means"].get(cell),
                                                  f"selection:target_cell_means.{cell}") for cell in CELLS)))
    else:
        rows.append(("activation (part11)", *(['<span class="none">—</span>'] * len(CELLS))))
    tests = (src.clamp or {}).get("tests", {}).get(str(feature), {})
    for value, entry in tests.items():
        means = entry.get("cell_means", {})
        rows.append((f"Δlogit at m = {esc(value)} (part13)",
                     *(num(means.get(cell), f"clamp:tests.{feature}.{value}.cell_means.{cell}") for cell in CELLS)))
    if not tests:
        rows.append(("Δlogit (part13)", *(['<span class="none">—</span>'] * len(CELLS))))
    return table(("cell means", *CELLS), rows)


def secondary_dashboard(src: Sources, feature: int, link: Link = in_report) -> str:
    entry = src.meaning["features"][str(feature)]
    source = f"meaning:features.{feature}"
    dash = entry["dashboard"]
    roles = ["target of part11's selection" if entry["role"] == "target" else "exploratory (part11)"]
    if (src.clamp or {}).get("primary_test", {}).get("feature") == feature:
        roles.append("part13's clamp target")
    label = entry.get("label", {})
    return (f'<section class="dashboard" id="{anchor("secondary", feature)}">'
            f"<h3>Secondary feature {feature} <small>({esc(', '.join(roles))})</small></h3>"
            f'<p>Offline label: most often at the max-activating position is {esc(repr(label.get("token")))}, in '
            f'{num(label.get("share"), f"{source}.label.share", "pct")} of the top examples (lift '
            f'{num(label.get("lift"), f"{source}.label.lift")}).</p>'
            + _stats(dash, f"{source}.dashboard")
            + f'<div class="panels"><div>{_examples(dash, f"{source}.dashboard")}</div>'
            f'<div>{_histogram(dash, f"{source}.dashboard")}'
            f'{_drivers(entry.get("attribution", []), f"{source}.attribution", link)}'
            f"{_cell_means(src, feature)}</div></div></section>")


def _found_for(src: Sources, feature: int) -> str:
    found = []
    for factor in ("formality", "emotion"):
        for i, row in enumerate((src.discovery or {}).get(factor, {}).get("top", [])):
            if row["feature"] == feature:
                found.append(f"{factor} (t = {num(row['t'], f'discovery:{factor}.top.{i}.t')})")
    return f"found by part9b for {', '.join(found)}" if found else "found by part9b"


def primary_dashboard(src: Sources, feature: int, link: Link = in_report) -> str:
    entry = src.meaning["primary_features"][str(feature)]
    source = f"meaning:primary_features.{feature}"
    dash = entry["dashboard"]
    return (f'<section class="dashboard" id="{anchor("primary", feature)}">'
            f"<h3>Primary feature {feature} <small>({_found_for(src, feature)})</small></h3>"
            + _stats(dash, f"{source}.dashboard")
            + f'<div class="panels"><div>{_examples(dash, f"{source}.dashboard")}</div>'
            f'<div>{_histogram(dash, f"{source}.dashboard")}{_lens(entry["logit_lens"], f"{source}.logit_lens")}'
            "</div></div></section>")


def dashboards(src: Sources, link: Link = in_report) -> list[tuple[str, int, str]]:
    """(kind, feature, HTML) of every dashboard: the secondary features first (target first), then the primaries; none
    from a part12 that predates them."""
    if "primary_features" not in src.meaning:
        return []
    out = [("secondary", int(f), secondary_dashboard(src, int(f), link)) for f in src.meaning.get("features", {})]
    out += [("primary", int(p), primary_dashboard(src, int(p), link)) for p in src.meaning.get("primary_features", {})]
    return out


def write_feature_pages(folder: Path, meaning: dict[str, Any], selection: dict[str, Any] | None = None,
                        clamp: dict[str, Any] | None = None, discovery: dict[str, Any] | None = None) -> list[Path]:
    """One self-contained page per feature in FOLDER/features/ (part12 --feature_pages)."""
    src = Sources(meaning, selection, clamp, discovery)
    written = []
    for kind, feature, body in dashboards(src, on_pages):
        path = folder / PAGES_DIR / on_pages(kind, feature)
        atomic_save_text(document(f"{kind} feature {feature}", body), path)
        written.append(path)
    return written
