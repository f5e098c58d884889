"""REPORT.md and report.json: every headline number of the paper beside this run's, read from the stage outputs, and
whether the paper's qualitative claim holds here under a written rule (METHOD's headline numbers)."""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch

from common.errors import UserError
from common.paper import text as paper_text
from common.paths import portable
from common.registry import stage_of
from common.reporting.rows import ROWS, Row
from common.reporting.rows_behavior import BEHAVIOR_ROWS
from common.reporting.rows_controls import CONTROL_ROWS
from common.stages.pipeline import BY_NAME, PIPELINE
from common.store.reads import load_json
from common.store.savers import atomic_save_json, atomic_save_text

# Each stage's output file, as reproduce.py and study.py run the stages; the main job's are all expected in a run.
STAGE_FILES = {name: f"{name}/{run.done_file}" for name, run in BY_NAME.items()}
MAIN_JOB = tuple(run.name for run in PIPELINE)


def format_value(value: Any, kind: str, pct_digits: int = 1) -> str:
    if value is None:  # a figure the stage could not compute (e.g. never-moved features without firing counts)
        return "—"
    if isinstance(value, bool) or kind == "bool":
        return "yes" if value else "no"
    if kind == "pct":
        return f"{100 * value:.{pct_digits}f}%"
    if kind == "int":
        return f"{int(value):,}"
    return f"{value:.4g}"


def lookup(outputs: dict[str, Any], source: str) -> Any:
    """``"stage:key.path"`` → the value in that stage's output file; a missing key is an error, never a blank."""
    stage, path = source.split(":", 1)
    value = outputs[stage]
    try:
        for key in path.split("."):
            value = value[int(key)] if isinstance(value, list) else value[key]
    except (KeyError, IndexError, ValueError, TypeError):
        raise UserError(f"the report reads {source}, which {STAGE_FILES[stage]} does not hold: it was written by an "
                        f"older version of the stage; delete {stage}/ and re-run to write it again") from None
    return value


def lookup_optional(outputs: dict[str, Any], source: str) -> Any:
    """``lookup``, or None where the stage's file does not hold the key (a directory written before the key existed,
    as the confidence intervals of issue-29 directories)."""
    try:
        return lookup(outputs, source) if source.split(":", 1)[0] in outputs else None
    except UserError:
        return None


def paper_figure(row: Row) -> str:
    """The paper's figure a row shows: its entry in common.paper, a literal in quotes, or "—"."""
    if row.paper.startswith('"'):
        return row.paper.strip('"')
    return paper_text(row.paper)


def section_of(row: Row) -> str:
    return row.section or stage_of(row.stage).section


def evaluate_rows(outputs: dict[str, Any]) -> list[dict[str, Any]]:
    """Each row's value (and its original evaluation's) read from the stage outputs, and its rule applied to it."""
    out = []
    for row in ROWS + BEHAVIOR_ROWS + CONTROL_ROWS:
        entry = {"section": section_of(row), "name": row.name, "paper": paper_figure(row), "source": row.source,
                 "value": lookup(outputs, row.source), "kind": row.kind, "rule": row.rule.text if row.rule else ""}
        if row.if_fails:
            entry["if_fails"] = row.if_fails
        if row.ci:
            entry["ci_source"], entry["ci"] = row.ci, lookup_optional(outputs, row.ci)
        if row.original:
            entry["original_source"] = original_source(row.source)
            entry["original_value"] = lookup(outputs, entry["original_source"])
            if row.ci:
                entry["original_ci"] = lookup_optional(outputs, original_source(row.ci))
        if row.rule:
            entry["holds"] = bool(row.rule.check(entry["value"], lambda source: lookup(outputs, source)))
            if row.original:
                read = (lambda source: lookup(outputs, original_source(source)))
                entry["holds_original"] = bool(row.rule.check(entry["original_value"], read))
        out.append(entry)
    return out


def original_source(source: str) -> str:
    """The same figure in the ``_original`` run of its stage, where reproduce.py ran one."""
    stage, path = source.split(":", 1)
    return f"{stage}_original:{path}" if f"{stage}_original" in STAGE_FILES else source


def _hardware() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, {gpu}; "
            f"torch {torch.__version__}")


def study_findings(study_file: Path | None, preset: str | None, base: Path | None = None) -> dict[str, Any] | None:
    """The findings of the study of this preset (study.py's study.json), or None where there is none; the file's
    path relative to the repository, or else to ``base`` (the run folder)."""
    if study_file is None or not Path(study_file).is_file():
        return None
    study = load_json(Path(study_file))
    if study.get("preset") != preset:
        return None
    return {"file": portable(study_file, base or Path.cwd()), "date": study.get("date"),
            "git_commit": study.get("git_commit"), "command": study.get("command"),
            "findings": {name: {"title": question["title"], "finding": question["finding"]}
                         for name, question in study["questions"].items()}}


def write_report(out_dir: Path, args: dict[str, Any], timings: dict[str, dict], study_file: Path | None = None) -> Path:
    """Read every stage's output file, evaluate the rows, write report.json and REPORT.md; returns REPORT.md's path.
    ``study_file``: a study.json of this preset, quoted in the "Why the numbers differ" section."""
    out_dir = Path(out_dir)
    outputs = {stage: load_json(out_dir / path) for stage, path in STAGE_FILES.items() if (out_dir / path).is_file()}
    missing = sorted(set(MAIN_JOB) - set(outputs))
    table = evaluate_rows(outputs) if not missing else []
    sae1 = load_json(out_dir / "sae1" / "config.json") if (out_dir / "sae1" / "config.json").is_file() else {}
    header = {
        "preset": args.get("preset"),
        "model_id": sae1.get("model_id"), "model_fingerprint": sae1.get("model_fingerprint"),
        "layer": sae1.get("layer"),
        "training_text": sae1.get("data", {}).get("text"),
        "evaluation_text": outputs.get("kl14", {}).get("evaluation", {}).get("text"),
        "stage1_rows": {k: sae1.get("data", {}).get(k) for k in ("train_rows", "val_rows")},
        "precision_regime": sae1.get("precision_regime"), "decode_path": sae1.get("decode_path"),
        "hardware": _hardware(),
        "stage_seconds": {name: round(t["seconds"], 1) for name, t in timings.items()},
        "stage_peak_memory_bytes": {name: _peak_memory(output) for name, output in outputs.items()},
        "missing_stages": missing,
        "study": study_findings(study_file, args.get("preset"), out_dir),
    }
    atomic_save_json({"header": header, "rows": table}, out_dir / "report.json")
    path = out_dir / "REPORT.md"
    atomic_save_text(_markdown(header, table, out_dir), path)
    return path


def _peak_memory(output: dict[str, Any]) -> int | None:
    """The stage's own record of its peak memory: CUDA's allocator peak where it ran on a GPU, else its peak RSS."""
    used = output.get("resources", {})
    return used.get("cuda_max_memory_allocated_bytes", used.get("peak_rss_bytes"))


def _bytes(value: int | None) -> str:
    return "—" if value is None else f"{value / 2**30:.2f} GB" if value >= 2**30 else f"{value / 2**20:.0f} MB"


def _header_lines(header: dict[str, Any]) -> list[str]:
    rows = header["stage1_rows"]
    described = {
        "preset": header["preset"],
        "model": f"{header['model_id']} ({header['model_fingerprint']})",
        "layer": header["layer"],
        "training text": header["training_text"],
        "evaluation text": header["evaluation_text"],
        "stage-1 rows": (f"{rows['train_rows']:,} training, {rows['val_rows']:,} held out"
                         if rows.get("train_rows") is not None else "—"),
        "precision regime": header["precision_regime"],
        "decode path": header["decode_path"],
        "hardware": header["hardware"],
        "stages missing": ", ".join(header["missing_stages"]) or "none",
    }
    lines = [f"- **{key}**: {value}" for key, value in described.items()]
    seconds, memory = header["stage_seconds"], header["stage_peak_memory_bytes"]
    lines += ["", "## Time and memory per stage", "",
              "Wall time as `reproduce.py` measured it (all attempts of a resumed stage); peak memory as the stage "
              "recorded it (CUDA's allocator peak on a GPU, else the process's peak resident set).", "",
              "| stage | wall time | peak memory |", "|---|---|---|"]
    lines += [f"| {name} | {value:.0f} s | {_bytes(memory.get(name))} |" for name, value in seconds.items()]
    lines.append(f"| all | {sum(seconds.values()) / 60:.1f} min | |")
    return lines


def _study_lines(study: dict[str, Any] | None, preset: str | None) -> list[str]:
    lines = ["## Why the numbers differ", ""]
    if study is None:
        return [*lines, f"Not studied: no study of the {preset} preset was given (`reproduce.py --study`, by default "
                        f"`docs/results/{preset}-study.json`; `study.py` writes one).", ""]
    lines += [f"From `{study['file']}` ({study['date']}, commit {study['git_commit']}; `{study['command']}`):", ""]
    lines += [f"- **{entry['title']}.** {entry['finding']}" for entry in study["findings"].values()]
    return [*lines, ""]


def _markdown(header: dict, table: list[dict], out_dir: Path) -> str:
    lines = ["# Reproduction report", "", *_study_lines(header.get("study"), header["preset"]),
             *_header_lines(header)]
    lines += ["", "Values are read from each stage's output file (`source`); fractions are shown as percents.",
              "\"this run\" evaluates every model as it was trained; "
              "\"original eval\" is `--original_eval` (METHOD §4).",
              "\"holds\" applies the written rule to this run's value "
              "(and to the original evaluation where there is one).",
              "\"CI\" is the value's confidence interval at the level its rule needs (95% where the row has no rule), "
              "\"—\" where the stage's files hold none; the original evaluation's follows its value in brackets.", ""]
    shown: set[str] = set()
    sections = list(dict.fromkeys(row["section"] for row in table))
    for section in sections:
        lines += ["", f"## {section}", "",
                  "| figure | paper | this run | CI | original eval | rule | holds | source |",
                  "|---|---|---|---|---|---|---|---|"]
        stages = []
        for row in (row for row in table if row["section"] == section):
            stages += [row[key].split(":")[0] for key in ("source", "original_source") if key in row]
            lines.append(_markdown_row(row))
        failing = [row for row in table if row["section"] == section and row.get("if_fails")]
        if failing:
            lines += ["", "What a failing control would mean:", "",
                      *[f"- **{row['name']}**: {row['if_fails']}." for row in failing]]
        lines += _figures(out_dir, [stage for stage in dict.fromkeys(stages) if stage not in shown])
        shown.update(stages)
    rest = [folder.name for folder in sorted(out_dir.iterdir()) if folder.is_dir() and folder.name not in shown]
    figures = _figures(out_dir, rest)
    if figures:
        lines += ["", "## Other figures", *figures]
    return "\n".join(lines) + "\n"


def _markdown_row(row: dict[str, Any]) -> str:
    kind = row["kind"]
    original = format_value(row["original_value"], kind) if "original_value" in row else ""
    if row.get("original_ci"):
        original += f" {format_ci(row['original_ci'], kind)}"
    ci = format_ci(row["ci"], kind, level=True) if row.get("ci") else ("—" if "ci_source" in row else "")
    holds = "" if "holds" not in row else ("yes" if row["holds"] else "**no**")
    if "holds_original" in row:
        holds += f" / {'yes' if row['holds_original'] else '**no**'}"
    return (f"| {table_cell(row['name'])} | {table_cell(row['paper'])} | {format_value(row['value'], kind)} "
            f"| {ci} | {original} | {table_cell(row['rule'])} | {holds} | `{row['source']}` |")


def table_cell(text: str) -> str:
    """Text in a Markdown table cell: a "|" of its own (|cosine|, |output|) would end the cell."""
    return text.replace("|", "\\|")


def format_ci(ci: dict[str, Any], kind: str, level: bool = False) -> str:
    """``[low, high]``, with its level (``95%``) where asked."""
    text = f"[{format_value(ci['low'], kind)}, {format_value(ci['high'], kind)}]"
    return f"{text} {100 * ci['level']:.0f}%" if level else text


def _figures(out_dir: Path, stages: list[str]) -> list[str]:
    """The PNGs the given stages wrote, each under the section whose numbers it draws."""
    pngs = [png for stage in stages for png in sorted((out_dir / stage).glob("*.png"))]
    if not pngs:
        return []
    return ["", *[f"![{png.parent.name}/{png.name}]({png.relative_to(out_dir).as_posix()})" for png in pngs]]
