"""A planted ground truth for the NFM (METHOD §14): synthetic activations with known features, a known dictionary and
known interacting pairs, and the measures that say whether a trained NFM found them.

    x = Σ_i f_i d_i + s · Σ_{(i,j) ∈ P} f_i f_j u_ij + noise

Features fire independently (each with probability p, magnitude uniform in [0.5, 1.5]); the dictionary rows d_i and
the pair directions u_ij are random unit vectors; the pairs are disjoint. A pair's effect on a trained NFM is the
second-order difference of its interaction output, out(i, j) − out(i) − out(j) + out(∅), taken on held-out rows where
both fire with every other code of the row kept (the MLP after the pooling makes ⟨v_i, v_j⟩ alone the wrong measure).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from common.models.nfm import NFM

MIN_COFIRING_ROWS = 5  # a pair is ranked only if both of its features fire together on this many held-out rows


@dataclass
class Planted:
    x: Tensor  # (n, d) activations
    codes: Tensor  # (n, F) the true feature activations
    dictionary: Tensor  # (F, d) unit rows
    pairs: list[tuple[int, int]]  # the planted pairs P, i < j, in order; pair k has direction k
    directions: Tensor  # (|P|, d) unit rows u_ij
    strength: float


def _unit_rows(rows: int, width: int, generator: torch.Generator) -> Tensor:
    vectors = torch.randn(rows, width, generator=generator)
    return vectors / vectors.norm(dim=1, keepdim=True)


def make_planted(rows: int, width: int, features: int, fire_probability: float, num_pairs: int, strength: float,
                 noise: float, seed: int) -> Planted:
    """The same seed gives the same features, dictionary, pairs and noise whatever ``strength``: s = 0 is the twin."""
    if 2 * num_pairs > features:
        raise ValueError(f"{num_pairs} disjoint pairs need at least {2 * num_pairs} features, got {features}")
    generator = torch.Generator().manual_seed(seed)
    dictionary = _unit_rows(features, width, generator)
    fires = torch.rand(rows, features, generator=generator) < fire_probability
    codes = fires * (0.5 + torch.rand(rows, features, generator=generator))
    members = torch.randperm(features, generator=generator)[: 2 * num_pairs].view(num_pairs, 2).sort(dim=1).values
    members = members[members[:, 0].argsort()]  # pairs in order, each with its own direction below
    pairs = [(int(i), int(j)) for i, j in members.tolist()]
    directions = _unit_rows(num_pairs, width, generator)
    products = codes[:, members[:, 0]] * codes[:, members[:, 1]]  # (n, |P|)
    x = codes @ dictionary + strength * products @ directions + noise * torch.randn(rows, width, generator=generator)
    return Planted(x, codes, dictionary, pairs, directions, strength)


def sparse_codes(codes: Tensor) -> tuple[Tensor, Tensor]:
    """Dense (n, F) codes → the NFM's (top_acts, top_indices), as many columns as the most active row (zeros pad)."""
    width = max(int((codes > 0).sum(dim=1).max()), 2)
    return codes.topk(width, dim=1)


def _interaction_without(nfm: NFM, acts: Tensor, indices: Tensor, *positions: Tensor) -> Tensor:
    """The interaction output with the code at ``positions`` (one column per row, each) set to 0."""
    changed, rows = acts.clone(), torch.arange(acts.shape[0])
    for position in positions:
        changed[rows, position] = 0.0
    return nfm(changed, indices).interaction


Effects = dict[tuple[int, int], tuple[float, int]]


def pair_effects(nfm: NFM, top_acts: Tensor, top_indices: Tensor, batch_rows: int = 1024) -> Effects:
    """Each pair of features that fire together: (mean ‖out(i,j) − out(i) − out(j) + out(∅)‖ over the rows where both
    fire, those rows' count), the NFM's interaction output computed with the row's other codes kept."""
    columns = top_acts.shape[1]
    first, second = torch.triu_indices(columns, columns, 1)
    totals: dict[tuple[int, int], list[float]] = {}
    nfm = nfm.eval()
    with torch.no_grad():
        for start in range(0, top_acts.shape[0], batch_rows):
            acts, indices = top_acts[start : start + batch_rows], top_indices[start : start + batch_rows]
            row, pair = ((acts[:, first] > 0) & (acts[:, second] > 0)).nonzero(as_tuple=True)
            if row.numel() == 0:
                continue
            base, where, a, b = acts[row], indices[row], first[pair], second[pair]
            delta = (nfm(base, where).interaction - _interaction_without(nfm, base, where, a)
                     - _interaction_without(nfm, base, where, b) + _interaction_without(nfm, base, where, a, b))
            picked = torch.arange(row.numel())
            keys = torch.stack([where[picked, a], where[picked, b]], dim=1).sort(dim=1).values
            for (i, j), value in zip(keys.tolist(), delta.double().norm(dim=1).tolist()):
                entry = totals.setdefault((i, j), [0.0, 0])
                entry[0] += value
                entry[1] += 1
    return {key: (total / count, count) for key, (total, count) in totals.items()}


def recall_at_planted(effects: Effects, planted: list[tuple[int, int]],
                      size: int | None = None, min_rows: int = MIN_COFIRING_ROWS) -> dict:
    """recall@|P|: the share of the |P| planted pairs (``size``; default ``len(planted)``, more where some pairs were
    lost before) among the |P| pairs of largest effect; pairs seen on fewer than ``min_rows`` rows are not ranked."""
    size = len(planted) if size is None else size
    ranked = sorted((key for key, (_, count) in effects.items() if count >= min_rows),
                    key=lambda key: effects[key][0], reverse=True)
    top = ranked[:size]
    found = sorted(set(top) & set(planted))
    return {"recall": len(found) / size, "found": [list(pair) for pair in found],
            "top": [[*pair, effects[pair][0]] for pair in top], "ranked_pairs": len(ranked), "min_rows": min_rows}


def match_features(decoder: Tensor, dictionary: Tensor) -> tuple[list[int], list[float]]:
    """Each true feature's SAE feature: the decoder row of highest cosine with its dictionary row, and that cosine."""
    cosines = (dictionary / dictionary.norm(dim=1, keepdim=True)) @ (decoder / decoder.norm(dim=1, keepdim=True)).t()
    best = cosines.max(dim=1)
    return best.indices.tolist(), best.values.tolist()


def mapped_pairs(pairs: list[tuple[int, int]], matches: list[int]) -> list[tuple[int, int]]:
    """The planted pairs in the SAE's feature indices (a pair whose two features map to one SAE feature is lost)."""
    return sorted({tuple(sorted((matches[i], matches[j]))) for i, j in pairs if matches[i] != matches[j]})

