"""The page's numbers: as REPORT.md writes them, but percents to two decimals, each naming its file and key."""
from __future__ import annotations

from common.reporting.html.page import num, number_text


def test_numbers_are_written_as_the_report_writes_them_with_percents_to_two_decimals():
    assert number_text(0.123456, "pct") == "12.35%"
    assert number_text(0.5, "num") == "0.5" and number_text(123456.789) == "1.235e+05"
    assert number_text(1234567, "int") == "1,234,567"
    assert number_text(True, "bool") == "yes" and number_text(0, "bool") == "no"
    assert number_text(None) == "—" and number_text(float("nan")) == "nan" and number_text(float("inf")) == "inf"


def test_a_number_names_its_source_and_keeps_its_exact_value():
    html = num(0.25, "sae1:variance_explained", "pct")
    assert 'data-source="sae1:variance_explained"' in html and 'data-value="0.25"' in html and ">25.00%<" in html
    assert num(None, "kl14:zero_ablation.kl.mean") == ('<span class="num none" '
                                                          'data-source="kl14:zero_ablation.kl.mean">—</span>')
