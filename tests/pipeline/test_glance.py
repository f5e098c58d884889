"""The README's "Results at a glance" (``python -m common.reporting.glance``): on the tiny run, one lead claim per
section with its values read from report.json, the count of rules that hold; and the README's own section is what
the script makes of the committed run it links, so it cannot drift from it."""
import json
import re
from pathlib import Path

import pytest

from common.errors import UserError
from common.reporting.glance import END, START, glance, lead_rows, main
from tests.helpers import ROOT


def test_glance_of_the_tiny_run(tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    report = json.loads((tiny_run / "report.json").read_text())
    ruled = [row for row in report["rows"] if "holds" in row]
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{START}\nSTALE-TABLE\n{END}\n\nafter\n")
    monkeypatch.chdir(tiny_run)  # the README links its paths as given: relative ones
    figure = sorted(Path("ortho").glob("*.png"))[0]
    main(["--report", "report.json", "--figure", str(figure), "--readme", str(readme)])
    text = readme.read_text()
    assert text.startswith("# title\n\n" + START) and text.endswith(END + "\n\nafter\n") and "STALE" not in text
    assert f"**{sum(row['holds'] for row in ruled)} of {len(ruled)} written rules hold**" in text
    table = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| section")]
    sections = list(dict.fromkeys(row["section"] for row in ruled))
    assert [line.split(" | ")[0][2:] for line in table] == sections  # one lead claim per section, in order
    first = next(row for row in ruled if row["section"] == sections[0] and row.get("paper"))
    assert table[0].startswith(f"| {first['section']} | {first['name']} | {first['paper']} |")
    assert f"![{figure.name}]({figure})" in text


def test_lead_rows_prefer_a_claim_with_a_paper_figure():
    rows = [{"section": "s", "name": "a", "paper": "—", "holds": True}, {"section": "s", "name": "b", "holds": True},
            {"section": "s", "name": "c", "paper": "5%", "holds": False}, {"section": "s", "name": "d", "paper": "1"}]
    assert [row["name"] for row in lead_rows(rows)] == ["c"]


def test_the_readme_section_is_the_committed_run_s():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index(START) : readme.index(END) + len(END)]
    linked = re.search(r"\[`([^`]+report\.json)`\]", section)
    if linked is None:
        pytest.skip("the README's glance section links no committed run yet (python -m common.reporting.glance)")
    report_path = linked.group(1)
    figure = re.search(r"!\[[^\]]*\]\(([^)]+)\)", section)
    report = json.loads((ROOT / report_path).read_text())
    assert section == glance(report, report_path, figure.group(1) if figure else None)
    assert figure is None or (ROOT / figure.group(1)).is_file()


def test_an_absolute_path_is_refused_before_the_readme_changes(tmp_path: Path):
    readme, report = tmp_path / "README.md", tmp_path / "report.json"
    readme.write_text(f"{START}\n{END}\n")
    report.write_text(json.dumps({"header": {"preset": "tiny"}, "rows": []}))
    with pytest.raises(UserError, match="relative"):
        main(["--report", str(report), "--readme", str(readme)])
    assert readme.read_text() == f"{START}\n{END}\n"
