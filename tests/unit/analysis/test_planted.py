"""The planted ground truth: the data is the formula, the twin differs only by the interaction term, the pair effect
is the second-order difference computed by hand, recall counts planted pairs among the top |P|."""
import pytest
import torch

from common.analysis.planted import (
    make_planted,
    mapped_pairs,
    match_features,
    pair_effects,
    recall_at_planted,
    sparse_codes,
)
from common.models.nfm import NFM, nfm_reference


def test_activations_are_the_formula_and_the_twin_differs_only_by_the_interaction():
    planted = make_planted(500, 8, 12, 0.3, 3, 1.5, 0.1, seed=4)
    twin = make_planted(500, 8, 12, 0.3, 3, 0.0, 0.1, seed=4)
    assert torch.equal(planted.codes, twin.codes) and planted.pairs == twin.pairs
    members = {feature for pair in planted.pairs for feature in pair}
    assert len(members) == 6  # disjoint pairs
    interaction = sum(1.5 * planted.codes[:, i] * planted.codes[:, j] * planted.directions[k][:, None]
                      for k, (i, j) in enumerate(planted.pairs)).t()
    torch.testing.assert_close(planted.x - twin.x, interaction, rtol=1e-5, atol=1e-5)
    active = planted.codes[planted.codes > 0]
    assert active.min() >= 0.5 and active.max() <= 1.5
    torch.testing.assert_close(planted.dictionary.norm(dim=1), torch.ones(12))


def test_pair_effect_is_the_second_order_difference_on_rows_where_both_fire():
    torch.manual_seed(0)
    nfm = NFM(6, 4, 3, dropout=0.0).eval()
    with torch.no_grad():
        for parameter in nfm.parameters():  # biases too: out(∅) is not 0
            parameter.normal_(std=1.0)
    codes = torch.tensor([[0.9, 0.0, 1.2, 0.7, 0.0, 0.4], [0.5, 0.8, 1.0, 0.0, 0.0, 0.0],
                          [0.0, 0.6, 0.0, 0.0, 1.1, 0.0]])
    acts, indices = sparse_codes(codes)
    effects = pair_effects(nfm, acts, indices)

    def interaction(dense: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return nfm_reference(nfm, dense).interaction

    def by_hand(row: torch.Tensor, i: int, j: int) -> float:
        without = lambda *features: row.index_fill(0, torch.tensor(features), 0.0) if features else row  # noqa: E731
        delta = interaction(without()[None]) - interaction(without(i)[None]) - interaction(without(j)[None]) \
            + interaction(without(i, j)[None])
        return float(delta.norm())

    assert set(effects) == {(0, 2), (0, 3), (0, 5), (2, 3), (2, 5), (3, 5), (0, 1), (1, 2), (1, 4)}
    assert effects[(0, 2)][1] == 2
    assert effects[(0, 2)][0] == pytest.approx((by_hand(codes[0], 0, 2) + by_hand(codes[1], 0, 2)) / 2, rel=1e-5)
    assert effects[(1, 4)] == pytest.approx((by_hand(codes[2], 1, 4), 1), rel=1e-5)


def test_recall_counts_planted_pairs_among_the_top_and_skips_rare_pairs():
    effects = {(0, 1): (5.0, 10), (2, 3): (4.0, 10), (4, 5): (3.0, 10), (6, 7): (9.0, 2), (1, 2): (1.0, 10)}
    result = recall_at_planted(effects, [(2, 3), (1, 2)], min_rows=5)
    assert result["recall"] == 0.5 and result["found"] == [[2, 3]]
    assert [entry[:2] for entry in result["top"]] == [[0, 1], [2, 3]]
    assert recall_at_planted(effects, [(2, 3)], size=2, min_rows=5)["recall"] == 0.5  # a pair lost before counts


def test_sae_features_are_matched_by_decoder_cosine():
    dictionary = torch.eye(3)
    decoder = torch.tensor([[0.0, 2.0, 0.1], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.1, 0.0, 3.0]])  # −e₂ is not e₂
    matches, cosines = match_features(decoder, dictionary)
    assert matches == [1, 0, 3]
    assert cosines[0] == pytest.approx(1.0)
    assert mapped_pairs([(0, 1), (1, 2)], matches) == [(0, 1), (0, 3)]
    assert mapped_pairs([(0, 1)], [2, 2]) == []
