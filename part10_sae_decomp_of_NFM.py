"""Stage 3: a secondary TopK SAE on the NFM's interaction pathway, i.e. the vectors after the interaction MLP's first
Linear and before its ReLU (SPEC §3), trained with stage 1's recipe.

    python part10_sae_decomp_of_NFM.py                            # the paper's run (7,500 features, K 150)
    python part10_sae_decomp_of_NFM.py --preset cpu --sae1_model_path runs/cpu/sae1 --nfm_model_path runs/cpu/nfm
"""
from __future__ import annotations

import logging
import time
from typing import Any

import torch
from torch import Tensor

from common.activations import NormStats
from common.checkpoint import require_match, stage_dir, weights_sha256
from common.chunks import ChunkPlan
from common.cli import run_cli
from common.config import SAE2Config, parse_config
from common.errors import UserError
from common.loading import PROVENANCE_KEYS, load_nfm, load_sae, require_same_lm
from common.nfm import NFM
from common.nfm_training import sae_codes
from common.sae import TopKSAE, check_sae_shape
from common.sae_training import run_sae_stage, sae_summary
from common.stage import (check_output_dir, finish_output_dir, model_record, open_lm, open_stream, release, runtime,
                          save_norm_stats, start_output_dir)

log = logging.getLogger("part10")

ALIASES = {"sae1_model_path": ["--primary_sae_path"], "nfm_model_path": ["--nfm_path"]}
COLLECT_TOKENS = 32_768  # LM tokens harvested at a time while collecting: bounds the raw activations held at once
LM_NORM_STATS_FILE = "sae1_norm_stats.safetensors"  # stage 1's stats, copied; norm_stats.safetensors is this stage's own


def check_pair(cfg: SAE2Config, sae: TopKSAE, sae_config: dict[str, Any], nfm_config: dict[str, Any]) -> None:
    """The NFM must have been trained on this very SAE: same F, same LM and layer, same weights."""
    nfm_flag = f"--nfm_model_path {cfg.nfm_model_path}"
    if nfm_config["num_features"] != sae.num_features:
        raise UserError(f"{nfm_flag}: the NFM takes F={nfm_config['num_features']} features but the SAE of "
                        f"--sae1_model_path {cfg.sae1_model_path} has F={sae.num_features}")
    require_match(f"{nfm_flag} against --sae1_model_path", sae_config, nfm_config, PROVENANCE_KEYS)
    if nfm_config["sae_k"] > sae.k:
        raise UserError(f"{nfm_flag} was fed the SAE at K={nfm_config['sae_k']}, above this SAE's K={sae.k}")
    recorded = nfm_config.get("sae1", {}).get("weights_sha256")
    if recorded is not None and recorded != weights_sha256(stage_dir(cfg.sae1_model_path, "--sae1_model_path")):
        raise UserError(f"{nfm_flag} was trained on another stage-1 SAE than --sae1_model_path {cfg.sae1_model_path} "
                        "(its weights fingerprint differs)")


def interaction_vectors(nfm: NFM, sae: TopKSAE, rows: Tensor, norm: NormStats, nfm_config: dict[str, Any],
                        decode: str, batch_size: int) -> Tensor:
    """(n, k) fp32 NFM interaction vectors of raw LM rows, the SAE fed exactly as in stage 2 (its K and top-N)."""
    codes = sae_codes(sae, rows, norm, nfm_config["sae_k"], nfm_config["top_n_features"], decode, batch_size)
    with torch.no_grad(), torch.autocast(codes.top_acts.device.type, enabled=False):
        vectors = [nfm.interaction_hidden(codes.top_acts[start : start + batch_size],
                                          codes.top_indices[start : start + batch_size], decode)
                   for start in range(0, codes.top_acts.shape[0], batch_size)]
    return torch.cat(vectors).float().cpu()


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(SAE2Config, "sae2", __doc__, argv, ALIASES)
    out = check_output_dir(cfg.checkpoint_dir, cfg.resume, cfg.overwrite)
    sae, norm, sae_config = load_sae(cfg.sae1_model_path)
    nfm, nfm_config = load_nfm(cfg.nfm_model_path)
    check_pair(cfg, sae, sae_config, nfm_config)
    input_dim = nfm.embed_dim
    num_features = cfg.expansion * input_dim
    k = round(cfg.topk_ratio * num_features)
    check_sae_shape(input_dim, num_features, k)
    rt = runtime(cfg)
    lm = open_lm(cfg, rt.device)
    record = model_record(lm, cfg.layer)
    require_same_lm(f"--sae1_model_path {cfg.sae1_model_path}", sae_config, record)
    require_same_lm(f"--nfm_model_path {cfg.nfm_model_path}", nfm_config, record)
    sae, nfm = sae.to(rt.device).eval(), nfm.to(rt.device).eval()
    stream = open_stream(cfg, lm)
    plan = ChunkPlan(stream, cfg.num_tokens, COLLECT_TOKENS)

    def vectors_of(rows: Tensor) -> Tensor:
        return interaction_vectors(nfm, sae, rows, norm, nfm_config, rt.decode, cfg.nfm_batch_size)

    started = time.perf_counter()
    val_vectors = vectors_of(stream.val_rows(max(1, cfg.val_tokens // cfg.window), within=plan.num_windows))
    blocks = (plan.train_rows(block) for block in range(plan.num_chunks))
    train_vectors = torch.cat([vectors_of(rows) for rows in blocks if rows is not None])
    collect_seconds = time.perf_counter() - started
    release(lm)
    log.info("collected %d train and %d validation interaction vectors in %.0f s",
             train_vectors.shape[0], val_vectors.shape[0], collect_seconds)

    vector_norm = NormStats.compute(train_vectors, cfg.norm_rows, cfg.seed)
    sae1_dir, nfm_dir = stage_dir(cfg.sae1_model_path, "--sae1_model_path"), stage_dir(cfg.nfm_model_path, "--nfm_model_path")
    data = {**stream.describe(), "windows": plan.num_windows, "train_rows": train_vectors.shape[0],
            "val_rows": val_vectors.shape[0], "collect_seconds": collect_seconds}
    extra = {
        "input": "NFM interaction vector Linear1(Dropout(h)) before the ReLU, z-scored with this directory's norm stats",
        "input_dim": input_dim, "num_features": num_features, "k": k,
        "sae_k": nfm_config["sae_k"], "top_n_features": nfm_config["top_n_features"],
        "sae1": {"path": str(cfg.sae1_model_path), "weights_sha256": weights_sha256(sae1_dir)},
        "nfm": {"path": str(cfg.nfm_model_path), "weights_sha256": weights_sha256(nfm_dir)},
        "lm_norm_stats_file": LM_NORM_STATS_FILE,
        "data": data, "precision_regime": rt.precision, "decode_path": rt.decode,
    }
    start_output_dir(out, cfg, record, "sae2", extra)
    save_norm_stats(vector_norm, out)
    norm.save(out / LM_NORM_STATS_FILE)

    torch.manual_seed(cfg.seed)
    secondary = TopKSAE(input_dim, num_features, k, cfg.tied)
    metrics = run_sae_stage(secondary, train_vectors, val_vectors, vector_norm, cfg, rt, out,
                            f"Stage 3 secondary SAE on the NFM interaction pathway (F={num_features}, K={k})")
    metrics.update({"num_features": num_features, "k": k, "input_dim": input_dim, "collect_seconds": collect_seconds,
                    "evaluated_on": f"{metrics['evaluated_rows']} interaction vectors of held-out windows (z-scored units)"})
    finish_output_dir(out, metrics)
    print(sae_summary("stage 3", metrics, out))
    return metrics


if __name__ == "__main__":
    run_cli(main)
