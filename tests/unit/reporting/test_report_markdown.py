"""REPORT.md's table rows: one cell per column, whatever "|" the texts hold."""
from __future__ import annotations

import re

from common.reporting.report import _markdown_row

COLUMNS = 8  # figure, paper, this run, CI, original eval, rule, holds, source


def test_a_pipe_inside_a_name_or_a_rule_stays_inside_its_cell():
    row = {"name": "mean |cosine| off the diagonal, joint", "paper": "0.0148", "value": 0.03833, "kind": "num",
           "rule": "within 25% of random directions' mean |cosine|", "holds": True,
           "source": "ortho:saes.joint.cosine_offdiag.mean_abs"}
    line = _markdown_row(row)
    cells = re.split(r"(?<!\\)\|", line)[1:-1]  # the separators: pipes that no backslash escapes
    assert len(cells) == COLUMNS
    assert [cell.strip() for cell in cells] == [
        r"mean \|cosine\| off the diagonal, joint", "0.0148", "0.03833", "", "",
        r"within 25% of random directions' mean \|cosine\|", "yes", "`ortho:saes.joint.cosine_offdiag.mean_abs`"]
