"""Loading a finished stage's modules from its directory, with the shape and provenance checks of SPEC §0."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from common.activations import NormStats
from common.checkpoint import load_weights, read_stage, require_match
from common.errors import UserError
from common.joint import JointSAENFM
from common.nfm import NFM
from common.sae import TopKSAE
from common.stage import load_norm_stats

SAE_STAGES = ("sae1", "joint")  # a joint directory's SAE part loads wherever a stage-1 directory is accepted
PROVENANCE_KEYS = ("model_id", "model_fingerprint", "layer", "d_model")


def load_sae(path: str | Path, flag: str = "--sae1_model_path") -> tuple[TopKSAE, NormStats, dict[str, Any]]:
    """The SAE of a stage-1 or joint directory (fp32, CPU), its normalization stats and its config."""
    folder, config = read_stage(path, flag, SAE_STAGES)
    cfg = config["config"]
    sae = TopKSAE(config["d_model"], cfg["features"], cfg["k"], cfg["tied"])
    weights = load_weights(folder, "sae." if config["stage"] == "joint" else "")
    _load_strict(sae, weights, flag, path)
    return sae, load_norm_stats(folder), config


def require_same_lm(what: str, config: dict[str, Any], record: dict[str, Any]) -> None:
    """Refuse a checkpoint trained on another model, layer or width than the one loaded now."""
    require_match(what, record, config, PROVENANCE_KEYS)


def load_nfm(path: str | Path, flag: str = "--nfm_model_path") -> tuple[NFM, dict[str, Any]]:
    """The stage-2 NFM (fp32, CPU) and its config (which records the SAE's inference K and top-N it was fed)."""
    folder, config = read_stage(path, flag, ("nfm",))
    cfg = config["config"]
    nfm = NFM(config["num_features"], config["d_model"], cfg["nfm_k"], cfg["dropout"])
    _load_strict(nfm, load_weights(folder), flag, path)
    return nfm, config


def load_joint(path: str | Path, flag: str = "--joint_model_path") -> tuple[JointSAENFM, NormStats, dict[str, Any]]:
    """The stage-5 joint model (fp32, CPU), its normalization stats and its config."""
    folder, config = read_stage(path, flag, ("joint",))
    cfg = config["config"]
    joint = JointSAENFM(config["d_model"], cfg["features"], cfg["k"], cfg["nfm_k"], cfg["top_n_features"], cfg["dropout"], cfg["tied"])
    _load_strict(joint, load_weights(folder), flag, path)
    return joint, load_norm_stats(folder), config


def _load_strict(module: nn.Module, weights: dict, flag: str, path: str | Path) -> None:
    missing, unexpected = module.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise UserError(f"{flag} {path}: weights do not match its config (missing {missing}, unexpected {unexpected})")
