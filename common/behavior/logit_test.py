"""part13's 2×2 logit test, the measurement (METHOD §10): Δlogit of a design's target words at its prompts' last
position when a feature is clamped (or a random direction added), the clean model's baseline logits, the fp32 noise
floor, the size of the target's change of the residual, and the share of greedy tokens a clamp changed. The analysis
of one design is ``common.behavior.logit_design``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from common.behavior.pipeline import Clamp
from common.behavior.run import BehaviorRun, greedy, last_position_logits, token_ids
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


def reference_clamp(pathway: str) -> Clamp:
    """The clamp every Δ is read against: a multiplier of 1, the unclamped pipeline (the clean model under --patch
    delta)."""
    return Clamp(pathway if pathway != "none" else "none", 0, 1.0, "multiply")


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


def mean_residual_change(run: BehaviorRun, prompts: list[str], clamp: Clamp, reference: Clamp) -> float:
    """The mean L2 norm of what ``clamp`` changes in the residual against ``reference``, over every patched position of
    the prompts (positions where the feature is silent count as 0): the size the random directions are given."""
    total, positions = 0.0, 0
    for prompt in prompts:
        residual = capture_layer(run.lm.model, token_ids(run, prompt), run.layer)
        change = (run.pipeline.patched(residual, clamp, run.patch, run.first_position)
                  - run.pipeline.patched(residual, reference, run.patch, run.first_position))
        norms = change[0, run.first_position:].norm(dim=-1)
        total, positions = total + float(norms.sum()), positions + norms.numel()
    return total / max(1, positions)


def random_directions(count: int, width: int, seed: int) -> torch.Tensor:
    """(count, width) unit vectors, isotropic (normalized Gaussian draws), from ``seed``."""
    draws = torch.randn(count, width, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (draws / draws.norm(dim=1, keepdim=True)).float()


class Deltas(NamedTuple):
    """One design's measurements, in float64 NumPy arrays shaped like its 2×2 of words."""

    logit: np.ndarray  # (clamps, P, 2, 2, W) Δlogit against the reference clamp
    logprob: np.ndarray  # (clamps, P, 2, 2, W) Δ log-probability
    baseline: np.ndarray  # (P, 2, 2, W) the clean model's logits of the words
    noise: np.ndarray | None  # (P, 2, 2, W) the fp32 noise floor (None without a clamp)
    identity: np.ndarray  # (P,) max |logit| difference of the reference from the clean model


def deltas(run: BehaviorRun, prompts: list[str], grid: WordGrid, reference: Clamp, clamps: list[Clamp]) -> Deltas:
    """Δlogit and Δlogprob of every clamp against ``reference`` (with --patch delta, the clean model itself) at each
    prompt's last position, for the grid's words."""
    flat = grid.ids.flatten()
    logit, logprob, baseline, noise, identity = [], [], [], [], []
    for prompt in tqdm(prompts, desc="prompts", unit="prompt", leave=False, disable=len(prompts) < 10):
        out = last_position_logits(run, prompt, [reference, *clamps])
        identity.append(float((out.patched[0] - out.clean).abs().max()))
        logps = torch.log_softmax(out.patched, dim=-1)
        logit.append((out.patched[1:, flat] - out.patched[0, flat]).numpy())
        logprob.append((logps[1:, flat] - logps[0, flat]).numpy())
        baseline.append(out.clean[flat].numpy())
        noise.append(None if out.noise is None else out.noise[flat].numpy())
    shape = (len(prompts), *grid.ids.shape)

    def arrange(per_prompt: list[np.ndarray]) -> np.ndarray:  # (P, clamps, 4W) -> (clamps, P, 2, 2, W)
        return np.moveaxis(np.stack(per_prompt), 0, 1).reshape(len(clamps), *shape).astype(np.float64)

    floor = None if noise[0] is None else np.stack(noise).reshape(shape).astype(np.float64)
    return Deltas(arrange(logit), arrange(logprob), np.stack(baseline).reshape(shape).astype(np.float64), floor,
                  np.asarray(identity))


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
