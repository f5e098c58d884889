"""STUDY.md and study.json (METHOD §11): one table per question, every number read back from a stage's output file
and shown with the command that wrote it, and one sentence per question of what the numbers say."""
from __future__ import annotations

import datetime
import math
import shlex
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.analysis.decoders import NEAR_INIT_TOLERANCE, load_decoder
from common.analysis.geometry import squared_norms
from common.config.stages import OrthoConfig
from common.errors import UserError
from common.reporting.report import STAGE_FILES, format_value, lookup, paper_figure, section_of
from common.reporting.rows import ROWS, Row
from common.reporting.study_plan import SEED_STAGES, seed_variants, variant_dir
from common.stages.run_records import RUN_RECORDS
from common.stats import bimodality, dip_test, valley
from common.store.reads import load_json
from common.store.savers import atomic_save_json, atomic_save_text
from common.store.stage_files import CONFIG_FILE

STUDY_FILE, STUDY_MD = "study.json", "STUDY.md"
REPORT_VERDICT = "the mixture rule (REPORT.md's 'Squared norms (part16)' rows)"


@dataclass(frozen=True)
class Column:
    label: str
    variant: str
    rename: tuple[tuple[str, str], ...] = ()  # (stage, stage it reads instead): e.g. kl14 → kl14_original


@dataclass(frozen=True)
class Figure:
    name: str
    paper: str
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
        record = self.folder(variant) / RUN_RECORDS / f"{stage}.json"
        if not record.is_file():
            return None
        written = load_json(record)
        return shlex.join(["python", written["script"], *written["argv"]])

    def value(self, variant: str, source: str) -> Any:
        """The value at ``stage:key.path`` in the variant's output, or None where that stage has not run."""
        if source.split(":", 1)[0] not in self.outputs(variant):
            return None
        return lookup(self.outputs(variant), source)

    def stage_config(self, variant: str, stage: str) -> dict[str, Any]:
        path = self.folder(variant) / stage / CONFIG_FILE
        return load_json(path)["config"] if path.is_file() else {}


def _renamed(source: str, column: Column) -> str:
    stage, key = source.split(":", 1)
    return f"{dict(column.rename).get(stage, stage)}:{key}"


def table(runs: Runs, columns: list[Column], figures: list[Figure]) -> dict[str, Any]:
    """Each figure in each column, with the variant folder's source and the command of the stage that wrote it."""
    out = []
    for figure in figures:
        cells = []
        for column in columns:
            source = _renamed(figure.source, column)
            stage = source.split(":", 1)[0]
            cells.append({"column": column.label, "variant": column.variant, "source": f"{column.variant}/{source}",
                          "value": runs.value(column.variant, source), "command": runs.command(column.variant, stage)})
        out.append({"name": figure.name, "paper": figure.paper, "kind": figure.kind, "cells": cells})
    return {"columns": [column.label for column in columns], "rows": out}


def _cell(section: dict[str, Any], name: str, column: int) -> Any:
    return next(row for row in section["rows"] if row["name"] == name)["cells"][column]["value"]


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _closer(value: float | None, reference: float | None, paper: float) -> str:
    if value is None or reference is None:
        return "not comparable"
    return "closer to" if abs(value - paper) < abs(reference - paper) else "no closer to"


# ---- the questions -----------------------------------------------------------------------------------------------

STAGE1 = [Figure("stage 1 variance explained", "86.4%", "sae1:variance_explained"),
          Figure("stage 1 dead features", "0%", "sae1:dead_fraction")]
NEAR_INIT = [Figure(f"{sae} features within {NEAR_INIT_TOLERANCE:.0%} of their initial squared norm", "—",
                    f"ortho:saes.{sae}.moved_from_init.near_init_fraction") for sae in ("standalone", "joint")]
VERDICTS = [Figure("standalone SAE bimodal (mixture rule)", "no", "ortho:saes.standalone.bimodality.bimodal", "bool"),
            Figure("joint SAE bimodal (mixture rule)", "yes", "ortho:saes.joint.bimodality.bimodal", "bool")]


def regime(runs: Runs) -> dict[str, Any]:
    section = table(runs, [Column("fp32 (main run)", "main"), Column("faithful-fp16", "fp16")], [
        *STAGE1,
        Figure("stage 2 residual error reduction, validation", "23.43%", "nfm:error_reduction_val"),
        Figure("stage 2 residual error reduction, train", "23.18%", "nfm:error_reduction_train"),
        Figure("stage 5 improvement over its own SAE path", "41.3%", "joint:improvement"),
        *VERDICTS, *NEAR_INIT])
    seq32, seq16 = (_cell(section, "stage 2 residual error reduction, validation", i) for i in (0, 1))
    joint32, joint16 = (_cell(section, "stage 5 improvement over its own SAE path", i) for i in (0, 1))
    bimodal32, bimodal16 = (_cell(section, "joint SAE bimodal (mixture rule)", i) for i in (0, 1))
    section["finding"] = (
        "not run" if seq16 is None else
        f"In the fp16 regime the sequential reduction is {_pct(seq16)} (fp32 {_pct(seq32)}, paper 23.4%: "
        f"{_closer(seq16, seq32, 0.2343)} the paper) and the joint improvement {_pct(joint16)} (fp32 {_pct(joint32)}, "
        f"paper 41.3%: {_closer(joint16, joint32, 0.413)} the paper); the joint SAE's squared norms are "
        f"{'bimodal' if bimodal32 else 'not bimodal'} in fp32 and {'bimodal' if bimodal16 else 'not bimodal'} "
        "in fp16 by the mixture rule.")
    return section


def inference_k(runs: Runs) -> dict[str, Any]:
    main, trained = runs.stage_config("main", "nfm"), runs.stage_config("trained_k", "nfm")
    label = "K {sae_k}, top-N {top_n_features}"
    section = table(runs, [Column(f"paper's recipe: {label.format(**main)}" if main else "main", "main"),
                           Column(f"trained K: {label.format(**trained)}" if trained else "trained K", "trained_k")], [
        Figure("residual MSE before the NFM (the SAE's error), validation", "0.3672", "nfm:residual_mse_before_val",
               "num"),
        Figure("residual MSE after the NFM, validation", "0.2811", "nfm:residual_mse_after_val", "num"),
        Figure("residual error reduction, validation", "23.43%", "nfm:error_reduction_val"),
        Figure("residual error reduction, train", "23.18%", "nfm:error_reduction_train"),
        Figure("linear share of mean |output|", "95.5%", "nfm:linear_share"),
        Figure("interaction share of mean |output|", "4.5%", "nfm:interaction_share")])
    before, before_k = (_cell(section, "residual MSE before the NFM (the SAE's error), validation", i) for i in (0, 1))
    after = _cell(section, "residual MSE after the NFM, validation", 0)
    restored = None if before_k is None else (before - before_k) / (before - after)
    section["derived"] = {"restored_share": restored, "rule": "(MSE before at the recipe's K - MSE before at the "
                          "trained K) / (MSE before - MSE after at the recipe's K): the share of the NFM's gain that "
                          "the SAE alone recovers by keeping the codes the truncated K drops"}
    section["finding"] = (
        "not run" if restored is None else
        f"Keeping all trained-K codes lowers the SAE's own error from {before:.4f} to {before_k:.4f}, which is "
        f"{_pct(restored)} of what the NFM gains at the recipe's K ({before:.4f} → {after:.4f}); on top of the full "
        f"codes the NFM then cuts the error by {_pct(_cell(section, 'residual error reduction, validation', 1))} "
        "(paper 23.4%).")
    return section


def pathology(runs: Runs) -> dict[str, Any]:
    main_k = runs.stage_config("main", "nfm").get("sae_k")
    trained_k = runs.stage_config("trained_k", "nfm").get("sae_k")
    columns = [Column(f"as trained, the recipe's K {main_k}", "main"),
               Column(f"the SAE's trained K {trained_k}", "trained_k"),
               Column("original evaluation (raw input)", "main", (("kl14", "kl14_original"),))]
    paired = "kl14:conditions.sae.tests.kl_vs_eps_random.paired"
    section = table(runs, columns, [
        Figure("SAE KL / ε-random KL", "2.99x", "kl14:conditions.sae.kl_ratio_eps_random", "num"),
        Figure("paired t, SAE KL − ε-random KL", "—", f"{paired}.t", "num"),
        Figure("paired p", "—", f"{paired}.p", "num"),
        Figure("SAE + NFM KL / ε-random KL", "2.1x", "kl14:conditions.sae_nfm.kl_ratio_eps_random", "num")])
    ratios = [cell["value"] for cell in section["rows"][0]["cells"]]
    t_values = [cell["value"] for cell in section["rows"][1]["cells"]]
    p_values = [cell["value"] for cell in section["rows"][2]["cells"]]
    section["holds"] = [None if t is None else bool(t > 0 and p < 0.01) for t, p in zip(t_values, p_values)]
    section["rule"] = "SAE above ε-random: paired t > 0 with p < 0.01"
    section["finding"] = (
        "not run" if ratios[1] is None else
        f"Evaluated as trained at its own K ({trained_k}), the SAE's KL is {ratios[1]:.3g}x that of an ε-random error "
        f"of the same norm ({'above' if section['holds'][1] else 'not above'} ε-random by the paired test), against "
        f"{ratios[0]:.3g}x at the recipe's K {main_k} and {ratios[2]:.3g}x under the original's raw-input "
        "evaluation: the > 1 pathology " + ("appears only" if not section["holds"][1] and section["holds"][2]
                                            else "does not depend only") + " on the original's mismatched evaluation.")
    return section


def length(runs: Runs) -> dict[str, Any]:
    configs = [runs.stage_config(variant, "sae1") for variant in ("main", "long")]
    steps = [config.get("stop_at_step") or config.get("train_steps") for config in configs]
    section = table(runs, [Column(f"main run ({steps[0]} stage-1 steps)", "main"),
                           Column(f"3x ({steps[1]} stage-1 steps, 3x stage-5 epochs)", "long")], [
        *STAGE1, Figure("stage 5 improvement over its own SAE path", "41.3%", "joint:improvement"),
        *VERDICTS, *NEAR_INIT])
    dead, dead_long = (_cell(section, "stage 1 dead features", i) for i in (0, 1))
    spike, spike_long = (section["rows"][-2]["cells"][i]["value"] for i in (0, 1))
    verdicts = [_cell(section, "standalone SAE bimodal (mixture rule)", i) for i in (0, 1)]
    section["finding"] = (
        "not run" if dead_long is None else
        f"Three times the training moves the dead fraction from {_pct(dead)} to {_pct(dead_long)} (paper 0%) and the "
        f"standalone features still near their initial norm from {_pct(spike)} to {_pct(spike_long)}; the standalone "
        f"SAE is {'bimodal' if verdicts[0] else 'unimodal'} → {'bimodal' if verdicts[1] else 'unimodal'} by the "
        "mixture rule (paper: unimodal).")
    return section


def _holds(row: Row, outputs: dict[str, Any]) -> bool | None:
    if row.rule is None:
        return None
    try:
        return bool(row.rule.check(lookup(outputs, row.source), lambda source: lookup(outputs, source)))
    except (KeyError, TypeError, UserError):  # the rule reads a stage the seeds do not run
        return None


def seeds(runs: Runs) -> dict[str, Any]:
    variants = ["main", *seed_variants(runs.study_dir)]
    done = [v for v in variants if all(stage in runs.outputs(v) for stage in SEED_STAGES)]
    out = []
    for row in ROWS:
        if row.source.split(":", 1)[0] not in SEED_STAGES or not done:
            continue
        values = [lookup(runs.outputs(v), row.source) for v in done]
        holds = [_holds(row, runs.outputs(v)) for v in done]
        numeric = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        out.append({"name": f"{section_of(row)}: {row.name}", "paper": paper_figure(row), "kind": row.kind, "source": row.source,
                    "values": values, "mean": statistics.fmean(numeric) if len(numeric) == len(values) else None,
                    "sd": statistics.stdev(numeric) if len(numeric) == len(values) > 1 else None,
                    "rule": row.rule.text if row.rule else "", "holds": holds,
                    "holds_count": None if row.rule is None else sum(bool(h) for h in holds)})
    commands = {v: {stage: runs.command(v, stage) for stage in SEED_STAGES} for v in done}
    seeds_of = {v: (0 if v == "main" else int(v.removeprefix("seed"))) for v in done}
    claims = [r for r in out if r["holds_count"] is not None]
    stable = [r for r in claims if r["holds_count"] in (0, len(done))]
    finding = ("not run" if len(done) < 2 else
               f"Over {len(done)} seeds, {len(stable)} of {len(claims)} claims come out the same on every seed; "
               + "; ".join(f"{r['name']} holds on {r['holds_count']}/{len(done)}" for r in claims
                           if r not in stable) + ("" if len(stable) < len(claims) else "none flips") + ".")
    return {"seeds": [seeds_of[v] for v in done], "variants": done, "rows": out, "commands": commands,
            "finding": finding}


# ---- bimodality -----------------------------------------------------------------------------------------------------


def initial_decoder(folder: Path) -> torch.Tensor:
    """The decoder the stage started from, re-created as its runner made it: the run's seed, then the model built
    from its recorded shape (every parameter drawn in the same order)."""
    from common.models.joint import JointSAENFM
    from common.models.sae import TopKSAE

    config = load_json(folder / CONFIG_FILE)
    classes = {cls.__name__: cls for cls in (TopKSAE, JointSAENFM)}
    record = config["model"]
    cls = classes[record["class"]]
    torch.manual_seed(config["config"]["seed"])
    model = cls.from_shape(cls.shape_from_record(record))
    return (model.sae if isinstance(model, JointSAENFM) else model).W_dec.detach().float()


def norm_statistics(norms: np.ndarray, seed: int) -> dict[str, Any]:
    mixture = bimodality(norms, seed)
    return {"n": int(norms.size), "mixture": {key: mixture[key] for key in ("bimodal", "delta_bic", "ashman_d",
                                                                              "two_component")},
            "dip": dip_test(norms), "valley": valley(norms, mixture["two_component"]["means"])}


def decoder_bimodality(folder: Path, seed: int) -> dict[str, Any]:
    """The squared decoder norms by the mixture rule, the dip test and the valley check; the same for the initial
    decoder, and for the features whose squared norm moved more than the near-init tolerance from their own start."""
    threshold = OrthoConfig().threshold
    trained = squared_norms(load_decoder(folder, "--sae1_model_path", folder.name).W_dec).numpy()
    initial = squared_norms(initial_decoder(folder)).numpy()
    kept = trained > threshold
    moved = kept & (np.abs(trained - initial) > NEAR_INIT_TOLERANCE * initial)
    kept_stats = norm_statistics(trained[kept], seed)
    agree = (kept_stats["mixture"]["bimodal"] and kept_stats["dip"]["bimodal"]
             and kept_stats["valley"]["valley"])
    return {"trained": kept_stats, "initial": norm_statistics(initial, seed),
            "moved": norm_statistics(trained[moved], seed) if moved.sum() > 3 else {"n": int(moved.sum())},
            "moved_fraction": float(moved.sum() / kept.sum()),
            "verdict": bool(agree)}


def _verdicts(entry: dict[str, Any]) -> str:
    trained, moved = entry["trained"], entry["moved"]
    on_moved = "too few moved features" if "mixture" not in moved else (
        f"{'bimodal' if moved['mixture']['bimodal'] else 'not bimodal'} by the mixture rule on its "
        f"{_pct(entry['moved_fraction'])} moved features (dip p = {moved['dip']['p']:.3g})")
    return (f"is {'bimodal' if trained['mixture']['bimodal'] else 'not bimodal'} by the mixture rule, dip p = "
            f"{trained['dip']['p']:.3g}, {'a' if trained['valley']['valley'] else 'no'} valley between the modes, "
            f"{on_moved}")


def bimodality_section(runs: Runs) -> dict[str, Any]:
    entries = []
    for variant in ("main", "fp16", "long", *seed_variants(runs.study_dir)):
        for stage, name in (("sae1", "standalone"), ("joint", "joint")):
            if not (runs.folder(variant) / STAGE_FILES[stage]).is_file():
                continue
            result = decoder_bimodality(runs.folder(variant) / stage, 0)
            entries.append({"variant": variant, "sae": name, "folder": f"{variant}/{stage}", **result})
    main = {e["sae"]: e for e in entries if e["variant"] == "main"}
    finding = "not run" if len(main) < 2 else (
        f"Main run: the standalone SAE {_verdicts(main['standalone'])}; the joint SAE {_verdicts(main['joint'])}. "
        f"The report uses {REPORT_VERDICT}; the study calls a decoder bimodal only where the mixture rule, the dip "
        "test and the valley agree.")
    return {"entries": entries, "report_uses": REPORT_VERDICT,
            "study_verdict": "bimodal where the mixture rule, the dip test (p < 0.05) and the valley check all agree",
            "finding": finding}


SECTIONS: dict[str, tuple[str, Callable[[Runs], dict[str, Any]]]] = {
    "regime": ("Numerical regime: the original's fp16 against fp32", regime),
    "k": ("Inference K: stage 2 at the SAE's trained K", inference_k),
    "pathology": ("Pathology at the SAE's own K", pathology),
    "length": ("Training length: stages 1 and 5 at 3x", length),
    "seeds": ("Seeds: the chain 1 → 2 → 5 → 14 → 16 → 17 → 18 under each seed", seeds),
    "bimodality": ("Bimodality done right", bimodality_section),
}


def write_study(study_dir: Path, main_dir: Path, preset: str, command: str, commit: str | None) -> Path:
    """Every question's section from whatever runs exist; study.json and STUDY.md in ``study_dir``."""
    runs = Runs(study_dir, main_dir)
    if "sae1" not in runs.outputs("main"):
        raise UserError(f"{main_dir}: no finished stage 1 there: the study compares against a main run")
    study = {"preset": preset, "date": datetime.date.today().isoformat(), "git_commit": commit, "command": command,
             "main_run": str(main_dir), "study_dir": str(study_dir),
             "questions": {name: {"title": title, **build(runs)} for name, (title, build) in SECTIONS.items()}}
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
