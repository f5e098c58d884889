"""The part17 report rows' rules (METHOD §13.4), on constructed results: each share's claim reads its own interval,
in the paper's direction (the residual share falls as the interaction share rises)."""
import pytest

from common.reporting.report import lookup
from common.reporting.rows import ROWS

SHARES = ("interaction", "linear", "nonlinear", "residual")


def _outputs(sign: float) -> dict:
    """part17's results with every interaction-side interval at ``sign`` and the residual's opposite."""
    interval = lambda s: {"estimate": s * 0.05, "low": s * 0.05 - 0.01, "high": s * 0.05 + 0.01, "level": 0.99}  # noqa: E731
    signed = {share: (-sign if share == "residual" else sign) for share in SHARES}
    return {"bimodal": {"controlled": {
        "difference_of_differences": {share: interval(signed[share]) for share in SHARES},
        "spearman_difference": {share: interval(-signed[share]) for share in SHARES},
        "trained": {"spearman": {share: {"r": -signed[share] * 0.9} for share in SHARES}}}}}


@pytest.mark.parametrize("sign, holds", [(1.0, True), (-1.0, False)])
def test_the_difference_of_differences_and_spearman_rules_point_the_papers_way(sign, holds):
    outputs = _outputs(sign)
    rows = [row for row in ROWS if row.stage == "bimodal" and row.rule is not None]
    assert len(rows) == 8  # four differences of differences, four trained r against the control's
    for row in rows:
        read = lambda source: lookup(outputs, source)  # noqa: E731
        assert row.rule.check(read(row.source), read) is holds, row.name


def test_the_residual_rows_repeat_the_interaction_rows():
    repeats = {row.source: row.complement_of for row in ROWS if row.complement_of}
    assert repeats["bimodal:controlled.difference_of_differences.residual.estimate"] == (
        "bimodal:controlled.difference_of_differences.interaction.estimate")
    spearman = "bimodal:controlled.trained.spearman"
    assert repeats[f"{spearman}.residual.r"] == f"{spearman}.interaction.r"
    assert {row.source for row in ROWS if row.fixed} == {"joint:parameters.paper_style.shares.nfm_linear",
                                                         "joint:parameters.paper_style.shares.nfm_embeddings"}
