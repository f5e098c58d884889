"""part13's results beyond one design (METHOD §10 decision 8): which features it clamps (and why, where the selected
target is silent on the prompts), the paper design's figures under the keys earlier versions wrote, the power of both
designs from the primary design's variance components, and the primary decision under its written rule."""
from __future__ import annotations

from typing import Any

from common.behavior.logit_test import value_key
from common.behavior.power import ALPHA, POWER, detectable_effect
from common.behavior.run import BehaviorRun
from common.errors import UserError

# The paper design's figures at the top level of results.json, as before the powered design (the dashboards and the
# report's paper-design rows read them).
LEGACY_KEYS = ("by_word", "by_prompt", "pooled", "original_pseudo_interaction", "permutation_p", "holm_p",
               "null_percentile", "difference_of_differences", "mean_abs_dlogit", "greedy_tokens_changed")
PERCENTILE = 95.0
RULE = (f"mixed-model p < {ALPHA:g} on the primary design, and the target's by-word F above {PERCENTILE:g}% of both "
        "nulls' (random active features, random directions of its size)")


def choose_features(run: BehaviorRun, pathway: str, selection: dict[str, Any],
                    found: set[int]) -> tuple[list[int], dict[str, Any]]:
    """The clamped features, target first: the selection's target and exploratory features (or, for the linear
    control, the primary features that feed the target most), and the record of the choice. A selected target active
    on none of the prompts (its Δlogit is 0 everywhere, every statistic undefined) gives way to the selection's
    top-ranked feature that is active on them."""
    if pathway == "none":
        return [], {"feature": None, "selected": None, "selected_target_active": False, "reason": "--pathway none"}
    if pathway == "secondary":
        chosen, limit = [selection["target"], *selection["exploratory"]], run.pipeline.secondary.num_features
    else:
        chosen = [row["primary"] for row in selection["attribution"][: 1 + len(selection["exploratory"])]]
        limit = run.pipeline.sae.num_features
    if any(not 0 <= feature < limit for feature in chosen):
        raise UserError(f"--selection_dir names a feature outside the {limit} features of this pathway")
    selected = chosen[0]
    choice = {"selected": selected, "feature": selected, "selected_target_active": selected in found,
              "reason": "the selected target is active on the prompts"}
    if selected in found or pathway != "secondary":
        return chosen, choice
    ranking = [row["feature"] for row in selection["ranked"][selection["rank_by"]]]
    active = [feature for feature in ranking if feature in found]
    if not active:
        choice["reason"] = (f"the selected target {selected} is active on none of the prompts, nor is any feature of "
                            f"the selection's {selection['rank_by']} ranking: every statistic is undefined")
        return chosen, choice
    used = active[0]
    choice.update(feature=used, reason=(
        f"the selected target {selected} is active on none of the prompts in this pipeline (its Δlogit would be 0 "
        f"everywhere), so the top feature of the selection's {selection['rank_by']} ranking that is active on them "
        f"is tested: {used}, ranked {ranking.index(used) + 1}"))
    return [used, *[feature for feature in chosen[1:] if feature != used]], choice


def legacy_keys(designs: dict[str, dict[str, Any]], paper: str, chosen: list[int],
                primary: float) -> dict[str, Any]:
    """The paper design's figures under the top-level keys of earlier versions; the identity check over every
    design."""
    design = designs[paper]
    target = design["tests"].get(str(chosen[0]), {}) if chosen else {}
    entry = target.get(value_key(primary), {})
    return {"words": design["words"], "dropped_words": design["dropped_words"], "prompts": design["prompts"],
            "primary_test": {"feature": chosen[0] if chosen else None, "value": value_key(primary)},
            **{key: entry.get(key) for key in LEGACY_KEYS}, "target_by_value": target,
            "identity_max_abs_dlogit": max(d["identity_max_abs_dlogit"] for d in designs.values()),
            "tests": design["tests"], "null": design["null"]}


def power_analysis(designs: dict[str, dict[str, Any]], primary: str, seed: int) -> dict[str, Any] | None:
    """The smallest DoD each design detects with 80% power, from the primary design's variance components (its
    mixed model of the target at the primary multiplier)."""
    target = designs[primary]["target"]
    if target is None:
        return None
    components = target["mixed_model"]["variance_components"]
    return {"variance_components": components,
            "from": f"the {primary} design's mixed model of feature {target['feature']} at m = "
                    f"{target['multiplier']:g}",
            "designs": {name: detectable_effect(components, len(design["prompts"]),
                                                len(next(iter(design["words"].values()))), seed=seed)
                        for name, design in designs.items()}}


def decision(results: dict[str, Any]) -> dict[str, Any]:
    """The primary test under ``RULE``: the target on the primary design at the primary multiplier."""
    target = results["designs"][results["primary_design"]]["target"]
    nan = float("nan")
    p = target["mixed_model"]["p"] if target else nan
    features = target["percentile"]["features"]["F"]["percentile"] if target else nan
    directions = target["percentile"]["directions"]["F"]["percentile"] if target else nan
    significant = bool(p < ALPHA and features >= PERCENTILE and directions >= PERCENTILE)  # NaN compares False
    return {"design": results["primary_design"], "feature": target["feature"] if target else None,
            "multiplier": target["multiplier"] if target else None, "mixed_model_p": p,
            "percentile_features": features, "percentile_directions": directions, "significant": significant,
            "rule": RULE, "power": POWER}
