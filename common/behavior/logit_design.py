"""part13's 2×2 logit test on one design (METHOD §10 decisions 1 and 8): its words and prompts measured under every
clamp, then the tests of each feature × multiplier with Holm over that family, the two nulls (random active features
and random directions of the target's size, both at the primary multiplier), and for the target the crossed analysis:
the mixed model, min F′, the difference of differences with its bootstrap CI beside the fp32 noise floor, the
dose-response slope, and whether the cells are matched on word frequency and on the clean model's baseline logit."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from common.behavior.balance import baseline_balance, zipf_balance
from common.behavior.crossed import min_f_prime, mixed_model, noise_floor
from common.behavior.logit_test import (
    Deltas,
    WordGrid,
    deltas,
    greedy_changed,
    mean_residual_change,
    random_directions,
    reference_clamp,
    value_key,
)
from common.behavior.pipeline import Clamp
from common.behavior.resample import crossed_bootstrap
from common.behavior.run import BehaviorRun
from common.behavior.statistics import by_word, difference_of_differences, holm, logit_2x2, null_percentile


@dataclass
class Plan:
    """What one design measures: ``features`` at every value, ``null`` features and ``directions`` random directions
    at the primary value only."""

    pathway: str
    mode: str
    features: list[int]
    values: list[float]
    primary: float
    null: list[int]
    directions: int
    seed: int
    permutations: int
    greedy_tokens: int = 0  # 0: no greedy generations for this design

    def feature_clamps(self) -> list[Clamp]:
        return [Clamp(self.pathway, f, v, self.mode) for f in self.features for v in self.values]


def measure(run: BehaviorRun, prompts: list[str], grid: WordGrid, plan: Plan) -> tuple[Deltas, float]:
    """Every clamp of the plan on the design, and the size given to the random directions (the target's mean |Δ
    residual| at the primary value; 0 without directions)."""
    reference = reference_clamp(plan.pathway)
    size = 0.0
    if plan.directions and plan.features:
        size = mean_residual_change(run, prompts, Clamp(plan.pathway, plan.features[0], plan.primary, plan.mode),
                                    reference)
    vectors = random_directions(plan.directions, run.lm.d_model, plan.seed)
    clamps = [*plan.feature_clamps(), *(Clamp(plan.pathway, n, plan.primary, plan.mode) for n in plan.null),
              *(Clamp("direction", i, size, vector=vectors[i], base=plan.pathway) for i in range(plan.directions))]
    return deltas(run, prompts, grid, reference, clamps), size


def _greedy(run: BehaviorRun, plan: Plan, prompts: list[str]) -> dict[int, float]:
    """The share of greedy tokens each feature changes at the primary value (NaN elsewhere: read by eye in the
    original, so drawn at the one multiplier the report shows), where the plan asks for generations."""
    if not plan.greedy_tokens:
        return {}
    clamps = [Clamp(plan.pathway, f, plan.primary, plan.mode) for f in plan.features]
    shares = greedy_changed(run, prompts, reference_clamp(plan.pathway), clamps, plan.greedy_tokens)
    return dict(zip(plan.features, shares))


def feature_tests(run: BehaviorRun, d: Deltas, plan: Plan, prompts: list[str]) -> dict[str, dict[str, Any]]:
    """Every feature × value: the tests of ``logit_2x2``, mean |Δ|, the greedy tokens changed (where the plan asks
    for them), and the Holm p over that family."""
    shape = (len(plan.features), len(plan.values), *d.logit.shape[1:])
    logit, logprob = (a[: shape[0] * shape[1]].reshape(shape) for a in (d.logit, d.logprob))
    changed = _greedy(run, plan, prompts)
    tests: dict[str, dict[str, Any]] = {str(feature): {} for feature in plan.features}
    for i, feature in enumerate(plan.features):
        for j, value in enumerate(plan.values):
            stats = logit_2x2(logit[i, j], plan.permutations, seed=plan.seed)
            stats.update({"mean_abs_dlogit": float(np.abs(logit[i, j]).mean()),
                          "mean_abs_dlogprob": float(np.abs(logprob[i, j]).mean())})
            if changed:
                stats["greedy_tokens_changed"] = changed[feature] if value == plan.primary else float("nan")
            tests[str(feature)][value_key(value)] = stats
    family = [(f, v) for f in tests for v in tests[f]]
    for (f, v), p in zip(family, holm([tests[f][v]["by_word"]["p"] for f, v in family])):
        tests[f][v]["holm_p"] = float(p)
    return tests


def _null(logit: np.ndarray) -> dict[str, list[float]]:
    """The by-word F and the signed DoD of each null draw (n, P, 2, 2, W)."""
    return {"F": [by_word(x)["F"] for x in logit], "difference_of_differences": [difference_of_differences(x)
                                                                                 for x in logit]}


def _percentiles(entry: dict[str, Any], null: dict[str, list[float]]) -> dict[str, Any]:
    """The target's by-word F and |DoD| as percentiles of a null's."""
    return {"F": null_percentile(entry["by_word"]["F"], null["F"]),
            "abs_dod": null_percentile(abs(entry["difference_of_differences"]),
                                       np.abs(null["difference_of_differences"]))}


def nulls(d: Deltas, plan: Plan, tests: dict[str, dict[str, Any]], size: float) -> dict[str, Any]:
    """The random-feature and random-direction nulls at the primary value, and each tested feature's percentiles in
    the feature null (NaN at the other values, where no null was drawn)."""
    start = len(plan.features) * len(plan.values)
    features = {"features": plan.null, **_null(d.logit[start : start + len(plan.null)])}
    directions = {"count": plan.directions, "mean_abs_dresidual": size, "seed": plan.seed,
                  **_null(d.logit[start + len(plan.null) :])}
    primary = value_key(plan.primary)
    for by_value in tests.values():
        for value, entry in by_value.items():
            shown = value == primary
            entry["null_percentile"] = null_percentile(entry["by_word"]["F"], features["F"] if shown else [])
            entry["null_percentile_abs_dod"] = null_percentile(
                abs(entry["difference_of_differences"]), np.abs(features["difference_of_differences"]) if shown else [])
    return {"features": {primary: features}, "directions": {primary: directions}}


def target_analysis(d: Deltas, plan: Plan, grid: WordGrid, tests: dict[str, dict[str, Any]],
                    drawn: dict[str, Any]) -> dict[str, Any]:
    """The crossed analysis of the target (``plan.features[0]``) at the primary value, the dose-response over every
    value, the nulls' percentiles, the noise floor and the cells' balance."""
    target = tests[str(plan.features[0])]
    primary = value_key(plan.primary)
    j = plan.values.index(plan.primary)
    by_value = d.logit[: len(plan.values)]  # the target's Δ at each value
    entry = target[primary]
    return {
        "feature": plan.features[0], "multiplier": plan.primary,
        "mixed_model": mixed_model(by_value[j]),
        "min_f": min_f_prime(entry["by_prompt"], entry["by_word"]),
        "difference_of_differences": crossed_bootstrap(by_value, plan.values, j, seed=plan.seed),
        "noise_floor": None if d.noise is None else noise_floor(d.noise),
        "percentile": {"features": _percentiles(entry, drawn["features"][primary]),
                       "directions": _percentiles(entry, drawn["directions"][primary])},
        "balance": {"zipf": zipf_balance(grid.words), "baseline_logit": baseline_balance(d.baseline)},
    }


def analyze(run: BehaviorRun, prompts: list[str], grid: WordGrid, plan: Plan) -> tuple[dict[str, Any], Deltas]:
    """One design, measured and analysed: ``tests``, ``null``, ``directions``, ``target`` (the crossed analysis;
    None without a feature) and ``identity_max_abs_dlogit``."""
    d, size = measure(run, prompts, grid, plan)
    tests = feature_tests(run, d, plan, prompts) if plan.features else {}
    drawn = nulls(d, plan, tests, size)
    return {"words": grid.words, "prompts": prompts, "tests": tests, "null": drawn["features"],
            "directions": drawn["directions"],
            "target": target_analysis(d, plan, grid, tests, drawn) if plan.features else None,
            "identity_max_abs_dlogit": float(d.identity.max())}, d
