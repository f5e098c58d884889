"""Loading a finished stage's modules from its directory, with the shape and provenance checks of SPEC §0."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from common.activations import NormStats
from common.checkpoint import load_weights, read_stage, require_match
from common.errors import UserError
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
    missing, unexpected = sae.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise UserError(f"{flag} {path}: weights do not match its config (missing {missing}, unexpected {unexpected})")
    return sae, load_norm_stats(folder), config


def require_same_lm(what: str, config: dict[str, Any], record: dict[str, Any]) -> None:
    """Refuse a checkpoint trained on another model, layer or width than the one loaded now."""
    require_match(what, record, config, PROVENANCE_KEYS)
