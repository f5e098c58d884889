"""Checkpoints with known structure for the part16 / part17 tests: a joint decoder of three constructed populations
(rows left at the seed-0 initialization that never fired, a low moved group, a high group), an orthonormal decoder, a
one-population decoder and a narrow one."""
from pathlib import Path

import torch

from common.data.activations import NORM_STATS_FILE, NormStats
from common.models.joint import JointSAENFM
from common.models.sae import TopKSAE
from common.store.savers import atomic_save_json, atomic_save_safetensors
from common.store.stage_files import CONFIG_FILE, METRICS_FILE, WEIGHTS_FILE, write_firing_counts

D, F, NFM_K = 64, 1000, 6  # the tiny preset's shapes: the initial squared norm d/(3F) is 0.0213 as in the paper
HELD_OUT_ROWS = 1000
N_INIT, N_LOW_MOVED, N_HIGH = 100, 200, 700  # the joint decoder's constructed populations, in this row order
N_SILENT = 10  # the last high rows: moved, yet silent on the held-out rows


def _write_stage(folder: Path, stage: str, module: torch.nn.Module, d_model: int, config: dict) -> Path:
    folder.mkdir(parents=True)
    atomic_save_safetensors(module.state_dict(), folder / WEIGHTS_FILE)
    NormStats(torch.zeros(d_model), torch.ones(d_model)).save(folder / NORM_STATS_FILE)
    atomic_save_json({"stage": stage, "format_version": 1, "model_id": "constructed", "model_fingerprint": "test",
                      "layer": 2, "d_model": d_model, "config": config, "norm_stats_file": NORM_STATS_FILE},
                     folder / CONFIG_FILE)
    atomic_save_json({}, folder / METRICS_FILE)
    return folder


def write_sae1(folder: Path, W_dec: torch.Tensor) -> Path:
    features, d_model = W_dec.shape
    sae = TopKSAE(d_model, features, min(4, features))
    sae.W_dec.data.copy_(W_dec)
    return _write_stage(folder, "sae1", sae, d_model, {"features": features, "k": sae.k, "tied": True})


def write_joint(folder: Path, W_dec: torch.Tensor, linear: torch.Tensor, embeddings: torch.Tensor,
                firing: torch.Tensor) -> Path:
    """A joint directory whose run seed is 0 (so its initial model can be re-created) and whose held-out firing
    counts are ``firing`` (of 1,000 rows)."""
    features, d_model = W_dec.shape
    joint = JointSAENFM(d_model, features, 20, embeddings.shape[1], 10)
    joint.sae.W_dec.data.copy_(W_dec)
    joint.nfm.linear_weight.data.copy_(linear)
    joint.nfm.embeddings.data.copy_(embeddings)
    config = {"features": features, "k": 20, "tied": True, "nfm_k": embeddings.shape[1], "top_n_features": 10,
              "dropout": 0.15, "seed": 0}
    _write_stage(folder, "joint", joint, d_model, config)
    write_firing_counts(folder, firing, HELD_OUT_ROWS)
    return folder


def initial_joint() -> JointSAENFM:
    """The joint model as a run of seed 0 starts it (the untrained control)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return JointSAENFM(D, F, 20, NFM_K, 10)


def directions(n: int, d: int, generator: torch.Generator) -> torch.Tensor:
    v = torch.randn(n, d, generator=generator, dtype=torch.float64)
    return v / v.norm(dim=1, keepdim=True)


def rows_with_norms(norms: torch.Tensor, d: int, generator: torch.Generator) -> torch.Tensor:
    return (directions(len(norms), d, generator) * norms[:, None]).float()
