"""Earlier formats of a stage's ``config.json``, upgraded in memory when read (the file is left as it is), so that
directories written by any earlier version keep loading and resuming."""
from __future__ import annotations

import copy
from typing import Any

# 2: the model's shape under "model" in config.json; nfm_k renamed nfm_embed_dim, part15's compare_sequential
# renamed nfm_model_path.
FORMAT_VERSION = 2
MODEL_KEY = "model"
RENAMED_SETTINGS = {"nfm_k": "nfm_embed_dim", "compare_sequential": "nfm_model_path"}


def upgrade_config(config: dict[str, Any]) -> dict[str, Any]:
    """A ``config.json`` of any earlier format as this format writes it.

    Version 1 had no ``model`` record: it is rebuilt from the stage's settings, which held the same numbers.
    """
    if config.get("format_version", 1) >= FORMAT_VERSION or "config" not in config:
        return config
    config = copy.deepcopy(config)
    settings = {RENAMED_SETTINGS.get(key, key): value for key, value in config["config"].items()}
    config["config"] = settings
    stage = config.get("stage")
    sae = {"class": "TopKSAE", "d_model": config.get("d_model"), "num_features": settings.get("features"),
           "k": settings.get("k"), "tied": settings.get("tied", True)}
    nfm = {"class": "NFM", "num_features": config.get("num_features"), "d_model": config.get("d_model"),
           "embed_dim": settings.get("nfm_embed_dim"), "dropout": settings.get("dropout")}
    if stage == "sae1":
        config[MODEL_KEY] = sae
    elif stage == "nfm":
        config[MODEL_KEY] = nfm
    elif stage == "sae2":
        config[MODEL_KEY] = {**sae, "d_model": config["input_dim"], "num_features": config["num_features"],
                             "k": config["k"]}
    elif stage == "joint":
        config[MODEL_KEY] = {"class": "JointSAENFM", "top_n": settings["top_n_features"], "sae": sae,
                             "nfm": {**nfm, "num_features": settings["features"]}}
    config["format_version"] = FORMAT_VERSION
    return config
