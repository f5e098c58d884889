"""The config of each stage, composed of the concept classes (``common.config.concepts``); a stage that needs
another paper default for a field redeclares only the default (``like``). ``STAGE_CONFIGS`` maps each stage of
``common.registry`` to its class."""
from __future__ import annotations

from dataclasses import dataclass

from common.config.concepts import (
    AnalysisConfig,
    BehaviorConfig,
    ClampSettings,
    JointInput,
    KLConfig,
    LMConfig,
    NFMInput,
    NFMShapeConfig,
    OverwriteConfig,
    RunConfig,
    SAE1Input,
    SAEFitConfig,
    SAEShapeConfig,
    SecondaryInput,
    StreamConfig,
    ToolConfig,
    TrainConfig,
    TrainedStageConfig,
)
from common.config.fields import like, opt
from common.config.modes import ExportFormat, Interpreter, NFMPathways, NFMTarget, Pathway, RankBy, WordList
from common.registry import STAGES


@dataclass
class SAE1Config(TrainedStageConfig, SAEShapeConfig, SAEFitConfig):
    checkpoint_dir: str = like(TrainedStageConfig, "checkpoint_dir", "checkpoints_topk")
    num_tokens: int = like(TrainedStageConfig, "num_tokens", 1_000_000)
    stop_at_step: int | None = like(TrainConfig, "stop_at_step", 200_000,
                                    "stop here (the paper's run stopped at about 200k of 500k planned)")


@dataclass
class NFMConfig(TrainedStageConfig, SAE1Input, NFMShapeConfig, StreamConfig):
    checkpoint_dir: str = like(TrainedStageConfig, "checkpoint_dir", "checkpoints_nfm")
    sae_k: int = opt(250, "inference-time K of the stage-1 SAE (the paper's table used 250; the script's constant "
                          "was 500)")
    top_n_features: int = opt(250, "feed the NFM only the top N of those features")
    batch_size: int = like(TrainedStageConfig, "batch_size", 130)
    train_steps: int | None = like(TrainConfig, "train_steps", None, "planned steps (default: what the chunks and "
                                                                      "epochs give)")
    original_decay_steps: int | None = like(TrainConfig, "original_decay_steps", 2_400,
                                            "decay length of --schedule original (the original's estimate)")


@dataclass
class SAE2Config(TrainedStageConfig, SAE1Input, NFMInput, SAEFitConfig):
    checkpoint_dir: str = like(TrainedStageConfig, "checkpoint_dir", "interaction_sae")
    expansion: int = opt(25, "secondary SAE features = expansion x NFM k")
    topk_ratio: float = opt(0.02, "secondary SAE K = ratio x its features")
    tied: bool = like(SAEShapeConfig, "tied", True, "tie encoder and decoder weights (as stage 1)")
    batch_size: int = like(TrainedStageConfig, "batch_size", 2048)
    nfm_batch_size: int = opt(64, "rows per NFM forward when collecting interaction vectors")
    norm_rows: int = like(SAEFitConfig, "norm_rows", 10_000,
                          "random rows for the z-score statistics of the interaction vectors")
    train_steps: int | None = like(TrainConfig, "train_steps", 200_000)


@dataclass
class JointConfig(TrainedStageConfig, SAEShapeConfig, NFMShapeConfig, SAEFitConfig, StreamConfig):
    checkpoint_dir: str = like(TrainedStageConfig, "checkpoint_dir", "checkpoints_joint")
    sae1_model_path: str | None = like(SAE1Input, "sae1_model_path", None, "optional stage-1 checkpoint: its "
                                       "normalization stats and the standalone-SAE comparison")
    nfm_model_path: str | None = opt(None, "optional stage-2 checkpoint whose improvement is printed beside the "
                                           "joint one", aliases=("--compare_sequential",), input="dir")
    top_n_features: int = opt(512, "feed the NFM the top N of the SAE's K codes")
    chunk_tokens: int = like(StreamConfig, "chunk_tokens", 10_000)
    batch_size: int = like(TrainedStageConfig, "batch_size", 64, "token rows per step")
    norm_rows: int = like(SAEFitConfig, "norm_rows", 10_000,
                          "random rows for the z-score statistics (when no --sae1_model_path)")
    train_steps: int | None = like(NFMConfig, "train_steps", None)
    original_decay_steps: int | None = like(NFMConfig, "original_decay_steps", 4_000)


@dataclass
class KL14Config(KLConfig, SAE1Input, NFMInput):
    output_dir: str = like(KLConfig, "output_dir", "kl_results_sequential")


@dataclass
class KL18Config(KLConfig, JointInput):
    output_dir: str = like(KLConfig, "output_dir", "kl_results_joint")
    num_wiki_samples: int = like(KLConfig, "num_wiki_samples", 10_000)


@dataclass
class OrthoConfig(AnalysisConfig):
    sae1_model_path: str = like(SAE1Input, "sae1_model_path", "checkpoints_topk",
                                "first SAE: a stage-1 (or joint) checkpoint directory")
    sae2_model_path: str = opt("checkpoints_joint", "second SAE: a stage-1 or joint checkpoint directory", input="dir")
    sae1_name: str = opt("standalone", "name of the first SAE in tables and plots")
    sae2_name: str = opt("joint", "name of the second SAE in tables and plots")
    pca_components: int = opt(1_000, "components of the original's randomized-SVD PCA (at most d)")
    output_dir: str = like(AnalysisConfig, "output_dir", "orthogonality_results")


@dataclass
class BimodalConfig(AnalysisConfig, JointInput):
    orthogonality_dir: str | None = opt("orthogonality_results", "part16's output directory, whose mixture fit is "
                                                                 "printed beside this table", input="dir")
    split: float = opt(0.2, "squared-norm split between the low and high groups")
    output_dir: str = like(AnalysisConfig, "output_dir", "bimodal_results")


@dataclass
class SparsityConfig(RunConfig, OverwriteConfig, NFMInput):
    output_dir: str = like(AnalysisConfig, "output_dir", "nfm_sparsity_results")
    top_n: int = like(BehaviorConfig, "top_n", 10)


@dataclass
class DiscoveryConfig(BehaviorConfig):
    output_dir: str = like(AnalysisConfig, "output_dir", "discovery_results")


@dataclass
class SelectionConfig(BehaviorConfig, SecondaryInput):
    output_dir: str = like(AnalysisConfig, "output_dir", "selection_results")
    discovery_dir: str = opt("discovery_results", "part9b's output directory: its primary features are attributed",
                             input="dir")
    rank_by: RankBy = opt("interaction", "interaction: the two-way interaction F; omnibus: the paper's one-way F over "
                                      "the four cells")
    exploratory: int = opt(4, "selected features after the target that later scripts also clamp (exploratory)")


@dataclass
class MeaningConfig(BehaviorConfig, SecondaryInput, ClampSettings):
    output_dir: str = like(AnalysisConfig, "output_dir", "feature_meaning_results")
    selection_dir: str = opt("selection_results", "part11's output directory: its target and exploratory features",
                             input="dir")
    eval_text_files: list[str] | None = like(KLConfig, "eval_text_files", None)
    num_windows: int = opt(10_000, "at most this many windows of the evaluation text (a shorter text is used whole)")
    batch_size: int = opt(32, "windows per LM forward")
    examples: int = opt(20, "top-activating examples kept per feature")
    chunk_tokens: int = opt(10, "tokens of each example, ending at the max-activating token")
    interpreter: Interpreter = opt("none", "none: the token most often at the max-activating position, its share and "
                                           "lift")
    feature_pages: bool = opt(False, "also write one HTML page per feature (its dashboard: top examples with the token "
                                     "highlighted, activation density, logit lens or driving primaries) into "
                                     "OUTPUT_DIR/features/")


@dataclass
class ClampConfig(BehaviorConfig, SecondaryInput, ClampSettings):
    output_dir: str = like(AnalysisConfig, "output_dir", "clamping_results")
    selection_dir: str = like(MeaningConfig, "selection_dir", "selection_results")
    pathway: Pathway = opt("secondary", "secondary: clamp the selected secondary features; linear: the linear control, "
                                    "scaling the primary features that feed the target most; none: no clamp")
    multipliers: list[float] = opt([-4.0, -2.0, 0.0, 2.0, 4.0], "clamp values: the original's m in {-4, 0, 4} and "
                                   "-2, 2 for the dose-response slope", nargs="+", type=float)
    primary_multiplier: float = opt(-4.0, "the pre-declared multiplier of the primary test (one of --multipliers; the "
                                          "paper's headline m)")
    null_features: int = opt(200, "random secondary features active on the prompts, for the empirical null")
    null_directions: int = opt(200, "random directions of the target's mean |change of the residual|, for the second "
                                    "null")
    permutations: int = opt(10_000, "word-label permutations of the by-word interaction F")
    word_list: WordList = opt("design", "design: the stimulus file's designs (the powered one and the paper's 4 x 8 "
                                        "words); tiny: its single-token words of the tiny model's vocabulary in both")
    lm_fp32: bool = opt(True, "run the LM in fp32 (the effects are about 1e-4 logits)")


@dataclass
class CleanGenerationConfig(ToolConfig):
    output_dir: str = like(ToolConfig, "output_dir", "clean_generations")
    stimuli: str | None = like(BehaviorConfig, "stimuli", None)
    generation_tokens: int = opt(50, "tokens of each greedy generation", aliases=("--generation_length",))


@dataclass
class SpliceConfig(ToolConfig, SAE1Input):
    output_dir: str = like(ToolConfig, "output_dir", "primary_sae_splice")
    stimuli: str | None = like(BehaviorConfig, "stimuli", None)
    generation_tokens: int = like(CleanGenerationConfig, "generation_tokens", 50)


@dataclass
class SAEDebugConfig(ToolConfig):
    output_dir: str = like(ToolConfig, "output_dir", "primary_sae_debugging")
    sae1_model_path: str = opt("checkpoints_topk", "the SAE: a stage-1 or joint checkpoint directory, or a SAELens or "
                                                   "sparsify TopK directory (a pickled .pt file is refused)",
                               aliases=("--sae_path", "--primary_sae_path"), input="dir")
    top_k: int | None = opt(None, "active features per row when encoding (default: the SAE's own K)")
    eval_text_files: list[str] | None = like(KLConfig, "eval_text_files", None)
    num_windows: int = opt(1_000, "at most this many held-out windows (a shorter text is used whole)")
    batch_size: int = opt(16, "windows per LM forward")
    top_n: int = opt(20, "features listed as most frequent and as strongest")


@dataclass
class ExportConfig(RunConfig, OverwriteConfig, SAE1Input):
    format: ExportFormat = opt("saelens", "saelens (SAE.load_from_disk reads the directory) or sparsify "
                                 "(SparseCoder.load_from_disk reads it)")
    output_dir: str = opt("exported_sae", "output directory: the format's files plus feature_integration.json",
                          output=True)


# ---- the controls of METHOD §14 -------------------------------------------------------------------------------------


@dataclass
class RidgeControlConfig(RunConfig, LMConfig, OverwriteConfig, SAE1Input, NFMInput):
    output_dir: str = like(AnalysisConfig, "output_dir", "ridge_control")
    alphas: list[float] = opt([0.1, 1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0], "ridge penalties tried on the "
                              "set-aside training windows", nargs="+", type=float)
    alpha_every: int = opt(10, "every Nth training window is set aside for choosing the penalty")


@dataclass
class NFMControlConfig(NFMConfig):
    checkpoint_dir: str = like(TrainedStageConfig, "checkpoint_dir", "checkpoints_nfm_control")
    target: NFMTarget = opt("residual", "residual: the SAE's residual (stage 2's); beyond_ridge: what the ridge map "
                                        "of --ridge_path leaves of it; shuffled: another row's residual (a seeded "
                                        "permutation within each chunk)")
    pathways: NFMPathways = opt("both", "both, or linear: the interaction pathway removed")
    nfm_model_path: str = like(NFMInput, "nfm_model_path", "checkpoints_nfm",
                               "the stage-2 NFM compared on the same held-out rows")
    ridge_path: str | None = opt(None, "control_ridge.py's output directory (--target beyond_ridge)", input="dir")


@dataclass
class JointLinearConfig(JointConfig):
    checkpoint_dir: str = like(TrainedStageConfig, "checkpoint_dir", "checkpoints_joint_linear")
    joint_model_path: str = like(JointInput, "joint_model_path", "checkpoints_joint",
                                 "the stage-5 joint model compared on the same held-out rows")


@dataclass
class SAEControlConfig(JointConfig):
    checkpoint_dir: str = like(TrainedStageConfig, "checkpoint_dir", "checkpoints_sae_control")
    joint_model_path: str = like(JointLinearConfig, "joint_model_path", "checkpoints_joint")
    match_parameters: bool = opt(False, "features added until the SAE's trainable parameters equal the joint "
                                        "model's (K kept)")


@dataclass
class KLControlConfig(KLConfig, JointInput):
    output_dir: str = like(KLConfig, "output_dir", "kl_results_sae_control")
    sae_model_path: str = opt("checkpoints_sae_control", "the control SAE (control_sae_matched.py's directory)",
                              input="dir")


@dataclass
class PlantedConfig(RunConfig, OverwriteConfig):
    """No paper counterpart: the defaults are the size reported (METHOD §14)."""

    output_dir: str = like(AnalysisConfig, "output_dir", "planted_ground_truth")
    d_model: int = opt(64, "width of the synthetic activations")
    dictionary: int = opt(128, "true features (rows of the dictionary D)")
    fire_probability: float = opt(0.06, "probability that a feature fires in a row")
    pairs: int = opt(10, "planted pairs P")
    strengths: list[float] = opt([0.0, 0.25, 0.5, 1.0, 2.0], "interaction strengths s (0 is the twin)", nargs="+",
                                 type=float)
    noise: float = opt(0.05, "std of the Gaussian noise per dimension")
    rows: int = opt(40_000, "training rows (plus a quarter as many held out)")
    train_steps: int = like(TrainConfig, "train_steps", 3_000)
    batch_size: int = like(TrainedStageConfig, "batch_size", 256)
    nfm_embed_dim: int = like(NFMShapeConfig, "nfm_embed_dim", 32)
    lr: float = like(TrainConfig, "lr", 1e-2)
    adam_eps: float = like(TrainConfig, "adam_eps", 1e-8, "Adam epsilon (torch's default; the pipeline's 1e-5 holds "
                                                        "the interaction pathway at its small initialization here)")
    sae_variant: bool = opt(True, "also run SAE → NFM (the SAE's features matched to D by decoder cosine)")


STAGE_CONFIGS: dict[str, type] = {name: globals()[stage.config] for name, stage in STAGES.items()}
