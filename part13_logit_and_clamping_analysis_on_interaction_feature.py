"""Stage 10e (part13, with part13e's linear control as --pathway linear): clamp the selected secondary feature and
test the 2×2 of the target words' logits (METHOD §10). Δlogit of each design word at the prompts' last position
against the unclamped pipeline (with --patch delta, the default, that is the clean model bit for bit); the primary
test is the top feature at m = −4 by word, with a word-label permutation p, the by-prompt repeated-measures and
pooled tests beside it, the original's statistic under its own name, Holm over every feature × multiplier, and an
empirical null from random secondary features active on the prompts.

    python part13_logit_and_clamping_analysis_on_interaction_feature.py --sae1_model_path checkpoints_topk \\
        --nfm_model_path checkpoints_nfm --interaction_sae_path interaction_sae --selection_dir selection_results
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.behavior.logit_test import WordGrid, active_features, deltas, summarize, value_key
from common.behavior.stimuli import CELLS, load_stimuli, single_token_words
from common.config.stages import ClampConfig
from common.errors import UserError
from common.paper import BANNERS
from common.plots import plot_grouped_bars, plot_histograms, plot_interaction_lines, plot_points_by_group
from common.stages.behavior import finish, open_run, read_earlier
from common.stages.cli import run_cli
from common.stages.opening import stage_config

ANALYSIS = "clamp"
PRIMARY_VALUE = -4.0
KEYS = ("by_word", "by_prompt", "pooled", "original_pseudo_interaction", "permutation_p", "holm_p", "null_percentile",
        "difference_of_differences", "mean_abs_dlogit", "greedy_tokens_changed")
PAPER = BANNERS["clamp"]


def check(cfg: ClampConfig) -> None:
    if cfg.pathway != "none" and all(value == 1.0 for value in cfg.multipliers) and cfg.clamp_mode == "multiply":
        raise UserError("--multipliers needs a value other than 1: a multiplier of 1 changes nothing")
    if cfg.null_features < 0 or cfg.permutations < 1:
        raise UserError("--null_features must be >= 0, --permutations >= 1")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = stage_config(ClampConfig, __doc__, argv)
    check(cfg)
    earlier: dict[str, Any] = {}
    run = open_run(cfg, lm_dtype=torch.float32 if cfg.lm_fp32 else None, check_more=lambda sources: earlier.update(
        read_earlier(cfg.selection_dir, "--selection_dir", "selection", sources)))
    selection = earlier
    stimuli = load_stimuli(cfg.stimuli)
    kept, dropped = single_token_words(stimuli.words if cfg.word_list == "design" else stimuli.tiny_words,
                                       run.lm.tokenizer)
    grid = WordGrid.of(kept, run.lm.tokenizer)
    found = active_features(run, stimuli.prompts, cfg.pathway) if cfg.pathway != "none" else set()
    if cfg.pathway == "secondary":
        chosen = [selection["target"], *selection["exploratory"]]
        limit = run.pipeline.secondary.num_features
    else:  # the linear control: the primary features that feed the target most, by ablation
        chosen = [row["primary"] for row in selection["attribution"][: 1 + len(selection["exploratory"])]]
        limit = run.pipeline.sae.num_features
    chosen = chosen if cfg.pathway != "none" else []
    if any(not 0 <= feature < limit for feature in chosen):
        raise UserError(f"--selection_dir names a feature outside the {limit} features of this pathway")
    pool = sorted(found - set(chosen))
    null = random.Random(cfg.seed).sample(pool, min(cfg.null_features, len(pool)))
    values = [float(v) for v in cfg.multipliers]
    d = deltas(run, stimuli.prompts, grid, cfg.pathway, chosen + null, values, cfg.clamp_mode)
    summary = summarize(run, d, chosen, null, values, cfg.permutations, stimuli.prompts, cfg.pathway, cfg.clamp_mode,
                        cfg.generation_tokens) if chosen else {"tests": {}, "null": {}}
    primary_value = value_key(PRIMARY_VALUE if PRIMARY_VALUE in values else values[0])
    target = summary["tests"].get(str(chosen[0]), {}) if chosen else {}
    primary = target.get(primary_value, {})
    results = {"analysis": ANALYSIS, **run.describe(), "pathway": cfg.pathway, "clamp_mode": cfg.clamp_mode,
               "multipliers": values, "words": grid.words, "dropped_words": dropped, "prompts": stimuli.prompts,
               "chosen": chosen, "primary_test": {"feature": chosen[0] if chosen else None, "value": primary_value},
               **{key: primary.get(key) for key in KEYS}, "target_by_value": target,
               "identity_max_abs_dlogit": float(d["identity"].max()), **summary}
    finish(run, results, lambda folder: plot(results, d, grid, folder))
    print(format_table(results))
    return results


def plot(results: dict[str, Any], d: dict[str, np.ndarray], grid: WordGrid, folder: Path) -> None:
    if not results["chosen"]:
        return
    tests = results["tests"]
    target = tests[str(results["chosen"][0])]
    lines = {f"m = {v}": {f"emotion {e}": (s["cell_means"][f"formal_{e}"], s["cell_means"][f"casual_{e}"])
                          for e in ("high", "low")} for v, s in target.items()}
    plot_interaction_lines(lines, folder / "interaction_lines.png",
                           f"Feature {results['chosen'][0]}: mean Δlogit by cell", ("formal", "casual"), "Δlogit")
    j = [value_key(v) for v in results["multipliers"]].index(results["primary_test"]["value"])
    words = d["logit"][0, j].mean(axis=0).reshape(4, -1)  # (cell, word), averaged over prompts
    plot_points_by_group({cell: dict(zip(grid.words[cell], words[c])) for c, cell in enumerate(CELLS)},
                         folder / "word_scatter.png", f"Δlogit per word, m = {results['primary_test']['value']}",
                         "Δlogit (prompt mean)")
    null = results["null"].get(results["primary_test"]["value"], {}).get("F", [])
    if null:
        plot_histograms({"random active features": np.asarray(null)}, folder / "null_distribution.png",
                        "By-word interaction F of random features (the empirical null)", "F",
                        vlines={f"feature {results['chosen'][0]}": results["by_word"]["F"]})
    plot_grouped_bars({f"m = {v}": {f: tests[f][v]["mean_abs_dlogit"] for f in tests} for v in target},
                      folder / "effect_sizes.png", "Mean |Δlogit| of the target words", "|Δlogit|")


def format_table(results: dict[str, Any]) -> str:
    lines = [f"2×2 logit test (METHOD §10, part13; pathway {results['pathway']}, patch {results['patch']}; "
             f"identity check max |Δ| at m = 1: {results['identity_max_abs_dlogit']:.3g})",
             f"  {'feature':>8}{'m':>6}{'by word F':>11}{'p':>10}{'Holm p':>9}{'perm p':>9}{'by prompt F':>13}"
             f"{'orig. F':>9}{'DoD':>11}{'null %':>8}{'|Δ|':>10}{'greedy':>8}"]
    for feature, by_value in results["tests"].items():
        for value, s in by_value.items():
            lines.append(f"  {feature:>8}{value:>6}{s['by_word']['F']:>11.3f}{s['by_word']['p']:>10.3g}"
                         f"{s['holm_p']:>9.3g}{s['permutation_p']:>9.3g}{s['by_prompt']['F']:>13.3f}"
                         f"{s['original_pseudo_interaction']['F']:>9.3f}{s['difference_of_differences']:>11.2e}"
                         f"{s['null_percentile']['percentile']:>8.1f}{s['mean_abs_dlogit']:>10.2e}"
                         f"{100 * s['greedy_tokens_changed']:>7.0f}%")
    lines.append(f"words dropped (not one token): {', '.join(results['dropped_words']) or 'none'}")
    lines.append(PAPER)
    return "\n".join(lines)


if __name__ == "__main__":
    run_cli(main)
