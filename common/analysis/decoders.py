"""What the decoder analyses share (METHOD §6, §7): loading a decoder with its provenance, the band of squared norms
that an untrained decoder column sits in, and the output folder with its ``results.json``."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from common.config.fields import Config
from common.errors import UserError
from common.models.joint import JointSAENFM
from common.models.loading import StageInput, load_sae
from common.models.sae import TopKSAE
from common.paths import portable
from common.store.fingerprints import git_commit
from common.store.reads import load_json
from common.store.stage_files import RESULTS_FILE, read_firing_counts

INIT_BAND_SIGMAS = 4.0
NEAR_INIT_TOLERANCE = 0.25


@dataclass
class LoadedDecoder:
    name: str
    W_dec: Tensor  # (F, d) fp32 on the CPU; row i is feature i's decoder vector (the paper's column i)
    source: dict[str, Any]
    initial: Tensor | None = None  # (F, d): the decoder the stage started from, where it can be re-created
    firing: Tensor | None = None  # (F,) int64: firing counts on held-out rows, where the stage wrote them
    held_out_rows: int | None = None


def source_record(source: StageInput, base: str | Path | None = None) -> dict[str, Any]:
    """Where a decoder came from (its path relative to the repository or to ``base``, the folder that holds the
    analysis's output folder: never absolute); ``weights_sha256`` lets a later analysis find this one's results."""
    folder, config = source.folder, source.config
    return {
        "path": portable(folder, base if base is not None else Path.cwd()),
        "stage": config["stage"],
        "weights_sha256": source.weights_sha256(),
        "model_id": config.get("model_id"),
        "layer": config.get("layer"),
        "d_model": config["d_model"],
        "features": config["config"]["features"],
        "k": config["config"]["k"],
    }


def load_decoder(path: str | Path, flag: str, name: str, base: str | Path | None = None) -> LoadedDecoder:
    """The decoder of a stage-1 SAE or of a joint model's SAE part, with its initial decoder and its firing counts
    where the directory allows (``base``: see ``source_record``)."""
    sae, _, source = load_sae(path, flag)
    initial = initial_model(source)
    if initial is not None:
        initial = (initial.sae if isinstance(initial, JointSAENFM) else initial).W_dec.detach().float()
    firing = None if source.imported else read_firing_counts(source.folder)
    counts, rows = firing if firing is not None else (None, None)
    return LoadedDecoder(name, sae.W_dec.detach(), source_record(source, base), initial, counts, rows)


def initial_model(source: StageInput) -> nn.Module | None:
    """The model a trained stage started from, re-created as its runner made it: the run's seed, then the model
    built from its recorded shape (every parameter drawn in the same order; ``TrainedStage.run``). None for an
    imported SAE or a directory that records no seed. The global generator is left as it was."""
    seed, record = source.config.get("config", {}).get("seed"), source.config.get("model")
    if source.imported is not None or seed is None or record is None:
        return None
    cls = {"TopKSAE": TopKSAE, "JointSAENFM": JointSAENFM}[record["class"]]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls.from_shape(cls.shape_from_record(record))


def initial_norm_band(d_model: int, num_features: int, sigmas: float = INIT_BAND_SIGMAS,
                      tolerance: float = NEAR_INIT_TOLERANCE) -> dict[str, Any]:
    """The squared norm of a decoder column at initialization, and the two bands around it that the analyses count.

    ``TopKSAE`` draws each of a column's d entries from U(−1/√F, 1/√F) (PyTorch's Linear(F, d) init), so
    E[u²] = 1/(3F) and Var[u²] = 4/(45F²): the squared norm has mean d/(3F) and std (2/(3F))·√(d/5), nearly
    normal for d ≥ 64. "Barely moved" (``low``-``high``): within ``sigmas`` std of that mean, i.e. indistinguishable
    from an untrained column. "Near init" (``near_low``-``near_high``): within ±``tolerance`` of the mean, which also
    catches columns that trained a little and then stopped (e.g. features that died early).
    """
    mean = d_model / (3 * num_features)
    std = 2 / (3 * num_features) * math.sqrt(d_model / 5)
    return {
        "mean": mean,
        "std": std,
        "sigmas": sigmas,
        "low": mean - sigmas * std,
        "high": mean + sigmas * std,
        "tolerance": tolerance,
        "near_low": mean * (1 - tolerance),
        "near_high": mean * (1 + tolerance),
        "rule": ("initial squared norm d/(3F) with std (2/(3F))*sqrt(d/5) (entries U(-1/sqrt(F), 1/sqrt(F)), "
                 f"the default init); barely moved: within {sigmas:g} std of d/(3F) "
                 "(an untrained column falls outside with probability ~6e-5); "
                 f"near init: within ±{tolerance:.0%} of d/(3F)"),
    }


def barely_moved(squared_norms: np.ndarray, band: dict[str, Any]) -> np.ndarray:
    """Bool mask of the columns whose squared norm is indistinguishable from an untrained one
    (``initial_norm_band``)."""
    return (squared_norms >= band["low"]) & (squared_norms <= band["high"])


def near_init(squared_norms: np.ndarray, band: dict[str, Any]) -> np.ndarray:
    """Bool mask of the columns whose squared norm lies within ±tolerance of the initial mean d/(3F)."""
    return (squared_norms >= band["near_low"]) & (squared_norms <= band["near_high"])


def moved_summary(squared_norms: np.ndarray, band: dict[str, Any]) -> dict[str, Any]:
    """How many of these columns barely moved from their initial squared norm, and how many sit near it."""
    n = len(squared_norms)
    moved, near = int(barely_moved(squared_norms, band).sum()), int(near_init(squared_norms, band).sum())
    return {"count": moved, "fraction": moved / n if n else None,
            "near_init_count": near, "near_init_fraction": near / n if n else None}


def run_folder(cfg: Config) -> Path:
    """The folder that holds the analysis's output folder (a reproduce.py run folder): what its results' paths are
    relative to where they lie outside the repository."""
    return Path(cfg.output_dir).resolve().parent


def run_record(cfg: Config, analysis: str) -> dict[str, Any]:
    """The analysis, its settings (every input and output path made ``portable``) and the commit."""
    config = dataclasses.asdict(cfg)
    for f in dataclasses.fields(cfg):
        value = config[f.name]
        if (f.metadata.get("input") or f.metadata.get("output")) and value:
            config[f.name] = ([portable(v, run_folder(cfg)) for v in value] if isinstance(value, list)
                              else portable(value, run_folder(cfg)))
    return {"analysis": analysis, "config": config, "git_commit": git_commit(),
            "paths": "relative to the repository where inside it, else to the folder holding the output folder"}


def read_results(folder: str | Path, flag: str, analysis: str) -> dict[str, Any]:
    """Another analysis's ``results.json``, refusing a folder without one or written by another analysis."""
    path = Path(folder) / RESULTS_FILE
    if not path.is_file():
        raise UserError(f"{flag} {folder}: no {RESULTS_FILE} there (run that analysis first)")
    results = load_json(path)
    if results.get("analysis") != analysis:
        raise UserError(f"{flag} {folder}: holds the results of '{results.get('analysis')}', expected '{analysis}'")
    return results
