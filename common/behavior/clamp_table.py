"""part13's printed table and figures (METHOD §10): the primary test on the primary design, the paper design's tests of
every feature × multiplier, and the PNGs (interaction lines with bootstrap CIs, each word's Δlogit, the two nulls,
the dose-response, |Δ| per feature)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from common.behavior.logit_test import Deltas
from common.behavior.stimuli import CELLS, PAPER_DESIGN
from common.paper import BANNERS
from common.plots import plot_grouped_bars, plot_histograms, plot_interaction_lines, plot_points_by_group

PAPER = BANNERS["clamp"]


def _interaction_lines(designs: dict[str, dict[str, Any]], primary: str, folder: Path) -> None:
    """One panel per design at the primary multiplier: the design's own cell means, the bootstrap's CIs as bars."""
    panels, intervals = {}, {}
    for name, design in designs.items():
        target = design["target"]
        means = design["tests"][str(target["feature"])][primary]["cell_means"]
        cells = target["difference_of_differences"]["cell_mean_ci"][primary]
        key = f"{name} design, feature {target['feature']}, m = {primary}"
        panels[key] = {f"emotion {e}": (means[f"formal_{e}"], means[f"casual_{e}"]) for e in ("high", "low")}
        intervals[key] = {f"emotion {e}": [(cells[f"{f}_{e}"]["low"], cells[f"{f}_{e}"]["high"])
                                            for f in ("formal", "casual")] for e in ("high", "low")}
    plot_interaction_lines(panels, folder / "interaction_lines.png", "Mean Δlogit by cell (95% CI over words and "
                           "prompts)", ("formal", "casual"), "Δlogit", intervals)


def _word_scatter(design: dict[str, Any], d: Deltas, primary: str, folder: Path) -> None:
    values = list(next(iter(design["tests"].values())))
    words = d.logit[values.index(primary)].mean(axis=0).reshape(4, -1)  # the target's (cell, word), prompt means
    plot_points_by_group({cell: dict(zip(design["words"][cell], words[c])) for c, cell in enumerate(CELLS)},
                         folder / "word_scatter.png", f"Δlogit per word, paper design, m = {primary}",
                         "Δlogit (prompt mean)")


def _nulls(name: str, design: dict[str, Any], primary: str, folder: Path) -> None:
    target = design["target"]
    draws = {"random active features": design["null"][primary]["F"],
             "random directions of its size": design["directions"][primary]["F"]}
    draws = {label: np.asarray(values)[np.isfinite(values)] for label, values in draws.items() if len(values)}
    if draws:
        observed = design["tests"][str(target["feature"])][primary]["by_word"]["F"]
        plot_histograms(draws, folder / "null_distribution.png",
                        f"By-word interaction F of the two nulls, {name} design, m = {primary}", "F",
                        vlines={f"feature {target['feature']}": observed})


def _dose_response(designs: dict[str, dict[str, Any]], folder: Path) -> None:
    panels, intervals, labels = {}, {}, ()
    for name, design in designs.items():
        dod = design["target"]["difference_of_differences"]
        if "dose_response" not in dod:
            return
        labels = tuple(dod["by_multiplier"])
        key = f"{name} design (slope {dod['dose_response']['slope']:.3g} per unit m)"
        panels[key] = {"DoD": tuple(dod["by_multiplier"].values())}
        intervals[key] = {"DoD": [(ci["low"], ci["high"]) for ci in dod["ci_by_multiplier"].values()]}
    plot_interaction_lines(panels, folder / "dose_response.png", "Difference of differences by multiplier (95% CI "
                           "over words and prompts)", tuple(f"m = {m}" for m in labels), "DoD (logits)", intervals)


def plot(results: dict[str, Any], measured: dict[str, Deltas], folder: Path) -> None:
    """The interaction lines of both designs, the paper design's words, the primary design's nulls, the
    dose-response, |Δ| per feature: five PNGs (each costs about as much as a statistic, so no more)."""
    if not results["chosen"]:
        return
    primary, designs = results["primary_test"]["value"], results["designs"]
    _interaction_lines(designs, primary, folder)
    _word_scatter(designs[PAPER_DESIGN], measured[PAPER_DESIGN], primary, folder)
    _nulls(results["primary_design"], designs[results["primary_design"]], primary, folder)
    _dose_response(designs, folder)
    tests = results["tests"]
    bars = {f"m = {v}": {f: tests[f][v]["mean_abs_dlogit"] for f in tests} for v in results["target_by_value"]}
    plot_grouped_bars(bars, folder / "effect_sizes.png", "Mean |Δlogit| of the target words (paper design)", "|Δlogit|")


def _primary_lines(results: dict[str, Any]) -> list[str]:
    decision, design = results["primary"], results["designs"][results["primary_design"]]
    target = design["target"]
    if target is None:
        return ["no feature clamped"]
    mixed, dod, floor = target["mixed_model"], target["difference_of_differences"], target["noise_floor"]
    lines = [f"primary test: feature {target['feature']} at m = {target['multiplier']:g}, {decision['design']} design "
             f"({len(design['prompts'])} prompts, {len(design['words'][CELLS[0]])} words per cell): mixed model "
             f"DoD {mixed['coefficient']:.3g} (SE {mixed['se']:.3g}, z {mixed['z']:.2f}, p {mixed['p']:.3g}); min F' "
             f"{target['min_f']['F']:.3f} (p {target['min_f']['p']:.3g})",
             f"  DoD {dod['logits']:.3g} logits [{dod['ci']['low']:.3g}, {dod['ci']['high']:.3g}], "
             f"{dod['in_word_sds']:.3g} word SDs [{dod['ci_in_word_sds']['low']:.3g}, "
             f"{dod['ci_in_word_sds']['high']:.3g}]; fp32 noise floor: DoD "
             f"{floor['difference_of_differences'] if floor else float('nan'):.2g}, "
             f"SD {floor['sd_dlogit'] if floor else float('nan'):.2g}"]
    if "dose_response" in dod:
        slope = dod["dose_response"]
        lines.append(f"  dose-response: {slope['slope']:.3g} logits per unit m [{slope['ci']['low']:.3g}, "
                     f"{slope['ci']['high']:.3g}]")
    lines.append(f"  percentile of its by-word F: {decision['percentile_features']:.1f} among random features, "
                 f"{decision['percentile_directions']:.1f} among random directions; significant: "
                 f"{'yes' if decision['significant'] else 'no'} ({decision['rule']})")
    if results["power"]:
        lines.append("  DoD detectable with 80% power: " + ", ".join(
            f"{name} {entry['logits']:.3g} logits ({entry['in_word_sds']:.2f} word SDs)"
            for name, entry in results["power"]["designs"].items()))
    return lines


def format_table(results: dict[str, Any]) -> str:
    lines = [f"2×2 logit test (METHOD §10, part13; pathway {results['pathway']}, patch {results['patch']}; "
             f"identity check max |Δ| at m = 1: {results['identity_max_abs_dlogit']:.3g})", *_primary_lines(results),
             "paper design, every feature × multiplier:",
             f"  {'feature':>8}{'m':>6}{'by word F':>11}{'p':>10}{'Holm p':>9}{'perm p':>9}{'by prompt F':>13}"
             f"{'orig. F':>9}{'DoD':>11}{'null %':>8}{'|Δ|':>10}{'greedy':>8}"]
    for feature, by_value in results["tests"].items():
        for value, s in by_value.items():
            lines.append(f"  {feature:>8}{value:>6}{s['by_word']['F']:>11.3f}{s['by_word']['p']:>10.3g}"
                         f"{s['holm_p']:>9.3g}{s['permutation_p']:>9.3g}{s['by_prompt']['F']:>13.3f}"
                         f"{s['original_pseudo_interaction']['F']:>9.3f}{s['difference_of_differences']:>11.2e}"
                         f"{s['null_percentile']['percentile']:>8.1f}{s['mean_abs_dlogit']:>10.2e}"
                         f"{100 * s['greedy_tokens_changed']:>7.0f}%")
    for name, design in results["designs"].items():
        lines.append(f"{name} design: words dropped (not one token): {', '.join(design['dropped_words']) or 'none'}")
    lines.append(f"tested feature: {results['target_choice']['feature']} ({results['target_choice']['reason']})")
    lines.append(PAPER)
    return "\n".join(lines)
