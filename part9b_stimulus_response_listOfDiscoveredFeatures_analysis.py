"""Stage 10b (part9b): which primary SAE features respond to formality and to emotion (METHOD §10): each discovery
text's mean primary code over its tokens, a Student t-test per feature (high vs low on one factor, pooled over the
other), features chosen on the even-numbered texts of each cell and reported on the odd ones, BH q over all features.

    python part9b_stimulus_response_listOfDiscoveredFeatures_analysis.py --sae1_model_path checkpoints_topk \\
        --nfm_model_path checkpoints_nfm --output_dir discovery_results
    python part9b_stimulus_response_listOfDiscoveredFeatures_analysis.py --preset cpu \\
        --sae1_model_path runs/cpu/sae1 --nfm_model_path runs/cpu/nfm --output_dir runs/cpu/discovery
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from common.behavior.run import text_means
from common.behavior.screens import active_in, screen_t
from common.behavior.texts import ranked, stimulus_set
from common.config.stages import DiscoveryConfig
from common.errors import UserError
from common.paper import BANNERS
from common.plots import plot_grouped_bars
from common.stages.behavior import finish, open_run
from common.stages.cli import run_cli
from common.stages.opening import stage_config

ANALYSIS = "discovery"
FACTORS = {"formality": ("formal", "casual"), "emotion": ("high", "low")}
PAPER = BANNERS["discovery"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = stage_config(DiscoveryConfig, __doc__, argv)
    if cfg.top_n < 1 or cfg.min_active_texts < 1:
        raise UserError("--top_n and --min_active_texts must be at least 1")
    run = open_run(cfg, secondary=False)
    stimuli = stimulus_set(run, "discovery")
    values = text_means(run, stimuli.texts).primary.double().numpy()  # (texts, F)
    eligible = active_in(values, cfg.min_active_texts)
    results: dict[str, Any] = {"analysis": ANALYSIS, **run.describe(), "stimuli": stimuli.record,
                               "features": int(values.shape[1]), "eligible_features": int(eligible.sum()),
                               "eligible_rule": f"finite statistic and active in at least {cfg.min_active_texts} texts",
                               "test": "Student t per feature, high minus low on one factor, pooled over the other"}
    for factor, (high, low) in FACTORS.items():
        levels = stimuli.formality if factor == "formality" else stimuli.emotion
        is_high = levels == 0
        select, report, every = (screen_t(values[mask], is_high[mask])
                                 for mask in (stimuli.select, stimuli.report, np.ones_like(is_high)))
        _, rows = ranked(select, report, every, "t", eligible, cfg.top_n, absolute=True)
        results[factor] = {"high": high, "low": low, "top": rows,
                           "replicated": int(sum(np.sign(r["t"]) == np.sign(r["t_heldout"]) for r in rows))}

    def plot(folder: Path) -> None:
        for factor in FACTORS:
            rows = results[factor]["top"]
            plot_grouped_bars({"selecting texts": {str(r["feature"]): r["t"] for r in rows},
                               "held-out texts": {str(r["feature"]): r["t_heldout"] for r in rows}},
                              folder / f"effect_sizes_{factor}.png",
                              f"Primary features for {factor}: t chosen on half the texts, and on the other half",
                              "Student t (high − low)")

    finish(run, results, plot)
    print(format_table(results))
    return results


def format_table(results: dict[str, Any]) -> str:
    lines = [f"Primary features by factor (METHOD §10, part9b; {results['stimuli']['split']} split; "
             f"{results['eligible_features']:,} of {results['features']:,} features eligible)"]
    for factor in FACTORS:
        entry = results[factor]
        lines.append(f"{factor}: {entry['replicated']} of {len(entry['top'])} keep their sign on the held-out texts")
        lines.append(f"  {'feature':>8}{'t':>9}{'p':>11}{'t held out':>12}{'q (all)':>11}")
        for r in entry["top"]:
            lines.append(f"  {r['feature']:>8}{r['t']:>9.2f}{r['p']:>11.2e}{r['t_heldout']:>12.2f}{r['q_all']:>11.2e}")
    tokens = results["stimuli"]["tokens_per_cell"]
    lines.append("mean tokens per cell: " + ", ".join(f"{cell} {value:.1f}" for cell, value in tokens.items()))
    lines.append(PAPER)
    return "\n".join(lines)


if __name__ == "__main__":
    run_cli(main)
