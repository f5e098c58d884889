"""One dataclass per stage, the presets as data, and the flags generated from both (SPEC §0 and its presets table).

A value comes from, in order: the command line, the preset's entry for the stage, the preset's ``common`` entry, the
dataclass default. The dataclass defaults are the paper's configuration, so no flags means the paper's run.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

from common.errors import UserError
from common.train import TrainConfig

PAPER_MODEL = "openlm-research/open_llama_3b"
SMOLLM2_GGUF = "smollm2-135m-instruct-gguf"
TINY_MODEL = "tiny-random-llama"


def opt(default: Any, help: str, **extra: Any) -> Any:
    """A config field with its ``--help`` text."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **extra})
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class RunConfig:
    preset: str = opt("paper", "paper (default: the paper's configuration), cpu (SmolLM2-135M, 2 cores) or tiny (tests)")
    device: str | None = opt(None, "cpu, cuda or cuda:N (default: CUDA when present, else the CPU)")
    precision: str = opt("auto", "auto (bf16 autocast over fp32 weights on CUDA, fp32 on CPU), fp32, bf16 or faithful-fp16 (the original's pure fp16)")
    decode: str = opt("auto", "auto (sparse gather on CPU, dense matmul on CUDA), dense or sparse")
    seed: int = opt(0, "random seed for every generator")
    cache_dir: str | None = opt(None, "folder for a disk cache of harvested activations, shared by stages (paper scale: 32 GB)")


@dataclass
class LMConfig:
    model: str = opt(PAPER_MODEL, f"HF model id or local path, '{SMOLLM2_GGUF}', a .gguf file, or '{TINY_MODEL}'")
    layer: int = opt(16, "residual stream after this many decoder blocks (hidden_states[L])")
    window: int = opt(128, "tokens per window (BOS included where the tokenizer adds one)")
    exclude_first_position: bool = opt(False, "drop position 0 (BOS) from training, stats, metrics and KL statistics")
    harvest_batch_size: int = opt(32, "windows per LM forward when harvesting activations")
    text_files: list[str] | None = opt(None, "local training text, one document per line (default: the preset's text)", nargs="+")
    trust_remote_code: bool = opt(False, "allow the model repository's own code (only for models you trust)")


@dataclass
class SAE1Config(RunConfig, LMConfig, TrainConfig):
    checkpoint_dir: str = opt("checkpoints_topk", "output checkpoint directory")
    features: int = opt(50_000, "dictionary size F")
    k: int = opt(1024, "active features per row (TopK)")
    tied: bool = opt(True, "tie encoder and decoder weights as the original's shared storage did (--no-tied: Gao et al.)")
    num_tokens: int = opt(1_000_000, "tokens of training text to harvest (a shorter text is used whole)")
    batch_size: int = opt(1024, "rows per step")
    val_tokens: int = opt(100_000, "held-out tokens used for validation figures")
    norm_rows: int = opt(10_000, "random rows for the z-score statistics")
    dead_threshold: float = opt(1e-6, "a feature never above this on the validation set is dead")
    train_steps: int = opt(500_000, "planned steps (the schedule decays over 80%% of them)")
    stop_at_step: int | None = opt(200_000, "stop here (the paper's run stopped at about 200k of 500k planned)")
    resume: bool = opt(False, "continue an interrupted run in --checkpoint_dir")
    overwrite: bool = opt(False, "replace an existing checkpoint in --checkpoint_dir")


@dataclass
class NFMConfig(RunConfig, LMConfig, TrainConfig):
    sae1_model_path: str = opt("checkpoints_topk", "stage-1 checkpoint directory (or the weights file in it)")
    checkpoint_dir: str = opt("checkpoints_nfm", "output checkpoint directory")
    nfm_k: int = opt(300, "NFM embedding dimension k")
    dropout: float = opt(0.15, "dropout before the interaction MLP")
    sae_k: int = opt(250, "inference-time K of the stage-1 SAE (the paper's table used 250; the script's constant was 500)")
    top_n_features: int = opt(250, "feed the NFM only the top N of those features")
    num_tokens: int = opt(5_000_000, "tokens streamed in all")
    chunk_tokens: int = opt(100_000, "tokens per streamed chunk (LM run, trained on, discarded)")
    epochs_per_chunk: int = opt(10, "passes over each chunk")
    batch_size: int = opt(130, "rows per step")
    val_tokens: int = opt(100_000, "held-out tokens used for validation figures")
    train_steps: int | None = opt(None, "planned steps (default: what the chunks and epochs give)")
    original_decay_steps: int | None = opt(2_400, "decay length of --schedule original (the original's estimate)")
    resume: bool = opt(False, "continue an interrupted run in --checkpoint_dir")
    overwrite: bool = opt(False, "replace an existing checkpoint in --checkpoint_dir")


@dataclass
class SAE2Config(RunConfig, LMConfig, TrainConfig):
    sae1_model_path: str = opt("checkpoints_topk", "stage-1 checkpoint directory")
    nfm_model_path: str = opt("checkpoints_nfm", "stage-2 (NFM) checkpoint directory")
    checkpoint_dir: str = opt("interaction_sae", "output checkpoint directory")
    expansion: int = opt(25, "secondary SAE features = expansion x NFM k")
    topk_ratio: float = opt(0.02, "secondary SAE K = ratio x its features")
    tied: bool = opt(True, "tie encoder and decoder weights (as stage 1)")
    num_tokens: int = opt(5_000_000, "tokens of LM text whose interaction vectors are collected")
    batch_size: int = opt(2048, "rows per step")
    nfm_batch_size: int = opt(64, "rows per NFM forward when collecting interaction vectors")
    val_tokens: int = opt(100_000, "held-out tokens used for validation figures")
    norm_rows: int = opt(10_000, "random rows for the z-score statistics of the interaction vectors")
    dead_threshold: float = opt(1e-6, "a feature never above this on the validation set is dead")
    train_steps: int = opt(200_000, "planned steps")
    stop_at_step: int | None = opt(None, "stop early")
    resume: bool = opt(False, "continue an interrupted run in --checkpoint_dir")
    overwrite: bool = opt(False, "replace an existing checkpoint in --checkpoint_dir")


@dataclass
class JointConfig(RunConfig, LMConfig, TrainConfig):
    sae1_model_path: str | None = opt(None, "optional stage-1 checkpoint: its normalization stats and the standalone-SAE comparison")
    checkpoint_dir: str = opt("checkpoints_joint", "output checkpoint directory")
    features: int = opt(50_000, "dictionary size F")
    k: int = opt(1024, "active features per row (TopK)")
    tied: bool = opt(True, "tie encoder and decoder weights (as the original)")
    nfm_k: int = opt(300, "NFM embedding dimension k")
    dropout: float = opt(0.15, "dropout before the interaction MLP")
    top_n_features: int = opt(512, "feed the NFM the top N of the SAE's K codes")
    num_tokens: int = opt(5_000_000, "tokens streamed in all")
    chunk_tokens: int = opt(10_000, "tokens per streamed chunk")
    epochs_per_chunk: int = opt(10, "passes over each chunk")
    batch_size: int = opt(64, "token rows per step")
    val_tokens: int = opt(100_000, "held-out tokens used for validation figures")
    norm_rows: int = opt(10_000, "random rows for the z-score statistics (when no --sae1_model_path)")
    dead_threshold: float = opt(1e-6, "a feature never above this on the validation set is dead")
    train_steps: int | None = opt(None, "planned steps (default: what the chunks and epochs give)")
    original_decay_steps: int | None = opt(4_000, "decay length of --schedule original (the original's estimate)")
    compare_sequential: str | None = opt(None, "a stage-2 checkpoint whose improvement to print beside the joint one")
    resume: bool = opt(False, "continue an interrupted run in --checkpoint_dir")
    overwrite: bool = opt(False, "replace an existing checkpoint in --checkpoint_dir")


@dataclass
class KLConfig(RunConfig, LMConfig):
    output_dir: str = opt("kl_results", "output directory")
    eval_text_files: list[str] | None = opt(None, "evaluation text, one document per line (default: the preset's test text)", nargs="+")
    num_wiki_samples: int = opt(5_000, "at most this many evaluation windows (a shorter text is used whole)")
    batch_size: int = opt(32, "windows per batch")
    num_epsilon_samples: int = opt(3, "epsilon-random draws per token")
    original_eval: bool = opt(False, "evaluate as the original did: raw activations, K 1,024, no top-N, patch one block later")
    resume: bool = opt(False, "continue an interrupted evaluation in --output_dir")
    overwrite: bool = opt(False, "replace an existing evaluation in --output_dir")


@dataclass
class KL14Config(KLConfig):
    sae1_model_path: str = opt("checkpoints_topk", "stage-1 checkpoint directory")
    nfm_model_path: str = opt("checkpoints_nfm", "stage-2 (NFM) checkpoint directory")
    output_dir: str = opt("kl_results_sequential", "output directory")


@dataclass
class KL18Config(KLConfig):
    joint_model_path: str = opt("checkpoints_joint", "stage-5 (joint) checkpoint directory")
    output_dir: str = opt("kl_results_joint", "output directory")
    num_wiki_samples: int = opt(10_000, "at most this many evaluation windows (a shorter text is used whole)")


@dataclass
class OrthoConfig(RunConfig):
    sae1_model_path: str = opt("checkpoints_topk", "first SAE: a stage-1 (or joint) checkpoint directory")
    sae2_model_path: str = opt("checkpoints_joint", "second SAE: a stage-1 or joint checkpoint directory")
    sae1_name: str = opt("standalone", "name of the first SAE in tables and plots")
    sae2_name: str = opt("joint", "name of the second SAE in tables and plots")
    threshold: float = opt(1e-6, "features with squared decoder norm at or below this are dropped")
    pca_components: int = opt(1_000, "components of the original's randomized-SVD PCA (at most d)")
    output_dir: str = opt("orthogonality_results", "output directory")
    overwrite: bool = opt(False, "replace an earlier analysis in --output_dir")


@dataclass
class BimodalConfig(RunConfig):
    joint_model_path: str = opt("checkpoints_joint", "stage-5 (joint) checkpoint directory")
    orthogonality_dir: str | None = opt("orthogonality_results", "part16's output directory, whose mixture fit is printed beside this table")
    threshold: float = opt(1e-6, "features with squared decoder norm at or below this are dropped")
    split: float = opt(0.2, "squared-norm split between the low and high groups")
    output_dir: str = opt("bimodal_results", "output directory")
    overwrite: bool = opt(False, "replace an earlier analysis in --output_dir")


# Sizes keep the paper's ratios (F/d, K/F, top-N/K, k/d); steps and text sizes fit each preset's time budget.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {},
    "cpu": {
        "common": dict(model=SMOLLM2_GGUF, layer=15, harvest_batch_size=16, features=9_000, k=184, nfm_k=54,
                       num_tokens=150_000, val_tokens=15_000),
        "sae1": dict(train_steps=1_500, stop_at_step=600, val_every=100, checkpoint_every=200, log_every=25),
        "nfm": dict(sae_k=45, top_n_features=45, chunk_tokens=30_000, epochs_per_chunk=5, val_every=500, checkpoint_every=1_000,
                    log_every=50, original_decay_steps=100),
        "sae2": dict(train_steps=1_000, val_every=250, checkpoint_every=500, log_every=50),
        # 15 chunks x 70 training windows x 2 epochs at batch 64: about 4,200 steps
        "joint": dict(top_n_features=92, chunk_tokens=10_000, epochs_per_chunk=2, val_every=500, checkpoint_every=1_000,
                      log_every=50, original_decay_steps=200),
        # ≈14 s per batch of 8 windows on 2 free cores (1 clean + 16 patched passes of the blocks after layer 15)
        "kl14": dict(num_wiki_samples=56, batch_size=8),
        "kl18": dict(num_wiki_samples=24, batch_size=8),
    },
    "tiny": {
        # a higher lr so that a few dozen steps visibly learn
        "common": dict(model=TINY_MODEL, layer=2, harvest_batch_size=16, features=1_000, k=20, nfm_k=6,
                       num_tokens=8_192, val_tokens=2_048, norm_rows=2_000, lr=1e-3),
        "sae1": dict(train_steps=100, stop_at_step=None, batch_size=256, val_every=50, checkpoint_every=50, log_every=10),
        "nfm": dict(sae_k=5, top_n_features=5, chunk_tokens=4_096, epochs_per_chunk=2, batch_size=64, val_every=20,
                    checkpoint_every=20, log_every=10, original_decay_steps=10),
        "sae2": dict(train_steps=60, batch_size=256, nfm_batch_size=64, val_every=20, checkpoint_every=20, log_every=10),
        "joint": dict(top_n_features=10, chunk_tokens=4_096, epochs_per_chunk=2, batch_size=64, val_every=20,
                      checkpoint_every=20, log_every=10, original_decay_steps=10),
        "kl14": dict(num_wiki_samples=16, batch_size=8, num_epsilon_samples=2),
        "kl18": dict(num_wiki_samples=16, batch_size=8, num_epsilon_samples=2),
        # the tiny joint model trains too briefly for any squared norm to reach the paper's 0.2
        "bimodal": dict(split=0.1),
    },
}

Config = TypeVar("Config")


def add_config_args(parser: argparse.ArgumentParser, cls: type, aliases: dict[str, list[str]] | None = None) -> None:
    """One ``--name`` per field, defaulting to None so that presets can fill in what the user did not say."""
    aliases = aliases or {}
    for f in dataclasses.fields(cls):
        names = [f"--{f.name}", *aliases.get(f.name, [])]
        help_text = f"{f.metadata.get('help', '')} (paper: {f.default!r})" if f.default is not dataclasses.MISSING else f.metadata.get("help", "")
        if f.name == "preset":
            parser.add_argument(*names, choices=sorted(PRESETS), default=None, help=help_text)
        elif isinstance(f.default, bool):
            parser.add_argument(*names, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif "nargs" in f.metadata:
            parser.add_argument(*names, nargs=f.metadata["nargs"], default=None, help=help_text)
        else:
            kind = _field_type(f)
            parser.add_argument(*names, type=kind, default=None, metavar=f.name.upper(), help=help_text)


def _field_type(f: dataclasses.Field) -> type:
    annotation = str(f.type)
    for name, kind in (("int", int), ("float", float)):
        if annotation.startswith(name):
            return kind
    return str


def build_config(cls: type[Config], stage: str, args: argparse.Namespace | dict[str, Any]) -> Config:
    """Dataclass default < preset ``common`` < preset stage entry < command line."""
    given = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    preset = given.get("preset") or "paper"
    if preset not in PRESETS:
        raise UserError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for layer in (PRESETS[preset].get("common", {}), PRESETS[preset].get(stage, {})):
        values.update({k: v for k, v in layer.items() if k in names})
    values.update({k: v for k, v in given.items() if k in names and v is not None})
    values["preset"] = preset
    return cls(**values)


def parse_config(cls: type[Config], stage: str, description: str, argv: list[str] | None,
                 aliases: dict[str, list[str]] | None = None) -> Config:
    parser = argparse.ArgumentParser(description=description)
    add_config_args(parser, cls, aliases)
    return build_config(cls, stage, parser.parse_args(argv))
