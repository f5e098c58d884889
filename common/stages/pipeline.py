"""The pipeline's stages as ``reproduce.py`` runs them, in order: each one's script, where it writes, which earlier
stages' directories it reads, and which text it takes (METHOD's section numbers are in the README's stage table)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.runtime.distributed import SPLITTING_STAGES
from common.store.stage_files import METRICS_FILE, RESULTS_FILE

SAE_AND_NFM = (("--sae1_model_path", "sae1"), ("--nfm_model_path", "nfm"))


@dataclass(frozen=True)
class Stage:
    name: str
    script: str
    inputs: tuple[tuple[str, str], ...] = ()  # (flag, stage name) of every earlier stage's directory it reads
    extra: tuple[str, ...] = ()  # fixed flags of this run of the script (e.g. --original_eval)
    trains: bool = False  # trained stages write a checkpoint dir (--checkpoint_dir) finished by metrics.json
    text: str | None = None  # "train": takes --text_files; "eval": takes --eval_text_files
    uses_lm: bool = True
    resumable: bool = True

    @property
    def out_flag(self) -> str:
        return "--checkpoint_dir" if self.trains else "--output_dir"

    @property
    def done_file(self) -> str:
        """Written last by the script: its presence means the stage finished."""
        return METRICS_FILE if self.trains else RESULTS_FILE

    @property
    def splits(self) -> bool:
        """Does its work split by rank (``reproduce.py --nproc N`` runs it under torchrun)?"""
        return self.name.removesuffix("_original") in SPLITTING_STAGES

    def input_dirs(self, out_dir: Path) -> list[Path]:
        return [out_dir / stage for _, stage in self.inputs]

    def argv(self, out_dir: Path) -> list[str]:
        return [part for flag, stage in self.inputs for part in (flag, str(out_dir / stage))] + list(self.extra)


def _trained(name: str, script: str, *inputs: tuple[str, str]) -> Stage:
    return Stage(name, script, inputs, trains=True, text="train")


def _both(name: str, script: str, inputs: tuple[tuple[str, str], ...], text: str | None = None,
          chained: tuple[str, str] | None = None, resumable: bool = True) -> tuple[Stage, Stage]:
    """The stage as trained and under --original_eval; ``chained`` (flag, stage) reads the same mode's output."""
    plain, original = inputs, inputs
    if chained:
        plain, original = (*inputs, chained), (*inputs, (chained[0], chained[1] + "_original"))
    return (Stage(name, script, plain, text=text, resumable=resumable),
            Stage(name + "_original", script, original, ("--original_eval",), text=text, resumable=resumable))


BEHAVIOR = (*SAE_AND_NFM, ("--interaction_sae_path", "sae2"))
# Pipeline order of the paper: 1 → 2 → 3 → 5 → 4 → 6 → 7 → 8, then the behavioral scripts of §10 on stages 1-3. The
# KL and behavioral stages run as trained and as the original evaluated.
STAGES = (
    _trained("sae1", "part1c_sae_topK_implementation.py"),
    _trained("nfm", "part2d_residual_NFM_streaming.py", SAE_AND_NFM[0]),
    _trained("sae2", "part10_sae_decomp_of_NFM.py", *SAE_AND_NFM),
    _trained("joint", "part15_joint_SAENFM.py", *SAE_AND_NFM),
    *_both("kl14", "part14_kl_tests.py", SAE_AND_NFM, text="eval"),
    Stage("ortho", "part16_orthogonality.py", (("--sae1_model_path", "sae1"), ("--sae2_model_path", "joint")),
          uses_lm=False, resumable=False),
    Stage("bimodal", "part17_bimodal_gram.py", (("--joint_model_path", "joint"), ("--orthogonality_dir", "ortho")),
          uses_lm=False, resumable=False),
    *_both("kl18", "part18_joint_kl.py", (("--joint_model_path", "joint"),), text="eval"),
    Stage("sparsity", "part4_NFM_sparsity_inspector.py", (SAE_AND_NFM[1],), uses_lm=False, resumable=False),
    *_both("discovery", "part9b_stimulus_response_listOfDiscoveredFeatures_analysis.py", SAE_AND_NFM, resumable=False),
    *_both("selection", "part11_NFMSAE_Analysis.py", BEHAVIOR, chained=("--discovery_dir", "discovery"),
           resumable=False),
    *_both("meaning", "part12_NFMSAE_feature_meaning_large_wiki.py", BEHAVIOR, text="eval",
           chained=("--selection_dir", "selection"), resumable=False),
    *_both("clamp", "part13_logit_and_clamping_analysis_on_interaction_feature.py", BEHAVIOR,
           chained=("--selection_dir", "selection"), resumable=False),
    Stage("clamp_linear", "part13_logit_and_clamping_analysis_on_interaction_feature.py",
          (*BEHAVIOR, ("--selection_dir", "selection")), ("--pathway", "linear"), resumable=False),
)
BY_NAME = {stage.name: stage for stage in STAGES}
