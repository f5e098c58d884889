"""common/reporting/rules.py: each rule constructor on hand cases, at and around its bound, with the values it reads
from other sources supplied by hand; ``&`` holds only where both hold and says both."""
from __future__ import annotations

from typing import Any

import pytest

from common.reporting.rules import (
    ALPHA,
    Rule,
    above,
    above_source,
    below,
    below_source,
    equals,
    is_false,
    is_true,
    paired_above,
    ratio_within,
    same_sign,
    sign_with_p,
    source_below,
    within,
    within_fraction_of,
)


def reader(values: dict[str, Any]):
    return lambda source: values[source]


NOTHING = reader({})  # a rule on the row's own value must read nothing else


def test_above_and_below_are_strict():
    rule = above(0.8)
    assert rule.text == "> 0.8" and above(0.8, "> 80%").text == "> 80%"
    assert [rule.check(v, NOTHING) for v in (0.81, 0.8, 0.79)] == [True, False, False]
    rule = below(0.01, "< 1%")
    assert rule.text == "< 1%"
    assert [rule.check(v, NOTHING) for v in (0.0, 0.01, 0.02)] == [True, False, False]


def test_within_is_an_open_band_around_the_target():
    rule = within(0.323, 0.01, "within 1 point of 32.3%")
    assert [rule.check(v, NOTHING) for v in (0.323, 0.3325, 0.3135, 0.334, 0.312)] == [True, True, True, False, False]


def test_rules_against_another_source_read_it():
    read = reader({"nfm:error_reduction_val": 0.2343})
    assert above_source("nfm:error_reduction_val", "t").check(0.413, read)
    assert not above_source("nfm:error_reduction_val", "t").check(0.2343, read)
    assert below_source("nfm:error_reduction_val", "t").check(0.1, read)
    assert not below_source("nfm:error_reduction_val", "t").check(0.2343, read)
    with pytest.raises(KeyError):
        above_source("nfm:other", "t").check(1.0, read)


def test_truth_rules():
    assert is_true("t").check(True, NOTHING) and not is_true("t").check(0, NOTHING)
    assert is_false("t").check(False, NOTHING) and not is_false("t").check(1, NOTHING)


def test_paired_above_wants_a_positive_t_and_p_below_alpha():
    rule = paired_above("kl14:test", "text")
    cases = [({"t": 3.0, "p": 0.001}, True), ({"t": 3.0, "p": ALPHA}, False), ({"t": -3.0, "p": 0.001}, False),
             ({"t": 0.0, "p": 0.0}, False), ({"t": 1.0, "p": 0.0099}, True)]
    for test, holds in cases:
        assert rule.check(None, reader({"kl14:test": test})) is holds, test
    assert ALPHA == 0.01


def test_sign_with_p_reads_the_named_statistic():
    negative = sign_with_p("b:spearman", False, "negative with p < 0.01", statistic="r")
    assert negative.check(None, reader({"b:spearman": {"r": -0.9, "p": 1e-5}}))
    assert not negative.check(None, reader({"b:spearman": {"r": 0.9, "p": 1e-5}}))
    assert not negative.check(None, reader({"b:spearman": {"r": -0.9, "p": 0.05}}))
    positive = sign_with_p("b:student", True, "low > high")
    assert positive.check(None, reader({"b:student": {"t": 2.0, "p": 0.001}}))
    assert not positive.check(None, reader({"b:student": {"t": -2.0, "p": 0.001}}))


def test_same_sign():
    rule = same_sign("d:t", "same sign")
    assert rule.check(2.0, reader({"d:t": 0.5})) and rule.check(-2.0, reader({"d:t": -0.5}))
    assert not rule.check(2.0, reader({"d:t": -0.5})) and not rule.check(-2.0, reader({"d:t": 0.5}))


def test_ratio_within_reads_both_sources():
    rule = ratio_within("o:joint", "o:random", 0.25, "within 25%")
    assert rule.check(None, reader({"o:joint": 0.0148, "o:random": 0.0140}))  # 5.7% apart
    assert not rule.check(None, reader({"o:joint": 0.020, "o:random": 0.0140}))  # 42.9% apart
    assert not rule.check(None, reader({"o:joint": 0.010, "o:random": 0.0140}))  # 28.6% below


def test_within_fraction_of_includes_its_bound():
    rule = within_fraction_of("o:standalone", 0.1, "within 10%")
    read = reader({"o:standalone": 800})
    assert [rule.check(v, read) for v in (800, 880, 720, 881, 719)] == [True, True, True, False, False]


def test_source_below_reads_a_companion_figure():
    rule = source_below("s:p_heldout", 0.05, "held-out p < 0.05")
    assert rule.check(99.0, reader({"s:p_heldout": 0.049}))
    assert not rule.check(99.0, reader({"s:p_heldout": 0.05}))


def test_equals():
    assert equals(0, "exactly 0").check(0.0, NOTHING)
    assert not equals(0, "exactly 0").check(1e-12, NOTHING)


def test_and_holds_only_where_both_hold_and_says_both():
    first, second = above(0, "> 0"), below_source("x:bound", "below the bound")
    both = first & second
    assert isinstance(both, Rule)
    assert both.text == "> 0, and below the bound"
    read = reader({"x:bound": 1.0})
    assert [both.check(v, read) for v in (0.5, -0.5, 1.5, 1.0)] == [True, False, False, False]
    three = both & is_true("true")
    assert three.text == "> 0, and below the bound, and true"
    assert three.check(0.5, read)
