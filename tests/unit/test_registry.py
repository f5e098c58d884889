"""common/registry.py: the table of stages. Each stage's config class and script exist; every pipeline run reads only
earlier runs; the presets and the pipeline order are what the paper's chain and a hand-written list say."""
from __future__ import annotations

import dataclasses

from common.config import stages as config_stages
from common.registry import PRESET_COMMON, PRESET_NAMES, STAGES, Run, all_runs, pipeline_runs, preset_entries, stage_of
from tests.helpers import ROOT

# Pipeline order of the paper (1 → 2 → 3 → 5 → 4 → 6 → 7 → 8, then the behavioral scripts), written out by hand.
ORDER = ["sae1", "nfm", "sae2", "joint", "kl14", "kl14_original", "ortho", "bimodal", "kl18", "kl18_original",
         "sparsity", "discovery", "discovery_original", "selection", "selection_original", "meaning",
         "meaning_original", "clamp", "clamp_original", "clamp_linear", "ridge", "planted"]
# The controls that only study.py's controls question runs (METHOD §14), also by hand.
STUDY_ONLY = {"kl14_nfm_linear", "kl18_joint_linear", "nfm_linear", "nfm_shuffled", "nfm_beyond_ridge", "joint_linear",
              "sae_matched", "sae_untied", "sae_params", "kl_sae_matched", "kl_sae_untied", "kl_sae_params",
              "planted_sweep", "planted_recipe_eps"}


def test_every_stages_config_class_resolves_in_the_config_module():
    for name, stage in STAGES.items():
        cls = getattr(config_stages, stage.config)
        assert dataclasses.is_dataclass(cls) and cls.__name__ == stage.config, name
        assert config_stages.STAGE_CONFIGS[name] is cls
    assert len({stage.config for stage in STAGES.values()}) == len(STAGES)  # no class serves two stages


def test_every_stages_script_exists_and_names_its_stage():
    for stage in STAGES.values():
        script = ROOT / stage.script
        assert script.is_file(), stage.script
        text = script.read_text(encoding="utf-8")
        assert stage.config in text, f"{stage.script} does not use {stage.config}"


def test_the_pipeline_runs_in_the_papers_order():
    assert [run.name for _, run in pipeline_runs()] == ORDER
    assert "export" not in {stage.name for stage, _ in pipeline_runs()}  # a tool run by hand
    assert {run.name for _, run in all_runs() if not run.in_main_job} == STUDY_ONLY


def test_every_runs_inputs_name_an_earlier_run():
    earlier: set[str] = set()
    for _, run in pipeline_runs():
        for flag, source in run.inputs:
            assert source in earlier, f"{run.name} reads {source} ({flag}) before it ran"
            assert flag.startswith("--")
        assert run.name not in earlier, f"two runs named {run.name}"
        earlier.add(run.name)


def test_an_original_run_reads_original_runs_of_its_chain_and_says_so():
    runs = {run.name: run for _, run in pipeline_runs()}
    assert runs["kl14_original"] == Run("kl14_original", (("--sae1_model_path", "sae1"), ("--nfm_model_path", "nfm")),
                                        ("--original_eval",))
    assert runs["selection_original"].inputs[-1] == ("--discovery_dir", "discovery_original")
    assert runs["selection"].inputs[-1] == ("--discovery_dir", "discovery")
    assert runs["clamp_original"].inputs[-1] == ("--selection_dir", "selection_original")
    assert runs["clamp_linear"].inputs[-1] == ("--selection_dir", "selection")
    # the linear control tests its own Δ only, without the nulls of a feature it does not test
    assert runs["clamp_linear"].extra == ("--pathway", "linear", "--null_features", "0", "--null_directions", "0")
    for name, run in runs.items():
        assert ("--original_eval" in run.extra) == name.endswith("_original"), name


def test_stage_of_maps_every_run_to_its_stage():
    assert stage_of("kl14_original").name == "kl14"
    assert stage_of("clamp_linear").name == "clamp"
    assert stage_of("sae1").name == "sae1"
    for name in ORDER:
        assert stage_of(name).name == name.removesuffix("_original").removesuffix("_linear")
    assert stage_of("sae_untied").name == "sae_control" and stage_of("planted_sweep").name == "planted"


def test_preset_entries_hold_the_common_entry_and_each_stages_own():
    assert preset_entries("paper") == {"common": {}}  # no flags: the paper's configuration
    controls = {"nfm_control", "joint_linear", "sae_control", "kl_control", "planted"}
    assert set(preset_entries("cpu")) == {"common", "sae1", "nfm", "sae2", "joint", "kl14", "kl18", "meaning", "clamp",
                                          "sae_debug", *controls}
    assert set(preset_entries("tiny")) == {"common", "sae1", "nfm", "sae2", "joint", "kl14", "bimodal", "kl18",
                                           "discovery", "selection", "meaning", "clamp", "clean_generations",
                                           "sae_splice", "sae_debug", *controls}
    for preset in PRESET_NAMES:
        entries = preset_entries(preset)
        assert entries["common"] is PRESET_COMMON[preset]
        for name, values in entries.items():
            if name != "common":
                assert values is STAGES[name].presets[preset]
    assert {preset for stage in STAGES.values() for preset in stage.presets} <= set(PRESET_NAMES)


def test_the_stages_that_split_under_torchrun_and_why_the_others_do_not():
    assert {name for name, stage in STAGES.items() if stage.splits} == {"sae1", "sae2", "kl14", "kl18", "kl_control"}
    for name, stage in STAGES.items():
        assert stage.one_process, name


def test_a_trained_stage_reads_training_text_and_resumes():
    trained = {name for name, stage in STAGES.items() if stage.trains}
    assert trained == {"sae1", "nfm", "sae2", "joint", "nfm_control", "joint_linear", "sae_control"}
    for name in trained:
        assert STAGES[name].text == "train" and STAGES[name].resumable and STAGES[name].uses_lm
    no_lm = {"ortho", "bimodal", "sparsity", "planted", "export"}
    assert {name for name, stage in STAGES.items() if not stage.uses_lm} == no_lm
