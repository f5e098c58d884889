"""The behavioral scripts refuse bad input in one line and write nothing (METHOD §10, the issue's bad-input list);
their chain end to end runs in tests/test_reproduce.py through reproduce.py."""
import json
import shutil
from pathlib import Path

import pytest

import part9b_stimulus_response_listOfDiscoveredFeatures_analysis as part9b
import part11_NFMSAE_Analysis as part11
import part12_NFMSAE_feature_meaning_large_wiki as part12
import part13_logit_and_clamping_analysis_on_interaction_feature as part13
from common.stages.cli import run_cli


@pytest.fixture(scope="module")
def chain(tiny_stage1_dir: Path, tiny_nfm_dir: Path, tiny_sae2_dir: Path, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("behavior")
    models = ["--preset", "tiny", "--sae1_model_path", str(tiny_stage1_dir), "--nfm_model_path", str(tiny_nfm_dir)]
    part9b.main([*models, "--output_dir", str(root / "discovery")])
    part11.main([*models, "--interaction_sae_path", str(tiny_sae2_dir), "--discovery_dir", str(root / "discovery"),
                 "--output_dir", str(root / "selection")])
    return {"root": root, "discovery": root / "discovery", "selection": root / "selection", "sae2": tiny_sae2_dir,
            "models": models}


def refused(main, argv: list[str], out: Path, capsys: pytest.CaptureFixture) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [*argv, "--output_dir", str(out)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert exit_info.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert not out.exists(), "a refused run must write nothing"
    return lines[0]


def test_bad_behavioral_inputs_are_refused_in_one_line(chain: dict, tmp_path: Path, capsys):
    models, sae2, selection = chain["models"], ["--interaction_sae_path", str(chain["sae2"])], chain["selection"]
    clamp = [*models, *sae2, "--selection_dir", str(selection)]
    out = tmp_path / "out"
    assert "a value other than 1" in refused(part13.main, [*clamp, "--multipliers", "1", "1"], out, capsys)
    # The design's words are not single tokens of the tiny model's 512-piece vocabulary.
    assert "too few single-token target words" in refused(part13.main, [*clamp, "--word_list", "design"], out, capsys)

    outside = shutil.copytree(selection, tmp_path / "selection_outside")
    results = json.loads((outside / "results.json").read_text())
    results["target"] = 10_000
    (outside / "results.json").write_text(json.dumps(results))
    line = refused(part12.main, [*models, *sae2, "--selection_dir", str(outside)], out, capsys)
    assert "outside this secondary SAE" in line
    assert "outside the 150 features" in refused(part13.main, [*models, *sae2, "--selection_dir", str(outside)], out,
                                                  capsys)

    other_nfm = shutil.copytree(chain["sae2"], tmp_path / "sae2_other")
    config = json.loads((other_nfm / "config.json").read_text())
    config["nfm"]["weights_sha256"] = "sha256:" + "0" * 64
    (other_nfm / "config.json").write_text(json.dumps(config))
    line = refused(part11.main, [*models, "--interaction_sae_path", str(other_nfm), "--discovery_dir",
                                 str(chain["discovery"])], out, capsys)
    assert "trained on another NFM" in line

    stimuli = tmp_path / "stimuli.json"
    stimuli.write_text(json.dumps({"sets": {"discovery": {"formal_high": ["a b"]}}, "words": {}, "prompts": []}))
    assert str(stimuli) in refused(part9b.main, [*models, "--stimuli", str(stimuli)], out, capsys)
