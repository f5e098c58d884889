"""common/behavior/clamp_results.py: the feature part13 tests when the selected target is silent on the prompts (METHOD
§10 decision 9), and the primary decision under its written rule (decision 8)."""
from types import SimpleNamespace

import pytest

from common.behavior.clamp_results import choose_features, decision
from common.errors import UserError

RUN = SimpleNamespace(pipeline=SimpleNamespace(secondary=SimpleNamespace(num_features=100),
                                               sae=SimpleNamespace(num_features=1000)))
SELECTION = {"target": 7, "exploratory": [3, 9], "rank_by": "interaction",
             "ranked": {"interaction": [{"feature": f} for f in (7, 3, 42, 9)]},
             "attribution": [{"primary": p} for p in (500, 12, 13, 14)]}


def test_an_active_target_is_kept():
    chosen, choice = choose_features(RUN, "secondary", SELECTION, {7, 3, 9})
    assert chosen == [7, 3, 9] and choice["feature"] == 7 and choice["selected_target_active"]


def test_a_silent_target_gives_way_to_the_top_ranked_active_feature():
    chosen, choice = choose_features(RUN, "secondary", SELECTION, {42, 9, 55})
    assert chosen == [42, 3, 9] and choice["selected"] == 7 and choice["feature"] == 42
    assert not choice["selected_target_active"] and "ranked 3" in choice["reason"]
    chosen, choice = choose_features(RUN, "secondary", SELECTION, {9})  # the exploratory one: not listed twice
    assert chosen == [9, 3] and choice["feature"] == 9
    chosen, choice = choose_features(RUN, "secondary", SELECTION, {55})
    assert chosen == [7, 3, 9] and "undefined" in choice["reason"]


def test_the_linear_control_takes_the_attributed_primaries_and_a_bad_feature_is_refused():
    chosen, _ = choose_features(RUN, "linear", SELECTION, set())
    assert chosen == [500, 12, 13]
    with pytest.raises(UserError, match="outside the 100 features"):
        choose_features(RUN, "secondary", {**SELECTION, "target": 100}, set())


@pytest.mark.parametrize("p, features, directions, significant", [
    (0.01, 96.0, 95.0, True), (0.06, 99.0, 99.0, False), (0.01, 94.0, 99.0, False), (0.01, 99.0, 90.0, False),
    (float("nan"), 99.0, 99.0, False)])
def test_the_decision_is_the_written_rule(p: float, features: float, directions: float, significant: bool):
    target = {"feature": 7, "multiplier": -4.0, "mixed_model": {"p": p},
              "percentile": {"features": {"F": {"percentile": features}},
                             "directions": {"F": {"percentile": directions}}}}
    result = decision({"primary_design": "powered", "designs": {"powered": {"target": target}}})
    assert result["significant"] is significant and result["mixed_model_p"] is p
