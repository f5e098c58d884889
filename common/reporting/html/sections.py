"""REPORT.html's sections that read report.json (METHOD §15): what was run, the study's findings, the claims table
(every row of every section, whatever sections the report holds), time and memory per stage, and SAEBench's core
metrics of the run's models."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from common.reporting.glance import lead_rows
from common.reporting.html.page import esc, table
from common.reporting.report import format_ci, format_value
from common.reporting.saebench import CORE_DIR, CORE_MODELS
from common.store.reads import load_json

CLAIM_COLUMNS = ("figure", "paper", "this run", "CI", "original eval", "rule", "verdict", "source")
CORE_ROWS = (  # (group, key, label, kind) of SAEBench's core metrics shown
    ("model_performance_preservation", "ce_loss_score", "CE-loss score (1 = clean, 0 = zero-ablation)", "num"),
    ("model_behavior_preservation", "kl_div_score", "KL score (1 = clean, 0 = zero-ablation)", "num"),
    ("reconstruction_quality", "explained_variance", "explained variance (about the mean)", "pct"),
    ("reconstruction_quality", "explained_variance_legacy", "explained variance, legacy (per token)", "pct"),
    ("reconstruction_quality", "cossim", "cosine(x, x̂)", "num"),
    ("shrinkage", "relative_reconstruction_bias", "relative reconstruction bias", "num"),
    ("sparsity", "l0", "L0", "num"),
    ("misc_metrics", "frac_alive", "alive fraction (1 − dead)", "pct"),
    ("misc_metrics", "freq_over_10_percent", "dense fraction (firing on > 10% of tokens)", "pct"),
    ("model_performance_preservation", "ce_loss_with_sae", "CE with the model spliced in (nats)", "num"),
    ("model_performance_preservation", "ce_loss_without_sae", "CE, clean (nats)", "num"),
    ("model_performance_preservation", "ce_loss_with_ablation", "CE, residual zeroed (nats)", "num"),
)


def block(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{esc(title)}</h2>{body}</section>'


def header_section(header: dict[str, Any]) -> str:
    rows = header.get("stage1_rows") or {}
    facts = {
        "preset": header.get("preset"), "model": f"{header.get('model_id')} ({header.get('model_fingerprint')})",
        "layer": header.get("layer"), "training text": header.get("training_text"),
        "evaluation text": header.get("evaluation_text"),
        "stage-1 rows": (f"{rows['train_rows']:,} training, {rows['val_rows']:,} held out"
                         if rows.get("train_rows") is not None else "—"),
        "precision regime": header.get("precision_regime"), "decode path": header.get("decode_path"),
        "hardware": header.get("hardware"), "stages missing": ", ".join(header.get("missing_stages", [])) or "none",
    }
    items = "".join(f"<li><b>{esc(key)}</b>: {esc(value)}</li>" for key, value in facts.items())
    return block("run", "The run", f"<ul>{items}</ul>")


def study_section(study: dict[str, Any] | None, preset: str | None) -> str:
    if study is None:
        body = (f"<p>Not studied: no study of the {esc(preset)} preset was given (<code>reproduce.py --study</code>, "
                f"by default <code>docs/results/{esc(preset)}-study.json</code>; <code>study.py</code> writes "
                "one).</p>")
    else:
        items = "".join(f"<li><b>{esc(entry['title'])}.</b> {esc(entry['finding'])}</li>"
                        for entry in study["findings"].values())
        body = (f"<p>From <code>{esc(study['file'])}</code> ({esc(study['date'])}, commit {esc(study['git_commit'])}; "
                f"<code>{esc(study['command'])}</code>):</p><ul>{items}</ul>")
    return block("study", "Why the numbers differ", body)


def _verdict(holds: bool | None) -> str:
    if holds is None:
        return ""
    return '<span class="holds">holds</span>' if holds else '<span class="fails">fails</span>'


def claim_cells(row: dict[str, Any]) -> list[str]:
    """One report.json row as the claims table's cells, whatever section it belongs to."""
    kind = row.get("kind", "num")
    ci = (esc(format_ci(row["ci"], kind, level=True)) if row.get("ci")
          else '<span class="none">—</span>' if "ci_source" in row or "ci" in row else "")
    original = esc(format_value(row["original_value"], kind)) if "original_value" in row else ""
    if row.get("original_ci"):
        original += f" {esc(format_ci(row['original_ci'], kind))}"
    verdict = _verdict(row.get("holds"))
    if "holds_original" in row:
        verdict += f" / {_verdict(row['holds_original'])}"
    return [esc(row["name"]), esc(row.get("paper", "")), f'<span class="value">{esc(format_value(row["value"], kind))}'
            "</span>", ci, original, esc(row.get("rule", "")), verdict,
            f'<span class="source">{esc(row.get("source", ""))}</span>']


def glance_section(rows: list[dict[str, Any]]) -> str:
    """Each section's lead claim (as the README's glance picks it), above everything else."""
    verdicts = [row["holds"] for row in rows if "holds" in row]
    if not verdicts:
        return ""
    shown = [(esc(row["section"]), *claim_cells(row)[:4], claim_cells(row)[6]) for row in lead_rows(rows)]
    return block("glance", "At a glance",
                 f"<p><b>{sum(verdicts)} of {len(verdicts)} written rules hold</b> as trained. Each section's lead "
                 'claim; every figure is in the <a href="#claims">claims table</a>.</p>'
                 + table(("section", "claim", "paper", "this run", "CI", "verdict"), shown))


def claims_section(rows: list[dict[str, Any]]) -> str:
    body = []
    for section in dict.fromkeys(row["section"] for row in rows):
        body.append(f'<tr class="section"><th colspan="{len(CLAIM_COLUMNS)}">{esc(section)}</th></tr>')
        body += ["<tr>" + "".join(f"<td>{cell}</td>" for cell in claim_cells(row)) + "</tr>"
                 for row in rows if row["section"] == section]
    head = "".join(f"<th>{column}</th>" for column in CLAIM_COLUMNS)
    note = ("<p>Each value is read from its stage's file (<i>source</i>). <i>this run</i> evaluates every model as "
            "trained; <i>original eval</i> is <code>--original_eval</code> (METHOD §4). The verdict applies the "
            "written rule to this run's value (and to the original evaluation's after the slash). The CI is the "
            "value's confidence interval at the level its rule needs (95% where the row has no rule), — where the "
            "stage's files hold none.</p>")
    verdicts = [row["holds"] for row in rows if "holds" in row]
    note += (f"<p><b>{len(rows)} figures, {len(verdicts)} with a rule: {sum(verdicts)} hold, "
             f"{len(verdicts) - sum(verdicts)} fail</b> (as trained).</p>")
    if not rows:
        return block("claims-section", "Claims", '<p class="none">No claims: stages are missing.</p>')
    return block("claims-section", "Claims", f'{note}<table id="claims"><thead><tr>{head}</tr></thead>'
                                               f"<tbody>{''.join(body)}</tbody></table>")


def _bytes(value: int | None) -> str:
    return "—" if value is None else f"{value / 2**30:.2f} GB" if value >= 2**30 else f"{value / 2**20:.0f} MB"


def timing_section(header: dict[str, Any]) -> str:
    seconds, memory = header.get("stage_seconds", {}), header.get("stage_peak_memory_bytes", {})
    rows = [(esc(name), f"{value:.0f} s", _bytes(memory.get(name))) for name, value in seconds.items()]
    rows.append(("all", f"{sum(seconds.values()) / 60:.1f} min", ""))
    return block("time", "Time and memory per stage",
                   "<p>Wall time as <code>reproduce.py</code> measured it (all attempts of a resumed stage); peak "
                   "memory as the stage recorded it (CUDA's allocator peak on a GPU, else the process's peak resident "
                   "set).</p>" + table(("stage", "wall time", "peak memory"), rows))


def saebench_section(out_dir: Path) -> str:
    files = {model: out_dir / CORE_DIR / f"{model.name}_eval_results.json" for model in CORE_MODELS}
    cores = {model: load_json(path) for model, path in files.items() if path.is_file()}
    intro = ("<p>SAEBench's core metrics (v0.6.0 definitions; METHOD §15), one file per model in "
             f"<code>{CORE_DIR.as_posix()}/</code>. Scores are against zeroing the residual at the patch layer; "
             "explained variance is about the mean in raw units; L0, alive and dense fractions are the stage's "
             "firing counts on its held-out rows. — where a stage's file lacks the figure.</p>")
    if not cores:
        return block("saebench", "SAEBench core metrics", f'{intro}<p class="none">None written.</p>')
    rows = []
    for group, key, label, kind in CORE_ROWS:
        cells = [esc(label)]
        for core in cores.values():
            value = core["eval_result_metrics"][group][key]
            missing = f"{group}.{key}" in core["eval_result_unstructured"]["not_available"]
            cells.append('<span class="none">—</span>' if missing else esc(format_value(value, kind)))
        rows.append(cells)
    header = ("metric", *(esc(model.title) for model in cores))
    return block("saebench", "SAEBench core metrics", intro + table(header, rows))
