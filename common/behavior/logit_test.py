"""part13's 2×2 logit test (METHOD §10): Δlogit of the design's target words at the prompts' last position when a
feature is clamped, the tests of decision 1 on it, Holm over the family, the random-feature null, and the share of
greedy tokens that changed."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from common.behavior.pipeline import Clamp
from common.behavior.run import BehaviorRun, greedy, last_position_logits, token_ids
from common.behavior.statistics import by_word, difference_of_differences, holm, logit_2x2, null_percentile
from common.behavior.stimuli import CELLS
from common.lm.hooks import capture_layer


def value_key(value: float) -> str:
    """A clamp value as a results key ("-4", "0.5"): ``%g``, so the report's dotted key paths stay readable."""
    return f"{value:g}"


@dataclass
class WordGrid:
    """The target words as a 2×2 (formality × emotion) of equal cells, each word's single token id."""

    words: dict[str, list[str]]  # cell -> words, equal lengths
    ids: torch.Tensor  # (2, 2, W) token ids, cells in CELLS order

    @classmethod
    def of(cls, kept: dict[str, list[str]], tokenizer) -> WordGrid:
        width = min(len(words) for words in kept.values())  # equal cells: the original's pairing is by list order
        words = {cell: kept[cell][:width] for cell in CELLS}
        ids = [[tokenizer(" " + word, add_special_tokens=False)["input_ids"][0] for word in words[cell]]
               for cell in CELLS]
        return cls(words, torch.tensor(ids).reshape(2, 2, width))


def active_features(run: BehaviorRun, prompts: list[str], pathway: str) -> set[int]:
    """The features active on any real token of the prompts (secondary codes, or the NFM's primary inputs)."""
    found: set[int] = set()
    for prompt in prompts:
        residual = capture_layer(run.lm.model, token_ids(run, prompt), run.layer)[0, run.first_position:]
        out = run.pipeline.run(residual.float())
        indices = out.secondary_indices if pathway == "secondary" else out.nfm_indices
        acts = out.secondary_acts if pathway == "secondary" else out.nfm_acts
        found |= set(indices[acts > 0].tolist())
    return found


def deltas(run: BehaviorRun, prompts: list[str], grid: WordGrid, pathway: str, features: list[int],
           values: list[float], mode: str) -> dict[str, np.ndarray]:
    """Δlogit and Δlogprob (features, values, P, 2, 2, W) against the unclamped pipeline (a multiplier of 1: the clean
    model itself under --patch delta), and ``identity`` (P,): max |logit| difference of that reference from the clean
    model."""
    flat = grid.ids.flatten()
    reference = Clamp(pathway, features[0] if features else 0, 1.0, "multiply")
    clamps = [reference] + [Clamp(pathway, f, v, mode) for f in features for v in values]
    logit, logprob, identity = [], [], []
    for prompt in prompts:
        clean, patched = last_position_logits(run, prompt, clamps)
        identity.append(float((patched[0] - clean).abs().max()))
        logps = torch.log_softmax(patched, dim=-1)
        logit.append((patched[1:, flat] - patched[0, flat]).numpy())
        logprob.append((logps[1:, flat] - logps[0, flat]).numpy())
    shape = (len(features), len(values), len(prompts), *grid.ids.shape)

    def arrange(per_prompt: list[np.ndarray]) -> np.ndarray:  # (P, F·V, 4W) -> (F, V, P, 2, 2, W)
        return np.moveaxis(np.stack(per_prompt).reshape(len(prompts), len(features), len(values), -1), 0, 2
                           ).reshape(shape).astype(np.float64)

    return {"logit": arrange(logit), "logprob": arrange(logprob), "identity": np.asarray(identity)}


def greedy_changed(run: BehaviorRun, prompts: list[str], reference: Clamp, clamps: list[Clamp],
                   tokens: int) -> list[float]:
    """For each clamp, the share of greedy tokens (position by position, over the prompts) it changed against the
    reference clamp's continuation; each prompt's continuations run as one batch."""
    changed, total = [0] * len(clamps), 0
    for prompt in prompts:
        base, *rows = greedy(run, prompt, [reference, *clamps], tokens)
        total += len(base)
        for i, row in enumerate(rows):
            changed[i] += sum(a != b for a, b in zip(row, base))
    return [count / max(1, total) for count in changed]


def summarize(run: BehaviorRun, d: dict[str, np.ndarray], chosen: list[int], null: list[int], values: list[float],
              permutations: int, prompts: list[str], pathway: str, mode: str, tokens: int) -> dict[str, Any]:
    """Every chosen feature × value: the tests, mean |Δ|, greedy tokens changed; Holm over that family; each value's
    null of the by-word F and the difference of differences over the null features, and the chosen ones' percentiles."""
    # Against the unclamped pipeline, as Δlogit is: under --patch delta that is the clean model itself.
    reference = Clamp(pathway, chosen[0], 1.0, "multiply")
    grid = [(i, j, Clamp(pathway, feature, value, mode)) for i, feature in enumerate(chosen)
            for j, value in enumerate(values)]
    changed = greedy_changed(run, prompts, reference, [clamp for _, _, clamp in grid], tokens)
    tests: dict[str, dict[str, Any]] = {str(feature): {} for feature in chosen}
    for (i, j, clamp), share in zip(grid, changed):
        stats = logit_2x2(d["logit"][i, j], permutations, seed=run.cfg.seed)
        stats.update({"mean_abs_dlogit": float(np.abs(d["logit"][i, j]).mean()),
                      "mean_abs_dlogprob": float(np.abs(d["logprob"][i, j]).mean()), "greedy_tokens_changed": share})
        tests[str(clamp.feature)][value_key(clamp.value)] = stats
    family = [(f, v) for f in tests for v in tests[f]]
    for (f, v), p in zip(family, holm([tests[f][v]["by_word"]["p"] for f, v in family])):
        tests[f][v]["holm_p"] = float(p)
    nulls = {}
    for j, value in enumerate(values):
        null_stats = [by_word(d["logit"][len(chosen) + n, j]) for n in range(len(null))]
        null_f = [s["F"] for s in null_stats]
        null_dod = [difference_of_differences(d["logit"][len(chosen) + n, j]) for n in range(len(null))]
        nulls[value_key(value)] = {"features": null, "F": null_f, "difference_of_differences": null_dod}
        for f in tests:
            entry = tests[f][value_key(value)]
            entry["null_percentile"] = null_percentile(entry["by_word"]["F"], null_f)
            entry["null_percentile_abs_dod"] = null_percentile(abs(entry["difference_of_differences"]),
                                                               np.abs(null_dod))
    return {"tests": tests, "null": nulls}
