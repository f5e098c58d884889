"""common/reporting/rows_behavior.py: the behavioral rows pass the same checks as the report's other rows, and the
clamp rows show the design's three multipliers with the paper's figure for each."""
from __future__ import annotations

from common.paper import PAPER
from common.reporting.rows_behavior import BEHAVIOR_ROWS
from tests.unit.reporting.test_rows import check_rows, sources_read


def test_every_behavioral_row_names_a_paper_figure_a_pipeline_run_and_a_unique_name():
    check_rows(BEHAVIOR_ROWS)


def test_the_original_statistic_is_shown_at_each_multiplier_beside_the_papers():
    by_source = {row.source: row for row in BEHAVIOR_ROWS}
    for m, f in (("-4", "5.06"), ("0", "5.17"), ("4", "4.38")):
        row = by_source[f"clamp:target_by_value.{m}.original_pseudo_interaction.F"]
        assert PAPER[row.paper].text == f and row.original


def test_the_significance_row_reads_the_null_percentile():
    row = next(row for row in BEHAVIOR_ROWS if row.source == "clamp:holm_p")
    assert sources_read(row) == {"clamp:null_percentile.percentile"}
    assert row.rule.check(0.01, lambda source: 96.0)
    assert not row.rule.check(0.01, lambda source: 94.0)
    assert not row.rule.check(0.06, lambda source: 99.0)


def test_the_held_out_t_row_compares_signs_with_the_selecting_t():
    row = next(row for row in BEHAVIOR_ROWS if row.source == "discovery:formality.top.0.t_heldout")
    assert sources_read(row) == {"discovery:formality.top.0.t"}
    assert row.paper == '"— (not held out)"'
