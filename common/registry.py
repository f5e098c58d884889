"""The stages as data, in pipeline order: each one's script, config class, presets, how its work splits under
torchrun, its report section, and how ``reproduce.py`` runs it. Every list of stages in the project is read from
here (the configs and presets, torchrun's checks, reproduce.py, the study, the report); a script finds its own
entry by name, once (``STAGES[name]``).

The names a run can give are here too: the models the presets name. This module imports nothing of the project's,
so every layer may read it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

TINY_MODEL = "tiny-random-llama"
SMOLLM2_GGUF = "smollm2-135m-instruct-gguf"
PAPER_MODEL = "openlm-research/open_llama_3b"

PRESET_NAMES = ("paper", "cpu", "tiny")
Text = Literal["train", "eval"]

# How a splitting stage divides its work among the ranks.
BY_ROWS = "the harvest by cache shard (shard s to rank s mod N), then each step's batch by rows (batch / N each)"
BY_WINDOWS = "the evaluation windows by batch (batch b to rank b mod N)"


@dataclass(frozen=True)
class Run:
    """One run of a stage's script in ``reproduce.py``'s pipeline, in its own folder DIR/<name>."""

    name: str
    inputs: tuple[tuple[str, str], ...] = ()  # (flag, run name) of every earlier run's directory it reads
    extra: tuple[str, ...] = ()  # fixed flags of this run (e.g. --original_eval)
    in_main_job: bool = True  # False: only study.py runs it (the controls that cost too much for the main job)


@dataclass(frozen=True)
class Stage:
    """One numbered script: what it is, how it is configured, and how the pipeline runs it."""

    name: str  # its config and preset name
    script: str
    config: str  # the name of its config class in common.config.stages
    section: str  # its report section (a row may name another)
    runs: tuple[Run, ...] = ()  # how reproduce.py runs it; () for a tool run by hand
    trains: bool = False  # a trained stage writes a checkpoint dir (--checkpoint_dir) finished by metrics.json
    text: Text | None = None  # "train": takes --text_files; "eval": takes --eval_text_files
    uses_lm: bool = True
    resumable: bool = True
    splits: str | None = None  # how its work divides among torchrun's ranks (None: it runs in one process)
    one_process: str = "its work does not split by rank"  # why it does not split
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)  # preset name → its settings for this stage


SAE_AND_NFM = (("--sae1_model_path", "sae1"), ("--nfm_model_path", "nfm"))
BEHAVIOR_INPUTS = (*SAE_AND_NFM, ("--interaction_sae_path", "sae2"))
ORIGINAL = ("--original_eval",)


def _trained(name: str, *inputs: tuple[str, str]) -> tuple[Run, ...]:
    return (Run(name, inputs),)


def _both(name: str, inputs: tuple[tuple[str, str], ...], chained: tuple[str, str] | None = None) -> tuple[Run, ...]:
    """The stage as trained and under --original_eval; ``chained`` (flag, run) reads the same mode's output."""
    plain, original = inputs, inputs
    if chained:
        plain, original = (*inputs, chained), (*inputs, (chained[0], chained[1] + "_original"))
    return Run(name, plain), Run(name + "_original", original, ORIGINAL)


NFM_ONE_PROCESS = ("its step of 130 rows would all-reduce the gradient of the F x d linear weight (640 MB at the "
                   "paper's shapes) every step, more than the step's own forward and backward (SPEC §9)")
JOINT_ONE_PROCESS = ("its step of 64 rows would all-reduce 2 GB of gradients every step, more than the step's own "
                     "forward and backward (about 5 ms on an H100; SPEC §9)")
NFM_PRESETS = {
    "cpu": dict(sae_k=45, top_n_features=45, chunk_tokens=30_000, epochs_per_chunk=5, val_every=500,
                checkpoint_every=1_000, log_every=50, original_decay_steps=100),
    "tiny": dict(sae_k=5, top_n_features=5, chunk_tokens=4_096, epochs_per_chunk=2, batch_size=64,
                 val_every=20, checkpoint_every=20, log_every=10, original_decay_steps=10)}
JOINT_PRESETS = {
    # 15 chunks x 70 training windows x 2 epochs at batch 64: about 4,200 steps
    "cpu": dict(top_n_features=92, chunk_tokens=10_000, epochs_per_chunk=2, val_every=500,
                checkpoint_every=1_000, log_every=50, original_decay_steps=200),
    "tiny": dict(top_n_features=10, chunk_tokens=4_096, epochs_per_chunk=2, batch_size=64, val_every=20,
                 checkpoint_every=20, log_every=10, original_decay_steps=10)}
KL14_PRESETS = {
    # Windows from the per-window variance of a cpu run (METHOD §13.1): with kl18's 48, the four KL runs'
    # 248 windows fit their 324 s on 2 cores at ≈2.2 CPU-s a window (1 clean + 10 patched passes of the
    # blocks after layer 15, the own-norm baselines at 1 draw) and ≈11 CPU-s a run. Every position counts.
    "cpu": dict(num_wiki_samples=76, batch_size=16, own_norm_draws=1),
    "tiny": dict(num_wiki_samples=16, batch_size=8, num_epsilon_samples=2)}
# the planted ground truth's recall against s, the NFM on the true codes and on an SAE's codes
PLANTED_SWEEP = ("--strengths", "0", "0.25", "0.5", "1", "2", "--sae_variant")
CONTROLS = "Controls: can the claim fail?"
JOINT_AND_INPUTS = (*SAE_AND_NFM, ("--joint_model_path", "joint"))


def _study(name: str, inputs: tuple[tuple[str, str], ...], *extra: str) -> Run:
    """A control that only study.py's controls question runs (METHOD §14: what it costs)."""
    return Run(name, inputs, extra, in_main_job=False)


# Pipeline order of the paper: 1 → 2 → 3 → 5 → 4 → 6 → 7 → 8, then the behavioral scripts of METHOD §10 on stages
# 1-3. The KL and behavioral stages run as trained and as the original evaluated.
_STAGES = (
    Stage("sae1", "part1c_sae_topK_implementation.py", "SAE1Config", "Stage 1: TopK SAE", _trained("sae1"),
          trains=True, text="train", splits=BY_ROWS, presets={
              "cpu": dict(train_steps=1_500, stop_at_step=600, val_every=100, checkpoint_every=200, log_every=25),
              "tiny": dict(train_steps=100, stop_at_step=None, batch_size=256, val_every=50, checkpoint_every=50,
                           log_every=10)}),
    Stage("nfm", "part2d_residual_NFM_streaming.py", "NFMConfig", "Stage 2: sequential NFM",
          _trained("nfm", SAE_AND_NFM[0]), trains=True, text="train", one_process=NFM_ONE_PROCESS,
          presets=NFM_PRESETS),
    Stage("sae2", "part10_sae_decomp_of_NFM.py", "SAE2Config", "Stage 3: secondary SAE",
          _trained("sae2", *SAE_AND_NFM), trains=True, text="train", splits=BY_ROWS, presets={
              "cpu": dict(train_steps=1_000, val_every=250, checkpoint_every=500, log_every=50),
              "tiny": dict(train_steps=60, batch_size=256, nfm_batch_size=64, val_every=20, checkpoint_every=20,
                           log_every=10)}),
    Stage("joint", "part15_joint_SAENFM.py", "JointConfig", "Stage 5: joint", _trained("joint", *SAE_AND_NFM),
          trains=True, text="train", one_process=JOINT_ONE_PROCESS, presets=JOINT_PRESETS),
    Stage("kl14", "part14_kl_tests.py", "KL14Config", "KL, sequential (part14)",
          (*_both("kl14", SAE_AND_NFM),
           _study("kl14_nfm_linear", (SAE_AND_NFM[0], ("--nfm_model_path", "nfm_linear")))),
          text="eval", splits=BY_WINDOWS, presets=KL14_PRESETS),
    Stage("ortho", "part16_orthogonality.py", "OrthoConfig", "Orthogonality (part16)",
          (Run("ortho", (("--sae1_model_path", "sae1"), ("--sae2_model_path", "joint"))),), uses_lm=False,
          resumable=False),
    Stage("bimodal", "part17_bimodal_gram.py", "BimodalConfig", "Bimodal shares (part17)",
          (Run("bimodal", (("--joint_model_path", "joint"), ("--orthogonality_dir", "ortho"))),), uses_lm=False,
          resumable=False, presets={
              # the tiny joint model trains too briefly for any squared norm to reach the paper's 0.2
              "tiny": dict(split=0.1)}),
    Stage("kl18", "part18_joint_kl.py", "KL18Config", "KL, joint (part18)",
          (*_both("kl18", (("--joint_model_path", "joint"),)),
           _study("kl18_joint_linear", (("--joint_model_path", "joint_linear"),))), text="eval", splits=BY_WINDOWS,
          presets={
              "cpu": dict(num_wiki_samples=48, batch_size=16, own_norm_draws=1),
              "tiny": dict(num_wiki_samples=16, batch_size=8, num_epsilon_samples=2)}),
    Stage("sparsity", "part4_NFM_sparsity_inspector.py", "SparsityConfig", "NFM weight rows (part4)",
          (Run("sparsity", (SAE_AND_NFM[1],)),), uses_lm=False, resumable=False),
    # the behavioral scripts' presets on tiny: their mechanics only, their statistics mean nothing on the tiny model
    Stage("discovery", "part9b_stimulus_response_listOfDiscoveredFeatures_analysis.py", "DiscoveryConfig",
          "Features (part9b, part11)", _both("discovery", SAE_AND_NFM), resumable=False, presets={
              "tiny": dict(sentences_per_cell=8, min_active_texts=2)}),
    Stage("selection", "part11_NFMSAE_Analysis.py", "SelectionConfig", "Selected secondary feature (part11)",
          _both("selection", BEHAVIOR_INPUTS, ("--discovery_dir", "discovery")), resumable=False, presets={
              "tiny": dict(sentences_per_cell=8, min_active_texts=2, exploratory=2)}),
    Stage("meaning", "part12_NFMSAE_feature_meaning_large_wiki.py", "MeaningConfig",
          "Selected secondary feature (part11)", _both("meaning", BEHAVIOR_INPUTS, ("--selection_dir", "selection")),
          text="eval", resumable=False, presets={
              "cpu": dict(num_windows=2_000, batch_size=16, generation_tokens=20),
              "tiny": dict(sentences_per_cell=8, num_windows=16, batch_size=8, examples=5, generation_tokens=5)}),
    Stage("clamp", "part13_logit_and_clamping_analysis_on_interaction_feature.py", "ClampConfig",
          "2×2 logit test (part13)",
          (*_both("clamp", BEHAVIOR_INPUTS, ("--selection_dir", "selection")),
           # the linear control's rows need its own Δ only, not the nulls of a feature it does not test
           Run("clamp_linear", (*BEHAVIOR_INPUTS, ("--selection_dir", "selection")),
               ("--pathway", "linear", "--null_features", "0", "--null_directions", "0"))),
          resumable=False, presets={
              "cpu": dict(null_features=100, null_directions=25, generation_tokens=20),
              "tiny": dict(sentences_per_cell=8, null_features=5, null_directions=3, permutations=200,
                           generation_tokens=5, word_list="tiny")}),
    # The controls of METHOD §14, after the models they control for. The main job runs the ridge map and the small
    # planted ground truth (about a minute of CPU at the cpu preset); study.py's controls question runs the rest.
    Stage("ridge", "control_ridge.py", "RidgeControlConfig", CONTROLS, (Run("ridge", SAE_AND_NFM),), text="train",
          resumable=False),
    Stage("nfm_control", "control_nfm.py", "NFMControlConfig", CONTROLS, (
        _study("nfm_linear", SAE_AND_NFM, "--pathways", "linear"),
        _study("nfm_shuffled", SAE_AND_NFM, "--target", "shuffled"),
        _study("nfm_beyond_ridge", (*SAE_AND_NFM, ("--ridge_path", "ridge")), "--target", "beyond_ridge")),
          trains=True, text="train", one_process=NFM_ONE_PROCESS, presets=NFM_PRESETS),
    Stage("joint_linear", "control_joint_linear.py", "JointLinearConfig", CONTROLS,
          (_study("joint_linear", JOINT_AND_INPUTS),), trains=True, text="train", one_process=JOINT_ONE_PROCESS,
          presets=JOINT_PRESETS),
    Stage("sae_control", "control_sae_matched.py", "SAEControlConfig", CONTROLS, (
        _study("sae_matched", JOINT_AND_INPUTS), _study("sae_untied", JOINT_AND_INPUTS, "--no-tied"),
        _study("sae_params", JOINT_AND_INPUTS, "--match_parameters")),
          trains=True, text="train", one_process=JOINT_ONE_PROCESS, presets=JOINT_PRESETS),
    Stage("kl_control", "control_kl.py", "KLControlConfig", CONTROLS,
          tuple(_study(f"kl_{name}", (("--sae_model_path", name), ("--joint_model_path", "joint")))
                for name in ("sae_matched", "sae_untied", "sae_params")),
          text="eval", splits=BY_WINDOWS, presets=KL14_PRESETS),
    Stage("planted", "control_planted.py", "PlantedConfig", CONTROLS,
          (Run("planted"), _study("planted_sweep", (), *PLANTED_SWEEP),
           _study("planted_recipe_eps", (), "--adam_eps", "1e-5")), uses_lm=False, resumable=False, presets={
              # the main job's: the strongest s and the twin, true codes (about 20 s); the sweep runs in the study
              "cpu": dict(strengths=[0.0, 2.0], sae_variant=False, rows=20_000, train_steps=1_500),
              "tiny": dict(dictionary=48, d_model=32, fire_probability=0.15, pairs=4, strengths=[0.0, 2.0], rows=6_000,
                           train_steps=800, nfm_embed_dim=16, lr=1e-2, sae_variant=False)}),
    # tools run by hand, not by reproduce.py
    Stage("export", "export_sae.py", "ExportConfig", "", uses_lm=False, resumable=False),
    # part13's debugging tools under the original's names (METHOD §10)
    Stage("clean_generations", "part13b_noClampHooks_openLlama3BTest.py", "CleanGenerationConfig", "",
          resumable=False, presets={"tiny": dict(generation_tokens=5)}),
    Stage("sae_splice", "part13c_primarySAE_hooksOnly.py", "SpliceConfig", "", resumable=False,
          presets={"tiny": dict(generation_tokens=5)}),
    Stage("sae_debug", "part13d_primarySAEdebugging.py", "SAEDebugConfig", "", text="eval", resumable=False,
          presets={"cpu": dict(num_windows=200), "tiny": dict(num_windows=8, batch_size=8)}),
)
STAGES: dict[str, Stage] = {stage.name: stage for stage in _STAGES}

# The preset settings every stage that has the setting takes (K for a preset is its one ``k`` here). Sizes keep the
# paper's ratios (F/d, K/F, top-N/K, k/d); steps and text sizes fit each preset's time budget.
PRESET_COMMON: dict[str, dict[str, Any]] = {
    "paper": {},
    "cpu": dict(model=SMOLLM2_GGUF, layer=15, harvest_batch_size=16, features=9_000, k=184, nfm_embed_dim=54,
                num_tokens=150_000, val_tokens=15_000),
    # a higher lr so that a few dozen steps visibly learn
    "tiny": dict(model=TINY_MODEL, layer=2, harvest_batch_size=16, features=1_000, k=20, nfm_embed_dim=6,
                 num_tokens=8_192, val_tokens=2_048, norm_rows=2_000, lr=1e-3),
}


def preset_entries(preset: str) -> dict[str, dict[str, Any]]:
    """A preset as ``{"common": ..., stage: ...}``: what it sets for every stage and for each one."""
    return {"common": PRESET_COMMON[preset],
            **{name: stage.presets[preset] for name, stage in STAGES.items() if preset in stage.presets}}


def all_runs() -> list[tuple[Stage, Run]]:
    """Every run of a stage that reproduce.py or study.py makes, in order, with its stage."""
    return [(stage, run) for stage in _STAGES for run in stage.runs]


def pipeline_runs() -> list[tuple[Stage, Run]]:
    """Every run of reproduce.py's pipeline (its main job), in order, with its stage."""
    return [(stage, run) for stage, run in all_runs() if run.in_main_job]


def stage_of(run_name: str) -> Stage:
    """The stage a run (``kl14_original``, ``clamp_linear``, ``sae_untied``) belongs to."""
    return next(stage for stage, run in all_runs() if run.name == run_name)
