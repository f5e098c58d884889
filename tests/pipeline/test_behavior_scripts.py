"""The behavioral scripts refuse bad input in one line and write nothing (METHOD §10, the issue's bad-input list);
part13's primary design and part11's held-out cell means recomputed here; the debugging tools (13b, 13c, 13d) on tiny.
Their chain end to end runs in tests/pipeline/test_reproduce.py through reproduce.py."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import part9b_stimulus_response_listOfDiscoveredFeatures_analysis as part9b
import part11_NFMSAE_Analysis as part11
import part12_NFMSAE_feature_meaning_large_wiki as part12
import part13_logit_and_clamping_analysis_on_interaction_feature as part13
import part13b_noClampHooks_openLlama3BTest as part13b
import part13c_primarySAE_hooksOnly as part13c
import part13d_primarySAEdebugging as part13d
from common.behavior.run import text_means
from common.behavior.stimuli import CELLS, STIMULI_FILE
from common.behavior.texts import stimulus_set
from common.config.presets import build_config
from common.lm.hooks import patch_layer
from common.lm.loading import load_lm
from common.models.loading import load_sae
from common.registry import TINY_MODEL
from common.stages.behavior import open_run
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


# ---- part13's primary design on the tiny run, recomputed here (METHOD §10 decision 8) ----------------------------


def _clamp(run: Path) -> dict:
    return json.loads((run / "clamp" / "results.json").read_text())


def test_the_baseline_logits_of_the_cells_are_the_clean_models(tiny_run: Path, tiny_lm):
    """Each cell's mean clean logit of its words at the prompts' last position, recomputed with the model itself."""
    design = _clamp(tiny_run)["designs"]["powered"]
    ids = {cell: [tiny_lm.tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in words]
           for cell, words in design["words"].items()}
    with torch.no_grad():
        last = torch.stack([tiny_lm.model(torch.tensor([tiny_lm.tokenizer(p)["input_ids"]])).logits[0, -1]
                            for p in design["prompts"]]).double()
    reported = design["target"]["balance"]["baseline_logit"]["cell_means"]
    for cell, cell_ids in ids.items():
        assert reported[cell] == pytest.approx(float(last[:, cell_ids].mean()), rel=1e-5, abs=1e-6), cell


def test_the_primary_test_is_read_from_its_parts(tiny_run: Path):
    results = _clamp(tiny_run)
    design, primary = results["designs"]["powered"], results["primary"]
    target = design["target"]
    entry = design["tests"][str(target["feature"])]["-4"]
    means = entry["cell_means"]
    dod = (means["formal_high"] - means["formal_low"]) - (means["casual_high"] - means["casual_low"])
    assert target["difference_of_differences"]["logits"] == pytest.approx(dod, rel=1e-9)
    assert target["mixed_model"]["coefficient"] == pytest.approx(dod, rel=1e-6)  # balanced: the GLS estimate is it
    f1, f2 = entry["by_prompt"]["F"], entry["by_word"]["F"]
    assert target["min_f"]["F"] == pytest.approx(f1 * f2 / (f1 + f2), rel=1e-12)
    assert primary["mixed_model_p"] == target["mixed_model"]["p"] and primary["design"] == "powered"
    assert primary["significant"] == (primary["mixed_model_p"] < 0.05 and primary["percentile_features"] >= 95
                                      and primary["percentile_directions"] >= 95)
    sizes = results["power"]["designs"]
    assert (sizes["powered"]["prompts"], sizes["paper"]["prompts"]) == (26, 5)
    assert sizes["powered"]["words_per_cell"] == len(design["words"]["formal_high"])
    assert results["identity_max_abs_dlogit"] == 0 and results["multipliers"] == [-4, -2, 0, 2, 4]
    assert len(design["directions"]["-4"]["F"]) == 3 and design["directions"]["-4"]["mean_abs_dresidual"] > 0
    assert results["target_choice"]["feature"] == target["feature"]


def test_part11_reports_the_target_on_the_held_out_texts(chain: dict, tmp_path: Path):
    """The target's cell means over the odd-numbered texts of each cell, recomputed through the pipeline."""
    results = json.loads((chain["selection"] / "results.json").read_text())
    cfg = build_config("selection", {"preset": "tiny", "sae1_model_path": chain["models"][3],
                                     "nfm_model_path": chain["models"][5], "interaction_sae_path": str(chain["sae2"]),
                                     "discovery_dir": str(chain["discovery"]), "output_dir": str(tmp_path / "x")})
    run = open_run(cfg)
    texts = stimulus_set(run, "selection")
    codes = text_means(run, texts.texts).secondary[:, results["target"]].double().numpy()
    for c, cell in enumerate(CELLS):
        held_out = codes[(texts.cell == c) & texts.report].mean()
        assert results["target_cell_means"][cell] == pytest.approx(held_out, rel=1e-5), cell
        assert results["target_cell_means_all_texts"][cell] == pytest.approx(codes[texts.cell == c].mean(), rel=1e-5)


# ---- the debugging tools of part13 (13b, 13c, 13d) on tiny -----------------------------------------------------


@pytest.fixture(scope="module")
def two_prompts(tmp_path_factory) -> Path:
    """The shipped stimuli with two prompts per design: the tools' mechanics in seconds."""
    doc = json.loads(STIMULI_FILE.read_text(encoding="utf-8"))
    doc["prompts"], doc["powered"]["prompts"] = doc["prompts"][:2], doc["powered"]["prompts"][:2]
    path = tmp_path_factory.mktemp("stimuli") / "two_prompts.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def test_the_clean_generations_are_the_models_own(two_prompts: Path, tmp_path: Path, tiny_lm):
    results = part13b.main(["--preset", "tiny", "--stimuli", str(two_prompts), "--output_dir", str(tmp_path / "b"),
                            "--generation_length", "4"])
    prompt = results["generations"]["paper"]["I think that"]
    ids = torch.tensor([tiny_lm.tokenizer("I think that")["input_ids"]])
    with torch.no_grad():
        for _ in range(4):  # greedy by hand: the argmax of the next-token logits, four times
            ids = torch.cat([ids, tiny_lm.model(ids).logits[:, -1:].argmax(-1)], dim=1)
    assert prompt == tiny_lm.tokenizer.decode(ids[0, -4:].tolist())
    assert set(results["generations"]) == {"powered", "paper"} and (tmp_path / "b" / "results.json").is_file()


def test_the_sae_splice_costs_what_the_spliced_model_gives(two_prompts: Path, tiny_stage1_dir: Path, tmp_path: Path):
    results = part13c.main(["--preset", "tiny", "--stimuli", str(two_prompts), "--primary_sae_path",
                            str(tiny_stage1_dir), "--output_dir", str(tmp_path / "c"), "--generation_length", "4"])
    entries = [e for prompts in results["prompt_sets"].values() for e in prompts.values()]
    assert len(entries) == 4 and all(e["kl"] > 0 and 0 <= e["top1_agreement"] <= 1 for e in entries)
    assert results["mean"]["kl"] == pytest.approx(np.mean([e["kl"] for e in entries]))
    assert (tmp_path / "c" / "splice_kl.png").is_file()
    # One prompt by hand: the spliced model is the SAE's reconstruction at layer 2 (BOS kept), and torch's kl_div of
    # the two next-token distributions over the prompt and the clean continuation is the reported KL(clean ‖ spliced).
    lm, (prompt, entry) = load_lm(TINY_MODEL, torch.device("cpu"), torch.float32), next(iter(
        results["prompt_sets"]["paper"].items()))
    sae, norm, _ = load_sae(tiny_stage1_dir)
    ids = torch.tensor([lm.tokenizer(prompt)["input_ids"] + entry["clean_token_ids"]])
    first = int(lm.adds_bos)

    def splice(hidden: torch.Tensor) -> torch.Tensor:
        recon = norm.denormalize(sae(norm.normalize(hidden[0]), decode="dense").recon)[None]
        return torch.cat([hidden[:, :first], recon[:, first:]], dim=1)

    with torch.no_grad():
        clean = torch.log_softmax(lm.model(ids).logits[0, first:], -1)
        with patch_layer(lm.model, 2, splice):
            spliced = torch.log_softmax(lm.model(ids).logits[0, first:], -1)
    kl = torch.nn.functional.kl_div(spliced, clean, log_target=True, reduction="none").sum(-1)
    assert entry["kl"] == pytest.approx(float(kl.mean()), rel=1e-4)
    assert entry["top1_agreement"] == pytest.approx(float((clean.argmax(-1) == spliced.argmax(-1)).float().mean()))


def test_the_sae_statistics_count_what_the_sae_does(tiny_stage1_dir: Path, tmp_path: Path, tiny_lm):
    results = part13d.main(["--preset", "tiny", "--sae_path", str(tiny_stage1_dir), "--output_dir",
                            str(tmp_path / "d"), "--top_k", "5", "--top_n", "3"])
    assert results["k"] == 5 and 0 < results["l0_mean"] <= 5 and results["windows_used"] == 8
    assert results["rows"] == 8 * (128 - int(tiny_lm.adds_bos))  # BOS is no row
    assert 0 <= results["dead"]["count"] < results["features"] and len(results["most_frequent"]) == 3
    fractions = [row["firing_fraction"] for row in results["most_frequent"]]
    maxima = [row["max"] for row in results["strongest"]]
    assert fractions == sorted(fractions, reverse=True) and maxima == sorted(maxima, reverse=True)
    assert results["error_by_position"]["positions"] == list(range(int(tiny_lm.adds_bos), 128))
    shares = np.asarray(results["error_by_position"]["unexplained_share"])
    assert ((shares > 0) & (shares < 1.5)).all() and 0 < results["unexplained_share"] < 1
    assert (tmp_path / "d" / "firing_frequency.png").is_file() and (tmp_path / "d" / "error_by_position.png").is_file()


def test_bad_debugging_inputs_are_refused_in_one_line(tiny_stage1_dir: Path, tiny_nfm_dir: Path, tmp_path: Path,
                                                     capsys):
    out = tmp_path / "out"
    assert "--generation_length must be at least 1" in refused(part13b.main, ["--preset", "tiny",
                                                                              "--generation_length", "0"], out, capsys)
    assert "holds a 'nfm' checkpoint" in refused(part13c.main, ["--preset", "tiny", "--primary_sae_path",
                                                                str(tiny_nfm_dir)], out, capsys)
    pickled = tiny_stage1_dir / "checkpoint_step_200000.pt"
    assert "never unpickles" in refused(part13d.main, ["--preset", "tiny", "--sae_path", str(pickled)], out, capsys)
