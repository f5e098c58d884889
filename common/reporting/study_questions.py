"""The study's questions (METHOD §11), one table each: what each runs, how its section is built from the runs, and the
sentence that says what its numbers show."""
from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from common.analysis.decoders import NEAR_INIT_TOLERANCE
from common.errors import UserError
from common.paper import text as paper_text
from common.paper import value as paper_value
from common.reporting.report import lookup, paper_figure, section_of
from common.reporting.rows import ROWS, Row
from common.reporting.study_bimodality import bimodality_section
from common.reporting.study_controls import control_runs, controls
from common.reporting.study_plan import (
    SEED_STAGES,
    SEEDS,
    Run,
    length_runs,
    no_runs,
    pathology_runs,
    regime_runs,
    seed_runs,
    seed_variants,
    trained_k_runs,
)
from common.reporting.study_tables import Column, Figure, Runs, cell, closer, pct, table

STAGE1 = [Figure("stage 1 variance explained", "sae1.variance_explained", "sae1:variance_explained"),
          Figure("stage 1 dead features", "sae1.dead_fraction", "sae1:dead_fraction")]
NEAR_INIT = [Figure(f"{sae} features within {NEAR_INIT_TOLERANCE:.0%} of their initial squared norm", "",
                    f"ortho:saes.{sae}.moved_from_init.near_init_fraction") for sae in ("standalone", "joint")]
VERDICTS = [Figure("standalone SAE bimodal (mixture rule)", "ortho.standalone_bimodal",
                   "ortho:saes.standalone.bimodality.bimodal", "bool"),
            Figure("joint SAE bimodal (mixture rule)", "ortho.joint_bimodal", "ortho:saes.joint.bimodality.bimodal",
                   "bool")]


def regime(runs: Runs) -> dict[str, Any]:
    section = table(runs, [Column("fp32 (main run)", "main"), Column("faithful-fp16", "fp16")], [
        *STAGE1,
        Figure("stage 2 residual error reduction, validation", "nfm.error_reduction_val", "nfm:error_reduction_val"),
        Figure("stage 2 residual error reduction, train", "nfm.error_reduction_train", "nfm:error_reduction_train"),
        Figure("stage 5 improvement over its own SAE path", "joint.improvement", "joint:improvement"),
        *VERDICTS, *NEAR_INIT])
    seq32, seq16 = (cell(section, "stage 2 residual error reduction, validation", i) for i in (0, 1))
    joint32, joint16 = (cell(section, "stage 5 improvement over its own SAE path", i) for i in (0, 1))
    bimodal32, bimodal16 = (cell(section, "joint SAE bimodal (mixture rule)", i) for i in (0, 1))
    section["finding"] = (
        "not run" if seq16 is None else
        f"In the fp16 regime the sequential reduction is {pct(seq16)} (fp32 {pct(seq32)}, paper "
        f"{paper_text('nfm.error_reduction_val')}: {closer(seq16, seq32, paper_value('nfm.error_reduction_val'))} the "
        f"paper) and the joint improvement {pct(joint16)} (fp32 {pct(joint32)}, paper "
        f"{paper_text('joint.improvement')}: "
        f"{closer(joint16, joint32, paper_value('joint.improvement'))} the paper); the joint SAE's squared norms are "
        f"{'bimodal' if bimodal32 else 'not bimodal'} in fp32 and {'bimodal' if bimodal16 else 'not bimodal'} "
        "in fp16 by the mixture rule.")
    return section


def inference_k(runs: Runs) -> dict[str, Any]:
    main, trained = runs.stage_config("main", "nfm"), runs.stage_config("trained_k", "nfm")
    label = "K {sae_k}, top-N {top_n_features}"
    section = table(runs, [Column(f"paper's recipe: {label.format(**main)}" if main else "main", "main"),
                           Column(f"trained K: {label.format(**trained)}" if trained else "trained K", "trained_k")], [
        Figure("residual MSE before the NFM (the SAE's error), validation", "nfm.residual_mse_before_val",
               "nfm:residual_mse_before_val", "num"),
        Figure("residual MSE after the NFM, validation", "nfm.residual_mse_after_val", "nfm:residual_mse_after_val",
               "num"),
        Figure("residual error reduction, validation", "nfm.error_reduction_val", "nfm:error_reduction_val"),
        Figure("residual error reduction, train", "nfm.error_reduction_train", "nfm:error_reduction_train"),
        Figure("linear share of mean |output|", "nfm.linear_share", "nfm:linear_share"),
        Figure("interaction share of mean |output|", "nfm.interaction_share", "nfm:interaction_share")])
    before, before_k = (cell(section, "residual MSE before the NFM (the SAE's error), validation", i) for i in (0, 1))
    after = cell(section, "residual MSE after the NFM, validation", 0)
    restored = None if before_k is None else (before - before_k) / (before - after)
    section["derived"] = {"restored_share": restored, "rule": "(MSE before at the recipe's K - MSE before at the "
                          "trained K) / (MSE before - MSE after at the recipe's K): the share of the NFM's gain that "
                          "the SAE alone recovers by keeping the codes the truncated K drops"}
    section["finding"] = (
        "not run" if restored is None else
        f"Keeping all trained-K codes lowers the SAE's own error from {before:.4f} to {before_k:.4f}, which is "
        f"{pct(restored)} of what the NFM gains at the recipe's K ({before:.4f} → {after:.4f}); on top of the full "
        f"codes the NFM then cuts the error by {pct(cell(section, 'residual error reduction, validation', 1))} "
        f"(paper {paper_text('nfm.error_reduction_val')}).")
    return section


def pathology(runs: Runs) -> dict[str, Any]:
    main_k = runs.stage_config("main", "nfm").get("sae_k")
    trained_k = runs.stage_config("trained_k", "nfm").get("sae_k")
    columns = [Column(f"as trained, the recipe's K {main_k}", "main"),
               Column(f"the SAE's trained K {trained_k}", "trained_k"),
               Column("original evaluation (raw input)", "main", (("kl14", "kl14_original"),))]
    paired = "kl14:conditions.sae.tests.kl_vs_eps_random.paired"
    section = table(runs, columns, [
        Figure("SAE KL / ε-random KL", "kl14.sae_ratio", "kl14:conditions.sae.kl_ratio_eps_random", "num"),
        Figure("paired t, SAE KL − ε-random KL", "", f"{paired}.t", "num"),
        Figure("paired p", "", f"{paired}.p", "num"),
        Figure("SAE + NFM KL / ε-random KL", "kl14.sae_nfm_ratio", "kl14:conditions.sae_nfm.kl_ratio_eps_random",
               "num")])
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
        *STAGE1, Figure("stage 5 improvement over its own SAE path", "joint.improvement", "joint:improvement"),
        *VERDICTS, *NEAR_INIT])
    dead, dead_long = (cell(section, "stage 1 dead features", i) for i in (0, 1))
    spike, spike_long = (section["rows"][-2]["cells"][i]["value"] for i in (0, 1))
    verdicts = [cell(section, "standalone SAE bimodal (mixture rule)", i) for i in (0, 1)]
    section["finding"] = (
        "not run" if dead_long is None else
        f"Three times the training moves the dead fraction from {pct(dead)} to {pct(dead_long)} "
        f"(paper {paper_text('sae1.dead_fraction')}) and the "
        f"standalone features still near their initial norm from {pct(spike)} to {pct(spike_long)}; the standalone "
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
        out.append({"name": f"{section_of(row)}: {row.name}", "paper": paper_figure(row), "kind": row.kind,
                    "source": row.source,
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



@dataclass(frozen=True)
class Question:
    title: str
    runs: Callable[[str, tuple[int, ...]], list[Run]]  # (preset, seeds) → the runs it needs besides the main run
    build: Callable[[Runs], dict[str, Any]]  # its section, from whatever runs exist


QUESTIONS: dict[str, Question] = {
    "regime": Question("Numerical regime: the original's fp16 against fp32", regime_runs, regime),
    "k": Question("Inference K: stage 2 at the SAE's trained K", trained_k_runs, inference_k),
    "pathology": Question("Pathology at the SAE's own K", pathology_runs, pathology),
    "length": Question("Training length: stages 1 and 5 at 3x", length_runs, length),
    "seeds": Question("Seeds: the chain 1 → 2 → 5 → 14 → 16 → 17 → 18 under each seed", seed_runs, seeds),
    "bimodality": Question("Bimodality done right", no_runs, bimodality_section),
    "controls": Question("Controls: can the claim fail?", control_runs, controls),
}


def parse_questions(text: str) -> list[str]:
    chosen = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in QUESTIONS]
    if unknown or not chosen:
        raise UserError(f"--questions: unknown {', '.join(unknown) or '(none given)'} "
                        f"(choose from {','.join(QUESTIONS)})")
    return chosen


def question_runs(question: str, preset: str, seeds: tuple[int, ...] = SEEDS) -> list[Run]:
    return QUESTIONS[question].runs(preset, seeds)
