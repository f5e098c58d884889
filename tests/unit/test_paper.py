"""common/paper.py: each of the paper's numbers shows the value it holds (its text parsed here on its own: "86.4%"
is 0.864, "17.8M" is 17.8e6, "−0.987" is -0.987), and the banners quote only numbers of the table."""
from __future__ import annotations

import math
import re

import pytest

from common.paper import BANNERS, PAPER, PaperNumber, text, value
from common.registry import STAGES

# A number as the paper's figures write it: a sign (ASCII or Unicode minus), thousands commas, an exponent, then
# "%" or "M" or "x" as its unit.
NUMBER = re.compile(r"(?<![\w.])([+\-−]?)(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?(?:e-?\d+)?)(%|M\b|x\b)?")


def numbers_in(figure: str) -> list[float]:
    found = []
    for sign, digits, suffix in NUMBER.findall(figure):
        number = float(digits.replace(",", "")) * (-1 if sign in "-−" and sign else 1)
        found.append(number / 100 if suffix == "%" else number * 1e6 if suffix == "M" else number)
    return found


def parsed(number: PaperNumber) -> float:
    """The value the figure's text states: a p after "p = " where the text gives one, a yes/no as 1/0, else the
    text's first number."""
    if number.unit == "yes/no":
        return {"yes": 1.0, "no": 0.0}[number.text.split()[0]]
    after_p = re.search(r"\bp = (\S+?)\)?$", number.text)
    if number.unit == "p" and after_p:
        return numbers_in(after_p.group(1))[0]
    return numbers_in(number.text)[0]


@pytest.mark.parametrize("figure, expected", [("86.4%", [0.864]), ("2.99x", [2.99]), ("17.8M", [17.8e6]),
                                              ("496,106,700", [496106700]), ("−0.987", [-0.987]), ("+0.987", [0.987]),
                                              ("t > 15.8", [15.8]), ("2.85e-9", [2.85e-9]), ("feature 21781", [21781]),
                                              ("133.5 of 300", [133.5, 300]), ("≈0.05", [0.05])])
def test_the_parser_reads_the_papers_spellings(figure: str, expected: list[float]):
    assert numbers_in(figure) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("key", sorted(PAPER))
def test_each_numbers_text_agrees_with_its_value(key: str):
    number = PAPER[key]
    assert number.value is not None
    assert math.isclose(parsed(number), number.value, rel_tol=1e-9, abs_tol=1e-15), (number.text, number.value)
    if "%" in number.text.split("(")[0]:
        assert number.unit == "fraction", key
    if number.unit == "fraction":
        assert 0 <= number.value <= 1, key
    assert number.where and number.unit


def test_hand_checked_entries():
    assert (PAPER["sae1.variance_explained"].text, PAPER["sae1.variance_explained"].value) == ("86.4%", 0.864)
    assert (PAPER["bimodal.interaction_low"].text, PAPER["bimodal.interaction_low"].value) == ("82.8%", 0.828)
    assert (PAPER["bimodal.residual_r"].text, PAPER["bimodal.residual_r"].value) == ("+0.987", 0.987)
    assert (PAPER["bimodal.linear_r"].text, PAPER["bimodal.linear_r"].value) == ("−0.866", -0.866)


def test_text_and_value_read_the_table(monkeypatch: pytest.MonkeyPatch):
    assert text("joint.improvement") == "41.3%" and text("") == "—"
    assert value("joint.improvement") == 0.413
    monkeypatch.setitem(PAPER, "nothing.single", PaperNumber("a range", None, "fraction", "nowhere"))
    with pytest.raises(KeyError, match="no single number"):
        value("nothing.single")
    with pytest.raises(KeyError):
        text("no.such.key")


# What the banners say that is the paper's setup, not a result: its shapes, the PCA threshold, the model's size, the
# stimulus design (sentences per cell, multipliers, degrees of freedom, tests corrected over).
SETUP = ("F=50,000", "d=3,200", "for 90%", "OpenLLaMA-3B", "10 per cell", "df (3, 36)", "df (1, 78)", "m = -4",
         "m = 0", "m = 4", "25 tests")


def paper_numbers() -> list[float]:
    every = [n.value for n in PAPER.values() if n.value is not None]
    return every + [x for n in PAPER.values() for x in numbers_in(n.text)]


@pytest.mark.parametrize("stage", sorted(BANNERS))
def test_banners_quote_only_numbers_of_the_table(stage: str):
    assert stage in STAGES
    banner = BANNERS[stage]
    for phrase in SETUP:
        banner = banner.replace(phrase, "")
    known = paper_numbers()
    for number in numbers_in(banner):
        assert any(math.isclose(number, k, rel_tol=1e-9) for k in known), f"{stage}: {number} is not in PAPER"


def test_a_number_not_in_the_table_is_caught():
    """The check above on a banner with one stale figure."""
    stale = BANNERS["kl14"].replace(PAPER["kl14.sae_ratio"].text, "3.01x")
    assert not all(any(math.isclose(n, k, rel_tol=1e-9) for k in paper_numbers()) for n in numbers_in(stale))
