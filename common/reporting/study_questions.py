"""The study's questions (METHOD §11), one table each: what each runs, how its section is built from the runs, and the
sentence that says what its numbers show. A finding quotes its numbers only as its own table shows them (``quote``);
a test holds every number of every finding to its table."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from common.errors import UserError
from common.paper import text as paper_text
from common.reporting.rows import ROWS
from common.reporting.study_bimodality import VERDICTS, bimodality_section
from common.reporting.study_controls import control_runs, controls
from common.reporting.study_plan import (
    SEEDS,
    Run,
    bimodality_runs,
    length_runs,
    pathology_runs,
    regime_runs,
    seed_runs,
    trained_k_runs,
)
from common.reporting.study_regime import STAGE1, regime
from common.reporting.study_seeds import seeds
from common.reporting.study_tables import Column, Figure, Runs, cell, derived_row, quote, rule_row, table

NOT_RUN = "not run"


def inference_k(runs: Runs) -> dict[str, Any]:
    main, trained = runs.stage_config("main", "nfm"), runs.stage_config("trained_k", "nfm")
    label = "K {sae_k}, top-N {top_n_features}"
    before = "residual MSE before the NFM (the SAE's error), validation"
    after = "residual MSE after the NFM, validation"
    section = table(runs, [Column(f"paper's recipe: {label.format(**main)}" if main else "main", "main"),
                           Column(f"trained K: {label.format(**trained)}" if trained else "trained K", "trained_k")], [
        Figure(before, "nfm.residual_mse_before_val", "nfm:residual_mse_before_val", "num"),
        Figure(after, "nfm.residual_mse_after_val", "nfm:residual_mse_after_val", "num"),
        Figure("residual error reduction, validation", "nfm.error_reduction_val", "nfm:error_reduction_val"),
        Figure("residual error reduction, train", "nfm.error_reduction_train", "nfm:error_reduction_train"),
        Figure("linear share of mean |output|", "nfm.linear_share", "nfm:linear_share"),
        Figure("interaction share of mean |output|", "nfm.interaction_share", "nfm:interaction_share")])
    mse_before, mse_before_k, mse_after = cell(section, before, 0), cell(section, before, 1), cell(section, after, 0)
    restored = None if None in (mse_before, mse_before_k, mse_after) else (
        (mse_before - mse_before_k) / (mse_before - mse_after))
    section["rows"].append(derived_row("share of the NFM's gain the SAE recovers with all its trained-K codes", "pct",
                                       section["columns"], [restored, None]))
    section["derived"] = {"restored_share": restored, "rule": "(MSE before at the recipe's K - MSE before at the "
                          "trained K) / (MSE before - MSE after at the recipe's K): the share of the NFM's gain that "
                          "the SAE alone recovers by keeping the codes the truncated K drops"}
    section["finding"] = NOT_RUN if restored is None else (
        f"Keeping all trained-K codes lowers the SAE's own error from {quote(section, before, 0)} to "
        f"{quote(section, before, 1)}, which is {quote(section, section['rows'][-1]['name'], 0)} of what the NFM "
        f"gains at the recipe's K ({quote(section, before, 0)} → {quote(section, after, 0)}); on top of the full "
        f"codes the NFM then cuts the error by {quote(section, 'residual error reduction, validation', 1)} "
        f"(paper {paper_text('nfm.error_reduction_val')}).")
    return section


SAE_RATIO = "kl14:conditions.sae.kl_ratio_eps_random"
JOINT_RATIO = "kl18:conditions.joint_sae.kl_ratio_eps_random"
ABOVE = "above ε-random (REPORT.md's rule)"


def _report_row(source: str) -> Any:
    return next(row for row in ROWS if row.source == source)


def pathology(runs: Runs) -> dict[str, Any]:
    """The SAE's KL against ε-random of its own error norm, as trained (at the recipe's K and its trained K) and
    under the original's evaluation, for the stage-1 SAE and the joint model's SAE part."""
    main_k = runs.stage_config("main", "nfm").get("sae_k")
    trained_k = runs.stage_config("trained_k", "nfm").get("sae_k")
    columns = [Column(f"as trained, the recipe's K {main_k}", "main"),
               Column(f"as trained, the SAE's trained K {trained_k}", "trained_k"),
               Column("original evaluation (raw input)", "main", (("kl14", "kl14_original"),
                                                                   ("kl18", "kl18_original")))]
    section = table(runs, columns, [
        Figure("stage-1 SAE KL / ε-random KL", "kl14.sae_ratio", SAE_RATIO, "num"),
        Figure("SAE + NFM KL / ε-random KL", "kl14.sae_nfm_ratio", "kl14:conditions.sae_nfm.kl_ratio_eps_random",
               "num"),
        Figure("joint SAE part KL / ε-random KL", "", JOINT_RATIO, "num")])
    section["rows"].insert(1, rule_row(runs, columns, _report_row(SAE_RATIO), f"stage-1 SAE {ABOVE}"))
    section["rows"].append(rule_row(runs, columns, _report_row(JOINT_RATIO), f"joint SAE part {ABOVE}"))
    section["rule"] = _report_row(SAE_RATIO).rule.text
    section["finding"] = _pathology_finding(section)
    return section


def _pathology_finding(section: dict[str, Any]) -> str:
    """Which SAEs are above ε-random, as trained and under the original's evaluation, and what that says of the
    claim that the > 1 pathology comes from the original's evaluation; an SAE whose run is missing is named so."""
    def case(text: str, name: str, column: int) -> tuple[str, bool | None, str]:
        return text, cell(section, f"{name} {ABOVE}", column), quote(section, f"{name} KL / ε-random KL", column)

    trained = [case("the stage-1 SAE at the recipe's K", "stage-1 SAE", 0),
               case("the stage-1 SAE at its trained K", "stage-1 SAE", 1),
               case("the joint SAE part", "joint SAE part", 0)]
    original = [case("the stage-1 SAE", "stage-1 SAE", 2), case("the joint SAE part", "joint SAE part", 2)]
    if trained[0][1] is None or original[0][1] is None:
        return NOT_RUN

    def listed(cases: list, wanted: bool) -> str:
        return ", ".join(f"{text} ({ratio}x)" for text, holds, ratio in cases if holds is wanted) or "none"

    def split(cases: list) -> str:
        """"for A, and not for B", each side left out where it names no SAE."""
        sides = [f"{'' if wanted else 'not '}for {listed(cases, wanted)}" for wanted in (True, False)
                 if any(holds is wanted for _, holds, _ in cases)]
        return ", and ".join(sides) or "for no SAE tested"

    above_trained, above_original = [c for c in trained if c[1]], [c for c in original if c[1]]
    missing = ", ".join(dict.fromkeys(text for text, holds, _ in trained + original if holds is None))
    verdict = ("appears as trained too, not only on the original's mismatched evaluation" if above_trained else
               "appears only on the original's mismatched evaluation among the SAEs tested" if above_original else
               "appears in neither evaluation")
    return (f"Evaluated as trained, an SAE's KL is above that of an ε-random error of its own norm (REPORT.md's "
            f"rule) {split(trained)}; under the original's evaluation {split(original)}"
            + (f" (not run: {missing})" if missing else "") + f". The > 1 pathology {verdict}.")


def length(runs: Runs) -> dict[str, Any]:
    configs = [runs.stage_config(variant, "sae1") for variant in ("main", "long")]
    steps = [config.get("stop_at_step") or config.get("train_steps") for config in configs]
    sae2_steps = [runs.stage_config(variant, "sae2").get("train_steps") for variant in ("main", "long_sae2")]
    section = table(runs, [Column(f"main run ({steps[0]} stage-1 steps, {sae2_steps[0]} stage-3)", "main"),
                           Column(f"3x ({steps[1]} stage-1 steps, {sae2_steps[1]} stage-3, 3x stage-5 epochs)", "long",
                                  elsewhere=(("sae2", "long_sae2"),))], [
        *STAGE1,
        Figure("stage 3 variance explained", "", "sae2:variance_explained"),
        Figure("stage 3 dead features", "", "sae2:dead_fraction"),
        Figure("stage 5 improvement over its own SAE path", "joint.improvement", "joint:improvement"),
        *VERDICTS])
    dead = "stage 1 dead features"
    if None in (cell(section, dead, 1), cell(section, "stage 3 dead features", 1)):
        section["finding"] = NOT_RUN
        return section
    falls = cell(section, "stage 3 dead features", 1) < cell(section, "stage 3 dead features", 0)
    verdict = [quote(section, f"{sae} SAE bimodal (verdict)", i) for sae in ("standalone", "joint") for i in (0, 1)]
    section["finding"] = (
        f"Three times the training moves stage 1's dead fraction from {quote(section, dead, 0)} to "
        f"{quote(section, dead, 1)} (paper {paper_text('sae1.dead_fraction')}) and stage 3's from "
        f"{quote(section, 'stage 3 dead features', 0)} to {quote(section, 'stage 3 dead features', 1)}: stage 3's "
        f"dead fraction {'falls' if falls else 'does not fall'}. Bimodal by the verdict: standalone SAE "
        f"{verdict[0]} → {verdict[1]} (paper: no), joint SAE {verdict[2]} → {verdict[3]} (paper: yes).")
    return section


@dataclass(frozen=True)
class Question:
    title: str
    runs: Callable[[str, tuple[int, ...]], list[Run]]  # (preset, seeds) → its runs ("main": what it reads there)
    build: Callable[[Runs], dict[str, Any]]  # its section, from whatever runs exist


QUESTIONS: dict[str, Question] = {
    "regime": Question("Numerical regime: fp32, the original's fp16, and fp32 with fp16's Adam underflow",
                       regime_runs, regime),
    "k": Question("Inference K: stage 2 at the SAE's trained K", trained_k_runs, inference_k),
    "pathology": Question("Pathology: each SAE against ε-random, as trained and as the original evaluated",
                          pathology_runs, pathology),
    "length": Question("Training length: stages 1, 3 and 5 at 3x", length_runs, length),
    "seeds": Question("Seeds: the chain 1 → 2 → 5 → 14 → 16 → 17 → 18 under each seed", seed_runs, seeds),
    "bimodality": Question("Bimodality: the one verdict on every decoder", bimodality_runs, bimodality_section),
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
