"""A report row's written rule: its text and the check that applies it to the value the row's own source names.
A check may read other sources of the same evaluation (``Read``): under ``--original_eval`` it reads their
``_original`` runs too."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from common.errors import UserError

Read = Callable[[str], Any]  # "stage:key.path" → its value, in the evaluation (as trained or original) being checked
ALPHA = 0.01  # "p < 0.01" in the rules


@dataclass(frozen=True)
class Rule:
    text: str
    check: Callable[[Any, Read], bool]  # (the row's value, read) → holds?

    def __and__(self, other: Rule) -> Rule:
        return Rule(f"{self.text}, and {other.text}", lambda v, read: self.check(v, read) and other.check(v, read))


def above(bound: float, text: str | None = None) -> Rule:
    return Rule(text or f"> {bound:g}", lambda v, read: v > bound)


def below(bound: float, text: str) -> Rule:
    return Rule(text, lambda v, read: v < bound)


def within(target: float, tolerance: float, text: str) -> Rule:
    return Rule(text, lambda v, read: abs(v - target) < tolerance)


def above_source(source: str, text: str) -> Rule:
    return Rule(text, lambda v, read: v > read(source))


def below_source(source: str, text: str) -> Rule:
    return Rule(text, lambda v, read: v < read(source))


def is_true(text: str) -> Rule:
    return Rule(text, lambda v, read: bool(v))


def is_false(text: str) -> Rule:
    return Rule(text, lambda v, read: not v)


def paired_above(test: str, text: str) -> Rule:
    """The paired test at ``test`` ({"t", "p"}) has the first sample above the second with p < 0.01."""
    return Rule(text, lambda v, read: read(test)["t"] > 0 and read(test)["p"] < ALPHA)


def interval_above(ci: str, null: float, text: str, fallback: Rule) -> Rule:
    """The confidence interval at ``ci`` ({"low", "high"}) lies wholly above ``null``. A directory written before
    its stage stored intervals holds none: there the rule is ``fallback``, what its files support."""
    def check(value: Any, read: Read) -> bool:
        try:
            interval = read(ci)
        except UserError:
            return fallback.check(value, read)
        return interval["low"] > null

    return Rule(text, check)


def sign_with_p(test: str, positive: bool, text: str, statistic: str = "t") -> Rule:
    """The statistic at ``test`` has the given sign with p < 0.01."""
    return Rule(text, lambda v, read: (read(test)[statistic] > 0) == positive and read(test)["p"] < ALPHA)


def same_sign(other: str, text: str) -> Rule:
    return Rule(text, lambda v, read: (v > 0) == (read(other) > 0))


def ratio_within(numerator: str, denominator: str, tolerance: float, text: str) -> Rule:
    """|value / read(denominator) − 1| < tolerance; ``numerator`` is the row's own source (named for clarity)."""
    return Rule(text, lambda v, read: abs(read(numerator) / read(denominator) - 1) < tolerance)


def within_fraction_of(other: str, fraction: float, text: str) -> Rule:
    return Rule(text, lambda v, read: abs(v - read(other)) <= fraction * read(other))


def source_below(source: str, bound: float, text: str) -> Rule:
    """A figure that goes with the row's value (its p) is below ``bound``."""
    return Rule(text, lambda v, read: read(source) < bound)


def equals(target: Any, text: str) -> Rule:
    return Rule(text, lambda v, read: v == target)


def ci_above_zero(ci: str, text: str) -> Rule:
    """The confidence interval at ``ci`` ({"low", "high", "level"}) lies above 0."""
    return Rule(text, lambda v, read: read(ci)["low"] > 0)


def ci_not_above_zero(ci: str, text: str) -> Rule:
    """The confidence interval at ``ci`` reaches 0 or lies below it (a control that should find nothing)."""
    return Rule(text, lambda v, read: read(ci)["low"] <= 0)


def ci_contains_zero(ci: str, text: str) -> Rule:
    return Rule(text, lambda v, read: read(ci)["low"] <= 0 <= read(ci)["high"])


def ci_excludes(ci: str, positive: bool, text: str) -> Rule:
    """The interval at ``ci`` ({"low", "high", "level"}) lies wholly above 0 (``positive``) or wholly below it."""
    return Rule(text, lambda v, read: read(ci)["low"] > 0 if positive else read(ci)["high"] < 0)
