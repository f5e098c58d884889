"""Stage 10c (part11, with 11b's counterexamples and 11c's distribution): which secondary features of the NFM's
interaction pathway respond to the formality × emotion interaction (METHOD §10). Per selection text: primary SAE →
NFM → Linear1 → secondary SAE, mean over its tokens; per secondary feature the two-way interaction F (the ranking,
by default) and the paper's one-way F over the four cells; chosen on half the texts, reported on the other half, BH q
over all features; the target's primary inputs attributed by ablation.

    python part11_NFMSAE_Analysis.py --sae1_model_path checkpoints_topk --nfm_model_path checkpoints_nfm \\
        --interaction_sae_path interaction_sae --discovery_dir discovery_results --output_dir selection_results
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from common.behavior.run import attribution, text_means
from common.behavior.screens import active_in, screen_interaction, screen_oneway
from common.behavior.stimuli import CELLS
from common.behavior.texts import StimulusSet, ranked, stimulus_set
from common.config.stages import SelectionConfig
from common.errors import UserError
from common.models.loading import StageInput
from common.paper import BANNERS
from common.plots import plot_heatmap, plot_histograms
from common.stages.behavior import finish, open_run, read_earlier
from common.stages.cli import run_cli
from common.stages.opening import stage_config

ANALYSIS = "selection"
RANKINGS = {"interaction": "F", "omnibus": "F"}
PAPER = BANNERS["selection"]


def cell_means_on(values: np.ndarray, stimuli: StimulusSet, texts: np.ndarray) -> np.ndarray:
    """(F2, 4) each feature's mean code per cell over the ``texts`` (a mask): the held-out ones, no feature was chosen
    on them, or all."""
    return np.stack([values[(stimuli.cell == c) & texts].mean(0) for c in range(len(CELLS))], axis=1)


def omnibus_extremes(omnibus: dict[str, Any], eligible: np.ndarray) -> dict[str, Any]:
    """The eligible feature the one-way omnibus ranks first over all texts, and the two it ranks last."""
    usable = np.flatnonzero(eligible & np.isfinite(omnibus["F"]))
    best = int(usable[np.argmax(omnibus["F"][usable])])
    return {"by_omnibus_all_texts": {"feature": best, "F": float(omnibus["F"][best]), "p": float(omnibus["p"][best]),
                                     "df": omnibus["df"]},
            "counterexamples": [{"feature": int(i), "F": float(omnibus["F"][i]), "p": float(omnibus["p"][i])}
                                for i in usable[np.argsort(omnibus["F"][usable])][:2]]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cfg = stage_config(SelectionConfig, __doc__, argv)
    earlier: dict[str, Any] = {}

    def read_discovery(sources: list[StageInput]) -> None:  # part9b ran on the stage-1 SAE and the NFM only
        earlier.update(read_earlier(cfg.discovery_dir, "--discovery_dir", "discovery", sources[:2]))

    run = open_run(cfg, check_more=read_discovery)
    discovery = earlier
    stimuli = stimulus_set(run, "selection")
    values = text_means(run, stimuli.texts).secondary.double().numpy()  # (texts, F2)
    eligible = active_in(values, cfg.min_active_texts)

    def screens(mask: np.ndarray) -> dict[str, dict]:
        return {"interaction": screen_interaction(values[mask], stimuli.formality[mask], stimuli.emotion[mask]),
                "omnibus": screen_oneway(values[mask], stimuli.cell[mask])}

    select, report, every = screens(stimuli.select), screens(stimuli.report), screens(np.ones_like(stimuli.select))
    tables, orders = {}, {}
    for name in RANKINGS:
        orders[name], tables[name] = ranked(select[name], report[name], every[name], "F", eligible, cfg.top_n)
        for row in tables[name]:
            row["df"] = select[name]["df"]
    order = orders[cfg.rank_by]
    if order.size < 1 + cfg.exploratory:
        raise UserError(f"only {order.size} secondary features are eligible; need {1 + cfg.exploratory} "
                        f"(lower --min_active_texts or --exploratory)")
    target, exploratory = int(order[0]), [int(i) for i in order[1:1 + cfg.exploratory]]
    primaries = sorted({row["feature"] for factor in ("formality", "emotion") for row in discovery[factor]["top"]})
    cell_means, cell_means_all = (cell_means_on(values, stimuli, mask)
                                  for mask in (stimuli.report, np.ones_like(stimuli.report)))
    results: dict[str, Any] = {
        "analysis": ANALYSIS, **run.describe(), "stimuli": stimuli.record, "rank_by": cfg.rank_by,
        "features": int(values.shape[1]), "eligible_features": int(eligible.sum()),
        "target": target, "exploratory": exploratory, "ranked": tables,
        **omnibus_extremes(every["omnibus"], eligible),
        "target_cell_means": dict(zip(CELLS, cell_means[target].tolist())),
        "target_cell_means_texts": "held out: the texts the target was not chosen on (all texts under --split none)",
        "target_cell_means_all_texts": dict(zip(CELLS, cell_means_all[target].tolist())),
        "attribution": attribution(run, stimuli.texts, target, primaries),
        "attribution_rule": "mean drop of the target's code when one primary feature (of --discovery_dir's) is taken "
                            "out of the NFM's input, all others kept",
    }

    def plot(folder: Path) -> None:
        plot_histograms({f"{name} F": every[name]["F"][eligible & np.isfinite(every[name]["F"])] for name in RANKINGS},
                        folder / "f_distribution.png", "Secondary features' F over all texts (eligible features)",
                        "F", log_y=True, vlines={"target": float(every[cfg.rank_by]["F"][target])})
        shown = [target, *exploratory]
        z = cell_means[shown] - cell_means[shown].mean(1, keepdims=True)
        plot_heatmap(z / (cell_means[shown].std(1, keepdims=True) + 1e-12), [str(i) for i in shown], list(CELLS),
                     folder / "heatmap.png", "Selected secondary features: mean code per cell (held-out texts)",
                     "z-scored mean code")

    finish(run, results, plot)
    print(format_table(results))
    return results


def format_table(results: dict[str, Any]) -> str:
    lines = [f"Secondary features by the formality × emotion interaction (METHOD §10, part11; ranked by "
             f"{results['rank_by']} F, {results['stimuli']['split']} split; {results['eligible_features']:,} of "
             f"{results['features']:,} eligible)",
             f"  {'feature':>8}{'F':>9}{'p':>11}{'F held out':>12}{'q (all)':>11}"]
    for row in results["ranked"][results["rank_by"]]:
        lines.append(f"  {row['feature']:>8}{row['F']:>9.2f}{row['p']:>11.2e}{row['F_heldout']:>12.2f}"
                     f"{row['q_all']:>11.2e}")
    best = results["by_omnibus_all_texts"]
    lines.append(f"target {results['target']}, exploratory {results['exploratory']}; by the paper's one-way F on all "
                 f"texts: {best['feature']} (F = {best['F']:.2f}, p = {best['p']:.2e}, df {tuple(best['df'])})")
    lines.append("counterexamples: " + ", ".join(f"{c['feature']} (F = {c['F']:.3f}, p = {c['p']:.3f})"
                                                 for c in results["counterexamples"]))
    lines.append("target's primary inputs (code drop when taken out): " + ", ".join(
        f"{row['primary']}: {row['mean_code_drop']:+.3g}" for row in results["attribution"][:5]))
    lines.append(PAPER)
    return "\n".join(lines)


if __name__ == "__main__":
    run_cli(main)
