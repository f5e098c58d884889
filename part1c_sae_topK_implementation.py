"""Stage 1: train the primary TopK SAE on layer-L residual activations (SPEC §1).

    python part1c_sae_topK_implementation.py                      # the paper's run (OpenLLaMA-3B, layer 16)
    python part1c_sae_topK_implementation.py --preset cpu         # SmolLM2-135M on WikiText, 2 CPU cores
"""
from __future__ import annotations

import logging
import time

from common.activations import NormStats
from common.cli import run_cli
from common.config import SAE1Config, parse_config
from common.errors import UserError
from common.sae import TopKSAE, check_sae_shape
from common.sae_training import run_sae_stage, sae_summary
from common.stage import (check_output_dir, finish_output_dir, model_record, open_lm, open_stream, release, runtime,
                          save_norm_stats, start_output_dir)

log = logging.getLogger("part1c")


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_config(SAE1Config, "sae1", __doc__, argv)
    if not 1 <= cfg.k <= cfg.features:
        raise UserError(f"--k {cfg.k} must be between 1 and --features {cfg.features}")
    out = check_output_dir(cfg.checkpoint_dir, cfg.resume, cfg.overwrite)
    rt = runtime(cfg)
    lm = open_lm(cfg, rt.device)
    check_sae_shape(lm.d_model, cfg.features, cfg.k)
    record = model_record(lm, cfg.layer)
    stream = open_stream(cfg, lm)

    started = time.perf_counter()
    num_windows = max(1, cfg.num_tokens // cfg.window)
    val_rows = stream.val_rows(max(1, cfg.val_tokens // cfg.window), within=num_windows)
    train_rows = stream.train_rows(0, num_windows)
    harvest_seconds = time.perf_counter() - started
    data = {**stream.describe(), "train_rows": int(train_rows.shape[0]), "val_rows": int(val_rows.shape[0]),
            "harvest_tokens_per_second": (train_rows.shape[0] + val_rows.shape[0]) / harvest_seconds}
    release(lm)
    log.info("harvested %d train and %d validation rows in %.0f s", train_rows.shape[0], val_rows.shape[0], harvest_seconds)

    norm = NormStats.compute(train_rows, cfg.norm_rows, cfg.seed)
    start_output_dir(out, cfg, record, "sae1", {"data": data, "precision_regime": rt.precision, "decode_path": rt.decode})
    save_norm_stats(norm, out)

    sae = TopKSAE(lm.d_model, cfg.features, cfg.k, cfg.tied)
    metrics = run_sae_stage(sae, train_rows, val_rows, norm, cfg, rt, out, f"Stage 1 TopK SAE (F={cfg.features}, K={cfg.k})")
    metrics["harvest_tokens_per_second"] = data["harvest_tokens_per_second"]
    metrics["evaluated_on"] = f"{metrics['evaluated_rows']} held-out rows (normalized units)"
    finish_output_dir(out, metrics)
    print(sae_summary("stage 1", metrics, out))
    return metrics


if __name__ == "__main__":
    run_cli(main)
