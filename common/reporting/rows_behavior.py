"""REPORT.md's rows of the behavioral scripts (METHOD §10), as data (``common.reporting.rows``)."""
from __future__ import annotations

from common.behavior.clamp_results import PERCENTILE, RULE
from common.behavior.stimuli import CELLS
from common.reporting.rows import Row
from common.reporting.rules import (
    Rule,
    above,
    above_source,
    below,
    equals,
    same_sign,
    source_below,
)

_FOUND, _CHOSEN = "discovery", "selection"
_TOP, _VALUE = "ranked.interaction.0", "target_by_value"
_DESIGN_STATS = (("-4", "F_m-4", "dod_m-4"), ("0", "F_m0", "dod_m0"), ("4", "F_m4", "dod_m4"))
# The primary (powered) design's crossed analysis of the target at the primary multiplier (METHOD §10 decision 8).
_P = "clamp:designs.powered.target"
_DOD = f"{_P}.difference_of_differences"
_FLOOR = f"{_P}.noise_floor.difference_of_differences"


def _beyond_floor(value: float, read) -> bool:
    """The DoD's CI excludes 0 and every value within the fp32 noise floor's |DoD|."""
    ci, floor = read(f"{_DOD}.ci"), abs(read(_FLOOR))
    return ci["low"] > floor or ci["high"] < -floor


def _significant(value: float, read) -> bool:
    return (value < 0.05 and read("clamp:primary.percentile_features") >= PERCENTILE
            and read("clamp:primary.percentile_directions") >= PERCENTILE)


_PRIMARY_ROWS: list[Row] = [
    Row("clamp:target_choice.feature", "feature tested (the selected target, or the top-ranked one active on the "
        "prompts where it is silent)", "", "int", original=True),
    Row("clamp:target_choice.selected_target_active", "the selected target is active on the prompts", "", "bool",
        original=True),
    Row("clamp:power.designs.powered.words_per_cell", "primary design: words per cell (one token each)", "", "int",
        original=True),
    Row("clamp:power.designs.powered.prompts", "primary design: prompts", "", "int", original=True),
    *[row for cell in CELLS for row in (
        Row(f"{_P}.balance.zipf.cell_means.{cell}", f"primary design, {cell}: mean word frequency (Zipf)", "", "num"),
        Row(f"{_P}.balance.baseline_logit.cell_means.{cell}", f"primary design, {cell}: mean clean baseline logit",
            "", "num", original=True))],
    Row(f"{_P}.balance.zipf.interaction", "primary design: word frequency, interaction contrast of the cells (Zipf)",
        "", "num"),
    Row(f"{_P}.balance.zipf.oneway.p", "primary design: word frequency, one-way p over the cells", "", "num",
        above(0.05, "> 0.05 (cells matched)")),
    Row(f"{_P}.balance.baseline_logit.interaction", "primary design: clean baseline logit, interaction contrast",
        "", "num", original=True),
    Row(f"{_P}.balance.baseline_logit.oneway.p", "primary design: clean baseline logit, one-way p over the cells", "",
        "num", above(0.05, "> 0.05 (cells matched)"), original=True),
    Row(f"{_P}.mixed_model.coefficient", "primary design, m = -4: mixed-model interaction (DoD, logits)", "", "num",
        original=True, ci=f"{_P}.mixed_model.ci"),
    Row(f"{_P}.mixed_model.p", "primary design, m = -4: mixed-model p (random word and prompt intercepts)", "",
        "num", original=True),
    Row(f"{_P}.min_f.F", "primary design, m = -4: min F′ (Clark 1973)", "", "num", original=True),
    Row(f"{_P}.min_f.p", "primary design, m = -4: min F′ p", "", "num", original=True),
    Row(f"{_DOD}.logits", "primary design, m = -4: difference of differences (logits; CI over words and prompts)",
        "", "num", Rule("CI excludes 0 and lies beyond ± the fp32 noise floor's DoD", _beyond_floor),
        original=True, ci=f"{_DOD}.ci"),
    Row(f"{_DOD}.in_word_sds", "primary design, m = -4: difference of differences (word SDs)", "", "num",
        original=True, ci=f"{_DOD}.ci_in_word_sds"),
    Row(_FLOOR, "fp32 noise floor: the DoD of floating-point order alone (logits)", "", "num", original=True),
    Row(f"{_P}.noise_floor.sd_dlogit", "fp32 noise floor: SD of its Δlogit", "", "num", original=True),
    Row(f"{_DOD}.dose_response.slope", "primary design: dose-response, DoD per unit m (logits)", "", "num",
        original=True, ci=f"{_DOD}.dose_response.ci"),
    Row(f"{_P}.percentile.features.F.percentile", "primary design, m = -4: percentile of the by-word F among random "
        "active features", "", "num", original=True),
    Row(f"{_P}.percentile.directions.F.percentile", "primary design, m = -4: percentile of the by-word F among random "
        "directions of its size", "", "num", original=True),
    *[row for design, label in (("powered", "primary design"), ("paper", "paper design")) for row in (
        Row(f"clamp:power.designs.{design}.logits", f"{label}: DoD detectable with 80% power (logits)", "", "num",
            original=True),
        Row(f"clamp:power.designs.{design}.in_word_sds", f"{label}: DoD detectable with 80% power (word SDs)", "",
            "num", original=True))],
    Row("clamp:primary.mixed_model_p", "the interaction is significant (primary design: mixed-model p, both nulls)",
        "clamp.significant", "num", Rule(RULE, _significant), original=True),
]

BEHAVIOR_ROWS: list[Row] = [
    Row("sparsity:embeddings.most_unequal.0.gini", "most unequal embedding row: Gini", "sparsity.gini", "num"),
    Row("sparsity:embeddings.most_unequal.0.effective_rank", "its entropy effective rank", "sparsity.effective_rank",
        "num"),
    Row("sparsity:embeddings.means.gini", "mean Gini of the embedding rows", "", "num",
        above_source("sparsity:embeddings.untrained_reference.mean", "above an untrained row's")),
    Row("sparsity:embeddings.untrained_reference.mean", "untrained |N(0, σ)| rows: Gini", '"≈0.414 (√2 − 1)"', "num"),
    *[row for factor in ("formality", "emotion") for row in (
        Row(f"{_FOUND}:{factor}.top.0.t", f"{factor}: top primary feature's t", f"discovery.{factor}", "num",
            original=True),
        Row(f"{_FOUND}:{factor}.top.0.t_heldout", f"{factor}: its t on the held-out texts", '"— (not held out)"',
            "num", same_sign(f"{_FOUND}:{factor}.top.0.t", "same sign as on the selecting texts"), original=True))],
    Row(f"{_CHOSEN}:by_omnibus_all_texts.F", "top feature by the one-way F over the cells: F", "selection.F", "num",
        original=True),
    Row(f"{_CHOSEN}:by_omnibus_all_texts.p", "top feature by the one-way F over the cells: p", "selection.p", "num",
        original=True),
    Row(f"{_CHOSEN}:{_TOP}.F", "top feature by the interaction F: F (selecting texts)", "", "num", original=True),
    Row(f"{_CHOSEN}:{_TOP}.q_all", "its BH q over all features", "", "num", below(0.05, "< 0.05"), original=True),
    Row(f"{_CHOSEN}:{_TOP}.F_heldout", "its interaction F on the held-out texts", "", "num",
        source_below(f"{_CHOSEN}:{_TOP}.p_heldout", 0.05, "held-out p < 0.05"), original=True),
    Row(f"{_CHOSEN}:counterexamples.0.F", "counterexample (lowest one-way F): F", "selection.counterexample_F", "num",
        original=True),
    Row(f"{_CHOSEN}:counterexamples.0.p", "counterexample: p", "selection.counterexample_p", "num", original=True),
    *[row for m, f_key, dod_key in _DESIGN_STATS for row in (
        Row(f"clamp:{_VALUE}.{m}.original_pseudo_interaction.F", f"m = {m}: the original statistic F (df 1, 78)",
            f"clamp.{f_key}", "num", original=True),
        Row(f"clamp:{_VALUE}.{m}.by_word.p", f"m = {m}: by-word interaction p", "", "num", original=True),
        Row(f"clamp:{_VALUE}.{m}.holm_p", f"m = {m}: Holm p over every feature × multiplier", '"— (uncorrected)"',
            "num", original=True),
        Row(f"clamp:{_VALUE}.{m}.difference_of_differences", f"m = {m}: difference of differences (logits)",
            f"clamp.{dod_key}", "num", original=True))],
    Row("clamp:by_prompt.p", "m = -4: by-prompt (repeated-measures) p", "", "num", original=True),
    Row("clamp:permutation_p", "m = -4: word-label permutation p", "", "num", original=True),
    Row("clamp:null_percentile.percentile", "m = -4: percentile of the by-word F among random features", "", "num",
        original=True),
    Row("clamp:by_word.formality.mean_diff", "m = -4: formality main effect (logits)", "", "num", original=True),
    Row("clamp:by_word.emotion.mean_diff", "m = -4: emotion main effect (logits)", "", "num", original=True),
    Row("clamp:greedy_tokens_changed", "m = -4: greedy tokens changed", '"— (read by eye)"', "pct", original=True),
    Row("clamp:holm_p", "paper design: by-word Holm p < 0.05 and above 95% of random features", "", "num",
        Rule("Holm p < 0.05 and the by-word F above 95% of random features'",
             lambda v, read: v < 0.05 and read("clamp:null_percentile.percentile") >= 95), original=True),
    Row("clamp:identity_max_abs_dlogit", "identity: max |Δlogit| at m = 1", "", "num",
        equals(0, "exactly 0 (the delta patch leaves the model alone)"), original=True),
    Row("clamp_linear:mean_abs_dlogit", "linear control, m = -4: mean |Δlogit|", "clamp.linear_control", "num",
        above(0, "> 0 (its 'no interaction' counts only after a change)")),
    Row("clamp_linear:by_word.F", "linear control, m = -4: by-word interaction F", "", "num"),
    *_PRIMARY_ROWS,
]
