"""study.py on the tiny preset, end to end on the session's tiny reproduce.py run: every question's table holds the
numbers its stages wrote (read back here by hand, not through common/reporting/report.py), each number names the command
that wrote it, a seed changes the numbers and the same seed reproduces them, and the dip test and valley check tell a
bimodal sample from a unimodal one."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import study
from common.errors import UserError
from common.reporting.report import write_report
from common.reporting.study_bimodality import initial_decoder
from common.stats import bimodality, dip_test, valley
from tests.helpers import ROOT


@pytest.fixture(scope="module")
def tiny_study(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("study") / "study"
    # One extra seed (the cpu study runs two): enough to see a seed change the numbers, and 11 s less suite time.
    # Its own process, as a user runs it: study.py forks each stage from a parent that has run no torch op, and this
    # test process has (an OpenMP thread pool does not survive a fork: the stage would hang on its first op).
    result = subprocess.run([sys.executable, str(ROOT / "study.py"), "--preset", "tiny", "--output_dir", str(out),
                             "--main_run", str(tiny_run), "--seeds", "1",
                             # the controls question's own runs are tested apart (tests/pipeline/test_controls.py)
                             "--questions", "regime,k,pathology,length,seeds,bimodality"],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, json.loads((out / "study.json").read_text(encoding="utf-8"))


def _read(folder: Path, source: str):
    """``stage:key.path`` walked by hand in the stage's own output file."""
    stage, path = source.split(":", 1)
    name = "metrics.json" if (folder / stage / "metrics.json").is_file() else "results.json"
    value = json.loads((folder / stage / name).read_text(encoding="utf-8"))
    for key in path.split("."):
        value = value[int(key)] if isinstance(value, list) else value[key]
    return value


def test_every_question_has_a_table_and_a_finding(tiny_study):
    out, result = tiny_study
    assert list(result["questions"]) == ["regime", "k", "pathology", "length", "seeds", "bimodality", "controls"]
    assert all(q["finding"] != "not run" for q in result["questions"].values())
    markdown = (out / "STUDY.md").read_text(encoding="utf-8")
    for number, title in enumerate((q["title"] for q in result["questions"].values()), start=1):
        assert f"## {number}. {title}" in markdown


def test_each_number_is_its_stage_output_and_names_its_command(tiny_study, tiny_run):
    out, result = tiny_study
    checked = 0
    for name in ("regime", "k", "pathology", "length"):
        for row in result["questions"][name]["rows"]:
            for cell in row["cells"]:
                variant, source = cell["source"].split("/", 1)
                folder = tiny_run if variant == "main" else out / variant
                assert cell["value"] == _read(folder, source), (name, row["name"], cell["column"])
                record = json.loads((folder / "reproduce_records" / f"{source.split(':')[0]}.json").read_text())
                assert cell["command"] == " ".join(["python", record["script"], *record["argv"]])
                checked += 1
    assert checked > 40
    commands = {cell["source"].split(":")[0]: cell["command"] for name in ("regime", "k", "length")
                for row in result["questions"][name]["rows"] for cell in row["cells"]}
    # each variant changes what it says it changes (tiny: K 20, 100 stage-1 steps, 2 joint epochs per chunk)
    assert "--precision faithful-fp16" in commands["fp16/sae1"] and "--precision" not in commands["fp16/ortho"]
    assert commands["trained_k/nfm"].endswith("--sae_k 20 --top_n_features 20")
    assert commands["long/sae1"].endswith("--train_steps 300") and commands["long/joint"].endswith(
        "--epochs_per_chunk 6")
    pathology = result["questions"]["pathology"]["rows"][0]["cells"]
    assert [cell["source"].split(":")[0] for cell in pathology] == ["main/kl14", "trained_k/kl14",
                                                                     "main/kl14_original"]
    # the variants read the main run's earlier stages, not copies of them
    assert (out / "trained_k" / "sae1").resolve() == (tiny_run / "sae1").resolve()
    fp16 = json.loads((out / "fp16" / "sae1" / "config.json").read_text())
    assert fp16["precision_regime"] == "faithful-fp16"


def test_derived_share_and_seed_summary_follow_from_the_table(tiny_study, tiny_run):
    out, result = tiny_study
    before = _read(tiny_run, "nfm:residual_mse_before_val")
    before_k = _read(out / "trained_k", "nfm:residual_mse_before_val")
    after = _read(tiny_run, "nfm:residual_mse_after_val")
    restored = result["questions"]["k"]["derived"]["restored_share"]
    assert restored == pytest.approx((before - before_k) / (before - after))
    seeds = result["questions"]["seeds"]
    assert seeds["seeds"] == [0, 1]
    row = next(r for r in seeds["rows"] if r["source"] == "sae1:mse")
    values = [_read(folder, "sae1:mse") for folder in (tiny_run, out / "seed1")]
    assert row["values"] == values and row["mean"] == pytest.approx(np.mean(values))
    assert row["sd"] == pytest.approx(np.std(values, ddof=1))


def test_a_seed_changes_the_numbers_and_the_same_seed_reproduces_them(tiny_study, tiny_run, tmp_path):
    from part1c_sae_topK_implementation import main as stage1

    out, _ = tiny_study
    seed1 = json.loads((out / "seed1" / "sae1" / "metrics.json").read_text())
    seed0 = json.loads((tiny_run / "sae1" / "metrics.json").read_text())
    assert seed1["mse"] != seed0["mse"]
    again = stage1(["--preset", "tiny", "--seed", "1", "--checkpoint_dir", str(tmp_path / "sae1"),
                    "--cache_dir", str(tiny_run / "activation_cache")])
    assert again["mse"] == seed1["mse"] and again["dead_fraction"] == seed1["dead_fraction"]


def test_the_initial_decoder_is_re_created_from_the_seed(tiny_run):
    """A feature never selected gets no gradient and keeps its initial row; a wrong seed would match none."""
    from common.models.sae import TopKSAE

    trained = TopKSAE.load(tiny_run / "sae1").W_dec.detach()
    initial = initial_decoder(tiny_run / "sae1")
    cosine = torch.nn.functional.cosine_similarity(trained, initial, dim=1)
    other = torch.nn.functional.cosine_similarity(trained, torch.roll(initial, 1, dims=0), dim=1)
    assert float(cosine.median()) > 0.5 and float(other.abs().median()) < 0.2


def test_dip_test_and_valley_tell_bimodal_from_unimodal():
    rng = np.random.default_rng(0)
    two_modes = np.concatenate([rng.normal(0.05, 0.01, 3000), rng.normal(0.37, 0.05, 3000)])
    one_mode = rng.normal(0.395, 0.05, 6000)
    skewed = rng.gamma(2.0, 0.1, 6000)  # one mode, long tail: BIC prefers two Gaussians, the valley check does not
    assert dip_test(two_modes)["bimodal"] and dip_test(two_modes)["p"] < 1e-3
    assert not dip_test(one_mode)["bimodal"] and not dip_test(skewed)["bimodal"]
    assert valley(two_modes, bimodality(two_modes)["two_component"]["means"])["valley"]
    assert not valley(skewed, bimodality(skewed)["two_component"]["means"])["valley"]
    # the dip of a sample is at most 1/4 and at least 1/(2n): Hartigan's bounds
    assert 1 / (2 * 6000) <= dip_test(one_mode)["dip"] < dip_test(two_modes)["dip"] <= 0.25


def test_the_report_quotes_the_study_or_says_not_studied(tiny_study, tiny_run, tmp_path):
    out, result = tiny_study
    run = tmp_path / "run"  # the stage folders of the session's run, linked: its own report stays as it is
    run.mkdir()
    for folder in tiny_run.iterdir():
        if folder.is_dir() and folder.name not in ("activation_cache", "reproduce_records"):
            (run / folder.name).symlink_to(folder, target_is_directory=True)
    timings = {"sae1": {"seconds": 1.0}}
    quoted = write_report(run, {"preset": "tiny"}, timings, out / "study.json").read_text(encoding="utf-8")
    head = quoted.split("## Time and memory per stage")[0]
    assert "## Why the numbers differ" in head
    assert all(q["finding"] in head for q in result["questions"].values())
    other = write_report(run, {"preset": "cpu"}, timings, out / "study.json").read_text(encoding="utf-8")
    assert "Not studied" in other.split("## Time and memory per stage")[0]


def test_bad_questions_and_an_unfinished_main_run_are_refused(tmp_path):
    with pytest.raises(UserError, match="unknown bogus"):
        study.main(["--preset", "tiny", "--output_dir", str(tmp_path / "a"), "--questions", "k,bogus"])
    with pytest.raises(UserError, match="stage sae1 is not finished"):
        study.main(["--preset", "tiny", "--output_dir", str(tmp_path / "b"), "--main_run", str(tmp_path / "none"),
                    "--questions", "k"])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
