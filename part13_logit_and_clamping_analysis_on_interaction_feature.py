"""Stage 10e (part13, with part13e's linear control as --pathway linear): clamp the selected secondary feature and
test the 2×2 of the target words' logits (METHOD §10). Δlogit of each design word at the prompts' last position
against the unclamped pipeline (with --patch delta, the default, that is the clean model bit for bit), on two designs:
the powered one (32+ words per cell, 20+ prompts), which is primary, and the paper's 4 × 8 words and 5 prompts beside
it. The primary test is the top feature at m = −4 on the powered design: a crossed mixed model (random intercepts for
word and prompt), with min F′, the by-word ANOVA and its permutation p, the difference of differences with a bootstrap
CI over words and prompts against the fp32 noise floor, the dose-response slope over the multipliers, the effect
detectable with 80% power, and two nulls (random active features, random directions of the target's size). The
paper design keeps every earlier test: by prompt, pooled, the original's statistic, Holm over every feature ×
multiplier.

    python part13_logit_and_clamping_analysis_on_interaction_feature.py --sae1_model_path checkpoints_topk \\
        --nfm_model_path checkpoints_nfm --interaction_sae_path interaction_sae --selection_dir selection_results
"""
from __future__ import annotations

import random
from typing import Any

import torch

from common.behavior.clamp_results import choose_features, decision, legacy_keys, power_analysis
from common.behavior.clamp_table import format_table, plot
from common.behavior.logit_design import Plan, analyze
from common.behavior.logit_test import WordGrid, active_features
from common.behavior.stimuli import PAPER_DESIGN, load_stimuli, single_token_words
from common.config.stages import ClampConfig
from common.errors import UserError
from common.stages.behavior import finish, open_run, read_earlier
from common.stages.cli import run_cli
from common.stages.opening import stage_config

ANALYSIS = "clamp"


def check(cfg: ClampConfig) -> None:
    if cfg.pathway != "none" and all(value == 1.0 for value in cfg.multipliers) and cfg.clamp_mode == "multiply":
        raise UserError("--multipliers needs a value other than 1: a multiplier of 1 changes nothing")
    if cfg.null_features < 0 or cfg.null_directions < 0 or cfg.permutations < 1 or cfg.generation_tokens < 1:
        raise UserError("--null_features and --null_directions must be >= 0, --permutations and --generation_tokens "
                        ">= 1")
    if cfg.primary_multiplier not in cfg.multipliers:
        raise UserError(f"--primary_multiplier {cfg.primary_multiplier:g} is not one of --multipliers "
                        f"{' '.join(f'{m:g}' for m in cfg.multipliers)}")


def design_grids(cfg: ClampConfig, tokenizer) -> dict[str, tuple[list[str], WordGrid, list[str]]]:
    """Each design's prompts, its words kept as single tokens (as a grid of equal cells) and the words dropped."""
    grids = {}
    for name, design in load_stimuli(cfg.stimuli).designs(cfg.word_list).items():
        if len(design.prompts) < 2:
            raise UserError(f"the {name} design has {len(design.prompts)} prompt; the 2×2 tests need at least 2")
        kept, dropped = single_token_words(design.words, tokenizer)
        grids[name] = (design.prompts, WordGrid.of(kept, tokenizer), dropped)
    return grids


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = stage_config(ClampConfig, __doc__, argv)
    check(cfg)
    earlier: dict[str, Any] = {}
    run = open_run(cfg, lm_dtype=torch.float32 if cfg.lm_fp32 else None, check_more=lambda sources: earlier.update(
        read_earlier(cfg.selection_dir, "--selection_dir", "selection", sources)))
    grids = design_grids(cfg, run.lm.tokenizer)
    every_prompt = [prompt for prompts, _, _ in grids.values() for prompt in prompts]
    found = active_features(run, every_prompt, cfg.pathway) if cfg.pathway != "none" else set()
    chosen, choice = choose_features(run, cfg.pathway, earlier, found)
    null = random.Random(cfg.seed).sample(sorted(found - set(chosen)), min(cfg.null_features, len(found - set(chosen))))
    values = [float(v) for v in cfg.multipliers]
    designs, measured = {}, {}
    for name, (prompts, grid, dropped) in grids.items():
        plan = Plan(cfg.pathway, cfg.clamp_mode, chosen if name == PAPER_DESIGN else chosen[:1], values,
                    float(cfg.primary_multiplier), null, cfg.null_directions if chosen else 0, cfg.seed,
                    cfg.permutations, cfg.generation_tokens if name == PAPER_DESIGN else 0)
        designs[name], measured[name] = analyze(run, prompts, grid, plan)
        designs[name]["dropped_words"] = dropped
    primary_design = next(iter(designs))
    results = {"analysis": ANALYSIS, **run.describe(), "pathway": cfg.pathway, "clamp_mode": cfg.clamp_mode,
               "multipliers": values, "chosen": chosen, "target_choice": choice, "null_features": null,
               **legacy_keys(designs, PAPER_DESIGN, chosen, cfg.primary_multiplier),
               "primary_design": primary_design, "designs": designs,
               "power": power_analysis(designs, primary_design, cfg.seed)}
    results["primary"] = decision(results)
    finish(run, results, lambda folder: plot(results, measured, folder))
    print(format_table(results))
    return results


if __name__ == "__main__":
    run_cli(main)
