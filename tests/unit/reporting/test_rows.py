"""common/reporting/rows.py: every row names a paper figure that exists (a key of PAPER, a quoted literal or none),
reads only runs of the pipeline (its source, its CI, and whatever its rule reads), and no two rows of one section
share a name. ``check_rows`` is shared with the behavioral rows' test."""
from __future__ import annotations

import pytest

from common.errors import UserError
from common.paper import PAPER
from common.registry import STAGES, pipeline_runs, stage_of
from common.reporting.rows import ROWS, Row
from common.reporting.rows_behavior import BEHAVIOR_ROWS

RUNS = {run.name for _, run in pipeline_runs()}
KINDS = {"pct", "num", "int", "bool"}


class Probe(float):
    """A value for any source: a small positive number that also answers ``["t"]``, ``["p"]``, ``["r"]``, so a rule
    runs through to the end and every source it reads is recorded."""

    def __getitem__(self, key: str) -> Probe:
        return Probe(0.001)


def sources_read(row: Row) -> set[str]:
    read: list[str] = []

    def record(source: str) -> Probe:
        read.append(source)
        return Probe(0.001)

    if row.rule:
        for value in (Probe(0.0005), Probe(0.002), Probe(1e6)):  # each side of the bounds, so `&` reaches its right
            row.rule.check(value, record)
    return set(read)


def stage_of_source(source: str) -> str:
    stage, path = source.split(":", 1)
    assert path and " " not in path, source
    return stage


def section(row: Row) -> str:
    return row.section or STAGES[stage_of(row.stage).name].section


def check_rows(rows: list[Row]) -> None:
    names: set[tuple[str, str]] = set()
    for row in rows:
        assert row.paper == "" or row.paper in PAPER or (row.paper.startswith('"') and row.paper.endswith('"')
                                                          and len(row.paper) > 2), (row.name, row.paper)
        assert stage_of_source(row.source) in RUNS, row.source
        assert row.stage == stage_of_source(row.source)
        if row.ci:
            assert stage_of_source(row.ci) in RUNS, row.ci
        for source in sources_read(row):
            assert stage_of_source(source) in RUNS, f"{row.name}: its rule reads {source}"
        if row.original:
            assert f"{row.stage}_original" in RUNS, f"{row.name}: {row.stage} has no _original run to show beside it"
        assert row.kind in KINDS, row.kind
        assert (section(row), row.name) not in names, f"two rows named {row.name!r} in {section(row)!r}"
        names.add((section(row), row.name))


def test_every_row_names_a_paper_figure_a_pipeline_run_and_a_unique_name():
    check_rows(ROWS)


def test_the_report_rows_together_are_unique_too():
    check_rows(ROWS + BEHAVIOR_ROWS)


def test_a_row_reads_its_stage_from_its_source():
    assert Row("kl14:conditions.sae.kl_reduction", "n").stage == "kl14"
    assert Row("clamp_linear:by_word.F", "n").stage == "clamp_linear"


def sources_read_without_intervals(row: Row) -> set[str]:
    """The sources a rule reads on a directory written before the KL stages stored intervals (no ``ci99`` there)."""
    read: list[str] = []

    def record(source: str) -> Probe:
        read.append(source)
        if ".ci99." in source:
            raise UserError(f"{source}: no such key")
        return Probe(0.001)

    row.rule.check(Probe(0.002), record)
    return set(read)


def test_the_kl_rows_read_their_99_percent_intervals_and_fall_back_to_the_paired_tests():
    by_name = {row.name: row for row in ROWS}
    full = by_name["KL reduction, SAE + full NFM"]
    assert full.source == "kl14:conditions.sae_nfm.kl_reduction" and full.original
    assert full.ci == "kl14:conditions.sae_nfm.ci99.kl_reduction"
    assert sources_read(full) == {"kl14:conditions.sae_nfm.ci99.kl_reduction"}
    assert sources_read_without_intervals(full) == {"kl14:conditions.sae_nfm.ci99.kl_reduction",
                                                    "kl14:conditions.sae_nfm.tests.kl_reference_minus_condition.paired"}
    ce = by_name["CE (next token) reduction, joint linear only"]
    assert ce.source == "kl18:conditions.joint_linear.ce_next_reduction"
    assert sources_read(ce) == {"kl18:conditions.joint_linear.ci99.ce_next_reduction"}
    assert "kl18:conditions.joint_linear.tests.ce_next_reference_minus_condition.paired" in \
        sources_read_without_intervals(ce)
    joint = by_name["KL reduction, joint full"]
    assert sources_read(joint) == {"kl18:conditions.joint_full.ci99.kl_reduction",
                                   "kl14:conditions.sae_nfm.kl_reduction"}
    assert joint.rule.text == ("reduction > 0: its 99% CI over windows excludes 0 (older runs: paired p < 0.01), "
                               "and above the sequential SAE + NFM reduction")
    ratio = by_name["SAE KL / ε-random KL"]
    assert sources_read(ratio) == {"kl14:conditions.sae.ci99.kl_ratio_eps_random"}


def test_the_squared_norm_rows_sit_in_their_own_section():
    squared = [row.name for row in ROWS if row.section == "Squared norms (part16)"]
    assert squared == ["standalone SAE bimodal", "joint SAE bimodal",
                       "standalone features that never moved (set apart)",
                       "joint features that never moved (set apart)",
                       "joint mixture: low mode mean (a description)", "joint mixture: high mode mean (a description)"]


def test_the_bimodal_share_rows_hold_low_above_high_against_the_untrained_control_but_for_the_residual():
    rules = {row.name: row.rule.text for row in ROWS if row.source.startswith("bimodal:") and row.rule}
    shares = ("interaction", "linear", "nonlinear")
    assert rules == {**{f"{share} share, low − high: trained minus untrained control": "99% CI above 0"
                        for share in shares},
                     "residual share, low − high: trained minus untrained control": "99% CI below 0",
                     **{f"Spearman r, squared norm vs {share} share (moved, active)":
                        "below the untrained control's r (99% CI of the difference)" for share in shares},
                     "Spearman r, squared norm vs residual share (moved, active)":
                         "above the untrained control's r (99% CI of the difference)"}
    residual = next(row for row in ROWS if row.name.startswith("residual share, low − high"))
    assert residual.complement_of == "bimodal:controlled.difference_of_differences.interaction.estimate"


def test_a_duplicate_or_a_stray_source_is_caught():
    """check_rows itself, on rows made wrong by hand."""
    good = Row("sae1:mse", "reconstruction MSE", "sae1.mse", "num")
    for bad in ([good, good], [Row("sae3:mse", "x")], [Row("sae1:mse", "x", "sae1.no_such_key")],
                [Row("sae1:mse", "x", ci="nowhere:ci")], [Row("sae1:mse", "x", original=True)],
                [Row("sae1:mse", "x", kind="percent")]):
        with pytest.raises(AssertionError):
            check_rows(bad)
