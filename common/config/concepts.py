"""One dataclass per concept (METHOD §0): a run, the LM, training, resuming, shapes, inputs, evaluation, the
behavioral settings. The stage configs (``common.config.stages``) are composed of these, so every setting is declared
once; its default is the paper's configuration."""
from __future__ import annotations

from dataclasses import dataclass

from common.config.fields import Checked, like, opt
from common.config.modes import (
    ClampMode,
    Decode,
    Patch,
    Precision,
    Preset,
    Schedule,
    StimulusSplit,
)
from common.registry import PAPER_MODEL, SMOLLM2_GGUF, TINY_MODEL


@dataclass
class RunConfig(Checked):
    preset: Preset = opt("paper", "paper (default: the paper's configuration), cpu (SmolLM2-135M, 2 cores) "
                      "or tiny (tests)")
    device: str | None = opt(None, "cpu, cuda or cuda:N (default: CUDA when present, else the CPU)")
    precision: Precision = opt("auto", "auto (bf16 autocast over fp32 weights on CUDA, fp32 on CPU), fp32, bf16 or "
                                 "faithful-fp16 (the original's pure fp16)")
    decode: Decode = opt("auto", "auto (sparse gather on CPU, dense matmul on CUDA), dense or sparse")
    seed: int = opt(0, "random seed for every generator")
    cache_dir: str | None = opt(None, "folder for a disk cache of harvested activations, shared by stages "
                                      "(paper scale: 32 GB)", input="dir")


@dataclass
class LMConfig:
    model: str = opt(PAPER_MODEL, f"HF model id or local path, '{SMOLLM2_GGUF}', a .gguf file, or '{TINY_MODEL}'")
    layer: int = opt(16, "residual stream after this many decoder blocks (hidden_states[L])")
    window: int = opt(128, "tokens per window (BOS included where the tokenizer adds one)")
    exclude_first_position: bool = opt(False, "drop position 0 (BOS) from training, stats, metrics and KL statistics")
    harvest_batch_size: int = opt(32, "windows per LM forward when harvesting activations")
    text_files: list[str] | None = opt(None, "local training text, one document per line (default: the preset's text)",
                                       nargs="+", input="file")
    trust_remote_code: bool = opt(False, "allow the model repository's own code (only for models you trust)")


@dataclass
class TrainConfig:
    """Optimizer, schedule and bookkeeping of the one trainer (METHOD §1, §5b)."""

    lr: float = opt(1e-4, "Adam learning rate")
    adam_beta1: float = opt(0.9, "Adam beta1")
    adam_beta2: float = opt(0.999, "Adam beta2")
    adam_eps: float = opt(1e-5, "Adam epsilon (the original's 1e-5)")
    adam_flush_fp16_underflow: bool = opt(False, "set Adam's second-moment entries below fp16's smallest subnormal "
                                                 "(2^-24) to zero at every step, as the original's fp16 Adam stored "
                                                 "them, in fp32 arithmetic otherwise (off by default; the study's "
                                                 "regime question)")
    grad_clip: float = opt(1.0, "clip the gradient norm to this")
    train_steps: int | None = opt(500_000, "planned steps (the schedule decays over 80%% of them)")
    stop_at_step: int | None = opt(None, "stop here, before the planned steps end")
    schedule: Schedule = opt("paper", "paper: linear decay over --decay_fraction of the planned steps, then flat; "
                                      "original: decay over --original_decay_steps (the original's wrong step "
                                      "estimate)")
    decay_fraction: float = opt(0.8, "fraction of the planned steps the learning rate decays over (--schedule paper)")
    final_lr_fraction: float = opt(0.1, "the learning rate ends at this fraction of --lr")
    original_decay_steps: int | None = opt(None, "decay length of --schedule original")
    val_every: int = opt(1_000, "validate every this many steps (the best model is the lowest validation loss)")
    checkpoint_every: int = opt(10_000, "write the resume state every this many steps")
    log_every: int = opt(100, "log the running training figures every this many steps")


@dataclass
class ResumeConfig:
    resume: bool = opt(False, "continue an interrupted run in the output directory")
    overwrite: bool = opt(False, "replace an existing run in the output directory")


@dataclass
class OverwriteConfig:
    overwrite: bool = opt(False, "replace an earlier analysis in --output_dir")


@dataclass
class TrainedStageConfig(RunConfig, LMConfig, TrainConfig, ResumeConfig):
    checkpoint_dir: str = opt("checkpoints", "output checkpoint directory", output=True)
    num_tokens: int = opt(5_000_000, "tokens of training text to harvest (a shorter text is used whole)")
    batch_size: int = opt(1024, "rows per step")
    val_tokens: int = opt(100_000, "held-out tokens used for validation figures")


@dataclass
class SAEShapeConfig:
    features: int = opt(50_000, "dictionary size F")
    k: int = opt(1024, "active features per row (TopK)")
    tied: bool = opt(True, "tie encoder and decoder weights as the original's shared storage did "
                     "(--no-tied: Gao et al.)")


@dataclass
class SAEFitConfig:
    norm_rows: int = opt(10_000, "random rows for the z-score statistics")
    dead_threshold: float = opt(1e-6, "a feature never above this on the validation set is dead")


@dataclass
class NFMShapeConfig:
    nfm_embed_dim: int = opt(300, "NFM embedding dimension k", aliases=("--nfm_k",))
    dropout: float = opt(0.15, "dropout before the interaction MLP")


@dataclass
class StreamConfig:
    """Stages 2 and 5 stream the LM chunk by chunk: each chunk is harvested, trained on for some epochs, dropped."""

    chunk_tokens: int = opt(100_000, "tokens per streamed chunk (LM run, trained on, discarded)")
    epochs_per_chunk: int = opt(10, "passes over each chunk")


@dataclass
class SAE1Input:
    sae1_model_path: str = opt("checkpoints_topk", "stage-1 checkpoint directory (or the weights file in it)",
                               aliases=("--primary_sae_path",), input="dir")


@dataclass
class NFMInput:
    nfm_model_path: str = opt("checkpoints_nfm", "stage-2 (NFM) checkpoint directory", aliases=("--nfm_path",),
                              input="dir")


@dataclass
class JointInput:
    joint_model_path: str = opt("checkpoints_joint", "stage-5 (joint) checkpoint directory", input="dir")


@dataclass
class KLConfig(RunConfig, LMConfig, ResumeConfig):
    output_dir: str = opt("kl_results", "output directory", output=True)
    eval_text_files: list[str] | None = opt(None, "evaluation text, one document per line (default: the preset's "
                                                  "test text)", nargs="+", input="file")
    num_wiki_samples: int = opt(5_000, "at most this many evaluation windows (a shorter text is used whole)")
    batch_size: int = opt(32, "windows per batch")
    num_epsilon_samples: int = opt(3, "epsilon-random draws per token")
    own_norm_draws: int | None = opt(None, "draws per token of the second baseline, epsilon-random at each "
                                           "condition's own error norm (default: --num_epsilon_samples)")
    positions_per_window: int | None = opt(None, "measure every series at this many positions of each window, drawn "
                                                 "per window (seeded by its index; the later blocks still run at "
                                                 "every position) (default: every position)")
    original_eval: bool = opt(False, "evaluate as the original did: raw activations, K 1,024, no top-N, patch one "
                                     "block later")


@dataclass
class AnalysisConfig(RunConfig, OverwriteConfig):
    threshold: float = opt(1e-6, "features with squared decoder norm at or below this are dropped")
    output_dir: str = opt("analysis_results", "output directory", output=True)


@dataclass
class SecondaryInput:
    interaction_sae_path: str = opt("interaction_sae", "stage-3 (secondary SAE) checkpoint directory",
                                    aliases=("--secondary_sae_path",), input="dir")


@dataclass
class BehaviorConfig(RunConfig, LMConfig, OverwriteConfig, SAE1Input, NFMInput):
    """What the behavioral scripts share (METHOD §10)."""

    output_dir: str = like(AnalysisConfig, "output_dir", "behavior_results")
    original_eval: bool = opt(False, "the original's pipeline: raw activations, K 1,024, every code into the NFM, the "
                                     "plain sum, the residual read and patched one block later (and --patch replace)")
    stimuli: str | None = opt(None, "stimulus file in the format of common/behavior/stimuli.json (default: that file)",
                              input="file")
    sentences_per_cell: int | None = opt(None, "use the first N sentences of each cell (default: all)")
    split: StimulusSplit = opt("even_odd", "even_odd: select on the even-numbered texts of each cell and report on the "
                                           "odd ones; none: select and report on all texts")
    top_n: int = opt(10, "features kept in each ranked table")
    min_active_texts: int = opt(5, "a feature must be active in at least this many texts to be ranked")


@dataclass
class ClampSettings:
    patch: Patch | None = opt(None, "delta (default: add only what the clamp changes, so a multiplier of 1 is the "
                                    "clean model) or replace (the original's; the default under --original_eval)")
    clamp_mode: ClampMode = opt("multiply", "multiply: the code times each value; set: the code set to each value")
    multipliers: list[float] = opt([-4.0, 0.0, 4.0], "clamp values (the original's m in {-4, 0, 4})", nargs="+",
                                   type=float)
    generation_tokens: int = opt(50, "tokens of each greedy generation")


@dataclass
class ToolConfig(RunConfig, LMConfig, OverwriteConfig):
    """What part13's debugging tools share (13b, 13c, 13d, METHOD §10): the LM by the original's flag too, one output
    folder."""

    model: str = opt(PAPER_MODEL, f"HF model id or local path, '{SMOLLM2_GGUF}', a .gguf file, or '{TINY_MODEL}'",
                     aliases=("--model_path",))
    output_dir: str = opt("debug_results", "output directory", output=True)


# The configs of the stages that open the LM (common.stages.opening).
LMStageConfig = TrainedStageConfig | KLConfig | BehaviorConfig | ToolConfig
