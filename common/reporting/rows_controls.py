"""REPORT.md's section "Controls: can the claim fail?" (METHOD §14): one row per control that the main job runs, each
with its CI over held-out windows (or blocks of synthetic rows), its written rule and what a failing result would
mean. The controls that only study.py runs are quoted from the study's "controls" question."""
from __future__ import annotations

from common.reporting.rows import Row
from common.reporting.rules import above, ci_above_zero, ci_contains_zero

_CI_ABOVE = "95% CI above 0"


def _control(stage: str, key: str, name: str, rule_text: str | None = None, if_fails: str = "",
             contains: bool = False) -> Row:
    """A control's figure ``key`` (a {"estimate", "low", "high", "level"} record) and, with a rule, its verdict."""
    ci = f"{stage}:{key}"
    rule = None
    if rule_text:
        rule = ci_contains_zero(ci, rule_text) if contains else ci_above_zero(ci, rule_text)
    return Row(f"{ci}.estimate", name, rule=rule, ci=ci, if_fails=if_fails)


CONTROL_ROWS: list[Row] = [
    _control("ridge", "ridge_reduction", "ridge map of x: reduction of the SAE's error (held out)"),
    _control("ridge", "nfm_reduction", "the NFM's reduction of the same error, same rows"),
    _control("ridge", "nfm_minus_ridge", "NFM − ridge map (points of the SAE's error)", _CI_ABOVE,
             "a linear function of the input activation predicts the SAE's error as well as the NFM does from the "
             "codes: the NFM's gain is no evidence of integration"),
    _control("planted", "strong.interaction_gain", "planted pairs, strongest s: interaction gain of the NFM on the "
             "true codes", _CI_ABOVE,
             "the NFM cannot find planted interactions at this scale and recipe: its small interaction gains on real "
             "activations say nothing either way"),
    Row("planted:strong.recall", "planted pairs, strongest s: recall@|P| (pairs ranked by the second-order "
        "difference)", kind="num", rule=above(0.8 - 1e-9, "≥ 0.8"),
        if_fails="the interaction pathway does not single out the planted pairs: its pair effects cannot be read as "
                 "integration of particular features"),
    _control("planted", "twin.interaction_gain", "twin (s = 0): interaction gain", "95% CI contains 0",
             "the interaction pathway gains without any interaction present: its gains are an artifact",
             contains=True),
]
