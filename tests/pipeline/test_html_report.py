"""The tiny run's REPORT.html, SAEBench files and dashboards (METHOD §15): the page opens in a real headless Chromium
with no console error and every image decoded; it names no address outside itself; every number a dashboard shows is
its results file's, read back here by the key the page names; the SAEBench files validate against SAEBench's own
schema and hold the scores computed here from the KL stages' means."""
import base64
import io
import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from matplotlib.image import imread
from safetensors import safe_open

import part12_NFMSAE_feature_meaning_large_wiki as part12
from common.reporting.html.dashboards import read_sources, write_feature_pages
from tests.browser import Browser, find_chromium, open_page
from tests.helpers import DATA


def _page(run: Path) -> str:
    """REPORT.html with its inline images' bytes left out (megabytes no assertion here reads)."""
    return re.sub(r"base64,[A-Za-z0-9+/=]+", "base64,", (run / "REPORT.html").read_text(encoding="utf-8"))


def _read(run: Path, source: str) -> Any:
    """``stage:key.path`` read from the run folder's file, written out here apart from the report's own lookup."""
    stage, path = source.split(":", 1)
    value = json.loads((run / stage / "results.json").read_text())
    for key in path.split("."):
        value = value[int(key)] if isinstance(value, list) else value[key]
    return value


class Numbers(HTMLParser):
    """Every element that names its source, with the dashboard it sits in and the text it shows."""

    def __init__(self) -> None:
        super().__init__()
        self.dashboard: str | None = None
        self.open: list[dict] = []
        self.found: list[dict] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attrs = dict(attrs)
        if tag == "section" and "dashboard" in (attrs.get("class") or ""):
            self.dashboard = attrs["id"]
        if tag == "span" and ("data-source" in attrs or "data-code" in attrs):
            entry = {**attrs, "dashboard": self.dashboard, "text": "", "codes": [], "tokens": []}
            if "data-code" in attrs and self.open:
                self.open[-1]["codes"].append(float(attrs["data-code"]))
            self.open.append(entry)
            self.found.append(entry)
        elif tag == "span" and self.open:
            self.open.append(self.open[-1])

    def handle_data(self, data: str) -> None:
        if self.open:
            self.open[-1]["text"] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "span" and self.open:
            done = self.open.pop()
            if "data-code" in done and self.open:
                self.open[-1]["tokens"].append(done["text"])
        if tag == "section":
            self.dashboard = None


def _shown(text: str, kind: str) -> float:
    return float(text.rstrip("%").replace(",", "")) / (100 if kind == "pct" else 1)


def test_every_dashboard_number_is_its_results_file_s(tiny_run: Path):
    parser = Numbers()
    parser.feed(_page(tiny_run))
    in_dashboards = [e for e in parser.found if e["dashboard"] and "data-source" in e]
    assert len({e["dashboard"] for e in in_dashboards}) >= 2
    selection = json.loads((tiny_run / "selection" / "results.json").read_text())
    checked = 0
    for entry in in_dashboards:
        kind, feature = entry["dashboard"].split("-")[1:]
        source = entry["data-source"]
        stage, path = source.split(":", 1)
        # a number sits in the dashboard of the feature it belongs to
        allowed = {"meaning": (f"features.{feature}.", f"primary_features.{feature}."),
                   "clamp": (f"tests.{feature}.",), "selection": ("target_cell_means.",), "discovery": ("",)}[stage]
        assert path.startswith(allowed), (entry["dashboard"], source)
        if stage == "selection":
            assert selection["target"] == int(feature)
        if stage == "discovery":
            assert _read(tiny_run, source.rsplit(".", 1)[0] + ".feature") == int(feature)
        value = _read(tiny_run, source)
        if "data-value" in entry:
            assert float(entry["data-value"]) == value, source
            assert _shown(entry["text"], entry["data-kind"]) == pytest.approx(value, rel=5e-4, abs=5e-5), source
            checked += 1
        elif entry["codes"]:  # an example's tokens, each with its code
            assert entry["codes"] == value["codes"] and entry["tokens"] == value["tokens"], source
            checked += 1
    assert checked >= 50


def test_the_batched_drivers_equal_part11_s_attribution(tiny_run: Path):
    """part12's drivers of every secondary feature, every primary's ablation of a text in one batch, against part11's
    plain attribution (one primary per pass) of its target, on the same texts, in both evaluations."""
    for suffix in ("", "_original"):
        selection = json.loads((tiny_run / f"selection{suffix}" / "results.json").read_text())
        meaning = json.loads((tiny_run / f"meaning{suffix}" / "results.json").read_text())
        batched = meaning["features"][str(selection["target"])]["attribution"]
        assert [row["primary"] for row in batched] == [row["primary"] for row in selection["attribution"]]
        for mine, plain in zip(batched, selection["attribution"]):
            assert mine["mean_code_drop"] == pytest.approx(plain["mean_code_drop"], rel=1e-5, abs=1e-9)
            assert mine["active_share"] == plain["active_share"]


def test_each_dashboard_s_scan_agrees_with_itself(tiny_run: Path):
    """What part12's scan keeps, held to invariants of its own arithmetic: the outlined token carries the example's
    code, the examples run from the feature's largest code down, the histogram counts every active token once, the
    density is active tokens over tokens and equals part12's own active share."""
    meaning = json.loads((tiny_run / "meaning" / "results.json").read_text())
    entries = [*meaning["features"].values(), *meaning["primary_features"].values()]
    assert any(entry["dashboard"]["examples"] for entry in entries)
    for entry in entries:
        dash = entry["dashboard"]
        codes = [example["code"] for example in dash["examples"]]
        assert codes == sorted(codes, reverse=True) and all(code > 0 for code in codes)
        for example in dash["examples"]:
            assert example["codes"][example["peak"]] == example["code"]
            assert len(example["tokens"]) == len(example["codes"]) and max(example["codes"]) <= dash["max_code"]
        assert not codes or dash["max_code"] == codes[0]
        assert sum(dash["histogram"]["counts"]) == dash["active_positions"]
        assert dash["density"] == dash["active_positions"] / dash["positions"] == entry["active_share"]


def test_the_logit_lens_is_the_unembedding_of_the_sigma_scaled_decoder_row(tiny_run: Path, tiny_lm):
    """A primary feature's lens, recomputed here from the stage-1 files and the LM's own weights."""
    meaning = json.loads((tiny_run / "meaning" / "results.json").read_text())
    feature, entry = next(iter(meaning["primary_features"].items()))
    with safe_open(str(tiny_run / "sae1" / "best_model.safetensors"), "pt") as handle:
        row = handle.get_tensor("W_dec")[int(feature)].double()
    with safe_open(str(tiny_run / "sae1" / "norm_stats.safetensors"), "pt") as handle:
        sigma = handle.get_tensor("std").double()
    model = tiny_lm.model
    logits = model.lm_head.weight.double() @ (row * sigma * model.model.norm.weight.double())
    top = logits.topk(len(entry["logit_lens"]["top"]))
    assert [t["token_id"] for t in entry["logit_lens"]["top"]] == top.indices.tolist()
    assert [t["logit"] for t in entry["logit_lens"]["top"]] == pytest.approx(top.values.tolist(), rel=1e-4)
    bottom = logits.topk(len(entry["logit_lens"]["bottom"]), largest=False)
    assert [t["token_id"] for t in entry["logit_lens"]["bottom"]] == bottom.indices.tolist()


def test_report_html_names_no_address_outside_itself(tiny_run: Path):
    page = _page(tiny_run)
    assert not re.search(r"(https?:|ftp:)?//[\w.-]+\.[a-z]{2,}", page)
    assert "<script" not in page and "<link" not in page and "@import" not in page and "url(" not in page
    sources = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert sources and all(s == "data:image/png;base64," or s.startswith("#") for s in sources)


def test_every_inline_figure_is_its_stage_s_png_whole(tiny_run: Path):
    """Each image is the PNG file its caption names, byte for byte, and decodes to its last row (a browser shows a
    truncated PNG's first rows without complaint)."""
    page = (tiny_run / "REPORT.html").read_text(encoding="utf-8")
    figures = re.findall(r'<img src="data:image/png;base64,([^"]+)"[^>]*><figcaption>([^<]+)</figcaption>', page)
    assert len(figures) == len(list(tiny_run.glob("*/*.png"))) >= 20
    for data, caption in figures:
        raw = base64.b64decode(data)
        assert raw == (tiny_run / caption).read_bytes(), caption
        assert imread(io.BytesIO(raw), format="png").ndim == 3


def test_saebench_files_validate_and_hold_the_kl_means(tiny_run: Path):
    schema = json.loads((DATA / "saebench" / "eval_output_schema_core.json").read_text())
    for name, kl_stage, condition, stage in (("sae1", "kl14", "sae", "sae1"), ("sae_nfm", "kl14", "sae_nfm", "nfm"),
                                             ("joint", "kl18", "joint_full", "joint")):
        core = json.loads((tiny_run / "saebench" / "core" / f"{name}_eval_results.json").read_text())
        Draft202012Validator(schema).validate(core)
        metrics, missing = core["eval_result_metrics"], core["eval_result_unstructured"]["not_available"]
        kl = json.loads((tiny_run / kl_stage / "results.json").read_text())
        ce_clean, ce_model = kl["clean"]["ce_next"]["mean"], kl["conditions"][condition]["ce_next"]["mean"]
        assert metrics["model_performance_preservation"]["ce_loss_with_sae"] == ce_model
        if "zero_ablation" in kl:
            ce_zero, kl_zero = kl["zero_ablation"]["ce_next"]["mean"], kl["zero_ablation"]["kl"]["mean"]
            assert metrics["model_performance_preservation"]["ce_loss_score"] == pytest.approx(
                (ce_zero - ce_model) / (ce_zero - ce_clean))
            assert metrics["model_behavior_preservation"]["kl_div_score"] == pytest.approx(
                1 - kl["conditions"][condition]["kl"]["mean"] / kl_zero)
        else:  # a KL stage without the zero-ablation condition: no score is invented
            assert metrics["model_performance_preservation"]["ce_loss_score"] == -1
            assert "model_performance_preservation.ce_loss_score" in missing
        terms = json.loads((tiny_run / stage / "metrics.json").read_text())["saebench_terms"]
        assert metrics["reconstruction_quality"]["explained_variance"] == terms["explained_variance"]
        # the three models' terms are taken on the same held-out rows (stage 1's), the SAE + NFM at the NFM's K
        stage1 = json.loads((tiny_run / "sae1" / "metrics.json").read_text())
        assert terms["rows"] == stage1["evaluated_rows"]
        assert terms["l2_norm_in"] == pytest.approx(stage1["saebench_terms"]["l2_norm_in"], rel=1e-9)
        nfm_config = json.loads((tiny_run / "nfm" / "config.json").read_text())["config"]
        assert terms["k"] == (nfm_config["sae_k"] if name == "sae_nfm" else stage1["saebench_terms"]["k"])
        firing = tiny_run / ("joint" if name == "joint" else "sae1") / "feature_firing.safetensors"
        if firing.is_file():
            with safe_open(str(firing), "pt") as handle:
                counts, rows = handle.get_tensor("firing_counts"), int(handle.metadata()["held_out_rows"])
            assert metrics["sparsity"]["l0"] == pytest.approx(float(counts.sum()) / rows)
            assert metrics["misc_metrics"]["freq_over_10_percent"] == pytest.approx(
                float((counts / rows > 0.1).double().mean()))
        else:
            assert metrics["sparsity"]["l0"] == -1 and "sparsity.l0" in missing


@pytest.fixture(scope="module")
def browser():
    executable, reason = find_chromium()
    if executable is None:
        pytest.skip(reason)
    opened = Browser(executable)
    yield opened
    opened.close()


def _artifacts(tmp_path: Path) -> Path:
    return Path(os.environ.get("TEST_ARTIFACTS", tmp_path))


def test_report_html_in_a_real_browser(tiny_run: Path, browser: Browser, tmp_path: Path):
    shot = _artifacts(tmp_path) / "REPORT.html.png"
    facts = open_page(browser, tiny_run / "REPORT.html", shot)
    assert facts["console_errors"] == []
    assert len(facts["images"]) >= 20
    assert all(image["naturalWidth"] > 0 and image["decoded"] for image in facts["images"]), facts["images"]
    rows = json.loads((tiny_run / "report.json").read_text())["rows"]
    sections = {row["section"] for row in rows}
    assert facts["claims_rows"] == len(rows) + len(sections)  # every row, under its section's heading
    assert facts["dashboards"] >= 1 and facts["highlighted"] >= 1
    assert shot.stat().st_size > 10_000


def test_the_browser_check_sees_a_broken_page(browser: Browser, tmp_path: Path):
    """The assertions above can fail: a corrupt inline image (no console error of its own) and a script error."""
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><body><img src="data:image/png;base64,iVBORw0KGgoAAAAbroken" alt="x">'
                    "<script>console.error('planted');</script></body></html>")
    facts = open_page(browser, page, tmp_path / "broken.png")
    assert facts["images"][0]["naturalWidth"] == 0 and not facts["images"][0]["decoded"]
    assert facts["console_errors"] and "planted" in facts["console_errors"][0]


def test_part12_writes_one_page_per_feature(tiny_run: Path, tmp_path: Path, capsys):
    with pytest.raises(SystemExit):
        part12.main(["--help"])
    assert "--feature_pages" in capsys.readouterr().out
    src = read_sources(tiny_run)
    pages = write_feature_pages(tmp_path, src.meaning, src.selection, src.clamp, src.discovery)
    names = {page.name for page in pages}
    assert names == {f"secondary_{f}.html" for f in src.meaning["features"]} | {
        f"primary_{p}.html" for p in src.meaning["primary_features"]}
    target = (tmp_path / "features" / f"secondary_{src.selection['target']}.html").read_text(encoding="utf-8")
    assert "part13&#x27;s clamp target" in target and 'href="primary_' in target
